//! [`SyncLedger`](tally_core::ports::SyncLedger) on SQLite: the Stripe sync's record of
//! steps and each org's Stripe customer.
//!
//! Schema version 5 adds two tables ([`SCHEMA_V5`]). Steps are keyed `(org, period, step)`
//! so one org's period is one range scan of the primary key. Both writes are
//! first-write-wins: `INSERT ... ON CONFLICT DO NOTHING` and a read of the row in the same
//! write transaction, so of two sync runs racing, the first result stored is the one both
//! get back (and build on).

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use tally_core::ids::OrgId;
use tally_core::period::Month;
use tally_core::ports::{StoreError, SyncLedger, SyncStep, check_sync_value};

use super::{SqliteStore, db, immediate, month_key};

/// Schema version 5: the Stripe sync ledger.
pub(super) const SCHEMA_V5: &str = r#"
CREATE TABLE IF NOT EXISTS sync_steps (
    org     TEXT NOT NULL,
    period  INTEGER NOT NULL,   -- yyyymm
    step    TEXT NOT NULL,      -- customer, invoice, item:N, finalize, error:<step>
    result  TEXT NOT NULL,      -- the provider id or small value the step produced
    PRIMARY KEY (org, period, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sync_customers (
    org       TEXT PRIMARY KEY,
    customer  TEXT NOT NULL     -- the Stripe customer id (cus_...)
) WITHOUT ROWID;
"#;

#[async_trait]
impl SyncLedger for SqliteStore {
    async fn record_step(
        &self,
        org: &OrgId,
        period: Month,
        step: &str,
        result: &str,
    ) -> Result<String, StoreError> {
        check_sync_value("step", step)?;
        check_sync_value("result", result)?;
        let (org, step, result) = (org.as_str().to_owned(), step.to_owned(), result.to_owned());
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let period = month_key(period);
            tx.prepare_cached(
                "INSERT INTO sync_steps (org, period, step, result) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (org, period, step) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![org, period, step, result]))
            .map_err(db)?;
            let stored: String = tx
                .prepare_cached(
                    "SELECT result FROM sync_steps WHERE org = ?1 AND period = ?2 AND step = ?3",
                )
                .and_then(|mut s| s.query_row(params![org, period, step], |r| r.get(0)))
                .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(stored)
        })
        .await
    }

    async fn get_step(
        &self,
        org: &OrgId,
        period: Month,
        step: &str,
    ) -> Result<Option<String>, StoreError> {
        let (org, step) = (org.as_str().to_owned(), step.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT result FROM sync_steps WHERE org = ?1 AND period = ?2 AND step = ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![org, month_key(period), step], |r| r.get(0))
                    .optional()
            })
            .map_err(db)
        })
        .await
    }

    async fn list_steps(&self, org: &OrgId, period: Month) -> Result<Vec<SyncStep>, StoreError> {
        let org = org.as_str().to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT step, result FROM sync_steps WHERE org = ?1 AND period = ?2
                     ORDER BY step",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![org, month_key(period)], |r| {
                    Ok(SyncStep {
                        step: r.get(0)?,
                        result: r.get(1)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
        .await
    }

    async fn record_customer(&self, org: &OrgId, customer: &str) -> Result<String, StoreError> {
        check_sync_value("customer", customer)?;
        let (org, customer) = (org.as_str().to_owned(), customer.to_owned());
        self.write(move |conn| {
            let tx = immediate(conn)?;
            tx.prepare_cached(
                "INSERT INTO sync_customers (org, customer) VALUES (?1, ?2)
                 ON CONFLICT (org) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![org, customer]))
            .map_err(db)?;
            let stored: String = tx
                .prepare_cached("SELECT customer FROM sync_customers WHERE org = ?1")
                .and_then(|mut s| s.query_row(params![org], |r| r.get(0)))
                .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(stored)
        })
        .await
    }

    async fn get_customer(&self, org: &OrgId) -> Result<Option<String>, StoreError> {
        let org = org.as_str().to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT customer FROM sync_customers WHERE org = ?1")
                .and_then(|mut s| s.query_row(params![org], |r| r.get(0)).optional())
                .map_err(db)
        })
        .await
    }
}
