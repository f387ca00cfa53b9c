//! `tally bill`: month close from the command line.
//!
//! The work is [`tally_billing::close_month`] and then, when Stripe is configured
//! (`TALLY_STRIPE_SECRET_KEY`, see [`crate::stripe`]), [`tally_billing::sync_period`] over
//! every report of the run: the same code the `tally serve` scheduler and the billing Lambda
//! run. This module only parses flags, opens the store, draws a progress bar and prints.
//! Each org's invoice (finalized with its id and total, pending with the step and reason,
//! failed with Stripe's message) is printed; the exit status is non-zero when any org is
//! pending or failed, with a one-line message saying to rerun (pending) or what to fix
//! (failed). A rerun resumes from the sync ledger. `--dry-run` and `--no-stripe` never call
//! Stripe.
//! The progress bar (indicatif, on stderr) appears only when stderr is a terminal and
//! `--json` is off, so scripts and pipes see clean output.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tally_billing::{
    ClosePorts, CloseRequest, PeriodSyncOptions, PeriodSyncPorts, Progress, UsageReport,
    close_month, sync_period,
};
use tally_core::{Month, OrgId};

use crate::backend;
use crate::manage::org_id;
use crate::output::print;
use crate::settings::Common;
use crate::stripe::OrgInvoice;
use tally_notify::TokioSleeper;

/// `tally bill` flags.
#[derive(Debug, Args)]
pub struct BillArgs {
    /// The month to bill, YYYY-MM. It must have ended, grace period included.
    #[arg(long)]
    period: String,
    /// Only this organization (all by default).
    #[arg(long)]
    org: Option<String>,
    /// Compute and print the reports without closing the period or storing anything.
    #[arg(long)]
    dry_run: bool,
    /// Do not sync invoices to Stripe, even when TALLY_STRIPE_SECRET_KEY is set.
    #[arg(long)]
    no_stripe: bool,
    /// How long after a month ends it stays open for late events (e.g. 1h, 30m, 90s).
    #[arg(long, env = "TALLY_GRACE_PERIOD", default_value = "1h", value_parser = crate::settings::parse_duration)]
    grace_period: std::time::Duration,
}

/// What `tally bill --json` prints: the contract's `{"reports": [...]}`, plus the run's
/// facts.
#[derive(Serialize)]
struct BillOut {
    reports: Vec<UsageReport>,
    period: Month,
    dry_run: bool,
    /// Reports this run stored (the others were stored by an earlier run).
    stored_now: usize,
    /// Orgs left out because they did not exist in the month (created after it, or deleted
    /// before it began).
    not_in_period: usize,
    /// Each org's Stripe invoice, when this run synced to Stripe.
    #[serde(skip_serializing_if = "Option::is_none")]
    stripe: Option<Vec<OrgInvoice>>,
}

/// A progress bar on stderr, one tick per org.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, orgs: usize) {
        self.0.set_length(orgs as u64);
        // Drawn from here on, so the bar never shows an empty "0/0" while orgs are listed.
        self.0.set_draw_target(ProgressDrawTarget::stderr());
    }

    fn org_done(&self, _org: &OrgId) {
        self.0.inc(1);
    }
}

fn bar(message: String) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} orgs {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

/// Runs `tally bill`.
pub async fn bill(common: &Common, args: BillArgs) -> anyhow::Result<()> {
    let period = Month::parse(&args.period)
        .map_err(|_| anyhow::anyhow!("--period must be YYYY-MM, got {:?}", args.period))?;
    let org = args.org.as_deref().map(org_id).transpose()?;
    let grace = chrono::Duration::from_std(args.grace_period).context("--grace-period")?;
    let catalogue = common.load_catalogue()?;
    let clock = crate::clock::from_env()?;
    // Read before anything is closed, so a bad setting stops the run early.
    let provider = if args.dry_run || args.no_stripe {
        None
    } else {
        crate::stripe::provider_from_env()?
    };
    let stores = backend::open_store(common).await?;
    let request = CloseRequest {
        period,
        org,
        dry_run: args.dry_run,
        grace,
    };
    let ports = ClosePorts {
        tenants: stores.tenants.as_ref(),
        usage: stores.usage.as_ref(),
        reports: stores.reports.as_ref(),
        versions: stores.catalogues.as_ref(),
        overrides: stores.overrides.as_ref(),
        clock: clock.as_ref(),
    };
    // Month close prices with the version effective for the month (through
    // `ports.versions`), else this file or built-in catalogue.
    let show_bar = !common.json && std::io::stderr().is_terminal();
    let outcome = if show_bar {
        let progress = Bar(bar(format!("billing {period}")));
        let out = close_month(ports, &catalogue, &request, &progress).await;
        progress.0.finish_and_clear();
        out
    } else {
        close_month(ports, &catalogue, &request, &tally_billing::NoProgress).await
    };
    let outcome = outcome.with_context(|| format!("cannot bill {period}"))?;
    let synced = match &provider {
        Some(provider) => {
            let ports = PeriodSyncPorts {
                provider,
                ledger: stores.sync.as_ref(),
                sleeper: &TokioSleeper,
                tenants: stores.tenants.as_ref(),
            };
            let options = PeriodSyncOptions::default();
            let run = if show_bar {
                let progress = Bar(bar(format!("invoicing {period} in Stripe")));
                let run = sync_period(ports, &outcome.reports, options, &progress).await;
                progress.0.finish_and_clear();
                run
            } else {
                sync_period(ports, &outcome.reports, options, &tally_billing::NoProgress).await
            };
            Some(run)
        }
        None => None,
    };
    let out = BillOut {
        period: outcome.period,
        dry_run: outcome.dry_run,
        stored_now: outcome.stored_now,
        not_in_period: outcome.not_in_period,
        reports: outcome.reports,
        stripe: synced
            .as_ref()
            .map(|run| run.orgs.iter().map(OrgInvoice::from).collect()),
    };
    print(common.json, &out, human)?;
    let rerun = match &args.org {
        Some(org) => format!("tally bill --period {period} --org {org}"),
        None => format!("tally bill --period {period}"),
    };
    if let Some(message) = synced
        .as_ref()
        .and_then(|run| crate::stripe::incomplete(run, &rerun))
    {
        anyhow::bail!("{period}: {message}");
    }
    Ok(())
}

fn human(out: &BillOut) -> String {
    let mut lines = Vec::with_capacity(out.reports.len() + 1);
    let verb = if out.dry_run {
        "would bill (dry run, nothing stored)"
    } else {
        "billed"
    };
    let skipped = match out.not_in_period {
        0 => String::new(),
        n => format!("; {n} org(s) did not exist in the month"),
    };
    lines.push(format!(
        "{}: {verb} {} org(s), {} report(s) stored by this run{skipped}",
        out.period,
        out.reports.len(),
        out.stored_now
    ));
    for r in &out.reports {
        let adjustments = if r.adjustments.is_empty() {
            String::new()
        } else {
            format!(", {} adjustment(s)", r.adjustments.len())
        };
        lines.push(format!(
            "  {} {}: total {} {} (subtotal {}, discount {}{adjustments})",
            r.org_id, r.plan, r.total, r.currency, r.subtotal, r.discount
        ));
    }
    if let Some(invoices) = &out.stripe {
        lines.push(format!("Stripe: {} invoice(s)", invoices.len()));
        for i in invoices {
            lines.push(match i.status {
                "finalized" => format!(
                    "  {} finalized {} ({}), total {}",
                    i.org_id,
                    i.invoice.as_deref().unwrap_or("?"),
                    i.invoice_status.as_deref().unwrap_or("?"),
                    i.total.as_deref().unwrap_or("?")
                ),
                status => format!(
                    "  {} {status} at {}: {}",
                    i.org_id,
                    i.step.as_deref().unwrap_or("?"),
                    i.reason.as_deref().unwrap_or("")
                ),
            });
        }
    }
    lines.join("\n")
}
