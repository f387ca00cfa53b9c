//! `apply_batch`: ledger records and counter updates in `TransactWriteItems` chunks.
//!
//! See "Applying a batch" in the [module doc](super) for the algorithm and its cost; the
//! steps below are named the same way.

use std::collections::{BTreeSet, HashSet};

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use chrono::{DateTime, Duration, Utc};
use tally_core::counter::CounterKey;
use tally_core::event::Event;
use tally_core::fold::{self, Delta};
use tally_core::period::Month;
use tally_core::ports::{ApplyOutcome, ApplyReport, StoreError};

use super::codec::{Item, RETRYABLE_REASONS, build_error, encode_body, instant_number, item, n, s};
use super::keys::{
    PK, SK, TTL, counter_month, counter_pk, counter_sk, ledger_pk, ledger_shard, ledger_sk,
    marker_sk, unique_pk,
};
use super::{DynamoStore, TxFailure};

/// Most actions in one `TransactWriteItems` (DynamoDB's limit).
pub const MAX_ACTIONS: usize = 100;
/// Most bytes of item data one chunk carries: DynamoDB allows 4 MB per transaction; this
/// leaves room for keys, expressions and JSON framing.
pub const MAX_CHUNK_BYTES: usize = 3 * 1024 * 1024;
/// What a ledger record or a counter update weighs in a chunk beside its body (keys,
/// attribute names, expressions): a generous fixed estimate.
const ACTION_OVERHEAD_BYTES: usize = 1024;
/// How long a ledger record is kept (TTL); the design asks for at least 40 days.
pub const LEDGER_TTL_DAYS: i64 = 45;

/// What one action of a transaction is, so a cancellation reason at its position can be
/// turned into a decision.
#[derive(Debug, Clone)]
enum Role {
    /// The ledger put of the event at this index of the batch.
    Ledger(usize),
    /// An unconditional `ADD` on a counter.
    Add,
    /// A conditional `SET` of a `max` or `latest` counter, by (pk, sk).
    Raise((String, String)),
    /// A `unique_count` marker put, by (pk, sk).
    Marker((String, String)),
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
    let mut bodies: Vec<Option<String>> = vec![None; events.len()];
    for &i in &candidates {
        bodies[i] = Some(encode_body(&events[i])?);
    }
    // 2. Neighbours in (org, meter, project, time) share counters, so packing them into one
    //    chunk collapses their updates into fewer actions.
    candidates.sort_by(|&a, &b| {
        let (x, y) = (&events[a], &events[b]);
        (&x.org_id, &x.meter, &x.project_id, x.timestamp, &x.id).cmp(&(
            &y.org_id,
            &y.meter,
            &y.project_id,
            y.timestamp,
            &y.id,
        ))
    });
    let now = Utc::now();
    // 3. Chunks, one transaction each, in turn (chunks of one batch often share counters;
    //    running them at once would only make them conflict).
    for chunk in plan_chunks(events, &candidates, &bodies) {
        let chunk_outcomes = apply_chunk(store, events, &chunk, &bodies, now).await;
        for (i, outcome) in chunk_outcomes {
            outcomes[i] = outcome;
        }
    }
    Ok(ApplyReport { outcomes })
}

/// Packs events greedily into chunks whose ledger puts plus distinct counter and marker
/// actions stay within [`MAX_ACTIONS`] and whose bodies stay within [`MAX_CHUNK_BYTES`].
fn plan_chunks(events: &[Event], order: &[usize], bodies: &[Option<String>]) -> Vec<Vec<usize>> {
    let mut chunks = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut counters: HashSet<CounterKey<'_>> = HashSet::new();
    let mut markers: HashSet<(CounterKey<'_>, String)> = HashSet::new();
    let (mut actions, mut bytes) = (0usize, 0usize);
    for &i in order {
        let deltas = fold::fold(std::iter::once(&events[i]));
        let body = bodies[i].as_ref().map_or(0, String::len);
        let cost = |counters: &HashSet<CounterKey<'_>>,
                    markers: &HashSet<(CounterKey<'_>, String)>| {
            1 + deltas
                .iter()
                .map(|(key, delta)| {
                    let counter = usize::from(!counters.contains(key));
                    let new_markers = match delta {
                        Delta::Unique(values) => values
                            .iter()
                            .filter(|v| !markers.contains(&(*key, (*v).clone())))
                            .count(),
                        _ => 0,
                    };
                    counter + new_markers
                })
                .sum::<usize>()
        };
        let mut c = cost(&counters, &markers);
        let mut size = body + ACTION_OVERHEAD_BYTES * c;
        if !current.is_empty() && (actions + c > MAX_ACTIONS || bytes + size > MAX_CHUNK_BYTES) {
            chunks.push(std::mem::take(&mut current));
            counters.clear();
            markers.clear();
            actions = 0;
            bytes = 0;
            c = cost(&counters, &markers);
            size = body + ACTION_OVERHEAD_BYTES * c;
        }
        for (key, delta) in &deltas {
            counters.insert(*key);
            if let Delta::Unique(values) = delta {
                markers.extend(values.iter().map(|v| (*key, v.clone())));
            }
        }
        actions += c;
        bytes += size;
        current.push(i);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Applies one chunk until every event in it is settled or the retries run out.
async fn apply_chunk(
    store: &DynamoStore,
    events: &[Event],
    chunk: &[usize],
    bodies: &[Option<String>],
    now: DateTime<Utc>,
) -> Vec<(usize, ApplyOutcome)> {
    let mut live: Vec<usize> = chunk.to_vec();
    let mut out = Vec::with_capacity(chunk.len());
    // `max`/`latest` counters whose stored value already wins, and markers already present:
    // their actions are left out of later attempts.
    let mut raised: HashSet<(String, String)> = HashSet::new();
    let mut marked: HashSet<(String, String)> = HashSet::new();
    let mut failures = 0u32;
    // Every round that learns something drops at least one action, so this bounds the
    // rounds even under heavy concurrency; the factor is headroom.
    let mut rounds_left = 2 * MAX_ACTIONS + store.retry.max_attempts as usize;
    let fail = |out: &mut Vec<(usize, ApplyOutcome)>, live: &[usize], why: String| {
        out.extend(live.iter().map(|&i| (i, ApplyOutcome::Failed(why.clone()))));
    };
    loop {
        if live.is_empty() {
            return out;
        }
        if rounds_left == 0 {
            fail(&mut out, &live, "transaction kept being cancelled".into());
            return out;
        }
        rounds_left -= 1;
        let (actions, roles) =
            match build_actions(&store.table, events, &live, bodies, &raised, &marked, now) {
                Ok(x) => x,
                Err(e) => {
                    fail(&mut out, &live, e.to_string());
                    return out;
                }
            };
        let why = match store.transact(actions).await {
            Ok(()) => {
                out.extend(live.iter().map(|&i| (i, ApplyOutcome::Applied)));
                return out;
            }
            Err(TxFailure::Fatal(why)) => {
                fail(&mut out, &live, why);
                return out;
            }
            Err(TxFailure::Retryable(why)) => why,
            Err(TxFailure::Cancelled(reasons)) if reasons.len() == roles.len() => {
                let mut learned = false;
                let mut retryable = None;
                let mut fatal = None;
                for (role, (code, message)) in roles.iter().zip(&reasons) {
                    match (code.as_str(), role) {
                        ("None" | "", _) => {}
                        ("ConditionalCheckFailed", Role::Ledger(i)) => {
                            // Already in the ledger: counted before.
                            out.push((*i, ApplyOutcome::Duplicate));
                            live.retain(|x| x != i);
                            learned = true;
                        }
                        ("ConditionalCheckFailed", Role::Raise(key)) => {
                            raised.insert(key.clone());
                            learned = true;
                        }
                        ("ConditionalCheckFailed", Role::Marker(key)) => {
                            marked.insert(key.clone());
                            learned = true;
                        }
                        (code, _) if RETRYABLE_REASONS.contains(&code) => {
                            retryable = Some(format!("transaction cancelled: {code}"));
                        }
                        (code, role) => {
                            fatal = Some(format!(
                                "transaction cancelled: {code} on {role:?}: {}",
                                message.as_deref().unwrap_or("no message")
                            ));
                        }
                    }
                }
                if let Some(why) = fatal {
                    fail(&mut out, &live, why);
                    return out;
                }
                if learned {
                    // Recompute the chunk from what is left and go again at once.
                    continue;
                }
                retryable.unwrap_or_else(|| "transaction cancelled without a reason".into())
            }
            Err(TxFailure::Cancelled(reasons)) => format!(
                "transaction cancelled with {} reasons for {} actions",
                reasons.len(),
                roles.len()
            ),
        };
        failures += 1;
        if failures >= store.retry.max_attempts {
            fail(
                &mut out,
                &live,
                format!("gave up after {failures} attempts: {why}"),
            );
            return out;
        }
        tracing::debug!(attempt = failures, reason = %why, "retrying a DynamoDB chunk");
        tokio::time::sleep(store.retry.delay(failures)).await;
    }
}

/// The actions of one attempt: a conditional ledger put per live event, then one action per
/// counter (or marker) their fold touches, minus what earlier attempts learned is settled.
fn build_actions(
    table: &str,
    events: &[Event],
    live: &[usize],
    bodies: &[Option<String>],
    raised: &HashSet<(String, String)>,
    marked: &HashSet<(String, String)>,
    now: DateTime<Utc>,
) -> Result<(Vec<TransactWriteItem>, Vec<Role>), StoreError> {
    let mut actions = Vec::new();
    let mut roles = Vec::new();
    let ttl = (now + Duration::days(LEDGER_TTL_DAYS)).timestamp();
    for &i in live {
        let e = &events[i];
        let body = bodies[i].clone().unwrap_or_default();
        let record = item([
            (PK, s(ledger_pk(&e.org_id, ledger_shard(&e.id)))),
            (SK, s(ledger_sk(&e.id))),
            ("month", s(Month::of(e.timestamp).to_string())),
            ("body", s(body)),
            (TTL, n(ttl)),
        ]);
        actions.push(put_if_absent(table, record)?);
        roles.push(Role::Ledger(i));
    }
    let deltas = fold::fold(live.iter().map(|&i| &events[i]));
    for (key, delta) in &deltas {
        let month = counter_month(key);
        let pk = counter_pk(key.org, month);
        let sk = counter_sk(key);
        match delta {
            Delta::Add(d) => {
                actions.push(update(table, &pk, &sk, "ADD #v :d", None, &[(":d", n(d))])?);
                roles.push(Role::Add);
            }
            Delta::Max(x) => {
                let id = (pk, sk);
                if raised.contains(&id) {
                    continue;
                }
                actions.push(update(
                    table,
                    &id.0,
                    &id.1,
                    "SET #v = :x",
                    Some("attribute_not_exists(#v) OR #v < :x"),
                    &[(":x", n(x))],
                )?);
                roles.push(Role::Raise(id));
            }
            Delta::Latest { at, value } => {
                let id = (pk, sk);
                if raised.contains(&id) {
                    continue;
                }
                actions.push(update(
                    table,
                    &id.0,
                    &id.1,
                    "SET #v = :x, #at = :at",
                    Some("attribute_not_exists(#v) OR #at < :at OR (#at = :at AND #v < :x)"),
                    &[
                        (":x", n(value)),
                        (":at", AttributeValue::N(instant_number(*at))),
                    ],
                )?);
                roles.push(Role::Raise(id));
            }
            Delta::Unique(values) => {
                let fresh =
                    unique_markers(table, key, &sk, values, marked, &mut actions, &mut roles)?;
                if fresh > 0 {
                    actions.push(update(
                        table,
                        &pk,
                        &sk,
                        "ADD #v :d",
                        None,
                        &[(":d", n(fresh))],
                    )?);
                    roles.push(Role::Add);
                }
            }
        }
    }
    Ok((actions, roles))
}

/// Adds a marker put for every value of a `unique_count` delta not known to be marked;
/// returns how many it added (what the counter goes up by if the transaction lands).
fn unique_markers(
    table: &str,
    key: &CounterKey<'_>,
    counter_sk: &str,
    values: &BTreeSet<String>,
    marked: &HashSet<(String, String)>,
    actions: &mut Vec<TransactWriteItem>,
    roles: &mut Vec<Role>,
) -> Result<usize, StoreError> {
    let pk = unique_pk(key.org, counter_month(key));
    let mut fresh = 0;
    for value in values {
        let id = (pk.clone(), marker_sk(counter_sk, value));
        if marked.contains(&id) {
            continue;
        }
        actions.push(put_if_absent(
            table,
            item([(PK, s(id.0.clone())), (SK, s(id.1.clone()))]),
        )?);
        roles.push(Role::Marker(id));
        fresh += 1;
    }
    Ok(fresh)
}

/// A put that only succeeds if no item has its key.
pub(super) fn put_if_absent(table: &str, record: Item) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(record))
        .condition_expression("attribute_not_exists(#pk)")
        .expression_attribute_names("#pk", PK)
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// An update of counter `v` (and `at` when the expression names it).
fn update(
    table: &str,
    pk: &str,
    sk: &str,
    expression: &str,
    condition: Option<&str>,
    values: &[(&str, AttributeValue)],
) -> Result<TransactWriteItem, StoreError> {
    let mut b = Update::builder()
        .table_name(table)
        .key(PK, s(pk))
        .key(SK, s(sk))
        .update_expression(expression)
        .set_condition_expression(condition.map(str::to_owned))
        .expression_attribute_names("#v", "v");
    if expression.contains("#at") {
        b = b.expression_attribute_names("#at", "at");
    }
    for (name, value) in values {
        b = b.expression_attribute_values(*name, value.clone());
    }
    Ok(TransactWriteItem::builder()
        .update(b.build().map_err(build_error)?)
        .build())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Map;
    use tally_core::event::Quantity;
    use tally_core::ids::{EventId, MeterName, OrgId, ProjectId};
    use tally_core::meter::Aggregation;

    fn event(org: &str, project: &str, id: u32, meter: &str, agg: Aggregation, hour: i64) -> Event {
        let mut properties = Map::new();
        properties.insert("user".into(), format!("u{id}").into());
        Event {
            org_id: OrgId::parse(org).unwrap(),
            id: EventId::parse(&format!("e{id}")).unwrap(),
            project_id: ProjectId::parse(project).unwrap(),
            meter: MeterName::parse(meter).unwrap(),
            aggregation: agg,
            quantity: Quantity::ONE,
            timestamp: DateTime::from_timestamp(1_795_687_200 + hour * 3600, 0).unwrap(),
            properties,
        }
    }

    fn chunk_sizes(events: &[Event]) -> Vec<usize> {
        let order: Vec<usize> = (0..events.len()).collect();
        let bodies: Vec<Option<String>> = events
            .iter()
            .map(|e| Some(encode_body(e).unwrap()))
            .collect();
        let chunks = plan_chunks(events, &order, &bodies);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), events.len());
        chunks.iter().map(Vec::len).collect()
    }

    #[test]
    fn events_sharing_counters_pack_densely() {
        // One cell: 6 counters + one ledger put each: 94 events fit in 100 actions.
        let same: Vec<Event> = (0..200)
            .map(|i| event("org_a", "prj_a", i, "m", Aggregation::Sum, 0))
            .collect();
        assert_eq!(chunk_sizes(&same), vec![94, 94, 12]);
        // A new hour each: 1 ledger + 2 hour counters (+ the shared day/month ones once).
        let hours: Vec<Event> = (0..30)
            .map(|i| event("org_a", "prj_a", i, "m", Aggregation::Sum, i64::from(i)))
            .collect();
        let sizes = chunk_sizes(&hours);
        assert!(sizes[0] >= 20, "{sizes:?}");
    }

    #[test]
    fn every_chunk_fits_one_transaction() {
        let agg = |i: u32| match i % 3 {
            0 => Aggregation::Sum,
            1 => Aggregation::Max,
            _ => Aggregation::UniqueCount {
                property: "user".into(),
            },
        };
        let events: Vec<Event> = (0..300)
            .map(|i| {
                event(
                    &format!("org_{}", i % 4),
                    &format!("prj_{}", i % 3),
                    i,
                    &format!("m{}", i % 3),
                    agg(i),
                    i64::from(i % 7),
                )
            })
            .collect();
        let order: Vec<usize> = (0..events.len()).collect();
        let bodies: Vec<Option<String>> = events
            .iter()
            .map(|e| Some(encode_body(e).unwrap()))
            .collect();
        let none = HashSet::new();
        for chunk in plan_chunks(&events, &order, &bodies) {
            let (actions, roles) =
                build_actions("t", &events, &chunk, &bodies, &none, &none, Utc::now()).unwrap();
            assert!(actions.len() <= MAX_ACTIONS, "{}", actions.len());
            assert_eq!(actions.len(), roles.len());
        }
    }
}
