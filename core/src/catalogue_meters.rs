//! The catalogue's checks of a meter's shape that depend on its aggregation: dimensions
//! and `max_series` ([`crate::dimension`]), and what a `time_weighted_sum` meter may not
//! have (dimensions, a default quantity, a hard limit). A child of [`super`] so that it
//! reports through the same [`Checker`].

use super::{Checker, RawDimension};
use crate::dimension::{
    self, DEFAULT_MAX_SERIES, Dimension, Dimensions, MAX_DIMENSIONS, MAX_MAX_SERIES,
};
use crate::meter::ValueSource;

impl Checker {
    /// A meter's `dimensions` and `max_series` (see [`crate::dimension`]).
    pub(super) fn dimensions(
        &mut self,
        path: &str,
        aggregation: &str,
        raw: Option<Vec<RawDimension>>,
        max_series: Option<i64>,
    ) -> Option<Dimensions> {
        let before = self.problems.len();
        let raw = raw.unwrap_or_default();
        let list_path = format!("{path}.dimensions");
        if raw.len() > MAX_DIMENSIONS {
            self.bad(
                &list_path,
                format!(
                    "a meter may have at most {MAX_DIMENSIONS} dimensions (each multiplies its \
                     series), got {}",
                    raw.len()
                ),
            );
        }
        // Only sums and counts add up over series: distinct values would need every series'
        // markers, and a gauge's total is not one series' reading (eu 100 GB + us 1 GB). A
        // time-weighted meter's readings are kept per (org, project, meter) with no series.
        if !raw.is_empty()
            && matches!(
                aggregation,
                "unique_count" | "max" | "latest" | "time_weighted_sum"
            )
        {
            let why = "only sum and count meters add up over their series";
            let message = format!("a {aggregation} meter cannot have dimensions: {why}");
            self.bad(&list_path, message);
        }
        let mut keys: Vec<Dimension> = Vec::with_capacity(raw.len());
        for (i, d) in raw.into_iter().enumerate() {
            let at = format!("{list_path}[{i}]");
            if let Err(message) = dimension::check_name(&d.name) {
                self.bad(format!("{at}.name"), message);
            } else if keys.iter().any(|k| k.name == d.name) {
                self.bad(
                    format!("{at}.name"),
                    format!("dimension {:?} is declared twice", d.name),
                );
            }
            let property = match ValueSource::parse(&d.property) {
                Ok(p @ ValueSource::Property(_)) => Some(p),
                Ok(ValueSource::Quantity) => {
                    self.bad(
                        format!("{at}.property"),
                        "must be a property path like \"properties.model\", not quantity",
                    );
                    None
                }
                Err(message) => {
                    self.bad(format!("{at}.property"), message);
                    None
                }
            };
            if let Some(property) = property {
                keys.push(Dimension {
                    name: d.name,
                    property,
                });
            }
        }
        let max_path = format!("{path}.max_series");
        let max_series = match max_series {
            None => DEFAULT_MAX_SERIES,
            Some(n) if (1..=i64::from(MAX_MAX_SERIES)).contains(&n) && !keys.is_empty() => {
                u32::try_from(n).unwrap_or(MAX_MAX_SERIES)
            }
            Some(_) if keys.is_empty() => {
                self.bad(
                    &max_path,
                    "is only allowed on a meter with dimensions (a meter without them has one \
                     series)",
                );
                DEFAULT_MAX_SERIES
            }
            Some(n) => {
                self.bad(
                    &max_path,
                    format!("must be 1 to {MAX_MAX_SERIES} series per org and month, got {n}"),
                );
                DEFAULT_MAX_SERIES
            }
        };
        (self.problems.len() == before).then_some(Dimensions { keys, max_series })
    }
}

impl Checker {
    /// What a `time_weighted_sum` meter may not have besides dimensions (checked with
    /// them): a `default_quantity`, since a reading guessed for an event that gives none
    /// would be charged for every hour until the next reading.
    pub(super) fn time_weighted_meter(&mut self, path: &str, default_quantity: bool) {
        if default_quantity {
            self.bad(
                format!("{path}.default_quantity"),
                "a time_weighted_sum meter reads a value from every event; a guessed reading \
                 would be charged until the next one",
            );
        }
    }

    /// A plan with `hard_usage_limits` may not give a `time_weighted_sum` meter an
    /// `included` amount: a hard limit refuses events past it at ingest, and a GB-hours
    /// figure is known only after the fact (a reading's cost depends on how long it holds).
    /// Without `included` the meter has no limit; entitlements answer `allowed` for it.
    pub(super) fn time_weighted_limit(&mut self, meter_path: &str, hard: bool, included: bool) {
        if hard && included {
            self.bad(
                format!("{meter_path}.included"),
                "a time_weighted_sum meter cannot have a hard limit (this plan has \
                 hard_usage_limits): its value × hours figure is known only after the fact; \
                 leave included out, or set hard_usage_limits to false to bill it as overage",
            );
        }
    }
}
