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
use tally_core::ports::{CounterQuery, Registration, SeriesRegistry, StoreError, UsageStore};
use tally_core::{MeterName, Month, OrgId, ProjectId};

use super::fixtures::{dec, event, fresh_org, fresh_project, ts};
use super::storage::StoreFactory;

/// Expands to one `#[tokio::test]` per dimensions conformance test, each building its
/// factory with the given expression (evaluated inside the async test, so it may `.await`).
///
/// ```text
/// tally_tests::dimensions_conformance!(SqliteFactory::new());
/// ```
#[macro_export]
macro_rules! dimensions_conformance {
    ($factory:expr) => {
        $crate::conformance_tests!(dimensions, $factory;
            series_are_registered_once_and_bounded,
            the_bound_is_exact_under_concurrent_registrations,
            a_meters_total_is_over_its_series,
        );
    };
}

fn month(s: &str) -> Month {
    Month::parse(s).unwrap()
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
    s.register_series(org, month, &series(meter, model), bound)
        .await
        .unwrap()
}

fn series(meter: &str, model: &str) -> MeterName {
    MeterName::parse(meter).unwrap().series(&[("model", model)])
}

/// New, then known; past the bound full (and not registered); listed in key order from a
/// second handle; every (org, meter, month) has a bound of its own.
pub async fn series_are_registered_once_and_bounded<F>(f: &F)
where
    F: StoreFactory,
    F::Store: SeriesRegistry,
{
    let s = f.open().await;
    let other = f.open().await;
    let org = fresh_org();
    let (nov, dec) = (month("2031-11"), month("2031-12"));
    let llm = MeterName::parse("llm_tokens").unwrap();
    assert_eq!(s.list_series(&org, &llm, nov).await.unwrap(), vec![]);

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
    let listed = other.list_series(&org, &llm, nov).await.unwrap();
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
    let r = reg(&s, &org, dec, "llm_tokens", "llama", 1).await;
    assert_eq!(r, Registration::New);
    let r = reg(&s, &org, nov, "llm_tokens_v2", "llama", 1).await;
    assert_eq!(r, Registration::New);
    let r = reg(&s, &fresh_org(), nov, "llm_tokens", "llama", 1).await;
    assert_eq!(r, Registration::New);
    assert_eq!(s.list_series(&org, &llm, nov).await.unwrap().len(), 4);
    assert_eq!(s.list_series(&org, &llm, dec).await.unwrap().len(), 1);

    // A bare meter is not a series, and a bound out of range is a caller's bug.
    let bare = s.register_series(&org, nov, &llm, 3).await;
    assert!(matches!(bare, Err(StoreError::Corrupt(_))), "{bare:?}");
    for bound in [0, tally_core::dimension::MAX_MAX_SERIES + 1] {
        let r = s
            .register_series(&org, nov, &series("llm_tokens", "x"), bound)
            .await;
        assert!(matches!(r, Err(StoreError::Corrupt(_))), "{bound}: {r:?}");
    }
}

/// Twelve handles register twelve distinct series and one shared series at once under a
/// bound of five: exactly five distinct series are made, the shared one at most once, and
/// the list is exactly what was answered `New`.
pub async fn the_bound_is_exact_under_concurrent_registrations<F>(f: &F)
where
    F: StoreFactory,
    F::Store: SeriesRegistry,
{
    let org = fresh_org();
    let nov = month("2031-11");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = f.open().await;
        let org = org.clone();
        tasks.push(tokio::spawn(async move {
            let mine = series("llm_tokens", &format!("m{i:02}"));
            let a = s.register_series(&org, nov, &mine, 5).await.unwrap();
            let shared = series("llm_tokens", "shared");
            let b = s.register_series(&org, nov, &shared, 5).await.unwrap();
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
        .list_series(&org, &MeterName::parse("llm_tokens").unwrap(), nov)
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
