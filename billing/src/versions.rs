//! Catalogue versions: publishing a new one (`tally catalogue apply`) and finding the one
//! that prices a month.
//!
//! # The versioning rule
//!
//! The store keeps numbered, immutable versions ([`tally_core::ports::CatalogueStore`]).
//! Each has an `effective_from` month, and the version that prices month M (and that ingest
//! enforces during M) is the highest-numbered version whose `effective_from` is not after M
//! ([`tally_core::ports::effective_version`]). With no version effective for M (an old
//! store, or a version that starts later), M is priced with the catalogue file
//! (`--catalogue`) or the built-in one, as before versions existed.
//!
//! A plan version used by a billed month is immutable: `effective_from` must be a month that
//! has not been billed, and every month before the current one may have been. So:
//!
//! - by default a new version applies from **the next month**: the month in progress keeps
//!   the prices its customers have been metered under, and edits apply from the next period;
//! - `--from YYYY-MM` may choose the current month (nothing of it is billed before it ends)
//!   or a later one, at most [`MAX_MONTHS_AHEAD`] ahead; an earlier month, or a month that
//!   is already closed, is refused.
//!
//! A new version may not change a meter's aggregation or the field it reads its amount from
//! (`value`), or remove a meter, while that meter
//! has counters in an open period (the current month, and the previous one until it is
//! closed): the counters were aggregated the old way and would be read the new way. The
//! check compares with the catalogue in force now and reads each org's open months'
//! counters (one read per org and open month; an operator command, not a hot path).
//!
//! Publishing is audited by the version itself: it records who applied it, when, and the
//! exact text with its digest, and it is never deleted (the per-org audit trail expires
//! after 90 days and belongs to one org, while a catalogue is global).

use chrono::{DateTime, Utc};
use tally_core::ports::{
    CatalogueStore, CatalogueVersion, OrgStore, StoreError, UsageStore, catalogue_digest,
    effective_version,
};
use tally_core::{CatalogueError, Granularity, MeterName, Month, OrgId};

use crate::catalogue::Catalogue;

/// How far ahead `--from` may schedule a version, in months.
pub const MAX_MONTHS_AHEAD: u32 = 24;

/// A catalogue together with the version it came from (`None`: the file or built-in one).
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The catalogue.
    pub catalogue: Catalogue,
    /// Its version number in the store, or `None` for the fallback.
    pub version: Option<u32>,
}

impl Versioned {
    /// Where its prices come from, as report lines record it (`catalogue_version`): the
    /// version number; else `builtin` when the fallback is the built-in catalogue, `file`
    /// when it is an operator's file (a file identical to the built-in one reads as
    /// `builtin`: its prices are the built-in ones).
    pub fn label(&self) -> String {
        match self.version {
            Some(v) => v.to_string(),
            None if Catalogue::builtin().is_ok_and(|b| b == self.catalogue) => "builtin".into(),
            None => "file".into(),
        }
    }
}

/// Why a stored version or a publish failed. Each variant says what the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The store could not be read or written; retrying may help.
    #[error("{what}: {source}")]
    Store {
        /// What was being done.
        what: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// A stored version no longer validates (a manual edit, or a build that reads the schema
    /// more strictly); the operator must apply a fixed one.
    #[error("stored catalogue version {version} is invalid: {source}")]
    Stored {
        /// The version number.
        version: u32,
        /// Why.
        #[source]
        source: CatalogueError,
    },
    /// The file to publish is not a valid catalogue (`tally catalogue check` says where).
    #[error(transparent)]
    Invalid(#[from] CatalogueError),
    /// `--from` is before the current month, too far ahead, or a closed (billed) month.
    #[error("cannot apply from {from}: {reason}")]
    BadFrom {
        /// The month asked for.
        from: Month,
        /// Why not.
        reason: String,
    },
    /// The new version changes how a meter aggregates, or removes it, while it has counters
    /// in an open period.
    #[error(
        "meter {meter} {change} while {org} has counters of it in the open period {period}; \
         its counters were aggregated the old way and would be read the new way. Publish the \
         change under a new meter name, or wait until {period} is closed and billed"
    )]
    LiveMeter {
        /// The meter.
        meter: MeterName,
        /// What the version does to it (`changes aggregation from sum to max`, `is removed`).
        change: String,
        /// An org with live counters of it.
        org: OrgId,
        /// The open month they are in.
        period: Month,
    },
    /// Another apply took the version number first; rerunning publishes after it.
    #[error("another apply published version {version} first; run the apply again")]
    Raced {
        /// The number that was taken.
        version: u32,
    },
}

fn store(what: impl Into<String>) -> impl FnOnce(StoreError) -> VersionError {
    let what = what.into();
    move |source| VersionError::Store { what, source }
}

/// Parses a stored version into a catalogue (it was valid when applied; checked again).
pub fn parse_version(v: &CatalogueVersion) -> Result<Catalogue, VersionError> {
    Catalogue::from_json(&v.body, &format!("version {}", v.version)).map_err(|source| {
        VersionError::Stored {
            version: v.version,
            source,
        }
    })
}

/// The catalogue that prices `month`: the version effective for it, or `fallback` (the
/// file or built-in catalogue) when none is.
pub async fn catalogue_for(
    versions: &dyn CatalogueStore,
    fallback: &Catalogue,
    month: Month,
) -> Result<Versioned, VersionError> {
    let listed = versions
        .list_catalogue_versions()
        .await
        .map_err(store("cannot list the catalogue versions"))?;
    read_version(versions, fallback, effective_version(&listed, month)).await
}

/// The catalogue in force in `month` if it is not version `current` (`None`: the fallback),
/// else `Ok(None)`: what a running process re-reads on an interval to pick up a published
/// version without a restart. Versions are immutable, so an unchanged number costs one
/// listing and no parse.
pub async fn changed_since(
    versions: &dyn CatalogueStore,
    fallback: &Catalogue,
    month: Month,
    current: Option<u32>,
) -> Result<Option<Versioned>, VersionError> {
    let listed = versions
        .list_catalogue_versions()
        .await
        .map_err(store("cannot list the catalogue versions"))?;
    let wanted = effective_version(&listed, month);
    if wanted == current {
        return Ok(None);
    }
    read_version(versions, fallback, wanted).await.map(Some)
}

/// Version `number` parsed, or `fallback` for `None`.
async fn read_version(
    versions: &dyn CatalogueStore,
    fallback: &Catalogue,
    number: Option<u32>,
) -> Result<Versioned, VersionError> {
    let Some(number) = number else {
        return Ok(Versioned {
            catalogue: fallback.clone(),
            version: None,
        });
    };
    let stored = versions
        .get_catalogue_version(number)
        .await
        .map_err(store(format!("cannot read catalogue version {number}")))?
        .ok_or_else(|| VersionError::Store {
            what: format!("catalogue version {number} was listed"),
            source: StoreError::NotFound {
                what: format!("catalogue version {number}"),
            },
        })?;
    Ok(Versioned {
        catalogue: parse_version(&stored)?,
        version: Some(number),
    })
}

/// The stores publishing reads and writes.
#[derive(Clone, Copy)]
pub struct PublishPorts<'a> {
    /// Where versions go.
    pub versions: &'a dyn CatalogueStore,
    /// Every org, for the live-meter check.
    pub tenants: &'a dyn OrgStore,
    /// Open periods' counters, and which periods are closed.
    pub usage: &'a dyn UsageStore,
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest<'a> {
    /// The catalogue JSON.
    pub text: &'a str,
    /// Where it came from (a path), for errors.
    pub origin: &'a str,
    /// `--from`; `None`: the month after `now`'s.
    pub from: Option<Month>,
    /// Who applies it (`cli`).
    pub actor: &'a str,
    /// Now, from the caller's clock.
    pub now: DateTime<Utc>,
}

/// Validates `request.text`, checks the versioning rule and the live meters (see the
/// [module doc](self)), and stores it as the version after the latest. Returns the stored
/// version.
pub async fn publish(
    ports: PublishPorts<'_>,
    fallback: &Catalogue,
    request: &PublishRequest<'_>,
) -> Result<CatalogueVersion, VersionError> {
    let new = Catalogue::from_json(request.text, request.origin)?;
    let current = Month::of(request.now);
    let from = request.from.unwrap_or_else(|| current.next());
    let mut limit = current;
    for _ in 0..MAX_MONTHS_AHEAD {
        limit = limit.next();
    }
    if from < current {
        return Err(VersionError::BadFrom {
            from,
            reason: format!(
                "it is before the current month {current}, and a billed month's prices never change"
            ),
        });
    }
    if from > limit {
        return Err(VersionError::BadFrom {
            from,
            reason: format!("it is more than {MAX_MONTHS_AHEAD} months ahead (at most {limit})"),
        });
    }
    if ports
        .usage
        .is_period_closed(from)
        .await
        .map_err(store(format!("cannot read whether {from} is closed")))?
    {
        return Err(VersionError::BadFrom {
            from,
            reason: "it is closed (billed), and a billed month's prices never change".into(),
        });
    }

    let in_force = catalogue_for(ports.versions, fallback, current).await?;
    check_live_meters(ports, &in_force.catalogue, &new, current).await?;

    let latest = ports
        .versions
        .list_catalogue_versions()
        .await
        .map_err(store("cannot list the catalogue versions"))?
        .last()
        .map_or(0, |v| v.version);
    let version = CatalogueVersion {
        version: latest + 1,
        effective_from: from,
        body: request.text.to_owned(),
        digest: catalogue_digest(request.text),
        applied_by: request.actor.to_owned(),
        applied_at: request.now,
    };
    let stored = ports
        .versions
        .put_catalogue_version(&version)
        .await
        .map_err(store(format!("cannot store version {}", version.version)))?;
    if !stored {
        return Err(VersionError::Raced {
            version: version.version,
        });
    }
    tracing::info!(
        version = version.version,
        effective_from = %from,
        digest = %version.digest,
        "published a catalogue version"
    );
    Ok(version)
}

/// What `new` does to each meter of `old` whose counters would be read differently:
/// `(meter, change)` for a changed aggregation or a removed meter.
pub fn meter_changes(old: &Catalogue, new: &Catalogue) -> Vec<(MeterName, String)> {
    old.meters()
        .filter_map(|m| match new.meter(&m.name) {
            None => Some((m.name.clone(), "is removed".to_owned())),
            Some(n) if n.aggregation != m.aggregation => Some((
                m.name.clone(),
                format!(
                    "changes aggregation from {} to {}",
                    aggregation_name(&m.aggregation),
                    aggregation_name(&n.aggregation)
                ),
            )),
            // Counters summed from one field would be topped up from another.
            Some(n) if n.value != m.value => Some((
                m.name.clone(),
                format!("changes its value from {} to {}", m.value, n.value),
            )),
            // Series keys would change shape inside a month: a group_by over it would split
            // one value's usage between the old and the new key.
            Some(n) if n.dimensions.keys != m.dimensions.keys => Some((
                m.name.clone(),
                format!(
                    "changes its dimensions from [{}] to [{}]",
                    m.dimensions.names().join(", "),
                    n.dimensions.names().join(", ")
                ),
            )),
            Some(_) => None,
        })
        .collect()
}

fn aggregation_name(a: &tally_core::Aggregation) -> String {
    match a {
        tally_core::Aggregation::UniqueCount { property } => {
            format!("unique_count of {property}")
        }
        other => other.as_str().into(),
    }
}

/// Refuses `new` if it changes or removes a meter that has counters in an open period.
async fn check_live_meters(
    ports: PublishPorts<'_>,
    old: &Catalogue,
    new: &Catalogue,
    current: Month,
) -> Result<(), VersionError> {
    let changes = meter_changes(old, new);
    if changes.is_empty() {
        return Ok(());
    }
    let mut open = vec![current];
    let prev = current.prev();
    if !ports
        .usage
        .is_period_closed(prev)
        .await
        .map_err(store(format!("cannot read whether {prev} is closed")))?
    {
        open.push(prev);
    }
    let orgs = ports
        .tenants
        .list_org_ids()
        .await
        .map_err(store("cannot list organizations"))?;
    for org in orgs {
        for &period in &open {
            let counters = ports
                .usage
                .stored_counters(&org, period)
                .await
                .map_err(store(format!("cannot read the counters of {org}")))?;
            for (key, value) in &counters {
                if key.granularity != Granularity::Month || value.is_zero() {
                    continue;
                }
                if let Some((meter, change)) =
                    changes.iter().find(|(m, _)| m.as_str() == key.meter.base())
                {
                    return Err(VersionError::LiveMeter {
                        meter: meter.clone(),
                        change: change.clone(),
                        org,
                        period,
                    });
                }
            }
        }
    }
    Ok(())
}
