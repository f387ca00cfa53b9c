//! The meter catalogue: what can be measured, which field of an event holds the amount
//! ([`ValueSource`]), and how events combine into a counter.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ids::MeterName;

/// How a meter's events combine within a counter bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Aggregation {
    /// Adds the quantities.
    Sum,
    /// Counts events, ignoring their quantity.
    Count,
    /// Keeps the largest quantity seen (for example peak storage over a month).
    Max,
    /// Keeps the quantity of the event with the latest timestamp (ties: the larger quantity,
    /// so the result does not depend on arrival order).
    Latest,
    /// Counts distinct values of one property.
    UniqueCount {
        /// The property whose distinct values are counted.
        property: String,
    },
    /// Integrates readings over time (`time_weighted_sum`): each event is a reading that
    /// holds from its timestamp until the next one, and a period's figure is value × hours
    /// (GB-hours from storage readings); see [`crate::time_weighted`]. The counters keep
    /// the reading as a `latest` cell; the readings themselves go to a
    /// [`crate::ports::ReadingStore`]. No dimensions and no hard limits: a GB-hours figure
    /// is known only after the fact.
    TimeWeightedSum,
}

impl Aggregation {
    /// The aggregation's name in the catalogue file (`sum`, `time_weighted_sum`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Aggregation::Sum => "sum",
            Aggregation::Count => "count",
            Aggregation::Max => "max",
            Aggregation::Latest => "latest",
            Aggregation::UniqueCount { .. } => "unique_count",
            Aggregation::TimeWeightedSum => "time_weighted_sum",
        }
    }
}

/// Most segments a meter's property path may have after `properties.` (`properties.a.b.c.d`).
/// Bounded so that reading an event's value is a short walk, and kept within
/// [`crate::event::MAX_PROPERTIES_DEPTH`] so every path can exist in an accepted event.
pub const MAX_VALUE_PATH_SEGMENTS: usize = 4;

/// Longest segment of a property path; the same bound as a property key
/// ([`crate::event::MAX_PROPERTY_KEY_LEN`]).
pub const MAX_VALUE_PATH_SEGMENT_LEN: usize = 64;

/// Where a meter reads an event's amount from: the event's `quantity` (every built-in
/// meter), or a number inside its `properties` (`properties.tokens`,
/// `properties.usage.output_tokens`), for events that carry several amounts or come from a
/// producer that cannot fill `quantity`.
///
/// Ingest resolves it: the amount read becomes the queued event's `quantity`, so the
/// aggregator, the stores and billing never need to know which field it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ValueSource {
    /// The event's `quantity` field.
    #[default]
    Quantity,
    /// A property path: the keys to follow from `properties` down to a number. Each
    /// segment is 1 to [`MAX_VALUE_PATH_SEGMENT_LEN`] bytes of `A-Z a-z 0-9 _ -` (so a dot
    /// always separates segments), at most [`MAX_VALUE_PATH_SEGMENTS`] of them.
    Property(Vec<String>),
}

impl ValueSource {
    /// Parses `quantity` or `properties.KEY[.KEY...]`; the error is a sentence naming
    /// the rule broken.
    pub fn parse(text: &str) -> Result<ValueSource, String> {
        if text == "quantity" {
            return Ok(ValueSource::Quantity);
        }
        let Some(rest) = text.strip_prefix("properties.") else {
            return Err(format!(
                "must be \"quantity\" or a property path like \"properties.tokens\", got {:?}",
                truncate(text, 80)
            ));
        };
        let segments: Vec<&str> = rest.split('.').collect();
        if segments.len() > MAX_VALUE_PATH_SEGMENTS {
            return Err(format!(
                "a property path may have at most {MAX_VALUE_PATH_SEGMENTS} keys after \
                 \"properties.\", got {}",
                segments.len()
            ));
        }
        for s in &segments {
            if s.is_empty()
                || s.len() > MAX_VALUE_PATH_SEGMENT_LEN
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "each key of a property path must be 1 to {MAX_VALUE_PATH_SEGMENT_LEN} \
                     characters of A-Z, a-z, 0-9, _ and -, got {:?}",
                    truncate(s, 80)
                ));
            }
        }
        Ok(ValueSource::Property(
            segments.into_iter().map(str::to_owned).collect(),
        ))
    }

    /// The path as written in the catalogue and named in errors (`properties.tokens`).
    pub fn path(&self) -> String {
        match self {
            ValueSource::Quantity => "quantity".to_owned(),
            ValueSource::Property(keys) => format!("properties.{}", keys.join(".")),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

string_conversions!(ValueSource, String, ValueSource::parse, |v: ValueSource| v
    .path());

impl std::fmt::Display for ValueSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.path())
    }
}

/// A meter: a name, a unit and an aggregation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meter {
    /// The meter's name, as events give it.
    pub name: MeterName,
    /// Unit shown on reports and dashboards.
    pub unit: String,
    /// How events combine.
    pub aggregation: Aggregation,
    /// Quantity assumed when an event leaves it out. Only meters that count calls have one
    /// (`api_calls` counts 1 per call unless the client pre-counted); elsewhere a missing
    /// quantity is refused, because guessing a storage size or a duration would be wrong.
    #[serde(default)]
    pub default_quantity: Option<Decimal>,
    /// Which field of an event holds the amount (`quantity` unless the catalogue says
    /// otherwise; a missing field in stored data means `quantity`, as before this existed).
    #[serde(default)]
    pub value: ValueSource,
    /// The properties the meter's counters are split by, and the bound on how many series
    /// an org may make in a month (none in stored data written before dimensions existed).
    #[serde(default)]
    pub dimensions: crate::dimension::Dimensions,
}

/// The meters an organization can send events for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterCatalogue {
    meters: BTreeMap<MeterName, Meter>,
}

impl MeterCatalogue {
    /// Builds a catalogue from a list of meters (later entries replace earlier ones).
    pub fn new(meters: impl IntoIterator<Item = Meter>) -> Self {
        MeterCatalogue {
            meters: meters.into_iter().map(|m| (m.name.clone(), m)).collect(),
        }
    }

    /// Looks a meter up by name.
    pub fn get(&self, name: &str) -> Option<&Meter> {
        // Meter names are plain ASCII, so a borrowed lookup by &str would need a Borrow impl;
        // the catalogue is tiny, so a linear scan costs nothing measurable.
        self.meters.values().find(|m| m.name.as_str() == name)
    }

    /// All meters, in name order.
    pub fn meters(&self) -> impl Iterator<Item = &Meter> {
        self.meters.values()
    }

    /// Names of all meters, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.meters.keys().map(MeterName::as_str).collect()
    }
}

// `MeterCatalogue::default()` (the built-in meters) lives in `catalogue`: the meters are
// data (`core/catalogue.json`).

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalogue_has_the_four_meters() {
        let c = MeterCatalogue::default();
        assert_eq!(
            c.names(),
            [
                "api_calls",
                "bandwidth_bytes",
                "compute_minutes",
                "storage_bytes"
            ]
        );
        assert_eq!(
            c.get("storage_bytes").map(|m| &m.aggregation),
            Some(&Aggregation::Max)
        );
        assert!(c.get("nope").is_none());
        assert!(c.meters().all(|m| m.value == ValueSource::Quantity));
    }

    #[test]
    fn value_paths_are_bounded_and_round_trip() {
        assert_eq!(ValueSource::parse("quantity"), Ok(ValueSource::Quantity));
        let tokens = ValueSource::parse("properties.tokens").unwrap();
        assert_eq!(tokens, ValueSource::Property(vec!["tokens".into()]));
        assert_eq!(tokens.path(), "properties.tokens");
        let deep = ValueSource::parse("properties.usage.out_put.x-1.d").unwrap();
        assert_eq!(deep.path(), "properties.usage.out_put.x-1.d");
        let json = serde_json::to_string(&deep).unwrap();
        assert_eq!(json, "\"properties.usage.out_put.x-1.d\"");
        assert_eq!(serde_json::from_str::<ValueSource>(&json).unwrap(), deep);
        for bad in [
            "",
            "tokens",
            "properties",
            "properties.",
            "properties.a..b",
            "properties.a.b.c.d.e",
            "properties.a b",
            "properties.é",
            "data.tokens",
        ] {
            assert!(ValueSource::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("properties.{}", "k".repeat(MAX_VALUE_PATH_SEGMENT_LEN + 1));
        assert!(ValueSource::parse(&long).is_err());
        let longest = format!("properties.{}", "k".repeat(MAX_VALUE_PATH_SEGMENT_LEN));
        assert!(ValueSource::parse(&longest).is_ok());
    }
}
