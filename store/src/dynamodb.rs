//! [`DynamoStore`]: the AWS backend of [`TenantStore`] and [`UsageStore`], one DynamoDB
//! table.
//!
//! It mirrors [`SqliteStore`](crate::sqlite::SqliteStore) exactly (same errors, same
//! arithmetic, same ledger body), and the same conformance suite checks both. The table is
//! made by [`create_table`]; every item type it holds is listed below, and nothing else is
//! written to it.
//!
//! # The table
//!
//! Partition key `pk` (S), sort key `sk` (S), on-demand billing. One global secondary index,
//! `gsi1`, on `gsi1pk` (S) / `gsi1sk` (S), projecting all attributes; it is sparse (only
//! items that carry `gsi1pk` are in it). TTL is on `ttl` (N, Unix seconds). Every tenant
//! item's key starts with its org where the item belongs to one org; the exceptions are
//! global by nature (users, emails, org slugs, key hashes, periods) and each is found by
//! one `GetItem`, never a scan.
//!
//! | item | `pk` | `sk` | other attributes | `gsi1pk` / `gsi1sk` | serves |
//! |---|---|---|---|---|---|
//! | org | `ORG#<org>` | `ORG` | `id`, `name`, `slug`, `plan`, `owner_id`, `created_at` | `ORGS` / `ORG#<org>` | `get_org`; `update_org` (conditional `UpdateItem` of `name`/`plan`); `transfer_ownership` (one transaction: `owner_id` conditioned on the old owner, the two memberships' roles conditioned on owner / existing); the index lists all orgs (`list_org_ids`) |
//! | org slug guard | `SLUG#<slug>` | `SLUG` | `org_id` | | unique org slugs (put with the org, `attribute_not_exists`) |
//! | membership | `ORG#<org>` | `MEMBER#<user>` | `user_id`, `role`, `created_at` | `USER#<user>` / `ORG#<org>` | `get_role` (one `GetItem`); `list_members` (query `begins_with MEMBER#`); `add_member` (put under `attribute_not_exists`, with checks of the org and the user); `set_member_role`/`remove_member` (conditional on not being the owner); `list_user_memberships` (the index, eventually consistent) |
//! | user | `USER#<user>` | `USER` | `id`, `email` (lowercased), `created_at` | | `get_user` |
//! | email guard | `EMAIL#<email>` | `EMAIL` | `user_id` | | unique emails; `ensure_user` finds the user by email |
//! | project | `ORG#<org>` | `PROJECT#<project>` | `id`, `org_id`, `name`, `slug`, `created_at` | | `get_project`; `list_projects` (query `begins_with PROJECT#`) |
//! | project slug guard | `ORG#<org>` | `PROJECTSLUG#<slug>` | `project_id` | | unique project slugs per org |
//! | API key | `KEYHASH#<sha256 hex>` | `KEY` | `id`, `org_id`, `name`, `hash`, `display_prefix`, `scopes` (JSON), `created_at`, `expires_at`?, `revoked_at`? | `ORG#<org>` / `APIKEY#<key>` | `find_api_key` (one `GetItem` by hash); the index lists an org's keys |
//! | API key id guard | `ORG#<org>` | `APIKEY#<key>` | `hash` | | unique key ids per org; from key id to hash: `list_api_keys` (query `begins_with APIKEY#`, then `GetItem` by hash: consistent, unlike the index), `revoke_api_key` (`GetItem` of the guard, then a conditional `UpdateItem` `SET revoked_at = if_not_exists(...)` of the key); `rotate_api_key` (one transaction: the new key and guard, and the old key's `expires_at` conditioned on its org and no revocation) |
//! | audit record | `ORG#<org>#AUDIT` | `<20-digit Unix µs>#<record id>` | `actor`, `action`, `resource`, `body` (the record, JSON), `ttl` (90 days) | | `record_audit` (conditional put); `list_audit` (backward query, filters on actor/action/resource/`ttl`) |
//! | ledger record | `ORG#<org>#LEDGER#<shard>` | `EVT#<event id>` | `month` (`YYYY-MM`), `body` (compact JSON), `ttl` | | exactly once (conditional put); `ledger_page` |
//! | counter | `ORG#<org>#CTR#<YYYY-MM>` | `<scope>#<meter>#<granularity>#<start>` | `v` (N), `at` (N, `latest` only) | | `counter_series`, `stored_counters` |
//! | unique marker | `ORG#<org>#UNQ#<YYYY-MM>` | `<counter sk>#V=<value>` or `#H=<sha256 hex>` | | | `unique_count`: one per (counter, value) |
//! | closed period | `PERIOD#<YYYY-MM>` | `PERIOD` | `closed_at` | | `is_period_closed`, `close_period` |
//! | Kinesis checkpoint (reserved: written by [`KinesisQueue`](crate::kinesis::KinesisQueue)) | `CHECKPOINT#<stream>#<consumer>` | `SHARD#<shard id>` | `seq`, `seq_order`, `updated_at` | | where each consumer is in each shard |
//! | Kinesis dead letter (reserved: written by the Kinesis adapter) | `DEADLETTER#<stream>#<consumer>` | `<shard id>#<seq_order>` | reason, record data and position | | records that did not decode |
//!
//! Details:
//!
//! - `<shard>` is two digits, `00`–`15`: a stable hash (FNV-1a) of the event id mod 16, so a
//!   big org's ledger writes spread over 16 partitions instead of one hot one. The ledger is
//!   keyed by (org, event id) alone (not by month), because a resent event must find its
//!   first copy whatever timestamp it now carries.
//! - Ledger `ttl` is the write time plus [`LEDGER_TTL_DAYS`] (45) days: longer than a
//!   billing period plus its grace, as the design asks (at least 40). The body is the event
//!   minus its org and id (the key holds them), the same JSON the SQLite ledger stores.
//! - Counter `<scope>` is `ALL` (org-wide) or the project id; `<granularity>` is `hour`,
//!   `day` or `month`; `<start>` is the bucket start in Unix seconds, zero-padded to 12
//!   digits so the sort key orders by time. A counter lives in the partition of the month
//!   its bucket starts in, so a month of an org is one partition (what reconcile and
//!   billing read), and one series over a range is one `Query` per month touched with
//!   `sk BETWEEN <prefix><from> AND <prefix><to - 1s>`.
//! - Values are DynamoDB numbers (38 significant digits, so every `rust_decimal` value
//!   round-trips exactly); they are read back from their text, never through a float.
//!   `at` is the reading's time in Unix nanoseconds, so `latest` compares exactly,
//!   sub-second included.
//! - Markers keep values up to 128 bytes literally and longer ones as their SHA-256. They
//!   have no TTL: a counter's markers must live as long as late events for its month may
//!   arrive; pruning those of closed periods is a maintenance job for later.
//! - Reads of the table are strongly consistent (a second process sees a write at once).
//!   Reads of `gsi1` cannot be: `list_org_ids` may miss an org created a moment ago.
//!
//! # Applying a batch
//!
//! [`UsageStore::apply_batch`] works like this:
//!
//! 1. `dedupe_in_batch`: repeats of an (org, event id) inside the batch are `Duplicate`.
//! 2. The rest is sorted by (org, meter, project, time), so events that touch the same
//!    counters sit together, and packed greedily into chunks of at most 100 actions (one
//!    ledger put per event plus one action per distinct counter, plus one per distinct
//!    `unique_count` marker, of the events in the chunk) and well under 4 MB.
//! 3. Each chunk is one `TransactWriteItems`: a put of each event's ledger record under
//!    `attribute_not_exists(pk)`, and the chunk's events folded with
//!    [`tally_core::fold::fold`] into one action per counter: `ADD v :d` for `sum` and
//!    `count`; `SET v = :x` if `attribute_not_exists(v) OR v < :x` for `max`;
//!    `SET v = :x, at = :at` if `attribute_not_exists(v) OR at < :at OR (at = :at AND
//!    v < :x)` for `latest`; for `unique_count`, a marker put under `attribute_not_exists`
//!    per value and `ADD v :n` on the counter, `n` being the number of marker puts.
//! 4. If the transaction is cancelled, the cancellation reasons (one per action, in
//!    order) say what to drop: `ConditionalCheckFailed` on a ledger put means the event was
//!    counted before (`Duplicate`, and it leaves the chunk); on a `max`/`latest` `SET` that
//!    the stored value already wins (the action is dropped: folding fewer events can only
//!    lower the delta, so it keeps losing); on a marker that the value was counted (the
//!    marker and its share of the `ADD` go). The chunk is rebuilt from what is left and
//!    sent again at once. Each such round drops at least one action, so it ends.
//! 5. `TransactionConflict` and throttling reasons, throttling errors, 5xx and network
//!    failures are retried with jittered exponential backoff ([`RetryPolicy`]). A chunk that
//!    still fails reports `Failed(reason)` for its events; other chunks' outcomes stand, and
//!    the caller does not acknowledge the failed events, so they come back.
//!
//! Exactly-once rests on the ledger put's condition alone, never on `ClientRequestToken`
//! (moto applies a repeated token twice). A timeout after DynamoDB applied a chunk is
//! retried like any failure; the retry finds every ledger record present and reports the
//! events `Duplicate`, so counters stay exact (only the applied/duplicate tally of that one
//! call is off).
//!
//! ## What it costs
//!
//! Transactional writes cost 2 WCU per KB of item (rounded up). Counters and markers are
//! far under 1 KB, and so is a ledger record unless its event carries big properties
//! (validation bounds them at 4 KB), so each action costs 2 WCU. Per event that is 2 for
//! the ledger record plus 2 per counter action divided among the events of the chunk that
//! share it: every event touches 6 counters (hour, day, month × org-wide, project). Only
//! org, membership and API key items carry `gsi1` attributes, so the hot path writes no
//! index.
//!
//! - Worst case, nothing shared (every event a new org/project/meter/hour): 2 + 6 × 2 =
//!   **14 WCU per event**.
//! - Steady traffic of one project and meter within an hour: a chunk holds 94 events and 6
//!   counter actions, 2 + 12/94 ≈ **2.1 WCU per event**.
//! - `unique_count` adds 6 marker puts (12 WCU) per value new to the chunk's buckets.
//! - A duplicate costs a cancelled attempt of its chunk (whose capacity may be billed too)
//!   and a second, smaller attempt.
//!
//! Reads: a series is one query per month (a few read units); `ledger_page` reads the 16
//! shards of an org with a filter on `month`, so it reads (and pays for) the org's other
//! month still in the ledger as well, which suits a rare reconcile job. Ways to spend less
//! when it matters: store only hour counters and sum days and months at read time (3×
//! fewer counter writes), or write the ledger alone and derive counters from its change
//! stream with a checkpoint.
//!
//! Chunks of one call run one after the other: they often share an org's day and month
//! counters, so running them at once would mostly make them conflict.

mod apply;
mod codec;
mod keys;
mod table;
mod tenants;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::counter::OwnedCounterKey;
use tally_core::event::Event;
use tally_core::ids::{ApiKeyId, OrgId, ProjectId, UserId};
use tally_core::period::Month;
use tally_core::ports::{
    ApplyReport, CounterQuery, CounterValue, LedgerPage, StoreError, TenantStore, UsageStore,
};
use tally_core::tenant::{
    ApiKey, AuditPage, AuditQuery, AuditRecord, KeyHash, Membership, Org, OrgChanges, Project,
    Role, User,
};

use codec::{Item, describe_sdk_error, is_retryable, sdk_error};

pub use apply::LEDGER_TTL_DAYS;
/// The AWS SDK for DynamoDB this adapter is built on, re-exported so callers (the binary,
/// tests) build the [`Client`] with the same version without depending on it themselves.
pub use aws_sdk_dynamodb as sdk;
pub use table::create_table;
pub use usage::MAX_LEDGER_PAGE;

/// How [`DynamoStore`] retries what may succeed later: throttling, transaction conflicts,
/// 5xx answers and network failures. Conditional-check failures are not retried this way;
/// they are answers (see the [module doc](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts of one transaction before its events are reported `Failed` (or the call
    /// fails `Unavailable`). Default 8.
    pub max_attempts: u32,
    /// Backoff before the second attempt; it doubles with each attempt. Default 25 ms.
    pub base_delay: Duration,
    /// Longest backoff between two attempts. Default 1 s.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(25),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt number `attempt` (1-based): exponential, capped, and
    /// jittered to a random point in its upper half so that retrying writers spread out.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.max_delay);
        cap / 2 + cap.mul_f64(rand::random::<f64>() / 2.0)
    }
}

/// Tenants, the event ledger and the counters in one DynamoDB table (see the
/// [module doc](self) for its items). Cheap to clone: clones share the SDK client.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: Arc<str>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Why a `TransactWriteItems` did not go through.
#[derive(Debug)]
enum TxFailure {
    /// Cancelled: one (code, message) per action, in request order; code `None` for an
    /// action that was fine.
    Cancelled(Vec<(String, Option<String>)>),
    /// Throttled, 5xx or a network failure: retrying may help.
    Retryable(String),
    /// Anything else (validation, a missing table): retrying will not help.
    Fatal(String),
}

/// One `Query`'s parameters. The key condition names the keys `#pk` and `#sk`.
struct QuerySpec<'a> {
    /// `None` for the table (strongly consistent), or the index name.
    index: Option<&'a str>,
    key_condition: &'a str,
    filter: Option<&'a str>,
    /// Extra expression attribute names.
    names: &'a [(&'a str, &'a str)],
    values: Vec<(&'a str, AttributeValue)>,
}

impl DynamoStore {
    /// A store on `table` (made by [`create_table`]) through `client`, with the default
    /// [`RetryPolicy`].
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoStore {
            client,
            table: Arc::from(table.into()),
            retry: RetryPolicy::default(),
        }
    }

    /// The same store with another retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The SDK client (for tools and tests that inspect the table).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// One item by key, strongly consistent.
    async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        self.client
            .get_item()
            .table_name(&*self.table)
            .key(keys::PK, AttributeValue::S(pk))
            .key(keys::SK, AttributeValue::S(sk.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map(|out| out.item)
            .map_err(|e| sdk_error("GetItem", e))
    }

    /// Puts an item unless one with its key exists; `false` if one did.
    async fn put_if_absent(&self, record: Item) -> Result<bool, StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&*self.table)
            .set_item(Some(record))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", keys::PK)
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(PutItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_error("PutItem", e)),
        }
    }

    /// One page of a query: its items and where the next page starts.
    async fn query_page(
        &self,
        q: &QuerySpec<'_>,
        limit: Option<i32>,
        start: Option<Item>,
    ) -> Result<(Vec<Item>, Option<Item>), StoreError> {
        let mut req = self
            .client
            .query()
            .table_name(&*self.table)
            .key_condition_expression(q.key_condition)
            .set_filter_expression(q.filter.map(str::to_owned))
            .set_limit(limit)
            .set_exclusive_start_key(start);
        let (pk, sk) = match q.index {
            Some(index) => {
                req = req.index_name(index);
                (keys::GSI1PK, keys::GSI1SK)
            }
            None => {
                req = req.consistent_read(true);
                (keys::PK, keys::SK)
            }
        };
        // DynamoDB refuses names the expressions do not use.
        req = req.expression_attribute_names("#pk", pk);
        if q.key_condition.contains("#sk") {
            req = req.expression_attribute_names("#sk", sk);
        }
        for (name, attr) in q.names {
            req = req.expression_attribute_names(*name, *attr);
        }
        for (name, value) in &q.values {
            req = req.expression_attribute_values(*name, value.clone());
        }
        let out = req.send().await.map_err(|e| sdk_error("Query", e))?;
        Ok((out.items.unwrap_or_default(), out.last_evaluated_key))
    }

    /// Every item a query matches, page after page.
    async fn query_all(&self, q: &QuerySpec<'_>) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = self.query_page(q, None, start).await?;
            items.extend(page);
            match next {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    /// One `TransactWriteItems` attempt (never with a `ClientRequestToken`: exactly-once
    /// rests on conditions, see the module doc).
    async fn transact(&self, actions: Vec<TransactWriteItem>) -> Result<(), TxFailure> {
        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(c)) =
                    e.as_service_error()
                {
                    return Err(TxFailure::Cancelled(
                        c.cancellation_reasons()
                            .iter()
                            .map(|r| {
                                (
                                    r.code().unwrap_or("None").to_owned(),
                                    r.message().map(str::to_owned),
                                )
                            })
                            .collect(),
                    ));
                }
                let why = describe_sdk_error("TransactWriteItems", &e);
                Err(if is_retryable(&e) {
                    TxFailure::Retryable(why)
                } else {
                    TxFailure::Fatal(why)
                })
            }
        }
    }

    /// A tenant transaction: retried on throttling and conflicts like a chunk, and on a
    /// cancellation returns the reason codes (one per action) for the caller to interpret.
    async fn transact_tenant(
        &self,
        actions: Vec<TransactWriteItem>,
    ) -> Result<Result<(), Vec<String>>, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let why = match self.transact(actions.clone()).await {
                Ok(()) => return Ok(Ok(())),
                Err(TxFailure::Cancelled(reasons)) => {
                    let conditional = reasons.iter().any(|(c, _)| c == "ConditionalCheckFailed");
                    let retryable = reasons
                        .iter()
                        .find(|(c, _)| codec::RETRYABLE_REASONS.contains(&c.as_str()));
                    match (conditional, retryable) {
                        (true, _) => return Ok(Err(reasons.into_iter().map(|(c, _)| c).collect())),
                        (false, Some((code, _))) => format!("transaction cancelled: {code}"),
                        (false, None) => {
                            let codes: Vec<&str> =
                                reasons.iter().map(|(c, _)| c.as_str()).collect();
                            return Err(StoreError::Unavailable(format!(
                                "DynamoDB TransactWriteItems cancelled: {codes:?}"
                            )));
                        }
                    }
                }
                Err(TxFailure::Retryable(why)) => why,
                Err(TxFailure::Fatal(why)) => return Err(StoreError::Unavailable(why)),
            };
            if attempt >= self.retry.max_attempts {
                return Err(StoreError::Unavailable(format!(
                    "gave up after {attempt} attempts: {why}"
                )));
            }
            tokio::time::sleep(self.retry.delay(attempt)).await;
        }
    }
}

#[async_trait]
impl TenantStore for DynamoStore {
    async fn ensure_user(&self, candidate: &User) -> Result<User, StoreError> {
        tenants::ensure_user(self, candidate).await
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        tenants::get_user(self, id).await
    }

    async fn create_org(&self, org: &Org) -> Result<(), StoreError> {
        tenants::create_org(self, org).await
    }

    async fn get_org(&self, id: &OrgId) -> Result<Option<Org>, StoreError> {
        tenants::get_org(self, id).await
    }

    async fn list_org_ids(&self) -> Result<Vec<OrgId>, StoreError> {
        tenants::list_org_ids(self).await
    }

    async fn create_project(&self, project: &Project) -> Result<(), StoreError> {
        tenants::create_project(self, project).await
    }

    async fn get_project(
        &self,
        org: &OrgId,
        id: &ProjectId,
    ) -> Result<Option<Project>, StoreError> {
        tenants::get_project(self, org, id).await
    }

    async fn list_projects(&self, org: &OrgId) -> Result<Vec<Project>, StoreError> {
        tenants::list_projects(self, org).await
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        tenants::create_api_key(self, key).await
    }

    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        tenants::find_api_key(self, hash).await
    }

    async fn get_role(&self, org: &OrgId, user: &UserId) -> Result<Option<Role>, StoreError> {
        tenants::get_role(self, org, user).await
    }

    async fn update_org(
        &self,
        id: &OrgId,
        changes: &OrgChanges,
    ) -> Result<Option<Org>, StoreError> {
        tenants::update_org(self, id, changes).await
    }

    async fn add_member(&self, member: &Membership) -> Result<(), StoreError> {
        tenants::add_member(self, member).await
    }

    async fn set_member_role(
        &self,
        org: &OrgId,
        user: &UserId,
        role: Role,
    ) -> Result<Option<Membership>, StoreError> {
        tenants::set_member_role(self, org, user, role).await
    }

    async fn remove_member(
        &self,
        org: &OrgId,
        user: &UserId,
    ) -> Result<Option<Membership>, StoreError> {
        tenants::remove_member(self, org, user).await
    }

    async fn transfer_ownership(
        &self,
        org: &OrgId,
        from: &UserId,
        to: &UserId,
    ) -> Result<Option<Org>, StoreError> {
        tenants::transfer_ownership(self, org, from, to).await
    }

    async fn list_user_memberships(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        tenants::list_user_memberships(self, user).await
    }

    async fn list_members(&self, org: &OrgId) -> Result<Vec<Membership>, StoreError> {
        tenants::list_members(self, org).await
    }

    async fn list_api_keys(&self, org: &OrgId) -> Result<Vec<ApiKey>, StoreError> {
        tenants::list_api_keys(self, org).await
    }

    async fn revoke_api_key(
        &self,
        org: &OrgId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        tenants::revoke_api_key(self, org, id, at).await
    }

    async fn rotate_api_key(
        &self,
        old: &ApiKeyId,
        new: &ApiKey,
        old_expires_at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        tenants::rotate_api_key(self, old, new, old_expires_at).await
    }

    async fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        tenants::record_audit(self, record).await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        tenants::list_audit(self, query).await
    }
}

#[async_trait]
impl UsageStore for DynamoStore {
    async fn apply_batch(&self, events: &[Event]) -> Result<ApplyReport, StoreError> {
        apply::apply_batch(self, events).await
    }

    async fn counter_series(&self, query: &CounterQuery) -> Result<Vec<CounterValue>, StoreError> {
        usage::counter_series(self, query).await
    }

    async fn ledger_page(
        &self,
        org: &OrgId,
        month: Month,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<LedgerPage, StoreError> {
        usage::ledger_page(self, org, month, cursor, limit).await
    }

    async fn stored_counters(
        &self,
        org: &OrgId,
        month: Month,
    ) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError> {
        usage::stored_counters(self, org, month).await
    }

    async fn is_period_closed(&self, month: Month) -> Result<bool, StoreError> {
        usage::is_period_closed(self, month).await
    }

    async fn close_period(&self, month: Month, at: DateTime<Utc>) -> Result<(), StoreError> {
        usage::close_period(self, month, at).await
    }
}
