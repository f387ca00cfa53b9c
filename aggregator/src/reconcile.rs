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
use tally_core::ports::{StoreError, UsageStore, each_ledger_page};
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

/// Why reconcile could not judge a month.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The month is older than the store keeps its ledger: some of its records may be gone,
    /// and every counter would look like drift.
    #[error(
        "{month} is too old to reconcile: this store keeps ledger records {days} days after they are written, so records of {month} may have expired since {expired}"
    )]
    BeyondRetention {
        /// The month asked for.
        month: Month,
        /// The store's retention, in days.
        days: i64,
        /// From when the month's earliest records may be gone.
        expired: chrono::DateTime<chrono::Utc>,
    },
}

/// Recomputes `org`'s counters for `month` from the ledger and returns every drift; refused
/// ([`ReconcileError::BeyondRetention`]) at `now` when the store may have expired some of
/// the month's ledger records.
pub async fn reconcile(
    usage: &dyn UsageStore,
    org: &OrgId,
    month: Month,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Drift>, ReconcileError> {
    if let Some(retention) = usage.ledger_retention() {
        // The earliest record of the month was written at its start at the soonest (minus
        // the clock skew ingest allows).
        let expired = month.start() - tally_core::event::MAX_FUTURE_SKEW + retention;
        if now >= expired {
            return Err(ReconcileError::BeyondRetention {
                month,
                days: retention.num_days(),
                expired,
            });
        }
    }
    let mut expected: BTreeMap<OwnedCounterKey, Delta> = BTreeMap::new();
    each_ledger_page(usage, org, month, PAGE, |events| {
        for (key, delta) in fold(events.iter()) {
            match expected.entry(key.to_owned_key()) {
                std::collections::btree_map::Entry::Occupied(mut o) => o.get_mut().merge(&delta),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(delta);
                }
            }
        }
    })
    .await?;
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
