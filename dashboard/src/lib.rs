//! Tally's tenant dashboard: `GET /dashboard`, its assets under `/dashboard/assets/…`, and
//! the sign-in and sign-out routes that turn a user token into the session cookie.
//!
//! The page is plain HTML, one ES module and one stylesheet, with uPlot (MIT, vendored by
//! `scripts/update_uplot.sh`) for the charts; every file is embedded in the binary
//! ([`ASSETS`]), so `cargo build` needs neither Node nor the network, and [`with_api`]
//! merges these routes into the management API's router, so `tally serve` and the API
//! Lambda serve the page with no second deployment. The page holds no rules of its own: it
//! calls the API, and shows the API's refusals as they come.
//!
//! Every answer carries a strict Content-Security-Policy ([`CSP`]: only this origin's
//! scripts, styles and connections; no inline script or style; no framing) and
//! `X-Content-Type-Options: nosniff`. The page is `no-store`; assets are `no-cache` with an
//! `ETag` (their SHA-256), so a new binary's assets are picked up at once and an unchanged
//! one costs a `304`.
//!
//! Sign-in ([`sign_in`]) verifies the pasted user token with the API's own [`Caller`]
//! extractor (the same checks as a bearer token, so the cookie can never admit what the
//! header would not), opens a Tally session for the user
//! ([`tally_api::sessions::open_session`]: listed by the user and the org's admins,
//! revocable, as long-lived as the user's orgs allow) and sets two cookies:
//! [`SESSION_COOKIE`] (the session's token, never the pasted one; HTTP-only) and
//! [`CSRF_COOKIE`] (a random value the page repeats in `X-CSRF-Token` on every mutation; see
//! [`tally_api::auth::session_cookie_credential`]). Both live as long as the session and
//! are `SameSite=Strict; Path=/; Secure`: browsers keep `Secure` cookies over plain HTTP on
//! `localhost` and `127.0.0.1` (Chromium treats them as secure contexts; the browser test
//! signs in over `http://127.0.0.1`), and anywhere else the dashboard must be served over
//! HTTPS. Both names carry the `__Host-` prefix, so the browser keeps them only when they
//! are `Secure`, `Path=/` and without `Domain`: a sibling subdomain cannot plant or shadow
//! them. Sign-out ([`sign_out`]) revokes the session, so a copy of the cookie stops working
//! too.
//!
//! With an OIDC issuer and a client configured, the page also offers "Sign in with …": the
//! authorization-code flow with PKCE in [`code_flow`], ending in the same session and
//! cookies.

pub mod code_flow;

use std::sync::OnceLock;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_api::ApiState;
use tally_api::auth::{CSRF_COOKIE, Caller, SESSION_COOKIE, cookie, same_origin};
use tally_api::http::ApiError;
use tally_api::jwt::looks_like_jwt;

/// The Content-Security-Policy of every dashboard answer: everything from this origin only,
/// no inline script or style (the page sets styles through the CSSOM alone), no plugins, no
/// `<base>`, forms posting here only, and no framing (clickjacking).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Largest sign-in body accepted: a token of an OIDC issuer is a few kilobytes at most.
pub const MAX_SIGN_IN_BYTES: usize = 16 * 1024;

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Its path under `/dashboard/assets/`.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

/// The page.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");

/// An [`Asset`] of the file `path` under `assets/`, embedded. A macro, not a function:
/// `include_bytes!` takes a literal, and this way the served path and the embedded file
/// are one literal that cannot drift apart.
macro_rules! asset {
    ($path:literal, $content_type:literal) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../assets/", $path)),
        }
    };
}

/// Every asset the page loads, embedded in the binary.
pub const ASSETS: &[Asset] = &[
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!(
        "vendor/uplot/uPlot.esm.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
    asset!("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
];

/// Every route this crate serves (method, path), for the template and OpenAPI checks.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/dashboard"),
    ("GET", "/dashboard/assets/{*path}"),
    ("POST", "/dashboard/sign-in"),
    ("GET", "/dashboard/sign-in/oidc"),
    ("GET", "/dashboard/callback"),
    ("POST", "/dashboard/sign-out"),
];

/// The dashboard's routes alone, on the API's state (sign-in verifies tokens with it).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/assets/{*path}", get(asset))
        .route("/dashboard/sign-in", post(sign_in))
        .route("/dashboard/sign-in/oidc", get(code_flow::start))
        .route("/dashboard/callback", get(code_flow::callback))
        .route("/dashboard/sign-out", post(sign_out))
        .layer(axum::middleware::from_fn(tally_api::http::trace_requests))
        .with_state(state)
}

/// The management API's router ([`tally_api::router`]) with the dashboard's routes merged
/// in: what `tally serve` and the API Lambda serve.
pub fn with_api(state: ApiState) -> Router {
    tally_api::router(state.clone()).merge(router(state))
}

/// The headers every dashboard answer carries.
pub(crate) fn secure(mut response: Response, cache: &'static str) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// Where [`INDEX_HTML`] takes the "Sign in with …" link when the code flow is configured.
const OIDC_MARKER: &str = "<!-- oidc-sign-in -->";

/// The page: with a "Sign in with <issuer>" link above the token form when the code flow
/// is configured ([`code_flow::provider_name`]), else the token form alone.
async fn index(State(state): State<ApiState>) -> Response {
    let page = match code_flow::provider_name(&state) {
        Some(name) => INDEX_HTML.replacen(
            OIDC_MARKER,
            &format!(
                "<p><a class=\"button\" id=\"sign-in-oidc\" href=\"/dashboard/sign-in/oidc\">Sign in with {}</a></p>\n  <p>Or paste a user token:</p>",
                html_escape(&name)
            ),
            1,
        ),
        None => INDEX_HTML.to_owned(),
    };
    secure(
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response(),
        "no-store",
    )
}

/// `text` safe inside HTML text or a quoted attribute.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The strong `ETag` of each asset (a quoted SHA-256 prefix), computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.body)[..16])))
            .collect()
    })
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let Some((i, found)) = ASSETS.iter().enumerate().find(|(_, a)| a.path == path) else {
        return secure(
            (StatusCode::NOT_FOUND, "no such dashboard asset").into_response(),
            "no-store",
        );
    };
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let response = if fresh {
        (StatusCode::NOT_MODIFIED, [(header::ETAG, etag.as_str())]).into_response()
    } else {
        (
            [
                (header::CONTENT_TYPE, found.content_type),
                (header::ETAG, etag.as_str()),
            ],
            found.body,
        )
            .into_response()
    };
    secure(response, "no-cache")
}

/// `POST /dashboard/sign-in` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    /// A user token (`tally token create`, or an ID token of the configured OIDC issuer).
    token: String,
}

/// `POST /dashboard/sign-in` answer.
#[derive(Debug, Serialize)]
struct SignedIn {
    user_id: String,
    /// The session opened (the cookie holds its token).
    session: tally_api::sessions::SessionView,
}

fn csrf_refused() -> ApiError {
    ApiError::ForbiddenBecause {
        code: "csrf",
        message: "sign-in and sign-out must come from this server's own dashboard page".into(),
    }
}

/// `POST /dashboard/sign-in`: `{"token": "…"}` from this server's own page (`Origin`, else
/// `403 csrf`); the token is checked exactly as a bearer token would be (`401` when it is
/// not valid; an API key is `400`; a session token `403 session_token`), then a session is
/// opened and the session and CSRF cookies are set.
async fn sign_in(State(state): State<ApiState>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    // One byte past the bound tells a body that is too large from one that fits.
    let body = match axum::body::to_bytes(body, MAX_SIGN_IN_BYTES + 1).await {
        Ok(b) => b,
        Err(_) => Bytes::from(vec![0; MAX_SIGN_IN_BYTES + 1]),
    };
    match sign_in_inner(&state, parts, &body).await {
        Ok(r) => secure(r, "no-store"),
        Err(e) => secure(e.into_response(), "no-store"),
    }
}

async fn sign_in_inner(
    state: &ApiState,
    mut parts: Parts,
    body: &[u8],
) -> Result<Response, ApiError> {
    if !same_origin(&parts.headers) {
        return Err(csrf_refused());
    }
    if body.len() > MAX_SIGN_IN_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_SIGN_IN_BYTES,
        });
    }
    let SignIn { token } = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            "body",
            format!("the body must be {{\"token\": \"…\"}}: {e}"),
        )
    })?;
    let token = token.trim();
    if !looks_like_jwt(token) {
        return Err(ApiError::bad_request(
            "invalid_token",
            "token",
            "sign in with a user token (`tally token create --user …`), not an API key",
        ));
    }
    let opened = open_for_token(state, &mut parts, token).await?;
    let mut response = (
        StatusCode::OK,
        axum::Json(SignedIn {
            user_id: opened.user.to_string(),
            session: opened.session.clone(),
        }),
    )
        .into_response();
    for cookie in opened.cookies {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    tracing::info!(user = %opened.user, session = %opened.session.session.id, "dashboard sign-in");
    Ok(response)
}

/// A session opened for a user token, and the cookies that carry it.
pub(crate) struct Opened {
    /// The user the token speaks for.
    pub(crate) user: tally_core::ids::UserId,
    /// The session opened.
    pub(crate) session: tally_api::sessions::SessionView,
    /// The session and CSRF cookies.
    pub(crate) cookies: Vec<HeaderValue>,
}

/// Checks `token` exactly as a bearer token on this request would be (`401` when it is
/// not valid; an API key is `400`; a session token `403 session_token`), opens a session
/// for its user and makes the session and CSRF cookies: the pasted-token sign-in and the
/// OIDC callback both end here.
pub(crate) async fn open_for_token(
    state: &ApiState,
    parts: &mut Parts,
    token: &str,
) -> Result<Opened, ApiError> {
    let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        ApiError::bad_request(
            "invalid_token",
            "token",
            "the token has characters no token has",
        )
    })?;
    // The API's own extractor, on this request (its peer address and forwarding headers
    // kept, for the session's record) carrying the token as a bearer header instead of any
    // cookie: the session admits exactly what the token would.
    parts.headers.remove(header::COOKIE);
    parts.headers.insert(header::AUTHORIZATION, value);
    let (user, context) = match Caller::from_request_parts(parts, state).await? {
        Caller::User(user, context) => (user, context),
        Caller::ApiKey(_) => {
            return Err(ApiError::bad_request(
                "invalid_token",
                "token",
                "an API key cannot sign in to the dashboard",
            ));
        }
    };
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let opened = tally_api::sessions::open_session(state, &user, &context, user_agent).await?;
    let session = opened.session;
    let max_age = (session.session.expires_at - session.session.created_at)
        .num_seconds()
        .max(0);
    let csrf = hex::encode(rand::random::<[u8; 16]>());
    let mut cookies = Vec::with_capacity(2);
    for cookie in [
        format!(
            "{SESSION_COOKIE}={}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age}",
            opened.token
        ),
        format!("{CSRF_COOKIE}={csrf}; Secure; SameSite=Strict; Path=/; Max-Age={max_age}"),
    ] {
        cookies.push(
            HeaderValue::from_str(&cookie)
                .map_err(|e| ApiError::Internal(format!("session cookie: {e}")))?,
        );
    }
    Ok(Opened {
        user,
        session,
        cookies,
    })
}

/// `POST /dashboard/sign-out`: revokes the cookie's session, so a copy of the cookie stops
/// working too, and clears both cookies (from this server's own page, else `403 csrf`). A
/// cookie whose session is gone already (revoked, expired, not a session token) is just
/// cleared. When the store cannot record the revocation the answer is `503` and the cookies
/// are kept: telling the user they signed out while a copied cookie still works would be a
/// lie, and keeping the cookie lets them try again.
async fn sign_out(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return secure(csrf_refused().into_response(), "no-store");
    }
    if let Some(token) = cookie(&headers, SESSION_COOKIE)
        && let Some(jwt) = &state.jwt
        && let Ok((user, facts)) = jwt.verify_facts(token, state.clock.now())
        && let Some((sid, _)) = facts.session
    {
        // Only the holder of the session's own token ends it this way.
        match tally_api::sessions::revoke(&state, &user, &sid).await {
            Ok(_) => tracing::info!(user = %user, session = %sid, "dashboard sign-out"),
            Err(e) => {
                tracing::warn!(error = %e, session = %sid, "sign-out could not revoke the session");
                // The route's own code and sentence (the generic 503 would hide it): the
                // page shows the user that they are still signed in.
                let refused = ApiError::UnavailableBecause {
                    code: "sign_out_failed",
                    message: "the session could not be ended; you are still signed in: try again"
                        .into(),
                    retry_after_secs: Some(1),
                };
                return secure(refused.into_response(), "no-store");
            }
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        let cookie = format!("{name}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    secure(response, "no-store")
}
