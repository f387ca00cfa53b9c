//! What the SQLite adapter's unit tests share: an event to apply, a read of the ledger and
//! a look at the raw file.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use rust_decimal::Decimal;
use serde_json::Map;
use tally_core::event::{Event, Quantity};
use tally_core::ids::{EventId, MeterName, OrgId, ProjectId};
use tally_core::meter::Aggregation;

/// A `sum` event of 2.5 `api_calls` on `prj_1`.
pub(super) fn event(org: &OrgId, id: &str, ts: &str) -> Event {
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

pub(super) use tally_core::fixtures::first_ledger_page;

/// An RFC 3339 instant.
pub(super) fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// How many rows the ledger tables of the file at `path` hold together.
pub(super) fn ledger_rows(path: &Path) -> i64 {
    let c = Connection::open(path).unwrap();
    super::ledger::parts(&c)
        .unwrap()
        .iter()
        .map(|p| {
            c.query_row(&format!("SELECT count(*) FROM {}", p.name), [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
        })
        .sum()
}

/// A fresh directory and the path of a store file in it (not created yet); the directory
/// goes when the first value is dropped.
pub(super) fn temp_db() -> (tempfile::TempDir, PathBuf) {
    crate::test_fixtures::temp_file("tally.db")
}

/// A store on a new file under `config`, with the file's directory (kept for the test's
/// length) and path.
pub(super) fn temp_store_with(
    config: super::SqliteConfig,
) -> (tempfile::TempDir, PathBuf, super::SqliteStore) {
    let (dir, path) = temp_db();
    let store = super::SqliteStore::open_with(&path, config).unwrap();
    (dir, path, store)
}

/// A store file of an older schema, for the upgrade tests: made by this release, then set
/// back by `downgrade` (SQL dropping what came later and setting `PRAGMA user_version`).
pub(super) fn older_db(downgrade: &str) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = temp_db();
    drop(super::SqliteStore::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    c.execute_batch(downgrade).unwrap();
    (dir, path)
}

/// The schema version the file at `path` says it has (`PRAGMA user_version`).
pub(super) fn user_version(path: &Path) -> i64 {
    let c = Connection::open(path).unwrap();
    c.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}
