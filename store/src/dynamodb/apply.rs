//! `apply_batch`: claim each event in the ledger, write the batch's intent, apply it in
//! counter transactions, mark it done.
//!
//! See "Applying a batch" in the [module doc](super) for the protocol, why it is exactly
//! once, and what it costs; the steps below are named the same way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use chrono::{DateTime, Duration, Utc};
use tally_core::event::Event;
use tally_core::fold::{self, Delta};
use tally_core::ids::{EventId, OrgId};
use tally_core::period::Month;
use tally_core::ports::{ApplyOutcome, ApplyReport, StoreError};
use tokio::sync::Semaphore;

use super::DynamoStore;
use super::cells;
use super::chunks::{Packing, apply_chunk, plan_chunks};
use super::codec::{
    Item, describe_last_error, describe_sdk_error, encode_body, get_opt_s, instant_number, item, n,
    s, send_retrying, written_or_condition_failed,
};
use super::guard;
use super::keys::{
    PK, SK, TTL, batch_pk, counter_month, counter_pk, counter_sk, ledger_pk, ledger_shard,
    ledger_sk, marker_sk, unique_pk,
};
use super::markers::claim_markers;
use super::ops::{MAX_MARKERS_PER_OP, Op, Ops};
use super::raise::raise_hours;
use super::slots::{self, Slot, SlotFault, Slots};
use super::slotted;

/// How long ledger records and batch state are kept (TTL): the retention every ledger has,
/// [`tally_core::period::LEDGER_RETENTION_DAYS`] (why that is safe is written there).
pub const LEDGER_TTL_DAYS: i64 = tally_core::period::LEDGER_RETENTION_DAYS;
/// Most events one intent covers: bigger batches are applied as several (see
/// [`intent_groups`] for the byte bound that keeps an intent under DynamoDB's 400 KB).
pub const MAX_EVENTS_PER_INTENT: usize = 1_000;
/// Ledger claims in flight at once per batch.
const CLAIM_CONCURRENCY: usize = 32;
/// Rounds of resolving events whose ledger record another batch owns, before giving up on
/// them for this delivery (each round follows one change of owner).
const RESOLVE_ROUNDS: usize = 4;

/// Attribute of a ledger record: the batch that claimed it.
pub const OWNER: &str = "owner";
/// Attribute of a ledger record: when it was claimed (Unix seconds).
pub const CLAIMED: &str = "claimed";

const INTENT_SK: &str = "INTENT";
const DONE_SK: &str = "DONE";

/// Where an event's ledger claim stands.
#[derive(Debug)]
enum Claim {
    /// This batch owns the record: its counts are this batch's to apply.
    Owned,
    /// Another batch owns it (`owner`; `None` on records older than owners), claimed at
    /// `claimed` (Unix seconds); `body` is the record's body, to tell a resend with other
    /// contents (`ApplyReport::conflicts`).
    Foreign {
        owner: Option<String>,
        claimed: i64,
        body: Option<String>,
    },
    /// Settled for this delivery.
    Done(ApplyOutcome),
}

/// Applies a batch; see [`tally_core::ports::UsageStore::apply_batch`].
pub(super) async fn apply_batch(
    store: &DynamoStore,
    events: &[Event],
) -> Result<ApplyReport, StoreError> {
    if events.is_empty() {
        return Ok(ApplyReport::default());
    }
    // 1. Repeats inside the batch are duplicates; the first copy of each is a candidate.
    let kept = fold::dedupe_in_batch(events);
    let mut outcomes = vec![ApplyOutcome::Duplicate; events.len()];
    let mut candidates = Vec::with_capacity(kept.len());
    let mut k = kept.iter().peekable();
    for (i, e) in events.iter().enumerate() {
        if k.next_if(|r| std::ptr::eq(**r, e)).is_some() {
            candidates.push(i);
        }
    }
    // Bodies first, so an event that cannot be encoded fails the call before any write.
    let mut bodies: HashMap<usize, String> = HashMap::with_capacity(candidates.len());
    for &i in &candidates {
        bodies.insert(i, encode_body(&events[i])?);
    }
    let mut stored: HashMap<usize, String> = HashMap::new();
    for group in intent_groups(events, &candidates) {
        let (settled, seen) = apply_group(store, events, group, &bodies).await;
        for (i, outcome) in settled {
            outcomes[i] = outcome;
        }
        stored.extend(seen);
    }
    // A repeat of a refused first copy was not counted either.
    let refused: HashSet<(&OrgId, &EventId)> = candidates
        .iter()
        .filter(|&&i| outcomes[i] == ApplyOutcome::Overflow)
        .map(|&i| (&events[i].org_id, &events[i].id))
        .collect();
    if !refused.is_empty() {
        for (e, o) in events.iter().zip(outcomes.iter_mut()) {
            if refused.contains(&(&e.org_id, &e.id)) {
                *o = ApplyOutcome::Overflow;
            }
        }
    }
    let conflicts = conflicting_repeats(events, &candidates, &outcomes, &stored);
    Ok(ApplyReport {
        outcomes,
        conflicts,
    })
}

/// The duplicates whose contents differ from the copy that was counted: for a first copy
/// the ledger already held, the record's body as its claim returned it; for a repeat inside
/// the batch, its first copy (or what that copy met in the ledger). A record settled as a
/// duplicate after waiting on another batch is compared with the body its first claim saw.
///
/// Only a report: the batch is applied by now, so a stored body that does not decode is
/// logged and left uncompared rather than failing (and forever retrying) the batch.
fn conflicting_repeats(
    events: &[Event],
    candidates: &[usize],
    outcomes: &[ApplyOutcome],
    stored: &HashMap<usize, String>,
) -> Vec<usize> {
    let mut counted: HashMap<(&OrgId, &EventId), Option<Event>> =
        HashMap::with_capacity(candidates.len());
    for &i in candidates {
        let e = &events[i];
        let copy = match (&outcomes[i], stored.get(&i)) {
            (ApplyOutcome::Applied, _) => Some(e.clone()),
            (ApplyOutcome::Duplicate, Some(body)) => {
                match crate::ledger_body::decode(&e.org_id, e.id.clone(), body, "ledger record") {
                    Ok(copy) => Some(copy),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot compare a resend with its ledger record");
                        None
                    }
                }
            }
            // Failed, or a duplicate whose counted body was not seen: nothing to compare.
            _ => None,
        };
        counted.insert((&e.org_id, &e.id), copy);
    }
    events
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            outcomes[*i] == ApplyOutcome::Duplicate
                && matches!(counted.get(&(&e.org_id, &e.id)), Some(Some(c)) if c != *e)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Most bytes of ops one intent may hold, by the estimate below: DynamoDB items hold 400 KB.
const MAX_INTENT_BYTES: usize = 300 * 1024;

/// Cuts the candidates into groups whose intents stay under [`MAX_EVENTS_PER_INTENT`] events
/// and [`MAX_INTENT_BYTES`]: an event is at most one cell op (~150 bytes), or for
/// `unique_count` six counters with a marker each (the marker key holds the value, up to
/// 128 bytes, beside the counter's key).
fn intent_groups<'c>(events: &[Event], candidates: &'c [usize]) -> Vec<&'c [usize]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (at, &i) in candidates.iter().enumerate() {
        let e = &events[i];
        let cost = match e.unique_value() {
            Some(v) => 6 * (400 + v.len().min(128)),
            None => 150,
        };
        if at > start && (at - start >= MAX_EVENTS_PER_INTENT || bytes + cost > MAX_INTENT_BYTES) {
            groups.push(&candidates[start..at]);
            (start, bytes) = (at, 0);
        }
        bytes += cost;
    }
    if start < candidates.len() {
        groups.push(&candidates[start..]);
    }
    groups
}

/// A fresh batch id: 128 random bits in hex.
fn new_batch_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Applies up to [`MAX_EVENTS_PER_INTENT`] distinct events. Also hands back the bodies of
/// the records other batches held when this one claimed (for `conflicting_repeats`).
async fn apply_group(
    store: &DynamoStore,
    events: &[Event],
    group: &[usize],
    bodies: &HashMap<usize, String>,
) -> (Vec<(usize, ApplyOutcome)>, Vec<(usize, String)>) {
    let now = Utc::now();
    let mut out = Vec::with_capacity(group.len());
    // 2. Claim every event's ledger record for a fresh batch.
    let batch = new_batch_id();
    let claims = claim_all(store, events, group, bodies, &batch, now).await;
    let seen: Vec<(usize, String)> = claims
        .iter()
        .filter_map(|(i, c)| match c {
            Claim::Foreign {
                body: Some(body), ..
            } => Some((*i, body.clone())),
            _ => None,
        })
        .collect();
    let mut foreign = settle_owned(store, events, &batch, claims, now, &mut out).await;
    // 3. Records other batches own. Our own intent is written by now, so nobody waits on
    //    us while we wait on them: finish their intents, or take orphans over under a
    //    second batch id.
    for _ in 0..RESOLVE_ROUNDS {
        if foreign.is_empty() {
            break;
        }
        let batch = new_batch_id();
        let claims = resolve_foreign(store, events, foreign, &batch, now).await;
        foreign = settle_owned(store, events, &batch, claims, now, &mut out).await;
    }
    out.extend(foreign.into_iter().map(|(i, _)| {
        (
            i,
            ApplyOutcome::Failed("ledger ownership kept changing; retry".into()),
        )
    }));
    (out, seen)
}

/// Applies the owned claims under `batch` (steps 4 and 5), records every settled outcome in
/// `out`, and returns the claims other batches own.
async fn settle_owned(
    store: &DynamoStore,
    events: &[Event],
    batch: &str,
    claims: Vec<(usize, Claim)>,
    now: DateTime<Utc>,
    out: &mut Vec<(usize, ApplyOutcome)>,
) -> Vec<(usize, Claim)> {
    let mut owned = Vec::new();
    let mut foreign = Vec::new();
    for (i, claim) in claims {
        match claim {
            Claim::Owned => owned.push(i),
            Claim::Done(outcome) => out.push((i, outcome)),
            c @ Claim::Foreign { .. } => foreign.push((i, c)),
        }
    }
    if owned.is_empty() {
        return foreign;
    }
    // Room under the counter guards first: events past the limit leave the ledger again
    // and are refused; should that not work out, nothing of the batch is counted.
    let verdict = guard::admit(store, events, &owned).await;
    let failed = match verdict.failed {
        Some(why) => Some(why),
        None => release(store, events, batch, &verdict.refused).await.err(),
    };
    if let Some(why) = failed {
        // Our claims stay ours and nothing was counted: fence the batch off so a
        // redelivery takes its events over at once.
        let _ = abort(store, batch, now).await;
        out.extend(
            owned
                .iter()
                .map(|&i| (i, ApplyOutcome::Failed(why.clone()))),
        );
        return foreign;
    }
    out.extend(verdict.refused.iter().map(|&i| (i, ApplyOutcome::Overflow)));
    owned.retain(|i| verdict.refused.binary_search(i).is_err());
    if owned.is_empty() {
        return foreign;
    }
    let outcome = apply_owned(store, events, batch, &owned, now).await;
    out.extend(owned.iter().map(|&i| (i, outcome.clone())));
    foreign
}

/// Deletes this batch's ledger claims of refused events, so the ledger never holds an
/// event that was not counted and a later replay can count it. A record another batch owns
/// by now (ours was fenced off) is left to it.
async fn release(
    store: &DynamoStore,
    events: &[Event],
    batch: &str,
    refused: &[usize],
) -> Result<(), String> {
    for &i in refused {
        let e = &events[i];
        let sent = send_retrying(&store.retry, || {
            store
                .delete_item_at(ledger_pk(&e.org_id, ledger_shard(&e.id)), ledger_sk(&e.id))
                .condition_expression("#owner = :batch")
                .expression_attribute_names("#owner", OWNER)
                .expression_attribute_values(":batch", s(batch))
                .send()
        })
        .await;
        // A failed condition: another batch owns the record by now (ours was fenced off).
        written_or_condition_failed("DeleteItem", sent)?;
    }
    Ok(())
}

/// Writes the intent of the owned events (step 4), applies it and marks the batch done
/// (step 5); the outcome is every owned event's.
#[tracing::instrument(level = "debug", skip_all, fields(batch = %batch, events = owned.len()))]
async fn apply_owned(
    store: &DynamoStore,
    events: &[Event],
    batch: &str,
    owned: &[usize],
    now: DateTime<Utc>,
) -> ApplyOutcome {
    let ops = plan_ops(events, owned);
    if let Some(slots) = &store.slots {
        return apply_slotted(store, slots, batch, &ops, now).await;
    }
    match write_intent(store, batch, &ops, Packing::MarkersApart, now).await {
        Ok(true) => {}
        Ok(false) => {
            return ApplyOutcome::Failed(
                "another aggregator took this batch's events over; retry".into(),
            );
        }
        Err(e) => {
            // Abort our own batch so a redelivery can take the events over at once instead
            // of waiting out the claim lease.
            let _ = abort(store, batch, now).await;
            return ApplyOutcome::Failed(e.to_string());
        }
    }
    match complete(store, batch, &ops, Packing::MarkersApart, now).await {
        Ok(()) => ApplyOutcome::Applied,
        Err(why) => ApplyOutcome::Failed(why),
    }
}

/// Tries at getting a slot ready (acquired or renewed, its last batch finished) or stepped.
const SLOT_TRIES: usize = 8;

/// [`apply_owned`] in the slotted format: a ready writer slot stepped to this batch, the
/// intent with the slot and number, its updates, done; the slot goes back to the store's
/// idle slots, marked finished only if the batch is (so its next use finishes it first).
async fn apply_slotted(
    store: &DynamoStore,
    slots: &Slots,
    batch: &str,
    ops: &Ops,
    now: DateTime<Utc>,
) -> ApplyOutcome {
    let lease_ms = i64::try_from(store.claim_lease.as_millis()).unwrap_or(i64::MAX);
    let mut stepped = None;
    for _ in 0..SLOT_TRIES {
        let slot = match ready_slot(store, slots, lease_ms).await {
            Ok(slot) => slot,
            Err(why) => {
                let _ = abort(store, batch, now).await;
                return ApplyOutcome::Failed(why);
            }
        };
        let now_ms = Utc::now().timestamp_millis();
        match slots::step(store, &slots.owner, &slot, batch, now_ms, lease_ms).await {
            Ok(Some(next)) => {
                stepped = Some(next);
                break;
            }
            // Taken by another store: its batch is that store's to finish; try another.
            Ok(None) => slots.forget(slot.k),
            Err(e) => {
                slots.give_back(slot);
                let _ = abort(store, batch, now).await;
                return ApplyOutcome::Failed(e.to_string());
            }
        }
    }
    let Some(mut slot) = stepped else {
        let _ = abort(store, batch, now).await;
        return ApplyOutcome::Failed("no writer slot could be stepped; retry".into());
    };
    let packing = Packing::Slotted {
        slot: slot.k,
        seq: slot.seq,
    };
    // The lease is renewed while the batch runs, so a slow one is not taken over.
    let written = slots::keep_alive(store, &slots.owner, &mut slot, lease_ms, async {
        match write_intent(store, batch, ops, packing, now).await {
            Ok(true) => Ok(Some(complete(store, batch, ops, packing, now).await)),
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        }
    })
    .await;
    let outcome = match written {
        Ok(Some(completed)) => match completed {
            Ok(()) => {
                slot.finished = true;
                ApplyOutcome::Applied
            }
            Err(why) => ApplyOutcome::Failed(why),
        },
        // Fenced off (the slot or the events were taken over): finished, as an abort.
        Ok(None) => {
            slot.finished = true;
            ApplyOutcome::Failed("another aggregator took this batch's events over; retry".into())
        }
        Err(e) => {
            // Finished only if this call fenced the batch: `Ok(false)` means an intent may
            // exist (its write landed but the answer was lost), and stepping past a batch
            // whose ops were never applied would make every later replay of them skip the
            // cells the next batch raised. Unfinished, the slot's next use reads the batch
            // again and replays or fences it.
            slot.finished = matches!(abort(store, batch, now).await, Ok(true));
            ApplyOutcome::Failed(e.to_string())
        }
    };
    slots.give_back(slot);
    outcome
}

/// A slot this store holds with its last batch finished, ready to step: an idle one
/// (renewed when its lease is half gone) or a newly acquired one, whose unfinished batch
/// is finished first (replayed from its intent, or fenced off without one). With every
/// slot leased it waits, with backoff, up to the store's owner wait (5 s by default) for
/// one to come free before failing the batch for a later delivery.
async fn ready_slot(store: &DynamoStore, slots: &Slots, lease_ms: i64) -> Result<Slot, String> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(20);
    loop {
        if let Some(slot) = ready_slot_once(store, slots, lease_ms).await? {
            return Ok(slot);
        }
        if started.elapsed() + pause > store.owner_wait {
            break;
        }
        metrics::counter!("tally_writer_slot_waits_total").increment(1);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(500));
    }
    metrics::counter!("tally_writer_slots_exhausted_total").increment(1);
    Err(format!(
        "no writer slot free within {:?}: TALLY_DYNAMODB_WRITER_SLOTS ({}) must exceed the \
         batches applied at once; retry",
        store.owner_wait, slots.count
    ))
}

/// One pass of [`ready_slot`] over every slot; `None` when none was free.
async fn ready_slot_once(
    store: &DynamoStore,
    slots: &Slots,
    lease_ms: i64,
) -> Result<Option<Slot>, String> {
    // Every slot in turn from a random one, so a free slot is found if there is one.
    let start = rand::random_range(0..slots.count);
    let tries = slots.count as usize + SLOT_TRIES;
    for attempt in 0..tries {
        let now_ms = Utc::now().timestamp_millis();
        let held = match slots.take_idle() {
            Some(slot) if slot.expires_ms.saturating_sub(now_ms) > lease_ms / 2 => Some(slot),
            Some(slot) => {
                // A failed renewal forgets the slot rather than dropping it held: the
                // lease may still be this store's, and a later acquisition adopts it.
                let renewed = slots::renew(store, &slots.owner, &slot, now_ms, lease_ms)
                    .await
                    .inspect_err(|_| slots.forget(slot.k))
                    .map_err(|e| e.to_string())?;
                if renewed.is_none() {
                    slots.forget(slot.k);
                }
                renewed
            }
            None => {
                let k = (start + attempt as u32) % slots.count;
                // Held or being acquired by another apply of this store: not this one's.
                if !slots.reserve(k) {
                    continue;
                }
                let acquired = slots::try_acquire(store, &slots.owner, k, now_ms, lease_ms, true)
                    .await
                    .inspect_err(|_| slots.forget(k))
                    .map_err(|e| e.to_string())?;
                if acquired.is_none() {
                    slots.forget(k);
                }
                acquired
            }
        };
        let Some(mut slot) = held else { continue };
        if slots.fault == Some(SlotFault::StepBeforeDone) {
            return Ok(Some(slot));
        }
        // A take-over's replay may be long: the lease is kept alive through it.
        let finished = {
            let mut kept = slot.clone();
            let finished = slots::keep_alive(store, &slots.owner, &mut kept, lease_ms, async {
                finish_slot_batch(store, &mut slot).await
            })
            .await;
            slot.expires_ms = kept.expires_ms;
            finished
        };
        match finished {
            Ok(()) => return Ok(Some(slot)),
            // Left to expire (or adopted by this store's next try): whoever acquires it
            // next finishes the batch.
            Err(why) => {
                slots.forget(slot.k);
                tracing::warn!(slot = slot.k, error = %why, "cannot finish a writer slot's batch")
            }
        }
    }
    Ok(None)
}

/// Finishes the batch a slot last began, unless known finished: done or aborted is
/// finished; an intent is replayed (under its own slot and number) and marked done; no
/// intent is fenced off with an abort (its owner can then never write one).
async fn finish_slot_batch(store: &DynamoStore, slot: &mut Slot) -> Result<(), String> {
    let Some(id) = slot.batch.clone().filter(|_| !slot.finished) else {
        slot.finished = true;
        return Ok(());
    };
    let now = Utc::now();
    let mut state = batch_state(store, &id).await.map_err(|e| e.to_string())?;
    if matches!(state, BatchState::Missing) {
        abort(store, &id, now).await.map_err(|e| e.to_string())?;
        state = batch_state(store, &id).await.map_err(|e| e.to_string())?;
    }
    match state {
        BatchState::Done | BatchState::Aborted => {}
        BatchState::Intent(ops, packing) => {
            complete(store, &id, &ops, packing, now).await?;
            metrics::counter!("tally_dynamodb_slot_batches_finished_total").increment(1);
        }
        BatchState::Missing => return Err(format!("batch {id}: neither intent nor abort")),
    }
    slot.finished = true;
    Ok(())
}

/// Puts every event's ledger record under `attribute_not_exists`, owned by `batch`, a few
/// dozen at once.
async fn claim_all(
    store: &DynamoStore,
    events: &[Event],
    group: &[usize],
    bodies: &HashMap<usize, String>,
    batch: &str,
    now: DateTime<Utc>,
) -> Vec<(usize, Claim)> {
    let ttl = (now + Duration::days(LEDGER_TTL_DAYS)).timestamp();
    let permits = Arc::new(Semaphore::new(CLAIM_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for &i in group {
        let e = &events[i];
        let record = item([
            (PK, s(ledger_pk(&e.org_id, ledger_shard(&e.id)))),
            (SK, s(ledger_sk(&e.id))),
            ("month", s(Month::of(e.timestamp).to_string())),
            ("body", s(bodies.get(&i).cloned().unwrap_or_default())),
            (TTL, n(ttl)),
            (OWNER, s(batch)),
            (CLAIMED, n(now.timestamp())),
        ]);
        let (store, batch, permits) = (store.clone(), batch.to_owned(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (i, claim(&store, record, &batch).await)
        });
    }
    let mut claims = Vec::with_capacity(group.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(c) => claims.push(c),
            Err(e) => tracing::error!(error = %e, "a ledger claim task failed"),
        }
    }
    // A task that panicked leaves its event unsettled: fail it so it comes back.
    for &i in group {
        if !claims.iter().any(|(j, _)| *j == i) {
            claims.push((
                i,
                Claim::Done(ApplyOutcome::Failed("ledger claim did not finish".into())),
            ));
        }
    }
    claims
}

/// One conditional ledger put, retried while DynamoDB says retrying may help. A record that
/// exists says who owns it (DynamoDB returns it with the failed condition).
async fn claim(store: &DynamoStore, record: Item, batch: &str) -> Claim {
    let sent = send_retrying(&store.retry, || {
        store
            .put_item_of(record.clone())
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
    })
    .await;
    match sent {
        Ok(_) => Claim::Owned,
        Err(e) => {
            if let Some(PutItemError::ConditionalCheckFailedException(c)) = e.as_service_error() {
                return foreign(c.item(), batch);
            }
            Claim::Done(ApplyOutcome::Failed(describe_last_error(
                &store.retry,
                "PutItem",
                &e,
            )))
        }
    }
}

/// What an existing ledger record says about its owner.
fn foreign(old: Option<&Item>, batch: &str) -> Claim {
    let owner = old.and_then(|it| get_opt_s(it, OWNER).ok().flatten());
    if owner == Some(batch) {
        // Our own put landed on an earlier attempt whose answer was lost.
        return Claim::Owned;
    }
    let claimed = old
        .and_then(|it| match it.get(CLAIMED) {
            Some(AttributeValue::N(v)) => v.parse().ok(),
            _ => None,
        })
        .unwrap_or(0);
    Claim::Foreign {
        owner: owner.map(str::to_owned),
        claimed,
        body: old.and_then(|it| get_opt_s(it, "body").ok().flatten().map(str::to_owned)),
    }
}

/// What is known about another batch.
enum BatchState {
    /// Its counters are applied.
    Done,
    /// It wrote its intent (packed so); its counters may be partly applied.
    Intent(Ops, Packing),
    /// It was aborted before writing an intent: its records are orphans.
    Aborted,
    /// Neither: it is still claiming, or it died before its intent.
    Missing,
}

/// Settles claims other batches own, one owner at a time: a duplicate of a done batch, a
/// duplicate after finishing a batch that wrote its intent, or (an orphan of an aborted
/// batch) taken over for `batch`. An owner with neither intent nor abort is waited for
/// (it is between its claims and its intent) until its lease is over or the wait limit is
/// reached; then it is fenced off with an abort, or the claim fails for a later retry.
async fn resolve_foreign(
    store: &DynamoStore,
    events: &[Event],
    claims: Vec<(usize, Claim)>,
    batch: &str,
    now: DateTime<Utc>,
) -> Vec<(usize, Claim)> {
    let mut by_owner: BTreeMap<Option<String>, (i64, Vec<usize>)> = BTreeMap::new();
    let mut out = Vec::with_capacity(claims.len());
    for (i, c) in claims {
        match c {
            Claim::Foreign { owner, claimed, .. } => {
                let entry = by_owner.entry(owner).or_insert((claimed, Vec::new()));
                entry.0 = entry.0.max(claimed);
                entry.1.push(i);
            }
            other => out.push((i, other)),
        }
    }
    for (owner, (claimed, indices)) in by_owner {
        let settle = |out: &mut Vec<(usize, Claim)>, outcome: ApplyOutcome| {
            out.extend(indices.iter().map(|&i| (i, Claim::Done(outcome.clone()))));
        };
        // Records from before owners existed were applied with their ledger write.
        let Some(id) = owner else {
            settle(&mut out, ApplyOutcome::Duplicate);
            continue;
        };
        match owner_state(store, &id, claimed).await {
            Err(e) => settle(&mut out, ApplyOutcome::Failed(e.to_string())),
            Ok(BatchState::Done) => settle(&mut out, ApplyOutcome::Duplicate),
            Ok(BatchState::Intent(ops, packing)) => {
                match complete(store, &id, &ops, packing, now).await {
                    Ok(()) => {
                        // Normal when two deliveries race; often, it means aggregators die
                        // between their intent and their done.
                        metrics::counter!("tally_dynamodb_batches_finished_for_others_total")
                            .increment(1);
                        tracing::info!(batch = %id, "finished another batch's intent");
                        settle(&mut out, ApplyOutcome::Duplicate)
                    }
                    Err(why) => settle(&mut out, ApplyOutcome::Failed(why)),
                }
            }
            Ok(BatchState::Missing) => settle(
                &mut out,
                ApplyOutcome::Failed(format!(
                    "another aggregator (batch {id}) is applying this event; retry"
                )),
            ),
            Ok(BatchState::Aborted) => {
                metrics::counter!("tally_dynamodb_events_taken_over_total")
                    .increment(indices.len() as u64);
                tracing::warn!(batch = %id, events = indices.len(), "taking over events of an aborted batch");
                for &i in &indices {
                    out.push((i, reown(store, &events[i], &id, batch, now).await));
                }
            }
        }
    }
    out
}

/// The state of batch `id`, which claimed records at `claimed` (Unix seconds): waits while
/// it has neither intent nor abort, and fences it off once its lease is over. `Missing`
/// only if the wait ran out inside the lease.
async fn owner_state(
    store: &DynamoStore,
    id: &str,
    claimed: i64,
) -> Result<BatchState, StoreError> {
    let started = tokio::time::Instant::now();
    let lease_end = claimed.saturating_add(store.claim_lease.as_secs() as i64);
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        let state = batch_state(store, id).await?;
        if !matches!(state, BatchState::Missing) {
            return Ok(state);
        }
        if Utc::now().timestamp() >= lease_end {
            abort(store, id, Utc::now()).await?;
            // Aborted by us, or it won the race with its intent: either way, look again.
            return batch_state(store, id).await;
        }
        if started.elapsed() + pause > store.owner_wait {
            return Ok(BatchState::Missing);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(250));
    }
}

/// Reads another batch's state (a done batch is remembered, so duplicates of it cost no
/// read the next time).
async fn batch_state(store: &DynamoStore, id: &str) -> Result<BatchState, StoreError> {
    if store.done_batches.contains(id) {
        return Ok(BatchState::Done);
    }
    if store.get(batch_pk(id), DONE_SK).await?.is_some() {
        store.done_batches.insert(id);
        return Ok(BatchState::Done);
    }
    let Some(intent) = store.get(batch_pk(id), INTENT_SK).await? else {
        return Ok(BatchState::Missing);
    };
    if intent.contains_key("aborted") {
        return Ok(BatchState::Aborted);
    }
    let (ops, packing) = intent_ops(&intent)
        .map_err(|e| super::codec::corrupt(format!("intent of batch {id}: {e}")))?;
    Ok(BatchState::Intent(ops, packing))
}

/// An intent's ops and how they are packed, from whichever attribute the release that
/// wrote it used.
fn intent_ops(intent: &Item) -> Result<(Ops, Packing), StoreError> {
    if let Some(AttributeValue::B(packed)) = intent.get(OPS_SLOTTED) {
        let number = |name: &str| match intent.get(name) {
            Some(AttributeValue::N(v)) => v.parse::<u64>().ok(),
            _ => None,
        };
        let (Some(slot), Some(seq)) = (number(SLOT_ATTR), number(SEQ_ATTR)) else {
            return Err(super::codec::corrupt(
                "slotted intent without its slot and seq",
            ));
        };
        let slot = u32::try_from(slot).map_err(|_| super::codec::corrupt("intent slot"))?;
        let packing = Packing::Slotted { slot, seq };
        return Ok((unpack_ops(packed.as_ref())?, packing));
    }
    if let Some(AttributeValue::B(packed)) = intent.get(OPS_MARKERS_APART) {
        return Ok((unpack_ops(packed.as_ref())?, Packing::MarkersApart));
    }
    match (intent.get(OPS_HOT_APART), intent.get(OPS_PACKED)) {
        (Some(AttributeValue::B(packed)), _) => {
            Ok((unpack_ops(packed.as_ref())?, Packing::HotApart))
        }
        (_, Some(AttributeValue::B(packed))) => Ok((unpack_ops(packed.as_ref())?, Packing::Mixed)),
        // Intents written before they were compressed.
        _ => {
            let text = super::codec::get_s(intent, "ops")?;
            let ops =
                serde_json::from_str(text).map_err(|e| super::codec::corrupt(e.to_string()))?;
            Ok((ops, Packing::Mixed))
        }
    }
}

/// Attribute of an intent: its ops as deflated JSON. The ops repeat long key prefixes
/// (`DAY#<meter>#<project>#`), so deflate cuts the intent to about a ninth, and an intent
/// is written for every batch: on workload W intents and `DONE` fell from 0.069 to 0.008
/// write units per event.
const OPS_PACKED: &str = "opsz";
/// Attribute of an intent whose ops are packed with hot orgs apart ([`Packing::HotApart`]):
/// the same deflated JSON as [`OPS_PACKED`], under a name a release that packs every org
/// together does not read, so such a release fails those batches for a later retry instead
/// of cutting their chunks differently (which would apply some ops twice).
const OPS_HOT_APART: &str = "opsh";
/// Attribute of an intent whose `unique_count` markers are put outside its chunks
/// ([`Packing::MarkersApart`], what this release writes): the same deflated JSON again,
/// under a name older releases do not read, for the same reason as [`OPS_HOT_APART`].
const OPS_MARKERS_APART: &str = "opsu";
/// Attribute of a slotted intent ([`Packing::Slotted`]): the same deflated JSON under a
/// name older releases do not read (they fail such a batch for a retry rather than apply
/// it in chunks), with the batch's writer slot and number beside it.
const OPS_SLOTTED: &str = "opss";
/// Attributes of a slotted intent: its writer slot and its number on the slot.
const SLOT_ATTR: &str = "slot";
const SEQ_ATTR: &str = "seq";
/// Largest inflated intent accepted when reading one back (a corrupt or hostile item
/// must not make the reader allocate without bound); well above [`MAX_INTENT_BYTES`].
const MAX_UNPACKED_INTENT: usize = 8 * 1024 * 1024;

fn pack_ops(ops: &Ops) -> Result<Vec<u8>, StoreError> {
    let text = serde_json::to_vec(ops)
        .map_err(|e| StoreError::Unavailable(format!("encoding a batch intent: {e}")))?;
    Ok(miniz_oxide::deflate::compress_to_vec(&text, 6))
}

fn unpack_ops(packed: &[u8]) -> Result<Ops, StoreError> {
    let text = miniz_oxide::inflate::decompress_to_vec_with_limit(packed, MAX_UNPACKED_INTENT)
        .map_err(|e| super::codec::corrupt(format!("inflating: {e}")))?;
    serde_json::from_slice(&text).map_err(|e| super::codec::corrupt(e.to_string()))
}

/// Puts an aborted intent for `id` unless it has one; `true` if this call aborted it.
///
/// Retried under the store's policy when the put fails: a throttle or a 5xx here would
/// otherwise fail every event of the dead batch until the next delivery. A retry after an
/// answer lost on the way is harmless: it finds the abort it wrote and says `false`, and
/// every caller reads the batch's state again rather than trusting the flag.
async fn abort(store: &DynamoStore, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let ttl = (now + Duration::days(LEDGER_TTL_DAYS)).timestamp();
    let record = item([
        (PK, s(batch_pk(id))),
        (SK, s(INTENT_SK)),
        ("aborted", AttributeValue::Bool(true)),
        (TTL, n(ttl)),
    ]);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match store.put_if_absent(record.clone()).await {
            Err(StoreError::Unavailable(_)) if attempt < store.retry.max_attempts => {
                crate::aws::sleep_before_retry(&store.retry, attempt).await;
            }
            done => return done,
        }
    }
}

/// Takes an orphaned ledger record over from aborted batch `from`. If someone else moved
/// it first, the claim follows the record's new owner.
///
/// The record's body and month become this event's: the aborted batch never counted its
/// copy, and the copy counted now is this one, so the ledger must say so (else an id resent
/// with other contents would leave the ledger disagreeing with the counters, which
/// reconcile would report as drift).
async fn reown(store: &DynamoStore, e: &Event, from: &str, to: &str, now: DateTime<Utc>) -> Claim {
    let body = match encode_body(e) {
        Ok(body) => body,
        Err(err) => return Claim::Done(ApplyOutcome::Failed(err.to_string())),
    };
    // A throttle or a 5xx is retried: a lost answer makes the retry's condition fail on
    // the record it moved, which `foreign` recognizes as already ours.
    let sent = send_retrying(&store.retry, || {
        store
            .update_item_at(ledger_pk(&e.org_id, ledger_shard(&e.id)), ledger_sk(&e.id))
            .update_expression("SET #o = :to, #c = :now, #b = :body, #m = :month")
            .condition_expression("#o = :from")
            .expression_attribute_names("#o", OWNER)
            .expression_attribute_names("#c", CLAIMED)
            .expression_attribute_names("#b", "body")
            .expression_attribute_names("#m", "month")
            .expression_attribute_values(":to", s(to))
            .expression_attribute_values(":from", s(from))
            .expression_attribute_values(":now", n(now.timestamp()))
            .expression_attribute_values(":body", s(body.clone()))
            .expression_attribute_values(":month", s(Month::of(e.timestamp).to_string()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
    })
    .await;
    match sent {
        Ok(_) => Claim::Owned,
        Err(err) => match err.as_service_error() {
            Some(UpdateItemError::ConditionalCheckFailedException(c)) => foreign(c.item(), to),
            _ => Claim::Done(ApplyOutcome::Failed(describe_sdk_error("UpdateItem", &err))),
        },
    }
}

/// Folds the owned events into ops: one per day cell (all its hours) for `sum`/`count`,
/// one per hour for `max`/`latest` (their conditions are per hour), one per (counter,
/// value) for `unique_count`; grouped by partition and sorted, so the intent and its chunks
/// come out the same however the events were ordered.
fn plan_ops(events: &[Event], owned: &[usize]) -> Ops {
    let mut groups: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    let mut adds: BTreeMap<(String, String), BTreeMap<u32, rust_decimal::Decimal>> =
        BTreeMap::new();
    let mut unique_events = Vec::new();
    for (cell, delta) in fold::fold_cells(owned.iter().map(|&i| &events[i])) {
        let Some(hour_start) = DateTime::from_timestamp(cell.hour, 0) else {
            continue;
        };
        let pk = counter_pk(cell.org, Month::of(hour_start));
        let (day, h) = cells::day_and_hour(cell.hour);
        let sk = cells::cell_sk(cell.meter, cell.project, day);
        match delta {
            Delta::Add(d) => {
                let sum = adds.entry((pk, sk)).or_default().entry(h).or_default();
                *sum = sum.saturating_add(d);
            }
            Delta::Max(x) => groups
                .entry(pk)
                .or_default()
                .push(Op::Max(sk, h, x.to_string())),
            Delta::Latest { at, value } => groups.entry(pk).or_default().push(Op::Latest(
                sk,
                h,
                value.to_string(),
                instant_number(at),
            )),
            Delta::Unique(_) => unique_events.push(cell),
        }
    }
    for ((pk, sk), hours) in adds {
        let hours = hours.into_iter().map(|(h, d)| (h, d.to_string())).collect();
        groups.entry(pk).or_default().push(Op::Add(sk, hours));
    }
    if !unique_events.is_empty() {
        let unique = owned.iter().map(|&i| &events[i]).filter(|e| {
            matches!(
                e.aggregation,
                tally_core::meter::Aggregation::UniqueCount { .. }
            )
        });
        for (key, delta) in fold::fold(unique) {
            let Delta::Unique(values) = delta else {
                continue;
            };
            let month = counter_month(&key);
            let csk = counter_sk(&key);
            let markers: Vec<String> = values.iter().map(|v| marker_sk(&csk, v)).collect();
            for part in markers.chunks(MAX_MARKERS_PER_OP) {
                groups
                    .entry(counter_pk(key.org, month))
                    .or_default()
                    .push(Op::Unique(
                        csk.clone(),
                        unique_pk(key.org, month),
                        part.to_vec(),
                    ));
            }
        }
    }
    let mut ops: Ops = groups.into_iter().collect();
    for (_, list) in &mut ops {
        list.sort();
    }
    ops
}

/// Puts the batch's intent unless the batch was aborted first; `false` if it was.
async fn write_intent(
    store: &DynamoStore,
    batch: &str,
    ops: &Ops,
    packing: Packing,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let packed = pack_ops(ops)?;
    let ttl = (now + Duration::days(LEDGER_TTL_DAYS)).timestamp();
    let mut record = item([(PK, s(batch_pk(batch))), (SK, s(INTENT_SK)), (TTL, n(ttl))]);
    let ops_attr = match packing {
        Packing::Slotted { slot, seq } => {
            record.insert(SLOT_ATTR.into(), n(slot));
            record.insert(SEQ_ATTR.into(), n(seq));
            OPS_SLOTTED
        }
        _ => OPS_MARKERS_APART,
    };
    record.insert(ops_attr.into(), AttributeValue::B(Blob::new(packed)));
    let mut attempt = 0;
    loop {
        attempt += 1;
        match store.put_if_absent(record.clone()).await {
            Ok(true) => return Ok(true),
            // Our own earlier attempt may have landed with its answer lost: look.
            Ok(false) => {
                return Ok(matches!(
                    batch_state(store, batch).await?,
                    BatchState::Intent(..) | BatchState::Done
                ));
            }
            Err(e) if attempt >= store.retry.max_attempts => return Err(e),
            Err(_) => crate::aws::sleep_before_retry(&store.retry, attempt).await,
        }
    }
}

/// Applies a batch's intent chunk by chunk (each chunk at most once, guarded by its marker)
/// and marks the batch done. Anyone may call it for any batch with an intent, at any time,
/// as often as they like.
async fn complete(
    store: &DynamoStore,
    batch: &str,
    ops: &Ops,
    packing: Packing,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let ttl = (now + Duration::days(LEDGER_TTL_DAYS)).timestamp();
    let owned = match packing {
        Packing::MarkersApart | Packing::Slotted { .. } => {
            Some(claim_markers(store, batch, ops).await?)
        }
        Packing::Mixed | Packing::HotApart => None,
    };
    match (packing, &owned) {
        (Packing::Slotted { slot, seq }, Some(owned)) => {
            slotted::apply_updates(store, ops, owned, slot, seq).await?;
        }
        _ => {
            for (n_chunk, chunk) in plan_chunks(ops, packing).into_iter().enumerate() {
                apply_chunk(store, batch, n_chunk, &chunk, owned.as_ref(), ttl).await?;
            }
        }
    }
    raise_hours(store, ops).await?;
    // Retried like every other write: a conflict or a throttle here would leave the batch
    // without DONE, and the next process to meet its events would replay the whole intent
    // (every update a billed failed condition).
    let done_item = item([(PK, s(batch_pk(batch))), (SK, s(DONE_SK)), (TTL, n(ttl))]);
    let done = send_retrying(&store.retry, || store.put_item_of(done_item.clone()).send()).await;
    // Counters are applied whatever happens here; a missing DONE only makes a later
    // duplicate replay the (already applied, so skipped) chunks.
    if done.is_ok() {
        store.done_batches.insert(batch);
    }
    Ok(())
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
