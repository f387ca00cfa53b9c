//! Billing fanned out over a real SQS queue (moto) and DynamoDB (moto), invoicing through
//! the real Stripe client to the Stripe double with its faults on: the monthly step
//! enqueues one item per org, several concurrent consumers (the billing function's
//! `consume`, fed by a harness doing what Lambda's SQS event-source mapping does) bill them
//! under a simulated time budget per invocation, one consumer dies mid-item, one item is
//! lost, and the daily catch-up finds and re-enqueues what is missing. At the end every org
//! has exactly one report and exactly one invoice, checked in the Stripe double's own state.
//!
//! `TALLY_FANOUT_ORGS` sets the org count ([`DEFAULT_ORGS`] in the test command);
//! `bench/fanout.sh` runs it with 2,000 and prints the time. Needs `TALLY_TEST_AWS_ENDPOINT` (the test command starts the emulator).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, QueueAttributeName,
};
use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;
use tally_billing::fanout::{BillItem, StripeItemPorts, catch_up, enqueue_due};
use tally_billing::{Catalogue, ClosePorts, UsageReport};
use tally_core::ports::{
    Clock, FinalizedInvoice, FixedClock, IdempotencyKey, InvoiceProvider, NewCustomer, NewInvoice,
    NewInvoiceItem, OrgStore, ProviderError, ProviderId, ReportStore, StepKey, SyncLedger,
    UsageStore, UserStore,
};
use tally_core::tenant::{Org, User};
use tally_core::{Month, OrgId, PlanId, UserId};
use tally_lambda::fanout::{Budget, ItemPorts, SqsBillQueue, consume};
use tally_store::dynamodb::{DynamoStore, create_table};
use tally_tests::aws;
use tally_tests::stripe_double::StripeDouble;
use tally_tests::stripe_sync::{RecordingSleeper, provider};
use tokio::sync::mpsc;

/// Concurrent consumers (Lambda's `MaximumConcurrency` on the mapping).
const CONSUMERS: usize = 4;
/// Messages per invocation (the mapping's `BatchSize`).
const BATCH: i32 = 10;
/// Items each invocation has time for: the simulated budget is this many ticks of the
/// invocation's clock (one tick per item started) plus the one-tick reserve.
const ITEMS_PER_INVOCATION: i64 = 4;

/// Orgs billed in the test command. moto serves DynamoDB one request at a time (about 25
/// per org here); `scripts/moto_serial.py` makes its transactions and queries cost the items
/// they name rather than the whole table, so the cost per org no longer grows with the
/// table, but 200 orgs still take most of a minute on the shared 2-core sandbox. The larger
/// runs (2,000 orgs) are `bench/fanout.sh` (figures in bench/RESULTS.md).
const DEFAULT_ORGS: usize = 200;

fn orgs_wanted() -> usize {
    std::env::var("TALLY_FANOUT_ORGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ORGS)
}

fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
}

/// An invocation's clock: one second passes each time it is read, so the budget runs out
/// after a fixed number of items, whatever the machine's speed.
struct TickClock {
    start: DateTime<Utc>,
    ticks: AtomicI64,
}

impl Clock for TickClock {
    fn now(&self) -> DateTime<Utc> {
        self.start + Duration::seconds(self.ticks.fetch_add(1, Ordering::SeqCst))
    }
}

tokio::task_local! {
    /// Which consumer is running, so the kill switch can say whom it stopped.
    static CONSUMER: usize;
}

/// The real Stripe client, plus a planted death: the `kill_at`-th invoice item Stripe
/// accepts never returns to its consumer (the harness then kills that consumer, as a
/// Lambda timeout or crash would, after Stripe applied the call but before the ledger
/// heard of it: the nastiest point to die).
struct KillSwitch {
    inner: tally_stripe::StripeProvider,
    items: AtomicUsize,
    kill_at: usize,
    killed: mpsc::UnboundedSender<usize>,
}

#[async_trait]
impl InvoiceProvider for KillSwitch {
    async fn create_customer(
        &self,
        customer: &NewCustomer,
        key: &IdempotencyKey,
    ) -> Result<ProviderId, ProviderError> {
        self.inner.create_customer(customer, key).await
    }
    async fn find_customer(&self, org: &OrgId) -> Result<Option<ProviderId>, ProviderError> {
        self.inner.find_customer(org).await
    }
    async fn create_draft_invoice(
        &self,
        invoice: &NewInvoice,
        key: &IdempotencyKey,
    ) -> Result<ProviderId, ProviderError> {
        self.inner.create_draft_invoice(invoice, key).await
    }
    async fn add_invoice_item(
        &self,
        item: &NewInvoiceItem,
        key: &IdempotencyKey,
    ) -> Result<ProviderId, ProviderError> {
        let out = self.inner.add_invoice_item(item, key).await;
        if out.is_ok() && self.items.fetch_add(1, Ordering::SeqCst) + 1 == self.kill_at {
            let me = CONSUMER.try_with(|c| *c).unwrap_or(usize::MAX);
            let _ = self.killed.send(me);
            std::future::pending::<()>().await;
        }
        out
    }
    async fn finalize_invoice(
        &self,
        invoice: &ProviderId,
        key: &IdempotencyKey,
    ) -> Result<FinalizedInvoice, ProviderError> {
        self.inner.finalize_invoice(invoice, key).await
    }
    async fn find_invoice(
        &self,
        customer: &ProviderId,
        org: &OrgId,
        period: Month,
    ) -> Result<Option<ProviderId>, ProviderError> {
        self.inner.find_invoice(customer, org, period).await
    }
    async fn list_invoice_items(
        &self,
        invoice: &ProviderId,
    ) -> Result<Vec<(ProviderId, Option<String>)>, ProviderError> {
        self.inner.list_invoice_items(invoice).await
    }
}

/// What the consumers share.
struct World {
    store: DynamoStore,
    sqs: aws_sdk_sqs::Client,
    url: String,
    stripe: KillSwitch,
    sleeper: RecordingSleeper,
    catalogue: Catalogue,
    clock: FixedClock,
    /// Each consumer's messages in flight (receipt handles), for the kill.
    in_flight: Mutex<HashMap<usize, Vec<String>>>,
    /// Items reported back because the invocation's budget ran short or they failed.
    reported: AtomicUsize,
    invocations: AtomicUsize,
}

impl World {
    fn ports(&self) -> ClosePorts<'_> {
        ClosePorts::of(&self.store, &self.clock)
    }

    /// Makes messages visible at once: what the visibility timeout does for the items a
    /// batch reported back, or for a dead invocation's whole batch, without the wait.
    async fn release(&self, receipts: &[String]) {
        for (n, chunk) in receipts.chunks(10).enumerate() {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(format!("{n}-{i}"))
                        .receipt_handle(r)
                        .visibility_timeout(0)
                        .build()
                        .unwrap()
                })
                .collect::<Vec<_>>();
            self.sqs
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
        }
    }

    /// Messages visible and in flight.
    async fn backlog(&self) -> (u64, u64) {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let get = |a: QueueAttributeName| {
            out.attributes()
                .and_then(|m| m.get(&a))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }
}

/// One consumer, doing what Lambda's SQS event-source mapping does around the billing
/// function: receive a batch, invoke `consume` with the invocation's budget, delete what it
/// did not report back, and make the rest visible again. Stops when the queue is empty.
async fn consumer(world: Arc<World>, me: usize) {
    loop {
        let got = world
            .sqs
            .receive_message()
            .queue_url(&world.url)
            .max_number_of_messages(BATCH)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        let messages = got.messages();
        if messages.is_empty() {
            if world.backlog().await == (0, 0) {
                return;
            }
            continue;
        }
        let receipts: HashMap<String, String> = messages
            .iter()
            .map(|m| {
                (
                    m.message_id().unwrap().to_owned(),
                    m.receipt_handle().unwrap().to_owned(),
                )
            })
            .collect();
        world
            .in_flight
            .lock()
            .unwrap()
            .insert(me, receipts.values().cloned().collect());
        let mut event = SqsEvent::default();
        event.records = messages
            .iter()
            .map(|m| {
                let mut r = SqsMessage::default();
                r.message_id = m.message_id().map(str::to_owned);
                r.receipt_handle = m.receipt_handle().map(str::to_owned);
                r.body = m.body().map(str::to_owned);
                r.event_source = Some("aws:sqs".to_owned());
                r
            })
            .collect();
        let clock = TickClock {
            start: world.clock.now(),
            ticks: AtomicI64::new(0),
        };
        let budget = Budget {
            clock: &clock,
            deadline: clock.start + Duration::seconds(ITEMS_PER_INVOCATION),
            reserve: Duration::seconds(1),
        };
        let ports = ItemPorts {
            close: world.ports(),
            stripe: Some(StripeItemPorts {
                provider: &world.stripe,
                ledger: &world.store,
                sleeper: &world.sleeper,
            }),
            catalogue: &world.catalogue,
            grace: Duration::hours(1),
        };
        world.invocations.fetch_add(1, Ordering::SeqCst);
        let response = CONSUMER
            .scope(me, consume(ports, &event, Some(&budget)))
            .await;
        let again: BTreeSet<&str> = common::failed_ids(&response).into_iter().collect();
        world.reported.fetch_add(again.len(), Ordering::SeqCst);
        let (retry, done): (Vec<_>, Vec<_>) = receipts
            .iter()
            .partition(|(id, _)| again.contains(id.as_str()));
        if !done.is_empty() {
            let entries = done
                .iter()
                .enumerate()
                .map(|(i, (_, r))| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r.as_str())
                        .build()
                        .unwrap()
                })
                .collect::<Vec<_>>();
            world
                .sqs
                .delete_message_batch()
                .queue_url(&world.url)
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
        }
        let retry: Vec<String> = retry.into_iter().map(|(_, r)| r.clone()).collect();
        world.release(&retry).await;
        world.in_flight.lock().unwrap().remove(&me);
    }
}

/// Runs consumers until the queue is empty; kills the one the kill switch names (as a
/// Lambda timeout would), releases its batch and starts a replacement. Returns how many
/// consumers were killed.
async fn drain(world: &Arc<World>, killed: &mut mpsc::UnboundedReceiver<usize>) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    let mut handles = HashMap::new();
    for c in 0..CONSUMERS {
        handles.insert(c, tasks.spawn(consumer(world.clone(), c)));
    }
    let mut next_id = CONSUMERS;
    let mut kills = 0;
    loop {
        tokio::select! {
            Some(victim) = killed.recv() => {
                let task = handles.remove(&victim).expect("the kill switch names a running consumer");
                task.abort();
                let receipts = world.in_flight.lock().unwrap().remove(&victim).unwrap_or_default();
                assert!(!receipts.is_empty(), "the killed consumer had its batch in flight");
                world.release(&receipts).await;
                kills += 1;
                handles.insert(next_id, tasks.spawn(consumer(world.clone(), next_id)));
                next_id += 1;
            }
            done = tasks.join_next() => match done {
                None => break,
                Some(Ok(())) => {}
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            },
        }
    }
    kills
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orgs_fan_out_to_concurrent_consumers_and_each_gets_one_report_and_one_invoice() {
    let n = orgs_wanted();
    let started = Instant::now();
    let config = aws::sdk_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    let table = aws::fresh_name("tally-fanout");
    create_table(&dynamo, &table).await.unwrap();
    let store = DynamoStore::new(dynamo, table);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let url = sqs
        .create_queue()
        .queue_name(aws::fresh_name("tally-billing"))
        // Longer than the test: a message comes back only when the harness releases it.
        .attributes(QueueAttributeName::VisibilityTimeout, "3600")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();

    // n orgs on three plans, created as October began; one more created in November,
    // which October must not bill.
    let owner = store
        .ensure_user(&User {
            id: UserId::from_random([1; 16]),
            email: "owner@example.com".into(),
            created_at: at(2026, 9, 1, 0),
        })
        .await
        .unwrap();
    let org = |i: usize, created: DateTime<Utc>| {
        let mut seed = [0u8; 16];
        seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        Org {
            id: OrgId::from_random(seed),
            name: format!("Org {i}"),
            slug: format!("org-{i}"),
            plan: [PlanId::Starter, PlanId::Pro, PlanId::Free][i % 3],
            owner_id: owner.id.clone(),
            created_at: created,
            deleted_at: None,
        }
    };
    let orgs: Vec<Org> = (0..n).map(|i| org(i, at(2026, 10, 1, 0))).collect();
    {
        use futures_util::StreamExt;
        futures_util::stream::iter(orgs.iter())
            .map(|o| store.create_org(o))
            .buffer_unordered(8)
            .for_each(|r| {
                r.unwrap();
                std::future::ready(())
            })
            .await;
    }
    let late = org(n, at(2026, 11, 1, 1));
    store.create_org(&late).await.unwrap();
    let seeded = started.elapsed();

    let double = StripeDouble::start().await.unwrap();
    // About one Stripe call in fifty fails: 500s, 429s, hangs past the client's timeout,
    // and calls applied whose answer is lost.
    double.set_chaos(0.02, 17, StdDuration::from_millis(400));
    let (killed_tx, mut killed) = mpsc::unbounded_channel();
    let world = Arc::new(World {
        store,
        sqs: sqs.clone(),
        url: url.clone(),
        stripe: KillSwitch {
            inner: provider(&double),
            items: AtomicUsize::new(0),
            kill_at: n / 3 + 1,
            killed: killed_tx,
        },
        sleeper: RecordingSleeper::default(),
        catalogue: Catalogue::builtin().unwrap(),
        clock: FixedClock::at(at(2026, 11, 1, 2)),
        in_flight: Mutex::new(HashMap::new()),
        reported: AtomicUsize::new(0),
        invocations: AtomicUsize::new(0),
    });
    let queue = SqsBillQueue::new(sqs.clone(), url.clone());
    let october = Month::parse("2026-10").unwrap();

    // The monthly schedule: October closed, one item per org, nothing billed yet.
    let fan_start = Instant::now();
    let run = enqueue_due(world.ports(), &queue, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(run.months, [(october, n)]);
    assert!(world.store.is_period_closed(october).await.unwrap());
    assert_eq!(world.backlog().await, (n as u64, 0));
    assert!(
        world
            .store
            .get_report(&orgs[0].id, october)
            .await
            .unwrap()
            .is_none()
    );

    // A planted loss: one item disappears from the queue unbilled (purged by hand, or
    // dead-lettered and deleted).
    let lost = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(1)
        .send()
        .await
        .unwrap()
        .messages()[0]
        .clone();
    let lost_org = BillItem::decode(lost.body().unwrap()).unwrap().org;
    sqs.delete_message()
        .queue_url(&url)
        .receipt_handle(lost.receipt_handle().unwrap())
        .send()
        .await
        .unwrap();

    let enqueued = fan_start.elapsed();
    let kills = drain(&world, &mut killed).await;
    let drained = fan_start.elapsed();
    assert_eq!(kills, 1, "one consumer died mid-item");
    assert!(
        world.reported.load(Ordering::SeqCst) > 0,
        "the invocations' budget ran short and they reported items back"
    );
    let (_, faults) = double.stats();
    assert!(
        faults.values().sum::<u64>() > 0,
        "the Stripe double injected faults: {faults:?}"
    );
    assert!(
        world
            .store
            .get_report(&lost_org, october)
            .await
            .unwrap()
            .is_none()
    );

    // The daily catch-up, two days later: the lost org has neither report nor invoice, is
    // counted unbilled and enqueued again; the consumers bill it.
    let later = ClosePorts {
        clock: &FixedClock::at(at(2026, 11, 3, 3)),
        ..world.ports()
    };
    let ledger: &dyn SyncLedger = &world.store;
    let found = catch_up(later, Some(ledger), &queue, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!((found.enqueued, found.unbilled), (1, 1), "{found:?}");
    assert_eq!(found.months, [october]);
    drain(&world, &mut killed).await;
    let again = catch_up(later, Some(ledger), &queue, Duration::hours(1))
        .await
        .unwrap();
    assert_eq!((again.enqueued, again.unbilled), (0, 0), "{again:?}");
    let fan_out = fan_start.elapsed();

    // Tally's side: exactly one report per org, its invoice finalized in the ledger; none
    // for the org created after October.
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for o in &orgs {
        // One report per (org, month) is the store's key; that it is there is the check.
        // (GetItem, not a Query: moto's Query reads the whole table.)
        let stored = world.store.get_report(&o.id, october).await.unwrap();
        let stored = stored.unwrap_or_else(|| panic!("{}: no report", o.id));
        let report: UsageReport = serde_json::from_str(&stored.body).unwrap();
        assert_eq!(report.period, october);
        let cents = (report.total.amount() * Decimal::from(100)).trunc();
        totals.insert(o.id.as_str().to_owned(), i64::try_from(cents).unwrap());
        assert!(
            world
                .store
                .get_step(&StepKey::new(&o.id, october, "finalize"))
                .await
                .unwrap()
                .is_some(),
            "{}",
            o.id
        );
    }
    assert!(
        world
            .store
            .get_report(&late.id, october)
            .await
            .unwrap()
            .is_none()
    );

    // Stripe's side: exactly one customer and one finalized invoice per org, for the
    // report's total.
    assert_eq!(double.customer_count(), n);
    let mut invoices: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for inv in double.invoices() {
        let tag = inv
            .metadata
            .get("tally_invoice")
            .cloned()
            .unwrap_or_default();
        invoices.entry(tag).or_default().push(inv);
    }
    assert_eq!(invoices.len(), n, "one invoice tag per org");
    for (org, total) in &totals {
        let found = &invoices[&format!("{org}:2026-10")];
        assert_eq!(found.len(), 1, "{org}: {found:?}");
        assert_ne!(found[0].status, "draft", "{org}");
        assert_eq!(found[0].total, *total, "{org}");
    }
    eprintln!(
        "fanout: {n} orgs, {CONSUMERS} consumers, {} invocations, {} items reported back, faults {faults:?}; seeding {:.1} s, enqueue {:.1} s, drain {:.1} s, fan-out with catch-up {:.1} s",
        world.invocations.load(Ordering::SeqCst),
        world.reported.load(Ordering::SeqCst),
        seeded.as_secs_f64(),
        enqueued.as_secs_f64(),
        drained.as_secs_f64(),
        fan_out.as_secs_f64()
    );
}
