//! The counting oracle the crash and chaos tests judge the stores by: every counter the
//! distinct events of a run imply, computed with plain maps from the definition of each
//! aggregation (not with `tally_core::fold`, the code under test), and a short description
//! of where stored counters differ from it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::counter::OwnedCounterKey;
use tally_core::event::Event;
use tally_core::ids::{EventId, OrgId};
use tally_core::meter::Aggregation;

/// One counter's value under construction.
enum Acc {
    Add(Decimal),
    Max(Decimal),
    Latest(DateTime<Utc>, Decimal),
    Unique(BTreeSet<String>),
}

/// Every counter the events imply, the first copy of each (org, event id) counting once:
/// sums and counts add, max keeps the largest, latest the reading with the latest
/// timestamp (ties to the larger value), unique_count the number of distinct string values
/// of its property. Panics on a meter whose aggregation changes between events, or a
/// unique_count event without its property as a string: the workloads never make those.
pub fn plain_counters(events: &[Event]) -> BTreeMap<OwnedCounterKey, Decimal> {
    let mut seen: HashSet<(&OrgId, &EventId)> = HashSet::new();
    let mut acc: HashMap<OwnedCounterKey, Acc> = HashMap::new();
    for e in events.iter().filter(|e| seen.insert((&e.org_id, &e.id))) {
        let q = e.quantity.value();
        for key in OwnedCounterKey::all_of(e) {
            let first = || match &e.aggregation {
                Aggregation::Sum | Aggregation::Count => Acc::Add(Decimal::ZERO),
                Aggregation::Max => Acc::Max(q),
                Aggregation::Latest | Aggregation::TimeWeightedSum => Acc::Latest(e.timestamp, q),
                Aggregation::UniqueCount { .. } => Acc::Unique(BTreeSet::new()),
            };
            match (&e.aggregation, acc.entry(key).or_insert_with(first)) {
                (Aggregation::Sum, Acc::Add(v)) => *v += q,
                (Aggregation::Count, Acc::Add(v)) => *v += Decimal::ONE,
                (Aggregation::Max, Acc::Max(v)) => *v = (*v).max(q),
                (Aggregation::Latest | Aggregation::TimeWeightedSum, Acc::Latest(at, v)) => {
                    if (e.timestamp, q) > (*at, *v) {
                        (*at, *v) = (e.timestamp, q);
                    }
                }
                (Aggregation::UniqueCount { property }, Acc::Unique(set)) => {
                    match e.properties.get(property) {
                        Some(serde_json::Value::String(s)) => set.insert(s.clone()),
                        other => panic!("unique_count event without {property}: {other:?}"),
                    };
                }
                (agg, _) => panic!("meter {} changed aggregation to {agg:?}", e.meter),
            }
        }
    }
    acc.into_iter()
        .map(|(k, a)| {
            let v = match a {
                Acc::Add(v) | Acc::Max(v) | Acc::Latest(_, v) => v,
                Acc::Unique(set) => Decimal::from(set.len()),
            };
            (k, v)
        })
        .collect()
}

/// `None` if the `stored` counters equal `truth` (a counter the truth lacks must be zero),
/// else the first `most` differences, `; `-separated.
pub fn counter_differences<'a>(
    stored: impl IntoIterator<Item = (OwnedCounterKey, Decimal)>,
    truth: impl IntoIterator<Item = (&'a OwnedCounterKey, &'a Decimal)>,
    most: usize,
) -> Option<String> {
    let mut stored: HashMap<OwnedCounterKey, Decimal> = stored.into_iter().collect();
    let mut diffs = Vec::new();
    for (k, want) in truth {
        let have = stored.remove(k);
        if have != Some(*want) {
            diffs.push(format!("{k:?}: want {want}, have {have:?}"));
        }
    }
    for (k, v) in stored {
        if !v.is_zero() {
            diffs.push(format!("{k:?}: want nothing, have {v}"));
        }
    }
    (!diffs.is_empty()).then(|| {
        diffs.truncate(most);
        diffs.join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::fixtures::{event, with_prop};

    /// Every aggregation by its definition, a resent id counted once; a wrong stored value,
    /// a missing one and an extra non-zero one are each reported.
    #[test]
    fn the_oracle_counts_by_definition_and_differences_name_each_fault() {
        let org = OrgId::parse("org_o").unwrap();
        let p = tally_core::ids::ProjectId::parse("prj_o").unwrap();
        let at = "2026-10-01T10:00:00Z";
        let mut events = vec![
            event(&org, &p, "a", "compute_minutes", "2", at),
            event(&org, &p, "b", "compute_minutes", "3", at),
            event(&org, &p, "b", "compute_minutes", "3", at),
        ];
        for (i, user) in ["u1", "u2", "u1"].into_iter().enumerate() {
            let e = event(&org, &p, &format!("u{i}"), "active_users", "1", at);
            events.push(with_prop(e, "user", user));
        }
        let truth = plain_counters(&events);
        let month = |meter: &str| {
            truth
                .iter()
                .find(|(k, _)| {
                    k.meter.as_str() == meter
                        && k.project.is_none()
                        && k.granularity == tally_core::period::Granularity::Month
                })
                .map(|(_, v)| *v)
        };
        assert_eq!(truth.len(), 12);
        assert_eq!(month("compute_minutes"), Some(Decimal::from(5)));
        assert_eq!(month("active_users"), Some(Decimal::from(2)));

        let stored: Vec<_> = truth.clone().into_iter().collect();
        assert_eq!(counter_differences(stored.clone(), &truth, 5), None);
        let mut wrong = stored.clone();
        wrong[0].1 += Decimal::ONE;
        assert!(counter_differences(wrong, &truth, 5).is_some());
        assert!(counter_differences(stored[1..].to_vec(), &truth, 5).is_some());
        let mut extra = stored.clone();
        extra[0].0.meter = tally_core::ids::MeterName::parse("other").unwrap();
        extra.push(stored[0].clone());
        assert!(counter_differences(extra, &truth, 5).is_some());
    }
}
