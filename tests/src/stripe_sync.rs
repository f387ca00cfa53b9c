//! Shared scenarios of the Stripe invoice sync's tests (`tests/tests/stripe_sync*.rs`): a
//! sleeper that records what it was asked to wait, reports for numbered orgs, the check
//! that an org has exactly one finalized invoice equal to its report, and the chaos run, so
//! the same chaos test runs on every sync ledger backend. The chaos run drives
//! [`sync_period`], the function `tally bill` calls after closing the month, not a copy.

// Test support: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rust_decimal::Decimal;
use tally_billing::{
    Catalogue, MonthUsage, NoProgress, PeriodSyncOptions, PeriodSyncPorts, RetryPolicy, Sleeper,
    UsageReport, planned_items, sync_period,
};
use tally_core::ports::{SyncLedger, TenantStore};
use tally_core::{MeterName, Month, OrgId, PlanId};
use tally_stripe::{StripeConfig, StripeProvider};

use crate::stripe_double::{DOUBLE_SECRET_KEY, InvoiceView, StripeDouble};

/// Records what it was asked to wait and waits only a millisecond, so `Retry-After` is
/// checked without slowing the tests.
#[derive(Default)]
pub struct RecordingSleeper(pub Mutex<Vec<Duration>>);

#[async_trait]
impl Sleeper for RecordingSleeper {
    async fn sleep(&self, duration: Duration) {
        self.0.lock().unwrap().push(duration);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The adapter's timeout against the double: hangs last longer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_millis(250);

/// The adapter pointed at the double.
pub fn provider(double: &StripeDouble) -> StripeProvider {
    StripeProvider::new(StripeConfig {
        secret_key: DOUBLE_SECRET_KEY.to_owned(),
        base_url: double.base_url(),
        timeout: CLIENT_TIMEOUT,
    })
    .unwrap()
}

/// The billed month of every scenario.
pub fn period() -> Month {
    Month::parse("2026-10").unwrap()
}

/// A priced report for org `n`: plan and usage vary with `n` so items and totals differ.
pub fn report(n: usize) -> UsageReport {
    let plan = [
        PlanId::Starter,
        PlanId::Pro,
        PlanId::Enterprise,
        PlanId::Free,
    ][n % 4];
    let m = |s: &str| MeterName::parse(s).unwrap();
    let usage = MonthUsage {
        meters: BTreeMap::from([
            (m("api_calls"), Decimal::from(150_000 + 37_123 * n as i64)),
            (
                m("compute_minutes"),
                Decimal::new(12_345 + 1_001 * n as i64, 1),
            ),
            (
                m("bandwidth_bytes"),
                Decimal::from(3_000_000_000_i64 * (n as i64 % 7 + 1)),
            ),
        ]),
        projects: BTreeMap::new(),
    };
    Catalogue::builtin()
        .unwrap()
        .price_month(
            OrgId::parse(&format!("org_chaos{n:03}")).unwrap(),
            period(),
            plan,
            &usage,
        )
        .unwrap()
}

/// The double's invoices for one org (by the metadata the adapter sends).
pub fn invoices_of(double: &StripeDouble, org: &OrgId) -> Vec<InvoiceView> {
    double
        .invoices()
        .into_iter()
        .filter(|i| {
            i.metadata
                .get("tally_invoice")
                .and_then(|v| v.split_once(':'))
                .is_some_and(|(o, _)| o == org.as_str())
        })
        .collect()
}

/// Exactly one finalized invoice whose items are the report's, to the cent.
pub fn assert_invoiced(double: &StripeDouble, report: &UsageReport) {
    let invoices = invoices_of(double, &report.org_id);
    assert_eq!(invoices.len(), 1, "{}: {invoices:#?}", report.org_id);
    let inv = &invoices[0];
    // Stripe marks a zero-total invoice paid when it is finalized (the free plan).
    let status = if report.total.to_minor_units() == Some(0) {
        "paid"
    } else {
        "open"
    };
    assert_eq!(inv.status, status, "{}", report.org_id);
    let want: Vec<i64> = planned_items(report)
        .unwrap()
        .iter()
        .map(|i| i.amount_minor)
        .collect();
    let got: Vec<i64> = inv.items.iter().map(|i| i.amount).collect();
    assert_eq!(got, want, "{}", report.org_id);
    assert_eq!(
        Some(inv.total),
        report.total.to_minor_units(),
        "{}",
        report.org_id
    );
    let want = format!("{}:2026-10", report.org_id.as_str());
    assert_eq!(inv.metadata.get("tally_invoice"), Some(&want));
}

/// Runs [`sync_period`] (what `tally bill`, the serve scheduler and the billing Lambda
/// call) over every report until each is finalized, `rounds` at most, as an operator
/// rerunning `tally bill` would; returns the number of runs it took.
pub async fn sync_until_done(
    reports: &[UsageReport],
    provider: &StripeProvider,
    store: &dyn SyncAndTenants,
    rounds: usize,
) -> usize {
    let sleeper = RecordingSleeper::default();
    let ports = PeriodSyncPorts {
        provider,
        ledger: store.ledger(),
        sleeper: &sleeper,
        tenants: store.tenants(),
    };
    let options = PeriodSyncOptions {
        policy: RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        },
        concurrency: 8,
    };
    for round in 1..=rounds {
        let run = sync_period(ports, reports, options, &NoProgress).await;
        assert_eq!(run.orgs.len(), reports.len());
        if let Some(f) = run.failed().next() {
            panic!("{}: {:?}", f.org_id, f.outcome);
        }
        if run.all_finalized() {
            return round;
        }
    }
    panic!("not every org was finalized after {rounds} rounds");
}

/// A store that is both the sync ledger and the tenant store (SQLite, DynamoDB), as
/// [`sync_period`] needs both.
pub trait SyncAndTenants: Send + Sync {
    /// As the sync ledger.
    fn ledger(&self) -> &dyn SyncLedger;
    /// As the tenant store.
    fn tenants(&self) -> &dyn TenantStore;
}

impl<T: SyncLedger + TenantStore> SyncAndTenants for T {
    fn ledger(&self) -> &dyn SyncLedger {
        self
    }
    fn tenants(&self) -> &dyn TenantStore {
        self
    }
}

/// The chaos test of issue 7, on any ledger: `orgs` reports synced while the double injects
/// every fault kind at random (a third of requests), rerun until all are finalized.
pub async fn chaos(store: Arc<dyn SyncAndTenants>, orgs: usize, seed: u64) {
    let double = StripeDouble::start().await.unwrap();
    double.set_chaos(0.35, seed, Duration::from_millis(600));
    let p = provider(&double);
    let reports: Vec<_> = (0..orgs).map(report).collect();
    let rounds = sync_until_done(&reports, &p, store.as_ref(), 40).await;
    double.clear_chaos();
    let (requests, faults) = double.stats();
    println!(
        "chaos: {orgs} orgs finalized in {rounds} rounds, {requests} requests, faults {faults:?}"
    );
    for kind in ["500", "429", "timeout", "lost_response"] {
        assert!(
            faults.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} injected: {faults:?}"
        );
    }
    for r in &reports {
        assert_invoiced(&double, r);
    }
    assert_eq!(double.customer_count(), orgs);
    assert_eq!(double.invoices().len(), orgs);
}
