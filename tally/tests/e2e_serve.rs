//! End-to-end tests of the server on the embedded default, driven as a user would: the CLI
//! makes the tenant, events go over HTTP to the app running in process ([`spawn_app_in`]),
//! totals come back from `GET /v1/usage`; and the CLI refuses bad input. Crash and signal
//! tests, which need a real `tally serve` process, are in `process.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_never_count_twice_at_any_granularity() {
    resend_scenario(&Env::embedded(), "acme").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_refused_by_field_and_the_rest_counted() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "strict");
    let server = spawn_app_in(&env).await;
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
    // good[0..4] appear; the repeats among them are resends, which is fine.
    let answer = post_accepted(&client, &server, &tenant.key, body).await;
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
    server.stop().await.unwrap();
}

#[test]
fn cli_refuses_bad_input_with_one_line_reasons() {
    let env = Env::embedded();
    let bad_slug = env.cli_raw(&[
        "org",
        "create",
        "--name",
        "A",
        "--slug",
        "Not OK",
        "--owner-email",
        "a@example.com",
    ]);
    assert!(!bad_slug.status.success());
    let err = String::from_utf8_lossy(&bad_slug.stderr);
    assert!(err.contains("slug"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    env.create_org("A", "taken", "a@example.com", None);
    for (command, says) in [
        (
            "org create --name B --slug taken --owner-email b@example.com",
            "already exists",
        ),
        (
            "project create --org org_missing --name P --slug p",
            "no such organization org_missing",
        ),
        ("reconcile --period 2026-13", "YYYY-MM"),
        ("reconcile --period 2026-11 --store postgres:x", "--store"),
    ] {
        let args: Vec<&str> = command.split(' ').collect();
        let out = env.cli_raw(&args);
        assert!(!out.status.success(), "tally {command} should have failed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "tally {command}: {err}");
    }
}

/// `GET /v1/entitlements` with `key` and `query`: (status, body).
async fn entitlement(
    client: &reqwest::Client,
    server: &impl Endpoint,
    key: &str,
    query: &str,
) -> (u16, Value) {
    let r = client
        .get(server.url(&format!("/v1/entitlements{query}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entitlement_checks_follow_the_plan_through_tally_serve() {
    let env = Env::embedded();
    let free = env.create_org("Free", "freeco", "fay@example.com", Some("free"));
    let free_id = free["id"].as_str().unwrap();
    let project = env.cli(&[
        "project", "create", "--org", free_id, "--name", "P", "--slug", "p",
    ]);
    let project = project["id"].as_str().unwrap().to_owned();
    let key = env.cli(&["key", "create", "--org", free_id, "--name", "svc"]);
    let key = key["key"].as_str().unwrap().to_owned();
    let unused = env.cli(&["key", "create", "--org", free_id, "--name", "old"]);
    env.cli(&[
        "key",
        "revoke",
        "--org",
        free_id,
        "--key",
        unused["id"].as_str().unwrap(),
    ]);
    let pro = make_tenant(&env, "proco");
    let server = spawn_app_in(&env).await;
    let client = reqwest::Client::new();
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let post = |key: &str, id: &str, project: &str, minutes: &str| {
        let body = json!({"id": id, "project_id": project, "meter": "compute_minutes",
                          "quantity": minutes, "timestamp": chrono::Utc::now().to_rfc3339()});
        let (client, url, key) = (client.clone(), server.url("/v1/events"), key.to_owned());
        async move {
            let r = client
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["accepted"], 1, "{body}");
        }
    };

    // The free plan: 100 compute-minutes, hard. Under the allowance, then at it: events
    // this process accepted count at once.
    let (status, e) = entitlement(&client, &server, &key, "?meter=compute_minutes").await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(
        e,
        json!({"meter": "compute_minutes", "allowed": true, "limit": "100", "usage": "0",
               "remaining": "100", "hard": true, "period": period})
    );
    post(&key, "a", &project, "60").await;
    let (_, e) = entitlement(&client, &server, &key, "?meter=compute_minutes").await;
    assert_eq!(
        (&e["usage"], &e["remaining"], &e["allowed"]),
        (&json!("60"), &json!("40"), &json!(true))
    );
    post(&key, "b", &project, "40").await;
    let (_, e) = entitlement(&client, &server, &key, "?meter=compute_minutes").await;
    assert_eq!(
        (&e["usage"], &e["remaining"], &e["allowed"]),
        (&json!("100"), &json!("0"), &json!(false))
    );

    // Unknown meter, revoked key.
    let (status, e) = entitlement(&client, &server, &key, "?meter=gpu_hours").await;
    assert_eq!(
        (status, &e["error"]["field"]),
        (400, &json!("meter")),
        "{e}"
    );
    let (status, _) = entitlement(&client, &server, unused["key"].as_str().unwrap(), "").await;
    assert_eq!(status, 401);

    // The pro plan is soft: past its 10,000 included minutes it stays allowed, with
    // nothing remaining, once the aggregator applied the usage and the cache re-read it
    // (within the documented bound).
    post(&pro.key, "p1", &pro.projects[0], "10005").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, e) = entitlement(&client, &server, &pro.key, "?meter=compute_minutes").await;
        if e["usage"] == "10005" {
            assert_eq!(
                e,
                json!({"meter": "compute_minutes", "allowed": true, "limit": "10000",
                       "usage": "10005", "remaining": "0", "hard": false, "period": period})
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never counted: {e}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // The operator's view of the same month: pro is $99.00 plus 5 minutes over the 10,000
    // included at $0.10 = $0.50, 20 % off = $0.40: $99.40 so far. No month is closed yet.
    let upcoming = env.cli(&["invoice", "upcoming", "--org", &pro.org]);
    assert_eq!(upcoming["plan"], "pro", "{upcoming}");
    assert_eq!(upcoming["total"], "99.40", "{upcoming}");
    assert_eq!(upcoming["period"], period.as_str());
    // The server's scheduler closes the months since the org's creation (no usage: the
    // $99.00 fee each), listed newest first, none synced to Stripe (it is off here).
    let listed = env.cli(&["invoice", "list", "--org", &pro.org]);
    let listed = listed["invoices"].as_array().unwrap();
    let periods: Vec<&str> = listed
        .iter()
        .map(|i| i["period"].as_str().unwrap())
        .collect();
    let mut newest_first = periods.clone();
    newest_first.sort_by_key(|p| std::cmp::Reverse(*p));
    assert_eq!(periods, newest_first);
    assert!(periods.iter().all(|p| *p < period.as_str()), "{periods:?}");
    for i in listed {
        assert_eq!(
            (&i["total"], &i["stripe"]["status"]),
            (&json!("99.00"), &json!("not_synced")),
            "{i}"
        );
    }
}
