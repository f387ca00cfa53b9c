//! The dimensions conformance suite: the [`SeriesRegistry`] and the series counters of
//! dimensioned meters on every backend, through the storage suite's [`StoreFactory`].
//!
//! What it pins down is what ingest's cardinality bound and every total rely on: a series
//! is registered once per (org, meter, month), the bound is exact even when many handles
//! register at once (a `202` is never given for a series past it), other orgs, meters and
//! months have bounds of their own, and a store refuses what a caller must never ask
//! (a bare meter as a series, a bound out of range). Tests use fresh org ids, so backends
//! may share tables between tests and runs.

use std::collections::BTreeSet;

use rust_decimal::Decimal;
use tally_core::event::Event;
use tally_core::period::Granularity;
use tally_core::ports::{
    ApplyOutcome, CounterQuery, MeterMonth, NewSeries, Registration, SeriesRegistry, StoreError,
    UsageStore,
};
use tally_core::{MeterName, Month, OrgId, ProjectId};

use super::fixtures::{dec, event, first_ledger_page, fresh_org, fresh_project, month, ts};
use super::storage::{SeriesFactory, StoreFactory};

/// Expands to one `#[tokio::test]` per dimensions conformance test, each building its
/// factory with the given expression (evaluated inside the async test, so it may `.await`).
///
/// ```text
/// tally_tests::dimensions_conformance!(SqliteFactory::new());
/// ```
#[macro_export]
macro_rules! dimensions_conformance {
    ($factory:expr) => {
        $crate::conformance_tests!(dimensions, $factory);
    };
}

/// Registers the series `model` of `meter` for `org` and `month` under `bound`.
async fn reg<S: SeriesRegistry>(
    s: &S,
    org: &OrgId,
    month: Month,
    meter: &str,
    model: &str,
    bound: u32,
) -> Registration {
    s.register_series(&NewSeries::new(org, month, &series(meter, model), bound))
        .await
        .unwrap()
}

fn series(meter: &str, model: &str) -> MeterName {
    MeterName::parse(meter).unwrap().series(&[("model", model)])
}

/// New, then known; past the bound full (and not registered); listed in key order from a
/// second handle; every (org, meter, month) has a bound of its own.
pub async fn series_are_registered_once_and_bounded<F: SeriesFactory>(f: &F) {
    let s = f.open().await;
    let other = f.open().await;
    let org = fresh_org();
    let (nov, dec) = (month("2031-11"), month("2031-12"));
    let llm = MeterName::parse("llm_tokens").unwrap();
    assert_eq!(
        s.list_series(&MeterMonth::new(&org, &llm, nov))
            .await
            .unwrap(),
        vec![]
    );

    for model in ["gpt-4", "claude", "mistral:7b"] {
        let r = reg(&s, &org, nov, "llm_tokens", model, 3).await;
        assert_eq!(r, Registration::New, "{model}");
    }
    let again = reg(&other, &org, nov, "llm_tokens", "claude", 3).await;
    assert_eq!(again, Registration::Known);
    // The fourth series is refused and leaves nothing behind; known ones still pass.
    let full = reg(&s, &org, nov, "llm_tokens", "llama", 3).await;
    assert_eq!(full, Registration::Full);
    let known = reg(&s, &org, nov, "llm_tokens", "gpt-4", 3).await;
    assert_eq!(known, Registration::Known);
    let listed = other
        .list_series(&MeterMonth::new(&org, &llm, nov))
        .await
        .unwrap();
    assert_eq!(
        listed,
        vec![
            series("llm_tokens", "claude"),
            series("llm_tokens", "gpt-4"),
            series("llm_tokens", "mistral:7b"),
        ]
    );
    // A raised bound (a new catalogue version) lets the next one in.
    let raised = reg(&s, &org, nov, "llm_tokens", "llama", 4).await;
    assert_eq!(raised, Registration::New);

    // Another month, another meter (even one whose name extends this one's) and another
    // org each start from zero.
    let another_org = fresh_org();
    let fresh_starts = [
        (&org, dec, "llm_tokens"),
        (&org, nov, "llm_tokens_v2"),
        (&another_org, nov, "llm_tokens"),
    ];
    for (who, month, meter) in fresh_starts {
        let r = reg(&s, who, month, meter, "llama", 1).await;
        assert_eq!(r, Registration::New, "{who} {month} {meter}");
    }
    assert_eq!(
        s.list_series(&MeterMonth::new(&org, &llm, nov))
            .await
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        s.list_series(&MeterMonth::new(&org, &llm, dec))
            .await
            .unwrap()
            .len(),
        1
    );

    // A bare meter is not a series, and a bound out of range is a caller's bug.
    let bare = s.register_series(&NewSeries::new(&org, nov, &llm, 3)).await;
    assert!(matches!(bare, Err(StoreError::Corrupt(_))), "{bare:?}");
    for bound in [0, tally_core::dimension::MAX_MAX_SERIES + 1] {
        let r = s
            .register_series(&NewSeries::new(
                &org,
                nov,
                &series("llm_tokens", "x"),
                bound,
            ))
            .await;
        assert!(matches!(r, Err(StoreError::Corrupt(_))), "{bound}: {r:?}");
    }
}

/// Twelve handles register twelve distinct series and one shared series at once under a
/// bound of five: exactly five distinct series are made, the shared one at most once, and
/// the list is exactly what was answered `New`.
pub async fn the_bound_is_exact_under_concurrent_registrations<F: SeriesFactory>(f: &F) {
    let org = fresh_org();
    let nov = month("2031-11");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = f.open().await;
        let org = org.clone();
        tasks.push(tokio::spawn(async move {
            let mine = series("llm_tokens", &format!("m{i:02}"));
            let a = s
                .register_series(&NewSeries::new(&org, nov, &mine, 5))
                .await
                .unwrap();
            let shared = series("llm_tokens", "shared");
            let b = s
                .register_series(&NewSeries::new(&org, nov, &shared, 5))
                .await
                .unwrap();
            [(mine, a), (shared, b)]
        }));
    }
    let mut made = BTreeSet::new();
    let mut shared_new = 0;
    for t in tasks {
        for (key, r) in t.await.unwrap() {
            if r == Registration::New {
                if key.as_str().contains("shared") {
                    shared_new += 1;
                }
                assert!(made.insert(key.clone()), "{key} made twice");
            }
        }
    }
    assert!(
        shared_new <= 1,
        "the shared series was made {shared_new} times"
    );
    assert_eq!(made.len(), 5, "{made:?}");
    let s = f.open().await;
    let listed: BTreeSet<MeterName> = s
        .list_series(&MeterMonth::new(
            &org,
            &MeterName::parse("llm_tokens").unwrap(),
            nov,
        ))
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(listed, made);
}

/// An event of `meter` counted in the series `model` of it (what ingest makes of an event
/// of a meter with dimension `model`).
fn in_series(mut e: Event, model: &str) -> Event {
    e.meter = e.meter.series(&[("model", model)]);
    e
}

/// The November 2031 month value of `meter` (a bare meter: its total; a series key: that
/// series), org-wide or of one project; zero when nothing is stored.
async fn month_value<S: UsageStore>(
    s: &S,
    org: &OrgId,
    project: Option<&ProjectId>,
    meter: &MeterName,
) -> Decimal {
    let got = s
        .counter_series(&CounterQuery {
            org: org.clone(),
            project: project.cloned(),
            meter: meter.clone(),
            granularity: Granularity::Month,
            from: ts("2031-11-01T00:00:00Z"),
            to: ts("2031-12-01T00:00:00Z"),
        })
        .await
        .unwrap();
    assert!(got.len() <= 1, "{got:?}");
    got.first().map_or(Decimal::ZERO, |v| v.value)
}

/// A bare meter's counters are the total over its series (a sum adds them, a max takes the
/// largest), org-wide and per project, in every granularity; a series key reads that series
/// alone; a meter whose name extends this one's (`llm_tokens_v2`) is not taken in; and the
/// counters read back as stored keep their series keys (reconcile compares them with the
/// ledger, which holds the same keys).
pub async fn a_meters_total_is_over_its_series<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let (p1, p2) = (fresh_project(), fresh_project());
    let at = "2031-11-03T10:15:00Z";
    let events = vec![
        in_series(event(&org, &p1, "a", "llm_tokens", "100", at), "gpt-4"),
        in_series(
            event(&org, &p1, "b", "llm_tokens", "20.5", "2031-11-03T11:00:00Z"),
            "gpt-4",
        ),
        in_series(event(&org, &p2, "c", "llm_tokens", "7", at), "claude"),
        in_series(
            event(&org, &p1, "d", "llm_tokens", "3", "2031-11-20T00:00:00Z"),
            "claude",
        ),
        // Another meter sharing the prefix, with and without a series.
        event(&org, &p1, "e", "llm_tokens_v2", "1000", at),
        in_series(event(&org, &p1, "f", "llm_tokens_v2", "1000", at), "gpt-4"),
        // A max meter over two series: its total is the largest.
        in_series(event(&org, &p1, "g", "storage_bytes", "40", at), "eu"),
        in_series(event(&org, &p2, "h", "storage_bytes", "70", at), "us"),
        in_series(event(&org, &p1, "i", "storage_bytes", "55", at), "us"),
    ];
    let report = s.apply_batch(&events).await.unwrap();
    assert_eq!(report.applied(), events.len(), "{report:?}");

    let llm = MeterName::parse("llm_tokens").unwrap();
    let gpt = llm.series(&[("model", "gpt-4")]);
    let claude = llm.series(&[("model", "claude")]);
    // 100 + 20.5 + 7 + 3
    assert_eq!(month_value(&s, &org, None, &llm).await, dec("130.5"));
    assert_eq!(month_value(&s, &org, None, &gpt).await, dec("120.5"));
    assert_eq!(month_value(&s, &org, None, &claude).await, dec("10"));
    // p1: 100 + 20.5 + 3; p2: 7
    assert_eq!(month_value(&s, &org, Some(&p1), &llm).await, dec("123.5"));
    assert_eq!(month_value(&s, &org, Some(&p2), &llm).await, dec("7"));
    assert_eq!(month_value(&s, &org, Some(&p2), &gpt).await, Decimal::ZERO);
    let v2 = MeterName::parse("llm_tokens_v2").unwrap();
    assert_eq!(month_value(&s, &org, None, &v2).await, dec("2000"));
    let storage = MeterName::parse("storage_bytes").unwrap();
    assert_eq!(month_value(&s, &org, None, &storage).await, dec("70"));
    assert_eq!(month_value(&s, &org, Some(&p1), &storage).await, dec("55"));

    // Hours and days add up over series too: Nov 3 10:00 holds 100 (gpt-4) + 7 (claude).
    let hours = s
        .counter_series(&CounterQuery {
            org: org.clone(),
            project: None,
            meter: llm.clone(),
            granularity: Granularity::Hour,
            from: ts("2031-11-03T00:00:00Z"),
            to: ts("2031-11-04T00:00:00Z"),
        })
        .await
        .unwrap();
    let hours: Vec<(String, Decimal)> = hours
        .into_iter()
        .map(|v| (v.start.to_rfc3339(), v.value))
        .collect();
    assert_eq!(
        hours,
        vec![
            ("2031-11-03T10:00:00+00:00".to_owned(), dec("107")),
            ("2031-11-03T11:00:00+00:00".to_owned(), dec("20.5")),
        ]
    );

    // Stored counters keep the series keys, so they agree with the ledger's events.
    let stored = s
        .stored_counters(&org, Month::parse("2031-11").unwrap())
        .await
        .unwrap();
    let month_of = |m: &MeterName| {
        stored
            .iter()
            .find(|(k, _)| {
                k.project.is_none() && k.granularity == Granularity::Month && k.meter == *m
            })
            .map(|(_, v)| *v)
    };
    assert_eq!(month_of(&gpt), Some(dec("120.5")));
    assert_eq!(month_of(&claude), Some(dec("10")));
    assert_eq!(month_of(&llm), None);
}

/// The `counter_overflow` limit (`COUNTER_LIMIT`, 10^19) holds for a meter's month total
/// over all its series, not series by series: two series each well under the limit whose
/// sum would pass it see the event that crosses it refused (and left out of the ledger),
/// the rest of the batch counted, and nothing counted twice; a meter whose name extends
/// this one's has a total of its own. A second handle (another aggregator) meets the same
/// full total.
pub async fn the_counter_limit_holds_for_a_meters_total_over_its_series<F: StoreFactory>(f: &F) {
    use ApplyOutcome::{Applied, Overflow};
    const MAX: &str = "999999999999999999"; // 10^18 − 1, the largest quantity
    let (s, s2) = (f.open().await, f.open().await);
    let org = fresh_org();
    let p = fresh_project();
    let at = "2031-11-05T10:00:00Z";
    let llm = |id: String, q: &str, model: &str| {
        in_series(event(&org, &p, &id, "llm_tokens", q, at), model)
    };
    // gpt-4: 6 × (10^18 − 1) = 6 × 10^18 − 6, under the limit alone.
    let first: Vec<Event> = (0..6).map(|i| llm(format!("g{i}"), MAX, "gpt-4")).collect();
    let report = s.apply_batch(&first).await.unwrap();
    assert_eq!(report.outcomes, vec![Applied; 6]);
    // Then claude 4 × (10^18 − 1) = 4 × 10^18 − 4 brings the meter to
    // 10^19 − 10 (each series still far under 10^19). Then claude 11 would make it
    // 10^19 + 1: refused; gpt-4 10 makes it exactly 10^19: counted; one more unit of
    // 10^-9 on gpt-4 is refused; `llm_tokens_v2` (another meter) is counted.
    let mut second: Vec<Event> = (0..4)
        .map(|i| llm(format!("c{i}"), MAX, "claude"))
        .collect();
    second.extend([
        llm("c-over".into(), "11", "claude"),
        llm("g-last".into(), "10", "gpt-4"),
        llm("g-over".into(), "0.000000001", "gpt-4"),
        in_series(event(&org, &p, "v2", "llm_tokens_v2", MAX, at), "gpt-4"),
    ]);
    // The same handle: on DynamoDB another one would hold none of the room this one
    // reserved ahead, and meet the limit earlier (see `store/src/dynamodb/guard.rs`).
    let report = s.apply_batch(&second).await.unwrap();
    assert_eq!(
        report.outcomes,
        [
            Applied, Applied, Applied, Applied, Overflow, Applied, Overflow, Applied
        ]
    );

    let base = MeterName::parse("llm_tokens").unwrap();
    let total = month_value(&s, &org, None, &base).await;
    assert_eq!(total, dec("10000000000000000000"), "exactly the limit");
    // gpt-4: 6 × 10^18 − 6 + 10; claude: 4 × 10^18 − 4. Each counted once.
    let gpt = month_value(&s, &org, None, &base.series(&[("model", "gpt-4")])).await;
    assert_eq!(gpt, dec("6000000000000000004"));
    let claude = month_value(&s, &org, None, &base.series(&[("model", "claude")])).await;
    assert_eq!(claude, dec("3999999999999999996"));
    let v2 = month_value(&s, &org, None, &MeterName::parse("llm_tokens_v2").unwrap()).await;
    assert_eq!(v2, dec(MAX));
    let page = first_ledger_page(&s, &org, Month::parse("2031-11").unwrap(), 100).await;
    let mut ids: Vec<&str> = page.events.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        [
            "c0", "c1", "c2", "c3", "g-last", "g0", "g1", "g2", "g3", "g4", "g5", "v2"
        ],
        "refused events are not in the ledger"
    );

    // Either handle, either series: nothing more fits this month.
    let again = [
        llm("c-over".into(), "11", "claude"),
        llm("m1".into(), "1", "mistral"),
    ];
    for handle in [&s, &s2] {
        let report = handle.apply_batch(&again).await.unwrap();
        assert_eq!(report.outcomes, [Overflow, Overflow]);
    }
}
