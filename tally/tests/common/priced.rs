//! What the tests of a meter applied to a running app share (`e2e_llm_tokens`,
//! `e2e_storage_gb`): the app on a test clock, the catalogue file and the plan, the wait for
//! the version in force, the owner's token on that clock, the upcoming invoice, a billed
//! month's report, and the line of one meter in either; and [`embedded_and_dynamodb_tests`],
//! which declares a scenario's test on each backend.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tally_core::ports::FixedClock;

use super::{
    Endpoint, Env, Tenant, TestApp, get_ok, make_tenant, post_accepted, spawn_app_with, tally_now,
    wait_for_answer,
};

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

/// A tenant (`make_tenant`) and [`app_on_clock`] starting at `start`, with an HTTP client:
/// how a meter's scenario starts.
pub async fn tenant_on_clock(
    env: &Env,
    slug: &str,
    start: &str,
) -> (Tenant, TestApp, Arc<FixedClock>, reqwest::Client) {
    let tenant = make_tenant(env, slug);
    let (server, clock) = app_on_clock(env, start).await;
    (tenant, server, clock, reqwest::Client::new())
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

/// Publishes the catalogue file at `path` with `tally catalogue apply` at `now`: the
/// command's answer.
pub fn apply_at(env: &Env, path: &str, now: &str) -> Value {
    env.cli_env(&["catalogue", "apply", path], &tally_now(now))
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

/// Waits until `ready` holds for the `200` answer of `GET /v1/usage?{query}` with `key` (the
/// aggregator has counted what the test posted; `what` names it if it never does): the
/// answer.
pub async fn wait_for_usage(
    client: &reqwest::Client,
    server: &TestApp,
    key: &str,
    query: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/v1/usage?{query}");
    wait_for_answer(client, server, &path, key, what, |s, b| {
        s == 200 && ready(b)
    })
    .await
}

/// [`post_accepted`], with every one of `events` accepted: the answer.
pub async fn post_all_accepted(
    client: &reqwest::Client,
    server: &impl Endpoint,
    key: &str,
    events: Vec<Value>,
) -> Value {
    let n = events.len();
    let answer = post_accepted(client, server, key, events).await;
    assert_eq!(answer["accepted"], n, "{answer}");
    answer
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

/// A meter's catalogue entry: `description`, measured in `unit`, aggregated by
/// `aggregation`, listed at `unit_price` per `price_unit` (`price_unit_size` of `unit`)
/// with no tiers; plus the fields of `more` (`value`, `dimensions`, ...).
pub fn priced_meter(
    (description, unit, aggregation): (&str, &str, &str),
    (price_unit, price_unit_size, unit_price): (&str, u64, &str),
    more: Value,
) -> Value {
    let mut spec = json!({
        "description": description,
        "unit": unit,
        "aggregation": aggregation,
        "price_unit": price_unit,
        "price_unit_size": price_unit_size,
        "list_price": { "model": "per_unit", "unit_price": unit_price }
    });
    let fields = spec.as_object_mut().unwrap();
    fields.extend(more.as_object().unwrap().clone());
    spec
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

/// Declares the two tests of an end-to-end `scenario(env, slug)`: `$embedded` on the embedded
/// default (SQLite and the local queue) and `the_same_on_dynamodb` on DynamoDB and SQS, with
/// `-aws` added to the slug, skipped without the emulator. A macro, as each test must be an
/// item of its own test binary.
#[allow(unused_macros)]
macro_rules! embedded_and_dynamodb_tests {
    ($scenario:ident, $slug:literal, $embedded:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $embedded() {
            $scenario(&Env::embedded(), $slug).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_same_on_dynamodb() {
            if !emulator_or_skip() {
                return;
            }
            $scenario(&Env::aws("sqs"), concat!($slug, "-aws")).await;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use embedded_and_dynamodb_tests;
