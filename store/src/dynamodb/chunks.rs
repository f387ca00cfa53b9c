//! The chunks of an intent: how its ops that must apply once are packed ([`Packing`],
//! [`plan_chunks`]) and how one chunk is applied as one `TransactWriteItems` guarded by its
//! marker ([`apply_chunk`]). Apart from `apply.rs` because the packing is a stored format
//! (an intent is replayed with the packing it was written with) with its own rules.

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};

use super::cells::{self, CellKind};
use super::codec::{Item, RETRYABLE_REASONS, build_error, item, n, s};
use super::keys::{PK, SK, TTL, batch_pk};
use super::ops::{Op, Ops};
use super::tx::update_action;
use super::{DynamoStore, TxFailure};
use tally_core::ports::StoreError;

/// How an intent's ops are packed into chunks. The packing is part of the intent (the
/// attribute its ops are stored under), because chunk markers name chunks by number: a
/// batch finished by another process must be cut exactly as it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Packing {
    /// Every org's ops first-fit together (intents stored as `opsz` or `ops`, written
    /// before hot orgs were kept apart).
    Mixed,
    /// As `Mixed`, but the ops of each *hot* org of the intent (one with at least
    /// [`HOT_ORG_OPS`] ops that must apply once) go in chunks of their own.
    ///
    /// Why: a hot org's cells are written by every concurrent batch, so its transactions
    /// are the ones DynamoDB cancels with `TransactionConflict`. Mixed with 90 cells of the
    /// Zipf tail, one conflict cancelled (and billed, and delayed) them all; kept apart, a
    /// conflict costs only the hot org's own actions, and the tail's chunks, whose cells few
    /// batches share, go through at the first attempt. The price is one chunk marker per hot
    /// org per batch (2 WCU): on workload W, 275 transactions instead of 100 for 20,000
    /// events (about 9 hot orgs per 1,000-event batch), +0.0175 WCU per event, 2.061 →
    /// 2.078 (`bench/RESULTS.md`). The threshold of [`HOT_ORG_OPS`] keeps the Zipf tail,
    /// whose orgs have one or two cells per batch, packed together as before.
    HotApart,
    /// As `HotApart`, but `unique_count` markers are not in the chunks: each is a plain
    /// conditional put that records the batch owning it, made before the chunks
    /// ([`claim_markers`](super::markers::claim_markers), whose module doc says why that is
    /// exactly once), and an [`Op::Unique`] is one `ADD` of the markers its batch owns. A
    /// marker costs 1 write unit instead of 2, and a value counted before no longer cancels
    /// its chunk. Stored under its own attribute, so a release without it fails such batches
    /// for a later retry instead of applying their markers inside the chunks.
    MarkersApart,
    /// Not chunked: markers as in `MarkersApart`, then each `ADD` one plain conditional
    /// `UpdateItem` under the high-water mark of writer slot `slot` for batch number `seq`
    /// ([`slotted`](super::slotted)). Stored as `opss` with `slot` and `seq`.
    Slotted { slot: u32, seq: u64 },
}

/// Most actions in one `TransactWriteItems` (DynamoDB's limit): a chunk and its marker.
pub(super) const MAX_ACTIONS: usize = 100;
/// Ops (that must apply once) an org needs in one intent to count as hot for
/// [`Packing::HotApart`]: eight day cells or unique counters is an org with several
/// projects or meters active in one batch, which on a Zipf workload is the top few orgs.
pub(super) const HOT_ORG_OPS: usize = 8;

/// The org a counter partition key (`ORG#<org>#CTR#…`, `ORG#<org>#UNQ#…`) belongs to.
pub(super) fn org_of_pk(pk: &str) -> &str {
    pk.split('#').nth(1).unwrap_or(pk)
}

/// Packs the ops that must apply once (`ADD`s and `unique_count` markers; `max`/`latest`
/// go through [`raise_hours`]) first-fit into chunks of at most [`MAX_ACTIONS`] − 1 actions
/// (one is the chunk's marker) where no item is written twice (DynamoDB refuses that in one
/// transaction), keeping hot orgs apart under [`Packing::HotApart`]. A pure function of
/// the intent and its packing, so every replay packs the same chunks.
pub(super) fn plan_chunks(ops: &Ops, packing: Packing) -> Vec<Vec<(&str, &Op)>> {
    struct Open<'a> {
        ops: Vec<(&'a str, &'a Op)>,
        actions: usize,
        items: HashSet<(&'a str, &'a str)>,
        /// The hot org the chunk is kept for, or `None` for everyone else.
        owner: Option<&'a str>,
    }
    let mut per_org: HashMap<&str, usize> = HashMap::new();
    if packing != Packing::Mixed {
        for (pk, list) in ops {
            *per_org.entry(org_of_pk(pk)).or_default() +=
                list.iter().filter(|op| !op.is_idempotent()).count();
        }
    }
    let mut chunks: Vec<Open<'_>> = Vec::new();
    for (pk, list) in ops {
        let org = org_of_pk(pk);
        let owner = (per_org.get(org).copied().unwrap_or(0) >= HOT_ORG_OPS).then_some(org);
        for op in list.iter().filter(|op| !op.is_idempotent()) {
            let id = (pk.as_str(), op.item_sk());
            let fits = |c: &Open<'_>| {
                c.owner == owner
                    && c.actions + actions(op, packing) < MAX_ACTIONS
                    && !c.items.contains(&id)
            };
            let at = match chunks.iter().position(fits) {
                Some(at) => at,
                None => {
                    chunks.push(Open {
                        ops: Vec::new(),
                        actions: 0,
                        items: HashSet::new(),
                        owner,
                    });
                    chunks.len() - 1
                }
            };
            let chunk = &mut chunks[at];
            chunk.actions += actions(op, packing);
            chunk.items.insert(id);
            chunk.ops.push((pk.as_str(), op));
        }
    }
    chunks.into_iter().map(|c| c.ops).collect()
}

/// Transaction actions `op` takes in a chunk packed by `packing`.
fn actions(op: &Op, packing: Packing) -> usize {
    match (op, packing) {
        (Op::Unique(..), Packing::MarkersApart | Packing::Slotted { .. }) => 1,
        _ => op.actions(),
    }
}

/// The `unique_count` markers a batch owns ([`Packing::MarkersApart`]), as (marker
/// partition, marker sort key); `None` for packings whose markers ride in the chunks.
pub(super) type Owned<'a> = Option<&'a HashSet<(String, String)>>;

/// What one action of a chunk's transaction is, so a cancellation reason at its position
/// can be turned into a decision.
#[derive(Debug, Clone, Copy)]
pub(super) enum Role {
    /// The chunk's marker: failing its condition means the chunk was applied before.
    Marker,
    /// An unconditional `ADD`.
    Add,
    /// A `unique_count` marker (part = the marker's index) of op `i`: failing its
    /// condition means that value was counted before.
    Conditional(usize, usize),
}

/// Applies one chunk in one transaction, dropping ops whose condition says they have
/// nothing to do, until it lands, is found applied, or the retries run out.
pub(super) async fn apply_chunk(
    store: &DynamoStore,
    batch: &str,
    n_chunk: usize,
    chunk: &[(&str, &Op)],
    owned: Owned<'_>,
    ttl: i64,
) -> Result<(), String> {
    let mut skip: HashSet<(usize, usize)> = HashSet::new();
    let mut failures = 0u32;
    let mut rounds_left = 2 * MAX_ACTIONS + store.retry.max_attempts as usize;
    loop {
        if rounds_left == 0 {
            return Err("counter transaction kept being cancelled".into());
        }
        rounds_left -= 1;
        let (actions, roles) =
            build_actions(&store.table, batch, n_chunk, chunk, &skip, owned, ttl)
                .map_err(|e| e.to_string())?;
        // Only the chunk's marker: every op owns nothing to count (markers apart), so
        // there is nothing to apply, on this call or any replay (ownership never moves).
        if roles.len() == 1 && owned.is_some() {
            return Ok(());
        }
        let why = match store.transact(actions).await {
            Ok(()) => return Ok(()),
            Err(TxFailure::Fatal(why)) => return Err(why),
            Err(TxFailure::Retryable(why)) => why,
            Err(TxFailure::Cancelled(reasons)) if reasons.len() == roles.len() => {
                let mut learned = false;
                let mut retryable = None;
                for (role, (code, message)) in roles.iter().zip(&reasons) {
                    match (code.as_str(), role) {
                        ("None" | "", _) => {}
                        ("ConditionalCheckFailed", Role::Marker) => return Ok(()),
                        ("ConditionalCheckFailed", Role::Conditional(i, part)) => {
                            skip.insert((*i, *part));
                            learned = true;
                        }
                        (code, _) if RETRYABLE_REASONS.contains(&code) => {
                            retryable = Some(format!("transaction cancelled: {code}"));
                        }
                        (code, role) => {
                            return Err(format!(
                                "transaction cancelled: {code} on {role:?}: {}",
                                message.as_deref().unwrap_or("no message")
                            ));
                        }
                    }
                }
                if learned {
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
            return Err(format!("gave up after {failures} attempts: {why}"));
        }
        tracing::debug!(attempt = failures, reason = %why, "retrying a counter chunk");
        crate::aws::sleep_before_retry(&store.retry, failures).await;
    }
}

/// The actions of one attempt of a chunk: its marker, then its ops not skipped.
pub(super) fn build_actions(
    table: &str,
    batch: &str,
    n_chunk: usize,
    chunk: &[(&str, &Op)],
    skip: &HashSet<(usize, usize)>,
    owned: Owned<'_>,
    ttl: i64,
) -> Result<(Vec<TransactWriteItem>, Vec<Role>), StoreError> {
    let mut actions = vec![put_if_absent(
        table,
        item([
            (PK, s(batch_pk(batch))),
            (SK, s(format!("CHUNK#{n_chunk}"))),
            (TTL, n(ttl)),
        ]),
    )?];
    let mut roles = vec![Role::Marker];
    for (i, (pk, op)) in chunk.iter().enumerate() {
        match op {
            Op::Add(sk, hours) => {
                let mut names = vec![("#k", cells::KIND.to_owned())];
                let mut values = vec![(":k".to_owned(), s(CellKind::Add.as_str()))];
                let mut adds = Vec::new();
                for (h, d) in hours {
                    names.push(("", cells::hour_attr(*h)));
                    adds.push(format!(
                        "#{} :{}",
                        cells::hour_attr(*h),
                        cells::hour_attr(*h)
                    ));
                    values.push((
                        format!(":{}", cells::hour_attr(*h)),
                        AttributeValue::N(d.clone()),
                    ));
                }
                let expr = format!("SET #k = :k ADD {}", adds.join(", "));
                actions.push(update(table, pk, sk, &expr, None, &names, values)?);
                roles.push(Role::Add);
            }
            // Never chunked: `raise_hours` writes them.
            Op::Max(..) | Op::Latest(..) => {}
            Op::Unique(csk, mpk, markers) => {
                let mut fresh = 0;
                if let Some(owned) = owned {
                    fresh = markers
                        .iter()
                        .filter(|msk| owned.contains(&(mpk.clone(), (*msk).clone())))
                        .count();
                }
                for (j, msk) in markers.iter().enumerate().filter(|_| owned.is_none()) {
                    if skip.contains(&(i, j)) {
                        continue;
                    }
                    actions.push(put_if_absent(
                        table,
                        item([(PK, s(mpk.clone())), (SK, s(msk.clone()))]),
                    )?);
                    roles.push(Role::Conditional(i, j));
                    fresh += 1;
                }
                if fresh > 0 {
                    actions.push(update(
                        table,
                        pk,
                        csk,
                        "ADD #v :n",
                        None,
                        &[("#v", "v".to_owned())],
                        vec![(":n".into(), n(fresh))],
                    )?);
                    roles.push(Role::Add);
                }
            }
        }
    }
    Ok((actions, roles))
}

/// A guard item, put only if absent: the key `pk`/`sk` spells the unique value (an org
/// slug, an email, a project slug, a key id), and its one attribute `name` holds `value`,
/// what the value belongs to. Creating an org, a user, a project or a key puts one beside
/// the item, so a second holder of the value fails the transaction.
pub(super) fn put_guard(
    table: &str,
    (pk, sk): (String, String),
    (name, value): (&str, &str),
) -> Result<TransactWriteItem, StoreError> {
    put_if_absent(table, item([(PK, s(pk)), (SK, s(sk)), (name, s(value))]))
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

/// An update of one counter item. A name `("", attr)` is the placeholder `#<attr>`.
pub(super) fn update(
    table: &str,
    pk: &str,
    sk: &str,
    expression: &str,
    condition: Option<&str>,
    names: &[(&str, String)],
    values: Vec<(String, AttributeValue)>,
) -> Result<TransactWriteItem, StoreError> {
    let names = names.iter().map(|(placeholder, attr)| {
        let placeholder = if placeholder.is_empty() {
            format!("#{attr}")
        } else {
            (*placeholder).to_owned()
        };
        (placeholder, attr.clone())
    });
    let (pk, sk) = (pk.to_owned(), sk.to_owned());
    update_action(table, pk, sk, expression, condition, names, values)
}
