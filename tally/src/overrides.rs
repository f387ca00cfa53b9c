//! `tally org override set|list|end`: each org's negotiated prices (see
//! `tally_core::overrides`), which only the operator sets: no API route writes one.
//!
//! Money safety rules enforced here, before the store is touched:
//!
//! - `--from` (the first month covered) and `--until` (the first month no longer covered)
//!   may not be before the current month, nor a closed (billed) month: a billed month's
//!   prices never change, and month close never re-prices a stored report anyway.
//! - The override is checked against the plan it is for, in the catalogue in force for
//!   `--from`: a meter the plan does not price is refused, and so is a price the catalogue
//!   would refuse (the error names the field).
//! - Every change is written to the org's audit trail (`price_override.create`,
//!   `price_override.end`, actor `cli`).

use anyhow::{Context, bail};
use clap::Subcommand;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_core::overrides::{
    MAX_REASON_BYTES, OverrideChange, OverrideId, PriceOverride, check_override_on,
};
use tally_core::ports::{EndOutcome, OverrideEnd};
use tally_core::pricing::Pricing;
use tally_core::{MeterName, Money, Month, OrgId, PlanId};

use crate::backend::{self, Stores};
use crate::manage::{OPERATOR, random};
use crate::output::{print, table_of};
use crate::settings::Common;

/// Longest `--price` JSON, in bytes.
const MAX_PRICE_ARG_BYTES: usize = 16 * 1024;

/// How far ahead `--from` may start an override, in months.
const MAX_MONTHS_AHEAD: u32 = 24;

/// `tally org override ...`.
#[derive(Debug, Subcommand)]
pub enum OverrideCommand {
    /// Give an org a negotiated price or allowance from a month on. Exactly one of
    /// --monthly-fee, --discount-percent, --included (with --meter) or --price (with
    /// --meter). Money and quantities are decimal strings. Audited as
    /// `price_override.create`.
    Set {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The plan it is negotiated on (default: the org's plan now); it applies only in
        /// months billed on this plan.
        #[arg(long)]
        plan: Option<String>,
        /// The meter, for --included or --price.
        #[arg(long)]
        meter: Option<String>,
        /// The flat monthly fee, e.g. 99.00.
        #[arg(long)]
        monthly_fee: Option<String>,
        /// The discount off usage, in percent (0 to 100).
        #[arg(long)]
        discount_percent: Option<String>,
        /// The meter's monthly allowance, in its unit, e.g. 2000000.
        #[arg(long)]
        included: Option<String>,
        /// The meter's price as the catalogue writes one, e.g.
        /// '{"model":"per_unit","unit_price":"0.8"}' (in the plan's price units).
        #[arg(long)]
        price: Option<String>,
        /// The first month it applies to, YYYY-MM (the current month or later).
        #[arg(long)]
        from: String,
        /// The first month it no longer applies to, YYYY-MM (exclusive); left out:
        /// open-ended.
        #[arg(long)]
        until: Option<String>,
        /// Why (the contract's reference), at most 256 bytes.
        #[arg(long)]
        reason: Option<String>,
    },
    /// List an org's overrides (ended ones too), oldest first.
    List {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
    },
    /// End an override: from --from on it no longer applies (default: next month). An end
    /// only moves earlier. Audited as `price_override.end`.
    End {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The override's id (ovr_…).
        #[arg(long)]
        id: String,
        /// The first month it no longer applies to, YYYY-MM (the current month or later).
        #[arg(long)]
        from: Option<String>,
    },
}

/// Runs a `tally org override` command.
pub async fn run(common: &Common, cmd: OverrideCommand) -> anyhow::Result<()> {
    match cmd {
        OverrideCommand::Set {
            org,
            plan,
            meter,
            monthly_fee,
            discount_percent,
            included,
            price,
            from,
            until,
            reason,
        } => {
            let change = change_of(
                meter.as_deref(),
                monthly_fee.as_deref(),
                discount_percent.as_deref(),
                included.as_deref(),
                price.as_deref(),
            )?;
            set(
                common,
                &org,
                plan.as_deref(),
                change,
                &from,
                until.as_deref(),
                reason,
            )
            .await
        }
        OverrideCommand::List { org } => list(common, &org).await,
        OverrideCommand::End { org, id, from } => end(common, &org, &id, from.as_deref()).await,
    }
}

fn decimal(flag: &str, s: &str) -> anyhow::Result<Decimal> {
    if s.len() > 40 {
        bail!("{flag}: at most 40 characters");
    }
    s.trim()
        .parse::<Decimal>()
        .map_err(|e| anyhow::anyhow!("{flag}: {s:?} is not a decimal number: {e}"))
}

fn month(flag: &str, s: &str) -> anyhow::Result<Month> {
    if s.len() > 7 {
        bail!("{flag} must be a month, YYYY-MM, got {s:?}");
    }
    Month::parse(s).map_err(|_| anyhow::anyhow!("{flag} must be a month, YYYY-MM, got {s:?}"))
}

/// The change the flags describe; exactly one kind.
fn change_of(
    meter: Option<&str>,
    monthly_fee: Option<&str>,
    discount_percent: Option<&str>,
    included: Option<&str>,
    price: Option<&str>,
) -> anyhow::Result<OverrideChange> {
    let given = [monthly_fee, discount_percent, included, price]
        .iter()
        .filter(|f| f.is_some())
        .count();
    if given != 1 {
        bail!(
            "give exactly one of --monthly-fee, --discount-percent, --included, --price \
             (got {given})"
        );
    }
    let has_meter = meter.is_some();
    let meter = || -> anyhow::Result<MeterName> {
        let m = meter.context("--meter is required with --included and --price")?;
        MeterName::parse(m).map_err(|e| anyhow::anyhow!("--meter: {e}"))
    };
    let no_meter = |kind: &str| -> anyhow::Result<()> {
        if has_meter {
            bail!("--meter does not go with {kind}: it changes the whole plan");
        }
        Ok(())
    };
    if let Some(fee) = monthly_fee {
        no_meter("--monthly-fee")?;
        return Ok(OverrideChange::MonthlyFee {
            amount: Money::new(decimal("--monthly-fee", fee)?),
        });
    }
    if let Some(p) = discount_percent {
        no_meter("--discount-percent")?;
        return Ok(OverrideChange::DiscountPercent {
            percent: decimal("--discount-percent", p)?,
        });
    }
    if let Some(q) = included {
        return Ok(OverrideChange::Included {
            meter: meter()?,
            quantity: decimal("--included", q)?,
        });
    }
    let text = price.unwrap_or_default();
    if text.len() > MAX_PRICE_ARG_BYTES {
        bail!("--price: at most {MAX_PRICE_ARG_BYTES} bytes of JSON");
    }
    let pricing: Pricing = serde_json::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "--price: not a price ({e}); write it as the catalogue does, with decimal strings, \
             e.g. {{\"model\":\"per_unit\",\"unit_price\":\"0.8\"}}"
        )
    })?;
    Ok(OverrideChange::Price {
        meter: meter()?,
        pricing,
    })
}

/// Refuses a month before the current one, more than [`MAX_MONTHS_AHEAD`] ahead, or closed.
async fn check_open(store: &Stores, flag: &str, m: Month, current: Month) -> anyhow::Result<()> {
    if m < current {
        bail!(
            "{flag} {m} is before the current month {current}; a billed month's prices never change"
        );
    }
    let mut limit = current;
    for _ in 0..MAX_MONTHS_AHEAD {
        limit = limit.next();
    }
    if m > limit {
        bail!("{flag} {m} is more than {MAX_MONTHS_AHEAD} months ahead (at most {limit})");
    }
    if store
        .usage
        .is_period_closed(m)
        .await
        .with_context(|| format!("cannot read whether {m} is closed"))?
    {
        bail!("{flag} {m} is closed (billed); a billed month's prices never change");
    }
    Ok(())
}

async fn set(
    common: &Common,
    org: &str,
    plan: Option<&str>,
    change: OverrideChange,
    from: &str,
    until: Option<&str>,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let org_id = crate::manage::org_id(org)?;
    let start = month("--from", from)?;
    let end = until.map(|u| month("--until", u)).transpose()?;
    if let Some(r) = &reason
        && (r.is_empty() || r.len() > MAX_REASON_BYTES || r.chars().any(char::is_control))
    {
        bail!("--reason must be 1 to {MAX_REASON_BYTES} bytes without control characters");
    }
    let fallback = common.load_catalogue()?;
    let store = backend::open_store(common).await?;
    let org = crate::manage::live_org(&store, &org_id).await?;
    let plan = match plan {
        None => org.plan,
        Some(p) => PlanId::parse(p).with_context(|| {
            format!("--plan must be free, starter, pro or enterprise, got {p:?}")
        })?,
    };
    let now = crate::manage::now()?;
    let current = Month::of(now);
    check_open(&store, "--from", start, current).await?;
    if let Some(end) = end {
        check_open(&store, "--until", end, current).await?;
    }
    let catalogue =
        tally_billing::versions::catalogue_for(store.catalogues.as_ref(), &fallback, start)
            .await
            .with_context(|| format!("cannot find the catalogue of {start}"))?;
    let o = PriceOverride {
        id: OverrideId::from_random(random()),
        org_id: org_id.clone(),
        plan,
        change,
        start,
        end,
        reason,
        created_by: OPERATOR.to_owned(),
        created_at: now,
    };
    check_override_on(&o, catalogue.catalogue.plan(plan)).map_err(|e| {
        anyhow::anyhow!(
            "{e} (checked against plan {plan} of catalogue {})",
            catalogue.label()
        )
    })?;
    let stored = store
        .overrides
        .put_override(&o)
        .await
        .context("cannot store the override")?;
    if !stored {
        bail!("override id {} is taken; run the command again", o.id);
    }
    crate::manage::audit_record(
        &store,
        &org_id,
        "price_override.create",
        format!("price_override:{}", o.id),
        None,
        serde_json::to_value(&o).ok(),
    )
    .await;
    print(common.json, &o, |o| {
        format!(
            "override {} on {} ({}): {} from {}{}",
            o.id,
            o.org_id,
            o.plan,
            describe(&o.change),
            o.start,
            o.end
                .map(|e| format!(" until {e} (exclusive)"))
                .unwrap_or_default()
        )
    })
}

fn describe(change: &OverrideChange) -> String {
    match change {
        OverrideChange::MonthlyFee { amount } => format!("monthly fee {amount}"),
        OverrideChange::DiscountPercent { percent } => format!("discount {percent} %"),
        OverrideChange::Included { meter, quantity } => format!("{meter} includes {quantity}"),
        OverrideChange::Price { meter, pricing } => format!(
            "{meter} priced {}",
            serde_json::to_string(pricing).unwrap_or_else(|_| pricing.model().to_owned())
        ),
    }
}

#[derive(Serialize)]
struct Listing {
    overrides: Vec<PriceOverride>,
}

async fn list(common: &Common, org: &str) -> anyhow::Result<()> {
    let org_id: OrgId = crate::manage::org_id(org)?;
    let store = backend::open_store(common).await?;
    crate::manage::any_org(&store, &org_id).await?;
    let overrides = store
        .overrides
        .list_overrides(&org_id)
        .await
        .context("cannot read the overrides")?;
    let current = Month::of(crate::manage::now()?);
    print(common.json, &Listing { overrides }, |l| {
        table_of(
            &["ID", "PLAN", "CHANGE", "FROM", "UNTIL", "NOW"],
            &l.overrides,
            "no overrides",
            |o| override_row(o, current),
        )
    })
}

/// A row of `tally override list`: `current` is the month whose overrides show `NOW` yes.
fn override_row(o: &PriceOverride, current: Month) -> Vec<String> {
    vec![
        o.id.to_string(),
        o.plan.to_string(),
        describe(&o.change),
        o.start.to_string(),
        o.end.map_or_else(|| "-".into(), |e| e.to_string()),
        if o.covers(current) { "yes" } else { "no" }.into(),
    ]
}

async fn end(common: &Common, org: &str, id: &str, from: Option<&str>) -> anyhow::Result<()> {
    let org_id = crate::manage::org_id(org)?;
    let id = OverrideId::parse(id).map_err(|_| {
        anyhow::anyhow!("--id: must be ovr_ and 16 lowercase hex digits, got {id:?}")
    })?;
    let store = backend::open_store(common).await?;
    crate::manage::live_org(&store, &org_id).await?;
    let current = Month::of(crate::manage::now()?);
    let before = store
        .overrides
        .list_overrides(&org_id)
        .await
        .context("cannot read the overrides")?
        .into_iter()
        .find(|o| o.id == id);
    let end = match from {
        Some(f) => month("--from", f)?,
        // Next month, or the start of one that has not begun (it then never applies).
        None => before
            .as_ref()
            .map_or(current.next(), |o| o.start.max(current.next())),
    };
    check_open(&store, "--from", end, current).await?;
    match store
        .overrides
        .end_override(&OverrideEnd {
            org: &org_id,
            id: &id,
            end,
        })
        .await
        .context("cannot end the override")?
    {
        EndOutcome::NotFound => bail!("{org_id} has no override {id}"),
        EndOutcome::AlreadyEnded(o) => print(common.json, &o, |o| {
            format!(
                "override {} already ends at {}; an end only moves earlier",
                o.id,
                o.end.map_or_else(|| "-".into(), |e| e.to_string())
            )
        }),
        EndOutcome::Ended(o) => {
            crate::manage::audit_record(
                &store,
                &org_id,
                "price_override.end",
                format!("price_override:{}", o.id),
                before.and_then(|b| serde_json::to_value(b).ok()),
                serde_json::to_value(&o).ok(),
            )
            .await;
            print(common.json, &o, |o| {
                format!("override {} ends: it no longer applies from {end}", o.id)
            })
        }
    }
}
