//! The counter guard: how the DynamoDB store refuses events that would take a month total
//! past [`COUNTER_LIMIT`] (`counter_overflow`, see [`tally_core::headroom`]).
//!
//! SQLite checks the stored total and writes the counters in one transaction. DynamoDB
//! cannot: a month total is derived from up to 31 × projects day cells when it is read, so
//! checking it on every batch would cost a strongly consistent query per (org, meter,
//! month) per batch (a few read units each, as much as the writes it guards), and two
//! aggregators could still both pass the check and then both write. So each (org, meter,
//! month) that adds up has a **guard** item, `ORG#<org>#GUARD#<YYYY-MM>` / `<meter>`, whose
//! number `r` is the room *reserved* so far: an aggregator reserves room with one
//! conditional `ADD` (`r <= COUNTER_LIMIT − want`) before it writes the intent of the
//! events it owns, and only counts events it holds room for. Reserved room is never given
//! back, so the guard is always at or above everything counted: a crash, a failed batch
//! or a duplicate only wastes room, and the month total cannot pass the limit whatever
//! runs concurrently.
//!
//! Writing the guard for every batch would add a write per (org, meter) per batch. So a
//! store reserves more than it needs — a 1/10,000 share of the room left, 10^15 on a fresh
//! month — and keeps the rest as an *allowance* in memory, spent by later batches of that
//! (org, meter, month) with no write. An honest tenant costs one guard write per (org,
//! meter, month) per aggregator process; allowances lost with a process only bring the
//! refusal earlier, and since each reservation takes a share of what is left, 7,000
//! processes that each waste a whole one still leave half the limit.
//!
//! Near the limit the reservation fails and returns the guard (`ALL_OLD`): the events are
//! then admitted in batch order as far as the allowance plus the room left allow
//! ([`headroom::admit`]), exactly that much is reserved, and the rest are refused
//! ([`ApplyOutcome::Overflow`](tally_core::ports::ApplyOutcome::Overflow)). Their ledger
//! claims are released before the intent, so a later replay may count them.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use rust_decimal::Decimal;
use tally_core::event::Event;
use tally_core::headroom::{self, COUNTER_LIMIT, TotalKey};
use tokio::sync::Semaphore;

use super::DynamoStore;
use super::codec::{Item, describe_sdk_error, n, s, send_retrying};
use super::keys::{PK, SK, TTL};

/// Attribute of a guard item: the room reserved so far.
const RESERVED: &str = "r";
/// A reservation beyond what a batch needs takes this share of the room left.
const BLOCK_SHARE: u32 = 10_000;
/// Rounds of reserving against a guard that others keep moving, before the events are
/// failed for a later retry.
const ROUNDS: usize = 4;
/// Guards reserved at once per batch.
const CONCURRENCY: usize = 16;
/// Days a guard outlives its month: long after the month is closed to events.
const TTL_DAYS_AFTER_MONTH: i64 = 90;

/// `ORG#<org>#GUARD#<YYYY-MM>`: the guards of an org's month (sort key: the meter).
fn guard_pk(key: &TotalKey) -> String {
    format!("ORG#{}#GUARD#{}", key.org, key.month)
}

/// Room this process has reserved and not spent, per (org, meter, month), and the guard's
/// value when it last saw it (a lower bound: guards only grow).
#[derive(Debug, Default)]
pub(super) struct Allowances(std::sync::Mutex<HashMap<TotalKey, Held>>);

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    /// Reserved and not yet spent.
    left: Decimal,
    /// The guard's value when last seen.
    seen: Decimal,
}

impl Allowances {
    /// Entries kept before the map is forgotten wholesale (only wasting room).
    const CAPACITY: usize = 100_000;

    /// Takes a key's allowance out, so two batches of one process never spend it twice.
    fn take(&self, key: &TotalKey) -> Held {
        self.0
            .lock()
            .ok()
            .and_then(|mut m| m.remove(key))
            .unwrap_or_default()
    }

    /// Puts an allowance back, adding to what another batch put back meanwhile.
    fn give(&self, key: TotalKey, held: Held) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= Self::CAPACITY {
                m.clear();
            }
            let slot = m.entry(key).or_default();
            slot.left += held.left;
            slot.seen = slot.seen.max(held.seen);
        }
    }
}

/// What the guard decided for a batch's owned events.
#[derive(Debug, Default)]
pub(super) struct Verdict {
    /// Events refused as overflows (indexes into the batch).
    pub refused: Vec<usize>,
    /// Why some guard could not be reserved (throttled past the retries, or kept moving);
    /// the batch must not count any event then.
    pub failed: Option<String>,
}

/// Reserves room for the owned events of a batch, one guard per (org, meter, month) that
/// adds up, and says which events do not fit.
pub(super) async fn admit(store: &DynamoStore, events: &[Event], owned: &[usize]) -> Verdict {
    // In batch order (claims settle in any order): who fits is decided first come, first
    // served, as on the other stores.
    let mut owned = owned.to_vec();
    owned.sort_unstable();
    // Each total's events, and what they add up to.
    let mut by_key: HashMap<TotalKey, (Vec<usize>, Decimal)> = HashMap::new();
    for &i in &owned {
        if let Some((key, amount)) = TotalKey::of(&events[i]) {
            let (members, need) = by_key.entry(key).or_default();
            members.push(i);
            // At most 1,000 events of under 10^18: far inside `Decimal`'s range.
            *need = need.saturating_add(amount);
        }
    }
    let mut verdict = Verdict::default();
    let mut need_room = Vec::new();
    for (key, (members, need)) in by_key {
        let mut held = store.allowances.take(&key);
        if held.left >= need {
            held.left -= need;
            store.allowances.give(key, held);
        } else {
            need_room.push((key, members, need, held));
        }
    }
    if need_room.is_empty() {
        return verdict;
    }
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (key, members, need, held) in need_room {
        let amounts: Vec<(usize, Event)> =
            members.iter().map(|&i| (i, events[i].clone())).collect();
        let (store, permits) = (store.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            settle_key(&store, key, &amounts, need, held).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(refused)) => verdict.refused.extend(refused),
            Ok(Err(why)) => verdict.failed = Some(why),
            Err(e) => verdict.failed = Some(format!("a counter guard task failed: {e}")),
        }
    }
    verdict.refused.sort_unstable();
    verdict
}

/// Reserves room for one key's events (`need` in all, `held` already in hand): every event
/// when the guard allows, else those that fit in batch order. The events refused.
async fn settle_key(
    store: &DynamoStore,
    key: TotalKey,
    members: &[(usize, Event)],
    need: Decimal,
    mut held: Held,
) -> Result<Vec<usize>, String> {
    // What the events to count add up to: all of them, until the guard says otherwise.
    let mut target = need;
    let mut refused = Vec::new();
    let mut reservations = 0;
    while held.left < target {
        // The room the last seen guard left: at least the room there really is.
        let room_seen = headroom::room_under_limit(held.seen);
        if target - held.left > room_seen {
            // Not all of them can fit: count those that do, in batch order.
            let room = held.left + room_seen;
            let a = headroom::admit(members.iter().map(|(i, e)| (*i, e)), |_| room);
            refused = a.refused;
            target = a.growth.get(&key).copied().unwrap_or_default();
            continue;
        }
        if reservations == ROUNDS {
            store.allowances.give(key, held);
            return Err("the counter guard kept changing under other aggregators; retry".into());
        }
        let short = target - held.left;
        // The first reservation also takes a share of the room for later batches, in whole
        // units so the allowance keeps at most the events' nine decimal places, exactly.
        let want = if reservations == 0 && refused.is_empty() {
            (short + (room_seen / Decimal::from(BLOCK_SHARE)).trunc()).min(room_seen)
        } else {
            short
        };
        reservations += 1;
        match reserve(store, &key, want).await {
            Ok(Reservation::Made { total }) => {
                metrics::counter!("tally_dynamodb_guard_reservations_total").increment(1);
                held.left += want;
                held.seen = held.seen.max(total);
            }
            Ok(Reservation::Full { total }) => {
                // Someone reserved meanwhile: judge every event again against the guard.
                held.seen = held.seen.max(total);
                target = need;
                refused.clear();
            }
            Err(why) => {
                store.allowances.give(key, held);
                return Err(why);
            }
        }
    }
    held.left -= target;
    store.allowances.give(key, held);
    if !refused.is_empty() {
        metrics::counter!("tally_counter_overflow_refusals_total").increment(refused.len() as u64);
    }
    Ok(refused)
}

/// What one reservation did.
enum Reservation {
    /// Reserved; the guard now holds `total`.
    Made { total: Decimal },
    /// Not enough room: the guard holds `total`.
    Full { total: Decimal },
}

/// One conditional `ADD` of `want` to the guard of `key`, retried while DynamoDB says
/// retrying may help.
async fn reserve(
    store: &DynamoStore,
    key: &TotalKey,
    want: Decimal,
) -> Result<Reservation, String> {
    let most_before = COUNTER_LIMIT - want;
    let ttl = (key.month.end() + chrono::Duration::days(TTL_DAYS_AFTER_MONTH)).timestamp();
    let sent = send_retrying(&store.retry, || {
        store
            .client
            .update_item()
            .table_name(&*store.table)
            .key(PK, s(guard_pk(key)))
            .key(SK, s(key.meter.as_str()))
            .update_expression("SET #ttl = if_not_exists(#ttl, :ttl) ADD #r :w")
            .condition_expression("attribute_not_exists(#r) OR #r <= :most")
            .expression_attribute_names("#r", RESERVED)
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":w", n(want))
            .expression_attribute_values(":most", n(most_before))
            .expression_attribute_values(":ttl", n(ttl))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
    })
    .await;
    match sent {
        Ok(out) => Ok(Reservation::Made {
            total: reserved(out.attributes()).unwrap_or(want),
        }),
        Err(e) => match e.as_service_error() {
            Some(UpdateItemError::ConditionalCheckFailedException(c)) => Ok(Reservation::Full {
                total: reserved(c.item()).unwrap_or(COUNTER_LIMIT),
            }),
            _ => Err(describe_sdk_error("UpdateItem", &e)),
        },
    }
}

/// The reserved room an item (or its updated attributes) holds.
fn reserved(item: Option<&Item>) -> Option<Decimal> {
    match item?.get(RESERVED)? {
        AttributeValue::N(v) => v.parse().ok(),
        _ => None,
    }
}
