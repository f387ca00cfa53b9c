//! Stripe wiring: the adapter built from the environment ([`provider_from_env`]; tests that
//! run the app in process build it with [`provider`]), and how one run's per-org results
//! are shown.
//!
//! `tally bill` and the `tally serve` scheduler both sync through
//! [`tally_billing::sync_period`]; this module only builds its ports. Stripe is configured
//! by environment only (a secret key never belongs in a flag, where `ps` shows it):
//! `TALLY_STRIPE_SECRET_KEY` turns the sync on, `TALLY_STRIPE_API_BASE` points it elsewhere
//! than `https://api.stripe.com/` (the tests' Stripe double), and
//! `TALLY_STRIPE_WEBHOOK_SECRET` is the webhook route's signing secret.

use anyhow::Context;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_billing::{OrgSync, PeriodSync, SyncOutcome};
use tally_stripe::{StripeConfig, StripeProvider};

/// The Stripe secret key; Stripe sync runs only when it is set.
pub const SECRET_KEY_ENV: &str = "TALLY_STRIPE_SECRET_KEY";
/// Stripe's base URL (`https://api.stripe.com/` when unset).
pub const API_BASE_ENV: &str = "TALLY_STRIPE_API_BASE";
/// The signing secret of the Stripe webhook endpoint.
pub const WEBHOOK_SECRET_ENV: &str = "TALLY_STRIPE_WEBHOOK_SECRET";

/// Reads a non-empty variable.
fn var(name: &str) -> anyhow::Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v.trim().to_owned())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("{name} is not valid UTF-8"),
    }
}

/// The Stripe adapter if `TALLY_STRIPE_SECRET_KEY` is set, `None` otherwise.
pub fn provider_from_env() -> anyhow::Result<Option<StripeProvider>> {
    let Some(secret_key) = var(SECRET_KEY_ENV)? else {
        return Ok(None);
    };
    let base_url = var(API_BASE_ENV)?;
    provider(secret_key, base_url)
        .map(Some)
        .with_context(|| format!("{SECRET_KEY_ENV} / {API_BASE_ENV}"))
}

/// The Stripe adapter for `secret_key` at `base_url` (Stripe's own API when `None`), as
/// [`provider_from_env`] builds it from the environment.
pub fn provider(secret_key: String, base_url: Option<String>) -> anyhow::Result<StripeProvider> {
    let mut base_url = base_url.unwrap_or_else(|| tally_stripe::STRIPE_API_BASE.to_owned());
    // `StripeConfig::base_url` must end in `/`; a user's setting may not.
    if !base_url.ends_with('/') {
        base_url.push('/');
    }
    StripeProvider::new(StripeConfig {
        secret_key,
        base_url,
        timeout: tally_stripe::DEFAULT_TIMEOUT,
    })
    .context("the Stripe adapter's settings")
}

/// The webhook signing secret, if `TALLY_STRIPE_WEBHOOK_SECRET` is set.
pub fn webhook_secret_from_env() -> anyhow::Result<Option<String>> {
    var(WEBHOOK_SECRET_ENV)
}

/// One org's Stripe result as `tally bill` prints it.
#[derive(Debug, Serialize)]
pub struct OrgInvoice {
    /// The org.
    pub org_id: String,
    /// `finalized`, `pending` (a rerun resumes) or `failed` (fix the cause, then rerun).
    pub status: &'static str,
    /// The Stripe invoice, once finalized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    /// Stripe's invoice status (`open`, or `paid` for a zero total).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice_status: Option<String>,
    /// The invoice total in major units (`"139.00"`), as Stripe reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<String>,
    /// The step that did not get through (pending or failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Why: the last retryable error, or Stripe's refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<&OrgSync> for OrgInvoice {
    fn from(o: &OrgSync) -> Self {
        let mut out = OrgInvoice {
            org_id: o.org_id.as_str().to_owned(),
            status: "finalized",
            invoice: None,
            invoice_status: None,
            total: None,
            step: None,
            reason: None,
        };
        match &o.outcome {
            SyncOutcome::Finalized(f) => {
                out.invoice = Some(f.id.as_str().to_owned());
                out.invoice_status = Some(f.status.clone());
                out.total = Some(Decimal::new(f.total_minor, 2).to_string());
            }
            SyncOutcome::Pending { step, reason } => {
                out.status = "pending";
                out.step = Some(step.clone());
                out.reason = Some(reason.clone());
            }
            SyncOutcome::Failed { step, message } => {
                out.status = "failed";
                out.step = Some(step.clone());
                out.reason = Some(message.clone());
            }
        }
        out
    }
}

/// The one-line error for a run that left orgs pending or failed, `None` if all are
/// finalized. It says what to do: rerun for pending orgs, fix the cause for failed ones.
pub fn incomplete(run: &PeriodSync, rerun: &str) -> Option<String> {
    let pending: Vec<String> = run
        .pending()
        .map(|o| match &o.outcome {
            SyncOutcome::Pending { step, reason } => format!("{} at {step} ({reason})", o.org_id),
            _ => o.org_id.to_string(),
        })
        .collect();
    let failed: Vec<String> = run
        .failed()
        .map(|o| match &o.outcome {
            SyncOutcome::Failed { step, message } => {
                format!("{} at {step}: {message}", o.org_id)
            }
            _ => o.org_id.to_string(),
        })
        .collect();
    let mut parts = Vec::new();
    if !failed.is_empty() {
        parts.push(format!(
            "Stripe refused {} org(s): {}; fix the cause in Stripe or in the org, then run `{rerun}` again",
            failed.len(),
            failed.join("; ")
        ));
    }
    if !pending.is_empty() {
        parts.push(format!(
            "{} org(s) still pending after retries: {}; run `{rerun}` again to resume (nothing is invoiced twice)",
            pending.len(),
            pending.join("; ")
        ));
    }
    (!parts.is_empty()).then(|| parts.join(". "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tally_core::OrgId;
    use tally_core::ports::{FinalizedInvoice, ProviderId};

    use super::*;

    fn org(id: &str, outcome: SyncOutcome) -> OrgSync {
        OrgSync {
            org_id: OrgId::parse(id).unwrap(),
            outcome,
        }
    }

    #[test]
    fn an_incomplete_run_says_to_rerun_pending_orgs_and_what_failed() {
        let done = org(
            "org_a",
            SyncOutcome::Finalized(FinalizedInvoice {
                id: ProviderId::new("in_1").unwrap(),
                status: "open".into(),
                total_minor: 13900,
                hosted_url: None,
            }),
        );
        let all_done = PeriodSync {
            orgs: vec![done.clone()],
        };
        assert_eq!(incomplete(&all_done, "tally bill --period 2026-02"), None);
        let printed = OrgInvoice::from(&done);
        assert_eq!(printed.total.as_deref(), Some("139.00"));

        let run = PeriodSync {
            orgs: vec![
                done,
                org(
                    "org_b",
                    SyncOutcome::Pending {
                        step: "item:1".into(),
                        reason: "500".into(),
                    },
                ),
                org(
                    "org_c",
                    SyncOutcome::Failed {
                        step: "invoice".into(),
                        message: "400: No such customer".into(),
                    },
                ),
            ],
        };
        let m = incomplete(&run, "tally bill --period 2026-02").unwrap();
        assert!(!m.contains('\n'), "{m}");
        assert!(
            m.contains("org_c at invoice: 400: No such customer; fix the cause"),
            "{m}"
        );
        assert!(
            m.contains("org_b at item:1 (500); run `tally bill --period 2026-02` again"),
            "{m}"
        );
    }
}
