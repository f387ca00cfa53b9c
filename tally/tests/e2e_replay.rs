//! `tally replay` on the embedded default, driven as an operator would: dead letters are
//! planted in the local queue file the way the aggregator leaves them (a delivery set
//! aside with its reason, a body that never decoded), `tally replay --dry-run` lists them
//! and moves nothing, `tally replay` puts them back, and the app's aggregator counts the
//! events exactly once, also when the same letter is planted and replayed a second time.
//! A letter that cannot be replayed stays and makes the exit status 4.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use common::*;
use serde_json::{Value, json};
use tally_core::Month;
use tally_core::event::Event;
use tally_core::ports::EventQueue;
use tally_store::local_queue::{LocalQueue, LocalQueueConfig};

/// A side handle on the app's queue file that does not disturb messages in flight.
fn queue(env: &Env) -> LocalQueue {
    LocalQueue::open_with(
        &env.data().join("queue.db"),
        LocalQueueConfig {
            redeliver_on_open: false,
            checkpoint_interval: None,
            ..LocalQueueConfig::default()
        },
    )
    .unwrap()
}

fn compute(tenant: &Tenant, id: &str, minutes: &str) -> Event {
    serde_json::from_value(json!({
        "org_id": tenant.org,
        "id": id,
        "project_id": tenant.projects[0],
        "meter": "compute_minutes",
        "aggregation": {"kind": "sum"},
        "quantity": minutes,
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
    }))
    .unwrap()
}

/// Publishes `events` and sets their message aside with `reason`: what the aggregator does
/// with a record it gave up on.
async fn plant(env: &Env, events: &[Event], reason: &str) {
    let q = queue(env);
    q.publish(events).await.unwrap();
    let got = q.receive(100, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 1);
    q.dead_letter(&got[0], reason).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);
}

/// `tally replay ARGS` with `--json`: the exit status and the report.
fn replay(env: &Env, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    env.cli_status_env(&all, &[])
}

/// `tally replay ARGS` as people run it (no `--json`): what it printed, once it succeeded.
fn replay_human(env: &Env, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("replay")
        .args(args)
        .arg("--data")
        .arg(env.data())
        .env("TALLY_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tally replay {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the app until the queue is empty, then stops it (which drains as well).
async fn apply(env: &Env) {
    let app = spawn_app_in(env).await;
    let q = queue(env);
    let deadline = Instant::now() + Duration::from_secs(30);
    while q.depth().await.unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "the aggregator never emptied the queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await.unwrap();
}

async fn month_total(env: &Env, tenant: &Tenant, want: &str) {
    let app = spawn_app_in(env).await;
    let month = Month::of(Utc::now()).to_string();
    wait_for_month(&reqwest::Client::new(), &app, &tenant.key, &month, want).await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_lists_then_replays_and_the_events_count_exactly_once() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "replayed");
    let events = [compute(&tenant, "r-1", "2.5"), compute(&tenant, "r-2", "3")];
    plant(&env, &events, "store unavailable: disk full").await;

    // The listing: what is there, nothing moved.
    for _ in 0..2 {
        let (code, dry) = replay(&env, &["--dry-run"]);
        assert_eq!(code, Some(0), "{dry}");
        assert_eq!(dry["dry_run"], true);
        let letters = dry["letters"].as_array().unwrap();
        assert_eq!(letters.len(), 1, "{dry}");
        assert_eq!(letters[0]["status"], "would_replay");
        assert_eq!(letters[0]["events"], 2);
        assert_eq!(letters[0]["reason"], "store unavailable: disk full");
        assert!(letters[0]["dead_lettered_at"].is_string(), "{dry}");
        assert!(letters[0]["id"].is_string(), "{dry}");
    }
    assert_eq!(queue(&env).depth().await.unwrap(), 0);

    // The human listing says the same in words.
    let text = replay_human(&env, &["--dry-run"]);
    assert!(
        text.contains("would replay 1 dead letters (2 events)")
            && text.contains("store unavailable: disk full"),
        "{text}"
    );

    let (code, done) = replay(&env, &[]);
    assert_eq!(code, Some(0), "{done}");
    assert_eq!(done["letters"][0]["status"], "replayed");
    assert_eq!(queue(&env).depth().await.unwrap(), 1);
    assert!(queue(&env).dead_letters().await.unwrap().is_empty());
    apply(&env).await;
    month_total(&env, &tenant, "5.5").await;

    // The same letter again (a copy): replayed, and counted before, so not again.
    plant(&env, &events, "store unavailable: disk full").await;
    let text = replay_human(&env, &[]);
    assert!(
        text.contains("replayed 1 dead letters (2 events); 0 left"),
        "{text}"
    );
    apply(&env).await;
    month_total(&env, &tenant, "5.5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_that_cannot_be_replayed_stays_and_the_exit_status_says_so() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "leftover");
    plant(&env, &[compute(&tenant, "ok-1", "1")], "alpha fault").await;
    // A body that never decoded: the queue set it aside itself.
    let q = queue(&env);
    q.publish_raw("not events at all".to_owned()).await.unwrap();
    assert!(q.receive(100, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(q.dead_letters().await.unwrap().len(), 2);

    // Bounds are refused up front, naming the flag.
    let out = env.cli_raw(&["replay", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--limit"));

    // An id that is not there.
    let (code, report) = replay(&env, &["--id", "999999"]);
    assert_eq!(code, Some(4), "{report}");
    assert_eq!(report["missing_ids"], json!(["999999"]));

    // By reason: only the alpha letter.
    let (code, report) = replay(&env, &["--reason", "ALPHA"]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["letters"].as_array().unwrap().len(), 1);

    // The rest: the undecodable one is left, with why, and the run exits 4.
    let (code, report) = replay(&env, &[]);
    assert_eq!(code, Some(4), "{report}");
    assert_eq!(report["letters"][0]["status"], "left");
    assert!(report["letters"][0]["problem"].is_string(), "{report}");
    let kept = queue(&env).dead_letters().await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].body, "not events at all");

    apply(&env).await;
    month_total(&env, &tenant, "1").await;
}
