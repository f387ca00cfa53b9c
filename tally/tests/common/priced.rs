//! What the tests of a meter applied to a running app share (`e2e_llm_tokens`,
//! `e2e_storage_gb`): the app on a test clock, the catalogue file and the plan, the wait for
//! the version in force, the owner's token on that clock, the upcoming invoice, a billed
//! month's report, and the line of one meter in either.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tally_core::ports::FixedClock;

use super::{Endpoint, Env, Tenant, TestApp, get_ok, spawn_app_with, tally_now, wait_for_answer};

/// Parses an RFC 3339 instant (test literals only).
pub fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// The in-process app on a test clock starting at `start`, with the billing scheduler off
/// (the test bills with `tally bill`) and the catalogue re-read every 200 ms, so a version
/// the test applies or a month the clock turns is taken up quickly: the app and its clock.
pub async fn app_on_clock(env: &Env, start: &str) -> (TestApp, Arc<FixedClock>) {
    let clock = Arc::new(FixedClock::at(at(start)));
    let server = spawn_app_with(env, |app| {
        app.settings.billing_scheduler = false;
        app.settings.catalogue_refresh = Duration::from_millis(200);
        app.clock = clock.clone();
    })
    .await;
    (server, clock)
}

/// A 10-minute token for the tenant's owner minted at `now` (`tally token create` mints on
/// the real clock, which may be far from a test clock's).
pub fn owner_token(env: &Env, tenant: &Tenant, now: &str) -> String {
    let owner = tally_core::ids::UserId::parse(&tenant.owner).unwrap();
    tally::settings::jwt_config(&env.common())
        .unwrap()
        .mint(&owner, at(now), chrono::Duration::minutes(10))
        .unwrap()
}

/// `GET /v1/orgs/{org}/invoices/upcoming` with `token`: the answer, which must be a `200`.
pub async fn upcoming_invoice(
    client: &reqwest::Client,
    server: &impl Endpoint,
    org: &str,
    token: &str,
) -> Value {
    let path = format!("/v1/orgs/{org}/invoices/upcoming");
    get_ok(client, server, &path, token).await
}

/// The upcoming invoice at `now` as the tenant's owner sees it, which must be priced on
/// `plan` by catalogue version 1: the invoice.
pub async fn upcoming_on_version_1(
    client: &reqwest::Client,
    server: &impl Endpoint,
    (env, tenant): (&Env, &Tenant),
    now: &str,
    plan: &str,
) -> Value {
    let token = owner_token(env, tenant, now);
    let upcoming = upcoming_invoice(client, server, &tenant.org, &token).await;
    assert_eq!(upcoming["plan"], plan, "{upcoming}");
    assert_eq!(upcoming["catalogue_version"], "1");
    upcoming
}

/// Writes the catalogue `body` to `name` in the data directory: the file's path.
pub fn catalogue_path(env: &Env, name: &str, body: &str) -> String {
    let path = env.data().join(name);
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Moves `org` to `plan` with `tally org set-plan` at `now`, and checks that it moved.
pub fn set_plan(env: &Env, org: &str, plan: &str, now: &str) {
    let args = ["org", "set-plan", "--org", org, "--plan", plan];
    let moved = env.cli_env(&args, &tally_now(now));
    assert_eq!(moved["plan"], plan, "{moved}");
}

/// Waits until the app answers `meter`'s entitlement for `key` (a catalogue version that
/// lists the meter is in force): the answer.
pub async fn wait_in_force(
    client: &reqwest::Client,
    server: &TestApp,
    meter: &str,
    key: &str,
) -> Value {
    let entitlement = format!("/v1/entitlements?meter={meter}");
    let in_force = |s: u16, _: &Value| s == 200;
    wait_for_answer(
        client,
        server,
        &entitlement,
        key,
        "version 1 in force",
        in_force,
    )
    .await
}

/// The entry of the list `doc[list]` whose `key` is `value`.
pub fn entry<'a>(doc: &'a Value, list: &str, key: &str, value: &str) -> &'a Value {
    doc[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e[key] == value)
        .unwrap_or_else(|| panic!("no {list} entry with {key} {value}: {doc}"))
}

/// The line of `meter` in a report or an upcoming invoice (`lines`).
pub fn meter_line<'a>(doc: &'a Value, meter: &str) -> &'a Value {
    entry(doc, "lines", "meter", meter)
}

/// The org's report of `period`, billed by `tally bill --no-stripe` at `now`.
pub fn billed_report(env: &Env, org: &str, period: &str, now: &str) -> Value {
    let billed = env.cli_env(
        &["bill", "--period", period, "--no-stripe"],
        &tally_now(now),
    );
    entry(&billed, "reports", "org_id", org).clone()
}

/// The built-in catalogue file with the meter `name` (`spec`) added, and listed by each
/// plan with the entry `plan_entry` gives for the plan's id.
pub fn catalogue_with_meter(name: &str, spec: Value, plan_entry: impl Fn(&str) -> Value) -> String {
    let mut v: Value = serde_json::from_str(tally_core::catalogue::BUILTIN_JSON).unwrap();
    v["meters"][name] = spec;
    for plan in ["free", "starter", "pro", "enterprise"] {
        v["plans"][plan]["meters"][name] = plan_entry(plan);
    }
    serde_json::to_string_pretty(&v).unwrap()
}

/// Whether the AWS emulator is configured (`TALLY_TEST_AWS_ENDPOINT`); when it is not, says
/// that the calling test is skipped.
pub fn emulator_or_skip() -> bool {
    let set = std::env::var_os("TALLY_TEST_AWS_ENDPOINT").is_some();
    if !set {
        eprintln!("skipped: TALLY_TEST_AWS_ENDPOINT is not set (the DynamoDB emulator)");
    }
    set
}
