//! A hostile tenant posting the largest quantities it may, on the embedded default: its
//! month total of `compute_minutes` stops at 10^19 exactly, the events past it are
//! dead-lettered one by one with the reason `counter_overflow` (and the rest of their
//! request is counted), and an honest tenant's usage, alerts and bill are what they would
//! have been without it. Time is pinned (`TALLY_NOW`, [`clock_at`]) to February 2026, as in
//! `e2e_bill.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;

const IN_FEBRUARY: &str = "2026-02-20T00:00:00Z";
const ALERTS_RUN: &str = "2026-02-20T00:10:00Z";
const SECRET: &str = "whsec_e2e_overflow_0123456789";
const MAX_QUANTITY: &str = "999999999999999999";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_quantity_stream_stops_at_the_limit_and_leaves_other_tenants_alone() {
    let env = Env::embedded();
    let hostile = make_tenant(&env, "hostile");
    let honest = make_tenant(&env, "honest");
    let client = reqwest::Client::new();
    let server = serve_at(&env, IN_FEBRUARY).await;

    // Twelve of the largest quantities in one request: ten fit under 10^19.
    let stream: Vec<Value> = (0..12)
        .map(|i| {
            compute_minutes(
                &format!("big-{i:02}"),
                &hostile.projects[i % 2],
                MAX_QUANTITY,
                "2026-02-10T10:00:00Z",
            )
        })
        .collect();
    let out = post_accepted(&client, &server, &hostile.key, stream).await;
    assert_eq!(out["accepted"], 12, "ingest cannot know the total: {out}");
    let out = post_accepted(
        &client,
        &server,
        &honest.key,
        vec![
            compute_minutes("feb-1", &honest.projects[0], "6000", "2026-02-10T10:00:00Z"),
            compute_minutes("feb-2", &honest.projects[1], "4500", "2026-02-11T23:59:59Z"),
        ],
    )
    .await;
    assert_eq!(out["accepted"], 2, "{out}");

    wait_for_month(
        &client,
        &server,
        &hostile.key,
        "2026-02",
        "9999999999999999990",
    )
    .await;
    wait_for_month(&client, &server, &honest.key, "2026-02", "10500").await;
    server.stop().await.unwrap();

    // The two that did not fit are dead letters of their own, named and replayable.
    let letters = env.cli(&["replay", "--dry-run", "--reason", "counter_overflow"]);
    let listed = letters["letters"].as_array().unwrap();
    let events: u64 = listed.iter().map(|l| l["events"].as_u64().unwrap()).sum();
    assert_eq!(events, 2, "{letters}");
    for l in listed {
        let reason = l["reason"].as_str().unwrap();
        assert!(reason.contains("counter_overflow"), "{reason}");
        assert!(
            reason.contains("big-1"),
            "the 11th and 12th events: {reason}"
        );
    }

    // Alerts: both tenants are past 80 % and 100 % of pro's 10,000 included minutes; the
    // hostile total is computed exactly and fails nobody's run.
    let (url, receiver) = start_receiver(204).await;
    let alerts = env.cli_env(
        &["alerts", "check"],
        &[
            ("TALLY_ALERT_WEBHOOK_URL", url.as_str()),
            ("TALLY_ALERT_WEBHOOK_SECRET", SECRET),
            ("TALLY_NOW", ALERTS_RUN),
        ],
    );
    assert_eq!(alerts["delivered"], 4, "{alerts}");
    let sent: Vec<Value> = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body, _)| serde_json::from_slice(body).unwrap())
        .collect();
    let of = |org: &str| {
        let mut v: Vec<(u64, String)> = sent
            .iter()
            .filter(|a| a["org_id"] == org)
            .map(|a| {
                (
                    a["threshold_percent"].as_u64().unwrap(),
                    a["usage"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        of(&honest.org),
        [(80, "10500".to_owned()), (100, "10500".to_owned())],
        "{sent:?}"
    );
    assert_eq!(of(&hostile.org).len(), 2, "{sent:?}");

    // The honest tenant's bill is what it would be alone: $99 + 500 × $0.10, 20 % off usage.
    let bill = env.cli_env(
        &["bill", "--period", "2026-02", "--org", &honest.org],
        &[("TALLY_NOW", AFTER_GRACE)],
    );
    let report = &bill["reports"][0];
    assert_eq!(report["org_id"], honest.org, "{bill}");
    assert_eq!(report["total"], "139.00", "{report}");
}
