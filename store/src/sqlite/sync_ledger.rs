//! [`SyncLedger`](tally_core::ports::SyncLedger) on SQLite: the Stripe sync's record of
//! steps and each org's Stripe customer.
//!
//! Schema version 5 adds two tables ([`SCHEMA_V5`]). Steps are keyed `(org, period, step)`
//! so one org's period is one range scan of the primary key. Both writes are
//! first-write-wins: `INSERT ... ON CONFLICT DO NOTHING` and a read of the row in the same
//! write transaction, so of two sync runs racing, the first result stored is the one both
//! get back (and build on).

use async_trait::async_trait;
use rusqlite::params;
use tally_core::ids::OrgId;
use tally_core::period::Month;
use tally_core::ports::{
    StepKey, StoreError, SyncLedger, SyncStep, check_sync_step, check_sync_value,
};

use super::{SqliteStore, insert_or_keep, month_key, query_all, query_opt};

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

/// One step's result, by (org, period, step).
const STEP: &str = "SELECT result FROM sync_steps WHERE org = ?1 AND period = ?2 AND step = ?3";

/// An org's customer.
const CUSTOMER: &str = "SELECT customer FROM sync_customers WHERE org = ?1";

#[async_trait]
impl SyncLedger for SqliteStore {
    async fn record_step(&self, key: &StepKey<'_>, result: &str) -> Result<String, StoreError> {
        check_sync_step(key, result)?;
        let (org, period, step) = (key.org, key.period, key.step);
        let (org, step, result) = (org.as_str().to_owned(), step.to_owned(), result.to_owned());
        self.transact(move |tx| {
            let period = month_key(period);
            insert_or_keep(
                tx,
                (
                    "INSERT INTO sync_steps (org, period, step, result) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (org, period, step) DO NOTHING",
                    params![org, period, step, result],
                ),
                (STEP, params![org, period, step]),
                |r| r.get(0),
            )
        })
        .await
    }

    async fn get_step(&self, key: &StepKey<'_>) -> Result<Option<String>, StoreError> {
        let (org, period, step) = (key.org, key.period, key.step);
        let (org, step) = (org.as_str().to_owned(), step.to_owned());
        self.read(move |conn| {
            query_opt(conn, STEP, params![org, month_key(period), step], |r| {
                r.get(0)
            })
        })
        .await
    }

    async fn list_steps(&self, org: &OrgId, period: Month) -> Result<Vec<SyncStep>, StoreError> {
        let org = org.as_str().to_owned();
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT step, result FROM sync_steps WHERE org = ?1 AND period = ?2
                 ORDER BY step",
                params![org, month_key(period)],
                |r| {
                    Ok(SyncStep {
                        step: r.get(0)?,
                        result: r.get(1)?,
                    })
                },
                Ok,
            )
        })
        .await
    }

    async fn record_customer(&self, org: &OrgId, customer: &str) -> Result<String, StoreError> {
        check_sync_value("customer", customer)?;
        let (org, customer) = (org.as_str().to_owned(), customer.to_owned());
        self.transact(move |tx| {
            insert_or_keep(
                tx,
                (
                    "INSERT INTO sync_customers (org, customer) VALUES (?1, ?2)
                     ON CONFLICT (org) DO NOTHING",
                    params![org, customer],
                ),
                (CUSTOMER, params![org]),
                |r| r.get(0),
            )
        })
        .await
    }

    async fn get_customer(&self, org: &OrgId) -> Result<Option<String>, StoreError> {
        let org = org.as_str().to_owned();
        self.read(move |conn| query_opt(conn, CUSTOMER, params![org], |r| r.get(0)))
            .await
    }
}
