//! End-to-end tests of `tally import`: the real binary applies an NDJSON file straight to
//! the store (a temporary SQLite file; DynamoDB on the emulator in the last test), with time
//! pinned by `TALLY_NOW`, and usage is read back with `tally usage` and `tally bill`.
//!
//! The tenant is on the pro plan (10,000 compute minutes included), created on 1 February
//! 2026; February is billed (closed) before the imports, which run on 10 March.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::str::FromStr;

use common::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};

const FEB_BILLED: &str = "2026-03-01T02:00:00Z";
const IMPORT_AT: &str = "2026-03-10T00:00:00Z";

/// Runs `tally import ARGS` at `now`: the exit code and the JSON summary.
fn import(env: &Env, args: &[&str], now: &str) -> (Option<i32>, Value) {
    let mut all = vec!["import"];
    all.extend(args);
    env.cli_status_env(&all, &tally_now(now))
}

/// Runs `tally import ARGS` at [`IMPORT_AT`], which must refuse them before importing
/// anything (exit 1), saying `want` on stderr.
fn refused(env: &Env, args: &[&str], want: &str) {
    let mut all = vec!["import"];
    all.extend(args);
    let out = env.cli_raw_env(&all, &tally_now(IMPORT_AT));
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(want), "{err}");
}

/// The org's compute minutes of `month` (YYYY-MM) through `tally usage`.
fn month_minutes(env: &Env, org: &str, month: &str, next: &str) -> Value {
    let out = env.cli_env(
        &[
            "usage",
            "--org",
            org,
            "--meter",
            "compute_minutes",
            "--granularity",
            "month",
            "--from",
            &format!("{month}-01"),
            "--to",
            &format!("{next}-01"),
        ],
        &tally_now(IMPORT_AT),
    );
    out["series"].clone()
}

/// Asserts that the org's March holds `value` compute minutes, read with `tally usage`.
fn assert_march_minutes(env: &Env, org: &str, value: &str) {
    assert_eq!(
        month_minutes(env, org, "2026-03", "2026-04"),
        json!([{"start": "2026-03-01T00:00:00Z", "value": value}])
    );
}

/// Asserts that an import exited 5 having accepted `accepted` lines and refused one: the
/// `line`th, with `code`.
fn assert_one_refused((exit, s): (Option<i32>, &Value), accepted: u64, (line, code): (u64, &str)) {
    assert_eq!(exit, Some(5), "{s}");
    assert_eq!(s["accepted"], accepted, "{s}");
    assert_eq!(s["rejected"], 1, "{s}");
    assert_eq!(s["rejections"][0]["line"], line, "{s}");
    assert_eq!(s["rejections"][0]["code"], code, "{s}");
}

fn write(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn minutes(id: &str, project: &str, q: &str, ts: &str) -> String {
    json!({"id": id, "project_id": project, "meter": "compute_minutes", "quantity": q, "timestamp": ts})
        .to_string()
}

#[test]
fn import_counts_good_lines_once_refuses_bad_ones_by_line_and_reruns_as_duplicates() {
    let (env, tenant) = embedded_tenant("acme");
    let (p0, p1) = (&tenant.projects[0], &tenant.projects[1]);
    // February is billed, so closed.
    let billed = env.cli_env(&["bill", "--period", "2026-02"], &tally_now(FEB_BILLED));
    assert_eq!(billed["stored_now"], 1, "{billed}");

    let file = env.data().join("events.ndjson");
    write(
        &file,
        &[
            minutes("imp-1", p0, "10", "2026-03-02T10:00:00Z"),
            minutes("imp-2", p1, "5", "2026-03-03T10:00:00Z"),
            String::new(),
            minutes("imp-1", p0, "10", "2026-03-02T10:00:00Z"),
            r#"{"id": "imp-bad", "project_id": "#.to_owned(),
            minutes("imp-3", "prj_doesnotexist", "1", "2026-03-04T10:00:00Z"),
            minutes("imp-4", p0, "-3", "2026-03-04T10:00:00Z"),
            minutes("imp-feb", p0, "7", "2026-02-20T10:00:00Z"),
        ],
    );
    let file = file.to_str().unwrap();
    let rejected = env.data().join("rejected.ndjson");
    let rejected_arg = rejected.to_str().unwrap();

    let (code, s) = import(
        &env,
        &["--org", &tenant.org, file, "--rejected", rejected_arg],
        IMPORT_AT,
    );
    assert_eq!(code, Some(5), "some lines were rejected: {s}");
    assert_eq!(s["org_id"], tenant.org);
    assert_eq!(s["events"], 7, "the blank line is skipped: {s}");
    assert_eq!(s["accepted"], 2, "{s}");
    assert_eq!(s["duplicate"], 1, "{s}");
    assert_eq!(s["duplicate_conflicts"], 0, "{s}");
    assert_eq!(s["rejected"], 4, "{s}");
    assert_eq!(s["into_closed"], 0, "{s}");
    let got: Vec<(u64, String, Option<String>, Option<String>)> = s["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["code"].as_str().unwrap().to_owned(),
                r["field"].as_str().map(str::to_owned),
                r["id"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        got,
        vec![
            (5, "malformed_event".to_owned(), None, None),
            (
                6,
                "unknown_project".to_owned(),
                some("project_id"),
                some("imp-3")
            ),
            (
                7,
                "invalid_quantity".to_owned(),
                some("quantity"),
                some("imp-4")
            ),
            (
                8,
                "period_closed".to_owned(),
                some("timestamp"),
                some("imp-feb")
            ),
        ],
        "{s}"
    );

    // The rejected file: every rejected line with its number, error and text.
    let written: Vec<Value> = std::fs::read_to_string(&rejected)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(written.len(), 4);
    for (w, r) in written.iter().zip(s["rejections"].as_array().unwrap()) {
        assert_eq!(w["line"], r["line"]);
        assert_eq!(w["code"], r["code"]);
        assert!(w["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(written[0]["text"], r#"{"id": "imp-bad", "project_id": "#);
    assert_eq!(
        written[3]["text"],
        minutes("imp-feb", p0, "7", "2026-02-20T10:00:00Z")
    );

    // Counted exactly: 15 minutes in March, nothing added to February.
    assert_march_minutes(&env, &tenant.org, "15");
    assert_eq!(
        month_minutes(&env, &tenant.org, "2026-02", "2026-03"),
        json!([])
    );

    // A rerun changes nothing: every good line is a duplicate.
    let (code, again) = import(&env, &["--org", &tenant.org, file], IMPORT_AT);
    assert_eq!(code, Some(5));
    assert_eq!(again["accepted"], 0, "{again}");
    assert_eq!(again["duplicate"], 3, "{again}");
    assert_eq!(again["rejected"], 4, "{again}");
    assert_eq!(again["rejections"], s["rejections"]);
    assert_march_minutes(&env, &tenant.org, "15");

    // --into-closed takes February's event, and says so.
    let (code, closed) = import(
        &env,
        &["--org", &tenant.org, file, "--into-closed"],
        IMPORT_AT,
    );
    assert_eq!(code, Some(5), "three lines are still bad: {closed}");
    assert_eq!(closed["accepted"], 1, "{closed}");
    assert_eq!(closed["into_closed"], 1, "{closed}");
    assert_eq!(closed["duplicate"], 3, "{closed}");
    assert_eq!(closed["rejected"], 3, "{closed}");
    assert_eq!(
        month_minutes(&env, &tenant.org, "2026-02", "2026-03"),
        json!([{"start": "2026-02-01T00:00:00Z", "value": "7"}])
    );
    // February's report stays; the 7 minutes are an adjustment on March's.
    let march = env.cli_env(&["bill", "--period", "2026-03"], &tally_now(APRIL));
    let adjustments = march["reports"][0]["adjustments"].as_array().unwrap();
    assert_eq!(adjustments.len(), 1, "{march}");
    assert_eq!(adjustments[0]["period"], "2026-02");
    assert_eq!(adjustments[0]["meter"], "compute_minutes");
    assert_eq!(adjustments[0]["invoiced_quantity"], "0");
    assert_eq!(adjustments[0]["corrected_quantity"], "7");
}

#[test]
fn a_clean_import_exits_zero_and_a_bad_org_is_refused() {
    let (env, tenant) = embedded_tenant("clean");
    let p0 = &tenant.projects[0];
    let file = env.data().join("clean.ndjson");
    let lines: Vec<String> = (0..2_500)
        .map(|i| minutes(&format!("c-{i}"), p0, "2", "2026-03-05T00:00:00Z"))
        .collect();
    write(&file, &lines);
    let file = file.to_str().unwrap();
    let (code, s) = import(&env, &["--org", &tenant.org, file], IMPORT_AT);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["accepted"], 2_500, "{s}");
    assert_eq!(s["rejected"], 0, "{s}");
    assert_eq!(s["rejections"], json!([]));
    assert_march_minutes(&env, &tenant.org, "5000");

    // --rejected naming the file imported is refused before it is truncated.
    refused(
        &env,
        &["--org", &tenant.org, file, "--rejected", file],
        "--rejected",
    );
    assert_eq!(
        std::fs::read_to_string(file).unwrap().lines().count(),
        2_500
    );

    refused(&env, &["--org", "org_nope", file], "--org");
}

#[test]
fn csv_columns_map_to_event_fields_and_errors_name_the_column() {
    let (env, tenant) = embedded_tenant("csv");
    let p0 = &tenant.projects[0];
    let file = env.data().join("events.csv");
    write(
        &file,
        &[
            "event_id,project,meter,qty,at,region".to_owned(),
            format!("csv-1,{p0},compute_minutes,\"2.5\",2026-03-02T00:00:00Z,eu"),
            format!("csv-2,{p0},compute_minutes,4,2026-03-03T00:00:00Z,us"),
            format!("csv-3,{p0},compute_minutes,lots,2026-03-03T00:00:00Z,us"),
            format!("csv-4,{p0},compute_minutes,1"),
        ],
    );
    let file = file.to_str().unwrap();
    let columns =
        "id=event_id,project_id=project,quantity=qty,timestamp=at,properties.region=region";
    let (code, s) = import(
        &env,
        &["--org", &tenant.org, file, "--columns", columns],
        IMPORT_AT,
    );
    assert_eq!(code, Some(5), "{s}");
    assert_eq!(s["events"], 4, "the header is not an event: {s}");
    assert_eq!(s["accepted"], 2, "{s}");
    assert_eq!(s["rejected"], 2, "{s}");
    let r = &s["rejections"];
    assert_eq!(r[0]["line"], 4, "{s}");
    assert_eq!(r[0]["code"], "invalid_quantity", "{s}");
    assert_eq!(r[0]["field"], "qty", "the CSV column is named: {s}");
    assert_eq!(r[0]["id"], "csv-3", "{s}");
    assert_eq!(r[1]["line"], 5, "{s}");
    assert_eq!(r[1]["code"], "malformed_event", "{s}");
    assert_march_minutes(&env, &tenant.org, "6.5");
    // A mapping naming a column the header lacks is refused before anything is imported.
    refused(
        &env,
        &["--org", &tenant.org, file, "--columns", "id=nope"],
        "\"nope\"",
    );
}

#[test]
fn stdin_is_read_and_an_overlong_line_is_refused_alone() {
    use std::io::Write;
    use std::process::Stdio;
    let (env, tenant) = embedded_tenant("stdin");
    let p0 = &tenant.projects[0];
    // One line past the 64 KiB bound (a property far beyond the 4 KiB an event may hold),
    // between two good ones.
    let long = json!({"id": "long", "project_id": p0, "meter": "compute_minutes",
        "quantity": "1", "timestamp": "2026-03-02T00:00:00Z",
        "properties": {"blob": "x".repeat(70_000)}})
    .to_string();
    let input = [
        minutes("in-1", p0, "3", "2026-03-02T00:00:00Z"),
        long,
        minutes("in-2", p0, "4", "2026-03-02T00:00:00Z"),
    ]
    .join("\n");
    let mut child = env
        .command(&["import", "--org", &tenant.org, "-"])
        .env("TALLY_NOW", IMPORT_AT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_one_refused((out.status.code(), &s), 2, (2, "line_too_long"));
    assert_march_minutes(&env, &tenant.org, "7");
}

/// The same import on DynamoDB (the AWS backend, on the emulator): good lines counted once
/// through the DynamoDB ledger, a bad one refused by line, usage read back exact, and a
/// rerun all duplicates.
#[test]
fn an_import_on_dynamodb_counts_once_and_reruns_as_duplicates() {
    let env = Env::aws("sqs");
    let tenant = make_tenant(&env, "acme-import-aws");
    let (p0, p1) = (&tenant.projects[0], &tenant.projects[1]);
    let file = env.data().join("events.ndjson");
    write(
        &file,
        &[
            minutes("aws-1", p0, "10", "2026-03-02T10:00:00Z"),
            minutes("aws-2", p1, "5.5", "2026-03-03T10:00:00Z"),
            minutes("aws-1", p0, "10", "2026-03-02T10:00:00Z"),
            minutes("aws-3", "prj_doesnotexist", "1", "2026-03-04T10:00:00Z"),
        ],
    );
    let file = file.to_str().unwrap();
    let (code, s) = import(&env, &["--org", &tenant.org, file], IMPORT_AT);
    assert_eq!(code, Some(5), "{s}");
    assert_eq!(
        (&s["accepted"], &s["duplicate"], &s["rejected"]),
        (&json!(2), &json!(1), &json!(1)),
        "{s}"
    );
    assert_eq!(s["rejections"][0]["line"], 4, "{s}");
    assert_eq!(s["rejections"][0]["code"], "unknown_project", "{s}");
    assert_march_minutes(&env, &tenant.org, "15.5");
    let (_, again) = import(&env, &["--org", &tenant.org, file], IMPORT_AT);
    assert_eq!(
        (&again["accepted"], &again["duplicate"]),
        (&json!(0), &json!(3)),
        "{again}"
    );
    assert_march_minutes(&env, &tenant.org, "15.5");
}

/// The org's compute minutes of March 2026 for one project.
fn project_march_minutes(env: &Env, org: &str, project: &str) -> Decimal {
    let out = env.cli_env(
        &[
            "usage",
            "--org",
            org,
            "--project",
            project,
            "--meter",
            "compute_minutes",
            "--granularity",
            "month",
            "--from",
            "2026-03-01",
            "--to",
            "2026-04-01",
        ],
        &tally_now(IMPORT_AT),
    );
    out["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Decimal::from_str(p["value"].as_str().unwrap()).unwrap())
        .sum()
}

/// The issue's acceptance run: a million lines with duplicates and bad lines, the import
/// SIGKILLed part way, then run again to the end, and the counters are exact (and agree with
/// the ledger): an interrupted import resumes by running it again.
#[test]
fn a_million_line_import_killed_part_way_resumes_by_rerunning_and_ends_exact() {
    const LINES: usize = 1_000_000;
    let (env, tenant) = embedded_tenant("acme-million");
    let projects = [&tenant.projects[0], &tenant.projects[1]];

    // Line i (1-based numbers in the summary are i + 1): every 1,000th line is bad (three
    // kinds in turn), every 100th repeats the line 50 before it (a duplicate, same contents),
    // the rest are fresh events of 1 to 7 minutes on two projects over nine days.
    let mut expected = [Decimal::ZERO; 2];
    let (mut bad, mut duplicates) = (0u64, 0u64);
    let mut text = String::with_capacity(LINES * 150);
    let fresh = |i: usize| -> (usize, u64, String) {
        let project = i % 2;
        let q = (i % 7 + 1) as u64;
        let ts = format!("2026-03-{:02}T{:02}:00:00Z", i % 9 + 1, i % 24);
        (
            project,
            q,
            minutes(&format!("mil-{i}"), projects[project], &q.to_string(), &ts),
        )
    };
    for i in 0..LINES {
        let line = if i % 1000 == 999 {
            bad += 1;
            match (i / 1000) % 3 {
                0 => format!(r#"{{"id": "mil-{i}", "project_id": "#),
                1 => minutes(
                    &format!("mil-{i}"),
                    projects[0],
                    "-1",
                    "2026-03-02T00:00:00Z",
                ),
                _ => minutes(
                    &format!("mil-{i}"),
                    "prj_doesnotexist",
                    "1",
                    "2026-03-02T00:00:00Z",
                ),
            }
        } else if i % 100 == 50 {
            duplicates += 1;
            fresh(i - 50).2
        } else {
            let (project, q, line) = fresh(i);
            expected[project] += Decimal::from(q);
            line
        };
        text.push_str(&line);
        text.push('\n');
    }
    let file = env.data().join("million.ndjson");
    std::fs::write(&file, text).unwrap();
    let good = LINES as u64 - bad - duplicates;

    // Start the import and SIGKILL it once some of it is counted and before the end.
    let mut child = env
        .command(&["import", "--org", &tenant.org, file.to_str().unwrap()])
        .env("TALLY_NOW", IMPORT_AT)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let total = expected[0] + expected[1];
    let partial = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the import ended ({status}) before it could be killed part way");
        }
        let counted: Decimal = projects
            .iter()
            .map(|p| project_march_minutes(&env, &tenant.org, p))
            .sum();
        if counted > Decimal::ZERO {
            child.kill().unwrap();
            child.wait().unwrap();
            break counted;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let partial_after_kill: Decimal = projects
        .iter()
        .map(|p| project_march_minutes(&env, &tenant.org, p))
        .sum();
    assert!(partial <= partial_after_kill, "counters never go back");
    assert!(
        partial_after_kill < total,
        "the kill landed part way: {partial_after_kill} of {total} minutes counted"
    );

    // Run it again: what the killed run applied is a duplicate now, the rest is accepted.
    let (code, s) = import(
        &env,
        &["--org", &tenant.org, file.to_str().unwrap()],
        IMPORT_AT,
    );
    assert_eq!(code, Some(5), "the bad lines are still refused: {s}");
    assert_eq!(s["events"], LINES as u64, "{s}");
    assert_eq!(s["rejected"], bad, "{s}");
    let (accepted, duplicate) = (
        s["accepted"].as_u64().unwrap(),
        s["duplicate"].as_u64().unwrap(),
    );
    assert_eq!(accepted + duplicate, good + duplicates, "{s}");
    assert!(
        accepted > 0 && accepted < good,
        "the rerun applied only what the killed run had not: {s}"
    );
    assert!(duplicate > duplicates, "{s}");
    for (project, want) in projects.iter().zip(expected) {
        assert_eq!(
            project_march_minutes(&env, &tenant.org, project),
            want,
            "project {project} is exact after the resumed import"
        );
    }
    let reconciled = env.cli_env(
        &["reconcile", "--period", "2026-03", "--org", &tenant.org],
        &tally_now(IMPORT_AT),
    );
    assert_eq!(reconciled["drift"], json!([]), "{reconciled}");
}

/// An import holds each event to the meters of the catalogue version in force in its own
/// month (as month close prices that month), not to the version in force when it runs, nor
/// to the `--catalogue` file. Version 1, applied on 10 March, adds a `gpu_seconds` meter
/// from April. On 2 April (March still open) a file of a March compute line, an April GPU
/// line and a March GPU line imports the first two and refuses the third as
/// `unknown_meter` (March has no such meter). Held to one catalogue, the April and March
/// GPU lines would go the same way: both refused (the built-in file, as before) or both
/// accepted (April's version for all).
#[test]
fn an_import_holds_each_event_to_its_own_month_s_catalogue() {
    let (env, tenant) = embedded_tenant("months");
    let p0 = &tenant.projects[0];
    let mut v: Value = serde_json::from_str(tally_core::catalogue::BUILTIN_JSON).unwrap();
    v["meters"]["gpu_seconds"] = json!({
        "description": "GPU time", "unit": "second", "aggregation": "sum",
        "price_unit": "second", "price_unit_size": 1,
        "list_price": {"model": "per_unit", "unit_price": "0.001"}
    });
    for plan in ["free", "starter", "pro", "enterprise"] {
        v["plans"][plan]["meters"]["gpu_seconds"] = json!({});
    }
    let catalogue = env.data().join("v1.json");
    std::fs::write(&catalogue, v.to_string()).unwrap();
    let applied = env.cli_env(
        &["catalogue", "apply", catalogue.to_str().unwrap()],
        &tally_now(IMPORT_AT),
    );
    assert_eq!(applied["effective_from"], "2026-04", "{applied}");
    let gpu = |id: &str, ts: &str| {
        json!({"id": id, "project_id": p0, "meter": "gpu_seconds", "quantity": "30", "timestamp": ts})
            .to_string()
    };
    let file = env.data().join("months.ndjson");
    write(
        &file,
        &[
            minutes("m-1", p0, "5", "2026-03-20T00:00:00Z"),
            gpu("g-apr", "2026-04-01T12:00:00Z"),
            gpu("g-mar", "2026-03-20T00:00:00Z"),
        ],
    );
    let file = file.to_str().unwrap();
    let (code, s) = import(&env, &["--org", &tenant.org, file], "2026-04-02T00:00:00Z");
    assert_one_refused((code, &s), 2, (3, "unknown_meter"));
    assert_march_minutes(&env, &tenant.org, "5");
}
