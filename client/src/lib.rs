//! `tally-client`: how a Rust service emits usage events to Tally's `POST /v1/events`.
//!
//! Every service that meters itself would otherwise write the same loop: gather events into
//! batches, give each a stable id so a retry is free, retry on throttling and outages without
//! hammering the server, bound its memory, and flush what it holds before it exits. This
//! crate is that loop, once:
//!
//! - **Batching** by count (at most 1,000 events, Tally's bound), by bytes (at most 1 MiB)
//!   and by time (`linger`): a batch leaves when it is full or when its oldest event has
//!   waited `linger`.
//! - **Stable ids**: an [`Event`] gets its id when it is made; every retry resends it, and
//!   Tally's ledger counts an id once, so a lost answer never double-counts.
//! - **Retries** with full-jitter exponential backoff on connection errors, timeouts and
//!   5xx, and on `429`/`503` after the server's `Retry-After` (a `Retry-After` longer than
//!   [`Config::max_retry_after`], such as a hard plan limit's "until next month", fails the
//!   batch at once: waiting would only hold memory).
//! - **A bounded buffer** ([`Config::buffer_events`]) with a choice when it is full
//!   ([`Overflow`]): wait for room (backpressure, the default) or drop the event, counted in
//!   `tally_client_events_dropped_total`.
//! - **Per-event outcomes**: [`Client::send`] returns a [`Ticket`] that resolves to the
//!   event's [`Outcome`] (accepted, or rejected with Tally's code, field and message), or to
//!   a [`DeliveryError`] when its batch could not be delivered. Dropping the ticket is fine
//!   for fire-and-forget callers: rejections are also logged and counted.
//! - **Flush on shutdown**: [`Client::shutdown`] sends everything buffered and waits for the
//!   answers; [`Client::flush`] does the same without stopping.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tally_client::{Client, Config, Event};
//! let client = Client::start(Config::new("https://tally.example.com", "tk_live_…"))?;
//! let ticket = client.send(Event::new("prj_…", "api_calls", 1)).await?;
//! client.shutdown().await; // flushes
//! println!("{:?}", ticket.outcome().await);
//! # Ok(()) }
//! ```
//!
//! Metrics (through the `metrics` facade, so they go wherever the service's recorder sends
//! them): `tally_client_events_sent_total`, `tally_client_events_rejected_total`,
//! `tally_client_events_failed_total`, `tally_client_events_dropped_total`,
//! `tally_client_retries_total`, and the histogram `tally_client_batch_events`.

mod event;
mod worker;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use event::{Event, InvalidEvent, MAX_ID_LEN, MAX_NAME_LEN, MAX_PROPERTIES};

/// Tally's bound on events in one request.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Tally's bound on one request body.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// What [`Client::send`] does when the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Wait until there is room: the caller slows to what Tally takes.
    #[default]
    Backpressure,
    /// Refuse the event at once with [`SendError::Dropped`] and count it in
    /// `tally_client_events_dropped_total`: the caller never waits, and loses usage.
    Drop,
}

/// How the client batches, retries and bounds itself. [`Config::new`] gives the defaults;
/// [`Client::start`] checks every field's range.
#[derive(Debug, Clone)]
pub struct Config {
    /// Tally's base URL (`https://tally.example.com`); `/v1/events` is appended.
    pub base_url: String,
    /// The API key (`tk_live_…` or `tk_test_…`) with the `events:write` scope.
    pub api_key: String,
    /// Events per request, 1 to [`MAX_BATCH_EVENTS`] (default 1,000).
    pub max_batch_events: usize,
    /// Bytes per request body, 1 KiB to [`MAX_BATCH_BYTES`] (default 512 KiB).
    pub max_batch_bytes: usize,
    /// How long the oldest buffered event may wait for its batch to fill, 0 to 60 s
    /// (default 200 ms).
    pub linger: Duration,
    /// Events held in memory before [`Config::overflow`] applies, 1 to 10,000,000 (default
    /// 10,000).
    pub buffer_events: usize,
    /// What a full buffer does.
    pub overflow: Overflow,
    /// Requests in flight at once, 1 to 64 (default 4).
    pub max_in_flight: usize,
    /// Tries per batch, 1 to 100 (default 8), after which its events fail with
    /// [`DeliveryError::GaveUp`].
    pub max_attempts: u32,
    /// First backoff, before jitter, 1 ms to 60 s (default 100 ms); it doubles per try.
    pub base_backoff: Duration,
    /// Longest backoff, before jitter, up to 10 minutes (default 10 s).
    pub max_backoff: Duration,
    /// Longest `Retry-After` the client waits out, up to 1 hour (default 60 s); a longer
    /// one fails the batch with [`DeliveryError::Throttled`].
    pub max_retry_after: Duration,
    /// Timeout of one request, 100 ms to 5 minutes (default 10 s).
    pub request_timeout: Duration,
}

impl Config {
    /// The defaults, for Tally at `base_url` with `api_key`.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Config {
        Config {
            base_url: base_url.into(),
            api_key: api_key.into(),
            max_batch_events: MAX_BATCH_EVENTS,
            max_batch_bytes: 512 * 1024,
            linger: Duration::from_millis(200),
            buffer_events: 10_000,
            overflow: Overflow::Backpressure,
            max_in_flight: 4,
            max_attempts: 8,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, message: String| Err(ConfigError { field, message });
        let url = self.base_url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
            return bad(
                "base_url",
                format!(
                    "must be an http:// or https:// URL, got {:?}",
                    self.base_url
                ),
            );
        }
        if self.api_key.is_empty()
            || self.api_key.len() > 512
            || !self.api_key.bytes().all(|b| b.is_ascii_graphic())
        {
            return bad(
                "api_key",
                "must be 1 to 512 printable ASCII characters".to_owned(),
            );
        }
        let ranges: [(&'static str, u128, u128, u128); 10] = [
            (
                "max_batch_events",
                self.max_batch_events as u128,
                1,
                MAX_BATCH_EVENTS as u128,
            ),
            (
                "max_batch_bytes",
                self.max_batch_bytes as u128,
                1024,
                MAX_BATCH_BYTES as u128,
            ),
            ("linger", self.linger.as_millis(), 0, 60_000),
            ("buffer_events", self.buffer_events as u128, 1, 10_000_000),
            ("max_in_flight", self.max_in_flight as u128, 1, 64),
            ("max_attempts", u128::from(self.max_attempts), 1, 100),
            ("base_backoff", self.base_backoff.as_millis(), 1, 60_000),
            ("max_backoff", self.max_backoff.as_millis(), 1, 600_000),
            (
                "max_retry_after",
                self.max_retry_after.as_millis(),
                0,
                3_600_000,
            ),
            (
                "request_timeout",
                self.request_timeout.as_millis(),
                100,
                300_000,
            ),
        ];
        for (field, value, min, max) in ranges {
            if value < min || value > max {
                return bad(field, format!("must be {min} to {max}, got {value}"));
            }
        }
        if self.max_backoff < self.base_backoff {
            return bad(
                "max_backoff",
                "must not be less than base_backoff".to_owned(),
            );
        }
        Ok(())
    }
}

/// A [`Config`] field out of its range: [`Client::start`] refuses to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tally client config: {field} {message}")]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// Its range, and what it was.
    pub message: String,
}

/// Why [`Client::send`] did not take an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The event breaks a bound Tally would refuse it for: nothing was sent.
    #[error("invalid event: {0}")]
    Invalid(#[from] InvalidEvent),
    /// The buffer was full and [`Overflow::Drop`] is configured: the event is lost (and
    /// counted in `tally_client_events_dropped_total`).
    #[error("the buffer is full ({0} events): the event was dropped")]
    Dropped(usize),
    /// The client was shut down.
    #[error("the client has shut down")]
    Closed,
}

/// What Tally answered for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (`202`): it will be counted once, including when it was a resend.
    Accepted,
    /// Refused by Tally on its own (the rest of its batch went through).
    Rejected(Rejection),
}

/// Tally's reason for refusing an event or a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable code (`unknown_meter`, `invalid_quantity`, `period_closed`, ...).
    pub code: String,
    /// The offending field, when one is to blame.
    pub field: Option<String>,
    /// Tally's sentence.
    pub message: String,
}

/// Why an event's batch was not delivered: nothing is known of the event's fate beyond
/// what the variant says. Resending the same [`Event`] (same id) later is always safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Tally refused the whole request (`400`, `401`, `403`, `413`, another `4xx`): retrying
    /// would not help.
    #[error("Tally refused the request ({status}): {} ({})", .rejection.message, .rejection.code)]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Tally's error object.
        rejection: Rejection,
    },
    /// Tally asked to wait longer than [`Config::max_retry_after`] (a hard plan limit waits
    /// until the next month).
    #[error("Tally asked to retry after {} s, longer than allowed: {}", .retry_after.as_secs(), .rejection.message)]
    Throttled {
        /// The `Retry-After` asked for.
        retry_after: Duration,
        /// Tally's error object.
        rejection: Rejection,
    },
    /// Every try failed (connection errors, timeouts, 5xx, throttling); the last error.
    #[error("gave up after {attempts} tries: {last}")]
    GaveUp {
        /// Tries made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The client stopped before the event's batch was answered.
    #[error("the client stopped before the event was delivered")]
    Stopped,
}

/// The pending outcome of one sent event.
#[derive(Debug)]
pub struct Ticket(oneshot::Receiver<Result<Outcome, DeliveryError>>);

impl Ticket {
    /// Waits for the event's batch to be answered.
    pub async fn outcome(self) -> Result<Outcome, DeliveryError> {
        self.0.await.unwrap_or(Err(DeliveryError::Stopped))
    }
}

/// A handle on the background sender; cheap to clone, one per process is enough.
#[derive(Debug, Clone)]
pub struct Client {
    tx: mpsc::Sender<worker::Command>,
    overflow: Overflow,
    buffer: usize,
    worker: std::sync::Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl Client {
    /// Checks `config` and starts the background sender on the current Tokio runtime.
    pub fn start(config: Config) -> Result<Client, ConfigError> {
        config.check()?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| ConfigError {
                field: "base_url",
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        let (tx, rx) = mpsc::channel(config.buffer_events);
        let overflow = config.overflow;
        let buffer = config.buffer_events;
        let handle = tokio::spawn(worker::run(config, http, rx));
        Ok(Client {
            tx,
            overflow,
            buffer,
            worker: std::sync::Arc::new(tokio::sync::Mutex::new(Some(handle))),
        })
    }

    /// Checks `event` and buffers it for the next batch; the [`Ticket`] tells how it went.
    /// With [`Overflow::Backpressure`] this waits while the buffer is full.
    pub async fn send(&self, event: Event) -> Result<Ticket, SendError> {
        event.check()?;
        let (done, ticket) = oneshot::channel();
        let command = worker::Command::Event(worker::Item::new(event, done));
        match self.overflow {
            Overflow::Backpressure => self.tx.send(command).await.map_err(|_| SendError::Closed)?,
            Overflow::Drop => match self.tx.try_send(command) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!("tally_client_events_dropped_total").increment(1);
                    return Err(SendError::Dropped(self.buffer));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(SendError::Closed),
            },
        }
        Ok(Ticket(ticket))
    }

    /// Sends everything buffered so far and waits until every batch in flight is answered.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(worker::Command::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Stops taking events, sends everything buffered, and waits for the answers. Clones of
    /// this client can no longer send afterwards.
    pub async fn shutdown(self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(worker::Command::Stop(ack)).await.is_ok() {
            let _ = done.await;
        }
        if let Some(handle) = self.worker.lock().await.take() {
            let _ = handle.await;
        }
    }
}
