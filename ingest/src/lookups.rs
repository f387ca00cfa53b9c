//! Cached store reads on the hot path: an org's plan, whether a project is the org's, and
//! whether a month is closed.
//!
//! Each is a per-request store read without a cache; with one, a steady client costs the
//! store one read of each kind per TTL. The TTLs (see [`CacheConfig`]) bound how long a
//! change takes to be seen: a plan change 10 s, a project that stops existing or is archived
//! 10 s (one that did not exist is remembered 2 s), a month closed by billing 5 s (closed months are
//! remembered an hour: they never reopen). Store errors are never cached.

use std::sync::Arc;

use chrono::TimeDelta;
use tally_core::ids::{OrgId, ProjectId};
use tally_core::period::Month;
use tally_core::plan::PlanId;
use tally_core::ports::{Clock, OrgStore, ProjectStore, StoreError, UsageStore};

use tracing::Instrument;

use crate::cache::{TtlCache, delta};
use crate::config::CacheConfig;

/// What ingest knows of a project id an event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectState {
    /// A live project of the key's org: its events are taken.
    Active,
    /// A project of the org that was archived: refused as `project_archived`.
    Archived,
    /// Not a project of this org (another org's, or none at all): `unknown_project`.
    Missing,
}

/// The org, project and period caches.
pub struct Lookups {
    orgs_store: Arc<dyn OrgStore>,
    projects_store: Arc<dyn ProjectStore>,
    usage: Arc<dyn UsageStore>,
    clock: Arc<dyn Clock>,
    orgs: TtlCache<OrgId, Option<PlanId>>,
    projects: TtlCache<(OrgId, ProjectId), ProjectState>,
    periods: TtlCache<Month, bool>,
    org_ttl: TimeDelta,
    project_ttl: TimeDelta,
    project_miss_ttl: TimeDelta,
    open_period_ttl: TimeDelta,
    closed_period_ttl: TimeDelta,
}

impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups")
            .field("orgs", &self.orgs.len())
            .field("projects", &self.projects.len())
            .field("periods", &self.periods.len())
            .finish_non_exhaustive()
    }
}

impl Lookups {
    /// Caches over the given ports.
    pub fn new(
        orgs: Arc<dyn OrgStore>,
        projects: Arc<dyn ProjectStore>,
        usage: Arc<dyn UsageStore>,
        clock: Arc<dyn Clock>,
        config: &CacheConfig,
    ) -> Self {
        Lookups {
            orgs_store: orgs,
            projects_store: projects,
            usage,
            clock,
            orgs: TtlCache::new(config.capacity),
            projects: TtlCache::new(config.capacity),
            periods: TtlCache::new(config.capacity),
            org_ttl: delta(config.org_ttl),
            project_ttl: delta(config.project_ttl),
            project_miss_ttl: delta(config.project_miss_ttl),
            open_period_ttl: delta(config.open_period_ttl),
            closed_period_ttl: delta(config.closed_period_ttl),
        }
    }

    /// The org's plan, or `None` if the org does not exist.
    pub async fn org_plan(&self, org: &OrgId) -> Result<Option<PlanId>, StoreError> {
        if let Some(plan) = self.orgs.get(org, self.clock.now()) {
            return Ok(plan);
        }
        let plan = self
            .orgs_store
            .get_org(org)
            .instrument(tracing::debug_span!("get_org"))
            .await?
            // A deleted org has no plan: its keys are refused even if a deletion stopped
            // before revoking them all.
            .filter(|o| o.deleted_at.is_none())
            .map(|o| o.plan);
        self.orgs
            .insert_for(org.clone(), plan, self.org_ttl, self.clock.now());
        Ok(plan)
    }

    /// Whether `project` is an active project of `org`, an archived one, or none of its.
    pub async fn project_in_org(
        &self,
        org: &OrgId,
        project: &ProjectId,
    ) -> Result<ProjectState, StoreError> {
        let key = (org.clone(), project.clone());
        if let Some(state) = self.projects.get(&key, self.clock.now()) {
            return Ok(state);
        }
        let state = match self
            .projects_store
            .get_project(org, project)
            .instrument(tracing::debug_span!("get_project"))
            .await?
        {
            Some(p) if p.org_id == *org && p.archived_at.is_none() => ProjectState::Active,
            Some(p) if p.org_id == *org => ProjectState::Archived,
            _ => ProjectState::Missing,
        };
        let ttl = if state == ProjectState::Active {
            self.project_ttl
        } else {
            self.project_miss_ttl
        };
        self.projects.insert_for(key, state, ttl, self.clock.now());
        Ok(state)
    }

    /// Whether billing has closed `month`.
    pub async fn period_closed(&self, month: Month) -> Result<bool, StoreError> {
        if let Some(closed) = self.periods.get(&month, self.clock.now()) {
            return Ok(closed);
        }
        let closed = self
            .usage
            .is_period_closed(month)
            .instrument(tracing::debug_span!("is_period_closed"))
            .await?;
        let ttl = if closed {
            self.closed_period_ttl
        } else {
            self.open_period_ttl
        };
        self.periods
            .insert_for(month, closed, ttl, self.clock.now());
        Ok(closed)
    }
}
