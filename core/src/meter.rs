//! The meter catalogue: what can be measured, which field of an event holds the amount
//! ([`ValueSource`], defined in [`crate::value_source`]), and how events combine into a
//! counter.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::dimension::Dimensions;
use crate::ids::MeterName;
pub use crate::value_source::{MAX_VALUE_PATH_SEGMENT_LEN, MAX_VALUE_PATH_SEGMENTS, ValueSource};

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
    pub dimensions: Dimensions,
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
}
