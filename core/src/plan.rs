//! Plans and their limits.
//!
//! Limits are data: every plan is defined once, in the catalogue file (the `catalogue`
//! module reads it), which also holds prices. What lives here is what ingest and the
//! management API need to enforce limits: per-meter monthly allowances, whether they are
//! hard (refused past the limit) or soft (billed as overage and alerted), and the hard caps
//! on users and projects. It also holds each plan's default ingest rate limit
//! ([`RateLimit`], [`PlanId::default_rate_limit`]).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ids::{MeterName, OrgId};
use crate::money::Money;

/// Which plan an organization is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanId {
    /// $0, hard limits.
    Free,
    /// $29/month.
    Starter,
    /// $99/month.
    Pro,
    /// Custom, unlimited.
    Enterprise,
}

impl PlanId {
    /// Every plan, cheapest first: the one list whatever walks all the plans iterates.
    pub const ALL: [PlanId; 4] = [
        PlanId::Free,
        PlanId::Starter,
        PlanId::Pro,
        PlanId::Enterprise,
    ];

    /// Parses `free`, `starter`, `pro` or `enterprise`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "free" => Some(PlanId::Free),
            "starter" => Some(PlanId::Starter),
            "pro" => Some(PlanId::Pro),
            "enterprise" => Some(PlanId::Enterprise),
            _ => None,
        }
    }

    /// The plan's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanId::Free => "free",
            PlanId::Starter => "starter",
            PlanId::Pro => "pro",
            PlanId::Enterprise => "enterprise",
        }
    }
}

/// A token-bucket rate limit: `per_second` tokens flow in each second, and at most `burst`
/// are kept. Ingest charges one token per request by default, or one per event (see
/// `tally-ingest`'s crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    /// Sustained rate: tokens added per second.
    pub per_second: u32,
    /// Bucket size: the most tokens a caller can spend at once after being idle.
    pub burst: u32,
}

impl RateLimit {
    /// Builds a limit.
    pub const fn new(per_second: u32, burst: u32) -> Self {
        RateLimit { per_second, burst }
    }
}

impl PlanId {
    /// The ingest rate limit a key of an org on this plan gets unless it is overridden, in
    /// requests per second (the default charging) and burst.
    ///
    /// Each tier allows ten times the rate of the tier below it (enterprise five times pro),
    /// with a burst of two seconds' worth so a client that retries after a short outage, or
    /// flushes several buffers at once, is not refused. Free's 10 requests/s is thousands of
    /// times what its 10,000-call monthly allowance needs on average (about 0.004/s), so it
    /// stops floods, not normal use; pro's 1,000 requests/s of up to 1,000 events each is
    /// far beyond what one customer service sends, yet bounds what a runaway client can cost.
    pub const fn default_rate_limit(self) -> RateLimit {
        match self {
            PlanId::Free => RateLimit::new(10, 20),
            PlanId::Starter => RateLimit::new(100, 200),
            PlanId::Pro => RateLimit::new(1_000, 2_000),
            PlanId::Enterprise => RateLimit::new(5_000, 10_000),
        }
    }
}

impl fmt::Display for PlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plan's limits. `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanLimits {
    /// Members plus pending invitations; always hard.
    pub users: Option<u32>,
    /// Active projects; always hard.
    pub projects: Option<u32>,
    /// Monthly allowance per meter.
    pub meters: BTreeMap<MeterName, Decimal>,
    /// Whether the meter allowances refuse events past the limit (free) or are billed as
    /// overage and alerted (paid plans).
    pub hard_usage_limits: bool,
}

/// A plan: its id, flat monthly fee and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Which plan.
    pub id: PlanId,
    /// Flat monthly fee in USD.
    pub monthly_fee: Money,
    /// The plan's limits.
    pub limits: PlanLimits,
}

// `Plan::builtin` lives in `catalogue`: the built-in plans are data (`core/catalogue.json`).
impl Plan {
    /// The allowance for a meter, if the plan limits it.
    pub fn meter_limit(&self, meter: &MeterName) -> Option<Decimal> {
        self.limits.meters.get(meter).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design_notes() {
        let free = Plan::builtin(PlanId::Free);
        assert!(free.limits.hard_usage_limits);
        assert_eq!(free.limits.users, Some(3));
        assert_eq!(
            free.meter_limit(&MeterName::parse("api_calls").unwrap()),
            Some(Decimal::from(10_000))
        );
        assert_eq!(
            free.meter_limit(&MeterName::parse("storage_bytes").unwrap()),
            Some(Decimal::from(1_073_741_824_i64))
        );
        let pro = Plan::builtin(PlanId::Pro);
        assert_eq!(pro.monthly_fee, Money::new(Decimal::from(99)));
        assert_eq!(pro.limits.projects, Some(20));
        assert!(!pro.limits.hard_usage_limits);
        assert_eq!(Plan::builtin(PlanId::Enterprise).limits.users, None);
        assert_eq!(PlanId::parse("starter"), Some(PlanId::Starter));
    }

    #[test]
    fn rate_limits_grow_with_the_plan() {
        let plans = PlanId::ALL;
        assert_eq!(PlanId::Free.default_rate_limit(), RateLimit::new(10, 20));
        for pair in plans.windows(2) {
            let (a, b) = (pair[0].default_rate_limit(), pair[1].default_rate_limit());
            assert!(a.per_second < b.per_second && a.burst < b.burst);
        }
        for p in plans {
            let r = p.default_rate_limit();
            assert_eq!(r.burst, 2 * r.per_second);
        }
    }
}

/// One change of an org's plan, kept for good: month close prices each month by the
/// changes in force during it ([`billed_plan`]), so a plan can never be
/// changed just before close to reprice the month gone by. Made only by the operator
/// ([`OrgStore::change_plan`](crate::ports::OrgStore::change_plan)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanChange {
    /// The org.
    pub org_id: OrgId,
    /// The plan before.
    pub from: PlanId,
    /// The plan from `at` on.
    pub to: PlanId,
    /// When it took effect.
    pub at: DateTime<Utc>,
}

/// The plan month close prices `month` on, by the documented policy: **the highest plan in
/// force at any instant of the month** (plans rank free < starter < pro < enterprise). So
/// an upgrade applies at once (the month of the upgrade is priced on the new plan) and a
/// downgrade from the next month (the month it happens in keeps the higher plan): a
/// tenant cannot shrink a bill by moving to a cheaper plan before close, and an operator's
/// upgrade is billed for the month it was granted in.
///
/// `current` is the org's plan now and `history` its changes (any order); with no change
/// the org has always been on `current`.
pub fn billed_plan(current: PlanId, history: &[PlanChange], month: crate::period::Month) -> PlanId {
    let mut changes: Vec<&PlanChange> = history.iter().collect();
    changes.sort_by_key(|c| c.at);
    let (start, end) = (month.start(), month.end());
    // The plan in force when the month began: the last change before it, else the plan
    // the org had before its first change, else the plan it has now.
    let at_start = changes
        .iter()
        .rev()
        .find(|c| c.at <= start)
        .map(|c| c.to)
        .or_else(|| changes.first().map(|c| c.from))
        .unwrap_or(current);
    changes
        .iter()
        .filter(|c| c.at > start && c.at < end)
        .map(|c| c.to)
        .fold(at_start, PlanId::max)
}

#[cfg(test)]
mod billed_plan_tests {
    use super::*;
    use crate::period::Month;

    fn change(from: PlanId, to: PlanId, at: &str) -> PlanChange {
        PlanChange {
            org_id: crate::ids::OrgId::parse("org_a").unwrap_or_else(|_| unreachable!()),
            from,
            to,
            at: DateTime::parse_from_rfc3339(at)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| unreachable!()),
        }
    }

    fn month(s: &str) -> Month {
        Month::parse(s).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn the_month_is_priced_on_the_highest_plan_in_force() {
        use PlanId::*;
        // No history: always the current plan.
        assert_eq!(billed_plan(Pro, &[], month("2026-11")), Pro);
        // Downgrade on the 28th: November stays pro, December is starter.
        let down = [change(Pro, Starter, "2026-11-28T23:00:00Z")];
        assert_eq!(billed_plan(Starter, &down, month("2026-11")), Pro);
        assert_eq!(billed_plan(Starter, &down, month("2026-12")), Starter);
        assert_eq!(billed_plan(Starter, &down, month("2026-10")), Pro);
        // Upgrade on the 28th: November is already pro.
        let up = [change(Starter, Pro, "2026-11-28T23:00:00Z")];
        assert_eq!(billed_plan(Pro, &up, month("2026-11")), Pro);
        assert_eq!(billed_plan(Pro, &up, month("2026-10")), Starter);
        // Up and back down inside one month: the month is priced on the peak.
        let blip = [
            change(Free, Enterprise, "2026-11-10T00:00:00Z"),
            change(Enterprise, Free, "2026-11-11T00:00:00Z"),
        ];
        assert_eq!(billed_plan(Free, &blip, month("2026-11")), Enterprise);
        assert_eq!(billed_plan(Free, &blip, month("2026-12")), Free);
        // A change exactly at midnight of the 1st belongs to the month it starts.
        let at_start = [change(Pro, Free, "2026-12-01T00:00:00Z")];
        assert_eq!(billed_plan(Free, &at_start, month("2026-12")), Free);
        assert_eq!(billed_plan(Free, &at_start, month("2026-11")), Pro);
    }
}
