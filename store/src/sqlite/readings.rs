//! [`ReadingStore`](tally_core::ports::ReadingStore) on SQLite: the readings of
//! time-weighted meters, one row per (org, meter, project, second).
//!
//! Schema version 14 adds the table ([`SCHEMA_V14`]); it is additive (an older file gains
//! the empty table when a newer build opens it, and no meter was time-weighted before it
//! existed). Values are exact decimals as text, like the counter cells, so the tie rule
//! (the larger value of one second stays) is applied in Rust inside one write transaction:
//! read the second's value, write the larger. An hour cell is the rows of its hour.

use async_trait::async_trait;
use rusqlite::params;
use rust_decimal::Decimal;
use tally_core::ProjectId;
use tally_core::period::Granularity;
use tally_core::ports::{MonthReadingsQuery, Reading, ReadingStore, StoreError, check_readings};
use tally_core::time_weighted::HourReadings;

use super::{SqliteStore, corrupt, execute, query_all, query_opt};

/// Schema version 14: the readings of time-weighted meters.
pub(super) const SCHEMA_V14: &str = r#"
CREATE TABLE IF NOT EXISTS tws_readings (
    org_id      TEXT NOT NULL,
    meter       TEXT NOT NULL,
    project_id  TEXT NOT NULL,
    second      INTEGER NOT NULL,   -- the reading's time, Unix seconds
    value       TEXT NOT NULL,      -- exact decimal; on a tie the larger stays
    PRIMARY KEY (org_id, meter, project_id, second)
) WITHOUT ROWID;
"#;

fn parse_value(text: &str) -> Result<Decimal, StoreError> {
    text.parse::<Decimal>()
        .map_err(|e| corrupt(format!("tws reading {text:?}: {e}")))
}

#[async_trait]
impl ReadingStore for SqliteStore {
    async fn put_readings(&self, readings: &[Reading]) -> Result<(), StoreError> {
        check_readings(readings)?;
        if readings.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, String, String, i64, Decimal)> = readings
            .iter()
            .map(|r| {
                let (org, meter) = (r.org.to_string(), r.meter.to_string());
                (org, meter, r.project.to_string(), r.at.timestamp(), r.value)
            })
            .collect();
        self.transact(move |tx| {
            for (org, meter, project, second, value) in rows {
                let held = query_opt(
                    tx,
                    "SELECT value FROM tws_readings
                     WHERE org_id = ?1 AND meter = ?2 AND project_id = ?3 AND second = ?4",
                    params![org, meter, project, second],
                    |r| r.get::<_, String>(0),
                )?;
                if let Some(held) = held
                    && parse_value(&held)? >= value
                {
                    continue;
                }
                execute(
                    tx,
                    "INSERT OR REPLACE INTO tws_readings (org_id, meter, project_id, second, value)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![org, meter, project, second, value.to_string()],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn month_readings(
        &self,
        q: &MonthReadingsQuery<'_>,
    ) -> Result<Vec<(ProjectId, HourReadings)>, StoreError> {
        let (org, meter, month, project) = (q.org, q.meter, q.month, q.project);
        let (org, meter) = (org.to_string(), meter.to_string());
        let project = project.map(ToString::to_string);
        let (start, end) = (month.start().timestamp(), month.end().timestamp());
        let rows = self
            .read(move |conn| {
                query_all(
                    conn,
                    "SELECT project_id, second, value FROM tws_readings
                     WHERE org_id = ?1 AND meter = ?2 AND second >= ?3 AND second < ?4
                       AND (?5 IS NULL OR project_id = ?5)
                     ORDER BY project_id, second",
                    params![org, meter, start, end, project],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get(2)?)),
                    |(p, second, value): (String, i64, String)| {
                        let project = ProjectId::parse(&p)
                            .map_err(|e| corrupt(format!("tws project {p:?}: {e}")))?;
                        let at = chrono::DateTime::from_timestamp(second, 0)
                            .ok_or_else(|| corrupt(format!("tws second {second}")))?;
                        Ok((project, at, parse_value(&value)?))
                    },
                )
            })
            .await?;
        let mut cells: Vec<(ProjectId, HourReadings)> = Vec::new();
        for (project, at, value) in rows {
            let hour = Granularity::Hour.truncate(at);
            let same = cells
                .last()
                .is_some_and(|(p, c)| *p == project && c.hour() == hour);
            if !same {
                cells.push((project, HourReadings::new(at)));
            }
            if let Some((_, cell)) = cells.last_mut() {
                cell.insert(at, value).map_err(|e| corrupt(e.to_string()))?;
            }
        }
        Ok(cells)
    }
}
