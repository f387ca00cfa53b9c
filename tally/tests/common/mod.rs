//! Helpers for end-to-end tests of Tally, driven as a user would: CLI commands run as
//! subprocesses of the built binary (the CLI is the contract), the server runs either in
//! process ([`spawn_app`], in `app.rs`: the usual way) or as a real `tally serve` process
//! ([`Server`], in `process.rs`: only for what needs a process, see `tests/process.rs`),
//! and checks go over HTTP and compare usage totals with what the posted events imply.
//! Every helper takes an [`Env`], which says which backends everything runs on (the
//! embedded default, or DynamoDB with SQS or Kinesis on the emulator), so one scenario runs
//! on every backend.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

mod app;
mod priced;
mod process;
mod receiver;

// Each test binary uses some of these: the in-process app or the process.
#[allow(unused_imports)]
pub use app::*;
#[allow(unused_imports)]
pub use priced::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use receiver::*;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tally_core::{Granularity, Month};
use tempfile::TempDir;

/// When [`Env::create_org`] creates its orgs (`TALLY_NOW` for `tally org create`): at the
/// start of February 2026, the first month the tests bill (a month bills only the orgs that
/// existed in it, and the schedulers bill every month since the earliest org's).
pub const ORGS_CREATED_AT: &str = "2026-02-01T00:00:00Z";

/// Half an hour into March: inside February's grace period, so February is not billed yet
/// (month close waits for the grace period, 1 h by default).
pub const IN_GRACE: &str = "2026-03-01T00:30:00Z";

/// After February's grace period: when the tests bill February.
pub const AFTER_GRACE: &str = "2026-03-01T02:00:00Z";

/// After March's grace period: when the tests bill March.
pub const APRIL: &str = "2026-04-01T02:00:00Z";

/// Path of the binary under test, for CLI commands and process-level tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tally")
}

/// Which backends the binary and the in-process app run on: a data directory plus the
/// backend settings. Clones share the directory, which lives until the last clone (an
/// in-process app holds one) is dropped.
#[derive(Clone)]
pub struct Env {
    dir: Arc<TempDir>,
    /// `--store` (default: SQLite under the data directory).
    pub store: Option<String>,
    /// `--queue` (default: the local queue under the data directory).
    pub queue: Option<String>,
    /// `--aws-endpoint`.
    pub aws_endpoint: Option<String>,
}

impl Env {
    /// The embedded default under a fresh temporary directory.
    pub fn embedded() -> Env {
        Env {
            dir: Arc::new(tempfile::tempdir().unwrap()),
            store: None,
            queue: None,
            aws_endpoint: None,
        }
    }

    /// DynamoDB (a fresh table) with SQS or Kinesis (a fresh queue or stream) on the emulator
    /// named by `TALLY_TEST_AWS_ENDPOINT`, created with `tally init`.
    pub fn aws(queue_kind: &str) -> Env {
        let endpoint = std::env::var("TALLY_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
            panic!("TALLY_TEST_AWS_ENDPOINT is not set: AWS tests need the emulator; run `bash scripts/test.sh`, which starts it")
        });
        let suffix: String = format!("{:016x}", rand_u64());
        let queue = match queue_kind {
            // The account segment is a placeholder; `init` prints the real URL.
            "sqs" => format!("sqs:{endpoint}/123456789012/tally-e2e-{suffix}"),
            "kinesis" => format!("kinesis:tally-e2e-{suffix}"),
            other => panic!("unknown queue kind {other}"),
        };
        let mut env = Env {
            dir: Arc::new(tempfile::tempdir().unwrap()),
            store: Some(format!("dynamodb:tally-e2e-{suffix}")),
            queue: Some(queue),
            aws_endpoint: Some(endpoint),
        };
        let out = env.cli(&["init", "--shards", "1"]);
        if let Some(url) = out["queue_url"].as_str() {
            env.queue = Some(format!("sqs:{url}"));
        }
        env
    }

    /// The backend flags every command gets (`--store`, `--queue`, `--aws-endpoint`).
    pub fn flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        for (flag, value) in [
            ("--store", &self.store),
            ("--queue", &self.queue),
            ("--aws-endpoint", &self.aws_endpoint),
        ] {
            if let Some(v) = value {
                flags.push(flag.to_owned());
                flags.push(v.clone());
            }
        }
        flags
    }

    /// The same settings as the library takes them, for an in-process app.
    pub fn common(&self) -> tally::settings::Common {
        tally::settings::Common {
            store: self.store.clone(),
            queue: self.queue.clone(),
            aws_endpoint: self.aws_endpoint.clone(),
            ..tally::settings::Common::embedded(self.data())
        }
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Runs `tally ARGS <flags> --data DATA --json` and returns the parsed stdout, panicking
    /// with the stderr if it failed.
    pub fn cli(&self, args: &[&str]) -> Value {
        self.cli_env(args, &[])
    }

    /// `tally org create`, on `plan` if given, at [`ORGS_CREATED_AT`]: the org, as the CLI
    /// prints it.
    pub fn create_org(&self, name: &str, slug: &str, owner: &str, plan: Option<&str>) -> Value {
        self.create_org_at(name, slug, owner, plan, ORGS_CREATED_AT)
    }

    /// [`Env::create_org`] at `now` (`TALLY_NOW`): the org, as the CLI prints it.
    pub fn create_org_at(
        &self,
        name: &str,
        slug: &str,
        owner: &str,
        plan: Option<&str>,
        now: &str,
    ) -> Value {
        let mut args = vec!["org", "create", "--name", name, "--slug", slug];
        args.extend(["--owner-email", owner]);
        args.extend(plan.into_iter().flat_map(|p| ["--plan", p]));
        self.cli_env(&args, &tally_now(now))
    }

    /// Runs `tally ARGS <flags> --data DATA --json` and returns the raw output.
    pub fn cli_raw(&self, args: &[&str]) -> Output {
        self.cli_raw_env(args, &[])
    }

    /// [`Env::cli_raw`] with extra environment variables (such as `TALLY_NOW`).
    pub fn cli_raw_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        self.command(args)
            .envs(envs.iter().copied())
            .output()
            .expect("run tally")
    }

    /// `tally ARGS <flags> --data DATA`, logging warnings only, not yet run: what a person
    /// runs.
    pub fn human_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin());
        command.args(args).args(self.flags()).arg("--data");
        command.arg(self.dir.path()).env("TALLY_LOG", "warn");
        command
    }

    /// [`Env::human_command`] with `--json`, not yet run: what [`Env::cli_raw_env`] runs,
    /// for a test that spawns it, feeds it or adds to its environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = self.human_command(args);
        command.arg("--json");
        command
    }

    /// Writes the catalogue `body` to `name` in the data directory and publishes it with
    /// `tally catalogue apply … --from <from>` under `envs`: the command's JSON answer.
    pub fn apply_catalogue(
        &self,
        name: &str,
        body: &str,
        from: &str,
        envs: &[(&str, &str)],
    ) -> Value {
        let path = self.data().join(name);
        std::fs::write(&path, body).unwrap();
        let path = path.to_str().unwrap();
        self.cli_env(&["catalogue", "apply", path, "--from", from], envs)
    }

    /// [`Env::cli`] with extra environment variables (such as `TALLY_NOW`).
    pub fn cli_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Value {
        let out = self.cli_raw_env(args, envs);
        assert!(
            out.status.success(),
            "tally {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_of(args, &out)
    }

    /// Runs `tally ARGS <flags> --data DATA --json` with `envs`, whatever its exit status:
    /// the status code and the JSON it printed.
    pub fn cli_status_env(&self, args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, Value) {
        let out = self.cli_raw_env(args, envs);
        (out.status.code(), json_of(args, &out))
    }
}

/// Runs `tally ARGS` (`tally bill …`) at `now` with Stripe's API at `base` under the secret
/// key `secret`, off the async runtime (a Stripe double serves on it): its output.
pub async fn bill_on_stripe(
    env: &Env,
    args: &[&str],
    now: &str,
    (base, secret): (&str, &str),
) -> Output {
    let mut bill = env.command(args);
    bill.env("TALLY_NOW", now)
        .env("TALLY_STRIPE_SECRET_KEY", secret)
        .env("TALLY_STRIPE_API_BASE", base);
    tokio::task::spawn_blocking(move || bill.output().unwrap())
        .await
        .unwrap()
}

/// What `tally ARGS` printed on stdout, as JSON; panics naming both streams when it is not.
fn json_of(args: &[&str], out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tally {args:?} printed non-JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The environment that makes `tally` take `t` (RFC 3339) as now.
pub fn tally_now(t: &str) -> [(&str, &str); 1] {
    [("TALLY_NOW", t)]
}

/// An org as the CLI prints it: its id and its owner's user id.
pub fn org_and_owner(org: &Value) -> (&str, &str) {
    (
        org["id"].as_str().unwrap(),
        org["owner_id"].as_str().unwrap(),
    )
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// An org with two projects and an API key, made through the CLI.
pub struct Tenant {
    pub org: String,
    /// The org's owner's user id (for `tally token create --user`).
    pub owner: String,
    pub projects: Vec<String>,
    pub key: String,
}

pub fn make_tenant(env: &Env, slug: &str) -> Tenant {
    let org = env.create_org("Acme", slug, "ada@example.com", Some("pro"));
    let owner = org["owner_id"].as_str().expect("owner id").to_owned();
    let org = org["id"].as_str().expect("org id").to_owned();
    let projects = (0..2)
        .map(|i| {
            let p = env.cli(&[
                "project",
                "create",
                "--org",
                &org,
                "--name",
                &format!("P{i}"),
                "--slug",
                &format!("p{i}"),
            ]);
            p["id"].as_str().expect("project id").to_owned()
        })
        .collect();
    let key = create_key(env, &org, "ci", false);
    Tenant {
        org,
        owner,
        projects,
        key,
    }
}

/// A fresh embedded [`Env`] and a tenant made in it ([`make_tenant`]).
pub fn embedded_tenant(slug: &str) -> (Env, Tenant) {
    let env = Env::embedded();
    let tenant = make_tenant(&env, slug);
    (env, tenant)
}

/// A new API key of `org` named `name` (a test-mode key when `test`), made through the CLI:
/// its secret.
pub fn create_key(env: &Env, org: &str, name: &str, test: bool) -> String {
    let mut args = vec!["key", "create", "--org", org, "--name", name];
    if test {
        args.push("--test");
    }
    env.cli(&args)["key"]
        .as_str()
        .expect("key secret")
        .to_owned()
}

/// Anything serving Tally's HTTP API that a test talks to: an in-process [`TestApp`] or a
/// `tally serve` [`Server`] process.
pub trait Endpoint {
    /// The absolute URL of `path` (which starts with `/`).
    fn url(&self, path: &str) -> String;
}

/// GET /v1/usage and return the series as (start, value) strings.
pub async fn usage(
    client: &reqwest::Client,
    server: &impl Endpoint,
    key: &str,
    query: &str,
) -> Vec<(String, String)> {
    let r = client
        .get(server.url(&format!("/v1/usage?{query}")))
        .bearer_auth(key)
        .send()
        .await
        .expect("usage request");
    let status = r.status();
    let body: Value = r.json().await.expect("usage json");
    assert_eq!(status, 200, "usage {query}: {body}");
    body["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|p| {
            (
                p["start"].as_str().expect("start").to_owned(),
                p["value"].as_str().expect("value").to_owned(),
            )
        })
        .collect()
}

/// Waits (up to 30 s) until the org's compute minutes of `month` (`YYYY-MM`), read with
/// `key`, are `want`: how a scenario knows its posted usage has been counted.
pub async fn wait_for_month(
    client: &reqwest::Client,
    server: &impl Endpoint,
    key: &str,
    month: &str,
    want: &str,
) {
    let m = Month::parse(month).unwrap();
    let query = format!(
        "meter=compute_minutes&granularity=month&from={}&to={}",
        m.start().format("%Y-%m-%d"),
        m.end().format("%Y-%m-%d")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = usage(client, server, key, &query).await;
        if got.first().map(|(_, v)| v.as_str()) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{month} never reached {want}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One event as the test posts it, with what it should add.
#[derive(Clone)]
pub struct Ev {
    pub id: String,
    pub project: String,
    pub meter: &'static str,
    pub quantity: Option<&'static str>,
    pub ts: DateTime<Utc>,
}

impl Ev {
    pub fn json(&self) -> Value {
        let mut v = json!({"id": self.id, "project_id": self.project, "meter": self.meter, "timestamp": self.ts.to_rfc3339()});
        if let Some(q) = self.quantity {
            v["quantity"] = json!(q);
        }
        v
    }
    pub fn amount(&self) -> Decimal {
        Decimal::from_str(self.quantity.unwrap_or("1")).unwrap()
    }
}

pub const QUANTITIES: [&str; 5] = ["0.25", "1.5", "3", "0.001", "12.75"];

/// `n` distinct events spread over the current month so far, across the tenant's projects
/// and two meters (api_calls with the default quantity, compute_minutes with decimals).
pub fn events(tenant: &Tenant, prefix: &str, n: usize) -> Vec<Ev> {
    let now = Utc::now();
    let start = Month::of(now).start();
    let span = (now - start).num_seconds().max(1);
    (0..n)
        .map(|i| Ev {
            id: format!("{prefix}-{i}"),
            project: tenant.projects[i % tenant.projects.len()].clone(),
            meter: if i % 3 == 0 {
                "api_calls"
            } else {
                "compute_minutes"
            },
            quantity: if i % 3 == 0 {
                None
            } else {
                Some(QUANTITIES[i % QUANTITIES.len()])
            },
            ts: start + chrono::Duration::seconds((i as i64 * 7919) % span),
        })
        .collect()
}

/// Expected series per (meter, project filter, granularity), computed from distinct events.
pub fn expected(
    evs: &[Ev],
    meter: &str,
    project: Option<&str>,
    g: Granularity,
) -> Vec<(String, String)> {
    let mut m: BTreeMap<DateTime<Utc>, Decimal> = BTreeMap::new();
    let mut seen = HashSet::new();
    for e in evs
        .iter()
        .filter(|e| e.meter == meter && project.is_none_or(|p| p == e.project))
    {
        if seen.insert(e.id.clone()) {
            *m.entry(g.truncate(e.ts)).or_default() += e.amount();
        }
    }
    m.into_iter()
        .map(|(k, v)| {
            (
                k.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                v.normalize().to_string(),
            )
        })
        .collect()
}

pub fn normalize(series: Vec<(String, String)>) -> Vec<(String, String)> {
    series
        .into_iter()
        .map(|(s, v)| (s, Decimal::from_str(&v).unwrap().normalize().to_string()))
        .collect()
}

pub async fn post(
    client: &reqwest::Client,
    server: &impl Endpoint,
    key: &str,
    batch: &[Ev],
) -> reqwest::Result<(u16, Value)> {
    post_events(client, server, key, batch.iter().map(Ev::json).collect()).await
}

/// `POST /v1/events` of `events` (as JSON, valid or not) with `key`: the status and the
/// answer.
pub async fn post_events(
    client: &reqwest::Client,
    server: &impl Endpoint,
    key: &str,
    events: Vec<Value>,
) -> reqwest::Result<(u16, Value)> {
    let r = client
        .post(server.url("/v1/events"))
        .bearer_auth(key)
        .json(&json!({ "events": events }))
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// [`post_events`], which must be accepted (`202`): the answer.
pub async fn post_accepted(
    client: &reqwest::Client,
    server: &impl Endpoint,
    key: &str,
    events: Vec<Value>,
) -> Value {
    let (status, answer) = post_events(client, server, key, events).await.unwrap();
    assert_eq!(status, 202, "{answer}");
    answer
}

/// Posts `events` with the tenant's key to the app serving at `at` (see [`serve_at`]), all
/// accepted, and returns once each of `months` (`YYYY-MM`, compute minutes) reads its total
/// and the app has stopped.
pub async fn count_usage(
    env: &Env,
    tenant: &Tenant,
    at: &str,
    events: Vec<Value>,
    months: &[(&str, &str)],
) {
    let client = reqwest::Client::new();
    let server = serve_at(env, at).await;
    let sent = events.len();
    let out = post_accepted(&client, &server, &tenant.key, events).await;
    assert_eq!(out["accepted"], sent, "{out}");
    for (month, total) in months {
        wait_for_month(&client, &server, &tenant.key, month, total).await;
    }
    server.stop().await.unwrap();
}

/// The billing scenarios' February, counted by the app serving at `at`: 10,500 compute
/// minutes over the tenant's two projects (6,000 and 4,500).
pub async fn february_usage(env: &Env, tenant: &Tenant, at: &str) {
    let (p0, p1) = (tenant.projects[0].as_str(), tenant.projects[1].as_str());
    let events = vec![
        compute_minutes("feb-1", p0, "6000", "2026-02-10T10:00:00Z"),
        compute_minutes("feb-2", p1, "4500", "2026-02-28T23:59:59Z"),
    ];
    count_usage(env, tenant, at, events, &[("2026-02", "10500")]).await;
}

/// An event of `minutes` compute minutes, as JSON.
pub fn compute_minutes(id: &str, project: &str, minutes: &str, at: &str) -> Value {
    json!({"id": id, "project_id": project, "meter": "compute_minutes", "quantity": minutes, "timestamp": at})
}

/// Waits until the org-wide month totals match, then checks every granularity and scope.
pub async fn assert_exact(
    client: &reqwest::Client,
    server: &impl Endpoint,
    tenant: &Tenant,
    evs: &[Ev],
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for meter in ["api_calls", "compute_minutes"] {
        let want = expected(evs, meter, None, Granularity::Month);
        loop {
            let got = normalize(
                usage(
                    client,
                    server,
                    &tenant.key,
                    &format!("meter={meter}&granularity=month"),
                )
                .await,
            );
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{meter} month totals never reached {want:?}; last {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for meter in ["api_calls", "compute_minutes"] {
        for g in Granularity::ALL {
            let scopes: Vec<Option<&str>> = std::iter::once(None)
                .chain(tenant.projects.iter().map(|p| Some(p.as_str())))
                .collect();
            for p in scopes {
                let mut q = format!("meter={meter}&granularity={}", g.as_str());
                if let Some(p) = p {
                    q.push_str(&format!("&project_id={p}"));
                }
                let got = normalize(usage(client, server, &tenant.key, &q).await);
                assert_eq!(got, expected(evs, meter, p, g), "{q}");
            }
        }
    }
}

/// The foundation scenario: 900 distinct events plus 100 resends of earlier ids, posted 100
/// per request, then exact totals at every granularity, org-wide and per project.
pub async fn resend_scenario(env: &Env, slug: &str) {
    let tenant = make_tenant(env, slug);
    let server = spawn_app_in(env).await;
    let client = reqwest::Client::new();
    let distinct = events(&tenant, "e", 900);
    let mut stream = Vec::with_capacity(1000);
    for (i, e) in distinct.iter().enumerate() {
        stream.push(e.clone());
        if i % 9 == 8 {
            stream.push(distinct[(i * 31) % (i + 1)].clone());
        }
    }
    assert_eq!(stream.len(), 1000);
    for batch in stream.chunks(100) {
        let (status, body) = post(&client, &server, &tenant.key, batch).await.unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], batch.len(), "{body}");
        assert_eq!(body["rejected"], json!([]));
    }
    assert_exact(&client, &server, &tenant, &distinct).await;
    server.stop().await.unwrap();
}
