//! [`ReportStore`](tally_core::ports::ReportStore) on SQLite: billing's monthly usage
//! reports.
//!
//! Schema version 3 adds one table ([`SCHEMA_V3`]), keyed `(org, period)` so an org's
//! reports, oldest first, are one range scan of the primary key. A report is written once:
//! `INSERT ... ON CONFLICT DO NOTHING` and a read of the row in the same write transaction,
//! so of two month-close runs racing (two processes, or a rerun), the first report stored is
//! the one both get back.

use async_trait::async_trait;
use rusqlite::params;
use tally_core::ids::OrgId;
use tally_core::period::Month;
use tally_core::ports::{ReportStore, StoreError, StoredReport, check_report_body};

use super::{
    SqliteStore, insert_or_keep, month_key, month_of_key, parse_id, parse_ts, query_all, read_one,
    ts_text,
};

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

fn report_of((org, period, body, created): ReportRow) -> Result<StoredReport, StoreError> {
    Ok(StoredReport {
        org_id: parse_id(&org, OrgId::parse)?,
        period: month_of_key(period, "report")?,
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
        self.transact(move |tx| {
            let org = report.org_id.as_str();
            let period = month_key(report.period);
            let created = ts_text(report.created_at);
            let row = insert_or_keep(
                tx,
                (
                    "INSERT INTO reports (org, period, body, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (org, period) DO NOTHING",
                    params![org, period, report.body, created],
                ),
                (
                    &format!("{SELECT} WHERE org = ?1 AND period = ?2"),
                    params![org, period],
                ),
                report_row,
            )?;
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
            let sql = format!("{SELECT} WHERE org = ?1 AND period = ?2");
            read_one(
                conn,
                &sql,
                params![org.as_str(), month_key(period)],
                report_row,
                report_of,
            )
        })
        .await
    }

    async fn list_reports(&self, org: &OrgId) -> Result<Vec<StoredReport>, StoreError> {
        let org = org.clone();
        self.read(move |conn| {
            let sql = format!("{SELECT} WHERE org = ?1 ORDER BY period");
            query_all(conn, &sql, params![org.as_str()], report_row, report_of)
        })
        .await
    }
}
