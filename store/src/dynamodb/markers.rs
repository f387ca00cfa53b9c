//! `unique_count` value markers put outside the counter transactions
//! ([`Packing::MarkersApart`](super::chunks::Packing)).
//!
//! A marker (`ORG#<org>#UNQ#<month>` / `<counter>#V=<value>`) says a value was counted by a
//! `unique_count` counter. Inside a chunk transaction each cost 2 write units, and a value
//! counted before failed its condition and cancelled the whole chunk (billing every action
//! of it): on workload W with six meters the markers were 2.1 of 5.8 write units per event,
//! plus 0.96 in cancelled transactions (`bench/RESULTS.md`).
//!
//! Here each marker is a plain conditional `PutItem` (1 unit) that records its **owner**,
//! the batch whose intent counts it: `attribute_not_exists(PK) OR owner = :batch`. Exactly
//! once still holds because ownership never moves: the first batch to put a marker owns it
//! for good, a replay of that batch's intent (by anyone) finds it its own again, and every
//! other batch finds it foreign. So the number of owned markers of each op, and with it the
//! `ADD` its chunk applies, is the same on every replay of the intent, and the chunk marker
//! keeps the `ADD` to once. A marker is put only after its batch's intent is written, so an
//! owner always has an intent, and whoever meets its unfinished records finishes it. A
//! marker written by an older release inside a transaction has no owner: it was counted
//! with it, so it is foreign to every batch.
//!
//! [`MarkerOwners`] remembers the owners this process learned (a failed condition returns
//! the stored marker), so a value seen before is not sent again; a failed put still costs a
//! write unit, and on a long run most values repeat.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use tokio::sync::Semaphore;

use super::DynamoStore;
use super::codec::{describe_last_error, get_opt_s, item, s, send_retrying};
use super::keys::{PK, SK};
use super::ops::{Op, Ops};

/// Attribute of a marker: the batch that owns (counts) it.
pub(super) const MARKER_OWNER: &str = "owner";

/// Marker puts of one batch in flight at once.
const MARKER_CONCURRENCY: usize = 16;

/// Owners of markers this process has learned: `""` for a marker written inside a
/// transaction by an older release (counted, owned by no batch). Bounded: forgotten
/// wholesale when full (it only saves writes).
#[derive(Debug, Default)]
pub(super) struct MarkerOwners(std::sync::Mutex<HashMap<(String, String), String>>);

impl MarkerOwners {
    const CAPACITY: usize = 200_000;

    fn owner(&self, key: &(String, String)) -> Option<String> {
        self.0.lock().ok().and_then(|map| map.get(key).cloned())
    }

    fn learn(&self, key: (String, String), owner: String) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= Self::CAPACITY {
                map.clear();
            }
            map.insert(key, owner);
        }
    }
}

/// Puts every marker of the intent's `unique_count` ops for `batch` and returns the ones
/// `batch` owns, as (marker partition, marker sort key): only those are counted by its
/// chunks. Idempotent: any replay of the same intent returns the same set.
pub(super) async fn claim_markers(
    store: &DynamoStore,
    batch: &str,
    ops: &Ops,
) -> Result<HashSet<(String, String)>, String> {
    let permits = Arc::new(Semaphore::new(MARKER_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    let mut owned = HashSet::new();
    for (_, list) in ops {
        for op in list {
            let Op::Unique(_, mpk, markers) = op else {
                continue;
            };
            for msk in markers {
                let key = (mpk.clone(), msk.clone());
                match store.marker_owners.owner(&key) {
                    Some(owner) if owner == batch => {
                        owned.insert(key);
                    }
                    Some(_) => {}
                    None => {
                        let (store, batch, permits) =
                            (store.clone(), batch.to_owned(), permits.clone());
                        tasks.spawn(async move {
                            let _permit = permits.acquire_owned().await;
                            let owner = put_marker(&store, &batch, &key).await?;
                            store.marker_owners.learn(key.clone(), owner.clone());
                            Ok::<_, String>((key, owner == batch))
                        });
                    }
                }
            }
        }
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| format!("a marker put task failed: {e}")) {
            Ok(Ok((key, true))) => {
                owned.insert(key);
            }
            Ok(Ok((_, false))) => {}
            Ok(Err(e)) | Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(owned), Err)
}

/// One conditional marker put, retried while retrying may help; returns the marker's owner
/// (`batch` if this put, or an earlier one of the same batch, wrote it).
async fn put_marker(
    store: &DynamoStore,
    batch: &str,
    (mpk, msk): &(String, String),
) -> Result<String, String> {
    let sent = send_retrying(&store.retry, || {
        store
            .put_item_of(item([(PK, s(mpk)), (SK, s(msk)), (MARKER_OWNER, s(batch))]))
            .condition_expression("attribute_not_exists(#pk) OR #o = :b")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#o", MARKER_OWNER)
            .expression_attribute_values(":b", s(batch))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
    })
    .await;
    match sent {
        Ok(_) => Ok(batch.to_owned()),
        Err(e) => {
            if let Some(PutItemError::ConditionalCheckFailedException(c)) = e.as_service_error() {
                // Another batch's (or an old release's transaction's): counted by it.
                let owner = c
                    .item()
                    .and_then(|old| get_opt_s(old, MARKER_OWNER).ok().flatten())
                    .map(str::to_owned)
                    .unwrap_or_default();
                return Ok(owner);
            }
            Err(describe_last_error(&store.retry, "PutItem", &e))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn owners_are_remembered_per_marker_and_forgotten_when_full() {
        let owners = MarkerOwners::default();
        let key = |v: &str| ("ORG#o#UNQ#2026-12".to_owned(), format!("c#V={v}"));
        owners.learn(key("ann"), "b1".into());
        owners.learn(key("bob"), String::new());
        assert_eq!(owners.owner(&key("ann")).as_deref(), Some("b1"));
        assert_eq!(owners.owner(&key("bob")).as_deref(), Some(""));
        assert_eq!(owners.owner(&key("cy")), None);
        for i in 0..MarkerOwners::CAPACITY {
            owners.learn(key(&i.to_string()), "b".into());
        }
        assert_eq!(owners.owner(&key("ann")), None);
    }
}
