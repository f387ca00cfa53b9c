//! [`CatalogueStore`](tally_core::ports::CatalogueStore) on SQLite: the catalogue versions
//! the operator publishes.
//!
//! Schema version 10 adds one table ([`SCHEMA_V10`]), keyed by the version number. It is
//! additive: a file of an older schema gains the empty table when a newer build opens it,
//! and an empty table means "no version published" (the catalogue file or the built-in one
//! prices everything), so an old store keeps working with no operator action. A version is
//! written once: `INSERT ... ON CONFLICT DO NOTHING` in a write transaction, so of two
//! applies racing for one number, the first wins and the other sees `false`.

use async_trait::async_trait;
use rusqlite::params;
use tally_core::period::Month;
use tally_core::ports::{
    CatalogueStore, CatalogueVersion, CatalogueVersionSummary, StoreError, check_catalogue_version,
};

use super::{SqliteStore, corrupt, execute, parse_ts, query_all, read_one, ts_text};

/// Schema version 10: published catalogue versions.
pub(super) const SCHEMA_V10: &str = r#"
CREATE TABLE IF NOT EXISTS catalogue_versions (
    version         INTEGER PRIMARY KEY,
    effective_from  TEXT NOT NULL,      -- YYYY-MM
    body            TEXT NOT NULL,      -- the catalogue JSON as applied
    digest          TEXT NOT NULL,
    applied_by      TEXT NOT NULL,
    applied_at      TEXT NOT NULL
);
"#;

type Row = (i64, String, String, String, String);

fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn summary_of((version, from, digest, by, at): Row) -> Result<CatalogueVersionSummary, StoreError> {
    Ok(CatalogueVersionSummary {
        version: u32::try_from(version)
            .map_err(|_| corrupt(format!("catalogue version number {version}")))?,
        effective_from: Month::parse(&from)
            .map_err(|e| corrupt(format!("catalogue version {version} effective_from: {e}")))?,
        digest,
        applied_by: by,
        applied_at: parse_ts(&at)?,
    })
}

const SUMMARY: &str =
    "SELECT version, effective_from, digest, applied_by, applied_at FROM catalogue_versions";

#[async_trait]
impl CatalogueStore for SqliteStore {
    async fn put_catalogue_version(&self, version: &CatalogueVersion) -> Result<bool, StoreError> {
        check_catalogue_version(version)?;
        let v = version.clone();
        self.transact(move |tx| {
            let changed = execute(
                tx,
                "INSERT INTO catalogue_versions
                     (version, effective_from, body, digest, applied_by, applied_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (version) DO NOTHING",
                params![
                    i64::from(v.version),
                    v.effective_from.to_string(),
                    v.body,
                    v.digest,
                    v.applied_by,
                    ts_text(v.applied_at)
                ],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn get_catalogue_version(
        &self,
        version: u32,
    ) -> Result<Option<CatalogueVersion>, StoreError> {
        self.read(move |conn| {
            read_one(
                conn,
                "SELECT version, effective_from, digest, applied_by, applied_at, body
                 FROM catalogue_versions WHERE version = ?1",
                params![i64::from(version)],
                |r| Ok((summary_row(r)?, r.get::<_, String>(5)?)),
                |(row, body)| {
                    let s = summary_of(row)?;
                    Ok(CatalogueVersion {
                        version: s.version,
                        effective_from: s.effective_from,
                        body,
                        digest: s.digest,
                        applied_by: s.applied_by,
                        applied_at: s.applied_at,
                    })
                },
            )
        })
        .await
    }

    async fn list_catalogue_versions(&self) -> Result<Vec<CatalogueVersionSummary>, StoreError> {
        self.read(move |conn| {
            query_all(
                conn,
                &format!("{SUMMARY} ORDER BY version"),
                [],
                summary_row,
                summary_of,
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sqlite::fixtures::{older_db, user_version};

    /// A file of the schema before this table (version 9) opens, gains the empty table, and
    /// reads as "no version published".
    #[tokio::test]
    async fn a_store_from_before_catalogue_versions_opens_with_none() {
        let (_dir, path) = older_db("DROP TABLE catalogue_versions; PRAGMA user_version = 9;");
        let store = SqliteStore::open(&path).unwrap();
        assert!(store.list_catalogue_versions().await.unwrap().is_empty());
        assert!(store.latest_catalogue_version().await.unwrap().is_none());
        assert_eq!(user_version(&path), super::super::SCHEMA_VERSION);
    }
}
