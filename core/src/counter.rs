//! Counter keys: (org, project or all projects, meter, granularity, bucket start).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{MeterName, OrgId, ProjectId};
use crate::period::Granularity;

/// Whether a counter covers one project or the whole org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CounterScope<'a> {
    /// All projects of the org.
    Org,
    /// One project.
    Project(&'a ProjectId),
}

/// A counter's identity, borrowing from the events it was folded from so the fold allocates
/// nothing per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey<'a> {
    /// The tenant; every storage key starts with it.
    pub org: &'a OrgId,
    /// Org-wide or one project.
    pub scope: CounterScope<'a>,
    /// The meter.
    pub meter: &'a MeterName,
    /// Bucket width.
    pub granularity: Granularity,
    /// Bucket start, UTC.
    pub start: DateTime<Utc>,
}

impl CounterKey<'_> {
    /// An owned copy, for results that outlive the events.
    pub fn to_owned_key(&self) -> OwnedCounterKey {
        OwnedCounterKey {
            org: self.org.clone(),
            project: match self.scope {
                CounterScope::Org => None,
                CounterScope::Project(p) => Some(p.clone()),
            },
            meter: self.meter.clone(),
            granularity: self.granularity,
            start: self.start,
        }
    }
}

/// A counter's identity, owning its parts (query results, reconcile reports).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnedCounterKey {
    /// The tenant.
    pub org: OrgId,
    /// `None` for the org-wide counter.
    pub project: Option<ProjectId>,
    /// The meter.
    pub meter: MeterName,
    /// Bucket width.
    pub granularity: Granularity,
    /// Bucket start, UTC.
    pub start: DateTime<Utc>,
}

impl OwnedCounterKey {
    /// A borrowed view.
    pub fn as_key(&self) -> CounterKey<'_> {
        CounterKey {
            org: &self.org,
            scope: match &self.project {
                None => CounterScope::Org,
                Some(p) => CounterScope::Project(p),
            },
            meter: &self.meter,
            granularity: self.granularity,
            start: self.start,
        }
    }
}
