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
use tally_lambda::consumers::PoisonSink;
use tally_lambda::env::Transport;
use tally_lambda::handlers::{BillingPorts, BillingRun, aggregate, bill};
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

async fn bill_at(store: &SqliteStore, at: chrono::DateTime<Utc>) -> BillingRun {
    let ports = BillingPorts {
        tenants: store,
        usage: store,
        reports: store,
        clock: &FixedClock::at(at),
    };
    bill(
        ports,
        &Catalogue::builtin().unwrap(),
        Duration::from_secs(3600),
    )
    .await
    .unwrap()
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
    };
    assert_eq!(bill_at(&store, early).await, nothing);
    assert!(!store.is_period_closed(october).await.unwrap());

    let due = Utc.with_ymd_and_hms(2026, 11, 1, 2, 0, 0).unwrap();
    let billed = bill_at(&store, due).await;
    assert_eq!(
        billed,
        BillingRun {
            period: Some("2026-10".into()),
            orgs: 1,
            stored_now: 1,
        }
    );
    assert!(store.is_period_closed(october).await.unwrap());
    assert!(store.get_report(&acme, october).await.unwrap().is_some());
    // A retried run bills the same month again and stores nothing new.
    let again = bill_at(&store, due).await;
    assert_eq!((again.orgs, again.stored_now), (1, 0));
}

#[tokio::test]
async fn the_aggregator_answers_batch_item_failures_and_dead_letters_poison() {
    let (_dir, store) = store();
    let sink = Sink::default();
    let event = json!({"Records": [
        {"messageId": "m1", "body": "not an envelope", "eventSource": "aws:sqs"},
    ]});
    let out = aggregate(Transport::Sqs, &store, None, Some(&sink), event)
        .await
        .unwrap();
    assert_eq!(out, json!({"batchItemFailures": []}));
    let kept = sink.0.lock().unwrap().clone();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].0, "m1");

    // Without a sink the poison message is reported, so SQS's redrive policy takes it.
    let event = json!({"Records": [
        {"messageId": "m2", "body": "{}", "eventSource": "aws:sqs"},
    ]});
    let out = aggregate(Transport::Sqs, &store, None, None, event)
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
    let kinesis = json!({"Records": [{
        "eventSource": "aws:kinesis",
        "kinesis": {"partitionKey": "org_a", "data": "e30=", "sequenceNumber": "1"},
    }]});
    let e = aggregate(Transport::Sqs, &store, None, Some(&sink), kinesis)
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("eventSource is \"aws:kinesis\", expected \"aws:sqs\""),
        "{e:#}"
    );
    let e = aggregate(
        Transport::Kinesis,
        &store,
        None,
        Some(&sink),
        json!({"detail": {}}),
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("no Records array"), "{e:#}");
    assert!(sink.0.lock().unwrap().is_empty());
}
