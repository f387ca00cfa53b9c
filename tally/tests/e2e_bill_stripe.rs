//! End-to-end test of `tally bill`'s Stripe sync, through the real binary, on the embedded
//! default, against the Stripe double (`tally_tests::stripe_double`) named by
//! `TALLY_STRIPE_API_BASE`; and of the server's webhook route and scheduler sync, with the
//! app in process configured as those variables configure `tally serve`. Two orgs on the
//! pro plan have February 2026 usage; time is pinned with the hidden `TALLY_NOW` (the
//! CLI) and the same clock ([`clock_at`], the app).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tally_core::Month;
use tally_tests::stripe_double::{DOUBLE_SECRET_KEY, StripeDouble};

/// Runs `tally bill --period 2026-02 <extra>` off the async runtime (the double serves on
/// it), with Stripe pointed at the double under `secret`.
async fn bill(env: &Env, double: &StripeDouble, secret: &str, extra: &[&str]) -> Output {
    let mut args = vec!["bill", "--period", "2026-02"];
    args.extend(extra);
    bill_on_stripe(env, &args, AFTER_GRACE, (&double.base_url(), secret)).await
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "non-JSON stdout ({e}): {} / stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Posts February usage for the tenant and waits until the month total reads `minutes`.
async fn feb_usage(server: &impl Endpoint, tenant: &Tenant, minutes: &str) {
    let client = reqwest::Client::new();
    let r = client
        .post(server.url("/v1/events"))
        .bearer_auth(&tenant.key)
        .json(&json!({"events": [{"id": "feb-1", "project_id": tenant.projects[0],
            "meter": "compute_minutes", "quantity": minutes, "timestamp": "2026-02-10T10:00:00Z"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_for_month(&client, server, &tenant.key, "2026-02", minutes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bill_syncs_one_finalized_invoice_per_org_to_stripe_and_a_rerun_changes_nothing() {
    let env = Env::embedded();
    let a = make_tenant(&env, "alpha");
    let b = make_tenant(&env, "beta");
    let server = serve_at(&env, IN_GRACE).await;
    feb_usage(&server, &a, "10500").await;
    feb_usage(&server, &b, "12000").await;
    server.stop().await.unwrap();

    let double = StripeDouble::start().await.unwrap();

    // A dry run and --no-stripe never call Stripe.
    let dry = bill(&env, &double, DOUBLE_SECRET_KEY, &["--dry-run"]).await;
    assert!(dry.status.success());
    assert!(json_of(&dry).get("stripe").is_none());
    assert_eq!(double.stats().0, 0);

    // A key Stripe refuses: the period is closed and the reports stored, every org failed
    // with Stripe's message, a non-zero exit with one line saying what to fix.
    let refused = bill(&env, &double, "sk_test_wrong", &[]).await;
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("Stripe refused 2 org(s)"), "{err}");
    assert!(err.contains("Invalid API Key"), "{err}");
    let out = json_of(&refused);
    assert_eq!(out["reports"].as_array().unwrap().len(), 2);
    for inv in out["stripe"].as_array().unwrap() {
        assert_eq!(inv["status"], "failed", "{inv}");
        assert_eq!(inv["step"], "customer", "{inv}");
    }
    assert_eq!(double.customer_count(), 0);

    let no_stripe = bill(&env, &double, DOUBLE_SECRET_KEY, &["--no-stripe"]).await;
    assert!(no_stripe.status.success());
    assert!(json_of(&no_stripe).get("stripe").is_none());
    assert_eq!(double.customer_count(), 0);

    // The run: one finalized invoice per org, equal to its report.
    let first = bill(&env, &double, DOUBLE_SECRET_KEY, &[]).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first = json_of(&first);
    let reports = first["reports"].as_array().unwrap();
    let invoices = first["stripe"].as_array().unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(invoices.len(), 2);
    assert_eq!(double.customer_count(), 2);
    assert_eq!(double.invoices().len(), 2);
    for (report, printed) in reports.iter().zip(invoices) {
        let org = report["org_id"].as_str().unwrap();
        assert_eq!(printed["org_id"], org);
        assert_eq!(printed["status"], "finalized", "{printed}");
        assert_eq!(printed["invoice_status"], "open", "{printed}");
        assert_eq!(printed["total"], report["total"], "{printed}");
        let want_meta = format!("{org}:2026-02");
        let theirs: Vec<_> = double
            .invoices()
            .into_iter()
            .filter(|i| i.metadata.get("tally_invoice") == Some(&want_meta))
            .collect();
        assert_eq!(theirs.len(), 1, "{org}: {theirs:#?}");
        assert_eq!(Some(theirs[0].id.as_str()), printed["invoice"].as_str());
        assert_eq!(theirs[0].status, "open");
        let cents: i64 = theirs[0].items.iter().map(|i| i.amount).sum();
        assert_eq!(
            rust_decimal::Decimal::new(cents, 2).to_string(),
            report["total"].as_str().unwrap()
        );
    }
    // Pro plan: $99.00 + (500 × $0.10, 20 % off) = $139.00; 2,000 over: $99.00 + $160.00.
    let mut totals: Vec<_> = invoices
        .iter()
        .map(|i| i["total"].as_str().unwrap().to_owned())
        .collect();
    totals.sort();
    assert_eq!(totals, ["139.00", "259.00"]);

    // A rerun prints the same and sends Stripe nothing.
    let requests = double.stats().0;
    let again = bill(&env, &double, DOUBLE_SECRET_KEY, &[]).await;
    assert!(again.status.success());
    let again = json_of(&again);
    assert_eq!(again["stripe"], first["stripe"]);
    assert_eq!(again["reports"], first["reports"]);
    assert_eq!(
        double.stats().0,
        requests,
        "the rerun answered from the ledger"
    );
    assert_eq!(double.invoices().len(), 2);

    // The finalized invoices' hosted pages, as Stripe answered them, reach the invoice
    // list: over HTTP for the org's owner, and from `tally invoice list`.
    let jwt = tally::settings::jwt_config(&env.common()).unwrap();
    let server = serve_at(&env, AFTER_GRACE).await;
    let http = reqwest::Client::new();
    for tenant in [&a, &b] {
        let theirs = double
            .invoices()
            .into_iter()
            .find(|i| i.metadata.get("tally_invoice") == Some(&format!("{}:2026-02", tenant.org)))
            .unwrap();
        let want = tally_tests::stripe_double::hosted_invoice_url(&theirs.id);
        let owner = env.cli(&["org", "show", "--org", &tenant.org])["owner_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let token = jwt
            .mint(
                &tally_core::ids::UserId::parse(&owner).unwrap(),
                AFTER_GRACE.parse().unwrap(),
                chrono::Duration::minutes(30),
            )
            .unwrap();
        let r = http
            .get(server.url(&format!("/v1/orgs/{}/invoices", tenant.org)))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let listed: Value = r.json().await.unwrap();
        let stripe = &listed["invoices"][0]["stripe"];
        assert_eq!(stripe["invoice_id"], theirs.id.as_str(), "{listed}");
        assert_eq!(stripe["status"], "finalized", "{listed}");
        assert_eq!(stripe["hosted_url"], want.as_str(), "{listed}");
        let cli = env.cli(&["invoice", "list", "--org", &tenant.org]);
        assert_eq!(
            cli["invoices"][0]["stripe"]["hosted_url"],
            want.as_str(),
            "{cli}"
        );
    }
    server.stop().await.unwrap();
}

/// `tally serve` answers Stripe's webhooks at `POST /v1/stripe/webhook` with the signing
/// secret from `TALLY_STRIPE_WEBHOOK_SECRET`, recording `invoice.paid` in the sync ledger;
/// without the secret the route says it is not configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_records_signed_stripe_webhooks_and_refuses_when_unconfigured() {
    use tally_billing::webhook::sign;
    use tally_core::ports::{StepKey, SyncLedger};
    let env = Env::embedded();
    let client = reqwest::Client::new();
    let body = json!({"id": "evt_1", "type": "invoice.paid",
        "data": {"object": {"id": "in_9", "metadata": {"tally_invoice": "org_hook:2026-02"}}}})
    .to_string();
    let secret = "whsec_serve";
    // Posts the event signed with `key`, as Stripe would.
    let post = |server: &TestApp, key: &str| {
        client
            .post(server.url("/v1/stripe/webhook"))
            .header(
                "stripe-signature",
                sign(key, chrono::Utc::now().timestamp(), body.as_bytes()),
            )
            .body(body.clone())
            .send()
    };

    let server = spawn_app_with(&env, |app| app.settings.billing_scheduler = false).await;
    let r = post(&server, secret).await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "stripe_webhook_not_configured");
    server.stop().await.unwrap();

    // What TALLY_STRIPE_WEBHOOK_SECRET sets.
    let server = spawn_app_with(&env, |app| {
        app.settings.billing_scheduler = false;
        app.stripe_webhook_secret = Some(secret.to_owned());
    })
    .await;
    let r = post(&server, secret).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = post(&server, "whsec_other").await.unwrap();
    assert_eq!(r.status(), 400);
    server.stop().await.unwrap();
    let store = tally_store::SqliteStore::open(&env.data().join("tally.db")).unwrap();
    let got = store
        .get_step(&StepKey::new(
            &tally_core::OrgId::parse("org_hook").unwrap(),
            Month::parse("2026-02").unwrap(),
            "webhook:invoice.paid",
        ))
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("in_9"));
}

/// The `tally serve` scheduler closes the ended month and syncs it to Stripe with the same
/// code; `tally bill` afterwards finds the invoice in the ledger and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_scheduler_syncs_the_closed_month_to_stripe() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "sched");
    let double = StripeDouble::start().await.unwrap();
    let base = double.base_url();
    // What TALLY_NOW, TALLY_STRIPE_SECRET_KEY and TALLY_STRIPE_API_BASE set.
    let server = spawn_app_with(&env, |app| {
        app.clock = clock_at(AFTER_GRACE);
        app.stripe =
            Some(tally::stripe::provider(DOUBLE_SECRET_KEY.to_owned(), Some(base)).unwrap());
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let invoice = loop {
        if let Some(i) = double.invoices().into_iter().find(|i| i.status == "open") {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler never invoiced February: {:#?}",
            double.invoices()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    server.stop().await.unwrap();
    assert_eq!(
        invoice.metadata.get("tally_invoice"),
        Some(&format!("{}:2026-02", tenant.org))
    );
    // The pro plan's $99.00 fee, no usage.
    assert_eq!(invoice.total, 9900);
    let out = bill(&env, &double, DOUBLE_SECRET_KEY, &[]).await;
    assert!(out.status.success());
    let out = json_of(&out);
    assert_eq!(out["stripe"][0]["invoice"], invoice.id.as_str());
    assert_eq!(out["stripe"][0]["total"], "99.00");
    assert_eq!(double.invoices().len(), 1);
}
