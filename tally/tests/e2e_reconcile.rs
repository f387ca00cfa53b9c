//! `tally reconcile` seen to catch drift: usage is posted and counted through the app, then
//! the SQLite store file is edited behind Tally's back the three ways counters can drift (a
//! changed value, a missing counter, a counter the ledger knows nothing about), and each is
//! named, with exit status 3. A reconcile that always said "no drift" fails here.

#![allow(clippy::unwrap_used)]

mod common;

use chrono::{Datelike, Utc};
use common::*;
use serde_json::Value;

fn reconcile(env: &Env, period: &str) -> (Option<i32>, Value) {
    let out = env.cli_raw(&["reconcile", "--period", period]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report)
}

/// The drifted counters as (meter, project or "", granularity, expected, stored).
fn drifted(report: &Value) -> Vec<(String, String, String, String, Value)> {
    report["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let c = &d["counter"];
            (
                c["meter"].as_str().unwrap().to_owned(),
                c["project"].as_str().unwrap_or("").to_owned(),
                c["granularity"].as_str().unwrap().to_owned(),
                d["expected"].as_str().unwrap().to_owned(),
                d["stored"].clone(),
            )
        })
        .collect()
}

/// `tally reconcile` of `period` after the store was edited: it must exit 3; the drift.
fn drift(env: &Env, period: &str) -> Vec<(String, String, String, String, Value)> {
    let (code, report) = reconcile(env, period);
    assert_eq!(code, Some(3), "{report}");
    drifted(&report)
}

/// Asserts that `d` names the month counter of `meter` in `project`, expected `want`,
/// stored `have` (null: missing).
fn assert_month_drift(
    d: &[(String, String, String, String, Value)],
    meter: &str,
    project: &str,
    want: &str,
    have: Value,
) {
    assert!(
        d.iter().any(|(m, p, g, w, h)| m == meter
            && p == project
            && g == "month"
            && w == want
            && *h == have),
        "no {meter} {project} {want} {have}: {d:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_names_each_kind_of_drift_and_exits_3() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "drift-co");
    let (p0, p1) = (&tenant.projects[0], &tenant.projects[1]);
    let now = Utc::now();
    let period = format!("{}-{:02}", now.year(), now.month());
    let at = now.to_rfc3339();
    let server = spawn_app_in(&env).await;
    let client = reqwest::Client::new();
    post_accepted(
        &client,
        &server,
        &tenant.key,
        vec![
            compute_minutes("c1", p0, "7.5", &at),
            compute_minutes("c2", p1, "2", &at),
        ],
    )
    .await;
    wait_for_month(&client, &server, &tenant.key, &period, "9.5").await;
    server.stop().await.unwrap();

    let (code, report) = reconcile(&env, &period);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["drift"], serde_json::json!([]));

    let db = rusqlite::Connection::open(env.data().join("tally.db")).unwrap();
    // 1. A changed counter: project 0's cells say 100 instead of 7.5.
    let edit = |sql: &str, project: &str| {
        let rows = db.execute(sql, [tenant.org.as_str(), project]).unwrap();
        assert!(rows > 0, "{sql}");
    };
    edit(
        "UPDATE cells SET value = '100' WHERE org = ?1 AND project = ?2",
        p0,
    );
    let d = drift(&env, &period);
    assert_month_drift(&d, "compute_minutes", p0, "7.5", Value::from("100"));

    // 2. A missing counter: project 1's cells are gone.
    edit("DELETE FROM cells WHERE org = ?1 AND project = ?2", p1);
    let d = drift(&env, &period);
    assert_month_drift(&d, "compute_minutes", p1, "2", Value::Null);

    // 3. An extra counter: bandwidth nobody sent, copied from a compute cell.
    edit(
        "INSERT INTO cells (org, meter, span, start, project, kind, value, latest_at)
         SELECT org, 'bandwidth_bytes', span, start, project, kind, '5', latest_at
         FROM cells WHERE org = ?1 AND project = ?2",
        p0,
    );
    let d = drift(&env, &period);
    assert_month_drift(&d, "bandwidth_bytes", p0, "0", Value::from("5"));
    // Every kind is reported at once, and for the org-wide counters too.
    assert!(d.iter().any(|(m, p, ..)| m == "compute_minutes" && p == p1));
    assert!(
        d.iter()
            .any(|(m, p, ..)| m == "compute_minutes" && p.is_empty())
    );
}

/// The SQLite ledger's retention end to end: `tally prune-ledger` (dry, then for real)
/// deletes the records of events applied more than 45 days before its clock and leaves the
/// counters; the same events sent again then are refused as `period_closed` before any
/// duplicate check (so the ledger need not remember them), and reconcile refuses the month
/// with a sentence instead of reporting drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_events_are_refused_as_period_closed_and_reconcile_refuses_their_month() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "prune-co");
    let p0 = &tenant.projects[0];
    let now = Utc::now();
    let period = format!("{}-{:02}", now.year(), now.month());
    let at = now.to_rfc3339();
    let sent = vec![
        compute_minutes("k1", p0, "7.5", &at),
        compute_minutes("k2", p0, "2", &at),
    ];
    let server = spawn_app_in(&env).await;
    let client = reqwest::Client::new();
    post_accepted(&client, &server, &tenant.key, sent.clone()).await;
    wait_for_month(&client, &server, &tenant.key, &period, "9.5").await;
    server.stop().await.unwrap();

    let later = (now + chrono::Duration::days(46)).to_rfc3339();
    let at_later = [("TALLY_NOW", later.as_str())];
    // Today nothing is old enough.
    let today = env.cli(&["prune-ledger"]);
    assert_eq!(today["deleted"], 0, "{today}");
    let dry = env.cli_env(&["prune-ledger", "--dry-run"], &at_later);
    assert_eq!(
        (&dry["deleted"], &dry["dry_run"]),
        (&2.into(), &true.into()),
        "{dry}"
    );
    assert_eq!(dry["retention_days"], 45, "{dry}");
    let done = env.cli_env(&["prune-ledger"], &at_later);
    assert_eq!(done["deleted"], 2, "{done}");
    let db = rusqlite::Connection::open(env.data().join("tally.db")).unwrap();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    drop(db);

    // Reconcile refuses the month at that time, with the reason.
    let out = env.cli_raw_env(&["reconcile", "--period", &period], &at_later);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too old to reconcile"), "{err}");

    // The same events sent again are refused for their month; the counters did not move.
    let clock = clock_at(&later);
    let server = spawn_app_with(&env, |app| {
        app.settings.billing_scheduler = false;
        app.clock = clock;
    })
    .await;
    let answer = post_accepted(&client, &server, &tenant.key, sent).await;
    assert_eq!(answer["accepted"], 0, "{answer}");
    let codes: Vec<&str> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["period_closed", "period_closed"], "{answer}");
    wait_for_month(&client, &server, &tenant.key, &period, "9.5").await;
    server.stop().await.unwrap();
}
