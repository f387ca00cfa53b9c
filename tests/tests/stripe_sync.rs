//! The Stripe invoice sync (`tally_billing::sync`) through the real adapter
//! (`tally-stripe`) against the Stripe double, with the SQLite sync ledger: the happy path,
//! each fault kind on its own, a refused request, reruns after Stripe forgot the
//! idempotency keys (adopting the customer, invoice and items it already has), and the
//! chaos test (50 orgs, every fault
//! kind at random, rerun until done: each org ends with exactly one finalized invoice whose
//! items equal its report to the cent). Plus the opt-in run against Stripe's test mode.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tally_billing::{
    InvoiceSync, RetryPolicy, SyncOutcome, UsageReport, idempotency_key, planned_items,
};
use tally_core::ports::{InvoiceProvider, NewCustomer, ProviderError, StepKey, SyncLedger};
use tally_core::{Month, OrgId};
use tally_store::SqliteStore;
use tally_stripe::{StripeConfig, StripeProvider};
use tally_tests::stripe_double::{Fault, StripeDouble};
use tally_tests::stripe_sync::{
    RecordingSleeper, assert_invoiced, chaos, invoices_of, period, provider, report,
};

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("tally.db")).unwrap();
    (dir, store)
}

fn sync<'a>(
    provider: &'a StripeProvider,
    ledger: &'a SqliteStore,
    sleeper: &'a RecordingSleeper,
    max_attempts: u32,
) -> InvoiceSync<'a> {
    InvoiceSync {
        provider,
        ledger,
        sleeper,
        policy: RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        },
    }
}

/// What most tests here start from: the Stripe double, a fresh SQLite ledger, the adapter on
/// the double, a sleeper that records its waits, and test report `n` ([`report`]).
struct Chaos {
    n: usize,
    double: StripeDouble,
    _dir: tempfile::TempDir,
    ledger: SqliteStore,
    p: StripeProvider,
    sleeper: RecordingSleeper,
    report: UsageReport,
}

impl Chaos {
    async fn start(n: usize) -> Chaos {
        let double = StripeDouble::start().await.unwrap();
        let (_dir, ledger) = store();
        let p = provider(&double);
        Chaos {
            n,
            double,
            _dir,
            ledger,
            p,
            sleeper: RecordingSleeper::default(),
            report: report(n),
        }
    }

    /// What the ledger holds for `step` of the report's org and period.
    async fn step(&self, step: &str) -> Option<String> {
        self.ledger
            .get_step(&StepKey::new(&self.report.org_id, period(), step))
            .await
            .unwrap()
    }

    /// Syncs the report (customer name `Chaos n`), each request tried `max_attempts` times.
    async fn run(&self, max_attempts: u32) -> SyncOutcome {
        sync(&self.p, &self.ledger, &self.sleeper, max_attempts)
            .sync_report(&self.report, &format!("Chaos {}", self.n))
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_report_syncs_to_one_finalized_invoice_and_a_rerun_changes_nothing() {
    let t = Chaos::start(0).await;
    assert!(
        planned_items(&t.report).unwrap().len() >= 3,
        "{:#?}",
        t.report
    );

    let out = t.run(1).await;
    let SyncOutcome::Finalized(f) = out else {
        panic!("{out:?}")
    };
    assert_eq!(Some(f.total_minor), t.report.total.to_minor_units());
    assert_eq!(f.status, "open");
    assert_invoiced(&t.double, &t.report);
    assert_eq!(t.double.customer_count(), 1);

    // The ledger holds every step; a rerun answers from it without calling Stripe.
    let steps = t
        .ledger
        .list_steps(&t.report.org_id, period())
        .await
        .unwrap();
    let names: Vec<_> = steps.iter().map(|s| s.step.as_str()).collect();
    assert!(
        names.contains(&"invoice") && names.contains(&"finalize"),
        "{names:?}"
    );
    let (requests, _) = t.double.stats();
    let again = t.run(1).await;
    assert_eq!(again, SyncOutcome::Finalized(f));
    assert_eq!(t.double.stats().0, requests);
    assert_invoiced(&t.double, &t.report);
}

#[tokio::test]
async fn each_fault_kind_is_retried_with_the_same_key_and_retry_after_is_honoured() {
    let t = Chaos::start(2).await;
    // customer: lost answer; invoice: 429 Retry-After 2, then a hang; items: a 500.
    t.double.push_fault(Fault::Pass); // GET /v1/customers/search: none yet
    t.double.push_fault(Fault::LostResponse);
    t.double.push_fault(Fault::RateLimited {
        retry_after_secs: 2,
    });
    t.double.push_fault(Fault::Hang(Duration::from_secs(2)));
    t.double.push_fault(Fault::ServerError);
    let out = t.run(5).await;
    assert!(matches!(out, SyncOutcome::Finalized(_)), "{out:?}");
    assert_invoiced(&t.double, &t.report);
    assert_eq!(
        t.double.customer_count(),
        1,
        "the lost answer was replayed, not redone"
    );
    let waits = t.sleeper.0.lock().unwrap().clone();
    assert!(waits.contains(&Duration::from_secs(2)), "{waits:?}");
}

#[tokio::test]
async fn retries_running_out_leave_the_org_pending_and_a_rerun_resumes() {
    let t = Chaos::start(5).await;
    let items = planned_items(&t.report).unwrap().len();
    // The customer is created but its answer lost, and the retry fails too.
    t.double.push_fault(Fault::Pass); // GET /v1/customers/search: none yet
    t.double.push_fault(Fault::LostResponse); // customer, applied
    t.double.push_fault(Fault::ServerError); // customer retry fails, attempts used up
    let out = t.run(2).await;
    assert!(
        matches!(out, SyncOutcome::Pending { ref step, .. } if step == "customer"),
        "{out:?}"
    );
    assert_eq!(invoices_of(&t.double, &t.report.org_id).len(), 0);
    let out = t.run(2).await;
    assert!(matches!(out, SyncOutcome::Finalized(_)), "{out:?}");
    assert_invoiced(&t.double, &t.report);
    assert_eq!(t.double.customer_count(), 1);
    assert_eq!(
        invoices_of(&t.double, &t.report.org_id)[0].items.len(),
        items
    );
}

#[tokio::test]
async fn a_refused_request_stops_the_org_and_is_recorded_with_stripes_message() {
    let t = Chaos::start(4).await;
    // A customer Stripe does not know (deleted there, say): creating the invoice is a 400.
    t.ledger
        .record_customer(&t.report.org_id, "cus_gone")
        .await
        .unwrap();
    let out = t.run(5).await;
    let SyncOutcome::Failed { step, message } = out else {
        panic!("{out:?}")
    };
    assert_eq!(step, "invoice");
    assert!(
        message.contains("No such customer: 'cus_gone'"),
        "{message}"
    );
    let recorded = t.step("error:invoice").await.unwrap();
    assert!(recorded.contains("No such customer"), "{recorded}");
    assert!(
        t.sleeper.0.lock().unwrap().is_empty(),
        "fatal errors are not retried"
    );
    assert_eq!(t.double.invoices().len(), 0);
}

#[tokio::test]
async fn a_key_reused_with_a_different_request_is_an_idempotency_error() {
    let double = StripeDouble::start().await.unwrap();
    let p = provider(&double);
    let org = OrgId::parse("org_idem").unwrap();
    let key = idempotency_key(&org, period(), "customer");
    let first = NewCustomer {
        org: org.clone(),
        name: "Idem".to_owned(),
    };
    let a = p.create_customer(&first, &key).await.unwrap();
    let b = p.create_customer(&first, &key).await.unwrap();
    assert_eq!(a, b, "same key, same body: the first answer again");
    let other = NewCustomer {
        name: "Other".to_owned(),
        ..first
    };
    let err = p.create_customer(&other, &key).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Fatal { status: 400, message } if message.starts_with("idempotency_error")),
        "{err:?}"
    );
    assert_eq!(double.customer_count(), 1);
}

/// Stripe forgets idempotency keys after 24 hours. An answer lost after Stripe created the
/// invoice (and later an item) leaves the ledger without them; once the keys are forgotten,
/// a rerun finds the invoice by its `tally_invoice` metadata and the item by its
/// `tally_step`, and adopts them: still one invoice, one item per report entry.
#[tokio::test]
async fn a_rerun_after_the_idempotency_keys_expired_adopts_what_stripe_already_has() {
    let t = Chaos::start(1).await;
    let items = planned_items(&t.report).unwrap();
    assert!(items.len() >= 2, "{items:?}");

    // Run 1: the customer goes through; the draft invoice is created but its answer lost.
    t.double.push_fault(Fault::Pass); // GET /v1/customers/search: none yet
    t.double.push_fault(Fault::Pass); // POST /v1/customers
    t.double.push_fault(Fault::Pass); // GET /v1/invoices (nothing to adopt yet)
    t.double.push_fault(Fault::LostResponse); // POST /v1/invoices, applied
    let out = t.run(1).await;
    assert!(
        matches!(out, SyncOutcome::Pending { ref step, .. } if step == "invoice"),
        "{out:?}"
    );
    assert_eq!(invoices_of(&t.double, &t.report.org_id).len(), 1);
    assert_eq!(t.step("invoice").await, None);
    t.double.forget_idempotency_keys();

    // Run 2: adopts the invoice; the first item is created, its answer lost.
    t.double.push_fault(Fault::Pass); // GET /v1/invoices: found
    t.double.push_fault(Fault::Pass); // GET /v1/invoiceitems: none yet
    t.double.push_fault(Fault::LostResponse); // POST /v1/invoiceitems item:0, applied
    let out = t.run(1).await;
    assert!(
        matches!(out, SyncOutcome::Pending { ref step, .. } if step == "item:0"),
        "{out:?}"
    );
    let inv = &invoices_of(&t.double, &t.report.org_id)[0];
    assert_eq!(
        t.step("invoice").await.as_deref(),
        Some(inv.id.as_str()),
        "the rerun adopted the invoice Stripe already had"
    );
    assert_eq!(inv.items.len(), 1);
    t.double.forget_idempotency_keys();

    // Run 3: adopts the item and finishes.
    let out = t.run(1).await;
    assert!(matches!(out, SyncOutcome::Finalized(_)), "{out:?}");
    assert_invoiced(&t.double, &t.report);
    assert_eq!(t.double.invoices().len(), 1);
    assert_eq!(t.double.customer_count(), 1);
    let inv = &invoices_of(&t.double, &t.report.org_id)[0];
    let steps: Vec<_> = inv
        .items
        .iter()
        .map(|i| i.metadata.get("tally_step").cloned().unwrap())
        .collect();
    let want: Vec<_> = items.iter().map(|i| i.step.clone()).collect();
    assert_eq!(
        steps, want,
        "one item per report entry, each named by its step"
    );
}

/// The customer is created but the answer lost, and the rerun comes after Stripe forgot
/// the idempotency key (24 hours), so the same key would create a second customer. The
/// rerun finds the customer by its `tally_org` metadata (customer search), records it and
/// goes on: still one customer, with one finalized invoice.
#[tokio::test]
async fn a_rerun_after_the_customer_key_expired_adopts_the_customer_stripe_already_has() {
    let t = Chaos::start(3).await;
    let org = &t.report.org_id;

    t.double.push_fault(Fault::Pass); // GET /v1/customers/search: none yet
    t.double.push_fault(Fault::LostResponse); // POST /v1/customers, applied
    let out = t.run(1).await;
    assert!(
        matches!(out, SyncOutcome::Pending { ref step, .. } if step == "customer"),
        "{out:?}"
    );
    assert_eq!(t.double.customer_count(), 1);
    assert_eq!(t.ledger.get_customer(org).await.unwrap(), None);
    t.double.forget_idempotency_keys();

    let out = t.run(1).await;
    assert!(matches!(out, SyncOutcome::Finalized(_)), "{out:?}");
    assert_eq!(
        t.double.customer_count(),
        1,
        "the customer was adopted, not redone"
    );
    assert_invoiced(&t.double, &t.report);
    assert_eq!(t.double.invoices().len(), 1);
    let customer = t.ledger.get_customer(org).await.unwrap().unwrap();
    assert_eq!(invoices_of(&t.double, org)[0].customer, customer);
}

/// An account where Stripe refuses the customer search (it is not offered everywhere)
/// still gets its invoice: the sync creates the customer as it did before the search.
#[tokio::test]
async fn a_refused_customer_search_falls_back_to_creating_the_customer() {
    let t = Chaos::start(7).await;

    t.double
        .push_fault(Fault::Refused("Search is not available for this account."));
    let out = t.run(1).await;
    assert!(matches!(out, SyncOutcome::Finalized(_)), "{out:?}");
    assert_eq!(t.double.customer_count(), 1);
    assert_invoiced(&t.double, &t.report);
    assert_eq!(t.double.invoices().len(), 1);
}

/// Several customers carrying one org (left by runs before the customer search existed):
/// the sync adopts the oldest and creates no other; another org's customer is never found.
#[tokio::test]
async fn with_several_customers_for_an_org_the_oldest_is_adopted() {
    let t = Chaos::start(6).await;
    let org = &t.report.org_id;
    let customer = |org: &OrgId, month: &str| {
        let new = NewCustomer {
            org: org.clone(),
            name: "Chaos 6".to_owned(),
        };
        let key = idempotency_key(org, Month::parse(month).unwrap(), "customer");
        let p = &t.p;
        async move { p.create_customer(&new, &key).await.unwrap() }
    };
    let other_org = OrgId::parse("org_other").unwrap();
    let others = customer(&other_org, "2026-08").await; // the oldest of all, another org's
    let oldest = customer(org, "2026-08").await;
    let newer = customer(org, "2026-09").await;
    assert_ne!(oldest, newer);
    assert_eq!(t.p.find_customer(org).await.unwrap(), Some(oldest.clone()));
    assert_eq!(t.p.find_customer(&other_org).await.unwrap(), Some(others));
    assert_eq!(
        t.p.find_customer(&OrgId::parse("org_nobody").unwrap())
            .await
            .unwrap(),
        None
    );

    let out = t.run(1).await;
    assert!(matches!(out, SyncOutcome::Finalized(_)), "{out:?}");
    assert_eq!(t.double.customer_count(), 3, "no customer was created");
    assert_eq!(
        t.ledger.get_customer(org).await.unwrap().as_deref(),
        Some(oldest.as_str())
    );
    assert_invoiced(&t.double, &t.report);
    assert_eq!(invoices_of(&t.double, org)[0].customer, oldest.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_fifty_orgs_each_get_exactly_one_invoice_equal_to_the_report_on_sqlite() {
    let (_dir, ledger) = store();
    chaos(Arc::new(ledger), 50, 7).await;
}

/// The same scenario against Stripe's real test mode; opt-in.
#[tokio::test]
async fn real_stripe_test_mode_when_a_key_is_set() {
    let Ok(secret) = std::env::var("STRIPE_TEST_SECRET_KEY") else {
        println!("SKIPPED: real Stripe test mode (set STRIPE_TEST_SECRET_KEY=sk_test_… to run it)");
        return;
    };
    assert!(
        secret.starts_with("sk_test_"),
        "only a test-mode key, never a live one"
    );
    let p = StripeProvider::new(StripeConfig {
        secret_key: secret,
        base_url: tally_stripe::STRIPE_API_BASE.to_owned(),
        timeout: Duration::from_secs(30),
    })
    .unwrap();
    let (_dir, ledger) = store();
    let sleeper = RecordingSleeper::default();
    // A fresh org id per run: Stripe keeps idempotency keys for a day.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut report = report(1);
    report.org_id = OrgId::parse(&format!("org_stripetest{nonce}")).unwrap();
    let run = || async {
        InvoiceSync {
            provider: &p,
            ledger: &ledger,
            sleeper: &sleeper,
            policy: RetryPolicy::default(),
        }
        .sync_report(&report, "Tally test")
        .await
        .unwrap()
    };
    let first = run().await;
    let SyncOutcome::Finalized(f) = &first else {
        panic!("{first:?}")
    };
    assert_eq!(Some(f.total_minor), report.total.to_minor_units());
    assert_eq!(run().await, first, "a rerun resumes from the ledger");
}

/// A signed `invoice.paid` for a synced invoice is recorded on its org's period once; a bad
/// signature records nothing.
#[tokio::test]
async fn a_signed_invoice_paid_webhook_is_recorded_in_the_ledger() {
    use tally_billing::webhook::{WebhookOutcome, record_invoice_event, sign};
    let t = Chaos::start(0).await;
    let out = t.run(1).await;
    assert!(matches!(out, SyncOutcome::Finalized(_)), "{out:?}");
    let inv = &invoices_of(&t.double, &t.report.org_id)[0];
    let body = serde_json::json!({
        "id": "evt_1",
        "type": "invoice.paid",
        "data": {"object": {"id": inv.id, "object": "invoice", "metadata": inv.metadata}},
    })
    .to_string();
    let now = chrono::Utc::now();
    let secret = "whsec_test";

    let forged = sign("whsec_other", now.timestamp(), body.as_bytes());
    assert!(
        record_invoice_event(&t.ledger, secret, &forged, body.as_bytes(), now)
            .await
            .is_err()
    );
    assert_eq!(t.step("webhook:invoice.paid").await, None);

    let header = sign(secret, now.timestamp(), body.as_bytes());
    for _ in 0..2 {
        // Stripe delivers at least once: the second delivery changes nothing.
        let got = record_invoice_event(&t.ledger, secret, &header, body.as_bytes(), now)
            .await
            .unwrap();
        assert_eq!(
            got,
            WebhookOutcome::Recorded {
                org: t.report.org_id.clone(),
                period: period(),
                kind: "invoice.paid".to_owned(),
                invoice: inv.id.clone(),
            }
        );
    }
    assert_eq!(t.step("webhook:invoice.paid").await, Some(inv.id.clone()));
}
