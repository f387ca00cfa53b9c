//! The billing function's second job, `{"job": "alerts"}` on a `rate(5 minutes)` schedule:
//! one pass of plan-limit alerts ([`tally_billing::alerts::check_alerts`]), signed and sent
//! by `tally-notify` to [`env::ALERT_WEBHOOK_URL`] with the secret whose ARN is
//! [`env::ALERT_WEBHOOK_SECRET_ARN`] (read at run time and refreshed, so a rotated secret
//! signs the next run's alerts once the refresh interval has passed; see
//! [`crate::secrets`]).
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
use crate::secrets::{Derived, Secret};

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
    /// The URL is not usable (the secret is checked when it is read).
    #[error("{0}")]
    Config(#[from] WebhookConfigError),
}

/// The signing secret the URL is checked with at start, before the real one is read: long
/// enough and printable, so only the URL can be refused.
const URL_CHECK_SECRET: &str = "url-check-placeholder";

/// The sender, if the function's environment configures alerts (both variables set),
/// rebuilt whenever the secret's value changes.
pub fn sender_from_env(
    env: &Env,
    sdk: &aws_config::SdkConfig,
    clock: Arc<dyn Clock>,
) -> Result<Option<Derived<WebhookSender>>, AlertConfigError> {
    let url = env.optional(env::ALERT_WEBHOOK_URL)?;
    let secret = Secret::from_env(env, env::ALERT_WEBHOOK_SECRET_ARN, None, sdk)?;
    let (url, secret) = match (url, secret) {
        (None, None) => return Ok(None),
        (Some(u), Some(s)) => (u.trim().to_owned(), s),
        (Some(_), None) => {
            return Err(AlertConfigError::Half {
                set: env::ALERT_WEBHOOK_URL,
                missing: env::ALERT_WEBHOOK_SECRET_ARN,
            });
        }
        (None, Some(_)) => {
            return Err(AlertConfigError::Half {
                set: env::ALERT_WEBHOOK_SECRET_ARN,
                missing: env::ALERT_WEBHOOK_URL,
            });
        }
    };
    // A bad URL is a deploy mistake: refuse it at start, not at the first run.
    WebhookSender::new(
        WebhookConfig::new(url.as_str(), URL_CHECK_SECRET),
        clock.clone(),
        Arc::new(TokioSleeper),
    )?;
    Ok(Some(sender_from_secret(url, secret, clock)))
}

/// Alerts to `url`, signed with `secret`'s current value.
pub fn sender_from_secret(
    url: String,
    secret: Secret,
    clock: Arc<dyn Clock>,
) -> Derived<WebhookSender> {
    Derived::new(secret, move |value| {
        WebhookSender::new(
            WebhookConfig::new(url.as_str(), value),
            clock.clone(),
            Arc::new(TokioSleeper),
        )
        .map_err(|e| e.to_string())
    })
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
