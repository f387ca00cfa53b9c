//! The dashboard in a real browser: Debian's Chromium, driven headless over WebDriver
//! (chromedriver, started here on an ephemeral port) against the whole app in process on
//! the embedded store, with usage posted through ingest. It signs in with a CLI-minted
//! token, checks that a chart's total is the API's, zooms to hours, creates a key (its
//! secret shown once) and revokes it, sees the security policy and its own session on the
//! Manage page, sees a viewer refused a mutation by the API, sees a hard-limited meter's
//! gauge at 100 %, is refused from outside the org's IP allowlist with the API's message,
//! and loses access once the owner revokes its session. Screenshots go to docs/screenshots/ (the README's
//! "Dashboard" section shows them).
//!
//! It needs `chromium` and `chromium-driver`: with `TALLY_TEST_BROWSER=1` (set by
//! scripts/test.sh, which installs them when missing) their absence fails the test;
//! without it the test says why it skips and passes, as the AWS tests do without their
//! endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../dashboard/tests/support/issuer.rs"]
mod issuer;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// The app's clock: the usage below is in November 2026, up to this instant.
const NOW: &str = "2026-11-20T12:00:00Z";

/// chromedriver, stopped (by its PID) when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Option<PathBuf> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Starts chromedriver on a free loopback port and waits until it answers `/status`.
async fn start_driver(binary: &PathBuf) -> Driver {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{}/status", driver.url)).send().await
            && r.status().is_success()
        {
            return driver;
        }
        assert!(Instant::now() < deadline, "chromedriver never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000", "--disable-dev-shm-usage"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn wait_css(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
}

/// The element `css` names, which must be on the page now.
async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} is not on the page: {e}"))
}

async fn click(c: &Client, css: &str) {
    find(c, css).await.click().await.unwrap();
}

async fn type_into(c: &Client, css: &str, text: &str) {
    find(c, css).await.send_keys(text).await.unwrap();
}

async fn text_of(c: &Client, css: &str) -> String {
    find(c, css).await.text().await.unwrap()
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/dashboard")).await.unwrap();
    let field = wait_css(c, "#sign-in-view:not([hidden]) #token").await;
    field.send_keys(token).await.unwrap();
    click(c, "#sign-in-form button[type=submit]").await;
    wait_css(c, "body[data-loaded]").await;
}

async fn tab(c: &Client, page: &str) {
    click(c, &format!("#tab-{page}")).await;
    wait_css(c, &format!("body[data-loaded=\"{page}\"]")).await;
}

/// chromedriver, when the browser tests are to run: `None` (the test says why and passes)
/// without `TALLY_TEST_BROWSER=1`; a failure when it is set and chromedriver is missing.
fn driver_or_skip() -> Option<PathBuf> {
    let Some(binary) = chromedriver() else {
        assert!(
            std::env::var("TALLY_TEST_BROWSER").as_deref() != Ok("1"),
            "TALLY_TEST_BROWSER=1 but chromedriver is not installed \
             (apt-get install -y --no-install-recommends chromium chromium-driver)"
        );
        println!("skipping: chromedriver is not installed (scripts/test.sh installs it)");
        return None;
    };
    if std::env::var("TALLY_TEST_BROWSER").as_deref() != Ok("1") {
        println!("skipping: set TALLY_TEST_BROWSER=1 to drive Chromium (scripts/test.sh does)");
        return None;
    }
    Some(binary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium() {
    let Some(binary) = driver_or_skip() else {
        return;
    };
    let started = Instant::now();

    // An org on the free plan (hard limits) with one project, its owner and a viewer.
    let env = Env::embedded();
    let at_now = [("TALLY_NOW", NOW)];
    let org = env.cli_env(
        &[
            "org",
            "create",
            "--name",
            "Acme",
            "--slug",
            "acme-dash",
            "--owner-email",
            "ada@example.com",
            "--plan",
            "free",
        ],
        &at_now,
    );
    let (org_id, owner) = (
        org["id"].as_str().unwrap().to_owned(),
        org["owner_id"].as_str().unwrap().to_owned(),
    );
    let home = env.cli_env(
        &[
            "org",
            "create",
            "--name",
            "Home",
            "--slug",
            "vic-home",
            "--owner-email",
            "vic@example.com",
        ],
        &at_now,
    );
    let viewer = home["owner_id"].as_str().unwrap().to_owned();
    let project = env.cli_env(
        &[
            "project", "create", "--org", &org_id, "--name", "Web", "--slug", "web",
        ],
        &at_now,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = env.cli_env(
        &["key", "create", "--org", &org_id, "--name", "ingest"],
        &at_now,
    )["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // What `tally token create` mints (the data directory's secret, the same code), at the
    // app's pinned time rather than the system clock's, which the CLI uses for tokens.
    let jwt = tally::settings::jwt_config(&env.common()).unwrap();
    let token_of = |user: &str| {
        jwt.mint(
            &tally_core::ids::UserId::parse(user).unwrap(),
            NOW.parse().unwrap(),
            chrono::Duration::minutes(30),
        )
        .unwrap()
    };
    let (owner_token, viewer_token) = (token_of(&owner), token_of(&viewer));

    // One trusted proxy: the owner's policy changes below come "through" it from an
    // allowed address; the browser, which sends no X-Forwarded-For, is seen as its peer.
    let server = spawn_app_with(&env, |app| {
        app.clock = clock_at(NOW);
        app.edge.trusted_proxies = 1;
    })
    .await;
    let base = server.base_url.clone();
    let http = reqwest::Client::new();
    let api = |path: String, token: &str| {
        let req = http.get(format!("{base}{path}")).bearer_auth(token);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.json::<Value>().await.unwrap()
        }
    };

    // The viewer joins by invitation.
    let invite = http
        .post(format!("{base}/v1/orgs/{org_id}/invitations"))
        .bearer_auth(&owner_token)
        .json(&json!({"email": "vic@example.com", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invite.status(), 201);
    let invite: Value = invite.json().await.unwrap();
    let accepted = http
        .post(format!("{base}/v1/invitations/accept"))
        .bearer_auth(&viewer_token)
        .json(&json!({"token": invite["token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 201);

    // Usage: compute minutes to exactly the free plan's 100 (a hard limit), over three
    // days, and api calls over two hours of one day.
    let minutes = [
        ("m1", "2026-11-03T09:15:00Z", "40.25"),
        ("m2", "2026-11-03T14:40:00Z", "35.5"),
        ("m3", "2026-11-10T08:00:00Z", "24.25"),
    ];
    let mut evs: Vec<Value> = minutes
        .iter()
        .map(|(id, at, q)| compute_minutes(id, &project, q, at))
        .collect();
    for i in 0..5 {
        let hour = if i < 3 { 9 } else { 16 };
        evs.push(
            json!({"id": format!("c{i}"), "project_id": project, "meter": "api_calls",
            "timestamp": format!("2026-11-03T{hour:02}:0{i}:00Z")}),
        );
    }
    post_accepted(&http, &server, &key, evs).await;
    let summary_path = format!("/v1/orgs/{org_id}/usage/summary");
    let deadline = Instant::now() + Duration::from_secs(30);
    let summary = loop {
        let s = api(summary_path.clone(), &owner_token).await;
        let value = |m: &str| {
            s["meters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["meter"] == m)
                .map(|x| x["value"].as_str().unwrap().to_owned())
        };
        if value("compute_minutes").as_deref() == Some("100")
            && value("api_calls").as_deref() == Some("5")
        {
            break s;
        }
        assert!(Instant::now() < deadline, "usage never counted: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let meter = |m: &str| {
        summary["meters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["meter"] == m)
            .unwrap()
            .clone()
    };
    assert_eq!(meter("compute_minutes")["percent_used"], "100.00");

    let driver = start_driver(&binary).await;
    let c = browser(&driver).await;

    // Sign in; the usage page's total for compute minutes is the API's, and the sum of the
    // API's daily series.
    sign_in(&c, &base, &owner_token).await;
    wait_css(&c, "body[data-loaded=\"usage\"]").await;
    let shown = wait_css(&c, "#meter-compute_minutes-total")
        .await
        .text()
        .await
        .unwrap();
    let series = api(
        format!("/v1/usage?org_id={org_id}&meter=compute_minutes&granularity=day"),
        &owner_token,
    )
    .await;
    let summed: Decimal = series["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_str().unwrap().parse::<Decimal>().unwrap())
        .sum();
    assert_eq!(shown, meter("compute_minutes")["value"].as_str().unwrap());
    assert_eq!(shown, summed.normalize().to_string());
    let calls_shown = text_of(&c, "#meter-api_calls-total").await;
    assert_eq!(calls_shown, "5");
    // Each chart has its table: the 3rd of November's row holds the API's day value.
    let day_row = c
        .find(Locator::XPath(
            "//figure[@id='meter-compute_minutes']//details//tbody/tr[th='2026-11-03']",
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(day_row.contains("75.75"), "{day_row}");
    assert!(
        c.find(Locator::Css("#meter-compute_minutes-chart canvas"))
            .await
            .is_ok(),
        "uPlot drew the chart"
    );
    shot(&c, "usage").await;

    // Zoom to the hours of the 3rd: the hour rows are the API's hourly series.
    click(
        &c,
        "#meter-compute_minutes button.zoom[data-day=\"2026-11-03T00:00:00Z\"]",
    )
    .await;
    wait_css(&c, "body[data-loaded=\"usage:2026-11-03T00:00:00Z\"]").await;
    let hours = api(
        format!(
            "/v1/usage?org_id={org_id}&meter=api_calls&granularity=hour&from=2026-11-03&to=2026-11-04"
        ),
        &owner_token,
    )
    .await;
    let api_hours: Vec<(String, String)> = hours["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_str().unwrap()[11..16].to_owned(),
                p["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        api_hours,
        [("09:00".into(), "3".into()), ("16:00".into(), "2".into())]
    );
    for (hour, value) in &api_hours {
        let text = c
            .find(Locator::XPath(&format!(
                "//figure[@id='meter-api_calls']//details//tbody/tr[th='{hour}']/td[last()]"
            )))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(&text, value, "{hour}");
    }
    let rows = c
        .find_all(Locator::Css("#meter-api_calls details tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 24, "one row per hour of the day");
    assert_eq!(text_of(&c, "#meter-api_calls-total").await, "5");
    shot(&c, "usage-hours").await;

    // Limits: compute minutes' gauge is full, of a hard limit.
    tab(&c, "limits").await;
    let gauge = find(&c, ".gauge[data-meter=\"compute_minutes\"]").await;
    assert_eq!(
        gauge.attr("data-percent").await.unwrap().as_deref(),
        Some("100.00")
    );
    assert_eq!(
        gauge.attr("data-kind").await.unwrap().as_deref(),
        Some("hard")
    );
    assert_eq!(
        gauge.attr("aria-valuenow").await.unwrap().as_deref(),
        Some("100")
    );
    assert!(gauge.attr("class").await.unwrap().unwrap().contains("full"));
    let (_, _, gauge_width, _) = gauge.rectangle().await.unwrap();
    let (_, _, fill_width, _) = find(&c, ".gauge[data-meter=\"compute_minutes\"] .fill")
        .await
        .rectangle()
        .await
        .unwrap();
    assert!(
        (fill_width - gauge_width).abs() < 1.0,
        "the fill spans the gauge: {fill_width} of {gauge_width}"
    );
    shot(&c, "limits").await;

    // Billing: the upcoming invoice as the API prices it.
    tab(&c, "billing").await;
    let upcoming = api(format!("/v1/orgs/{org_id}/invoices/upcoming"), &owner_token).await;
    let total = text_of(&c, "#upcoming-total").await;
    assert_eq!(
        total,
        format!(
            "{} {}",
            upcoming["total"].as_str().unwrap(),
            upcoming["currency"].as_str().unwrap().to_uppercase()
        )
    );
    shot(&c, "billing").await;

    // Manage: a key is created, its secret shown once, then revoked.
    tab(&c, "manage").await;
    type_into(&c, "#key-name", "browser-key").await;
    click(&c, "#key-create").await;
    let secret = wait_css(&c, "#key-secret:not([hidden]) #key-secret-value")
        .await
        .text()
        .await
        .unwrap();
    assert!(secret.starts_with("tk_live_"), "{secret}");
    let keys = api(format!("/v1/orgs/{org_id}/keys"), &owner_token).await;
    let created = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "browser-key")
        .expect("the key the page created")
        .clone();
    let key_id = created["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(created["display_prefix"].as_str().unwrap()));
    shot(&c, "manage-key-created").await;
    click(&c, "#key-secret-done").await;
    wait_css(&c, "#key-secret[hidden]").await;
    assert!(
        !c.source().await.unwrap().contains(&secret),
        "the secret is shown once"
    );
    click(
        &c,
        &format!("button[data-action=\"revoke\"][data-key=\"{key_id}\"]"),
    )
    .await;
    wait_css(
        &c,
        &format!("#keys tr[data-key=\"{key_id}\"][data-state=\"revoked\"]"),
    )
    .await;
    let refused = http
        .post(format!("{base}/v1/events"))
        .bearer_auth(&secret)
        .json(&json!({"events": [compute_minutes("after", &project, "1", "2026-11-20T10:00:00Z")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "the revoked key is refused");
    shot(&c, "manage-key-revoked").await;

    // The security policy and the sessions, as the API has them: the owner's dashboard
    // sign-in is a session of their own, marked as this one, and listed for the org.
    let sessions = api("/v1/sessions".into(), &owner_token).await;
    let owner_sid = sessions["sessions"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 1);
    let mine = wait_css(
        &c,
        &format!("#my-sessions tr[data-session=\"{owner_sid}\"]"),
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(mine.contains("(this session)"), "{mine}");
    find(
        &c,
        &format!("#org-sessions tr[data-session=\"{owner_sid}\"]"),
    )
    .await;
    assert_eq!(
        find(&c, "#policy-lifetime")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("43200")
    );
    c.execute(
        "document.getElementById('policy-form').scrollIntoView()",
        vec![],
    )
    .await
    .unwrap();
    shot(&c, "manage-security").await;

    // Sign out (which ends the session); the viewer signs in and is refused a key by the
    // API, shown on the page.
    click(&c, "#sign-out").await;
    wait_css(&c, "#sign-in-view:not([hidden])").await;
    let ended = http
        .get(format!("{base}/v1/sessions"))
        .bearer_auth(&owner_token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        ended["sessions"].as_array().unwrap().len(),
        0,
        "sign-out revoked it"
    );
    sign_in(&c, &base, &viewer_token).await;
    tab(&c, "manage").await;
    type_into(&c, "#key-name", "viewer-key").await;
    click(&c, "#key-create").await;
    let alert = wait_css(&c, "#alert:not([hidden])").await;
    let message = alert.text().await.unwrap();
    assert!(
        message.contains("viewer role may not") && message.contains("403"),
        "{message}"
    );
    let keys = api(format!("/v1/orgs/{org_id}/keys"), &owner_token).await;
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["name"] != "viewer-key"),
        "nothing was created"
    );
    shot(&c, "viewer-refused").await;

    // A phone-width screen.
    c.set_window_size(375, 900).await.unwrap();
    tab(&c, "usage").await;
    shot(&c, "usage-phone").await;
    c.set_window_size(1280, 1000).await.unwrap();

    // The owner allows only 192.0.2.0/24, through the API from an address inside it (a
    // trusted proxy's X-Forwarded-For); the browser talks to the server directly from
    // 127.0.0.1, outside it, and its next request is refused with the API's message.
    let put_policy = |allowlist: Value| {
        http.put(format!("{base}/v1/orgs/{org_id}/security-policy"))
            .bearer_auth(&owner_token)
            .header("x-forwarded-for", "192.0.2.10")
            .json(&json!({"require_mfa": false, "ip_allowlist": allowlist, "session_lifetime_seconds": 43200}))
            .send()
    };
    assert_eq!(
        put_policy(json!(["192.0.2.0/24"])).await.unwrap().status(),
        200
    );
    let direct = http
        .get(format!("{base}/v1/orgs/{org_id}/usage/summary"))
        .bearer_auth(&viewer_token)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 403);
    let direct: Value = direct.json().await.unwrap();
    assert_eq!(direct["error"]["code"], "ip_not_allowed");
    click(&c, "#tab-limits").await;
    let alert = wait_css(&c, "#alert[data-code=\"ip_not_allowed\"]:not([hidden])").await;
    let message = alert.text().await.unwrap();
    assert!(
        message.contains(direct["error"]["message"].as_str().unwrap()) && message.contains("403"),
        "{message}"
    );
    shot(&c, "allowlist-refused").await;
    assert_eq!(put_policy(json!([])).await.unwrap().status(), 200);
    tab(&c, "limits").await;

    // The owner revokes the viewer's dashboard session through the API: the page loses
    // access on its next request and asks to sign in again.
    let listed = api(format!("/v1/orgs/{org_id}/sessions"), &owner_token).await;
    let viewer_sessions: Vec<&Value> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["user_id"] == viewer.as_str())
        .collect();
    assert_eq!(viewer_sessions.len(), 1, "{listed}");
    let sid = viewer_sessions[0]["id"].as_str().unwrap();
    let revoked = http
        .delete(format!("{base}/v1/orgs/{org_id}/sessions/{sid}"))
        .bearer_auth(&owner_token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    click(&c, "#tab-billing").await;
    wait_css(&c, "#sign-in-view:not([hidden])").await;
    let alert = text_of(&c, "#alert").await;
    assert!(alert.contains("session has ended"), "{alert}");
    shot(&c, "session-revoked").await;

    c.close().await.unwrap();
    drop(driver);
    server.stop().await.unwrap();
    println!("browser test took {:?}", started.elapsed());
}

/// "Sign in with …" in Chromium: the app configured with an RS256 issuer double
/// (`dashboard/tests/support/issuer.rs`, whose authorization endpoint signs the user in at
/// once) as its OIDC issuer and client. Clicking the button goes to the issuer and back
/// through `/dashboard/callback`, and lands signed in on the org picker, with the
/// `__Host-` session and CSRF cookies Chromium kept over http://127.0.0.1. Then, signed out,
/// a planted ID token with another nonce is refused with the callback's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_with_the_oidc_issuer_in_chromium() {
    let Some(binary) = driver_or_skip() else {
        return;
    };
    let env = Env::embedded();
    let at_now = [("TALLY_NOW", NOW)];
    env.cli_env(
        &[
            "org",
            "create",
            "--name",
            "Oidc Org",
            "--slug",
            "oidc-org",
            "--owner-email",
            "ida@example.com",
        ],
        &at_now,
    );
    let now: chrono::DateTime<chrono::Utc> = NOW.parse().unwrap();
    let issuer =
        issuer::Issuer::start("tally-e2e-client", "ida@example.com", now.timestamp()).await;
    let oidc = tally_oidc::OidcVerifier::new(tally_oidc::OidcSettings {
        issuer: issuer.url.clone(),
        audience: "tally-e2e-client".into(),
        jwks_url: None,
    })
    .unwrap()
    .with_client(tally_oidc::flow::ClientSettings {
        client_id: "tally-e2e-client".into(),
        client_secret: None,
        redirect_url: None,
    })
    .unwrap();
    let server = spawn_app_with(&env, |app| {
        app.clock = clock_at(NOW);
        app.oidc = Some(oidc);
    })
    .await;
    let base = server.base_url.clone();
    let driver = start_driver(&binary).await;
    let c = browser(&driver).await;

    c.goto(&format!("{base}/dashboard")).await.unwrap();
    let button = wait_css(&c, "#sign-in-view:not([hidden]) #sign-in-oidc").await;
    let label = button.text().await.unwrap();
    let issuer_host = issuer.url.trim_start_matches("http://");
    assert_eq!(label, format!("Sign in with {issuer_host}"));
    button.click().await.unwrap();
    wait_css(&c, "body[data-loaded]").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/dashboard");
    let picked = text_of(&c, "#org option:checked").await;
    assert!(picked.contains("Oidc Org (owner)"), "{picked}");
    assert_eq!(issuer.exchanged(), 1);
    // Chromium kept the __Host- cookies over http://127.0.0.1 (a secure context); the page
    // can read the CSRF one (the session one is HTTP-only).
    let names: Vec<String> = c
        .get_all_cookies()
        .await
        .unwrap()
        .iter()
        .map(|k| k.name().to_owned())
        .collect();
    for name in ["__Host-tally_session", "__Host-tally_csrf"] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} not kept: {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n == "__Host-tally_oidc_flow"),
        "the flow cookie is cleared: {names:?}"
    );

    // Signed out, a token carrying another sign-in's nonce is refused with the callback's
    // error, and no session cookie is set.
    click(&c, "#sign-out").await;
    wait_css(&c, "#sign-in-view:not([hidden])").await;
    issuer.plant(issuer::Faults {
        nonce: Some("another-sign-in".into()),
        ..issuer::Faults::default()
    });
    click(&c, "#sign-in-oidc").await;
    c.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::XPath(
            "//*[contains(text(), 'oidc_nonce_mismatch')]",
        ))
        .await
        .expect("the callback's refusal");
    assert_eq!(c.current_url().await.unwrap().path(), "/dashboard/callback");
    let body = text_of(&c, "body").await;
    assert!(body.contains("oidc_nonce_mismatch"), "{body}");
    let names: Vec<String> = c
        .get_all_cookies()
        .await
        .unwrap()
        .iter()
        .map(|k| k.name().to_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n == "__Host-tally_session"),
        "{names:?}"
    );

    c.close().await.unwrap();
    drop(driver);
    server.stop().await.unwrap();
}
