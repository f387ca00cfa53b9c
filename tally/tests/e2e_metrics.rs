//! `GET /metrics` of the server: the process's `metrics` in Prometheus text format, with
//! what ingest and the aggregator recorded for the requests just served. The app runs in
//! process; a process has one metrics recorder, so this file holds this one test and its
//! counts are its own.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_accepted_and_applied_events_in_prometheus_text() {
    // The app first, then the tenant made by the CLI in its data directory: what the CLI
    // creates works in a running server at once.
    let server = spawn_app().await;
    let tenant = make_tenant(&server.env, "metered");
    let client = reqwest::Client::new();
    let batch: Vec<_> = events(&tenant, "m", 3).iter().map(Ev::json).collect();
    post_accepted(&client, &server, &tenant.key, batch).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let r = client.get(server.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        // One queue message (the request's three events) applied in one batch of three.
        if text.contains("tally_aggregator_records_total{outcome=\"applied\"} 1") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the aggregator's counts never showed up:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        text.lines().any(|l| l == "tally_events_accepted_total 3"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE tally_events_accepted_total counter"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "tally_batch_size_sum 3"),
        "{text}"
    );
    assert!(text.contains("tally_apply_seconds_count"), "{text}");
    server.stop().await.unwrap();
}
