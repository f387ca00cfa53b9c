//! [`ReportStore`](tally_core::ports::ReportStore) on SQLite: billing's monthly usage
//! reports.
//!
//! Schema version 3 adds one table ([`SCHEMA_V3`]), keyed `(org, period)` so an org's
//! reports, oldest first, are one range scan of the primary key. A report is written once:
//! `INSERT ... ON CONFLICT DO NOTHING` and a read of the row in the same write transaction,
//! so of two month-close runs racing (two processes, or a rerun), the first report stored is
//! the one both get back.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use tally_core::ids::OrgId;
use tally_core::period::Month;
use tally_core::ports::{ReportStore, StoreError, StoredReport, check_report_body};

use super::{SqliteStore, corrupt, db, immediate, month_key, parse_id, parse_ts, ts_text};

/// Schema version 3: usage reports.
pub(super) const SCHEMA_V3: &str = r#"
CREATE TABLE IF NOT EXISTS reports (
    org         TEXT NOT NULL,
    period      INTEGER NOT NULL,   -- yyyymm
    body        TEXT NOT NULL,      -- the report, JSON, as billing wrote it
    created_at  TEXT NOT NULL,
    PRIMARY KEY (org, period)
) WITHOUT ROWID;
"#;

type ReportRow = (String, i64, String, String);

fn report_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReportRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn month_of(key: i64) -> Result<Month, StoreError> {
    let year = i32::try_from(key / 100).ok();
    let month = u32::try_from(key % 100).ok();
    year.zip(month)
        .and_then(|(y, m)| Month::new(y, m))
        .ok_or_else(|| corrupt(format!("report period {key}")))
}

fn report_of((org, period, body, created): ReportRow) -> Result<StoredReport, StoreError> {
    Ok(StoredReport {
        org_id: parse_id(&org, OrgId::parse)?,
        period: month_of(period)?,
        body,
        created_at: parse_ts(&created)?,
    })
}

const SELECT: &str = "SELECT org, period, body, created_at FROM reports";

#[async_trait]
impl ReportStore for SqliteStore {
    async fn save_report(&self, report: &StoredReport) -> Result<StoredReport, StoreError> {
        check_report_body(&report.body)?;
        let report = report.clone();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let org = report.org_id.as_str();
            let period = month_key(report.period);
            tx.prepare_cached(
                "INSERT INTO reports (org, period, body, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (org, period) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    org,
                    period,
                    report.body,
                    ts_text(report.created_at)
                ])
            })
            .map_err(db)?;
            let row = tx
                .prepare_cached(&format!("{SELECT} WHERE org = ?1 AND period = ?2"))
                .and_then(|mut s| s.query_row(params![org, period], report_row))
                .map_err(db)?;
            tx.commit().map_err(db)?;
            report_of(row)
        })
        .await
    }

    async fn get_report(
        &self,
        org: &OrgId,
        period: Month,
    ) -> Result<Option<StoredReport>, StoreError> {
        let org = org.clone();
        self.read(move |conn| {
            conn.prepare_cached(&format!("{SELECT} WHERE org = ?1 AND period = ?2"))
                .and_then(|mut s| {
                    s.query_row(params![org.as_str(), month_key(period)], report_row)
                        .optional()
                })
                .map_err(db)?
                .map(report_of)
                .transpose()
        })
        .await
    }

    async fn list_reports(&self, org: &OrgId) -> Result<Vec<StoredReport>, StoreError> {
        let org = org.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("{SELECT} WHERE org = ?1 ORDER BY period"))
                .map_err(db)?;
            let rows = stmt
                .query_map(params![org.as_str()], report_row)
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(report_of(row.map_err(db)?)?);
            }
            Ok(out)
        })
        .await
    }
}
