//! The conformance suite of [`AllowanceStore`]: shared fixed-window allowances whose total
//! taken never passes the cap, whoever asks. Each test takes handles onto one backing store
//! (a second handle is like a second process) and uses fresh scopes, so backends may share
//! a table between tests and runs.
//!
//! Run on the memory store (`tests/memory_conformance.rs`) and DynamoDB
//! (`tests/shared_limits_aws.rs`). SQLite has no implementation: `tally serve` is one
//! process and keeps its limits in memory, exactly (see `tally_ingest::shared`).

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use tally_core::ports::{AllowanceRequest, AllowanceStore, AllowanceWindow, StoreError};

use super::fixtures::{dec, random_hex, ts};

fn now() -> DateTime<Utc> {
    ts("2026-11-26T12:00:00Z")
}

fn window(scope: &str, window: &str) -> AllowanceWindow {
    AllowanceWindow {
        scope: scope.to_owned(),
        window: window.to_owned(),
        expires_at: now() + TimeDelta::seconds(2),
    }
}

/// Grants are what was asked while the cap allows, then what is left, then zero; another
/// window or another scope starts afresh; fractions are kept exactly.
pub async fn grants_stop_at_the_cap(s: &dyn AllowanceStore) {
    let scope = format!("RATE#key_{}", random_hex());
    let w = window(&scope, "1790000000");
    let take = |want: &str| {
        let w = w.clone();
        let want = dec(want);
        async move {
            s.take_allowance(&AllowanceRequest::new(&w, dec("10"), want, now()))
                .await
                .unwrap()
        }
    };
    assert_eq!(take("7").await.granted, dec("7"));
    assert_eq!(take("5").await.granted, dec("3"), "only what is left");
    let none = take("1").await;
    assert_eq!(none.granted, Decimal::ZERO, "the cap is taken");
    let next = window(&scope, "1790000002");
    let fresh = s
        .take_allowance(&AllowanceRequest::new(&next, dec("10"), dec("25"), now()))
        .await
        .unwrap();
    assert_eq!(fresh.granted, dec("10"), "a new window, at most the cap");
    assert!(fresh.writes >= 1);
    let other = window(&format!("RATE#key_{}", random_hex()), "1790000000");
    assert_eq!(
        s.take_allowance(&AllowanceRequest::new(&other, dec("10"), dec("4"), now()))
            .await
            .unwrap()
            .granted,
        dec("4")
    );
    let plan = window(&format!("PLAN#org_{}#storage_gb", random_hex()), "2026-11");
    for want in ["0.75", "0.75"] {
        let g = s
            .take_allowance(&AllowanceRequest::new(&plan, dec("1.5"), dec(want), now()))
            .await
            .unwrap();
        assert_eq!(g.granted, dec(want));
    }
    let g = s
        .take_allowance(&AllowanceRequest::new(
            &plan,
            dec("1.5"),
            dec("0.000000001"),
            now(),
        ))
        .await
        .unwrap();
    assert_eq!(g.granted, Decimal::ZERO);
}

/// Many handles taking at once never take more than the cap between them, and take all of
/// it when they ask for more.
pub async fn racing_takes_never_pass_the_cap(handles: Vec<Arc<dyn AllowanceStore>>) {
    let w = window(&format!("RATE#key_{}", random_hex()), "1790000000");
    let cap = dec("50");
    let mut tasks = tokio::task::JoinSet::new();
    for (i, h) in handles.into_iter().enumerate() {
        let w = w.clone();
        tasks.spawn(async move {
            let mut got = Decimal::ZERO;
            for j in 0..10 {
                let want = Decimal::from(1 + (i + j) % 3);
                let g = h
                    .take_allowance(&AllowanceRequest::new(&w, cap, want, now()))
                    .await
                    .unwrap();
                assert!(g.granted <= want && g.granted >= Decimal::ZERO);
                got += g.granted;
            }
            got
        });
    }
    let mut total = Decimal::ZERO;
    while let Some(got) = tasks.join_next().await {
        total += got.unwrap();
    }
    assert_eq!(total, cap, "all of the cap and not a unit more");
}

/// Out-of-bounds requests are refused, naming the field, and take nothing.
pub async fn bad_requests_are_refused(s: &dyn AllowanceStore) {
    let w = window(&format!("RATE#key_{}", random_hex()), "1");
    let e = s
        .take_allowance(&AllowanceRequest::new(&w, dec("10"), Decimal::ZERO, now()))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Corrupt(m) if m.contains("want")),
        "{e}"
    );
    let long = window(&"x".repeat(300), "1");
    let e = s
        .take_allowance(&AllowanceRequest::new(&long, dec("10"), dec("1"), now()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("scope"), "{e}");
    let g = s
        .take_allowance(&AllowanceRequest::new(&w, dec("10"), dec("10"), now()))
        .await
        .unwrap();
    assert_eq!(g.granted, dec("10"), "the refused requests took nothing");
}
