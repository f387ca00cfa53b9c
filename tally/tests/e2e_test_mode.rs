//! Test mode end to end on the embedded default: events sent with a test key (`tk_test_…`)
//! go through the same ingest, queue, aggregator and ledger as live ones, but are counted
//! under the org's test twin. They are read with the test key (or `mode=test`), are never
//! priced by `tally bill`, are held to the free plan's allowance of their own, and are
//! checked by `tally reconcile` like live usage. Time is
//! pinned as in `e2e_bill.rs`, so the tests bill February 2026 whatever today is.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;

const IN_FEBRUARY: &str = "2026-02-20T12:00:00Z";

fn february(key_mode: Option<&str>) -> String {
    let mut q = "meter=compute_minutes&granularity=month&from=2026-02-01&to=2026-03-01".to_owned();
    if let Some(m) = key_mode {
        q.push_str("&mode=");
        q.push_str(m);
    }
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_key_usage_is_counted_apart_never_billed_and_reconciled() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "testmode");
    let p0 = &tenant.projects[0];
    let test_key = create_key(&env, &tenant.org, "sandbox", true);
    assert!(test_key.starts_with("tk_test_"));
    let client = reqwest::Client::new();

    let server = serve_at(&env, IN_FEBRUARY).await;
    // The same event id in both modes: two namespaces, each counted once.
    let live = post_accepted(
        &client,
        &server,
        &tenant.key,
        vec![compute_minutes("same-id", p0, "100", IN_FEBRUARY)],
    )
    .await;
    assert_eq!(live["accepted"], 1, "{live}");
    let test = post_accepted(
        &client,
        &server,
        &test_key,
        vec![
            compute_minutes("same-id", p0, "7", IN_FEBRUARY),
            compute_minutes("other", p0, "5", IN_FEBRUARY),
        ],
    )
    .await;
    assert_eq!(test["accepted"], 2, "{test}");
    wait_for_month(&client, &server, &tenant.key, "2026-02", "100").await;
    wait_for_month(&client, &server, &test_key, "2026-02", "12").await;
    // Resending in test mode counts nothing twice.
    post_accepted(
        &client,
        &server,
        &test_key,
        vec![compute_minutes("same-id", p0, "7", IN_FEBRUARY)],
    )
    .await;
    assert_eq!(
        usage(&client, &server, &test_key, &february(None)).await[0].1,
        "12"
    );
    assert_eq!(
        usage(&client, &server, &tenant.key, &february(None)).await[0].1,
        "100",
        "live usage never includes test usage"
    );
    // A key reads its own mode only.
    let refused = client
        .get(server.url(&format!("/v1/usage?{}", february(Some("live")))))
        .bearer_auth(&test_key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    server.stop().await.unwrap();

    // February is billed on live usage alone: 100 minutes is inside pro's 10,000.
    let bill = env.cli_env(
        &["bill", "--period", "2026-02"],
        &[("TALLY_NOW", AFTER_GRACE)],
    );
    let reports = bill["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 1, "the test twin is not an org: {bill}");
    let r = &reports[0];
    assert_eq!(r["org_id"], tenant.org);
    let cm = meter_line(r, "compute_minutes");
    assert_eq!(cm["quantity"], "100", "{r}");
    assert_eq!(r["total"], "99.00", "the flat fee only: {r}");

    // Reconcile checks the test twin's counters too: a drift planted there is named.
    let reconcile = |env: &Env| {
        let out = env.cli_raw_env(
            &["reconcile", "--period", "2026-02"],
            &[("TALLY_NOW", AFTER_GRACE)],
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), report)
    };
    let (code, report) = reconcile(&env);
    assert_eq!(code, Some(0), "{report}");
    let twin = format!("{}test", tenant.org);
    let db = rusqlite::Connection::open(env.data().join("tally.db")).unwrap();
    let changed = db
        .execute("UPDATE cells SET value = '1' WHERE org = ?1", [&twin])
        .unwrap();
    assert!(changed > 0, "test usage is stored under the twin {twin}");
    let (code, report) = reconcile(&env);
    assert_eq!(code, Some(3), "{report}");
    let drift = report["drift"].as_array().unwrap();
    assert!(
        drift.iter().all(|d| d["counter"]["org"] == twin.as_str()),
        "{report}"
    );
}
