//! Writer slots: the numbering that makes counter `ADD`s outside transactions exactly once
//! (the slotted format, `docs/dynamodb-writer-slots.md`).
//!
//! A slot is one item, `SLOT#<k>` / `SLOT`, leased to one store at a time (`owner`, a
//! random id per store; `epoch`, raised by every acquisition; `expires`, Unix ms). Its owner
//! numbers the batches it applies through it: `seq` is the last one begun and `batch` its
//! id. A slot steps from `n` to `n + 1` (one conditional `UpdateItem`, which also renews the
//! lease) only after batch `n` is finished, and whoever acquires a slot whose batch `n` is
//! not finished finishes it first (`apply.rs` does both, because finishing needs the
//! intent). So every op of `(k, n)` is applied before any op of `(k, n + 1)` is sent, which
//! is what lets a cell's high-water mark `w<k>` tell an applied op from a new one.
//!
//! Slot items have no TTL and are never deleted: `seq` must only rise (a slot made again
//! at `seq` 0 would have its batches skipped by cells that already hold a higher mark).
//! Time is a parameter (`now_ms`), so tests of leases never wait for a clock.
//!
//! An acquisition whose write landed but whose answer was lost meets, on its retry, a
//! slot leased to this very store: [`try_acquire`] adopts it (the stored epoch and `seq`,
//! its batch not known finished) unless the store already holds it for another apply
//! ([`Slots`] keeps the numbers it holds). A store that stops gives its idle slots back
//! ([`release`]), and an apply keeps its slot's lease alive while it runs ([`keep_alive`]).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use tally_core::ports::StoreError;

use super::DynamoStore;
use super::codec::{Item, corrupt, get_opt_s, n, s, sdk_error, send_retrying};

/// Default number of writer slots (`TALLY_DYNAMODB_WRITER_SLOTS`): it must exceed the
/// number of batches applied at once by every aggregator of the table together.
pub const DEFAULT_WRITER_SLOTS: u32 = 32;
/// Most writer slots: each adds one high-water attribute (about 9 bytes) to the cells it
/// writes, and at 64 a day cell stays under the 1 KB a write unit covers.
pub const MAX_WRITER_SLOTS: u32 = 64;

const SLOT_SK: &str = "SLOT";
const OWNER: &str = "owner";
const EPOCH: &str = "epoch";
const EXPIRES: &str = "expires";
const SEQ: &str = "seq";
const BATCH: &str = "batch";

/// `SLOT#<k>`.
pub(super) fn slot_pk(k: u32) -> String {
    format!("SLOT#{k}")
}

/// The high-water attribute of slot `k` on a cell or unique counter: `w<k>`, flat and
/// top-level (a cell's first write creates it; a map entry could not be set on an item
/// that does not exist yet). Not `h<k>`: hours are `h00`–`h23`.
pub(super) fn hw_attr(k: u32) -> String {
    format!("w{k}")
}

/// A slot as its holder knows it.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub k: u32,
    pub epoch: u64,
    /// The last batch number begun on the slot.
    pub seq: u64,
    /// The id of batch `seq` (`None` before the slot's first batch).
    pub batch: Option<String>,
    /// Whether batch `seq` is known finished (done or aborted): the slot may step.
    pub finished: bool,
    /// When the lease ends (Unix ms).
    pub expires_ms: i64,
}

/// A fault planted in the slotted format, so tests can show they catch it. Never set
/// outside tests.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotFault {
    /// A slot steps to `n + 1` without finishing batch `n` first.
    StepBeforeDone,
    /// Cell and counter updates carry no high-water condition (they still set the mark).
    NoHighWater,
}

/// The writer slots of one store (shared by its clones): the settings and the slots it
/// holds and is not using.
#[derive(Debug)]
pub(super) struct Slots {
    /// K: slots `0..count` exist.
    pub count: u32,
    /// This store's owner id.
    pub owner: String,
    /// Slots held and idle.
    idle: Mutex<Vec<Slot>>,
    /// Numbers of the slots held (idle or in use by an apply): a slot leased to this
    /// store's owner id but not among them is one whose acquisition answer was lost (or
    /// one given up after a failed take-over), and may be adopted.
    held: Mutex<HashSet<u32>>,
    pub fault: Option<SlotFault>,
}

impl Slots {
    /// `count` slots (clamped to 1..=[`MAX_WRITER_SLOTS`]) under a fresh owner id.
    pub fn new(count: u32) -> Self {
        Slots {
            count: count.clamp(1, MAX_WRITER_SLOTS),
            owner: format!("{:032x}", rand::random::<u128>()),
            idle: Mutex::default(),
            held: Mutex::default(),
            fault: None,
        }
    }

    /// An idle held slot, if any.
    pub fn take_idle(&self) -> Option<Slot> {
        self.idle.lock().ok().and_then(|mut v| v.pop())
    }

    /// Every idle held slot (to release them).
    pub fn take_all_idle(&self) -> Vec<Slot> {
        self.idle
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Records slot `k` as no longer held (lost, released, or left to expire).
    pub fn forget(&self, k: u32) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(&k);
        }
    }

    /// Reserves slot `k` for one acquisition by this store: true, and `k` is recorded as
    /// held, when no other apply of this store holds or is acquiring it, so the stored
    /// item, if it names this store's owner (a lost acquisition answer), may be adopted.
    /// (A poisoned lock answers no: adopting a slot in use would make two applies of one
    /// store share it.) Checking and
    /// recording in one step keeps two concurrent applies of one store from both
    /// acquiring (the second adopting the first's fresh lease) and then sharing `k`. An
    /// acquisition that gets nothing [`forget`](Self::forget)s the reservation.
    pub fn reserve(&self, k: u32) -> bool {
        self.held.lock().is_ok_and(|mut held| held.insert(k))
    }

    /// Gives a held slot back for the next apply.
    pub fn give_back(&self, slot: Slot) {
        if let Ok(mut v) = self.idle.lock() {
            v.push(slot);
        }
    }
}

fn num(item: &Item, name: &str) -> Result<i64, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| corrupt(format!("slot attribute {name}: {v:?}"))),
        None => Ok(0),
        Some(_) => Err(corrupt(format!("slot attribute {name}: not a number"))),
    }
}

/// A slot from its stored item.
fn slot_of(k: u32, item: &Item) -> Result<Slot, StoreError> {
    let seq = num(item, SEQ)?;
    Ok(Slot {
        k,
        epoch: u64::try_from(num(item, EPOCH)?).map_err(|_| corrupt("slot epoch"))?,
        seq: u64::try_from(seq).map_err(|_| corrupt("slot seq"))?,
        batch: get_opt_s(item, BATCH)?.map(str::to_owned),
        // Nothing begun yet is nothing to finish.
        finished: seq == 0,
        expires_ms: num(item, EXPIRES)?,
    })
}

/// Tries to acquire slot `k` at `now_ms` for `lease_ms`: it is free, or its lease is over.
/// `None` if another store holds it. The returned slot's batch is not known finished: the
/// caller must finish it before stepping (`finished` is only set for a slot never used).
///
/// With `adopt`, a slot whose lease is not over but whose stored `owner` is `owner` is
/// returned too, as stored: the retry of an acquisition whose answer was lost fails its
/// condition on the lease it took itself. Adopting takes the stored epoch (the lost
/// acquisition raised it, so a store that held the slot before is fenced all the same) and
/// the stored `seq` with its batch not known finished, exactly what a fresh acquisition
/// returns: the batch `seq` is finished before the slot steps, and the step goes to
/// `seq + 1`, so no number is used twice. The caller passes `adopt` only for a slot it
/// has reserved, so no other apply of this store holds it ([`Slots::reserve`]); even if
/// one did, the step's `seq` condition lets only one of two holders begin each number.
pub(super) async fn try_acquire(
    store: &DynamoStore,
    owner: &str,
    k: u32,
    now_ms: i64,
    lease_ms: i64,
    adopt: bool,
) -> Result<Option<Slot>, StoreError> {
    let sent = send_retrying(&store.retry, || {
        store
            .update_item_at(slot_pk(k), SLOT_SK)
            .update_expression("SET #o = :me, #x = :exp ADD #e :one, #s :zero")
            .condition_expression("attribute_not_exists(#o) OR #x < :now")
            .expression_attribute_names("#o", OWNER)
            .expression_attribute_names("#x", EXPIRES)
            .expression_attribute_names("#e", EPOCH)
            .expression_attribute_names("#s", SEQ)
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":exp", n(now_ms.saturating_add(lease_ms)))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":zero", n(0))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
    })
    .await;
    match sent {
        Ok(out) => {
            let item = out.attributes.unwrap_or_default();
            slot_of(k, &item).map(Some)
        }
        Err(e) => match e.as_service_error() {
            Some(UpdateItemError::ConditionalCheckFailedException(c)) => match c.item() {
                Some(old) if adopt && get_opt_s(old, OWNER)? == Some(owner) => {
                    metrics::counter!("tally_writer_slot_adoptions_total").increment(1);
                    slot_of(k, old).map(Some)
                }
                _ => Ok(None),
            },
            _ => Err(sdk_error("UpdateItem", e)),
        },
    }
}

/// What a conditional update of a held slot found.
enum Held {
    /// It landed (now, or on an earlier attempt whose answer was lost).
    Landed,
    /// Another store holds the slot now (or its numbering moved on without us).
    Lost,
}

/// Steps `slot` to batch `seq + 1` = `batch`, renewing its lease; conditioned on this
/// store's owner and epoch and on `seq`. `None`: the slot is lost (another store took it).
/// The caller must have finished the slot's batch `seq` first (see the module doc).
pub(super) async fn step(
    store: &DynamoStore,
    owner: &str,
    slot: &Slot,
    batch: &str,
    now_ms: i64,
    lease_ms: i64,
) -> Result<Option<Slot>, StoreError> {
    let next = slot.seq + 1;
    let expires = now_ms.saturating_add(lease_ms);
    let held = update_held(
        store,
        owner,
        slot,
        "SET #s = :next, #b = :batch, #x = :exp",
        "#o = :me AND #e = :epoch AND #s = :seq",
        vec![
            (":next", n(next)),
            (":batch", s(batch)),
            (":exp", n(expires)),
            (":seq", n(slot.seq)),
        ],
        |old| {
            // A retry after a lost answer finds its own step.
            num(old, SEQ).ok() == i64::try_from(next).ok()
                && get_opt_s(old, BATCH).ok().flatten() == Some(batch)
        },
    )
    .await?;
    Ok(match held {
        Held::Landed => Some(Slot {
            seq: next,
            batch: Some(batch.to_owned()),
            finished: false,
            expires_ms: expires,
            ..slot.clone()
        }),
        Held::Lost => None,
    })
}

/// Renews the lease of a held slot; `None`: the slot is lost.
pub(super) async fn renew(
    store: &DynamoStore,
    owner: &str,
    slot: &Slot,
    now_ms: i64,
    lease_ms: i64,
) -> Result<Option<Slot>, StoreError> {
    let expires = now_ms.saturating_add(lease_ms);
    let held = update_held(
        store,
        owner,
        slot,
        "SET #x = :exp",
        "#o = :me AND #e = :epoch",
        vec![(":exp", n(expires))],
        |_| false,
    )
    .await?;
    Ok(match held {
        Held::Landed => Some(Slot {
            expires_ms: expires,
            ..slot.clone()
        }),
        Held::Lost => None,
    })
}

/// Gives a held slot back (its lease ends now, its owner is removed), conditioned on this
/// store's owner and the slot's epoch, so a stale holder (the slot was taken since)
/// changes nothing. `seq` and `batch` stay: the next holder finishes that batch if it is
/// not finished, as after any take-over. `false`: the slot was not this store's any more
/// (or an earlier attempt released it and its answer was lost).
pub(super) async fn release(
    store: &DynamoStore,
    owner: &str,
    slot: &Slot,
) -> Result<bool, StoreError> {
    let held = update_held(
        store,
        owner,
        slot,
        "REMOVE #o SET #x = :zero",
        "#o = :me AND #e = :epoch",
        vec![(":zero", n(0))],
        |_| false,
    )
    .await?;
    Ok(matches!(held, Held::Landed))
}

/// The shortest renewal period [`keep_alive`] keeps: a lease under twice this (tests use
/// zero, to let another store take a slot at once) is not kept alive.
const MIN_RENEW_EVERY: Duration = Duration::from_millis(100);

/// Runs `work` while keeping `slot`'s lease alive: each time half of the lease is gone
/// the slot is renewed (one conditional `UpdateItem`), so a slow apply (many cells,
/// throttled or slow writes, a long take-over replay) is not taken over while its store
/// is alive. `slot` ends with the last renewal's expiry. A renewal that finds the slot
/// taken stops renewing (the work goes on: whatever it writes is the taker's to replay
/// under the same number, and this store's next step of the slot fails); one that fails
/// on an error is tried again at the next period.
pub(super) async fn keep_alive<T>(
    store: &DynamoStore,
    owner: &str,
    slot: &mut Slot,
    lease_ms: i64,
    work: impl std::future::Future<Output = T>,
) -> T {
    let half = u64::try_from(lease_ms / 2).unwrap_or(0);
    if Duration::from_millis(half) < MIN_RENEW_EVERY {
        return work.await;
    }
    let mut current = slot.clone();
    let out = {
        let renewing = async {
            loop {
                let now_ms = chrono::Utc::now().timestamp_millis();
                let due = current.expires_ms.saturating_sub(lease_ms / 2);
                let wait = u64::try_from(due.saturating_sub(now_ms)).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(wait).max(MIN_RENEW_EVERY)).await;
                let now_ms = chrono::Utc::now().timestamp_millis();
                match renew(store, owner, &current, now_ms, lease_ms).await {
                    Ok(Some(renewed)) => {
                        metrics::counter!("tally_writer_slot_renewals_total").increment(1);
                        current = renewed;
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(slot = current.k, error = %e, "cannot renew a writer slot's lease")
                    }
                }
            }
        };
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => out,
            () = renewing => work.await,
        }
    };
    *slot = current;
    out
}

/// One conditional update of a slot this store holds; `landed_before` tells, from the item
/// a failed condition returns, whether an earlier attempt already made the change.
async fn update_held(
    store: &DynamoStore,
    owner: &str,
    slot: &Slot,
    update: &str,
    condition: &str,
    values: Vec<(&str, AttributeValue)>,
    landed_before: impl Fn(&Item) -> bool,
) -> Result<Held, StoreError> {
    let sent = send_retrying(&store.retry, || {
        let mut req = store
            .update_item_at(slot_pk(slot.k), SLOT_SK)
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":epoch", n(slot.epoch))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (name, attr) in [
            ("#o", OWNER),
            ("#e", EPOCH),
            ("#s", SEQ),
            ("#b", BATCH),
            ("#x", EXPIRES),
        ] {
            if update.contains(name) || condition.contains(name) {
                req = req.expression_attribute_names(name, attr);
            }
        }
        for (name, value) in &values {
            req = req.expression_attribute_values(*name, value.clone());
        }
        req.send()
    })
    .await;
    match sent {
        Ok(_) => Ok(Held::Landed),
        Err(e) => match e.as_service_error() {
            Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                let mine = c.item().is_some_and(|old| {
                    get_opt_s(old, OWNER).ok().flatten() == Some(owner)
                        && num(old, EPOCH).ok() == i64::try_from(slot.epoch).ok()
                        && landed_before(old)
                });
                Ok(if mine { Held::Landed } else { Held::Lost })
            }
            _ => Err(sdk_error("UpdateItem", e)),
        },
    }
}

impl DynamoStore {
    /// Gives back the writer slots this store holds and is not using, so another process
    /// need not wait out their leases: for a store that stops writing (an aggregator's
    /// graceful shutdown). Each is released only if this store still holds it (owner and
    /// epoch), so a stale release changes nothing. Slots in use by an apply are left to it.
    /// The store stays usable: its next apply acquires a slot again. Returns how many were
    /// released; `Ok(0)` in the chunked format.
    pub async fn release_writer_slots(&self) -> Result<usize, StoreError> {
        let Some(slots) = &self.slots else {
            return Ok(0);
        };
        let mut released = 0;
        let mut first_error = None;
        for slot in slots.take_all_idle() {
            match release(self, &slots.owner, &slot).await {
                Ok(landed) => {
                    slots.forget(slot.k);
                    released += usize::from(landed);
                }
                // Kept: a later call (or its lease running out) ends it.
                Err(e) => {
                    slots.give_back(slot);
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(released), Err)
    }

    /// This store's owner id on the slots it holds (`None` in the chunked format), for
    /// tests that read a slot's owner.
    #[doc(hidden)]
    pub fn writer_slot_owner(&self) -> Option<&str> {
        self.slots.as_ref().map(|slots| slots.owner.as_str())
    }
}

/// The slot protocol's steps one by one, with explicit owners and times, for tests of it
/// on the emulator (the apply protocol uses the functions above).
#[doc(hidden)]
impl DynamoStore {
    pub async fn slot_acquire(
        &self,
        owner: &str,
        k: u32,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<Slot>, StoreError> {
        try_acquire(self, owner, k, now_ms, lease_ms, false).await
    }

    pub async fn slot_step(
        &self,
        owner: &str,
        slot: &Slot,
        batch: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<Slot>, StoreError> {
        step(self, owner, slot, batch, now_ms, lease_ms).await
    }

    pub async fn slot_renew(
        &self,
        owner: &str,
        slot: &Slot,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<Slot>, StoreError> {
        renew(self, owner, slot, now_ms, lease_ms).await
    }

    /// The stored slot `k` and its owner.
    pub async fn slot_read(&self, k: u32) -> Result<Option<(Slot, Option<String>)>, StoreError> {
        match self.get(slot_pk(k), SLOT_SK).await? {
            Some(item) => {
                let owner = get_opt_s(&item, OWNER)?.map(str::to_owned);
                Ok(Some((slot_of(k, &item)?, owner)))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;

    /// Two applies of one store racing for slot 3: only the first reservation wins, so the
    /// second never sends an acquisition that would adopt the first one's fresh lease; once
    /// the first gives up on it (`forget`), it may be reserved again.
    #[test]
    fn a_slot_is_reserved_by_one_apply_at_a_time() {
        let slots = Slots::new(4);
        assert!(slots.reserve(3));
        assert!(
            !slots.reserve(3),
            "a second apply must not reserve a held slot"
        );
        assert!(slots.reserve(2), "other slots stay free");
        slots.forget(3);
        assert!(slots.reserve(3));
    }
}
