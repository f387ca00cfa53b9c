//! Dimensioned meters at ingest: an event of a meter with dimensions is queued under its
//! series key (`llm_tokens{model=gpt-4}`); a value that is missing, not a string or outside
//! the documented charset is refused naming its property; and the per-org, per-meter,
//! per-month series bound is held before the `202`, by a registry shared by every ingest
//! instance: the event that would make one series too many is refused
//! (`dimension_cardinality_exceeded`, naming the meter and the property) while the rest of
//! its batch goes through. A late event (stamped last month) is held to the meters, and
//! series bounds, of the catalogue version in force in its own month.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tally_core::catalogue::{BUILTIN_JSON, Catalogue};
use tally_core::ids::{MeterName, OrgId};
use tally_core::period::Month;
use tally_core::plan::PlanId;
use tally_core::ports::{
    ApiKeyStore, FixedClock, MeterMonth, OrgStore, ProjectStore, SeriesRegistry,
};
use tally_core::tenant::KeyScope;
use tally_ingest::{InForce, Ingest, IngestConfig, IngestState, LiveCatalogue};
use tally_store::MemoryStore;

mod common;
use common::{Queue, an_org, assert_accepted, key, project, respond, seed_owner, t};

const NOW: &str = "2026-11-26T12:00:00Z";
const KEY: &str = "tk_live_880e607624d689265ca6c44884d0807d9b054d23c473c106c72be9de08b7376c";

/// The built-in catalogue plus `llm_tokens`: a sum of `properties.tokens` split by
/// `properties.model`, at most two series per org and month.
fn catalogue() -> Catalogue {
    catalogue_with(
        json!([{ "name": "model", "property": "properties.model" }]),
        2,
    )
}

/// The built-in catalogue plus `llm_tokens` split by `dimensions`, at most `max_series`.
fn catalogue_with(dimensions: Value, max_series: u32) -> Catalogue {
    let mut file: Value = serde_json::from_str(BUILTIN_JSON).unwrap();
    file["meters"]["llm_tokens"] = json!({
        "unit": "tokens", "aggregation": "sum", "value": "properties.tokens",
        "dimensions": dimensions,
        "max_series": max_series,
        "price_unit": "token", "price_unit_size": 1,
        "list_price": { "model": "per_unit", "unit_price": "0.001" }
    });
    for plan in ["free", "starter", "pro", "enterprise"] {
        file["plans"][plan]["meters"]["llm_tokens"] = json!({});
    }
    Catalogue::from_json(&file.to_string(), "test").unwrap()
}

async fn seeded() -> MemoryStore {
    let store = MemoryStore::new();
    seed_owner(&store).await;
    store
        .create_org(&an_org("org_a", PlanId::Pro))
        .await
        .unwrap();
    store
        .create_project(&project("prj_a1", "org_a"))
        .await
        .unwrap();
    let scopes = [KeyScope::EventsWrite, KeyScope::UsageRead];
    store
        .create_api_key(&key(KEY, "org_a", &scopes))
        .await
        .unwrap();
    store
}

/// A seeded store, a queue fake, and one ingest instance over them, with the store as its
/// series registry or without one.
async fn started(registry: bool) -> (MemoryStore, Arc<Queue>, Ingest) {
    let store = seeded().await;
    let queue = Arc::new(Queue::default());
    let ingest = instance(&store, queue.clone(), registry);
    (store, queue, ingest)
}

/// One ingest instance over `store`, with the store as its series registry or without one.
fn instance(store: &MemoryStore, queue: Arc<Queue>, registry: bool) -> Ingest {
    instance_of(store, queue, registry, &catalogue())
}

fn instance_of(
    store: &MemoryStore,
    queue: Arc<Queue>,
    registry: bool,
    catalogue: &Catalogue,
) -> Ingest {
    let shared = Arc::new(store.clone());
    let mut ports = IngestState::new(
        shared.clone(),
        shared.clone(),
        queue,
        Arc::new(catalogue.meter_catalogue()),
        Arc::new(FixedClock::at(t(NOW))),
    );
    if registry {
        ports = ports.with_series(shared);
    }
    Ingest::new(ports, IngestConfig::default())
}

fn tokens(id: &str, model: Value, tokens: u64) -> Value {
    json!({"id": id, "project_id": "prj_a1", "meter": "llm_tokens",
           "timestamp": "2026-11-26T10:00:00Z",
           "properties": {"tokens": tokens, "model": model}})
}

/// Posts `events`: the status and the answer.
async fn post(ingest: &Ingest, events: Vec<Value>) -> (StatusCode, Value) {
    let req = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::from(json!({ "events": events }).to_string()))
        .unwrap();
    let (status, _, bytes) = respond(ingest.clone().router(), req).await;
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn events_land_in_their_series_and_the_bound_refuses_one_series_too_many() {
    let (store, queue, a) = started(true).await;
    let (status, answer) = post(
        &a,
        vec![
            tokens("t0", json!("gpt-4"), 100),
            tokens("t1", json!("claude-3.5:sonnet/v2"), 5),
            tokens("t2", json!("gpt-4"), 7),
            // A third series: past the bound of two.
            tokens("t3", json!("llama"), 1),
            tokens("t4", Value::Null, 1),
            tokens("t5", json!("gpt 4"), 1),
            tokens("t6", json!(4), 1),
            tokens("t7", json!("m".repeat(65)), 1),
            json!({"id": "c0", "project_id": "prj_a1", "meter": "api_calls",
                   "timestamp": "2026-11-26T10:00:00Z"}),
        ],
    )
    .await;
    let field = "properties.model";
    let invalid = "invalid_properties";
    assert_accepted(
        status,
        &answer,
        4,
        &[
            (3, "dimension_cardinality_exceeded", field),
            (4, invalid, field),
            (5, invalid, field),
            (6, invalid, field),
            (7, invalid, field),
        ],
    );
    let message = answer["rejected"][0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("llm_tokens") && message.contains("model") && message.contains('2'),
        "{message}"
    );
    let queued: Vec<(String, String)> = queue
        .published
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.meter.to_string(), e.quantity.value().to_string()))
        .collect();
    let want = [
        ("llm_tokens{model=gpt-4}", "100"),
        ("llm_tokens{model=claude-3.5:sonnet/v2}", "5"),
        ("llm_tokens{model=gpt-4}", "7"),
        ("api_calls", "1"),
    ];
    assert_eq!(queued, want.map(|(m, q)| (m.to_owned(), q.to_owned())));

    // The registry holds the two series, and a second instance (its own cache, the same
    // store) holds the same bound: known series pass, a new one is refused.
    let org = OrgId::parse("org_a").unwrap();
    let llm = MeterName::parse("llm_tokens").unwrap();
    let nov = Month::parse("2026-11").unwrap();
    assert_eq!(
        store
            .list_series(&MeterMonth::new(&org, &llm, nov))
            .await
            .unwrap()
            .len(),
        2
    );
    let b = instance(&store, queue.clone(), true);
    let (status, answer) = post(
        &b,
        vec![
            tokens("u0", json!("llama"), 1),
            tokens("u1", json!("claude-3.5:sonnet/v2"), 2),
        ],
    )
    .await;
    assert_accepted(
        status,
        &answer,
        1,
        &[(0, "dimension_cardinality_exceeded", "properties.model")],
    );
}

#[tokio::test]
async fn without_a_registry_dimensioned_events_are_refused_not_unbounded() {
    let (_, queue, ingest) = started(false).await;
    let (status, answer) = post(&ingest, vec![tokens("t0", json!("gpt-4"), 1)]).await;
    assert_accepted(
        status,
        &answer,
        0,
        &[(0, "dimension_cardinality_exceeded", "properties.model")],
    );
    assert!(queue.published.lock().unwrap().is_empty());
}

/// The refusal names the new series by each dimension's property and value, and the bound:
/// with two dimensions, the sender sees which value made the series new, whatever dimension
/// it is on (here the region, while the model is one already used).
#[tokio::test]
async fn the_refusal_names_each_dimension_of_the_new_series_and_the_bound() {
    let store = seeded().await;
    let catalogue = catalogue_with(
        json!([
            { "name": "model", "property": "properties.model" },
            { "name": "region", "property": "properties.region" }
        ]),
        1,
    );
    let ingest = instance_of(&store, Arc::new(Queue::default()), true, &catalogue);
    let event = |id: &str, region: &str| {
        let mut e = tokens(id, json!("gpt-4"), 10);
        e["properties"]["region"] = json!(region);
        e
    };
    let (status, answer) = post(&ingest, vec![event("r0", "eu"), event("r1", "us-east")]).await;
    assert_accepted(
        status,
        &answer,
        1,
        &[(1, "dimension_cardinality_exceeded", "properties.model")],
    );
    let message = answer["rejected"][0]["error"]["message"].as_str().unwrap();
    for part in [
        "at most 1 series",
        r#"properties.model="gpt-4""#,
        r#"properties.region="us-east""#,
        "llm_tokens{model=gpt-4,region=us-east}",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
}

/// October's catalogue had `llm_tokens` (split by model, at most two series); November's
/// (in force now, 2 November, while October is still open for late events) drops it and
/// adds `gpu_hours`. Ingest holds each event to its own month's meters: an October event of
/// `llm_tokens` is accepted, and October's series bound still applies to it; an October
/// event of `gpu_hours` is refused naming the `meter` field and the month; November's
/// events are held to November's meters.
#[tokio::test]
async fn late_events_are_validated_with_the_catalogue_of_their_month() {
    let store = seeded().await;
    let queue = Arc::new(Queue::default());
    let october = catalogue();
    let mut file: Value = serde_json::from_str(BUILTIN_JSON).unwrap();
    file["meters"]["gpu_hours"] = json!({
        "unit": "hours", "aggregation": "sum", "price_unit": "hour", "price_unit_size": 1,
        "list_price": { "model": "per_unit", "unit_price": "2.00" }
    });
    for plan in ["free", "starter", "pro", "enterprise"] {
        file["plans"][plan]["meters"]["gpu_hours"] = json!({});
    }
    let november = Catalogue::from_json(&file.to_string(), "november").unwrap();
    let in_force = InForce::new(november.meter_catalogue(), november.core_plans(), Some(2))
        .with_previous(
            Month::parse("2026-10").unwrap(),
            october.meter_catalogue(),
            Some(1),
        );
    let shared = Arc::new(store.clone());
    let ports = IngestState::new(
        shared.clone(),
        shared.clone(),
        queue.clone(),
        LiveCatalogue::new(in_force),
        Arc::new(FixedClock::at(t("2026-11-02T12:00:00Z"))),
    )
    .with_series(shared);
    let ingest = Ingest::new(ports, IngestConfig::default());
    let at = |mut e: Value, ts: &str| {
        e["timestamp"] = json!(ts);
        e
    };
    let (oct, nov) = ("2026-10-31T23:00:00Z", "2026-11-02T10:00:00Z");
    let gpu =
        |id: &str| json!({"id": id, "project_id": "prj_a1", "meter": "gpu_hours", "quantity": 3});
    let (status, answer) = post(
        &ingest,
        vec![
            at(tokens("t0", json!("gpt-4"), 100), oct),
            at(tokens("t1", json!("claude"), 5), oct),
            // A third October series: past October's bound of two.
            at(tokens("t2", json!("llama"), 1), oct),
            at(gpu("g0"), oct),
            at(gpu("g1"), nov),
            at(tokens("t3", json!("gpt-4"), 1), nov),
        ],
    )
    .await;
    assert_accepted(
        status,
        &answer,
        3,
        &[
            (2, "dimension_cardinality_exceeded", "properties.model"),
            (3, "unknown_meter", "meter"),
            (5, "unknown_meter", "meter"),
        ],
    );
    let message = answer["rejected"][1]["error"]["message"].as_str().unwrap();
    assert!(message.contains("for an event of 2026-10"), "{message}");
    let queued: Vec<String> = queue
        .published
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.meter.as_str().to_owned())
        .collect();
    assert_eq!(
        queued,
        [
            "llm_tokens{model=gpt-4}",
            "llm_tokens{model=claude}",
            "gpu_hours"
        ]
    );
}
