//! End-to-end test of the management API on the embedded default, driven as a user would:
//! the CLI makes orgs and mints a token, and `tally serve` (sharing the data directory, and
//! so the generated JWT secret) accepts it; every mutation shows in the audit trail, those
//! of the CLI included.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tokens_work_in_the_server_and_mutations_are_audited() {
    let env = Env::embedded();
    let org = env.cli(&[
        "org",
        "create",
        "--name",
        "Acme",
        "--slug",
        "acme-mgmt",
        "--owner-email",
        "ada@example.com",
        "--plan",
        "starter",
    ]);
    let other = env.cli(&[
        "org",
        "create",
        "--name",
        "Other",
        "--slug",
        "other-mgmt",
        "--owner-email",
        "bob@example.com",
    ]);
    let (org_id, owner) = (
        org["id"].as_str().unwrap(),
        org["owner_id"].as_str().unwrap(),
    );
    let token = env.cli(&["token", "create", "--user", owner, "--ttl", "10m"]);
    let token = token["token"].as_str().unwrap().to_owned();
    let refused = env.cli_raw(&["token", "create", "--user", "usr_nobody"]);
    assert!(!refused.status.success());

    let server = Server::start(&env).await;
    let client = reqwest::Client::new();
    let get = |path: String| {
        let req = client.get(server.url(&path)).bearer_auth(&token);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = get(format!("/v1/orgs/{org_id}")).await;
    assert_eq!(
        (status, body["name"].as_str()),
        (200, Some("Acme")),
        "{body}"
    );
    let (status, _) = get(format!("/v1/orgs/{}", other["id"].as_str().unwrap())).await;
    assert_eq!(status, 404, "another org is not found");

    let r = client
        .post(server.url(&format!("/v1/orgs/{org_id}/projects")))
        .bearer_auth(&token)
        .json(&json!({"name": "Web", "slug": "web"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // A key made by the CLI while the server runs is audited too.
    env.cli(&["key", "create", "--org", org_id, "--name", "ci"]);

    let (status, audit) = get(format!("/v1/orgs/{org_id}/audit")).await;
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<(&str, &str)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("key.create", "cli"),
            ("project.create", owner),
            ("org.create", "cli")
        ]
    );
}
