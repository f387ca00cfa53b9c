//! A `time_weighted_sum` storage meter through month close and the upcoming invoice,
//! worked by hand.
//!
//! `storage_gb` (GB, a reading per event, each held until the next) is priced $0.01 per
//! GB-hour; the org is on the built-in pro plan ($99.00 a month, 20 % off usage, no
//! allowance for storage_gb).
//!
//! - October 2026 (744 h). Project A: 100 GB from 16 Oct 00:00, 20 GB from 31 Oct 00:00:
//!   100 × 360 h + 20 × 24 h = 36,480 GB-hours. Project B: 50 GB from 31 Oct 12:00:
//!   50 × 12 h = 600. Org: 37,080 GB-hours × $0.01 = $370.80 list, $296.64 after 20 %,
//!   total $395.64. Closes on A 20 GB, B 50 GB.
//! - November (720 h, no readings): the carried readings hold all month: A 20 × 720 =
//!   14,400, B 50 × 720 = 36,000; 50,400 GB-hours = $504.00 list, $403.20, total $502.20.
//!   Without the carry November would be free ($99.00).
//! - The upcoming invoice on 16 Nov 00:00 (360 h gone, 360 h left): so far 70 GB × 360 h
//!   = 25,200 GB-hours, $252.00 list, $201.60; projected 25,200 + 70 × 360 = 50,400, the
//!   month's final figure: $403.20, projected total $502.20.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{close_one, month, pro_org, ts};

use serde_json::{Map, Value};
use tally_billing::{Catalogue, UsageReport};
use tally_core::catalogue::BUILTIN_JSON;
use tally_core::ports::{
    ClosingReadings, UsageStore, month_counters, put_batch_readings, put_counted_readings,
    time_weighted_month,
};
use tally_core::report::MonthUsage;
use tally_core::upcoming::upcoming_invoice_held;
use tally_core::{Aggregation, Event, EventId, MeterName, OrgId, PlanId, ProjectId, Quantity};
use tally_store::MemoryStore;

fn storage_gb() -> MeterName {
    MeterName::parse("storage_gb").unwrap()
}

/// The built-in catalogue plus `storage_gb` at its list price in every plan.
fn catalogue() -> Catalogue {
    let mut file: Value = serde_json::from_str(BUILTIN_JSON).unwrap();
    file["meters"]["storage_gb"] = serde_json::json!({
        "description": "Storage", "unit": "GB", "aggregation": "time_weighted_sum",
        "price_unit": "GB-hour", "price_unit_size": 1,
        "list_price": {"model": "per_unit", "unit_price": "0.01"}
    });
    for id in ["free", "starter", "pro", "enterprise"] {
        file["plans"][id]["meters"]["storage_gb"] = serde_json::json!({});
    }
    Catalogue::from_json(&file.to_string(), "test").unwrap()
}

fn project(n: u8) -> ProjectId {
    ProjectId::from_random([n; 16])
}

/// A pro org with October's readings written as the aggregator writes them.
async fn world() -> (MemoryStore, OrgId) {
    let store = MemoryStore::new();
    let org = pro_org(&store, "storage@example.com", "Storage").await;
    let rows = [
        ("a1", 1, "100", "2026-10-16T00:00:00Z"),
        ("a2", 1, "20", "2026-10-31T00:00:00Z"),
        ("b1", 2, "50", "2026-10-31T12:00:00Z"),
    ];
    let events: Vec<Event> = rows
        .into_iter()
        .map(|(id, p, q, at)| reading(&org, id, p, q, at))
        .collect();
    put_batch_readings(&store, &events).await.unwrap();
    assert_eq!(store.apply_batch(&events).await.unwrap().applied(), 3);
    (store, org)
}

/// A `storage_gb` reading of project `p`: event `id`, `q` GB at `at`.
fn reading(org: &OrgId, id: &str, p: u8, q: &str, at: &str) -> Event {
    Event {
        org_id: org.clone(),
        id: EventId::parse(id).unwrap(),
        project_id: project(p),
        meter: storage_gb(),
        aggregation: Aggregation::TimeWeightedSum,
        quantity: Quantity::parse(q).unwrap(),
        timestamp: ts(at),
        properties: Map::new(),
    }
}

async fn close(store: &MemoryStore, now: &str, period: &str) -> UsageReport {
    close_one(store, &catalogue(), now, period).await
}

/// (quantity, list amount, amount) of the storage_gb line, and the report's total; the
/// line says its plan and catalogue version as every line does.
fn storage_line(r: &UsageReport) -> (String, String, String, String) {
    let l = r.lines.iter().find(|l| l.meter == storage_gb()).unwrap();
    assert_eq!(l.plan, Some(PlanId::Pro));
    assert_eq!(l.catalogue_version.as_deref(), Some("file"));
    (
        l.quantity.normalize().to_string(),
        l.list_amount.to_string(),
        l.amount.to_string(),
        r.total.to_string(),
    )
}

/// Asserts the storage_gb line's (quantity, list amount, amount) and the total of `r`. A
/// failure points at the caller's line.
#[track_caller]
fn assert_storage_line(r: &UsageReport, want: [&str; 4]) {
    let (quantity, list, amount, total) = storage_line(r);
    assert_eq!(
        [
            quantity.as_str(),
            list.as_str(),
            amount.as_str(),
            total.as_str()
        ],
        want
    );
}

/// Asserts the storage_gb line's (quantity, list amount, amount) on `r`.
fn assert_storage_amounts(r: &UsageReport, want: [&str; 3]) {
    let (quantity, list, amount, _) = storage_line(r);
    assert_eq!([quantity.as_str(), list.as_str(), amount.as_str()], want);
}

/// Applies project A's late October reading (event `a3`: 40 GB at 31 Oct 18:00) as the
/// aggregator applies it: the batch, then its counted readings.
async fn apply_late_october_reading(store: &MemoryStore, org: &OrgId) {
    let late = [reading(org, "a3", 1, "40", "2026-10-31T18:00:00Z")];
    let applied = store.apply_batch(&late).await.unwrap();
    assert_eq!(applied.applied(), 1);
    put_counted_readings(store, &late, &applied).await.unwrap();
}

fn closing(a: &str, b: &str) -> ClosingReadings {
    ClosingReadings::from([(
        storage_gb(),
        [
            (project(1), a.parse().unwrap()),
            (project(2), b.parse().unwrap()),
        ]
        .into(),
    )])
}

#[tokio::test]
async fn a_storage_meter_is_billed_per_gb_hour_with_the_carry() {
    let (store, _) = world().await;
    let oct = close(&store, "2026-11-01T02:00:00Z", "2026-10").await;
    assert_storage_line(&oct, ["37080", "370.80", "296.64", "395.64"]);
    assert_eq!(oct.closing_readings, closing("20", "50"));
    let nov = close(&store, "2026-12-01T02:00:00Z", "2026-11").await;
    assert_storage_line(&nov, ["50400", "504.00", "403.20", "502.20"]);
    assert_eq!(nov.closing_readings, closing("20", "50"));
    // The report's field survives the store: a rerun returns the stored report.
    let again = close(&store, "2026-12-02T00:00:00Z", "2026-11").await;
    assert_eq!(again, nov);
}

/// A reading of October applied after October closed (a replayed dead letter, queue lag
/// past the grace period): project A reads 40 GB at 31 Oct 18:00, applied as the aggregator
/// applies it (the batch, then its counted readings).
///
/// - November carries A's last October reading from the reading store, 40 GB, not the
///   20 GB October's report recorded: A 40 × 720 = 28,800 + B 50 × 720 = 36,000; 64,800
///   GB-hours = $648.00 list, $518.40 after 20 %.
/// - October gets an adjustment on November's report: A 100 × 360 + 20 × 18 + 40 × 6 =
///   36,600, B 600; 37,200 GB-hours against the 37,080 billed: +120 GB-hours, +$1.20 list,
///   +$0.96 after 20 %.
/// - November's total: $99.00 + $518.40 + $0.96 = $618.36; it closes on A 40, B 50.
/// - December (744 h) carries 40 + 50 = 90 GB: 66,960 GB-hours, $669.60 list, $535.68,
///   and adjusts nothing again (October's corrected 37,200 and November's 64,800 stand).
///
/// Without the store's reading November bills 50,400 GB-hours ($502.20) and October is
/// never adjusted.
#[tokio::test]
async fn a_reading_applied_after_its_month_closed_moves_the_carry_and_adjusts_the_month() {
    let (store, org) = world().await;
    let oct = close(&store, "2026-11-01T02:00:00Z", "2026-10").await;
    assert_eq!(storage_line(&oct).0, "37080");
    apply_late_october_reading(&store, &org).await;

    let nov = close(&store, "2026-12-01T02:00:00Z", "2026-11").await;
    assert_storage_amounts(&nov, ["64800", "648.00", "518.40"]);
    assert_eq!(nov.closing_readings, closing("40", "50"));
    let [adj] = nov.adjustments.as_slice() else {
        panic!("one adjustment: {:?}", nov.adjustments)
    };
    assert_eq!((adj.period, &adj.meter), (month("2026-10"), &storage_gb()));
    assert_eq!(
        (adj.invoiced_quantity, adj.corrected_quantity),
        ("37080".parse().unwrap(), "37200".parse().unwrap())
    );
    assert_eq!(
        (adj.list_amount.to_string(), adj.amount.to_string()),
        ("1.20".into(), "0.96".into())
    );
    assert_eq!(nov.total.to_string(), "618.36");

    let dec = close(&store, "2027-01-01T02:00:00Z", "2026-12").await;
    assert_storage_line(&dec, ["66960", "669.60", "535.68", "634.68"]);
    assert!(dec.adjustments.is_empty(), "{:?}", dec.adjustments);
}

/// The same late October reading (A 40 GB at 31 Oct 18:00), applied only after November
/// closed too, with no reading in November: December's close must carry A from October's
/// stored readings (walking back past the reading-less November), not from November's
/// report, whose recorded closing (A 20) was fixed before the reading came.
///
/// - October adjusted: 37,080 → 37,200 GB-hours (+120: +$1.20 list, +$0.96).
/// - November adjusted: billed A 20 × 720 + B 50 × 720 = 50,400; now A 40 × 720 + B 50 ×
///   720 = 64,800: +14,400 GB-hours, +$144.00 list, +$115.20 after 20 %.
/// - December (744 h) carries A 40 + B 50 = 90 GB: 66,960 GB-hours, $669.60 list, $535.68.
/// - December's total: $99.00 + $535.68 + $0.96 + $115.20 = $750.84.
///
/// With November's recorded closing as the carry-in, December bills (20 + 50) × 744 =
/// 52,080 GB-hours, and every month after it too, never adjusted.
#[tokio::test]
async fn a_late_reading_carries_past_a_month_without_readings() {
    let (store, org) = world().await;
    close(&store, "2026-11-01T02:00:00Z", "2026-10").await;
    let nov = close(&store, "2026-12-01T02:00:00Z", "2026-11").await;
    assert_eq!(storage_line(&nov).0, "50400");
    assert_eq!(nov.closing_readings, closing("20", "50"));
    apply_late_october_reading(&store, &org).await;

    let dec = close(&store, "2027-01-01T02:00:00Z", "2026-12").await;
    assert_storage_amounts(&dec, ["66960", "669.60", "535.68"]);
    assert_eq!(dec.closing_readings, closing("40", "50"));
    let adjusted: Vec<[String; 5]> = dec
        .adjustments
        .iter()
        .map(|a| {
            [
                a.period.to_string(),
                a.invoiced_quantity.to_string(),
                a.corrected_quantity.to_string(),
                a.list_amount.to_string(),
                a.amount.to_string(),
            ]
        })
        .collect();
    assert_eq!(
        adjusted,
        [
            ["2026-10", "37080", "37200", "1.20", "0.96"].map(String::from),
            ["2026-11", "50400", "64800", "144.00", "115.20"].map(String::from),
        ]
    );
    assert_eq!(dec.total.to_string(), "750.84");
}

/// The planted fault: November priced without October's closing readings is free.
#[tokio::test]
async fn without_the_carry_a_silent_month_would_be_free() {
    let (store, org) = world().await;
    let nov = month("2026-11");
    let mut usage = MonthUsage::default();
    let held = time_weighted_month(
        &store,
        &catalogue().meter_catalogue(),
        &org,
        nov,
        &ClosingReadings::new(),
        nov.end(),
        &mut usage,
    )
    .await
    .unwrap();
    assert!(!usage.meters.contains_key(&storage_gb()));
    assert_eq!(held, ClosingReadings::from([(storage_gb(), [].into())]));
}

#[tokio::test]
async fn the_upcoming_invoice_holds_the_reading_to_month_end() {
    let (store, org) = world().await;
    let oct = close(&store, "2026-11-01T02:00:00Z", "2026-10").await;
    let (now, nov) = (ts("2026-11-16T00:00:00Z"), month("2026-11"));
    let c = catalogue();
    let counters = month_counters(&store, &org, nov).await.unwrap();
    let mut usage = MonthUsage::from_counters(counters, nov).unwrap();
    let held = time_weighted_month(
        &store,
        &c.meter_catalogue(),
        &org,
        nov,
        &oct.closing_readings,
        now,
        &mut usage,
    )
    .await
    .unwrap();
    assert_eq!(held, closing("20", "50"));
    let plan =
        tally_core::overrides::apply_overrides(c.plan(PlanId::Pro), "file", &[], nov).unwrap();
    let inv = upcoming_invoice_held(&org, &plan, &c.meter_catalogue(), &usage, &held, now).unwrap();
    let line = inv.lines.iter().find(|l| l.meter == "storage_gb").unwrap();
    assert_eq!(line.quantity, "25200");
    assert_eq!(line.amount, "201.60");
    assert_eq!(line.projected_quantity, "50400");
    assert_eq!(line.projected_amount, "403.20");
    assert_eq!(inv.projected_total, "502.20");
    assert_eq!(line.catalogue_version.as_deref(), Some("file"), "{line:?}");
}

/// The live-meter rule of `tally catalogue apply` sees changes to and from the aggregation
/// (it refuses them while the meter has counters in an open month), and nothing when the
/// meter is unchanged.
#[test]
fn changes_to_and_from_time_weighted_sum_are_meter_changes() {
    let old = catalogue();
    let mut file: Value = serde_json::from_str(BUILTIN_JSON).unwrap();
    file["meters"]["storage_gb"] = serde_json::json!({
        "unit": "GB", "aggregation": "max", "price_unit": "GB", "price_unit_size": 1,
        "list_price": {"model": "per_unit", "unit_price": "0.01"}
    });
    file["meters"]["compute_minutes"]["aggregation"] = serde_json::json!("time_weighted_sum");
    for id in ["free", "starter", "pro", "enterprise"] {
        file["plans"][id]["meters"]["storage_gb"] = serde_json::json!({});
        file["plans"][id]["meters"]["compute_minutes"]
            .as_object_mut()
            .unwrap()
            .remove("included");
    }
    let new = Catalogue::from_json(&file.to_string(), "test").unwrap();
    let changes: Vec<(String, String)> = tally_billing::versions::meter_changes(&old, &new)
        .into_iter()
        .map(|(m, why)| (m.to_string(), why))
        .collect();
    assert_eq!(
        changes,
        [
            (
                "compute_minutes".to_owned(),
                "changes aggregation from sum to time_weighted_sum".to_owned()
            ),
            (
                "storage_gb".to_owned(),
                "changes aggregation from time_weighted_sum to max".to_owned()
            ),
        ]
    );
    assert!(tally_billing::versions::meter_changes(&old, &catalogue()).is_empty());
}
