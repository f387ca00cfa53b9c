//! Reconcile: recompute every counter of an org's month from the event ledger and compare it
//! with what is stored.
//!
//! It folds the ledger a page at a time with the same [`tally_core::fold`] the aggregator
//! uses, so any difference is drift in what was written, not in arithmetic. Written against
//! the ports, it checks SQLite and DynamoDB alike.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;
use tally_core::counter::OwnedCounterKey;
use tally_core::fold::{Delta, apply_delta, fold};
use tally_core::ports::{StoreError, UsageStore};
use tally_core::{Month, OrgId};

/// Ledger records read per page.
const PAGE: usize = 5_000;

/// One counter whose stored value differs from what the ledger implies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// Which counter.
    pub counter: OwnedCounterKey,
    /// What the ledger implies (`0` if it implies nothing).
    #[serde(with = "rust_decimal::serde::str")]
    pub expected: Decimal,
    /// What is stored (`None` if the counter is missing).
    #[serde(with = "rust_decimal::serde::str_option")]
    pub stored: Option<Decimal>,
}

/// Recomputes `org`'s counters for `month` from the ledger and returns every drift.
pub async fn reconcile(
    usage: &dyn UsageStore,
    org: &OrgId,
    month: Month,
) -> Result<Vec<Drift>, StoreError> {
    let mut expected: BTreeMap<OwnedCounterKey, Delta> = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = usage.ledger_page(org, month, cursor, PAGE).await?;
        for (key, delta) in fold(page.events.iter()) {
            match expected.entry(key.to_owned_key()) {
                std::collections::btree_map::Entry::Occupied(mut o) => o.get_mut().merge(&delta),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(delta);
                }
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut stored: BTreeMap<OwnedCounterKey, Decimal> = usage
        .stored_counters(org, month)
        .await?
        .into_iter()
        .collect();
    let mut drifts = Vec::new();
    for (key, delta) in expected {
        let new_unique = match &delta {
            Delta::Unique(set) => set.len() as u64,
            _ => 0,
        };
        let (want, _) = apply_delta(None, None, &delta, new_unique);
        let have = stored.remove(&key);
        if have != Some(want) {
            drifts.push(Drift {
                counter: key,
                expected: want,
                stored: have,
            });
        }
    }
    // Counters the ledger knows nothing about (and that are not zero) are drift too.
    drifts.extend(
        stored
            .into_iter()
            .filter(|(_, v)| !v.is_zero())
            .map(|(counter, v)| Drift {
                counter,
                expected: Decimal::ZERO,
                stored: Some(v),
            }),
    );
    Ok(drifts)
}
