//! The counter writes of a slotted intent (`docs/dynamodb-writer-slots.md`): each day-cell
//! `ADD` and unique-counter `ADD` of batch `(k, n)` is one plain `UpdateItem` that also sets
//! the cell's high-water mark `w<k>` = n, under `attribute_not_exists(w<k>) OR w<k> < n`.
//!
//! Why that is exactly once: the ops of `(k, n)` are fixed by the intent, whoever sends
//! them; a cell applies `(k, n)` at most once (its mark only rises); every op of `n` is
//! applied before batch `n` is finished, and slot `k` begins `n + 1` only after that
//! ([`slots`](super::slots)), so a write of `(k, n)` that finds `w<k>` ≥ n lands on a cell
//! where `n` is already applied: its failed condition means "already applied". This needs
//! one update per item per batch, which [`plan_updates`] checks (the planner makes one
//! `Op::Add` per day cell; a unique counter's ops, split at 48 markers, are summed into one
//! update here).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use tokio::sync::Semaphore;

use super::DynamoStore;
use super::cells::{self, CellKind};
use super::codec::{join_all_or_first_error, n, s, send_retrying, written_or_condition_failed};
use super::ops::{Op, Ops};
use super::slots::{SlotFault, hw_attr};

/// Cell updates of one batch in flight at once.
const CELL_CONCURRENCY: usize = 24;

/// What one update adds to its item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Body {
    /// Hours of a day cell: (hour index, amount).
    Add(Vec<(u32, String)>),
    /// Values newly counted by a unique counter (markers the batch owns).
    Unique(u64),
}

/// One update per item: (partition, sort key) → what to add. `owned` are the markers the
/// batch owns ([`claim_markers`](super::markers::claim_markers)). An error if the ops
/// update one item twice outside a unique counter's parts: a second op of one batch on
/// one item would be skipped by the high-water check.
pub(super) fn plan_updates(
    ops: &Ops,
    owned: &HashSet<(String, String)>,
) -> Result<BTreeMap<(String, String), Body>, String> {
    let mut out: BTreeMap<(String, String), Body> = BTreeMap::new();
    for (pk, list) in ops {
        for op in list {
            let key = (pk.clone(), op.item_sk().to_owned());
            match op {
                Op::Max(..) | Op::Latest(..) => {}
                Op::Add(_, hours) => {
                    if out.insert(key.clone(), Body::Add(hours.clone())).is_some() {
                        return Err(format!("two ops of one batch on item {key:?}"));
                    }
                }
                Op::Unique(_, mpk, markers) => {
                    let fresh = markers
                        .iter()
                        .filter(|m| owned.contains(&(mpk.clone(), (*m).clone())))
                        .count() as u64;
                    match out.entry(key.clone()).or_insert(Body::Unique(0)) {
                        Body::Unique(count) => *count += fresh,
                        Body::Add(_) => {
                            return Err(format!("two ops of one batch on item {key:?}"));
                        }
                    }
                }
            }
        }
    }
    out.retain(|_, body| *body != Body::Unique(0));
    Ok(out)
}

/// Sends every update of batch `(k, seq)`, a few dozen at once, each retried under the
/// store's policy. A failed condition is an update applied before (by anyone).
pub(super) async fn apply_updates(
    store: &DynamoStore,
    ops: &Ops,
    owned: &HashSet<(String, String)>,
    k: u32,
    seq: u64,
) -> Result<(), String> {
    let updates = plan_updates(ops, owned)?;
    let checked = store
        .slots
        .as_ref()
        .is_none_or(|slots| slots.fault != Some(SlotFault::NoHighWater));
    let permits = Arc::new(Semaphore::new(CELL_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for ((pk, sk), body) in updates {
        let (store, permits) = (store.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            update_item(&store, &pk, &sk, &body, k, seq, checked).await
        });
    }
    join_all_or_first_error(tasks, "a counter update task").await
}

/// The update expression, names and values of one item's update.
fn expression(
    body: &Body,
    k: u32,
    seq: u64,
) -> (
    String,
    HashMap<String, String>,
    HashMap<String, AttributeValue>,
) {
    let mut names = HashMap::from([("#w".to_owned(), hw_attr(k))]);
    let mut values = HashMap::from([(":n".to_owned(), n(seq))]);
    let expr = match body {
        Body::Add(hours) => {
            names.insert("#k".into(), cells::KIND.into());
            values.insert(":k".into(), s(CellKind::Add.as_str()));
            let mut adds = Vec::with_capacity(hours.len());
            for (h, d) in hours {
                let attr = cells::hour_attr(*h);
                adds.push(format!("#{attr} :{attr}"));
                values.insert(format!(":{attr}"), AttributeValue::N(d.clone()));
                names.insert(format!("#{attr}"), attr);
            }
            format!("SET #k = :k, #w = :n ADD {}", adds.join(", "))
        }
        Body::Unique(count) => {
            names.insert("#v".into(), "v".into());
            values.insert(":c".into(), n(count));
            "SET #w = :n ADD #v :c".to_owned()
        }
    };
    (expr, names, values)
}

/// One conditional update; `checked` false only under the planted fault.
async fn update_item(
    store: &DynamoStore,
    pk: &str,
    sk: &str,
    body: &Body,
    k: u32,
    seq: u64,
    checked: bool,
) -> Result<(), String> {
    let (expr, names, values) = expression(body, k, seq);
    let condition = checked.then_some("attribute_not_exists(#w) OR #w < :n");
    let sent = send_retrying(&store.retry, || {
        store
            .update_item_at(pk, sk)
            .update_expression(&expr)
            .set_condition_expression(condition.map(str::to_owned))
            .set_expression_attribute_names(Some(names.clone()))
            .set_expression_attribute_values(Some(values.clone()))
            .send()
    })
    .await;
    // A failed condition: applied before, by this batch on an attempt whose answer was
    // lost, or by anyone finishing it (see the module doc).
    written_or_condition_failed("UpdateItem", sent)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn add(sk: &str, h: u32, d: &str) -> Op {
        Op::Add(sk.into(), vec![(h, d.into())])
    }

    #[test]
    fn a_unique_counters_parts_are_one_update_of_its_owned_markers() {
        // 50 values split 48 + 2 over two ops of one counter; this batch owns 30 of the
        // first part and both of the second: one update adding 32.
        let first: Vec<String> = (0..48).map(|i| format!("c#V={i}")).collect();
        let second: Vec<String> = (48..50).map(|i| format!("c#V={i}")).collect();
        let owned: HashSet<(String, String)> = (0..30)
            .chain(48..50)
            .map(|i| ("UNQ".to_owned(), format!("c#V={i}")))
            .collect();
        let ops: Ops = vec![(
            "CTR".into(),
            vec![
                Op::Unique("c".into(), "UNQ".into(), first),
                Op::Unique("c".into(), "UNQ".into(), second),
                add("DAY#m#p#1", 3, "2"),
                Op::Max("DAY#x#p#1".into(), 1, "9".into()),
            ],
        )];
        let plan = plan_updates(&ops, &owned).unwrap();
        assert_eq!(plan.len(), 2, "{plan:?}");
        assert_eq!(plan[&("CTR".to_owned(), "c".to_owned())], Body::Unique(32));
        // A counter that owns nothing is not written.
        let none = plan_updates(&ops, &HashSet::new()).unwrap();
        assert_eq!(none.len(), 1);
    }

    #[test]
    fn two_adds_of_one_batch_on_one_cell_are_refused() {
        let ops: Ops = vec![(
            "CTR".into(),
            vec![add("DAY#m#p#1", 3, "2"), add("DAY#m#p#1", 4, "1")],
        )];
        let err = plan_updates(&ops, &HashSet::new()).unwrap_err();
        assert!(err.contains("two ops"), "{err}");
    }

    #[test]
    fn the_update_sets_the_slots_mark_and_adds_the_hours() {
        let (expr, names, values) =
            expression(&Body::Add(vec![(5, "3".into()), (7, "1.5".into())]), 7, 12);
        assert_eq!(expr, "SET #k = :k, #w = :n ADD #h05 :h05, #h07 :h07");
        assert_eq!(names["#w"], "w7");
        assert_eq!(values[":n"], AttributeValue::N("12".into()));
        assert_eq!(values[":h07"], AttributeValue::N("1.5".into()));
        let (expr, names, _) = expression(&Body::Unique(4), 0, 1);
        assert_eq!(expr, "SET #w = :n ADD #v :c");
        assert_eq!(names["#w"], "w0");
    }
}
