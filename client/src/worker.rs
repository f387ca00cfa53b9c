//! The background sender: one task that gathers buffered events into batches and posts
//! them, at most [`Config::max_in_flight`] at a time, each with its own retry loop.
//!
//! A batch is cut when the next event would take it past [`Config::max_batch_events`] or
//! [`Config::max_batch_bytes`], or when its oldest event has waited [`Config::linger`]. The
//! body is built from each event's JSON serialized once when it was buffered, so its size
//! is known exactly before it is sent, and a retry resends the same bytes (the same ids).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::{Config, DeliveryError, Event, Outcome, Rejection};

/// `{"events":[` and `]}` around the events, which are comma-separated.
const ENVELOPE_BYTES: usize = 13;

/// What [`crate::Client`] asks of the sender.
#[derive(Debug)]
pub(crate) enum Command {
    /// Buffer an event.
    Event(Item),
    /// Send what is buffered, then acknowledge once every batch is answered.
    Flush(oneshot::Sender<()>),
    /// Like `Flush`, taking every event already queued, then stop.
    Stop(oneshot::Sender<()>),
}

/// A buffered event: its JSON and whom to tell how it went.
#[derive(Debug)]
pub(crate) struct Item {
    json: String,
    done: oneshot::Sender<Result<Outcome, DeliveryError>>,
}

impl Item {
    pub(crate) fn new(event: Event, done: oneshot::Sender<Result<Outcome, DeliveryError>>) -> Item {
        // An `Event` is strings and JSON values: serializing it cannot fail.
        let json = serde_json::to_string(&event).unwrap_or_default();
        Item { json, done }
    }
}

/// The batch being filled.
struct Batch {
    items: Vec<Item>,
    bytes: usize,
    /// When its first event arrived: it leaves at this plus `linger`.
    since: Instant,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            items: Vec::new(),
            bytes: ENVELOPE_BYTES,
            since: Instant::now(),
        }
    }
}

/// Runs until a `Stop` or until every [`crate::Client`] is dropped; both flush first.
pub(crate) async fn run(config: Config, http: reqwest::Client, mut rx: mpsc::Receiver<Command>) {
    let config = Arc::new(config);
    let url = format!("{}/v1/events", config.base_url.trim_end_matches('/'));
    let sender = Sender {
        config: config.clone(),
        http,
        url,
    };
    let mut in_flight = JoinSet::new();
    let mut batch = Batch::new();
    loop {
        let deadline = batch.since + config.linger;
        let command = tokio::select! {
            c = rx.recv() => c,
            _ = tokio::time::sleep_until(deadline), if !batch.items.is_empty() => {
                let full = std::mem::replace(&mut batch, Batch::new());
                sender.spawn(&mut in_flight, full.items).await;
                continue;
            }
        };
        match command {
            Some(Command::Event(item)) => {
                let size = item.json.len() + 1;
                if !batch.items.is_empty() && batch.bytes + size > config.max_batch_bytes {
                    let full = std::mem::replace(&mut batch, Batch::new());
                    sender.spawn(&mut in_flight, full.items).await;
                }
                if batch.items.is_empty() {
                    batch.since = Instant::now();
                }
                batch.bytes += size;
                batch.items.push(item);
                if batch.items.len() >= config.max_batch_events {
                    let full = std::mem::replace(&mut batch, Batch::new());
                    sender.spawn(&mut in_flight, full.items).await;
                }
            }
            Some(Command::Flush(ack)) => {
                let full = std::mem::replace(&mut batch, Batch::new());
                sender.spawn(&mut in_flight, full.items).await;
                while in_flight.join_next().await.is_some() {}
                let _ = ack.send(());
            }
            Some(Command::Stop(ack)) => {
                // Take what callers queued before the stop, then refuse the rest.
                rx.close();
                while let Some(command) = rx.recv().await {
                    match command {
                        Command::Event(item) => {
                            if batch.bytes + item.json.len() + 1 > config.max_batch_bytes
                                || batch.items.len() >= config.max_batch_events
                            {
                                let full = std::mem::replace(&mut batch, Batch::new());
                                sender.spawn(&mut in_flight, full.items).await;
                            }
                            batch.bytes += item.json.len() + 1;
                            batch.items.push(item);
                        }
                        Command::Flush(a) | Command::Stop(a) => {
                            let _ = a.send(());
                        }
                    }
                }
                let full = std::mem::replace(&mut batch, Batch::new());
                sender.spawn(&mut in_flight, full.items).await;
                while in_flight.join_next().await.is_some() {}
                let _ = ack.send(());
                return;
            }
            None => {
                let full = std::mem::replace(&mut batch, Batch::new());
                sender.spawn(&mut in_flight, full.items).await;
                while in_flight.join_next().await.is_some() {}
                return;
            }
        }
    }
}

/// What every delivery needs.
struct Sender {
    config: Arc<Config>,
    http: reqwest::Client,
    url: String,
}

impl Sender {
    /// Starts delivering `items`, after waiting for a slot when `max_in_flight` are out.
    async fn spawn(&self, in_flight: &mut JoinSet<()>, items: Vec<Item>) {
        if items.is_empty() {
            return;
        }
        while in_flight.len() >= self.config.max_in_flight {
            in_flight.join_next().await;
        }
        let (config, http, url) = (self.config.clone(), self.http.clone(), self.url.clone());
        in_flight.spawn(deliver(config, http, url, items));
    }
}

/// `202`'s body.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    rejected: Vec<Refused>,
}

#[derive(Deserialize)]
struct Refused {
    index: usize,
    error: ErrorObject,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorObject,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: String,
    message: String,
    #[serde(default)]
    field: Option<String>,
}

impl From<ErrorObject> for Rejection {
    fn from(e: ErrorObject) -> Rejection {
        Rejection {
            code: e.code,
            field: e.field,
            message: e.message,
        }
    }
}

/// What one try came to.
enum Try {
    /// Answered `202`: each event's outcome, in batch order.
    Done(Vec<Outcome>),
    /// Worth another try after this long (at least).
    Again { wait: Option<Duration>, why: String },
    /// Final for the whole batch.
    Fail(DeliveryError),
}

/// Posts one batch until it is answered or the tries run out, then tells every ticket.
async fn deliver(config: Arc<Config>, http: reqwest::Client, url: String, items: Vec<Item>) {
    let mut body = String::with_capacity(
        ENVELOPE_BYTES + items.iter().map(|i| i.json.len() + 1).sum::<usize>(),
    );
    body.push_str("{\"events\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&item.json);
    }
    body.push_str("]}");
    let span = tracing::info_span!(
        "tally_client.batch",
        events = items.len(),
        bytes = body.len()
    );
    let _enter = span.enter();
    metrics::histogram!("tally_client_batch_events").record(items.len() as f64);

    let mut attempt = 0u32;
    let result = loop {
        attempt += 1;
        let sent = http
            .post(&url)
            .bearer_auth(&config.api_key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let outcome = match sent {
            Ok(response) => judge(&config, items.len(), response).await,
            Err(e) => Try::Again {
                wait: None,
                why: format!("cannot reach Tally: {e}"),
            },
        };
        match outcome {
            Try::Done(outcomes) => break Ok(outcomes),
            Try::Fail(e) => break Err(e),
            Try::Again { wait, why } => {
                if attempt >= config.max_attempts {
                    break Err(DeliveryError::GaveUp {
                        attempts: attempt,
                        last: why,
                    });
                }
                let wait = wait.unwrap_or_else(|| backoff(&config, attempt));
                tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, %why, "retrying a batch");
                metrics::counter!("tally_client_retries_total").increment(1);
                tokio::time::sleep(wait).await;
            }
        }
    };
    match result {
        Ok(outcomes) => {
            let rejected = outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Rejected(_)))
                .count();
            metrics::counter!("tally_client_events_sent_total")
                .increment((items.len() - rejected) as u64);
            metrics::counter!("tally_client_events_rejected_total").increment(rejected as u64);
            for (item, outcome) in items.into_iter().zip(outcomes) {
                if let Outcome::Rejected(r) = &outcome {
                    tracing::warn!(code = %r.code, field = ?r.field, message = %r.message, "Tally rejected an event");
                }
                let _ = item.done.send(Ok(outcome));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, events = items.len(), "a batch was not delivered");
            metrics::counter!("tally_client_events_failed_total").increment(items.len() as u64);
            for item in items {
                let _ = item.done.send(Err(e.clone()));
            }
        }
    }
}

/// Reads one answer.
async fn judge(config: &Config, events: usize, response: reqwest::Response) -> Try {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = response.text().await.unwrap_or_default();
    if status == StatusCode::ACCEPTED || status == StatusCode::OK {
        return match serde_json::from_str::<Answer>(&text) {
            Ok(answer) => {
                let mut outcomes = vec![Outcome::Accepted; events];
                for r in answer.rejected {
                    if let Some(slot) = outcomes.get_mut(r.index) {
                        *slot = Outcome::Rejected(r.error.into());
                    }
                }
                Try::Done(outcomes)
            }
            // The events are queued but the answer is unreadable: resending is harmless.
            Err(e) => Try::Again {
                wait: None,
                why: format!("unreadable {status} answer: {e}"),
            },
        };
    }
    let rejection = serde_json::from_str::<ErrorEnvelope>(&text)
        .map(|e| Rejection::from(e.error))
        .unwrap_or_else(|_| Rejection {
            code: format!("http_{}", status.as_u16()),
            field: None,
            message: text.chars().take(500).collect(),
        });
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        if let Some(wait) = retry_after
            && wait > config.max_retry_after
        {
            return Try::Fail(DeliveryError::Throttled {
                retry_after: wait,
                rejection,
            });
        }
        // Jitter on top of the server's wait, so throttled clients do not return together.
        let wait = retry_after.map(|w| w + jitter(config.base_backoff));
        return Try::Again {
            wait,
            why: format!("{status}: {}", rejection.message),
        };
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return Try::Again {
            wait: None,
            why: format!("{status}: {}", rejection.message),
        };
    }
    Try::Fail(DeliveryError::Refused {
        status: status.as_u16(),
        rejection,
    })
}

/// Full jitter: a uniform wait up to `base × 2^(attempt-1)`, capped at `max_backoff`.
fn backoff(config: &Config, attempt: u32) -> Duration {
    let exp = config
        .base_backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    jitter(exp.min(config.max_backoff))
}

fn jitter(up_to: Duration) -> Duration {
    let ms = up_to.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_its_cap() {
        let mut config = Config::new("http://x", "k");
        config.base_backoff = Duration::from_millis(100);
        config.max_backoff = Duration::from_millis(1_000);
        for attempt in 1..40 {
            let cap = (100u64 << (attempt - 1).min(20)).min(1_000);
            for _ in 0..20 {
                assert!(backoff(&config, attempt) <= Duration::from_millis(cap));
            }
        }
        // Jitter spreads: 200 draws under a 1 s cap are not all the same.
        let draws: std::collections::BTreeSet<_> = (0..200).map(|_| backoff(&config, 10)).collect();
        assert!(draws.len() > 10, "{draws:?}");
    }
}
