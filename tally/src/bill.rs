//! `tally bill`: month close from the command line.
//!
//! The work is [`tally_billing::close_month`], the same code the `tally serve` scheduler
//! runs; this module only parses flags, opens the store, draws a progress bar and prints.
//! The progress bar (indicatif, on stderr) appears only when stderr is a terminal and
//! `--json` is off, so scripts and pipes see clean output.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tally_billing::{Catalogue, ClosePorts, CloseRequest, Progress, UsageReport, close_month};
use tally_core::{Month, OrgId};

use crate::Common;
use crate::backend;
use crate::output::print;

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
    /// How long after a month ends it stays open for late events (e.g. 1h, 30m, 90s).
    #[arg(long, env = "TALLY_GRACE_PERIOD", default_value = "1h", value_parser = crate::serve::parse_duration)]
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

fn bar(period: Month) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} orgs {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("billing {period}"));
    bar
}

/// Runs `tally bill`.
pub async fn bill(common: &Common, args: BillArgs) -> anyhow::Result<()> {
    let period = Month::parse(&args.period)
        .map_err(|_| anyhow::anyhow!("--period must be YYYY-MM, got {:?}", args.period))?;
    let org = args
        .org
        .as_deref()
        .map(OrgId::parse)
        .transpose()
        .context("--org")?;
    let grace = chrono::Duration::from_std(args.grace_period).context("--grace-period")?;
    let catalogue = Catalogue::builtin().context("the built-in plan catalogue")?;
    let clock = crate::clock::from_env()?;
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
        clock: clock.as_ref(),
    };
    let show_bar = !common.json && std::io::stderr().is_terminal();
    let outcome = if show_bar {
        let progress = Bar(bar(period));
        let out = close_month(ports, &catalogue, &request, &progress).await;
        progress.0.finish_and_clear();
        out
    } else {
        close_month(ports, &catalogue, &request, &tally_billing::NoProgress).await
    };
    let outcome = outcome.with_context(|| format!("cannot bill {period}"))?;
    let out = BillOut {
        period: outcome.period,
        dry_run: outcome.dry_run,
        stored_now: outcome.stored_now,
        reports: outcome.reports,
    };
    print(common.json, &out, human)
}

fn human(out: &BillOut) -> String {
    let mut lines = Vec::with_capacity(out.reports.len() + 1);
    let verb = if out.dry_run {
        "would bill (dry run, nothing stored)"
    } else {
        "billed"
    };
    lines.push(format!(
        "{}: {verb} {} org(s), {} report(s) stored by this run",
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
    lines.join("\n")
}
