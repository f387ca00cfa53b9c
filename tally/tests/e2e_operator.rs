//! End-to-end tests of the operator's CLI parity with the management API, on the embedded
//! default: every command runs as the real `tally` binary on a temporary SQLite store, and
//! the checks read what it prints (tables for people, `--json` for scripts), its exit
//! status and its one line on stderr when it refuses; the audit trail must show each change
//! with the operator (`cli`) as actor. Where the server matters (ingest refusing a revoked
//! key, usage counted) it runs in process on the same data directory.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use common::*;
use serde_json::Value;
use tally_core::ports::StepKey;
use tally_core::{Month, OrgId};
use tally_tests::stripe_double::{DOUBLE_SECRET_KEY, StripeDouble};

/// Runs `tally ARGS` without `--json`: what a person sees.
fn human(env: &Env, args: &[&str]) -> Output {
    env.human_command(args).output().unwrap()
}

/// [`human`], which must succeed: its stdout.
fn table(env: &Env, args: &[&str]) -> String {
    let out = human(env, args);
    assert!(
        out.status.success(),
        "tally {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `tally ARGS --json`, which must fail: its one line on stderr (nothing on stdout).
fn refused(env: &Env, args: &[&str]) -> String {
    let out = env.cli_raw(args);
    assert!(!out.status.success(), "tally {args:?} should have failed");
    assert!(out.stdout.is_empty(), "nothing on stdout when refusing");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    err
}

fn ids(list: &Value, field: &str) -> Vec<String> {
    list[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `tally member add` of `email` as a viewer to `org`: the invitation, as the CLI prints it.
fn invite_viewer(env: &Env, org: &str, email: &str) -> Value {
    env.cli(&[
        "member", "add", "--org", org, "--email", email, "--role", "viewer",
    ])
}

/// `tally audit --json` for `org` with `filters`: (action, actor, outcome) of each record,
/// newest first.
fn audit(env: &Env, org: &str, filters: &[&str]) -> Vec<(String, String, String)> {
    let mut args = vec!["audit", "--org", org];
    args.extend(filters);
    env.cli(&args)["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |f: &str| r[f].as_str().unwrap().to_owned();
            (s("action"), s("actor"), s("outcome"))
        })
        .collect()
}

#[test]
fn orgs_projects_and_keys_are_listed_shown_and_changed_and_audited_as_the_operator() {
    let env = Env::embedded();
    let acme = env.create_org("Acme", "acme", "ada@example.com", Some("starter"));
    let other = env.create_org("Other", "other", "bob@example.com", None);
    let acme_id = acme["id"].as_str().unwrap();
    let other_id = other["id"].as_str().unwrap();

    // org list / show
    let orgs = env.cli(&["org", "list"]);
    let mut want = vec![acme_id.to_owned(), other_id.to_owned()];
    want.sort();
    assert_eq!(ids(&orgs, "orgs"), want);
    let shown = table(&env, &["org", "list"]);
    let header = shown.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("PLAN"),
        "{shown}"
    );
    assert!(
        shown.contains("acme") && shown.contains("starter"),
        "{shown}"
    );
    let show = env.cli(&["org", "show", "--org", acme_id]);
    assert_eq!(show["name"], "Acme");
    assert_eq!(show["owner_email"], "ada@example.com");
    assert_eq!(show["members"], 1);
    let err = refused(&env, &["org", "show", "--org", "org_nobody"]);
    assert!(err.contains("no such organization org_nobody"), "{err}");
    assert!(err.contains("not_found"), "{err}");
    let err = refused(&env, &["org", "show", "--org", "acme"]);
    assert!(err.contains("--org"), "{err}");

    // project list / show / rename / archive
    let project = env.cli(&[
        "project", "create", "--org", acme_id, "--name", "Web", "--slug", "web",
    ]);
    let project_id = project["id"].as_str().unwrap();
    let projects = env.cli(&["project", "list", "--org", acme_id]);
    assert_eq!(ids(&projects, "projects"), [project_id]);
    assert!(
        env.cli(&["project", "list", "--org", other_id])["projects"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        table(&env, &["project", "list", "--org", other_id]).trim(),
        "no projects"
    );
    let shown = env.cli(&["project", "show", "--org", acme_id, "--project", project_id]);
    assert_eq!(shown["slug"], "web");
    // Another org's project is not found, as over the API.
    let err = refused(
        &env,
        &[
            "project",
            "show",
            "--org",
            other_id,
            "--project",
            project_id,
        ],
    );
    assert!(
        err.contains("no such project in this organization"),
        "{err}"
    );
    let renamed = env.cli(&[
        "project",
        "rename",
        "--org",
        acme_id,
        "--project",
        project_id,
        "--name",
        "Website",
    ]);
    assert_eq!(
        (renamed["name"].as_str(), renamed["slug"].as_str()),
        (Some("Website"), Some("web"))
    );
    let archived = env.cli(&[
        "project",
        "archive",
        "--org",
        acme_id,
        "--project",
        project_id,
    ]);
    assert!(archived["archived_at"].is_string(), "{archived}");

    // key list / rotate / revoke
    let key = env.cli(&["key", "create", "--org", acme_id, "--name", "ci"]);
    let key_id = key["id"].as_str().unwrap();
    let keys = env.cli(&["key", "list", "--org", acme_id]);
    assert_eq!(ids(&keys, "keys"), [key_id]);
    let listed = keys.to_string();
    assert!(
        !listed.contains(key["key"].as_str().unwrap()) && !listed.contains("hash"),
        "a listing never holds a secret or a hash: {listed}"
    );
    let rotate = |overlap| {
        [
            "key",
            "rotate",
            "--org",
            acme_id,
            "--key",
            key_id,
            "--overlap",
            overlap,
        ]
    };
    let rotated = env.cli(&rotate("1h"));
    let new_id = rotated["new"]["id"].as_str().unwrap();
    assert_eq!(rotated["previous"]["id"], key_id);
    assert!(rotated["previous"]["expires_at"].is_string(), "{rotated}");
    assert!(
        rotated["key"].as_str().unwrap().starts_with("tk_live_"),
        "{rotated}"
    );
    let err = refused(&env, &rotate("31d"));
    assert!(err.contains("overlap_seconds must be at most"), "{err}");
    let revoked = env.cli(&["key", "revoke", "--org", acme_id, "--key", new_id]);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let shown = table(&env, &["key", "list", "--org", acme_id]);
    let state_of = |id: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not listed: {shown}"))
            .to_owned()
    };
    assert!(state_of(new_id).contains("revoked"), "{shown}");
    assert!(state_of(key_id).contains("active"), "{shown}");
    let err = refused(&env, &["key", "rotate", "--org", acme_id, "--key", new_id]);
    assert!(err.contains("a revoked API key cannot be rotated"), "{err}");
    // A key of another org is not found there.
    let err = refused(&env, &["key", "revoke", "--org", other_id, "--key", key_id]);
    assert!(
        err.contains("no such API key in this organization"),
        "{err}"
    );
    assert!(err.contains("field key_id"), "{err}");

    // org update / delete
    let updated = env.cli(&["org", "update", "--org", acme_id, "--name", "Acme Inc"]);
    assert_eq!(updated["name"], "Acme Inc");
    let err = refused(&env, &["org", "delete", "--org", other_id]);
    assert!(err.contains("--yes"), "{err}");
    let deleted = env.cli(&["org", "delete", "--org", other_id, "--yes"]);
    assert!(deleted["deleted_at"].is_string(), "{deleted}");
    assert_eq!(ids(&env.cli(&["org", "list"]), "orgs"), [acme_id]);
    assert_eq!(ids(&env.cli(&["org", "list", "--all"]), "orgs").len(), 2);
    let err = refused(
        &env,
        &["org", "update", "--org", other_id, "--name", "Back"],
    );
    assert!(err.contains("no such organization"), "{err}");

    // Every change shows in the audit trail with the operator as actor, refusals included.
    let trail = audit(&env, acme_id, &[]);
    let by = |action: &str, outcome: &str| {
        trail
            .iter()
            .filter(|(a, who, o)| a == action && who == "cli" && o == outcome)
            .count()
    };
    assert_eq!(by("org.update", "allowed"), 1, "{trail:?}");
    assert_eq!(by("project.update", "allowed"), 1, "{trail:?}");
    assert_eq!(by("project.archive", "allowed"), 1, "{trail:?}");
    assert_eq!(by("key.rotate", "allowed"), 1, "{trail:?}");
    assert_eq!(by("key.rotate", "refused"), 2, "{trail:?}");
    assert_eq!(by("key.revoke", "allowed"), 1, "{trail:?}");
    assert_eq!(
        audit(&env, acme_id, &["--action", "key.revoke"]),
        [(
            "key.revoke".to_owned(),
            "cli".to_owned(),
            "allowed".to_owned()
        )]
    );
    let page = env.cli(&["audit", "--org", acme_id, "--limit", "2"]);
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = env.cli(&[
        "audit", "--org", acme_id, "--limit", "2", "--cursor", cursor,
    ]);
    assert_eq!(next["records"].as_array().unwrap().len(), 2);
    assert_ne!(next["records"][0]["id"], page["records"][0]["id"]);
    let err = refused(&env, &["audit", "--org", acme_id, "--limit", "0"]);
    assert!(
        err.contains("limit must be 1 to 200") && err.contains("field limit"),
        "{err}"
    );
    let shown = table(&env, &["audit", "--org", acme_id, "--action", "key.revoke"]);
    assert!(
        shown.starts_with("AT") && shown.contains("key.revoke"),
        "{shown}"
    );
    assert_eq!(
        by("org.delete", "allowed"),
        0,
        "the other org's deletion is filed under it"
    );
    assert_eq!(audit(&env, other_id, &["--action", "org.delete"]).len(), 1);
}

/// The operator's `project create` stays within the org's plan, as the API's does: the free
/// plan's one project, then `plan_limit_exceeded`; an archived project frees its place.
#[test]
fn project_create_keeps_to_the_plans_project_limit() {
    let env = Env::embedded();
    let org = env.create_org("Solo", "solo", "sol@example.com", Some("free"));
    let org = org["id"].as_str().unwrap();
    let create = |org: &str, slug: &str| -> Vec<String> {
        [
            "project", "create", "--org", org, "--name", slug, "--slug", slug,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let run = |args: Vec<String>| env.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let refuse =
        |args: Vec<String>| refused(&env, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let first = run(create(org, "one"));
    let err = refuse(create(org, "two"));
    assert!(err.contains("plan_limit_exceeded"), "{err}");
    assert!(err.contains("allows 1 projects"), "{err}");
    assert_eq!(
        ids(&env.cli(&["project", "list", "--org", org]), "projects").len(),
        1,
        "nothing was created past the limit"
    );
    let first = first["id"].as_str().unwrap();
    env.cli(&["project", "archive", "--org", org, "--project", first]);
    run(create(org, "two"));
    let err = refuse(create("org_gone", "x"));
    assert!(err.contains("no such organization"), "{err}");
}

#[test]
fn members_join_only_by_invitation_and_the_owner_stays() {
    let env = Env::embedded();
    let org = env.create_org("Acme", "acme", "ada@example.com", Some("starter"));
    let org_id = org["id"].as_str().unwrap();
    let owner = org["owner_id"].as_str().unwrap();

    let members = env.cli(&["member", "list", "--org", org_id]);
    assert_eq!(members["members"][0]["role"], "owner");
    assert!(table(&env, &["member", "list", "--org", org_id]).contains("ada@example.com"));

    // `member add` invites: the membership exists only once the invitation is accepted.
    let invited = invite_viewer(&env, org_id, "Eve@Example.com");
    assert_eq!(invited["email"], "eve@example.com");
    assert_eq!(invited["invited_by"], owner);
    assert!(invited["token"].is_string(), "{invited}");
    assert_eq!(
        env.cli(&["member", "list", "--org", org_id])["members"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let pending = env.cli(&["invitation", "list", "--org", org_id]);
    assert_eq!(pending["invitations"][0]["email"], "eve@example.com");
    assert!(
        !pending
            .to_string()
            .contains(invited["token"].as_str().unwrap())
    );
    // Refused: a second invitation of the same address, an owner's, a malformed address.
    for (email, extra, want) in [
        ("eve@example.com", &[][..], "pending invitation"),
        ("x@example.com", &["--role", "owner"][..], "field role"),
        ("not-an-email", &[][..], "field email"),
    ] {
        let mut args = vec!["invitation", "create", "--org", org_id, "--email", email];
        args.extend(extra);
        let err = refused(&env, &args);
        assert!(err.contains(want), "{err}");
    }
    let inv_id = invited["id"].as_str().unwrap();
    let revoke = [
        "invitation",
        "revoke",
        "--org",
        org_id,
        "--invitation",
        inv_id,
    ];
    env.cli(&revoke);
    assert_eq!(
        table(&env, &["invitation", "list", "--org", org_id]).trim(),
        "no pending invitations"
    );
    let err = refused(&env, &revoke);
    assert!(err.contains("no such pending invitation"), "{err}");

    // The owner cannot be removed; a non-member is not found.
    let err = refused(
        &env,
        &["member", "remove", "--org", org_id, "--user", owner],
    );
    assert!(err.contains("owner cannot be demoted or removed"), "{err}");
    let err = refused(
        &env,
        &["member", "remove", "--org", org_id, "--user", "usr_nobody"],
    );
    assert!(err.contains("no such member"), "{err}");

    let trail = audit(&env, org_id, &[]);
    for (action, outcome) in [
        ("invitation.create", "allowed"),
        ("invitation.revoke", "allowed"),
        ("member.remove", "refused"),
    ] {
        assert!(
            trail
                .iter()
                .any(|(a, who, o)| a == action && who == "cli" && o == outcome),
            "{action} {outcome}: {trail:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_reports_are_read_without_a_token_and_a_revoked_key_is_refused() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "acme");
    february_usage(&env, &tenant, IN_GRACE).await;

    // Usage: the API's query, as JSON or a table.
    let at = [("TALLY_NOW", AFTER_GRACE)];
    let month = [
        "usage",
        "--org",
        &tenant.org,
        "--meter",
        "compute_minutes",
        "--granularity",
        "month",
        "--from",
        "2026-02-01",
        "--to",
        "2026-03-01",
    ];
    let usage = env.cli_env(&month, &at);
    assert_eq!(usage["mode"], "live");
    assert_eq!(
        normalize(vec![(
            usage["series"][0]["start"].as_str().unwrap().to_owned(),
            usage["series"][0]["value"].as_str().unwrap().to_owned()
        )]),
        [("2026-02-01T00:00:00Z".to_owned(), "10500".to_owned())]
    );
    let mut per_project = month.to_vec();
    let p1 = &tenant.projects[1];
    per_project.extend(["--project", p1]);
    let usage = env.cli_env(&per_project, &at);
    assert_eq!(usage["project_id"], p1.as_str());
    assert_eq!(usage["series"].as_array().unwrap().len(), 1);
    let shown = table(&env, &month);
    assert!(
        shown.contains("START") && shown.contains("2026-02-01T00:00:00Z"),
        "{shown}"
    );
    let test_mode = env.cli_env(
        &[
            "usage",
            "--org",
            &tenant.org,
            "--meter",
            "compute_minutes",
            "--mode",
            "test",
            "--from",
            "2026-02-01",
            "--to",
            "2026-03-01",
        ],
        &at,
    );
    assert!(
        test_mode["series"].as_array().unwrap().is_empty(),
        "{test_mode}"
    );
    for (args, want) in [
        (vec!["--meter", "nope"], "unknown meter"),
        (
            vec!["--meter", "compute_minutes", "--granularity", "week"],
            "field granularity",
        ),
        (
            vec!["--meter", "compute_minutes", "--from", "yesterday"],
            "field from",
        ),
        (
            vec![
                "--meter",
                "compute_minutes",
                "--granularity",
                "hour",
                "--from",
                "2020-01-01",
            ],
            "range_too_large",
        ),
        (
            vec!["--meter", "compute_minutes", "--mode", "demo"],
            "field mode",
        ),
        (
            vec!["--meter", "compute_minutes", "--project", "prj_nope"],
            "not found",
        ),
    ] {
        let mut a = vec!["usage", "--org", tenant.org.as_str()];
        a.extend(args);
        let err = refused(&env, &a);
        assert!(err.contains(want), "{a:?}: {err}");
    }
    let err = refused(
        &env,
        &["usage", "--org", "org_nobody", "--meter", "compute_minutes"],
    );
    assert!(err.contains("no such organization"), "{err}");

    // Reports: none before month close, then February's with its lines, not on Stripe.
    assert_eq!(
        table(&env, &["report", "list", "--org", &tenant.org]).trim(),
        "no stored reports"
    );
    env.cli_env(&["bill", "--period", "2026-02", "--no-stripe"], &at);
    let reports = env.cli(&["report", "list", "--org", &tenant.org]);
    let report = &reports["reports"][0];
    assert_eq!(report["period"], "2026-02");
    assert_eq!(report["report"]["plan"], "pro");
    assert_eq!(report["stripe"]["status"], "not_synced");
    let total = report["report"]["total"].as_str().unwrap().to_owned();
    assert_eq!(
        env.cli(&["report", "list", "--period", "2026-03"])["reports"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let show = |period| ["report", "show", "--org", &tenant.org, "--period", period];
    let shown = table(&env, &show("2026-02"));
    assert!(
        shown.contains("compute_minutes") && shown.contains("10500"),
        "{shown}"
    );
    assert!(shown.contains(&format!("total {total}")), "{shown}");
    assert!(shown.contains("stripe: not_synced"), "{shown}");
    let err = refused(&env, &show("2026-01"));
    assert!(err.contains("no stored report"), "{err}");

    // Once `tally bill` synced it to Stripe, the report shows its finalized invoice; once
    // Stripe's webhook said it was paid, it shows paid.
    let double = StripeDouble::start().await.unwrap();
    let (base, bill) = (double.base_url(), ["bill", "--period", "2026-02"]);
    let synced = bill_on_stripe(&env, &bill, AFTER_GRACE, (&base, DOUBLE_SECRET_KEY)).await;
    assert!(synced.status.success(), "{synced:?}");
    let theirs = double.invoices();
    assert_eq!(theirs.len(), 1);
    let invoice = theirs[0].id.clone();
    let cents: i64 = theirs[0].items.iter().map(|i| i.amount).sum();
    let report = env.cli(&show("2026-02"));
    assert_eq!(report["stripe"]["status"], "finalized", "{report}");
    assert_eq!(report["stripe"]["invoice"], invoice.as_str());
    assert_eq!(report["stripe"]["invoice_status"], "open");
    assert_eq!(report["stripe"]["total_minor"], cents);
    let store = tally::backend::open_store(&env.common()).await.unwrap();
    store
        .sync
        .record_step(
            &StepKey::new(
                &OrgId::parse(&tenant.org).unwrap(),
                Month::parse("2026-02").unwrap(),
                "webhook:invoice.paid",
            ),
            &invoice,
        )
        .await
        .unwrap();
    let shown = table(&env, &["report", "list", "--org", &tenant.org]);
    assert!(
        shown.contains("paid") && shown.contains(&invoice),
        "{shown}"
    );

    // A key the operator revoked is refused by ingest.
    let key_id = env.cli(&["key", "list", "--org", &tenant.org])["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // At the server's time: a revocation takes effect from its `revoked_at` on.
    env.cli_env(
        &["key", "revoke", "--org", &tenant.org, "--key", &key_id],
        &at,
    );
    let server = serve_at(&env, AFTER_GRACE).await;
    let (status, body) = post_events(
        &reqwest::Client::new(),
        &server,
        &tenant.key,
        vec![compute_minutes(
            "mar-1",
            &tenant.projects[0],
            "1",
            "2026-03-01T01:00:00Z",
        )],
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "{body}");
    server.stop().await.unwrap();
}

#[test]
fn completions_are_printed_for_each_shell_and_help_is_written_in_sentences() {
    let env = Env::embedded();
    for (shell, marker) in [
        ("bash", "complete"),
        ("zsh", "#compdef tally"),
        ("fish", "complete -c tally"),
    ] {
        let script = table(&env, &["completions", shell]);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("rotate"), "{shell} completes subcommands");
    }
    let out = human(&env, &["completions", "powershell"]);
    assert!(!out.status.success());
    let help = table(&env, &["key", "--help"]);
    assert!(help.contains("Revoke an API key"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invited_member_accepts_then_the_operator_changes_roles_and_transfers_ownership() {
    let env = Env::embedded();
    let org = env.create_org("Acme", "acme", "ada@example.com", Some("starter"));
    let (org_id, ada) = org_and_owner(&org);
    // Eve exists as a user (the owner of her own org) before she is invited.
    let eve = env.create_org("Eve's", "eves", "eve@example.com", None)["owner_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let invited = invite_viewer(&env, org_id, "eve@example.com");
    let token = env.cli(&["token", "create", "--user", &eve])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = spawn_app_in(&env).await;
    let r = reqwest::Client::new()
        .post(server.url("/v1/invitations/accept"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"token": invited["token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    server.stop().await.unwrap();

    let role_of = |user: &str| {
        env.cli(&["member", "list", "--org", org_id])["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["user_id"] == user)
            .map(|m| m["role"].as_str().unwrap().to_owned())
    };
    assert_eq!(role_of(&eve).as_deref(), Some("viewer"));
    let changed = env.cli(&[
        "member", "set-role", "--org", org_id, "--user", &eve, "--role", "admin",
    ]);
    assert_eq!(changed["role"], "admin");
    let err = refused(
        &env,
        &[
            "member", "set-role", "--org", org_id, "--user", ada, "--role", "viewer",
        ],
    );
    assert!(err.contains("owner cannot be demoted"), "{err}");
    let err = refused(
        &env,
        &[
            "member", "set-role", "--org", org_id, "--user", &eve, "--role", "owner",
        ],
    );
    assert!(
        err.contains("only by a transfer") && err.contains("field role"),
        "{err}"
    );

    let err = refused(
        &env,
        &["org", "transfer", "--org", org_id, "--to", "usr_nobody"],
    );
    assert!(err.contains("no such member"), "{err}");
    let moved = env.cli(&["org", "transfer", "--org", org_id, "--to", &eve]);
    assert_eq!(moved["owner_id"], eve.as_str());
    assert_eq!(role_of(&eve).as_deref(), Some("owner"));
    assert_eq!(role_of(ada).as_deref(), Some("admin"));
    let removed = env.cli(&["member", "remove", "--org", org_id, "--user", ada]);
    assert_eq!(removed["user_id"], ada);
    assert_eq!(role_of(ada), None);

    let trail = audit(&env, org_id, &["--user", "cli"]);
    for action in ["member.update", "org.transfer", "member.remove"] {
        assert!(
            trail.iter().any(|(a, _, o)| a == action && o == "allowed"),
            "{action}: {trail:?}"
        );
    }
}
