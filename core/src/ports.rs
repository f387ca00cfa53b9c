//! The ports: traits the adapters in `tally-store` implement and the capability crates call.
//!
//! They are shaped by the most constrained backend. DynamoDB applies a batch as transactions
//! of at most 100 actions, so [`UsageStore::apply_batch`] reports an outcome per event (a
//! chunk can fail after earlier chunks landed) rather than one result for the batch. SQS
//! moves messages of many events and deletes them after the fact, so [`EventQueue`] hands out
//! [`Delivery`]s with a receipt that is acknowledged only once every event in it was applied.
//! Ledger reads are paged because a DynamoDB query returns at most 1 MB at a time.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::counter::OwnedCounterKey;
use crate::event::Event;
use crate::ids::ApiKeyId;
use crate::ids::{MeterName, OrgId, ProjectId, UserId};
use crate::period::{Granularity, Month};
use crate::tenant::{
    ApiKey, AuditPage, AuditQuery, AuditRecord, KeyHash, Membership, Org, OrgChanges, Project,
    Role, User,
};

/// What a storage adapter can report. Each variant says what an HTTP caller sees.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique value is taken (an org slug, a project slug in its org). `409 Conflict`.
    #[error("{what} already exists")]
    Conflict {
        /// What collided, e.g. `org slug "acme"`.
        what: String,
    },
    /// A record the operation needs does not exist. `404 Not Found`.
    #[error("{what} not found")]
    NotFound {
        /// What is missing.
        what: String,
    },
    /// The backend failed or could not be reached; retrying may help. `503 Service
    /// Unavailable`.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded; a bug or a manual edit. `500 Internal Server
    /// Error`.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Organizations, users, projects and API keys.
#[async_trait]
pub trait TenantStore: Send + Sync {
    /// Returns the user with this email, creating `candidate` if there is none.
    async fn ensure_user(&self, candidate: &User) -> Result<User, StoreError>;
    /// Looks a user up.
    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError>;
    /// Creates an org and makes `org.owner_id` its owner, atomically. `Conflict` if the slug
    /// is taken.
    async fn create_org(&self, org: &Org) -> Result<(), StoreError>;
    /// Looks an org up.
    async fn get_org(&self, id: &OrgId) -> Result<Option<Org>, StoreError>;
    /// Every org's id (for billing and reconcile runs over all tenants).
    async fn list_org_ids(&self) -> Result<Vec<OrgId>, StoreError>;
    /// Creates a project. `NotFound` if the org does not exist, `Conflict` if the slug is
    /// taken in the org.
    async fn create_project(&self, project: &Project) -> Result<(), StoreError>;
    /// Looks a project up inside its org (a project of another org is `None`).
    async fn get_project(&self, org: &OrgId, id: &ProjectId)
    -> Result<Option<Project>, StoreError>;
    /// The org's projects.
    async fn list_projects(&self, org: &OrgId) -> Result<Vec<Project>, StoreError>;
    /// Stores a new API key. `NotFound` if the org does not exist.
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    /// Finds a key by the hash of its secret, in one lookup.
    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError>;

    // The management API's methods. Both adapters of `tally-store` implement every one (the
    // conformance suite checks them); the defaults only keep small test doubles short, and
    // refuse with `Unavailable`.

    /// The user's role in the org, in one lookup; `None` when the user is not a member (or
    /// either does not exist).
    async fn get_role(&self, org: &OrgId, user: &UserId) -> Result<Option<Role>, StoreError> {
        let _ = (org, user);
        Err(unsupported("get_role"))
    }
    /// Applies `changes` to the org and returns it as it is now; `None` if there is no
    /// such org.
    async fn update_org(
        &self,
        id: &OrgId,
        changes: &OrgChanges,
    ) -> Result<Option<Org>, StoreError> {
        let _ = (id, changes);
        Err(unsupported("update_org"))
    }
    /// The user's memberships in every org, by org id. May lag a membership created a
    /// moment ago on backends whose index is eventually consistent (DynamoDB).
    async fn list_user_memberships(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        let _ = user;
        Err(unsupported("list_user_memberships"))
    }
    /// The org's members, in the order they joined (then user id).
    async fn list_members(&self, org: &OrgId) -> Result<Vec<Membership>, StoreError> {
        let _ = org;
        Err(unsupported("list_members"))
    }
    /// Adds a member with a role other than owner. `NotFound` if the org or the user does
    /// not exist, `Conflict` if the user is a member already.
    async fn add_member(&self, member: &Membership) -> Result<(), StoreError> {
        let _ = member;
        Err(unsupported("add_member"))
    }
    /// Changes a member's role and returns the membership as it was; `None` if the user is
    /// not a member. The owner's role cannot change, and nobody becomes owner this way
    /// (only by a transfer): both are `Conflict`.
    async fn set_member_role(
        &self,
        org: &OrgId,
        user: &UserId,
        role: Role,
    ) -> Result<Option<Membership>, StoreError> {
        let _ = (org, user, role);
        Err(unsupported("set_member_role"))
    }
    /// Removes a member and returns the membership as it was; `None` if the user is not a
    /// member. The owner cannot be removed (`Conflict`).
    async fn remove_member(
        &self,
        org: &OrgId,
        user: &UserId,
    ) -> Result<Option<Membership>, StoreError> {
        let _ = (org, user);
        Err(unsupported("remove_member"))
    }
    /// Makes `to` (a member) the owner and the owner `from` an admin, and records `to` as
    /// the org's `owner_id`, atomically. Returns the org as it is now; `None` if there is no
    /// such org; `NotFound` if `to` is not a member; `Conflict` if `from` is not the owner
    /// (any more).
    async fn transfer_ownership(
        &self,
        org: &OrgId,
        from: &UserId,
        to: &UserId,
    ) -> Result<Option<Org>, StoreError> {
        let _ = (org, from, to);
        Err(unsupported("transfer_ownership"))
    }
    /// The org's API keys (hash included: callers must not show it), in creation order
    /// (then id).
    async fn list_api_keys(&self, org: &OrgId) -> Result<Vec<ApiKey>, StoreError> {
        let _ = org;
        Err(unsupported("list_api_keys"))
    }
    /// Marks the org's key `id` revoked at `at` and returns it as it is now; a key revoked
    /// before keeps its first revocation time. `None` if the org has no such key.
    async fn revoke_api_key(
        &self,
        org: &OrgId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let _ = (org, id, at);
        Err(unsupported("revoke_api_key"))
    }
    /// Rotates the org's key `old`: stores `new` (a key of the same org) and makes `old`
    /// expire at `old_expires_at` (or keeps its earlier expiry), atomically. Returns the old
    /// key as it is now; `None` if the org has no such key; `Conflict` if it is revoked.
    async fn rotate_api_key(
        &self,
        old: &ApiKeyId,
        new: &ApiKey,
        old_expires_at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let _ = (old, new, old_expires_at);
        Err(unsupported("rotate_api_key"))
    }
    /// Writes one audit record, kept [`AUDIT_RETENTION_DAYS`](crate::tenant::AUDIT_RETENTION_DAYS)
    /// days. Writing the same record id twice keeps one.
    async fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let _ = record;
        Err(unsupported("record_audit"))
    }
    /// A page of the org's audit trail, newest first, filtered as the query says; expired
    /// records are never returned.
    async fn list_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let _ = query;
        Err(unsupported("list_audit"))
    }
}

fn unsupported(what: &str) -> StoreError {
    StoreError::Unavailable(format!("this store does not implement {what}"))
}

/// What happened to one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Newly counted.
    Applied,
    /// Already in the ledger (or earlier in the same batch); counted before, not again.
    Duplicate,
    /// Not applied; the caller must keep it for a retry (do not acknowledge it).
    Failed(String),
}

/// Per-event outcomes of [`UsageStore::apply_batch`], in the order of the input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// One outcome per input event.
    pub outcomes: Vec<ApplyOutcome>,
}

impl ApplyReport {
    /// How many events were newly counted.
    pub fn applied(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| **o == ApplyOutcome::Applied)
            .count()
    }

    /// How many were repeats.
    pub fn duplicates(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| **o == ApplyOutcome::Duplicate)
            .count()
    }

    /// Whether every event is settled (applied or duplicate).
    pub fn all_settled(&self) -> bool {
        self.outcomes
            .iter()
            .all(|o| !matches!(o, ApplyOutcome::Failed(_)))
    }
}

/// A counter series request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterQuery {
    /// The tenant.
    pub org: OrgId,
    /// One project, or `None` for the org-wide counters.
    pub project: Option<ProjectId>,
    /// The meter.
    pub meter: MeterName,
    /// Bucket width.
    pub granularity: Granularity,
    /// Inclusive start (bucket starts at or after it).
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
}

/// One bucket of a counter series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterValue {
    /// The bucket start.
    pub start: DateTime<Utc>,
    /// The counter's value.
    pub value: Decimal,
}

/// A page of ledger records.
#[derive(Debug, Clone, Default)]
pub struct LedgerPage {
    /// The events, as they were applied.
    pub events: Vec<Event>,
    /// Pass back to get the next page; `None` when done.
    pub next: Option<String>,
}

/// The event ledger and the counters, applied together exactly once.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Applies a batch exactly once: events already in the ledger (or repeated inside the
    /// batch) are reported `Duplicate` and change nothing; the rest are written to the ledger
    /// and their deltas added to the counters atomically with their ledger records.
    async fn apply_batch(&self, events: &[Event]) -> Result<ApplyReport, StoreError>;
    /// Counter values for the buckets of a range, in time order, omitting buckets with no
    /// usage.
    async fn counter_series(&self, query: &CounterQuery) -> Result<Vec<CounterValue>, StoreError>;
    /// Ledger records of one org whose timestamp falls in `month`, a page at a time.
    async fn ledger_page(
        &self,
        org: &OrgId,
        month: Month,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<LedgerPage, StoreError>;
    /// Every stored counter of one org for buckets inside `month` (all granularities,
    /// org-wide and per project), for reconcile.
    async fn stored_counters(
        &self,
        org: &OrgId,
        month: Month,
    ) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError>;
    /// Whether billing has closed `month`.
    async fn is_period_closed(&self, month: Month) -> Result<bool, StoreError>;
    /// Closes `month` (idempotent); ingest refuses events for it from then on.
    async fn close_period(&self, month: Month, at: DateTime<Utc>) -> Result<(), StoreError>;
}

/// What a queue adapter can report.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue could not be reached or refused the call; retrying may help. At ingest
    /// this is a `503` for the events it concerns.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// A message could not be decoded. The adapter dead-letters it; callers see this only
    /// when even that failed.
    #[error("queue message is malformed: {0}")]
    Malformed(String),
}

/// Per-event result of [`EventQueue::publish`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Indexes (into the published slice) of events the queue did not take, with the
    /// reason. Every other event is durably queued.
    pub failed: Vec<(usize, String)>,
}

/// A message taken from the queue: some events of one org and the receipt to acknowledge
/// them with.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Opaque handle for [`EventQueue::ack`].
    pub receipt: String,
    /// The events the message carries.
    pub events: Vec<Event>,
    /// How many times the message has been handed out, this time included.
    pub receive_count: u32,
}

/// The queue between ingest and the aggregator.
#[async_trait]
pub trait EventQueue: Send + Sync {
    /// Durably queues events; when this returns, every event not listed as failed survives
    /// a crash.
    async fn publish(&self, events: &[Event]) -> Result<PublishReport, QueueError>;
    /// Takes messages holding up to about `max_events` events, waiting up to `wait` for the
    /// first one. A message taken and not acknowledged is handed out again later.
    async fn receive(&self, max_events: usize, wait: Duration)
    -> Result<Vec<Delivery>, QueueError>;
    /// Removes messages whose events were all applied.
    async fn ack(&self, receipts: &[String]) -> Result<(), QueueError>;
    /// Approximate number of messages waiting (for draining and tests).
    async fn depth(&self) -> Result<u64, QueueError>;
    /// Sets a delivered message aside as poison: moves it to the dead-letter store with
    /// `reason` attached and removes it from the queue, so it is neither applied nor handed
    /// out again, and never silently dropped. The default refuses (the message then stays
    /// queued and comes back), for queues without a dead-letter store.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        let _ = (delivery, reason);
        Err(QueueError::Unavailable(
            "this queue has no dead-letter store".to_owned(),
        ))
    }
    /// Keeps messages being worked on hidden from other consumers for `by` more, so a slow
    /// batch is not handed to a second aggregator mid-apply. Queues without a visibility
    /// timeout (or whose consumers own their partitions) need not do anything.
    async fn extend_visibility(&self, receipts: &[String], by: Duration) -> Result<(), QueueError> {
        let _ = (receipts, by);
        Ok(())
    }
}

/// Where time comes from, so time-dependent logic can be tested without sleeping.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Helper for adapters: treat a timeout as "no messages" rather than an error.
pub const DEFAULT_RECEIVE_WAIT: Duration = Duration::from_millis(200);
