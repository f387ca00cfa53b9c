//! Issue #18's done-when test: an operator defines a new meter and prices it in graduated
//! tiers in a catalogue file, and a *running* app serves it without a restart or rebuild;
//! then events across two models are ingested, usage is read grouped by model and
//! filtered, an entitlement is checked, the upcoming invoice previewed and the month billed,
//! every figure against the hand-worked result in the comments. Once on the embedded default
//! (SQLite and the local queue) and once on DynamoDB and SQS.
//!
//! The app runs on a test clock the test moves ([`FixedClock`]): it starts in May, the file
//! is applied in May (so, by the versioning rule, from June), and when the test turns the
//! clock to June the same app, never restarted, starts serving version 1 (its catalogue
//! refresh re-reads the stored versions at each month turn and every
//! `catalogue_refresh`). The CLI runs as subprocesses with `TALLY_NOW`.
//!
//! The catalogue: the built-in one plus meter `llm_tokens`, the sum of `properties.tokens`,
//! split by dimension `model` (`properties.model`), priced per 1,000 tokens. On starter (the
//! plan the org is moved to): $29.00 a month, 10 % off usage, 10,000 tokens included, then
//! graduated tiers on the overage in 1,000-token units: the first 20 units at $0.50, every
//! unit above at $0.30.
//!
//! June's events: gpt-4 12,000 + 8,000 = 20,000 tokens; claude 15,000 tokens; 35,000 in
//! all. Overage: 35,000 − 10,000 = 25,000 tokens = 25 units. Graduated: 20 × $0.50 =
//! $10.00 (tier 1) + 5 × $0.30 = $1.50 (tier 2, the boundary at 20 units crossed) = $11.50
//! list; 10 % off: − $1.15 = $10.35. Month: $29.00 + $10.35 = $39.35.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// When the app starts and the file is applied: May, so version 1 starts in June.
const IN_MAY: &str = "2026-05-20T12:00:00Z";
/// Halfway through June (15 of 30 days gone): when events are read back and the upcoming
/// invoice is previewed.
const MID_JUNE: &str = "2026-06-16T00:00:00Z";
/// After June's grace period: when June is billed.
const AFTER_JUNE: &str = "2026-07-01T02:00:00Z";

/// The catalogue file: the built-in catalogue plus `llm_tokens` (see the module doc).
fn catalogue_file() -> String {
    let by_model = json!({
        "value": "properties.tokens",
        "dimensions": [{ "name": "model", "property": "properties.model" }],
        "max_series": 10
    });
    let what = ("Model tokens", "tokens", "sum");
    let spec = priced_meter(what, ("1,000 tokens", 1000, "0.50"), by_model);
    // Starter includes 10,000 tokens and tiers the rest; the other plans list it as is.
    catalogue_with_meter("llm_tokens", spec, |plan| match plan {
        "starter" => json!({
            "included": 10000,
            "price": { "model": "graduated", "tiers": [
                { "up_to": "20", "unit_price": "0.50" },
                { "unit_price": "0.30" }
            ] }
        }),
        _ => json!({}),
    })
}

/// A decimal string of an answer, as a number (so `70000` and `70000.000000000` agree).
fn num(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

fn tokens(id: &str, project: &str, model: &str, n: u64, when: &str) -> Value {
    json!({
        "id": id,
        "project_id": project,
        "meter": "llm_tokens",
        "timestamp": when,
        "properties": { "tokens": n, "model": model },
    })
}

/// The month's value of a usage answer's `series`.
fn month_value(series: &Value) -> &str {
    assert_eq!(series.as_array().unwrap().len(), 1, "{series}");
    assert_eq!(series[0]["start"], "2026-06-01T00:00:00Z");
    series[0]["value"].as_str().unwrap()
}

async fn scenario(env: &Env, slug: &str) {
    let (tenant, server, clock, client) = tenant_on_clock(env, slug, IN_MAY).await;
    let (p0, p1) = (&tenant.projects[0], &tenant.projects[1]);

    // Check, then apply, the file while the app runs (May: version 1 starts in June).
    let path = catalogue_path(env, "llm.json", &catalogue_file());
    let checked = env.cli_env(&["catalogue", "check", &path], &tally_now(IN_MAY));
    assert_eq!(checked["valid"], true, "{checked}");
    let applied = apply_at(env, &path, IN_MAY);
    assert_eq!(applied["version"], 1, "{applied}");
    assert_eq!(applied["effective_from"], "2026-06");
    // The operator moves the org to starter (in May, so all of June is on it).
    set_plan(env, &tenant.org, "starter", IN_MAY);

    // Still May: the running app does not know llm_tokens (the built-in catalogue is in
    // force), however often it re-reads the versions.
    let may_event = tokens("may-1", p0, "gpt-4", 100, "2026-05-20T11:00:00Z");
    let (status, answer) = post_events(&client, &server, &tenant.key, vec![may_event])
        .await
        .unwrap();
    assert!(
        answer["accepted"].as_u64().unwrap_or(0) == 0
            && answer.to_string().contains("unknown_meter"),
        "llm_tokens is not in force in May: {status} {answer}"
    );

    // The month turns on the app's clock: the same process takes version 1 up.
    clock.set(at(MID_JUNE));
    wait_in_force(&client, &server, "llm_tokens", &tenant.key).await;

    let events = vec![
        tokens("gpt-1", p0, "gpt-4", 12_000, "2026-06-02T10:00:00Z"),
        tokens("gpt-2", p1, "gpt-4", 8_000, "2026-06-09T10:00:00Z"),
        tokens("claude-1", p0, "claude", 15_000, "2026-06-12T10:00:00Z"),
    ];
    post_all_accepted(&client, &server, &tenant.key, events).await;

    // Usage grouped by model: the total 35,000 and one group per model, in value order:
    // claude 15,000; gpt-4 12,000 + 8,000 = 20,000.
    let june = "meter=llm_tokens&granularity=month&from=2026-06-01&to=2026-07-01";
    let by_model = format!("{june}&group_by=model");
    let counted = |b: &Value| b["series"][0]["value"] == "35000";
    let done = "June's 35,000 tokens counted";
    let grouped = wait_for_usage(&client, &server, &tenant.key, &by_model, done, counted).await;
    assert_eq!(month_value(&grouped["series"]), "35000");
    let groups = grouped["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{grouped}");
    assert_eq!(groups[0]["value"], "claude");
    assert_eq!(month_value(&groups[0]["series"]), "15000");
    assert_eq!(groups[1]["value"], "gpt-4");
    assert_eq!(month_value(&groups[1]["series"]), "20000");
    // Filtered to gpt-4: 20,000.
    let gpt_4 = format!("/v1/usage?{june}&filter%5Bmodel%5D=gpt-4");
    let filtered = get_ok(&client, &server, &gpt_4, &tenant.key).await;
    assert_eq!(month_value(&filtered["series"]), "20000");

    // The upcoming invoice, at mid-June: the month so far is the $39.35 of the module doc.
    // Projected to month end (30 days / 15 gone = × 2): 70,000 tokens, 60 units over:
    // 20 × $0.50 + 40 × $0.30 = $22.00, 10 % off = $19.80; $29.00 + $19.80 = $48.80.
    // The owner's token, minted on the app's clock (`tally token create` mints on the real
    // one, months after this test's June).
    let owner = (env, &tenant);
    let upcoming = upcoming_on_version_1(&client, &server, owner, MID_JUNE, "starter").await;
    assert_eq!(upcoming["period"], "2026-06");
    let line = meter_line(&upcoming, "llm_tokens");
    assert_eq!(line["quantity"], "35000", "{line}");
    assert_eq!(line["included"], "10000");
    assert_eq!(line["billable"], "25000");
    assert_eq!(line["amount"], "10.35");
    assert_eq!(
        num(&line["projected_quantity"]),
        Decimal::from(70_000),
        "{line}"
    );
    assert_eq!(line["projected_amount"], "19.80");
    assert_eq!(upcoming["total"], "39.35", "{upcoming}");
    assert_eq!(upcoming["projected_total"], "48.80");
    // The entitlement, a minute later (ingest's cached month-to-date figure, read before
    // the events when the test waited for version 1, lives 2 s by the app's clock): starter
    // includes 10,000 and is soft (overage is billed), so the org may go on; usage 35,000,
    // remaining max(0, 10,000 − 35,000) = 0.
    clock.advance(chrono::Duration::minutes(1));
    let answer = wait_for_answer(
        &client,
        &server,
        "/v1/entitlements?meter=llm_tokens",
        &tenant.key,
        "the entitlement reads 35,000",
        |s, b| s == 200 && b["usage"] == "35000",
    )
    .await;
    assert_eq!(answer["meter"], "llm_tokens", "{answer}");
    assert_eq!(answer["allowed"], true);
    assert_eq!(answer["hard"], false);
    assert_eq!(answer["limit"], "10000");
    assert_eq!(answer["remaining"], "0");
    assert_eq!(answer["period"], "2026-06");

    server.stop().await.unwrap();

    // Bill June: the same figures, from the report month close stores.
    let report = billed_report(env, &tenant.org, "2026-06", AFTER_JUNE);
    assert_eq!(report["plan"], "starter", "{report}");
    assert_eq!(report["catalogue_version"], "1");
    let line = meter_line(&report, "llm_tokens");
    assert_eq!(line["quantity"], "35000", "{line}");
    assert_eq!(line["billable_price_units"], "25");
    // Tier 1 takes 20 units at $0.50, tier 2 the 5 past the boundary at $0.30.
    let tiers = line["tiers"].as_array().unwrap();
    assert_eq!(tiers.len(), 2, "{line}");
    assert_eq!(tiers[0]["billed_quantity"], "20");
    assert_eq!(tiers[0]["unit_price"], "0.50");
    assert_eq!(tiers[1]["billed_quantity"], "5");
    assert_eq!(tiers[1]["unit_price"], "0.30");
    assert_eq!(line["list_amount"], "11.50");
    assert_eq!(line["amount"], "10.35");
    assert_eq!(report["flat_fee"], "29.00");
    assert_eq!(report["total"], "39.35");
}

/// The same pickup by a real `tally serve` process, configured as an operator would
/// (`TALLY_CATALOGUE_REFRESH_SECONDS`, `TALLY_NOW`): a version applied for the current month
/// is served by the process already running, within its refresh interval (1 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tally_serve_process_serves_a_version_applied_while_it_runs() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "llm-proc");
    let now = [
        ("TALLY_NOW", MID_JUNE),
        ("TALLY_CATALOGUE_REFRESH_SECONDS", "1"),
    ];
    let server = Server::start_with(&env, &now);
    let client = reqwest::Client::new();
    let entitlement = server.url("/v1/entitlements?meter=llm_tokens");
    let (status, answer) = get_json(&client, entitlement.clone(), &tenant.key).await;
    assert_eq!(status, 400, "not in force before the apply: {answer}");
    assert_eq!(answer["error"]["code"], "unknown_meter");

    let body = catalogue_file();
    let applied = env.apply_catalogue("llm.json", &body, "2026-06", &tally_now(MID_JUNE));
    assert_eq!(applied["effective_from"], "2026-06", "{applied}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, answer) = get_json(&client, entitlement.clone(), &tenant.key).await;
        if status == 200 {
            // Pro lists llm_tokens without an allowance: unlimited, nothing used yet.
            assert_eq!(answer["meter"], "llm_tokens", "{answer}");
            assert_eq!(answer["usage"], "0");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never picked up: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

embedded_and_dynamodb_tests!(
    scenario,
    "llm-co",
    a_running_app_serves_and_bills_a_new_meter_applied_while_it_runs
);
