//! Crashes inside the DynamoDB apply protocol (claims → intent → chunks → raises → done),
//! and the takeover that must follow, against the emulator.
//!
//! Each schedule kills an aggregator at one step of `apply_batch`: a
//! [`FaultProxy`](tally_tests::fault_proxy::FaultProxy) in front of the dying store goes
//! dark at a chosen request ([`FaultProxy::crash_at`]): before it, after it with its answer
//! lost, or after it; from then on nothing the dying store sends reaches the emulator, as
//! if its process was killed. The dying store has one attempt per write, so it gives up at
//! once. Then one or two FRESH stores (their own clients and caches of done batches and
//! known hours, a claim lease of zero so nothing waits on a clock) are handed the same
//! events again, with new ones and in-batch repeats mixed in, and redeliver what comes back
//! `Failed` until nothing does.
//!
//! The crash steps, in turn (schedule `i` takes step kind `i % 11`): during the ledger
//! claims (claim `k` of the batch, any mode), after all claims (before the intent), the
//! intent put answered lost, after the intent, at chunk `k` of `n` (batches of 52 events
//! with 50 `unique_count` values in one hour take two chunks), the last chunk answered
//! lost, at the first `max`/`latest` raise, before `DONE`, `DONE` answered lost, at the
//! counter guard, and at the first `unique_count` marker put (markers are put outside the
//! chunks, owned by their batch). The
//! takeover modes, in turn (`i / 11 % 4`): one taker; a taker inside the dead batch's lease
//! first (owner wait zero: the events the dead batch claimed must come back `Failed` and
//! nobody may fence it yet), then one with lease zero; two takers racing on overlapping
//! batches (both with lease zero, so they also fence each other's live batches); and a
//! zombie: the dying store is paused just before the step's request instead of killed
//! ([`CrashMode::Stall`]), one taker takes over, then the zombie wakes up and carries on.
//! The zombie is what fencing is for: without the abort, its intent would land after the
//! takeover and count its events twice (removing the abort from `owner_state` makes the
//! zombie schedules fail, as does finishing no one else's intent).
//!
//! Every schedule checks, on its own org:
//! - the counters (`stored_counters`, read straight from the emulator) equal an oracle
//!   computed with plain maps from the distinct events, for all five aggregations;
//! - each event is reported `Applied` exactly once over all takers' calls (and the
//!   zombie's), except those a killed batch's written intent covers, which are never
//!   `Applied` (the taker finished that intent and reports them `Duplicate`);
//! - the protocol took the path the crash calls for: a batch that died with claims but no
//!   intent is fenced (its `INTENT` item is an abort) and its events taken over (`reown`);
//!   a batch that died with its intent written is finished (`DONE` exists) and not aborted;
//! - every fifth schedule, reconcile finds no drift.
//!
//! Each schedule has a table of its own (dropped when it passes).
//!
//! A second test runs the schedules in the slotted format (`with_writer_slots`, three slots,
//! `docs/dynamodb-writer-slots.md`): a "chunk" is then the `k`th counter update carrying a
//! high-water mark (a wide batch has eight: six unique counters and two cells, so crashes
//! land between updates), and two more step kinds crash at the writer slot's acquisition
//! and at its step to the batch (13 kinds, 16 schedules each by default). Outside the
//! lease-held mode the dying store's slot lease is zero, so takers (three slots between
//! them all) often take its slot and must finish or fence its batch before their own.
//!
//! The seed is printed; `TALLY_CRASH_SEED` replays a run, `TALLY_CRASH_ONLY=<i>` one
//! schedule of it, `TALLY_CRASH_SCHEDULES` sets how many (default 250, 22 or 23 per step).
//!
//! Needs `TALLY_TEST_AWS_ENDPOINT`; without it the test fails and says how to run it.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, TimeZone, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tally_aggregator::reconcile;
use tally_core::backoff::Backoff;
use tally_core::event::Event;
use tally_core::ids::{EventId, OrgId, ProjectId};
use tally_core::period::Month;
use tally_core::ports::{ApplyOutcome, UsageStore};
use tally_store::dynamodb::sdk::Client;
use tally_store::dynamodb::{DynamoStore, create_table};
use tally_tests::aws;
use tally_tests::conformance::fixtures::{drawn_quantity, event, with_prop};
use tally_tests::fault_proxy::{CrashMode, CrashPoint, FaultConfig, FaultProxy};
use tally_tests::oracle::{counter_differences, plain_counters};

const MONTH: &str = "2026-11";
/// Step kinds of the chunked format; schedule `i` crashes at kind `i % STEPS`.
const STEPS: usize = 11;
/// Step kinds of the slotted format: the same eleven (a chunk is a cell update there) and
/// two around the writer slot.
const SLOTTED_STEPS: usize = 13;
/// Writer slots of the slotted schedules' stores: three, one more than the stores that
/// may hold one at once beside a taker (the dead store and the lease-held taker keep
/// theirs for the claim lease), and few, so takers often take the dead store's slot (and
/// each other's) and must finish its batch first.
const SLOTTED_SLOTS: u32 = 3;
/// Names of the step kinds, for the summary.
const KINDS: [&str; SLOTTED_STEPS] = [
    "during claims",
    "after claims",
    "intent answer lost",
    "after intent",
    "at chunk k of n",
    "last chunk answer lost",
    "at a raise",
    "before done",
    "done answer lost",
    "at the counter guard",
    "at a unique marker",
    "at the slot acquisition",
    "at the slot step",
];
/// Schedules run at once (each with a dying store behind a crash proxy of its own).
const PARALLEL: usize = 4;
/// Redelivery rounds after which an event still `Failed` fails the schedule.
const MAX_ROUNDS: usize = 20;

/// Where the dying store is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// At ledger claim `k` (arrival order).
    Claim(u64, CrashMode),
    /// After every claim, before the intent put.
    BeforeIntent,
    /// The intent put applied, its answer lost.
    IntentLost,
    /// The intent put applied and answered.
    AfterIntent,
    /// At chunk `k` of the batch's chunks.
    Chunk(u64, CrashMode),
    /// At the first `max`/`latest` raise.
    Raise(CrashMode),
    /// Before the `DONE` put.
    BeforeDone,
    /// The `DONE` put applied, its answer lost.
    DoneLost,
    /// At the first counter guard reservation (after the claims, before the intent).
    Guard(CrashMode),
    /// At the first `unique_count` marker put (after the intent, before the chunks).
    Marker(CrashMode),
    /// Slotted format: at the writer slot's acquisition (after the claims and the guard).
    SlotAcquire(CrashMode),
    /// Slotted format: at the slot's step to this batch (just before the intent).
    SlotAdvance(CrashMode),
}

impl Step {
    fn point(self, slotted: bool) -> CrashPoint {
        let at = |op: &str, needle: String, nth: u64, mode: CrashMode| CrashPoint {
            op: op.to_owned(),
            needle,
            nth,
            mode,
        };
        // Ledger claims are the puts of `EVT#` records; the intent is the put carrying the
        // packed ops (`opsu`, slotted `opss`); a unique marker is a put into an `UNQ#`
        // partition; a chunk is the transaction holding its marker, and in the slotted
        // format the `k`th update carrying a high-water mark (`#w`).
        let intent = if slotted { "opss" } else { "opsu" };
        match self {
            Step::Claim(k, mode) => at("PutItem", "EVT#".into(), k, mode),
            Step::BeforeIntent => at("PutItem", intent.into(), 0, CrashMode::Before),
            Step::IntentLost => at("PutItem", intent.into(), 0, CrashMode::AnswerLost),
            Step::AfterIntent => at("PutItem", intent.into(), 0, CrashMode::After),
            Step::Marker(mode) => at("PutItem", "#UNQ#".into(), 0, mode),
            Step::Chunk(k, mode) if slotted => at("UpdateItem", "\"#w\"".into(), k, mode),
            Step::Chunk(k, mode) => at("TransactWriteItems", format!("CHUNK#{k}\""), 0, mode),
            // Raises update day cells (slotted: the only updates naming an hour `#h`); the
            // counter guard's reservation is an `UpdateItem` too.
            Step::Raise(mode) if slotted => at("UpdateItem", "\"#h\"".into(), 0, mode),
            Step::Raise(mode) => at("UpdateItem", "DAY#".into(), 0, mode),
            Step::SlotAcquire(mode) => at("UpdateItem", "\":one\"".into(), 0, mode),
            Step::SlotAdvance(mode) => at("UpdateItem", "\":next\"".into(), 0, mode),
            Step::Guard(mode) => at("UpdateItem", "#GUARD#".into(), 0, mode),
            Step::BeforeDone => at("PutItem", "\"DONE\"".into(), 0, CrashMode::Before),
            Step::DoneLost => at("PutItem", "\"DONE\"".into(), 0, CrashMode::AnswerLost),
        }
    }

    /// Whether the dying batch's intent is in the table when it dies (killed at the step
    /// in its mode; or, `stalled`, paused just before the step's request).
    fn intent_written(self, stalled: bool) -> bool {
        if stalled {
            matches!(
                self,
                Step::Marker(..)
                    | Step::Chunk(..)
                    | Step::Raise(..)
                    | Step::BeforeDone
                    | Step::DoneLost
            )
        } else {
            !matches!(
                self,
                Step::Claim(..)
                    | Step::BeforeIntent
                    | Step::Guard(..)
                    | Step::SlotAcquire(..)
                    | Step::SlotAdvance(..)
            )
        }
    }
}

/// How the events come back after the crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takeover {
    /// One fresh store, claim lease zero.
    Single,
    /// First a fresh store inside the dead batch's lease (default lease, owner wait zero),
    /// then one with lease zero.
    LeaseHeld,
    /// Two fresh stores with lease zero, on overlapping batches at once.
    Race,
    /// The dying store is paused at the step, not killed: one fresh store with lease zero
    /// takes over, then the zombie wakes up and carries on with its protocol.
    Zombie,
}

/// One schedule, drawn from `(seed, i)` alone.
#[derive(Debug)]
struct Schedule {
    i: usize,
    /// The step kind (an index of [`KINDS`]).
    kind: usize,
    /// Whether the stores write the slotted format.
    slotted: bool,
    org: OrgId,
    step: Step,
    takeover: Takeover,
    /// The batch the dying store applies (an in-batch repeat possibly included).
    dying: Vec<Event>,
    /// Its distinct events.
    dying_distinct: usize,
    /// New events the takers' batches carry besides the dying batch's.
    extra_a: Vec<Event>,
    extra_b: Vec<Event>,
}

/// The five test meters (fixtures' `aggregation_of` gives each its aggregation).
const METERS: [&str; 5] = [
    "compute_minutes",
    "requests",
    "storage_bytes",
    "temperature",
    "active_users",
];

/// Event `id` of `meter` at `at`, with a quantity and a `user` drawn from `rng`.
fn draw_event(
    rng: &mut StdRng,
    org: &OrgId,
    project: &ProjectId,
    id: &str,
    meter: &str,
    at: DateTime<Utc>,
) -> Event {
    let quantity = drawn_quantity(meter, rng);
    let e = event(org, project, id, meter, &quantity, &at.to_rfc3339());
    if meter == "active_users" {
        with_prop(e, "user", format!("u{}", rng.random_range(0..6)))
    } else {
        e
    }
}

fn draw_schedule(seed: u64, i: usize, slotted: bool) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let org = OrgId::from_random(rng.random());
    let projects = [
        ProjectId::from_random(rng.random()),
        ProjectId::from_random(rng.random()),
    ];
    let base = Utc.with_ymd_and_hms(2026, 11, 3, 0, 0, 0).unwrap();
    // Distinct instants, so no two `latest` readings tie.
    let mut used = HashSet::new();
    let mut instant = |rng: &mut StdRng, span: i64| loop {
        let at = base + chrono::Duration::seconds(rng.random_range(0..span));
        if used.insert(at) {
            break at;
        }
    };
    let steps = if slotted { SLOTTED_STEPS } else { STEPS };
    let kind = i % steps;
    let wide = kind == 4 && (i / steps).is_multiple_of(2);
    let mode = |rng: &mut StdRng| match rng.random_range(0..3) {
        0 => CrashMode::Before,
        1 => CrashMode::AnswerLost,
        _ => CrashMode::After,
    };
    let mut dying = Vec::new();
    if wide {
        // 50 `unique_count` values in one hour of one project: six counters of 50 markers,
        // each split into two ops (48 markers and 2, the most one op carries), and two
        // `sum` day cells. Two ops of one counter update the same item, which one
        // transaction may not hold twice: the second op of each counter opens chunk 1.
        for v in 0..50 {
            let at = instant(&mut rng, 3600);
            let e = event(
                &org,
                &projects[0],
                &format!("ev-{v}"),
                "active_users",
                "1",
                &at.to_rfc3339(),
            );
            dying.push(with_prop(e, "user", format!("w{v}")));
        }
        for d in 0..2i64 {
            let at = base
                + chrono::Duration::days(d + 1)
                + chrono::Duration::seconds(rng.random_range(0..86_400));
            dying.push(draw_event(
                &mut rng,
                &org,
                &projects[0],
                &format!("ev-s{d}"),
                "compute_minutes",
                at,
            ));
        }
    } else {
        // 2–6 events, the first one chunked (sum, count or unique_count), the second one
        // raised (max or latest), so every step of the protocol happens.
        let n = rng.random_range(2..=6);
        for k in 0..n {
            let meter = match k {
                // The guard step needs an adding meter to reserve room for; the marker
                // step a unique value to put a marker for.
                0 if kind == 9 => ["compute_minutes", "requests"][rng.random_range(0..2)],
                0 if kind == 10 => "active_users",
                0 => ["compute_minutes", "requests", "active_users"][rng.random_range(0..3)],
                1 => ["storage_bytes", "temperature"][rng.random_range(0..2)],
                _ => METERS[rng.random_range(0..METERS.len())],
            };
            let at = instant(&mut rng, 3 * 86_400);
            let project = &projects[rng.random_range(0..2)];
            dying.push(draw_event(
                &mut rng,
                &org,
                project,
                &format!("ev-{k}"),
                meter,
                at,
            ));
        }
    }
    let dying_distinct = dying.len();
    dying.shuffle(&mut rng);
    if rng.random_bool(0.3) {
        let again = dying[rng.random_range(0..dying.len())].clone();
        dying.push(again);
    }
    let step = match kind {
        0 => Step::Claim(rng.random_range(0..dying_distinct as u64), mode(&mut rng)),
        1 => Step::BeforeIntent,
        2 => Step::IntentLost,
        3 => Step::AfterIntent,
        // Slotted, a wide batch has eight updates: six unique counters, two cells.
        4 => Step::Chunk(
            match (wide, slotted) {
                (true, true) => rng.random_range(0..8),
                (true, false) => rng.random_range(0..2),
                _ => 0,
            },
            mode(&mut rng),
        ),
        // The last chunk (chunk 0 of a small batch) answered lost.
        5 => Step::Chunk(0, CrashMode::AnswerLost),
        6 => Step::Raise(mode(&mut rng)),
        7 => Step::BeforeDone,
        8 => Step::DoneLost,
        9 => Step::Guard(mode(&mut rng)),
        10 => Step::Marker(mode(&mut rng)),
        11 => Step::SlotAcquire(mode(&mut rng)),
        _ => Step::SlotAdvance(mode(&mut rng)),
    };
    let takeover = match (i / steps) % 4 {
        0 => Takeover::Single,
        1 => Takeover::LeaseHeld,
        2 => Takeover::Race,
        _ => Takeover::Zombie,
    };
    let mut extras = |rng: &mut StdRng, prefix: &str| -> Vec<Event> {
        (0..rng.random_range(0..=2))
            .map(|k| {
                let meter = METERS[rng.random_range(0..METERS.len())];
                let at = instant(rng, 3 * 86_400);
                let project = projects[rng.random_range(0..2)].clone();
                draw_event(rng, &org, &project, &format!("{prefix}-{k}"), meter, at)
            })
            .collect()
    };
    let extra_a = extras(&mut rng, "xa");
    let extra_b = extras(&mut rng, "xb");
    Schedule {
        i,
        kind,
        slotted,
        org,
        step,
        takeover,
        dying,
        dying_distinct,
        extra_a,
        extra_b,
    }
}

impl Schedule {
    /// `store` writing the schedule's format.
    fn format(&self, store: DynamoStore) -> DynamoStore {
        if self.slotted {
            store.with_writer_slots(SLOTTED_SLOTS)
        } else {
            store.with_chunked_counters()
        }
    }
}

/// A plain string attribute of a JSON-protocol item in a request body.
fn item_s(body: &str, attr: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("Item")?
        .get(attr)?
        .get("S")?
        .as_str()
        .map(str::to_owned)
}

/// What the takers saw, over all their calls.
#[derive(Default)]
struct Tally {
    /// `Applied` reports per event id.
    applied: HashMap<EventId, usize>,
    calls: usize,
    rounds: usize,
}

/// Applies `batch` on `store`, then redelivers whatever came back `Failed` (or whose call
/// failed) until nothing does; the events still failing after [`MAX_ROUNDS`].
async fn deliver(store: &DynamoStore, batch: Vec<Event>, tally: &Mutex<Tally>) -> Vec<Event> {
    let mut pending = batch;
    for round in 0..=MAX_ROUNDS {
        if pending.is_empty() {
            let mut t = tally.lock().unwrap();
            t.rounds = t.rounds.max(round);
            return pending;
        }
        let batch = std::mem::take(&mut pending);
        let report = store.apply_batch(&batch).await;
        let mut t = tally.lock().unwrap();
        t.calls += 1;
        match report {
            Ok(report) => {
                for (e, o) in batch.iter().zip(&report.outcomes) {
                    match o {
                        ApplyOutcome::Applied => *t.applied.entry(e.id.clone()).or_default() += 1,
                        ApplyOutcome::Duplicate => {}
                        ApplyOutcome::Failed(_) => pending.push(e.clone()),
                        ApplyOutcome::Overflow => {
                            panic!("no event of this workload comes near the counter limit")
                        }
                    }
                }
            }
            Err(_) => pending = batch,
        }
    }
    pending
}

/// The emulator's `BATCH#<id>` item `sk`, if any.
async fn batch_item(
    direct: &Client,
    table: &str,
    batch: &str,
    sk: &str,
) -> Option<HashMap<String, AttributeValue>> {
    direct
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(format!("BATCH#{batch}")))
        .key("sk", AttributeValue::S(sk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

/// What one schedule showed, for the run's summary.
#[derive(Debug, Default)]
struct Outcome {
    /// The dead batch was fenced (aborted) and its claimed events taken over.
    fenced: bool,
    /// The dead batch's intent was finished by a taker.
    finished: bool,
    /// Events the dead batch had claimed.
    claimed: usize,
    rounds: usize,
}

/// What the dying batch left in the table when it died (or was paused).
struct Dead {
    /// Its batch id, if any claim of it reached the table.
    owner: Option<String>,
    /// The ids of the events whose claims reached the table.
    claimed: HashSet<String>,
    /// Whether its intent is in the table.
    intent_written: bool,
}

impl Dead {
    /// Reads the requests the dying store got through before the crash.
    fn read(s: &Schedule, proxy: &FaultProxy, stalled: bool) -> Result<Dead, String> {
        let log = proxy.crash_log();
        let claims: Vec<&String> = log
            .iter()
            .filter(|(op, body)| op == "PutItem" && body.contains("EVT#"))
            .map(|(_, body)| body)
            .collect();
        let dead = Dead {
            owner: claims.first().and_then(|b| item_s(b, "owner")),
            claimed: claims
                .iter()
                .filter_map(|b| item_s(b, "sk"))
                .filter_map(|sk| sk.strip_prefix("EVT#").map(str::to_owned))
                .collect(),
            intent_written: s.step.intent_written(stalled),
        };
        if dead.intent_written && dead.claimed.len() != s.dying_distinct {
            return Err(format!(
                "the dying batch claimed {} of {} events before its intent",
                dead.claimed.len(),
                s.dying_distinct
            ));
        }
        Ok(dead)
    }
}

/// Hands the schedule's events to fresh stores (as [`Takeover`] says) until none comes back
/// `Failed`; the events still failing after [`MAX_ROUNDS`].
async fn take_over(
    s: &Schedule,
    dead: &Dead,
    direct: &Client,
    table: &str,
    tally: &Mutex<Tally>,
) -> Result<Vec<Event>, String> {
    let fresh =
        || s.format(DynamoStore::new(direct.clone(), table).with_claim_lease(Duration::ZERO));
    let mut batch_a: Vec<Event> = s.dying.iter().chain(&s.extra_a).cloned().collect();
    let mut rng = StdRng::seed_from_u64(s.i as u64);
    batch_a.shuffle(&mut rng);
    Ok(match s.takeover {
        Takeover::Single | Takeover::Zombie => deliver(&fresh(), batch_a, tally).await,
        Takeover::LeaseHeld => {
            let held =
                s.format(DynamoStore::new(direct.clone(), table).with_owner_wait(Duration::ZERO));
            let report = held
                .apply_batch(&batch_a)
                .await
                .map_err(|e| e.to_string())?;
            let mut again = Vec::new();
            let mut first = HashSet::new();
            for (e, o) in batch_a.iter().zip(&report.outcomes) {
                // A repeat inside the batch is a `Duplicate` whatever its first copy became.
                let dead_owns = first.insert(&e.id) && dead.claimed.contains(e.id.as_str());
                match o {
                    ApplyOutcome::Applied => {
                        *tally
                            .lock()
                            .unwrap()
                            .applied
                            .entry(e.id.clone())
                            .or_default() += 1;
                    }
                    ApplyOutcome::Duplicate => {}
                    ApplyOutcome::Failed(_) => again.push(e.clone()),
                    ApplyOutcome::Overflow => {
                        return Err(format!("event {:?} refused as an overflow", e.id));
                    }
                }
                // Inside the lease, a claim of a batch without intent is left alone.
                if dead_owns && !dead.intent_written && !matches!(o, ApplyOutcome::Failed(_)) {
                    return Err(format!(
                        "{} was settled inside the dead batch's lease: {o:?}",
                        e.id
                    ));
                }
            }
            if let (Some(owner), false) = (&dead.owner, dead.intent_written)
                && batch_item(direct, table, owner, "INTENT").await.is_some()
            {
                return Err("the dead batch was fenced inside its lease".into());
            }
            deliver(&fresh(), again, tally).await
        }
        Takeover::Race => {
            let mut batch_b: Vec<Event> = s.dying.iter().rev().chain(&s.extra_b).cloned().collect();
            let half = batch_b.len() / 2;
            batch_b.rotate_left(half);
            let (a, b) = (fresh(), fresh());
            let (left_a, left_b) =
                tokio::join!(deliver(&a, batch_a, tally), deliver(&b, batch_b, tally));
            left_a.into_iter().chain(left_b).collect()
        }
    })
}

/// Runs schedule `s` with the dying store behind `proxy`; an error names what went wrong.
async fn run(
    s: &Schedule,
    proxy: &FaultProxy,
    dying_client: &Client,
    direct: &Client,
    table: &str,
    reconcile_too: bool,
) -> Result<Outcome, String> {
    let month = Month::parse(MONTH).unwrap();
    // 1. The dying store: fresh caches, one attempt per write, killed (or paused) at the
    //    step.
    let mut dying = DynamoStore::new(dying_client.clone(), table).with_retry_policy(Backoff::new(
        1,
        Duration::from_millis(1),
        Duration::from_millis(1),
    ));
    // Slotted: the dead store's writer slot is free to take at once (its lease is the claim
    // lease), except where a taker must respect the dead batch's claim lease.
    if s.slotted && s.takeover != Takeover::LeaseHeld {
        dying = dying.with_claim_lease(Duration::ZERO);
    }
    let dying = s.format(dying);
    let zombie = s.takeover == Takeover::Zombie;
    let mut point = s.step.point(s.slotted);
    if zombie {
        point.mode = CrashMode::Stall;
    }
    proxy.crash_at(point);
    let tally = Mutex::new(Tally::default());
    // 2. The takeover, on fresh stores straight on the emulator: after the dying store
    //    died, or while the zombie is paused (it wakes up once the takers are done).
    let (dead, left) = if zombie {
        let takeover = async {
            let fired = tokio::time::timeout(Duration::from_secs(60), proxy.until_crashed()).await;
            let dead = Dead::read(s, proxy, true);
            let left = match (fired, &dead) {
                (Err(_), _) => Err(format!("the stall at {:?} never fired", s.step)),
                (Ok(()), Err(why)) => Err(why.clone()),
                (Ok(()), Ok(dead)) => Ok(take_over(s, dead, direct, table, &tally).await),
            };
            proxy.resume();
            (dead, left)
        };
        let (woke, (dead, left)) = tokio::join!(dying.apply_batch(&s.dying), takeover);
        // The zombie's own reports count like anyone's.
        if let Ok(report) = woke {
            let mut t = tally.lock().unwrap();
            for (e, o) in s.dying.iter().zip(&report.outcomes) {
                if *o == ApplyOutcome::Applied {
                    *t.applied.entry(e.id.clone()).or_default() += 1;
                }
            }
        }
        (dead?, left??)
    } else {
        let _ = dying.apply_batch(&s.dying).await;
        if !proxy.crashed() {
            return Err(format!("the crash at {:?} never fired", s.step));
        }
        let dead = Dead::read(s, proxy, false)?;
        let left = take_over(s, &dead, direct, table, &tally).await?;
        (dead, left)
    };
    let Dead {
        owner,
        claimed,
        intent_written,
    } = dead;
    if !left.is_empty() {
        return Err(format!(
            "{} events still Failed after {MAX_ROUNDS} redeliveries",
            left.len()
        ));
    }
    let tally = tally.into_inner().unwrap();
    // 3. Each event counted once, by the dead batch's intent or by exactly one taker.
    let mut all: Vec<Event> = s.dying.clone();
    all.extend(s.extra_a.iter().cloned());
    if s.takeover == Takeover::Race {
        all.extend(s.extra_b.iter().cloned());
    }
    let ids: BTreeSet<&EventId> = all.iter().map(|e| &e.id).collect();
    for id in ids {
        let applied = tally.applied.get(id).copied().unwrap_or(0);
        // A zombie's own `Applied` counts: it finishes an intent it wrote.
        let by_intent = !zombie && intent_written && claimed.contains(id.as_str());
        let want = usize::from(!by_intent);
        if applied != want {
            return Err(format!(
                "{id} reported Applied {applied} times, want {want} (claimed by the dead batch: {})",
                claimed.contains(id.as_str())
            ));
        }
    }

    // 4. The path the protocol took.
    let mut outcome = Outcome {
        claimed: claimed.len(),
        rounds: tally.rounds,
        ..Outcome::default()
    };
    if let Some(owner) = &owner {
        let intent = batch_item(direct, table, owner, "INTENT").await;
        let done = batch_item(direct, table, owner, "DONE").await;
        let aborted = intent.as_ref().is_some_and(|it| it.contains_key("aborted"));
        if intent_written {
            if aborted || done.is_none() {
                return Err(format!(
                    "the dead batch's intent was not finished (aborted {aborted}, done {})",
                    done.is_some()
                ));
            }
            outcome.finished = true;
        } else {
            if !aborted {
                return Err("the dead batch was never fenced (no aborted intent)".into());
            }
            outcome.fenced = true;
        }
    }

    // 5. The counters, read straight from the emulator, against the oracle.
    let truth = plain_counters(&all);
    let reader = DynamoStore::new(direct.clone(), table);
    let stored = reader
        .stored_counters(&s.org, month)
        .await
        .map_err(|e| format!("stored_counters: {e}"))?;
    if let Some(diff) = counter_differences(stored.clone(), &truth, 4) {
        return Err(format!("counters differ from the oracle: {diff}"));
    }
    if s.i == 0 {
        // The oracle catches a planted difference: one event fewer.
        let short = plain_counters(
            &all[1..]
                .iter()
                .filter(|e| e.id != all[0].id)
                .cloned()
                .collect::<Vec<_>>(),
        );
        if counter_differences(stored.clone(), &short, 4).is_none() {
            return Err("the oracle misses a counter that counts one event too many".into());
        }
    }
    if reconcile_too {
        let drift = reconcile(&reader, &s.org, month, month.start())
            .await
            .map_err(|e| format!("reconcile: {e}"))?;
        if !drift.is_empty() {
            return Err(format!("drift: {drift:?}"));
        }
    }
    Ok(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_inside_apply_is_taken_over_exactly_once() {
    run_schedules(false).await;
}

/// The same schedules in the slotted format (`with_writer_slots`), two more step kinds
/// (the slot's acquisition and its step), 16 schedules each by default (208).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crash_inside_a_slotted_apply_is_taken_over_exactly_once() {
    run_schedules(true).await;
}

async fn run_schedules(slotted: bool) {
    let steps = if slotted { SLOTTED_STEPS } else { STEPS };
    let seed: u64 = std::env::var("TALLY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let count: usize = std::env::var("TALLY_CRASH_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if slotted { 16 } else { 25 } * steps);
    let only: Option<usize> = std::env::var("TALLY_CRASH_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    println!("crash schedules (slotted {slotted}): TALLY_CRASH_SEED={seed}, {count} schedules");
    let direct = Client::new(&aws::sdk_config().await);
    // A table per schedule: the emulator copies a table for each transaction, so one
    // table holding every schedule's items makes the run quadratic.
    let prefix = aws::fresh_name("tally-crash");
    let schedules: Vec<Schedule> = (0..count)
        .filter(|i| only.is_none_or(|o| o == *i))
        .map(|i| draw_schedule(seed, i, slotted))
        .collect();

    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<Outcome, String>)>> = Mutex::new(Vec::new());
    let worker = async || {
        let proxy = FaultProxy::start(&aws::endpoint(), FaultConfig::quiet())
            .await
            .unwrap();
        // No SDK retries: the dying store's first refused request is its last.
        let dying_client = Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&aws::sdk_config_at(&proxy.url()).await)
                .retry_config(RetryConfig::disabled())
                .build(),
        );
        loop {
            let at = next.fetch_add(1, Ordering::SeqCst);
            let Some(s) = schedules.get(at) else { break };
            let table = format!("{prefix}-{}", s.i);
            create_table(&direct, &table).await.unwrap();
            let result = run(s, &proxy, &dying_client, &direct, &table, s.i % 5 == 0).await;
            if result.is_ok() {
                let _ = direct.delete_table().table_name(&table).send().await;
            }
            results.lock().unwrap().push((s.i, result));
        }
    };
    let workers: Vec<_> = (0..PARALLEL).map(|_| worker()).collect();
    futures_util::future::join_all(workers).await;
    let took = started.elapsed();

    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    let by_i: HashMap<usize, &Schedule> = schedules.iter().map(|s| (s.i, s)).collect();
    let mut failures = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let (mut fenced, mut finished, mut taken, mut rounds) = (0, 0, 0, 0);
    for (i, r) in &results {
        let s = by_i[i];
        match r {
            Ok(o) => {
                *kinds.entry(KINDS[s.kind].to_owned()).or_default() += 1;
                *kinds.entry(format!("{:?}", s.takeover)).or_default() += 1;
                fenced += usize::from(o.fenced);
                finished += usize::from(o.finished);
                if o.fenced {
                    taken += o.claimed;
                }
                rounds = rounds.max(o.rounds);
            }
            Err(why) => failures.push(format!(
                "schedule {i} ({:?}, {:?}, {} events): {why} \
                 (replay: TALLY_CRASH_SEED={seed} TALLY_CRASH_ONLY={i}, slotted {slotted})",
                s.step,
                s.takeover,
                s.dying.len()
            )),
        }
    }
    println!(
        "crash schedules: {} run in {took:.1?} ({PARALLEL} at once); {fenced} dead batches \
         fenced ({taken} events taken over), {finished} dead intents finished by a taker, at \
         most {rounds} redelivery rounds; by kind: {kinds:?}",
        results.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} schedules failed (TALLY_CRASH_SEED={seed}):\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
    if only.is_none() {
        assert!(
            count < 200 || fenced >= 20,
            "only {fenced} dead batches fenced"
        );
        assert!(
            count < 200 || finished >= 100,
            "only {finished} dead intents finished"
        );
    }
}
