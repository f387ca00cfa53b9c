//! The cardinality bound of dimensioned meters, held at ingest: before an event that makes
//! a new series of its meter (`llm_tokens{model=gpt-4}`) is accepted, the series is
//! registered in the [`SeriesRegistry`] under the meter's `max_series` for the org and
//! month; past the bound the event is refused (`dimension_cardinality_exceeded`) and the
//! rest of its batch goes on.
//!
//! It is held here and not in the aggregator because a `202` promises the event will be
//! counted: the aggregator must never refuse or merge what ingest accepted. Series already
//! registered are remembered in a cache (a series is never unregistered within its month),
//! so only the first event of a new series costs a conditional write. See
//! `docs/meters-dimensions.md`.

use std::sync::Arc;

use chrono::TimeDelta;
use tally_core::event::{ErrorCode, EventError};
use tally_core::meter::MeterCatalogue;
use tally_core::ports::{Clock, NewSeries, Registration, SeriesRegistry, StoreError};
use tally_core::{Event, MeterName, Month, OrgId};
use tally_http::cache::TtlCache;

/// How long a registered series is remembered. A series stays registered for its whole
/// month, so this only bounds how long a cold entry holds memory.
const KNOWN_TTL: TimeDelta = TimeDelta::hours(6);

/// Counts events refused by a series bound (labelled by meter).
pub const METRIC_SERIES_REFUSED: &str = "tally_ingest_series_refused_total";

/// The registry and the series this process knows are registered.
pub struct SeriesGuard {
    registry: Option<Arc<dyn SeriesRegistry>>,
    clock: Arc<dyn Clock>,
    known: TtlCache<(OrgId, MeterName, Month), ()>,
}

impl SeriesGuard {
    /// A guard over `registry` (none: dimensioned events are refused) with room for
    /// `capacity` known series.
    pub fn new(
        registry: Option<Arc<dyn SeriesRegistry>>,
        clock: Arc<dyn Clock>,
        capacity: usize,
    ) -> Self {
        SeriesGuard {
            registry,
            clock,
            known: TtlCache::new(capacity),
        }
    }

    /// One answer per event: `None` to go on, or why the event is refused. Registers each
    /// new series once (in event order, so of a batch's new series the first ones fill the
    /// bound); a store failure is a `503` for the whole request, as other lookups are.
    ///
    /// An event stamped in `other_month`'s month (a late event of the previous month, when
    /// another catalogue version was in force then) is held to that month's meters and
    /// bounds, as it was validated.
    pub async fn check(
        &self,
        catalogue: &MeterCatalogue,
        other_month: Option<(Month, &MeterCatalogue)>,
        events: &[Event],
    ) -> Result<Vec<Option<EventError>>, StoreError> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let meters = match other_month {
                Some((month, meters)) if Month::of(e.timestamp) == month => meters,
                _ => catalogue,
            };
            out.push(self.check_one(meters, e).await?);
        }
        Ok(out)
    }

    async fn check_one(
        &self,
        catalogue: &MeterCatalogue,
        e: &Event,
    ) -> Result<Option<EventError>, StoreError> {
        if !e.meter.is_series() {
            return Ok(None);
        }
        let Some(meter) = catalogue.get(e.meter.base()) else {
            return Ok(None);
        };
        let month = Month::of(e.timestamp);
        let key = (e.org_id.clone(), e.meter.clone(), month);
        let now = self.clock.now();
        if self.known.get(&key, now).is_some() {
            return Ok(None);
        }
        let bound = meter.dimensions.max_series;
        let Some(registry) = &self.registry else {
            return Ok(Some(refusal(
                meter,
                e,
                bound,
                "this ingest keeps no series registry",
            )));
        };
        match registry
            .register_series(&NewSeries::new(&e.org_id, month, &e.meter, bound))
            .await?
        {
            Registration::New | Registration::Known => {
                self.known.insert_for(key, (), KNOWN_TTL, now);
                Ok(None)
            }
            Registration::Full => {
                metrics::counter!(METRIC_SERIES_REFUSED, "meter" => meter.name.as_str().to_owned())
                    .increment(1);
                Ok(Some(refusal(
                    meter,
                    e,
                    bound,
                    &format!("the org has its {bound} series of it for {month} already"),
                )))
            }
        }
    }
}

/// The refusal of `e`: names the meter, the bound, and the new series it would make, as
/// each dimension's property with the value the event gave it (the series key too), so the
/// sender sees which value is the new one whatever dimension it is on. `field` stays the
/// first dimension's property (one field per error; the message names them all).
fn refusal(meter: &tally_core::Meter, e: &Event, bound: u32, why: &str) -> EventError {
    let field = meter
        .dimensions
        .keys
        .first()
        .map(|d| d.property.path())
        .unwrap_or_default();
    let values = e.meter.series_values();
    let series = meter
        .dimensions
        .keys
        .iter()
        .map(|d| {
            let value = values
                .iter()
                .find(|(name, _)| *name == d.name.as_str())
                .map_or("", |(_, v)| v);
            format!("{}={value:?}", d.property.path())
        })
        .collect::<Vec<_>>()
        .join(", ");
    EventError::new(
        ErrorCode::DimensionCardinalityExceeded,
        field,
        format!(
            "meter {:?} may have at most {bound} series per org and month; the new series \
             {series} ({}) would be one more and {why}",
            meter.name.as_str(),
            e.meter.as_str()
        ),
    )
}
