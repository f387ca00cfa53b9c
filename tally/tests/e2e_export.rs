//! End-to-end tests of `tally export` and `tally verify-report`: the real binary imports a
//! month of events (with `tally import`), closes it with `tally bill`, exports counters and
//! the ledger as CSV, and checks a report line against its export; then the faults an audit
//! must catch are planted (an edited export, a ledger row altered in the store after close)
//! and seen caught; the Parquet export is read back with the parquet crate's reader and must
//! hold the CSV export's rows exactly, and verifies a line as its CSV export does. SQLite (a temporary file) throughout; DynamoDB on the
//! emulator in the last test.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use serde_json::{Value, json};

const IMPORT_AT: &str = "2026-04-01T00:30:00Z";

fn ev(id: &str, project: &str, meter: &str, q: &str, ts: &str) -> String {
    json!({"id": id, "project_id": project, "meter": meter, "quantity": q, "timestamp": ts})
        .to_string()
}

/// Imports a month of compute minutes and storage readings (and one April event, one
/// duplicate), and closes March: the org's id.
fn imported_and_billed(env: &Env, slug: &str) -> String {
    let tenant = make_tenant(env, slug);
    let (p0, p1) = (&tenant.projects[0], &tenant.projects[1]);
    let file = env.data().join("events.ndjson");
    let lines = [
        ev("m-1", p0, "compute_minutes", "10", "2026-03-02T10:00:00Z"),
        ev(
            "m-2",
            p1,
            "compute_minutes",
            "5.5",
            "2026-03-03T10:00:00.250Z",
        ),
        ev("m-3", p0, "compute_minutes", "2", "2026-03-31T23:59:59Z"),
        ev("m-1", p0, "compute_minutes", "10", "2026-03-02T10:00:00Z"),
        ev("m-apr", p0, "compute_minutes", "7", "2026-04-01T00:10:00Z"),
        ev("s-1", p0, "storage_bytes", "3000", "2026-03-05T00:00:00Z"),
        ev("s-2", p1, "storage_bytes", "9000", "2026-03-06T00:00:00Z"),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = env.cli_raw_env(
        &["import", "--org", &tenant.org, file.to_str().unwrap()],
        &tally_now(IMPORT_AT),
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let billed = env.cli_env(&["bill", "--period", "2026-03"], &tally_now(APRIL));
    assert_eq!(billed["stored_now"], 1, "{billed}");
    tenant.org
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `tally export` of `org`'s March (at [`APRIL`]) with the `extra` flags: the arguments.
fn export_args<'a>(org: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["export", "--org", org, "--period", "2026-03"];
    args.extend(extra);
    args
}

/// `tally export` of `org`'s March with the `extra` flags: the JSON summary.
fn export(env: &Env, org: &str, extra: &[&str]) -> Value {
    env.cli_env(&export_args(org, extra), &tally_now(APRIL))
}

/// `tally export --ledger` of one line to `out` (a path or an `s3://` URL) with the `extra`
/// flags: the JSON summary.
fn export_line_to(env: &Env, org: &str, meter: &str, out: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--ledger", "--meter", meter, "--out", out];
    args.extend(extra);
    export(env, org, &args)
}

/// `tally export --ledger` of one line into `path`: the JSON summary.
fn export_line(env: &Env, org: &str, meter: &str, path: &Path) -> Value {
    export_line_to(env, org, meter, path.to_str().unwrap(), &[])
}

/// The arguments of `tally verify-report` of one line against `path` with the `extra` flags.
fn verify_args<'a>(
    org: &'a str,
    meter: &'a str,
    path: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["verify-report", "--org", org, "--period", "2026-03"];
    args.extend(["--meter", meter]);
    args.extend(extra);
    args.push(path.to_str().unwrap());
    args
}

/// `tally verify-report` of one line against `path`: the exit code and the JSON verdict.
fn verify(env: &Env, org: &str, meter: &str, path: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    env.cli_status_env(&verify_args(org, meter, path, extra), &tally_now(APRIL))
}

/// `tally verify-report` of the `compute_minutes` line against `path`: the raw output, for
/// the refusals (which print no verdict).
fn verify_raw(env: &Env, org: &str, path: &Path) -> Output {
    let args = verify_args(org, "compute_minutes", path, &[]);
    env.cli_raw_env(&args, &tally_now(APRIL))
}

/// Asserts that a verdict's exit code is `code` and its `field`'s `key` reads `want`.
fn assert_verdict(verdict: &(Option<i32>, Value), code: i32, field: &str, key: &str, want: &str) {
    let (got, v) = verdict;
    assert_eq!((*got, &v[field][key]), (Some(code), &json!(want)), "{v}");
}

fn report_line(env: &Env, org: &str, meter: &str) -> Value {
    let shown = env.cli(&["report", "show", "--org", org, "--period", "2026-03"]);
    meter_line(&shown["report"], meter).clone()
}

fn csv_rows(path: &PathBuf) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records()
        .map(|rec| rec.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

#[test]
fn a_closed_line_exports_its_entries_and_verifies_and_planted_changes_are_caught() {
    let env = Env::embedded();
    let org = imported_and_billed(&env, "acme-audit");

    // Month close recorded the line's event count and digest: three March entries (the
    // duplicate is not an entry, April's is another month).
    let line = report_line(&env, &org, "compute_minutes");
    assert_eq!(line["quantity"], "17.5", "{line}");
    assert_eq!(line["event_count"], 3, "{line}");
    let digest = line["digest"].as_str().unwrap().to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );

    // The export holds exactly those entries, in the documented columns.
    let file = env.data().join("minutes.csv");
    let summary = export_line(&env, &org, "compute_minutes", &file);
    assert_eq!(summary["rows"], 3, "{summary}");
    let header = std::fs::read_to_string(&file).unwrap();
    assert!(header.starts_with(
        "event_id,org_id,project_id,meter,aggregation,quantity,timestamp,properties\n"
    ));
    let rows = csv_rows(&file);
    let mut ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["m-1", "m-2", "m-3"]);
    assert!(
        rows.iter()
            .all(|r| r[1] == org && r[3] == "compute_minutes" && r[4] == "sum")
    );

    // The round trip passes.
    let (code, v) = verify(&env, &org, "compute_minutes", &file, &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["matches"], true, "{v}");
    assert_eq!(v["digest"]["recorded"], digest.as_str(), "{v}");
    assert_eq!(v["digest"]["recomputed"], digest.as_str(), "{v}");
    assert_eq!(v["quantity"]["recomputed"], "17.5", "{v}");
    assert_eq!(v["event_count"]["result"], "match", "{v}");

    // A `max` meter: the digest covers both readings, the quantity is the peak.
    let storage = env.data().join("storage.csv");
    assert_eq!(
        export_line(&env, &org, "storage_bytes", &storage)["rows"],
        2
    );
    let verdict = verify(&env, &org, "storage_bytes", &storage, &[]);
    assert_verdict(&verdict, 0, "quantity", "recomputed", "9000");

    // Fault 1: one entry of the export edited. A changed quantity changes both the
    // quantity and the digest; a changed project leaves the quantity and is still caught.
    let text = std::fs::read_to_string(&file).unwrap();
    let edited = env.data().join("edited.csv");
    std::fs::write(&edited, text.replacen(",sum,10,", ",sum,11,", 1)).unwrap();
    let (code, v) = verify(&env, &org, "compute_minutes", &edited, &[]);
    assert_eq!(code, Some(6), "{v}");
    assert_eq!(v["matches"], false, "{v}");
    assert_eq!(v["quantity"]["result"], "mismatch", "{v}");
    assert_eq!(v["digest"]["result"], "mismatch", "{v}");
    let moved = rows[0][2].clone();
    let other = if moved.ends_with('x') {
        "prj_y"
    } else {
        "prj_x"
    };
    std::fs::write(&edited, text.replacen(&moved, other, 1)).unwrap();
    let (code, v) = verify(&env, &org, "compute_minutes", &edited, &[]);
    assert_eq!(code, Some(6), "{v}");
    assert_eq!(v["quantity"]["result"], "match", "{v}");
    assert_eq!(v["event_count"]["result"], "match", "{v}");
    assert_eq!(v["digest"]["result"], "mismatch", "{v}");
    // A dropped entry changes the count too.
    let dropped: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&edited, dropped.join("\n") + "\n").unwrap();
    let verdict = verify(&env, &org, "compute_minutes", &edited, &[]);
    assert_verdict(&verdict, 6, "event_count", "result", "mismatch");

    // Fault 2: a ledger row altered in the store after close (its timestamp moved by a
    // second, which leaves every counter and the quantity alone): a fresh export of the
    // line no longer verifies.
    let db = rusqlite::Connection::open(env.data().join("tally.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE ledger SET body = replace(body, '2026-03-03T10:00:00.250Z', '2026-03-03T10:00:01.250Z') WHERE org = ?1 AND event_id = 'm-2'",
            [&org],
        )
        .unwrap();
    assert_eq!(changed, 1, "the planted row must exist");
    let after = env.data().join("after.csv");
    export_line(&env, &org, "compute_minutes", &after);
    let (code, v) = verify(&env, &org, "compute_minutes", &after, &[]);
    assert_eq!(code, Some(6), "{v}");
    assert_eq!(v["quantity"]["result"], "match", "{v}");
    assert_eq!(v["digest"]["result"], "mismatch", "{v}");

    // A report stored by the previous release has neither field: it still reads, and
    // verify says so rather than failing.
    let body: String = db
        .query_row(
            "SELECT body FROM reports WHERE org = ?1 AND period = 202603",
            [&org],
            |r| r.get(0),
        )
        .unwrap();
    let mut old: Value = serde_json::from_str(&body).unwrap();
    for l in old["lines"].as_array_mut().unwrap() {
        let l = l.as_object_mut().unwrap();
        l.remove("digest").unwrap();
        l.remove("event_count").unwrap();
    }
    db.execute(
        "UPDATE reports SET body = ?2 WHERE org = ?1 AND period = 202603",
        [&org, &old.to_string()],
    )
    .unwrap();
    let (code, v) = verify(&env, &org, "compute_minutes", &file, &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["digest"]["result"], "not recorded", "{v}");
    assert_eq!(v["quantity"]["result"], "match", "{v}");
    let shown = env.cli(&["report", "show", "--org", &org, "--period", "2026-03"]);
    assert!(
        shown["report"]["lines"][0].get("digest").is_none(),
        "{shown}"
    );

    // The report can come from a file (what the customer was sent) instead of the store.
    let report_file = env.data().join("report.json");
    std::fs::write(&report_file, old.to_string()).unwrap();
    let verdict = verify(
        &env,
        org.as_str(),
        "compute_minutes",
        &edited,
        &["--report", report_file.to_str().unwrap()],
    );
    assert_verdict(&verdict, 6, "quantity", "result", "mismatch");
}

#[test]
fn counters_export_as_csv_for_one_org_or_all_and_rows_from_another_line_are_refused() {
    let env = Env::embedded();
    let org = imported_and_billed(&env, "acme-counters");
    let file = env.data().join("counters.csv");
    let s = export(&env, &org, &["--out", file.to_str().unwrap()]);
    assert_eq!(
        (&s["kind"], &s["orgs"]),
        (&json!("counters"), &json!(1)),
        "{s}"
    );
    let rows = csv_rows(&file);
    assert_eq!(rows.len() as u64, s["rows"].as_u64().unwrap());
    let month = |meter: &str| {
        rows.iter()
            .find(|r| r[1].is_empty() && r[2] == meter && r[3] == "month")
            .map(|r| (r[4].clone(), r[5].clone()))
    };
    assert_eq!(
        month("compute_minutes"),
        Some(("2026-03-01T00:00:00Z".to_owned(), "17.5".to_owned()))
    );
    assert_eq!(month("storage_bytes").unwrap().1, "9000");
    // April's event is in April's export, not March's.
    assert!(rows.iter().all(|r| r[4].starts_with("2026-03")), "{rows:?}");

    // All orgs, to stdout: the same rows (there is one org).
    let out = env.cli_raw_env(&["export", "--period", "2026-03"], &tally_now(APRIL));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, std::fs::read(&file).unwrap());

    // A ledger export of the whole org handed to verify as one line's is refused by row.
    let all = env.data().join("all.csv");
    export(&env, &org, &["--ledger", "--out", all.to_str().unwrap()]);
    let out = verify_raw(&env, &org, &all);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not of the line"), "{}", stderr(&out));
}

/// A Parquet file's column names and its rows, every field read as the string it holds.
fn parquet_rows(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let columns = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let rows = reader
        .get_row_iter(None)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (0..r.len())
                .map(|i| r.get_string(i).unwrap().clone())
                .collect()
        })
        .collect();
    (columns, rows)
}

#[test]
fn counters_and_the_ledger_export_as_parquet_holding_the_csv_rows_exactly() {
    let env = Env::embedded();
    let org = imported_and_billed(&env, "acme-parquet");
    for (kind, extra) in [("counters", &[][..]), ("ledger", &["--ledger"][..])] {
        let export_as = |format: &str, path: &Path| {
            let mut args = vec!["--format", format, "--out", path.to_str().unwrap()];
            args.extend(extra);
            export(&env, &org, &args)
        };
        let csv_file = env.data().join(format!("{kind}.csv"));
        let pq_file = env.data().join(format!("{kind}.parquet"));
        export_as("csv", &csv_file);
        let s = export_as("parquet", &pq_file);
        assert_eq!(
            (&s["kind"], &s["format"]),
            (&json!(kind), &json!("parquet")),
            "{s}"
        );
        let bytes = std::fs::read(&pq_file).unwrap();
        assert!(
            bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"),
            "{kind}"
        );

        // The same columns, and the same rows in the same order, field for field.
        let (columns, rows) = parquet_rows(&pq_file);
        let text = std::fs::read_to_string(&csv_file).unwrap();
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        assert_eq!(columns, header, "{kind}");
        let expected = csv_rows(&csv_file);
        assert!(expected.len() >= 3, "{kind}: {expected:?}");
        assert_eq!(rows, expected, "{kind}");
        assert_eq!(s["rows"], expected.len(), "{s}");

        // To stdout (no seeking needed): the same file byte for byte.
        let mut flags = vec!["--format", "parquet"];
        flags.extend(extra);
        let out = env.cli_raw_env(&export_args(&org, &flags), &tally_now(APRIL));
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(out.stdout, bytes, "{kind} to stdout");
    }

    // The exact decimal texts survive (no float column): 5.5 and 17.5 as written.
    let (_, ledger) = parquet_rows(&env.data().join("ledger.parquet"));
    assert!(
        ledger.iter().any(|r| r[0] == "m-2" && r[5] == "5.5"),
        "{ledger:?}"
    );

    // verify-report reads either format: the line's Parquet export verifies with the digest
    // month close recorded, like its CSV export.
    let digest = report_line(&env, &org, "compute_minutes")["digest"].clone();
    let pq = env.data().join("minutes.parquet");
    let pq_out = pq.to_str().unwrap();
    let s = export_line_to(
        &env,
        &org,
        "compute_minutes",
        pq_out,
        &["--format", "parquet"],
    );
    assert_eq!(s["rows"], 3, "{s}");
    let (code, v) = verify(&env, &org, "compute_minutes", &pq, &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["digest"]["recomputed"], digest, "{v}");
    assert_eq!(v["event_count"]["recomputed"], "3", "{v}");
    // Its rows are checked like a CSV's: the whole ledger (both meters) is not the line's.
    let out = verify_raw(&env, &org, &env.data().join("ledger.parquet"));
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("not of the line"), "{}", stderr(&out));
    // A counters export is not a ledger export.
    let out = verify_raw(&env, &org, &env.data().join("counters.parquet"));
    assert!(
        stderr(&out).contains("not a readable Parquet ledger export"),
        "{}",
        stderr(&out)
    );
    // A damaged file (the line's export with its middle bytes garbled, magic kept) is a
    // refusal naming the file, never a crash, whatever the parquet reader makes of it.
    let mut bytes = std::fs::read(&pq).unwrap();
    let len = bytes.len();
    for b in &mut bytes[8..len - 8] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    let damaged = env.data().join("damaged.parquet");
    std::fs::write(&damaged, bytes).unwrap();
    let out = verify_raw(&env, &org, &damaged);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged.parquet"), "{}", stderr(&out));
}

#[test]
fn on_dynamodb_the_line_exports_and_verifies() {
    let env = Env::aws("sqs");
    let org = imported_and_billed(&env, "acme-audit-aws");
    let line = report_line(&env, &org, "compute_minutes");
    assert_eq!(line["event_count"], 3, "{line}");
    let file = env.data().join("minutes.csv");
    assert_eq!(export_line(&env, &org, "compute_minutes", &file)["rows"], 3);
    let (code, v) = verify(&env, &org, "compute_minutes", &file, &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["digest"]["recorded"], line["digest"], "{v}");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen(",sum,2,", ",sum,3,", 1)).unwrap();
    let verdict = verify(&env, &org, "compute_minutes", &file, &[]);
    assert_verdict(&verdict, 6, "digest", "result", "mismatch");
}

/// `--out s3://BUCKET/PREFIX` on the emulator's S3: the object holds byte for byte what the
/// same export writes to a file, under a name that says what it is; the summary names the
/// object; a malformed URL and a missing bucket are refused naming `--out` and S3's reason.
#[test]
fn an_export_to_s3_uploads_the_same_bytes_as_a_file_export() {
    let endpoint = std::env::var("TALLY_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!("TALLY_TEST_AWS_ENDPOINT is not set: AWS tests need the emulator; run `bash scripts/test.sh`, which starts it")
    });
    let mut env = Env::embedded();
    env.aws_endpoint = Some(endpoint.clone());
    let org = imported_and_billed(&env, "acme-audit-s3");
    let bucket = format!("tally-exports-{}", &org[4..20]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let s3 = runtime.block_on(async {
        let config = tally_store::aws::sdk_config(Some(&endpoint)).await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(true)
                .build(),
        );
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        s3
    });

    let file = env.data().join("minutes.csv");
    export_line(&env, &org, "compute_minutes", &file);
    let url = format!("s3://{bucket}/finance/2026/");
    let summary = export_line_to(&env, &org, "compute_minutes", &url, &[]);
    let key = format!("finance/2026/ledger-2026-03-{org}-compute_minutes.csv");
    assert_eq!(summary["out"], format!("s3://{bucket}/{key}"), "{summary}");
    assert_eq!(summary["rows"], 3, "{summary}");
    let uploaded = runtime.block_on(async {
        let object = s3
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        object.body.collect().await.unwrap().into_bytes().to_vec()
    });
    assert_eq!(
        uploaded,
        std::fs::read(&file).unwrap(),
        "the object is the file's bytes"
    );

    let refused = env.cli_raw(&[
        "export",
        "--period",
        "2026-03",
        "--out",
        "s3://Not_A_Bucket/x",
    ]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--out"), "{}", stderr(&refused));
    let missing = env.cli_raw(&[
        "export",
        "--period",
        "2026-03",
        "--out",
        &format!("s3://{bucket}-missing/x"),
    ]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("cannot upload"),
        "{}",
        stderr(&missing)
    );
}
