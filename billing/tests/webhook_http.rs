//! The Stripe webhook route (`tally_billing::webhook::router`, `POST /v1/stripe/webhook`)
//! called with `oneshot`, on the SQLite sync ledger: a validly signed `invoice.paid` is
//! recorded on its org's period; a bad signature, a stale timestamp and a malformed body
//! are `400`; an event type Tally does not handle is `200` and recorded nowhere; a body
//! over the limit is `413`; no signing secret is `503` saying what to set.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tally_billing::webhook::{MAX_WEBHOOK_BODY_BYTES, WEBHOOK_PATH, WebhookState, router, sign};
use tally_core::ports::{FixedClock, StepKey, SyncLedger};
use tally_core::{Month, OrgId};
use tally_store::SqliteStore;
use tower::ServiceExt;

const SECRET: &str = "whsec_test_route";

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn setup(secret: Option<&str>) -> (tempfile::TempDir, Arc<SqliteStore>, axum::Router) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("tally.db")).unwrap());
    let app = router(WebhookState {
        ledger: store.clone(),
        secret: secret.map(Arc::from),
        clock: Arc::new(FixedClock::at(now())),
    });
    (dir, store, app)
}

fn event(kind: &str) -> String {
    json!({
        "id": "evt_1",
        "object": "event",
        "type": kind,
        "data": {"object": {"id": "in_123", "object": "invoice",
            "metadata": {"tally_invoice": "org_acme:2026-10"}}},
    })
    .to_string()
}

async fn post(app: &axum::Router, signature: Option<String>, body: String) -> (StatusCode, Value) {
    let mut req = Request::post(WEBHOOK_PATH).header("content-type", "application/json");
    if let Some(s) = signature {
        req = req.header("stripe-signature", s);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn recorded(store: &SqliteStore, kind: &str) -> Option<String> {
    store
        .get_step(&StepKey::new(
            &OrgId::parse("org_acme").unwrap(),
            Month::parse("2026-10").unwrap(),
            &format!("webhook:{kind}"),
        ))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_validly_signed_invoice_paid_is_recorded_once() {
    let (_dir, store, app) = setup(Some(SECRET));
    let body = event("invoice.paid");
    let sig = sign(SECRET, now().timestamp() - 30, body.as_bytes());
    for _ in 0..2 {
        // Stripe delivers at least once: the repeat is answered the same way.
        let (status, v) = post(&app, Some(sig.clone()), body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["recorded"]["org_id"], "org_acme");
        assert_eq!(v["recorded"]["period"], "2026-10");
        assert_eq!(v["recorded"]["type"], "invoice.paid");
    }
    assert_eq!(
        recorded(&store, "invoice.paid").await.as_deref(),
        Some("in_123")
    );
    let body = event("invoice.payment_failed");
    let sig = sign(SECRET, now().timestamp(), body.as_bytes());
    let (status, _) = post(&app, Some(sig), body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        recorded(&store, "invoice.payment_failed").await.as_deref(),
        Some("in_123")
    );
}

#[tokio::test]
async fn a_bad_signature_is_400_and_records_nothing() {
    let (_dir, store, app) = setup(Some(SECRET));
    let body = event("invoice.paid");
    let forged = sign("whsec_other", now().timestamp(), body.as_bytes());
    let (status, v) = post(&app, Some(forged), body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "bad_signature");
    assert_eq!(v["error"]["field"], "Stripe-Signature");
    let (status, v) = post(&app, None, body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("missing"),
        "{v}"
    );
    // A body changed after signing.
    let sig = sign(SECRET, now().timestamp(), body.as_bytes());
    let (status, _) = post(&app, Some(sig), event("invoice.payment_failed")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(recorded(&store, "invoice.paid").await, None);
    assert_eq!(recorded(&store, "invoice.payment_failed").await, None);
}

#[tokio::test]
async fn a_stale_timestamp_is_400() {
    let (_dir, store, app) = setup(Some(SECRET));
    let body = event("invoice.paid");
    // Five minutes is the tolerance; a replay 301 s later is refused.
    let stale = sign(SECRET, now().timestamp() - 301, body.as_bytes());
    let (status, v) = post(&app, Some(stale), body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tolerance"),
        "{v}"
    );
    assert_eq!(recorded(&store, "invoice.paid").await, None);
}

#[tokio::test]
async fn an_unknown_event_type_is_200_and_ignored() {
    let (_dir, store, app) = setup(Some(SECRET));
    let body = event("customer.created");
    let sig = sign(SECRET, now().timestamp(), body.as_bytes());
    let (status, v) = post(&app, Some(sig), body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["ignored"], true);
    let steps = store
        .list_steps(
            &OrgId::parse("org_acme").unwrap(),
            Month::parse("2026-10").unwrap(),
        )
        .await
        .unwrap();
    assert!(steps.is_empty(), "{steps:?}");
}

#[tokio::test]
async fn a_malformed_body_is_400_and_an_oversized_one_413() {
    let (_dir, _store, app) = setup(Some(SECRET));
    let body = "not json".to_owned();
    let sig = sign(SECRET, now().timestamp(), body.as_bytes());
    let (status, v) = post(&app, Some(sig), body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_body");
    let big = "x".repeat(MAX_WEBHOOK_BODY_BYTES + 1);
    let sig = sign(SECRET, now().timestamp(), big.as_bytes());
    let (status, v) = post(&app, Some(sig), big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn without_a_signing_secret_the_route_is_503_and_says_what_to_set() {
    let (_dir, _store, app) = setup(None);
    let body = event("invoice.paid");
    let sig = sign(SECRET, now().timestamp(), body.as_bytes());
    let (status, v) = post(&app, Some(sig), body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["error"]["code"], "stripe_webhook_not_configured");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("TALLY_STRIPE_WEBHOOK_SECRET"),
        "{v}"
    );
    // The Lambda function reads no such variable: the message also says what to do there.
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("StripeSecretName"),
        "{v}"
    );
}
