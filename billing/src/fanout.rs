//! Billing as per-org work items: month close and the Stripe sync of one (org, period) at a
//! time, so a month of thousands of orgs is billed by many short invocations instead of
//! one that must fit them all.
//!
//! One run walking every org does not scale on Lambda (300 s, a few orgs a second once
//! Stripe is in the loop). Here the work is split in three, each small and idempotent:
//!
//! - [`enqueue_due`] (the monthly schedule): plans the months due exactly as the in-process
//!   schedulers do ([`crate::schedule::months_to_bill`]), closes each (so ingest refuses its
//!   events before any report is built) and enqueues one [`BillItem`] per org that existed
//!   in it. It bills nothing itself, so it finishes in seconds whatever the org count.
//! - [`bill_item`] (the queue's consumer, any number at once): bills one item with the same
//!   per-org steps `tally bill` runs for every org: [`close_month`] for that one org (whose
//!   loop calls [`crate::close::bill_org`]) and then
//!   [`crate::period_sync::sync_org_report`]. Both resume from what is stored (the report's
//!   first write wins; every Stripe step goes through the sync ledger with an idempotency
//!   key), so an item delivered twice, or retried after its consumer died half-way, ends
//!   with one report and one invoice.
//! - [`catch_up`] (a daily schedule): re-enqueues every org of a recently closed month whose
//!   report or finalized invoice is missing (an item dead-lettered, a queue purged, a
//!   Stripe refusal since fixed), and counts those still missing a day after the month
//!   could be billed, for the unbilled-orgs alarm ([`UNBILLED_GAUGE`]).
//!
//! The queue itself is a port ([`BillQueue`]); the Lambda crate implements it on SQS. All
//! I/O goes through ports, and time comes from the [`ClosePorts`] clock.

use async_trait::async_trait;
use chrono::Duration;
use serde::{Deserialize, Serialize};
use tally_core::ports::{InvoiceProvider, StepKey, StoreError, SyncLedger};
use tally_core::{Month, OrgId};

use crate::catalogue::Catalogue;
use crate::close::{
    CloseError, ClosePorts, CloseRequest, NoProgress, check_billable, close_month, existed_in,
    previous_month_if_due,
};
use crate::period_sync::{PeriodSyncPorts, sync_org_report};
use crate::schedule::{earliest_org_month, months_to_bill};
use crate::sync::{RetryPolicy, Sleeper, SyncOutcome, SyncStep};

/// Longest encoded [`BillItem`] accepted, in bytes: an org id and a month need well under
/// a hundred; anything longer is not an item.
pub const MAX_ITEM_BYTES: usize = 512;

/// How many closed months, counting back from the newest due one, [`catch_up`] checks.
/// Older gaps are `tally bill --period`'s job (and the alarm has long fired for them).
pub const CATCH_UP_MONTHS: u32 = 3;

/// How long after a month could be billed (its end plus the grace period) an org without
/// its report or finalized invoice counts as unbilled, for [`UNBILLED_GAUGE`].
pub const UNBILLED_AFTER: Duration = Duration::days(1);

/// The gauge [`catch_up`] sets: orgs of a closed month still without a report or a
/// finalized invoice [`UNBILLED_AFTER`] the month could be billed. The template's
/// `UnbilledOrgsAlarm` fires on it being above zero.
pub const UNBILLED_GAUGE: &str = "tally_billing_orgs_unbilled";

/// One unit of billing work: close and invoice `org` for `period`. The queue message body
/// is its JSON, `{"org":"org_…","period":"YYYY-MM"}`, which an operator may also send by
/// hand to rebill one org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillItem {
    /// The org to bill.
    pub org: OrgId,
    /// The month to bill it for.
    pub period: Month,
}

impl BillItem {
    /// The item as a queue message body.
    pub fn encode(&self) -> String {
        // Two string fields: serializing cannot fail; the fallback keeps that panic-free.
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                "{{\"org\":\"{}\",\"period\":\"{}\"}}",
                self.org, self.period
            )
        })
    }

    /// Parses a queue message body; [`ItemError::Malformed`] names what is wrong.
    pub fn decode(body: &str) -> Result<BillItem, ItemError> {
        if body.len() > MAX_ITEM_BYTES {
            return Err(ItemError::Malformed {
                reason: format!("body is {} bytes; at most {MAX_ITEM_BYTES}", body.len()),
            });
        }
        serde_json::from_str(body).map_err(|e| ItemError::Malformed {
            reason: format!("expected {{\"org\": \"org_…\", \"period\": \"YYYY-MM\"}}: {e}"),
        })
    }
}

/// Why items could not be enqueued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue refused or did not answer; the caller's invocation fails and is retried
    /// (enqueueing the same items twice is harmless: each is idempotent).
    #[error("enqueueing billing items: {0}")]
    Unavailable(String),
}

/// Where billing items go (an SQS queue on AWS).
#[async_trait]
pub trait BillQueue: Send + Sync {
    /// Enqueues every item (the adapter batches them as its queue allows); an error means
    /// some may not be enqueued.
    async fn enqueue(&self, items: &[BillItem]) -> Result<(), QueueError>;
}

/// Stripe, for the items' invoice sync.
#[derive(Clone, Copy)]
pub struct StripeItemPorts<'a> {
    /// The Stripe adapter.
    pub provider: &'a dyn InvoiceProvider,
    /// The sync ledger.
    pub ledger: &'a dyn SyncLedger,
    /// Waits between retries.
    pub sleeper: &'a dyn Sleeper,
}

/// What billing one item did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// The org's report is stored (by this call when `stored_now`) and, with Stripe, its
    /// invoice finalized (`invoiced`).
    Billed {
        /// Whether this call stored the report.
        stored_now: bool,
        /// Whether the invoice was synced (false without Stripe).
        invoiced: bool,
    },
    /// The org does not exist or did not exist in the month: nothing to bill, the item is
    /// done.
    NotInPeriod,
}

/// Why an item was not billed. The consumer reports it as a failed item, so the queue
/// delivers it again (and, after its receive limit, dead-letters it).
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    /// The message body is not an item; it is dead-lettered after its receives.
    #[error("malformed billing item: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// Month close refused or failed for the org (not ended yet, a store error, a pricing
    /// error; see the message).
    #[error("closing {org} for {period}: {source}")]
    Close {
        /// The org.
        org: OrgId,
        /// The month.
        period: Month,
        /// Why.
        source: CloseError,
    },
    /// A Stripe step kept failing with retryable errors; the redelivery resumes it.
    #[error("invoicing {org} for {period}: pending at {step} ({reason})")]
    StripePending {
        /// The org.
        org: OrgId,
        /// The month.
        period: Month,
        /// The step.
        step: String,
        /// The last error.
        reason: String,
    },
    /// Stripe refused a step; someone must fix the cause, then the catch-up run (or a
    /// hand-sent item) bills it.
    #[error("invoicing {org} for {period}: Stripe refused {step}: {message}")]
    StripeRefused {
        /// The org.
        org: OrgId,
        /// The month.
        period: Month,
        /// The step.
        step: String,
        /// Stripe's message.
        message: String,
    },
}

/// Bills one item (see the [module doc](self)): month close for that org (closing the
/// period if it is still open, as `tally bill --org` does), then, with `stripe`, its invoice.
/// Running it again returns the same report and creates nothing new at Stripe.
pub async fn bill_item(
    ports: ClosePorts<'_>,
    stripe: Option<StripeItemPorts<'_>>,
    catalogue: &Catalogue,
    grace: Duration,
    item: &BillItem,
) -> Result<ItemOutcome, ItemError> {
    let request = CloseRequest {
        org: Some(item.org.clone()),
        grace,
        ..CloseRequest::new(item.period)
    };
    let close_err = |source| ItemError::Close {
        org: item.org.clone(),
        period: item.period,
        source,
    };
    let out = match close_month(ports, catalogue, &request, &NoProgress).await {
        Ok(out) => out,
        Err(CloseError::UnknownOrg(_) | CloseError::OrgNotInPeriod { .. }) => {
            return Ok(ItemOutcome::NotInPeriod);
        }
        Err(e) => return Err(close_err(e)),
    };
    let stored_now = out.stored_now > 0;
    let Some(report) = out.reports.first() else {
        return Ok(ItemOutcome::NotInPeriod);
    };
    let Some(stripe) = stripe else {
        return Ok(ItemOutcome::Billed {
            stored_now,
            invoiced: false,
        });
    };
    let sync_ports = PeriodSyncPorts {
        provider: stripe.provider,
        ledger: stripe.ledger,
        sleeper: stripe.sleeper,
        tenants: ports.tenants,
    };
    match sync_org_report(sync_ports, report, RetryPolicy::default()).await {
        SyncOutcome::Finalized(_) => Ok(ItemOutcome::Billed {
            stored_now,
            invoiced: true,
        }),
        SyncOutcome::Pending { step, reason } => Err(ItemError::StripePending {
            org: item.org.clone(),
            period: item.period,
            step,
            reason,
        }),
        SyncOutcome::Failed { step, message } => Err(ItemError::StripeRefused {
            org: item.org.clone(),
            period: item.period,
            step,
            message,
        }),
    }
}

/// Why a scheduled fan-out run failed; the invocation fails and is retried (what it
/// enqueued before stays enqueued, and enqueueing again is harmless).
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// The store failed while planning or reading orgs.
    #[error("{what}: {source}")]
    Store {
        /// What was being done.
        what: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The month may not be billed yet (not ended, inside its grace period) or the grace
    /// period is out of range.
    #[error(transparent)]
    Close(#[from] CloseError),
    /// The queue refused the items.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

fn store_err(what: impl Into<String>) -> impl FnOnce(StoreError) -> FanoutError {
    let what = what.into();
    move |source| FanoutError::Store { what, source }
}

/// What [`enqueue_due`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct EnqueueRun {
    /// Each month closed and fanned out, oldest first, with how many items it got.
    pub months: Vec<(Month, usize)>,
    /// An open month beyond the scheduler's reach ([`crate::schedule::MonthPlan`]): never
    /// enqueued; an operator bills it with `tally bill --period`.
    pub left_open_beyond_cap: Option<Month>,
}

/// The monthly schedule's step: every month due, oldest first, is closed and gets one item
/// per org that existed in it (see the [module doc](self)).
pub async fn enqueue_due(
    ports: ClosePorts<'_>,
    queue: &dyn BillQueue,
    grace: Duration,
) -> Result<EnqueueRun, FanoutError> {
    let earliest = earliest_org_month(ports.tenants)
        .await
        .map_err(store_err("reading the orgs to plan the billing run"))?;
    let plan = months_to_bill(ports.usage, ports.clock.now(), grace, earliest)
        .await
        .map_err(store_err(
            "reading the closed periods to plan the billing run",
        ))?;
    let mut run = EnqueueRun {
        months: Vec::with_capacity(plan.months.len()),
        left_open_beyond_cap: plan.left_open_beyond_cap,
    };
    for period in plan.months {
        let n = enqueue_month(ports, queue, period, grace).await?;
        run.months.push((period, n));
    }
    Ok(run)
}

/// Closes `period` (refused while it may not be billed) and enqueues one item per org
/// that existed in it; returns how many.
pub async fn enqueue_month(
    ports: ClosePorts<'_>,
    queue: &dyn BillQueue,
    period: Month,
    grace: Duration,
) -> Result<usize, FanoutError> {
    let now = ports.clock.now();
    check_billable(period, now, grace)?;
    // Closed before any item exists, so no report is built while ingest still takes the
    // month's events.
    ports
        .usage
        .close_period(period, now)
        .await
        .map_err(store_err(format!("closing period {period}")))?;
    let items = orgs_in(ports, period)
        .await?
        .into_iter()
        .map(|org| BillItem { org, period })
        .collect::<Vec<_>>();
    queue.enqueue(&items).await?;
    tracing::info!(period = %period, items = items.len(), "enqueued billing items");
    metrics::counter!("tally_billing_items_enqueued_total").increment(items.len() as u64);
    Ok(items.len())
}

/// The ids of the orgs that existed in `period`, sorted.
async fn orgs_in(ports: ClosePorts<'_>, period: Month) -> Result<Vec<OrgId>, FanoutError> {
    let mut ids = ports
        .tenants
        .list_org_ids()
        .await
        .map_err(store_err("listing organizations"))?;
    ids.sort();
    ids.dedup();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let org = ports
            .tenants
            .get_org(&id)
            .await
            .map_err(store_err(format!("reading organization {id}")))?;
        if org.is_some_and(|org| existed_in(&org, period)) {
            out.push(id);
        }
    }
    Ok(out)
}

/// What [`catch_up`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct CatchUp {
    /// The closed months checked, oldest first.
    pub months: Vec<Month>,
    /// Items re-enqueued: orgs missing a report, or (with a ledger) a finalized invoice.
    pub enqueued: usize,
    /// Of those, the ones missing for longer than [`UNBILLED_AFTER`] since their month
    /// could be billed (the [`UNBILLED_GAUGE`] value).
    pub unbilled: usize,
}

/// The daily catch-up (see the [module doc](self)): for each closed month among the
/// [`CATCH_UP_MONTHS`] newest due, every org that existed in it without a stored report
/// or, when `ledger` is given (Stripe is on), without a finalized invoice is enqueued
/// again. Sets [`UNBILLED_GAUGE`]. Reads each such org's report and finalize step once.
pub async fn catch_up(
    ports: ClosePorts<'_>,
    ledger: Option<&dyn SyncLedger>,
    queue: &dyn BillQueue,
    grace: Duration,
) -> Result<CatchUp, FanoutError> {
    let now = ports.clock.now();
    let mut out = CatchUp::default();
    let Some(newest) = previous_month_if_due(now, grace) else {
        metrics::gauge!(UNBILLED_GAUGE).set(0_u32);
        return Ok(out);
    };
    let mut months = vec![newest];
    for _ in 1..CATCH_UP_MONTHS {
        let older = months[months.len() - 1].prev();
        months.push(older);
    }
    months.reverse();
    let finalize = SyncStep::Finalize.name();
    let mut items = Vec::new();
    for period in months {
        let closed = ports
            .usage
            .is_period_closed(period)
            .await
            .map_err(store_err(format!("reading whether {period} is closed")))?;
        // An open month is the monthly run's to close, not the catch-up's.
        if !closed {
            continue;
        }
        out.months.push(period);
        let overdue = now >= period.end() + grace + UNBILLED_AFTER;
        for org in orgs_in(ports, period).await? {
            let report = ports
                .reports
                .get_report(&org, period)
                .await
                .map_err(store_err(format!(
                    "reading the report of {org} for {period}"
                )))?;
            let missing = match (report, ledger) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(_), Some(ledger)) => ledger
                    .get_step(&StepKey::new(&org, period, &finalize))
                    .await
                    .map_err(store_err(format!(
                        "reading the invoice of {org} for {period}"
                    )))?
                    .is_none(),
            };
            if missing {
                out.unbilled += usize::from(overdue);
                items.push(BillItem { org, period });
            }
        }
    }
    queue.enqueue(&items).await?;
    out.enqueued = items.len();
    // A count; u32 is plenty and converts to the gauge's value exactly.
    metrics::gauge!(UNBILLED_GAUGE).set(u32::try_from(out.unbilled).unwrap_or(u32::MAX));
    if out.unbilled > 0 {
        tracing::error!(
            unbilled = out.unbilled,
            "orgs are still unbilled a day after their month closed; re-enqueued"
        );
    }
    tracing::info!(
        enqueued = out.enqueued,
        unbilled = out.unbilled,
        "billing catch-up"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn items_round_trip_and_bad_bodies_are_refused_naming_the_problem() {
        let item = BillItem {
            org: OrgId::parse("org_acme").unwrap(),
            period: Month::parse("2026-11").unwrap(),
        };
        let body = item.encode();
        assert_eq!(body, r#"{"org":"org_acme","period":"2026-11"}"#);
        assert_eq!(BillItem::decode(&body).unwrap(), item);
        for bad in [
            "",
            "{}",
            r#"{"org":"org_acme"}"#,
            r#"{"org":"org_acme","period":"2026-13"}"#,
            r#"{"org":"org_acme","period":"2026-11","extra":1}"#,
        ] {
            let e = BillItem::decode(bad).unwrap_err();
            assert!(matches!(e, ItemError::Malformed { .. }), "{bad}: {e}");
        }
        let long = format!(r#"{{"org":"{}","period":"2026-11"}}"#, "a".repeat(600));
        let e = BillItem::decode(&long).unwrap_err().to_string();
        assert!(e.contains("at most 512"), "{e}");
    }
}
