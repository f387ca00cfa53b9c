//! Bills a customer can audit: the canonical text of a ledger entry, and the digest and
//! recomputed quantity of a report line, from the entries that make it up.
//!
//! It lives in core because three places must agree on it to the byte: month close, which
//! records each line's digest and event count (`tally_billing::digest`); `tally export
//! --ledger` and the API's line-events route, which hand the entries out; and `tally
//! verify-report`, which recomputes a line from an export. `docs/audit.md` specifies the
//! encoding for people who verify a bill with their own tools.
//!
//! # The entries of a line
//!
//! A report line for meter `M` of org `O` for month `P` bills the org-wide month counter of
//! `M`, which is the aggregation of exactly the ledger entries of `O` whose meter is `M` and
//! whose timestamp falls in `P` (the ledger holds each event id once: a duplicate is not an
//! entry, and an event refused as a counter overflow never became one).
//!
//! # The canonical entry
//!
//! One line of UTF-8 JSON, no whitespace, keys in this order: `id`, `org`, `project`,
//! `meter`, `aggregation` (`sum`, `count`, `max`, `latest` or `unique_count:<property>`),
//! `quantity` (the decimal normalized: no trailing zeros, no exponent, as a JSON string),
//! `timestamp` (RFC 3339 UTC with nine fraction digits and `Z`) and `properties` (an object
//! whose keys are sorted by their UTF-8 bytes, at every depth). Strings are escaped as
//! `serde_json` writes them.
//!
//! # The digest
//!
//! `sha256:` then the hex SHA-256 of the concatenation of each entry's SHA-256 (32 raw bytes
//! of the canonical line, without a newline), sorted ascending. Sorting the entry hashes
//! makes the digest independent of the order a store pages entries in, and costs 32 bytes
//! of memory per entry (32 MB for a million) rather than the entries themselves.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::event::Event;
use crate::meter::Aggregation;

/// The prefix of every digest this module writes: the algorithm, so a later scheme can be
/// told apart.
pub const DIGEST_PREFIX: &str = "sha256:";

/// An aggregation as the canonical entry names it.
pub fn aggregation_text(a: &Aggregation) -> String {
    match a {
        Aggregation::Sum => "sum".to_owned(),
        Aggregation::Count => "count".to_owned(),
        Aggregation::Max => "max".to_owned(),
        Aggregation::Latest => "latest".to_owned(),
        Aggregation::UniqueCount { property } => format!("unique_count:{property}"),
        Aggregation::TimeWeightedSum => "time_weighted_sum".to_owned(),
    }
}

/// Parses [`aggregation_text`]'s form back; `None` for anything else.
pub fn parse_aggregation(text: &str) -> Option<Aggregation> {
    Some(match text {
        "sum" => Aggregation::Sum,
        "count" => Aggregation::Count,
        "max" => Aggregation::Max,
        "latest" => Aggregation::Latest,
        "time_weighted_sum" => Aggregation::TimeWeightedSum,
        other => {
            let property = other.strip_prefix("unique_count:")?;
            if property.is_empty() {
                return None;
            }
            Aggregation::UniqueCount {
                property: property.to_owned(),
            }
        }
    })
}

/// A timestamp as the canonical entry writes it: RFC 3339, UTC, nine fraction digits.
pub fn timestamp_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// A quantity as the canonical entry writes it: normalized (`1.50` is `1.5`).
pub fn quantity_text(q: Decimal) -> String {
    q.normalize().to_string()
}

/// `value` as compact JSON with every object's keys sorted by their UTF-8 bytes.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

/// [`canonical_json`] of an object.
pub fn canonical_object(map: &Map<String, Value>) -> String {
    let mut out = String::new();
    write_object(map, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => write_object(map, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn write_object(map: &Map<String, Value>, out: &mut String) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    out.push('{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key.clone()).to_string());
        out.push(':');
        if let Some(v) = map.get(key) {
            write_canonical(v, out);
        }
    }
    out.push('}');
}

/// The canonical line of one ledger entry (see the [module doc](self)), without a newline.
pub fn canonical_entry(e: &Event) -> String {
    let s = |text: &str| Value::String(text.to_owned()).to_string();
    let mut out = String::with_capacity(256);
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "{{\"id\":{},\"org\":{},\"project\":{},\"meter\":{},\"aggregation\":{},\"quantity\":{},\"timestamp\":{},\"properties\":{}}}",
        s(e.id.as_str()),
        s(e.org_id.as_str()),
        s(e.project_id.as_str()),
        s(e.meter.as_str()),
        s(&aggregation_text(&e.aggregation)),
        s(&quantity_text(e.quantity.value())),
        s(&timestamp_text(&e.timestamp)),
        canonical_object(&e.properties),
    );
    out
}

/// Why a line's quantity could not be recomputed from its entries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TallyError {
    /// The entries carry more than one aggregation (the meter's changed mid-month); the
    /// quantity depends on the order they were applied in, which the ledger does not keep.
    #[error("the entries aggregate two ways ({first} and {second})")]
    MixedAggregations {
        /// The first aggregation met.
        first: String,
        /// Another one.
        second: String,
    },
    /// A `sum` went past what a decimal holds (the store refuses such events, so an export
    /// was edited).
    #[error("the quantities overflow a decimal")]
    Overflow,
}

/// The digest, event count and aggregate of one report line, fed its entries one at a
/// time in any order.
#[derive(Debug, Clone, Default)]
pub struct LineTally {
    hashes: Vec<[u8; 32]>,
    aggregation: Option<Aggregation>,
    mixed: Option<TallyError>,
    sum: Decimal,
    overflow: bool,
    max: Option<Decimal>,
    latest: Option<(DateTime<Utc>, Decimal)>,
    uniques: BTreeSet<String>,
}

impl LineTally {
    /// An empty line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one entry.
    pub fn add(&mut self, e: &Event) {
        self.hashes
            .push(Sha256::digest(canonical_entry(e).as_bytes()).into());
        match &self.aggregation {
            None => self.aggregation = Some(e.aggregation.clone()),
            Some(a) if *a != e.aggregation && self.mixed.is_none() => {
                self.mixed = Some(TallyError::MixedAggregations {
                    first: aggregation_text(a),
                    second: aggregation_text(&e.aggregation),
                });
            }
            Some(_) => {}
        }
        let q = e.quantity.value();
        match &e.aggregation {
            Aggregation::Sum => match self.sum.checked_add(q) {
                Some(s) => self.sum = s,
                None => self.overflow = true,
            },
            Aggregation::Count => self.sum += Decimal::ONE,
            Aggregation::Max => self.max = Some(self.max.map_or(q, |m| m.max(q))),
            // Ties on time go to the larger value, as the counters break them. A
            // time-weighted meter's counter holds its reading the same way.
            Aggregation::Latest | Aggregation::TimeWeightedSum => {
                if self.latest.is_none_or(|cur| (e.timestamp, q) > cur) {
                    self.latest = Some((e.timestamp, q));
                }
            }
            Aggregation::UniqueCount { .. } => {
                if let Some(v) = e.unique_value() {
                    self.uniques.insert(v.into_owned());
                }
            }
        }
    }

    /// How many entries were added.
    pub fn event_count(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// The line's quantity recomputed from its entries, as the month counter aggregates
    /// them; 0 for a line without entries.
    pub fn quantity(&self) -> Result<Decimal, TallyError> {
        if let Some(e) = &self.mixed {
            return Err(e.clone());
        }
        Ok(match &self.aggregation {
            None => Decimal::ZERO,
            Some(Aggregation::Sum) if self.overflow => return Err(TallyError::Overflow),
            Some(Aggregation::Sum | Aggregation::Count) => self.sum,
            Some(Aggregation::Max) => self.max.unwrap_or_default(),
            Some(Aggregation::Latest | Aggregation::TimeWeightedSum) => {
                self.latest.map(|(_, v)| v).unwrap_or_default()
            }
            Some(Aggregation::UniqueCount { .. }) => Decimal::from(self.uniques.len()),
        })
    }

    /// The line's digest (see the [module doc](self)).
    pub fn digest(&self) -> String {
        let mut sorted = self.hashes.clone();
        sorted.sort_unstable();
        let mut h = Sha256::new();
        for entry in &sorted {
            h.update(entry);
        }
        format!("{DIGEST_PREFIX}{}", hex::encode(h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::Quantity;
    use crate::ids::{EventId, MeterName, OrgId, ProjectId};
    use chrono::TimeZone;

    fn event(id: &str, aggregation: Aggregation, q: &str, secs: i64, props: Value) -> Event {
        Event {
            org_id: OrgId::parse("org_a").unwrap(),
            id: EventId::parse(id).unwrap(),
            project_id: ProjectId::parse("prj_a").unwrap(),
            meter: MeterName::parse("m").unwrap(),
            aggregation,
            quantity: Quantity::parse(q).unwrap(),
            timestamp: Utc.timestamp_opt(1_700_000_000 + secs, 5).unwrap(),
            properties: props.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn the_canonical_entry_is_fixed_text() {
        let e = event(
            "e1",
            Aggregation::UniqueCount {
                property: "user".into(),
            },
            "1.50",
            0,
            serde_json::json!({"z": 1, "user": "u\"1", "a": {"y": [2, {"c": 1, "b": 0}]}}),
        );
        assert_eq!(
            canonical_entry(&e),
            r#"{"id":"e1","org":"org_a","project":"prj_a","meter":"m","aggregation":"unique_count:user","quantity":"1.5","timestamp":"2023-11-14T22:13:20.000000005Z","properties":{"a":{"y":[2,{"b":0,"c":1}]},"user":"u\"1","z":1}}"#
        );
    }

    #[test]
    fn the_digest_ignores_order_and_sees_any_change() {
        let es: Vec<Event> = (0..5)
            .map(|i| event(&format!("e{i}"), Aggregation::Sum, "2", i, Value::Null))
            .collect();
        let mut a = LineTally::new();
        es.iter().for_each(|e| a.add(e));
        let mut b = LineTally::new();
        es.iter().rev().for_each(|e| b.add(e));
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.quantity().unwrap(), Decimal::from(10));
        assert_eq!(a.event_count(), 5);
        assert!(a.digest().starts_with(DIGEST_PREFIX));

        let mut changed = es.clone();
        changed[2].timestamp += chrono::TimeDelta::nanoseconds(1);
        let mut c = LineTally::new();
        changed.iter().for_each(|e| c.add(e));
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.quantity(), c.quantity());

        let empty = LineTally::new();
        assert_eq!(empty.quantity().unwrap(), Decimal::ZERO);
        assert_ne!(empty.digest(), a.digest());
    }

    #[test]
    fn quantities_aggregate_as_the_counters_do() {
        let tally = |agg: Aggregation, items: &[(&str, i64, &str)]| {
            let mut t = LineTally::new();
            for (i, (q, secs, user)) in items.iter().enumerate() {
                t.add(&event(
                    &format!("e{i}"),
                    agg.clone(),
                    q,
                    *secs,
                    serde_json::json!({ "user": user }),
                ));
            }
            t.quantity().unwrap()
        };
        let items = [("3", 5, "a"), ("7", 1, "b"), ("2", 5, "a"), ("4", 9, "c")];
        assert_eq!(tally(Aggregation::Sum, &items), Decimal::from(16));
        assert_eq!(tally(Aggregation::Count, &items), Decimal::from(4));
        assert_eq!(tally(Aggregation::Max, &items), Decimal::from(7));
        assert_eq!(tally(Aggregation::Latest, &items), Decimal::from(4));
        // A tie on the latest time goes to the larger value.
        assert_eq!(
            tally(Aggregation::Latest, &[("3", 5, "a"), ("8", 5, "b")]),
            Decimal::from(8)
        );
        let unique = Aggregation::UniqueCount {
            property: "user".into(),
        };
        assert_eq!(tally(unique, &items), Decimal::from(3));

        let mut mixed = LineTally::new();
        mixed.add(&event("a", Aggregation::Sum, "1", 0, Value::Null));
        mixed.add(&event("b", Aggregation::Max, "1", 0, Value::Null));
        assert!(matches!(
            mixed.quantity(),
            Err(TallyError::MixedAggregations { .. })
        ));
    }

    #[test]
    fn aggregations_round_trip_their_text() {
        for a in [
            Aggregation::Sum,
            Aggregation::Count,
            Aggregation::Max,
            Aggregation::Latest,
            Aggregation::UniqueCount {
                property: "p:q".into(),
            },
            Aggregation::TimeWeightedSum,
        ] {
            assert_eq!(parse_aggregation(&aggregation_text(&a)), Some(a));
        }
        assert_eq!(parse_aggregation("unique_count:"), None);
        assert_eq!(parse_aggregation("avg"), None);
    }
}
