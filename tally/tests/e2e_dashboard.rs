//! The dashboard in a real browser: Debian's Chromium, driven headless over WebDriver
//! (chromedriver, started here on an ephemeral port) against the whole app in process on
//! the embedded store, with usage posted through ingest. It signs in with a CLI-minted
//! token, checks that a chart's total is the API's, zooms to hours, stacks a meter by its
//! dimension and picks a custom range and last month (each total the API's), sees an org
//! with more projects than one request splits drawn unstacked with the API's reason,
//! creates a key (its
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

/// The text of the element `css` names, once it appears.
async fn wait_text(c: &Client, css: &str) -> String {
    wait_css(c, css).await.text().await.unwrap()
}

/// The text of the element the XPath `xpath` names, which must be on the page now.
async fn xpath_text(c: &Client, xpath: &str) -> String {
    let found = c.find(Locator::XPath(xpath)).await;
    let found = found.unwrap_or_else(|e| panic!("{xpath} is not on the page: {e}"));
    found.text().await.unwrap()
}

/// The names of the cookies the browser holds.
async fn cookie_names(c: &Client) -> Vec<String> {
    let cookies = c.get_all_cookies().await.unwrap();
    cookies.iter().map(|k| k.name().to_owned()).collect()
}

/// Sends `request`, which must reach the server: its response.
async fn sent(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.unwrap()
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

/// GETs of the API with one user's token.
struct Api<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    token: &'a str,
}

impl Api<'_> {
    /// `GET path`, which must answer 200: its JSON.
    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }
}

/// The exact sum of a series of the API (`[{start, value}]`), normalized as the page
/// writes it.
fn series_sum(series: &Value) -> String {
    let sum: Decimal = series
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_str().unwrap().parse::<Decimal>().unwrap())
        .sum();
    sum.normalize().to_string()
}

/// Forgets what the page last loaded, so the next `body[data-loaded]` is a fresh one.
async fn forget_loaded(c: &Client) {
    c.execute("delete document.body.dataset.loaded", vec![])
        .await
        .unwrap();
}

/// Picks `value` in the `<select>` `css`.
async fn pick(c: &Client, css: &str, value: &str) {
    find(c, css).await.select_by_value(value).await.unwrap();
}

/// Shows the usage page for the range picked, and waits until it has loaded with
/// `data-usage-range` matching `loaded` (a CSS attribute test such as
/// `="last-month:2026-10-01/2026-11-01"`).
async fn show_range(c: &Client, loaded: &str) {
    forget_loaded(c).await;
    click(c, "#usage-show").await;
    wait_css(
        c,
        &format!("body[data-loaded=\"usage\"][data-usage-range{loaded}]"),
    )
    .await;
}

/// The range picker and stacking by a dimension: llm_tokens stacked by `model` shows each
/// model's total and the month's as the API's `group_by=model` answer has them; a custom
/// range (the 3rd to the 5th of November) and last month show the API's totals for those
/// spans; the stack choice outlives a range change.
async fn usage_range_and_dimension(c: &Client, api: &Api<'_>, org_id: &str) {
    click(c, "#usage-back").await;
    wait_css(c, "body[data-loaded=\"usage\"]").await;
    assert!(
        c.find(Locator::Css("#meter-compute_minutes-stack"))
            .await
            .is_err(),
        "a meter without dimensions is stacked by project alone"
    );
    forget_loaded(c).await;
    pick(c, "#meter-llm_tokens-stack", "model").await;
    wait_css(
        c,
        "body[data-loaded=\"usage\"] #meter-llm_tokens[data-stack=\"model\"]",
    )
    .await;
    // The picker keeps the keyboard focus after its chart is drawn again.
    let focused = c
        .execute("return document.activeElement.id", vec![])
        .await
        .unwrap();
    assert_eq!(focused, "meter-llm_tokens-stack");
    let grouped = api
        .get(&format!(
            "/v1/usage?org_id={org_id}&meter=llm_tokens&granularity=day&group_by=model"
        ))
        .await;
    let groups = grouped["groups"].as_array().unwrap();
    let labels: Vec<String> = groups
        .iter()
        .map(|g| format!("model={}", g["value"].as_str().unwrap()))
        .collect();
    assert_eq!(labels, ["model=claude", "model=gpt-4"]);
    let layers = find(c, "#meter-llm_tokens")
        .await
        .attr("data-layers")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(layers, serde_json::to_string(&labels).unwrap());
    // claude 300 + 0.25 = 300.25; gpt-4 1200.5 + 99.5 = 1300.
    for (group, want) in groups.iter().zip(["300.25", "1300"]) {
        let label = format!("model={}", group["value"].as_str().unwrap());
        let shown = text_of(c, &format!("#meter-llm_tokens dd[data-layer=\"{label}\"]")).await;
        assert_eq!(shown, series_sum(&group["series"]), "{label}");
        assert_eq!(shown, want, "{label}");
    }
    let total = text_of(c, "#meter-llm_tokens-total").await;
    assert_eq!(total, series_sum(&grouped["series"]));
    assert_eq!(total, "1600.25");
    // The table follows the stacking: the 4th's row is claude 300, gpt-4 1200.5, total 1500.5.
    let row = text_of(c, "#meter-llm_tokens details tbody tr:nth-child(4)").await;
    let cells: Vec<&str> = row.split_whitespace().take(4).collect();
    assert_eq!(cells, ["2026-11-04", "300", "1200.5", "1500.5"], "{row}");
    shot(c, "usage-by-dimension").await;

    // A custom range, the 3rd to the 5th inclusive (from=2026-11-03, to=2026-11-06): compute
    // minutes 40.25 + 35.5 = 75.75 (the 10th's 24.25 is outside), tokens 1600.
    pick(c, "#usage-range", "custom").await;
    wait_css(c, "#usage-custom:not([hidden]) #usage-from").await;
    c.execute(
        "document.getElementById('usage-from').value = '2026-11-03'; \
         document.getElementById('usage-to').value = '2026-11-05';",
        vec![],
    )
    .await
    .unwrap();
    show_range(c, "=\"custom:2026-11-03/2026-11-06\"").await;
    for (meter, want) in [("compute_minutes", "75.75"), ("llm_tokens", "1600")] {
        let answer = api
            .get(&format!(
                "/v1/usage?org_id={org_id}&meter={meter}&granularity=day&from=2026-11-03&to=2026-11-06"
            ))
            .await;
        let shown = text_of(c, &format!("#meter-{meter}-total")).await;
        assert_eq!(shown, series_sum(&answer["series"]), "{meter}");
        assert_eq!(shown, want, "{meter}");
        let rows = c
            .find_all(Locator::Css(&format!("#meter-{meter} details tbody tr")))
            .await
            .unwrap();
        assert_eq!(rows.len(), 3, "{meter}: one row per day of the range");
    }
    find(c, "#meter-llm_tokens[data-stack=\"model\"]").await;
    let gpt = text_of(c, "#meter-llm_tokens dd[data-layer=\"model=gpt-4\"]").await;
    assert_eq!(gpt, "1300", "1200.5 + 99.5 within the range");
    shot(c, "usage-range").await;

    // Last month, October: the page asks for 2026-10-01..2026-11-01 (the server's month
    // before, not the browser's), and shows the API's total for it.
    pick(c, "#usage-range", "last-month").await;
    show_range(c, "=\"last-month:2026-10-01/2026-11-01\"").await;
    let october = api
        .get(&format!(
            "/v1/usage?org_id={org_id}&meter=compute_minutes&granularity=day&from=2026-10-01&to=2026-11-01"
        ))
        .await;
    assert_eq!(
        text_of(c, "#meter-compute_minutes-total").await,
        series_sum(&october["series"])
    );
    // Back to this month, by project, for the rest of the test.
    pick(c, "#usage-range", "this-month").await;
    show_range(c, "^=\"this-month\"").await;
    forget_loaded(c).await;
    pick(c, "#meter-llm_tokens-stack", "project").await;
    wait_css(
        c,
        "body[data-loaded=\"usage\"] #meter-llm_tokens[data-stack=\"project\"]",
    )
    .await;
}

/// An org with more projects than one `per_project` request splits (101, on the enterprise
/// plan, owned by the same user): the API refuses the split with `too_many_projects`, and
/// the page draws the org's series unstacked with the API's reason shown beside it.
async fn too_many_projects_falls_back(c: &Client, env: &Env, api: &Api<'_>, org_id: &str) {
    let at_now = [("TALLY_NOW", NOW)];
    let big = env.create_org_at(
        "Big",
        "acme-big",
        "ada@example.com",
        Some("enterprise"),
        NOW,
    );
    let big_id = big["id"].as_str().unwrap().to_owned();
    for i in 0..=tally_api::usage::MAX_PER_PROJECT {
        let (name, slug) = (format!("P{i}"), format!("p{i}"));
        env.cli_env(
            &[
                "project", "create", "--org", &big_id, "--name", &name, "--slug", &slug,
            ],
            &at_now,
        );
    }
    let refused = sent(
        api.http
            .get(format!(
                "{}/v1/usage?org_id={big_id}&meter=api_calls&per_project=true",
                api.base
            ))
            .bearer_auth(api.token),
    )
    .await;
    assert_eq!(refused.status(), 400);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "too_many_projects");

    // The page learns of the new org when it loads again; it keeps the org it showed.
    c.refresh().await.unwrap();
    wait_css(c, "body[data-loaded=\"usage\"]").await;
    assert_eq!(
        find(c, "#org")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some(org_id)
    );
    forget_loaded(c).await;
    pick(c, "#org", &big_id).await;
    wait_css(c, "body[data-loaded=\"usage\"]").await;
    let figure = find(c, "#meter-api_calls").await;
    assert_eq!(
        figure.attr("data-stack").await.unwrap().as_deref(),
        Some("none")
    );
    let notice = text_of(c, "#meter-api_calls-notice").await;
    assert!(
        notice.contains(refused["error"]["message"].as_str().unwrap()),
        "{notice}"
    );
    let summary = api.get(&format!("/v1/orgs/{big_id}/usage/summary")).await;
    let calls = entry(&summary, "meters", "meter", "api_calls");
    assert_eq!(
        text_of(c, "#meter-api_calls-total").await,
        calls["value"].as_str().unwrap()
    );
    shot(c, "usage-too-many-projects").await;
    forget_loaded(c).await;
    pick(c, "#org", org_id).await;
    wait_css(c, "body[data-loaded=\"usage\"]").await;
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
    let org = env.create_org_at("Acme", "acme-dash", "ada@example.com", Some("free"), NOW);
    let (org_id, owner) = (
        org["id"].as_str().unwrap().to_owned(),
        org["owner_id"].as_str().unwrap().to_owned(),
    );
    let home = env.create_org_at("Home", "vic-home", "vic@example.com", None, NOW);
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

    // A catalogue version from this month with one more meter, llm_tokens, split by its
    // `model` dimension (read from properties.model), so the usage page can stack by it.
    let mut catalogue: Value = serde_json::from_str(tally_core::catalogue::BUILTIN_JSON).unwrap();
    catalogue["meters"]["llm_tokens"] = json!({"description": "Model tokens", "unit": "tokens",
        "aggregation": "sum", "value": "properties.tokens", "price_unit": "1,000 tokens",
        "price_unit_size": 1000, "dimensions": [{"name": "model", "property": "properties.model"}],
        "list_price": {"model": "per_unit", "unit_price": "0.02"}});
    for (name, plan) in catalogue["plans"].as_object_mut().unwrap() {
        plan["meters"]["llm_tokens"] = if name == "free" {
            json!({"included": 10000, "price": {"model": "per_unit", "unit_price": "0"}})
        } else {
            json!({"included": 100000})
        };
    }
    let body = catalogue.to_string();
    let applied = env.apply_catalogue("catalogue-llm.json", &body, "2026-11", &at_now);
    assert_eq!(applied["effective_from"], "2026-11");

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
    let invite = sent(
        http.post(format!("{base}/v1/orgs/{org_id}/invitations"))
            .bearer_auth(&owner_token)
            .json(&json!({"email": "vic@example.com", "role": "viewer"})),
    )
    .await;
    assert_eq!(invite.status(), 201);
    let invite: Value = invite.json().await.unwrap();
    let accepted = sent(
        http.post(format!("{base}/v1/invitations/accept"))
            .bearer_auth(&viewer_token)
            .json(&json!({"token": invite["token"]})),
    )
    .await;
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
    // Model tokens by model: gpt-4 1200.5 + 99.5 = 1300, claude 300 + 0.25 = 300.25; the
    // month 1600.25; the 3rd to the 5th (the custom range below) 1200.5 + 300 + 99.5 = 1600.
    let tokens = [
        ("t1", "2026-11-04T10:00:00Z", "gpt-4", "1200.5"),
        ("t2", "2026-11-04T11:00:00Z", "claude", "300"),
        ("t3", "2026-11-05T09:00:00Z", "gpt-4", "99.5"),
        ("t4", "2026-11-12T09:00:00Z", "claude", "0.25"),
    ];
    for (id, at, model, n) in tokens {
        evs.push(
            json!({"id": id, "project_id": project, "meter": "llm_tokens", "timestamp": at,
            "properties": {"model": model, "tokens": n}}),
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
            && value("llm_tokens").as_deref() == Some("1600.25")
        {
            break s;
        }
        assert!(Instant::now() < deadline, "usage never counted: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let meter = |m: &str| entry(&summary, "meters", "meter", m).clone();
    assert_eq!(meter("compute_minutes")["percent_used"], "100.00");

    let driver = start_driver(&binary).await;
    let c = browser(&driver).await;

    // Sign in; the usage page's total for compute minutes is the API's, and the sum of the
    // API's daily series.
    sign_in(&c, &base, &owner_token).await;
    wait_css(&c, "body[data-loaded=\"usage\"]").await;
    let shown = wait_text(&c, "#meter-compute_minutes-total").await;
    let series = api(
        format!("/v1/usage?org_id={org_id}&meter=compute_minutes&granularity=day"),
        &owner_token,
    )
    .await;
    assert_eq!(shown, meter("compute_minutes")["value"].as_str().unwrap());
    assert_eq!(shown, series_sum(&series["series"]));
    let calls_shown = text_of(&c, "#meter-api_calls-total").await;
    assert_eq!(calls_shown, "5");
    // Each chart has its table: the 3rd of November's row holds the API's day value.
    let day_row = xpath_text(
        &c,
        "//figure[@id='meter-compute_minutes']//details//tbody/tr[th='2026-11-03']",
    )
    .await;
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
        let text = xpath_text(
            &c,
            &format!("//figure[@id='meter-api_calls']//details//tbody/tr[th='{hour}']/td[last()]"),
        )
        .await;
        assert_eq!(&text, value, "{hour}");
    }
    let rows = c
        .find_all(Locator::Css("#meter-api_calls details tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 24, "one row per hour of the day");
    assert_eq!(text_of(&c, "#meter-api_calls-total").await, "5");
    shot(&c, "usage-hours").await;

    let owner_api = Api {
        http: &http,
        base: &base,
        token: &owner_token,
    };
    usage_range_and_dimension(&c, &owner_api, &org_id).await;
    too_many_projects_falls_back(&c, &env, &owner_api, &org_id).await;

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
    let secret = wait_text(&c, "#key-secret:not([hidden]) #key-secret-value").await;
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
    let after = compute_minutes("after", &project, "1", "2026-11-20T10:00:00Z");
    let events = http.post(format!("{base}/v1/events"));
    let refused = sent(
        events
            .bearer_auth(&secret)
            .json(&json!({"events": [after]})),
    )
    .await;
    assert_eq!(refused.status(), 401, "the revoked key is refused");
    shot(&c, "manage-key-revoked").await;

    // The security policy and the sessions, as the API has them: the owner's dashboard
    // sign-in is a session of their own, marked as this one, and listed for the org.
    let sessions = api("/v1/sessions".into(), &owner_token).await;
    let owner_sid = sessions["sessions"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 1);
    let mine = wait_text(
        &c,
        &format!("#my-sessions tr[data-session=\"{owner_sid}\"]"),
    )
    .await;
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
    let direct = sent(
        http.get(format!("{base}/v1/orgs/{org_id}/usage/summary"))
            .bearer_auth(&viewer_token),
    )
    .await;
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
    let revoked = sent(
        http.delete(format!("{base}/v1/orgs/{org_id}/sessions/{sid}"))
            .bearer_auth(&owner_token),
    )
    .await;
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
    env.create_org_at("Oidc Org", "oidc-org", "ida@example.com", None, NOW);
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
    let names: Vec<String> = cookie_names(&c).await;
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
    let names: Vec<String> = cookie_names(&c).await;
    assert!(
        !names.iter().any(|n| n == "__Host-tally_session"),
        "{names:?}"
    );

    c.close().await.unwrap();
    drop(driver);
    server.stop().await.unwrap();
}
