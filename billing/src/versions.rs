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
//! (`value`), or its dimensions, or remove a meter, while that meter has counters in an
//! open period (the current month, and the previous one until it is closed): the counters
//! were aggregated the old way and would be read the new way. The new file is compared with
//! every version it would follow or replace:
//!
//! - the versions in force in the open periods (the catalogue in force now, and last
//!   month's while it is open), against each org's counters of those months (one read per
//!   org and open month; an operator command, not a hot path): a change is refused when a
//!   meter it touches has counters there;
//! - a version already scheduled that would be in force the month before the new one starts
//!   (applied earlier for a later month): it has no counters yet, but it will when the new
//!   one takes over, and that month is then still open, so any change to its meters is
//!   refused. The remedy is to apply the new version from that version's month, so it
//!   replaces it (a scheduled version the new one replaces never runs, and nothing is
//!   aggregated under it).
//!
//! Each refusal names the meter, what changes, the version it changes from and the number
//! the new one would get.
//!
//! Publishing is audited by the version itself: it records who applied it, when, and the
//! exact text with its digest, and it is never deleted (the per-org audit trail expires
//! after 90 days and belongs to one org, while a catalogue is global).

use chrono::{DateTime, Utc};
use tally_core::ports::{
    CatalogueStore, CatalogueVersion, CatalogueVersionSummary, OrgStore, StoreError, UsageStore,
    catalogue_digest, effective_version,
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
    #[error(transparent)]
    LiveMeter(Box<LiveMeter>),
    /// The new version changes a meter of a version already scheduled to be in force the
    /// month before it starts.
    #[error(transparent)]
    ScheduledMeter(Box<ScheduledMeter>),
    /// Another apply took the version number first; rerunning publishes after it.
    #[error("another apply published version {version} first; run the apply again")]
    Raced {
        /// The number that was taken.
        version: u32,
    },
}

/// The new version changes how a meter aggregates, or removes it, while it has counters
/// in an open period.
#[derive(Debug, thiserror::Error)]
#[error(
        "meter {meter} {change} from {} to the new version {new} while {org} has counters \
         of it in the open period {period}; its counters were aggregated the old way and would \
         be read the new way. Publish the change under a new meter name, or wait until \
         {period} is closed and billed",
        version_label(*.old)
    )]
pub struct LiveMeter {
    /// The meter.
    pub meter: MeterName,
    /// What the version does to it (`changes aggregation from sum to max`, `is removed`).
    pub change: String,
    /// The version it changes from (`None`: the file or built-in catalogue).
    pub old: Option<u32>,
    /// The number the new version would have had.
    pub new: u32,
    /// An org with live counters of it.
    pub org: OrgId,
    /// The open month they are in.
    pub period: Month,
}

/// The new version changes a meter of a version already scheduled to be in force the
/// month before it starts: that month's counters would be aggregated the old way and
/// still open when the new version reads them.
#[derive(Debug, thiserror::Error)]
#[error(
    "meter {meter} {change} from version {old} (scheduled from {old_from}) to the new \
         version {new} (from {from}): version {old}'s counters of it in {last} would still be \
         open when the new version takes over. Apply the new version from {old_from} so it \
         replaces version {old}, or publish the change under a new meter name"
)]
pub struct ScheduledMeter {
    /// The meter.
    pub meter: MeterName,
    /// What the new version does to it.
    pub change: String,
    /// The scheduled version.
    pub old: u32,
    /// The month it starts.
    pub old_from: Month,
    /// The number the new version would have had.
    pub new: u32,
    /// The month the new version would start.
    pub from: Month,
    /// The month before `from`, priced by the scheduled version.
    pub last: Month,
}

/// How an error names a catalogue: `version N`, or the fallback's name.
fn version_label(version: Option<u32>) -> String {
    match version {
        Some(n) => format!("version {n}"),
        None => "the file or built-in catalogue".to_owned(),
    }
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

/// Which catalogues are in force for a month and the month before it: what a running
/// process keeps, so a late event (stamped last month, while that month is open) is
/// validated with the catalogue of its own month without a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairKey {
    /// The current month.
    pub month: Month,
    /// The version in force in it (`None`: the fallback).
    pub current: Option<u32>,
    /// The version in force the month before.
    pub previous: Option<u32>,
}

/// The catalogues of a [`PairKey`].
#[derive(Debug, Clone)]
pub struct InForcePair {
    /// Which versions they are.
    pub key: PairKey,
    /// The current month's.
    pub current: Versioned,
    /// The previous month's (the same catalogue when the same version).
    pub previous: Versioned,
}

impl InForcePair {
    /// What the HTTP routes read: the current month's meters and plans, and the previous
    /// month's meters when another version was in force then (late events are validated
    /// with those).
    pub fn routes(&self) -> tally_http::live::InForce {
        let current = &self.current;
        let routes = tally_http::live::InForce::new(
            current.catalogue.meter_catalogue(),
            current.catalogue.core_plans(),
            current.version,
        );
        if self.key.previous == self.key.current {
            return routes;
        }
        routes.with_previous(
            self.key.month.prev(),
            self.previous.catalogue.meter_catalogue(),
            self.previous.version,
        )
    }
}

/// The catalogues in force in `month` and the month before: one listing and a read of each
/// version (one when both months have the same).
pub async fn pair_for(
    versions: &dyn CatalogueStore,
    fallback: &Catalogue,
    month: Month,
) -> Result<InForcePair, VersionError> {
    let key = pair_key(versions, month).await?;
    read_pair(versions, fallback, key).await
}

/// [`pair_for`], unless the versions are those `known` names (then `Ok(None)`, after the
/// listing alone): what a running process re-reads on an interval.
pub async fn pair_changed_since(
    versions: &dyn CatalogueStore,
    fallback: &Catalogue,
    month: Month,
    known: Option<PairKey>,
) -> Result<Option<InForcePair>, VersionError> {
    let key = pair_key(versions, month).await?;
    if known == Some(key) {
        return Ok(None);
    }
    read_pair(versions, fallback, key).await.map(Some)
}

async fn pair_key(versions: &dyn CatalogueStore, month: Month) -> Result<PairKey, VersionError> {
    let listed = versions
        .list_catalogue_versions()
        .await
        .map_err(store("cannot list the catalogue versions"))?;
    Ok(PairKey {
        month,
        current: effective_version(&listed, month),
        previous: effective_version(&listed, month.prev()),
    })
}

async fn read_pair(
    versions: &dyn CatalogueStore,
    fallback: &Catalogue,
    key: PairKey,
) -> Result<InForcePair, VersionError> {
    let current = read_version(versions, fallback, key.current).await?;
    let previous = if key.previous == key.current {
        current.clone()
    } else {
        read_version(versions, fallback, key.previous).await?
    };
    Ok(InForcePair {
        key,
        current,
        previous,
    })
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

    let listed = ports
        .versions
        .list_catalogue_versions()
        .await
        .map_err(store("cannot list the catalogue versions"))?;
    let number = listed.iter().map(|v| v.version).max().unwrap_or(0) + 1;
    let check = Neighbours {
        listed: &listed,
        fallback,
        new: &new,
        number,
        current,
        from,
    };
    check.live_meters(ports).await?;
    check.scheduled(ports.versions).await?;

    let version = CatalogueVersion {
        version: number,
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

/// A new version and the versions it would follow or replace (see the [module doc](self)).
struct Neighbours<'a> {
    /// The stored versions.
    listed: &'a [CatalogueVersionSummary],
    /// The file or built-in catalogue, in force where no version is.
    fallback: &'a Catalogue,
    /// The new version's catalogue.
    new: &'a Catalogue,
    /// The number it would get.
    number: u32,
    /// The current month.
    current: Month,
    /// The month it would start.
    from: Month,
}

impl Neighbours<'_> {
    /// Refuses the new version if it changes or removes a meter that has counters in an
    /// open period, compared with the version in force in that period.
    async fn live_meters(&self, ports: PublishPorts<'_>) -> Result<(), VersionError> {
        let mut open = vec![self.current];
        let prev = self.current.prev();
        if !ports
            .usage
            .is_period_closed(prev)
            .await
            .map_err(store(format!("cannot read whether {prev} is closed")))?
        {
            open.push(prev);
        }
        // What the new version changes, from each version in force in an open period (the
        // same one, mostly, compared once).
        let mut changes: Vec<(MeterName, String, Option<u32>)> = Vec::new();
        let mut compared: Vec<Option<u32>> = Vec::new();
        for &period in &open {
            let number = effective_version(self.listed, period);
            if compared.contains(&number) {
                continue;
            }
            compared.push(number);
            let old = read_version(ports.versions, self.fallback, number).await?;
            for (meter, change) in meter_changes(&old.catalogue, self.new) {
                changes.push((meter, change, number));
            }
        }
        if changes.is_empty() {
            return Ok(());
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
                    if let Some((meter, change, old)) = changes
                        .iter()
                        .find(|(m, ..)| m.as_str() == key.meter.base())
                    {
                        return Err(VersionError::LiveMeter(Box::new(LiveMeter {
                            meter: meter.clone(),
                            change: change.clone(),
                            old: *old,
                            new: self.number,
                            org,
                            period,
                        })));
                    }
                }
            }
        }
        Ok(())
    }

    /// Refuses the new version if it changes a meter of a version scheduled for a later
    /// month than the current one that would be in force the month before it starts.
    async fn scheduled(&self, versions: &dyn CatalogueStore) -> Result<(), VersionError> {
        let last = self.from.prev();
        if last <= self.current {
            return Ok(());
        }
        let Some(number) = effective_version(self.listed, last) else {
            return Ok(());
        };
        let Some(old_from) = self
            .listed
            .iter()
            .find(|v| v.version == number)
            .map(|v| v.effective_from)
        else {
            return Ok(());
        };
        if old_from <= self.current {
            // In force now: its counters are checked by `live_meters`.
            return Ok(());
        }
        let old = read_version(versions, self.fallback, Some(number)).await?;
        match meter_changes(&old.catalogue, self.new).into_iter().next() {
            None => Ok(()),
            Some((meter, change)) => Err(VersionError::ScheduledMeter(Box::new(ScheduledMeter {
                meter,
                change,
                old: number,
                old_from,
                new: self.number,
                from: self.from,
                last,
            }))),
        }
    }
}
