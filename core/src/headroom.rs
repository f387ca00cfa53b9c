//! How far a counter may grow, and which events of a batch still fit: the per-event
//! `counter_overflow` refusal every store runs before it counts anything.
//!
//! # Why a limit, and why this one
//!
//! Counters are `rust_decimal` values: 96 bits of mantissa, about 7.9 × 10^28. A quantity
//! has at most [`crate::event::MAX_QUANTITY_SCALE`] (9) decimal places, so a sum holding
//! nine of them is exact only below about 7.9 × 10^19; past it `Decimal` rounds away the
//! last places without a word, and past 7.9 × 10^28 the stores' folds would saturate. Honest
//! usage is nowhere near either (10^19 bytes is ten exabytes in one month), but a tenant may
//! send quantities up to 10^18 each, so ten events of the largest size reach 10^19.
//!
//! [`COUNTER_LIMIT`] (10^19) is therefore the documented range: the month total of one
//! org's adding meter (`sum` or `count`; the largest of its counters at every granularity
//! and scope, since every hour, day and project counter is a part of it) never exceeds it.
//! A meter with dimensions counts in many series (`llm_tokens{model=gpt-4}`, see
//! [`crate::dimension`]), and its total is the sum over all of them (what usage reads,
//! billing prices and plan limits compare), so the limit holds for the *base meter's* total
//! over every series: [`TotalKey`] names the base meter. Each series is a part of that
//! total, so each series stays under the limit too.
//! An event that would take it past the limit is refused, one event at a time, in batch
//! order: [`admit`]. The store reports it as
//! [`ApplyOutcome::Overflow`](crate::ports::ApplyOutcome::Overflow), does not put it in the
//! ledger (so a later replay may still count it), and the aggregator dead-letters it with the
//! reason `counter_overflow`. Every other event of the batch, and every other tenant, is
//! counted as usual. `max` and `latest` hold one quantity (below 10^18) and `unique_count`
//! one per event, so only adding meters are checked.
//!
//! Every store holds the limit strictly, concurrent writers included: SQLite and the memory
//! store check and count in one transaction, DynamoDB reserves room in a guard item with a
//! conditional write before it counts. The gap up to the exact range is margin, not
//! something a store spends. Readers still sum with checked arithmetic
//! ([`crate::counter::checked_sum`]), so a counter corrupted past `Decimal`'s range is an
//! error for its org alone, never a panic or a saturated figure.

use std::collections::HashMap;

use rust_decimal::Decimal;

use crate::event::Event;
use crate::ids::{MeterName, OrgId};
use crate::meter::Aggregation;
use crate::period::Month;

/// The most one org's month total of one adding meter may reach: 10^19, inclusive.
pub const COUNTER_LIMIT: Decimal = Decimal::from_parts(0x89E8_0000, 0x8AC7_2304, 0, false, 0);

/// What an event adds to, for the limit: its org's month total of its meter over all the
/// meter's series (an event of `llm_tokens{model=gpt-4}` adds to `llm_tokens`). `None` for
/// meters that do not add up (`max`, `latest`, `unique_count`), which cannot overflow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TotalKey {
    /// The tenant (a test twin is a tenant of its own).
    pub org: OrgId,
    /// The base meter (never a series key): its total is over every series.
    pub meter: MeterName,
    /// The month the event's timestamp falls in.
    pub month: Month,
}

impl TotalKey {
    /// The total `event` adds to, and how much it adds; `None` for meters that do not add.
    pub fn of(event: &Event) -> Option<(TotalKey, Decimal)> {
        let amount = match event.aggregation {
            Aggregation::Sum => event.quantity.value(),
            Aggregation::Count => Decimal::ONE,
            Aggregation::Max
            | Aggregation::Latest
            | Aggregation::UniqueCount { .. }
            | Aggregation::TimeWeightedSum => {
                return None;
            }
        };
        Some((
            TotalKey {
                org: event.org_id.clone(),
                meter: event.meter.base_meter(),
                month: Month::of(event.timestamp),
            },
            amount,
        ))
    }
}

/// What [`admit`] decided for a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The positions (as given) of the events that would take their total past the limit.
    pub refused: Vec<usize>,
    /// How much each total grows by the events admitted.
    pub growth: HashMap<TotalKey, Decimal>,
}

/// The sums the given events would add to each total, all of them admitted: what a store
/// that reserves room before it counts (the DynamoDB guard) asks for.
pub fn needs<'a>(events: impl IntoIterator<Item = &'a Event>) -> HashMap<TotalKey, Decimal> {
    let mut need: HashMap<TotalKey, Decimal> = HashMap::new();
    for e in events {
        if let Some((key, amount)) = TotalKey::of(e) {
            let sum = need.entry(key).or_insert(Decimal::ZERO);
            // Below 1,000 events of at most 10^18 each, a batch's sums cannot overflow;
            // should one ever, the largest value stands in and is refused below.
            *sum = sum.checked_add(amount).unwrap_or(Decimal::MAX);
        }
    }
    need
}

/// Decides, in the order given, which of the new `events` fit: an event is admitted when
/// its total, after the events admitted before it, stays at or under `room` of that total
/// (for a store that checks and writes in one transaction, `COUNTER_LIMIT` minus the stored
/// total; see [`room_under_limit`]). An event that does not fit is refused and a later,
/// smaller one may still fit. Events whose meter does not add are always admitted.
pub fn admit<'a>(
    events: impl IntoIterator<Item = (usize, &'a Event)>,
    room: impl Fn(&TotalKey) -> Decimal,
) -> Admission {
    let mut out = Admission::default();
    let mut left: HashMap<TotalKey, Decimal> = HashMap::new();
    for (at, e) in events {
        let Some((key, amount)) = TotalKey::of(e) else {
            continue;
        };
        let have = match left.get(&key) {
            Some(r) => *r,
            None => room(&key).max(Decimal::ZERO),
        };
        if amount <= have {
            left.insert(key.clone(), have - amount);
            let grown = out.growth.entry(key).or_insert(Decimal::ZERO);
            *grown += amount;
        } else {
            left.insert(key, have);
            out.refused.push(at);
        }
    }
    out
}

/// The room a stored total leaves under [`COUNTER_LIMIT`] (none once it is at or past it).
pub fn room_under_limit(stored: Decimal) -> Decimal {
    if stored >= COUNTER_LIMIT {
        Decimal::ZERO
    } else {
        COUNTER_LIMIT - stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Quantity;
    use crate::ids::{EventId, ProjectId};
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn event(org: &str, meter: &str, agg: Aggregation, q: &str, day: u32) -> Event {
        Event {
            org_id: OrgId::parse(&format!("org_{org}")).unwrap(),
            id: EventId::parse(&format!("e{day}{q}")).unwrap(),
            project_id: ProjectId::parse("prj_1").unwrap(),
            meter: MeterName::parse(meter).unwrap(),
            aggregation: agg,
            quantity: Quantity::parse(q).unwrap(),
            timestamp: Utc.with_ymd_and_hms(2026, 11, day, 0, 0, 0).unwrap(),
            properties: Default::default(),
        }
    }

    const MAX_Q: &str = "999999999999999999";

    #[test]
    fn the_limit_is_ten_to_the_nineteenth() {
        assert_eq!(COUNTER_LIMIT.to_string(), "10000000000000000000");
    }

    #[test]
    fn an_event_past_the_limit_is_refused_and_a_smaller_later_one_still_fits() {
        let big = event("o1", "tokens", Aggregation::Sum, MAX_Q, 1);
        let small = event("o1", "tokens", Aggregation::Sum, "5", 2);
        let other_month = event("o1", "tokens", Aggregation::Sum, MAX_Q, 1);
        let mut other_month = other_month;
        other_month.timestamp = Utc.with_ymd_and_hms(2026, 10, 3, 0, 0, 0).unwrap();
        // Stored: 10^19 − 10^18 + 3, so the room is 10^18 − 3: the largest event does not
        // fit, the later small ones do, and another month has a total of its own.
        let stored = COUNTER_LIMIT - Decimal::from(1_000_000_000_000_000_000u64) + Decimal::from(3);
        let two = event("o1", "tokens", Aggregation::Sum, "2", 3);
        let events = [big.clone(), small.clone(), two.clone(), other_month.clone()];
        let key = TotalKey::of(&big).unwrap().0;
        let a = admit(events.iter().enumerate(), |k| {
            if *k == key {
                room_under_limit(stored)
            } else {
                COUNTER_LIMIT
            }
        });
        assert_eq!(a.refused, vec![0]);
        assert_eq!(a.growth.get(&key), Some(&Decimal::from(7)));
        assert_eq!(
            a.growth.get(&TotalKey::of(&other_month).unwrap().0),
            Some(&Quantity::parse(MAX_Q).unwrap().value())
        );
    }

    #[test]
    fn a_total_exactly_at_the_limit_is_allowed_and_one_more_unit_is_not() {
        // Ten of the largest quantities, 10, then the smallest: the total reaches the
        // limit exactly, and the one after is one unit of 10^-9 too many.
        let q = |s: &str, i: usize| {
            let mut e = event("o1", "bytes", Aggregation::Sum, s, 1);
            e.id = EventId::parse(&format!("x{i}")).unwrap();
            e
        };
        let mut batch: Vec<Event> = (0..10).map(|i| q(MAX_Q, i)).collect();
        batch.push(q("10", 10));
        batch.push(q("0.000000001", 11));
        let a = admit(batch.iter().enumerate(), |_| COUNTER_LIMIT);
        assert_eq!(a.refused, vec![11]);
        let key = TotalKey::of(&batch[0]).unwrap().0;
        assert_eq!(a.growth[&key], COUNTER_LIMIT);
    }

    #[test]
    fn meters_that_do_not_add_are_never_refused() {
        let m = event("o1", "peak", Aggregation::Max, MAX_Q, 1);
        let l = event("o1", "gauge", Aggregation::Latest, MAX_Q, 1);
        let a = admit([(0, &m), (1, &l)], |_| Decimal::ZERO);
        assert!(a.refused.is_empty());
        assert!(needs([&m, &l]).is_empty());
    }

    #[test]
    fn count_meters_add_one_per_event_whatever_the_quantity() {
        let c = event("o1", "requests", Aggregation::Count, MAX_Q, 1);
        let a = admit([(0, &c)], |_| Decimal::ONE);
        assert!(a.refused.is_empty());
        let a = admit([(0, &c)], |_| Decimal::ZERO);
        assert_eq!(a.refused, vec![0]);
    }

    #[test]
    fn series_of_one_meter_share_its_total() {
        // Two series of `llm_tokens`, one event of 6 × 10^17 each. The room is what the
        // whole meter's stored total leaves, 10^18: the first event fits (10^18 −
        // 6 × 10^17 = 4 × 10^17 left), the second, of the other series, does not
        // (6 × 10^17 > 4 × 10^17), though its own series holds nothing yet.
        let six = "600000000000000000";
        let mut gpt = event("o1", "llm_tokens", Aggregation::Sum, six, 1);
        gpt.meter = gpt.meter.series(&[("model", "gpt-4")]);
        let mut claude = event("o1", "llm_tokens", Aggregation::Sum, six, 2);
        claude.meter = claude.meter.series(&[("model", "claude")]);
        let key = TotalKey::of(&gpt).unwrap().0;
        assert_eq!(key.meter.as_str(), "llm_tokens");
        assert_eq!(TotalKey::of(&claude).unwrap().0, key);
        let room = Decimal::from(1_000_000_000_000_000_000u64);
        let a = admit([(0, &gpt), (1, &claude)], |k| {
            assert_eq!(k.meter.as_str(), "llm_tokens", "asked by series");
            room
        });
        assert_eq!(a.refused, vec![1]);
        assert_eq!(a.growth[&key], Quantity::parse(six).unwrap().value());
        assert_eq!(needs([&gpt, &claude]).len(), 1);
    }

    proptest! {
        /// Whatever the room and the quantities, what is admitted never exceeds the room,
        /// and every refused event would not have fitted when it came.
        #[test]
        fn admitted_sums_stay_within_the_room(
            room in 0u64..5_000,
            qs in proptest::collection::vec(0u64..2_000, 0..40),
        ) {
            let events: Vec<Event> = qs.iter().enumerate().map(|(i, q)| {
                let mut e = event("o1", "tokens", Aggregation::Sum, &q.to_string(), 1);
                e.id = EventId::parse(&format!("p{i}")).unwrap();
                e
            }).collect();
            let a = admit(events.iter().enumerate(), |_| Decimal::from(room));
            let grown = a.growth.values().copied().sum::<Decimal>();
            prop_assert!(grown <= Decimal::from(room));
            let mut used = Decimal::ZERO;
            for (i, q) in qs.iter().enumerate() {
                let q = Decimal::from(*q);
                if a.refused.contains(&i) {
                    prop_assert!(used + q > Decimal::from(room));
                } else {
                    used += q;
                }
            }
            prop_assert_eq!(used, grown);
        }
    }
}
