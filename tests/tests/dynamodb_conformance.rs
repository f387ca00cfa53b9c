//! The storage conformance suite against [`DynamoStore`] on the emulator (moto, started by
//! `scripts/test.sh`), every test on a fresh table made by `create_table`, plus what is
//! specific to DynamoDB: batches bigger than one transaction, the TTL attribute, failures
//! reported per event, and corrupt items reported as such.
//!
//! Needs `TALLY_TEST_AWS_ENDPOINT`; without it every test fails and says how to run them.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use rust_decimal::Decimal;
use tally_core::counter::OwnedCounterKey;
use tally_core::event::Event;
use tally_core::ids::OrgId;
use tally_core::period::Month;
use tally_core::ports::{ApplyOutcome, LedgerPageQuery, OrgStore, StoreError, UsageStore};
use tally_store::dynamodb::sdk::Client;
use tally_store::dynamodb::sdk::types::AttributeValue;
use tally_store::dynamodb::{DynamoStore, LEDGER_TTL_DAYS, RetryPolicy, create_table};
use tally_tests::aws;
use tally_tests::conformance::fixtures::{
    MIXED_METERS, assert_reconcile_retention, dice, event, expected_counters, fresh_event,
    fresh_org, fresh_project, stored_counter_map, with_prop,
};
use tally_tests::conformance::storage::StoreFactory;

/// A fresh table; every `open` is a new client on it (like a new process).
struct DynamoFactory {
    config: SdkConfig,
    table: String,
}

impl DynamoFactory {
    async fn new() -> Self {
        let config = aws::sdk_config().await;
        let table = aws::fresh_name("tally-test");
        create_table(&Client::new(&config), &table).await.unwrap();
        DynamoFactory { config, table }
    }
}

#[async_trait]
impl StoreFactory for DynamoFactory {
    type Store = DynamoStore;

    async fn open(&self) -> DynamoStore {
        DynamoStore::new(Client::new(&self.config), self.table.clone())
    }
}

tally_tests::store_conformance!(DynamoFactory::new().await);

const NOV: &str = "2026-11";

async fn month_counters(s: &DynamoStore, org: &OrgId) -> BTreeMap<OwnedCounterKey, Decimal> {
    stored_counter_map(s, org, Month::parse(NOV).unwrap()).await
}

async fn whole_ledger(s: &DynamoStore, org: &OrgId) -> Vec<Event> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .ledger_page(&LedgerPageQuery::new(
                org,
                Month::parse(NOV).unwrap(),
                cursor,
                97,
            ))
            .await
            .unwrap();
        out.extend(page.events);
        match page.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// The events of `org` among `events`, in order.
fn events_of(events: &[Event], org: &OrgId) -> Vec<Event> {
    events
        .iter()
        .filter(|e| &e.org_id == org)
        .cloned()
        .collect()
}

/// 500 events over three orgs, two projects each and five meters (sum, count, max, latest,
/// unique_count), some already in the ledger and some repeated inside the batch: far more
/// than one transaction's 100 actions, so the batch is applied in many chunks. Counters
/// must equal a fold of the distinct events, and every repeat must be reported `Duplicate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_chunks_counts_each_event_once() {
    let f = DynamoFactory::new().await;
    let s = f.open().await;
    let orgs = [fresh_org(), fresh_org(), fresh_org()];
    let projects = [fresh_project(), fresh_project()];
    let meters = MIXED_METERS;
    let mut next = dice();
    let mut events: Vec<Event> = (0..500u64)
        .map(|i| {
            let org = &orgs[(i % 3) as usize];
            let p = &projects[((i / 3) % 2) as usize];
            let meter = meters[next(5) as usize];
            // Four hour buckets over two days: enough distinct counters to need many
            // chunks, few enough to keep the emulator's table (and its time) small.
            let at = format!(
                "2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                1 + next(2),
                10 + next(2),
                next(60),
                next(60),
                next(1000)
            );
            let q = format!("{}.{}", next(10_000), next(1000));
            let e = event(org, p, &format!("big-{i}"), meter, &q, &at);
            if meter == "active_users" {
                with_prop(e, "user", format!("u{}", next(12)))
            } else {
                e
            }
        })
        .collect();

    // Some are already in the ledger (an earlier delivery got them through).
    let earlier: Vec<Event> = events.iter().step_by(7).cloned().collect();
    let report = s.apply_batch(&earlier).await.unwrap();
    assert_eq!(report.applied(), earlier.len(), "{:?}", report.outcomes);

    // Repeats inside the batch, with other content: the first copy counts.
    for i in [3usize, 10, 99, 250, 401] {
        let mut again = events[i].clone();
        again.quantity = tally_core::event::Quantity::parse("123456").unwrap();
        events.push(again);
    }
    let report = s.apply_batch(&events).await.unwrap();
    assert_eq!(report.outcomes.len(), events.len());
    let before: HashSet<&str> = earlier.iter().map(|e| e.id.as_str()).collect();
    let mut seen = HashSet::new();
    for (e, outcome) in events.iter().zip(&report.outcomes) {
        let expected = if before.contains(e.id.as_str()) || !seen.insert(e.id.as_str()) {
            ApplyOutcome::Duplicate
        } else {
            ApplyOutcome::Applied
        };
        assert_eq!(outcome, &expected, "event {}", e.id);
    }
    assert_eq!(report.applied(), 500 - earlier.len());

    let distinct = &events[..500];
    for org in &orgs {
        let mut mine = events_of(distinct, org);
        let want = expected_counters(&mine);
        assert_eq!(month_counters(&s, org).await, want, "counters of {org}");
        let mut ledger = whole_ledger(&s, org).await;
        ledger.sort_by(|a, b| a.id.cmp(&b.id));
        mine.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(ledger, mine, "ledger of {org}");
    }

    // The whole batch redelivered, from another handle: nothing changes.
    let other = f.open().await;
    let report = other.apply_batch(&events).await.unwrap();
    assert!(
        report
            .outcomes
            .iter()
            .all(|o| *o == ApplyOutcome::Duplicate)
    );
    for org in &orgs {
        let want = expected_counters(&events_of(distinct, org));
        assert_eq!(month_counters(&s, org).await, want);
    }
}

/// `create_table` is idempotent and turns TTL on; ledger records carry `ttl` = write time
/// plus 45 days (DynamoDB deletes them after that; moto never does, so the value is what is
/// checked).
/// A filtered audit query that matches little reads a bounded number of pages per call
/// (`AUDIT_QUERY_PAGES` × `AUDIT_QUERY_PAGE_ITEMS` items) and hands back a cursor where it
/// stopped; following the cursors finds the one old match under a thousand newer records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_audit_queries_read_a_bounded_number_of_pages() {
    use tally_core::ports::AuditLog;
    use tally_core::tenant::{AuditOutcome, AuditQuery, AuditRecord};
    let f = DynamoFactory::new().await;
    let s = f.open().await;
    let org = fresh_org();
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let record = |i: i64, action: &str| AuditRecord {
        id: format!("aud_{i:032x}"),
        org_id: org.clone(),
        actor: "usr_x".into(),
        action: action.into(),
        resource: "org".into(),
        outcome: AuditOutcome::Allowed,
        reason: None,
        before: None,
        after: None,
        at: t0 + chrono::Duration::seconds(i),
        ip: None,
        user_agent: None,
    };
    s.record_audit(&record(0, "org.needle")).await.unwrap();
    let noise = tally_store::dynamodb::AUDIT_QUERY_PAGES as i64
        * i64::from(tally_store::dynamodb::AUDIT_QUERY_PAGE_ITEMS)
        + 10;
    for chunk in (1..=noise).collect::<Vec<_>>().chunks(25) {
        let records: Vec<AuditRecord> = chunk.iter().map(|i| record(*i, "org.noise")).collect();
        let writes = records.iter().map(|r| s.record_audit(r));
        for r in futures_util::future::join_all(writes).await {
            r.unwrap();
        }
    }
    let mut query = AuditQuery {
        org: org.clone(),
        from: None,
        to: None,
        actor: None,
        action: Some("org.needle".into()),
        resource: None,
        limit: 10,
        cursor: None,
        now: t0,
    };
    let first = s.list_audit(&query).await.unwrap();
    assert!(
        first.records.is_empty(),
        "the budget ran out before the match"
    );
    assert!(first.next.is_some(), "and the answer says where to go on");
    let mut calls = 1;
    let mut found = Vec::new();
    query.cursor = first.next;
    while query.cursor.is_some() {
        let page = s.list_audit(&query).await.unwrap();
        calls += 1;
        assert!(calls < 10, "the cursors lead somewhere");
        found.extend(page.records);
        query.cursor = page.next;
    }
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].action, "org.needle");
    assert!(calls >= 2);
}

/// Reconcile on DynamoDB judges a month while its ledger is all there (until 45 days after
/// the month began, less the 5 minutes of clock skew) and refuses it afterwards with a
/// sentence saying why, instead of reporting every counter as drift; SQLite, whose ledger is
/// pruned after the same retention, refuses it from the same instant (its own test is in
/// `sqlite_conformance.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_refuses_a_month_past_the_ledger_retention() {
    let f = DynamoFactory::new().await;
    let s = f.open().await;
    let org = fresh_org();
    let month = Month::parse("2026-10").unwrap();
    let within =
        month.start() + chrono::Duration::days(LEDGER_TTL_DAYS) - chrono::Duration::minutes(6);
    let past = month.start() + chrono::Duration::days(LEDGER_TTL_DAYS);
    assert_reconcile_retention(&s, &org, month, within, past).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = tally_store::SqliteStore::open(&dir.path().join("t.db")).unwrap();
    assert!(
        tally_aggregator::reconcile(&sqlite, &org, month, within)
            .await
            .is_ok()
    );
    assert!(matches!(
        tally_aggregator::reconcile(&sqlite, &org, month, past).await,
        Err(tally_aggregator::ReconcileError::BeyondRetention { days: 45, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_records_expire_after_45_days_by_ttl() {
    let f = DynamoFactory::new().await;
    let client = Client::new(&f.config);
    create_table(&client, &f.table).await.unwrap();
    let ttl = client
        .describe_time_to_live()
        .table_name(&f.table)
        .send()
        .await
        .unwrap();
    let d = ttl.time_to_live_description().unwrap();
    assert_eq!(d.attribute_name(), Some("ttl"));

    let s = f.open().await;
    let (_, _, e) = fresh_event("ttl-1", "compute_minutes", "1", "2026-11-26T10:00:00Z");
    let before = chrono::Utc::now().timestamp();
    s.apply_batch(std::slice::from_ref(&e)).await.unwrap();
    let after = chrono::Utc::now().timestamp();
    let items = client
        .scan()
        .table_name(&f.table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap();
    let ledger: Vec<_> = items
        .iter()
        .filter(|it| matches!(it.get("sk"), Some(AttributeValue::S(sk)) if sk == "EVT#ttl-1"))
        .collect();
    assert_eq!(ledger.len(), 1);
    let Some(AttributeValue::N(ttl)) = ledger[0].get("ttl") else {
        panic!("ledger record without a numeric ttl: {:?}", ledger[0]);
    };
    let ttl: i64 = ttl.parse().unwrap();
    let days = LEDGER_TTL_DAYS * 86_400;
    const { assert!(LEDGER_TTL_DAYS >= 40) };
    assert!((before + days..=after + days).contains(&ttl), "ttl {ttl}");
    // Counters and markers never expire.
    assert!(
        items
            .iter()
            .filter(
                |it| matches!(it.get("pk"), Some(AttributeValue::S(pk)) if pk.contains("#CTR#"))
            )
            .all(|it| !it.contains_key("ttl"))
    );
}

/// A chunk that cannot be written (here: the table does not exist) reports `Failed` for its
/// events instead of failing the call or panicking, so the caller keeps them for a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_chunks_report_failed_events() {
    let config = aws::sdk_config().await;
    let s = DynamoStore::new(Client::new(&config), aws::fresh_name("tally-missing"))
        .with_retry_policy(RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        });
    let org = fresh_org();
    let p = fresh_project();
    // The same event twice in one batch: the second is a duplicate of the first.
    let once = event(
        &org,
        &p,
        "a",
        "compute_minutes",
        "1",
        "2026-11-26T10:00:00Z",
    );
    let events = [once.clone(), once];
    let report = s.apply_batch(&events).await.unwrap();
    assert!(
        matches!(&report.outcomes[0], ApplyOutcome::Failed(why) if !why.is_empty()),
        "{:?}",
        report.outcomes
    );
    assert_eq!(report.outcomes[1], ApplyOutcome::Duplicate);
    assert!(!report.all_settled());
    assert!(matches!(
        s.get_org(&org).await,
        Err(StoreError::Unavailable(_))
    ));
}

/// Items that do not decode, and cursors this store did not issue, are `Corrupt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_items_and_cursors_are_reported_not_panicked() {
    let f = DynamoFactory::new().await;
    let s = f.open().await;
    let org = fresh_org();
    let month = Month::parse(NOV).unwrap();
    let e = event(
        &org,
        &fresh_project(),
        "e1",
        "compute_minutes",
        "1",
        "2026-11-26T10:00:00Z",
    );
    s.apply_batch(std::slice::from_ref(&e)).await.unwrap();
    for bad in ["zz", "3a", "31363a"] {
        assert!(
            matches!(
                s.ledger_page(&LedgerPageQuery::new(&org, month, Some(bad.into()), 10))
                    .await,
                Err(StoreError::Corrupt(_))
            ),
            "cursor {bad}"
        );
    }
    let client = Client::new(&f.config);
    let put = |pk: String, sk: &str, attr: &str, value: AttributeValue| {
        client
            .put_item()
            .table_name(&f.table)
            .item("pk", AttributeValue::S(pk))
            .item("sk", AttributeValue::S(sk.to_owned()))
            .item(attr, value)
    };
    put(
        format!("ORG#{org}#CTR#{NOV}"),
        "ALL#compute_minutes#fortnight#000001795000000",
        "v",
        AttributeValue::N("1".into()),
    )
    .send()
    .await
    .unwrap();
    assert!(matches!(
        s.stored_counters(&org, month).await,
        Err(StoreError::Corrupt(_))
    ));
    let shard_of_e1 = (0..16)
        .map(|shard| format!("ORG#{org}#LEDGER#{shard:02}"))
        .collect::<Vec<_>>();
    for pk in shard_of_e1 {
        put(pk, "EVT#e1", "body", AttributeValue::S("nope".into()))
            .item("month", AttributeValue::S(NOV.into()))
            .send()
            .await
            .unwrap();
    }
    assert!(matches!(
        s.ledger_page(&LedgerPageQuery::new(&org, month, None, 10))
            .await,
        Err(StoreError::Corrupt(_))
    ));
}

/// Writes `org`'s November counter guard item `sk` as an earlier release did, holding the
/// reservations `room` (attribute, units): the item's partition key.
async fn put_old_guard(f: &DynamoFactory, org: &OrgId, sk: &str, room: &[(&str, &str)]) -> String {
    let pk = format!("ORG#{org}#GUARD#{NOV}");
    let mut put = Client::new(&f.config)
        .put_item()
        .table_name(&f.table)
        .item("pk", AttributeValue::S(pk.clone()))
        .item("sk", AttributeValue::S(sk.into()));
    for (attr, units) in room {
        put = put.item(*attr, AttributeValue::N((*units).into()));
    }
    put.send().await.unwrap();
    pk
}

/// The counter guard keeps one item per (org, month) for all its meters, and a table the
/// earlier per-meter layout (`ORG#<org>#GUARD#<YYYY-MM>` / `<meter>`, attribute `r`) wrote
/// keeps the room its items reserved: the first reservation of a meter in the org's item
/// carries the old item's room over, so events past the limit it left are still refused.
#[tokio::test]
async fn room_reserved_by_the_per_meter_guard_layout_still_counts() {
    let f = DynamoFactory::new().await;
    let s = f.open().await;
    let (org, p) = (fresh_org(), fresh_project());
    // An earlier release reserved all but 15 units of November's compute_minutes.
    let pk = put_old_guard(&f, &org, "compute_minutes", &[("r", "9999999999999999985")]).await;
    let at = "2026-11-10T10:00:00Z";
    let batch = [
        event(&org, &p, "a", "compute_minutes", "10", at), // fits, 5 left
        event(&org, &p, "b", "compute_minutes", "10", at), // does not
        event(&org, &p, "c", "compute_minutes", "5", at),  // fits exactly
        event(&org, &p, "d", "bandwidth", "1000", at),     // another meter: no old item
    ];
    let report = s.apply_batch(&batch).await.unwrap();
    use ApplyOutcome::{Applied, Overflow};
    assert_eq!(report.outcomes, [Applied, Overflow, Applied, Applied]);
    let totals: BTreeMap<String, Decimal> = month_counters(&s, &org)
        .await
        .into_iter()
        .filter(|(k, _)| k.project.is_none() && k.granularity == tally_core::Granularity::Month)
        .map(|(k, v)| (k.meter.as_str().to_owned(), v))
        .collect();
    assert_eq!(
        totals,
        BTreeMap::from([
            ("compute_minutes".to_owned(), Decimal::from(15)),
            ("bandwidth".to_owned(), Decimal::from(1000)),
        ])
    );

    // One item for both meters, the old room carried into compute_minutes' number.
    let guard = Client::new(&f.config)
        .query()
        .table_name(&f.table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let items = guard.items();
    let sks: Vec<&str> = items
        .iter()
        .filter_map(|i| i.get("sk").and_then(|v| v.as_s().ok()))
        .map(String::as_str)
        .collect();
    assert_eq!(sks, ["*", "compute_minutes"], "the old item is left alone");
    let number = |attr: &str| -> Decimal {
        items[0]
            .get(attr)
            .and_then(|v| v.as_n().ok())
            .unwrap_or_else(|| panic!("{attr} missing from {:?}", items[0]))
            .parse()
            .unwrap()
    };
    assert!(
        number("r#compute_minutes") >= Decimal::from_str_exact("10000000000000000000").unwrap(),
        "the old room is carried over: {:?}",
        items[0]
    );
    assert!(number("r#bandwidth") >= Decimal::from(1000));

    // A second handle (another process) finds no room either: the carried-over number holds.
    let s2 = f.open().await;
    let later = [event(&org, &p, "e", "compute_minutes", "0.000000001", at)];
    assert_eq!(s2.apply_batch(&later).await.unwrap().outcomes, [Overflow]);
}

/// Room a build before the meter-total limit reserved per series (`r#<meter>{dim=value}` in
/// the org's guard item) still counts: the reservation that creates the meter's number
/// (`r#llm_tokens`) adds it, so the meter's total over its series stays under the limit. The
/// series of a meter whose name extends this one's (`llm_tokens_v2`) count for that meter
/// alone.
#[tokio::test]
async fn room_reserved_per_series_counts_for_the_meter() {
    let f = DynamoFactory::new().await;
    let s = f.open().await;
    let (org, p) = (fresh_org(), fresh_project());
    // All but 15 units reserved for one series of llm_tokens; a full one of llm_tokens_v2.
    let room = [
        ("r#llm_tokens{model=gpt-4}", "9999999999999999985"),
        ("r#llm_tokens_v2{model=gpt-4}", "10000000000000000000"),
    ];
    put_old_guard(&f, &org, "*", &room).await;
    let at = "2026-11-10T10:00:00Z";
    let series = |id: &str, meter: &str, model: &str, q: &str| {
        let mut e = event(&org, &p, id, meter, q, at);
        e.meter = e.meter.series(&[("model", model)]);
        e
    };
    let batch = [
        series("a", "llm_tokens", "claude", "10"), // fits, 5 left
        series("b", "llm_tokens", "gpt-4", "10"),  // does not
        series("c", "llm_tokens", "claude", "5"),  // fits exactly
        // Another meter: its own series' room counts for it alone (none left).
        series("d", "llm_tokens_v2", "gpt-4", "1000"),
    ];
    let report = s.apply_batch(&batch).await.unwrap();
    use ApplyOutcome::{Applied, Overflow};
    assert_eq!(report.outcomes, [Applied, Overflow, Applied, Overflow]);
    // Another handle finds no room in the meter's number either.
    let s2 = f.open().await;
    let later = [series("e", "llm_tokens", "mistral", "0.000000001")];
    assert_eq!(s2.apply_batch(&later).await.unwrap().outcomes, [Overflow]);
}
