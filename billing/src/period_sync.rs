//! Syncing every report of a billed period to the invoice provider: the one loop behind
//! `tally bill`, the `tally serve` monthly scheduler and the billing Lambda, so all three
//! (and the chaos test) invoice the same way.
//!
//! [`sync_period`] runs [`InvoiceSync::sync_report`] for each report, a few orgs at a time
//! ([`PeriodSyncOptions::concurrency`]), and collects one [`OrgSync`] per org, in report
//! order. One org's trouble never stops the others: a ledger error or a report that cannot
//! be invoiced is turned into that org's [`SyncOutcome`] (pending for the first, a rerun
//! may get through; failed for the second, with the field at fault), so the caller always
//! gets the whole picture and decides the exit status. A rerun resumes every org from its
//! ledger. Everything goes through ports: no I/O of its own.

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tally_core::OrgId;
use tally_core::ports::{InvoiceProvider, OrgStore, SyncLedger};

use crate::close::Progress;
use crate::report::UsageReport;
use crate::sync::{InvoiceSync, RetryPolicy, Sleeper, SyncError, SyncOutcome};

/// The ports a period sync works through.
#[derive(Clone, Copy)]
pub struct PeriodSyncPorts<'a> {
    /// Stripe (or the double).
    pub provider: &'a dyn InvoiceProvider,
    /// Tally's record of the steps.
    pub ledger: &'a dyn SyncLedger,
    /// Waits between retries.
    pub sleeper: &'a dyn Sleeper,
    /// Where the orgs' display names (the customers' names) come from.
    pub tenants: &'a dyn OrgStore,
}

/// How a period sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodSyncOptions {
    /// Attempts and backoff per step.
    pub policy: RetryPolicy,
    /// Orgs synced at once (at least 1). Stripe allows about 100 requests a second in live
    /// mode (25 in test mode); each org's steps are sequential.
    pub concurrency: usize,
}

impl Default for PeriodSyncOptions {
    fn default() -> Self {
        Self {
            policy: RetryPolicy::default(),
            concurrency: 4,
        }
    }
}

/// One org's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgSync {
    /// The org.
    pub org_id: OrgId,
    /// How its sync ended in this run.
    pub outcome: SyncOutcome,
}

/// What a period sync did, one entry per report in report order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeriodSync {
    /// Each org's result.
    pub orgs: Vec<OrgSync>,
}

impl PeriodSync {
    /// The orgs left pending (a rerun resumes them).
    pub fn pending(&self) -> impl Iterator<Item = &OrgSync> {
        self.orgs
            .iter()
            .filter(|o| matches!(o.outcome, SyncOutcome::Pending { .. }))
    }

    /// The orgs whose sync was refused (someone must fix the cause first).
    pub fn failed(&self) -> impl Iterator<Item = &OrgSync> {
        self.orgs
            .iter()
            .filter(|o| matches!(o.outcome, SyncOutcome::Failed { .. }))
    }

    /// Whether every org's invoice is finalized.
    pub fn all_finalized(&self) -> bool {
        self.orgs
            .iter()
            .all(|o| matches!(o.outcome, SyncOutcome::Finalized(_)))
    }
}

/// Syncs every report (see the [module doc](self)). `progress` hears about each org.
pub async fn sync_period(
    ports: PeriodSyncPorts<'_>,
    reports: &[UsageReport],
    options: PeriodSyncOptions,
    progress: &dyn Progress,
) -> PeriodSync {
    progress.start(reports.len());
    // A window of at most `concurrency` orgs, answered in report order. Named async fns
    // rather than closures, so the future stays `Send` for any caller's lifetimes
    // (`tokio::spawn` in the serve scheduler).
    let window = options.concurrency.max(1);
    let mut orgs = Vec::with_capacity(reports.len());
    let mut in_flight = FuturesOrdered::new();
    let mut next = reports.iter();
    loop {
        while in_flight.len() < window {
            let Some(report) = next.next() else { break };
            in_flight.push_back(sync_org(ports, report, options.policy, progress));
        }
        match in_flight.next().await {
            Some(org) => orgs.push(org),
            None => break,
        }
    }
    PeriodSync { orgs }
}

async fn sync_org(
    ports: PeriodSyncPorts<'_>,
    report: &UsageReport,
    policy: RetryPolicy,
    progress: &dyn Progress,
) -> OrgSync {
    let outcome = sync_org_report(ports, report, policy).await;
    progress.org_done(&report.org_id);
    OrgSync {
        org_id: report.org_id.clone(),
        outcome,
    }
}

/// Syncs one org's report and turns every error into that org's [`SyncOutcome`] (a ledger
/// error: pending, a rerun may get through; a report that cannot be invoiced: failed, with
/// the field at fault). The per-org step of [`sync_period`], and what the billing queue's
/// consumer ([`crate::fanout::bill_item`]) runs for one (org, period) item, so the two
/// invoice the same way; resumable from the ledger, so running it again is harmless.
pub async fn sync_org_report(
    ports: PeriodSyncPorts<'_>,
    report: &UsageReport,
    policy: RetryPolicy,
) -> SyncOutcome {
    // The customer's name is cosmetic; an org that cannot be read is named by its id
    // rather than left unbilled.
    let name = match ports.tenants.get_org(&report.org_id).await {
        Ok(Some(org)) => org.name,
        Ok(None) | Err(_) => report.org_id.as_str().to_owned(),
    };
    let sync = InvoiceSync {
        provider: ports.provider,
        ledger: ports.ledger,
        sleeper: ports.sleeper,
        policy,
    };
    match sync.sync_report(report, &name).await {
        Ok(outcome) => outcome,
        Err(SyncError::Ledger(e)) => SyncOutcome::Pending {
            step: "ledger".to_owned(),
            reason: e.to_string(),
        },
        Err(SyncError::BadReport { field, reason, .. }) => SyncOutcome::Failed {
            step: field,
            message: reason,
        },
    }
}
