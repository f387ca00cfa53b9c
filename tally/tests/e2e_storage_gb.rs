//! Issue #18's hand-worked time-weighted test: an operator defines a storage meter
//! `storage_gb` (`time_weighted_sum`: each event a reading of a project's GB, held until its
//! next reading) priced per GB-hour, applies it to a running app, ingests readings in
//! October, reads usage by day and by hour, checks the entitlement, previews the upcoming
//! invoice at a fixed time, and bills October and November, November with no readings at
//! all, charged on the readings October closed on. Once on the embedded default (SQLite and
//! the local queue) and once on DynamoDB and SQS. The app runs on a test clock
//! ([`FixedClock`]); the CLI runs with `TALLY_NOW`.
//!
//! `storage_gb` is priced $0.01 per GB-hour (list price). The org is on pro: $99.00 a
//! month, 20 % off usage, no allowance for the meter.
//!
//! October 2026 (744 hours). Project 0: 100 GB from 16 Oct 00:00, 20 GB from 31 Oct 00:00;
//! project 1: 50 GB from 31 Oct 12:00.
//!
//! - Usage at 31 Oct 18:00 (now), by day: 30 Oct: 100 × 24 h = 2,400 GB-hours (the 16 Oct
//!   reading carried in); 31 Oct up to now: 20 × 18 + 50 × 6 = 660. By hour on 31 Oct:
//!   11:00 20; 12:00 and 13:00 20 + 50 = 70.
//! - The upcoming invoice at 31 Oct 18:00: so far 100 × 360 + 20 × 18 + 50 × 6 = 36,660
//!   GB-hours = $366.60 list, $293.28 after 20 %, $392.28 with the fee; projected: the
//!   70 GB held now for the 6 hours left, 36,660 + 420 = 37,080 = $370.80, $296.64,
//!   projected total $395.64.
//! - October billed: 100 × 360 + 20 × 24 + 50 × 12 = 37,080 GB-hours: $370.80 list,
//!   − $74.16 = $296.64, total $395.64; closing readings: project 0 20 GB, project 1 50 GB.
//! - November (720 hours), no readings: 20 × 720 + 50 × 720 = 50,400 GB-hours: $504.00
//!   list, − $100.80 = $403.20, total $502.20 (without the carry it would be $99.00).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// When the app starts and the file is applied: September, so version 1 starts in October.
const IN_SEPT: &str = "2026-09-20T12:00:00Z";
/// When usage is read and the upcoming invoice previewed.
const NOW: &str = "2026-10-31T18:00:00Z";
/// After October's grace period: October is billed.
const AFTER_OCT: &str = "2026-11-01T02:00:00Z";
/// After November's: November is billed.
const AFTER_NOV: &str = "2026-12-01T02:00:00Z";

fn catalogue_file() -> String {
    let what = ("Storage held", "GB", "time_weighted_sum");
    let spec = priced_meter(what, ("GB-hour", 1, "0.01"), json!({}));
    // Every plan lists it at the list price, with no allowance.
    catalogue_with_meter("storage_gb", spec, |_| json!({}))
}

fn reading(id: &str, project: &str, gb: u64, when: &str) -> Value {
    json!({ "id": id, "project_id": project, "meter": "storage_gb", "timestamp": when,
            "quantity": gb })
}

/// (start, value) of each bucket of a usage answer.
fn buckets(answer: &Value) -> Vec<(String, String)> {
    answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_str().unwrap().to_owned(),
                p["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(want: &[(&str, &str)]) -> Vec<(String, String)> {
    want.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

/// (quantity, list amount, amount) of the storage_gb line; it says its plan and catalogue
/// version as every line does.
fn storage_line(report: &Value) -> (String, String, String) {
    let line = meter_line(report, "storage_gb");
    assert_eq!(line["plan"], "pro", "{line}");
    assert_eq!(line["catalogue_version"], "1", "{line}");
    let s = |k: &str| line[k].as_str().unwrap().to_owned();
    (s("quantity"), s("list_amount"), s("amount"))
}

async fn scenario(env: &Env, slug: &str) {
    let (tenant, server, clock, client) = tenant_on_clock(env, slug, IN_SEPT).await;
    let (p0, p1) = (&tenant.projects[0], &tenant.projects[1]);

    let path = catalogue_path(env, "storage.json", &catalogue_file());
    let applied = apply_at(env, &path, IN_SEPT);
    assert_eq!(applied["effective_from"], "2026-10", "{applied}");
    set_plan(env, &tenant.org, "pro", IN_SEPT);

    clock.set(at(NOW));
    let e = wait_in_force(&client, &server, "storage_gb", &tenant.key).await;
    // Never limited: a GB-hours figure is known only after the fact.
    assert_eq!(e["allowed"], true, "{e}");
    assert_eq!(e["limit"], Value::Null);
    assert_eq!(e["remaining"], Value::Null);

    let events = vec![
        reading("a-1", p0, 100, "2026-10-16T00:00:00Z"),
        reading("a-2", p0, 20, "2026-10-31T00:00:00Z"),
        reading("b-1", p1, 50, "2026-10-31T12:00:00Z"),
    ];
    post_all_accepted(&client, &server, &tenant.key, events).await;

    let days = "meter=storage_gb&granularity=day&from=2026-10-30&to=2026-11-01";
    let two_days = |b: &Value| b["series"].as_array().is_some_and(|a| a.len() == 2);
    let applied = "the readings applied";
    let by_day = wait_for_usage(&client, &server, &tenant.key, days, applied, two_days).await;
    assert_eq!(
        buckets(&by_day),
        pairs(&[
            ("2026-10-30T00:00:00Z", "2400"),
            ("2026-10-31T00:00:00Z", "660"),
        ])
    );
    let hours =
        "meter=storage_gb&granularity=hour&from=2026-10-31T11:00:00Z&to=2026-10-31T14:00:00Z";
    let by_hour = get_ok(&client, &server, &format!("/v1/usage?{hours}"), &tenant.key).await;
    assert_eq!(
        buckets(&by_hour),
        pairs(&[
            ("2026-10-31T11:00:00Z", "20"),
            ("2026-10-31T12:00:00Z", "70"),
            ("2026-10-31T13:00:00Z", "70"),
        ])
    );

    let upcoming = upcoming_on_version_1(&client, &server, (env, &tenant), NOW, "pro").await;
    let line = meter_line(&upcoming, "storage_gb");
    assert_eq!(line["quantity"], "36660", "{line}");
    assert_eq!(line["amount"], "293.28");
    assert_eq!(line["projected_quantity"], "37080");
    assert_eq!(line["projected_amount"], "296.64");
    assert_eq!(upcoming["total"], "392.28", "{upcoming}");
    assert_eq!(upcoming["projected_total"], "395.64");

    server.stop().await.unwrap();

    let oct = billed_report(env, &tenant.org, "2026-10", AFTER_OCT);
    assert_eq!(
        storage_line(&oct),
        ("37080".into(), "370.80".into(), "296.64".into())
    );
    assert_eq!(oct["total"], "395.64", "{oct}");
    let closing = json!({ "storage_gb": { p0.as_str(): "20", p1.as_str(): "50" } });
    assert_eq!(oct["closing_readings"], closing, "{oct}");
    let nov = billed_report(env, &tenant.org, "2026-11", AFTER_NOV);
    assert_eq!(
        storage_line(&nov),
        ("50400".into(), "504.00".into(), "403.20".into())
    );
    assert_eq!(nov["total"], "502.20", "{nov}");
    assert_eq!(nov["closing_readings"], closing);
}

embedded_and_dynamodb_tests!(
    scenario,
    "storage-co",
    a_storage_meter_is_billed_per_gb_hour_over_two_months
);
