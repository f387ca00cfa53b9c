//! The billing fan-out's pieces on the SQLite store (the same ports as DynamoDB), with a
//! queue that records what it is given: the consumer stops taking items when the
//! invocation's budget is short and reports exactly the rest; bad and needless items are
//! told apart; the catch-up finds an org without a report, and one with a report but no
//! finalized invoice, and counts them unbilled only a day after the month could be billed.
//! The 2,000-org run over SQS and DynamoDB is `billing_fanout_aws.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use chrono::{DateTime, Duration, TimeZone, Utc};
use tally_billing::fanout::{BillItem, BillQueue, QueueError, catch_up, enqueue_due};
use tally_billing::{Catalogue, ClosePorts};
use tally_core::ports::{Clock, FixedClock, ReportStore, StepKey, SyncLedger};
use tally_core::{Month, OrgId, PlanId};
use tally_lambda::fanout::{Budget, ItemPorts, consume};
use tally_store::sqlite::SqliteStore;
use tally_tests::conformance::fixtures::create_owned_org;

/// A queue that keeps what it is given.
#[derive(Default)]
struct Recorded(Mutex<Vec<BillItem>>);

#[async_trait]
impl BillQueue for Recorded {
    async fn enqueue(&self, items: &[BillItem]) -> Result<(), QueueError> {
        self.0.lock().unwrap().extend_from_slice(items);
        Ok(())
    }
}

impl Recorded {
    fn take(&self) -> Vec<BillItem> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// One second passes each time it is read.
struct TickClock(DateTime<Utc>, AtomicI64);

impl Clock for TickClock {
    fn now(&self) -> DateTime<Utc> {
        self.0 + Duration::seconds(self.1.fetch_add(1, Ordering::SeqCst))
    }
}

fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
}

fn event(bodies: &[String]) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut r = SqsMessage::default();
            r.message_id = Some(format!("m{i}"));
            r.body = Some(b.clone());
            r.event_source = Some("aws:sqs".into());
            r
        })
        .collect();
    event
}

async fn orgs(store: &SqliteStore, n: u8) -> Vec<OrgId> {
    let mut out = Vec::new();
    for i in 0..n {
        let org = create_owned_org(
            store,
            (i + 1, i + 101),
            &format!("o{i}@example.com"),
            &format!("Org{i}"),
            PlanId::Starter,
            at(2026, 10, 2, 0),
        )
        .await;
        out.push(org.id);
    }
    out
}

#[tokio::test]
async fn a_short_budget_bills_what_fits_and_reports_exactly_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    let ids = orgs(&store, 5).await;
    let clock = FixedClock::at(at(2026, 11, 1, 2));
    let ports = ClosePorts::of(&store, &clock);
    let queue = Recorded::default();
    let run = enqueue_due(ports, &queue, Duration::hours(1))
        .await
        .unwrap();
    let october = Month::parse("2026-10").unwrap();
    assert_eq!(run.months, [(october, 5)]);
    let items = queue.take();
    assert_eq!(items.iter().map(|i| i.org.clone()).collect::<Vec<_>>(), {
        let mut sorted = ids.clone();
        sorted.sort();
        sorted
    });

    let catalogue = Catalogue::builtin().unwrap();
    let item_ports = ItemPorts {
        close: ports,
        stripe: None,
        catalogue: &catalogue,
        grace: Duration::hours(1),
    };
    // Time for two items: at ticks 0 and 1 the one-second reserve still fits before the
    // deadline at 2, at tick 2 it does not.
    let tick = TickClock(at(2026, 11, 1, 2), AtomicI64::new(0));
    let budget = Budget {
        clock: &tick,
        deadline: tick.0 + Duration::seconds(2),
        reserve: Duration::seconds(1),
    };
    let bodies: Vec<String> = items.iter().map(BillItem::encode).collect();
    let response = consume(item_ports, &event(&bodies), Some(&budget)).await;
    let back = common::failed_ids(&response);
    assert_eq!(back, ["m2", "m3", "m4"]);
    for (n, item) in items.iter().enumerate() {
        let stored = store.get_report(&item.org, october).await.unwrap();
        assert_eq!(stored.is_some(), n < 2, "item {n}");
    }

    // The rest, with no budget; the two done already are billed again harmlessly.
    let response = consume(item_ports, &event(&bodies), None).await;
    assert!(response.batch_item_failures.is_empty());
    for item in &items {
        assert_eq!(store.list_reports(&item.org).await.unwrap().len(), 1);
    }

    // A body that is no item comes back (and is dead-lettered after its receives); an item
    // for an org that did not exist in the month is done with nothing billed.
    let stranger = BillItem {
        org: OrgId::from_random([0xee; 16]),
        period: october,
    };
    let response = consume(
        item_ports,
        &event(&["{\"org\": 1}".to_owned(), stranger.encode()]),
        None,
    )
    .await;
    let back = common::failed_ids(&response);
    assert_eq!(back, ["m0"]);
    assert!(store.list_reports(&stranger.org).await.unwrap().is_empty());
}

/// Records `org`'s invoice for `month` as finalized (open, $29.00), as the sync's finalize
/// step does.
async fn record_finalized(store: &SqliteStore, org: &OrgId, month: Month) {
    store
        .record_step(
            &StepKey::new(org, month, "finalize"),
            "{\"status\":\"open\",\"total_minor\":2900}",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_catch_up_finds_missing_reports_and_invoices_and_counts_them_after_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    let ids = orgs(&store, 3).await;
    let october = Month::parse("2026-10").unwrap();
    let catalogue = Catalogue::builtin().unwrap();
    let queue = Recorded::default();
    let grace = Duration::hours(1);
    let ports_at = |clock: &'static FixedClock| ClosePorts::of(&store, clock);
    let close_clock: &'static FixedClock = Box::leak(Box::new(FixedClock::at(at(2026, 11, 1, 2))));
    enqueue_due(ports_at(close_clock), &queue, grace)
        .await
        .unwrap();
    let items = queue.take();
    // Org 0 billed and invoiced (its finalize step recorded), org 1 billed but its invoice
    // never finalized, org 2's item lost.
    let item_ports = ItemPorts {
        close: ports_at(close_clock),
        stripe: None,
        catalogue: &catalogue,
        grace,
    };
    let bodies: Vec<String> = items[..2].iter().map(BillItem::encode).collect();
    assert!(
        consume(item_ports, &event(&bodies), None)
            .await
            .batch_item_failures
            .is_empty()
    );
    let (invoiced, uninvoiced, lost) = (&items[0].org, &items[1].org, &items[2].org);
    record_finalized(&store, invoiced, october).await;
    assert_eq!(ids.len(), 3);

    // Two hours after close: both are found and enqueued, neither is overdue yet.
    let soon: &'static FixedClock = Box::leak(Box::new(FixedClock::at(at(2026, 11, 1, 4))));
    let ledger: &dyn SyncLedger = &store;
    let found = catch_up(ports_at(soon), Some(ledger), &queue, grace)
        .await
        .unwrap();
    assert_eq!((found.enqueued, found.unbilled), (2, 0));
    let mut again: Vec<OrgId> = queue.take().into_iter().map(|i| i.org).collect();
    again.sort();
    let mut want = vec![uninvoiced.clone(), lost.clone()];
    want.sort();
    assert_eq!(again, want);

    // Without Stripe (no ledger), only the missing report counts.
    let found = catch_up(ports_at(soon), None, &queue, grace).await.unwrap();
    assert_eq!((found.enqueued, found.unbilled), (1, 0));
    assert_eq!(queue.take()[0].org, *lost);

    // A day and an hour after the month ended (grace + a day), both are overdue.
    let late: &'static FixedClock = Box::leak(Box::new(FixedClock::at(at(2026, 11, 2, 1))));
    let found = catch_up(ports_at(late), Some(ledger), &queue, grace)
        .await
        .unwrap();
    assert_eq!((found.enqueued, found.unbilled), (2, 2));
    assert_eq!(found.months, [october]);
    queue.take();

    // Billed at last: nothing left to find.
    let bodies = vec![items[2].encode()];
    assert!(
        consume(item_ports, &event(&bodies), None)
            .await
            .batch_item_failures
            .is_empty()
    );
    record_finalized(&store, uninvoiced, october).await;
    record_finalized(&store, lost, october).await;
    let found = catch_up(ports_at(late), Some(ledger), &queue, grace)
        .await
        .unwrap();
    assert_eq!((found.enqueued, found.unbilled), (0, 0));
    assert!(queue.take().is_empty());
}
