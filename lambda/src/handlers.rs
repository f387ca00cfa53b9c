//! What one invocation of each function does, as plain async functions over the ports, so
//! tests call them without a Lambda runtime; the `main`s in `src/bin/` only wire them up.

use std::time::Duration;

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tally_billing::schedule::{MAX_CATCH_UP_MONTHS, earliest_org_month, months_to_bill};
use tally_billing::{
    Catalogue, CloseOutcome, CloseRequest, NoProgress, PeriodSyncOptions, PeriodSyncPorts, Sleeper,
    close_month, sync_period,
};
use tally_core::period::Month;
use tally_core::ports::{InvoiceProvider, StoreError, SyncLedger};

use crate::consumers::{Consumer, handle_kinesis, handle_sqs};
use crate::env::Transport;

pub mod http;

/// Why the aggregator refused a whole invocation; Lambda retries the batch.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// The event has no `Records` array: not an event-source batch at all.
    #[error("the event has no Records array; expected an {expected} event")]
    NoRecords {
        /// The event source configured by `TALLY_TRANSPORT`.
        expected: &'static str,
    },
    /// A record comes from another source than `TALLY_TRANSPORT` names.
    #[error(
        "Records[{index}].eventSource is {found:?}, expected {expected:?} (TALLY_TRANSPORT and the event source disagree)"
    )]
    WrongSource {
        /// The record's position.
        index: usize,
        /// Its `eventSource`.
        found: String,
        /// The configured source.
        expected: &'static str,
    },
    /// The event does not parse as the configured source's event type.
    #[error("the event is not a well-formed {expected} event: {source}")]
    Malformed {
        /// The configured source.
        expected: &'static str,
        /// What did not parse.
        source: serde_json::Error,
    },
    /// The response could not be encoded (not expected to happen).
    #[error("encoding the batch response: {0}")]
    Encode(serde_json::Error),
}

/// Why the billing run failed; the invocation fails, alarms and is retried.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The grace period does not fit a date computation.
    #[error("grace period of {0:?} is out of range")]
    Grace(Duration),
    /// The orgs or the closed periods could not be read to plan the run; nothing was
    /// billed.
    #[error("planning the billing run: {0}")]
    Plan(#[source] StoreError),
    /// The invocation ran out of time with months still to bill: those before `next` are
    /// billed, `next` and any later ones are still open. The retry (or the next run)
    /// continues from `next`.
    #[error(
        "billed {billed} period(s) but ran out of time; {next} and later periods are still open (the retry continues)"
    )]
    OutOfTime {
        /// How many months this invocation billed.
        billed: usize,
        /// The first month not started.
        next: Month,
    },
    /// Every month in reach is billed, but an older one, beyond the
    /// [`MAX_CATCH_UP_MONTHS`] the run looks back, is still open: the scheduler never
    /// closes it, so the invocation fails (and alarms) until an operator bills it with
    /// `tally bill --period`.
    #[error(
        "period {period} is still open and more than {MAX_CATCH_UP_MONTHS} months back, beyond what the billing run closes; bill it (and any older open period) with `tally bill --period {period}`"
    )]
    OpenBeyondCap {
        /// The open month just beyond the cap.
        period: Month,
    },
    /// Month close failed (the store, or some orgs; see the message).
    #[error("billing {period}: {source}")]
    Close {
        /// The month being billed.
        period: tally_core::period::Month,
        /// Why.
        source: tally_billing::CloseError,
    },
    /// The period is closed and its reports stored, but some orgs' Stripe invoices are not
    /// finalized: pending ones (retryable errors ran out) resume when EventBridge retries
    /// the invocation or on the next run; failed ones (Stripe refused) need a fix first.
    #[error(
        "billing {period}: Stripe sync incomplete: {pending} org(s) pending, {failed} refused: {details}"
    )]
    StripeIncomplete {
        /// The month being billed.
        period: tally_core::period::Month,
        /// Orgs left pending.
        pending: usize,
        /// Orgs Stripe refused.
        failed: usize,
        /// Each such org with its step and reason.
        details: String,
    },
}

/// Applies one event-source batch: an SQS event or a Kinesis event, as `transport` says,
/// and returns the partial-batch response (`batchItemFailures`) for Lambda.
///
/// An event of the other shape is an error (the function is wired to the wrong source),
/// and Lambda retries the whole batch; nothing is acknowledged by mistake.
///
/// With a deadline in `consumer` (the invocation's), records are applied in groups and the groups there
/// is no time left to start are reported as failures ([`crate::consumers`]), so a batch too
/// big for one invocation makes progress instead of timing out whole.
pub async fn aggregate(
    transport: Transport,
    consumer: &Consumer<'_>,
    event: Value,
) -> Result<Value, AggregateError> {
    check_source(transport, &event)?;
    match transport {
        Transport::Sqs => {
            let event: SqsEvent = decode(event, "aws:sqs")?;
            let r = handle_sqs(consumer, &event).await;
            respond("sqs", event.records.len(), r.batch_item_failures.len(), &r)
        }
        Transport::Kinesis => {
            let event: KinesisEvent = decode(event, "aws:kinesis")?;
            let r = handle_kinesis(consumer, &event).await;
            respond(
                "kinesis",
                event.records.len(),
                r.batch_item_failures.len(),
                &r,
            )
        }
    }
}

/// The event as its source's type, or `Malformed` naming the source `expected`.
fn decode<T: DeserializeOwned>(event: Value, expected: &'static str) -> Result<T, AggregateError> {
    serde_json::from_value(event).map_err(|source| AggregateError::Malformed { expected, source })
}

/// Counts a batch of `records` from `transport` and the `failed` ones of its `response`,
/// and encodes the response for Lambda.
fn respond(
    transport: &'static str,
    records: usize,
    failed: usize,
    response: &impl Serialize,
) -> Result<Value, AggregateError> {
    metrics::counter!("tally_lambda_records_total", "transport" => transport)
        .increment(records as u64);
    metrics::counter!("tally_lambda_records_failed_total", "transport" => transport)
        .increment(failed as u64);
    serde_json::to_value(response).map_err(AggregateError::Encode)
}

/// Refuses an event whose records come from another source than `transport`: the event
/// types' fields are all optional, so a Kinesis event would otherwise read as an SQS event
/// of empty messages and be dead-lettered.
fn check_source(transport: Transport, event: &Value) -> Result<(), AggregateError> {
    let want = match transport {
        Transport::Sqs => "aws:sqs",
        Transport::Kinesis => "aws:kinesis",
    };
    let Some(records) = event.get("Records").and_then(Value::as_array) else {
        return Err(AggregateError::NoRecords { expected: want });
    };
    for (index, r) in records.iter().enumerate() {
        let found = r
            .get("eventSource")
            .and_then(Value::as_str)
            .unwrap_or("(none)");
        if found != want {
            return Err(AggregateError::WrongSource {
                index,
                found: found.to_owned(),
                expected: want,
            });
        }
    }
    Ok(())
}

/// What the billing function answers (and logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BillingRun {
    /// The newest month billed (`YYYY-MM`); `None` when nothing was due (the previous month
    /// is still inside its grace period, or there is no org).
    pub period: Option<String>,
    /// Orgs with a stored report for it.
    pub orgs: usize,
    /// How many of those reports this run stored (the rest were stored by an earlier run).
    pub stored_now: usize,
    /// Every month this run billed, oldest first: more than `period` alone when earlier
    /// months were left open (a missed run) or the closed month before an open one was
    /// checked again.
    pub months: Vec<MonthRun>,
}

/// One month of a [`BillingRun`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonthRun {
    /// The month (`YYYY-MM`).
    pub period: String,
    /// Orgs with a stored report for it.
    pub orgs: usize,
    /// How many of those reports this run stored.
    pub stored_now: usize,
}

/// Time an invocation keeps in hand to bill one more month: after the first month, the
/// next is started only while at least this much is left before the deadline (the function
/// has 300 s). Running out is safe (month close and the Stripe sync resume where they
/// stopped) but fails the invocation.
pub const MONTH_TIME_RESERVE: chrono::Duration = chrono::Duration::seconds(120);

/// The ports the billing run needs: exactly those of the [`close_month`] it runs (the
/// Stripe sync reuses their orgs), so the billing crate's struct serves under the name
/// callers of this crate have always used (a `&dyn TenantStore` coerces to its
/// `&dyn OrgStore`).
pub use tally_billing::ClosePorts as BillingPorts;

/// The Stripe adapter on `base_url` with the `secret_key` of the Stripe secret as it is now,
/// rebuilt only when the key changes (a rotated key is used by the first billing run after
/// the refresh interval).
pub fn stripe_provider(
    secret: crate::secrets::Secret,
    base_url: String,
) -> crate::secrets::Derived<tally_stripe::StripeProvider> {
    crate::secrets::Derived::new(secret, move |secret_key| {
        tally_stripe::StripeProvider::new(tally_stripe::StripeConfig {
            secret_key: secret_key.to_owned(),
            base_url: base_url.clone(),
            timeout: tally_stripe::DEFAULT_TIMEOUT,
        })
        .map_err(|e| e.to_string())
    })
}

/// Stripe, for the billing run's invoice sync.
#[derive(Clone, Copy)]
pub struct StripePorts<'a> {
    /// The Stripe adapter.
    pub provider: &'a dyn InvoiceProvider,
    /// The sync ledger (the same table).
    pub ledger: &'a dyn SyncLedger,
    /// Waits between retries.
    pub sleeper: &'a dyn Sleeper,
}

/// [`bill_and_sync`] without Stripe and without a deadline.
pub async fn bill(
    ports: BillingPorts<'_>,
    catalogue: &Catalogue,
    grace: Duration,
) -> Result<BillingRun, BillingError> {
    bill_and_sync(ports, catalogue, grace, None, None).await
}

/// The scheduled billing run: bills every ended month still open once `grace` has passed
/// since it ended, oldest first, in the order
/// [`tally_billing::schedule::months_to_bill`] gives (from the month the earliest org was
/// created, at most [`MAX_CATCH_UP_MONTHS`] back), so a month a failed or missed run left
/// open is billed by the next one. Each month runs the same [`close_month`] as `tally bill`
/// and `tally serve`'s scheduler (close the period so ingest refuses it, then build and
/// store the report of every org that existed in it) and, with `stripe`, syncs the
/// month's reports to Stripe with [`sync_period`], as `tally bill` does; only then is the
/// next month started. A rerun finds the reports stored and changes nothing.
///
/// Any failure, one org's included, stops the run there and fails the invocation, so the
/// billing-failures alarm sees it and EventBridge retries (months and orgs already billed
/// stay billed; no later month is closed before the failed one is fully billed). An org
/// left pending or refused by Stripe is such a failure
/// ([`BillingError::StripeIncomplete`]); the retry resumes from the sync ledger.
///
/// With a `deadline` (the invocation's), a month after the first is started only while
/// [`MONTH_TIME_RESERVE`] is left; otherwise the invocation fails with
/// [`BillingError::OutOfTime`] and the retry continues. An open month beyond the cap fails
/// the invocation after the rest is billed ([`BillingError::OpenBeyondCap`]).
pub async fn bill_and_sync(
    ports: BillingPorts<'_>,
    catalogue: &Catalogue,
    grace: Duration,
    stripe: Option<StripePorts<'_>>,
    deadline: Option<DateTime<Utc>>,
) -> Result<BillingRun, BillingError> {
    let grace_std = grace;
    let grace = chrono::Duration::from_std(grace).map_err(|_| BillingError::Grace(grace_std))?;
    let earliest = earliest_org_month(ports.tenants)
        .await
        .map_err(BillingError::Plan)?;
    let plan = months_to_bill(ports.usage, ports.clock.now(), grace, earliest)
        .await
        .map_err(BillingError::Plan)?;
    if plan.months.is_empty() {
        tracing::info!(
            "no period is due (the previous month is in its grace period, or there is no org); nothing to bill"
        );
    }
    let mut run = BillingRun {
        period: None,
        orgs: 0,
        stored_now: 0,
        months: Vec::with_capacity(plan.months.len()),
    };
    for period in plan.months {
        if let Some(deadline) = deadline
            && !run.months.is_empty()
            && ports.clock.now() + MONTH_TIME_RESERVE > deadline
        {
            tracing::warn!(next = %period, billed = run.months.len(), "out of time; the retry continues");
            return Err(BillingError::OutOfTime {
                billed: run.months.len(),
                next: period,
            });
        }
        let out = bill_month(ports, catalogue, grace, stripe, period).await?;
        run.period = Some(period.to_string());
        run.orgs = out.reports.len();
        run.stored_now = out.stored_now;
        run.months.push(MonthRun {
            period: period.to_string(),
            orgs: out.reports.len(),
            stored_now: out.stored_now,
        });
    }
    if let Some(period) = plan.left_open_beyond_cap {
        tracing::error!(period = %period, "a period beyond the billing run's reach is still open; bill it with `tally bill --period {period}`");
        return Err(BillingError::OpenBeyondCap { period });
    }
    Ok(run)
}

/// Bills one month: close, reports, and the Stripe sync when configured.
async fn bill_month(
    ports: BillingPorts<'_>,
    catalogue: &Catalogue,
    grace: chrono::Duration,
    stripe: Option<StripePorts<'_>>,
    period: Month,
) -> Result<CloseOutcome, BillingError> {
    let request = CloseRequest {
        grace,
        ..CloseRequest::new(period)
    };
    let out = close_month(ports, catalogue, &request, &NoProgress)
        .await
        .map_err(|source| BillingError::Close { period, source })?;
    tracing::info!(period = %period, orgs = out.reports.len(), stored_now = out.stored_now, not_in_period = out.not_in_period, "billed period");
    metrics::counter!("tally_billing_reports_stored_total").increment(out.stored_now as u64);
    if let Some(stripe) = stripe {
        let sync_ports = PeriodSyncPorts {
            provider: stripe.provider,
            ledger: stripe.ledger,
            sleeper: stripe.sleeper,
            tenants: ports.tenants,
        };
        let run = sync_period(
            sync_ports,
            &out.reports,
            PeriodSyncOptions::default(),
            &NoProgress,
        )
        .await;
        let (pending, failed) = (run.pending().count(), run.failed().count());
        metrics::counter!("tally_billing_invoices_incomplete_total")
            .increment((pending + failed) as u64);
        if pending + failed > 0 {
            let details = run
                .orgs
                .iter()
                .filter_map(|o| match &o.outcome {
                    tally_billing::SyncOutcome::Finalized(_) => None,
                    tally_billing::SyncOutcome::Pending { step, reason } => {
                        Some(format!("{} pending at {step} ({reason})", o.org_id))
                    }
                    tally_billing::SyncOutcome::Failed { step, message } => {
                        Some(format!("{} refused at {step}: {message}", o.org_id))
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(BillingError::StripeIncomplete {
                period,
                pending,
                failed,
                details,
            });
        }
        tracing::info!(period = %period, orgs = run.orgs.len(), "synced invoices to Stripe");
    }
    Ok(out)
}
