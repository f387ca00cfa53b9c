//! The exactly-once Stripe invoice sync of one org's [`UsageReport`].
//!
//! The sync is a recorded sequence of steps: ensure the customer, create a draft invoice,
//! add one invoice item per report entry (the flat fee, each line, each adjustment), then
//! finalize. Each provider call carries an idempotency key derived from (org, period, step)
//! so a retry after a lost answer replays the provider's first answer, and each step's
//! result is written to Tally's own [`SyncLedger`] (first write wins), so a rerun an hour or
//! a month later skips what is done and never creates a second invoice or item (provider
//! idempotency keys expire after a day; the ledger does not).
//!
//! The ledger write follows the provider's answer, so an answer lost after the provider
//! applied the write leaves the ledger without the step. Within a day the same key replays
//! the answer; after that it would create the object again. So before creating a customer,
//! a draft invoice or an item that the ledger does not hold, the sync asks the provider for
//! one it made earlier: the customer whose metadata `tally_org` is the org
//! ([`InvoiceProvider::find_customer`], Stripe's customer search; the oldest if an earlier
//! duplicate exists), the customer's invoice whose metadata `tally_invoice` is
//! `<org>:<period>` ([`InvoiceProvider::find_invoice`], a paginated list), and the invoice's
//! items whose metadata `tally_step` names the step
//! ([`InvoiceProvider::list_invoice_items`]); it adopts what it finds.
//!
//! Stripe's search index lags writes by up to about a minute, so a search right after a
//! lost creation answer can miss the customer. That does no harm: within 24 hours the
//! creation's idempotency key (the same for a rerun of the same period) replays the first
//! answer instead of creating another customer, and after 24 hours, when the key is
//! forgotten, the index has long caught up. Invoices are not searched for but listed,
//! since a customer's list is exact and short. Where the provider refuses the search
//! (Stripe does not offer it to every account), the sync creates the customer as before.
//!
//! Errors: a [`ProviderError::Retryable`] is retried here with the same key, waiting the
//! provider's `Retry-After` (or an exponential backoff) through a [`Sleeper`]; when the
//! attempts run out the org is left [`SyncOutcome::Pending`] and a rerun resumes it. A
//! [`ProviderError::Fatal`] stops the org: it is recorded in the ledger as step
//! `error:<step>` and returned as [`SyncOutcome::Failed`] with the provider's message.
//!
//! No I/O happens here: the provider, the ledger and the sleeper are ports.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tally_core::ports::{
    FinalizedInvoice, IdempotencyKey, InvoiceProvider, NewCustomer, NewInvoice, NewInvoiceItem,
    ProviderError, ProviderId, StoreError, SyncLedger,
};
use tally_core::{Money, Month, OrgId};

use crate::report::UsageReport;

/// Waits between retries; a port so tests (and the chaos test) need not sleep for real.
#[async_trait]
pub trait Sleeper: Send + Sync {
    /// Returns after `duration` (or sooner, in tests).
    async fn sleep(&self, duration: Duration);
}

/// How hard one run tries before leaving an org for the next run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per step in one run (at least 1).
    pub max_attempts: u32,
    /// First backoff when the provider gave no `Retry-After`; doubles per attempt.
    pub base_backoff: Duration,
    /// Longest wait, whatever `Retry-After` says.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// How one org's sync ended in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Every step is done: the invoice is finalized.
    Finalized(FinalizedInvoice),
    /// A step kept failing with retryable errors; a rerun resumes here.
    Pending {
        /// The step that did not get through.
        step: String,
        /// The last error.
        reason: String,
    },
    /// The provider refused a step; the org stops until someone fixes the cause.
    Failed {
        /// The refused step.
        step: String,
        /// The provider's message (also recorded in the ledger as `error:<step>`).
        message: String,
    },
}

/// What stops a sync run outright (rather than one org).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The ledger could not be read or written; nothing was lost, rerun later.
    #[error("sync ledger: {0}")]
    Ledger(#[from] StoreError),
    /// The report cannot be invoiced as it is (an amount does not fit in minor units, or the
    /// ledger holds a value this build cannot read). Names the field.
    #[error("report {org} {period} cannot be synced: {field}: {reason}")]
    BadReport {
        /// The org.
        org: OrgId,
        /// The period.
        period: Month,
        /// The field at fault.
        field: String,
        /// Why.
        reason: String,
    },
}

/// One invoice item the report asks for, in invoice order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedItem {
    /// The ledger step (`item:0`, `item:1`, …); stable for a given report.
    pub step: String,
    /// Minor units.
    pub amount_minor: i64,
    /// Shown on the invoice.
    pub description: String,
}

/// The invoice items for a report: the flat fee (if any), every line with a non-zero amount,
/// then every non-zero adjustment. They add up to `report.total`.
pub fn planned_items(report: &UsageReport) -> Result<Vec<PlannedItem>, SyncError> {
    let bad = |field: String| SyncError::BadReport {
        org: report.org_id.clone(),
        period: report.period,
        field,
        reason: "amount does not fit in minor units".to_owned(),
    };
    let minor = |m: Money, field: String| m.to_minor_units().ok_or_else(|| bad(field));
    let mut entries = Vec::new();
    entries.push((
        minor(report.flat_fee, "flat_fee".to_owned())?,
        format!("{} plan, {}", report.plan.as_str(), report.period),
    ));
    for (i, line) in report.lines.iter().enumerate() {
        entries.push((
            minor(line.amount, format!("lines[{i}].amount"))?,
            format!("{} ({} {})", line.description, line.quantity, line.unit),
        ));
    }
    for (i, adj) in report.adjustments.iter().enumerate() {
        entries.push((
            minor(adj.amount, format!("adjustments[{i}].amount"))?,
            format!(
                "Adjustment for {}: {} ({})",
                adj.period, adj.meter, adj.reason
            ),
        ));
    }
    Ok(entries
        .into_iter()
        .filter(|(amount, _)| *amount != 0)
        .enumerate()
        .map(|(i, (amount_minor, description))| PlannedItem {
            step: format!("item:{i}"),
            amount_minor,
            description,
        })
        .collect())
}

/// The idempotency key of one step: hex SHA-256 of (org, period, step), prefixed so it is
/// recognisable in the provider's logs.
pub fn idempotency_key(org: &OrgId, period: Month, step: &str) -> IdempotencyKey {
    let mut h = Sha256::new();
    for part in [org.as_str(), &period.to_string(), step] {
        // Length-prefixed so ("ab", "c") and ("a", "bc") differ.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let key = format!("tally-{}", hex::encode(h.finalize()));
    // 70 printable ASCII characters: always valid.
    IdempotencyKey::parse(&key).unwrap_or_else(|_| unreachable_key())
}

#[allow(clippy::panic)]
fn unreachable_key() -> IdempotencyKey {
    panic!("a hex SHA-256 key is always a valid idempotency key")
}

/// Runs the sync of one report with the given ports.
pub struct InvoiceSync<'a> {
    /// Stripe (or the double).
    pub provider: &'a dyn InvoiceProvider,
    /// Tally's record of the steps.
    pub ledger: &'a dyn SyncLedger,
    /// Waits between retries.
    pub sleeper: &'a dyn Sleeper,
    /// Attempts and backoff.
    pub policy: RetryPolicy,
}

enum Step<T> {
    Done(T),
    Stop(SyncOutcome),
}

impl InvoiceSync<'_> {
    /// Syncs one org's report, resuming after whatever the ledger says is done. `org_name`
    /// names the customer when it has to be created.
    pub async fn sync_report(
        &self,
        report: &UsageReport,
        org_name: &str,
    ) -> Result<SyncOutcome, SyncError> {
        let org = &report.org_id;
        let period = report.period;
        let items = planned_items(report)?;
        let id = |field: &str, v: String| {
            ProviderId::new(&v).ok_or_else(|| SyncError::BadReport {
                org: org.clone(),
                period,
                field: field.to_owned(),
                reason: "empty or over-long provider id".to_owned(),
            })
        };

        // 1. The customer: one per org, whatever the period. Adopt one an earlier run
        // created but never recorded (its answer lost) before creating one.
        let customer = match self.ledger.get_customer(org).await? {
            Some(c) => id("customer", c)?,
            None => {
                let found = match self
                    .call(org, period, "customer", || async {
                        // A search the account cannot use (Stripe's search is not offered
                        // everywhere: a 400 or 404) must not stop invoicing: fall back to
                        // creating, which the idempotency key still protects for a day. A
                        // refused key (401/403) stops the org as any other step would.
                        match self.provider.find_customer(org).await {
                            Err(ProviderError::Fatal {
                                status: status @ (400 | 404),
                                message,
                            }) => {
                                tracing::warn!(org = %org, status, %message, "customer search refused; creating the customer without it");
                                Ok(None)
                            }
                            other => other,
                        }
                    })
                    .await?
                {
                    Step::Done(found) => found,
                    Step::Stop(o) => return Ok(o),
                };
                let c = match found {
                    Some(c) => c,
                    None => {
                        let new = NewCustomer {
                            org: org.clone(),
                            name: org_name.to_owned(),
                        };
                        let key = idempotency_key(org, period, "customer");
                        match self
                            .call(org, period, "customer", || {
                                self.provider.create_customer(&new, &key)
                            })
                            .await?
                        {
                            Step::Done(c) => c,
                            Step::Stop(o) => return Ok(o),
                        }
                    }
                };
                id(
                    "customer",
                    self.ledger.record_customer(org, c.as_str()).await?,
                )?
            }
        };

        // 2. The draft invoice.
        let invoice = match self.ledger.get_step(org, period, "invoice").await? {
            Some(i) => id("invoice", i)?,
            None => {
                // Adopt an invoice an earlier run created but never recorded.
                let found = match self
                    .call(org, period, "invoice", || {
                        self.provider.find_invoice(&customer, org, period)
                    })
                    .await?
                {
                    Step::Done(found) => found,
                    Step::Stop(o) => return Ok(o),
                };
                if let Some(i) = found {
                    id(
                        "invoice",
                        self.ledger
                            .record_step(org, period, "invoice", i.as_str())
                            .await?,
                    )?
                } else {
                    let new = NewInvoice {
                        customer: customer.clone(),
                        org: org.clone(),
                        period,
                        currency: report.currency.clone(),
                        description: format!("Tally usage for {period}"),
                    };
                    let key = idempotency_key(org, period, "invoice");
                    match self
                        .call(org, period, "invoice", || {
                            self.provider.create_draft_invoice(&new, &key)
                        })
                        .await?
                    {
                        Step::Done(i) => id(
                            "invoice",
                            self.ledger
                                .record_step(org, period, "invoice", i.as_str())
                                .await?,
                        )?,
                        Step::Stop(o) => return Ok(o),
                    }
                }
            }
        };

        // 3. One item per report entry. The invoice's existing items are listed once, the
        // first time an item is missing from the ledger, to adopt any created unrecorded.
        let mut existing: Option<HashMap<String, ProviderId>> = None;
        for item in &items {
            if self
                .ledger
                .get_step(org, period, &item.step)
                .await?
                .is_some()
            {
                continue;
            }
            if existing.is_none() {
                match self
                    .call(org, period, &item.step, || {
                        self.provider.list_invoice_items(&invoice)
                    })
                    .await?
                {
                    Step::Done(list) => {
                        existing = Some(
                            list.into_iter()
                                .filter_map(|(id, step)| step.map(|s| (s, id)))
                                .collect(),
                        );
                    }
                    Step::Stop(o) => return Ok(o),
                }
            }
            if let Some(found) = existing.as_ref().and_then(|e| e.get(&item.step)) {
                self.ledger
                    .record_step(org, period, &item.step, found.as_str())
                    .await?;
                continue;
            }
            let new = NewInvoiceItem {
                customer: customer.clone(),
                invoice: invoice.clone(),
                amount_minor: item.amount_minor,
                currency: report.currency.clone(),
                description: item.description.clone(),
                step: item.step.clone(),
            };
            let key = idempotency_key(org, period, &item.step);
            match self
                .call(org, period, &item.step, || {
                    self.provider.add_invoice_item(&new, &key)
                })
                .await?
            {
                Step::Done(i) => {
                    self.ledger
                        .record_step(org, period, &item.step, i.as_str())
                        .await?;
                }
                Step::Stop(o) => return Ok(o),
            }
        }

        // 4. Finalize. The ledger keeps "<status> <total>" so a rerun can answer without
        // calling the provider.
        if let Some(done) = self.ledger.get_step(org, period, "finalize").await? {
            let (status, total) = done.split_once(' ').unwrap_or((done.as_str(), ""));
            let total_minor = total.parse().map_err(|_| SyncError::BadReport {
                org: org.clone(),
                period,
                field: "ledger step finalize".to_owned(),
                reason: format!("unreadable value {done:?}"),
            })?;
            return Ok(SyncOutcome::Finalized(FinalizedInvoice {
                id: invoice,
                status: status.to_owned(),
                total_minor,
            }));
        }
        let key = idempotency_key(org, period, "finalize");
        match self
            .call(org, period, "finalize", || {
                self.provider.finalize_invoice(&invoice, &key)
            })
            .await?
        {
            Step::Done(f) => {
                self.ledger
                    .record_step(
                        org,
                        period,
                        "finalize",
                        &format!("{} {}", f.status, f.total_minor),
                    )
                    .await?;
                Ok(SyncOutcome::Finalized(f))
            }
            Step::Stop(o) => Ok(o),
        }
    }

    /// One provider call with retries: the same key every attempt, waiting `Retry-After`
    /// (capped) or an exponential backoff between them.
    async fn call<T, F, Fut>(
        &self,
        org: &OrgId,
        period: Month,
        step: &str,
        mut f: F,
    ) -> Result<Step<T>, SyncError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let attempts = self.policy.max_attempts.max(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            match f().await {
                Ok(v) => return Ok(Step::Done(v)),
                Err(ProviderError::Fatal { status, message }) => {
                    let message = if status == 0 {
                        message
                    } else {
                        format!("{status}: {message}")
                    };
                    let recorded: String = message.chars().take(1000).collect();
                    self.ledger
                        .record_step(org, period, &format!("error:{step}"), &recorded)
                        .await?;
                    return Ok(Step::Stop(SyncOutcome::Failed {
                        step: step.to_owned(),
                        message,
                    }));
                }
                Err(ProviderError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    last = reason;
                    if attempt + 1 < attempts {
                        let backoff = self
                            .policy
                            .base_backoff
                            .saturating_mul(1u32 << attempt.min(16));
                        let wait = retry_after.unwrap_or(backoff).min(self.policy.max_backoff);
                        self.sleeper.sleep(wait).await;
                    }
                }
            }
        }
        Ok(Step::Stop(SyncOutcome::Pending {
            step: step.to_owned(),
            reason: last,
        }))
    }
}
