//! End-to-end test of the management API on the embedded default, driven as a user would:
//! the CLI (a subprocess) makes orgs and mints a token, and the app in process (sharing the
//! data directory, and so the generated JWT secret) accepts it; every mutation shows in the
//! audit trail, those of the CLI included.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tokens_work_in_the_server_and_mutations_are_audited() {
    let env = Env::embedded();
    let org = env.create_org("Acme", "acme-mgmt", "ada@example.com", Some("starter"));
    let other = env.create_org("Other", "other-mgmt", "bob@example.com", None);
    let (org_id, owner) = org_and_owner(&org);
    let token = env.cli(&["token", "create", "--user", owner, "--ttl", "10m"]);
    let token = token["token"].as_str().unwrap().to_owned();
    let refused = env.cli_raw(&["token", "create", "--user", "usr_nobody"]);
    assert!(!refused.status.success());
    // A token lives a day at most.
    let long = env.cli_raw(&["token", "create", "--user", owner, "--ttl", "2d"]);
    assert!(!long.status.success());
    assert!(
        String::from_utf8_lossy(&long.stderr).contains("at most"),
        "{long:?}"
    );

    let server = spawn_app_in(&env).await;
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
    server.stop().await.unwrap();
}

/// Plans change only through the operator: the API refuses the owner, `tally org set-plan`
/// moves the org (audited as the CLI), and refuses a plan whose project limit the org
/// already exceeds (free allows one; the org has two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operator_changes_a_plan() {
    let env = Env::embedded();
    let org = env.create_org("Plan Co", "plan-co", "pat@example.com", Some("starter"));
    let (org_id, owner) = org_and_owner(&org);
    for slug in ["one", "two"] {
        env.cli(&[
            "project", "create", "--org", org_id, "--name", "P", "--slug", slug,
        ]);
    }
    let token = env.cli(&["token", "create", "--user", owner, "--ttl", "10m"]);
    let token = token["token"].as_str().unwrap().to_owned();
    let server = spawn_app_in(&env).await;
    let client = reqwest::Client::new();
    let r = client
        .patch(server.url(&format!("/v1/orgs/{org_id}")))
        .bearer_auth(&token)
        .json(&json!({"plan": "free"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "plan_change_forbidden", "{body}");

    let refused = env.cli_raw(&["org", "set-plan", "--org", org_id, "--plan", "free"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("allows 1 projects") && err.contains("has 2"),
        "{err}"
    );
    let bad = env.cli_raw(&["org", "set-plan", "--org", org_id, "--plan", "gold"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--plan must be"));

    let moved = env.cli(&["org", "set-plan", "--org", org_id, "--plan", "pro"]);
    assert_eq!(moved["plan"], "pro", "{moved}");
    let r = client
        .get(server.url(&format!("/v1/orgs/{org_id}/audit?action=org.update")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let audit: Value = r.json().await.unwrap();
    let records = audit["records"].as_array().unwrap();
    let by_cli: Vec<&Value> = records.iter().filter(|r| r["actor"] == "cli").collect();
    assert_eq!(by_cli.len(), 1, "{audit}");
    assert_eq!(by_cli[0]["before"]["plan"], "starter");
    assert_eq!(by_cli[0]["after"]["plan"], "pro");
    assert!(
        records
            .iter()
            .any(|r| r["actor"] == owner && r["outcome"] != "allowed")
    );
    server.stop().await.unwrap();
}

/// The life of an org through the server: an invitation accepted once, a project archived,
/// the key's last use flushed to the store and listed, and the org deleted, after which
/// its routes are 404 and its key is refused by ingest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_last_use_and_deletion_through_the_server() {
    let env = Env::embedded();
    let tenant = make_tenant(&env, "acme-life");
    let owner_of = |slug: &str, email: &str| {
        let org = env.cli(&[
            "org",
            "create",
            "--name",
            "Home",
            "--slug",
            slug,
            "--owner-email",
            email,
        ]);
        org["owner_id"].as_str().unwrap().to_owned()
    };
    let ada = owner_of("ada-home", "ada@example.com");
    let carol = owner_of("carol-home", "carol@example.com");
    let token_of = |user: &str| {
        let t = env.cli(&["token", "create", "--user", user, "--ttl", "10m"]);
        t["token"].as_str().unwrap().to_owned()
    };
    let (ada, carol) = (token_of(&ada), token_of(&carol));
    let server = spawn_app_in(&env).await;
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, bearer: &str, body: Option<Value>| {
        let mut req = client
            .request(method, server.url(&path))
            .bearer_auth(bearer);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use reqwest::Method;
    let org = tenant.org.clone();

    let (status, body) = post(&client, &server, &tenant.key, &events(&tenant, "life", 3))
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");

    let (status, invite) = call(
        Method::POST,
        format!("/v1/orgs/{org}/invitations"),
        &ada,
        Some(json!({"email": "Carol@Example.com", "role": "member"})),
    )
    .await;
    assert_eq!(status, 201, "{invite}");
    let accept = json!({"token": invite["token"]});
    let (status, _) = call(Method::GET, format!("/v1/orgs/{org}"), &carol, None).await;
    assert_eq!(status, 404, "not a member yet");
    let (status, m) = call(
        Method::POST,
        "/v1/invitations/accept".into(),
        &carol,
        Some(accept.clone()),
    )
    .await;
    assert_eq!((status, m["role"].as_str()), (201, Some("member")), "{m}");
    let (status, _) = call(
        Method::POST,
        "/v1/invitations/accept".into(),
        &carol,
        Some(accept),
    )
    .await;
    assert_eq!(status, 409, "accepted once");
    let (status, _) = call(Method::GET, format!("/v1/orgs/{org}"), &carol, None).await;
    assert_eq!(status, 200, "a member now");

    let (status, p) = call(
        Method::POST,
        format!("/v1/orgs/{org}/projects/{}/archive", tenant.projects[1]),
        &ada,
        None,
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert!(p["archived_at"].is_string());

    // The key's last use reaches the store within the flush interval.
    let mut last_used = Value::Null;
    for _ in 0..40 {
        let (_, keys) = call(Method::GET, format!("/v1/orgs/{org}/keys"), &ada, None).await;
        last_used = keys["keys"][0]["last_used_at"].clone();
        if last_used.is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(last_used.is_string(), "last_used_at was never recorded");

    let (status, _) = call(Method::DELETE, format!("/v1/orgs/{org}"), &carol, None).await;
    assert_eq!(status, 403, "members do not delete orgs");
    let (status, deleted) = call(Method::DELETE, format!("/v1/orgs/{org}"), &ada, None).await;
    assert_eq!(status, 200, "{deleted}");
    assert!(deleted["deleted_at"].is_string());
    for who in [&ada, &carol] {
        let (status, _) = call(Method::GET, format!("/v1/orgs/{org}"), who, None).await;
        assert_eq!(status, 404);
    }
    // Ingest trusts a cached key for up to 10 s; after that the revoked key is refused.
    let mut refused = false;
    for i in 0..60 {
        let (status, _) = post(
            &client,
            &server,
            &tenant.key,
            &events(&tenant, &format!("after-{i}"), 1),
        )
        .await
        .unwrap();
        if status == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(refused, "the deleted org's key still works");
    server.stop().await.unwrap();
}
