//! End-to-end tests of `tally org override set|list|end`, the operator's negotiated prices,
//! as the real `tally` binary on a temporary SQLite store: what it stores and prints, what
//! it refuses (each refusal names the flag), and the audit trail it leaves. How month close
//! and the upcoming invoice price with overrides is checked by `billing/tests/overrides.rs`
//! and `api/tests/management.rs`; this file checks the command a person types.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;

/// The operator's "now" for every command here: March 2026 is the current month.
const NOW: &str = "2026-03-10T12:00:00Z";

fn at_now(env: &Env, args: &[&str]) -> Value {
    env.cli_env(args, &tally_now(NOW))
}

/// Runs `tally ARGS` at [`NOW`], which must fail: its stderr.
fn refused(env: &Env, args: &[&str]) -> String {
    let out = env.cli_raw_env(args, &tally_now(NOW));
    assert!(!out.status.success(), "tally {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// `tally org override VERB --org ORG REST` at [`NOW`]: its answer.
fn override_cmd(env: &Env, verb: &str, org: &str, rest: &[&str]) -> Value {
    let args: Vec<&str> = ["org", "override", verb, "--org", org]
        .into_iter()
        .chain(rest.iter().copied())
        .collect();
    at_now(env, &args)
}

/// Creates the pro org `acme` the tests give overrides to: its id.
fn acme_on_pro(env: &Env) -> String {
    let org = env.create_org("Acme", "acme", "owner@acme.test", Some("pro"));
    org_and_owner(&org).0.to_owned()
}

fn listed(env: &Env, org: &str) -> Vec<Value> {
    override_cmd(env, "list", org, &[])["overrides"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn an_operator_sets_lists_and_ends_an_override_and_each_step_is_audited() {
    let env = Env::embedded();
    let org = acme_on_pro(&env);

    let set = override_cmd(
        &env,
        "set",
        &org,
        &[
            "--meter",
            "api_calls",
            "--included",
            "2000000",
            "--from",
            "2026-03",
            "--until",
            "2026-06",
            "--reason",
            "contract 42",
        ],
    );
    let id = set["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ovr_"), "{set}");
    assert_eq!(set["plan"], "pro", "{set}");
    assert_eq!(set["start"], "2026-03", "{set}");
    assert_eq!(set["end"], "2026-06", "{set}");
    assert_eq!(set["change"]["kind"], "included", "{set}");
    assert_eq!(set["change"]["meter"], "api_calls", "{set}");
    assert_eq!(set["created_by"], "cli", "{set}");

    let list = listed(&env, &org);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], id.as_str());

    // Ending it earlier moves its end; a later end does not move it back out.
    let ended = override_cmd(&env, "end", &org, &["--id", &id, "--from", "2026-04"]);
    assert_eq!(ended["end"], "2026-04", "{ended}");
    let again = override_cmd(&env, "end", &org, &["--id", &id, "--from", "2026-05"]);
    assert_eq!(
        again["end"], "2026-04",
        "an end only moves earlier: {again}"
    );
    assert_eq!(listed(&env, &org)[0]["end"], "2026-04");

    // An override that has not begun is ended by default at its own start: it never
    // applies (ending it "next month" would put its end before its start).
    let later = override_cmd(
        &env,
        "set",
        &org,
        &["--monthly-fee", "49.00", "--from", "2026-07"],
    );
    let later_id = later["id"].as_str().unwrap().to_owned();
    let cancelled = override_cmd(&env, "end", &org, &["--id", &later_id]);
    assert_eq!(cancelled["start"], "2026-07", "{cancelled}");
    assert_eq!(cancelled["end"], "2026-07", "{cancelled}");

    // The audit trail shows the creations and the real ends, by the operator.
    let audit = at_now(&env, &["audit", "--org", &org]);
    let actions: Vec<(String, String)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"].as_str().unwrap().starts_with("price_override."))
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("price_override.end".to_owned(), "cli".to_owned()),
            ("price_override.create".to_owned(), "cli".to_owned()),
            ("price_override.end".to_owned(), "cli".to_owned()),
            ("price_override.create".to_owned(), "cli".to_owned()),
        ],
        "{audit}"
    );
}

#[test]
fn an_override_the_plan_or_the_calendar_does_not_allow_is_refused_naming_the_flag() {
    let env = Env::embedded();
    let org = acme_on_pro(&env);
    let base = ["org", "override", "set", "--org", org.as_str()];
    let with =
        |rest: &[&str]| -> Vec<String> { base.iter().chain(rest).map(|s| s.to_string()).collect() };
    let cases: [(&[&str], &str); 7] = [
        // A month already past: a tenant's billed month never changes.
        (&["--monthly-fee", "1.00", "--from", "2026-02"], "--from"),
        (
            &[
                "--monthly-fee",
                "1.00",
                "--from",
                "2026-03",
                "--until",
                "2026-01",
            ],
            "--until",
        ),
        (&["--monthly-fee", "1.00", "--from", "2031-01"], "--from"),
        (
            &["--monthly-fee", "ten", "--from", "2026-03"],
            "--monthly-fee",
        ),
        (
            &[
                "--monthly-fee",
                "1.00",
                "--discount-percent",
                "5",
                "--from",
                "2026-03",
            ],
            "exactly one",
        ),
        (&["--included", "5", "--from", "2026-03"], "--meter"),
        (
            &["--monthly-fee", "1.00", "--from", "2026-03", "--reason", ""],
            "--reason",
        ),
    ];
    for (rest, flag) in cases {
        let args = with(rest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = refused(&env, &args);
        assert!(
            err.contains(flag),
            "{rest:?} should be refused naming {flag}: {err}"
        );
    }
    // A meter the plan does not price is refused by the catalogue's own check.
    let args = with(&[
        "--meter",
        "no_such_meter",
        "--included",
        "5",
        "--from",
        "2026-03",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = refused(&env, &args);
    assert!(err.contains("no_such_meter"), "{err}");
    // Nothing was stored by any refused command.
    assert!(listed(&env, &org).is_empty());
}
