//! Sign-out when the store cannot record the revocation (through the failing-store seam:
//! `503`, the cookies kept, the session still working; the same request with the fault
//! lifted signs out), and the dashboard's routes in the OpenAPI document: exactly the routes
//! this crate serves, each answering only the statuses the document lists.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::json;
use tally_api::auth::SESSION_COOKIE;
use tally_api::jwt::JwtConfig;
use tally_api::openapi_dashboard::{DASHBOARD_ROUTES, statuses};
use tally_core::ports::SecurityStore;
use tally_store::MemoryStore;
use tower::ServiceExt;

mod common;

use common::failing_store::FailingRevoke;
use common::{HOST, ORIGIN, now, send, signed_app};

const SECRET: &[u8] = b"dashboard-document-test-secret-32-bytes!";

struct World {
    app: Router,
    /// The owner's user token (what the sign-in form takes).
    token: String,
    store: Arc<MemoryStore>,
    seam: Arc<FailingRevoke>,
}

/// The API and dashboard on the memory store, its tenant calls through the seam.
async fn world() -> World {
    let store = Arc::new(MemoryStore::new());
    let owner = common::seed_owner(&store).await;
    let seam = Arc::new(FailingRevoke::new(store.clone()));
    let (app, token) = signed_app(seam.clone(), store.clone(), SECRET, &owner.id);
    World {
        app,
        token,
        store,
        seam,
    }
}

fn sign_in_request(origin: Option<&str>, body: String) -> Request<Body> {
    let mut req = Request::post("/dashboard/sign-in")
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(o) = origin {
        req = req.header(header::ORIGIN, o);
    }
    req.body(Body::from(body)).unwrap()
}

fn sign_out_request(origin: Option<&str>, session: Option<&str>) -> Request<Body> {
    let mut req = Request::post("/dashboard/sign-out").header(header::HOST, HOST);
    if let Some(o) = origin {
        req = req.header(header::ORIGIN, o);
    }
    if let Some(s) = session {
        req = req.header(header::COOKIE, format!("{SESSION_COOKIE}={s}"));
    }
    req.body(Body::empty()).unwrap()
}

/// Signs in; the session cookie's value.
async fn sign_in(w: &World) -> String {
    let a = send(
        &w.app,
        sign_in_request(Some(ORIGIN), json!({"token": w.token}).to_string()),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json());
    let cookie = a.cookie(SESSION_COOKIE).expect("a session cookie");
    let value = &cookie[SESSION_COOKIE.len() + 1..];
    value.split(';').next().unwrap().to_owned()
}

/// `GET /v1/me/orgs` with the session cookie alone.
async fn me_with(w: &World, session: &str) -> StatusCode {
    let req = Request::get("/v1/me/orgs")
        .header(header::COOKIE, format!("{SESSION_COOKIE}={session}"))
        .body(Body::empty())
        .unwrap();
    send(&w.app, req).await.status
}

#[tokio::test]
async fn sign_out_keeps_the_cookie_and_answers_503_when_the_revocation_is_not_recorded() {
    let w = world().await;
    let session = sign_in(&w).await;
    let (user, facts) = JwtConfig::hs256(SECRET)
        .unwrap()
        .verify_facts(&session, now())
        .unwrap();
    let (sid, _) = facts.session.unwrap();

    w.seam.set_failing(true);
    let out = send(&w.app, sign_out_request(Some(ORIGIN), Some(&session))).await;
    assert_eq!(
        out.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        out.json()
    );
    assert!(
        statuses("POST", "/dashboard/sign-out")
            .unwrap()
            .contains(&503)
    );
    // No cookie is cleared: the browser keeps the session it still has.
    assert!(out.cookies().is_empty(), "{:?}", out.cookies());
    assert_eq!(out.json()["error"]["code"], "sign_out_failed");
    let json = out.json();
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("still signed in"), "{message}");
    // The store holds the session unrevoked, and the cookie still reads the API.
    let stored = w.store.get_session(&user, &sid).await.unwrap().unwrap();
    assert_eq!(stored.revoked_at, None);
    assert_eq!(me_with(&w, &session).await, StatusCode::OK);

    // The fault lifted, the same sign-out revokes the session and clears both cookies: the
    // 503 above was the seam's doing.
    w.seam.set_failing(false);
    let out = send(&w.app, sign_out_request(Some(ORIGIN), Some(&session))).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert_eq!(out.cookies().len(), 2, "{:?}", out.cookies());
    assert!(out.cookies().iter().all(|c| c.contains("Max-Age=0")));
    let stored = w.store.get_session(&user, &sid).await.unwrap().unwrap();
    assert_eq!(stored.revoked_at, Some(now()));
    assert_eq!(me_with(&w, &session).await, StatusCode::UNAUTHORIZED);
}

/// `{*path}` (axum's wildcard) as the document spells it.
fn documented_path(path: &str) -> String {
    path.replace("{*", "{")
}

#[tokio::test]
async fn the_document_lists_exactly_the_dashboard_routes() {
    let served: BTreeSet<(String, String)> = tally_dashboard::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), documented_path(p)))
        .collect();
    let listed: BTreeSet<(String, String)> = DASHBOARD_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(served, listed);
    assert_eq!(
        tally_dashboard::MAX_SIGN_IN_BYTES,
        tally_api::openapi_dashboard::MAX_SIGN_IN_BYTES
    );

    let doc = tally_api::openapi::document();
    let in_doc: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.starts_with("/dashboard"))
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_ascii_uppercase(), p.clone()))
        })
        .collect();
    assert_eq!(in_doc, listed);
    for (method, path) in DASHBOARD_ROUTES {
        let op = &doc["paths"][*path][method.to_ascii_lowercase()];
        let documented: BTreeSet<u16> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.parse().unwrap())
            .collect();
        let expected: BTreeSet<u16> = statuses(method, path).unwrap().iter().copied().collect();
        assert_eq!(documented, expected, "{method} {path}");
    }
    // The cookie scheme sign-out names is defined.
    assert_eq!(
        doc["components"]["securitySchemes"]["sessionCookie"]["name"],
        SESSION_COOKIE
    );
}

/// Each route's answers, good and refused, are statuses its entry lists.
#[tokio::test]
async fn every_answer_of_the_dashboard_routes_is_documented() {
    let w = world().await;
    let big = json!({"token": "x".repeat(tally_dashboard::MAX_SIGN_IN_BYTES)}).to_string();
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c3Jfb3duZXIifQ.c2lnbmF0dXJl";
    let asset = || Request::get("/dashboard/assets/app.js");
    let first = send(&w.app, asset().body(Body::empty()).unwrap()).await;
    assert_eq!(first.status, StatusCode::OK);
    let res = w
        .app
        .clone()
        .oneshot(asset().body(Body::empty()).unwrap())
        .await
        .unwrap();
    let etag = res.headers()[header::ETAG].to_str().unwrap().to_owned();
    let session = sign_in(&w).await;
    let cases: Vec<(&str, &str, Request<Body>, StatusCode)> = vec![
        (
            "GET",
            "/dashboard",
            Request::get("/dashboard").body(Body::empty()).unwrap(),
            StatusCode::OK,
        ),
        (
            "GET",
            "/dashboard/assets/{path}",
            asset()
                .header(header::IF_NONE_MATCH, etag)
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_MODIFIED,
        ),
        (
            "GET",
            "/dashboard/assets/{path}",
            Request::get("/dashboard/assets/nope.js")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/dashboard/sign-in",
            sign_in_request(None, json!({"token": w.token}).to_string()),
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "/dashboard/sign-in",
            sign_in_request(Some(ORIGIN), "{}".into()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/dashboard/sign-in",
            sign_in_request(Some(ORIGIN), big),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            "/dashboard/sign-in",
            sign_in_request(Some(ORIGIN), json!({"token": forged}).to_string()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "GET",
            "/dashboard/sign-in/oidc",
            Request::get("/dashboard/sign-in/oidc")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            "/dashboard/callback",
            Request::get("/dashboard/callback?code=c&state=s")
                .body(Body::empty())
                .unwrap(),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/dashboard/sign-out",
            sign_out_request(None, Some(&session)),
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "/dashboard/sign-out",
            sign_out_request(Some(ORIGIN), Some(&session)),
            StatusCode::NO_CONTENT,
        ),
    ];
    for (method, path, req, want) in cases {
        let a = send(&w.app, req).await;
        assert_eq!(a.status, want, "{method} {path}: {}", a.json());
        assert!(
            statuses(method, path).unwrap().contains(&want.as_u16()),
            "{method} {path} answered {want}, which its OpenAPI entry does not list"
        );
    }
}
