//! The aggregator and billing invocations of `tally_lambda::handlers`, on the SQLite store
//! (the same ports the DynamoDB store implements), fed event JSON as Lambda sends it.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use serde_json::json;
use tally_billing::Catalogue;
use tally_core::period::Month;
use tally_core::plan::PlanId;
use tally_core::ports::{FixedClock, ReportStore, UsageStore};
use tally_lambda::consumers::{Consumer, PoisonSink};
use tally_lambda::env::Transport;
use tally_lambda::handlers::{
    BillingError, BillingPorts, BillingRun, MONTH_TIME_RESERVE, MonthRun, aggregate, bill,
    bill_and_sync,
};
use tally_store::sqlite::SqliteStore;

#[derive(Default)]
struct Sink(Mutex<Vec<(String, String)>>);

#[async_trait]
impl PoisonSink for Sink {
    async fn dead_letter(&self, id: &str, _body: &[u8], reason: &str) -> Result<(), String> {
        self.0.lock().unwrap().push((id.into(), reason.into()));
        Ok(())
    }
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    (dir, store)
}

#[tokio::test]
async fn billing_closes_the_previous_month_once_its_grace_period_has_passed() {
    let (_dir, store) = store();
    let acme = common::acme(
        &store,
        PlanId::Free,
        Utc.with_ymd_and_hms(2026, 10, 3, 0, 0, 0).unwrap(),
    )
    .await;
    let october = Month::parse("2026-10").unwrap();
    let early = Utc.with_ymd_and_hms(2026, 11, 1, 0, 30, 0).unwrap();
    let nothing = BillingRun {
        period: None,
        orgs: 0,
        stored_now: 0,
        months: vec![],
    };
    assert_eq!(common::bill_at(&store, early).await, nothing);
    assert!(!store.is_period_closed(october).await.unwrap());

    let due = Utc.with_ymd_and_hms(2026, 11, 1, 2, 0, 0).unwrap();
    let billed = common::bill_at(&store, due).await;
    assert_eq!(
        billed,
        BillingRun {
            period: Some("2026-10".into()),
            orgs: 1,
            stored_now: 1,
            months: vec![MonthRun {
                period: "2026-10".into(),
                orgs: 1,
                stored_now: 1,
            }],
        }
    );
    assert!(store.is_period_closed(october).await.unwrap());
    assert!(store.get_report(&acme, october).await.unwrap().is_some());
    // A retried run bills the same month again and stores nothing new.
    let again = common::bill_at(&store, due).await;
    assert_eq!((again.orgs, again.stored_now), (1, 0));
}

#[tokio::test]
async fn the_aggregator_answers_batch_item_failures_and_dead_letters_poison() {
    let (_dir, store) = store();
    let sink = Sink::default();
    let with_sink = Consumer::new(&store).with_sink(&sink);
    let event = json!({"Records": [
        {"messageId": "m1", "body": "not an envelope", "eventSource": "aws:sqs"},
    ]});
    let out = aggregate(Transport::Sqs, &with_sink, event).await.unwrap();
    assert_eq!(out, json!({"batchItemFailures": []}));
    let kept = sink.0.lock().unwrap().clone();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].0, "m1");

    // Without a sink the poison message is reported, so SQS's redrive policy takes it.
    let event = json!({"Records": [
        {"messageId": "m2", "body": "{}", "eventSource": "aws:sqs"},
    ]});
    let out = aggregate(Transport::Sqs, &Consumer::new(&store), event)
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"batchItemFailures": [{"itemIdentifier": "m2"}]})
    );
}

#[tokio::test]
async fn an_event_from_the_other_transport_is_refused_not_dead_lettered() {
    let (_dir, store) = store();
    let sink = Sink::default();
    let with_sink = Consumer::new(&store).with_sink(&sink);
    let kinesis = json!({"Records": [{
        "eventSource": "aws:kinesis",
        "kinesis": {"partitionKey": "org_a", "data": "e30=", "sequenceNumber": "1"},
    }]});
    let e = aggregate(Transport::Sqs, &with_sink, kinesis)
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("eventSource is \"aws:kinesis\", expected \"aws:sqs\""),
        "{e:#}"
    );
    let e = aggregate(Transport::Kinesis, &with_sink, json!({"detail": {}}))
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("no Records array"), "{e:#}");
    assert!(sink.0.lock().unwrap().is_empty());
}

/// The billing function was down (or failed all its retries) on 1 December and 1 January:
/// the run on 2 January bills November and December, oldest first, after checking October
/// (billed on time) again without storing or closing anything anew. Before, it billed only
/// December and left November open for good. On SQLite and in memory.
#[tokio::test]
async fn a_run_after_two_missed_month_ends_bills_both_months_oldest_first() {
    let (_dir, sqlite) = store();
    common::missed_month_ends(&sqlite).await;
    common::missed_month_ends(&tally_store::MemoryStore::new()).await;
}

/// A month that fails stops the run: December is not closed while November failed (an
/// org's usage of a meter no plan prices), and the next run starts again from November.
#[tokio::test]
async fn a_failed_month_stops_the_run_before_the_next_is_closed() {
    let store = tally_store::MemoryStore::new();
    let created = Utc.with_ymd_and_hms(2026, 10, 3, 0, 0, 0).unwrap();
    let acme = common::acme(&store, PlanId::Starter, created).await;
    let project = tally_core::tenant::Project {
        id: tally_core::ProjectId::from_random([3; 16]),
        org_id: acme.clone(),
        name: "Web".into(),
        slug: "web".into(),
        created_at: created,
        archived_at: None,
    };
    tally_core::ports::ProjectStore::create_project(&store, &project)
        .await
        .unwrap();
    let event = tally_core::Event {
        org_id: acme.clone(),
        id: tally_core::EventId::parse("gpu-1").unwrap(),
        project_id: project.id.clone(),
        meter: tally_core::MeterName::parse("gpu_hours").unwrap(),
        aggregation: tally_core::Aggregation::Sum,
        quantity: tally_core::Quantity::parse("3").unwrap(),
        timestamp: Utc.with_ymd_and_hms(2026, 11, 5, 0, 0, 0).unwrap(),
        properties: serde_json::Map::new(),
    };
    assert_eq!(store.apply_batch(&[event]).await.unwrap().applied(), 1);
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2027, 1, 2, 9, 0, 0).unwrap());
    let ports = BillingPorts::of(&store, &clock);
    let catalogue = Catalogue::builtin().unwrap();
    let grace = Duration::from_secs(3600);
    for _ in 0..2 {
        let err = bill(ports, &catalogue, grace).await.unwrap_err();
        assert!(
            matches!(&err, BillingError::Close { period, .. } if period.to_string() == "2026-11"),
            "{err}"
        );
        assert!(err.to_string().contains("gpu_hours"), "{err}");
        assert!(
            !store
                .is_period_closed(Month::parse("2026-12").unwrap())
                .await
                .unwrap()
        );
    }
    // October, before it, was billed.
    let oct = Month::parse("2026-10").unwrap();
    assert!(store.get_report(&acme, oct).await.unwrap().is_some());
}

/// With the invocation's deadline near, the run bills the first month and leaves the next
/// for the retry (failing, so EventBridge retries); the retry, with time, continues.
#[tokio::test]
async fn a_run_short_of_time_leaves_later_months_to_the_retry() {
    let store = tally_store::MemoryStore::new();
    common::acme(
        &store,
        PlanId::Free,
        Utc.with_ymd_and_hms(2026, 10, 3, 0, 0, 0).unwrap(),
    )
    .await;
    let now = Utc.with_ymd_and_hms(2027, 1, 2, 9, 0, 0).unwrap();
    let clock = FixedClock::at(now);
    let ports = BillingPorts::of(&store, &clock);
    let catalogue = Catalogue::builtin().unwrap();
    let grace = Duration::from_secs(3600);
    let short = now + MONTH_TIME_RESERVE - chrono::Duration::seconds(1);
    let err = bill_and_sync(ports, &catalogue, grace, None, Some(short))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BillingError::OutOfTime { billed: 1, next } if next.to_string() == "2026-11"),
        "{err}"
    );
    assert!(
        store
            .is_period_closed(Month::parse("2026-10").unwrap())
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_period_closed(Month::parse("2026-11").unwrap())
            .await
            .unwrap()
    );
    let enough = now + MONTH_TIME_RESERVE;
    let run = bill_and_sync(ports, &catalogue, grace, None, Some(enough))
        .await
        .unwrap();
    assert_eq!(
        common::runs(&run),
        [
            ("2026-10".into(), 1, 0),
            ("2026-11".into(), 1, 1),
            ("2026-12".into(), 1, 1),
        ]
    );
}
