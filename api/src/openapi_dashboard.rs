//! The dashboard's routes in the OpenAPI document: `GET /dashboard`, its assets, sign-in
//! and sign-out, with their cookies and errors.
//!
//! The routes themselves live in `tally_dashboard` (which depends on this crate, so this
//! crate cannot read its route table); [`DASHBOARD_ROUTES`] spells them as the document
//! does, and `tally_dashboard`'s tests check that table against the dashboard's own
//! (`tally_dashboard::ROUTES`) and every status its handlers answer against [`statuses`].
//! `/openapi.json` lists them on every server that serves it: `tally serve` and the API
//! Lambda both merge the dashboard into the API's router.

use serde_json::{Value, json};

use crate::auth::{CSRF_COOKIE, SESSION_COOKIE};
use crate::http::openapi::{
    add_paths, add_schemas, add_security_schemes, json_response, operation_responses, schema_ref,
};

/// Every dashboard route (method, path as the document spells it: the assets' wildcard is
/// the one `{path}` parameter).
pub const DASHBOARD_ROUTES: &[(&str, &str)] = &[
    ("GET", "/dashboard"),
    ("GET", "/dashboard/assets/{path}"),
    ("POST", "/dashboard/sign-in"),
    ("GET", "/dashboard/sign-in/oidc"),
    ("GET", "/dashboard/callback"),
    ("POST", "/dashboard/sign-out"),
];

/// Largest sign-in body the dashboard accepts (`tally_dashboard::MAX_SIGN_IN_BYTES`, which
/// its tests hold equal to this): a token of an OIDC issuer is a few kilobytes at most.
pub const MAX_SIGN_IN_BYTES: usize = 16 * 1024;

/// The statuses each dashboard route answers with, by its documented path and method;
/// `None` for a route that is not the dashboard's.
pub fn statuses(method: &str, path: &str) -> Option<&'static [u16]> {
    let listed: &'static [u16] = match (method, path) {
        ("GET", "/dashboard") => &[200],
        ("GET", "/dashboard/assets/{path}") => &[200, 304, 404],
        ("POST", "/dashboard/sign-in") => &[200, 400, 401, 403, 409, 413, 429, 500, 503],
        ("GET", "/dashboard/sign-in/oidc") => &[303, 400, 401, 404, 500, 503],
        ("GET", "/dashboard/callback") => &[303, 400, 401, 403, 404, 409, 429, 500, 503],
        ("POST", "/dashboard/sign-out") => &[204, 403, 503],
        _ => return None,
    };
    Some(listed)
}

/// Adds the dashboard's paths, its cookie security scheme and its schemas to `doc`.
pub fn add(doc: &mut Value) {
    add_paths(
        doc,
        json!({
            "/dashboard": {"get": page()},
            "/dashboard/assets/{path}": {"get": asset()},
            "/dashboard/sign-in": {"post": sign_in()},
            "/dashboard/sign-in/oidc": {"get": code_flow_start()},
            "/dashboard/callback": {"get": code_flow_callback()},
            "/dashboard/sign-out": {"post": sign_out()},
        }),
    );
    add_security_schemes(
        doc,
        json!({"sessionCookie": {
            "type": "apiKey",
            "in": "cookie",
            "name": SESSION_COOKIE,
            "description": format!("The dashboard's session cookie (HTTP-only, `SameSite=Strict`, `Secure`), set by `POST /dashboard/sign-in`: a session token. The management API accepts it in place of a bearer token; a request that is not GET must then repeat the `{CSRF_COOKIE}` cookie in `X-CSRF-Token` and come from this server's own origin (else 403 `csrf`)."),
        }}),
    );
    add_schemas(
        doc,
        json!({
            "DashboardSignIn": {
                "type": "object",
                "required": ["token"],
                "additionalProperties": false,
                "properties": {
                    "token": {"type": "string", "description": "A user token: `tally token create --user …`, or an ID token of the configured OIDC issuer. Not an API key (400 `invalid_token`), not a session token (403 `session_token`)."},
                },
            },
            "DashboardSignedIn": {
                "type": "object",
                "required": ["user_id", "session"],
                "properties": {
                    "user_id": {"type": "string"},
                    "session": schema_ref("SessionView"),
                },
            },
        }),
    );
}

/// The `Origin` header sign-in and sign-out require.
fn origin() -> Value {
    json!({
        "name": "Origin",
        "in": "header",
        "required": true,
        "description": "Must name this server (the request's `Host`, either scheme): a browser sets it, and another site cannot forge it; anything else is 403 `csrf`.",
        "schema": {"type": "string"},
    })
}

/// `responses` of `statuses` (error bodies as the API's), with `own` (an object of status ->
/// response) in place of the shared ones it names.
fn responses(method: &str, path: &str, own: Value) -> Value {
    let codes = statuses(method, path).unwrap_or(&[]);
    Value::Object(operation_responses(codes, own))
}

/// A `303` answer of the code flow: `description`, and its `Location` and `Set-Cookie`
/// headers described as `location` and `set_cookie`.
fn redirect(description: &str, location: &str, set_cookie: &str) -> Value {
    let header = |d: &str| json!({"description": d, "schema": {"type": "string"}});
    json!({
        "description": description,
        "headers": {"Location": header(location), "Set-Cookie": header(set_cookie)},
    })
}

fn page() -> Value {
    let own = json!({
        "200": {"description": "The page (HTML; its script signs in, or shows the signed-in user's orgs).", "content": {"text/html": {"schema": {"type": "string"}}}},
    });
    json!({
        "operationId": "dashboardPage",
        "summary": "The tenant dashboard's page",
        "description": "Public: the page holds no data; its script calls this API with the session cookie. Every dashboard answer carries a strict `Content-Security-Policy` (this origin only, no inline script or style, no framing), `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`; the page is `no-store`.",
        "security": [],
        "responses": responses("GET", "/dashboard", own),
    })
}

fn asset() -> Value {
    let etag = json!({"description": "The asset's SHA-256 (a prefix, quoted).", "schema": {"type": "string"}});
    let own = json!({
        "200": {
            "description": "The asset (the page's script and stylesheet, and the vendored uPlot with its license), embedded in the binary.",
            "headers": {"ETag": etag},
            "content": {
                "text/javascript": {"schema": {"type": "string"}},
                "text/css": {"schema": {"type": "string"}},
                "text/plain": {"schema": {"type": "string"}},
            },
        },
        "304": {"description": "`If-None-Match` names the asset's current ETag.", "headers": {"ETag": etag}},
        "404": {"description": "No such asset.", "content": {"text/plain": {"schema": {"type": "string"}}}},
    });
    json!({
        "operationId": "dashboardAsset",
        "summary": "One of the dashboard's embedded assets",
        "description": "`Cache-Control: no-cache` with a strong ETag, so a new binary's assets are picked up at once and an unchanged one costs a 304.",
        "security": [],
        "parameters": [
            {"name": "path", "in": "path", "required": true, "description": "The asset's path under `/dashboard/assets/` (e.g. `app.js`, `vendor/uplot/uPlot.esm.js`).", "schema": {"type": "string"}},
            {"name": "If-None-Match", "in": "header", "required": false, "description": "ETags the client holds.", "schema": {"type": "string"}},
        ],
        "responses": responses("GET", "/dashboard/assets/{path}", own),
    })
}

fn sign_in() -> Value {
    let mut ok = json_response(
        "Signed in: a session is open (listed and revocable like any), and two cookies are set: the session token HTTP-only, and the CSRF value the page repeats in `X-CSRF-Token`.",
        "DashboardSignedIn",
    );
    ok["headers"] = json!({"Set-Cookie": {
        "description": format!("`{SESSION_COOKIE}=<session token>; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=<session lifetime>` and `{CSRF_COOKIE}=<random>; Secure; SameSite=Strict; Path=/; Max-Age=<same>` (two headers)."),
        "schema": {"type": "string"},
    }});
    let own = json!({
        "200": ok,
        "409": json_response(
            "`too_many_sessions`: the user holds 50 live sessions already.",
            "Error",
        ),
    });
    json!({
        "operationId": "dashboardSignIn",
        "summary": "Sign in to the dashboard: a user token for a session cookie",
        "description": format!("The token is checked exactly as a bearer token (401 when it is not valid; the org security policies' MFA and IP allowlist apply, 403), then a session is opened as `createSession` does. The body is at most {} bytes (413); a body that is not `{{\"token\": \"…\"}}` is 400 `invalid_body`, an API key 400 `invalid_token`.", MAX_SIGN_IN_BYTES),
        "security": [],
        "parameters": [origin()],
        "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref("DashboardSignIn")}}},
        "responses": responses("POST", "/dashboard/sign-in", own),
    })
}

/// `GET /dashboard/sign-in/oidc`: the start of the OIDC authorization-code flow with PKCE.
fn code_flow_start() -> Value {
    let own = json!({
        "303": redirect(
            "To the issuer's authorization endpoint, with `state`, `nonce` and an S256 `code_challenge`; the flow (state, nonce, verifier, redirect URI) is kept, signed, in a short-lived cookie.",
            "The issuer's authorization URL.",
            "`__Host-tally_oidc_flow=<signed flow>; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age=600` (`Lax`: it must come back with the issuer's cross-site redirect).",
        ),
        "404": json_response(
            "No OIDC client is configured on this server: it signs in with a pasted user token only.",
            "Error",
        ),
    });
    json!({
        "operationId": "dashboardOidcStart",
        "summary": "Sign in to the dashboard through the OIDC issuer (authorization code with PKCE)",
        "description": "400 `invalid_host` when no redirect URL is configured and the `Host` header is not a host name; 503 `identity_provider_unavailable` when the issuer's discovery document cannot be read.",
        "security": [],
        "responses": responses("GET", "/dashboard/sign-in/oidc", own),
    })
}

/// `GET /dashboard/callback`: the issuer's redirect back, which ends the code flow.
fn code_flow_callback() -> Value {
    let own = json!({
        "303": redirect(
            "Signed in: to `/dashboard`, with the session and CSRF cookies set as `POST /dashboard/sign-in` sets them, and the flow cookie cleared.",
            "`/dashboard`.",
            &format!("`{SESSION_COOKIE}=…`, `{CSRF_COOKIE}=…`, and the cleared flow cookie (one header each)."),
        ),
        "404": json_response("No OIDC client is configured on this server.", "Error"),
        "409": json_response(
            "`too_many_sessions`: the user holds 50 live sessions already.",
            "Error",
        ),
    });
    let query = |name: &str, description: &str| json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string", "maxLength": 2048}});
    json!({
        "operationId": "dashboardOidcCallback",
        "summary": "The OIDC issuer's redirect back to the dashboard",
        "description": "Every answer clears the flow cookie (a callback is tried once). Refusals, each 400 with its code: `oidc_flow_missing` (no flow cookie, or a forged or expired one), `oidc_provider_error` (the issuer sent `error`), `oidc_state_mismatch`, `oidc_code_refused` (the token endpoint refused the code, e.g. a reused one), `oidc_nonce_mismatch`, `invalid_callback` (a missing or oversized field). An ID token that does not verify is 401; the org security policies apply as on sign-in (403); `too_many_sessions` is 409.",
        "security": [],
        "parameters": [
            query("code", "The authorization code."),
            query("state", "The `state` sent to the issuer."),
            query("error", "The issuer's error code, when it refused."),
            query("error_description", "The issuer's explanation."),
        ],
        "responses": responses("GET", "/dashboard/callback", own),
    })
}

fn sign_out() -> Value {
    let own = json!({
        "204": {
            "description": "Signed out: the cookie's session is revoked (a copy of the cookie stops working too) and both cookies are cleared. A cookie whose session is gone already, or none, is just cleared.",
            "headers": {"Set-Cookie": {
                "description": format!("`{SESSION_COOKIE}=; …; Max-Age=0` and `{CSRF_COOKIE}=; …; Max-Age=0`."),
                "schema": {"type": "string"},
            }},
        },
        "503": json_response(
            "`sign_out_failed`: the store could not record the revocation; the session still works and the cookies are kept (no `Set-Cookie`), so the user may try again.",
            "Error",
        ),
    });
    json!({
        "operationId": "dashboardSignOut",
        "summary": "Sign out of the dashboard: revoke the cookie's session and clear the cookies",
        "security": [{"sessionCookie": []}, {}],
        "parameters": [origin()],
        "responses": responses("POST", "/dashboard/sign-out", own),
    })
}
