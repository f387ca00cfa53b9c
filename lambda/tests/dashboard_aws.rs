//! The API Lambda serves the dashboard: `template.yaml` routes every dashboard route
//! (`tally_dashboard::ROUTES`) of the management API's HTTP API to the API function, and
//! that function's router (`api_router`, with its JWT secret read from Secrets Manager on
//! the emulator) answers `/dashboard` with the page and accepts a session cookie signed in
//! through it. The route check is a function returning the problems found, so a template
//! that stops routing the dashboard is shown to be caught.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_secretsmanager::Client as SecretsClient;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{TimeDelta, TimeZone, Utc};
use common::template::{assert_no_problems, get, resources, str_of, template};
use serde_json::json;
use serde_norway::Value;
use tally_core::plan::PlanId;
use tally_core::ports::FixedClock;
use tally_lambda::handlers::http::{api_router, route_current};
use tally_lambda::secrets::Secret;
use tally_tests::aws;
use tally_tests::conformance::fixtures::create_owned_org;

/// Whether an API Gateway route `(method, path)` takes a request `(method, path)` of the
/// router (axum syntax: `{param}` one segment, `{*rest}` the rest).
fn gateway_takes(route: (&str, &str), request: (&str, &str)) -> bool {
    let method_ok = route.0 == "ANY" || route.0.eq_ignore_ascii_case(request.0);
    let segments =
        |p: &str| -> Vec<String> { p.trim_matches('/').split('/').map(str::to_owned).collect() };
    let (gw, rq) = (segments(route.1), segments(request.1));
    let path_ok = match gw.last() {
        // A greedy `{proxy+}` takes one segment or more after the literal prefix.
        Some(last) if last.ends_with("+}") => {
            rq.len() >= gw.len() && gw[..gw.len() - 1].iter().zip(&rq).all(|(g, r)| g == r)
        }
        _ => {
            gw.len() == rq.len()
                && gw.iter().zip(&rq).all(|(g, r)| {
                    g == r || (g.starts_with('{') && r.starts_with('{') && !r.starts_with("{*"))
                })
        }
    };
    method_ok && path_ok
}

/// The dashboard routes the API function's HttpApi events do not take.
fn dashboard_route_problems(t: &Value) -> Vec<String> {
    let Some((id, function)) = resources(t, "AWS::Serverless::Function")
        .into_iter()
        .find(|(_, f)| str_of(get(f, &["Metadata", "Binary"])) == Some("tally-api-lambda"))
    else {
        return vec!["no function builds tally-api-lambda".into()];
    };
    let events = get(function, &["Properties", "Events"]);
    let routes: Vec<(String, String)> = match events.as_mapping() {
        Some(m) => m
            .values()
            .filter(|e| str_of(get(e, &["Type"])) == Some("HttpApi"))
            .filter_map(|e| {
                Some((
                    str_of(get(e, &["Properties", "Method"]))?.to_ascii_uppercase(),
                    str_of(get(e, &["Properties", "Path"]))?.to_owned(),
                ))
            })
            .collect(),
        None => Vec::new(),
    };
    tally_dashboard::ROUTES
        .iter()
        .filter(|(method, path)| {
            !routes
                .iter()
                .any(|(m, p)| gateway_takes((m, p), (method, path)))
        })
        .map(|(method, path)| format!("{id} has no HttpApi route for {method} {path}"))
        .collect()
}

#[test]
fn the_api_function_is_routed_every_dashboard_route() {
    assert_no_problems(&dashboard_route_problems(&template()));
}

#[test]
fn a_template_that_does_not_route_the_dashboard_is_caught() {
    let mut t = template();
    let (id, _) = resources(&t, "AWS::Serverless::Function")
        .into_iter()
        .find(|(_, f)| str_of(get(f, &["Metadata", "Binary"])) == Some("tally-api-lambda"))
        .unwrap();
    // The API routed under /v1 only: the page and its sign-in are not reachable.
    let events = t["Resources"][id.as_str()]["Properties"]["Events"]
        .as_mapping_mut()
        .unwrap();
    for event in events.values_mut() {
        if event["Properties"]["Path"].as_str() == Some("/{proxy+}") {
            event["Properties"]["Path"] = Value::from("/v1/{proxy+}");
        }
    }
    let problems = dashboard_route_problems(&t);
    assert_eq!(
        problems.len(),
        tally_dashboard::ROUTES.len(),
        "{problems:#?}"
    );
    assert!(problems[0].contains("GET /dashboard"), "{problems:#?}");
    // The matcher itself: a literal route takes its own path only.
    assert!(gateway_takes(("GET", "/dashboard"), ("GET", "/dashboard")));
    assert!(!gateway_takes(
        ("GET", "/dashboard"),
        ("POST", "/dashboard")
    ));
    assert!(!gateway_takes(
        ("ANY", "/v1/{proxy+}"),
        ("GET", "/dashboard")
    ));
}

/// The Lambda's router serves the page, and a session signed in through it reads the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lambda_serves_the_dashboard_and_its_sessions() {
    let config = aws::sdk_config().await;
    let store = Arc::new(tally_store::MemoryStore::new());
    let now = Utc.with_ymd_and_hms(2026, 11, 5, 12, 0, 0).unwrap();
    let clock = Arc::new(FixedClock::at(now));
    let org = create_owned_org(
        store.as_ref(),
        (5, 6),
        "ada@example.com",
        "Acme",
        PlanId::Starter,
        now - TimeDelta::days(1),
    )
    .await;
    let secrets = SecretsClient::new(&config);
    let value: String = std::iter::repeat_n('d', 64).collect();
    let arn = secrets
        .create_secret()
        .name(aws::fresh_name("tally-dashboard-jwt"))
        .secret_string(&value)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    let state = common::api_state(store.clone(), clock.clone());
    let router = api_router(
        state,
        Secret::new(secrets, &arn, None, Duration::from_secs(300), clock),
    );

    let page = route_current(
        &router,
        Request::get("/dashboard").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");

    let token = tally_api::jwt::JwtConfig::hs256(value.as_bytes())
        .unwrap()
        .mint(&org.owner_id, now, TimeDelta::minutes(10))
        .unwrap();
    let signed_in = route_current(
        &router,
        Request::post("/dashboard/sign-in")
            .header(header::HOST, "api.example.com")
            .header(header::ORIGIN, "https://api.example.com")
            .body(Body::from(json!({"token": token}).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let session = signed_in
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("__Host-tally_session="))
        .expect("a session cookie");
    let me = route_current(
        &router,
        Request::get("/v1/me/orgs")
            .header(header::COOKIE, session)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(me.status(), StatusCode::OK);
}
