//! The partitioned ledger (schema 15): tables of about [`DEFAULT_PART_ROWS`] entries in
//! arrival order, each sealed one with a persisted membership filter
//! ([`crate::ledger_filter`]) in front of it. Why, and the figures that chose it, in
//! "The ledger's key layout" of the adapter's module doc.
//!
//! - New rows go to the hot table, always named `ledger`; its own `UNIQUE (org, event_id)`
//!   catches its duplicates.
//! - When the hot table holds [`Ledger::part_rows`] rows, the apply transaction that
//!   filled it seals it: its filter is built from its rows and written to `ledger_filters`,
//!   the table is renamed `ledger_NNNNN`, and a fresh hot table is created. All in the
//!   batch's transaction: a crash keeps the seal with its filter, or neither.
//! - A key is probed by key in a sealed table only where that table's filter says "maybe";
//!   the legacy table (the whole ledger of a file from before schema 15, `ledger_00000`)
//!   has no filter and is probed for every key until pruning empties it.
//! - `ledger_parts` lists every table (hot, sealed, legacy) in arrival order, which every
//!   reader of the ledger follows.
//!
//! The filters live in memory with the writer connection ([`Ledger`]), are loaded when the
//! file changed under them (`PRAGMA data_version`: another process wrote) and are only
//! ever supersets of their table's keys: a filter that fails its version or checksum is
//! rebuilt from its table, never trusted.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use tally_core::ports::StoreError;

use super::{corrupt, db, execute, exists};
use crate::ledger_filter::{self, PartFilter, key_hash};

/// Entries per ledger table before it is sealed (`pfilt-100000` in `bench/RESULTS.md`:
/// fewer, larger tables need fewer probes for resends and fewer `DROP TABLE`s, and a
/// seal scans at most this many keys).
pub const DEFAULT_PART_ROWS: usize = 100_000;

/// Largest [`SqliteConfig::ledger_part_rows`](super::SqliteConfig::ledger_part_rows).
pub const MAX_PART_ROWS: usize = 10_000_000;

/// The hot table's name: new rows go here.
pub(super) const HOT: &str = "ledger";

/// Version 15: the list of ledger tables and the sealed tables' filters.
const SCHEMA_V15: &str = r#"
CREATE TABLE IF NOT EXISTS ledger_parts (
    part            INTEGER PRIMARY KEY,    -- arrival order
    name            TEXT NOT NULL UNIQUE,   -- 'ledger' while hot, then 'ledger_NNNNN'
    state           INTEGER NOT NULL,       -- 0 hot, 1 sealed (has a filter), 2 legacy
    newest_written  INTEGER                 -- sealed: max(written), what pruning drops by
);
CREATE TABLE IF NOT EXISTS ledger_filters (
    part        INTEGER PRIMARY KEY,
    version     INTEGER NOT NULL,           -- ledger_filter::VERSION
    entries     INTEGER NOT NULL,
    checksum    INTEGER NOT NULL,
    bits        BLOB NOT NULL
);
"#;

const HOT_STATE: i64 = 0;
const SEALED_STATE: i64 = 1;
const LEGACY_STATE: i64 = 2;

/// Moves a file to schema 15, inside the migration's transaction: a non-empty ledger is
/// renamed `ledger_00000` and kept as the legacy table (no rows are rewritten), and a fresh
/// hot table takes new rows; an empty one simply becomes the first hot table.
pub(super) fn migrate_v15(tx: &Connection) -> Result<(), StoreError> {
    tx.execute_batch(SCHEMA_V15).map_err(db)?;
    if exists(tx, "SELECT 1 FROM ledger_parts", [])? {
        return Ok(());
    }
    if exists(tx, "SELECT 1 FROM ledger LIMIT 1", [])? {
        tx.execute_batch(
            "ALTER TABLE ledger RENAME TO ledger_00000;
             INSERT INTO ledger_parts (part, name, state) VALUES (0, 'ledger_00000', 2);",
        )
        .map_err(db)?;
        create_hot(tx, 1)
    } else {
        execute(
            tx,
            "INSERT INTO ledger_parts (part, name, state) VALUES (1, 'ledger', 0)",
            [],
        )?;
        Ok(())
    }
}

/// Creates the hot table as part `part`. Its index is named for the part, since the
/// index of a renamed table keeps its name.
fn create_hot(tx: &Connection, part: i64) -> Result<(), StoreError> {
    tx.execute_batch(&format!(
        "CREATE TABLE ledger (
             seq INTEGER PRIMARY KEY, org TEXT NOT NULL, event_id TEXT NOT NULL,
             month INTEGER NOT NULL, body TEXT NOT NULL, written INTEGER);
         CREATE UNIQUE INDEX ledger_{part:05}_by_event ON ledger (org, event_id);"
    ))
    .map_err(db)?;
    execute(
        tx,
        "INSERT INTO ledger_parts (part, name, state) VALUES (?1, 'ledger', 0)",
        params![part],
    )?;
    Ok(())
}

/// The name of a ledger table as `ledger_parts` gives it, checked before it goes into SQL.
fn checked(name: String) -> Result<String, StoreError> {
    let ok = name == HOT
        || name
            .strip_prefix("ledger_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(name)
    } else {
        Err(corrupt(format!("ledger table name {name:?}")))
    }
}

/// One ledger table and its state, as `ledger_parts` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Part {
    /// Arrival order.
    pub part: i64,
    /// The table.
    pub name: String,
    /// Sealed: its rows' newest write time (what pruning drops it by).
    pub newest_written: Option<i64>,
    state: i64,
}

impl Part {
    pub(super) fn is_sealed(&self) -> bool {
        self.state == SEALED_STATE
    }

    pub(super) fn is_legacy(&self) -> bool {
        self.state == LEGACY_STATE
    }
}

/// Every ledger table in arrival order. A file before schema 15 (the migration to 7
/// replays its ledger) has the one `ledger` table.
pub(super) fn parts(conn: &Connection) -> Result<Vec<Part>, StoreError> {
    if !exists(
        conn,
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger_parts'",
        [],
    )? {
        return Ok(vec![Part {
            part: 1,
            name: HOT.into(),
            newest_written: None,
            state: HOT_STATE,
        }]);
    }
    let mut stmt = conn
        .prepare_cached("SELECT part, name, state, newest_written FROM ledger_parts ORDER BY part")
        .map_err(db)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .map_err(db)?;
    rows.map(|r| {
        let (part, name, state, newest_written) = r.map_err(db)?;
        Ok(Part {
            part,
            name: checked(name)?,
            newest_written,
            state,
        })
    })
    .collect()
}

/// A sealed or legacy table as the writer probes it.
#[derive(Debug)]
pub(super) struct Sealed {
    part: i64,
    name: String,
    /// `None`: the legacy table, probed for every key.
    filter: Option<PartFilter>,
}

/// The writer's view of the partitioned ledger: the sealed tables' filters, newest first.
/// Locked only by the writer, inside its lock.
#[derive(Debug)]
pub(super) struct Ledger {
    /// Entries per table before it is sealed.
    part_rows: i64,
    /// `PRAGMA data_version` when [`Ledger::sync`] last read the file; `None`: read again.
    version: Option<i64>,
    sealed: Vec<Sealed>,
    /// Filters rebuilt because their stored copy was missing, of another version or failed
    /// its checksum (since the store opened).
    pub(super) rebuilt: u64,
    /// Test fault: the next seal fails after renaming the table, before the commit.
    #[cfg(test)]
    pub(super) fail_seal: bool,
}

impl Ledger {
    pub(super) fn new(part_rows: usize) -> Ledger {
        Ledger {
            part_rows: part_rows.clamp(1, MAX_PART_ROWS) as i64,
            version: None,
            sealed: Vec::new(),
            rebuilt: 0,
            #[cfg(test)]
            fail_seal: false,
        }
    }

    /// Makes the next [`Ledger::sync`] read the tables again: this connection changed them
    /// outside a batch (pruning dropped one), which `data_version` does not show.
    pub(super) fn forget(&mut self) {
        self.version = None;
    }

    /// Brings the view up to date inside the batch's write transaction `tx`: when another
    /// connection wrote since the last look (or [`Ledger::forget`] was called), re-reads the
    /// table list, loads the filters of tables it did not know, and drops dropped ones.
    pub(super) fn sync(&mut self, tx: &Connection) -> Result<(), StoreError> {
        let v: i64 = tx
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(db)?;
        if self.version == Some(v) {
            return Ok(());
        }
        let mut known: HashMap<i64, Sealed> = self.sealed.drain(..).map(|s| (s.part, s)).collect();
        let mut sealed = Vec::new();
        for p in parts(tx)?.into_iter().rev() {
            if !(p.is_sealed() || p.is_legacy()) {
                continue;
            }
            let s = match known.remove(&p.part) {
                Some(s) if s.name == p.name => s,
                _ => {
                    let filter = if p.is_sealed() {
                        Some(self.load_filter(tx, p.part, &p.name)?)
                    } else {
                        None
                    };
                    Sealed {
                        part: p.part,
                        name: p.name,
                        filter,
                    }
                }
            };
            sealed.push(s);
        }
        self.sealed = sealed;
        self.version = Some(v);
        Ok(())
    }

    /// Table `name`'s stored filter, or, when it is missing, of another version or fails
    /// its checksum, one rebuilt from the table's keys and written back.
    fn load_filter(
        &mut self,
        tx: &Connection,
        part: i64,
        name: &str,
    ) -> Result<PartFilter, StoreError> {
        let stored: Option<(i64, i64, Vec<u8>)> = tx
            .prepare_cached("SELECT version, checksum, bits FROM ledger_filters WHERE part = ?1")
            .and_then(|mut s| {
                s.query_row(params![part], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(db)?;
        let good = stored.and_then(|(version, checksum, bits)| {
            let f = PartFilter::from_bytes(&bits)?;
            (version == ledger_filter::VERSION && f.checksum() == checksum).then_some(f)
        });
        if let Some(f) = good {
            return Ok(f);
        }
        tracing::warn!(table = name, "ledger filter missing or torn; rebuilding it");
        self.rebuilt += 1;
        let (entries, f) = build_filter(tx, name)?;
        save_filter(tx, part, entries, &f)?;
        Ok(f)
    }

    /// The sealed (or legacy) table that holds (`org`, `id`), if any: probed by key only
    /// where the table's filter says "maybe", newest table first.
    pub(super) fn holder(
        &self,
        tx: &Connection,
        org: &str,
        id: &str,
    ) -> Result<Option<&str>, StoreError> {
        let h = key_hash(org, id);
        for s in &self.sealed {
            if s.filter.as_ref().is_some_and(|f| !f.may_hold(h)) {
                continue;
            }
            let sql = format!("SELECT 1 FROM {} WHERE org = ?1 AND event_id = ?2", s.name);
            if exists(tx, &sql, params![org, id])? {
                return Ok(Some(&s.name));
            }
        }
        Ok(None)
    }

    /// Seals the hot table inside `tx` when it holds [`Ledger::part_rows`] rows (see the
    /// module doc); returns the sealed table for [`Ledger::sealed_committed`] once `tx`
    /// commits.
    pub(super) fn seal_if_full(&self, tx: &Connection) -> Result<Option<Sealed>, StoreError> {
        let top: Option<i64> = tx
            .query_row("SELECT max(seq) FROM ledger", [], |r| r.get(0))
            .map_err(db)?;
        if top.unwrap_or(0) < self.part_rows {
            return Ok(None);
        }
        let (part, newest): (i64, Option<i64>) = tx
            .query_row(
                "SELECT (SELECT part FROM ledger_parts WHERE state = 0),
                        (SELECT max(written) FROM ledger)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db)?;
        let name = format!("ledger_{part:05}");
        let (entries, filter) = build_filter(tx, HOT)?;
        save_filter(tx, part, entries, &filter)?;
        tx.execute_batch(&format!("ALTER TABLE ledger RENAME TO {name}"))
            .map_err(db)?;
        execute(
            tx,
            "UPDATE ledger_parts SET name = ?2, state = 1, newest_written = ?3 WHERE part = ?1",
            params![part, name, newest],
        )?;
        #[cfg(test)]
        if self.fail_seal {
            return Err(StoreError::Unavailable("planted fault: seal".into()));
        }
        create_hot(tx, part + 1)?;
        tracing::info!(table = name, entries, "sealed a ledger table");
        Ok(Some(Sealed {
            part,
            name,
            filter: Some(filter),
        }))
    }

    /// Adds a table [`Ledger::seal_if_full`] sealed, once its transaction committed.
    pub(super) fn sealed_committed(&mut self, s: Sealed) {
        self.sealed.insert(0, s);
    }
}

/// A filter over every key of table `name`, read from its key index; with the row count.
fn build_filter(tx: &Connection, name: &str) -> Result<(usize, PartFilter), StoreError> {
    let entries: i64 = tx
        .query_row(&format!("SELECT count(*) FROM {name}"), [], |r| r.get(0))
        .map_err(db)?;
    let entries = usize::try_from(entries).unwrap_or_default();
    let mut f = PartFilter::with_capacity(entries);
    let mut stmt = tx
        .prepare(&format!(
            "SELECT org, event_id FROM {name} ORDER BY org, event_id"
        ))
        .map_err(db)?;
    let mut rows = stmt.query([]).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        let (org, id): (String, String) = (r.get(0).map_err(db)?, r.get(1).map_err(db)?);
        f.add(key_hash(&org, &id));
    }
    Ok((entries, f))
}

/// Writes (or replaces) sealed table `part`'s filter row.
fn save_filter(
    tx: &Connection,
    part: i64,
    entries: usize,
    f: &PartFilter,
) -> Result<(), StoreError> {
    execute(
        tx,
        "INSERT OR REPLACE INTO ledger_filters (part, version, entries, checksum, bits)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            part,
            ledger_filter::VERSION,
            entries as i64,
            f.checksum(),
            f.to_bytes()
        ],
    )?;
    Ok(())
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
