//! The meters `tally import` validates an event with: those of the catalogue version in
//! force in the event's own month (else the `--catalogue` file or the built-in one), as
//! month close prices that month ([`versions::catalogue_for`]). An import carries history,
//! so one file may span versions: an event is held to the meters of its month, never to
//! the version in force when the import runs. Each month's meters are read once (a listing
//! and a version read) and kept, at most [`MAX_MONTHS`] months at a time.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tally_billing::Catalogue;
use tally_billing::versions;
use tally_core::event::{Event, EventError, ValidationContext};
use tally_core::meter::MeterCatalogue;
use tally_core::period::Month;
use tally_core::ports::CatalogueStore;

/// Most months whose meters are kept at once; past it the kept ones are dropped and read
/// again when needed (a file in time order never gets there).
pub const MAX_MONTHS: usize = 120;

/// The meters of each month an import has met. See the [module docs](self).
pub struct MonthMeters {
    versions: Arc<dyn CatalogueStore>,
    fallback: Catalogue,
    kept: HashMap<Month, Arc<MeterCatalogue>>,
    /// The month of the last event validated: the first guess for the next line.
    last: Option<Month>,
}

impl MonthMeters {
    /// Meters from the stored `versions`, else `fallback` (the `--catalogue` file or the
    /// built-in catalogue).
    pub fn new(versions: Arc<dyn CatalogueStore>, fallback: Catalogue) -> Self {
        MonthMeters {
            versions,
            fallback,
            kept: HashMap::new(),
            last: None,
        }
    }

    /// The meters in force in `month`.
    pub async fn of(&mut self, month: Month) -> anyhow::Result<Arc<MeterCatalogue>> {
        if let Some(meters) = self.kept.get(&month) {
            return Ok(meters.clone());
        }
        let priced = versions::catalogue_for(self.versions.as_ref(), &self.fallback, month)
            .await
            .with_context(|| format!("cannot find the catalogue of {month}"))?;
        let meters = Arc::new(priced.catalogue.meter_catalogue());
        if self.kept.len() >= MAX_MONTHS {
            self.kept.clear();
        }
        self.kept.insert(month, meters.clone());
        Ok(meters)
    }

    /// Validates one line (`json`) of `org`'s events at `now` with the meters of the month
    /// it is stamped in, and returns those meters with the outcome. The line is validated
    /// with the previous line's month's meters first (or the current month's), and again
    /// with its own month's when it turns out to be stamped in another month: one
    /// validation per line for a file in time order.
    pub async fn validate(
        &mut self,
        org: &tally_core::OrgId,
        json: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<(Arc<MeterCatalogue>, Result<Event, EventError>)> {
        let guess = self.last.unwrap_or_else(|| Month::of(now));
        let check = |meters: &MeterCatalogue| {
            let ctx = ValidationContext {
                org_id: org,
                catalogue: meters,
                now,
                other_month: None,
            };
            Event::validate(json, &ctx)
        };
        let meters = self.of(guess).await?;
        let checked = check(&meters);
        let stamped = match &checked {
            Ok(event) => Some(Month::of(event.timestamp)),
            Err(_) => stamped_month(json),
        };
        let Some(month) = stamped.filter(|m| *m != guess) else {
            return Ok((meters, checked));
        };
        self.last = Some(month);
        let meters = self.of(month).await?;
        let checked = check(&meters);
        Ok((meters, checked))
    }
}

/// The month a line's `timestamp` (RFC 3339) falls in, read on its own: how a line that
/// failed validation is matched with its month's meters. `None` without a readable one
/// (validation reports that itself).
fn stamped_month(json: &str) -> Option<Month> {
    #[derive(Deserialize)]
    struct Stamp {
        timestamp: Option<String>,
    }
    let stamp: Stamp = serde_json::from_str(json).ok()?;
    let at = DateTime::parse_from_rfc3339(&stamp.timestamp?).ok()?;
    Some(Month::of(at.with_timezone(&Utc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_s_month_is_read_from_its_timestamp_alone() {
        let line = r#"{"id": "a", "meter": "nope", "timestamp": "2026-03-31T23:59:59Z"}"#;
        assert_eq!(stamped_month(line), Month::parse("2026-03").ok());
        let offset = r#"{"timestamp": "2026-04-01T00:30:00+02:00"}"#;
        assert_eq!(stamped_month(offset), Month::parse("2026-03").ok());
        assert_eq!(stamped_month(r#"{"timestamp": "yesterday"}"#), None);
        assert_eq!(stamped_month("not json"), None);
    }
}
