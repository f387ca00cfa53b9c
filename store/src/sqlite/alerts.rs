//! [`AlertLedger`](tally_core::ports::AlertLedger) on SQLite: the outbox of plan-limit
//! alerts.
//!
//! Schema version 6 adds one table ([`SCHEMA_V6`]), keyed `(org, period, meter, threshold)`
//! so the claim is the primary key's uniqueness (`INSERT ... ON CONFLICT DO NOTHING`, whose
//! changed-row count says who won) and an org's pending alerts from a month on are one range
//! scan. Times are integer Unix microseconds, so the lease's compare-and-set compares exact
//! values rather than text.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;
use tally_core::ids::{MeterName, OrgId};
use tally_core::period::Month;
use tally_core::ports::{
    AlertKey, AlertLease, AlertLedger, StoreError, StoredAlert, ThresholdPct, check_alert_body,
};

use super::{
    SqliteStore, corrupt, execute, month_key, month_of_key, parse_id, query_all, read_one,
};

/// Schema version 6: plan-limit alerts.
pub(super) const SCHEMA_V6: &str = r#"
CREATE TABLE IF NOT EXISTS alerts (
    org           TEXT NOT NULL,
    period        INTEGER NOT NULL,   -- yyyymm
    meter         TEXT NOT NULL,
    threshold     INTEGER NOT NULL,   -- percent of the allowance, 1-100
    body          TEXT NOT NULL,      -- the webhook body, JSON, fixed at the claim
    claimed_at    INTEGER NOT NULL,   -- Unix microseconds
    lease_until   INTEGER NOT NULL,   -- Unix microseconds
    delivered_at  INTEGER,            -- Unix microseconds; NULL while pending
    PRIMARY KEY (org, period, meter, threshold)
) WITHOUT ROWID;
"#;

const SELECT: &str =
    "SELECT org, period, meter, threshold, body, claimed_at, lease_until, delivered_at FROM alerts";

type AlertRow = (String, i64, String, i64, String, i64, i64, Option<i64>);

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    r.try_into()
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn instant(us: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| corrupt(format!("alert time {us}")))
}

fn alert_of(
    (org, period, meter, threshold, body, claimed, lease, delivered): AlertRow,
) -> Result<StoredAlert, StoreError> {
    let threshold = u8::try_from(threshold)
        .ok()
        .and_then(ThresholdPct::new)
        .ok_or_else(|| corrupt(format!("alert threshold {threshold}")))?;
    Ok(StoredAlert {
        key: AlertKey {
            org: parse_id(&org, OrgId::parse)?,
            period: month_of_key(period, "alert")?,
            meter: parse_id(&meter, MeterName::parse)?,
            threshold,
        },
        body,
        claimed_at: instant(claimed)?,
        lease_until: instant(lease)?,
        delivered_at: delivered.map(instant).transpose()?,
    })
}

type KeyParams = (String, i64, String, i64);

fn key_params(key: &AlertKey) -> KeyParams {
    (
        key.org.as_str().to_owned(),
        month_key(key.period),
        key.meter.as_str().to_owned(),
        i64::from(key.threshold.get()),
    )
}

#[async_trait]
impl AlertLedger for SqliteStore {
    async fn claim_alert(&self, alert: &StoredAlert) -> Result<bool, StoreError> {
        check_alert_body(&alert.body)?;
        let (org, period, meter, threshold) = key_params(&alert.key);
        let body = alert.body.clone();
        let (claimed, lease) = (micros(alert.claimed_at), micros(alert.lease_until));
        let delivered = alert.delivered_at.map(micros);
        self.write(move |conn| {
            let inserted = execute(
                conn,
                "INSERT INTO alerts (org, period, meter, threshold, body, claimed_at,
                                     lease_until, delivered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (org, period, meter, threshold) DO NOTHING",
                params![
                    org, period, meter, threshold, body, claimed, lease, delivered
                ],
            )?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn get_alert(&self, key: &AlertKey) -> Result<Option<StoredAlert>, StoreError> {
        let (org, period, meter, threshold) = key_params(key);
        self.read(move |conn| {
            let sql = format!(
                "{SELECT} WHERE org = ?1 AND period = ?2 AND meter = ?3 AND threshold = ?4"
            );
            read_one(
                conn,
                &sql,
                params![org, period, meter, threshold],
                alert_row,
                alert_of,
            )
        })
        .await
    }

    async fn pending_alerts(
        &self,
        org: &OrgId,
        since: Month,
    ) -> Result<Vec<StoredAlert>, StoreError> {
        let org = org.as_str().to_owned();
        self.read(move |conn| {
            let sql = format!(
                "{SELECT} WHERE org = ?1 AND period >= ?2 AND delivered_at IS NULL
                 ORDER BY period, meter, threshold"
            );
            query_all(
                conn,
                &sql,
                params![org, month_key(since)],
                alert_row,
                alert_of,
            )
        })
        .await
    }

    async fn renew_alert_lease(&self, lease: &AlertLease<'_>) -> Result<bool, StoreError> {
        let (key, seen, until) = (lease.key, lease.seen, lease.until);
        let (org, period, meter, threshold) = key_params(key);
        let (seen, until) = (micros(seen), micros(until));
        self.write(move |conn| {
            let changed = execute(
                conn,
                "UPDATE alerts SET lease_until = ?6
                 WHERE org = ?1 AND period = ?2 AND meter = ?3 AND threshold = ?4
                   AND lease_until = ?5 AND delivered_at IS NULL",
                params![org, period, meter, threshold, seen, until],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn mark_alert_delivered(
        &self,
        key: &AlertKey,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (org, period, meter, threshold) = key_params(key);
        let what = format!("alert {key}");
        let at = micros(at);
        self.write(move |conn| {
            let found = execute(
                conn,
                "UPDATE alerts SET delivered_at = COALESCE(delivered_at, ?5)
                 WHERE org = ?1 AND period = ?2 AND meter = ?3 AND threshold = ?4",
                params![org, period, meter, threshold, at],
            )?;
            if found == 0 {
                return Err(StoreError::NotFound { what });
            }
            Ok(())
        })
        .await
    }
}
