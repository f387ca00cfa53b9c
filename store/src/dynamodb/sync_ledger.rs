//! [`SyncLedger`](tally_core::ports::SyncLedger) on DynamoDB: the Stripe sync's record of
//! steps and each org's Stripe customer.
//!
//! One org's period of steps is the partition `ORG#<org>#SYNC#<YYYY-MM>`, one item per
//! step (sort key `STEP#<step>`), so reading them all is one query and one step one
//! `GetItem`. The org's Stripe customer is the item `ORG#<org>` / `SYNCCUSTOMER`. Both are
//! first-write-wins: a put under `attribute_not_exists(pk)`, then a strongly consistent read
//! returning whatever was stored first (a racing run's, or an earlier run's result).

use async_trait::async_trait;
use tally_core::ids::OrgId;
use tally_core::period::Month;
use tally_core::ports::{
    StepKey, StoreError, SyncLedger, SyncStep, check_sync_step, check_sync_value,
};

use super::DynamoStore;
use super::codec::{Item, corrupt, get_s, item, s};

const PK: &str = "pk";
const SK: &str = "sk";
const STEP_PREFIX: &str = "STEP#";

fn steps_pk(org: &OrgId, period: Month) -> String {
    format!("ORG#{}#SYNC#{period}", org.as_str())
}

fn step_sk(step: &str) -> String {
    format!("{STEP_PREFIX}{step}")
}

fn customer_pk(org: &OrgId) -> String {
    format!("ORG#{}", org.as_str())
}

const CUSTOMER_SK: &str = "SYNCCUSTOMER";

fn step_of(it: &Item) -> Result<SyncStep, StoreError> {
    let sk = get_s(it, SK)?;
    let step = sk
        .strip_prefix(STEP_PREFIX)
        .ok_or_else(|| corrupt(format!("sync step key {sk:?}")))?;
    Ok(SyncStep {
        step: step.to_owned(),
        result: get_s(it, "result")?.to_owned(),
    })
}

/// First write wins: puts `record` unless its key is taken and answers `value`, or else what
/// `stored` reads back (the value written first). `what` names the item (`step …`,
/// `customer of …`) in the error when the put was refused but nothing can be read.
async fn first_write(
    store: &DynamoStore,
    record: Item,
    value: &str,
    stored: impl Future<Output = Result<Option<String>, StoreError>>,
    what: impl FnOnce() -> String,
) -> Result<String, StoreError> {
    if store.put_if_absent(record).await? {
        return Ok(value.to_owned());
    }
    stored.await?.ok_or_else(|| {
        corrupt(format!(
            "sync {} was refused as existing but cannot be read",
            what()
        ))
    })
}

#[async_trait]
impl SyncLedger for DynamoStore {
    async fn record_step(&self, key: &StepKey<'_>, result: &str) -> Result<String, StoreError> {
        check_sync_step(key, result)?;
        let (org, period, step) = (key.org, key.period, key.step);
        let record = item([
            (PK, s(steps_pk(org, period))),
            (SK, s(step_sk(step))),
            ("result", s(result)),
        ]);
        let what = || format!("step {org}/{period}/{step}");
        first_write(self, record, result, self.get_step(key), what).await
    }

    async fn get_step(&self, key: &StepKey<'_>) -> Result<Option<String>, StoreError> {
        let (org, period, step) = (key.org, key.period, key.step);
        self.get_as(steps_pk(org, period), &step_sk(step), |it| {
            get_s(it, "result").map(str::to_owned)
        })
        .await
    }

    async fn list_steps(&self, org: &OrgId, period: Month) -> Result<Vec<SyncStep>, StoreError> {
        let items = self.query_partition(None, steps_pk(org, period)).await?;
        // Sorted by sort key, i.e. by step name, as SQLite's `ORDER BY step`.
        items.iter().map(step_of).collect()
    }

    async fn record_customer(&self, org: &OrgId, customer: &str) -> Result<String, StoreError> {
        check_sync_value("customer", customer)?;
        let record = item([
            (PK, s(customer_pk(org))),
            (SK, s(CUSTOMER_SK)),
            ("customer", s(customer)),
        ]);
        let what = || format!("customer of {org}");
        first_write(self, record, customer, self.get_customer(org), what).await
    }

    async fn get_customer(&self, org: &OrgId) -> Result<Option<String>, StoreError> {
        self.get_as(customer_pk(org), CUSTOMER_SK, |it| {
            get_s(it, "customer").map(str::to_owned)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_start_with_the_org() {
        let org = OrgId::parse("org_acme").unwrap();
        let oct = Month::parse("2026-10").unwrap();
        assert_eq!(steps_pk(&org, oct), "ORG#org_acme#SYNC#2026-10");
        assert_eq!(step_sk("item:3"), "STEP#item:3");
        assert_eq!(customer_pk(&org), "ORG#org_acme");
    }
}
