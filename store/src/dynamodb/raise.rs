//! `max` and `latest` hours on DynamoDB: plain conditional `SET`s, outside the counter
//! transactions, because both aggregations are idempotent (a value that does not beat the
//! stored one changes nothing), with [`KnownHours`] remembering lower bounds of what is
//! stored so an op that cannot win is not sent (and not paid for).

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use rust_decimal::Decimal;
use tokio::sync::Semaphore;

use super::DynamoStore;
use super::cells::{self, CellKind};
use super::codec::{Item, describe_last_error, join_all_or_first_error, s, send_retrying};
use super::ops::{Op, Ops};

/// Conditional `SET`s of one batch in flight at once.
const RAISE_CONCURRENCY: usize = 16;

/// What is known to be stored in one hour of a `max` or `latest` cell, at least: stored
/// values only ever rise (a `max` by value, a `latest` by (time, value)), so a value seen
/// once stays a lower bound for good.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Known {
    Max(Decimal),
    Latest(i128, Decimal),
}

/// Lower bounds of stored `max`/`latest` hours, learned from this process's own writes and
/// from the old item DynamoDB returns when a condition fails. An op whose value does not
/// beat the bound would fail its condition and still cost a write unit, so it is not sent.
/// Bounded: forgotten wholesale when full (it only saves writes).
#[derive(Debug, Default)]
pub(super) struct KnownHours(std::sync::Mutex<HashMap<String, Known>>);

impl KnownHours {
    const CAPACITY: usize = 200_000;

    fn key(pk: &str, sk: &str, h: u32) -> String {
        format!("{pk}\u{1f}{sk}\u{1f}{h}")
    }

    /// Whether the stored hour is known to be at least `value`.
    fn covers(&self, key: &str, value: Known) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|map| map.get(key).copied())
            .is_some_and(|known| same_kind(known, value) && known >= value)
    }

    fn learn(&self, key: String, value: Known) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= Self::CAPACITY {
                map.clear();
            }
            let slot = map.entry(key).or_insert(value);
            if same_kind(*slot, value) && *slot < value {
                *slot = value;
            }
        }
    }
}

fn same_kind(a: Known, b: Known) -> bool {
    std::mem::discriminant(&a) == std::mem::discriminant(&b)
}

/// Applies the intent's `max`/`latest` ops, each a plain conditional `UpdateItem` (one
/// write unit, where inside a transaction it cost two and a lost condition cancelled the
/// whole chunk). They are idempotent, so a replay of the intent repeats them harmlessly
/// and they need no marker; values known not to win are skipped.
pub(super) async fn raise_hours(store: &DynamoStore, ops: &Ops) -> Result<(), String> {
    let permits = Arc::new(Semaphore::new(RAISE_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (pk, list) in ops {
        for op in list.iter().filter(|op| op.is_idempotent()) {
            let Some((key, value)) = known_of(pk, op) else {
                return Err(format!("unreadable value in intent op {op:?}"));
            };
            if store.known_hours.covers(&key, value) {
                continue;
            }
            let (store, pk, op, permits) = (store.clone(), pk.clone(), op.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                raise_hour(&store, &pk, &op, key, value).await
            });
        }
    }
    join_all_or_first_error(tasks, "a max/latest write task").await
}

/// The cache key and value of a `max`/`latest` op.
fn known_of(pk: &str, op: &Op) -> Option<(String, Known)> {
    match op {
        Op::Max(sk, h, x) => Some((KnownHours::key(pk, sk, *h), Known::Max(x.parse().ok()?))),
        Op::Latest(sk, h, x, at) => Some((
            KnownHours::key(pk, sk, *h),
            Known::Latest(at.parse().ok()?, x.parse().ok()?),
        )),
        _ => None,
    }
}

/// One conditional `SET` of a `max`/`latest` hour, retried while retrying may help.
async fn raise_hour(
    store: &DynamoStore,
    pk: &str,
    op: &Op,
    key: String,
    value: Known,
) -> Result<(), String> {
    let (sk, h, condition, expression) = match op {
        Op::Max(sk, h, _) => (
            sk,
            *h,
            "attribute_not_exists(#h) OR #h < :x",
            "SET #h = :x, #k = :k",
        ),
        Op::Latest(sk, h, ..) => (
            sk,
            *h,
            "attribute_not_exists(#a) OR #a < :at OR (#a = :at AND #h < :x)",
            "SET #h = :x, #a = :at, #k = :k",
        ),
        _ => return Ok(()),
    };
    let mut request = store
        .update_item_at(pk, sk)
        .update_expression(expression)
        .condition_expression(condition)
        .expression_attribute_names("#h", cells::hour_attr(h))
        .expression_attribute_names("#k", cells::KIND)
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
    match op {
        Op::Max(_, _, x) => {
            request = request
                .expression_attribute_values(":x", AttributeValue::N(x.clone()))
                .expression_attribute_values(":k", s(CellKind::Max.as_str()));
        }
        Op::Latest(_, _, x, at) => {
            request = request
                .expression_attribute_names("#a", cells::at_attr(h))
                .expression_attribute_values(":x", AttributeValue::N(x.clone()))
                .expression_attribute_values(":at", AttributeValue::N(at.clone()))
                .expression_attribute_values(":k", s(CellKind::Latest.as_str()));
        }
        _ => {}
    }
    match send_retrying(&store.retry, || request.clone().send()).await {
        Ok(_) => {
            store.known_hours.learn(key, value);
            Ok(())
        }
        Err(e) => {
            if let Some(UpdateItemError::ConditionalCheckFailedException(c)) = e.as_service_error()
            {
                // Nothing to do: what is stored already wins. Remember it.
                if let Some(stored) = c.item().and_then(|old| stored_known(old, h, value)) {
                    store.known_hours.learn(key, stored);
                }
                return Ok(());
            }
            Err(describe_last_error(&store.retry, "UpdateItem", &e))
        }
    }
}

/// What an old cell item holds for hour `h`, in the shape of `like`.
fn stored_known(old: &Item, h: u32, like: Known) -> Option<Known> {
    let number = |attr: String| match old.get(&attr) {
        Some(AttributeValue::N(v)) => Some(v.clone()),
        _ => None,
    };
    let value: Decimal = number(cells::hour_attr(h))?.parse().ok()?;
    match like {
        Known::Max(_) => Some(Known::Max(value)),
        Known::Latest(..) => Some(Known::Latest(
            number(cells::at_attr(h))?.parse().ok()?,
            value,
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn known_hours_skip_only_values_that_cannot_win() {
        let known = KnownHours::default();
        let d = |v: i64| Decimal::from(v);
        known.learn("a".into(), Known::Max(d(5)));
        known.learn("a".into(), Known::Max(d(3))); // a lower bound never falls
        assert!(known.covers("a", Known::Max(d(5))));
        assert!(known.covers("a", Known::Max(d(4))));
        assert!(!known.covers("a", Known::Max(d(6))));
        assert!(!known.covers("b", Known::Max(d(0))));
        known.learn("l".into(), Known::Latest(10, d(1)));
        assert!(known.covers("l", Known::Latest(9, d(100))));
        assert!(known.covers("l", Known::Latest(10, d(1))));
        assert!(!known.covers("l", Known::Latest(10, d(2))));
        assert!(!known.covers("l", Known::Latest(11, d(0))));
        // A different kind under the same key is never taken as a bound.
        assert!(!known.covers("a", Known::Latest(0, d(0))));
    }
}
