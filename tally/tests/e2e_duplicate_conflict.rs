//! An event id resent with other contents in a *later* request, which ingest cannot see:
//! the aggregator keeps the first copy counted and records the resend in the org's audit
//! trail (`event.duplicate_conflict`), where the org's owner reads it; an identical resend
//! records nothing. On the embedded default, through the real app.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use chrono::{Datelike, Utc};
use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_with_other_contents_is_audited_and_the_first_copy_stays_counted() {
    let env = Env::embedded();
    let org = env.create_org("Acme", "acme-conflict", "ada@example.com", Some("pro"));
    let (org_id, owner) = (
        org["id"].as_str().unwrap().to_owned(),
        org["owner_id"].as_str().unwrap().to_owned(),
    );
    let project = env.cli(&[
        "project", "create", "--org", &org_id, "--name", "P", "--slug", "p",
    ])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = env.cli(&["key", "create", "--org", &org_id, "--name", "ci"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = env.cli(&["token", "create", "--user", &owner, "--ttl", "10m"])["token"]
        .as_str()
        .unwrap()
        .to_owned();

    let server = spawn_app_in(&env).await;
    let client = reqwest::Client::new();
    let now = Utc::now();
    let month = format!("{}-{:02}", now.year(), now.month());
    let at = now.to_rfc3339();
    let send = |id: &str, minutes: &str| vec![compute_minutes(id, &project, minutes, &at)];

    post_accepted(&client, &server, &key, send("x", "5")).await;
    wait_for_month(&client, &server, &key, &month, "5").await;
    // The same contents again, then other contents: both are duplicates, one conflicts.
    post_accepted(&client, &server, &key, send("x", "5")).await;
    let answer = post_accepted(&client, &server, &key, send("x", "9")).await;
    assert_eq!(answer["accepted"], 1, "{answer}");
    post_accepted(&client, &server, &key, send("y", "1")).await;
    wait_for_month(&client, &server, &key, &month, "6").await;

    let audit = |client: reqwest::Client, url: String, token: String| async move {
        let r = client.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let url = server.url(&format!(
        "/v1/orgs/{org_id}/audit?action=event.duplicate_conflict"
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let page = audit(client.clone(), url.clone(), token.clone()).await;
        let records = page["records"].as_array().cloned().unwrap_or_default();
        if !records.is_empty() || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(records.len(), 1, "one conflicting resend: {records:?}");
    let r = &records[0];
    for (field, want) in [
        ("actor", "aggregator"),
        ("resource", "event:x"),
        ("outcome", "refused"),
        ("reason", "duplicate_conflict"),
    ] {
        assert_eq!(r[field], want, "{field}: {r}");
    }
    assert_eq!(r["after"]["quantity"], "9", "{r}");
    // The first copy stays counted.
    assert_eq!(
        usage(
            &client,
            &server,
            &key,
            "meter=compute_minutes&granularity=month"
        )
        .await[0]
            .1,
        "6"
    );
    server.stop().await.unwrap();
}
