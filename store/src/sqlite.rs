//! [`SqliteStore`]: the embedded backend of every storage port, one SQLite file. This file
//! holds the connections and the row helpers every port uses; each port has its own file,
//! as in the DynamoDB adapter: the schema and its migrations in `sqlite/schema.rs`, the
//! [`UsageStore`] (ledger and counters) in `sqlite/usage.rs` with the cells in
//! `sqlite/counters.rs`, ledger pruning in `sqlite/prune.rs`, users, orgs and projects in
//! `sqlite/tenants.rs`, memberships in
//! `sqlite/members.rs`, API keys in `sqlite/keys.rs`, invitations in
//! `sqlite/invitations.rs`, the audit trail in `sqlite/audit.rs`,
//! [`ReportStore`](tally_core::ports::ReportStore) in `sqlite/reports.rs`, the Stripe sync
//! ledger in `sqlite/sync_ledger.rs`, plan-limit alerts in `sqlite/alerts.rs` and the
//! readings of time-weighted meters in `sqlite/readings.rs`.
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
//! page is written to the WAL at commit (and again at checkpoint). Once that tree outgrows
//! the page cache, every key of a 1,000-event commit lands on a leaf page of its own: that
//! is the embedded backend's wall (`bench/RESULTS.md`, "Ledger layouts past the
//! random-insert wall": at 3 M entries one keyed table took 8.6–9.0k rows/s, half its rate
//! at 100k entries). So the ledger is **partitioned by arrival** (schema 15; the code in
//! `sqlite/ledger.rs`):
//!
//! - Rows go to the hot table, `ledger`: a rowid table appended in arrival order (`seq`)
//!   with a narrow `UNIQUE (org, event_id)` index. `INSERT ... ON CONFLICT (org, event_id)
//!   DO NOTHING` checks and records an event in one probe; the changed-row count says
//!   whether it was new. The hot table holds at most about 100,000 entries
//!   ([`SqliteConfig::ledger_part_rows`]), so its index stays small and cached, and a
//!   commit's keys share a few hundred pages instead of dirtying one each.
//! - When the hot table is full, the batch that filled it seals it, in its own transaction:
//!   a split-block Bloom filter of its keys ([`crate::ledger_filter`], 16 bits per entry,
//!   ~0.1 % false positives, 200 KiB per 100,000 entries) is written to `ledger_filters`
//!   with its format version and a checksum, the table is renamed `ledger_NNNNN`, and a new
//!   hot table starts. A crash keeps the seal and its filter, or neither.
//! - Before a key is inserted, each sealed table whose filter says "maybe" is probed by key
//!   (its own unique index), newest first; a "no" costs one cache line. Sealed tables are
//!   only ever read. A filter that fails its version or checksum when loaded is rebuilt
//!   from its table and written back, never trusted: one that said "no" for a present key
//!   would count a resend twice (the store's tests plant both faults).
//! - A file from before schema 15 keeps its whole ledger, unrewritten, as the legacy table
//!   `ledger_00000`, probed by key for every event (no filter) until pruning empties it.
//! - The writer keeps the filters in memory and reloads the table list when another process
//!   wrote the file (`PRAGMA data_version`), so a seal by `tally import` is seen before the
//!   next batch. Opening loads the persisted filters and scans nothing.
//! - Inside a batch, rows are inserted in (org, event id) order, so events of one org that
//!   land on the same index page are written while it is hot.
//! - Checkpoints run on a background thread ([`SqliteConfig::checkpoint_interval`]), not in
//!   the commit: with random inserts nearly every commit crosses SQLite's automatic
//!   threshold, and copying plus fsyncing the pages inside the batch's commit halved
//!   throughput.
//! - `ledger_page` reads every table (`ledger_parts` lists them in arrival order) through
//!   its (org, event id) index in one read snapshot, merged in event id order, filtering on
//!   `month`; no second index is kept, because every index on the ledger costs random
//!   writes on the hot path, while reading a month is a rare reconcile/billing job.
//! - Each ledger row records when it was written (`written`, Unix seconds, from the store's
//!   clock: [`SqliteStore::with_clock`]); rows written before schema 9 have none. See
//!   "Retention" below.
//!
//! The figures that chose it (`bench/src/bin/ledger_layouts.rs`, which uses this crate's
//! filter; 2-core sandbox under heavy load, so ratios within one run only):
//!
//! - Raw inserts at 3 M entries, 1,000 rows per commit, 1 % resends: tables of 100,000
//!   entries with a filter in front ran **2.65–2.94×** the single keyed table; a 64-bit hash
//!   index instead of `UNIQUE (org, event_id)` 1.4–1.6×; 1 KiB pages and a `WITHOUT ROWID`
//!   ledger were slower. At 2 M entries, a filter per table (this layout) ran
//!   **3.1–4.4×** the keyed table and probed 4–5× fewer old tables than one global filter.
//! - Cold open of 10 M entries (100 sealed tables, file dropped from the OS cache): loading
//!   the persisted filters took **0.19–0.31 s** to open and 0.26–0.36 s to the first
//!   committed batch, against 39–41 s rebuilding one filter from every table's keys.
//! - These are raw ledger inserts; in the store the counters share the transaction, so
//!   Tally's own gain on a workload is smaller, and is measured by `ingest_load`.
//!
//! Earlier measurements of the single keyed table, with `examples/apply_throughput.rs`
//! (release, 2 cores, 32-character random event ids, `sum` meter, two projects per org):
//! 1,000 orgs interleaved at random, 1,000,000 events, 28k–34k events/s at 1,000 events per
//! batch and 44k–48k at 5,000, against 19k–27k and 38k–41k when the store wrote six
//! counters per event (same host, alternating runs; `bench/RESULTS.md`). With 10 orgs the
//! counters collapse in the fold either way and the ledger sets the pace (42k–47k at 1,000
//! per batch).
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
//! How it prunes: a sealed table goes whole, with one `DROP TABLE` (and its filter), once
//! its newest row's `written` is past the retention (so its older rows stay a little
//! longer, never shorter). In the hot and legacy tables rows are appended in write order
//! (`seq`), so the old ones are a prefix of the table. Pruning walks that prefix
//! [`PRUNE_BATCH_ROWS`] (10,000) rows per write transaction, so a batch of events waits at
//! most for one such transaction, and stops at the first span holding a row written within
//! the retention. A row without `written`
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

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Params, TransactionBehavior};
use rust_decimal::Decimal;
use tally_core::counter::CounterScope;
#[cfg(doc)]
use tally_core::period::LEDGER_RETENTION;
use tally_core::period::{Granularity, Month};
#[cfg(doc)]
use tally_core::ports::UsageStore;
use tally_core::ports::{Clock, StoreError, SystemClock};

use crate::conn::{self, Kind};
use crate::secs::{bucket_start, ceil_secs};

mod alerts;
mod audit;
mod catalogue;
mod counters;
#[cfg(test)]
mod fixtures;
mod invitations;
mod keys;
mod ledger;
mod members;
mod overrides;
mod prune;
mod readings;
mod reports;
mod schema;
mod security;
mod series;
mod sync_ledger;
mod tenants;
mod usage;

pub use ledger::{
    DEFAULT_PART_ROWS as DEFAULT_LEDGER_PART_ROWS, MAX_PART_ROWS as MAX_LEDGER_PART_ROWS,
};
use members::role_of;
pub use prune::PruneReport;
pub use schema::SCHEMA_VERSION;
use schema::migrate;
use tenants::{read_org, read_project, require_live_org};
pub use usage::MAX_LEDGER_PAGE;
use usage::decode_event;

/// Most ledger rows [`SqliteStore::prune_ledger`] looks at (and deletes) in one write
/// transaction, so a batch of events never waits long behind it.
pub const PRUNE_BATCH_ROWS: usize = 10_000;

/// Settings of a [`SqliteStore`]. Its `file_settings()` (what all connections to the store's
/// file share) is in `conn.rs`, beside the local queue's.
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
    /// Ledger entries per table before the table is sealed behind its filter (see "The
    /// ledger's key layout"). Default [`DEFAULT_LEDGER_PART_ROWS`]; taken as 1 to
    /// [`MAX_LEDGER_PART_ROWS`]. Tests seal small tables; a file's tables need not all be
    /// the same size.
    pub ledger_part_rows: usize,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            busy_timeout: Duration::from_secs(5),
            writer_cache_mib: 64,
            reader_cache_mib: 16,
            sync_full: false,
            checkpoint_interval: Some(Duration::from_millis(200)),
            ledger_part_rows: DEFAULT_LEDGER_PART_ROWS,
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
    /// The partitioned ledger's sealed tables and their filters ([`ledger::Ledger`]).
    /// Locked only by the writer, inside its lock.
    ledger: Mutex<ledger::Ledger>,
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
        let file = config.file_settings();
        let mut writer = conn::open(path, file.conn(config.writer_cache_mib)).map_err(db)?;
        migrate(&mut writer)?;
        // A batch probes up to one statement per sealed ledger table.
        writer.set_prepared_statement_cache_capacity(512);
        let reader = conn::open(path, file.conn(config.reader_cache_mib)).map_err(db)?;
        reader.pragma_update(None, "query_only", true).map_err(db)?;
        let checkpointer = file.checkpointer(path).map_err(StoreError::Unavailable)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                _checkpointer: checkpointer,
                totals: Mutex::default(),
                ledger: Mutex::new(ledger::Ledger::new(config.ledger_part_rows)),
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

/// The month a [`month_key`] stands for; a key that is none is a corrupt `what` period
/// (`alert`, `report`).
fn month_of_key(key: i64, what: &str) -> Result<Month, StoreError> {
    let year = i32::try_from(key / 100).ok();
    let month = u32::try_from(key % 100).ok();
    year.zip(month)
        .and_then(|(y, m)| Month::new(y, m))
        .ok_or_else(|| corrupt(format!("{what} period {key}")))
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

#[cfg(test)]
mod tests {
    use super::fixtures::{event, first_ledger_page, temp_store_with};
    use super::*;
    use tally_core::event::Event;
    use tally_core::ids::OrgId;
    use tally_core::ports::UsageStore;

    #[tokio::test]
    async fn the_background_checkpointer_moves_the_wal_into_the_database_file() {
        let (_dir, path, s) = temp_store_with(SqliteConfig {
            checkpoint_interval: Some(Duration::from_millis(20)),
            ..SqliteConfig::default()
        });
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
        let page = first_ledger_page(&s, &org, Month::parse("2026-11").unwrap(), 5000).await;
        assert_eq!(page.events.len(), 2000);
    }

    #[tokio::test]
    async fn a_held_write_lock_makes_writes_wait_then_fail_unavailable() {
        let (_dir, path, s) = temp_store_with(SqliteConfig {
            busy_timeout: Duration::from_millis(100),
            ..SqliteConfig::default()
        });
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
