//! The SQLite schema: version 1's tables, the later versions' statements (each port's file
//! holds the tables it added), and [`migrate`], which brings a file of any earlier version
//! up to [`SCHEMA_VERSION`] when a store opens it. Files written by earlier releases must
//! keep opening, so a version's SQL never changes once released.

use rusqlite::Connection;
use tally_core::ports::StoreError;

use super::{alerts, audit, counters, db, immediate, invitations, reports, sync_ledger};

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 15;

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
/// Creates or upgrades the schema, under the write lock so two processes opening a new file
/// at once do it once.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = immediate(conn)?;
    let version =
        crate::conn::schema_version(&tx, "database", SCHEMA_VERSION, db, StoreError::Corrupt)?;
    // Versions 1 to 6, 8 and 9 are plain SQL; 7 also rebuilds the counters; 10 is the catalogue versions table; 11 the price overrides; 12 the security policies and sessions; 13 the series registry; 15 the partitioned ledger.
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
        tx.execute_batch(super::catalogue::SCHEMA_V10).map_err(db)?;
    }
    if version < 11 {
        tx.execute_batch(super::overrides::SCHEMA_V11).map_err(db)?;
    }
    if version < 12 {
        tx.execute_batch(super::security::SCHEMA_V12).map_err(db)?;
    }
    if version < 13 {
        tx.execute_batch(super::series::SCHEMA_V13).map_err(db)?;
    }
    if version < 14 {
        tx.execute_batch(super::readings::SCHEMA_V14).map_err(db)?;
    }
    if version < 15 {
        super::ledger::migrate_v15(&tx)?;
    }
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(db)?;
    }
    tx.commit().map_err(db)
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use rust_decimal::Decimal;
    use serde_json::Value;
    use tally_core::event::{Event, Quantity};
    use tally_core::ids::{MeterName, OrgId};
    use tally_core::meter::Aggregation;
    use tally_core::period::{Granularity, Month};
    use tally_core::ports::UsageStore;

    use super::super::SqliteStore;
    use super::super::fixtures::{event, temp_db};
    use super::*;

    #[tokio::test]
    async fn schema_version_is_recorded_and_newer_files_are_refused() {
        let (_dir, path) = temp_db();
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
        let (_dir, path) = temp_db();
        let org = OrgId::parse("org_a").unwrap();
        let at = "2026-11-26T10:00:00Z";
        let mut events: Vec<Event> = (0..3).map(|i| event(&org, &format!("e{i}"), at)).collect();
        events[2].timestamp += Duration::hours(30);
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
}
