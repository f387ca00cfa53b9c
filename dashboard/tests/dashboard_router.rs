//! The dashboard's routes in process (the API's router with the dashboard merged in, on the
//! in-memory store): the page and its assets with their security headers, sign-in to the
//! session cookie (a Tally session's token, revoked by sign-out), the API accepting that
//! cookie, and CSRF refusals of cookie-authenticated
//! mutations (a planted cross-site POST carrying the cookie is refused).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::json;
use tally_api::jwt::JwtConfig;
use tally_core::ids::UserId;
use tally_store::MemoryStore;

mod common;

use common::{Answer, HOST, ORIGIN, bare_get, now, send, session_get, signed_app};

const SECRET: &[u8] = b"dashboard-router-test-secret-32-bytes!!";

struct Fixture {
    app: Router,
    token: String,
}

async fn fixture() -> Fixture {
    let store = MemoryStore::new();
    let owner = common::seed_owner(&store).await;
    let shared = Arc::new(store);
    let (app, token) = signed_app(shared.clone(), shared, SECRET, &owner.id);
    Fixture { app, token }
}

/// Signs in from the page's own origin; the session and CSRF cookie values.
async fn sign_in(f: &Fixture) -> (String, String) {
    let a = send(
        &f.app,
        Request::post("/dashboard/sign-in")
            .header(header::HOST, HOST)
            .header(header::ORIGIN, ORIGIN)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"token": f.token}).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json());
    assert_eq!(a.json()["user_id"], "usr_owner");
    let cookies = a.cookies();
    let value = |name: &str| {
        let c = cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} cookie in {cookies:?}"));
        (
            c.clone(),
            c[name.len() + 1..].split(';').next().unwrap().to_owned(),
        )
    };
    let (session_attrs, session) = value("__Host-tally_session");
    let (csrf_attrs, csrf) = value("__Host-tally_csrf");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(session_attrs.contains(attr), "{session_attrs} lacks {attr}");
    }
    assert!(!csrf_attrs.contains("HttpOnly"), "the page must read it");
    for attr in ["Secure", "SameSite=Strict", "Path=/"] {
        assert!(csrf_attrs.contains(attr), "{csrf_attrs} lacks {attr}");
    }
    // The cookie holds a session's token, never the pasted one: the session is listed and
    // revocable, and the cookie lives as long as the session (12 hours by default).
    assert_ne!(session, f.token);
    let (user, facts) = JwtConfig::hs256(SECRET)
        .unwrap()
        .verify_facts(&session, now())
        .unwrap();
    assert_eq!(user.as_str(), "usr_owner");
    let (sid, _) = facts.session.expect("a session token");
    assert_eq!(a.json()["session"]["id"], sid.as_str());
    assert!(session_attrs.contains("Max-Age=43200"), "{session_attrs}");
    assert_eq!(csrf.len(), 32);
    (session, csrf)
}

/// Creates a project with the session cookie, with the CSRF header and `Origin` given.
async fn cookie_post(
    f: &Fixture,
    session: &str,
    csrf_cookie: &str,
    csrf_header: Option<&str>,
    origin: Option<&str>,
) -> Answer {
    let mut req = Request::post("/v1/orgs/org_a/projects")
        .header(header::HOST, HOST)
        .header(
            header::COOKIE,
            format!("__Host-tally_session={session}; __Host-tally_csrf={csrf_cookie}"),
        )
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(h) = csrf_header {
        req = req.header("x-csrf-token", h);
    }
    if let Some(o) = origin {
        req = req.header(header::ORIGIN, o);
    }
    send(
        &f.app,
        req.body(Body::from(
            json!({"name": "Web", "slug": "web"}).to_string(),
        ))
        .unwrap(),
    )
    .await
}

/// Inline script or style in an HTML page: what the CSP forbids, so the page must hold none.
fn inline_code(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    for (i, _) in lower.match_indices("<script") {
        let tag_end = lower[i..].find('>').map(|e| i + e).unwrap_or(lower.len());
        if !lower[i..tag_end].contains(" src=") {
            found.push(format!("inline <script> at {i}"));
        }
    }
    if lower.contains("<style") {
        found.push("a <style> element".into());
    }
    for attr in [
        " style=",
        " onclick=",
        " onload=",
        " onerror=",
        " onsubmit=",
        "javascript:",
    ] {
        if lower.contains(attr) {
            found.push(format!("{attr} attribute"));
        }
    }
    found
}

#[test]
fn the_inline_code_check_catches_planted_inline_code() {
    assert!(inline_code(tally_dashboard::INDEX_HTML).is_empty());
    for planted in [
        "<script>alert(1)</script>",
        "<p style=\"color:red\">x</p>",
        "<button onclick=\"go()\">x</button>",
        "<style>p{}</style>",
    ] {
        let html = tally_dashboard::INDEX_HTML.replace("</main>", &format!("{planted}</main>"));
        assert!(!inline_code(&html).is_empty(), "{planted} not caught");
    }
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_strict_policy() {
    let f = fixture().await;
    let page = send(
        &f.app,
        Request::get("/dashboard").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header("content-type").starts_with("text/html"));
    let csp = page.header("content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(directive), "{csp} lacks {directive}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("cache-control"), "no-store");
    let html = String::from_utf8(page.body).unwrap();
    assert!(inline_code(&html).is_empty(), "{:?}", inline_code(&html));

    // Every asset the page names is embedded and served with its type; the module's
    // imports too.
    let mut referenced: Vec<String> = html
        .split('"')
        .filter(|s| s.starts_with("/dashboard/assets/"))
        .map(str::to_owned)
        .collect();
    referenced.push("/dashboard/assets/vendor/uplot/LICENSE".into());
    assert!(referenced.len() >= 4, "{referenced:?}");
    let app_js = String::from_utf8(
        tally_dashboard::ASSETS
            .iter()
            .find(|a| a.path == "app.js")
            .unwrap()
            .body
            .to_vec(),
    )
    .unwrap();
    for import in app_js.lines().filter(|l| l.starts_with("import ")) {
        let rel = import.split('\'').nth(1).unwrap();
        referenced.push(format!(
            "/dashboard/assets/{}",
            rel.trim_start_matches("./")
        ));
    }
    for path in &referenced {
        let a = send(&f.app, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        let expected = match path.rsplit('.').next() {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            _ => "text/plain",
        };
        assert!(a.header("content-type").starts_with(expected), "{path}");
        assert_eq!(a.header("x-content-type-options"), "nosniff", "{path}");
        assert!(
            a.header("content-security-policy")
                .contains("default-src 'self'")
        );
        assert_eq!(a.header("cache-control"), "no-cache", "{path}");
        // An unchanged asset costs a 304.
        let etag = a.header("etag").to_owned();
        assert!(etag.starts_with('"') && etag.len() > 10, "{path}: {etag}");
        let again = send(
            &f.app,
            Request::get(path)
                .header(header::IF_NONE_MATCH, &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(again.body.is_empty());
    }
    let license = send(&f.app, bare_get("/dashboard/assets/vendor/uplot/LICENSE")).await;
    assert!(String::from_utf8_lossy(&license.body).contains("MIT License"));
    let missing = send(&f.app, bare_get("/dashboard/assets/../Cargo.toml")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sign_in_verifies_the_token_and_refuses_other_origins() {
    let f = fixture().await;
    let post = |origin: Option<&str>, body: String| {
        let mut req = Request::post("/dashboard/sign-in").header(header::HOST, HOST);
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        req.body(Body::from(body)).unwrap()
    };
    let body = json!({"token": f.token}).to_string();
    // Login CSRF: another site cannot sign a browser in.
    for origin in [
        None,
        Some("http://evil.example"),
        Some("http://tally.test:9999"),
    ] {
        let a = send(&f.app, post(origin, body.clone())).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{origin:?}");
        assert_eq!(a.json()["error"]["code"], "csrf");
        assert!(a.cookies().is_empty());
    }
    // A forged token, an API key and a malformed body are refused, with no cookie.
    let forged = JwtConfig::hs256(b"another-secret-another-secret-32b!!")
        .unwrap()
        .mint(
            &UserId::parse("usr_owner").unwrap(),
            now(),
            chrono::Duration::minutes(5),
        )
        .unwrap();
    for (body, status) in [
        (
            json!({"token": forged}).to_string(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            json!({"token": "tk_live_0123456789abcdef"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        ("not json".to_owned(), StatusCode::BAD_REQUEST),
        (
            json!({"token": "x".repeat(tally_dashboard::MAX_SIGN_IN_BYTES)}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let a = send(&f.app, post(Some(ORIGIN), body)).await;
        assert_eq!(a.status, status, "{}", a.json());
        assert!(a.cookies().is_empty());
    }
    let (session, _) = sign_in(&f).await;
    // The cookie alone reads the API.
    let me = send(&f.app, session_get("/v1/me/orgs", &session)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["orgs"][0]["org"]["id"], "org_a");
    // The session is the user's to see through the API.
    let listed = send(
        &f.app,
        Request::get("/v1/sessions")
            .header(header::AUTHORIZATION, format!("Bearer {}", f.token))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(listed.json()["sessions"].as_array().unwrap().len(), 1);
    // A session token pasted into the sign-in form opens no second session.
    let chained = send(
        &f.app,
        post(Some(ORIGIN), json!({"token": session}).to_string()),
    )
    .await;
    assert_eq!(chained.status, StatusCode::FORBIDDEN, "{}", chained.json());
    assert_eq!(chained.json()["error"]["code"], "session_token");
    // Sign-out revokes the session and clears both cookies: a kept copy of the cookie no
    // longer reads the API.
    let out = send(
        &f.app,
        Request::post("/dashboard/sign-out")
            .header(header::HOST, HOST)
            .header(header::ORIGIN, ORIGIN)
            .header(header::COOKIE, format!("__Host-tally_session={session}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let cleared = out.cookies();
    assert_eq!(cleared.len(), 2, "{cleared:?}");
    assert!(
        cleared.iter().all(|c| c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    let after = send(&f.app, session_get("/v1/me/orgs", &session)).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert!(
        after.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
}

#[tokio::test]
async fn cookie_mutations_need_the_csrf_header_and_the_same_origin() {
    let f = fixture().await;
    let (session, csrf) = sign_in(&f).await;
    // A planted cross-site POST: the browser sent the cookie, but the other site can
    // neither read __Host-tally_csrf nor name this origin.
    let cross_site = cookie_post(&f, &session, &csrf, None, Some("http://evil.example")).await;
    assert_eq!(cross_site.status, StatusCode::FORBIDDEN);
    assert_eq!(cross_site.json()["error"]["code"], "csrf");
    // Even a guessed header from another origin, or the right header with no Origin.
    let other_origin = cookie_post(
        &f,
        &session,
        &csrf,
        Some(&csrf),
        Some("http://evil.example"),
    )
    .await;
    assert_eq!(other_origin.json()["error"]["code"], "csrf");
    let no_origin = cookie_post(&f, &session, &csrf, Some(&csrf), None).await;
    assert_eq!(no_origin.json()["error"]["code"], "csrf");
    // A header that does not match the cookie, or an empty pair.
    let wrong = cookie_post(
        &f,
        &session,
        &csrf,
        Some("0".repeat(32).as_str()),
        Some(ORIGIN),
    )
    .await;
    assert_eq!(wrong.json()["error"]["code"], "csrf");
    let empty = cookie_post(&f, &session, "", Some(""), Some(ORIGIN)).await;
    assert_eq!(empty.json()["error"]["code"], "csrf");
    // None of them made anything.
    let list = send(&f.app, session_get("/v1/orgs/org_a/projects", &session)).await;
    assert_eq!(list.json()["projects"].as_array().unwrap().len(), 0);
    // The page's own request passes.
    let ok = cookie_post(&f, &session, &csrf, Some(&csrf), Some(ORIGIN)).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.json());
    // A bearer header wins over the cookie and needs no CSRF header (API clients).
    let bearer = send(
        &f.app,
        Request::post("/v1/orgs/org_a/projects")
            .header(header::AUTHORIZATION, format!("Bearer {}", f.token))
            .header(header::COOKIE, "__Host-tally_session=garbage")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"name": "Api", "slug": "api"}).to_string(),
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(bearer.status, StatusCode::CREATED, "{}", bearer.json());
    // A cookie that holds no user token is 401.
    let junk = send(&f.app, session_get("/v1/me/orgs", "tk_live_abc")).await;
    assert_eq!(junk.status, StatusCode::UNAUTHORIZED);
}
