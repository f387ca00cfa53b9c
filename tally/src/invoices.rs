//! `tally invoice upcoming|list`: the operator's view of what `GET
//! /v1/orgs/{org_id}/invoices/upcoming` and `GET /v1/orgs/{org_id}/invoices` answer, read
//! straight from the store named by the global flags.
//!
//! The upcoming invoice is `tally_core::upcoming::upcoming_invoice`, the function the API
//! calls (month close's engine on the plan month close would bill and the stored counters),
//! with this run's catalogue and clock (`TALLY_NOW` pins it); the list reads month close's
//! reports and the Stripe sync ledger as the API does (`tally_api::invoices::stripe_status`).

use anyhow::Context;
use clap::Subcommand;
use tally_api::invoices::{InvoiceSummary, InvoicesResponse};
use tally_core::Month;
use tally_core::plan::billed_plan;
use tally_core::report::MonthUsage;
use tally_core::upcoming::{UpcomingInvoice, upcoming_invoice};

use crate::manage::{any_org, now, open, open_any_org, org_id};
use crate::output::{print, table_of, usage_headers, usage_row};
use crate::settings::Common;

/// `tally invoice …`.
#[derive(Debug, Subcommand)]
pub enum InvoiceCommand {
    /// The current month so far, priced as month close would, and projected to month end.
    Upcoming {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
    },
    /// The closed months' reports, newest first, with their total and Stripe invoice.
    List {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
    },
}

/// Runs `tally invoice …`.
pub async fn invoice(common: &Common, cmd: InvoiceCommand) -> anyhow::Result<()> {
    match cmd {
        InvoiceCommand::Upcoming { org } => {
            let id = org_id(&org)?;
            let catalogue = common.load_catalogue()?;
            let store = open(common).await?;
            let org = any_org(&store, &id).await?;
            let at = now()?;
            let period = Month::of(at);
            let history = store.tenants.plan_history(&org.id).await?;
            let plan = billed_plan(org.plan, &history, period);
            let counters =
                tally_core::ports::month_counters(&*store.usage, &org.id, period).await?;
            let usage = MonthUsage::from_counters(counters, period)
                .map_err(|e| anyhow::anyhow!("the month's counters of {}: {e}", org.id))?;
            let invoice = upcoming_invoice(
                &org.id,
                catalogue.plan(plan),
                &catalogue.meter_catalogue(),
                &usage,
                at,
            )
            .context("pricing the month so far")?;
            print(common.json, &invoice, show_upcoming)
        }
        InvoiceCommand::List { org } => {
            let (store, id, _) = open_any_org(common, &org).await?;
            let mut stored = store.reports.list_reports(&id).await?;
            stored.sort_by_key(|r| std::cmp::Reverse(r.period));
            let mut invoices = Vec::with_capacity(stored.len());
            for r in &stored {
                let steps = store.sync.list_steps(&id, r.period).await?;
                invoices.push(
                    InvoiceSummary::of(r, &steps)
                        .with_context(|| format!("the stored report of {id} {}", r.period))?,
                );
            }
            let out = InvoicesResponse {
                invoices,
                next_before: None,
            };
            print(common.json, &out, |o| {
                table_of(
                    &[
                        "PERIOD", "PLAN", "TOTAL", "CURRENCY", "CLOSED", "STRIPE", "INVOICE",
                    ],
                    &o.invoices,
                    "no closed months",
                    invoice_row,
                )
            })
        }
    }
}

/// A row of `tally invoice list`.
fn invoice_row(i: &InvoiceSummary) -> Vec<String> {
    vec![
        i.period.clone(),
        i.plan.clone(),
        i.total.clone(),
        i.currency.clone(),
        i.closed_at.clone(),
        i.stripe.status.clone(),
        i.stripe
            .invoice_id
            .clone()
            .unwrap_or_else(|| "-".to_owned()),
    ]
}

/// The human text of `tally invoice upcoming`: the lines, then the totals.
fn show_upcoming(i: &UpcomingInvoice) -> String {
    let lines = table_of(
        &usage_headers(&["AMOUNT", "PROJECTED", "PROJECTED AMOUNT"]),
        &i.lines,
        "no lines",
        |l| {
            usage_row(
                [&l.meter, &l.quantity, &l.included, &l.billable],
                [&l.amount, &l.projected_quantity, &l.projected_amount].map(String::clone),
            )
        },
    );
    format!(
        "{} {} on {} as of {} ({} of {} days)\n{lines}\nflat fee {}  subtotal {}  discount {}  total {} {}  projected {} {}",
        i.org_id,
        i.period,
        i.plan,
        i.as_of,
        i.days_elapsed,
        i.days_in_month,
        i.flat_fee,
        i.subtotal,
        i.discount,
        i.total,
        i.currency,
        i.projected_total,
        i.currency,
    )
}
