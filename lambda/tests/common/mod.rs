//! Fixtures the Lambda handler tests share, and the submodules of the Lambda runtime test
//! (`runtime_api_aws.rs`): reading and evaluating `template.yaml` ([`template`], also the
//! agreement test's), creating its stack on the emulator ([`deploy`]), and a local Lambda
//! Runtime API running a function binary ([`runtime_api`]).

// Each test file uses some of these.
#![allow(dead_code)]

pub mod deploy;
pub mod runtime_api;
pub mod template;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tally_billing::Catalogue;
use tally_core::ids::OrgId;
use tally_core::period::Month;
use tally_core::plan::PlanId;
use tally_core::ports::{FixedClock, OrgStore, ReportStore, TenantStore, UsageStore, UserStore};
use tally_lambda::handlers::{BillingPorts, BillingRun, bill};
use tally_tests::conformance::fixtures::create_owned_org;

/// The ports a billing run reads and writes, in one store (the tests' stores hold them all).
pub trait BillingStore:
    TenantStore
    + UsageStore
    + ReportStore
    + tally_core::ports::CatalogueStore
    + tally_core::ports::OverrideStore
{
}

impl<S> BillingStore for S where
    S: TenantStore
        + UsageStore
        + ReportStore
        + tally_core::ports::CatalogueStore
        + tally_core::ports::OverrideStore
{
}

/// The management API's state over `store` (its tenants and its usage) with the built-in
/// catalogue's meters, as the API function builds it.
pub fn api_state<S: TenantStore + UsageStore + 'static>(
    store: Arc<S>,
    clock: Arc<FixedClock>,
) -> tally_api::ApiState {
    let catalogue = Catalogue::builtin().unwrap();
    tally_api::ApiState::new(
        store.clone(),
        store,
        Arc::new(catalogue.meter_catalogue()),
        clock,
    )
}

/// The org "Acme" on `plan`, created at `at` with its owner, in any store.
pub async fn acme<S: UserStore + OrgStore>(store: &S, plan: PlanId, at: DateTime<Utc>) -> OrgId {
    create_owned_org(store, (7, 9), "ada@example.com", "Acme", plan, at)
        .await
        .id
}

/// The billing run (no Stripe, no deadline) at `at`, with a one-hour grace period.
pub async fn bill_at<S: BillingStore>(store: &S, at: chrono::DateTime<Utc>) -> BillingRun {
    let clock = FixedClock::at(at);
    let ports = BillingPorts::of(store, &clock);
    bill(
        ports,
        &Catalogue::builtin().unwrap(),
        Duration::from_secs(3600),
    )
    .await
    .unwrap()
}

/// Runs of `months` as the billing run reports them: (period, orgs, stored now).
pub fn runs(run: &BillingRun) -> Vec<(String, usize, usize)> {
    run.months
        .iter()
        .map(|m| (m.period.clone(), m.orgs, m.stored_now))
        .collect()
}

/// The billing function was down (or failed all its retries) on 1 December and 1 January:
/// the run on 2 January bills November and December, oldest first, after checking October
/// (billed on time) again without storing or closing anything anew.
pub async fn missed_month_ends<S: BillingStore>(store: &S) {
    let created = Utc.with_ymd_and_hms(2026, 9, 20, 0, 0, 0).unwrap();
    let acme = acme(store, PlanId::Starter, created).await;
    let (sep, oct, nov, dec) = (
        Month::parse("2026-09").unwrap(),
        Month::parse("2026-10").unwrap(),
        Month::parse("2026-11").unwrap(),
        Month::parse("2026-12").unwrap(),
    );
    // On time on 1 October and 1 November.
    let first = bill_at(store, Utc.with_ymd_and_hms(2026, 10, 1, 2, 0, 0).unwrap()).await;
    assert_eq!(runs(&first), [("2026-09".into(), 1, 1)]);
    let on_time = bill_at(store, Utc.with_ymd_and_hms(2026, 11, 1, 2, 0, 0).unwrap()).await;
    // September, closed, is checked again before October is closed.
    assert_eq!(
        runs(&on_time),
        [("2026-09".into(), 1, 0), ("2026-10".into(), 1, 1)]
    );
    let october = store.get_report(&acme, oct).await.unwrap().unwrap();

    let late = Utc.with_ymd_and_hms(2027, 1, 2, 9, 0, 0).unwrap();
    let run = bill_at(store, late).await;
    assert_eq!(
        runs(&run),
        [
            ("2026-10".into(), 1, 0),
            ("2026-11".into(), 1, 1),
            ("2026-12".into(), 1, 1),
        ]
    );
    assert_eq!(run.period.as_deref(), Some("2026-12"));
    for month in [sep, oct, nov, dec] {
        assert!(store.is_period_closed(month).await.unwrap(), "{month}");
        assert!(
            store.get_report(&acme, month).await.unwrap().is_some(),
            "{month}"
        );
    }
    // October was not billed again: its report is the one stored on 1 November.
    assert_eq!(
        store.get_report(&acme, oct).await.unwrap().unwrap(),
        october
    );
    // The next run finds nothing open and runs December alone, storing nothing.
    let again = bill_at(store, late).await;
    assert_eq!(runs(&again), [("2026-12".into(), 1, 0)]);
}

/// What a loopback alert receiver got: each request's `Tally-Signature` header and body.
pub type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A loopback alert receiver answering 204 at `path`; its URL and what it received.
pub async fn alert_receiver(path: &'static str) -> (String, Received) {
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            path,
            axum::routing::post(
                |axum::extract::State(got): axum::extract::State<Received>,
                 headers: axum::http::HeaderMap,
                 body: axum::body::Bytes| async move {
                    let signature = headers
                        .get(tally_notify::SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    got.lock().unwrap().push((signature, body.to_vec()));
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(received.clone());
    let addr = tally_tests::serve_local(app).await.unwrap();
    (format!("http://{addr}{path}"), received)
}

/// The ids of the messages a partial batch response reports as failed, in its order.
pub fn failed_ids(response: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<&str> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect()
}
