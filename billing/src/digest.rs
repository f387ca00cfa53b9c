//! The audit fields of a report's lines: month close calls [`record_line_digests`] on a
//! new report before it is stored, so each line carries the number of ledger entries it
//! bills and their digest (`tally_core::audit` defines both; `docs/audit.md` explains how
//! a customer checks them).
//!
//! Kept apart from `close` so month close's own logic only gains one call. The cost is one
//! read of the org's month of ledger (on DynamoDB, a `Query` of each of its 16 ledger
//! partitions, filtered on the month) and 32 bytes of memory per entry while the lines are
//! hashed.

use std::collections::BTreeMap;

use tally_core::audit::LineTally;
use tally_core::ports::{StoreError, UsageStore, each_ledger_page};
use tally_core::{MeterName, Month, OrgId};

use crate::report::ReportLine;

/// Ledger entries read per page while the lines are tallied.
const PAGE: usize = 1_000;

/// Every ledger entry of `org` stamped in `period`, tallied per meter.
pub async fn tally_lines(
    usage: &dyn UsageStore,
    org: &OrgId,
    period: Month,
) -> Result<BTreeMap<MeterName, LineTally>, StoreError> {
    let mut tallies: BTreeMap<MeterName, LineTally> = BTreeMap::new();
    each_ledger_page(usage, org, period, PAGE, |events| {
        for e in events {
            // A line is a meter's total, so its entries are those of all its series.
            tallies.entry(e.meter.base_meter()).or_default().add(e);
        }
    })
    .await?;
    Ok(tallies)
}

/// Sets `event_count` and `digest` of each of `lines` (a line without entries gets 0 and
/// the digest of nothing).
pub async fn record_line_digests(
    usage: &dyn UsageStore,
    org: &OrgId,
    period: Month,
    lines: &mut [ReportLine],
) -> Result<(), StoreError> {
    let tallies = tally_lines(usage, org, period).await?;
    let empty = LineTally::new();
    for line in lines {
        let tally = tallies.get(&line.meter).unwrap_or(&empty);
        line.event_count = Some(tally.event_count());
        line.digest = Some(tally.digest());
        if tally.quantity().ok() != Some(line.quantity) {
            // The counters are what is billed; a ledger that disagrees is what
            // `tally reconcile` looks into.
            tracing::warn!(%org, %period, meter = %line.meter, "the line's ledger entries do not add up to its counter");
        }
    }
    Ok(())
}
