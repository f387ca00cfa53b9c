//! [`SeriesRegistry`](tally_core::ports::SeriesRegistry) on SQLite: the series of each
//! dimensioned meter an org made in a month.
//!
//! Schema version 13 adds one table ([`SCHEMA_V13`]), keyed by (org, meter, month, series).
//! It is additive: an older file gains the empty table when a newer build opens it, and no
//! meter had dimensions before it existed. A registration is one write transaction that
//! counts the (org, meter, month)'s rows and inserts the new one, so the bound holds under
//! any number of writers (SQLite serialises write transactions).

use async_trait::async_trait;
use rusqlite::params;
use tally_core::MeterName;
use tally_core::ports::{
    MeterMonth, NewSeries, Registration, SeriesRegistry, StoreError, check_registration,
};

use super::{SqliteStore, corrupt, execute, query_all, query_opt};

/// Schema version 13: the series registry.
pub(super) const SCHEMA_V13: &str = r#"
CREATE TABLE IF NOT EXISTS meter_series (
    org_id      TEXT NOT NULL,
    meter       TEXT NOT NULL,      -- the bare meter name
    month       TEXT NOT NULL,      -- YYYY-MM
    series      TEXT NOT NULL,      -- the series key, meter{dim=value,...}
    PRIMARY KEY (org_id, meter, month, series)
) WITHOUT ROWID;
"#;

#[async_trait]
impl SeriesRegistry for SqliteStore {
    async fn register_series(&self, req: &NewSeries<'_>) -> Result<Registration, StoreError> {
        let (org, month, series, bound) = (req.org, req.month, req.series, req.bound);
        check_registration(series, bound)?;
        let (org, series) = (org.to_string(), series.to_string());
        let month = month.to_string();
        self.transact(move |tx| {
            let meter = series.split_once('{').map_or(series.as_str(), |(m, _)| m);
            let known = query_opt(
                tx,
                "SELECT 1 FROM meter_series
                 WHERE org_id = ?1 AND meter = ?2 AND month = ?3 AND series = ?4",
                params![org, meter, month, series],
                |_| Ok(()),
            )?;
            if known.is_some() {
                return Ok(Registration::Known);
            }
            let count: i64 = query_opt(
                tx,
                "SELECT count(*) FROM meter_series
                 WHERE org_id = ?1 AND meter = ?2 AND month = ?3",
                params![org, meter, month],
                |r| r.get(0),
            )?
            .unwrap_or(0);
            if count >= i64::from(bound) {
                return Ok(Registration::Full);
            }
            execute(
                tx,
                "INSERT INTO meter_series (org_id, meter, month, series) VALUES (?1, ?2, ?3, ?4)",
                params![org, meter, month, series],
            )?;
            Ok(Registration::New)
        })
        .await
    }

    async fn list_series(&self, of: &MeterMonth<'_>) -> Result<Vec<MeterName>, StoreError> {
        let MeterMonth { org, meter, month } = *of;
        let (org, meter, month) = (org.to_string(), meter.to_string(), month.to_string());
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT series FROM meter_series
                 WHERE org_id = ?1 AND meter = ?2 AND month = ?3 ORDER BY series",
                params![org, meter, month],
                |r| r.get::<_, String>(0),
                |s| MeterName::parse_key(&s).map_err(|e| corrupt(format!("series {s}: {e}"))),
            )
        })
        .await
    }
}
