//! The ports: traits the adapters in `tally-store` implement and the capability crates call.
//!
//! They are shaped by the most constrained backend. DynamoDB applies a batch as transactions
//! of at most 100 actions, so [`UsageStore::apply_batch`] reports an outcome per event (a
//! chunk can fail after earlier chunks landed) rather than one result for the batch. SQS
//! moves messages of many events and deletes them after the fact, so [`EventQueue`] hands out
//! [`Delivery`]s with a receipt that is acknowledged only once every event in it was applied.
//! Ledger reads are paged because a DynamoDB query returns at most 1 MB at a time.
//! [`ReportStore`] keeps billing's monthly reports as opaque JSON under a size bound that a
//! DynamoDB item can hold, with a first-write-wins put so month close can rerun safely.
//! [`AlertLedger`] is the outbox of plan-limit alerts: a conditional-write claim per
//! (org, month, meter, threshold), and a lease so concurrent checks never both send one.
//! [`CatalogueStore`] keeps the catalogue versions the operator publishes, immutable and
//! numbered by a first-write-wins put. [`OverrideStore`] keeps each org's price overrides
//! (operator-set contracts), written once and only ever ended earlier.
//! numbered by a first-write-wins put.
//! [`SecurityStore`] keeps each org's security policy and users' sign-in sessions.
//! [`SeriesRegistry`] keeps the series of dimensioned meters and their cardinality bound.
//! [`ReadingStore`] keeps the readings of time-weighted meters, one hour cell at a time.
//! The tenant ports, one trait per role, live in [`tenants`](self::UserStore) and are
//! re-exported here.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::counter::OwnedCounterKey;
use crate::event::Event;
use crate::ids::{MeterName, OrgId, ProjectId};
use crate::period::{Granularity, Month};

mod allowance;
mod catalogue;
mod overrides;
#[cfg(feature = "test-support")]
mod publish_only;
mod readings;
mod security;
mod series;
mod tenants;
pub use allowance::{
    AllowanceRequest, AllowanceStore, AllowanceWindow, Grant, MAX_ALLOWANCE_SCOPE_BYTES,
    MAX_ALLOWANCE_WINDOW_BYTES, check_allowance_request,
};
pub use catalogue::{
    CatalogueStore, CatalogueVersion, CatalogueVersionSummary, MAX_APPLIED_BY_BYTES,
    MAX_CATALOGUE_BYTES, MAX_CATALOGUE_VERSION, catalogue_digest, check_catalogue_version,
    effective_version,
};
pub use overrides::{
    EndOutcome, OverrideEnd, OverrideStore, check_stored_override, sort_overrides,
    too_many_overrides,
};
#[cfg(feature = "test-support")]
pub use publish_only::{PublishOnly, Publisher};
pub use readings::{
    CarryIns, ClosingReadings, MAX_READINGS_PER_PUT, MonthReadingsQuery, Reading, ReadingStore,
    batch_readings, carry_ins_after, check_keeps_readings, check_readings, keeps_readings,
    month_carry_ins, month_totals, period_usage, put_batch_readings, put_counted_readings,
    time_weighted_month,
};
pub use security::{RevokeSession, SecurityStore};
pub use series::{
    MeterMonth, NewSeries, Registration, SeriesRegistry, check_registration, month_counters,
};
pub use tenants::{
    Acceptance, ApiKeyStore, AuditLog, InvitationStore, KeyRotation, MemberStore, NewProjectMember,
    OrgMember, OrgStore, OwnerTransfer, PlanMove, ProjectMember, ProjectStore, ProjectUpdate,
    Revocation, RoleChange, TenantStore, UserStore,
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

/// What happened to one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Newly counted.
    Applied,
    /// Already in the ledger (or earlier in the same batch); counted before, not again.
    Duplicate,
    /// Not applied; the caller must keep it for a retry (do not acknowledge it).
    Failed(String),
    /// Not applied, and not put in the ledger: it would take its org's month total of its
    /// meter past [`COUNTER_LIMIT`](crate::headroom::COUNTER_LIMIT) (see
    /// [`crate::headroom`]). Retrying cannot help; the aggregator dead-letters it with the
    /// reason `counter_overflow`, and a replay may still count it should room appear.
    Overflow,
}

/// Per-event outcomes of [`UsageStore::apply_batch`], in the order of the input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// One outcome per input event.
    pub outcomes: Vec<ApplyOutcome>,
    /// Indexes (into the input) of the [`Duplicate`](ApplyOutcome::Duplicate)s whose
    /// contents differ from the copy the ledger counted (the first one sent, earlier in the
    /// batch or in an earlier batch): an id resent with another quantity, meter, project,
    /// timestamp or properties. The first copy stays counted, as with Stripe's idempotency
    /// keys; the caller reports the resend (`duplicate_conflict`). In input order.
    pub conflicts: Vec<usize>,
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

    /// A report of `outcomes` with no conflicting duplicates.
    pub fn of(outcomes: Vec<ApplyOutcome>) -> Self {
        ApplyReport {
            outcomes,
            conflicts: Vec::new(),
        }
    }

    /// How many were refused as [`ApplyOutcome::Overflow`].
    pub fn overflows(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| **o == ApplyOutcome::Overflow)
            .count()
    }

    /// Whether every event is settled (applied, duplicate, or refused for good as an
    /// overflow): nothing is left to retry.
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

/// Which page of ledger records [`UsageStore::ledger_page`] reads.
#[derive(Debug, Clone)]
pub struct LedgerPageQuery<'a> {
    /// The org whose records are read.
    pub org: &'a OrgId,
    /// The month the records' timestamps fall in.
    pub month: Month,
    /// Where the previous page stopped ([`LedgerPage::next`]); `None` for the first page.
    pub cursor: Option<String>,
    /// Most records on the page; each store clamps it to 1 through its own largest page.
    pub limit: usize,
}

impl<'a> LedgerPageQuery<'a> {
    /// The page of `org`'s records in `month` after `cursor`, of at most `limit` records.
    #[must_use]
    pub const fn new(org: &'a OrgId, month: Month, cursor: Option<String>, limit: usize) -> Self {
        Self {
            org,
            month,
            cursor,
            limit,
        }
    }
}

/// A page of ledger records.
#[derive(Debug, Clone, Default)]
pub struct LedgerPage {
    /// The events, as they were applied.
    pub events: Vec<Event>,
    /// Pass back to get the next page; `None` when done.
    pub next: Option<String>,
}

/// Reads every ledger record of `org` stamped in `month`, `page_size` records a page, and
/// hands each page's events to `each` in order: the month-wide walk of reconciliation and
/// of the report lines' digests.
pub async fn each_ledger_page(
    usage: &dyn UsageStore,
    org: &OrgId,
    month: Month,
    page_size: usize,
    mut each: impl FnMut(&[Event]) + Send,
) -> Result<(), StoreError> {
    let mut cursor = None;
    loop {
        let page = usage
            .ledger_page(&LedgerPageQuery::new(org, month, cursor, page_size))
            .await?;
        each(&page.events);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// The event ledger and the counters, applied together exactly once.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// How long a ledger record is kept at least after it is written; `None`: for good.
    /// Reconcile refuses a month whose first records may already be gone, instead of
    /// reporting every counter as drift.
    fn ledger_retention(&self) -> Option<chrono::Duration>;
    /// The store of `time_weighted_sum` readings that goes with these counters, which every
    /// caller of [`UsageStore::apply_batch`] writes the readings of the events it counted
    /// to right after it ([`put_counted_readings`]); `None` for a store that keeps none (a
    /// test double).
    fn readings(&self) -> Option<&dyn ReadingStore>;
    /// Applies a batch exactly once: events already in the ledger (or repeated inside the
    /// batch) are reported `Duplicate` and change nothing; the rest are written to the ledger
    /// and their deltas added to the counters atomically with their ledger records.
    async fn apply_batch(&self, events: &[Event]) -> Result<ApplyReport, StoreError>;
    /// Gives back what this store holds for writing that other processes would otherwise
    /// wait out (DynamoDB's writer slots); an aggregator calls it when it stops. The store
    /// stays usable: a later `apply_batch` takes what it needs again. Default: nothing is
    /// held (memory, SQLite). An error is logged by the caller; leases end on their own.
    async fn release_writers(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Counter values for the buckets of a range, in time order, omitting buckets with no
    /// usage.
    async fn counter_series(&self, query: &CounterQuery) -> Result<Vec<CounterValue>, StoreError>;
    /// Ledger records of one org whose timestamp falls in a month, a page at a time.
    async fn ledger_page(&self, q: &LedgerPageQuery<'_>) -> Result<LedgerPage, StoreError>;
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

/// Largest [`StoredReport::body`] a store accepts, in bytes. DynamoDB items are at most
/// 400 KB; this leaves room for the key and the other attributes. The billing worker
/// refuses bigger reports before it writes them.
pub const MAX_REPORT_BODY_BYTES: usize = 350_000;

/// Refuses a report body over [`MAX_REPORT_BODY_BYTES`] as `Unavailable`: the check every
/// [`ReportStore`] makes before it saves, kept here so the stores refuse alike.
pub fn check_report_body(body: &str) -> Result<(), StoreError> {
    if body.len() > MAX_REPORT_BODY_BYTES {
        return Err(StoreError::Unavailable(format!(
            "report body of {} bytes exceeds the {MAX_REPORT_BODY_BYTES}-byte limit",
            body.len()
        )));
    }
    Ok(())
}

/// One org's usage report for one month as stored: the billing crate's report, serialized
/// as JSON, which the store keeps verbatim (it never looks inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReport {
    /// The organization.
    pub org_id: OrgId,
    /// The month the report bills.
    pub period: Month,
    /// The report, JSON; at most [`MAX_REPORT_BODY_BYTES`].
    pub body: String,
    /// When it was first stored.
    pub created_at: DateTime<Utc>,
}

/// Usage reports, one per (org, month), written once.
///
/// A report is what an invoice is built from, so it never changes after it is stored: a
/// month-close rerun that computes it again gets the stored one back, and late usage is
/// billed as adjustment lines on a later report instead (see `tally_billing::close`).
#[async_trait]
pub trait ReportStore: Send + Sync {
    /// Stores `report` unless the org already has one for its period, and returns the one
    /// stored now: `report` itself if it was the first, else the earlier one unchanged (the
    /// first write wins, even when the two differ). `Unavailable` if the body exceeds
    /// [`MAX_REPORT_BODY_BYTES`].
    async fn save_report(&self, report: &StoredReport) -> Result<StoredReport, StoreError>;
    /// The org's report for `period`, if one was stored.
    async fn get_report(
        &self,
        org: &OrgId,
        period: Month,
    ) -> Result<Option<StoredReport>, StoreError>;
    /// Every report of the org, oldest period first.
    async fn list_reports(&self, org: &OrgId) -> Result<Vec<StoredReport>, StoreError>;
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
    /// Events of the message that did not decode. They are never applied: the consumer
    /// sets them aside with [`EventQueue::dead_letter`] and applies the rest.
    pub unreadable: Vec<crate::envelope::Unreadable>,
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
    /// Sets a delivered message aside as poison: keeps the delivery's events (its `events`
    /// and `unreadable`, which may be just the part of the message that cannot be applied,
    /// the rest having been applied) in the dead-letter store with `reason` attached and
    /// removes the message from the queue, so it is neither applied nor handed out again,
    /// and never silently dropped. The default refuses (the message then stays
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

/// A clock that moves only when told to: the one test clock of every crate, so a test of
/// month close, key expiry or rate limits sets the time instead of sleeping until it.
#[derive(Debug)]
pub struct FixedClock(std::sync::Mutex<DateTime<Utc>>);

impl FixedClock {
    /// A clock showing `at`.
    pub fn at(at: DateTime<Utc>) -> Self {
        FixedClock(std::sync::Mutex::new(at))
    }

    /// Moves the clock to `at` (forwards or backwards).
    pub fn set(&self, at: DateTime<Utc>) {
        *self.lock() = at;
    }

    /// Moves the clock forwards by `by` (backwards if negative).
    pub fn advance(&self, by: chrono::TimeDelta) {
        let mut now = self.lock();
        *now += by;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DateTime<Utc>> {
        // The guarded value is a plain instant: a panic elsewhere cannot leave it torn.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.lock()
    }
}

/// Helper for adapters: treat a timeout as "no messages" rather than an error.
pub const DEFAULT_RECEIVE_WAIT: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------
// Stripe invoice sync: the invoice provider (Stripe, or its test double) and the ledger of
// sync steps. Shaped by Stripe: every write carries an idempotency key, and an answer can be
// lost after the write was applied, so Tally keeps its own record of each step's result.

/// Longest idempotency key a provider accepts (Stripe's limit is 255 characters).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// An idempotency key for one provider write: the same key with the same request replays
/// the first answer instead of writing twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks the key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] printable ASCII characters.
    pub fn parse(key: &str) -> Result<Self, ProviderError> {
        if key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY_LEN
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ProviderError::Fatal {
                status: 0,
                message: format!(
                    "idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"
                ),
            });
        }
        Ok(Self(key.to_owned()))
    }

    /// The key as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An object's id at the invoice provider (`cus_…`, `in_…`, `ii_…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProviderId(String);

impl ProviderId {
    /// Wraps an id the provider returned; `None` if it is empty or longer than 255 bytes.
    pub fn new(id: &str) -> Option<Self> {
        (!id.is_empty() && id.len() <= 255).then(|| Self(id.to_owned()))
    }

    /// The id as the provider spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How a provider call failed. The sync retries the first kind and stops the org on the
/// second.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying with the same idempotency key: a 429 (with the provider's
    /// `Retry-After`, when it sent one), a 5xx, a timeout, or a connection dropped before
    /// the answer arrived (the write may or may not have been applied).
    #[error("provider unavailable (retryable): {reason}")]
    Retryable {
        /// What happened, for logs.
        reason: String,
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
    /// The provider refused the request (a 4xx other than 429); retrying the same request
    /// cannot help. The message is the provider's, shown in the report.
    #[error("provider refused the request ({status}): {message}")]
    Fatal {
        /// The HTTP status (0 when the request was refused before it was sent).
        status: u16,
        /// The provider's explanation.
        message: String,
    },
}

/// The customer to ensure for an org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCustomer {
    /// The org (sent as metadata, so the provider's records point back to Tally).
    pub org: OrgId,
    /// The org's display name.
    pub name: String,
}

/// A draft invoice for one org's month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvoice {
    /// The provider's customer.
    pub customer: ProviderId,
    /// The org.
    pub org: OrgId,
    /// The billed month.
    pub period: Month,
    /// ISO currency, lower case (`usd`).
    pub currency: String,
    /// Shown on the invoice.
    pub description: String,
}

/// One invoice item, attached to a draft invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvoiceItem {
    /// The provider's customer.
    pub customer: ProviderId,
    /// The draft invoice it belongs to.
    pub invoice: ProviderId,
    /// Amount in minor units (cents); negative for a credit.
    pub amount_minor: i64,
    /// ISO currency, lower case.
    pub currency: String,
    /// Shown on the invoice line.
    pub description: String,
    /// The sync step that adds it (`item:0`, …), kept in the item's metadata as
    /// `tally_step` so a rerun can find it after the provider forgot the idempotency key.
    pub step: String,
}

/// A finalized invoice as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalizedInvoice {
    /// The invoice.
    pub id: ProviderId,
    /// Its status after finalizing (`open`, or `paid` for a zero total).
    pub status: String,
    /// Its total in minor units.
    pub total_minor: i64,
    /// The page where the customer sees and pays it (Stripe's `hosted_invoice_url`), when
    /// the provider gave one: an `https://` URL of at most [`MAX_HOSTED_URL_LEN`] bytes
    /// (anything else is dropped by the provider adapter rather than shown to customers).
    pub hosted_url: Option<String>,
}

/// Longest hosted invoice URL kept (Stripe's are about 150 bytes); within
/// [`MAX_SYNC_VALUE_LEN`], so the sync ledger can record it.
pub const MAX_HOSTED_URL_LEN: usize = 1024;

/// `url` if it is a hosted invoice page worth recording: `https://`, printable ASCII
/// without spaces, at most [`MAX_HOSTED_URL_LEN`] bytes; `None` otherwise.
pub fn hosted_url(url: &str) -> Option<String> {
    let ok = url.len() <= MAX_HOSTED_URL_LEN
        && url.len() > "https://".len()
        && url.starts_with("https://")
        && url.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| url.to_owned())
}

/// The invoice provider (Stripe). Every call carries an idempotency key; callers reuse the
/// key of a call whose answer they did not get.
#[async_trait]
pub trait InvoiceProvider: Send + Sync {
    /// Creates the org's customer (with metadata `tally_org` = the org id) and returns its id.
    async fn create_customer(
        &self,
        customer: &NewCustomer,
        key: &IdempotencyKey,
    ) -> Result<ProviderId, ProviderError>;
    /// The org's customer, found by the metadata
    /// [`create_customer`](Self::create_customer) sets (`tally_org` = the org id); `None` if
    /// there is none. When several carry the org (created twice before this lookup existed),
    /// the oldest by creation time, with a warning logged. A read: no idempotency key. Lets a
    /// rerun adopt a customer whose creation answer was lost after the provider's
    /// idempotency keys expired, for the same reason as [`find_invoice`](Self::find_invoice).
    async fn find_customer(&self, org: &OrgId) -> Result<Option<ProviderId>, ProviderError>;
    /// Creates a draft invoice (not auto-advanced, pending items excluded) and returns its id.
    async fn create_draft_invoice(
        &self,
        invoice: &NewInvoice,
        key: &IdempotencyKey,
    ) -> Result<ProviderId, ProviderError>;
    /// Adds one item to a draft invoice and returns the item's id.
    async fn add_invoice_item(
        &self,
        item: &NewInvoiceItem,
        key: &IdempotencyKey,
    ) -> Result<ProviderId, ProviderError>;
    /// Finalizes a draft invoice.
    async fn finalize_invoice(
        &self,
        invoice: &ProviderId,
        key: &IdempotencyKey,
    ) -> Result<FinalizedInvoice, ProviderError>;
    /// The customer's invoice for (org, period), found by the metadata
    /// [`create_draft_invoice`](Self::create_draft_invoice) sets (`tally_invoice` =
    /// `<org>:<YYYY-MM>`), listing every page of the customer's invoices; `None` if there is
    /// none. Lets a rerun adopt an invoice whose creation answer was lost after the
    /// provider's idempotency keys expired (Stripe keeps them 24 hours).
    async fn find_invoice(
        &self,
        customer: &ProviderId,
        org: &OrgId,
        period: Month,
    ) -> Result<Option<ProviderId>, ProviderError>;
    /// The items already on an invoice, as (item id, its `tally_step` metadata if any),
    /// every page; for the same reason as [`find_invoice`](Self::find_invoice).
    async fn list_invoice_items(
        &self,
        invoice: &ProviderId,
    ) -> Result<Vec<(ProviderId, Option<String>)>, ProviderError>;
}

/// Longest step name or step result a [`SyncLedger`] stores.
pub const MAX_SYNC_VALUE_LEN: usize = 1024;

/// Refuses an empty sync ledger value or one longer than [`MAX_SYNC_VALUE_LEN`] as
/// `Unavailable`, naming the field: the check every [`SyncLedger`] makes before it writes,
/// kept here so the stores refuse alike.
pub fn check_sync_value(field: &str, value: &str) -> Result<(), StoreError> {
    check_stored_len(&format!("sync ledger {field}"), value, MAX_SYNC_VALUE_LEN)
}

/// [`check_sync_value`] on what [`SyncLedger::record_step`] writes, the step's name and
/// then its result: one call for every store, so they check the same fields in one order.
pub fn check_sync_step(key: &StepKey<'_>, result: &str) -> Result<(), StoreError> {
    check_sync_value("step", key.step)?;
    check_sync_value("result", result)
}

/// `Unavailable` unless `value`, which the store calls `what`, is 1 to `max` bytes.
fn check_stored_len(what: &str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.is_empty() || value.len() > max {
        return Err(StoreError::Unavailable(format!(
            "{what} must be 1 to {max} bytes, got {}",
            value.len()
        )));
    }
    Ok(())
}

/// One recorded result of a sync step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStep {
    /// The step (`invoice`, `item:3`, `finalize`).
    pub step: String,
    /// What the step produced (an id, or a small JSON value), as first recorded.
    pub result: String,
}

/// One step of one org's sync of one period: what [`SyncLedger`] records a result under.
#[derive(Debug, Clone, Copy)]
pub struct StepKey<'a> {
    /// The org.
    pub org: &'a OrgId,
    /// The billing period.
    pub period: Month,
    /// The step's name (at most [`MAX_SYNC_VALUE_LEN`] bytes, not empty).
    pub step: &'a str,
}

impl<'a> StepKey<'a> {
    /// `step` of `org`'s sync of `period`.
    #[must_use]
    pub const fn new(org: &'a OrgId, period: Month, step: &'a str) -> Self {
        Self { org, period, step }
    }
}

/// Tally's own record of the Stripe sync: each step's result per (org, period, step), and
/// each org's Stripe customer. Writes are first-write-wins, so two runs racing (or a rerun
/// after an answer was lost) agree on one result.
#[async_trait]
pub trait SyncLedger: Send + Sync {
    /// Records a step's result unless one is recorded already; returns the stored result
    /// (the earlier one if there was one). `Unavailable` if `step` or `result` is empty or
    /// longer than [`MAX_SYNC_VALUE_LEN`].
    async fn record_step(&self, key: &StepKey<'_>, result: &str) -> Result<String, StoreError>;
    /// A step's recorded result.
    async fn get_step(&self, key: &StepKey<'_>) -> Result<Option<String>, StoreError>;
    /// Every recorded step of one org's period, by step name.
    async fn list_steps(&self, org: &OrgId, period: Month) -> Result<Vec<SyncStep>, StoreError>;
    /// Records the org's provider customer unless one is recorded already; returns the
    /// stored id.
    async fn record_customer(&self, org: &OrgId, customer: &str) -> Result<String, StoreError>;
    /// The org's provider customer, if recorded.
    async fn get_customer(&self, org: &OrgId) -> Result<Option<String>, StoreError>;
}

// ---------------------------------------------------------------------------------------
// Plan-limit alerts: an outbox of the webhooks owed to orgs whose usage crossed a threshold
// of an allowance. Shaped by "once per threshold per period" across processes: the claim is
// a conditional write (the first writer wins, everyone else learns it was taken), and a
// claimed alert stays pending until its delivery is recorded, so a failed or interrupted
// delivery is retried by a later check instead of being lost. Whoever retries takes a lease
// with a compare-and-set first, so two checks running at once never both send it.

/// A lease [`AlertLedger::renew_alert_lease`] takes over: the alert's `lease_until` moves
/// from `seen` to `until`.
#[derive(Debug, Clone, Copy)]
pub struct AlertLease<'a> {
    /// The alert.
    pub key: &'a AlertKey,
    /// Its `lease_until` as the caller read it.
    pub seen: DateTime<Utc>,
    /// The new `lease_until`.
    pub until: DateTime<Utc>,
}

impl<'a> AlertLease<'a> {
    /// The lease of alert `key` from `seen` to `until`.
    #[must_use]
    pub const fn new(key: &'a AlertKey, seen: DateTime<Utc>, until: DateTime<Utc>) -> Self {
        Self { key, seen, until }
    }
}

/// A usage threshold in percent of a meter's monthly allowance: 1 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThresholdPct(u8);

impl ThresholdPct {
    /// 80 %: the early warning.
    pub const WARNING: ThresholdPct = ThresholdPct(80);
    /// 100 %: the allowance is used up.
    pub const REACHED: ThresholdPct = ThresholdPct(100);

    /// A threshold; `None` outside 1 to 100.
    pub fn new(pct: u8) -> Option<Self> {
        (1..=100).contains(&pct).then_some(Self(pct))
    }

    /// The percentage.
    pub fn get(self) -> u8 {
        self.0
    }
}

/// Which alert: there is at most one per (org, month, meter, threshold), ever.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlertKey {
    /// The organization whose usage crossed the threshold.
    pub org: OrgId,
    /// The month of that usage.
    pub period: Month,
    /// The limited meter.
    pub meter: MeterName,
    /// The threshold crossed.
    pub threshold: ThresholdPct,
}

/// `org/period/meter/threshold`, as stores name an alert in their errors.
impl std::fmt::Display for AlertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.org,
            self.period,
            self.meter,
            self.threshold.get()
        )
    }
}

/// Largest [`StoredAlert::body`] an [`AlertLedger`] accepts, in bytes.
pub const MAX_ALERT_BODY_BYTES: usize = 8 * 1024;

/// Refuses an empty alert body or one over [`MAX_ALERT_BODY_BYTES`] as `Unavailable`: the
/// check every [`AlertLedger`] makes before it claims, kept here so the stores refuse alike.
pub fn check_alert_body(body: &str) -> Result<(), StoreError> {
    check_stored_len("alert body", body, MAX_ALERT_BODY_BYTES)
}

/// An alert as the ledger keeps it. Times are kept to the microsecond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAlert {
    /// Which alert.
    pub key: AlertKey,
    /// The webhook body to send (JSON), fixed at the claim so every retry sends the same
    /// bytes; at most [`MAX_ALERT_BODY_BYTES`].
    pub body: String,
    /// When it was claimed.
    pub claimed_at: DateTime<Utc>,
    /// Until when the process delivering it owns the delivery; after that a later check
    /// may take it over.
    pub lease_until: DateTime<Utc>,
    /// When its delivery was recorded; `None` while it is pending.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The outbox of plan-limit alerts (see `tally_billing::alerts`).
#[async_trait]
pub trait AlertLedger: Send + Sync {
    /// Stores `alert` (which should have no `delivered_at`) unless its key is stored
    /// already, as one conditional write. `true` only for the first caller ever for that
    /// key, however many race; the others get `false` and the stored alert is unchanged.
    /// `Unavailable` if the body is empty or over [`MAX_ALERT_BODY_BYTES`].
    async fn claim_alert(&self, alert: &StoredAlert) -> Result<bool, StoreError>;
    /// The stored alert, if it was claimed.
    async fn get_alert(&self, key: &AlertKey) -> Result<Option<StoredAlert>, StoreError>;
    /// The org's undelivered alerts of `since` and later months, ordered by month, meter
    /// and threshold.
    async fn pending_alerts(
        &self,
        org: &OrgId,
        since: Month,
    ) -> Result<Vec<StoredAlert>, StoreError>;
    /// Takes over the delivery of an undelivered alert: sets its `lease_until` to `until`
    /// if it still is `seen` (as [`pending_alerts`](AlertLedger::pending_alerts) returned
    /// it). `false` if another caller took it first, it was delivered, or it does not
    /// exist.
    async fn renew_alert_lease(&self, lease: &AlertLease<'_>) -> Result<bool, StoreError>;
    /// Records that the alert was delivered at `at`; the first time recorded is kept.
    /// `NotFound` if it was never claimed.
    async fn mark_alert_delivered(
        &self,
        key: &AlertKey,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

#[cfg(test)]
mod hosted_url_tests {
    use super::*;

    #[test]
    fn only_plain_https_pages_within_the_bound_are_kept() {
        let stripe = "https://invoice.stripe.com/i/acct_1/test_YWNjdF8x";
        assert_eq!(hosted_url(stripe).as_deref(), Some(stripe));
        let longest = format!("https://{}", "a".repeat(MAX_HOSTED_URL_LEN - 8));
        assert_eq!(hosted_url(&longest), Some(longest.clone()));
        for bad in [
            "",
            "https://",
            "http://invoice.stripe.com/i/x",
            "javascript:alert(1)",
            "https://invoice.stripe.com/i/a b",
            "https://invoice.stripe.com/i/\u{e9}",
            &format!("{longest}a"),
        ] {
            assert_eq!(hosted_url(bad), None, "{bad:?}");
        }
    }
}
