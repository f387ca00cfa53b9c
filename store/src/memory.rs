//! [`MemoryStore`]: every storage port in process memory, for tests and test doubles.
//!
//! It is the one in-memory adapter, and it passes the same conformance suite
//! (`tally-tests`, `tests/src/conformance/storage.rs`) as [`SqliteStore`](crate::SqliteStore)
//! and [`DynamoStore`](crate::dynamodb::DynamoStore): tenants (every role of
//! [`TenantStore`](tally_core::ports::TenantStore)), the event ledger and the counters
//! ([`UsageStore`](tally_core::ports::UsageStore)), billing's reports
//! ([`ReportStore`](tally_core::ports::ReportStore)), the Stripe sync ledger
//! ([`SyncLedger`](tally_core::ports::SyncLedger)) and the plan-limit alert outbox
//! ([`AlertLedger`](tally_core::ports::AlertLedger)). A capability's tests can therefore
//! use it instead of a hand-written double and get the real semantics (exactly-once apply,
//! owner guards, first-write-wins reports, lease compare-and-set), with no file, no
//! emulator and no cleanup. Nothing survives the process; it is not a production backend.
//!
//! # Layout
//!
//! All state sits in one `State` behind one `Mutex`, and every method does its reads,
//! checks and writes under a single lock, so each call is atomic exactly where the SQLite
//! transaction or the DynamoDB conditional write is. A clone is a new handle on the same
//! state (as a second process opening the same SQLite file is), which is what the
//! conformance suite's `StoreFactory::open` wants. The tenant rules are
//! [`tally_core::tenant::rules`]', called as the other backends call them.
//!
//! - `memory/tenants.rs`: users, orgs, memberships and projects.
//! - `memory/keys.rs`: API keys and invitations (both found by the hash of their secret),
//!   and the audit trail.
//! - `memory/usage.rs`: the ledger, the counters (hour cells, with every coarser and
//!   org-wide counter derived through [`tally_core::fold::spread`], as [`crate::derive`]
//!   does for the other stores) and closed periods.
//! - `memory/billing.rs`: reports, the sync ledger and alerts.
//! - `memory/catalogue.rs`: the published catalogue versions
//!   ([`CatalogueStore`](tally_core::ports::CatalogueStore)).
//! - `memory/overrides.rs`: each org's price overrides
//!   ([`OverrideStore`](tally_core::ports::OverrideStore)).
//! - `memory/series.rs`: the series registry of dimensioned meters
//!   ([`SeriesRegistry`](tally_core::ports::SeriesRegistry)).
//! - `memory/readings.rs`: the hour cells of time-weighted meters
//!   ([`ReadingStore`](tally_core::ports::ReadingStore)).
//! - `memory/allowances.rs`: the shared fixed-window allowances
//!   ([`AllowanceStore`](tally_core::ports::AllowanceStore)).
//!
//! # Observing and failing the hot lookups
//!
//! The lookups ingest and the usage API make per request ([`Op`]: key by hash, org,
//! project, period, counter series) are counted ([`MemoryStore::calls`]), so a test can see
//! that a cache saved a round trip, and can be made to fail ([`MemoryStore::fail`]) with a
//! chosen [`Fault`] until cleared, for tests of what a capability answers when its store is
//! down or returns garbage.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use tally_core::event::Event;
use tally_core::fold::Delta;
use tally_core::ids::{ApiKeyId, EventId, InvitationId, MeterName, OrgId, ProjectId, UserId};
use tally_core::period::Month;
use tally_core::ports::{AlertKey, StoreError, StoredAlert, StoredReport};
use tally_core::tenant::{
    ApiKey, AuditRecord, Invitation, KeyHash, Membership, Org, PlanChange, Project, User, rules,
};

mod allowances;
mod billing;
mod catalogue;
mod keys;
mod overrides;
mod readings;
mod security;
mod series;
mod tenants;
mod usage;

pub use usage::MAX_LEDGER_PAGE;

/// Every storage port in memory; see the [module documentation](self). Cheap to clone: a
/// clone is another handle on the same data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

/// A lookup a test can count ([`MemoryStore::calls`]) or make fail ([`MemoryStore::fail`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`find_api_key`](tally_core::ports::ApiKeyStore::find_api_key).
    FindApiKey,
    /// [`get_org`](tally_core::ports::OrgStore::get_org).
    GetOrg,
    /// [`get_project`](tally_core::ports::ProjectStore::get_project).
    GetProject,
    /// [`is_period_closed`](tally_core::ports::UsageStore::is_period_closed).
    IsPeriodClosed,
    /// [`counter_series`](tally_core::ports::UsageStore::counter_series).
    CounterSeries,
}

/// A failure [`MemoryStore::fail`] injects, named by the [`StoreError`] it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// [`StoreError::Unavailable`]: the backend is down (a `503` at the HTTP edge).
    Unavailable,
    /// [`StoreError::Corrupt`]: stored data could not be decoded (a `500`).
    Corrupt,
}

impl Fault {
    /// The error the failing operation returns; `op` names it in the message.
    fn error(self, op: Op) -> StoreError {
        let what = format!("{op:?}: injected by MemoryStore::fail");
        match self {
            Fault::Unavailable => StoreError::Unavailable(what),
            Fault::Corrupt => StoreError::Corrupt(what),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every call of `op`, on every handle of this store, fail with `fault` from now
    /// on; `None` makes it work again. Nothing else is affected (keys can still be created,
    /// listed and touched while key lookups fail).
    pub fn fail(&self, op: Op, fault: Option<Fault>) {
        let mut st = self.lock();
        match fault {
            Some(f) => st.faults.insert(op, f),
            None => st.faults.remove(&op),
        };
    }

    /// Marks `org` deleted at `at` and does nothing else: the state a crash leaves between
    /// the two steps of a deletion that revokes keys separately (DynamoDB's, before it was
    /// made one transaction). For tests that every reader refuses a deleted org's live keys.
    /// `false` if there is no such org.
    pub fn plant_deleted_org(&self, org: &OrgId, at: DateTime<Utc>) -> bool {
        match self.lock().orgs.get_mut(org) {
            Some(o) => {
                o.deleted_at = Some(at);
                true
            }
            None => false,
        }
    }

    /// How many times `op` was called on any handle of this store, failed calls included.
    pub fn calls(&self, op: Op) -> usize {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// The state, locked. A panic in another thread while it held the lock does not make
    /// this one panic too: every method checks before it writes, so the state a panicking
    /// call leaves behind is still consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything the store holds.
#[derive(Default)]
struct State {
    /// Users by id.
    users: BTreeMap<UserId, User>,
    /// User ids by lowercased email.
    emails: HashMap<String, UserId>,
    /// Orgs by id (deleted ones too).
    orgs: BTreeMap<OrgId, Org>,
    /// Org ids by slug.
    slugs: HashMap<String, OrgId>,
    /// Each org's plan changes, oldest first.
    plan_changes: BTreeMap<OrgId, Vec<PlanChange>>,
    /// Memberships by (org, user).
    members: BTreeMap<(OrgId, UserId), Membership>,
    /// Which projects a member is on, keyed (org, user, project), with when they were put
    /// there.
    project_members: BTreeMap<(OrgId, UserId, ProjectId), DateTime<Utc>>,
    /// Projects by (org, id).
    projects: BTreeMap<(OrgId, ProjectId), Project>,
    /// API keys by (org, id).
    keys: BTreeMap<(OrgId, ApiKeyId), ApiKey>,
    /// Where each key hash points in `keys`.
    key_hashes: HashMap<KeyHash, (OrgId, ApiKeyId)>,
    /// Invitations by (org, id).
    invitations: BTreeMap<(OrgId, InvitationId), Invitation>,
    /// Where each token hash points in `invitations`.
    invitation_hashes: HashMap<KeyHash, (OrgId, InvitationId)>,
    /// Each org's security policy (`memory/security.rs`).
    policies: BTreeMap<OrgId, tally_core::security::OrgSecurityPolicy>,
    /// Sign-in sessions by (user, id).
    sessions: BTreeMap<(UserId, tally_core::ids::SessionId), tally_core::security::Session>,
    /// Each org's audit trail by [`AuditRecord::sort_key`].
    audit: BTreeMap<OrgId, BTreeMap<String, AuditRecord>>,
    /// (expiry in Unix seconds, org, sort key) of every audit record, for pruning.
    audit_expiry: BTreeSet<(i64, OrgId, String)>,
    /// Each org's ledger: the first copy of every event, by id.
    ledger: HashMap<OrgId, BTreeMap<EventId, Event>>,
    /// Each org's counters as cells: by (meter, hour start in Unix seconds), then project,
    /// the merged delta of the hour's events (a `unique_count` cell holds the values seen).
    cells: HashMap<OrgId, Cells>,
    /// Closed months and when they were first closed.
    closed: BTreeMap<Month, DateTime<Utc>>,
    /// Reports by org, then period.
    reports: BTreeMap<OrgId, BTreeMap<Month, StoredReport>>,
    /// Shared allowances: what was taken of each (scope, window), and when it expires
    /// (`memory/allowances.rs`).
    allowances: HashMap<(String, String), (rust_decimal::Decimal, DateTime<Utc>)>,
    /// Sync step results by (org, period), then step name.
    sync_steps: BTreeMap<(OrgId, Month), BTreeMap<String, String>>,
    /// Provider customers by org.
    sync_customers: HashMap<OrgId, String>,
    /// Alerts by key (org first, so one org's alerts are one range, by month, meter and
    /// threshold).
    alerts: BTreeMap<AlertKey, StoredAlert>,
    /// Published catalogue versions by number (`memory/catalogue.rs`).
    catalogues: BTreeMap<u32, tally_core::ports::CatalogueVersion>,
    /// Price overrides by org, oldest first (`memory/overrides.rs`).
    overrides: BTreeMap<OrgId, Vec<tally_core::overrides::PriceOverride>>,
    /// Registered series of dimensioned meters by (org, meter, month)
    /// (`memory/series.rs`).
    series: BTreeMap<(OrgId, MeterName, Month), BTreeSet<MeterName>>,
    /// Hour cells of time-weighted meters (`memory/readings.rs`).
    readings: readings::ReadingCells,
    /// Injected failures.
    faults: HashMap<Op, Fault>,
    /// How often each observed lookup was called.
    calls: HashMap<Op, usize>,
}

/// One org's counter cells: by (meter, hour start in Unix seconds), then project, the merged
/// delta of the hour's events.
pub(crate) type Cells = BTreeMap<(MeterName, i64), BTreeMap<ProjectId, Delta>>;

impl State {
    /// Counts a call of `op` and fails it if a test said so.
    fn observe(&mut self, op: Op) -> Result<(), StoreError> {
        *self.calls.entry(op).or_default() += 1;
        match self.faults.get(&op) {
            Some(f) => Err(f.error(op)),
            None => Ok(()),
        }
    }

    /// Whether the org exists and is not deleted (what adding anything to it needs).
    fn org_is_live(&self, org: &OrgId) -> bool {
        self.orgs.get(org).is_some_and(|o| o.deleted_at.is_none())
    }

    /// `NotFound` unless [`org_is_live`](Self::org_is_live): how adding a member, project,
    /// key or invitation to a missing or deleted org is refused.
    fn require_live_org(&self, org: &OrgId) -> Result<(), StoreError> {
        rules::require_live_org(org, self.org_is_live(org))
    }
}

/// The values of `map` (keyed `(org, id)`) that belong to `org`, oldest first by
/// `created`, then by id: the order every listing of an org's members, projects, keys and
/// invitations has on every store.
fn list_of_org<K: Ord, V: Clone>(
    map: &BTreeMap<(OrgId, K), V>,
    org: &OrgId,
    created: impl Fn(&V) -> DateTime<Utc>,
) -> Vec<V> {
    let mut found: Vec<(DateTime<Utc>, &K, &V)> = map
        .iter()
        .filter(|((o, _), _)| o == org)
        .map(|((_, id), v)| (created(v), id, v))
        .collect();
    found.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    found.into_iter().map(|(_, _, v)| v.clone()).collect()
}

/// Stores `value` under `key` unless the key is taken: `Conflict` naming `what()` then,
/// and nothing written. Every create of a keyed record (sessions, projects, memberships)
/// refuses a second copy this way.
fn insert_new<K: Ord, V>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    what: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    if map.contains_key(&key) {
        return Err(StoreError::Conflict { what: what() });
    }
    map.insert(key, value);
    Ok(())
}

/// `t` cut to the microsecond, the precision the other stores keep last-used and alert
/// times at.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}
