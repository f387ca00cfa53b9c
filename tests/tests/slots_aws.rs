//! Writer slots and the slotted counter format (`docs/dynamodb-writer-slots.md`) on the
//! emulator.
//!
//! - The slot protocol one step at a time, with explicit owners and clocks (no sleeping):
//!   acquire a free slot, a held one refused until its lease is over, the epoch raised by
//!   every acquisition and `seq` kept, a step conditioned on owner, epoch and `seq`, a step
//!   whose answer was lost recognised on its retry, a renewal, and a stale owner refused.
//! - `apply_batch` in the slotted format: counters equal the oracle for all five
//!   aggregations, cells carry their slot's high-water mark, intents are `opss`, no chunk
//!   transaction is sent.
//! - Take-over: a store dies after its slotted intent (or before its `DONE`), another
//!   store with one slot (so it must take the dead one's slot) applies new events on the
//!   same cells, then the dead batch's events come back. Counters stay exact; and each
//!   planted fault is caught by the same check: a slot that steps to n + 1 before
//!   finishing n (the dead batch's `ADD`s then meet a higher mark and are skipped:
//!   undercount), and updates without the high-water condition (the replay of a batch
//!   whose `ADD`s landed counts them again: overcount).
//!
//! - A slot's loose ends: an acquisition whose answer was lost is adopted on its retry
//!   (not leaked until its lease ends); a stopping store releases its slot so another
//!   takes it at once, and a stale release changes nothing; a slow apply keeps its slot's
//!   lease alive, so it is not taken over while it runs.
//!
//! Needs `TALLY_TEST_AWS_ENDPOINT`; without it the test fails and says how to run it.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::types::AttributeValue;
use tally_core::backoff::Backoff;
use tally_core::event::Event;
use tally_core::ids::{OrgId, ProjectId};
use tally_core::period::Month;
use tally_core::ports::ApplyReport;
use tally_core::ports::{ApplyOutcome, StoreError, UsageStore};
use tally_store::dynamodb::sdk::Client;
use tally_store::dynamodb::{DynamoStore, Slot, SlotFault, create_table};
use tally_tests::aws;
use tally_tests::conformance::fixtures::{event, with_prop};
use tally_tests::fault_proxy::{CrashMode, CrashPoint, Fault, FaultConfig, FaultProxy};
use tally_tests::oracle::{counter_differences, plain_counters};

const MONTH: &str = "2026-11";

/// A fresh table, a client straight to the emulator (for setup and the final check), and
/// a fault proxy with `config` in front of the emulator.
async fn table_behind_proxy(config: FaultConfig) -> (Client, String, FaultProxy) {
    let direct = Client::new(&aws::sdk_config().await);
    let table = fresh_table(&direct).await;
    let proxy = FaultProxy::start(&aws::endpoint(), config).await.unwrap();
    (direct, table, proxy)
}

/// A client whose every request goes through `proxy`.
async fn via(proxy: &FaultProxy) -> Client {
    Client::new(&aws::sdk_config_at(&proxy.url()).await)
}

async fn fresh_table(direct: &Client) -> String {
    let table = aws::fresh_name("tally-slots");
    create_table(direct, &table).await.unwrap();
    table
}

/// Asserts a slot call was refused: answered (no error), with no slot. A failure points at
/// the caller's line.
#[track_caller]
fn assert_refused(answer: Result<Option<Slot>, StoreError>) {
    assert!(answer.unwrap().is_none());
}

#[tokio::test]
async fn the_slot_protocol_step_by_step() {
    let direct = Client::new(&aws::sdk_config().await);
    let table = fresh_table(&direct).await;
    let store = DynamoStore::new(direct.clone(), &table);
    let lease = 30_000;
    let t0 = 1_800_000_000_000i64;

    // A free slot: epoch 1, nothing begun.
    let a = store
        .slot_acquire("A", 3, t0, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a.k, a.epoch, a.seq, a.batch.clone()), (3, 1, 0, None));
    assert!(a.finished, "a slot never used has nothing to finish");
    // Held: refused to B until the lease is over (t0 + 30 s), even at its last ms.
    assert_refused(store.slot_acquire("B", 3, t0 + lease, lease).await);
    // A steps to batch 1; B cannot (not the owner); A cannot step from a stale seq.
    let a1 = store
        .slot_step("A", &a, "b-1", t0 + 1, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a1.seq, a1.batch.as_deref(), a1.finished),
        (1, Some("b-1"), false)
    );
    assert_refused(store.slot_step("B", &a, "b-x", t0 + 2, lease).await);
    // The same step sent again (its answer lost): recognised as landed, not lost.
    let again = store
        .slot_step("A", &a, "b-1", t0 + 3, lease)
        .await
        .unwrap()
        .expect("a retried step finds its own change");
    assert_eq!(again.seq, 1);
    // But a different batch from the stale seq is refused: one batch per number.
    assert_refused(store.slot_step("A", &a, "b-other", t0 + 4, lease).await);
    // Renewed at t0 + 20 s: held until t0 + 50 s.
    let a1 = store
        .slot_renew("A", &a1, t0 + 20_000, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a1.expires_ms, t0 + 50_000);
    assert_refused(store.slot_acquire("B", 3, t0 + 40_000, lease).await);
    // Lease over: B takes the slot. Epoch 2, seq and batch kept (B must finish b-1).
    let b = store
        .slot_acquire("B", 3, t0 + 50_001, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((b.epoch, b.seq, b.batch.as_deref()), (2, 1, Some("b-1")));
    assert!(!b.finished, "a taken slot's batch must be finished first");
    // A is stale: its step and its renewal are refused.
    assert_refused(store.slot_step("A", &a1, "b-2", t0 + 50_002, lease).await);
    assert_refused(store.slot_renew("A", &a1, t0 + 50_002, lease).await);
    let b2 = store
        .slot_step("B", &b, "b-2", t0 + 50_003, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b2.seq, 2);
    let (stored, owner) = store.slot_read(3).await.unwrap().unwrap();
    assert_eq!(
        (
            stored.epoch,
            stored.seq,
            stored.batch.as_deref(),
            owner.as_deref()
        ),
        (2, 2, Some("b-2"), Some("B"))
    );
    // Other slots are untouched.
    assert!(store.slot_read(4).await.unwrap().is_none());
}

/// Events of all five aggregations on two projects, ids `<prefix>-<i>`, in three days.
fn mixed(org: &OrgId, projects: &[ProjectId; 2], prefix: &str, count: usize) -> Vec<Event> {
    let meters = [
        "compute_minutes",
        "requests",
        "storage_bytes",
        "temperature",
        "active_users",
    ];
    (0..count)
        .map(|i| {
            let meter = meters[i % meters.len()];
            // Distinct instants, so no two `latest` readings tie.
            let at = format!(
                "2026-11-{:02}T{:02}:{:02}:{:02}Z",
                3 + i % 3,
                i % 24,
                (i * 7) % 60,
                i % 60
            );
            let q = format!("{}", 1 + i % 9);
            let e = event(
                org,
                &projects[i % 2],
                &format!("{prefix}-{i}"),
                meter,
                &q,
                &at,
            );
            if meter == "active_users" {
                with_prop(e, "user", format!("u{}", i % 7))
            } else {
                e
            }
        })
        .collect()
}

async fn assert_exact(
    direct: &Client,
    table: &str,
    org: &OrgId,
    all: &[Event],
) -> Result<(), String> {
    let reader = DynamoStore::new(direct.clone(), table);
    let stored = reader
        .stored_counters(org, Month::parse(MONTH).unwrap())
        .await
        .unwrap();
    match counter_differences(stored, &plain_counters(all), 6) {
        None => Ok(()),
        Some(diff) => Err(diff),
    }
}

/// Applies until nothing comes back `Failed`.
async fn deliver(store: &DynamoStore, mut batch: Vec<Event>) -> usize {
    let mut applied = 0;
    for _ in 0..20 {
        if batch.is_empty() {
            return applied;
        }
        let report = store.apply_batch(&batch).await.unwrap();
        let mut again = Vec::new();
        for (e, o) in batch.iter().zip(&report.outcomes) {
            match o {
                ApplyOutcome::Applied => applied += 1,
                ApplyOutcome::Failed(_) => again.push(e.clone()),
                _ => {}
            }
        }
        batch = again;
    }
    panic!("{} events still failing", batch.len());
}

#[tokio::test]
async fn slotted_batches_count_exactly_without_transactions() {
    let (direct, table, proxy) = table_behind_proxy(FaultConfig::quiet()).await;
    let via_proxy = via(&proxy).await;
    let store = DynamoStore::new(via_proxy, &table).with_writer_slots(4);
    let (org, projects) = fresh_org();
    let first = mixed(&org, &projects, "a", 60);
    let second = mixed(&org, &projects, "b", 45);
    // Watch every request of the store (a crash point that never matches).
    proxy.crash_at(crash_point("NoSuchOperation", "", CrashMode::Before));
    assert_eq!(deliver(&store, first.clone()).await, 60);
    // Resends and new events together: resends are duplicates.
    let mut both = second.clone();
    both.extend(first.iter().take(10).cloned());
    assert_eq!(deliver(&store, both).await, 45);
    let all: Vec<Event> = first.iter().chain(&second).cloned().collect();
    assert_exact(&direct, &table, &org, &all).await.unwrap();
    let log = proxy.crash_log();
    assert!(
        !log.iter().any(|(op, _)| op == "TransactWriteItems"),
        "the slotted format sends no transaction"
    );
    assert!(
        log.iter()
            .any(|(op, body)| op == "PutItem" && body.contains("\"opss\"")),
        "slotted intents"
    );
    assert!(
        log.iter()
            .any(|(op, body)| op == "UpdateItem" && body.contains("\"#w\":\"w")),
        "high-water updates"
    );
    // A cell carries its slot's mark, a flat number attribute.
    let cells = direct
        .query()
        .table_name(&table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :day)")
        .expression_attribute_values(":pk", AttributeValue::S(format!("ORG#{org}#CTR#{MONTH}")))
        .expression_attribute_values(":day", AttributeValue::S("DAY#compute_minutes#".into()))
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    assert!(!cells.is_empty());
    for cell in &cells {
        let marks: Vec<&String> = cell.keys().filter(|k| k.starts_with('w')).collect();
        assert_eq!(marks.len(), 1, "one slot wrote each cell here: {cell:?}");
        assert!(matches!(cell[marks[0]], AttributeValue::N(_)));
    }
}

/// A store on `table` behind `proxy` with one writer slot that tries every write once (no
/// SDK retry, a one-attempt policy): a fault the proxy plants is the store's last word.
async fn one_try_store(proxy: &FaultProxy, table: &str) -> DynamoStore {
    let client = Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&aws::sdk_config_at(&proxy.url()).await)
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    let once = Backoff::new(1, Duration::from_millis(1), Duration::from_millis(1));
    DynamoStore::new(client, table)
        .with_writer_slots(1)
        .with_retry_policy(once)
}

/// The first `op` request whose body holds `needle`, crashed at `mode`.
fn crash_point(op: &str, needle: &str, mode: CrashMode) -> CrashPoint {
    CrashPoint {
        op: op.into(),
        needle: needle.into(),
        nth: 0,
        mode,
    }
}

/// What the dying store is killed at.
#[derive(Clone, Copy, Debug)]
enum Death {
    /// Just after its intent: none of its `ADD`s landed.
    AfterIntent,
    /// Just before its `DONE`: every `ADD` landed.
    BeforeDone,
}

/// A store dies in its slotted batch; a taker with ONE slot (so it takes the dead store's
/// slot) applies new events on the same cells, then the dead batch's events come back.
/// `Err` describes the counters' difference from the oracle.
async fn takeover(death: Death, fault: Option<SlotFault>) -> Result<(), String> {
    let (direct, table, proxy) = table_behind_proxy(FaultConfig::quiet()).await;
    // Lease zero on the dying store too: its slot is free to take as soon as it dies.
    let dying = one_try_store(&proxy, &table)
        .await
        .with_claim_lease(Duration::ZERO);
    // The same days, hours and projects: the taker's `ADD`s land on the dead batch's cells.
    let (org, dead_events, new_events) = two_batches("d", "n");
    proxy.crash_at(match death {
        Death::AfterIntent => crash_point("PutItem", "\"opss\"", CrashMode::After),
        Death::BeforeDone => crash_point("PutItem", "\"DONE\"", CrashMode::Before),
    });
    let _ = dying.apply_batch(&dead_events).await;
    assert!(proxy.crashed(), "the crash at {death:?} never fired");

    let mut taker = DynamoStore::new(direct.clone(), &table)
        .with_claim_lease(Duration::ZERO)
        .with_writer_slots(1);
    if let Some(fault) = fault {
        taker = taker.with_planted_slot_fault(fault);
    }
    assert_eq!(deliver(&taker, new_events.clone()).await, 30);
    // The dead batch's intent covers its events: they come back as duplicates.
    deliver(&taker, dead_events.clone()).await;
    let (slot, _) = taker.slot_read(0).await.unwrap().unwrap();
    assert!(
        slot.epoch >= 2,
        "the taker took the dead store's slot: {slot:?}"
    );
    let all: Vec<Event> = dead_events.iter().chain(&new_events).cloned().collect();
    assert_exact(&direct, &table, &org, &all).await
}

#[tokio::test]
async fn a_taken_slots_unfinished_batch_is_finished_before_the_next() {
    for death in [Death::AfterIntent, Death::BeforeDone] {
        takeover(death, None)
            .await
            .unwrap_or_else(|diff| panic!("{death:?}: counters differ: {diff}"));
    }
}

/// Runs [`takeover`] with `fault` planted in the taker (named `planted` in the output) and
/// asserts the oracle catches it, saying `why` it must if not.
async fn assert_caught(death: Death, fault: SlotFault, planted: &str, why: &str) {
    let caught = takeover(death, Some(fault)).await;
    println!("planted {planted}: {caught:?}");
    assert!(caught.is_err(), "{why}");
}

#[tokio::test]
async fn a_slot_stepping_before_done_is_caught() {
    assert_caught(
        Death::AfterIntent,
        SlotFault::StepBeforeDone,
        "step before done",
        "a slot that begins n + 1 before n is done must undercount n's cells",
    )
    .await;
}

#[tokio::test]
async fn updates_without_the_high_water_check_are_caught() {
    assert_caught(
        Death::BeforeDone,
        SlotFault::NoHighWater,
        "update without the high-water check",
        "replaying a batch whose ADDs landed must count them twice without the check",
    )
    .await;
}

/// One slot and two applies at once in one store: the second finds the only slot in use
/// and waits for it (within the store's owner wait) instead of failing its whole batch for
/// a redelivery. Before the wait it failed every event at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_waits_for_a_busy_slot_instead_of_failing() {
    let direct = Client::new(&aws::sdk_config().await);
    let table = fresh_table(&direct).await;
    let store = DynamoStore::new(direct.clone(), &table)
        .with_writer_slots(1)
        .with_owner_wait(Duration::from_secs(20));
    let (org, projects) = fresh_org();
    let first = mixed(&org, &projects, "w1", 60);
    let second = mixed(&org, &projects, "w2", 60);
    let (a, b) = tokio::join!(store.apply_batch(&first), store.apply_batch(&second));
    for report in [a.unwrap(), b.unwrap()] {
        let failed: Vec<_> = report
            .outcomes
            .iter()
            .filter(|o| matches!(o, ApplyOutcome::Failed(_)))
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
    }
    let all: Vec<Event> = first.into_iter().chain(second).collect();
    assert_exact(&direct, &table, &org, &all).await.unwrap();
}

/// An intent whose write landed with its answer lost, on a store that then gives the batch
/// up (one attempt, no SDK retry): the slot must not count that batch finished. If it did
/// (a review finding: the failed apply's abort finds the intent and answers "not mine"),
/// the slot's next batch would raise the shared cells' marks past it, and the replay of
/// the first batch's events would skip them: an undercount, seen by the oracle below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_intent_answer_is_finished_before_its_slot_steps() {
    let (direct, table, proxy) = table_behind_proxy(FaultConfig::quiet()).await;
    let store = one_try_store(&proxy, &table)
        .await
        .with_owner_wait(Duration::ZERO);
    // The same days, hours and projects: the second batch's `ADD`s land on the first's cells.
    let (org, first, second) = two_batches("x", "y");
    proxy.force_where("PutItem", "\"opss\"", Fault::AnswerLost500);
    let report = store.apply_batch(&first).await.unwrap();
    assert!(
        report
            .outcomes
            .iter()
            .any(|o| matches!(o, ApplyOutcome::Failed(_))),
        "{:?}",
        report.outcomes
    );
    assert_eq!(proxy.injected().get(&Fault::AnswerLost500), Some(&1));
    deliver(&store, second.clone()).await;
    deliver(&store, first.clone()).await;
    let all: Vec<Event> = first.into_iter().chain(second).collect();
    assert_exact(&direct, &table, &org, &all).await.unwrap();
}

/// How many of a report's outcomes are `Applied` and how many `Failed`.
fn tally_outcomes(report: &ApplyReport) -> (usize, usize) {
    let applied = report
        .outcomes
        .iter()
        .filter(|o| matches!(o, ApplyOutcome::Applied))
        .count();
    let failed = report
        .outcomes
        .iter()
        .filter(|o| matches!(o, ApplyOutcome::Failed(_)))
        .count();
    (applied, failed)
}

/// Returns once the proxy has injected `fault` (an event, not time passing: a held
/// request is in flight).
async fn until_injected(proxy: &FaultProxy, fault: Fault) {
    while !proxy.injected().contains_key(&fault) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A table behind a proxy that holds each call it is told to fault `latency` long, and a
/// client whose requests go through the proxy.
async fn slow_table(latency: Duration) -> (Client, String, FaultProxy, Client) {
    let config = FaultConfig {
        latency,
        ..FaultConfig::quiet()
    };
    let (direct, table, proxy) = table_behind_proxy(config).await;
    let via_proxy = via(&proxy).await;
    (direct, table, proxy, via_proxy)
}

/// Runs `first`, and `second` from the moment the proxy holds a call (`first`'s), so that
/// `second` meets `first` mid-apply.
async fn while_held<A: Future, B: Future>(
    proxy: &FaultProxy,
    first: A,
    second: B,
) -> (A::Output, B::Output) {
    tokio::join!(first, async {
        until_injected(proxy, Fault::Latency).await;
        second.await
    })
}

/// A store on `table` with one writer slot.
fn one_slot(client: Client, table: &str) -> DynamoStore {
    DynamoStore::new(client, table).with_writer_slots(1)
}

/// A fresh org and two batches of 30 events for it, their ids starting `a` and `b`.
fn two_batches(a: &str, b: &str) -> (OrgId, Vec<Event>, Vec<Event>) {
    let (org, projects) = fresh_org();
    let first = mixed(&org, &projects, a, 30);
    let second = mixed(&org, &projects, b, 30);
    (org, first, second)
}

/// Two fresh projects of a fresh org.
fn fresh_org() -> (OrgId, [ProjectId; 2]) {
    (
        OrgId::from_random(rand::random()),
        [
            ProjectId::from_random(rand::random()),
            ProjectId::from_random(rand::random()),
        ],
    )
}

/// The acquisition of the store's only slot lands, its answer is lost (a 500 after the
/// write), and the retry fails its condition on the lease it took itself. The store must
/// adopt the slot (epoch 1 as stored, `seq` from the item) and apply the batch. Before
/// adoption every try met "held" (by itself) and the whole batch failed, the slot leased
/// for nothing until its lease ran out.
#[tokio::test]
async fn a_lost_acquire_answer_adopts_the_slot_instead_of_leaking_it() {
    let (direct, table, proxy) = table_behind_proxy(FaultConfig::quiet()).await;
    let via_proxy = via(&proxy).await;
    // One slot and no waiting: a slot it cannot get fails the batch at once.
    let store = DynamoStore::new(via_proxy, &table)
        .with_writer_slots(1)
        .with_owner_wait(Duration::ZERO);
    let (org, projects) = fresh_org();
    let first = mixed(&org, &projects, "la", 30);
    let second = mixed(&org, &projects, "lb", 30);
    // Only the acquisition carries this condition.
    proxy.force_where(
        "UpdateItem",
        "attribute_not_exists(#o) OR #x < :now",
        Fault::AnswerLost500,
    );
    let report = store.apply_batch(&first).await.unwrap();
    assert_eq!(proxy.injected().get(&Fault::AnswerLost500), Some(&1));
    assert_eq!(tally_outcomes(&report), (30, 0), "{:?}", report.outcomes);
    let (slot, owner) = store.slot_read(0).await.unwrap().unwrap();
    assert_eq!(owner.as_deref(), store.writer_slot_owner());
    // Epoch 1: the lost acquisition's own, adopted, not a second acquisition. Seq 1: the
    // batch was numbered once.
    assert_eq!((slot.epoch, slot.seq), (1, 1), "{slot:?}");
    assert_eq!(deliver(&store, second.clone()).await, 30);
    assert_eq!(store.slot_read(0).await.unwrap().unwrap().0.seq, 2);
    let all: Vec<Event> = first.into_iter().chain(second).collect();
    assert_exact(&direct, &table, &org, &all).await.unwrap();
}

/// A store that stops releases its idle slot: another store with one slot and no wait,
/// refused while the lease runs (30 s), takes it at once after the release. A stale
/// release (the slot was taken since: the epoch moved on) changes nothing.
#[tokio::test]
async fn a_released_slot_is_taken_at_once_and_a_stale_release_changes_nothing() {
    let direct = Client::new(&aws::sdk_config().await);
    let table = fresh_table(&direct).await;
    let (org, projects) = fresh_org();
    let batches: Vec<Vec<Event>> = ["ra", "rb", "rc"]
        .iter()
        .map(|p| mixed(&org, &projects, p, 20))
        .collect();
    let one_slot = || {
        DynamoStore::new(direct.clone(), &table)
            .with_writer_slots(1)
            .with_owner_wait(Duration::ZERO)
    };
    let a = one_slot();
    // B's lease is zero, so the stale part below needs no waiting.
    let b = one_slot().with_claim_lease(Duration::ZERO);
    let c = one_slot();
    assert_eq!(deliver(&a, batches[0].clone()).await, 20);
    let refused = b.apply_batch(&batches[1]).await.unwrap();
    assert_eq!(
        tally_outcomes(&refused),
        (0, 20),
        "A's lease holds the only slot"
    );

    assert_eq!(a.release_writer_slots().await.unwrap(), 1);
    let (released, owner) = a.slot_read(0).await.unwrap().unwrap();
    assert_eq!(owner, None, "released: no owner");
    assert_eq!(
        (released.epoch, released.seq, released.expires_ms),
        (1, 1, 0),
        "epoch and seq kept, lease ended"
    );
    let taken = b.apply_batch(&batches[1]).await.unwrap();
    assert_eq!(tally_outcomes(&taken), (20, 0), "{:?}", taken.outcomes);
    let (slot, owner) = b.slot_read(0).await.unwrap().unwrap();
    assert_eq!((slot.epoch, owner.as_deref()), (2, b.writer_slot_owner()));

    // B's lease (zero) is over: C takes the slot (epoch 3) while B still keeps it idle.
    assert_eq!(deliver(&c, batches[2].clone()).await, 20);
    let (before, owner_before) = c.slot_read(0).await.unwrap().unwrap();
    assert_eq!(
        (before.epoch, owner_before.as_deref()),
        (3, c.writer_slot_owner())
    );
    assert_eq!(b.release_writer_slots().await.unwrap(), 0, "stale: not B's");
    let (after, owner_after) = c.slot_read(0).await.unwrap().unwrap();
    assert_eq!((after, owner_after), (before, owner_before), "unchanged");
    // And C's slot is still C's to use at once.
    let again = mixed(&org, &projects, "rd", 10);
    assert_eq!(
        tally_outcomes(&c.apply_batch(&again).await.unwrap()),
        (10, 0)
    );
    let all: Vec<Event> = batches.into_iter().flatten().chain(again).collect();
    assert_exact(&direct, &table, &org, &all).await.unwrap();
}

/// An apply slowed past its slot's lease (one cell update held 6 s by the proxy, lease
/// 2 s) renews the lease while it runs: another store with one slot, waiting up to 4 s
/// for it from the moment the slow update is held, never gets it (without renewal the
/// lease ends at most 2 s after the step and the other store takes the slot over, epoch
/// 2). Afterwards the slot is still the slow store's, its batch applied, and the other
/// store's events go through once the slot is idle and its lease over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_apply_keeps_its_slots_lease() {
    let (direct, table, proxy, via_proxy) = slow_table(Duration::from_secs(6)).await;
    let slow = one_slot(via_proxy, &table).with_claim_lease(Duration::from_secs(2));
    let other = one_slot(direct.clone(), &table).with_owner_wait(Duration::from_secs(4));
    let (org, first, second) = two_batches("sa", "sb");
    // One cell update (they carry the high-water name `#w`) answered 6 s late.
    proxy.force_where("UpdateItem", "\"#w\"", Fault::Latency);
    let (slow_report, other_report) =
        while_held(&proxy, slow.apply_batch(&first), other.apply_batch(&second)).await;
    let (slow_report, other_report) = (slow_report.unwrap(), other_report.unwrap());
    assert_eq!(tally_outcomes(&slow_report), (30, 0));
    assert_eq!(
        tally_outcomes(&other_report),
        (0, 30),
        "the other store must not get the slot of an apply still running"
    );
    let (slot, owner) = slow.slot_read(0).await.unwrap().unwrap();
    assert_eq!((slot.epoch, slot.seq), (1, 1), "never taken over: {slot:?}");
    assert_eq!(owner.as_deref(), slow.writer_slot_owner());
    assert_eq!(deliver(&other, second.clone()).await, 30);
    let all: Vec<Event> = first.into_iter().chain(second).collect();
    assert_exact(&direct, &table, &org, &all).await.unwrap();
}

/// Adoption is only for a slot the store does not hold: one store, one slot, two applies.
/// The first's intent is held 3 s by the proxy after its step; the second, started then,
/// meets the slot leased to its own store's owner id. Adopting it (the planted fault: a
/// store that forgets which slots it holds) would make it finish the first's batch, find
/// no intent yet and fence it off, failing the first's events; instead it waits for the
/// slot to come back idle, and both batches apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_never_adopts_the_slot_its_other_apply_holds() {
    let (direct, table, proxy, via_proxy) = slow_table(Duration::from_secs(3)).await;
    let store = one_slot(via_proxy, &table).with_owner_wait(Duration::from_secs(20));
    let (org, first, second) = two_batches("ha", "hb");
    proxy.force_where("PutItem", "\"opss\"", Fault::Latency);
    let (a, b) = while_held(
        &proxy,
        store.apply_batch(&first),
        store.apply_batch(&second),
    )
    .await;
    assert_eq!(tally_outcomes(&a.unwrap()), (30, 0), "the first apply");
    assert_eq!(tally_outcomes(&b.unwrap()), (30, 0), "the second apply");
    let (slot, _) = store.slot_read(0).await.unwrap().unwrap();
    assert_eq!((slot.epoch, slot.seq), (1, 2), "{slot:?}");
    let all: Vec<Event> = first.into_iter().chain(second).collect();
    assert_exact(&direct, &table, &org, &all).await.unwrap();
}

/// A batch's `DONE` put answered with a conflict (`TransactionConflictException`, which
/// DynamoDB may answer any write that meets a transaction) is sent again, like every
/// other write of the batch. Sent once, it left the batch without `DONE`, and the first
/// resend of its events to reach another process replayed the whole intent: every update
/// a billed failed condition (seen in the write-cost matrix: one cell 3.533 units per
/// event where its rerun measured 3.144).
#[tokio::test]
async fn a_done_put_met_by_a_conflict_is_sent_again() {
    let (direct, table, proxy) = table_behind_proxy(FaultConfig::quiet()).await;
    let via_proxy = via(&proxy).await;
    let store = one_slot(via_proxy, &table);
    let (org, projects) = fresh_org();
    let events = mixed(&org, &projects, "dn", 20);
    proxy.force_where("PutItem", "\"DONE\"", Fault::TransactionConflict);
    let report = store.apply_batch(&events).await.unwrap();
    assert_eq!(tally_outcomes(&report), (20, 0));
    assert_eq!(proxy.injected().get(&Fault::TransactionConflict), Some(&1));
    let done = direct
        .scan()
        .table_name(&table)
        .filter_expression("sk = :done")
        .expression_attribute_values(":done", AttributeValue::S("DONE".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        done.count(),
        1,
        "the batch's DONE was put: {:?}",
        done.items()
    );
    assert_exact(&direct, &table, &org, &events).await.unwrap();
}
