//! End-to-end tests of plan-limit alerts on the embedded default: the app in process with
//! the alert webhook configured (as `TALLY_ALERT_WEBHOOK_URL` and `_SECRET` configure
//! `tally serve`), and `tally alerts check` through the real binary.
//!
//! The receiver is a loopback axum server that records each request and answers with a
//! status the test sets. While it fails, ingest keeps answering `202` and counting; the
//! serve task's attempts fail and leave the alert pending; once it recovers, a cron-style
//! `tally alerts check` (its clock moved past the serve task's lease with `TALLY_NOW`)
//! delivers that same alert, signed, and a second check sends nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use common::*;
use serde_json::{Value, json};

const SECRET: &str = "whsec_e2e_alerts_0123456789";

async fn post_minutes(
    client: &reqwest::Client,
    server: &impl Endpoint,
    t: &Tenant,
    id: &str,
    q: &str,
) {
    let at = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let r = client
        .post(server.url("/v1/events"))
        .bearer_auth(&t.key)
        .json(&json!({"events": [{"id": id, "project_id": t.projects[0], "meter": "compute_minutes", "quantity": q, "timestamp": at}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "ingest must not depend on the alert endpoint"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 1, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_alert_endpoint_never_blocks_metering_and_cron_delivers_later() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "alerts");
    let (url, receiver) = start_receiver(500).await;
    let alert_env = [
        ("TALLY_ALERT_WEBHOOK_URL", url.as_str()),
        ("TALLY_ALERT_WEBHOOK_SECRET", SECRET),
    ];
    let server = spawn_app_with(&env, |app| {
        app.settings.billing_scheduler = false;
        app.settings.alert_interval = Duration::from_secs(1);
        app.alert_sender = Some(tally::alerts::sender(&url, SECRET, app.clock.clone()).unwrap());
    })
    .await;
    let client = reqwest::Client::new();

    // Pro includes 10,000 compute minutes: 8,500 crosses 80 %.
    post_minutes(&client, &server, &tenant, "a1", "8500").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.got.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the serve task never tried the endpoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The endpoint is failing; ingest and aggregation go on regardless.
    for i in 0..5 {
        post_minutes(&client, &server, &tenant, &format!("b{i}"), "100").await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = usage(
            &client,
            &server,
            &tenant.key,
            "meter=compute_minutes&granularity=month",
        )
        .await;
        if got.first().map(|(_, v)| v.as_str()) == Some("9000") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "usage never reached 9000: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same 60 s a process gets to stop after SIGTERM in `process.rs`.
    let stopped = tokio::time::timeout(Duration::from_secs(60), server.stop()).await;
    assert!(
        matches!(stopped, Ok(Ok(()))),
        "shutdown must not wait on alerts: {stopped:?}"
    );
    let failed: Vec<_> = receiver.got.lock().unwrap().clone();
    assert!(failed.iter().all(|(_, _, status)| *status == 500));

    // The endpoint recovers. A cron run after the serve task's lease delivers the alert.
    receiver.answer.store(204, Ordering::SeqCst);
    let later =
        (Utc::now() + chrono::Duration::minutes(10)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut envs = alert_env.to_vec();
    envs.push(("TALLY_NOW", later.as_str()));
    let out = env.cli_env(&["alerts", "check"], &envs);
    assert_eq!(out["delivered"], 1, "{out}");
    assert_eq!(out["claimed"], 0, "{out}");
    let got = receiver.got.lock().unwrap().clone();
    let (sig, body, status) = got.last().unwrap().clone();
    assert_eq!(status, 204);
    assert_eq!(body, failed[0].1, "a retry sends the same alert");
    let t = chrono::DateTime::parse_from_rfc3339(&later)
        .unwrap()
        .with_timezone(&Utc);
    tally_billing::webhook::verify_signature(SECRET, &sig, &body, t, 300).unwrap();
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["org_id"], tenant.org.as_str());
    assert_eq!(payload["meter"], "compute_minutes");
    assert_eq!(payload["threshold_percent"], 80);
    assert_eq!(payload["limit"], "10000");
    assert_eq!(payload["usage"], "8500");

    let again = env.cli_env(&["alerts", "check"], &envs);
    assert_eq!(
        (again["claimed"].clone(), again["delivered"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(receiver.got.lock().unwrap().len(), got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_need_both_the_url_and_the_secret() {
    let env = Env::embedded();
    let out = env.cli_raw(&["alerts", "check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TALLY_ALERT_WEBHOOK_URL"), "{err}");
    let out = env.cli_raw_env(
        &["alerts", "check"],
        &[("TALLY_ALERT_WEBHOOK_URL", "https://example.com/hook")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TALLY_ALERT_WEBHOOK_SECRET"), "{err}");
}
