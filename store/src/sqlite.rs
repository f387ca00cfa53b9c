//! [`SqliteStore`]: the embedded backend of every storage port, one SQLite file. This file
//! holds the connections, the schema migrations and the [`UsageStore`] (ledger and
//! counters, with the cells in `sqlite/counters.rs`); each other port has its own file, as
//! in the DynamoDB adapter: users, orgs and projects in `sqlite/tenants.rs`, memberships in
//! `sqlite/members.rs`, API keys in `sqlite/keys.rs`, invitations in
//! `sqlite/invitations.rs`, the audit trail in `sqlite/audit.rs`,
//! [`ReportStore`](tally_core::ports::ReportStore) in `sqlite/reports.rs`, the Stripe sync
//! ledger in `sqlite/sync_ledger.rs` and plan-limit alerts in `sqlite/alerts.rs`.
//!
//! # Processes and connections
//!
//! `tally serve` and the `tally` CLI open the same file from different processes at once, so
//! the file runs in WAL mode (readers never block the writer), with `synchronous=NORMAL` (a
//! committed transaction survives a process crash; a power cut may lose the last few) and a
//! busy timeout (5 s by default) so a writer waits for the other process's write lock rather
//! than failing. Every write transaction starts with `BEGIN IMMEDIATE`: it takes the write
//! lock up front, so two processes never both read and then fail to upgrade.
//!
//! Inside a process there is one writer connection and one reader connection, each behind a
//! `std::sync::Mutex`, and all SQLite work runs in `tokio::task::spawn_blocking`. Queries
//! (dashboards, key lookups) go to the reader and so never wait behind a batch write.
//!
//! # The ledger's key layout
//!
//! The ledger must answer one question per event, in every batch: "has (org, event id) been
//! seen?". Event ids are the clients' own and arrive in no particular order across orgs, so
//! whatever B-tree is keyed by (org, event id) is written at random places, and each touched
//! page is written to the WAL at commit (and again at checkpoint). That is the embedded
//! backend's wall (see `docs/testing.md`: ~55k rows/s when the ledger *table* is keyed by
//! (org, id), ~68k when it is a rowid table with a unique index on (org, id), ~690k for
//! inserts in key order). So:
//!
//! - The ledger table is a rowid table: rows are appended in arrival order (`seq`), which
//!   touches only the last pages of the table. Row size then costs sequential bytes only,
//!   and the row is kept small anyway: the key columns plus a compact JSON body that leaves
//!   out what the columns already hold (org, id).
//! - Uniqueness lives in a narrow index, `UNIQUE (org, event_id)`: the only structure
//!   written at random, with entries as small as the key allows, so more of it fits per page
//!   and in the page cache. `INSERT ... ON CONFLICT (org, event_id) DO NOTHING` both checks and
//!   records an event in one probe; the changed-row count says whether it was new.
//! - Inside a batch, ledger rows are inserted in (org, event id) order, so events of one org
//!   that land on the same index page are written while it is hot.
//! - Bigger batches amortize the random pages better (a page touched by several events of one
//!   commit is written once), so callers should apply a few thousand events per call when
//!   they have them.
//! - Checkpoints run on a background thread ([`SqliteConfig::checkpoint_interval`]), not in
//!   the commit: with random inserts nearly every commit crosses SQLite's automatic
//!   threshold, and copying plus fsyncing the pages inside the batch's commit halved
//!   throughput.
//! - `ledger_page` reads through the same index (org, then event id), filtering on the
//!   `month` column; no second index is kept for it, because every index on the ledger costs
//!   random writes on the hot path, while reading a month is a rare reconcile/billing job.
//! - Each ledger row records when it was written (`written`, Unix seconds, from the store's
//!   clock: [`SqliteStore::with_clock`]); rows written before schema 9 have none. See
//!   "Retention" below.
//!
//! Measured with `examples/apply_throughput.rs` (release, 2 cores, 32-character random
//! event ids, `sum` meter, two projects per org): 1,000 orgs interleaved at random,
//! 1,000,000 events, 28k–34k events/s at 1,000 events per batch and 44k–48k at 5,000,
//! against 19k–27k and 38k–41k when the store wrote six counters per event (same host,
//! alternating runs; `bench/RESULTS.md`). With 10 orgs the counters collapse in the fold
//! either way and the ledger sets the pace (42k–47k at 1,000 per batch).
//!
//! # Retention
//!
//! The ledger keeps a row [`LEDGER_RETENTION`] (45 days) after writing it, as DynamoDB's TTL
//! does, and [`SqliteStore::prune_ledger`] deletes it afterwards (`tally prune-ledger`, and
//! `tally serve` and `tally aggregate` every hour). Counters are never pruned: they are the
//! totals, and reports are built from them.
//!
//! Why forgetting is safe (the argument in full at [`LEDGER_RETENTION`]): the ledger exists
//! to say "already counted" when an event comes again. An event stamped in month M is
//! written no sooner than M's start less the 5 minutes of skew ingest allows, and ingest
//! takes events of M only until the next month's start plus the 7-day late window
//! (`core::period::open_for_events`), at most 38 days after M began; a row is kept at
//! least 45 days. So by the time a row may go, the same event sent again is refused at
//! ingest as `period_closed`, before any duplicate check. Reconcile, which reads a month's
//! rows, refuses a month from its start − 5 minutes + 45 days on (it asks
//! [`UsageStore::ledger_retention`]), before any of its rows may be gone. A copy that waited
//! in the queue more than a week after the month closed, or an id resent with another
//! timestamp, is counted again once the first row is gone: the same holds on DynamoDB.
//!
//! How it prunes: rows are appended in write order (`seq`), so the old ones are a prefix of
//! the table. Pruning walks that prefix [`PRUNE_BATCH_ROWS`] (10,000) rows per write
//! transaction, so a batch of events waits at most for one such transaction, and stops at
//! the first span holding a row written within the retention. A row without `written`
//! (written before schema 9) goes when its month is past the retention as reconcile counts
//! it (its start − 5 minutes + 45 days), which is no sooner than its write time plus 45 days.
//! Pruning deletes rows by the `written` it finds, so a clock set back only delays it.
//!
//! Counters: `sum`, `count`, `max` and `latest` meters are kept as one row per (org,
//! project, meter, hour) and per (org, project, meter, day), and month and org-wide values
//! are derived when read (see [`counters`] for why and what it costs); `unique_count` meters
//! keep their six counters explicitly, keyed `(org, project, meter, granularity, start)`
//! (`project` is `''` for the org-wide counter), with one marker per value seen. Values are
//! decimal text (exact), `latest_at` is RFC 3339 text with full precision (ties compare
//! exactly as in the fold).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Params, TransactionBehavior, params};
use rust_decimal::Decimal;
use tally_core::counter::{CounterScope, OwnedCounterKey};
use tally_core::event::Event;
use tally_core::fold;
use tally_core::headroom;
use tally_core::ids::{EventId, OrgId};
use tally_core::period::{Granularity, LEDGER_RETENTION, Month};
use tally_core::ports::{
    ApplyOutcome, ApplyReport, Clock, CounterQuery, CounterValue, LedgerPage, StoreError,
    SystemClock, UsageStore,
};

use crate::conn::{self, ConnSettings, Kind};
use crate::secs::{bucket_start, ceil_secs};

mod alerts;
mod audit;
mod catalogue;
mod counters;
mod invitations;
mod keys;
mod members;
mod reports;
mod sync_ledger;
mod tenants;

use members::role_of;
use tenants::{read_org, read_project, require_live_org};

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 10;

/// Most ledger rows [`SqliteStore::prune_ledger`] looks at (and deletes) in one write
/// transaction, so a batch of events never waits long behind it.
pub const PRUNE_BATCH_ROWS: usize = 10_000;

/// Most ledger events one [`UsageStore::ledger_page`] call returns.
pub const MAX_LEDGER_PAGE: usize = 10_000;

const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS users (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,   -- lowercased
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS orgs (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    plan        TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
    org         TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    role        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (org, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS memberships_by_user ON memberships (user_id, org);
CREATE TABLE IF NOT EXISTS projects (
    org         TEXT NOT NULL,
    id          TEXT NOT NULL,
    slug        TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (org, id),
    UNIQUE (org, slug)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS api_keys (
    org             TEXT NOT NULL,
    id              TEXT NOT NULL,
    hash            TEXT NOT NULL,
    name            TEXT NOT NULL,
    display_prefix  TEXT NOT NULL,
    scopes          TEXT NOT NULL,  -- JSON array of scope names
    created_at      TEXT NOT NULL,
    expires_at      TEXT,
    revoked_at      TEXT,
    PRIMARY KEY (org, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_by_hash ON api_keys (hash);
CREATE TABLE IF NOT EXISTS ledger (
    seq         INTEGER PRIMARY KEY,    -- arrival order: appends touch only the last pages
    org         TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    month       INTEGER NOT NULL,       -- yyyymm of the event's timestamp
    body        TEXT NOT NULL           -- the rest of the event, compact JSON
);
CREATE UNIQUE INDEX IF NOT EXISTS ledger_by_event ON ledger (org, event_id);
CREATE TABLE IF NOT EXISTS counters (
    org         TEXT NOT NULL,
    project     TEXT NOT NULL,          -- '' for the org-wide counter
    meter       TEXT NOT NULL,
    granularity INTEGER NOT NULL,       -- 1 hour, 2 day, 3 month
    start       INTEGER NOT NULL,       -- bucket start, Unix seconds
    value       TEXT NOT NULL,          -- exact decimal
    latest_at   TEXT,                   -- `latest` meters: the reading's time
    PRIMARY KEY (org, project, meter, granularity, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS unique_markers (
    org         TEXT NOT NULL,
    project     TEXT NOT NULL,
    meter       TEXT NOT NULL,
    granularity INTEGER NOT NULL,
    start       INTEGER NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (org, project, meter, granularity, start, value)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS closed_periods (
    month       INTEGER PRIMARY KEY,    -- yyyymm
    closed_at   TEXT NOT NULL
);
"#;

/// Settings of a [`SqliteStore`].
#[derive(Debug, Clone, Copy)]
pub struct SqliteConfig {
    /// How long a write waits for another process's write lock before failing with
    /// `Unavailable`. Default 5 s.
    pub busy_timeout: Duration,
    /// Page cache of the writer connection in MiB (the ledger index wants to stay cached).
    /// Default 64.
    pub writer_cache_mib: u32,
    /// Page cache of the reader connection in MiB. Default 16.
    pub reader_cache_mib: u32,
    /// `synchronous=FULL` instead of `NORMAL`: also survive power loss, at the cost of an
    /// fsync per commit. Default `false` (a commit survives a process crash).
    pub sync_full: bool,
    /// Checkpoint the WAL from a background thread this often, so batch commits never stop
    /// to copy pages into the database file (about twice the apply throughput under
    /// random-order ledger inserts). `None` leaves it to SQLite's automatic checkpoint on
    /// commit. Default 200 ms.
    pub checkpoint_interval: Option<Duration>,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            busy_timeout: Duration::from_secs(5),
            writer_cache_mib: 64,
            reader_cache_mib: 16,
            sync_full: false,
            checkpoint_interval: Some(Duration::from_millis(200)),
        }
    }
}

/// Tenants, the event ledger and the counters in one SQLite file. Cheap to clone (the
/// connections are shared).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
    /// When ledger rows are written (`written`); [`SqliteStore::with_clock`].
    clock: Arc<dyn Clock>,
}

/// What [`SqliteStore::prune_ledger`] did (or, dry, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    /// Ledger rows deleted (dry: that would be).
    pub deleted: u64,
    /// Write transactions it took (dry: read passes).
    pub batches: u64,
    /// Rows written before this instant (less a second) went; later ones stay.
    pub cutoff: DateTime<Utc>,
    /// Whether nothing was deleted because it was asked not to.
    pub dry_run: bool,
}

struct Inner {
    /// The one connection that writes; batches and tenant changes queue here.
    writer: Mutex<Connection>,
    /// Serves queries, so reads never wait behind a batch write (WAL lets it read the last
    /// committed state while the writer works).
    reader: Mutex<Connection>,
    /// Checkpoints the WAL in the background; stops when the store is dropped.
    _checkpointer: Option<conn::Checkpointer>,
    /// Month totals this process knows, so the `counter_overflow` check reads nothing in
    /// steady state ([`counters::Totals`]). Locked only by the writer, inside its lock.
    totals: Mutex<counters::Totals>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file and the schema if missing, with the
    /// default [`SqliteConfig`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteConfig::default())
    }

    /// Opens the store at `path` with explicit settings.
    pub fn open_with(path: &Path, config: SqliteConfig) -> Result<Self, StoreError> {
        let checkpointing = config.checkpoint_interval.is_some();
        let settings = |cache_mib| {
            ConnSettings::new(
                config.busy_timeout,
                config.sync_full,
                checkpointing,
                cache_mib,
            )
        };
        let mut writer = conn::open(path, settings(config.writer_cache_mib)).map_err(db)?;
        migrate(&mut writer)?;
        let reader = conn::open(path, settings(config.reader_cache_mib)).map_err(db)?;
        reader.pragma_update(None, "query_only", true).map_err(db)?;
        let checkpointer = config
            .checkpoint_interval
            .map(|every| conn::Checkpointer::spawn(path, settings(2), every))
            .transpose()
            .map_err(StoreError::Unavailable)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                _checkpointer: checkpointer,
                totals: Mutex::default(),
            }),
            clock: Arc::new(SystemClock),
        })
    }

    /// The same store, writing ledger rows' time from `clock` (the system clock by default):
    /// the process's clock, so that [`SqliteStore::prune_ledger`]'s `now` and the rows'
    /// times agree; tests pass a fixed one.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        SqliteStore { clock, ..self }
    }

    /// Deletes the ledger rows written more than [`LEDGER_RETENTION`] before `now` (see
    /// "Retention" in the module doc), [`PRUNE_BATCH_ROWS`] rows per write transaction;
    /// `dry_run` only counts them. Counters are not touched. `now` comes from the clock the
    /// store writes with ([`SqliteStore::with_clock`]).
    pub async fn prune_ledger(
        &self,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<PruneReport, StoreError> {
        let cutoff = now - LEDGER_RETENTION;
        // Rows without a write time: those of months reconcile already refuses at `now`.
        let last_old_month = month_key(Month::of(
            now + tally_core::event::MAX_FUTURE_SKEW - LEDGER_RETENTION,
        ));
        let bound = PruneBound {
            before: cutoff.timestamp(),
            last_old_month,
        };
        let mut report = PruneReport {
            deleted: 0,
            batches: 0,
            cutoff: secs_ts(bound.before),
            dry_run,
        };
        let mut after = 0i64;
        loop {
            let step = if dry_run {
                self.read(move |conn| prune_step(conn, after, bound, false))
                    .await?
            } else {
                self.write(move |conn| {
                    let tx = immediate(conn)?;
                    let step = prune_step(&tx, after, bound, true)?;
                    tx.commit().map_err(db)?;
                    Ok(step)
                })
                .await?
            };
            report.batches += 1;
            report.deleted += step.deleted;
            match step.next {
                Some(next) => after = next,
                None => break,
            }
        }
        Ok(report)
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&mut conn::lock(&inner.writer)))
            .await
            .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&conn::lock(&inner.reader)))
            .await
            .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }

    /// Runs `f` in one write transaction ([`immediate`]), committed when `f` succeeds and
    /// rolled back when it fails, so a refused write leaves nothing behind.
    async fn transact<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let out = f(&tx)?;
            tx.commit().map_err(db)?;
            Ok(out)
        })
        .await
    }
}

/// Creates or upgrades the schema, under the write lock so two processes opening a new file
/// at once do it once.
/// Version 8: every org's plan changes, which month close prices by
/// ([`tally_core::plan::billed_plan`]). `seq` orders changes of one instant.
const SCHEMA_V8: &str = r#"
CREATE TABLE IF NOT EXISTS plan_changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    org         TEXT NOT NULL,
    at          TEXT NOT NULL,
    from_plan   TEXT NOT NULL,
    to_plan     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS plan_changes_by_org ON plan_changes (org, at, seq);
"#;

/// Version 9: when each ledger row was written (Unix seconds; `NULL` for rows written
/// before), which pruning goes by (see "Retention" in the module doc). Adding a nullable
/// column rewrites nothing.
const SCHEMA_V9: &str = "ALTER TABLE ledger ADD COLUMN written INTEGER;";

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = immediate(conn)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "database schema version {version} is newer than this build supports ({SCHEMA_VERSION})"
        )));
    }
    // Versions 1 to 6, 8 and 9 are plain SQL; 7 also rebuilds the counters.
    let plain = [
        SCHEMA_V1,
        audit::SCHEMA_V2,
        reports::SCHEMA_V3,
        invitations::SCHEMA_V4,
        sync_ledger::SCHEMA_V5,
        alerts::SCHEMA_V6,
    ];
    for (to, sql) in (1..).zip(plain) {
        if version < to {
            tx.execute_batch(sql).map_err(db)?;
        }
    }
    if version < 7 {
        tx.execute_batch(counters::SCHEMA_V7).map_err(db)?;
        if version >= 1 {
            let replayed = counters::rebuild_from_ledger(&tx)?;
            tracing::info!(
                replayed,
                "rebuilt the counters from the ledger as hour and day cells"
            );
        }
    }
    if version < 8 {
        tx.execute_batch(SCHEMA_V8).map_err(db)?;
    }
    if version < 9 {
        // `ADD COLUMN` has no `IF NOT EXISTS`; the other versions' statements are idempotent,
        // and so is this one by asking first.
        let has: bool = tx
            .query_row(
                "SELECT count(*) > 0 FROM pragma_table_info('ledger') WHERE name = 'written'",
                [],
                |r| r.get(0),
            )
            .map_err(db)?;
        if !has {
            tx.execute_batch(SCHEMA_V9).map_err(db)?;
        }
    }
    if version < 10 {
        tx.execute_batch(catalogue::SCHEMA_V10).map_err(db)?;
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(db)?;
    }
    tx.commit().map_err(db)
}

// ---------------------------------------------------------------------------------------
// Encoding helpers.

/// Maps a rusqlite error to the port's error.
fn db(e: rusqlite::Error) -> StoreError {
    match conn::kind(&e) {
        Kind::Transient | Kind::Other => StoreError::Unavailable(e.to_string()),
        Kind::Corrupt => StoreError::Corrupt(e.to_string()),
        Kind::Constraint => StoreError::Conflict {
            what: e.to_string(),
        },
    }
}

/// Begins the `IMMEDIATE` transaction every write runs in: the write lock is taken up
/// front, so a transaction that reads before it writes never fails to upgrade halfway.
fn immediate(conn: &mut Connection) -> Result<rusqlite::Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)
}

/// Runs one statement (cached, as every statement here): how many rows it changed.
fn execute(conn: &Connection, sql: &str, params: impl Params) -> Result<usize, StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute(params))
        .map_err(db)
}

/// First write wins: runs `insert` (an `INSERT ... ON CONFLICT DO NOTHING`), then reads
/// back with `select` the row stored now, this one or the one written first. Inside the
/// write transaction, so no other writer comes between.
fn insert_or_keep<T>(
    tx: &Connection,
    (insert, values): (&str, impl Params),
    (select, key): (&str, impl Params),
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<T, StoreError> {
    execute(tx, insert, values)?;
    tx.prepare_cached(select)
        .and_then(|mut s| s.query_row(key, row))
        .map_err(db)
}

/// Whether a query returns any row: the existence checks writes make before they write.
fn exists(conn: &Connection, sql: &str, params: impl Params) -> Result<bool, StoreError> {
    Ok(query_opt(conn, sql, params, |_| Ok(()))?.is_some())
}

/// The first row of a query, read by `row`, or `None` when there is none.
fn query_opt<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.query_row(params, row).optional())
        .map_err(db)
}

/// The first row of a query, read by `row` and decoded by `of`, or `None` when there is
/// none.
fn read_one<R, T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
    of: impl FnOnce(R) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    query_opt(conn, sql, params, row)?.map(of).transpose()
}

/// Every row of a query, read by `row` and decoded by `of`, in the query's order.
fn query_all<R, T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
    mut of: impl FnMut(R) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(db)?;
    let rows = stmt.query_map(params, row).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(&mut of)).collect()
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn ts_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt(format!("timestamp {s:?}: {e}")))
}

fn parse_opt_ts(s: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    s.as_deref().map(parse_ts).transpose()
}

fn parse_id<T, E: std::fmt::Display>(
    s: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, StoreError> {
    parse(s).map_err(|e| corrupt(format!("stored id {s:?}: {e}")))
}

fn month_key(m: Month) -> i64 {
    i64::from(m.year()) * 100 + i64::from(m.month())
}

fn gran_code(g: Granularity) -> i64 {
    match g {
        Granularity::Hour => 1,
        Granularity::Day => 2,
        Granularity::Month => 3,
    }
}

fn gran_of(code: i64) -> Result<Granularity, StoreError> {
    match code {
        1 => Ok(Granularity::Hour),
        2 => Ok(Granularity::Day),
        3 => Ok(Granularity::Month),
        other => Err(corrupt(format!("granularity code {other}"))),
    }
}

fn parse_decimal(s: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(s).map_err(|e| corrupt(format!("counter value {s:?}: {e}")))
}

fn scope_text<'a>(scope: &CounterScope<'a>) -> &'a str {
    match scope {
        CounterScope::Org => "",
        CounterScope::Project(p) => p.as_str(),
    }
}

fn encode_body(e: &Event) -> Result<String, StoreError> {
    crate::ledger_body::encode(e)
}

fn decode_event(org: &OrgId, id: &str, body: &str) -> Result<Event, StoreError> {
    crate::ledger_body::decode(org, parse_id(id, EventId::parse)?, body, "ledger row")
}

/// Opaque ledger cursor: the hex of the last event id returned.
fn encode_cursor(id: &str) -> String {
    hex::encode(id.as_bytes())
}

fn decode_cursor(c: &str) -> Result<String, StoreError> {
    hex::decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| corrupt(format!("ledger cursor {c:?} was not issued by this store")))
}

// ---------------------------------------------------------------------------------------
// Pruning.

/// Which ledger rows may go: written before `before` (Unix seconds), or, without a write
/// time, of a month up to `last_old_month` (yyyymm).
#[derive(Debug, Clone, Copy)]
struct PruneBound {
    before: i64,
    last_old_month: i64,
}

/// One span of [`SqliteStore::prune_ledger`].
struct PruneStep {
    /// Rows deleted (or, dry, that would be).
    deleted: u64,
    /// Where the next span starts (after this `seq`); `None`: done.
    next: Option<i64>,
}

const PRUNABLE: &str = "(written < ?3 OR (written IS NULL AND month <= ?4))";

/// Looks at the [`PRUNE_BATCH_ROWS`] rows after `seq` `after` and deletes (when `delete`)
/// or counts those past `bound`. The prefix ends at a span holding a row written since
/// `bound.before`: rows are appended in write order, so the rest is newer still.
fn prune_step(
    conn: &Connection,
    after: i64,
    bound: PruneBound,
    delete: bool,
) -> Result<PruneStep, StoreError> {
    let span: (Option<i64>, i64, bool) = conn
        .prepare_cached(
            "SELECT max(seq), count(*), coalesce(max(written >= ?3), 0) FROM (
                 SELECT seq, written FROM ledger WHERE seq > ?1 ORDER BY seq LIMIT ?2)",
        )
        .and_then(|mut s| {
            s.query_row(params![after, PRUNE_BATCH_ROWS as i64, bound.before], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
        })
        .map_err(db)?;
    let (Some(last), rows, newer) = span else {
        return Ok(PruneStep {
            deleted: 0,
            next: None,
        });
    };
    let range = params![after, last, bound.before, bound.last_old_month];
    let deleted = if delete {
        execute(
            conn,
            &format!("DELETE FROM ledger WHERE seq > ?1 AND seq <= ?2 AND {PRUNABLE}"),
            range,
        )? as u64
    } else {
        conn.prepare_cached(&format!(
            "SELECT count(*) FROM ledger WHERE seq > ?1 AND seq <= ?2 AND {PRUNABLE}"
        ))
        .and_then(|mut s| s.query_row(range, |r| r.get::<_, i64>(0)))
        .map_err(db)? as u64
    };
    let full = rows as usize == PRUNE_BATCH_ROWS;
    Ok(PruneStep {
        deleted,
        next: (full && !newer).then_some(last),
    })
}

fn secs_ts(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

// ---------------------------------------------------------------------------------------
// UsageStore.

/// Applies one batch in one transaction; see [`UsageStore::apply_batch`].
fn apply_batch_tx(
    conn: &mut Connection,
    events: &[Event],
    written: i64,
    totals: &mut counters::Totals,
) -> Result<ApplyReport, StoreError> {
    // First occurrence of each (org, id) in the batch, by position.
    let kept = fold::dedupe_in_batch(events);
    let mut first = vec![false; events.len()];
    let mut k = kept.iter().peekable();
    for (i, e) in events.iter().enumerate() {
        if k.next_if(|r| std::ptr::eq(**r, e)).is_some() {
            first[i] = true;
        }
    }
    // Insert in index order so neighbouring keys share index pages while they are hot.
    let mut order: Vec<usize> = (0..events.len()).filter(|&i| first[i]).collect();
    order.sort_unstable_by(|&a, &b| {
        (&events[a].org_id, &events[a].id).cmp(&(&events[b].org_id, &events[b].id))
    });
    let bodies = order
        .iter()
        .map(|&i| encode_body(&events[i]))
        .collect::<Result<Vec<_>, _>>()?;

    let tx = immediate(conn)?;
    let mut new = vec![false; events.len()];
    {
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO ledger (org, event_id, month, body, written)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (org, event_id) DO NOTHING",
            )
            .map_err(db)?;
        for (&i, body) in order.iter().zip(&bodies) {
            let e = &events[i];
            let changed = ins
                .execute(params![
                    e.org_id.as_str(),
                    e.id.as_str(),
                    month_key(Month::of(e.timestamp)),
                    body,
                    written
                ])
                .map_err(db)?;
            new[i] = changed == 1;
        }
    }
    // Events that would take a month total past the limit are refused, in batch order,
    // and leave the ledger again (`counter_overflow`; see `tally_core::headroom`).
    let fresh = || (0..events.len()).filter(|&i| new[i]);
    totals.check_version(&tx)?;
    let mut before = HashMap::new();
    for key in headroom::needs(fresh().map(|i| &events[i])).into_keys() {
        let total = totals.get(&tx, &key)?;
        before.insert(key, total);
    }
    let admission = headroom::admit(fresh().map(|i| (i, &events[i])), |key| {
        headroom::room_under_limit(before.get(key).copied().unwrap_or(headroom::COUNTER_LIMIT))
    });
    let mut refused = vec![false; events.len()];
    if !admission.refused.is_empty() {
        let mut forget = tx
            .prepare_cached("DELETE FROM ledger WHERE org = ?1 AND event_id = ?2")
            .map_err(db)?;
        for &i in &admission.refused {
            forget
                .execute(params![events[i].org_id.as_str(), events[i].id.as_str()])
                .map_err(db)?;
            new[i] = false;
            refused[i] = true;
        }
        // A repeat of a refused first copy was not counted either.
        let ids: HashSet<(&OrgId, &EventId)> = admission
            .refused
            .iter()
            .map(|&i| (&events[i].org_id, &events[i].id))
            .collect();
        for (i, e) in events.iter().enumerate() {
            if ids.contains(&(&e.org_id, &e.id)) {
                refused[i] = true;
            }
        }
    }
    counters::apply(
        &tx,
        events.iter().zip(&new).filter_map(|(e, n)| n.then_some(e)),
    )?;
    let compared: Vec<bool> = new.iter().zip(&refused).map(|(n, r)| *n || *r).collect();
    let conflicts = conflicting_repeats(&tx, events, &compared)?;
    tx.commit().map_err(db)?;
    totals.committed(before, &admission.growth);
    Ok(ApplyReport {
        conflicts,
        outcomes: new
            .into_iter()
            .zip(refused)
            .map(|(n, r)| match (n, r) {
                (_, true) => ApplyOutcome::Overflow,
                (true, false) => ApplyOutcome::Applied,
                (false, false) => ApplyOutcome::Duplicate,
            })
            .collect(),
    })
}

/// The repeats (`skip[i]` false: neither new nor refused) whose contents differ from the copy the ledger counted: read
/// back inside the batch's transaction, so a first copy earlier in the same batch is seen
/// too. One indexed read per distinct repeated id; a batch without repeats reads nothing.
/// Only a report: a stored body that does not decode is logged and left uncompared, never
/// a reason to fail (and forever retry) the batch.
fn conflicting_repeats(
    tx: &rusqlite::Transaction<'_>,
    events: &[Event],
    skip: &[bool],
) -> Result<Vec<usize>, StoreError> {
    let mut conflicts = Vec::new();
    if skip.iter().all(|n| *n) {
        return Ok(conflicts);
    }
    let mut read = tx
        .prepare_cached("SELECT body FROM ledger WHERE org = ?1 AND event_id = ?2")
        .map_err(db)?;
    let mut counted: HashMap<(&OrgId, &EventId), Option<Event>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if skip[i] {
            continue;
        }
        let copy = match counted.entry((&e.org_id, &e.id)) {
            std::collections::hash_map::Entry::Occupied(c) => c.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let body: String = read
                    .query_row(params![e.org_id.as_str(), e.id.as_str()], |r| r.get(0))
                    .map_err(db)?;
                let copy = decode_event(&e.org_id, e.id.as_str(), &body)
                    .inspect_err(|err| {
                        tracing::warn!(error = %err, "cannot compare a resend with its ledger row");
                    })
                    .ok();
                slot.insert(copy)
            }
        };
        if copy.as_ref().is_some_and(|c| c != e) {
            conflicts.push(i);
        }
    }
    Ok(conflicts)
}

#[async_trait]
impl UsageStore for SqliteStore {
    /// Rows are kept [`LEDGER_RETENTION`] after they are written, then pruned
    /// ([`SqliteStore::prune_ledger`]), as on DynamoDB.
    fn ledger_retention(&self) -> Option<chrono::Duration> {
        Some(LEDGER_RETENTION)
    }

    async fn apply_batch(&self, events: &[Event]) -> Result<ApplyReport, StoreError> {
        if events.is_empty() {
            return Ok(ApplyReport::default());
        }
        let events = events.to_vec();
        let written = self.clock.now().timestamp();
        let inner = Arc::clone(&self.inner);
        self.write(move |conn| {
            let mut totals = inner
                .totals
                .lock()
                .map_err(|_| StoreError::Unavailable("month totals lock poisoned".into()))?;
            apply_batch_tx(conn, &events, written, &mut totals)
        })
        .await
    }

    async fn counter_series(&self, q: &CounterQuery) -> Result<Vec<CounterValue>, StoreError> {
        let q = q.clone();
        self.read(move |conn| {
            counters::series(
                conn,
                q.org.as_str(),
                q.project.as_ref().map(|p| p.as_str()).unwrap_or_default(),
                q.meter.as_str(),
                q.granularity,
                q.from,
                q.to,
            )
        })
        .await
    }

    async fn ledger_page(
        &self,
        org: &OrgId,
        month: Month,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<LedgerPage, StoreError> {
        let after = cursor.as_deref().map(decode_cursor).transpose()?;
        let limit = limit.clamp(1, MAX_LEDGER_PAGE);
        let org = org.clone();
        self.read(move |conn| {
            // Fetch one more than asked to learn whether another page exists.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT event_id, body FROM ledger
                     WHERE org = ?1 AND event_id > ?2 AND month = ?3
                     ORDER BY event_id LIMIT ?4",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(
                    params![
                        org.as_str(),
                        after.unwrap_or_default(),
                        month_key(month),
                        (limit + 1) as i64
                    ],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )
                .map_err(db)?;
            let mut events = Vec::with_capacity(limit);
            let mut more = false;
            for row in rows {
                let (id, body) = row.map_err(db)?;
                if events.len() == limit {
                    more = true;
                    break;
                }
                events.push(decode_event(&org, &id, &body)?);
            }
            let next = if more {
                events.last().map(|e: &Event| encode_cursor(e.id.as_str()))
            } else {
                None
            };
            Ok(LedgerPage { events, next })
        })
        .await
    }

    async fn stored_counters(
        &self,
        org: &OrgId,
        month: Month,
    ) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError> {
        let org = org.clone();
        self.read(move |conn| counters::stored(conn, &org, month))
            .await
    }

    async fn is_period_closed(&self, month: Month) -> Result<bool, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached("SELECT 1 FROM closed_periods WHERE month = ?1")
                .and_then(|mut s| s.exists(params![month_key(month)]))
                .map_err(db)
        })
        .await
    }

    async fn close_period(&self, month: Month, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO closed_periods (month, closed_at) VALUES (?1, ?2)
                 ON CONFLICT (month) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![month_key(month), ts_text(at)]))
            .map_err(db)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};
    use tally_core::event::Quantity;
    use tally_core::ids::{MeterName, ProjectId};
    use tally_core::meter::Aggregation;

    fn event(org: &OrgId, id: &str, ts: &str) -> Event {
        Event {
            org_id: org.clone(),
            id: EventId::parse(id).unwrap(),
            project_id: ProjectId::parse("prj_1").unwrap(),
            meter: MeterName::parse("api_calls").unwrap(),
            aggregation: Aggregation::Sum,
            quantity: Quantity::new(Decimal::new(25, 1)).unwrap(),
            timestamp: DateTime::parse_from_rfc3339(ts)
                .unwrap()
                .with_timezone(&Utc),
            properties: Map::new(),
        }
    }

    #[tokio::test]
    async fn schema_version_is_recorded_and_newer_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.db");
        drop(SqliteStore::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = c
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(c);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn schema_7_rebuilds_explicit_counters_as_cells_from_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.db");
        let org = OrgId::parse("org_a").unwrap();
        let at = "2026-11-26T10:00:00Z";
        let mut events: Vec<Event> = (0..3).map(|i| event(&org, &format!("e{i}"), at)).collect();
        events[2].timestamp += chrono::Duration::hours(30);
        // One meter of every other kind, all in the first hour.
        let kinds = [
            ("peak", Aggregation::Max),
            ("temp", Aggregation::Latest),
            (
                "users",
                Aggregation::UniqueCount {
                    property: "user".into(),
                },
            ),
        ];
        for (m, (name, agg)) in kinds.into_iter().enumerate() {
            for (i, user) in ["u1", "u2", "u1"].into_iter().enumerate() {
                let mut e = event(&org, &format!("{name}{i}"), at);
                e.meter = MeterName::parse(name).unwrap();
                e.aggregation = agg.clone();
                e.quantity = Quantity::new(Decimal::from(10 * m + i)).unwrap();
                e.properties.insert("user".into(), Value::from(user));
                events.push(e);
            }
        }
        let month = Month::of(events[0].timestamp);
        let expected = {
            let s = SqliteStore::open(&path).unwrap();
            assert_eq!(s.apply_batch(&events).await.unwrap().applied(), 12);
            s.stored_counters(&org, month).await.unwrap()
        };
        // `sum`: 2 hours and 2 days × org and project, 1 month × org and project; the other
        // three meters 6 each.
        assert_eq!(expected.len(), 10 + 3 * 6);
        let month_total = |name: &str| {
            expected
                .iter()
                .find(|(k, _)| {
                    k.meter.as_str() == name
                        && k.granularity == Granularity::Month
                        && k.project.is_none()
                })
                .map(|(_, v)| *v)
        };
        assert_eq!(month_total("api_calls"), Some(Decimal::new(75, 1)));
        assert_eq!(month_total("peak"), Some(Decimal::from(2)));
        assert_eq!(month_total("temp"), Some(Decimal::from(12)));
        assert_eq!(month_total("users"), Some(Decimal::from(2)));
        // What a schema 6 file holds: the same ledger and schema 1's `counters` table, with a
        // stale explicit counter, and no cells.
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "DROP TABLE cells; DROP TABLE unique_counters; DELETE FROM unique_markers;",
        )
        .unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        c.execute(
            "INSERT INTO counters (org, project, meter, granularity, start, value)
             VALUES ('org_a', '', 'api_calls', 3, ?1, '99')",
            [month.start().timestamp()],
        )
        .unwrap();
        c.pragma_update(None, "user_version", 6).unwrap();
        drop(c);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.stored_counters(&org, month).await.unwrap(), expected);
        let c = Connection::open(&path).unwrap();
        let count = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
        // Gone, so an older build still running on the file fails instead of writing there.
        assert_eq!(
            count("SELECT count(*) FROM sqlite_master WHERE name = 'counters'"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM unique_counters"), 6);
        assert_eq!(count("SELECT count(*) FROM unique_markers"), 2 * 6);
        // The ledger still knows every event.
        assert_eq!(s.apply_batch(&events).await.unwrap().duplicates(), 12);
        assert_eq!(s.stored_counters(&org, month).await.unwrap(), expected);
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ledger_rows(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))
            .unwrap()
    }

    /// Rows written 45 days ago and more go, in spans of `PRUNE_BATCH_ROWS`; rows written
    /// since stay and still catch resends; counters are untouched; a dry run deletes nothing.
    #[tokio::test]
    async fn pruning_deletes_ledger_rows_past_the_retention_only() {
        use tally_core::ports::FixedClock;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.db");
        let clock = Arc::new(FixedClock::at(at("2026-10-02T00:00:00Z")));
        let s = SqliteStore::open(&path).unwrap().with_clock(clock.clone());
        let org = OrgId::parse("org_a").unwrap();
        let october = Month::parse("2026-10").unwrap();
        let november = Month::parse("2026-11").unwrap();
        // More than two spans of old rows, so pruning takes several transactions.
        let old: Vec<Event> = (0..2 * PRUNE_BATCH_ROWS + 7)
            .map(|i| event(&org, &format!("old-{i}"), "2026-10-01T12:00:00Z"))
            .collect();
        for chunk in old.chunks(5_000) {
            assert_eq!(s.apply_batch(chunk).await.unwrap().applied(), chunk.len());
        }
        clock.set(at("2026-11-10T00:00:00Z"));
        let new = [
            event(&org, "new-1", "2026-11-10T00:00:00Z"),
            event(&org, "new-2", "2026-11-10T00:00:00Z"),
        ];
        s.apply_batch(&new).await.unwrap();
        let counters = (
            s.stored_counters(&org, october).await.unwrap(),
            s.stored_counters(&org, november).await.unwrap(),
        );
        let total = old.len() as i64 + 2;
        assert_eq!(ledger_rows(&path), total);

        // One second short of 45 days after the old rows were written: nothing goes.
        let written = at("2026-10-02T00:00:00Z");
        let early = s
            .prune_ledger(written + LEDGER_RETENTION, false)
            .await
            .unwrap();
        assert_eq!(early.deleted, 0, "{early:?}");
        assert_eq!(ledger_rows(&path), total);

        let now = written + LEDGER_RETENTION + chrono::Duration::seconds(1);
        let dry = s.prune_ledger(now, true).await.unwrap();
        assert_eq!(dry.deleted, old.len() as u64, "{dry:?}");
        assert!(dry.dry_run);
        assert_eq!(ledger_rows(&path), total, "a dry run deletes nothing");

        let done = s.prune_ledger(now, false).await.unwrap();
        assert_eq!(done.deleted, old.len() as u64, "{done:?}");
        assert!(done.batches >= 3, "{done:?}");
        assert_eq!(ledger_rows(&path), 2);
        assert!(
            s.ledger_page(&org, october, None, 10)
                .await
                .unwrap()
                .events
                .is_empty()
        );
        assert_eq!(
            s.ledger_page(&org, november, None, 10)
                .await
                .unwrap()
                .events,
            new.to_vec()
        );
        assert_eq!(
            (
                s.stored_counters(&org, october).await.unwrap(),
                s.stored_counters(&org, november).await.unwrap(),
            ),
            counters,
            "counters are never pruned"
        );
        // The kept rows still say "already counted".
        assert_eq!(s.apply_batch(&new).await.unwrap().duplicates(), 2);
        // Nothing is left to prune: one look at the table.
        let again = s.prune_ledger(now, false).await.unwrap();
        assert_eq!((again.deleted, again.batches), (0, 1), "{again:?}");
    }

    /// Rows written before schema 9 carry no write time: they go when reconcile refuses their
    /// month (its start less the 5-minute skew plus 45 days), not before.
    #[tokio::test]
    async fn rows_without_a_write_time_go_with_their_month() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.db");
        let s = SqliteStore::open(&path).unwrap();
        let org = OrgId::parse("org_a").unwrap();
        s.apply_batch(&[
            event(&org, "sep", "2026-09-30T23:00:00Z"),
            event(&org, "oct", "2026-10-01T00:00:00Z"),
        ])
        .await
        .unwrap();
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE ledger SET written = NULL", [])
            .unwrap();
        let october_goes = Month::parse("2026-10").unwrap().start()
            - tally_core::event::MAX_FUTURE_SKEW
            + LEDGER_RETENTION;
        let before = october_goes - chrono::Duration::seconds(1);
        assert_eq!(s.prune_ledger(before, false).await.unwrap().deleted, 1);
        assert_eq!(ledger_rows(&path), 1, "September went, October stays");
        assert_eq!(
            s.prune_ledger(october_goes, false).await.unwrap().deleted,
            1
        );
        assert_eq!(ledger_rows(&path), 0);
    }

    #[tokio::test]
    async fn ledger_rows_are_compact_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.db");
        let org = OrgId::parse("org_a").unwrap();
        let mut e = event(&org, "e1", "2026-11-26T10:00:00.123456789Z");
        e.properties.insert("route".into(), Value::from("/x"));
        {
            let s = SqliteStore::open(&path).unwrap();
            assert_eq!(s.apply_batch(&[e.clone()]).await.unwrap().applied(), 1);
        }
        let s = SqliteStore::open(&path).unwrap();
        let page = s
            .ledger_page(&org, Month::of(e.timestamp), None, 10)
            .await
            .unwrap();
        assert_eq!(page.events, vec![e.clone()]);
        assert_eq!(s.apply_batch(&[e]).await.unwrap().duplicates(), 1);
        let c = Connection::open(&path).unwrap();
        let body: String = c
            .query_row("SELECT body FROM ledger", [], |r| r.get(0))
            .unwrap();
        assert!(!body.contains("org_a") && !body.contains("e1"), "{body}");
        assert!(body.len() < 160, "{body}");
    }

    #[tokio::test]
    async fn an_applied_batch_survives_a_handle_that_never_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.db");
        let org = OrgId::parse("org_a").unwrap();
        let e = event(&org, "e1", "2026-11-26T10:00:00Z");
        let s = SqliteStore::open(&path).unwrap();
        s.apply_batch(std::slice::from_ref(&e)).await.unwrap();
        std::mem::forget(s);
        let s = SqliteStore::open(&path).unwrap();
        let month = Month::of(e.timestamp);
        assert_eq!(s.stored_counters(&org, month).await.unwrap().len(), 6);
        assert_eq!(s.apply_batch(&[e]).await.unwrap().duplicates(), 1);
    }

    #[tokio::test]
    async fn bad_rows_and_cursors_are_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.db");
        let s = SqliteStore::open(&path).unwrap();
        let org = OrgId::parse("org_a").unwrap();
        let e = event(&org, "e1", "2026-11-26T10:00:00Z");
        s.apply_batch(std::slice::from_ref(&e)).await.unwrap();
        let month = Month::of(e.timestamp);
        assert!(matches!(
            s.ledger_page(&org, month, Some("zz".into()), 10).await,
            Err(StoreError::Corrupt(_))
        ));
        let c = Connection::open(&path).unwrap();
        c.execute("UPDATE ledger SET body = 'nope'", []).unwrap();
        c.execute("UPDATE cells SET value = 'x'", []).unwrap();
        assert!(matches!(
            s.ledger_page(&org, month, None, 10).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            s.stored_counters(&org, month).await,
            Err(StoreError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn the_background_checkpointer_moves_the_wal_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.db");
        let s = SqliteStore::open_with(
            &path,
            SqliteConfig {
                checkpoint_interval: Some(Duration::from_millis(20)),
                ..SqliteConfig::default()
            },
        )
        .unwrap();
        let org = OrgId::parse("org_a").unwrap();
        let events: Vec<Event> = (0..2000)
            .map(|i| event(&org, &format!("e{i}"), "2026-11-26T10:00:00Z"))
            .collect();
        s.apply_batch(&events).await.unwrap();
        // Far below the backstop, so only the background thread copies pages over.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&path).unwrap().len() < 100_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint happened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(s);
        let s = SqliteStore::open(&path).unwrap();
        let page = s
            .ledger_page(&org, Month::parse("2026-11").unwrap(), None, 5000)
            .await
            .unwrap();
        assert_eq!(page.events.len(), 2000);
    }

    #[tokio::test]
    async fn a_held_write_lock_makes_writes_wait_then_fail_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.db");
        let s = SqliteStore::open_with(
            &path,
            SqliteConfig {
                busy_timeout: Duration::from_millis(100),
                ..SqliteConfig::default()
            },
        )
        .unwrap();
        let mut other = Connection::open(&path).unwrap();
        let tx = other
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let org = OrgId::parse("org_a").unwrap();
        let e = event(&org, "e1", "2026-11-26T10:00:00Z");
        assert!(matches!(
            s.apply_batch(std::slice::from_ref(&e)).await,
            Err(StoreError::Unavailable(_))
        ));
        // Reads still work while another process writes.
        assert!(!s.is_period_closed(Month::of(e.timestamp)).await.unwrap());
        drop(tx);
        assert_eq!(s.apply_batch(&[e]).await.unwrap().applied(), 1);
    }
}
