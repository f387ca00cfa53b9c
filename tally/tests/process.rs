//! Tests that need `tally serve` as a real process; everything else runs the app in
//! process (`spawn_app` in `common/app.rs`). Each one here is about the process itself:
//!
//! - `sigkill_mid_stream_then_resend_loses_nothing_and_counts_nothing_twice`: SIGKILL
//!   gives the process no chance to drain or close anything, which is the point: only
//!   killing a process shows that an event answered `202` is durable on disk. (An
//!   in-process app cannot be killed like that; aborting its task would still run
//!   destructors.)
//! - `sigterm_drains_and_a_restart_keeps_every_event` and
//!   `sigint_drains_and_a_restart_keeps_every_event`: the signals themselves, received by
//!   the binary's handler (`tally::signal::shutdown`), must stop it cleanly (exit status
//!   0) after draining.
//!
//! They still take no port before the server does: it binds `127.0.0.1:0` and the test
//! reads the address from its log (`common/process.rs`). CLI commands (making the tenant,
//! `reconcile`) run as subprocesses, as everywhere.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use serde_json::{Value, json};
use tally_core::Month;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_resend_loses_nothing_and_counts_nothing_twice() {
    let env = Env::embedded();
    let tenant = Arc::new(make_tenant(&env, "crashy"));
    let mut server = Server::start(&env);
    let client = reqwest::Client::new();
    let evs = events(&tenant, "k", 3000);
    let batches: Vec<Vec<Ev>> = evs.chunks(50).map(<[Ev]>::to_vec).collect();

    // Post in the background; kill the server while requests are in flight.
    let ok = Arc::new(AtomicUsize::new(0));
    let poster = {
        let (client, url, key, ok, batches) = (
            client.clone(),
            server.url("/v1/events"),
            tenant.key.clone(),
            ok.clone(),
            batches.clone(),
        );
        tokio::spawn(async move {
            let mut answered = vec![false; batches.len()];
            for (i, b) in batches.iter().enumerate() {
                let body = json!({"events": b.iter().map(Ev::json).collect::<Vec<_>>()});
                if let Ok(r) = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    && r.status() == 202
                {
                    answered[i] = true;
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            }
            answered
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ok.load(Ordering::SeqCst) < 20 {
        assert!(
            Instant::now() < deadline,
            "server never accepted 20 requests"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let answered = poster.await.unwrap();
    let lost = answered.iter().filter(|a| !**a).count();
    assert!(lost > 0, "the kill should have cut the stream short");

    // Restart and resend everything that did not get a 202, plus a few that did (a client
    // that is unsure resends; that must not count twice either).
    let server = Server::start(&env);
    for (i, b) in batches.iter().enumerate() {
        if !answered[i] || i % 10 == 0 {
            let (status, body) = post(&client, &server, &tenant.key, b).await.unwrap();
            assert_eq!(status, 202, "{body}");
        }
    }
    assert_exact(&client, &server, &tenant, &evs).await;

    let period = Month::of(Utc::now()).to_string();
    let out = env.cli_raw(&["reconcile", "--period", &period]);
    assert!(
        out.status.success(),
        "reconcile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["drift"], json!([]));
}

/// Posts 2,000 events, stops the server with `signal` and restarts it: every event counts.
async fn signal_drains_and_a_restart_keeps_every_event(signal: &str, slug: &str) {
    let env = Env::embedded();
    let tenant = make_tenant(&env, slug);
    let mut server = Server::start(&env);
    let client = reqwest::Client::new();
    let evs = events(&tenant, "t", 2000);
    for b in evs.chunks(250) {
        let (status, body) = post(&client, &server, &tenant.key, b).await.unwrap();
        assert_eq!(status, 202, "{body}");
    }
    let status = server.signal(signal);
    assert!(
        status.success(),
        "tally serve exited with {status} after SIG{signal}"
    );
    let server = Server::start(&env);
    assert_exact(&client, &server, &tenant, &evs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_restart_keeps_every_event() {
    signal_drains_and_a_restart_keeps_every_event("TERM", "graceful").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_and_a_restart_keeps_every_event() {
    signal_drains_and_a_restart_keeps_every_event("INT", "ctrl-c").await;
}
