//! Ingest's rate and hard plan limits shared across instances (`tally_ingest::shared`) on
//! DynamoDB on the emulator, plus the [`AllowanceStore`] conformance suite on DynamoDB.
//!
//! Each "instance" is an ingest router built in this process with its own caches, its own
//! token buckets, its own `SharedLimits` and its own DynamoDB client, all on one fresh
//! table, as warm Lambda instances are. They share one [`FixedClock`] that the test steps
//! (100 ms at a time); nothing sleeps.
//!
//! **Planted fault.** Each fleet test drives the same traffic twice: once through
//! `Ingest::with_allowances` (what the Lambda ingest runs) and once through `Ingest::new`,
//! each instance limited by its own memory only (what every instance did before), on a
//! fresh org. The bound asserted for the first is asserted to be broken by the second, so
//! every run shows the check catching the fault it exists for: with two instances the
//! per-process limiter admits about twice the plan rate (638 requests where 330 is the
//! most allowed, in the run of 2026-12-05), and with four the per-process hard limit
//! accepts every event offered (1,200 of an allowance of 200), since no aggregator runs and
//! each instance sees only its own events, and forgets them when its 2 s usage cache is
//! re-read from the unchanged counters.
//!
//! Needs `TALLY_TEST_AWS_ENDPOINT`; without it every test fails and says how to run them.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::TimeDelta;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tally_core::event::Event;
use tally_core::ids::{MeterName, ProjectId};
use tally_core::meter::MeterCatalogue;
use tally_core::plan::{Plan, PlanId};
use tally_core::ports::{
    AllowanceStore, ApiKeyStore, FixedClock, ProjectStore, PublishOnly, PublishReport, Publisher,
    QueueError,
};
use tally_core::tenant::{KeyScope, Project};
use tally_ingest::{InForce, Ingest, IngestConfig, IngestState, LiveCatalogue};
use tally_store::dynamodb::sdk::Client;
use tally_store::dynamodb::{DynamoStore, create_table};
use tally_tests::aws;
use tally_tests::conformance::allowance;
use tally_tests::conformance::fixtures::{api_key, create_owned_org, random_hex, ts};
use tower::ServiceExt;

const T0: &str = "2026-11-26T12:00:00Z";
/// The free plan's rate: 10 requests/s (burst 20).
const FREE_PER_SECOND: u64 = 10;
/// The hard-limit test's allowance of `api_calls` on the free plan.
const ALLOWANCE: i64 = 200;

/// Counts the events of a [`Sink`].
#[derive(Default)]
struct Counted(Mutex<usize>);

/// A queue that takes every event (ingest only publishes here).
type Sink = PublishOnly<Counted>;

#[async_trait]
impl Publisher for Counted {
    async fn publish(&self, events: &[Event]) -> Result<PublishReport, QueueError> {
        *self.0.lock().unwrap() += events.len();
        Ok(PublishReport::default())
    }
}

/// A fresh table on the emulator.
async fn table() -> (aws_config::SdkConfig, String) {
    let config = aws::sdk_config().await;
    let table = aws::fresh_name("tally-limits");
    create_table(&Client::new(&config), &table).await.unwrap();
    (config, table)
}

/// A free org with one project and one live `events:write` key; the key's secret and the
/// project.
async fn free_org(store: &DynamoStore) -> (String, ProjectId) {
    let now = ts(T0);
    let email = format!("ada.{}@example.com", random_hex());
    let name = format!("Free{}", &random_hex()[..8]);
    // Ids come from one byte each (`create_owned_org`): drawn at random, two orgs of one
    // table collided one run in 256 (a `Conflict` on create); numbered, they never do.
    static NEXT_SEED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
    let seed = NEXT_SEED.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
    let org = create_owned_org(
        store,
        (seed, seed.wrapping_add(1)),
        &email,
        &name,
        PlanId::Free,
        now,
    )
    .await;
    let project = Project {
        id: ProjectId::from_random(rand::random()),
        org_id: org.id.clone(),
        name: "Site".into(),
        slug: format!("site-{}", &random_hex()[..8]),
        created_at: now,
        archived_at: None,
    };
    store.create_project(&project).await.unwrap();
    let secret = format!("tk_live_{}{}", random_hex(), random_hex());
    store
        .create_api_key(&api_key(&org.id, &secret, &[KeyScope::EventsWrite], now))
        .await
        .unwrap();
    (secret, project.id)
}

/// The built-in meters with the free plan given a small allowance of `api_calls`, so the
/// hard-limit test is short.
fn catalogue() -> InForce {
    let mut free = Plan::builtin(PlanId::Free);
    free.limits.meters.insert(
        MeterName::parse("api_calls").unwrap(),
        Decimal::from(ALLOWANCE),
    );
    free.limits.hard_usage_limits = true;
    InForce::new(
        MeterCatalogue::default(),
        BTreeMap::from([(PlanId::Free, free)]),
        None,
    )
}

fn config() -> IngestConfig {
    IngestConfig::default()
}

/// `n` ingest instances on one table and one clock.
struct Fleet {
    instances: Vec<Ingest>,
    clock: Arc<FixedClock>,
}

impl Fleet {
    /// `shared`: limits shared through the table (`Ingest::with_allowances`), else each
    /// instance's own (`Ingest::new`: the planted fault).
    fn new(sdk: &aws_config::SdkConfig, table: &str, n: usize, shared: bool) -> Self {
        let clock = Arc::new(FixedClock::at(ts(T0)));
        let instances = (0..n)
            .map(|_| {
                let store = Arc::new(DynamoStore::new(Client::new(sdk), table));
                let ports = IngestState::new(
                    store.clone(),
                    store.clone(),
                    Arc::new(Sink::default()),
                    LiveCatalogue::new(catalogue()),
                    clock.clone(),
                );
                if shared {
                    Ingest::with_allowances(ports, config(), store)
                } else {
                    Ingest::new(ports, config())
                }
            })
            .collect();
        Fleet { instances, clock }
    }

    /// Posts `body` with `key` to instance `i`: the status, `Retry-After` and the JSON.
    async fn post(&self, i: usize, key: &str, body: &Value) -> (StatusCode, Option<String>, Value) {
        let req = Request::post("/v1/events")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        let res = self.instances[i]
            .clone()
            .router()
            .oneshot(req)
            .await
            .unwrap();
        let status = res.status();
        let retry = res
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            retry,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn shared_writes(&self) -> u64 {
        self.instances
            .iter()
            .filter_map(|i| i.shared_limits())
            .map(|s| s.writes())
            .sum()
    }
}

/// Two instances, each sent 20 requests/s of one free key for 30 s: how many requests got
/// past the rate limit, and the limiter's writes.
async fn drive_rate(fleet: &Fleet, key: &str) -> (u64, u64) {
    // Rejected by validation after the rate limit: the rate limit is all this measures.
    let body = json!({"events": []});
    let mut admitted = 0;
    for _step in 0..300 {
        for _ in 0..2 {
            for i in 0..fleet.instances.len() {
                let (status, retry, _) = fleet.post(i, key, &body).await;
                if status == StatusCode::TOO_MANY_REQUESTS {
                    let secs: u64 = retry.expect("a 429 says when to retry").parse().unwrap();
                    assert!((1..=2).contains(&secs), "Retry-After {secs}");
                } else {
                    admitted += 1;
                }
            }
        }
        fleet.clock.advance(TimeDelta::milliseconds(100));
    }
    (admitted, fleet.shared_writes())
}

/// Two instances sharing one key admit the plan's rate ± 10 % over 30 s (300 requests),
/// not twice it; the per-process limiter (the planted fault) admits about twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_a_key_stay_within_the_plan_rate() {
    let (sdk, table) = table().await;
    let setup = DynamoStore::new(Client::new(&sdk), table.clone());
    let expected = FREE_PER_SECOND * 30;
    let (lo, hi) = (expected * 9 / 10, expected * 11 / 10);

    let (key, _) = free_org(&setup).await;
    let fleet = Fleet::new(&sdk, &table, 2, true);
    let (admitted, writes) = drive_rate(&fleet, &key).await;
    println!(
        "shared: {admitted} requests admitted in 30 s (plan {expected}), {writes} writes, {:.3} WCU per admitted request",
        writes as f64 / admitted as f64
    );
    assert!(
        (lo..=hi).contains(&admitted),
        "{admitted} admitted, the plan allows {expected} ± 10 %"
    );
    // Per window (20 requests) each instance writes for blocks of 1, 1, 2, 2, ... and once
    // more to learn the window is used up: 14 writes in all, 0.7 per request, against 1 per
    // request (plus the refusals) without blocks.
    assert!(
        writes * 100 <= admitted * 75,
        "{writes} limiter writes for {admitted} requests: blocks should keep it near 0.7 per request"
    );

    let (key, _) = free_org(&setup).await;
    let fault = Fleet::new(&sdk, &table, 2, false);
    let (admitted, _) = drive_rate(&fault, &key).await;
    println!("per-process only (planted fault): {admitted} requests admitted");
    assert!(
        admitted > hi,
        "the per-process limiter should break the bound ({admitted} <= {hi}): the check would not catch it"
    );
}

/// Four instances take turns sending 5 `api_calls` events at a time of a free org; no
/// aggregator runs, so the counters stay at zero and only what the instances share holds
/// the allowance: what is accepted in all is the allowance, minus at most one block
/// (2 events: the allowance / `plan_blocks`) per instance, and never more (overshoot 0, the
/// documented bound). The per-process guard (the planted fault) accepts far more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_hold_a_free_org_to_its_hard_limit() {
    let (sdk, table) = table().await;
    let setup = DynamoStore::new(Client::new(&sdk), table.clone());
    let limit = ALLOWANCE as u64;

    /// Events accepted, and whether any request was refused `429 plan_limit_exceeded`.
    async fn drive(fleet: &Fleet, key: &str, project: &ProjectId) -> (u64, bool) {
        let mut accepted = 0;
        let mut refused_429 = false;
        for round in 0..60 {
            for i in 0..fleet.instances.len() {
                let events: Vec<Value> = (0..5)
                    .map(|k| {
                        json!({"id": format!("e{round}x{i}x{k}"), "project_id": project.as_str(),
                               "meter": "api_calls", "quantity": 1,
                               "timestamp": "2026-11-26T11:00:00Z"})
                    })
                    .collect();
                let (status, retry, body) = fleet.post(i, key, &json!({ "events": events })).await;
                match status {
                    StatusCode::ACCEPTED => accepted += body["accepted"].as_u64().unwrap(),
                    StatusCode::TOO_MANY_REQUESTS => {
                        assert_eq!(body["error"]["code"], "plan_limit_exceeded", "{body}");
                        assert!(retry.is_some());
                        refused_429 = true;
                    }
                    other => panic!("{other}: {body}"),
                }
            }
            // A second a round: 4 requests/s, well under the key's shared rate (10/s), and
            // the usage caches (2 s) are re-read many times.
            fleet.clock.advance(TimeDelta::seconds(1));
        }
        (accepted, refused_429)
    }

    let (key, project) = free_org(&setup).await;
    let fleet = Fleet::new(&sdk, &table, 4, true);
    let (accepted, refused_429) = drive(&fleet, &key, &project).await;
    assert!(
        refused_429,
        "the allowance was used up: whole requests were refused"
    );
    let writes = fleet.shared_writes();
    println!("shared: {accepted} events accepted of {limit}, {writes} limiter writes");
    let block = limit / 100;
    assert!(
        accepted <= limit,
        "overshoot: {accepted} accepted of {limit}"
    );
    assert!(
        accepted >= limit - 4 * block,
        "{accepted} accepted: more than one block per instance was lost"
    );

    let (key, project) = free_org(&setup).await;
    let fault = Fleet::new(&sdk, &table, 4, false);
    let (accepted, _) = drive(&fault, &key, &project).await;
    println!("per-process only (planted fault): {accepted} events accepted of {limit}");
    assert!(
        accepted > limit,
        "the per-process guard should overshoot ({accepted} <= {limit}): the check would not catch it"
    );
}

/// The conformance suite of the shared allowances on DynamoDB.
mod conformance {
    use super::*;

    async fn handles(n: usize) -> Vec<Arc<dyn AllowanceStore>> {
        let (sdk, table) = table().await;
        (0..n)
            .map(|_| {
                Arc::new(DynamoStore::new(Client::new(&sdk), table.clone()))
                    as Arc<dyn AllowanceStore>
            })
            .collect()
    }

    #[tokio::test]
    async fn grants_stop_at_the_cap() {
        let h = handles(1).await;
        allowance::grants_stop_at_the_cap(h[0].as_ref()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_takes_never_pass_the_cap() {
        allowance::racing_takes_never_pass_the_cap(handles(8).await).await;
    }

    #[tokio::test]
    async fn bad_requests_are_refused() {
        let h = handles(1).await;
        allowance::bad_requests_are_refused(h[0].as_ref()).await;
    }
}
