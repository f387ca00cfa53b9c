//! Billing's records in memory: [`ReportStore`], [`SyncLedger`] and [`AlertLedger`], with
//! the semantics of `sqlite/reports.rs`, `sqlite/sync_ledger.rs` and `sqlite/alerts.rs`.
//!
//! Reports, sync steps and customers are first-write-wins: a write finds what is stored
//! under the lock and keeps it. An alert claim is one insert-if-absent, and taking over a
//! lease a compare-and-set of `lease_until`; alert times are kept to the microsecond, as
//! the other stores keep them, so a lease read back compares equal to the one stored.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tally_core::ids::OrgId;
use tally_core::period::Month;
use tally_core::ports::{
    AlertKey, AlertLease, AlertLedger, ReportStore, StepKey, StoreError, StoredAlert, StoredReport,
    SyncLedger, SyncStep, check_alert_body, check_report_body, check_sync_step, check_sync_value,
};

use super::{MemoryStore, micros};

#[async_trait]
impl ReportStore for MemoryStore {
    async fn save_report(&self, report: &StoredReport) -> Result<StoredReport, StoreError> {
        check_report_body(&report.body)?;
        Ok(self
            .lock()
            .reports
            .entry(report.org_id.clone())
            .or_default()
            .entry(report.period)
            .or_insert_with(|| report.clone())
            .clone())
    }

    async fn get_report(
        &self,
        org: &OrgId,
        period: Month,
    ) -> Result<Option<StoredReport>, StoreError> {
        Ok(self
            .lock()
            .reports
            .get(org)
            .and_then(|r| r.get(&period))
            .cloned())
    }

    async fn list_reports(&self, org: &OrgId) -> Result<Vec<StoredReport>, StoreError> {
        Ok(self
            .lock()
            .reports
            .get(org)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl SyncLedger for MemoryStore {
    async fn record_step(&self, key: &StepKey<'_>, result: &str) -> Result<String, StoreError> {
        check_sync_step(key, result)?;
        let (org, period, step) = (key.org, key.period, key.step);
        Ok(self
            .lock()
            .sync_steps
            .entry((org.clone(), period))
            .or_default()
            .entry(step.to_owned())
            .or_insert_with(|| result.to_owned())
            .clone())
    }

    async fn get_step(&self, key: &StepKey<'_>) -> Result<Option<String>, StoreError> {
        let (org, period, step) = (key.org, key.period, key.step);
        Ok(self
            .lock()
            .sync_steps
            .get(&(org.clone(), period))
            .and_then(|steps| steps.get(step))
            .cloned())
    }

    async fn list_steps(&self, org: &OrgId, period: Month) -> Result<Vec<SyncStep>, StoreError> {
        Ok(self
            .lock()
            .sync_steps
            .get(&(org.clone(), period))
            .map(|steps| {
                steps
                    .iter()
                    .map(|(step, result)| SyncStep {
                        step: step.clone(),
                        result: result.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn record_customer(&self, org: &OrgId, customer: &str) -> Result<String, StoreError> {
        check_sync_value("customer", customer)?;
        Ok(self
            .lock()
            .sync_customers
            .entry(org.clone())
            .or_insert_with(|| customer.to_owned())
            .clone())
    }

    async fn get_customer(&self, org: &OrgId) -> Result<Option<String>, StoreError> {
        Ok(self.lock().sync_customers.get(org).cloned())
    }
}

#[async_trait]
impl AlertLedger for MemoryStore {
    async fn claim_alert(&self, alert: &StoredAlert) -> Result<bool, StoreError> {
        check_alert_body(&alert.body)?;
        let mut st = self.lock();
        if st.alerts.contains_key(&alert.key) {
            return Ok(false);
        }
        let stored = StoredAlert {
            claimed_at: micros(alert.claimed_at),
            lease_until: micros(alert.lease_until),
            delivered_at: alert.delivered_at.map(micros),
            ..alert.clone()
        };
        st.alerts.insert(alert.key.clone(), stored);
        Ok(true)
    }

    async fn get_alert(&self, key: &AlertKey) -> Result<Option<StoredAlert>, StoreError> {
        Ok(self.lock().alerts.get(key).cloned())
    }

    async fn pending_alerts(
        &self,
        org: &OrgId,
        since: Month,
    ) -> Result<Vec<StoredAlert>, StoreError> {
        // By month, meter and threshold: the map's order within one org.
        Ok(self
            .lock()
            .alerts
            .values()
            .filter(|a| a.key.org == *org && a.key.period >= since && a.delivered_at.is_none())
            .cloned()
            .collect())
    }

    async fn renew_alert_lease(&self, lease: &AlertLease<'_>) -> Result<bool, StoreError> {
        let (key, seen, until) = (lease.key, lease.seen, lease.until);
        let mut st = self.lock();
        match st.alerts.get_mut(key) {
            Some(a) if a.delivered_at.is_none() && a.lease_until == micros(seen) => {
                a.lease_until = micros(until);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn mark_alert_delivered(
        &self,
        key: &AlertKey,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut st = self.lock();
        let Some(a) = st.alerts.get_mut(key) else {
            return Err(StoreError::NotFound {
                what: format!("alert {key}"),
            });
        };
        a.delivered_at = Some(a.delivered_at.unwrap_or(micros(at)));
        Ok(())
    }
}
