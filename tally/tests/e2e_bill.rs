//! End-to-end tests of `tally bill` (and the server's billing scheduler) on the embedded
//! default: `tally bill` runs as the real binary, the server runs in process. Time is
//! pinned, with the hidden `TALLY_NOW` for the CLI (the process clock starts at that
//! instant) and with the same clock ([`clock_at`]) for the in-process app, so the tests
//! bill February 2026 whatever today is.
//!
//! The tenant is on the built-in pro plan: $99.00 a month, 10,000 compute minutes
//! included, then $0.10 a minute, 20 % off usage.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Map, Value};
use tally_core::ports::{EventQueue, ReportStore, UsageStore};
use tally_core::{Aggregation, Event, EventId, MeterName, Month, OrgId, ProjectId, Quantity};

fn failure(env: &Env, args: &[&str], at: &str) -> String {
    let out = env.cli_raw_env(args, &tally_now(at));
    assert!(!out.status.success(), "tally {args:?} should have failed");
    assert!(out.stdout.is_empty(), "nothing on stdout when refusing");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bill_refuses_open_months_closes_prices_reruns_identically_and_adjusts_late_usage() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "acme");
    february_usage(&env, &tenant, IN_GRACE).await;

    // Refusals: the current month, a later one, an ended month inside its grace period.
    let bill = ["bill", "--period", "2026-02"];
    let err = failure(&env, &["bill", "--period", "2026-03"], IN_GRACE);
    assert!(err.contains("2026-03 has not ended"), "{err}");
    let err = failure(&env, &["bill", "--period", "2026-07"], IN_GRACE);
    assert!(err.contains("has not ended"), "{err}");
    let err = failure(&env, &bill, IN_GRACE);
    assert!(err.contains("grace period"), "{err}");
    assert!(err.contains("2026-03-01T01:00:00Z"), "{err}");
    let err = failure(&env, &["bill", "--period", "Feb"], AFTER_GRACE);
    assert!(err.contains("--period"), "{err}");
    // A shorter grace period lets it through, as a dry run here.
    let dry = env.cli_env(
        &[
            "bill",
            "--period",
            "2026-02",
            "--grace-period",
            "10m",
            "--dry-run",
        ],
        &tally_now(IN_GRACE),
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["stored_now"], 0);

    // The run: closes February and stores the report, in the contract's shape.
    let first = env.cli_env(&bill, &tally_now(AFTER_GRACE));
    assert_eq!(first["stored_now"], 1);
    let reports = first["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r["org_id"], tenant.org);
    assert_eq!(r["period"], "2026-02");
    assert_eq!(r["plan"], "pro");
    assert_eq!(r["currency"], "usd");
    let cm = meter_line(r, "compute_minutes");
    assert_eq!(cm["quantity"], "10500");
    assert_eq!(cm["included"], "10000");
    assert_eq!(cm["billable"], "500");
    assert_eq!(cm["unit_price"], "0.10");
    // 500 × $0.10 = $50.00, 20 % off: $40.00.
    assert_eq!(cm["amount"], "40.00");
    assert!(cm["tiers"].is_array());
    for meter in ["api_calls", "storage_bytes", "bandwidth_bytes"] {
        assert_eq!(meter_line(r, meter)["amount"], "0.00", "{meter}");
    }
    assert_eq!(r["subtotal"], "149.00");
    assert_eq!(r["discount"], "10.00");
    assert_eq!(r["total"], "139.00");
    // $40.00 split 6,000 : 4,500 between the projects, to the cent.
    let projects = r["projects"].as_array().unwrap();
    assert_eq!(projects.len(), 2);
    let (p0, p1) = (&tenant.projects[0], &tenant.projects[1]);
    let share = |p: &str| {
        projects.iter().find(|a| a["project_id"] == p).unwrap()["amount"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(share(p0), "22.86");
    assert_eq!(share(p1), "17.14");
    // The dry run showed what was stored.
    assert_eq!(dry["reports"], first["reports"]);

    // Twice: the same reports, nothing stored; a dry run and a one-org run agree.
    let again = env.cli_env(&bill, &tally_now(AFTER_GRACE));
    assert_eq!(again["stored_now"], 0);
    assert_eq!(again["reports"], first["reports"]);
    let one = env.cli_env(
        &["bill", "--period", "2026-02", "--org", &tenant.org],
        &tally_now(AFTER_GRACE),
    );
    assert_eq!(one["reports"], first["reports"]);

    // The period is closed: ingest refuses February, takes March.
    let client = reqwest::Client::new();
    let server = serve_at(&env, AFTER_GRACE).await;
    let out = post_accepted(
        &client,
        &server,
        &tenant.key,
        vec![
            compute_minutes("feb-late", p0, "1", "2026-02-27T00:00:00Z"),
            compute_minutes("mar-1", p0, "1", "2026-03-01T01:30:00Z"),
        ],
    )
    .await;
    assert_eq!(out["accepted"], 1, "{out}");
    assert_eq!(
        out["rejected"][0]["error"]["code"], "period_closed",
        "{out}"
    );
    assert_eq!(out["rejected"][0]["error"]["field"], "timestamp", "{out}");
    server.stop().await.unwrap();

    // An event ingest accepted before the close, still on the queue when February was
    // billed: the aggregator applies it when the server next runs.
    let queue = tally_store::LocalQueue::open(&env.data().join("queue.db")).unwrap();
    let in_flight = Event {
        org_id: OrgId::parse(&tenant.org).unwrap(),
        id: EventId::parse("feb-in-flight").unwrap(),
        project_id: ProjectId::parse(p1).unwrap(),
        meter: MeterName::parse("compute_minutes").unwrap(),
        aggregation: Aggregation::Sum,
        quantity: Quantity::parse("100").unwrap(),
        timestamp: "2026-02-28T23:59:00Z".parse().unwrap(),
        properties: Map::new(),
    };
    assert!(queue.publish(&[in_flight]).await.unwrap().failed.is_empty());
    drop(queue);
    let server = serve_at(&env, AFTER_GRACE).await;
    wait_for_month(&client, &server, &tenant.key, "2026-02", "10600").await;
    wait_for_month(&client, &server, &tenant.key, "2026-03", "1").await;
    server.stop().await.unwrap();

    // February's report does not change...
    let still = env.cli_env(&bill, &tally_now(APRIL));
    assert_eq!(still["reports"], first["reports"]);
    // ...the 100 late minutes are an adjustment on March's report.
    let march = env.cli_env(&["bill", "--period", "2026-03"], &tally_now(APRIL));
    let m = &march["reports"][0];
    assert_eq!(m["period"], "2026-03");
    let adjustments = m["adjustments"].as_array().unwrap();
    assert_eq!(adjustments.len(), 1, "{m}");
    let a = &adjustments[0];
    assert_eq!(a["period"], "2026-02");
    assert_eq!(a["meter"], "compute_minutes");
    assert_eq!(a["invoiced_quantity"], "10500");
    assert_eq!(a["corrected_quantity"], "10600");
    // 100 × $0.10 = $10.00 list, 20 % off: $8.00 added.
    assert_eq!(a["list_amount"], "10.00");
    assert_eq!(a["amount"], "8.00");
    assert_eq!(meter_line(m, "compute_minutes")["quantity"], "1");
    assert_eq!(m["total"], "107.00");
    // And a rerun of March keeps it exactly once.
    let march_again = env.cli_env(&["bill", "--period", "2026-03"], &tally_now(APRIL));
    assert_eq!(march_again["reports"], march["reports"]);
    assert_eq!(march_again["stored_now"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_scheduler_bills_the_ended_month_with_the_same_code() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "sched");
    let org = OrgId::parse(&tenant.org).unwrap();
    let feb = Month::parse("2026-02").unwrap();
    // The scheduler checks at start: February is past its grace period at AFTER_GRACE.
    let server = spawn_app_with(&env, |app| app.clock = clock_at(AFTER_GRACE)).await;
    let store = tally_store::SqliteStore::open(&env.data().join("tally.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored = loop {
        if let Some(r) = store.get_report(&org, feb).await.unwrap() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler never stored February"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    server.stop().await.unwrap();
    // `tally bill` finds the scheduler's report and prints it unchanged.
    let out = env.cli_env(&["bill", "--period", "2026-02"], &tally_now(AFTER_GRACE));
    assert_eq!(out["stored_now"], 0);
    let body: Value = serde_json::from_str(&stored.body).unwrap();
    assert_eq!(out["reports"][0], body);
    assert_eq!(body["total"], "99.00");
}

/// The server was down across two month-ends (1 April and 1 May): started on 1 May, its
/// scheduler bills March and April on its first check, oldest first, and leaves February
/// (billed on time by `tally bill`) as it was. Before, it billed April alone and March
/// stayed open for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_scheduler_catches_up_missed_months_oldest_first() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "catchup");
    let org = OrgId::parse(&tenant.org).unwrap();
    let out = env.cli_env(&["bill", "--period", "2026-02"], &tally_now(AFTER_GRACE));
    assert_eq!(out["stored_now"], 1, "{out}");
    let store = tally_store::SqliteStore::open(&env.data().join("tally.db")).unwrap();
    let [feb, mar, apr] = ["2026-02", "2026-03", "2026-04"].map(|m| Month::parse(m).unwrap());
    let february = store.get_report(&org, feb).await.unwrap().unwrap();

    let server = spawn_app_with(&env, |app| app.clock = clock_at("2026-05-01T02:00:00Z")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (march, april) = loop {
        if let (Some(m), Some(a)) = (
            store.get_report(&org, mar).await.unwrap(),
            store.get_report(&org, apr).await.unwrap(),
        ) {
            break (m, a);
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler never stored March and April"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    server.stop().await.unwrap();
    assert!(
        march.created_at <= april.created_at,
        "March is billed before April"
    );
    for month in [feb, mar, apr] {
        assert!(store.is_period_closed(month).await.unwrap(), "{month}");
    }
    assert_eq!(
        store.get_report(&org, feb).await.unwrap().unwrap(),
        february
    );
    // `tally bill` finds both stored: nothing left to bill.
    for period in ["2026-03", "2026-04"] {
        let out = env.cli_env(
            &["bill", "--period", period],
            &tally_now("2026-05-01T02:00:00Z"),
        );
        assert_eq!(out["stored_now"], 0, "{out}");
    }
}

/// `tally bill --org` for an org created after the month is refused with one line naming
/// the org and the month; nothing is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bill_refuses_an_org_created_after_the_month() {
    let env = Env::embedded();
    let created = env.cli_env(
        &[
            "org",
            "create",
            "--name",
            "Newco",
            "--slug",
            "newco",
            "--owner-email",
            "new@example.com",
            "--plan",
            "pro",
        ],
        &tally_now("2026-03-10T00:00:00Z"),
    );
    let org = created["id"].as_str().unwrap().to_owned();
    let err = failure(&env, &["bill", "--period", "2026-02", "--org", &org], APRIL);
    assert!(
        err.contains(&org) && err.contains("did not exist in 2026-02"),
        "{err}"
    );
    let store = tally_store::SqliteStore::open(&env.data().join("tally.db")).unwrap();
    assert!(
        !store
            .is_period_closed(Month::parse("2026-02").unwrap())
            .await
            .unwrap()
    );
    // Billing every org for February leaves it out; March is its first month.
    let feb = env.cli_env(&["bill", "--period", "2026-02"], &tally_now(APRIL));
    assert_eq!(feb["reports"].as_array().unwrap().len(), 0, "{feb}");
    assert_eq!(feb["not_in_period"], 1, "{feb}");
    let mar = env.cli_env(
        &["bill", "--period", "2026-03", "--org", &org],
        &tally_now(APRIL),
    );
    assert_eq!(mar["reports"][0]["total"], "99.00", "{mar}");
}
