//! `tally-client` against the real Tally (the whole app in process on the embedded
//! default): events batched by the client are counted exactly, a rejected event comes back
//! on its own ticket with Tally's code and field, and a batch whose answer is lost (a proxy
//! forwards it to Tally, then answers `503` in its place) is retried under the same ids and
//! still counted once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::*;
use tally_client::{Client, Config, Event, Outcome};

fn client_event(e: &Ev) -> Event {
    Event::new(&e.project, e.meter, e.quantity.unwrap_or("1"))
        .with_id(&e.id)
        .at(e.ts)
}

fn config(url: &str, key: &str) -> Config {
    let mut c = Config::new(url, key);
    c.max_batch_events = 250;
    c.linger = Duration::from_millis(20);
    c.base_backoff = Duration::from_millis(10);
    c.max_backoff = Duration::from_millis(50);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_batches_are_counted_exactly_and_rejections_come_back_per_event() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "client-acme");
    let app = spawn_app_in(&env).await;
    let evs = events(&tenant, "cli", 1_200);
    let client = Client::start(config(&app.base_url, &tenant.key)).unwrap();
    let mut tickets = Vec::new();
    for e in &evs {
        tickets.push(client.send(client_event(e)).await.unwrap());
    }
    let unknown = client
        .send(Event::new(&tenant.projects[0], "no_such_meter", 1).with_id("cli-unknown"))
        .await
        .unwrap();
    client.shutdown().await;
    for t in tickets {
        assert_eq!(t.outcome().await, Ok(Outcome::Accepted));
    }
    match unknown.outcome().await {
        Ok(Outcome::Rejected(r)) => assert_eq!(r.field.as_deref(), Some("meter"), "{r:?}"),
        other => panic!("the unknown meter's ticket says {other:?}"),
    }
    assert_exact(&reqwest::Client::new(), &app, &tenant, &evs).await;
}

/// Forwards every request to Tally; answers the first `lose` of them with `503` after
/// Tally took them, as a load balancer that timed out would.
#[derive(Clone)]
struct LossyProxy {
    upstream: String,
    lose: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
    http: reqwest::Client,
}

async fn forward(
    State(p): State<LossyProxy>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let mut request = p.http.post(format!("{}/v1/events", p.upstream)).body(body);
    for name in ["authorization", "content-type"] {
        if let Some(v) = headers.get(name) {
            request = request.header(name, v.as_bytes());
        }
    }
    let answer = request.send().await.unwrap();
    p.forwarded.fetch_add(1, Ordering::SeqCst);
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap();
    let lost = p
        .lose
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if lost {
        return (StatusCode::SERVICE_UNAVAILABLE, "upstream timed out").into_response();
    }
    (StatusCode::from_u16(status).unwrap(), text).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_retried_under_the_same_ids_and_counted_once() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "client-lossy");
    let app = spawn_app_in(&env).await;
    let proxy = LossyProxy {
        upstream: app.base_url.clone(),
        lose: Arc::new(AtomicUsize::new(2)),
        forwarded: Arc::new(AtomicUsize::new(0)),
        http: reqwest::Client::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/v1/events", axum::routing::post(forward))
        .with_state(proxy.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let evs = events(&tenant, "lossy", 300);
    let mut c = config(&proxy_url, &tenant.key);
    c.max_batch_events = 100;
    let client = Client::start(c).unwrap();
    let mut tickets = Vec::new();
    for e in &evs {
        tickets.push(client.send(client_event(e)).await.unwrap());
    }
    client.shutdown().await;
    for t in tickets {
        assert_eq!(t.outcome().await, Ok(Outcome::Accepted));
    }
    assert_eq!(
        proxy.lose.load(Ordering::SeqCst),
        0,
        "two answers were lost"
    );
    assert!(
        proxy.forwarded.load(Ordering::SeqCst) >= 5,
        "Tally took the lost batches and their retries: {}",
        proxy.forwarded.load(Ordering::SeqCst)
    );
    // Tally saw the lost batches twice and counts each event once.
    assert_exact(&reqwest::Client::new(), &app, &tenant, &evs).await;
}
