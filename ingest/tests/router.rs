//! Router tests against the in-memory store (`tally_store::MemoryStore`, the adapter that
//! passes the storage conformance suite) and a queue fake whose publishes can be made to
//! fail or wait, with a [`FixedClock`] (time moves when a test says so; nothing sleeps).
//!
//! Every answer the helpers see is also checked against the OpenAPI document: its status
//! must be documented for `POST /v1/events`, and an error body's keys must be documented
//! properties of the error object.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::TimeDelta;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tally_core::event::{Event, Quantity};
use tally_core::ids::{ApiKeyId, EventId, MeterName};
use tally_core::meter::{Aggregation, Meter, ValueSource};
use tally_core::period::{Granularity, Month};
use tally_core::plan::{PlanId, RateLimit};
use tally_core::ports::{
    ApiKeyStore, FixedClock, KeyRotation, OrgStore, ProjectStore, ProjectUpdate, Revocation,
    UsageStore,
};
use tally_core::tenant::KeyScope;
use tally_store::MemoryStore;
use tally_store::memory::{Fault, Op};
use tokio::sync::Notify;
use tower::ServiceExt;

mod common;
use common::{PublishMode, Queue, an_org, key, org, project, respond, seed_owner, t};

use std::sync::Arc;

use tally_core::MeterCatalogue;
use tally_ingest::*;

const NOW: &str = "2026-11-26T12:00:00Z";
/// `events:write` key of org_a (pro plan).
const GOOD_KEY: &str = "tk_live_770e607624d689265ca6c44884d0807d9b054d23c473c106c72be9de08b7376c";
/// `usage:read` only.
const READ_KEY: &str = "tk_live_3316348dbadfb7b11c7c2ea235949419e23f9fa898ad2c198f999617912a9925";
const REVOKED_KEY: &str =
    "tk_live_4bb47f186df233e48b09d241ee4defb821add0c35ac8311469fe1522c6813dd5";
const EXPIRED_KEY: &str =
    "tk_live_fa64ea1e82e1206f828ab2a02917c7e92accb98e3b95881a1b4ad52b914b66e3";
/// `events:write` key of org_f (free plan: 10 events/s, burst 20, hard limits).
const FREE_KEY: &str = "tk_live_ad95d5fa651ba86d8923fe1238d24a4f1988a752acfe426ac72ac7c04471bc17";
/// A test key (`tk_test_…`) of org_f: its usage is kept apart and never limited.
const FREE_TEST_KEY: &str =
    "tk_test_0b6a1c5e9d4f2a7b3c8e1d6f5a4b9c2e7d0f3a6b1c4e8d2f5a9b7c3e6d1f4a8b";
/// Key of an org that was deleted (which revoked it).
const ORPHAN_KEY: &str = "tk_live_88f6811ab5d8fc6d3177f9b7609ae0fcebfda187e5046b62d38bb539e88b74d7";

fn ms(n: i64) -> TimeDelta {
    TimeDelta::milliseconds(n)
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn meter(s: &str) -> MeterName {
    MeterName::parse(s).unwrap()
}

fn month(s: &str) -> Month {
    Month::parse(s).unwrap()
}

fn key_id(secret: &str) -> ApiKeyId {
    key(secret, "org_a", &[]).id
}

/// A store holding orgs a (pro), b (pro) and f (free) with their projects and keys, and a
/// deleted org whose key was revoked with it; October is closed.
async fn seeded() -> MemoryStore {
    let store = MemoryStore::new();
    seed_owner(&store).await;
    for (id, plan) in [
        ("org_a", PlanId::Pro),
        ("org_b", PlanId::Pro),
        ("org_f", PlanId::Free),
        ("org_gone", PlanId::Pro),
    ] {
        store.create_org(&an_org(id, plan)).await.unwrap();
    }
    for (id, o) in [
        ("prj_a1", "org_a"),
        ("prj_a2", "org_a"),
        ("prj_b1", "org_b"),
        ("prj_f1", "org_f"),
    ] {
        store.create_project(&project(id, o)).await.unwrap();
    }
    let mut revoked = key(REVOKED_KEY, "org_a", &[KeyScope::EventsWrite]);
    revoked.revoked_at = Some(t("2026-11-01T00:00:00Z"));
    let mut expired = key(EXPIRED_KEY, "org_a", &[KeyScope::EventsWrite]);
    expired.expires_at = Some(t(NOW));
    for k in [
        key(GOOD_KEY, "org_a", &[KeyScope::EventsWrite]),
        key(READ_KEY, "org_a", &[KeyScope::UsageRead]),
        revoked,
        expired,
        key(FREE_KEY, "org_f", &[KeyScope::EventsWrite]),
        key(FREE_TEST_KEY, "org_f", &[KeyScope::EventsWrite]),
        key(ORPHAN_KEY, "org_gone", &[KeyScope::EventsWrite]),
    ] {
        store.create_api_key(&k).await.unwrap();
    }
    store
        .delete_org(&org("org_gone"), t("2026-11-02T00:00:00Z"))
        .await
        .unwrap();
    store
        .close_period(month("2026-10"), t("2026-11-01T02:00:00Z"))
        .await
        .unwrap();
    store
}

/// The OpenAPI document, built once.
static DOC: openapi::BuiltOnce = openapi::BuiltOnce::new(openapi::document);

fn schema_properties(name: &str) -> BTreeSet<String> {
    DOC.get()["components"]["schemas"][name]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {name} has no properties"))
        .keys()
        .cloned()
        .collect()
}

fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// Asserts that `status` is documented for the operation, with `Retry-After` when sent.
fn assert_documented(method: &str, path: &str, a: &Answer) {
    let op = &DOC.get()["paths"][path][method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    let response = DOC.resolve(&op["responses"][a.status.as_str()]);
    assert!(
        response.is_object(),
        "{method} {path} answered {} which is not documented",
        a.status
    );
    if a.headers.contains_key(header::RETRY_AFTER) {
        assert!(
            response["headers"]["Retry-After"].is_object(),
            "{} sends Retry-After, undocumented",
            a.status
        );
    }
    if !a.status.is_success() {
        assert_eq!(keys_of(&a.json), BTreeSet::from(["error".to_owned()]));
        let undocumented: Vec<_> = keys_of(&a.json["error"])
            .difference(&schema_properties("ErrorBody"))
            .cloned()
            .collect();
        assert!(undocumented.is_empty(), "{undocumented:?}");
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    json: Value,
    headers: axum::http::HeaderMap,
}

impl Answer {
    /// The error's message.
    fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap()
    }

    /// Expects a 202 that accepted `accepted` events and rejected `rejected` (index, code,
    /// field), in order.
    fn assert_accepted(&self, accepted: u64, rejected: &[(u64, &str, &str)]) {
        common::assert_accepted(self.status, &self.json, accepted, rejected);
    }

    fn error(&self) -> (&str, &str) {
        (
            self.json["error"]["code"].as_str().unwrap_or(""),
            self.json["error"]["field"].as_str().unwrap_or(""),
        )
    }

    fn retry_after(&self) -> Option<u64> {
        self.headers
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().parse().unwrap())
    }

    fn rejected_codes(&self) -> Vec<(u64, String)> {
        self.json["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["index"].as_u64().unwrap(),
                    r["error"]["code"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

/// A router over the store, the queue fake, its clock and one set of caches, as in a running
/// process.
struct Harness {
    store: MemoryStore,
    mem: Arc<Queue>,
    clock: Arc<FixedClock>,
    ingest: Ingest,
}

impl Harness {
    async fn new() -> Self {
        Harness::with(IngestConfig::default()).await
    }

    /// The seeded harness, with `org_id`'s November usage of the `sum` meter `m` at `value`.
    async fn using(org_id: &str, m: &str, value: i64) -> Self {
        let h = Harness::new().await;
        h.set_usage(org_id, m, "2026-11", value).await;
        h
    }

    async fn with(config: IngestConfig) -> Self {
        Harness::over(seeded().await, config)
    }

    fn over(store: MemoryStore, config: IngestConfig) -> Self {
        Harness::over_catalogue(store, config, MeterCatalogue::default())
    }

    fn over_catalogue(store: MemoryStore, config: IngestConfig, meters: MeterCatalogue) -> Self {
        let mem = Arc::new(Queue::default());
        let clock = Arc::new(FixedClock::at(t(NOW)));
        let shared = Arc::new(store.clone());
        let ingest = Ingest::new(
            IngestState::new(
                shared.clone(),
                shared,
                mem.clone(),
                Arc::new(meters),
                clock.clone(),
            ),
            config,
        );
        Harness {
            store,
            mem,
            clock,
            ingest,
        }
    }

    /// Makes the org's month usage of a `sum` meter read `value` (at least what it reads
    /// now), by applying one event of the difference to the store.
    async fn set_usage(&self, org_id: &str, m: &str, mon: &str, value: i64) {
        let org_id = org(org_id);
        let meter = meter(m);
        let mon = month(mon);
        let now: Decimal = self
            .store
            .stored_counters(&org_id, mon)
            .await
            .unwrap()
            .into_iter()
            .find(|(k, _)| {
                k.project.is_none() && k.meter == meter && k.granularity == Granularity::Month
            })
            .map_or(Decimal::ZERO, |(_, v)| v);
        let add = Decimal::from(value) - now;
        assert!(add >= Decimal::ZERO, "usage only grows");
        let project = self
            .store
            .list_projects(&org_id)
            .await
            .unwrap()
            .remove(0)
            .id;
        let e = Event {
            id: EventId::parse(&format!("usage_{m}_{value}")).unwrap(),
            org_id,
            project_id: project,
            meter,
            aggregation: Aggregation::Sum,
            quantity: Quantity::new(add).unwrap(),
            timestamp: mon.start(),
            properties: serde_json::Map::new(),
        };
        self.store.apply_batch(&[e]).await.unwrap();
    }

    /// Revokes `GOOD_KEY` in the store (not in ingest's cache) as from `after` past `NOW`.
    async fn revoke_good_key(&self, after: TimeDelta) {
        self.store
            .revoke_api_key(&Revocation::new(
                &org("org_a"),
                &key_id(GOOD_KEY),
                t(NOW) + after,
            ))
            .await
            .unwrap();
    }

    fn advance(&self, d: TimeDelta) {
        self.clock.advance(d);
    }

    /// The router's answer to `req`, its body read as JSON.
    async fn answer(&self, req: Request<Body>) -> Answer {
        let (status, headers, bytes) = respond(self.ingest.clone().router(), req).await;
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
        Answer {
            status,
            json,
            headers,
        }
    }

    /// Sends a `POST /v1/events` request, checked against the document.
    async fn send(&self, req: Request<Body>) -> Answer {
        let a = self.answer(req).await;
        assert_documented("POST", "/v1/events", &a);
        a
    }

    async fn post_with(
        &self,
        key: Option<&str>,
        content_type: &str,
        body: impl Into<Body>,
    ) -> Answer {
        let mut req = Request::post("/v1/events").header(header::CONTENT_TYPE, content_type);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        self.send(req.body(body.into()).unwrap()).await
    }

    async fn post(&self, key: Option<&str>, body: impl Into<Body>) -> Answer {
        self.post_with(key, "application/json", body).await
    }

    /// Posts the one event `e` with `key`.
    async fn post_event(&self, key: &str, e: Value) -> Answer {
        self.post(Some(key), e.to_string()).await
    }

    /// Posts `events` as a batch with `key`.
    async fn batch(&self, key: &str, events: Vec<Value>) -> Answer {
        self.post(Some(key), json!({ "events": events }).to_string())
            .await
    }

    /// Posts each of `events` in a request of its own with `key`, and expects each accepted.
    async fn accepts_each(&self, key: &str, events: impl IntoIterator<Item = Value>) {
        for (i, e) in events.into_iter().enumerate() {
            let a = self.post_event(key, e).await;
            assert_eq!(a.status, StatusCode::ACCEPTED, "request {i}: {}", a.json);
        }
    }

    /// Empties the free plan's bucket of `FREE_KEY` (it holds 20 requests, or 20 events when
    /// charged per event; the clock does not move, so nothing refills): 20 `api_calls`
    /// events `{prefix}0`..`{prefix}19`, each accepted.
    async fn empty_free_bucket(&self, prefix: &str) {
        self.accepts_each(
            FREE_KEY,
            (0..20).map(|i| fev(&format!("{prefix}{i}"), "api_calls", 1)),
        )
        .await;
    }
}

fn ev(id: &str) -> Value {
    json!({"id": id, "project_id": "prj_a1", "meter": "api_calls", "quantity": 1,
           "timestamp": "2026-11-26T10:00:00Z", "properties": {"route": "/x"}})
}

/// An event of the free org.
fn fev(id: &str, meter: &str, quantity: i64) -> Value {
    json!({"id": id, "project_id": "prj_f1", "meter": meter, "quantity": quantity,
           "timestamp": "2026-11-26T10:00:00Z"})
}

/// The event `id` of org_a, at `ts`.
fn at(id: &str, ts: &str) -> Value {
    with(ev(id), "timestamp", json!(ts))
}

fn many(n: usize, f: impl Fn(usize) -> Value) -> Vec<Value> {
    (0..n).map(f).collect()
}

fn with(mut v: Value, field: &str, value: Value) -> Value {
    v[field] = value;
    v
}

// ---------------------------------------------------------------------------------------
// The event contract

#[tokio::test]
async fn a_mixed_batch_accepts_the_good_and_names_each_bad_field() {
    let h = Harness::new().await;
    let mut missing_id = ev("x");
    missing_id.as_object_mut().unwrap().remove("id");
    let mut events = vec![
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
    events[11]["quantity"] = json!("2.50");
    let a = h.batch(GOOD_KEY, events).await;
    a.assert_accepted(
        3,
        &[
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
        ],
    );
    let rejected = a.json["rejected"].as_array().unwrap();
    assert_eq!(rejected[0]["id"], "e1");
    assert_eq!(rejected[6]["id"], Value::Null);
    assert_eq!(rejected[8]["id"], "e9");
    for r in rejected {
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
    }
    // Every good event is published, in one call, with exact quantities.
    assert_eq!(h.mem.publish_calls.load(Ordering::SeqCst), 1);
    let published = h.mem.published.lock().unwrap();
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
    assert_eq!(published[1].meter, meter("compute_minutes"));
    // Distinct projects (a1, zzz, b1, a2) are looked up once each, and month 11 once;
    // month 10 ended more than a week ago, so it is refused without asking the store.
    assert_eq!(h.store.calls(Op::GetProject), 4);
    assert_eq!(h.store.calls(Op::IsPeriodClosed), 1);
}

/// A meter that reads its amount from a property path: the number there becomes the
/// queued quantity, exactly; an event whose path is missing or not a number in range is
/// refused naming the path, and the rest of its batch goes through.
#[tokio::test]
async fn a_property_valued_meter_reads_its_path_and_refuses_events_without_it() {
    let mut meters: Vec<Meter> = MeterCatalogue::default().meters().cloned().collect();
    meters.push(Meter {
        name: meter("llm_tokens"),
        unit: "tokens".into(),
        aggregation: Aggregation::Sum,
        default_quantity: None,
        value: ValueSource::parse("properties.tokens").unwrap(),
        dimensions: Default::default(),
    });
    let h = Harness::over_catalogue(
        seeded().await,
        IngestConfig::default(),
        MeterCatalogue::new(meters),
    );
    let tokens = |id: &str, props: Value| {
        json!({"id": id, "project_id": "prj_a1", "meter": "llm_tokens",
               "timestamp": "2026-11-26T10:00:00Z", "properties": props})
    };
    let a = h
        .batch(
            GOOD_KEY,
            vec![
                tokens("t0", json!({"tokens": 1200, "model": "gpt-4"})),
                tokens("t1", json!({"model": "gpt-4"})),
                tokens("t2", json!({"tokens": "lots"})),
                ev("c0"),
                tokens("t4", json!({"tokens": "0.5"})),
                with(tokens("t5", json!({"tokens": 3})), "quantity", json!(3)),
            ],
        )
        .await;
    a.assert_accepted(
        3,
        &[
            (1, "invalid_properties", "properties.tokens"),
            (2, "invalid_quantity", "properties.tokens"),
            (5, "invalid_quantity", "quantity"),
        ],
    );
    let summary: Vec<(String, String)> = h
        .mem
        .published
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.id.as_str().to_owned(), e.quantity.value().to_string()))
        .collect();
    let want = [("t0", "1200"), ("c0", "1"), ("t4", "0.5")];
    assert_eq!(summary, want.map(|(id, q)| (id.to_owned(), q.to_owned())));
    // A CloudEvent carries properties in `data`, and its errors say so.
    let ce = json!({"specversion": "1.0", "source": "/svc", "id": "ce1", "type": "llm_tokens",
        "subject": "prj_a1", "time": "2026-11-26T10:00:00Z",
        "data": {"tokens": 40, "model": "gpt-4"}});
    let no_tokens = with(ce.clone(), "data", json!({"model": "gpt-4"}));
    let body = json!([ce, no_tokens]).to_string();
    let a = h
        .post_with(Some(GOOD_KEY), "application/cloudevents-batch+json", body)
        .await;
    assert_eq!(a.json["accepted"], 1, "{}", a.json);
    assert_eq!(a.json["rejected"][0]["error"]["field"], "data.tokens");
    let last = h.mem.published.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last.id.as_str(), last.quantity.value()),
        ("ce1", Decimal::from(40))
    );
}

/// Backdating: only the current month, and the previous one within a week of its end and
/// until billing closes it, take events; an older month is `period_closed` naming
/// `timestamp` even though billing never closed it.
#[tokio::test]
async fn events_older_than_the_previous_month_are_refused() {
    let h = Harness::new().await;
    // (server clock, event id, its timestamp, accepted?)
    let end_of_november = "2026-11-30T23:00:00Z";
    for (now, id, ts, accepted) in [
        // 2026-11-26: October ended more than a week ago (and is closed in the store too);
        // September and 2001 were never closed.
        (NOW, "old", "2026-09-30T23:00:00Z", false),
        (NOW, "old", "2001-01-15T00:00:00Z", false),
        (NOW, "old", "2026-10-31T23:59:59Z", false),
        // Early in December, November is still open (not closed by billing yet).
        ("2026-12-03T00:00:00Z", "late", end_of_november, true),
        // A week after November ended it takes nothing more, although nobody billed it.
        ("2026-12-08T00:00:01Z", "later", end_of_november, false),
    ] {
        h.clock.set(t(now));
        let a = h.batch(GOOD_KEY, vec![at(id, ts)]).await;
        if accepted {
            a.assert_accepted(1, &[]);
        } else {
            a.assert_accepted(0, &[(0, "period_closed", "timestamp")]);
        }
    }
}

/// An org marked deleted whose keys were not (yet) revoked: ingest refuses the key, naming
/// the org as gone, and queues nothing.
#[tokio::test]
async fn a_deleted_orgs_live_key_is_refused() {
    let h = Harness::new().await;
    assert!(h.store.plant_deleted_org(&org("org_a"), t(NOW)));
    let a = h.batch(GOOD_KEY, vec![ev("after-delete")]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.json);
    assert!(a.message().contains("no longer exists"));
    assert!(h.mem.published.lock().unwrap().is_empty());
}

/// An archived project's events are `project_archived`, not "not a project"; and a request
/// names at most MAX_PROJECTS_PER_REQUEST distinct projects, looked up once each, the
/// events of any further project refused as `too_many_projects` while the rest go through.
#[tokio::test]
async fn projects_per_request_are_bounded_and_archived_ones_say_so() {
    let h = Harness::new().await;
    let archived = project("prj_a2", "org_a");
    h.store.create_project(&archived).await.ok();
    h.store
        .update_project(&ProjectUpdate::new(
            &org("org_a"),
            &archived.id,
            &tally_core::tenant::ProjectChanges {
                name: None,
                archive_at: Some(t(NOW)),
            },
        ))
        .await
        .unwrap();
    let a = h
        .batch(
            GOOD_KEY,
            vec![with(ev("arch"), "project_id", json!("prj_a2"))],
        )
        .await;
    assert_eq!(
        a.json["rejected"][0]["error"]["code"], "project_archived",
        "{}",
        a.json
    );
    assert_eq!(a.json["rejected"][0]["error"]["field"], "project_id");

    let before = h.store.calls(Op::GetProject);
    let max = tally_ingest::events::MAX_PROJECTS_PER_REQUEST;
    // One real project first, then invented ones: 60 distinct in all.
    let mut events = vec![ev("real")];
    events.extend((0..59).map(|i| {
        with(
            ev(&format!("inv{i}")),
            "project_id",
            json!(format!("prj_invented{i}")),
        )
    }));
    let a = h.batch(GOOD_KEY, events).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json["accepted"], 1);
    let codes = a.rejected_codes();
    let too_many = codes
        .iter()
        .filter(|(_, c)| c == "too_many_projects")
        .count();
    let unknown = codes.iter().filter(|(_, c)| c == "unknown_project").count();
    assert_eq!((unknown, too_many), (max - 1, 60 - max), "{codes:?}");
    assert!(h.store.calls(Op::GetProject) - before <= max);
}

/// The same id twice in one request: with the same contents it is a plain resend; with
/// other contents the second is accepted (it changes nothing downstream: the first is
/// counted) and named in `notices` as `duplicate_conflict`.
#[tokio::test]
async fn an_id_resent_with_other_contents_is_noticed() {
    let h = Harness::new().await;
    let a = h
        .batch(
            GOOD_KEY,
            vec![
                ev("same"),
                ev("same"),
                ev("twice"),
                with(ev("twice"), "quantity", json!(1000)),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json["accepted"], 4);
    assert_eq!(a.json["rejected"], json!([]));
    let notices = a.json["notices"].as_array().unwrap();
    assert_eq!(notices.len(), 1, "{}", a.json);
    assert_eq!(notices[0]["index"], 3);
    assert_eq!(notices[0]["id"], "twice");
    assert_eq!(notices[0]["error"]["code"], "duplicate_conflict");
    assert_documented("POST", "/v1/events", &a);
    // Without conflicts the answer keeps its shape.
    let a = h.batch(GOOD_KEY, vec![ev("plain")]).await;
    assert!(a.json.get("notices").is_none(), "{}", a.json);
}

/// The hostile-input walk: every bound of an event at the limit (accepted) and one past it
/// (refused, with the code and the field named), one event per request so each answer is
/// about one bound. Body-level bounds (1,000 events, 1 MiB) have tests of their own above;
/// query parameters are walked in tally-api's tests.
#[tokio::test]
async fn every_event_bound_at_the_limit_and_one_past() {
    let h = Harness::new().await;
    let nest = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let keys = |n: usize| {
        let m: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("k{i}"), json!(1))).collect();
        Value::Object(m)
    };
    let sized = |n: usize| json!({ "k": "x".repeat(n - 8) });
    // (field, value, the code it is refused with, naming that field; None: accepted).
    let p = |json: String| -> Value { serde_json::from_str(&json).unwrap() };
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("id", json!("i".repeat(128)), None),
        ("id", json!("i".repeat(129)), Some("invalid_id")),
        ("id", json!(""), Some("invalid_id")),
        ("id", json!("a\u{7}b"), Some("invalid_id")),
        ("quantity", json!("999999999999999999"), None),
        ("quantity", json!("1e18"), Some("invalid_quantity")),
        ("quantity", json!("0.000000001"), None),
        ("quantity", json!("0.0000000001"), Some("invalid_quantity")),
        ("quantity", json!("123456789.123456789"), None),
        (
            "quantity",
            json!("1234567890.123456789"),
            Some("invalid_quantity"),
        ),
        ("quantity", json!(-1), Some("invalid_quantity")),
        ("timestamp", json!("2026-11-26T12:05:00Z"), None),
        (
            "timestamp",
            json!("2026-11-26T12:05:01Z"),
            Some("timestamp_in_future"),
        ),
        ("timestamp", json!("2026-11-01T00:00:00Z"), None),
        (
            "timestamp",
            json!("2026-10-31T23:59:59Z"),
            Some("period_closed"),
        ),
        (
            "timestamp",
            json!("1999-12-31T23:59:59Z"),
            Some("invalid_timestamp"),
        ),
        ("properties", keys(32), None),
        ("properties", keys(33), Some("invalid_properties")),
        ("properties", json!({ "k".repeat(64): 1 }), None),
        (
            "properties",
            json!({ "k".repeat(65): 1 }),
            Some("invalid_properties"),
        ),
        ("properties", p(format!(r#"{{"a":{}}}"#, nest(7))), None),
        (
            "properties",
            p(format!(r#"{{"a":{}}}"#, nest(8))),
            Some("invalid_properties"),
        ),
        ("properties", sized(4096), None),
        ("properties", sized(4097), Some("invalid_properties")),
        ("project_id", json!("prj_a1"), None),
        ("project_id", json!("prj_nope"), Some("unknown_project")),
        ("project_id", json!("org_a"), Some("unknown_project")),
        ("meter", json!("gpu_hours"), Some("unknown_meter")),
        ("meter", json!("m".repeat(500)), Some("unknown_meter")),
    ];
    for (n, (field, value, expected)) in cases.into_iter().enumerate() {
        let event = with(ev(&format!("bound{n}")), field, value.clone());
        let a = h.batch(GOOD_KEY, vec![event]).await;
        assert_eq!(
            a.status,
            StatusCode::ACCEPTED,
            "{field} {value}: {}",
            a.json
        );
        match expected {
            None => assert_eq!(a.json["accepted"], 1, "{field} at its limit: {}", a.json),
            Some(code) => {
                assert_eq!(a.json["accepted"], 0, "{field} past its limit: {value}");
                let error = &a.json["rejected"][0]["error"];
                assert_eq!(error["code"], code, "{field} {value}: {error}");
                assert_eq!(error["field"], field, "{field} {value}: {error}");
            }
        }
    }
    // Every accepted one crossed the queue intact and passes the aggregator's check.
    for e in h.mem.published.lock().unwrap().iter() {
        assert_eq!(e.check(), Ok(()), "{}", e.id.as_str());
    }
    // Headers: a credential longer than any key, or of another scheme, is 401.
    let long = "k".repeat(4096);
    for auth in [format!("Bearer {long}"), "Basic dXNlcjpwYXNz".to_owned()] {
        let req = Request::post("/v1/events")
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(ev("h").to_string()))
            .unwrap();
        assert_eq!(h.send(req).await.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_single_event_body_is_accepted() {
    let h = Harness::new().await;
    let a = h.post_event(GOOD_KEY, ev("solo")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json, json!({"accepted": 1, "rejected": []}));
    assert_eq!(h.mem.published_ids(), ["solo"]);

    let a = h
        .post_event(GOOD_KEY, with(ev("bad"), "quantity", json!(true)))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json["accepted"], 0);
    assert_eq!(a.json["rejected"][0]["error"]["field"], "quantity");
    assert_eq!(
        h.mem.publish_calls.load(Ordering::SeqCst),
        1,
        "nothing to publish"
    );
}

#[tokio::test]
async fn an_unknown_field_named_empty_string_is_still_named() {
    let h = Harness::new().await;
    let a = h.post_event(GOOD_KEY, with(ev("e"), "", json!(1))).await;
    assert_eq!(a.json["rejected"][0]["error"]["code"], "unknown_field");
    assert_eq!(a.json["rejected"][0]["error"]["field"], "\"\"");
}

/// The issue's two lost-`202` cases and the duplicate key: each is refused per event with
/// its field named, the rest of the batch is accepted, and every event ingest queued passes
/// the aggregator's check after a trip through the envelope.
#[tokio::test]
async fn what_ingest_accepts_the_aggregator_applies() {
    let h = Harness::new().await;
    let mut deep = json!(1);
    for _ in 0..126 {
        deep = json!([deep]);
    }
    let grows = format!(r#"{{"n":[{}]}}"#, vec!["1e15"; 800].join(","));
    assert!(grows.len() < 4096);
    let mut events = many(997, |i| ev(&format!("ok{i}")));
    events.push(with(ev("deep"), "properties", json!({ "p": deep })));
    events.push(with(
        ev("grows"),
        "properties",
        serde_json::from_str(&grows).unwrap(),
    ));
    let body = json!({ "events": events }).to_string();
    // The duplicate key cannot be built with `json!`: splice it into the text.
    let twice = r#"{"id":"twice","project_id":"prj_a1","meter":"api_calls","quantity":"1","quantity":"1000","timestamp":"2026-11-26T10:00:00Z"}"#;
    let body = format!("{},{twice}]}}", &body[..body.len() - 2]);
    let a = h.post(Some(GOOD_KEY), body).await;
    a.assert_accepted(
        997,
        &[
            (997, "invalid_properties", "properties"),
            (998, "invalid_properties", "properties"),
            (999, "duplicate_key", "quantity"),
        ],
    );
    let published = h.mem.published.lock().unwrap().clone();
    assert_eq!(published.len(), 997);
    let packed = tally_core::envelope::pack(&published, 256 * 1024);
    assert!(packed.failed.is_empty());
    for m in &packed.messages {
        let (events, unreadable) = tally_core::envelope::decode_each_str(&m.body).unwrap();
        assert!(unreadable.is_empty());
        for e in &events {
            assert_eq!(e.check(), Ok(()), "{}", e.id.as_str());
        }
    }

    // In a CloudEvent, a repeated data member is named as the client wrote it.
    let ce = r#"{"specversion":"1.0","source":"/s","id":"ce2","type":"compute_minutes","subject":"prj_a1","time":"2026-11-26T10:00:00Z","data":{"quantity":"1","quantity":"9"}}"#;
    let a = h
        .post_with(Some(GOOD_KEY), "application/cloudevents+json", ce)
        .await;
    assert_eq!(a.json["accepted"], 0);
    assert_eq!(a.json["rejected"][0]["error"]["code"], "duplicate_key");
    assert_eq!(a.json["rejected"][0]["error"]["field"], "data.quantity");
}

#[tokio::test]
async fn cloudevents_are_accepted_and_errors_use_their_names() {
    let h = Harness::new().await;
    let ce = json!({"specversion": "1.0", "source": "/svc", "id": "ce1", "type": "compute_minutes",
        "subject": "prj_a1", "time": "2026-11-26T10:00:00Z",
        "data": {"quantity": "12.5", "region": "eu"}});
    let a = h
        .post_with(
            Some(GOOD_KEY),
            "application/cloudevents+json",
            ce.to_string(),
        )
        .await;
    assert_eq!(a.json, json!({"accepted": 1, "rejected": []}));
    let e = h.mem.published.lock().unwrap()[0].clone();
    assert_eq!(e.quantity.value().to_string(), "12.5");
    assert_eq!(e.properties["region"], "eu");

    let bad_type = with(ce.clone(), "type", json!("gpu_hours"));
    let bad_qty = with(ce.clone(), "data", json!({"quantity": -3}));
    let body = json!([ce, bad_type, bad_qty, 7]).to_string();
    let a = h
        .post_with(Some(GOOD_KEY), "application/cloudevents-batch+json", body)
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
    let h = Harness::new().await;
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
        let a = h.post(Some(GOOD_KEY), body.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body:.40}");
        assert_eq!(a.error(), (code, field), "{body:.40}");
        assert!(!a.message().is_empty());
    }
    assert_eq!(h.mem.publish_calls.load(Ordering::SeqCst), 0);
    let a = h.batch(GOOD_KEY, vec![ev("e"); 1000]).await;
    assert_eq!(a.json["accepted"], 1000);
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_413_json() {
    let h = Harness::new().await;
    let mut body = json!({ "events": [ev("e")] }).to_string();
    body.insert_str(1, &" ".repeat(body::MAX_BODY_BYTES));
    let a = h.post(Some(GOOD_KEY), body).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.error(), ("payload_too_large", "body"));
    // Exactly the limit is fine.
    let mut body = json!({ "events": [ev("e")] }).to_string();
    body.insert_str(1, &" ".repeat(body::MAX_BODY_BYTES - body.len()));
    assert_eq!(body.len(), body::MAX_BODY_BYTES);
    let a = h.post(Some(GOOD_KEY), body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn request_ids_are_echoed() {
    let h = Harness::new().await;
    let req = Request::post("/v1/events")
        .header(header::AUTHORIZATION, format!("Bearer {GOOD_KEY}"))
        .header("x-request-id", "abc-123")
        .body(Body::from(ev("e").to_string()))
        .unwrap();
    let a = h.send(req).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.headers["x-request-id"], "abc-123");
    let a = h.post_event(GOOD_KEY, ev("e")).await;
    assert!(
        a.headers["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
}

// ---------------------------------------------------------------------------------------
// API keys and their cache

#[tokio::test]
async fn bad_keys_are_401_and_missing_scope_403() {
    let h = Harness::new().await;
    let body = || ev("e").to_string();
    for key in [
        None,
        Some("tk_test_b23a6a8439c0dde5515893e7c90c1e3233b8616e634470f20dc4928bcf3609bc"),
        Some(REVOKED_KEY),
        Some(EXPIRED_KEY),
        Some(ORPHAN_KEY),
    ] {
        let a = h.post(key, body()).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(a.error().0, "unauthorized");
        assert_eq!(a.headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    let lookups = h.store.calls(Op::FindApiKey);
    let a = h.post(Some(&"k".repeat(129)), body()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.store.calls(Op::FindApiKey),
        lookups,
        "too-long secrets are refused before any lookup"
    );
    let a = h.post(Some(READ_KEY), body()).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.error().0, "forbidden");
    assert!(a.message().contains("events:write"));
    // Auth is checked before the body is even read.
    let a = h.post(None, "x".repeat(body::MAX_BODY_BYTES + 1)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.mem.publish_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn keys_are_cached_and_a_revocation_bites_within_the_ttl() {
    let h = Harness::new().await;
    h.accepts_each(GOOD_KEY, (0..5).map(|i| ev(&format!("e{i}"))))
        .await;
    assert_eq!(h.store.calls(Op::FindApiKey), 1, "one store read");
    assert_eq!(h.store.calls(Op::GetOrg), 1, "plan cached too");

    h.revoke_good_key(secs(1)).await;
    h.advance(secs(9));
    let a = h.post_event(GOOD_KEY, ev("late")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "still cached 9 s later");
    h.advance(secs(1));
    let a = h.post_event(GOOD_KEY, ev("later")).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "10 s: the TTL is over");
    assert!(a.message().contains("revoked"));
    assert_eq!(h.store.calls(Op::FindApiKey), 2);
}

#[tokio::test]
async fn a_revocation_time_on_the_cached_key_is_exact() {
    let h = Harness::new().await;
    h.revoke_good_key(secs(3)).await;
    // A rotation with a 3 s overlap: the old key expires then.
    let successor = key(
        "tk_test_bbee0bbb95d9308643cc605bcc203d27940d58865aefe7e08690101ab532ff5b",
        "org_f",
        &[KeyScope::EventsWrite],
    );
    h.store
        .rotate_api_key(&KeyRotation::new(
            &key_id(FREE_KEY),
            &successor,
            t(NOW) + secs(3),
        ))
        .await
        .unwrap();
    for key in [GOOD_KEY, FREE_KEY] {
        let a = h.post_event(key, ev("e")).await;
        assert_ne!(a.status, StatusCode::UNAUTHORIZED, "{key}");
    }
    h.advance(secs(3));
    for key in [GOOD_KEY, FREE_KEY] {
        let a = h.post_event(key, ev("e")).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{key}");
    }
    assert!(
        h.post_event(FREE_KEY, ev("e"))
            .await
            .message()
            .contains("expired")
    );
    assert_eq!(h.store.calls(Op::FindApiKey), 2, "no store read needed");
}

/// A credential that is not shaped like a key (a mode prefix and 64 hex digits) is refused
/// before any lookup: no store read, no cache slot, however many times it is sent.
#[tokio::test]
async fn invented_credentials_cost_no_lookup() {
    let h = Harness::new().await;
    for secret in [
        "nonsense",
        "tk_test_short",
        "tk_live_ZZZZ",
        &"x".repeat(120),
    ] {
        for _ in 0..20 {
            let a = h.post_event(secret, ev("e")).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{secret}");
        }
    }
    assert_eq!(h.store.calls(Op::FindApiKey), 0);
}

#[tokio::test]
async fn unknown_keys_are_cached_briefly() {
    let h = Harness::new().await;
    for _ in 0..50 {
        let a = h
            .post_event(
                "tk_test_d8864644c15d33be9c0aef2d08c8fc105adc040de488b0116882a2cc6aa4492b",
                ev("e"),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(h.store.calls(Op::FindApiKey), 1);
    h.advance(secs(2));
    h.post_event(
        "tk_test_d8864644c15d33be9c0aef2d08c8fc105adc040de488b0116882a2cc6aa4492b",
        ev("e"),
    )
    .await;
    assert_eq!(h.store.calls(Op::FindApiKey), 2, "miss TTL is 2 s");
}

#[tokio::test]
async fn last_used_times_are_kept_in_memory_and_taken_in_bulk() {
    let h = Harness::new().await;
    h.post_event(GOOD_KEY, ev("a")).await;
    h.advance(secs(30));
    h.post_event(GOOD_KEY, ev("b")).await;
    h.post_event(FREE_KEY, fev("c", "api_calls", 1)).await;
    h.post_event(
        "tk_test_b23a6a8439c0dde5515893e7c90c1e3233b8616e634470f20dc4928bcf3609bc",
        ev("d"),
    )
    .await;
    let used: Vec<_> = h
        .ingest
        .key_cache()
        .take_last_used()
        .into_iter()
        .map(|u| (u.key_id, u.at))
        .collect();
    let at = t(NOW) + secs(30);
    assert_eq!(used, [(key_id(FREE_KEY), at), (key_id(GOOD_KEY), at)]);
    assert!(h.ingest.key_cache().take_last_used().is_empty(), "drained");
}

#[tokio::test]
async fn a_store_failure_is_not_cached() {
    let h = Harness::new().await;
    h.store.fail(Op::FindApiKey, Some(Fault::Corrupt));
    for _ in 0..2 {
        let a = h.post_event(GOOD_KEY, ev("e")).await;
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(a.error().0, "internal_error");
    }
    assert_eq!(h.store.calls(Op::FindApiKey), 2);
}

// ---------------------------------------------------------------------------------------
// Projects and periods through their caches

#[tokio::test]
async fn projects_and_periods_are_cached_between_requests() {
    let h = Harness::new().await;
    for i in 0..3 {
        h.post_event(GOOD_KEY, ev(&format!("e{i}"))).await;
    }
    assert_eq!(h.store.calls(Op::GetProject), 1);
    assert_eq!(h.store.calls(Op::IsPeriodClosed), 1);
    // Billing closes November; ingest sees it once the open-period TTL (5 s) is over.
    h.store
        .close_period(month("2026-11"), t(NOW))
        .await
        .unwrap();
    h.advance(secs(4));
    let a = h.post_event(GOOD_KEY, ev("in_flight")).await;
    assert_eq!(a.json["accepted"], 1);
    h.advance(secs(1));
    let a = h.post_event(GOOD_KEY, ev("late")).await;
    assert_eq!(a.json["accepted"], 0);
    assert_eq!(a.rejected_codes(), [(0, "period_closed".to_owned())]);
    assert_eq!(a.json["rejected"][0]["error"]["field"], "timestamp");
    // A closed month stays closed: no more reads for an hour.
    let before = h.store.calls(Op::IsPeriodClosed);
    h.advance(secs(600));
    h.post_event(GOOD_KEY, ev("later")).await;
    assert_eq!(h.store.calls(Op::IsPeriodClosed), before);
}

#[tokio::test]
async fn unknown_projects_are_remembered_briefly() {
    let h = Harness::new().await;
    let bad = with(ev("e"), "project_id", json!("prj_nope"));
    for _ in 0..3 {
        let a = h.post_event(GOOD_KEY, bad.clone()).await;
        assert_eq!(a.rejected_codes(), [(0, "unknown_project".to_owned())]);
    }
    assert_eq!(h.store.calls(Op::GetProject), 1);
    h.advance(secs(2));
    h.post_event(GOOD_KEY, bad.clone()).await;
    assert_eq!(h.store.calls(Op::GetProject), 2);
}

#[tokio::test]
async fn the_future_limit_is_five_minutes_on_the_server_clock() {
    let h = Harness::new().await;
    // NOW is 12:00:00: five minutes ahead is allowed, a second more is not.
    let ok = at("ok", "2026-11-26T12:05:00Z");
    let ahead = at("ahead", "2026-11-26T12:05:01Z");
    let a = h.batch(GOOD_KEY, vec![ok, ahead.clone()]).await;
    a.assert_accepted(1, &[(1, "timestamp_in_future", "timestamp")]);
    h.advance(secs(1));
    let a = h.post_event(GOOD_KEY, ahead).await;
    assert_eq!(
        a.json["accepted"], 1,
        "one second later it is within the skew"
    );
}

// ---------------------------------------------------------------------------------------
// Rate limits

fn per_event() -> IngestConfig {
    let mut config = IngestConfig::default();
    config.rate_limits.cost = RateCost::PerEvent;
    config
}

#[tokio::test]
async fn the_free_plan_bucket_holds_20_requests_and_refills_10_per_second() {
    let h = Harness::new().await;
    let one = |i: usize| fev(&format!("e{i}"), "api_calls", 1);
    h.accepts_each(FREE_KEY, (0..19).map(one)).await;
    // A malformed request pays its token too.
    assert_eq!(
        h.post(Some(FREE_KEY), "{").await.status,
        StatusCode::BAD_REQUEST
    );
    let a = h.post_event(FREE_KEY, one(20)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.error().0, "rate_limited");
    assert_eq!(a.retry_after(), Some(1), "0.1 s rounded up");
    assert!(a.message().contains("10 requests per second (burst 20)"));
    // One token after 100 ms; a batch costs one token.
    h.advance(ms(100));
    let a = h.batch(FREE_KEY, many(500, one)).await;
    assert_eq!(a.json["accepted"], 500);
    assert_eq!(
        h.post_event(FREE_KEY, one(0)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Five tokens after 500 ms.
    h.advance(ms(500));
    h.accepts_each(FREE_KEY, (0..5).map(one)).await;
    let a = h.post_event(FREE_KEY, one(5)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    // Idle for long: the bucket is full again, never fuller.
    h.advance(secs(3600));
    h.accepts_each(FREE_KEY, (0..20).map(one)).await;
    let a = h.post_event(FREE_KEY, one(0)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn charged_per_event_the_bucket_holds_20_events() {
    let h = Harness::with(per_event()).await;
    let one = |i: usize| fev(&format!("e{i}"), "api_calls", 1);
    let a = h.batch(FREE_KEY, many(20, one)).await;
    assert_eq!(a.json["accepted"], 20, "the burst");
    let a = h.post_event(FREE_KEY, one(20)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.retry_after(), Some(1));
    assert!(a.message().contains("10 events per second"));
    h.advance(ms(100));
    let a = h.post_event(FREE_KEY, one(21)).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "one token after 100 ms");
    // Five tokens after 500 ms: a batch of 6 is refused whole (and costs nothing), a batch
    // of 5 passes.
    h.advance(ms(500));
    let a = h.batch(FREE_KEY, many(6, one)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.retry_after(), Some(1));
    let a = h.batch(FREE_KEY, many(5, one)).await;
    assert_eq!(a.json["accepted"], 5);
    assert_eq!(h.mem.published.lock().unwrap().len(), 26);
}

#[tokio::test]
async fn charged_per_event_a_batch_larger_than_the_burst_waits_for_a_full_bucket() {
    let mut config = per_event();
    config
        .rate_limits
        .per_key
        .insert(key_id(GOOD_KEY), RateLimit::new(10, 20));
    let h = Harness::with(config).await;
    let a = h.batch(GOOD_KEY, many(50, |i| ev(&format!("e{i}")))).await;
    assert_eq!(a.json["accepted"], 50, "a full bucket admits any batch");
    // The bucket is 30 tokens in debt: one token is 3.1 s away.
    let a = h.post_event(GOOD_KEY, ev("next")).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.retry_after(), Some(4));
    h.advance(ms(3100));
    let a = h.post_event(GOOD_KEY, ev("next")).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    // 19 tokens 1.9 s later: a batch of 50 waits for all 20, and says so.
    h.advance(ms(1900));
    let a = h.batch(GOOD_KEY, many(50, |i| ev(&format!("f{i}")))).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.retry_after(), Some(1));
    assert!(a.message().contains("exceed the burst"));
    h.advance(ms(100));
    let a = h.batch(GOOD_KEY, many(50, |i| ev(&format!("f{i}")))).await;
    assert_eq!(a.json["accepted"], 50);
}

#[tokio::test]
async fn a_throttled_caller_is_refused_before_its_body_is_read() {
    for config in [IngestConfig::default(), per_event()] {
        let h = Harness::with(config).await;
        h.empty_free_bucket("e").await;
        let a = h
            .post(Some(FREE_KEY), "x".repeat(body::MAX_BODY_BYTES + 1))
            .await;
        assert_eq!(
            a.status,
            StatusCode::TOO_MANY_REQUESTS,
            "not 413: never read"
        );
        // Refused requests cost nothing: after 100 ms exactly one token is there.
        h.advance(ms(100));
        let a = h.post_event(FREE_KEY, fev("x", "api_calls", 1)).await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
        let a = h.post_event(FREE_KEY, fev("y", "api_calls", 1)).await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    }
}

#[tokio::test]
async fn buckets_are_per_key_and_overridable_and_can_be_turned_off() {
    let mut config = IngestConfig::default();
    config
        .rate_limits
        .per_key
        .insert(key_id(GOOD_KEY), RateLimit::new(1, 2));
    config
        .rate_limits
        .per_plan
        .insert(PlanId::Free, RateLimit::new(2, 3));
    let h = Harness::with(config).await;
    h.accepts_each(GOOD_KEY, (0..2).map(|i| ev(&format!("g{i}"))))
        .await;
    let a = h.post_event(GOOD_KEY, ev("g")).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.retry_after(), Some(1));
    // Another key has its own bucket (its plan's, as configured: burst 3).
    let f = |i: usize| fev(&format!("f{i}"), "api_calls", 1);
    h.accepts_each(FREE_KEY, (0..3).map(f)).await;
    let a = h.post_event(FREE_KEY, fev("f", "api_calls", 1)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);

    let mut off = IngestConfig::default();
    off.rate_limits.enabled = false;
    let h = Harness::with(off).await;
    h.accepts_each(FREE_KEY, (0..100).map(f)).await;
}

// ---------------------------------------------------------------------------------------
// Hard plan limits

#[tokio::test]
async fn free_plan_events_past_the_allowance_are_refused_with_limit_and_usage() {
    let h = Harness::using("org_f", "api_calls", 9_998).await;
    let a = h
        .batch(FREE_KEY, many(3, |i| fev(&format!("e{i}"), "api_calls", 1)))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json["accepted"], 2);
    let r = &a.json["rejected"][0];
    assert_eq!(r["index"], 2);
    assert_eq!(r["id"], "e2");
    assert_eq!(r["error"]["code"], "plan_limit_exceeded");
    assert_eq!(r["error"]["field"], "meter");
    assert_eq!(r["error"]["meter"], "api_calls");
    assert_eq!(r["error"]["period"], "2026-11");
    assert_eq!(r["error"]["limit"], "10000");
    assert_eq!(r["error"]["usage"], "10000");
    assert_eq!(h.mem.published_ids(), ["e0", "e1"]);

    // Every event of the next request is past the limit: the request is 429, with
    // Retry-After running to December 1st (4.5 days).
    h.advance(secs(1));
    let a = h.post_event(FREE_KEY, fev("e3", "api_calls", 1)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.error(), ("plan_limit_exceeded", "meter"));
    assert_eq!(a.json["error"]["limit"], "10000");
    assert_eq!(a.json["error"]["usage"], "10000");
    assert_eq!(a.json["error"]["period"], "2026-11");
    assert_eq!(a.retry_after(), Some(4 * 86_400 + 12 * 3600 - 1));
    assert_eq!(h.store.calls(Op::CounterSeries), 1, "usage is cached");
    // Other meters are not affected.
    let a = h
        .post_event(FREE_KEY, fev("c1", "compute_minutes", 5))
        .await;
    assert_eq!(a.json["accepted"], 1);
}

#[tokio::test]
async fn what_is_accepted_is_a_prefix_and_max_meters_compare_readings() {
    let h = Harness::using("org_f", "compute_minutes", 97).await;
    let gib = 1_i64 << 30;
    let a = h
        .batch(
            FREE_KEY,
            vec![
                fev("c0", "compute_minutes", 1),
                fev("c1", "compute_minutes", 5),
                fev("c2", "compute_minutes", 1),
                fev("s0", "storage_bytes", gib),
                fev("s1", "storage_bytes", gib + 1),
                fev("s2", "storage_bytes", 10),
                with(fev("bad", "api_calls", 1), "quantity", json!(-1)),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(
        a.rejected_codes(),
        [
            (1, "plan_limit_exceeded".to_owned()),
            (2, "plan_limit_exceeded".to_owned()),
            (4, "plan_limit_exceeded".to_owned()),
            (6, "invalid_quantity".to_owned()),
        ]
    );
    assert_eq!(a.json["rejected"][0]["error"]["usage"], "98");
    assert_eq!(a.json["rejected"][2]["error"]["limit"], gib.to_string());
    assert_eq!(h.mem.published_ids(), ["c0", "s0", "s2"]);
}

#[tokio::test]
async fn a_request_with_other_rejections_is_202_even_if_the_rest_is_plan_limited() {
    let h = Harness::using("org_f", "api_calls", 10_000).await;
    let a = h
        .batch(
            FREE_KEY,
            vec![
                fev("a", "api_calls", 1),
                with(fev("b", "api_calls", 1), "meter", json!("nope")),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(
        a.rejected_codes(),
        [
            (0, "plan_limit_exceeded".to_owned()),
            (1, "unknown_meter".to_owned())
        ]
    );
    // CloudEvents name the meter attribute `type`.
    let ce = json!({"specversion": "1.0", "source": "/svc", "id": "ce", "type": "api_calls",
        "subject": "prj_f1", "time": "2026-11-26T10:00:00Z", "data": {"quantity": 1}});
    let a = h
        .post_with(
            Some(FREE_KEY),
            "application/cloudevents-batch+json",
            json!([ce, 5]).to_string(),
        )
        .await;
    assert_eq!(a.json["rejected"][0]["error"]["field"], "type");
}

#[tokio::test]
async fn usage_is_reread_after_its_ttl_and_counts_local_acceptances_meanwhile() {
    let h = Harness::using("org_f", "compute_minutes", 90).await;
    let a = h.post_event(FREE_KEY, fev("a", "compute_minutes", 8)).await;
    assert_eq!(a.json["accepted"], 1);
    // Not applied by the aggregator yet, but counted locally: 98 + 3 > 100.
    let a = h.post_event(FREE_KEY, fev("b", "compute_minutes", 3)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.json["error"]["usage"], "98");
    // The aggregator applies "a"; another process accepted 2 more. Seen after the TTL.
    h.set_usage("org_f", "compute_minutes", "2026-11", 100)
        .await;
    h.advance(secs(2));
    let a = h.post_event(FREE_KEY, fev("c", "compute_minutes", 1)).await;
    assert_eq!(a.json["error"]["usage"], "100");
    assert_eq!(h.store.calls(Op::CounterSeries), 2);
    // A zero quantity never passes the limit.
    let a = h.post_event(FREE_KEY, fev("z", "compute_minutes", 0)).await;
    assert_eq!(a.json["accepted"], 1);
}

#[tokio::test]
async fn events_the_queue_did_not_take_do_not_count_against_the_allowance() {
    let h = Harness::using("org_f", "compute_minutes", 95).await;
    *h.mem.publish_mode.lock().unwrap() = PublishMode::Error;
    let a = h.post_event(FREE_KEY, fev("a", "compute_minutes", 5)).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    *h.mem.publish_mode.lock().unwrap() = PublishMode::FailIds(["b".to_owned()].into());
    let a = h.post_event(FREE_KEY, fev("b", "compute_minutes", 5)).await;
    assert_eq!(a.rejected_codes(), [(0, "queue_unavailable".to_owned())]);
    *h.mem.publish_mode.lock().unwrap() = PublishMode::Ok;
    let a = h.post_event(FREE_KEY, fev("c", "compute_minutes", 5)).await;
    assert_eq!(a.json["accepted"], 1, "95 + 5 is exactly the allowance");
}

#[tokio::test]
async fn a_test_keys_events_are_kept_apart_and_held_to_the_free_allowance_of_their_own() {
    let h = Harness::using("org_f", "compute_minutes", 100).await;
    let minutes = |id: &str, n: i64| fev(id, "compute_minutes", n);
    // The live key is at the free plan's hard limit...
    let a = h.post_event(FREE_KEY, minutes("live", 1)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    // ...the test key has an allowance of its own, on the twin's counters, not the live one.
    let a = h
        .batch(
            FREE_TEST_KEY,
            vec![minutes("t1", 95), minutes("t2", 5), minutes("t3", 1)],
        )
        .await;
    // Unbilled test usage cannot carry production traffic: past the free allowance it is
    // refused, saying why.
    a.assert_accepted(2, &[(2, "plan_limit_exceeded", "meter")]);
    let message = a.json["rejected"][0]["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("test mode allows 100"), "{message}");
    // Queued under the org's test twin, so the ledger and counters keep them apart.
    let published = h.mem.published.lock().unwrap().clone();
    assert_eq!(published.len(), 2);
    for e in &published {
        assert_eq!(e.org_id, org("org_f").test_twin());
    }
    // And the live allowance is untouched: a live event is still refused at 100.
    let a = h.post_event(FREE_KEY, minutes("live2", 1)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.json["error"]["usage"], "100");
}

#[tokio::test]
async fn paid_plans_are_never_hard_limited() {
    let h = Harness::using("org_a", "api_calls", 5_000_000).await;
    let a = h.post_event(GOOD_KEY, ev("e")).await;
    assert_eq!(a.json["accepted"], 1);
    assert_eq!(h.store.calls(Op::CounterSeries), 0);
}

// ---------------------------------------------------------------------------------------
// Publishing

#[tokio::test]
async fn a_failing_queue_is_503_with_retry_after_and_partial_failures_are_rejections() {
    let h = Harness::new().await;
    *h.mem.publish_mode.lock().unwrap() = PublishMode::Error;
    let a = h.post_event(GOOD_KEY, ev("e")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.error().0, "service_unavailable");
    assert_eq!(a.retry_after(), Some(1));

    *h.mem.publish_mode.lock().unwrap() = PublishMode::FailIds(["b".to_owned()].into());
    let calls = h.mem.publish_calls.load(Ordering::SeqCst);
    let a = h
        .batch(
            GOOD_KEY,
            vec![
                ev("a"),
                with(ev("bad"), "quantity", json!(-1)),
                ev("b"),
                ev("c"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json["accepted"], 2);
    let r = &a.json["rejected"];
    assert_eq!(r[0]["index"], 1);
    assert_eq!(r[1]["index"], 2, "published index 1 is body index 2");
    assert_eq!(r[1]["id"], "b");
    assert_eq!(r[1]["error"]["code"], "queue_unavailable");
    assert_eq!(
        h.mem.publish_calls.load(Ordering::SeqCst) - calls,
        2,
        "the failed event is retried once"
    );
    assert_eq!(h.mem.published_ids(), ["a", "c"]);
}

#[tokio::test]
async fn a_partial_failure_is_retried_for_the_failed_events_only() {
    let h = Harness::new().await;
    *h.mem.publish_mode.lock().unwrap() =
        PublishMode::FailIdsOnce(["b".to_owned(), "d".to_owned()].into());
    let a = h
        .batch(GOOD_KEY, vec![ev("a"), ev("b"), ev("c"), ev("d")])
        .await;
    assert_eq!(a.json, json!({"accepted": 4, "rejected": []}));
    assert_eq!(h.mem.published_ids(), ["a", "c", "b", "d"]);
}

#[tokio::test]
async fn accepted_is_answered_only_after_publish_returned() {
    let h = Arc::new(Harness::new().await);
    let gate = Arc::new(Notify::new());
    *h.mem.publish_gate.lock().unwrap() = Some(gate.clone());
    let task = tokio::spawn({
        let h = h.clone();
        async move { h.post_event(GOOD_KEY, ev("e")).await.status }
    });
    // Let the request run until it waits inside publish.
    while h.mem.publish_calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        !task.is_finished(),
        "no answer while publish has not returned"
    );
    gate.notify_one();
    assert_eq!(task.await.unwrap(), StatusCode::ACCEPTED);
    assert_eq!(h.mem.published_ids(), ["e"]);
}

#[tokio::test]
async fn a_failing_store_is_503() {
    let h = Harness::new().await;
    h.store.fail(Op::GetProject, Some(Fault::Unavailable));
    let a = h.post_event(GOOD_KEY, ev("e")).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.retry_after(), Some(1));
    assert_eq!(h.mem.publish_calls.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------
// Every status code of the HTTP contract (README, "HTTP"), and the OpenAPI document

#[tokio::test]
async fn every_status_code_of_post_events_is_produced_and_documented() {
    let mut seen = BTreeSet::new();
    let h = Harness::new().await;
    // 202
    seen.insert(h.post_event(GOOD_KEY, ev("ok")).await.status);
    // 400
    seen.insert(h.post(Some(GOOD_KEY), "{").await.status);
    // 401
    seen.insert(h.post(None, ev("x").to_string()).await.status);
    // 403
    seen.insert(h.post_event(READ_KEY, ev("x")).await.status);
    // 413
    seen.insert(
        h.post(Some(GOOD_KEY), " ".repeat(body::MAX_BODY_BYTES + 1))
            .await
            .status,
    );
    // 429: rate limit
    h.empty_free_bucket("r").await;
    let a = h.post_event(FREE_KEY, fev("r", "api_calls", 1)).await;
    assert_eq!(
        (a.status, a.error().0),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    seen.insert(a.status);
    // 429: hard plan limit
    h.advance(secs(10));
    h.set_usage("org_f", "compute_minutes", "2026-11", 100)
        .await;
    let a = h.post_event(FREE_KEY, fev("p", "compute_minutes", 1)).await;
    assert_eq!(
        (a.status, a.error().0),
        (StatusCode::TOO_MANY_REQUESTS, "plan_limit_exceeded")
    );
    // 503
    *h.mem.publish_mode.lock().unwrap() = PublishMode::Error;
    seen.insert(h.post_event(GOOD_KEY, ev("x")).await.status);
    // 500
    let broken = Harness::new().await;
    broken.store.fail(Op::FindApiKey, Some(Fault::Corrupt));
    seen.insert(broken.post_event(GOOD_KEY, ev("x")).await.status);

    let seen: BTreeSet<String> = seen.iter().map(|s| s.as_str().to_owned()).collect();
    let documented: BTreeSet<String> = DOC.get()["paths"]["/v1/events"]["post"]["responses"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        seen, documented,
        "every documented status is produced and vice versa"
    );
    let listed: BTreeSet<String> = openapi::POST_EVENTS_STATUSES
        .iter()
        .map(u16::to_string)
        .collect();
    assert_eq!(listed, documented);
}

#[tokio::test]
async fn the_document_matches_the_routes_and_the_structs() {
    let d = DOC.get();
    assert_eq!(d["openapi"], "3.1.0");
    // Every route the router serves is documented with its method ...
    for (method, path) in ROUTES {
        assert!(
            d["paths"][path][method.to_ascii_lowercase()].is_object(),
            "{method} {path}"
        );
    }
    // ... and every documented ingest operation is served (not 404/405).
    let h = Harness::new().await;
    for (path, item) in d["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let router = if path == "/openapi.json" {
                openapi::router()
            } else {
                h.ingest.clone().router()
            };
            let req = Request::builder()
                .method(method.to_ascii_uppercase().as_str())
                .uri(path)
                .body(Body::empty())
                .unwrap();
            let status = router.oneshot(req).await.unwrap().status();
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {status}"
            );
        }
    }
    // Every $ref resolves.
    fn walk(v: &Value) {
        match v {
            Value::Object(m) => {
                if m.contains_key("$ref") {
                    DOC.resolve(v);
                }
                m.values().for_each(walk);
            }
            Value::Array(a) => a.iter().for_each(walk),
            _ => {}
        }
    }
    walk(d);

    // The response structs serialize to exactly the documented properties.
    let full_error = ErrorBody {
        limit: Some(LimitDetails {
            meter: "api_calls".into(),
            period: "2026-11".into(),
            limit: "1".into(),
            usage: "1".into(),
        }),
        ..ErrorBody::new("c", "m", Some("f"))
    };
    let response = IngestResponse {
        accepted: 1,
        rejected: vec![Rejection {
            index: 0,
            id: Some("e".into()),
            error: full_error.clone(),
        }],
        notices: vec![Rejection {
            index: 1,
            id: Some("e".into()),
            error: full_error,
        }],
    };
    let v = serde_json::to_value(&response).unwrap();
    assert_eq!(keys_of(&v), schema_properties("IngestResponse"));
    assert_eq!(keys_of(&v["rejected"][0]), schema_properties("Rejection"));
    // Plus `count`, which only the management API's plan-count refusals (403, tally-api's
    // `CountLimitBody`) add to the error object, next to an integer `limit`.
    let mut error_keys = keys_of(&v["rejected"][0]["error"]);
    error_keys.insert("count".into());
    // And `request_id`, which the tracing layer adds to 5xx error objects.
    error_keys.insert("request_id".into());
    assert_eq!(error_keys, schema_properties("ErrorBody"));
    let required = |name: &str| -> BTreeSet<String> {
        d["components"]["schemas"][name]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let minimal = serde_json::to_value(ErrorBody::new("c", "m", None::<String>)).unwrap();
    assert_eq!(keys_of(&minimal), required("ErrorBody"));
    // `notices` is left out when empty, so it is not required.
    let without_notices = serde_json::to_value(IngestResponse {
        notices: Vec::new(),
        ..response.clone()
    })
    .unwrap();
    assert_eq!(keys_of(&without_notices), required("IngestResponse"));

    // The documented event fields are exactly those validation accepts.
    let org_a = org("org_a");
    let catalogue = MeterCatalogue::default();
    let ctx = tally_core::event::ValidationContext {
        org_id: &org_a,
        catalogue: &catalogue,
        now: t(NOW),
        other_month: None,
    };
    let documented = schema_properties("Event");
    let mut full = ev("e");
    assert_eq!(
        keys_of(&full),
        documented,
        "the test event uses every field"
    );
    assert!(Event::validate(&full.to_string(), &ctx).is_ok());
    let required_fields = required("Event");
    for f in &documented {
        let mut without = full.clone();
        without.as_object_mut().unwrap().remove(f);
        let ok = Event::validate(&without.to_string(), &ctx).is_ok();
        assert_eq!(ok, !required_fields.contains(f), "{f}");
    }
    full["undocumented"] = json!(1);
    assert_eq!(
        Event::validate(&full.to_string(), &ctx).unwrap_err().code,
        tally_core::event::ErrorCode::UnknownField
    );
    // CloudEvents: every documented attribute that maps is read.
    let ce_props = schema_properties("CloudEvent");
    for attr in ["id", "type", "subject", "time", "data"] {
        assert!(ce_props.contains(attr), "{attr}");
    }
}

// ---------------------------------------------------------------------------------------
// Hostile input: the validator

mod hostile {
    use super::*;
    use proptest::prelude::*;
    use tally_core::event::{ErrorCode, ValidationContext};

    use crate::body::{BodyFormat, split_body};

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "[ -~]{0,40}".prop_map(Value::from),
            "[0-9.eE+-]{0,30}".prop_map(Value::from),
            ".{0,20}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map("[a-z_]{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn field_value(name: &'static str) -> BoxedStrategy<Value> {
        match name {
            "id" => prop_oneof![json_value(), "[ -~]{0,140}".prop_map(Value::from)].boxed(),
            "project_id" => {
                prop_oneof![json_value(), "prj_[a-z0-9]{0,45}".prop_map(Value::from)].boxed()
            }
            "meter" => prop_oneof![
                json_value(),
                prop::sample::select(vec![
                    "api_calls",
                    "compute_minutes",
                    "storage_bytes",
                    "bandwidth_bytes",
                    "API_CALLS",
                    ""
                ])
                .prop_map(Value::from)
            ]
            .boxed(),
            "quantity" => prop_oneof![
                json_value(),
                "-?[0-9]{1,40}(\\.[0-9]{0,30})?(e[+-]?[0-9]{1,5})?".prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
            ]
            .boxed(),
            "timestamp" => prop_oneof![
                json_value(),
                "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})"
                    .prop_map(Value::from),
            ]
            .boxed(),
            _ => json_value().boxed(),
        }
    }

    fn event_object() -> impl Strategy<Value = Value> {
        let fields = tally_core::event::EVENT_FIELDS;
        let known: Vec<BoxedStrategy<Option<Value>>> = fields
            .iter()
            .map(|f| proptest::option::weighted(0.85, field_value(f)).boxed())
            .collect();
        (
            known,
            proptest::collection::btree_map("[ -~]{0,10}", json_value(), 0..2),
            any::<bool>(),
        )
            .prop_map(move |(values, extra, add_extra)| {
                let mut m = serde_json::Map::new();
                for (f, v) in fields.iter().zip(values) {
                    if let Some(v) = v {
                        m.insert((*f).to_owned(), v);
                    }
                }
                if add_extra {
                    m.extend(extra);
                }
                Value::Object(m)
            })
    }

    fn check_validation(json: &str) {
        let org_a = org("org_a");
        let catalogue = MeterCatalogue::default();
        let ctx = ValidationContext {
            org_id: &org_a,
            catalogue: &catalogue,
            now: t(NOW),
            other_month: None,
        };
        match Event::validate(json, &ctx) {
            Ok(e) => {
                assert_eq!(e.org_id, org_a);
                assert!(e.timestamp <= t(NOW) + TimeDelta::minutes(5));
                assert!(e.quantity.value() >= Decimal::ZERO);
            }
            Err(e) => {
                assert!(!e.message.is_empty());
                assert!(
                    !e.field.is_empty()
                        || e.code == ErrorCode::MalformedEvent
                        || e.code == ErrorCode::UnknownField,
                    "{e:?} names no field"
                );
                // What a client sees: every rejection names a field, or the event itself
                // is not an object.
                let r = events::Rejection::of(0, None, BodyFormat::Native, e);
                assert!(
                    r.error.field.is_some() || r.error.code == "malformed_event",
                    "{r:?}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn validating_event_shaped_objects_never_panics_and_names_fields(ev in event_object()) {
            check_validation(&ev.to_string());
        }

        #[test]
        fn validating_any_json_never_panics(v in json_value()) {
            check_validation(&v.to_string());
        }

        #[test]
        fn split_then_validate_never_panics(body in ".{0,300}", wrap in 0..3u8) {
            let body = match wrap {
                0 => body,
                1 => format!("{{\"events\":[{body}]}}"),
                _ => format!("{{\"id\":\"e\",\"meter\":\"api_calls\",\"project_id\":\"prj_a1\",\"timestamp\":{body}}}"),
            };
            for f in [BodyFormat::Native, BodyFormat::CloudEvent, BodyFormat::CloudEventBatch] {
                if let Ok(candidates) = split_body(f, body.as_bytes()) {
                    for c in candidates.iter().flatten() {
                        check_validation(c);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Early refusals over a real socket: the answer arrives whole, and the connection is not
// reset under a client still sending its body.

/// Serves `router` on loopback the way `tally serve` does (`axum::serve` on a bound
/// listener), for the lifetime of the test's runtime.
async fn serve_on_loopback(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// One HTTP/1.1 answer read off a socket.
#[derive(Debug)]
struct WireAnswer {
    status: u16,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    json: Value,
}

impl WireAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The head of `POST /v1/events` declaring a `len`-byte JSON body.
fn post_head(key: Option<&str>, len: usize) -> String {
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    format!(
        "POST /v1/events HTTP/1.1\r\nhost: tally.test\r\ncontent-type: application/json\r\n\
         {auth}content-length: {len}\r\n\r\n"
    )
}

/// Reads what comes next from `r` onto `buf`; panics on an error ("reading `what` failed")
/// or at EOF ("EOF `place`"), with what was read so far.
async fn read_more(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    what: &str,
    place: &str,
) {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let n = r.read(&mut chunk).await.unwrap_or_else(|e| {
        panic!(
            "reading {what} failed ({e}) after {:?}",
            String::from_utf8_lossy(buf)
        )
    });
    assert!(n > 0, "EOF {place}: {:?}", String::from_utf8_lossy(buf));
    buf.extend_from_slice(&chunk[..n]);
}

/// Reads one answer (head, then a `content-length` body) from `r`; any I/O error (a reset)
/// fails the test with what was read so far.
async fn read_answer(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> WireAnswer {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(r, &mut buf, "the answer", "before a whole head").await;
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .expect("a content-length answer");
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        read_more(r, &mut body, "the answer's body", "inside the body").await;
    }
    assert_eq!(body.len(), len, "bytes after the answer's body");
    WireAnswer {
        status,
        headers,
        json: serde_json::from_slice(&body).unwrap(),
    }
}

/// A client that sends the head, then all `len` bytes of the body in 64 KiB chunks with a
/// pause between them (a slow uploader the server answers mid-send), and only then reads:
/// the shape that sees a reset when a server answers early and closes with bytes unread.
async fn upload_then_read(
    stream: &mut tokio::net::TcpStream,
    key: Option<&str>,
    len: usize,
) -> WireAnswer {
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(post_head(key, len).as_bytes())
        .await
        .unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        stream.write_all(&chunk[..n]).await.unwrap_or_else(|e| {
            panic!("the server broke the connection after {sent} of {len} body bytes: {e}")
        });
        sent += n;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    read_answer(stream).await
}

const EIGHT_MIB: usize = 8 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_a_whole_413_and_the_connection_lives_on() {
    let h = Harness::new().await;
    let addr = serve_on_loopback(h.ingest.clone().router()).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let a = upload_then_read(&mut stream, Some(GOOD_KEY), EIGHT_MIB).await;
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.json["error"]["code"], "payload_too_large", "{a:?}");
    // The rest of the body was read and discarded, so the same connection takes the next
    // request (no `connection: close`).
    assert_eq!(a.header("connection"), None, "{a:?}");
    let b = upload_then_read(&mut stream, None, 2).await;
    assert_eq!(b.status, 401, "{b:?}");
    assert!(h.mem.published_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_body_is_read_reach_a_client_still_sending() {
    let h = Harness::new().await;
    // Empty the free key's bucket (20 requests; the clock does not move, so no refill).
    h.empty_free_bucket("e").await;
    let addr = serve_on_loopback(h.ingest.clone().router()).await;
    for (key, status, code) in [
        (None, 401, "unauthorized"),
        (Some("tk_test_nosuchkey"), 401, "unauthorized"),
        (Some(READ_KEY), 403, "forbidden"),
        (Some(FREE_KEY), 429, "rate_limited"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let a = upload_then_read(&mut stream, key, EIGHT_MIB).await;
        assert_eq!(a.status, status, "{key:?}: {a:?}");
        assert_eq!(a.json["error"]["code"], code, "{key:?}: {a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_big_to_drain_is_answered_with_connection_close() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::new().await;
    let addr = serve_on_loopback(h.ingest.clone().router()).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    // 64 MiB declared: more than the drain bound, so the server says it will close. A client
    // that reads while it sends (curl, reqwest) gets the whole answer and stops.
    let len = 64 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        w.write_all(post_head(Some(GOOD_KEY), len).as_bytes())
            .await?;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..len / chunk.len() {
            w.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let a = read_answer(&mut r).await;
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.json["error"]["code"], "payload_too_large", "{a:?}");
    assert_eq!(a.header("connection"), Some("close"), "{a:?}");
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_100_continue_is_refused_without_being_asked_for_its_body() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::new().await;
    let addr = serve_on_loopback(h.ingest.clone().router()).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = post_head(None, EIGHT_MIB).replace("\r\n\r\n", "\r\nexpect: 100-continue\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // The first answer is the refusal, not `100 Continue`; the body was never asked for,
    // so the connection cannot carry another request.
    let a = read_answer(&mut stream).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(a.json["error"]["code"], "unauthorized", "{a:?}");
    assert_eq!(a.header("connection"), Some("close"), "{a:?}");
}

impl Harness {
    /// `GET /v1/entitlements` with `query` (`""` for none), checked against the document.
    async fn entitlements(&self, key: &str, query: &str) -> Answer {
        let req = Request::get(format!("/v1/entitlements{query}"))
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap();
        self.send_entitlements(req).await
    }

    /// Sends a `GET /v1/entitlements` request, checked against the document.
    async fn send_entitlements(&self, req: Request<Body>) -> Answer {
        let a = self.answer(req).await;
        assert_documented("GET", "/v1/entitlements", &a);
        if a.status == StatusCode::OK {
            let one = a.json.get("meter").is_some();
            let schema = if one {
                "Entitlement"
            } else {
                "EntitlementsResponse"
            };
            assert_eq!(keys_of(&a.json), schema_properties(schema), "{schema}");
        }
        a
    }
}

#[tokio::test]
async fn a_hard_limited_free_org_is_allowed_under_its_allowance_and_refused_at_it() {
    let h = Harness::using("org_f", "api_calls", 9_999).await;
    let a = h.entitlements(FREE_KEY, "?meter=api_calls").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json,
        json!({"meter": "api_calls", "allowed": true, "limit": "10000", "usage": "9999",
               "remaining": "1", "hard": true, "period": "2026-11"})
    );
    // The one call ingest accepts next is counted at once (same cache as the hard limit):
    // the org is now at its allowance and refused, before any re-read of the store.
    let posted = h.post_event(FREE_KEY, fev("last", "api_calls", 1)).await;
    assert_eq!(posted.json["accepted"], 1);
    let a = h.entitlements(FREE_KEY, "?meter=api_calls").await;
    assert_eq!(a.json["allowed"], false);
    assert_eq!(a.json["usage"], "10000");
    assert_eq!(a.json["remaining"], "0");
    assert_eq!(h.store.calls(Op::CounterSeries), 1, "usage is cached");

    // Usage applied elsewhere shows once the cache's TTL (2 s) has passed, not before.
    h.set_usage("org_f", "api_calls", "2026-11", 10_500).await;
    assert_eq!(
        h.entitlements(FREE_KEY, "?meter=api_calls").await.json["usage"],
        "10000"
    );
    h.advance(secs(3));
    let a = h.entitlements(FREE_KEY, "?meter=api_calls").await;
    assert_eq!(a.json["usage"], "10500");
    assert_eq!(a.json["remaining"], "0");
    assert_eq!(a.json["allowed"], false);
    // A `max` meter takes any reading up to the limit: still allowed at its limit.
    let a = h.entitlements(FREE_KEY, "?meter=storage_bytes").await;
    assert_eq!(a.json["allowed"], true);
    assert_eq!(a.json["hard"], true);
}

#[tokio::test]
async fn a_soft_plan_past_its_allowance_stays_allowed_with_nothing_remaining() {
    let h = Harness::using("org_a", "api_calls", 1_000_005).await;
    // A usage:read key may ask too.
    for key in [GOOD_KEY, READ_KEY] {
        let a = h.entitlements(key, "?meter=api_calls").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.json,
            json!({"meter": "api_calls", "allowed": true, "limit": "1000000",
                   "usage": "1000005", "remaining": "0", "hard": false, "period": "2026-11"})
        );
    }
}

#[tokio::test]
async fn without_a_meter_every_meter_of_the_plan_is_listed() {
    let h = Harness::using("org_f", "compute_minutes", 40).await;
    let a = h.entitlements(FREE_KEY, "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["plan"], "free");
    assert_eq!(a.json["period"], "2026-11");
    let meters: Vec<&str> = a.json["entitlements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["meter"].as_str().unwrap())
        .collect();
    assert_eq!(
        meters,
        [
            "api_calls",
            "bandwidth_bytes",
            "compute_minutes",
            "storage_bytes"
        ]
    );
    let compute = &a.json["entitlements"][2];
    assert_eq!(compute["usage"], "40");
    assert_eq!(compute["remaining"], "60");
    assert_eq!(compute["allowed"], true);
}

#[tokio::test]
async fn entitlement_checks_refuse_unknown_meters_and_bad_keys() {
    let h = Harness::new().await;
    let a = h.entitlements(GOOD_KEY, "?meter=gpu_hours").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.error(), ("unknown_meter", "meter"));
    let long = "m".repeat(65);
    let a = h.entitlements(GOOD_KEY, &format!("?meter={long}")).await;
    assert_eq!(a.error(), ("invalid_meter", "meter"));
    for key in [REVOKED_KEY, EXPIRED_KEY, ORPHAN_KEY] {
        let a = h.entitlements(key, "?meter=api_calls").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{key}");
    }
    // A key with neither scope is 403.
    let bare = "tk_live_0000000000000000000000000000000000000000000000000000000000000001";
    h.store
        .create_api_key(&key(bare, "org_a", &[]))
        .await
        .unwrap();
    assert_eq!(
        h.entitlements(bare, "?meter=api_calls").await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn entitlement_checks_take_from_the_keys_rate_bucket() {
    let h = Harness::new().await;
    // The free plan's bucket holds 20: posts and checks draw on the same one.
    let post = |i: usize| fev(&format!("e{i}"), "api_calls", 1);
    h.accepts_each(FREE_KEY, (0..10).map(post)).await;
    for i in 0..10 {
        let a = h.entitlements(FREE_KEY, "?meter=api_calls").await;
        assert_eq!(a.status, StatusCode::OK, "check {i}");
    }
    let a = h.entitlements(FREE_KEY, "?meter=api_calls").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.error().0, "rate_limited");
    assert_eq!(a.retry_after(), Some(1), "0.1 s rounded up");
    let a = h.post_event(FREE_KEY, fev("late", "api_calls", 1)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "checks emptied it");
    // Another key's bucket is its own.
    assert_eq!(
        h.entitlements(GOOD_KEY, "?meter=api_calls").await.status,
        StatusCode::OK
    );
    // One token after 100 ms, and a check takes it.
    h.advance(ms(100));
    let a = h.entitlements(FREE_KEY, "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        h.entitlements(FREE_KEY, "").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// An org's IP allowlist applied to its API keys on ingest: `POST /v1/events` and
/// `GET /v1/entitlements` from an address outside it are `403 ip_not_allowed`, inside it
/// they are served; the address is the peer, or behind trusted proxies the entry the
/// outermost appended (a client's own `X-Forwarded-For` words are never believed). The
/// policy travels in the key cache with the key, so a change is seen within the cache's
/// TTL, which the test shows by moving the clock, not by sleeping.
mod ip_allowlist {
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;
    use tally_core::ports::SecurityStore;
    use tally_core::security::{Cidr, OrgSecurityPolicy, SecurityPolicy};

    use super::*;

    /// The seeded store with org_a's allowlist set, behind `trusted_proxies` proxies.
    async fn world(trusted_proxies: usize, allowlist: &[&str]) -> Harness {
        let store = seeded().await;
        set_policy(&store, allowlist).await;
        Harness::over(
            store,
            IngestConfig {
                trusted_proxies,
                ..IngestConfig::default()
            },
        )
    }

    async fn set_policy(store: &MemoryStore, allowlist: &[&str]) {
        store
            .put_security_policy(&OrgSecurityPolicy {
                org_id: org("org_a"),
                policy: SecurityPolicy {
                    ip_allowlist: allowlist.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
                    ..SecurityPolicy::default()
                },
                updated_at: t(NOW),
            })
            .await
            .unwrap();
    }

    impl Harness {
        /// Sends `route` (`events` or `entitlements`) with org_a's key from `peer`, with
        /// `forwarded` as its `X-Forwarded-For` if given.
        async fn from(&self, route: &str, peer: Option<&str>, forwarded: Option<&str>) -> Answer {
            let events = route == "events";
            let mut req = if events {
                Request::post("/v1/events").header(header::CONTENT_TYPE, "application/json")
            } else {
                Request::get("/v1/entitlements")
            }
            .header(header::AUTHORIZATION, format!("Bearer {GOOD_KEY}"));
            if let Some(xff) = forwarded {
                req = req.header("x-forwarded-for", xff);
            }
            let body = if events {
                Body::from(ev("e1").to_string())
            } else {
                Body::empty()
            };
            let mut req = req.body(body).unwrap();
            if let Some(peer) = peer {
                let addr: SocketAddr = format!("{peer}:40000")
                    .parse()
                    .unwrap_or_else(|_| format!("[{peer}]:40000").parse().unwrap());
                req.extensions_mut().insert(ConnectInfo(addr));
            }
            if events {
                self.send(req).await
            } else {
                self.send_entitlements(req).await
            }
        }
    }

    fn refused(answer: &Answer) -> bool {
        answer.status == StatusCode::FORBIDDEN && answer.error().0 == "ip_not_allowed"
    }

    #[tokio::test]
    async fn keys_are_served_inside_the_allowlist_and_refused_outside_it() {
        let w = world(0, &["203.0.113.0/24", "2001:db8::/32"]).await;
        for route in ["events", "entitlements"] {
            let inside = w.from(route, Some("203.0.113.7"), None).await;
            assert!(
                inside.status.is_success(),
                "{route} from inside: {inside:?}"
            );
            let v6 = w.from(route, Some("2001:db8::9"), None).await;
            assert!(v6.status.is_success(), "{route} from inside (IPv6): {v6:?}");
            let outside = w.from(route, Some("198.51.100.1"), None).await;
            assert!(refused(&outside), "{route} from outside: {outside:?}");
            // Without trusted proxies the client's own X-Forwarded-For is not believed.
            let spoofed = w
                .from(route, Some("198.51.100.1"), Some("203.0.113.7"))
                .await;
            assert!(
                refused(&spoofed),
                "{route} spoofing the header: {spoofed:?}"
            );
            // No address at all fails closed.
            let unknown = w.from(route, None, None).await;
            assert!(refused(&unknown), "{route} from nowhere: {unknown:?}");
        }
    }

    #[tokio::test]
    async fn behind_a_trusted_proxy_its_entry_is_the_address() {
        let w = world(1, &["203.0.113.0/24"]).await;
        let proxy = Some("10.0.0.2");
        let inside = w
            .from("entitlements", proxy, Some("198.51.100.1, 203.0.113.7"))
            .await;
        assert!(inside.status.is_success(), "{inside:?}");
        let outside = w
            .from("entitlements", proxy, Some("203.0.113.7, 198.51.100.1"))
            .await;
        assert!(refused(&outside), "{outside:?}");
    }

    #[tokio::test]
    async fn an_empty_allowlist_admits_any_address() {
        let w = world(0, &[]).await;
        let any = w.from("events", Some("192.0.2.44"), None).await;
        assert!(any.status.is_success(), "{any:?}");
    }

    #[tokio::test]
    async fn a_policy_change_reaches_ingest_within_the_key_cache_ttl() {
        let w = world(0, &[]).await;
        let served = |a: Answer| a.status.is_success();
        assert!(served(
            w.from("entitlements", Some("192.0.2.44"), None).await
        ));
        set_policy(&w.store, &["203.0.113.0/24"]).await;
        // The key and its policy are cached: no store read per request, so the old policy
        // holds until the cache's TTL (10 s) runs out...
        w.advance(secs(5));
        assert!(served(
            w.from("entitlements", Some("192.0.2.44"), None).await
        ));
        // ...and not a moment past it.
        w.advance(secs(6));
        assert!(refused(
            &w.from("entitlements", Some("192.0.2.44"), None).await
        ));
    }
}
