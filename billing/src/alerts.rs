//! Plan-limit alerts: a signed webhook when an org's month-to-date usage of a limited meter
//! crosses 80 % and 100 % of its plan's allowance, once per threshold per month.
//!
//! [`check_alerts`] is one pass over every org, run by `tally serve` every
//! `--alert-interval`, by `tally alerts check` (for cron) and by the billing Lambda's
//! `{"job": "alerts"}` schedule. It does its I/O through the ports only (orgs, counters, the
//! [`AlertLedger`] outbox, an [`AlertSender`]) with time from a [`Clock`], so it runs the same
//! on SQLite and DynamoDB and tests pin the time.
//!
//! # Which meters
//!
//! Every meter the org's plan (in the [`Catalogue`], what month close prices with) gives a
//! non-zero `included` allowance. That covers both kinds of plan, on purpose:
//!
//! - **Soft limits** (starter, pro): usage past the allowance is billed as overage, so 80 %
//!   says "overage is near" and 100 % says "overage has started".
//! - **Hard limits** (free): ingest refuses events past the allowance, so 80 % is the warning
//!   a customer needs most, and 100 % says "this meter's events are now refused". The
//!   payload's `hard_limit` tells the receiver which it is.
//!
//! A meter without an allowance (or with a zero one: pay from the first unit) has nothing to
//! alert about.
//!
//! # Once per threshold per month
//!
//! A crossed threshold is claimed in the ledger with a conditional write
//! ([`AlertLedger::claim_alert`]); only the first claim ever returns `true`, so of any number
//! of passes, sequential or concurrent, in one process or many, exactly one sends it. The
//! claim stores the webhook body, so every retry sends the same bytes with the same id.
//! The claimer holds a lease (`lease`, five minutes by default: longer than a sender's
//! attempts take) and records the delivery when the endpoint answers 2xx. An alert whose
//! delivery failed stays pending; a later pass, once the lease has run out, takes the lease
//! over with a compare-and-set ([`AlertLedger::renew_alert_lease`], one winner) and sends it
//! again. So an alert is never skipped. It can be sent twice only if a process dies (or its
//! store write fails) between the endpoint's 2xx and the record of the delivery; the
//! receiver dedupes on the alert id (`Tally-Alert-Id`, the payload's `id`), which is derived
//! from (org, month, meter, threshold) and so the same on every send.
//!
//! Pending alerts of the previous month are still retried after the month turns; older ones
//! are left (their usage is history by then, and the month's invoice says the rest).
//!
//! # Never in metering's way
//!
//! Nothing here is on the ingest or aggregation path: a pass only reads counters. A failing
//! endpoint costs the pass its sender's attempts and leaves the alert pending; a failing
//! org (store error) is reported and the other orgs are still checked.

use std::collections::BTreeMap;

use chrono::{Duration, SecondsFormat};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_core::ports::{
    AlertKey, AlertLease, AlertLedger, Clock, OrgStore, StoreError, StoredAlert, ThresholdPct,
    UsageStore,
};
use tally_core::{MeterName, Month, OrgId, PlanId};

use crate::catalogue::Catalogue;

/// The thresholds alerted on, in percent of an allowance.
pub const THRESHOLDS: [ThresholdPct; 2] = [ThresholdPct::WARNING, ThresholdPct::REACHED];

/// How long a pass owns the delivery of an alert it claimed or took over, when none is
/// given: longer than the HTTP sender's attempts and backoff take in total.
pub const DEFAULT_LEASE: Duration = Duration::minutes(5);

/// The payload's `type`.
pub const ALERT_TYPE: &str = "usage.threshold_crossed";

/// The webhook body: what an alert tells its receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertPayload {
    /// `alert_` and 32 hex digits, derived from (org, period, meter, threshold): the same on
    /// every send of this alert, so receivers dedupe on it.
    pub id: String,
    /// Always [`ALERT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The organization.
    pub org_id: OrgId,
    /// The month (`YYYY-MM`).
    pub period: Month,
    /// The meter.
    pub meter: MeterName,
    /// 80 or 100.
    pub threshold_percent: u8,
    /// The plan's monthly allowance of the meter, in its unit (exact decimal string).
    #[serde(with = "rust_decimal::serde::str")]
    pub limit: Decimal,
    /// Month-to-date usage when the threshold was found crossed (exact decimal string).
    #[serde(with = "rust_decimal::serde::str")]
    pub usage: Decimal,
    /// The meter's unit (`calls`, `minutes`, `bytes`).
    pub unit: String,
    /// The org's plan.
    pub plan: PlanId,
    /// Whether the plan's limits are hard: at 100 % ingest refuses this meter's events for
    /// the rest of the month. Otherwise usage past the limit is billed as overage.
    pub hard_limit: bool,
    /// When the threshold was found crossed (RFC 3339, UTC).
    pub at: String,
}

/// The alert's id: `alert_` and the first 32 hex digits of SHA-256 over its key.
pub fn alert_id(key: &AlertKey) -> String {
    let digest = Sha256::digest(
        format!(
            "{}\n{}\n{}\n{}",
            key.org,
            key.period,
            key.meter,
            key.threshold.get()
        )
        .as_bytes(),
    );
    let hex = hex::encode(digest);
    format!("alert_{}", hex.get(..32).unwrap_or(&hex))
}

/// The thresholds `usage` has reached of `limit` (none for a zero or negative limit).
/// Checked: usage too large to multiply (past ~7.9e26) has crossed every threshold of any
/// limit whose own product fits, and never panics the pass.
pub fn crossed(limit: Decimal, usage: Decimal) -> Vec<ThresholdPct> {
    if limit <= Decimal::ZERO {
        return Vec::new();
    }
    THRESHOLDS
        .into_iter()
        .filter(|t| match limit.checked_mul(Decimal::from(t.get())) {
            None => false,
            Some(scaled) => usage
                .checked_mul(Decimal::ONE_HUNDRED)
                .is_none_or(|u| u >= scaled),
        })
        .collect()
}

/// The delivery port and its error, defined in core so the webhook adapter needs only core;
/// re-exported here, where callers have always found them.
pub use tally_core::sinks::{AlertSender, SendError};

/// The ports a pass works through.
#[derive(Clone, Copy)]
pub struct AlertPorts<'a> {
    /// Orgs (their plan).
    pub tenants: &'a dyn OrgStore,
    /// Month counters.
    pub usage: &'a dyn UsageStore,
    /// The outbox.
    pub alerts: &'a dyn AlertLedger,
    /// Where "now" comes from.
    pub clock: &'a dyn Clock,
}

/// What went wrong for one org or alert; the pass went on with the rest.
#[derive(Debug, thiserror::Error)]
pub enum AlertProblem {
    /// The store failed; the next pass tries again.
    #[error("{what}: {source}")]
    Store {
        /// What was being read or written.
        what: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The endpoint did not take the alert; it stays pending.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The payload could not be encoded (a bug).
    #[error("cannot encode the alert: {0}")]
    Encode(String),
}

fn store(what: &'static str) -> impl FnOnce(StoreError) -> AlertProblem {
    move |source| AlertProblem::Store { what, source }
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct CheckOutcome {
    /// Orgs checked.
    pub orgs: usize,
    /// Thresholds newly claimed by this pass.
    pub claimed: usize,
    /// Alerts this pass delivered (new ones and retried ones).
    pub delivered: usize,
    /// Alerts this pass sent or tried to send and could not record as delivered, and orgs
    /// it could not check, with why. Alerts among them stay pending.
    pub problems: Vec<(OrgId, Option<AlertKey>, AlertProblem)>,
}

/// Why a pass could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The orgs could not be listed; nothing was checked.
    #[error("cannot list organizations: {0}")]
    ListOrgs(#[source] StoreError),
}

/// One pass over every org (see the [module doc](self)). Per-org and per-alert failures are
/// in the outcome; only failing to list the orgs fails the pass.
pub async fn check_alerts(
    ports: AlertPorts<'_>,
    catalogue: &Catalogue,
    sender: &dyn AlertSender,
    lease: Duration,
) -> Result<CheckOutcome, CheckError> {
    let mut orgs = ports
        .tenants
        .list_org_ids()
        .await
        .map_err(CheckError::ListOrgs)?;
    orgs.sort();
    orgs.dedup();
    let mut outcome = CheckOutcome::default();
    for org in &orgs {
        outcome.orgs += 1;
        check_org(ports, catalogue, sender, lease, org, &mut outcome).await;
    }
    Ok(outcome)
}

async fn check_org(
    ports: AlertPorts<'_>,
    catalogue: &Catalogue,
    sender: &dyn AlertSender,
    lease: Duration,
    org_id: &OrgId,
    outcome: &mut CheckOutcome,
) {
    let mut problem = |key: Option<AlertKey>, p: AlertProblem| {
        outcome.problems.push((org_id.clone(), key, p));
    };
    let org = match ports.tenants.get_org(org_id).await {
        Ok(Some(org)) if org.deleted_at.is_none() => org,
        // Gone or deleted: nobody to alert.
        Ok(_) => return,
        Err(e) => return problem(None, store("cannot read the organization")(e)),
    };
    let now = ports.clock.now();
    let period = Month::of(now);

    // Earlier claims whose delivery failed (or whose claimer died), oldest first.
    let pending = match ports.alerts.pending_alerts(org_id, period.prev()).await {
        Ok(p) => p,
        Err(e) => return problem(None, store("cannot list pending alerts")(e)),
    };
    let mut retry = Vec::new();
    for alert in pending {
        if alert.lease_until > now {
            continue; // another pass owns it
        }
        match ports
            .alerts
            .renew_alert_lease(&AlertLease::new(&alert.key, alert.lease_until, now + lease))
            .await
        {
            Ok(true) => retry.push(alert),
            Ok(false) => {} // another pass took it first
            Err(e) => problem(Some(alert.key), store("cannot take over an alert")(e)),
        }
    }
    for alert in retry {
        match deliver(ports, sender, &alert).await {
            Ok(()) => outcome.delivered += 1,
            Err(e) => outcome.problems.push((org_id.clone(), Some(alert.key), e)),
        }
    }

    let plan = catalogue.plan(org.plan);
    let limits: BTreeMap<&MeterName, Decimal> = plan
        .meters
        .iter()
        .filter_map(|(name, price)| price.included.map(|q| (name, q)))
        .filter(|(_, q)| *q > Decimal::ZERO)
        // A time-weighted meter's counter holds its latest reading, not its value × hours,
        // so it says nothing about the allowance: no alert for it.
        .filter(|(name, _)| {
            catalogue
                .meter(name)
                .is_none_or(|m| m.aggregation != tally_core::Aggregation::TimeWeightedSum)
        })
        .collect();
    for (meter, limit) in limits {
        let usage = match crate::close::month_counter(ports.usage, org_id, period, meter)
            .await
            .map_err(store("cannot read the month's usage"))
        {
            Ok(u) => u,
            Err(e) => {
                outcome.problems.push((org_id.clone(), None, e));
                continue;
            }
        };
        for threshold in crossed(limit, usage) {
            let key = AlertKey {
                org: org_id.clone(),
                period,
                meter: meter.clone(),
                threshold,
            };
            let payload = AlertPayload {
                id: alert_id(&key),
                kind: ALERT_TYPE.to_owned(),
                org_id: org_id.clone(),
                period,
                meter: meter.clone(),
                threshold_percent: threshold.get(),
                limit,
                usage,
                unit: plan
                    .meters
                    .get(meter)
                    .map(|p| p.unit.clone())
                    .unwrap_or_default(),
                plan: org.plan,
                hard_limit: plan.hard_usage_limits,
                at: now.to_rfc3339_opts(SecondsFormat::Micros, true),
            };
            let body = match serde_json::to_string(&payload) {
                Ok(b) => b,
                Err(e) => {
                    outcome.problems.push((
                        org_id.clone(),
                        Some(key),
                        AlertProblem::Encode(e.to_string()),
                    ));
                    continue;
                }
            };
            let alert = StoredAlert {
                key,
                body,
                claimed_at: now,
                lease_until: now + lease,
                delivered_at: None,
            };
            match ports.alerts.claim_alert(&alert).await {
                Ok(true) => outcome.claimed += 1,
                Ok(false) => continue, // claimed before, by this or another pass
                Err(e) => {
                    outcome.problems.push((
                        org_id.clone(),
                        Some(alert.key),
                        store("cannot claim an alert")(e),
                    ));
                    continue;
                }
            }
            match deliver(ports, sender, &alert).await {
                Ok(()) => outcome.delivered += 1,
                Err(e) => outcome.problems.push((org_id.clone(), Some(alert.key), e)),
            }
        }
    }
}

/// Sends a claimed alert and records its delivery.
async fn deliver(
    ports: AlertPorts<'_>,
    sender: &dyn AlertSender,
    alert: &StoredAlert,
) -> Result<(), AlertProblem> {
    sender.send(&alert_id(&alert.key), &alert.body).await?;
    ports
        .alerts
        .mark_alert_delivered(&alert.key, ports.clock.now())
        .await
        .map_err(store("sent, but cannot record the delivery"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn thresholds_are_crossed_at_80_and_100_percent() {
        let d = |v: i64| Decimal::from(v);
        assert!(crossed(d(10_000), d(7_999)).is_empty());
        assert_eq!(crossed(d(10_000), d(8_000)), vec![ThresholdPct::WARNING]);
        assert_eq!(crossed(d(10_000), d(9_999)), vec![ThresholdPct::WARNING]);
        assert_eq!(crossed(d(10_000), d(10_000)), THRESHOLDS.to_vec());
        assert_eq!(crossed(d(10_000), d(50_000)), THRESHOLDS.to_vec());
        // A fractional allowance compares exactly.
        let limit = Decimal::new(25, 1); // 2.5
        assert!(crossed(limit, Decimal::new(19_999, 4)).is_empty());
        assert_eq!(
            crossed(limit, Decimal::new(2, 0)),
            vec![ThresholdPct::WARNING]
        );
        assert!(crossed(Decimal::ZERO, d(5)).is_empty());
    }

    #[test]
    fn alert_ids_are_stable_and_distinct_per_key() {
        let key = |t: ThresholdPct| AlertKey {
            org: OrgId::parse("org_acme").unwrap(),
            period: Month::parse("2026-11").unwrap(),
            meter: MeterName::parse("api_calls").unwrap(),
            threshold: t,
        };
        let a = alert_id(&key(ThresholdPct::WARNING));
        assert_eq!(a, alert_id(&key(ThresholdPct::WARNING)));
        assert_ne!(a, alert_id(&key(ThresholdPct::REACHED)));
        assert!(a.starts_with("alert_") && a.len() == 38, "{a}");
    }
}
