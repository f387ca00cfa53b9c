//! End-to-end tests of `tally serve` on the embedded default, driven as a user would: the
//! CLI makes the tenant, events go over HTTP, totals come back from `GET /v1/usage`, and the
//! server is killed and restarted along the way.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tally_core::{Granularity, Month};

/// One event as the test posts it, with what it should add.
#[derive(Clone)]
struct Ev {
    id: String,
    project: String,
    meter: &'static str,
    quantity: Option<&'static str>,
    ts: DateTime<Utc>,
}

impl Ev {
    fn json(&self) -> Value {
        let mut v = json!({"id": self.id, "project_id": self.project, "meter": self.meter, "timestamp": self.ts.to_rfc3339()});
        if let Some(q) = self.quantity {
            v["quantity"] = json!(q);
        }
        v
    }
    fn amount(&self) -> Decimal {
        Decimal::from_str(self.quantity.unwrap_or("1")).unwrap()
    }
}

const QUANTITIES: [&str; 5] = ["0.25", "1.5", "3", "0.001", "12.75"];

/// `n` distinct events spread over the current month so far, across the tenant's projects
/// and two meters (api_calls with the default quantity, compute_minutes with decimals).
fn events(tenant: &Tenant, prefix: &str, n: usize) -> Vec<Ev> {
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
fn expected(
    evs: &[Ev],
    meter: &str,
    project: Option<&str>,
    g: Granularity,
) -> Vec<(String, String)> {
    let mut m: BTreeMap<DateTime<Utc>, Decimal> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
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

fn normalize(series: Vec<(String, String)>) -> Vec<(String, String)> {
    series
        .into_iter()
        .map(|(s, v)| (s, Decimal::from_str(&v).unwrap().normalize().to_string()))
        .collect()
}

async fn post(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    batch: &[Ev],
) -> reqwest::Result<(u16, Value)> {
    let body = json!({"events": batch.iter().map(Ev::json).collect::<Vec<_>>()});
    let r = client
        .post(server.url("/v1/events"))
        .bearer_auth(key)
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// Waits until the org-wide month totals match, then checks every granularity and scope.
async fn assert_exact(client: &reqwest::Client, server: &Server, tenant: &Tenant, evs: &[Ev]) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_never_count_twice_at_any_granularity() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = make_tenant(dir.path(), "acme");
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();

    // 900 distinct events plus 100 resends of earlier ids, posted 100 per request.
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_resend_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Arc::new(make_tenant(dir.path(), "crashy"));
    let mut server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let evs = events(&tenant, "k", 3000);
    let batches: Vec<Vec<Ev>> = evs.chunks(50).map(<[Ev]>::to_vec).collect();

    // Post in the background; kill the server while requests are in flight.
    let ok = Arc::new(AtomicUsize::new(0));
    let poster = {
        let (client, url, key, ok, batches) = (
            client.clone(),
            server.url("/v1/events"),
            tenant.key.clone(),
            ok.clone(),
            batches.clone(),
        );
        tokio::spawn(async move {
            let mut answered = vec![false; batches.len()];
            for (i, b) in batches.iter().enumerate() {
                let body = json!({"events": b.iter().map(Ev::json).collect::<Vec<_>>()});
                if let Ok(r) = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    && r.status() == 202
                {
                    answered[i] = true;
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            }
            answered
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ok.load(Ordering::SeqCst) < 20 {
        assert!(
            Instant::now() < deadline,
            "server never accepted 20 requests"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let answered = poster.await.unwrap();
    let lost = answered.iter().filter(|a| !**a).count();
    assert!(lost > 0, "the kill should have cut the stream short");

    // Restart and resend everything that did not get a 202, plus a few that did (a client
    // that is unsure resends; that must not count twice either).
    let server = Server::start(dir.path()).await;
    for (i, b) in batches.iter().enumerate() {
        if !answered[i] || i % 10 == 0 {
            let (status, body) = post(&client, &server, &tenant.key, b).await.unwrap();
            assert_eq!(status, 202, "{body}");
        }
    }
    assert_exact(&client, &server, &tenant, &evs).await;

    let period = Month::of(Utc::now()).to_string();
    let out = cli_raw(dir.path(), &["reconcile", "--period", &period]);
    assert!(
        out.status.success(),
        "reconcile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["drift"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_refused_by_field_and_the_rest_counted() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = make_tenant(dir.path(), "strict");
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let good = events(&tenant, "g", 4);
    let ts = good[0].ts.to_rfc3339();
    let p = &tenant.projects[0];
    let bad = [
        (
            json!({"id": "b1", "project_id": p, "meter": "api_calls", "timestamp": "not a time"}),
            "timestamp",
        ),
        (
            json!({"id": "b2", "project_id": p, "meter": "compute_minutes", "quantity": -1, "timestamp": ts}),
            "quantity",
        ),
        (
            json!({"id": "b3", "project_id": p, "meter": "compute_minutes", "quantity": "lots", "timestamp": ts}),
            "quantity",
        ),
        (
            json!({"id": "b4", "project_id": p, "meter": "gpu_hours", "quantity": 1, "timestamp": ts}),
            "meter",
        ),
        (
            json!({"id": "b5", "project_id": "prj_doesnotexist", "meter": "api_calls", "timestamp": ts}),
            "project_id",
        ),
        (
            json!({"project_id": p, "meter": "api_calls", "timestamp": ts}),
            "id",
        ),
        (
            json!({"id": "x".repeat(129), "project_id": p, "meter": "api_calls", "timestamp": ts}),
            "id",
        ),
    ];
    let mut body: Vec<Value> = Vec::new();
    let mut expect_bad = BTreeMap::new();
    for (i, (b, field)) in bad.iter().enumerate() {
        body.push(good[i % good.len()].json());
        expect_bad.insert(body.len(), *field);
        body.push(b.clone());
    }
    // good[0..4] appear; duplicates among them are resends, which is fine.
    let r = client
        .post(server.url("/v1/events"))
        .bearer_auth(&tenant.key)
        .json(&json!({"events": body}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], bad.len(), "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), bad.len(), "{answer}");
    for rej in rejected {
        let index = rej["index"].as_u64().unwrap() as usize;
        assert_eq!(rej["error"]["field"], expect_bad[&index], "{rej}");
        assert!(
            rej["error"]["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{rej}"
        );
        assert!(
            rej["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{rej}"
        );
    }
    assert_exact(&client, &server, &tenant, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_a_restart_keeps_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = make_tenant(dir.path(), "graceful");
    let mut server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let evs = events(&tenant, "t", 2000);
    for b in evs.chunks(250) {
        let (status, body) = post(&client, &server, &tenant.key, b).await.unwrap();
        assert_eq!(status, 202, "{body}");
    }
    let status = server.terminate();
    assert!(
        status.success(),
        "tally serve exited with {status} after SIGTERM"
    );
    let server = Server::start(dir.path()).await;
    assert_exact(&client, &server, &tenant, &evs).await;
}

#[test]
fn cli_refuses_bad_input_with_one_line_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let bad_slug = cli_raw(
        dir.path(),
        &[
            "org",
            "create",
            "--name",
            "A",
            "--slug",
            "Not OK",
            "--owner-email",
            "a@example.com",
        ],
    );
    assert!(!bad_slug.status.success());
    let err = String::from_utf8_lossy(&bad_slug.stderr);
    assert!(err.contains("slug"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    cli(
        dir.path(),
        &[
            "org",
            "create",
            "--name",
            "A",
            "--slug",
            "taken",
            "--owner-email",
            "a@example.com",
        ],
    );
    let dup = cli_raw(
        dir.path(),
        &[
            "org",
            "create",
            "--name",
            "B",
            "--slug",
            "taken",
            "--owner-email",
            "b@example.com",
        ],
    );
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));

    let no_org = cli_raw(
        dir.path(),
        &[
            "project",
            "create",
            "--org",
            "org_missing",
            "--name",
            "P",
            "--slug",
            "p",
        ],
    );
    assert!(!no_org.status.success());
    assert!(String::from_utf8_lossy(&no_org.stderr).contains("not found"));

    let bad_period = cli_raw(dir.path(), &["reconcile", "--period", "2026-13"]);
    assert!(!bad_period.status.success());
    assert!(String::from_utf8_lossy(&bad_period.stderr).contains("YYYY-MM"));
}
