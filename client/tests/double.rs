//! The client against a scriptable double of `POST /v1/events` on loopback (axum): it
//! records every request (ids, body size, when) and answers from a script, so each test can
//! plant the failure the client must handle (`503` with `Retry-After`, a long throttle,
//! `401`, `500`s, a stalled server) and see what the client did about it. The client against
//! the real Tally is `tally/tests/e2e_client.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tally_client::{Client, Config, DeliveryError, Event, Outcome, Overflow, SendError};
use tokio::sync::Notify;

/// One scripted answer; when the script is empty the double accepts, rejecting events of
/// meter `bad` on the field `meter`.
#[derive(Clone)]
enum Answer {
    Status(u16, Option<u64>),
}

#[derive(Default)]
struct Seen {
    /// Each request: its event ids, body size, when it arrived.
    requests: Vec<(Vec<String>, usize, Instant)>,
    auth: Vec<String>,
}

#[derive(Clone, Default)]
struct Double {
    seen: Arc<Mutex<Seen>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    /// When set, every request waits for a notification first.
    stall: Option<Arc<Notify>>,
}

impl Double {
    /// Queues `answer` for the next request the script answers.
    fn answer(&self, answer: Answer) {
        self.script.lock().unwrap().push_back(answer);
    }

    fn ids(&self) -> Vec<Vec<String>> {
        let seen = self.seen.lock().unwrap();
        seen.requests.iter().map(|r| r.0.clone()).collect()
    }
}

async fn events(State(d): State<Double>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(stall) = &d.stall {
        stall.notified().await;
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    let list = v["events"].as_array().unwrap().clone();
    {
        let mut seen = d.seen.lock().unwrap();
        seen.requests.push((
            list.iter()
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect(),
            body.len(),
            Instant::now(),
        ));
        let auth = headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned();
        seen.auth.push(auth);
    }
    let scripted = d.script.lock().unwrap().pop_front();
    if let Some(Answer::Status(code, retry_after)) = scripted {
        let status = StatusCode::from_u16(code).unwrap();
        let mut headers = HeaderMap::new();
        if let Some(s) = retry_after {
            headers.insert("retry-after", s.to_string().parse().unwrap());
        }
        let body = json!({"error": {"code": format!("scripted_{code}"), "message": "scripted"}});
        return (status, headers, axum::Json(body)).into_response();
    }
    let rejected: Vec<Value> = list
        .iter()
        .enumerate()
        .filter(|(_, e)| e["meter"] == "bad")
        .map(|(i, e)| {
            json!({"index": i, "id": e["id"], "error": {"code": "unknown_meter",
                "message": "no such meter", "field": "meter"}})
        })
        .collect();
    let accepted = list.len() - rejected.len();
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"accepted": accepted, "rejected": rejected})),
    )
        .into_response()
}

async fn start(double: Double) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/events", post(events))
        .with_state(double);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn config(url: &str) -> Config {
    let mut c = Config::new(url, "tk_live_secret");
    c.linger = Duration::from_millis(20);
    c.base_backoff = Duration::from_millis(1);
    c.max_backoff = Duration::from_millis(5);
    c
}

fn event(i: usize) -> Event {
    Event::new("prj_1", "api_calls", 1).with_id(format!("e-{i}"))
}

#[tokio::test]
async fn batches_are_cut_by_count_and_by_bytes_and_every_ticket_is_answered() {
    let double = Double::default();
    let url = start(double.clone()).await;
    let mut c = config(&url);
    c.max_batch_events = 10;
    let client = Client::start(c).unwrap();
    let mut tickets = Vec::new();
    for i in 0..25 {
        tickets.push(client.send(event(i)).await.unwrap());
    }
    client.flush().await;
    let sizes: Vec<usize> = double.ids().iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 10, 5]);
    for t in tickets {
        assert_eq!(t.outcome().await, Ok(Outcome::Accepted));
    }
    assert!(
        double
            .seen
            .lock()
            .unwrap()
            .auth
            .iter()
            .all(|a| a == "Bearer tk_live_secret"),
        "the key goes as a bearer token"
    );

    // By bytes: events of about 600 bytes in 2 KiB bodies, three to a body at most.
    let double = Double::default();
    let url = start(double.clone()).await;
    let mut c = config(&url);
    c.max_batch_bytes = 2048;
    let client = Client::start(c).unwrap();
    for i in 0..10 {
        client
            .send(event(i).property("pad", "x".repeat(500)))
            .await
            .unwrap();
    }
    client.shutdown().await;
    let seen = double.seen.lock().unwrap();
    assert!(
        seen.requests.iter().all(|r| r.1 <= 2048),
        "every body within its bound"
    );
    let total: usize = seen.requests.iter().map(|r| r.0.len()).sum();
    assert_eq!(total, 10);
    assert!(seen.requests.len() >= 4, "{} requests", seen.requests.len());
}

#[tokio::test]
async fn a_rejected_event_is_reported_on_its_own_ticket() {
    let double = Double::default();
    let client = Client::start(config(&start(double.clone()).await)).unwrap();
    let good = client.send(event(1)).await.unwrap();
    let bad = client
        .send(Event::new("prj_1", "bad", 1).with_id("e-bad"))
        .await
        .unwrap();
    client.flush().await;
    assert_eq!(good.outcome().await, Ok(Outcome::Accepted));
    match bad.outcome().await {
        Ok(Outcome::Rejected(r)) => {
            assert_eq!(r.code, "unknown_meter");
            assert_eq!(r.field.as_deref(), Some("meter"));
        }
        other => panic!("the bad event's ticket says {other:?}"),
    }
    assert_eq!(double.ids(), [["e-1", "e-bad"]], "one request for both");
}

#[tokio::test]
async fn a_503_is_retried_after_its_retry_after_with_the_same_ids() {
    let double = Double::default();
    double.answer(Answer::Status(503, Some(1)));
    let client = Client::start(config(&start(double.clone()).await)).unwrap();
    let tickets = [
        client.send(event(1)).await.unwrap(),
        client.send(event(2)).await.unwrap(),
    ];
    client.shutdown().await;
    for t in tickets {
        assert_eq!(t.outcome().await, Ok(Outcome::Accepted));
    }
    let seen = double.seen.lock().unwrap();
    assert_eq!(seen.requests.len(), 2, "one refusal, one retry");
    assert_eq!(
        seen.requests[0].0, seen.requests[1].0,
        "the retry resends the same ids"
    );
    let waited = seen.requests[1].2 - seen.requests[0].2;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 honoured, waited {waited:?}"
    );
}

/// Sends `event(i)` on `client`, flushes, and returns its ticket's outcome.
async fn send_and_flush(client: &Client, i: usize) -> Result<Outcome, DeliveryError> {
    let t = client.send(event(i)).await.unwrap();
    client.flush().await;
    t.outcome().await
}

#[tokio::test]
async fn a_throttle_longer_than_allowed_a_refusal_and_an_outage_each_end_as_they_should() {
    // 429 with an hour's Retry-After (a hard plan limit): failed at once, not waited out.
    let double = Double::default();
    double.answer(Answer::Status(429, Some(3600)));
    let client = Client::start(config(&start(double.clone()).await)).unwrap();
    match send_and_flush(&client, 1).await {
        Err(DeliveryError::Throttled {
            retry_after,
            rejection,
        }) => {
            assert_eq!(retry_after, Duration::from_secs(3600));
            assert_eq!(rejection.code, "scripted_429");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(double.ids().len(), 1);

    // 401: refused, never retried.
    double.answer(Answer::Status(401, None));
    let outcome = send_and_flush(&client, 2).await;
    assert!(
        matches!(outcome, Err(DeliveryError::Refused { status: 401, .. })),
        "401 is final"
    );
    assert_eq!(double.ids().len(), 2);

    // 500s: retried up to max_attempts, then given up.
    let double = Double::default();
    for _ in 0..3 {
        double.answer(Answer::Status(500, None));
    }
    let mut c = config(&start(double.clone()).await);
    c.max_attempts = 3;
    let client = Client::start(c).unwrap();
    let t = client.send(event(3)).await.unwrap();
    client.shutdown().await;
    assert!(
        matches!(
            t.outcome().await,
            Err(DeliveryError::GaveUp { attempts: 3, .. })
        ),
        "three tries, then given up"
    );
    assert_eq!(double.ids().len(), 3);
}

#[tokio::test]
async fn a_full_buffer_drops_or_waits_as_configured() {
    let stall = Arc::new(Notify::new());
    let double = Double {
        stall: Some(stall.clone()),
        ..Double::default()
    };
    let url = start(double.clone()).await;
    let mut c = config(&url);
    c.buffer_events = 2;
    c.max_in_flight = 1;
    c.max_batch_events = 1;
    c.linger = Duration::ZERO;
    c.overflow = Overflow::Drop;
    let client = Client::start(c.clone()).unwrap();
    // One event stalls in flight, one waits for a slot in the sender, two fill the buffer;
    // by the tenth the buffer is full.
    let mut dropped = 0;
    for i in 0..10 {
        match client.send(event(i)).await {
            Ok(_) => {}
            Err(SendError::Dropped(2)) => dropped += 1,
            Err(e) => panic!("{e}"),
        }
        tokio::task::yield_now().await;
    }
    assert!(dropped > 0, "a full buffer drops under Overflow::Drop");

    // Backpressure: the same full buffer makes `send` wait instead.
    c.overflow = Overflow::Backpressure;
    let client = Client::start(c).unwrap();
    let mut waited = false;
    for i in 0..10 {
        if tokio::time::timeout(Duration::from_millis(200), client.send(event(100 + i)))
            .await
            .is_err()
        {
            waited = true;
            break;
        }
    }
    assert!(
        waited,
        "a full buffer makes send wait under Overflow::Backpressure"
    );
    stall.notify_waiters();
}

#[tokio::test]
async fn shutdown_sends_what_is_buffered_before_it_returns() {
    let double = Double::default();
    let mut c = config(&start(double.clone()).await);
    c.linger = Duration::from_secs(60);
    let client = Client::start(c).unwrap();
    for i in 0..5 {
        client.send(event(i)).await.unwrap();
    }
    assert!(double.ids().is_empty(), "lingering for a fuller batch");
    client.shutdown().await;
    assert_eq!(double.ids().concat().len(), 5, "flushed on shutdown");
}

#[tokio::test]
async fn bad_settings_and_bad_events_are_refused_naming_the_field() {
    let mut c = Config::new("ftp://x", "k");
    assert_eq!(Client::start(c.clone()).unwrap_err().field, "base_url");
    c.base_url = "http://x".into();
    c.max_batch_events = 1001;
    assert_eq!(
        Client::start(c.clone()).unwrap_err().field,
        "max_batch_events"
    );
    c.max_batch_events = 10;
    c.buffer_events = 0;
    assert_eq!(Client::start(c.clone()).unwrap_err().field, "buffer_events");
    c.buffer_events = 10;
    let client = Client::start(c).unwrap();
    match client.send(Event::new("prj_1", "api_calls", "-1")).await {
        Err(SendError::Invalid(e)) => assert_eq!(e.field, "quantity"),
        other => panic!("{other:?}"),
    }
}
