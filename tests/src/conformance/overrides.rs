//! The price override conformance suite: [`OverrideStore`] on every backend, through the
//! storage suite's [`StoreFactory`](super::storage::StoreFactory) (any factory whose store
//! also keeps overrides).
//!
//! What it pins down is what month close and the operator commands rely on: an override is
//! written once under its id (a rerun of `tally org override set` with the same id changes
//! nothing), an org's overrides come back oldest first (the order "the newest wins" needs),
//! an end only ever moves earlier (so ending cannot reopen months, and of two racing ends
//! the earlier stands), the per-org bound and the field bounds are enforced by the store
//! itself, and an org without overrides (every org of a store from before them) reads as
//! none. Tests use fresh org ids, so backends may share tables between tests and runs.

use chrono::Duration;
use rust_decimal::Decimal;
use tally_core::overrides::{MAX_OVERRIDES_PER_ORG, OverrideChange, OverrideId, PriceOverride};
use tally_core::ports::{EndOutcome, OverrideEnd, OverrideStore, StoreError};
use tally_core::pricing::Pricing;
use tally_core::{MeterName, OrgId, PlanId};

use super::fixtures::{fresh_org, month, ts};
use super::storage::OverrideFactory;

/// Expands to one `#[tokio::test]` per override conformance test, each building its factory
/// with the given expression (evaluated inside the async test, so it may `.await`).
///
/// ```text
/// tally_tests::override_conformance!(SqliteFactory::new());
/// ```
#[macro_export]
macro_rules! override_conformance {
    ($factory:expr) => {
        $crate::conformance_tests!(overrides, $factory);
    };
}

/// The request to end `org`'s override `id` at `m` (`YYYY-MM`).
fn ending<'a>(org: &'a OrgId, id: &'a OverrideId, m: &str) -> OverrideEnd<'a> {
    OverrideEnd {
        org,
        id,
        end: month(m),
    }
}

fn id(n: u64) -> OverrideId {
    OverrideId::from_random(n.to_be_bytes())
}

fn api_calls_price(org: &OrgId, n: u64, unit_price: &str, start: &str) -> PriceOverride {
    PriceOverride {
        id: id(n),
        org_id: org.clone(),
        plan: PlanId::Pro,
        change: OverrideChange::Price {
            meter: MeterName::parse("api_calls").unwrap(),
            pricing: Pricing::PerUnit {
                unit_price: unit_price.parse().unwrap(),
            },
        },
        start: month(start),
        end: None,
        reason: Some("contract 42".into()),
        created_by: "cli".into(),
        // Created in the reverse order of their ids, so "oldest first" is not "by id".
        created_at: ts("2031-01-01T00:00:00Z") - Duration::seconds(i64::try_from(n).unwrap()),
    }
}

/// A put stores once per id, a second handle sees it, and an org's overrides list oldest
/// first; another org (and a store from before overrides) has none.
pub async fn overrides_are_written_once_and_listed_oldest_first<F: OverrideFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    assert_eq!(s.list_overrides(&org).await.unwrap(), vec![]);
    let a = api_calls_price(&org, 2, "0.8", "2031-02");
    let b = PriceOverride {
        change: OverrideChange::Included {
            meter: MeterName::parse("api_calls").unwrap(),
            quantity: Decimal::from(2_000_000),
        },
        end: Some(month("2031-06")),
        ..api_calls_price(&org, 1, "0", "2031-03")
    };
    assert!(s.put_override(&a).await.unwrap());
    assert!(s.put_override(&b).await.unwrap());
    // The same id again, with other content: refused, the first one stays.
    let again = api_calls_price(&org, 2, "0.1", "2031-02");
    assert!(!s.put_override(&again).await.unwrap());

    let other = f.open().await;
    // a was created 2 s before the base time, b 1 s before: a is the older.
    assert_eq!(other.list_overrides(&org).await.unwrap(), vec![a, b]);
    assert_eq!(other.list_overrides(&fresh_org()).await.unwrap(), vec![]);
}

/// Ending sets or brings forward the end, never pushes it later; an unknown id is
/// `NotFound`; racing ends leave the earliest.
pub async fn an_end_only_moves_earlier<F: OverrideFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let o = api_calls_price(&org, 7, "0.8", "2031-02");
    assert!(s.put_override(&o).await.unwrap());

    let ended = s
        .end_override(&ending(&org, &o.id, "2031-09"))
        .await
        .unwrap();
    let expected = PriceOverride {
        end: Some(month("2031-09")),
        ..o.clone()
    };
    assert_eq!(ended, EndOutcome::Ended(expected.clone()));
    // Later: nothing changes.
    let later = s
        .end_override(&ending(&org, &o.id, "2031-12"))
        .await
        .unwrap();
    assert_eq!(later, EndOutcome::AlreadyEnded(expected.clone()));
    assert_eq!(s.list_overrides(&org).await.unwrap(), vec![expected]);
    // Unknown id, or the id under another org.
    assert_eq!(
        s.end_override(&ending(&org, &id(999), "2031-05"))
            .await
            .unwrap(),
        EndOutcome::NotFound
    );
    assert_eq!(
        s.end_override(&ending(&fresh_org(), &o.id, "2031-05"))
            .await
            .unwrap(),
        EndOutcome::NotFound
    );

    // Racing ends from several handles: whatever the order, the earliest end stands.
    let mut tasks = Vec::new();
    for m in ["2031-08", "2031-04", "2031-06", "2031-05"] {
        let h = f.open().await;
        let (org, oid) = (org.clone(), o.id.clone());
        tasks.push(tokio::spawn(async move {
            h.end_override(&ending(&org, &oid, m)).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let listed = f.open().await.list_overrides(&org).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].end, Some(month("2031-04")));
    // Cancelled before it began: end = start covers no month and is allowed.
    let cancelled = s
        .end_override(&ending(&org, &o.id, "2031-02"))
        .await
        .unwrap();
    assert!(matches!(cancelled, EndOutcome::Ended(ref c) if !c.covers(month("2031-02"))));
    // Before the start: refused by the store, and the end stays.
    assert!(matches!(
        s.end_override(&ending(&org, &o.id, "2031-01")).await,
        Err(StoreError::Corrupt(_))
    ));
    let listed = s.list_overrides(&org).await.unwrap();
    assert_eq!(listed[0].end, Some(month("2031-02")));
}

/// Field bounds and the per-org bound are the store's to enforce too.
pub async fn bounds_are_enforced_by_the_store<F: OverrideFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let negative = api_calls_price(&org, 1, "-0.1", "2031-02");
    let e = s.put_override(&negative).await.unwrap_err();
    assert!(
        matches!(&e, StoreError::Corrupt(m) if m.contains("price.unit_price")),
        "{e}"
    );
    let backwards = PriceOverride {
        end: Some(month("2031-01")),
        ..api_calls_price(&org, 2, "0.1", "2031-02")
    };
    assert!(matches!(
        s.put_override(&backwards).await,
        Err(StoreError::Corrupt(m)) if m.contains("end")
    ));
    assert_eq!(s.list_overrides(&org).await.unwrap(), vec![]);

    for n in 0..MAX_OVERRIDES_PER_ORG {
        let o = api_calls_price(&org, 100 + n as u64, "0.5", "2031-02");
        assert!(s.put_override(&o).await.unwrap(), "override {n}");
    }
    let one_more = api_calls_price(&org, 99, "0.5", "2031-02");
    assert!(matches!(
        s.put_override(&one_more).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        s.list_overrides(&org).await.unwrap().len(),
        MAX_OVERRIDES_PER_ORG
    );
}
