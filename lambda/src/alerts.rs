//! The billing function's second job, `{"job": "alerts"}` on a `rate(5 minutes)` schedule:
//! one pass of plan-limit alerts ([`tally_billing::alerts::check_alerts`]), signed and sent
//! by `tally-notify` to [`env::ALERT_WEBHOOK_URL`] with the secret in
//! [`env::ALERT_WEBHOOK_SECRET`] (a Secrets Manager dynamic reference in the template).
//!
//! An alert that could not be delivered stays pending and the next run retries it, so a
//! run with such problems still succeeds (they are logged and counted as
//! `tally_alert_problems_total`): failing the invocation would fire the monthly billing
//! alarm for an endpoint that is not billing's. Only a run that could not check at all
//! (the orgs could not be listed) fails.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tally_billing::Catalogue;
use tally_billing::alerts::{AlertSender, CheckError, DEFAULT_LEASE, alert_id, check_alerts};
use tally_core::ports::Clock;
use tally_notify::{TokioSleeper, WebhookConfig, WebhookConfigError, WebhookSender};

use crate::env::{self, Env, EnvError};

/// Whether an invocation's event asks for the alert pass (`{"job": "alerts"}`) rather than
/// the monthly billing run.
pub fn is_alert_job(event: &Value) -> bool {
    event.get("job").and_then(Value::as_str) == Some("alerts")
}

/// What the billing function answers: the billing run's result, or the alert run's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum JobOutput<B> {
    /// The monthly billing run.
    Bill(B),
    /// An alert run.
    Alerts(AlertRun),
}

/// Why the sender could not be built at start. Each variant names the variable.
#[derive(Debug, thiserror::Error)]
pub enum AlertConfigError {
    /// A variable could not be read.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// Only one of the two variables is set.
    #[error("{set} is set but {missing} is not; alerts need both")]
    Half {
        /// The one set.
        set: &'static str,
        /// The one missing.
        missing: &'static str,
    },
    /// The URL or the secret is not usable.
    #[error("{0}")]
    Config(#[from] WebhookConfigError),
}

/// The sender, if the function's environment configures alerts (both variables set).
pub fn sender_from_env(
    env: &Env,
    clock: Arc<dyn Clock>,
) -> Result<Option<WebhookSender>, AlertConfigError> {
    let url = env.optional(env::ALERT_WEBHOOK_URL)?;
    let secret = env.optional(env::ALERT_WEBHOOK_SECRET)?;
    let (url, secret) = match (url, secret) {
        (None, None) => return Ok(None),
        (Some(u), Some(s)) => (u, s),
        (Some(_), None) => {
            return Err(AlertConfigError::Half {
                set: env::ALERT_WEBHOOK_URL,
                missing: env::ALERT_WEBHOOK_SECRET,
            });
        }
        (None, Some(_)) => {
            return Err(AlertConfigError::Half {
                set: env::ALERT_WEBHOOK_SECRET,
                missing: env::ALERT_WEBHOOK_URL,
            });
        }
    };
    let config = WebhookConfig::new(url.trim(), secret.trim());
    Ok(Some(WebhookSender::new(
        config,
        clock,
        Arc::new(TokioSleeper),
    )?))
}

/// What an alert run answers (and logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertRun {
    /// Whether alerts are configured; `false`: nothing was checked.
    pub enabled: bool,
    /// Orgs checked.
    pub orgs: usize,
    /// Thresholds newly claimed.
    pub claimed: usize,
    /// Alerts delivered (new and retried).
    pub delivered: usize,
    /// Problems, each `<org> <alert id or -> <why>`; their alerts stay pending.
    pub problems: Vec<String>,
}

/// The ports an alert run needs: the same four as the pass it runs, so the billing crate's
/// struct serves under the name callers of this crate have always used (a
/// `&dyn TenantStore` coerces to its `&dyn OrgStore`).
pub use tally_billing::alerts::AlertPorts as AlertRunPorts;

/// One alert pass; `sender` `None` (alerts not configured) does nothing.
pub async fn run(
    ports: AlertRunPorts<'_>,
    catalogue: &Catalogue,
    sender: Option<&dyn AlertSender>,
) -> Result<AlertRun, CheckError> {
    let Some(sender) = sender else {
        tracing::info!("alerts are not configured; nothing to check");
        return Ok(AlertRun {
            enabled: false,
            orgs: 0,
            claimed: 0,
            delivered: 0,
            problems: Vec::new(),
        });
    };
    let out = check_alerts(ports, catalogue, sender, DEFAULT_LEASE).await?;
    metrics::counter!("tally_alerts_delivered_total").increment(out.delivered as u64);
    metrics::counter!("tally_alert_problems_total").increment(out.problems.len() as u64);
    let problems: Vec<String> = out
        .problems
        .iter()
        .map(|(org, key, e)| {
            let id = key.as_ref().map(alert_id);
            format!("{org} {} {e}", id.as_deref().unwrap_or("-"))
        })
        .collect();
    for p in &problems {
        tracing::warn!(problem = %p, "plan-limit alert problem; retried next run");
    }
    tracing::info!(
        orgs = out.orgs,
        claimed = out.claimed,
        delivered = out.delivered,
        "alert run"
    );
    Ok(AlertRun {
        enabled: true,
        orgs: out.orgs,
        claimed: out.claimed,
        delivered: out.delivered,
        problems,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_the_alert_schedule_runs_alerts() {
        assert!(is_alert_job(&serde_json::json!({"job": "alerts"})));
        // The monthly schedule's event is EventBridge's own, without a job.
        let monthly = serde_json::json!({"detail-type": "Scheduled Event", "detail": {}});
        assert!(!is_alert_job(&monthly));
        assert!(!is_alert_job(&serde_json::json!({"job": "bill"})));
        let run = AlertRun {
            enabled: true,
            orgs: 2,
            claimed: 1,
            delivered: 1,
            problems: Vec::new(),
        };
        let out = serde_json::to_value(JobOutput::<()>::Alerts(run)).unwrap();
        assert_eq!(out["delivered"], 1);
    }
}
