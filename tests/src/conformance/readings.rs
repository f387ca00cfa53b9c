//! The time-weighted readings conformance suite: the [`ReadingStore`] of every backend,
//! through the storage suite's [`StoreFactory`](super::storage::StoreFactory).
//!
//! What it pins down is what makes a `time_weighted_sum` total exact whatever happens to
//! its events: a cell is the same set of readings (one per second, the larger on a tie)
//! under any arrival order, any replay and concurrent writers; cells are kept per org,
//! meter, project and month; and the totals read back from a store are the hand-worked
//! figures, carry-in included. Tests use fresh org ids, so backends may share tables.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use tally_core::ports::{
    CarryIns, MonthReadingsQuery, Reading, ReadingStore, StoreError, month_totals, period_usage,
};
use tally_core::pricing::Pricing;
use tally_core::time_weighted::{HourReadings, MonthTotal, month_total, period_totals};
use tally_core::{Money, Month, OrgId, ProjectId};

use super::fixtures::{
    dec, event, expected_counters, fresh_org, fresh_project, meter, stored_counter_map, ts,
};
use super::storage::ReadingFactory;

/// Expands to one `#[tokio::test]` per readings conformance test, each building its
/// factory with the given expression (evaluated inside the async test, so it may `.await`).
///
/// ```text
/// tally_tests::readings_conformance!(SqliteFactory::new());
/// ```
#[macro_export]
macro_rules! readings_conformance {
    ($factory:expr) => {
        $crate::conformance_tests!(readings, $factory);
    };
}

fn reading(org: &OrgId, project: &ProjectId, m: &str, at: &str, value: &str) -> Reading {
    Reading {
        org: org.clone(),
        project: project.clone(),
        meter: meter(m),
        at: ts(at),
        value: dec(value),
    }
}

/// The cells of one project's meter in a month.
async fn cells_of<S: ReadingStore>(
    s: &S,
    org: &OrgId,
    m: &str,
    month: &str,
    project: Option<&ProjectId>,
) -> Vec<(ProjectId, HourReadings)> {
    let meter = meter(m);
    let q = MonthReadingsQuery {
        org,
        meter: &meter,
        month: Month::parse(month).unwrap(),
        project,
    };
    s.month_readings(&q).await.unwrap()
}

/// The total in value × hours over `[from, to)` from a month's cells and its carry-in.
fn total(
    cells: &[(ProjectId, HourReadings)],
    carry: Option<&str>,
    from: &str,
    to: &str,
) -> Decimal {
    let period = [(ts(from), ts(to))];
    period_totals(carry.map(dec), cells.iter().map(|(_, c)| c), &period).unwrap()[0]
}

/// 10 GB from 00:00, 30 GB from 06:00, 0 from 18:00 on 26 November: 10·6 + 30·12 + 0·6 =
/// 420 GB-hours, whatever order the readings arrive in, split over two handles, replayed
/// whole; a smaller reading of an occupied second (a resend with another value) loses.
pub async fn readings_in_any_order_and_replayed_give_the_hand_worked_day<F: ReadingFactory>(f: &F) {
    let (a, b) = (f.open().await, f.open().await);
    let (org, p) = (fresh_org(), fresh_project());
    let day = [
        reading(&org, &p, "disk_gb", "2031-11-26T18:00:00Z", "0"),
        reading(&org, &p, "disk_gb", "2031-11-26T06:00:00.700Z", "30"),
        reading(&org, &p, "disk_gb", "2031-11-26T00:00:00Z", "10"),
    ];
    b.put_readings(&day[2..]).await.unwrap();
    a.put_readings(&day[..2]).await.unwrap();
    let want = dec("420");
    let got = cells_of(&a, &org, "disk_gb", "2031-11", Some(&p)).await;
    assert_eq!(got.len(), 3, "one cell per hour with a reading: {got:?}");
    assert_eq!(
        total(&got, None, "2031-11-26T00:00:00Z", "2031-11-27T00:00:00Z"),
        want
    );
    // The whole batch again, in reverse, and a smaller value for the 06:00 second.
    let mut replay = day.to_vec();
    replay.reverse();
    replay.push(reading(&org, &p, "disk_gb", "2031-11-26T06:00:00Z", "25"));
    b.put_readings(&replay).await.unwrap();
    let again = cells_of(&b, &org, "disk_gb", "2031-11", Some(&p)).await;
    assert_eq!(again, got, "a replay changes no cell");
    // A larger value for the same second wins (the tie rule), wherever it arrives.
    a.put_readings(&[reading(&org, &p, "disk_gb", "2031-11-26T06:00:00Z", "40")])
        .await
        .unwrap();
    let raised = cells_of(&b, &org, "disk_gb", "2031-11", Some(&p)).await;
    // 10·6 + 40·12: 540 GB-hours.
    assert_eq!(
        total(
            &raised,
            None,
            "2031-11-26T00:00:00Z",
            "2031-11-27T00:00:00Z"
        ),
        dec("540")
    );
}

/// Another org, another project, a meter whose name extends this one's, and the month
/// after: each has cells of its own. `None` reads every project of the meter, by project
/// then hour; a reading at the month's last second is that month's.
pub async fn cells_are_kept_per_org_meter_project_and_month<F: ReadingFactory>(f: &F) {
    let s = f.open().await;
    let (org, other_org) = (fresh_org(), fresh_org());
    let (mut p1, mut p2) = (fresh_project(), fresh_project());
    if p2 < p1 {
        std::mem::swap(&mut p1, &mut p2);
    }
    s.put_readings(&[
        reading(&org, &p1, "disk", "2031-11-30T23:59:59Z", "5"),
        reading(&org, &p1, "disk", "2031-11-02T10:00:00Z", "1"),
        reading(&org, &p2, "disk", "2031-11-03T10:30:00Z", "2"),
        reading(&org, &p1, "disk_v2", "2031-11-02T10:00:00Z", "7"),
        reading(&org, &p1, "disk", "2031-12-01T00:00:00Z", "9"),
        reading(&other_org, &p1, "disk", "2031-11-02T10:00:00Z", "8"),
    ])
    .await
    .unwrap();
    let all = cells_of(&s, &org, "disk", "2031-11", None).await;
    let seen: Vec<(&ProjectId, DateTime<Utc>, Option<Decimal>)> =
        all.iter().map(|(p, c)| (p, c.hour(), c.last())).collect();
    assert_eq!(
        seen,
        vec![
            (&p1, ts("2031-11-02T10:00:00Z"), Some(dec("1"))),
            (&p1, ts("2031-11-30T23:00:00Z"), Some(dec("5"))),
            (&p2, ts("2031-11-03T10:00:00Z"), Some(dec("2"))),
        ]
    );
    let one = cells_of(&s, &org, "disk", "2031-11", Some(&p2)).await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].0, p2);
    let dec_cells = cells_of(&s, &org, "disk", "2031-12", None).await;
    assert_eq!(dec_cells.len(), 1);
    assert_eq!(dec_cells[0].1.last(), Some(dec("9")));
    let v2 = cells_of(&s, &org, "disk_v2", "2031-11", None).await;
    assert_eq!(v2.len(), 1);
    assert!(
        cells_of(&s, &other_org, "disk_v2", "2031-11", None)
            .await
            .is_empty()
    );
    assert!(cells_of(&s, &org, "disk", "2031-10", None).await.is_empty());
}

/// A day with no reading carries in the last earlier reading of the month; before the
/// month's first reading the month's carry-in (the closing reading of the month before)
/// holds. November 2031, one project:
/// - carry-in 4 GB from October; 12 GB from 10 Nov 00:00; 6 GB from 20 Nov 12:00.
/// - 5 Nov (no readings, none earlier): 4 × 24 = 96 GB-hours.
/// - 15 Nov (none that day): 12 × 24 = 288 GB-hours.
/// - 20 Nov: 12 × 12 + 6 × 12 = 216 GB-hours.
/// - The month: 4 × 216 h + 12 × 252 h + 6 × 252 h = 864 + 3,024 + 1,512 = 5,400 GB-hours,
///   closing on 6 GB; December with no readings: 6 × 744 = 4,464 GB-hours.
pub async fn a_period_carries_in_the_last_earlier_reading<F: ReadingFactory>(f: &F) {
    let s = f.open().await;
    let (org, p) = (fresh_org(), fresh_project());
    s.put_readings(&[
        reading(&org, &p, "disk", "2031-11-20T12:00:00Z", "6"),
        reading(&org, &p, "disk", "2031-11-10T00:00:00Z", "12"),
    ])
    .await
    .unwrap();
    let cells = cells_of(&s, &org, "disk", "2031-11", Some(&p)).await;
    let carry = Some("4");
    let day = |d: u32| {
        let start = ts(&format!("2031-11-{d:02}T00:00:00Z"));
        (start, start + Duration::days(1))
    };
    let days = period_totals(
        carry.map(dec),
        cells.iter().map(|(_, c)| c),
        &[day(5), day(15), day(20)],
    )
    .unwrap();
    assert_eq!(days, [dec("96"), dec("288"), dec("216")]);
    let nov = Month::parse("2031-11").unwrap();
    let m = month_total(carry.map(dec), cells.iter().map(|(_, c)| c), nov, nov.end()).unwrap();
    assert_eq!(m.value_hours, dec("5400"));
    assert_eq!(m.closing, Some(dec("6")));
    let dec_month = nov.next();
    let next = cells_of(&s, &org, "disk", "2031-12", Some(&p)).await;
    let d = month_total(
        m.closing,
        next.iter().map(|(_, c)| c),
        dec_month,
        dec_month.end(),
    )
    .unwrap();
    assert_eq!(d.value_hours, dec("4464"));
}

/// Eight handles write the same second at once, values 1 to 8, twice each: the cell holds
/// 8, as any order of the same writes would leave it.
pub async fn concurrent_writers_of_one_second_keep_the_larger<F: ReadingFactory>(f: &F) {
    let (org, p) = (fresh_org(), fresh_project());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..2 {
        for v in 1..=8 {
            let s = f.open().await;
            let r = reading(&org, &p, "disk", "2031-11-26T12:34:56Z", &v.to_string());
            tasks.spawn(async move { s.put_readings(&[r]).await });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let s = f.open().await;
    let cells = cells_of(&s, &org, "disk", "2031-11", Some(&p)).await;
    assert_eq!(cells.len(), 1);
    let readings: Vec<(i64, Decimal)> = cells[0].1.readings().collect();
    assert_eq!(
        readings,
        vec![(ts("2031-11-26T12:34:56Z").timestamp(), dec("8"))]
    );
}

/// A series key (time-weighted meters have no dimensions) and a negative reading are a
/// caller's bug, refused before anything is written.
pub async fn a_store_refuses_readings_it_must_never_write<F: ReadingFactory>(f: &F) {
    let s = f.open().await;
    let (org, p) = (fresh_org(), fresh_project());
    let mut series = reading(&org, &p, "disk", "2031-11-26T12:00:00Z", "1");
    series.meter = meter("disk").series(&[("region", "eu")]);
    let mut negative = reading(&org, &p, "disk", "2031-11-26T13:00:00Z", "1");
    negative.value = -negative.value;
    let fine = reading(&org, &p, "disk", "2031-11-26T11:00:00Z", "1");
    for bad in [series, negative] {
        let got = s.put_readings(&[fine.clone(), bad]).await;
        assert!(matches!(got, Err(StoreError::Corrupt(_))), "{got:?}");
    }
    assert!(cells_of(&s, &org, "disk", "2031-11", None).await.is_empty());
}

/// The org's total over its projects, priced at $0.00015 per GB-hour and rounded to the
/// cent as an invoice line is.
fn invoice_line(totals: &std::collections::BTreeMap<ProjectId, MonthTotal>) -> Decimal {
    let gb_hours: Decimal = totals.values().map(|t| t.value_hours).sum();
    let price = Pricing::PerUnit {
        unit_price: dec("0.00015"),
    };
    Money::new(price.price(gb_hours).unwrap().amount)
        .round_to_minor()
        .amount()
}

/// Asserts a month's GB-hours and closing reading of each project (in project order) and
/// the org's invoice line ([`invoice_line`]). A failure points at the caller's line.
#[track_caller]
fn assert_month(
    totals: &std::collections::BTreeMap<ProjectId, MonthTotal>,
    projects: [(&str, &str); 2],
    line: &str,
) {
    let figures: Vec<(Decimal, Option<Decimal>)> = totals
        .values()
        .map(|t| (t.value_hours, t.closing))
        .collect();
    let want: Vec<_> = projects
        .iter()
        .map(|(hours, closing)| (dec(hours), Some(dec(closing))))
        .collect();
    assert_eq!(figures, want);
    assert_eq!(invoice_line(totals), dec(line));
}

/// A storage meter billed per GB-hour over October and November 2031, two projects, no
/// carry-in into October (a new meter), read from the store as month close reads it:
/// - October (744 h). Project A: 100 GB from 1 Oct 00:00, 40 GB from 16 Oct 00:00 (the
///   batch replayed): 100 × 360 h + 40 × 384 h = 36,000 + 15,360 = 51,360 GB-hours, closing
///   on 40. Project B: 20 GB from 31 Oct 12:00: 20 × 12 h = 240, closing on 20. The org:
///   51,600 GB-hours × $0.00015 = $7.74.
/// - November (720 h), no readings: the closing readings carried in hold all month:
///   40 × 720 + 20 × 720 = 28,800 + 14,400 = 43,200 GB-hours = $6.48, closing on 40 and 20.
/// - The upcoming invoice on 15 Nov 12:00 (348 h in): 60 × 348 = 20,880 GB-hours = $3.132,
///   $3.13.
///
/// Planted faults the figures catch: November without the carry ($0.00), November carrying
/// October's first reading instead of its closing one (100 and 20 GB: 86,400 GB-hours,
/// $12.96), and a reading applied twice as a sum would (the 40 GB second holding 80 GB:
/// 100 × 360 + 80 × 384 = 66,720 GB-hours for A, $10.04 for the org).
pub async fn a_storage_meter_is_priced_per_gb_hour_over_two_months<F: ReadingFactory>(f: &F) {
    let s = f.open().await;
    let (org, mut a, mut b) = (fresh_org(), fresh_project(), fresh_project());
    if b < a {
        std::mem::swap(&mut a, &mut b);
    }
    let storage = meter("storage_gb");
    let batch = [
        reading(&org, &a, "storage_gb", "2031-10-16T00:00:00Z", "40"),
        reading(&org, &b, "storage_gb", "2031-10-31T12:00:00Z", "20"),
        reading(&org, &a, "storage_gb", "2031-10-01T00:00:00Z", "100"),
    ];
    s.put_readings(&batch).await.unwrap();
    s.put_readings(&batch).await.unwrap();
    let (oct, nov) = (
        Month::parse("2031-10").unwrap(),
        Month::parse("2031-11").unwrap(),
    );
    let none = CarryIns::new();

    let october = month_totals(&s, &org, &storage, oct, &none, oct.end())
        .await
        .unwrap();
    assert_month(&october, [("51360", "40"), ("240", "20")], "7.74");

    // What month close records with October's report: the closing readings.
    let carry: CarryIns = october
        .iter()
        .filter_map(|(p, t)| t.closing.map(|c| (p.clone(), c)))
        .collect();
    let november = month_totals(&s, &org, &storage, nov, &carry, nov.end())
        .await
        .unwrap();
    assert_month(&november, [("28800", "40"), ("14400", "20")], "6.48");
    let so_far = month_totals(&s, &org, &storage, nov, &carry, ts("2031-11-15T12:00:00Z"))
        .await
        .unwrap();
    assert_eq!(invoice_line(&so_far), dec("3.13"));
    // The usage API's view of November: one month bucket, org-wide and of project B.
    let whole = [(nov.start(), nov.end())];
    let usage = period_usage(&s, &org, &storage, nov, None, &carry, &whole).await;
    assert_eq!(usage.unwrap(), [dec("43200")]);
    let of_b = period_usage(&s, &org, &storage, nov, Some(&b), &carry, &whole).await;
    assert_eq!(of_b.unwrap(), [dec("14400")]);

    // Planted faults: each moves the figure the checks above pin to the cent.
    let lost = month_totals(&s, &org, &storage, nov, &none, nov.end())
        .await
        .unwrap();
    assert_eq!(invoice_line(&lost), dec("0.00"));
    let first: CarryIns = [(a.clone(), dec("100")), (b.clone(), dec("20"))].into();
    let wrong = month_totals(&s, &org, &storage, nov, &first, nov.end())
        .await
        .unwrap();
    assert_eq!(invoice_line(&wrong), dec("12.96"));
    let mut doubled = s
        .month_readings(&MonthReadingsQuery {
            org: &org,
            meter: &storage,
            month: oct,
            project: Some(&a),
        })
        .await
        .unwrap();
    let at = ts("2031-10-16T00:00:00Z");
    for (_, cell) in doubled.iter_mut().filter(|(_, c)| c.hour() == at) {
        cell.insert(at, dec("80")).unwrap();
    }
    let summed = month_total(None, doubled.iter().map(|(_, c)| c), oct, oct.end()).unwrap();
    assert_eq!(summed.value_hours, dec("66720"));
    let mut with_b = october.clone();
    with_b.insert(a.clone(), summed);
    assert_eq!(invoice_line(&with_b), dec("10.04"));
}

/// Where a batch's process dies, each batch failing there.
enum Crash {
    /// Before the ledger transaction: nothing of the batch is applied.
    BeforeApply,
    /// After the ledger transaction and before the batch's readings were written.
    AfterApply,
}

#[async_trait::async_trait]
impl tally_store::hooked::BatchHook for Crash {
    async fn apply_batch(
        &self,
        store: &dyn tally_core::ports::UsageStore,
        events: &[tally_core::Event],
    ) -> Result<tally_core::ports::ApplyReport, StoreError> {
        match self {
            Crash::BeforeApply => Err(StoreError::Unavailable("crashed before the apply".into())),
            Crash::AfterApply => {
                store.apply_batch(events).await?;
                Err(StoreError::Unavailable("crashed after the apply".into()))
            }
        }
    }
}

/// The day of 26 November 2031 of `storage_gb`, org-wide, in GB-hours, with no carry-in.
async fn day_26<S: ReadingStore>(s: &S, org: &OrgId) -> Decimal {
    let day = [(ts("2031-11-26T00:00:00Z"), ts("2031-11-27T00:00:00Z"))];
    let month = Month::parse("2031-11").unwrap();
    let (m, none) = (meter("storage_gb"), CarryIns::new());
    period_usage(s, org, &m, month, None, &none, &day)
        .await
        .unwrap()[0]
}

/// The aggregator applies a batch, then writes the readings of the events the ledger
/// counted. A crash before the apply leaves neither counters nor readings; a crash between
/// the apply and the readings leaves the counters and no reading (the record is not
/// acknowledged); the redelivered record is all identical duplicates, which write the
/// readings, and a second redelivery changes nothing. At the end the day is the
/// hand-worked 10 GB from 00:00, 30 GB from 06:00, 5 GB from 18:00 = 10·6 + 30·12 + 5·6 =
/// 450 GB-hours, never a reading counted twice (a replay as a sum would hold 20, 60 and
/// 10 GB: 900), and the counters are one fold of the events, the month's holding the
/// latest reading, 5 GB, as a `latest` meter's does.
pub async fn a_crash_between_apply_and_readings_is_repaired_by_redelivery<F: ReadingFactory>(
    f: &F,
) {
    use tally_aggregator::{RecordInput, RecordOutcome, apply_records};
    let store: std::sync::Arc<F::Store> = std::sync::Arc::new(f.open().await);
    let (org, p) = (fresh_org(), fresh_project());
    let events = [
        event(&org, &p, "r1", "storage_gb", "10", "2031-11-26T00:00:00Z"),
        event(&org, &p, "r2", "storage_gb", "30", "2031-11-26T06:00:00Z"),
        event(&org, &p, "r3", "storage_gb", "5", "2031-11-26T18:00:00Z"),
    ];
    let input = [RecordInput::Decoded {
        events: &events,
        unreadable: &[],
        org: None,
    }];
    let month = Month::parse("2031-11").unwrap();

    let crashing = tally_store::hooked::Hooked::new(store.clone(), Crash::BeforeApply);
    let out = apply_records(&crashing, None, &input).await;
    assert!(matches!(out[0], RecordOutcome::Retry { .. }), "{out:?}");
    assert_eq!(day_26(store.as_ref(), &org).await, Decimal::ZERO);
    assert!(
        stored_counter_map(store.as_ref(), &org, month)
            .await
            .is_empty()
    );

    let crashing = tally_store::hooked::Hooked::new(store.clone(), Crash::AfterApply);
    let out = apply_records(&crashing, None, &input).await;
    assert!(matches!(out[0], RecordOutcome::Retry { .. }), "{out:?}");
    assert_eq!(day_26(store.as_ref(), &org).await, Decimal::ZERO);
    assert_eq!(
        stored_counter_map(store.as_ref(), &org, month).await,
        expected_counters(&events)
    );

    let out = apply_records(store.as_ref(), None, &input).await;
    assert_eq!(out, [RecordOutcome::Duplicate]);
    assert_eq!(day_26(store.as_ref(), &org).await, Decimal::from(450));
    let out = apply_records(store.as_ref(), None, &input).await;
    assert_eq!(out, [RecordOutcome::Duplicate]);
    assert_eq!(day_26(store.as_ref(), &org).await, Decimal::from(450));
    let counters = stored_counter_map(store.as_ref(), &org, month).await;
    assert_eq!(counters, expected_counters(&events));
    let month_key = counters.iter().find(|(k, _)| {
        k.project.is_none() && k.granularity == tally_core::period::Granularity::Month
    });
    assert_eq!(month_key.map(|(_, v)| *v), Some(Decimal::from(5)));
}

/// A duplicate changes nothing, readings included: a resend of a counted id with other
/// contents (`duplicate_conflict`) writes no reading, whether it names the same second with
/// a larger value (which would win the second) or another second. Batch 1 counts 10 GB at
/// 00:00 and 30 GB at 06:00; batch 2 resends r1 as it was (an identical duplicate), r2 as
/// 80 GB at 06:00 (a conflict) and a new r3, 5 GB at 18:00; batch 3 resends r3 as 0 GB at
/// 12:00 (a conflict). The day stays 10·6 + 30·12 + 5·6 = 450 GB-hours. Planted fault:
/// writing the conflicting resends' readings would make it 10·6 + 80·6 + 0·6 + 5·6 = 570.
pub async fn a_conflicting_resend_writes_no_reading<F: ReadingFactory>(f: &F) {
    use tally_aggregator::{RecordInput, RecordOutcome, apply_records};
    let s = f.open().await;
    let (org, p) = (fresh_org(), fresh_project());
    let e = |id: &str, q: &str, at: &str| event(&org, &p, id, "storage_gb", q, at);
    let batches = [
        vec![
            e("r1", "10", "2031-11-26T00:00:00Z"),
            e("r2", "30", "2031-11-26T06:00:00Z"),
        ],
        vec![
            e("r1", "10", "2031-11-26T00:00:00Z"),
            e("r2", "80", "2031-11-26T06:00:00Z"),
            e("r3", "5", "2031-11-26T18:00:00Z"),
        ],
        vec![e("r3", "0", "2031-11-26T12:00:00Z")],
    ];
    let want = [
        RecordOutcome::Applied,
        RecordOutcome::Applied,
        RecordOutcome::Duplicate,
    ];
    for (events, want) in batches.iter().zip(want) {
        let input = [RecordInput::Decoded {
            events,
            unreadable: &[],
            org: None,
        }];
        assert_eq!(apply_records(&s, None, &input).await, [want]);
    }
    assert_eq!(day_26(&s, &org).await, Decimal::from(450));
    let planted = [
        reading(&org, &p, "storage_gb", "2031-11-26T06:00:00Z", "80"),
        reading(&org, &p, "storage_gb", "2031-11-26T12:00:00Z", "0"),
    ];
    s.put_readings(&planted).await.unwrap();
    assert_eq!(day_26(&s, &org).await, Decimal::from(570));
}
