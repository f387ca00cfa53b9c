//! End-to-end tests of `tally catalogue`: `check` on broken files (each problem named by its
//! line and field, exit 2) and on the built-in one (exit 0); `apply` publishing versions
//! that month close prices each month by, the versioning rule's refusals, and a running
//! app picking up a published version on restart (with a meter that reads its amount from
//! `properties.tokens`).
//!
//! The tenant is on pro: $99.00 a month, 10,000 compute minutes included, 20 % off usage.
//! Built in, a minute over costs $0.10; version 1 of these tests makes it $0.20 from March.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};

const FEB: &str = "2026-02-10T00:00:00Z";

fn builtin() -> String {
    tally_core::catalogue::BUILTIN_JSON.to_owned()
}

/// Writes `text` as `name` in the env's data directory.
fn file(env: &Env, name: &str, text: &str) -> PathBuf {
    let path = env.data().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The built-in catalogue with `edit` applied to its JSON, pretty-printed.
fn edited(edit: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(&builtin()).unwrap();
    edit(&mut v);
    serde_json::to_string_pretty(&v).unwrap()
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> u64 {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    1 + text[..at].matches('\n').count() as u64
}

/// Runs `tally catalogue check FILE --json`: its exit code and its answer.
fn check(env: &Env, path: &Path) -> (i32, Value) {
    let out = env.cli_raw(&["catalogue", "check", path.to_str().unwrap()]);
    let answer = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "non-JSON ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), answer)
}

#[test]
fn check_names_the_line_and_field_of_each_problem_and_exits_2() {
    let env = Env::embedded();
    let text = builtin();

    // The built-in catalogue is valid: exit 0, no problems.
    let (code, answer) = check(&env, &file(&env, "builtin.json", &text));
    assert_eq!(code, 0, "{answer}");
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["problems"], json!([]));

    // Each bad file: (what is planted, the text, the line it must name, the field path it
    // must name; "" for a syntax or shape error, which names the parser's position).
    let missing_comma = text.replacen("\"currency\": \"usd\",", "\"currency\": \"usd\"", 1);
    let float = text.replacen("\"default_quantity\": 1,", "\"default_quantity\": 1.5,", 1);
    let negative_fee = text.replacen(
        "\"monthly_fee\": \"29.00\"",
        "\"monthly_fee\": \"-29.00\"",
        1,
    );
    let bad_tiers = edited(|v| {
        v["plans"]["pro"]["meters"]["api_calls"]["price"] = json!({
            "model": "graduated",
            "tiers": [
                { "up_to": "100", "unit_price": "0.10" },
                { "up_to": "50", "unit_price": "0.08" },
                { "unit_price": "0.05" }
            ]
        });
    });
    let unpriced = edited(|v| {
        v["plans"]["starter"]["meters"]
            .as_object_mut()
            .unwrap()
            .remove("compute_minutes");
    });
    let bad_value = edited(|v| {
        v["meters"]["compute_minutes"]["value"] = json!("properties.a b");
    });
    let bad_dimension = edited(|v| {
        v["meters"]["compute_minutes"]["dimensions"] =
            json!([{ "name": "model", "property": "model_name" }]);
    });
    let cases: Vec<(&str, &String, u64, &str)> = vec![
        (
            "a dimension whose property is not a path",
            &bad_dimension,
            line_of(&bad_dimension, "model_name"),
            "meters.compute_minutes.dimensions[0].property",
        ),
        (
            "a property path that is not one",
            &bad_value,
            line_of(&bad_value, "properties.a b"),
            "meters.compute_minutes.value",
        ),
        (
            "missing comma",
            &missing_comma,
            line_of(&missing_comma, "\"meters\""),
            "",
        ),
        ("float quantity", &float, line_of(&float, "1.5"), ""),
        (
            "negative fee",
            &negative_fee,
            line_of(&negative_fee, "-29.00"),
            "plans.starter.monthly_fee",
        ),
        (
            "descending tiers",
            &bad_tiers,
            line_of(&bad_tiers, "\"50\""),
            "plans.pro.meters.api_calls.price.tiers[1]",
        ),
        (
            "a plan that does not price a meter",
            &unpriced,
            // The missing entry is pointed at the table it is missing from.
            {
                let starter = unpriced.find("\"starter\"").unwrap();
                line_of(&unpriced[starter..], "\"meters\"") + line_of(&unpriced, "\"starter\"") - 1
            },
            "plans.starter.meters",
        ),
    ];
    for (what, text, line, path) in cases {
        let (code, answer) = check(&env, &file(&env, "bad.json", text));
        assert_eq!(code, 2, "{what}: {answer}");
        assert_eq!(answer["valid"], false, "{what}");
        let problems = answer["problems"].as_array().unwrap();
        let found = problems.iter().find(|p| {
            p["path"].as_str().unwrap().starts_with(path) && (!path.is_empty() || p["path"] == "")
        });
        let p = found.unwrap_or_else(|| panic!("{what}: no problem at {path:?}: {answer}"));
        assert_eq!(p["line"], line, "{what}: {answer}");
        assert!(p["column"].as_u64().unwrap() >= 1, "{what}");
        assert!(!p["message"].as_str().unwrap().is_empty(), "{what}");
    }

    // People get `file:line:column: field: message`, one line a problem, and exit 2.
    let path = file(&env, "bad.json", &negative_fee);
    let out = std::process::Command::new(bin())
        .args(["catalogue", "check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let want = format!("{}:{}:", path.display(), line_of(&negative_fee, "-29.00"));
    assert!(stdout.starts_with(&want), "{stdout}");
    assert!(stdout.contains("plans.starter.monthly_fee: "), "{stdout}");

    // A file that cannot be read is a plain failure (exit 1), not "invalid".
    let out = env.cli_raw(&["catalogue", "check", "/nonexistent/catalogue.json"]);
    assert_eq!(out.status.code(), Some(1));
}

/// The README's complete example is a valid catalogue.
#[test]
fn the_readme_example_is_valid() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("### The catalogue file").unwrap()..];
    let start = section.find("```json\n").unwrap() + "```json\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let env = Env::embedded();
    let (code, answer) = check(&env, &file(&env, "readme.json", example));
    assert_eq!(code, 0, "{answer}");
}

fn compute_line(report: &Value) -> &Value {
    meter_line(report, "compute_minutes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_versions_price_the_months_they_cover_and_live_meters_are_protected() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "acme");
    let p0 = &tenant.projects[0];

    // No version yet: the built-in catalogue is in force.
    let none = env.cli_env(&["catalogue", "versions"], &tally_now(FEB));
    assert_eq!(none["versions"], json!([]));
    assert_eq!(none["in_force"], Value::Null);

    // Version 1 doubles the list price of a compute minute; applied in February, it starts
    // in March by default.
    let v1 = edited(|v| {
        v["meters"]["compute_minutes"]["list_price"]["unit_price"] = json!("0.20");
    });
    let v1_path = file(&env, "v1.json", &v1);
    let v1_arg = v1_path.to_str().unwrap();
    let applied = env.cli_env(&["catalogue", "apply", v1_arg], &tally_now(FEB));
    assert_eq!(applied["version"], 1);
    assert_eq!(applied["effective_from"], "2026-03");
    assert_eq!(applied["applied_by"], "cli");

    // A month before the current one may have been billed: refused, and nothing stored.
    let out = env.cli_raw_env(
        &["catalogue", "apply", v1_arg, "--from", "2026-01"],
        &tally_now(FEB),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot apply from 2026-01"), "{err}");
    // An invalid file is refused before anything is stored.
    let bad = file(&env, "bad.json", "{\"version\": 1}");
    let out = env.cli_raw_env(
        &["catalogue", "apply", bad.to_str().unwrap()],
        &tally_now(FEB),
    );
    assert_eq!(out.status.code(), Some(1));
    let listed = env.cli_env(&["catalogue", "versions"], &tally_now(FEB));
    assert_eq!(listed["versions"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["in_force"], Value::Null, "version 1 starts in March");

    // 10,500 minutes in February and 10,500 in March.
    let events = vec![
        compute_minutes("feb-1", p0, "10500", "2026-02-10T10:00:00Z"),
        compute_minutes("mar-1", p0, "10500", "2026-03-01T00:10:00Z"),
    ];
    let months = [("2026-02", "10500"), ("2026-03", "10500")];
    count_usage(&env, &tenant, IN_GRACE, events, &months).await;

    // Changing compute_minutes to `max` while it has counters in open months is refused,
    // with the reason; so is removing it.
    let to_max = edited(|v| v["meters"]["compute_minutes"]["aggregation"] = json!("max"));
    let out = env.cli_raw_env(
        &[
            "catalogue",
            "apply",
            file(&env, "max.json", &to_max).to_str().unwrap(),
        ],
        &tally_now(IN_GRACE),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("meter compute_minutes changes aggregation from sum to max"),
        "{err}"
    );
    assert!(
        err.contains(&tenant.org) && err.contains("open period 2026-03"),
        "{err}"
    );
    let removed = edited(|v| {
        v["meters"]
            .as_object_mut()
            .unwrap()
            .remove("compute_minutes");
        for plan in ["free", "starter", "pro", "enterprise"] {
            v["plans"][plan]["meters"]
                .as_object_mut()
                .unwrap()
                .remove("compute_minutes");
        }
    });
    let out = env.cli_raw_env(
        &[
            "catalogue",
            "apply",
            file(&env, "rm.json", &removed).to_str().unwrap(),
        ],
        &tally_now(IN_GRACE),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("meter compute_minutes is removed"), "{err}");
    let listed = env.cli_env(&["catalogue", "versions"], &tally_now(IN_GRACE));
    assert_eq!(listed["versions"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["in_force"], 1);

    // February is priced with the built-in catalogue (no version covers it):
    // 500 minutes over × $0.10 = $50.00, 20 % off = $40.00; $99.00 + $40.00 = $139.00.
    let r = &bill(&env, "2026-02", AFTER_GRACE)["reports"][0];
    assert_eq!(compute_line(r)["unit_price"], "0.10", "{r}");
    assert_eq!(compute_line(r)["amount"], "40.00");
    assert_eq!(r["total"], "139.00");

    // March with version 1: 500 × $0.20 = $100.00, 20 % off = $80.00; $99.00 + $80.00 =
    // $179.00.
    let r = &bill(&env, "2026-03", APRIL)["reports"][0];
    assert_eq!(compute_line(r)["unit_price"], "0.20", "{r}");
    assert_eq!(compute_line(r)["amount"], "80.00");
    assert_eq!(r["total"], "179.00");

    // The stored version is the file as applied, byte for byte.
    let out = env.cli_raw_env(&["catalogue", "show", "--version", "1"], &tally_now(APRIL));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        v1.trim_end()
    );
}

/// `tally bill --period MONTH --no-stripe` at `at`: what it printed.
fn bill(env: &Env, month: &str, at: &str) -> Value {
    let args = ["bill", "--period", month, "--no-stripe"];
    env.cli_env(&args, &tally_now(at))
}

/// Starts the app (no billing scheduler), which reads the catalogue version in force,
/// posts `events` (a JSON array) with the tenant's key, and stops it: the status and answer.
async fn post_to_a_started_app(env: &Env, tenant: &Tenant, events: &Value) -> (u16, Value) {
    let server = spawn_app_with(env, |app| app.settings.billing_scheduler = false).await;
    let client = reqwest::Client::new();
    let answer = post_events(
        &client,
        &server,
        &tenant.key,
        events.as_array().unwrap().clone(),
    )
    .await
    .unwrap();
    server.stop().await.unwrap();
    answer
}

/// A running app reads the version in force when it starts: an event of a meter only
/// version 1 defines is refused before the version is applied and accepted after a restart.
/// (The app picks its catalogue by the real clock, so the version starts this month.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_app_runs_with_the_applied_version() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "tokens");
    let now = chrono::Utc::now();
    let event = json!([{
        "id": "tok-1",
        "project_id": tenant.projects[0],
        "meter": "llm_tokens",
        "timestamp": now.to_rfc3339(),
        "properties": { "tokens": 1200, "model": "gpt-4" },
    }]);

    let (status, answer) = post_to_a_started_app(&env, &tenant, &event).await;
    // Refused as a whole or event by event, depending on the status ingest picks.
    assert!(
        answer["accepted"].as_u64().unwrap_or(0) == 0
            && answer.to_string().contains("unknown_meter"),
        "llm_tokens is not a built-in meter: {status} {answer}"
    );

    let with_tokens = edited(|v| {
        v["meters"]["llm_tokens"] = json!({
            "unit": "tokens",
            "aggregation": "sum",
            "value": "properties.tokens",
            "price_unit": "1,000 tokens",
            "price_unit_size": 1000,
            "list_price": { "model": "per_unit", "unit_price": "0.02" }
        });
        for plan in ["free", "starter", "pro", "enterprise"] {
            v["plans"][plan]["meters"]["llm_tokens"] = json!({});
        }
    });
    let path = file(&env, "tokens.json", &with_tokens);
    let month = tally_core::Month::of(now).to_string();
    let applied = env.cli(&[
        "catalogue",
        "apply",
        path.to_str().unwrap(),
        "--from",
        &month,
    ]);
    assert_eq!(applied["effective_from"], month.as_str());

    let (status, answer) = post_to_a_started_app(&env, &tenant, &event).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    // The meter reads its amount from properties.tokens: an event without it is refused
    // naming that path, and the one accepted counts its 1,200 tokens.
    let mut no_tokens = event[0].clone();
    no_tokens["id"] = json!("tok-2");
    no_tokens["properties"] = json!({ "model": "gpt-4" });
    let server = spawn_app_with(&env, |app| app.settings.billing_scheduler = false).await;
    let client = reqwest::Client::new();
    let (status, answer) = post_events(&client, &server, &tenant.key, vec![no_tokens])
        .await
        .unwrap();
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["rejected"][0]["error"]["field"], "properties.tokens",
        "{answer}"
    );
    let m = tally_core::Month::of(now);
    let query = format!(
        "meter=llm_tokens&granularity=month&from={}&to={}",
        m.start().format("%Y-%m-%d"),
        m.end().format("%Y-%m-%d")
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = usage(&client, &server, &tenant.key, &query).await;
        if got.first().map(|(_, v)| v.as_str()) == Some("1200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "llm_tokens never reached 1200: {got:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await.unwrap();
}

/// `tally org set-plan` and `tally project create` check the project limit of the catalogue
/// version in force when they act, not of the `--catalogue` file (here the built-in one:
/// free allows 1 project, pro 20). Version 1, in force from February, lets free have 3 and
/// pro only 1: an org of 2 projects may move to free (the file would refuse it), not to pro
/// (the file would allow it), and on free it may make a third project.
#[test]
fn plan_limits_come_from_the_version_in_force() {
    let env = Env::embedded();
    let org = env.create_org("Limits", "limits-co", "lim@example.com", Some("starter"));
    let (org_id, _) = org_and_owner(&org);
    for slug in ["one", "two"] {
        let args = [
            "project", "create", "--org", org_id, "--name", "P", "--slug", slug,
        ];
        env.cli_env(&args, &tally_now(FEB));
    }
    let v1 = edited(|v| {
        v["plans"]["free"]["projects"] = json!(3);
        v["plans"]["pro"]["projects"] = json!(1);
    });
    let v1_path = file(&env, "limits.json", &v1);
    let apply = [
        "catalogue",
        "apply",
        v1_path.to_str().unwrap(),
        "--from",
        "2026-02",
    ];
    assert_eq!(env.cli_env(&apply, &tally_now(FEB))["version"], 1);

    let set_plan = |plan: &str| {
        let args = ["org", "set-plan", "--org", org_id, "--plan", plan];
        env.cli_raw_env(&args, &tally_now(FEB))
    };
    let refused = set_plan("pro");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("the pro plan allows 1 projects (catalogue version 1)")
            && err.contains("has 2"),
        "{err}"
    );
    let moved = set_plan("free");
    assert!(moved.status.success(), "{moved:?}");
    let three = [
        "project", "create", "--org", org_id, "--name", "P", "--slug", "three",
    ];
    env.cli_env(&three, &tally_now(FEB));
    let four = [
        "project", "create", "--org", org_id, "--name", "P", "--slug", "four",
    ];
    let out = env.cli_raw_env(&four, &tally_now(FEB));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("allows 3"), "{err}");
}

/// A late event is validated with the catalogue version in force in its own month. Version
/// 1 (February) adds `llm_tokens`; version 2 (March) drops it and adds `gpu_hours`. On
/// 1 March, February is still open: a February event of `llm_tokens` is accepted and one of
/// `gpu_hours` refused naming the `meter` field, while March's events follow version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_follow_the_catalogue_of_their_month() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "late");
    let meter = |v: &mut Value, name: &str, value: Value| {
        v["meters"][name] = value;
        for plan in ["free", "starter", "pro", "enterprise"] {
            v["plans"][plan]["meters"][name] = json!({});
        }
    };
    let v1 = edited(|v| {
        let tokens = json!({
            "unit": "tokens", "aggregation": "sum", "value": "properties.tokens",
            "price_unit": "1,000 tokens", "price_unit_size": 1000,
            "list_price": { "model": "per_unit", "unit_price": "0.02" }
        });
        meter(v, "llm_tokens", tokens);
    });
    let v2 = edited(|v| {
        let gpu = json!({
            "unit": "hours", "aggregation": "sum", "price_unit": "hour", "price_unit_size": 1,
            "list_price": { "model": "per_unit", "unit_price": "2.00" }
        });
        meter(v, "gpu_hours", gpu);
    });
    for (name, text, from) in [("v1.json", &v1, "2026-02"), ("v2.json", &v2, "2026-03")] {
        let path = file(&env, name, text);
        let args = ["catalogue", "apply", path.to_str().unwrap(), "--from", from];
        env.cli_env(&args, &tally_now(FEB));
    }

    let server = serve_at(&env, IN_GRACE).await;
    let p0 = &tenant.projects[0];
    let (feb, mar) = ("2026-02-27T10:00:00Z", "2026-03-01T00:10:00Z");
    let tokens = |id: &str, at: &str| {
        json!({"id": id, "project_id": p0, "meter": "llm_tokens", "timestamp": at,
               "properties": {"tokens": 1200}})
    };
    let gpu = |id: &str, at: &str| json!({"id": id, "project_id": p0, "meter": "gpu_hours", "timestamp": at, "quantity": 2});
    let events = vec![
        tokens("t-feb", feb),
        gpu("g-feb", feb),
        gpu("g-mar", mar),
        tokens("t-mar", mar),
    ];
    let client = reqwest::Client::new();
    let (status, answer) = post_events(&client, &server, &tenant.key, events)
        .await
        .unwrap();
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    let rejected: Vec<(u64, &str, &str)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let e = &r["error"];
            let (code, field) = (e["code"].as_str().unwrap(), e["field"].as_str().unwrap());
            (r["index"].as_u64().unwrap(), code, field)
        })
        .collect();
    assert_eq!(
        rejected,
        [(1, "unknown_meter", "meter"), (3, "unknown_meter", "meter")],
        "{answer}"
    );
    let message = answer["rejected"][0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("for an event of 2026-02"), "{message}");
    server.stop().await.unwrap();
}
