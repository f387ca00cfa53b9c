//! Router tests against small in-memory implementations of the ports.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tally_core::counter::OwnedCounterKey;
use tally_core::event::Event;
use tally_core::ids::{ApiKeyId, MeterName, OrgId, ProjectId, UserId};
use tally_core::period::Month;
use tally_core::ports::{
    ApplyReport, Clock, CounterQuery, CounterValue, Delivery, EventQueue, LedgerPage,
    PublishReport, QueueError, StoreError, TenantStore, UsageStore,
};
use tally_core::tenant::{ApiKey, KeyHash, KeyScope, Org, Project, User};
use tower::ServiceExt;

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const NOW: &str = "2026-11-26T12:00:00Z";
const GOOD_KEY: &str = "tk_test_good";
const READ_KEY: &str = "tk_test_read";
const REVOKED_KEY: &str = "tk_test_revoked";
const EXPIRED_KEY: &str = "tk_test_expired";

struct FixedClock(DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

#[derive(Default)]
enum PublishMode {
    #[default]
    Ok,
    Error,
    FailIndexes(Vec<usize>),
}

/// One in-memory fake for all three ports.
#[derive(Default)]
struct Mem {
    keys: HashMap<KeyHash, ApiKey>,
    projects: Vec<Project>,
    closed: HashSet<Month>,
    published: Mutex<Vec<Event>>,
    publish_calls: AtomicUsize,
    publish_mode: Mutex<PublishMode>,
    key_lookups: AtomicUsize,
    project_lookups: AtomicUsize,
    period_lookups: AtomicUsize,
    projects_unavailable: bool,
}

fn org(s: &str) -> OrgId {
    OrgId::parse(s).unwrap()
}

fn key(secret: &str, org_id: &str, scopes: &[KeyScope]) -> ApiKey {
    ApiKey {
        id: ApiKeyId::parse(&format!("key_{}", secret.len())).unwrap(),
        org_id: org(org_id),
        name: secret.into(),
        hash: KeyHash::of_secret(secret),
        display_prefix: secret.chars().take(12).collect(),
        scopes: scopes.to_vec(),
        created_at: t("2026-01-01T00:00:00Z"),
        expires_at: None,
        revoked_at: None,
    }
}

fn project(id: &str, org_id: &str) -> Project {
    Project {
        id: ProjectId::parse(id).unwrap(),
        org_id: org(org_id),
        name: id.into(),
        slug: id.replace('_', "-"),
        created_at: t("2026-01-01T00:00:00Z"),
    }
}

impl Mem {
    fn seeded() -> Mem {
        let mut keys = vec![
            key(GOOD_KEY, "org_a", &[KeyScope::EventsWrite]),
            key(READ_KEY, "org_a", &[KeyScope::UsageRead]),
            key(REVOKED_KEY, "org_a", &[KeyScope::EventsWrite]),
            key(EXPIRED_KEY, "org_a", &[KeyScope::EventsWrite]),
        ];
        keys[2].revoked_at = Some(t("2026-11-01T00:00:00Z"));
        keys[3].expires_at = Some(t(NOW));
        Mem {
            keys: keys.into_iter().map(|k| (k.hash.clone(), k)).collect(),
            projects: vec![
                project("prj_a1", "org_a"),
                project("prj_a2", "org_a"),
                project("prj_b1", "org_b"),
            ],
            closed: [Month::parse("2026-10").unwrap()].into(),
            ..Mem::default()
        }
    }
}

#[async_trait]
impl TenantStore for Mem {
    async fn ensure_user(&self, _: &User) -> Result<User, StoreError> {
        unimplemented!()
    }
    async fn get_user(&self, _: &UserId) -> Result<Option<User>, StoreError> {
        unimplemented!()
    }
    async fn create_org(&self, _: &Org) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn get_org(&self, _: &OrgId) -> Result<Option<Org>, StoreError> {
        unimplemented!()
    }
    async fn list_org_ids(&self) -> Result<Vec<OrgId>, StoreError> {
        unimplemented!()
    }
    async fn create_project(&self, _: &Project) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn get_project(
        &self,
        org: &OrgId,
        id: &ProjectId,
    ) -> Result<Option<Project>, StoreError> {
        self.project_lookups.fetch_add(1, Ordering::SeqCst);
        if self.projects_unavailable {
            return Err(StoreError::Unavailable("down".into()));
        }
        Ok(self
            .projects
            .iter()
            .find(|p| p.org_id == *org && p.id == *id)
            .cloned())
    }
    async fn list_projects(&self, _: &OrgId) -> Result<Vec<Project>, StoreError> {
        unimplemented!()
    }
    async fn create_api_key(&self, _: &ApiKey) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        self.key_lookups.fetch_add(1, Ordering::SeqCst);
        Ok(self.keys.get(hash).cloned())
    }
}

#[async_trait]
impl UsageStore for Mem {
    async fn apply_batch(&self, _: &[Event]) -> Result<ApplyReport, StoreError> {
        unimplemented!()
    }
    async fn counter_series(&self, _: &CounterQuery) -> Result<Vec<CounterValue>, StoreError> {
        unimplemented!()
    }
    async fn ledger_page(
        &self,
        _: &OrgId,
        _: Month,
        _: Option<String>,
        _: usize,
    ) -> Result<LedgerPage, StoreError> {
        unimplemented!()
    }
    async fn stored_counters(
        &self,
        _: &OrgId,
        _: Month,
    ) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError> {
        unimplemented!()
    }
    async fn is_period_closed(&self, month: Month) -> Result<bool, StoreError> {
        self.period_lookups.fetch_add(1, Ordering::SeqCst);
        Ok(self.closed.contains(&month))
    }
    async fn close_period(&self, _: Month, _: DateTime<Utc>) -> Result<(), StoreError> {
        unimplemented!()
    }
}

#[async_trait]
impl EventQueue for Mem {
    async fn publish(&self, events: &[Event]) -> Result<PublishReport, QueueError> {
        self.publish_calls.fetch_add(1, Ordering::SeqCst);
        let failed = match &*self.publish_mode.lock().unwrap() {
            PublishMode::Ok => Vec::new(),
            PublishMode::Error => return Err(QueueError::Unavailable("down".into())),
            PublishMode::FailIndexes(ix) => ix.clone(),
        };
        let mut published = self.published.lock().unwrap();
        for (i, e) in events.iter().enumerate() {
            if !failed.contains(&i) {
                published.push(e.clone());
            }
        }
        Ok(PublishReport {
            failed: failed.into_iter().map(|i| (i, "full".into())).collect(),
        })
    }
    async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
        unimplemented!()
    }
    async fn ack(&self, _: &[String]) -> Result<(), QueueError> {
        unimplemented!()
    }
    async fn depth(&self) -> Result<u64, QueueError> {
        unimplemented!()
    }
}

fn app(mem: &Arc<Mem>) -> Router {
    router(IngestState::new(
        mem.clone(),
        mem.clone(),
        mem.clone(),
        Arc::new(MeterCatalogue::default()),
        Arc::new(FixedClock(t(NOW))),
    ))
}

struct Answer {
    status: StatusCode,
    json: Value,
    headers: axum::http::HeaderMap,
}

async fn post_with(
    mem: &Arc<Mem>,
    key: Option<&str>,
    content_type: &str,
    body: impl Into<Body>,
) -> Answer {
    let mut req = Request::post("/v1/events").header(header::CONTENT_TYPE, content_type);
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let res = app(mem)
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    Answer {
        status,
        json,
        headers,
    }
}

async fn post(mem: &Arc<Mem>, key: Option<&str>, body: impl Into<Body>) -> Answer {
    post_with(mem, key, "application/json", body).await
}

fn ev(id: &str) -> Value {
    json!({"id": id, "project_id": "prj_a1", "meter": "api_calls", "quantity": 1,
           "timestamp": "2026-11-26T10:00:00Z", "properties": {"route": "/x"}})
}

fn with(mut v: Value, field: &str, value: Value) -> Value {
    v[field] = value;
    v
}

fn error_of(a: &Answer) -> (&str, &str) {
    (
        a.json["error"]["code"].as_str().unwrap_or(""),
        a.json["error"]["field"].as_str().unwrap_or(""),
    )
}

#[tokio::test]
async fn a_mixed_batch_accepts_the_good_and_names_each_bad_field() {
    let mem = Arc::new(Mem::seeded());
    let mut missing_id = ev("x");
    missing_id.as_object_mut().unwrap().remove("id");
    let events = vec![
        ev("e0"),
        with(ev("e1"), "timestamp", json!("yesterday")),
        with(ev("e2"), "quantity", json!(-1)),
        with(ev("e3"), "quantity", json!("abc")),
        with(ev("e4"), "meter", json!("gpu_hours")),
        with(ev("e5"), "project_id", json!("prj_zzz")),
        with(ev("e6"), "project_id", json!("prj_b1")),
        missing_id,
        ev(&"x".repeat(129)),
        with(ev("e9"), "timestamp", json!("2026-10-15T00:00:00Z")),
        with(ev("e10"), "timestamp", json!("2026-11-26T12:06:00Z")),
        with(
            with(ev("e11"), "project_id", json!("prj_a2")),
            "meter",
            json!("compute_minutes"),
        ),
        // A resent id is accepted like any other; the aggregator dedupes.
        with(ev("e0"), "quantity", json!("0.1")),
    ];
    let mut events = events;
    events[11]["quantity"] = json!("2.50");
    let body = json!({ "events": events }).to_string();
    let a = post(&mem, Some(GOOD_KEY), body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    assert_eq!(a.json["accepted"], 3);
    let rejected = a.json["rejected"].as_array().unwrap();
    let got: Vec<(u64, &str, &str)> = rejected
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["error"]["code"].as_str().unwrap(),
                r["error"]["field"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, "invalid_timestamp", "timestamp"),
            (2, "invalid_quantity", "quantity"),
            (3, "invalid_quantity", "quantity"),
            (4, "unknown_meter", "meter"),
            (5, "unknown_project", "project_id"),
            (6, "unknown_project", "project_id"),
            (7, "missing_field", "id"),
            (8, "invalid_id", "id"),
            (9, "period_closed", "timestamp"),
            (10, "timestamp_in_future", "timestamp"),
        ]
    );
    assert_eq!(rejected[0]["id"], "e1");
    assert_eq!(rejected[6]["id"], Value::Null);
    assert_eq!(rejected[8]["id"], "e9");
    for r in rejected {
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
    }
    // Every good event is published, in one call, with exact quantities.
    assert_eq!(mem.publish_calls.load(Ordering::SeqCst), 1);
    let published = mem.published.lock().unwrap();
    let summary: Vec<(&str, String, &str)> = published
        .iter()
        .map(|e| {
            (
                e.id.as_str(),
                e.quantity.value().to_string(),
                e.org_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("e0", "1".to_string(), "org_a"),
            ("e11", "2.5".to_string(), "org_a"),
            ("e0", "0.1".to_string(), "org_a"),
        ]
    );
    assert_eq!(
        published[1].meter,
        MeterName::parse("compute_minutes").unwrap()
    );
    // Distinct projects (a1, zzz, b1, a2) and months (11, 10) are looked up once each.
    assert_eq!(mem.project_lookups.load(Ordering::SeqCst), 4);
    assert_eq!(mem.period_lookups.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_single_event_body_is_accepted() {
    let mem = Arc::new(Mem::seeded());
    let a = post(&mem, Some(GOOD_KEY), ev("solo").to_string()).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json, json!({"accepted": 1, "rejected": []}));
    assert_eq!(mem.published.lock().unwrap()[0].id.as_str(), "solo");

    let a = post(
        &mem,
        Some(GOOD_KEY),
        with(ev("bad"), "quantity", json!(true)).to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json["accepted"], 0);
    assert_eq!(a.json["rejected"][0]["error"]["field"], "quantity");
    assert_eq!(
        mem.publish_calls.load(Ordering::SeqCst),
        1,
        "nothing to publish"
    );
}

#[tokio::test]
async fn cloudevents_are_accepted_and_errors_use_their_names() {
    let mem = Arc::new(Mem::seeded());
    let ce = json!({"specversion": "1.0", "source": "/svc", "id": "ce1", "type": "compute_minutes",
        "subject": "prj_a1", "time": "2026-11-26T10:00:00Z",
        "data": {"quantity": "12.5", "region": "eu"}});
    let a = post_with(
        &mem,
        Some(GOOD_KEY),
        "application/cloudevents+json",
        ce.to_string(),
    )
    .await;
    assert_eq!(a.json, json!({"accepted": 1, "rejected": []}));
    let e = mem.published.lock().unwrap()[0].clone();
    assert_eq!(e.quantity.value().to_string(), "12.5");
    assert_eq!(e.properties["region"], "eu");

    let bad_type = with(ce.clone(), "type", json!("gpu_hours"));
    let bad_qty = with(ce.clone(), "data", json!({"quantity": -3}));
    let body = json!([ce, bad_type, bad_qty, 7]).to_string();
    let a = post_with(
        &mem,
        Some(GOOD_KEY),
        "application/cloudevents-batch+json",
        body,
    )
    .await;
    assert_eq!(a.json["accepted"], 1);
    let fields: Vec<Value> = a.json["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"]["field"].clone())
        .collect();
    assert_eq!(fields, [json!("type"), json!("data.quantity"), Value::Null]);
}

#[tokio::test]
async fn malformed_bodies_are_400_naming_body_or_events() {
    let mem = Arc::new(Mem::seeded());
    let cases = [
        ("{\"events\": [".to_string(), "malformed_json", "body"),
        ("not json".to_string(), "malformed_json", "body"),
        ("[]".to_string(), "invalid_body", "body"),
        (r#"{"events": []}"#.to_string(), "invalid_body", "events"),
        (r#"{"events": "x"}"#.to_string(), "invalid_body", "events"),
        (
            json!({ "events": vec![ev("e"); 1001] }).to_string(),
            "invalid_body",
            "events",
        ),
    ];
    for (body, code, field) in cases {
        let a = post(&mem, Some(GOOD_KEY), body.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body:.40}");
        assert_eq!(error_of(&a), (code, field), "{body:.40}");
        assert!(!a.json["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(mem.publish_calls.load(Ordering::SeqCst), 0);
    let a = post(
        &mem,
        Some(GOOD_KEY),
        json!({ "events": vec![ev("e"); 1000] }).to_string(),
    )
    .await;
    assert_eq!(a.json["accepted"], 1000);
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_413_json() {
    let mem = Arc::new(Mem::seeded());
    let mut body = json!({ "events": [ev("e")] }).to_string();
    body.insert_str(1, &" ".repeat(body::MAX_BODY_BYTES));
    let a = post(&mem, Some(GOOD_KEY), body).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&a), ("payload_too_large", "body"));
    // Exactly the limit is fine.
    let mut body = json!({ "events": [ev("e")] }).to_string();
    body.insert_str(1, &" ".repeat(body::MAX_BODY_BYTES - body.len()));
    assert_eq!(body.len(), body::MAX_BODY_BYTES);
    let a = post(&mem, Some(GOOD_KEY), body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn bad_keys_are_401_and_missing_scope_403() {
    let mem = Arc::new(Mem::seeded());
    let body = || ev("e").to_string();
    for key in [
        None,
        Some("tk_test_unknown"),
        Some(REVOKED_KEY),
        Some(EXPIRED_KEY),
    ] {
        let a = post(&mem, key, body()).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(error_of(&a).0, "unauthorized");
        assert_eq!(a.headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    let lookups = mem.key_lookups.load(Ordering::SeqCst);
    let a = post(&mem, Some(&"k".repeat(129)), body()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        mem.key_lookups.load(Ordering::SeqCst),
        lookups,
        "too-long secrets are refused before any lookup"
    );
    let a = post(&mem, Some(READ_KEY), body()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(error_of(&a).0, "forbidden");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("events:write")
    );
    // Auth is checked before the body is even read.
    let a = post(&mem, None, "x".repeat(body::MAX_BODY_BYTES + 1)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(mem.publish_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_failing_queue_is_503_and_partial_failures_are_rejections() {
    let mem = Arc::new(Mem::seeded());
    *mem.publish_mode.lock().unwrap() = PublishMode::Error;
    let a = post(&mem, Some(GOOD_KEY), ev("e").to_string()).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&a).0, "service_unavailable");

    *mem.publish_mode.lock().unwrap() = PublishMode::FailIndexes(vec![1]);
    let body =
        json!({"events": [ev("a"), with(ev("bad"), "quantity", json!(-1)), ev("b"), ev("c")]});
    let a = post(&mem, Some(GOOD_KEY), body.to_string()).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json["accepted"], 2);
    let r = &a.json["rejected"];
    assert_eq!(r[0]["index"], 1);
    assert_eq!(r[1]["index"], 2, "published index 1 is body index 2");
    assert_eq!(r[1]["id"], "b");
    assert_eq!(r[1]["error"]["code"], "queue_unavailable");
}

#[tokio::test]
async fn a_failing_store_is_503() {
    let mem = Arc::new(Mem {
        projects_unavailable: true,
        ..Mem::seeded()
    });
    let a = post(&mem, Some(GOOD_KEY), ev("e").to_string()).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mem.publish_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn request_ids_are_echoed() {
    let mem = Arc::new(Mem::seeded());
    let req = Request::post("/v1/events")
        .header(header::AUTHORIZATION, format!("Bearer {GOOD_KEY}"))
        .header("x-request-id", "abc-123")
        .body(Body::from(ev("e").to_string()))
        .unwrap();
    let res = app(&mem).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let a = post(&mem, Some(GOOD_KEY), ev("e").to_string()).await;
    assert!(
        a.headers["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
}
