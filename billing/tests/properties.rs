//! Property tests of the pricing engine: graduated and volume tiers agree with hand-computed
//! tables and with a unit-by-unit oracle; an amount never decreases as usage grows; a line's
//! amount is its tier breakdown rounded once; project allocations sum to the line amount;
//! and no float is used anywhere in the crate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::str::FromStr;

use proptest::prelude::*;
use rust_decimal::Decimal;
use tally_billing::allocate::allocate_cents;
use tally_billing::{
    Catalogue, MeterPrice, MonthUsage, Pricing, Tier, price_line, price_month, round_to_cents,
};
use tally_core::{MeterName, Money, Month, OrgId, PlanId, ProjectId};

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn tier(up_to: Option<&str>, unit_price: &str, flat_fee: &str) -> Tier {
    Tier {
        up_to: up_to.map(d),
        unit_price: d(unit_price),
        flat_fee: d(flat_fee),
    }
}

// ---------------------------------------------------------------------------------------
// Hand-computed tables.

/// Graduated: first 100 at 0.10; 100–1,000 at 0.08; 1,000–10,000 at 0.05 plus 2.00 on
/// entering; above 10,000 at 0.01.
fn graduated_table() -> Pricing {
    Pricing::Graduated {
        tiers: vec![
            tier(Some("100"), "0.10", "0"),
            tier(Some("1000"), "0.08", "0"),
            tier(Some("10000"), "0.05", "2.00"),
            tier(None, "0.01", "0"),
        ],
    }
}

/// Volume, with flat fees that keep it from dropping at the boundaries:
/// ≤100 at 0.10; ≤1,000 at 0.08 + 2 (at 100: 10.00 both ways); ≤10,000 at 0.05 + 32
/// (at 1,000: 82.00 both ways); above at 0.04 + 132 (at 10,000: 532.00 both ways).
fn volume_table() -> Pricing {
    Pricing::Volume {
        tiers: vec![
            tier(Some("100"), "0.10", "0"),
            tier(Some("1000"), "0.08", "2"),
            tier(Some("10000"), "0.05", "32"),
            tier(None, "0.04", "132"),
        ],
    }
}

#[test]
fn graduated_matches_the_hand_table() {
    let p = graduated_table();
    for (q, expected) in [
        ("0", "0"),
        ("50", "5.00"),         // 50 × 0.10
        ("100", "10.00"),       // 100 × 0.10
        ("101", "10.08"),       // 10 + 1 × 0.08
        ("1000", "82.00"),      // 10 + 900 × 0.08
        ("1001", "84.05"),      // 82 + 1 × 0.05 + 2
        ("10000", "534.00"),    // 82 + 9,000 × 0.05 + 2
        ("12345.5", "557.455"), // 534 + 2,345.5 × 0.01
    ] {
        let priced = p.price(d(q)).unwrap();
        assert_eq!(priced.amount, d(expected), "graduated {q}");
        let sum: Decimal = priced.charges.iter().map(|c| c.amount).sum();
        assert_eq!(sum, priced.amount);
    }
    let at_1001 = p.price(d("1001")).unwrap();
    assert_eq!(at_1001.charges.len(), 3);
    assert_eq!(at_1001.charges[2].quantity, d("1"));
    assert_eq!(at_1001.charges[2].flat_fee, d("2.00"));
}

#[test]
fn volume_matches_the_hand_table() {
    let p = volume_table();
    assert!(p.problems().is_empty(), "{:?}", p.problems());
    for (q, expected) in [
        ("0", "0"),
        ("50", "5.00"),        // 50 × 0.10
        ("100", "10.00"),      // 100 × 0.10
        ("101", "10.08"),      // 2 + 101 × 0.08
        ("1000", "82.00"),     // 2 + 1,000 × 0.08
        ("1001", "82.05"),     // 32 + 1,001 × 0.05
        ("10000", "532.00"),   // 32 + 10,000 × 0.05
        ("10001", "532.04"),   // 132 + 10,001 × 0.04
        ("12345.5", "625.82"), // 132 + 12,345.5 × 0.04
    ] {
        let priced = p.price(d(q)).unwrap();
        assert_eq!(priced.amount, d(expected), "volume {q}");
        assert!(priced.charges.len() <= 1);
    }
}

// ---------------------------------------------------------------------------------------
// Strategies. Decimals are built from integers and a scale: no float is ever involved.

fn decimal(max: i64, max_scale: u32) -> impl Strategy<Value = Decimal> {
    (0..=max, 0..=max_scale).prop_map(|(m, s)| Decimal::new(m, s))
}

fn price() -> impl Strategy<Value = Decimal> {
    decimal(50_000, 4) // up to 5.0000
}

/// Ascending bounds, prices and fees for 1 to 5 tiers; the last is unbounded.
fn raw_tiers() -> impl Strategy<Value = Vec<Tier>> {
    prop::collection::vec((decimal(100_000, 2), price(), decimal(1_000, 2)), 1..=5).prop_map(
        |rows| {
            let n = rows.len();
            let mut bound = Decimal::ZERO;
            rows.into_iter()
                .enumerate()
                .map(|(i, (step, unit_price, flat_fee))| {
                    bound += step + Decimal::new(1, 2); // strictly ascending
                    Tier {
                        up_to: (i + 1 < n).then_some(bound),
                        unit_price,
                        flat_fee,
                    }
                })
                .collect()
        },
    )
}

/// Raises each volume tier's flat fee to what keeps the amount from dropping at its lower
/// boundary, as the catalogue requires.
fn make_volume_monotone(mut tiers: Vec<Tier>) -> Vec<Tier> {
    for i in 1..tiers.len() {
        let (lo, hi) = (&tiers[i - 1], &tiers[i]);
        if let Some(u) = lo.up_to {
            let needed = lo.flat_fee + u * lo.unit_price - u * hi.unit_price;
            if tiers[i].flat_fee < needed {
                tiers[i].flat_fee = needed;
            }
        }
    }
    tiers
}

fn volume_tiers() -> impl Strategy<Value = Vec<Tier>> {
    raw_tiers().prop_map(make_volume_monotone)
}

fn pricing() -> impl Strategy<Value = Pricing> {
    prop_oneof![
        price().prop_map(|unit_price| Pricing::PerUnit { unit_price }),
        (decimal(100_000, 2), price()).prop_map(|(size, package_price)| Pricing::Package {
            package_size: size + Decimal::new(1, 2),
            package_price,
        }),
        raw_tiers().prop_map(|tiers| Pricing::Graduated { tiers }),
        volume_tiers().prop_map(|tiers| Pricing::Volume { tiers }),
    ]
}

fn meter_price(pricing: Pricing, included: Option<Decimal>, size_exp: u32) -> MeterPrice {
    MeterPrice {
        meter: MeterName::parse("widgets").unwrap(),
        description: "Widgets".to_owned(),
        unit: "widgets".to_owned(),
        price_unit: "widget".to_owned(),
        price_unit_size: Decimal::from(10_i64.pow(size_exp)),
        included,
        pricing,
    }
}

// ---------------------------------------------------------------------------------------
// Unit-by-unit oracles for integer quantities and bounds: an independent reading of the
// definitions (each unit k = 1..q costs the price of the tier holding k; a tier's flat fee
// is due once some unit falls in it; volume prices all q units at q's tier).

fn tier_of(tiers: &[Tier], k: Decimal) -> usize {
    tiers
        .iter()
        .position(|t| t.up_to.is_none_or(|u| k <= u))
        .unwrap()
}

fn graduated_oracle(tiers: &[Tier], q: u32) -> Decimal {
    let mut total = Decimal::ZERO;
    let mut entered = vec![false; tiers.len()];
    for k in 1..=q {
        let i = tier_of(tiers, Decimal::from(k));
        total += tiers[i].unit_price;
        if !entered[i] {
            entered[i] = true;
            total += tiers[i].flat_fee;
        }
    }
    total
}

fn volume_oracle(tiers: &[Tier], q: u32) -> Decimal {
    if q == 0 {
        return Decimal::ZERO;
    }
    let t = &tiers[tier_of(tiers, Decimal::from(q))];
    Decimal::from(q) * t.unit_price + t.flat_fee
}

fn integer_tiers() -> impl Strategy<Value = Vec<Tier>> {
    prop::collection::vec((1u32..400, price(), decimal(500, 2)), 1..=5).prop_map(|rows| {
        let n = rows.len();
        let mut bound = 0u32;
        rows.into_iter()
            .enumerate()
            .map(|(i, (step, unit_price, flat_fee))| {
                bound += step;
                Tier {
                    up_to: (i + 1 < n).then(|| Decimal::from(bound)),
                    unit_price,
                    flat_fee,
                }
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn graduated_agrees_with_unit_by_unit_oracle(tiers in integer_tiers(), q in 0u32..2_500) {
        let p = Pricing::Graduated { tiers: tiers.clone() };
        prop_assert_eq!(p.price(Decimal::from(q)).unwrap().amount, graduated_oracle(&tiers, q));
    }

    #[test]
    fn volume_agrees_with_oracle(tiers in integer_tiers(), q in 0u32..2_500) {
        let tiers = make_volume_monotone(tiers);
        let p = Pricing::Volume { tiers: tiers.clone() };
        prop_assert!(p.problems().is_empty());
        prop_assert_eq!(p.price(Decimal::from(q)).unwrap().amount, volume_oracle(&tiers, q));
    }

    #[test]
    fn amounts_never_decrease_as_usage_grows(
        pricing in pricing(),
        a in decimal(10_000_000, 3),
        b in decimal(10_000_000, 3),
        included in prop::option::of(decimal(1_000_000, 0)),
        discount in decimal(100, 0),
        size_exp in 0u32..4,
    ) {
        prop_assert!(pricing.problems().is_empty(), "{:?}", pricing.problems());
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(pricing.price(lo).unwrap().amount <= pricing.price(hi).unwrap().amount);

        let price = meter_price(pricing, included, size_exp);
        let l = price_line(&price, lo, discount).unwrap();
        let h = price_line(&price, hi, discount).unwrap();
        prop_assert!(l.exact_amount <= h.exact_amount);
        prop_assert!(l.list_amount <= h.list_amount);
        prop_assert!(l.amount <= h.amount);
    }

    #[test]
    fn a_line_is_its_tier_breakdown_rounded_once(
        pricing in pricing(),
        q in decimal(100_000_000, 4),
        included in prop::option::of(decimal(1_000_000, 2)),
        discount in (0i64..=10_000).prop_map(|m| Decimal::new(m, 2)),
        size_exp in 0u32..6,
    ) {
        let price = meter_price(pricing, included, size_exp);
        let line = price_line(&price, q, discount).unwrap();
        let sum: Decimal = line.tiers.iter().map(|t| t.amount).sum();
        prop_assert_eq!(sum, line.exact_amount);
        for t in &line.tiers {
            prop_assert_eq!(t.billed_quantity * t.unit_price + t.flat_fee, t.amount);
        }
        // The rows cover exactly the billable quantity, in price units.
        let covered: Decimal = line.tiers.iter().map(|t| t.quantity).sum();
        prop_assert_eq!(covered, line.billable_price_units);
        prop_assert_eq!(line.billable_price_units * line.price_unit_size, line.billable);
        prop_assert_eq!(line.list_amount, round_to_cents(sum));
        let factor = (Decimal::ONE_HUNDRED - discount) / Decimal::ONE_HUNDRED;
        prop_assert_eq!(line.amount, round_to_cents(sum * factor));
        prop_assert_eq!(line.list_amount.amount() - line.discount.amount(), line.amount.amount());
        prop_assert_eq!(line.amount.amount().scale(), 2);
        prop_assert!(line.amount <= line.list_amount);
    }

    #[test]
    fn allocations_sum_to_the_amount(
        cents in 0i64..100_000_000,
        weights in prop::collection::vec(decimal(1_000_000_000, 3), 1..8),
    ) {
        let amount = Money::new(Decimal::new(cents, 2));
        let total: Decimal = weights.iter().sum();
        match allocate_cents(amount, &weights) {
            None => prop_assert!(total.is_zero()),
            Some(parts) => {
                prop_assert_eq!(parts.len(), weights.len());
                let sum: Decimal = parts.iter().map(|p| p.amount()).sum();
                prop_assert_eq!(sum, amount.amount());
                for (p, w) in parts.iter().zip(&weights) {
                    prop_assert!(p.amount() >= Decimal::ZERO);
                    if w.is_zero() {
                        prop_assert!(p.amount().is_zero());
                    }
                    // Within one cent of the exact share.
                    let exact = amount.amount() * *w / total;
                    prop_assert!((p.amount() - exact).abs() < Decimal::new(1, 2));
                }
            }
        }
    }

    #[test]
    fn reports_add_up_and_projects_sum_to_each_line(
        plan in prop_oneof![
            Just(PlanId::Free), Just(PlanId::Starter), Just(PlanId::Pro), Just(PlanId::Enterprise)
        ],
        projects in prop::collection::vec(
            prop::collection::vec(prop::option::of(decimal(5_000_000_000_000, 2)), 4),
            0..5,
        ),
    ) {
        let catalogue = Catalogue::builtin().unwrap();
        let meters: Vec<MeterName> = catalogue.meters().map(|m| m.name.clone()).collect();
        let mut usage = MonthUsage::default();
        for (i, quantities) in projects.iter().enumerate() {
            let mut per_meter = BTreeMap::new();
            for (m, q) in meters.iter().zip(quantities) {
                if let Some(q) = q {
                    per_meter.insert(m.clone(), *q);
                    *usage.meters.entry(m.clone()).or_default() += *q;
                }
            }
            usage.projects.insert(ProjectId::parse(&format!("prj_{i}")).unwrap(), per_meter);
        }
        let report = price_month(
            OrgId::parse("org_x").unwrap(),
            Month::parse("2026-10").unwrap(),
            catalogue.plan(plan),
            &usage,
        )
        .unwrap();
        prop_assert_eq!(report.check(), Ok(()));
        for line in &report.lines {
            let weights: Decimal = usage
                .projects
                .values()
                .filter_map(|m| m.get(&line.meter))
                .sum();
            let shares: Decimal = report
                .projects
                .iter()
                .flat_map(|p| &p.lines)
                .filter(|l| l.meter == line.meter)
                .map(|l| l.amount.amount())
                .sum();
            if weights > Decimal::ZERO {
                prop_assert_eq!(shares, line.amount.amount());
            } else {
                prop_assert!(shares.is_zero());
            }
        }
        let amounts: Decimal = report.lines.iter().map(|l| l.amount.amount()).sum();
        prop_assert_eq!(report.total.amount(), report.flat_fee.amount() + amounts);
        let allocated: Decimal = report.projects.iter().map(|p| p.amount.amount()).sum();
        prop_assert_eq!(allocated + report.unallocated.amount(), report.total.amount());
        if plan == PlanId::Free {
            prop_assert!(report.total.amount().is_zero());
        }
    }
}

// ---------------------------------------------------------------------------------------
// No floats anywhere: not in the crate's source, not in the catalogue.

#[test]
fn no_float_in_the_billing_source() {
    let sources = [
        ("lib.rs", include_str!("../src/lib.rs")),
        ("allocate.rs", include_str!("../src/allocate.rs")),
        ("alerts.rs", include_str!("../src/alerts.rs")),
        ("catalogue.rs", include_str!("../src/catalogue.rs")),
        ("close.rs", include_str!("../src/close.rs")),
        ("digest.rs", include_str!("../src/digest.rs")),
        ("error.rs", include_str!("../src/error.rs")),
        ("fanout.rs", include_str!("../src/fanout.rs")),
        ("period_sync.rs", include_str!("../src/period_sync.rs")),
        ("report.rs", include_str!("../src/report.rs")),
        ("schedule.rs", include_str!("../src/schedule.rs")),
        ("sync.rs", include_str!("../src/sync.rs")),
        ("versions.rs", include_str!("../src/versions.rs")),
        ("webhook.rs", include_str!("../src/webhook.rs")),
    ];
    // Core's catalogue, price models and pricing engine, which billing prices with.
    let core = [
        (
            "core/src/catalogue.rs",
            include_str!("../../core/src/catalogue.rs"),
        ),
        (
            "core/src/pricing.rs",
            include_str!("../../core/src/pricing.rs"),
        ),
        // The pricing engine month close and the upcoming invoice share.
        (
            "core/src/report.rs",
            include_str!("../../core/src/report.rs"),
        ),
        (
            "core/src/allocate.rs",
            include_str!("../../core/src/allocate.rs"),
        ),
        (
            "core/src/upcoming.rs",
            include_str!("../../core/src/upcoming.rs"),
        ),
        (
            "core/catalogue.json",
            include_str!("../../core/catalogue.json"),
        ),
    ];
    // Spelt in pieces so this file does not match itself if it is ever scanned.
    let needles = [concat!("f", "32"), concat!("f", "64"), concat!("Float", "")];
    for (file, text) in sources.iter().chain(&core) {
        for needle in needles {
            assert!(
                !text.contains(needle),
                "{file} mentions {needle}; billing is decimal only"
            );
        }
    }
    // The source list above is the whole crate.
    let listed: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for name in listed {
        assert!(
            sources.iter().any(|(f, _)| *f == name),
            "{name} is not in the float scan"
        );
    }
}
