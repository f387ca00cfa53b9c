//! The billing Lambda's run with Stripe (`tally_lambda::handlers::bill_and_sync`) against
//! the Stripe double, on the SQLite store (the same ports as DynamoDB): the month is closed
//! and each org gets one finalized invoice; a Stripe refusal fails the invocation (so it
//! alarms and is retried) naming the org and Stripe's message; the retry resumes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use tally_billing::Catalogue;
use tally_core::plan::PlanId;
use tally_core::ports::FixedClock;
use tally_lambda::handlers::{BillingError, BillingPorts, StripePorts, bill_and_sync};
use tally_store::sqlite::SqliteStore;
use tally_stripe::{StripeConfig, StripeProvider};
use tally_tests::stripe_double::StripeDouble;
use tally_tests::stripe_sync::{RecordingSleeper, provider};

#[tokio::test]
async fn the_billing_run_syncs_invoices_and_a_refusal_fails_the_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    let created = Utc.with_ymd_and_hms(2026, 10, 3, 0, 0, 0).unwrap();
    let org = common::acme(&store, PlanId::Starter, created).await;

    let double = StripeDouble::start().await.unwrap();
    let sleeper = RecordingSleeper::default();
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 11, 1, 2, 0, 0).unwrap());
    let ports = BillingPorts::of(&store, &clock);
    let catalogue = Catalogue::builtin().unwrap();
    let grace = Duration::from_secs(3600);

    // Stripe refuses the key: the report is stored, the invocation fails naming the org.
    let refusing = StripeProvider::new(StripeConfig {
        secret_key: "sk_test_wrong".into(),
        base_url: double.base_url(),
        timeout: Duration::from_secs(2),
    })
    .unwrap();
    let right = provider(&double);
    // Bills the month and syncs it to Stripe through `provider`.
    let run = |provider| {
        let stripe = StripePorts {
            provider,
            ledger: &store,
            sleeper: &sleeper,
        };
        bill_and_sync(ports, &catalogue, grace, Some(stripe), None)
    };
    let err = run(&refusing).await.unwrap_err();
    assert!(
        matches!(err, BillingError::StripeIncomplete { failed: 1, .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains(org.as_str()), "{message}");
    assert!(message.contains("Invalid API Key"), "{message}");

    // The retry, with the right key: one finalized invoice for the $29.00 starter fee.
    let done = run(&right).await.unwrap();
    assert_eq!((done.orgs, done.stored_now), (1, 0));
    let invoices = double.invoices();
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0].status, "open");
    assert_eq!(invoices[0].total, 2900);
    let want = format!("{}:2026-10", org.as_str());
    assert_eq!(invoices[0].metadata.get("tally_invoice"), Some(&want));
    // Again: nothing new at Stripe.
    let requests = double.stats().0;
    run(&right).await.unwrap();
    assert_eq!(double.stats().0, requests);
}
