//! The hand-worked test of the billing issue: one org on each seed plan (free, starter, pro,
//! enterprise), billed from the built-in catalogue and compared with figures worked out by
//! hand below (usage, included amounts, overage, discount, total).
//!
//! List prices (built-in catalogue): API calls $0.50 per 1,000 (pro rata), compute $0.10 per
//! minute, storage $0.10 per GB-month of peak (GB = 10^9 bytes; allowances in GiB =
//! 2^30 bytes), bandwidth $0.08 per GB. Discount on usage: starter 10 %, pro 20 %,
//! enterprise 40 %, never on the flat fee. Each line: list = round(exact), amount =
//! round(exact × (1 − discount)), line discount = list − amount; rounding is to the cent,
//! half away from zero.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use tally_billing::{Catalogue, MonthUsage, UsageReport, adjustment_line};
use tally_core::{MeterName, Month, OrgId, PlanId, ProjectId};

const GIB: i64 = 1 << 30;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn meter(name: &str) -> MeterName {
    MeterName::parse(name).unwrap()
}

fn usage(api: &str, compute: &str, storage: &str, bandwidth: &str) -> MonthUsage {
    MonthUsage {
        meters: BTreeMap::from([
            (meter("api_calls"), d(api)),
            (meter("compute_minutes"), d(compute)),
            (meter("storage_bytes"), d(storage)),
            (meter("bandwidth_bytes"), d(bandwidth)),
        ]),
        projects: BTreeMap::new(),
    }
}

fn bill(plan: PlanId, usage: &MonthUsage) -> UsageReport {
    let catalogue = Catalogue::builtin().unwrap();
    let report = catalogue
        .price_month(
            OrgId::parse("org_acme").unwrap(),
            Month::parse("2026-10").unwrap(),
            plan,
            usage,
        )
        .unwrap();
    report.check().unwrap();
    report
}

/// One line's expected figures: quantity, included, billable (meter units), list amount,
/// line discount, amount.
struct Expect<'a> {
    meter: &'a str,
    quantity: &'a str,
    included: &'a str,
    billable: &'a str,
    list: &'a str,
    discount: &'a str,
    amount: &'a str,
}

fn assert_line(report: &UsageReport, e: &Expect<'_>) {
    let line = report
        .lines
        .iter()
        .find(|l| l.meter.as_str() == e.meter)
        .unwrap_or_else(|| panic!("no line for {}", e.meter));
    let ctx = e.meter;
    assert_eq!(line.quantity, d(e.quantity), "{ctx} quantity");
    assert_eq!(line.included, d(e.included), "{ctx} included");
    assert_eq!(line.billable, d(e.billable), "{ctx} billable");
    assert_eq!(line.list_amount.to_string(), e.list, "{ctx} list amount");
    assert_eq!(line.discount.to_string(), e.discount, "{ctx} discount");
    assert_eq!(line.amount.to_string(), e.amount, "{ctx} amount");
}

fn assert_totals(report: &UsageReport, fee: &str, subtotal: &str, discount: &str, total: &str) {
    assert_eq!(report.flat_fee.to_string(), fee, "flat fee");
    assert_eq!(report.subtotal.to_string(), subtotal, "subtotal");
    assert_eq!(report.discount.to_string(), discount, "discount");
    assert_eq!(report.total.to_string(), total, "total");
}

/// Asserts each of `lines` on `report`, then its totals: flat fee, subtotal, discount and
/// total, in that order.
fn assert_report(report: &UsageReport, totals: [&str; 4], lines: &[Expect<'_>]) {
    for e in lines {
        assert_line(report, e);
    }
    let [fee, subtotal, discount, total] = totals;
    assert_totals(report, fee, subtotal, discount, total);
}

#[test]
fn free_plan_never_charges() {
    // Free: $0, hard limits (10,000 calls, 100 minutes, 1 GiB stored, 1 GiB of bandwidth),
    // every price $0.
    //
    // api_calls        8,000 of 10,000 included          → billable 0          → $0.00
    // compute_minutes    100 of 100 included (at limit)   → billable 0          → $0.00
    // storage_bytes  900,000,000 of 1,073,741,824         → billable 0          → $0.00
    // bandwidth_bytes 3,000,000,000 of 1,073,741,824 (past the limit: events in flight)
    //                                                     → billable 1,926,258,176 × $0 → $0.00
    // flat fee $0.00; subtotal $0.00; discount $0.00; total $0.00
    let report = bill(
        PlanId::Free,
        &usage("8000", "100", "900000000", "3000000000"),
    );
    let zero = "0.00";
    let one_gib = GIB.to_string();
    for (m, q, inc, bill) in [
        ("api_calls", "8000", "10000", "0"),
        ("compute_minutes", "100", "100", "0"),
        ("storage_bytes", "900000000", one_gib.as_str(), "0"),
        (
            "bandwidth_bytes",
            "3000000000",
            one_gib.as_str(),
            "1926258176",
        ),
    ] {
        assert_line(
            &report,
            &Expect {
                meter: m,
                quantity: q,
                included: inc,
                billable: bill,
                list: zero,
                discount: zero,
                amount: zero,
            },
        );
    }
    assert_totals(&report, "0.00", "0.00", "0.00", "0.00");
    let catalogue = Catalogue::builtin().unwrap();
    assert!(catalogue.plan(PlanId::Free).hard_usage_limits);
}

// Starter: $29.00, 10 % off usage.
//
// api_calls        250,000 − 100,000 included = 150,000 calls = 150 × $0.50
//                  exact 75.00 → list 75.00; × 0.9 = 67.50 → amount 67.50; discount 7.50
// compute_minutes  1,234.5 − 1,000 = 234.5 min × $0.10
//                  exact 23.45 → list 23.45; × 0.9 = 21.105 → amount 21.11 (half away
//                  from zero); discount 2.34
// storage_bytes    12,500,000,000 − 10 GiB (10,737,418,240) = 1,762,581,760 bytes
//                  = 1.76258176 GB × $0.10 = 0.176258176 → list 0.18;
//                  × 0.9 = 0.1586323584 → amount 0.16; discount 0.02
// bandwidth_bytes  40,000,000,000, no allowance = 40 GB × $0.08
//                  exact 3.20 → list 3.20; × 0.9 = 2.88 → amount 2.88; discount 0.32
//
// subtotal = 29.00 + 75.00 + 23.45 + 0.18 + 3.20 = 130.83
// discount = 7.50 + 2.34 + 0.02 + 0.32           =  10.18
// total    = 130.83 − 10.18                        = 120.65
//          = 29.00 + 67.50 + 21.11 + 0.16 + 2.88 (sum of line amounts, same figure)
const STARTER_TOTAL: &str = "120.65";

fn starter_usage() -> MonthUsage {
    let mut u = usage("250000", "1234.5", "12500000000", "40000000000");
    let a = ProjectId::parse("prj_a").unwrap();
    let b = ProjectId::parse("prj_b").unwrap();
    u.projects.insert(
        a,
        BTreeMap::from([
            (meter("api_calls"), d("200000")),
            (meter("compute_minutes"), d("1000")),
            (meter("storage_bytes"), d("12500000000")),
            (meter("bandwidth_bytes"), d("30000000000")),
        ]),
    );
    u.projects.insert(
        b,
        BTreeMap::from([
            (meter("api_calls"), d("50000")),
            (meter("compute_minutes"), d("234.5")),
            (meter("bandwidth_bytes"), d("10000000000")),
        ]),
    );
    u
}

#[test]
fn starter_plan() {
    let report = bill(PlanId::Starter, &starter_usage());
    assert_report(
        &report,
        ["29.00", "130.83", "10.18", STARTER_TOTAL],
        &[
            Expect {
                meter: "api_calls",
                quantity: "250000",
                included: "100000",
                billable: "150000",
                list: "75.00",
                discount: "7.50",
                amount: "67.50",
            },
            Expect {
                meter: "compute_minutes",
                quantity: "1234.5",
                included: "1000",
                billable: "234.5",
                list: "23.45",
                discount: "2.34",
                amount: "21.11",
            },
            Expect {
                meter: "storage_bytes",
                quantity: "12500000000",
                included: "10737418240",
                billable: "1762581760",
                list: "0.18",
                discount: "0.02",
                amount: "0.16",
            },
            Expect {
                meter: "bandwidth_bytes",
                quantity: "40000000000",
                included: "0",
                billable: "40000000000",
                list: "3.20",
                discount: "0.32",
                amount: "2.88",
            },
        ],
    );

    // The storage line explains itself: 1.76258176 GB priced, exact 0.176258176.
    let storage = &report.lines[report
        .lines
        .iter()
        .position(|l| l.meter.as_str() == "storage_bytes")
        .unwrap()];
    assert_eq!(storage.billable_price_units, d("1.76258176"));
    assert_eq!(storage.exact_amount, d("0.176258176"));
    assert_eq!(storage.unit_price, d("0.10"));
    assert_eq!(storage.tiers.len(), 1);
    assert_eq!(storage.tiers[0].amount, d("0.176258176"));
}

#[test]
fn starter_projects_split_each_line_to_the_cent() {
    // Per project, in proportion to each project's quantity, largest remainder on cents:
    // api_calls   67.50 by 200,000 : 50,000   → a 54.00, b 13.50
    // compute     21.11 by 1,000 : 234.5      → exact 17.1000… and 4.0099…; floors 17.10 +
    //             4.00 leave one cent for the larger remainder → a 17.10, b 4.01
    // storage      0.16, only a has storage   → a 0.16
    // bandwidth    2.88 by 30 GB : 10 GB      → a 2.16, b 0.72
    // a = 54.00 + 17.10 + 0.16 + 2.16 = 73.42; b = 13.50 + 4.01 + 0.72 = 18.23
    // a + b = 91.65 = total 120.65 − flat fee 29.00 (the fee is not allocated)
    let report = bill(PlanId::Starter, &starter_usage());
    let share = |p: usize, m: &str| {
        report.projects[p]
            .lines
            .iter()
            .find(|l| l.meter.as_str() == m)
            .map(|l| l.amount.to_string())
    };
    assert_eq!(report.projects[0].project_id.as_str(), "prj_a");
    assert_eq!(share(0, "api_calls").as_deref(), Some("54.00"));
    assert_eq!(share(1, "api_calls").as_deref(), Some("13.50"));
    assert_eq!(share(0, "compute_minutes").as_deref(), Some("17.10"));
    assert_eq!(share(1, "compute_minutes").as_deref(), Some("4.01"));
    assert_eq!(share(0, "storage_bytes").as_deref(), Some("0.16"));
    assert_eq!(share(1, "storage_bytes"), None);
    assert_eq!(share(0, "bandwidth_bytes").as_deref(), Some("2.16"));
    assert_eq!(share(1, "bandwidth_bytes").as_deref(), Some("0.72"));
    assert_eq!(report.projects[0].amount.to_string(), "73.42");
    assert_eq!(report.projects[1].amount.to_string(), "18.23");
    assert_eq!(report.unallocated.to_string(), "29.00");
}

#[test]
fn pro_plan() {
    // Pro: $99.00, 20 % off usage.
    //
    // api_calls        1,002,345 − 1,000,000 = 2,345 calls = 2.345 × $0.50
    //                  exact 1.1725 → list 1.17; × 0.8 = 0.938 → amount 0.94; discount 0.23
    // compute_minutes  9,000 of 10,000 included → billable 0 → 0.00
    // storage_bytes    150,000,000,000 − 100 GiB (107,374,182,400) = 42,625,817,600 bytes
    //                  = 42.6258176 GB × $0.10 = 4.26258176 → list 4.26;
    //                  × 0.8 = 3.410065408 → amount 3.41; discount 0.85
    // bandwidth_bytes  1,000,000,000,000 = 1,000 GB × $0.08
    //                  exact 80.00 → list 80.00; × 0.8 = 64.00 → amount 64.00; discount 16.00
    //
    // subtotal = 99.00 + 1.17 + 0.00 + 4.26 + 80.00 = 184.43
    // discount = 0.23 + 0.00 + 0.85 + 16.00          =  17.08
    // total    = 184.43 − 17.08                       = 167.35
    //          = 99.00 + 0.94 + 0.00 + 3.41 + 64.00
    let report = bill(
        PlanId::Pro,
        &usage("1002345", "9000", "150000000000", "1000000000000"),
    );
    assert_report(
        &report,
        ["99.00", "184.43", "17.08", "167.35"],
        &[
            Expect {
                meter: "api_calls",
                quantity: "1002345",
                included: "1000000",
                billable: "2345",
                list: "1.17",
                discount: "0.23",
                amount: "0.94",
            },
            Expect {
                meter: "compute_minutes",
                quantity: "9000",
                included: "10000",
                billable: "0",
                list: "0.00",
                discount: "0.00",
                amount: "0.00",
            },
            Expect {
                meter: "storage_bytes",
                quantity: "150000000000",
                included: "107374182400",
                billable: "42625817600",
                list: "4.26",
                discount: "0.85",
                amount: "3.41",
            },
            Expect {
                meter: "bandwidth_bytes",
                quantity: "1000000000000",
                included: "0",
                billable: "1000000000000",
                list: "80.00",
                discount: "16.00",
                amount: "64.00",
            },
        ],
    );
    // No projects given: everything is unallocated.
    assert!(report.projects.is_empty());
    assert_eq!(report.unallocated.to_string(), "167.35");
}

// Enterprise (default contract): $0.00 fee, no allowances, list prices, 40 % off usage.
//
// api_calls        5,000,000 calls = 5,000 × $0.50
//                  exact 2,500.00 → list 2500.00; × 0.6 = 1,500.00; discount 1000.00
// compute_minutes  20,000 min × $0.10
//                  exact 2,000.00 → list 2000.00; × 0.6 = 1,200.00; discount 800.00
// storage_bytes    2,000,000,000,000 = 2,000 GB × $0.10
//                  exact 200.00 → list 200.00; × 0.6 = 120.00; discount 80.00
// bandwidth_bytes  12,345,678,901 = 12.345678901 GB × $0.08 = 0.98765431208 → list 0.99;
//                  × 0.6 = 0.592592587248 → amount 0.59; discount 0.40
//
// subtotal = 0.00 + 2500.00 + 2000.00 + 200.00 + 0.99 = 4700.99
// discount = 1000.00 + 800.00 + 80.00 + 0.40           = 1880.40
// total    = 4700.99 − 1880.40                          = 2820.59
//          = 1500.00 + 1200.00 + 120.00 + 0.59
fn enterprise_report() -> UsageReport {
    bill(
        PlanId::Enterprise,
        &usage("5000000", "20000", "2000000000000", "12345678901"),
    )
}

#[test]
fn enterprise_plan() {
    let report = enterprise_report();
    assert_report(
        &report,
        ["0.00", "4700.99", "1880.40", "2820.59"],
        &[
            Expect {
                meter: "api_calls",
                quantity: "5000000",
                included: "0",
                billable: "5000000",
                list: "2500.00",
                discount: "1000.00",
                amount: "1500.00",
            },
            Expect {
                meter: "compute_minutes",
                quantity: "20000",
                included: "0",
                billable: "20000",
                list: "2000.00",
                discount: "800.00",
                amount: "1200.00",
            },
            Expect {
                meter: "storage_bytes",
                quantity: "2000000000000",
                included: "0",
                billable: "2000000000000",
                list: "200.00",
                discount: "80.00",
                amount: "120.00",
            },
            Expect {
                meter: "bandwidth_bytes",
                quantity: "12345678901",
                included: "0",
                billable: "12345678901",
                list: "0.99",
                discount: "0.40",
                amount: "0.59",
            },
        ],
    );
}

#[test]
fn late_events_become_an_adjustment_on_the_next_report() {
    // 123 API calls of 2026-09 were applied after 2026-09 (invoiced at 5,000,000) closed.
    // Corrected line: 5,000,123 calls = 5,000.123 × $0.50 = 2,500.0615
    //   list 2500.06 (was 2500.00) → +0.06
    //   × 0.6 = 1,500.0369 → 1500.04 (was 1500.00) → +0.04; discount +0.02
    // Added to the 2026-10 report: subtotal 4700.99 + 0.06 = 4701.05,
    // discount 1880.40 + 0.02 = 1880.42, total 2820.59 + 0.04 = 2820.63.
    let catalogue = Catalogue::builtin().unwrap();
    let adj = adjustment_line(
        catalogue.plan(PlanId::Enterprise),
        Month::parse("2026-09").unwrap(),
        &meter("api_calls"),
        d("5000000"),
        d("5000123"),
        "123 events applied after 2026-09 closed",
    )
    .unwrap();
    assert_eq!(adj.list_amount.to_string(), "0.06");
    assert_eq!(adj.discount.to_string(), "0.02");
    assert_eq!(adj.amount.to_string(), "0.04");

    let mut report = enterprise_report();
    report.add_adjustment(adj);
    report.check().unwrap();
    assert_totals(&report, "0.00", "4701.05", "1880.42", "2820.63");
    assert_eq!(report.unallocated.to_string(), "2820.63");
}

#[test]
fn report_json_has_the_contract_shape() {
    let report = bill(PlanId::Starter, &starter_usage());
    let v = serde_json::to_value(&report).unwrap();
    for key in [
        "org_id", "period", "plan", "currency", "lines", "projects", "subtotal", "discount",
        "total",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["org_id"], "org_acme");
    assert_eq!(v["period"], "2026-10");
    assert_eq!(v["plan"], "starter");
    assert_eq!(v["currency"], "usd");
    assert_eq!(v["total"], STARTER_TOTAL);
    assert_eq!(v["subtotal"], "130.83");
    assert_eq!(v["discount"], "10.18");
    assert_eq!(v["flat_fee"], "29.00");
    let api = &v["lines"][0];
    assert_eq!(api["meter"], "api_calls");
    for key in [
        "meter",
        "quantity",
        "included",
        "billable",
        "unit_price",
        "amount",
        "tiers",
    ] {
        assert!(api.get(key).is_some(), "line misses {key}");
    }
    assert_eq!(api["quantity"], "250000");
    assert_eq!(api["unit_price"], "0.50");
    assert_eq!(api["amount"], "67.50");
    assert_eq!(api["tiers"][0]["quantity"], "150");
    assert_eq!(api["tiers"][0]["amount"], "75");
    assert_eq!(api["pricing"]["model"], "per_unit");
    assert_eq!(v["projects"][0]["project_id"], "prj_a");
    assert_eq!(v["adjustments"], serde_json::json!([]));

    // And it reads back as the same report.
    let back: UsageReport = serde_json::from_value(v).unwrap();
    assert_eq!(back, report);
}

#[test]
fn running_twice_gives_the_same_report() {
    assert_eq!(
        bill(PlanId::Starter, &starter_usage()),
        bill(PlanId::Starter, &starter_usage())
    );
}
