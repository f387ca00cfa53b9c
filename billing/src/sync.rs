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
//! The steps are the [`SyncStep`]s, and each runs through one resume: the ledger's record,
//! else an object the provider already has, else a creation with the step's key; then the
//! record. A step's [`SyncStep::name`] is both its ledger step and the last part of its key,
//! unchanged from earlier releases so their half-synced months resume. Ids are recorded as
//! they are; the finalize step as a [`FinalizeRecord`] in JSON, and the
//! `"<status> <total>"` text earlier releases recorded is still read. The finalized
//! invoice's hosted page URL, when the provider gives one, is recorded as step
//! [`HOSTED_URL_STEP`] (just before the finalize step, so a crash between them loses
//! nothing: the rerun finalizes again with the same key and gets the same answer).
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
use std::sync::{Mutex, MutexGuard, PoisonError};

use sha2::{Digest, Sha256};
use tally_core::ports::{
    FinalizedInvoice, IdempotencyKey, InvoiceProvider, NewCustomer, NewInvoice, NewInvoiceItem,
    ProviderError, ProviderId, StepKey, StoreError, SyncLedger,
};
use tally_core::{Money, Month, OrgId};

use crate::report::UsageReport;

/// Waits between retries (the port is core's, shared with the alert webhook sender).
pub use tally_core::backoff::Sleeper;

/// How hard one run tries before leaving an org for the next run: attempts per step, the
/// backoff when the provider gave no `Retry-After` (doubling, not jittered: the key is
/// the same every attempt) and the longest wait, whatever `Retry-After` says. The
/// workspace's one retry policy; its default (5 attempts, 500 ms, at most 60 s) is this one.
pub type RetryPolicy = tally_core::backoff::Backoff;

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

/// One step of the sync, in the order they run. Its [`name`](SyncStep::name) is the ledger
/// step and the last part of its idempotency key, so the names are stored data: they never
/// change, or a rerun of a half-synced month would miss its ledger records and send new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncStep {
    /// The org's customer (one per org, recorded apart from the periods' steps).
    Customer,
    /// The period's draft invoice.
    Invoice,
    /// The n-th invoice item of [`planned_items`].
    Item(usize),
    /// Finalizing the invoice.
    Finalize,
}

impl SyncStep {
    /// The ledger step name: `customer`, `invoice`, `item:<n>` or `finalize`.
    pub fn name(self) -> String {
        match self {
            SyncStep::Customer => "customer".to_owned(),
            SyncStep::Invoice => "invoice".to_owned(),
            SyncStep::Item(n) => format!("item:{n}"),
            SyncStep::Finalize => "finalize".to_owned(),
        }
    }

    /// The step's idempotency key for (org, period): [`idempotency_key`] of its name.
    pub fn key(self, org: &OrgId, period: Month) -> IdempotencyKey {
        idempotency_key(org, period, &self.name())
    }
}

impl std::fmt::Display for SyncStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// The ledger step holding the finalized invoice's hosted page URL (as the provider gave
/// it), which `GET /v1/orgs/{id}/invoices` shows; absent when the provider gave none.
pub const HOSTED_URL_STEP: &str = "hosted_url";

/// What the ledger holds for a finished finalize step. Written as JSON
/// (`{"status":"open","total_minor":9650}`); releases before this one wrote
/// `"<status> <total_minor>"`, which is still read (see [`FinalizeRecord::decode`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalizeRecord {
    /// The invoice's status after finalizing (`open`, or `paid` for a zero total).
    pub status: String,
    /// The invoice's total in minor units.
    pub total_minor: i64,
}

/// How a step's result is kept in the [`SyncLedger`], which stores text.
trait StepRecord: Sized {
    /// The text written to the ledger.
    fn encode(&self) -> String;
    /// Reads the text back; `None` if this build cannot read it.
    fn decode(stored: &str) -> Option<Self>;
}

impl StepRecord for ProviderId {
    fn encode(&self) -> String {
        self.as_str().to_owned()
    }

    fn decode(stored: &str) -> Option<Self> {
        ProviderId::new(stored)
    }
}

impl StepRecord for FinalizeRecord {
    fn encode(&self) -> String {
        // Two plain fields: serializing cannot fail, but an error must not panic a sync.
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!("{} {}", self.status, self.total_minor))
    }

    /// The JSON form, or the older `"<status> <total_minor>"` form that ledgers written by
    /// earlier releases hold (a JSON object always starts with `{`, a status never does).
    fn decode(stored: &str) -> Option<Self> {
        if stored.starts_with('{') {
            return serde_json::from_str(stored).ok();
        }
        let (status, total) = stored.split_once(' ')?;
        Some(FinalizeRecord {
            status: status.to_owned(),
            total_minor: total.parse().ok()?,
        })
    }
}

impl FinalizeRecord {
    /// Reads a finalize record in either the current (JSON) or the older
    /// (`"<status> <total_minor>"`) form; `None` if it is neither.
    pub fn decode(stored: &str) -> Option<Self> {
        <Self as StepRecord>::decode(stored)
    }

    /// The record as the ledger stores it now (JSON).
    pub fn encode(&self) -> String {
        <Self as StepRecord>::encode(self)
    }
}

/// Where a provider call left the sync: done with a value, or stopped for this run.
enum Step<T> {
    Done(T),
    Stop(SyncOutcome),
}

/// Returns the value of a finished [`Step`], or the outcome of a stopped one from the
/// enclosing function.
macro_rules! done_or_return {
    ($step:expr) => {
        match $step {
            Step::Done(v) => v,
            Step::Stop(outcome) => return Ok(outcome),
        }
    };
}

/// Inside [`InvoiceSync::resume`]: the value of a finished [`Step`], or the stopped step
/// returned as it is.
macro_rules! done_or_step {
    ($step:expr) => {
        match $step {
            Step::Done(v) => v,
            Step::Stop(outcome) => return Ok(Step::Stop(outcome)),
        }
    };
}

/// Locks the listed-items cache; a panic elsewhere cannot leave it half-written (it is
/// replaced whole), so a poisoned lock is as good as a clean one.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InvoiceSync<'_> {
    /// Syncs one org's report, resuming after whatever the ledger says is done. `org_name`
    /// names the customer when it has to be created.
    ///
    /// Every [`SyncStep`] runs the same way: the ledger's record if there is one, else an
    /// object the provider already has (created by a run whose answer was lost), else a
    /// creation with the step's idempotency key; then the result is recorded.
    pub async fn sync_report(
        &self,
        report: &UsageReport,
        org_name: &str,
    ) -> Result<SyncOutcome, SyncError> {
        let org = &report.org_id;
        let period = report.period;
        let items = planned_items(report)?;

        // 1. The customer: one per org, whatever the period.
        let new_customer = &NewCustomer {
            org: org.clone(),
            name: org_name.to_owned(),
        };
        let customer: ProviderId = done_or_return!(
            self.resume(
                org,
                period,
                SyncStep::Customer,
                || async {
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
                },
                |key| async move { self.provider.create_customer(new_customer, &key).await },
            )
            .await?
        );

        // 2. The draft invoice.
        let new_invoice = &NewInvoice {
            customer: customer.clone(),
            org: org.clone(),
            period,
            currency: report.currency.clone(),
            description: format!("Tally usage for {period}"),
        };
        let invoice: ProviderId = done_or_return!(
            self.resume(
                org,
                period,
                SyncStep::Invoice,
                || self.provider.find_invoice(&customer, org, period),
                |key| async move { self.provider.create_draft_invoice(new_invoice, &key).await },
            )
            .await?
        );

        // 3. One item per report entry. The invoice's items are listed at most once, the
        // first time an item is missing from the ledger, and looked up by their
        // `tally_step` for the items after it. (A mutex rather than a cell so the sync's
        // future stays `Send`; it is never held across an await.)
        let listed: Mutex<Option<HashMap<String, ProviderId>>> = Mutex::new(None);
        for (n, item) in items.iter().enumerate() {
            let step = SyncStep::Item(n);
            let new_item = &NewInvoiceItem {
                customer: customer.clone(),
                invoice: invoice.clone(),
                amount_minor: item.amount_minor,
                currency: report.currency.clone(),
                description: item.description.clone(),
                step: item.step.clone(),
            };
            let _: ProviderId = done_or_return!(
                self.resume(
                    org,
                    period,
                    step,
                    || async {
                        let cached = lock(&listed)
                            .as_ref()
                            .map(|existing| existing.get(&item.step).cloned());
                        if let Some(found) = cached {
                            return Ok(found);
                        }
                        let existing: HashMap<String, ProviderId> = self
                            .provider
                            .list_invoice_items(&invoice)
                            .await?
                            .into_iter()
                            .filter_map(|(id, step)| step.map(|s| (s, id)))
                            .collect();
                        let found = existing.get(&item.step).cloned();
                        *lock(&listed) = Some(existing);
                        Ok(found)
                    },
                    |key| async move { self.provider.add_invoice_item(new_item, &key).await },
                )
                .await?
            );
        }

        let invoice = &invoice;
        // 4. Finalize. Finalizing twice is harmless to the provider (the key replays it),
        // so there is nothing to adopt; the record lets a rerun answer without a call.
        let finalized: FinalizeRecord = done_or_return!(
            self.resume(
                org,
                period,
                SyncStep::Finalize,
                || std::future::ready(Ok(None)),
                |key| async move {
                    let f = self.provider.finalize_invoice(invoice, &key).await?;
                    // Recorded before the finalize step, so a crash between the two leaves
                    // the URL (first write wins) and the rerun finalizes again (the key
                    // replays the same answer) and records the step.
                    if let Some(url) = &f.hosted_url {
                        self.ledger
                            .record_step(&StepKey::new(org, period, HOSTED_URL_STEP), url)
                            .await
                            .map_err(|e| ProviderError::Retryable {
                                reason: format!("recording the hosted invoice URL: {e}"),
                                retry_after: None,
                            })?;
                    }
                    Ok(FinalizeRecord {
                        status: f.status,
                        total_minor: f.total_minor,
                    })
                },
            )
            .await?
        );
        let hosted_url = self
            .ledger
            .get_step(&StepKey::new(org, period, HOSTED_URL_STEP))
            .await?;
        Ok(SyncOutcome::Finalized(FinalizedInvoice {
            id: invoice.clone(),
            status: finalized.status,
            total_minor: finalized.total_minor,
            hosted_url,
        }))
    }

    /// One resumable step: the ledger's record if there is one; otherwise what `find`
    /// adopts from the provider, or else what `create` makes with the step's idempotency
    /// key; the result is recorded (first write wins) and the recorded value returned, so
    /// two runs racing agree on one result.
    async fn resume<T, Find, FindFut, Create, CreateFut>(
        &self,
        org: &OrgId,
        period: Month,
        step: SyncStep,
        find: Find,
        mut create: Create,
    ) -> Result<Step<T>, SyncError>
    where
        T: StepRecord,
        Find: FnMut() -> FindFut,
        FindFut: Future<Output = Result<Option<T>, ProviderError>>,
        Create: FnMut(IdempotencyKey) -> CreateFut,
        CreateFut: Future<Output = Result<T, ProviderError>>,
    {
        let name = step.name();
        let recorded = match step {
            SyncStep::Customer => self.ledger.get_customer(org).await?,
            _ => {
                self.ledger
                    .get_step(&StepKey::new(org, period, &name))
                    .await?
            }
        };
        if let Some(stored) = recorded {
            return self.decode(org, period, &name, &stored).map(Step::Done);
        }
        let value = match done_or_step!(self.call(org, period, &name, find).await?) {
            Some(found) => found,
            None => {
                let key = step.key(org, period);
                done_or_step!(
                    self.call(org, period, &name, || create(key.clone()))
                        .await?
                )
            }
        };
        let encoded = value.encode();
        let stored = match step {
            SyncStep::Customer => self.ledger.record_customer(org, &encoded).await?,
            _ => {
                self.ledger
                    .record_step(&StepKey::new(org, period, &name), &encoded)
                    .await?
            }
        };
        self.decode(org, period, &name, &stored).map(Step::Done)
    }

    /// Reads a recorded step result, or names the step whose record this build cannot read.
    fn decode<T: StepRecord>(
        &self,
        org: &OrgId,
        period: Month,
        step: &str,
        stored: &str,
    ) -> Result<T, SyncError> {
        T::decode(stored).ok_or_else(|| SyncError::BadReport {
            org: org.clone(),
            period,
            field: format!("ledger step {step}"),
            reason: format!("unreadable value {stored:?}"),
        })
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
        Fut: Future<Output = Result<T, ProviderError>>,
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
                        .record_step(
                            &StepKey::new(org, period, &format!("error:{step}")),
                            &recorded,
                        )
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
                        let backoff = self.policy.ceiling(attempt + 1);
                        let wait = self.policy.wait(retry_after, backoff);
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

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed test.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap;
    use std::time::Duration;

    use async_trait::async_trait;
    use tally_core::PlanId;
    use tally_store::MemoryStore;

    use super::*;
    use crate::catalogue::Catalogue;
    use crate::report::MonthUsage;

    /// A provider that answers every write with fixed ids and counts the calls, or refuses
    /// every call when `refuse` is set (so a test proves the ledger alone answered).
    #[derive(Default)]
    struct Provider {
        refuse: bool,
        calls: Mutex<Vec<String>>,
    }

    impl Provider {
        /// A provider that refuses every call.
        fn refusing() -> Self {
            Provider {
                refuse: true,
                ..Provider::default()
            }
        }

        fn note(&self, call: &str, key: Option<&IdempotencyKey>) -> Result<(), ProviderError> {
            lock(&self.calls).push(format!("{call} {key:?}"));
            if self.refuse {
                return Err(ProviderError::Fatal {
                    status: 400,
                    message: format!("unexpected call {call}"),
                });
            }
            Ok(())
        }
    }

    #[async_trait]
    impl InvoiceProvider for Provider {
        async fn create_customer(
            &self,
            _: &NewCustomer,
            key: &IdempotencyKey,
        ) -> Result<ProviderId, ProviderError> {
            self.note("create_customer", Some(key))?;
            Ok(ProviderId::new("cus_1").unwrap())
        }
        async fn find_customer(&self, _: &OrgId) -> Result<Option<ProviderId>, ProviderError> {
            self.note("find_customer", None)?;
            Ok(None)
        }
        async fn create_draft_invoice(
            &self,
            _: &NewInvoice,
            key: &IdempotencyKey,
        ) -> Result<ProviderId, ProviderError> {
            self.note("create_draft_invoice", Some(key))?;
            Ok(ProviderId::new("in_1").unwrap())
        }
        async fn add_invoice_item(
            &self,
            item: &NewInvoiceItem,
            key: &IdempotencyKey,
        ) -> Result<ProviderId, ProviderError> {
            self.note("add_invoice_item", Some(key))?;
            Ok(ProviderId::new(&format!("ii_{}", item.step)).unwrap())
        }
        async fn finalize_invoice(
            &self,
            invoice: &ProviderId,
            key: &IdempotencyKey,
        ) -> Result<FinalizedInvoice, ProviderError> {
            self.note("finalize_invoice", Some(key))?;
            Ok(open_invoice(
                invoice.clone(),
                Some("https://pay.example/in_1"),
            ))
        }
        async fn find_invoice(
            &self,
            _: &ProviderId,
            _: &OrgId,
            _: Month,
        ) -> Result<Option<ProviderId>, ProviderError> {
            self.note("find_invoice", None)?;
            Ok(None)
        }
        async fn list_invoice_items(
            &self,
            _: &ProviderId,
        ) -> Result<Vec<(ProviderId, Option<String>)>, ProviderError> {
            self.note("list_invoice_items", None)?;
            Ok(Vec::new())
        }
    }

    struct NoSleep;

    #[async_trait]
    impl Sleeper for NoSleep {
        async fn sleep(&self, _: Duration) {}
    }

    fn report() -> UsageReport {
        let usage = MonthUsage {
            meters: BTreeMap::from([(
                tally_core::MeterName::parse("api_calls").unwrap(),
                rust_decimal::Decimal::from(250_000),
            )]),
            projects: BTreeMap::new(),
        };
        Catalogue::builtin()
            .unwrap()
            .price_month(
                OrgId::parse("org_acme").unwrap(),
                Month::parse("2026-10").unwrap(),
                PlanId::Starter,
                &usage,
            )
            .unwrap()
    }

    /// The open invoice of 96.50 the fake provider finalizes (and earlier releases recorded).
    fn open_invoice(id: ProviderId, hosted_url: Option<&str>) -> FinalizedInvoice {
        FinalizedInvoice {
            id,
            status: "open".to_owned(),
            total_minor: 9650,
            hosted_url: hosted_url.map(str::to_owned),
        }
    }

    /// What `ledger` recorded for `step` of the org's month.
    async fn recorded(
        ledger: &MemoryStore,
        org: &OrgId,
        period: Month,
        step: &str,
    ) -> Option<String> {
        ledger
            .get_step(&StepKey::new(org, period, step))
            .await
            .unwrap()
    }

    async fn run(provider: &Provider, ledger: &MemoryStore) -> SyncOutcome {
        InvoiceSync {
            provider,
            ledger,
            sleeper: &NoSleep,
            policy: RetryPolicy::default(),
        }
        .sync_report(&report(), "Acme")
        .await
        .unwrap()
    }

    #[test]
    fn step_names_and_keys_are_those_earlier_releases_used() {
        let org = OrgId::parse("org_acme").unwrap();
        let period = Month::parse("2026-10").unwrap();
        for (step, name) in [
            (SyncStep::Customer, "customer"),
            (SyncStep::Invoice, "invoice"),
            (SyncStep::Item(0), "item:0"),
            (SyncStep::Item(12), "item:12"),
            (SyncStep::Finalize, "finalize"),
        ] {
            assert_eq!(step.name(), name);
            assert_eq!(step.key(&org, period), idempotency_key(&org, period, name));
        }
        // Pinned: the key a half-synced month's earlier run sent for this step.
        assert_eq!(
            SyncStep::Finalize.key(&org, period).as_str(),
            PINNED_FINALIZE_KEY
        );
    }

    /// `idempotency_key(org_acme, 2026-10, "finalize")` as the release before the typed
    /// steps computed it.
    const PINNED_FINALIZE_KEY: &str =
        "tally-8ce6b6e1cb44893f28016c1f56441c48871c4b5909a6b9277959f5018108cc25";

    #[test]
    fn a_finalize_record_reads_in_both_forms_and_writes_json() {
        let old = FinalizeRecord::decode("open 9650").unwrap();
        assert_eq!(
            old,
            FinalizeRecord {
                status: "open".to_owned(),
                total_minor: 9650
            }
        );
        assert_eq!(old.encode(), r#"{"status":"open","total_minor":9650}"#);
        assert_eq!(FinalizeRecord::decode(&old.encode()), Some(old));
        assert_eq!(FinalizeRecord::decode("paid 0").unwrap().status, "paid");
        for bad in ["", "open", "open x", "{\"status\":\"open\"}", "{"] {
            assert_eq!(FinalizeRecord::decode(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_ledger_with_an_old_finalize_record_answers_without_the_provider() {
        let report = report();
        let ledger = MemoryStore::new();
        let org = &report.org_id;
        let period = report.period;
        ledger.record_customer(org, "cus_old").await.unwrap();
        ledger
            .record_step(&StepKey::new(org, period, "invoice"), "in_old")
            .await
            .unwrap();
        for item in planned_items(&report).unwrap() {
            ledger
                .record_step(&StepKey::new(org, period, &item.step), "ii_old")
                .await
                .unwrap();
        }
        // The form releases before the typed finalize record wrote.
        ledger
            .record_step(&StepKey::new(org, period, "finalize"), "open 9650")
            .await
            .unwrap();

        let provider = Provider::refusing();
        let out = run(&provider, &ledger).await;
        assert_eq!(
            out,
            // The old release recorded no URL, and nothing was asked of the provider.
            SyncOutcome::Finalized(open_invoice(ProviderId::new("in_old").unwrap(), None))
        );
        assert!(
            lock(&provider.calls).is_empty(),
            "{:?}",
            lock(&provider.calls)
        );
        // Read, never rewritten: first write wins, and nothing tried to write.
        assert_eq!(
            recorded(&ledger, org, period, "finalize").await.as_deref(),
            Some("open 9650")
        );
    }

    #[tokio::test]
    async fn a_fresh_sync_records_every_step_with_its_key_and_a_rerun_calls_nothing() {
        let report = report();
        let (org, period) = (&report.org_id, report.period);
        let ledger = MemoryStore::new();
        let provider = Provider::default();
        let out = run(&provider, &ledger).await;
        assert_eq!(
            out,
            SyncOutcome::Finalized(open_invoice(
                ProviderId::new("in_1").unwrap(),
                Some("https://pay.example/in_1")
            ))
        );
        let items = planned_items(&report).unwrap();
        let mut want = vec![
            "find_customer None".to_owned(),
            format!(
                "create_customer {:?}",
                Some(idempotency_key(org, period, "customer"))
            ),
            "find_invoice None".to_owned(),
            format!(
                "create_draft_invoice {:?}",
                Some(idempotency_key(org, period, "invoice"))
            ),
            "list_invoice_items None".to_owned(),
        ];
        for item in &items {
            want.push(format!(
                "add_invoice_item {:?}",
                Some(idempotency_key(org, period, &item.step))
            ));
        }
        want.push(format!(
            "finalize_invoice {:?}",
            Some(idempotency_key(org, period, "finalize"))
        ));
        assert_eq!(
            *lock(&provider.calls),
            want,
            "the invoice's items are listed once"
        );
        assert_eq!(
            recorded(&ledger, org, period, "finalize").await.as_deref(),
            Some(r#"{"status":"open","total_minor":9650}"#)
        );
        // The hosted page is recorded for the invoice list, and a rerun still reports it.
        assert_eq!(
            recorded(&ledger, org, period, HOSTED_URL_STEP)
                .await
                .as_deref(),
            Some("https://pay.example/in_1")
        );

        let again = Provider::refusing();
        assert_eq!(run(&again, &ledger).await, out);
        assert!(lock(&again.calls).is_empty());
    }
}
