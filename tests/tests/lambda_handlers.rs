//! The Lambda consumers of `tally_lambda::consumers`, fed real event JSON as Lambda sends
//! it (SQS messages; Kinesis records with base64 data), against the SQLite store.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use rust_decimal::Decimal;
use serde_json::json;
use tally_core::event::Event;
use tally_core::ids::OrgId;
use tally_core::meter::Aggregation;
use tally_core::period::{Granularity, Month};
use tally_core::ports::{ApplyReport, Clock, FixedClock, LedgerPageQuery, StoreError, UsageStore};
use tally_lambda::consumers::aws_lambda_events::event::kinesis::KinesisEvent;
use tally_lambda::consumers::aws_lambda_events::event::sqs::SqsEvent;
use tally_lambda::consumers::{Consumer, Deadline, PoisonSink, handle_kinesis, handle_sqs};
use tally_store::hooked::{BatchHook, Hooked};
use tally_store::sqlite::SqliteStore;
use tally_tests::conformance::fixtures::{event, fresh_event, fresh_org, fresh_project};

#[derive(Default)]
struct Sink {
    kept: Mutex<Vec<(String, String)>>,
    fail: bool,
}

#[async_trait]
impl PoisonSink for Sink {
    async fn dead_letter(&self, id: &str, _body: &[u8], reason: &str) -> Result<(), String> {
        if self.fail {
            return Err("dead-letter queue unreachable".into());
        }
        self.kept.lock().unwrap().push((id.into(), reason.into()));
        Ok(())
    }
}

fn envelope(events: &[Event]) -> String {
    json!({"v": 1, "events": events}).to_string()
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn sqs_message(id: &str, body: &str) -> serde_json::Value {
    json!({
        "messageId": id,
        "receiptHandle": format!("AQEB{id}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1790000000000",
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": "1790000000001"
        },
        "messageAttributes": {},
        "md5OfBody": "0123456789abcdef0123456789abcdef",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:tally-events",
        "awsRegion": "us-east-1"
    })
}

fn kinesis_record(seq: &str, partition_key: &str, data: &[u8]) -> serde_json::Value {
    json!({
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": seq,
            "data": base64(data),
            "approximateArrivalTimestamp": 1790000000.123
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": format!("shardId-000000000000:{seq}"),
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/tally-aggregator",
        "awsRegion": "us-east-1",
        "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/tally-events"
    })
}

/// A SQLite store in a fresh directory (the directory goes when the returned handle drops).
fn sqlite_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    (dir, store)
}

fn month() -> Month {
    Month::parse("2026-10").unwrap()
}

async fn total(store: &SqliteStore, org: &tally_core::ids::OrgId) -> usize {
    store
        .ledger_page(&LedgerPageQuery::new(org, month(), None, 100))
        .await
        .unwrap()
        .events
        .len()
}

#[tokio::test]
async fn sqs_reports_only_unsettled_messages() {
    let (_dir, store) = sqlite_store();
    let (org, project) = (fresh_org(), fresh_project());
    let good = vec![
        event(
            &org,
            &project,
            "a",
            "api_calls",
            "2",
            "2026-10-02T10:00:00Z",
        ),
        event(
            &org,
            &project,
            "b",
            "api_calls",
            "3",
            "2026-10-02T10:05:00Z",
        ),
    ];
    let mut poison = event(
        &org,
        &project,
        "p",
        "active_users",
        "1",
        "2026-10-02T10:00:00Z",
    );
    poison.aggregation = Aggregation::UniqueCount {
        property: "user".into(),
    };
    let raw = json!({"Records": [
        sqs_message("m-good", &envelope(&good)),
        sqs_message("m-resent", &envelope(&good[..1])),
        sqs_message("m-poison", &envelope(std::slice::from_ref(&poison))),
        sqs_message("m-garbage", "not json at all"),
    ]});
    let event: SqsEvent = serde_json::from_value(raw).unwrap();

    // With a working sink: poison is set aside, everything is settled.
    let sink = Sink::default();
    let response = handle_sqs(&Consumer::new(&store).with_sink(&sink), &event).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let kept = sink.kept.lock().unwrap().clone();
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].0, "m-poison");
    assert!(kept[0].1.contains("properties.user, which is missing"));
    assert_eq!(kept[1].0, "m-garbage");
    assert_eq!(total(&store, &org).await, 2);

    // A failing sink (or none): poison is reported, so the redrive policy takes it.
    let failing = Sink {
        fail: true,
        ..Sink::default()
    };
    let response = handle_sqs(&Consumer::new(&store).with_sink(&failing), &event).await;
    let ids: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(ids, ["m-poison", "m-garbage"]);
    let response = handle_sqs(&Consumer::new(&store), &event).await;
    assert_eq!(response.batch_item_failures.len(), 2);
    // The redelivered good messages changed nothing.
    assert_eq!(total(&store, &org).await, 2);
    // The response serializes as Lambda expects.
    let json = serde_json::to_value(&response).unwrap();
    assert_eq!(json["batchItemFailures"][0]["itemIdentifier"], "m-poison");
}

#[tokio::test]
async fn kinesis_reports_the_first_unsettled_sequence_number() {
    let (_dir, store) = sqlite_store();
    let (org, project, e1) = fresh_event("k1", "api_calls", "1", "2026-10-02T10:00:00Z");
    let e2 = event(
        &org,
        &project,
        "k2",
        "api_calls",
        "1",
        "2026-10-02T10:00:00Z",
    );
    let other = fresh_org();
    let raw = json!({"Records": [
        kinesis_record("4959001", org.as_str(), envelope(std::slice::from_ref(&e1)).as_bytes()),
        // The partition key names another org than the events: poison.
        kinesis_record("4959002", other.as_str(), envelope(std::slice::from_ref(&e2)).as_bytes()),
        // A key spread within the org (`<org>#<n>`) names the org.
        kinesis_record("4959003", &format!("{org}#5"), envelope(std::slice::from_ref(&e2)).as_bytes()),
    ]});
    let event: KinesisEvent = serde_json::from_value(raw).unwrap();

    let response = handle_kinesis(&Consumer::new(&store), &event).await;
    let ids: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap_or_default())
        .collect();
    assert_eq!(ids, ["4959002"]);
    assert_eq!(total(&store, &org).await, 2);

    let sink = Sink::default();
    let response = handle_kinesis(&Consumer::new(&store).with_sink(&sink), &event).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(sink.kept.lock().unwrap()[0].0, "4959002");
    assert_eq!(total(&store, &org).await, 2);
}

/// The SQLite store, with each `apply_batch` taking `step` of the test's clock: a batch too
/// big for its invocation without sleeping through one.
struct Slow<'a> {
    clock: &'a FixedClock,
    step: chrono::Duration,
    calls: Mutex<usize>,
}

impl<'a> Slow<'a> {
    fn new(inner: &SqliteStore, clock: &'a FixedClock) -> Hooked<Self> {
        let slow = Slow {
            clock,
            step: chrono::Duration::seconds(20),
            calls: Mutex::new(0),
        };
        Hooked::new(Arc::new(inner.clone()), slow)
    }
}

#[async_trait]
impl BatchHook for Slow<'_> {
    async fn apply_batch(
        &self,
        store: &dyn UsageStore,
        events: &[Event],
    ) -> Result<ApplyReport, StoreError> {
        *self.calls.lock().unwrap() += 1;
        self.clock.advance(self.step);
        store.apply_batch(events).await
    }
}

/// The org's month total of `api_calls` (every event counts 1): counted once means it equals
/// the number of distinct events.
async fn counted(store: &SqliteStore, org: &OrgId) -> Decimal {
    store
        .stored_counters(org, month())
        .await
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.project.is_none() && k.granularity == Granularity::Month)
        .map(|(_, v)| v)
        .sum()
}

/// Three records of two events each of a fresh org: with two events per group, three groups.
fn three_records() -> (OrgId, Vec<Vec<Event>>) {
    let (org, project) = (fresh_org(), fresh_project());
    let records = (0..3)
        .map(|r| {
            (0..2)
                .map(|e| {
                    event(
                        &org,
                        &project,
                        &format!("d{r}-{e}"),
                        "api_calls",
                        "1",
                        "2026-10-02T10:00:00Z",
                    )
                })
                .collect()
        })
        .collect();
    (org, records)
}

/// One SQS message per record, with ids `m0`, `m1`, ...
fn sqs_messages(records: &[Vec<Event>]) -> Vec<serde_json::Value> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| sqs_message(&format!("m{i}"), &envelope(r)))
        .collect()
}

/// Five minutes left: time enough for every group.
fn plenty(clock: &FixedClock) -> Deadline<'_> {
    Deadline {
        at: clock.now() + chrono::Duration::minutes(5),
        ..tight(clock)
    }
}

/// The org's month total and its ledger both say `n` events: each counted once, none lost.
async fn assert_counted_once(store: &SqliteStore, org: &OrgId, n: usize) {
    assert_eq!(counted(store, org).await, Decimal::from(n));
    assert_eq!(total(store, org).await, n);
}

/// 45 s left, a 30 s margin, 20 s per group: the first group runs, then 25 s are left.
fn tight<'c>(clock: &'c FixedClock) -> Deadline<'c> {
    Deadline {
        at: clock.now() + chrono::Duration::seconds(45),
        margin: std::time::Duration::from_secs(30),
        group_events: 2,
        clock,
    }
}

fn ids(failures: impl IntoIterator<Item = String>) -> Vec<String> {
    failures.into_iter().collect()
}

#[tokio::test]
async fn sqs_out_of_time_reports_only_the_groups_not_started() {
    let (_dir, store) = sqlite_store();
    let (org, records) = three_records();
    let messages = sqs_messages(&records);
    let event: SqsEvent = serde_json::from_value(json!({ "Records": messages })).unwrap();
    let clock = FixedClock::at(Utc::now());
    let slow = Slow::new(&store, &clock);

    let response = handle_sqs(&Consumer::new(&slow).with_deadline(&tight(&clock)), &event).await;
    let failed = ids(response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone()));
    assert_eq!(failed, ["m1", "m2"]);
    assert_eq!(*slow.hook().calls.lock().unwrap(), 1);
    assert_eq!(counted(&store, &org).await, Decimal::from(2));

    // SQS redelivers exactly the failures; with time, they are applied in two groups.
    let again: Vec<_> = messages
        .iter()
        .filter(|m| failed.iter().any(|id| m["messageId"] == id.as_str()))
        .collect();
    let again: SqsEvent = serde_json::from_value(json!({ "Records": again })).unwrap();
    let plenty = plenty(&clock);
    let response = handle_sqs(&Consumer::new(&slow).with_deadline(&plenty), &again).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(*slow.hook().calls.lock().unwrap(), 3);
    assert_counted_once(&store, &org, 6).await;
}

#[tokio::test]
async fn kinesis_out_of_time_resends_from_the_first_group_not_started() {
    let (_dir, store) = sqlite_store();
    let (org, records) = three_records();
    let records: Vec<_> = records
        .iter()
        .enumerate()
        .map(|(i, r)| kinesis_record(&format!("49590{i}"), org.as_str(), envelope(r).as_bytes()))
        .collect();
    let event: KinesisEvent = serde_json::from_value(json!({ "Records": records })).unwrap();
    let clock = FixedClock::at(Utc::now());
    let slow = Slow::new(&store, &clock);

    let response =
        handle_kinesis(&Consumer::new(&slow).with_deadline(&tight(&clock)), &event).await;
    let failed = ids(response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap_or_default()));
    assert_eq!(failed, ["495901"]);
    assert_eq!(counted(&store, &org).await, Decimal::from(2));

    // Lambda resends from that sequence number on.
    let rest: KinesisEvent = serde_json::from_value(json!({ "Records": records[1..] })).unwrap();
    let plenty = plenty(&clock);
    let response = handle_kinesis(&Consumer::new(&slow).with_deadline(&plenty), &rest).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(counted(&store, &org).await, Decimal::from(6));
    // The whole batch again (a resend from further back) counts nothing twice.
    let response = handle_kinesis(&Consumer::new(&slow).with_deadline(&plenty), &event).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_counted_once(&store, &org, 6).await;
}

#[tokio::test]
async fn with_time_enough_every_group_is_applied() {
    let (_dir, store) = sqlite_store();
    let (org, records) = three_records();
    let mut messages = sqs_messages(&records);
    // The first message handed out twice in the batch: judged in one group, counted once.
    messages.push(messages[0].clone());
    let event: SqsEvent = serde_json::from_value(json!({ "Records": messages })).unwrap();
    let clock = FixedClock::at(Utc::now());
    let slow = Slow::new(&store, &clock);
    let plenty = plenty(&clock);
    let response = handle_sqs(&Consumer::new(&slow).with_deadline(&plenty), &event).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    // In groups: the duplicated message's two copies (4 events) in one, then one per record.
    assert_eq!(*slow.hook().calls.lock().unwrap(), 3);
    assert_eq!(counted(&store, &org).await, Decimal::from(6));
}
