//! The counter guard: how the DynamoDB store refuses events that would take a month total
//! past [`COUNTER_LIMIT`] (`counter_overflow`, see [`tally_core::headroom`]).
//!
//! SQLite checks the stored total and writes the counters in one transaction. DynamoDB
//! cannot: a month total is derived from up to 31 × projects day cells when it is read, so
//! checking it on every batch would cost a strongly consistent query per (org, meter,
//! month) per batch (a few read units each, as much as the writes it guards), and two
//! aggregators could still both pass the check and then both write. So each (org, month)
//! has a **guard** item, `ORG#<org>#GUARD#<YYYY-MM>` / `*`, with one number per meter that
//! adds up, `r#<meter>`: the room *reserved* so far for that meter's total. An aggregator
//! reserves room with one conditional `UpdateItem` — `ADD` to every meter it needs, each
//! held to `r#<meter> <= COUNTER_LIMIT − want` — before it writes the intent of the events
//! it owns, and only counts events it holds room for. Reserved room is never given back,
//! so each number is always at or above everything counted for its meter: a crash, a
//! failed batch or a duplicate only wastes room, and a month total cannot pass the limit
//! whatever runs concurrently.
//!
//! Writing the guard for every batch would add a write per org per batch. So a store
//! reserves more than it needs — a 1/10,000 share of the room left, 10^15 on a fresh
//! month — and keeps the rest as an *allowance* in memory, spent by later batches of that
//! (org, meter, month) with no write. The same write also reserves a share for the batch's
//! other adding meters (up to [`MAX_METERS_PER_RESERVATION`] in all) the process holds no
//! allowance for, so an org's later batches on another meter need no write either. An
//! honest tenant costs about one guard write per (org, month) per aggregator process;
//! allowances lost with a process only bring the refusal earlier, and since each
//! reservation takes a share of what is left, 7,000 processes that each waste a whole one
//! still leave half the limit. (Releases before this layout kept one item per (org, meter,
//! month), `ORG#<org>#GUARD#<YYYY-MM>` / `<meter>`: twice the guard writes on workload W,
//! see `bench/RESULTS.md`.)
//!
//! Near the limit the reservation fails and returns the guard (`ALL_OLD`): the events are
//! then admitted in batch order as far as the allowance plus the room left allow
//! ([`headroom::admit`]), exactly that much is reserved, and the rest are refused
//! ([`ApplyOutcome::Overflow`](tally_core::ports::ApplyOutcome::Overflow)). Their ledger
//! claims are released before the intent, so a later replay may count them.
//!
//! **One number per meter, not per series.** The limit holds for a meter's total over all
//! its series ([`TotalKey`] names the base meter), so a dimensioned meter has one number,
//! `r#llm_tokens`, for every `llm_tokens{model=...}` series. Builds before that kept one
//! number per series (`r#llm_tokens{model=gpt-4}`); the reservation that creates the
//! meter's number sees them in its `ALL_OLD` and adds what they hold to it, so the room
//! they reserved still counts.
//!
//! **Tables written by the per-meter layout.** Its items are room reserved by earlier
//! processes, and the events they admitted are in the counters, so they still count: the
//! reservation that *creates* a meter's number in the org's item (its `ALL_OLD` lacks it)
//! reads that meter's old item (a strongly consistent `GetItem`, once per (org, meter,
//! month) ever) and, if it holds room, adds it to the new number. A process that met the
//! new number in between saw it without the old room; the window is one round trip, and
//! matters only for a total within a batch of the limit. If the read fails the batch
//! fails and is retried, but the new number stays without the old room (the limit is
//! then looser by it for that month). Old items are never written again and expire with
//! their TTL, 90 days after their month.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use rust_decimal::Decimal;
use tally_core::event::Event;
use tally_core::headroom::{self, COUNTER_LIMIT, TotalKey};
use tally_core::{MeterName, Month, OrgId};
use tokio::sync::Semaphore;

use super::DynamoStore;
use super::codec::{Item, describe_sdk_error, n, send_retrying};
use super::keys::TTL;

/// Attribute of an earlier release's per-meter guard item: the room reserved so far.
const RESERVED: &str = "r";
/// Prefix of a guard item's per-meter attributes: `r#<meter>` is the room reserved so far
/// for that meter.
const RESERVED_PREFIX: &str = "r#";
/// Sort key of the guard item that holds every meter of an (org, month). Meter names start
/// with a lowercase letter, so it never meets an earlier release's per-meter item.
const ORG_GUARD_SK: &str = "*";
/// A reservation beyond what a batch needs takes this share of the room left.
const BLOCK_SHARE: u32 = 10_000;
/// Rounds of reserving against a guard that others keep moving, before the events are
/// failed for a later retry.
const ROUNDS: usize = 4;
/// Guards (orgs) reserved at once per batch.
const CONCURRENCY: usize = 16;
/// Most meters one reservation covers: the org's own that need room, then other adding
/// meters of the batch the process holds no allowance for (so the org's next batches need
/// no write for them). Bounds the update expression and the guard item's size.
const MAX_METERS_PER_RESERVATION: usize = 8;
/// Days a guard outlives its month: long after the month is closed to events.
const TTL_DAYS_AFTER_MONTH: i64 = 90;

/// `ORG#<org>#GUARD#<YYYY-MM>`: the partition of an org's month guard.
fn guard_pk(org: &OrgId, month: Month) -> String {
    format!("ORG#{org}#GUARD#{month}")
}

/// The guard item's attribute for `meter`.
fn meter_attr(meter: &MeterName) -> String {
    format!("{RESERVED_PREFIX}{meter}")
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

    /// Whether the process holds any allowance for `key` (without taking it).
    fn holds(&self, key: &TotalKey) -> bool {
        self.0
            .lock()
            .ok()
            .is_some_and(|m| m.get(key).is_some_and(|h| h.left > Decimal::ZERO))
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

/// One meter's part in an org's reservation.
#[derive(Debug)]
struct MeterNeed {
    key: TotalKey,
    /// The batch's events of this total, in batch order (empty for a meter reserved ahead).
    members: Vec<(usize, Event)>,
    /// What they add up to.
    need: Decimal,
    /// The allowance in hand.
    held: Held,
    /// What the events to count add up to: all of them, until the guard says otherwise.
    target: Decimal,
    /// Events that do not fit.
    refused: Vec<usize>,
}

/// Reserves room for the owned events of a batch, one guard write per org that needs room,
/// and says which events do not fit.
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
    // The batch's adding meters, in a stable order: reserved ahead for an org that writes.
    let mut batch_meters: Vec<MeterName> = by_key.keys().map(|k| k.meter.clone()).collect();
    batch_meters.sort_unstable();
    batch_meters.dedup();
    let mut verdict = Verdict::default();
    let mut by_org: BTreeMap<(OrgId, Month), Vec<MeterNeed>> = BTreeMap::new();
    for (key, (members, need)) in by_key {
        let mut held = store.allowances.take(&key);
        if held.left >= need {
            held.left -= need;
            store.allowances.give(key, held);
        } else {
            by_org
                .entry((key.org.clone(), key.month))
                .or_default()
                .push(MeterNeed {
                    members: members.iter().map(|&i| (i, events[i].clone())).collect(),
                    key,
                    need,
                    held,
                    target: need,
                    refused: Vec::new(),
                });
        }
    }
    if by_org.is_empty() {
        return verdict;
    }
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for ((org, month), mut needs) in by_org {
        needs.sort_by(|a, b| a.key.meter.cmp(&b.key.meter));
        // The batch's other adding meters this process holds nothing for, as room allows.
        for meter in &batch_meters {
            if needs.len() >= MAX_METERS_PER_RESERVATION {
                break;
            }
            let key = TotalKey {
                org: org.clone(),
                meter: meter.clone(),
                month,
            };
            if needs.iter().any(|m| m.key.meter == *meter) || store.allowances.holds(&key) {
                continue;
            }
            let held = store.allowances.take(&key);
            needs.push(MeterNeed {
                key,
                members: Vec::new(),
                need: Decimal::ZERO,
                held,
                target: Decimal::ZERO,
                refused: Vec::new(),
            });
        }
        let (store, permits) = (store.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            settle_org(&store, org, month, needs).await
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

/// Reserves room for one org's month (`needs`, one per meter): for every event when the
/// guard allows, else for those that fit in batch order. The events refused.
async fn settle_org(
    store: &DynamoStore,
    org: OrgId,
    month: Month,
    mut needs: Vec<MeterNeed>,
) -> Result<Vec<usize>, String> {
    let mut reservations = 0;
    loop {
        // What each meter asks of this round's write.
        let mut wants: Vec<(usize, Decimal)> = Vec::new();
        for (at, m) in needs.iter_mut().enumerate() {
            // A meter reserved ahead (no events) asks only on the first round.
            if m.members.is_empty() && reservations > 0 {
                continue;
            }
            // The room the last seen guard left: at least the room there really is.
            let room_seen = headroom::room_under_limit(m.held.seen);
            if m.target - m.held.left > room_seen {
                // Not all of them can fit: count those that do, in batch order.
                let room = m.held.left + room_seen;
                let a = headroom::admit(m.members.iter().map(|(i, e)| (*i, e)), |_| room);
                m.refused = a.refused;
                m.target = a.growth.get(&m.key).copied().unwrap_or_default();
            }
            if m.held.left >= m.target && !(m.members.is_empty() && m.held.left.is_zero()) {
                continue;
            }
            let short = m.target - m.held.left;
            // The first reservation also takes a share of the room for later batches, in
            // whole units so the allowance keeps at most the events' nine decimal places,
            // exactly.
            let want = if reservations == 0 && m.refused.is_empty() {
                (short + (room_seen / Decimal::from(BLOCK_SHARE)).trunc()).min(room_seen)
            } else {
                short
            };
            if want > Decimal::ZERO {
                wants.push((at, want));
            }
        }
        if wants.is_empty() {
            break;
        }
        if reservations == ROUNDS {
            give_back(store, needs);
            return Err("the counter guard kept changing under other aggregators; retry".into());
        }
        reservations += 1;
        let asked: Vec<(&MeterName, Decimal)> = wants
            .iter()
            .map(|&(at, w)| (&needs[at].key.meter, w))
            .collect();
        match reserve(store, &org, month, &asked).await {
            Ok(Reservation::Made { granted }) => {
                metrics::counter!("tally_dynamodb_guard_reservations_total").increment(1);
                for ((at, _), (room, total)) in wants.into_iter().zip(granted) {
                    let m = &mut needs[at];
                    m.held.left += room;
                    m.held.seen = m.held.seen.max(total);
                }
            }
            Ok(Reservation::Full { totals }) => {
                // Someone reserved meanwhile: judge every event again against the guard.
                for ((at, _), total) in wants.into_iter().zip(totals) {
                    let m = &mut needs[at];
                    m.held.seen = m.held.seen.max(total);
                    m.target = m.need;
                    m.refused.clear();
                }
            }
            Err(why) => {
                give_back(store, needs);
                return Err(why);
            }
        }
    }
    let mut refused = Vec::new();
    for mut m in needs {
        m.held.left -= m.target;
        refused.append(&mut m.refused);
        store.allowances.give(m.key, m.held);
    }
    if !refused.is_empty() {
        metrics::counter!("tally_counter_overflow_refusals_total").increment(refused.len() as u64);
    }
    Ok(refused)
}

/// Puts every allowance in hand back (a failed reservation spent none of it).
fn give_back(store: &DynamoStore, needs: Vec<MeterNeed>) {
    for m in needs {
        store.allowances.give(m.key, m.held);
    }
}

/// What one reservation did.
enum Reservation {
    /// Reserved: per meter (in the order asked), the room granted (what was asked, less
    /// any an earlier release's item turned out to hold already) and the number's value.
    Made { granted: Vec<(Decimal, Decimal)> },
    /// Not enough room for some meter: each meter's number holds this (in the order asked).
    Full { totals: Vec<Decimal> },
}

/// One conditional `UpdateItem` adding each `(meter, want)` to the org's month guard,
/// retried while DynamoDB says retrying may help; then, for a meter's number it created,
/// the room an earlier release's per-meter item reserved is carried over.
async fn reserve(
    store: &DynamoStore,
    org: &OrgId,
    month: Month,
    wants: &[(&MeterName, Decimal)],
) -> Result<Reservation, String> {
    let ttl = (month.end() + chrono::Duration::days(TTL_DAYS_AFTER_MONTH)).timestamp();
    let pk = guard_pk(org, month);
    let mut adds = Vec::with_capacity(wants.len());
    let mut conditions = Vec::with_capacity(wants.len());
    for i in 0..wants.len() {
        adds.push(format!("#r{i} :w{i}"));
        conditions.push(format!(
            "(attribute_not_exists(#r{i}) OR #r{i} <= :most{i})"
        ));
    }
    let update = format!(
        "SET #ttl = if_not_exists(#ttl, :ttl) ADD {}",
        adds.join(", ")
    );
    let condition = conditions.join(" AND ");
    let sent = send_retrying(&store.retry, || {
        let mut req = store
            .update_item_at(pk.clone(), ORG_GUARD_SK)
            .update_expression(update.clone())
            .condition_expression(condition.clone())
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":ttl", n(ttl))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (i, (meter, want)) in wants.iter().enumerate() {
            req = req
                .expression_attribute_names(format!("#r{i}"), meter_attr(meter))
                .expression_attribute_values(format!(":w{i}"), n(*want))
                .expression_attribute_values(format!(":most{i}"), n(COUNTER_LIMIT - *want));
        }
        req.send()
    })
    .await;
    match sent {
        Ok(out) => {
            let before = out.attributes();
            let mut granted = Vec::with_capacity(wants.len());
            for (meter, want) in wants {
                granted.push(match reserved(before, &meter_attr(meter)) {
                    Some(old) => (*want, old + *want),
                    // This write created the meter's number: carry an earlier release's
                    // reservations for it over. Only the room they left was really there.
                    None => {
                        let series = series_reserved(before, meter);
                        let old = carry_over(store, &pk, meter, series).await?;
                        let room = (*want).min(COUNTER_LIMIT - old).max(Decimal::ZERO);
                        (room, old + *want)
                    }
                });
            }
            Ok(Reservation::Made { granted })
        }
        Err(e) => match e.as_service_error() {
            Some(UpdateItemError::ConditionalCheckFailedException(c)) => Ok(Reservation::Full {
                totals: wants
                    .iter()
                    .map(|(meter, _)| reserved(c.item(), &meter_attr(meter)).unwrap_or_default())
                    .collect(),
            }),
            _ => Err(describe_sdk_error("UpdateItem", &e)),
        },
    }
}

/// Adds the room an earlier release's per-meter guard item (`<pk>` / `<meter>`) reserved,
/// and `series` (what the org's guard already holds for the meter's series), to the meter's
/// number in the org's guard, and says how much that was in all (zero when neither holds
/// any).
async fn carry_over(
    store: &DynamoStore,
    pk: &str,
    meter: &MeterName,
    series: Decimal,
) -> Result<Decimal, String> {
    let got = send_retrying(&store.retry, || {
        store
            .get_item_at(pk, meter.as_str())
            .consistent_read(true)
            .send()
    })
    .await
    .map_err(|e| describe_sdk_error("GetItem", &e))?;
    let old = reserved(got.item(), RESERVED)
        .unwrap_or_default()
        .saturating_add(series);
    if old.is_zero() {
        return Ok(old);
    }
    send_retrying(&store.retry, || {
        store
            .update_item_at(pk, ORG_GUARD_SK)
            .update_expression("ADD #r :old")
            .expression_attribute_names("#r", meter_attr(meter))
            .expression_attribute_values(":old", n(old))
            .send()
    })
    .await
    .map_err(|e| describe_sdk_error("UpdateItem", &e))?;
    metrics::counter!("tally_dynamodb_guard_carried_over_total").increment(1);
    Ok(old)
}

/// The room an earlier build reserved per series of `meter` (`r#<meter>{dim=value}`) in the
/// org's guard item (its old attributes), before the limit held for the meter's total.
fn series_reserved(item: Option<&Item>, meter: &MeterName) -> Decimal {
    let prefix = format!("{}{{", meter_attr(meter));
    item.into_iter()
        .flatten()
        .filter(|(attr, _)| attr.starts_with(&prefix))
        .filter_map(|(attr, _)| reserved(item, attr))
        .fold(Decimal::ZERO, Decimal::saturating_add)
}

/// The reserved room an item (or its old attributes) holds in `attr`.
fn reserved(item: Option<&Item>, attr: &str) -> Option<Decimal> {
    match item?.get(attr)? {
        AttributeValue::N(v) => v.parse().ok(),
        _ => None,
    }
}
