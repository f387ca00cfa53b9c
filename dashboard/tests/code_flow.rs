//! "Sign in with …" in process: the dashboard's routes (the API's router with the
//! dashboard merged in, on the in-memory store) against an RS256 issuer double on an
//! ephemeral port ([`support::issuer`]). The happy path lands signed in (session and CSRF
//! cookies that the API accepts); every refusal the flow promises is planted and seen:
//! a wrong state, a reused code, a token with another nonce, a missing, forged or expired
//! flow cookie, the issuer's error, a failing token endpoint, an unknown email.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::Answer;
#[path = "support/issuer.rs"]
mod issuer;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use tally_api::ApiState;
use tally_api::jwt::JwtConfig;
use tally_core::meter::MeterCatalogue;
use tally_core::ports::FixedClock;
use tally_dashboard::code_flow::{FLOW_COOKIE, FLOW_TTL_SECS};
use tally_oidc::flow::ClientSettings;
use tally_oidc::{OidcSettings, OidcVerifier};
use tally_store::MemoryStore;

use issuer::{Faults, Issuer};

const SECRET: &[u8] = b"dashboard-code-flow-test-secret-32-bytes";
const HOST: &str = "tally.test";
const CLIENT: &str = "tally-dashboard-client";

fn now() -> DateTime<Utc> {
    "2026-12-05T12:00:00Z".parse().unwrap()
}

struct World {
    app: Router,
    issuer: Issuer,
    clock: Arc<FixedClock>,
}

/// The owner `owner@example.com` of org `org_a`; the issuer signs everyone in as `email`.
async fn world_as(email: &str) -> World {
    let store = MemoryStore::new();
    common::seed_owner(&store).await;
    let issuer = Issuer::start(CLIENT, email, now().timestamp()).await;
    let oidc = OidcVerifier::new(OidcSettings {
        issuer: issuer.url.clone(),
        audience: CLIENT.into(),
        jwks_url: None,
    })
    .unwrap()
    .with_client(ClientSettings {
        client_id: CLIENT.into(),
        client_secret: Some("s3cret".into()),
        redirect_url: None,
    })
    .unwrap();
    let shared = Arc::new(store);
    let clock = Arc::new(FixedClock::at(now()));
    let state = ApiState::new(
        shared.clone(),
        shared,
        Arc::new(MeterCatalogue::default()),
        clock.clone(),
    )
    .with_jwt(JwtConfig::hs256(SECRET).unwrap())
    .with_oidc(oidc);
    World {
        app: tally_dashboard::with_api(state),
        issuer,
        clock,
    }
}

async fn world() -> World {
    world_as("owner@example.com").await
}

async fn get(app: &Router, path: &str, cookie: Option<&str>) -> Answer {
    let mut req = Request::get(path).header(header::HOST, HOST);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    common::send(app, req.body(Body::empty()).unwrap()).await
}

/// The value of a `Set-Cookie` line (`name=value; …` → `value`).
fn value_of(set_cookie: &str) -> &str {
    set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v)
        .unwrap()
}

/// A started flow: the `Cookie` header carrying the flow cookie, and the callback path the
/// issuer sends the browser back to (after signing the user in).
struct Started {
    cookie: String,
    callback: String,
}

impl Started {
    /// The callback URL with each `key=value` part of its query mapped by `part` (dropped
    /// where it answers `None`), in order.
    fn callback_with(&self, part: impl Fn(&str) -> Option<String>) -> String {
        let (path, query) = self.callback.split_once('?').unwrap();
        let kept: Vec<String> = query.split('&').filter_map(part).collect();
        format!("{path}?{}", kept.join("&"))
    }
}

async fn start(w: &World) -> Started {
    let a = get(&w.app, "/dashboard/sign-in/oidc", None).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.json());
    let set = a.cookie(FLOW_COOKIE).expect("a flow cookie");
    let back = w.issuer.authorize_url(&a.location());
    let callback = back
        .strip_prefix(&format!("https://{HOST}"))
        .unwrap_or_else(|| panic!("the redirect URI is this host's: {back}"))
        .to_owned();
    Started {
        cookie: format!("{FLOW_COOKIE}={}", value_of(&set)),
        callback,
    }
}

/// A flow started and the browser back from the issuer with its flow cookie: the flow
/// and the callback's answer.
async fn come_back(w: &World) -> (Started, Answer) {
    let s = start(w).await;
    let a = get(&w.app, &s.callback, Some(&s.cookie)).await;
    (s, a)
}

/// The message of a refusal's error body.
fn error_message(a: &Answer) -> String {
    a.json()["error"]["message"].as_str().unwrap().to_owned()
}

/// Asserts a refusal: the status, the code, and the flow cookie cleared.
fn refused(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", a.json());
    assert_eq!(a.json()["error"]["code"], code, "{}", a.json());
    let cleared = a.cookie(FLOW_COOKIE).expect("the flow cookie is cleared");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert!(a.cookie("__Host-tally_session").is_none());
}

#[tokio::test]
async fn the_page_offers_the_issuer_only_when_a_client_is_configured() {
    let w = world().await;
    let page = get(&w.app, "/dashboard", None).await;
    let html = String::from_utf8(page.body).unwrap();
    let host = w.issuer.url.trim_start_matches("http://");
    assert!(
        html.contains(&format!(
            "href=\"/dashboard/sign-in/oidc\">Sign in with {host}</a>"
        )),
        "{html}"
    );
    assert!(html.contains("id=\"sign-in-form\""), "the token form stays");

    // The same server without an issuer client: the token form alone, and no flow.
    let store = Arc::new(MemoryStore::new());
    let plain = tally_dashboard::with_api(
        ApiState::new(
            store.clone(),
            store,
            Arc::new(MeterCatalogue::default()),
            Arc::new(FixedClock::at(now())),
        )
        .with_jwt(JwtConfig::hs256(SECRET).unwrap()),
    );
    let html = String::from_utf8(get(&plain, "/dashboard", None).await.body).unwrap();
    assert!(!html.contains("Sign in with"), "{html}");
    assert!(html.contains("id=\"sign-in-form\""));
    let a = get(&plain, "/dashboard/sign-in/oidc", None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_start_sends_the_browser_to_the_issuer_with_pkce_state_and_nonce() {
    let w = world().await;
    let a = get(&w.app, "/dashboard/sign-in/oidc", None).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let location = a.location();
    assert!(
        location.starts_with(&format!("{}/authorize?", w.issuer.url)),
        "{location}"
    );
    for part in [
        "response_type=code",
        &format!("client_id={CLIENT}"),
        // https://tally.test/dashboard/callback, form-encoded.
        "redirect_uri=https%3A%2F%2Ftally.test%2Fdashboard%2Fcallback",
        "scope=openid+email",
        "code_challenge_method=S256",
        "state=",
        "nonce=",
        "code_challenge=",
    ] {
        assert!(location.contains(part), "{part} missing from {location}");
    }
    let cookie = a.cookie(FLOW_COOKIE).unwrap();
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        &format!("Max-Age={FLOW_TTL_SECS}"),
    ] {
        assert!(cookie.contains(attr), "{attr} missing from {cookie}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");
    // The verifier never leaves in the URL; only its challenge does.
    let second = get(&w.app, "/dashboard/sign-in/oidc", None)
        .await
        .location();
    assert_ne!(location, second, "each start draws new values");
}

#[tokio::test]
async fn the_callback_opens_a_session_the_api_accepts() {
    let w = world().await;
    let (_, a) = come_back(&w).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.json());
    assert_eq!(a.location(), "/dashboard");
    let session = a.cookie("__Host-tally_session").expect("a session cookie");
    let csrf = a.cookie("__Host-tally_csrf").expect("a CSRF cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(attr), "{attr} missing from {session}");
    }
    assert!(csrf.contains("Secure") && csrf.contains("Path=/"), "{csrf}");
    let cleared = a.cookie(FLOW_COOKIE).unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(w.issuer.exchanged(), 1);

    // The session cookie acts as the issuer's user, mapped by verified email.
    let cookie = format!("__Host-tally_session={}", value_of(&session));
    let me = get(&w.app, "/v1/me/orgs", Some(&cookie)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.json());
    assert_eq!(me.json()["orgs"][0]["org"]["id"], "org_a");
    let sessions = get(&w.app, "/v1/sessions", Some(&cookie)).await;
    assert_eq!(sessions.status, StatusCode::OK, "{}", sessions.json());
    assert_eq!(sessions.json()["sessions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_wrong_state_is_refused_before_the_code_is_spent() {
    let w = world().await;
    let s = start(&w).await;
    let forged = s.callback_with(|kv| {
        Some(if kv.starts_with("state=") {
            "state=forged".to_owned()
        } else {
            kv.to_owned()
        })
    });
    let a = get(&w.app, &forged, Some(&s.cookie)).await;
    refused(&a, StatusCode::BAD_REQUEST, "oidc_state_mismatch");
    assert_eq!(w.issuer.exchanged(), 0, "the code was not exchanged");
    // Another browser's flow cookie with this callback: its state differs too.
    let other = start(&w).await;
    let a = get(&w.app, &s.callback, Some(&other.cookie)).await;
    refused(&a, StatusCode::BAD_REQUEST, "oidc_state_mismatch");
}

#[tokio::test]
async fn a_reused_code_is_refused() {
    let w = world().await;
    let s = start(&w).await;
    let first = get(&w.app, &s.callback, Some(&s.cookie)).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.json());
    // Replayed with the same flow cookie (as one captured before it was cleared): the
    // issuer refuses the spent code, and the refusal says so.
    let again = get(&w.app, &s.callback, Some(&s.cookie)).await;
    refused(&again, StatusCode::BAD_REQUEST, "oidc_code_refused");
    let message = error_message(&again);
    assert!(message.contains("invalid_grant"), "{message}");
    assert_eq!(w.issuer.exchanged(), 1);
}

#[tokio::test]
async fn a_token_with_another_nonce_is_refused() {
    let w = world().await;
    w.issuer.plant(Faults {
        nonce: Some("nonce-of-another-sign-in".into()),
        ..Faults::default()
    });
    let (_, a) = come_back(&w).await;
    refused(&a, StatusCode::BAD_REQUEST, "oidc_nonce_mismatch");
}

#[tokio::test]
async fn a_missing_forged_or_expired_flow_cookie_is_refused() {
    let w = world().await;
    let s = start(&w).await;
    let a = get(&w.app, &s.callback, None).await;
    refused(&a, StatusCode::BAD_REQUEST, "oidc_flow_missing");
    // One character of the sealed state changed: its signature no longer holds.
    let mut forged = s.cookie.clone().into_bytes();
    let i = forged.len() - 5;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let a = get(
        &w.app,
        &s.callback,
        Some(&String::from_utf8(forged).unwrap()),
    )
    .await;
    refused(&a, StatusCode::BAD_REQUEST, "oidc_flow_missing");
    // 600 s after the start the flow has expired (exp = start + 600, refused at exp).
    w.clock.advance(chrono::TimeDelta::seconds(FLOW_TTL_SECS));
    let a = get(&w.app, &s.callback, Some(&s.cookie)).await;
    refused(&a, StatusCode::BAD_REQUEST, "oidc_flow_missing");
    assert_eq!(w.issuer.exchanged(), 0);
}

#[tokio::test]
async fn the_issuers_error_and_a_failing_token_endpoint_are_refused() {
    let w = world().await;
    w.issuer.plant(Faults {
        deny: true,
        ..Faults::default()
    });
    let (_, a) = come_back(&w).await;
    refused(&a, StatusCode::BAD_REQUEST, "oidc_provider_error");
    let message = error_message(&a);
    assert!(
        message.contains("access_denied: User cancelled"),
        "{message}"
    );

    w.issuer.plant(Faults {
        token_endpoint_down: true,
        ..Faults::default()
    });
    let (_, a) = come_back(&w).await;
    refused(&a, StatusCode::BAD_REQUEST, "oidc_code_refused");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{}",
        a.json()
    );
}

#[tokio::test]
async fn a_callback_without_a_code_or_with_an_oversized_query_is_refused() {
    let w = world().await;
    let s = start(&w).await;
    let state_only = s.callback_with(|kv| kv.starts_with("state=").then(|| kv.to_owned()));
    let a = get(&w.app, &state_only, Some(&s.cookie)).await;
    refused(&a, StatusCode::BAD_REQUEST, "invalid_callback");
    assert_eq!(a.json()["error"]["field"], "code");
    let long = "x".repeat(tally_dashboard::code_flow::MAX_CALLBACK_QUERY);
    let a = get(
        &w.app,
        &format!("{state_only}&code={long}"),
        Some(&s.cookie),
    )
    .await;
    refused(&a, StatusCode::BAD_REQUEST, "invalid_callback");
    assert_eq!(a.json()["error"]["field"], "query");
}

#[tokio::test]
async fn an_email_no_tally_user_has_is_refused_as_a_bearer_token_would_be() {
    let w = world_as("stranger@example.com").await;
    let (_, a) = come_back(&w).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.json());
    let message = error_message(&a);
    assert!(
        message.contains("no Tally user has the email stranger@example.com"),
        "{message}"
    );
    assert!(a.cookie("__Host-tally_session").is_none());
}
