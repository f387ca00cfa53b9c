//! "Sign in with …": the OpenID Connect authorization-code flow with PKCE (`S256`), when the
//! server has an OIDC issuer with a client ([`tally_oidc::OidcVerifier::with_client`]).
//!
//! `GET /dashboard/sign-in/oidc` ([`start`]) draws a PKCE verifier, a `state` and a `nonce`,
//! keeps them in the [`FLOW_COOKIE`] (an HS256 token sealed with the server's JWT secret,
//! [`tally_api::jwt::JwtConfig::seal`], so it cannot be forged or altered, and it lives
//! [`FLOW_TTL_SECS`]) and sends the browser to the issuer's authorization endpoint. The
//! cookie is `HttpOnly; Secure; SameSite=Lax; Path=/` with the `__Host-` prefix: `Lax`, not
//! `Strict`, because the issuer's redirect back is a cross-site top-level navigation, which
//! must carry it.
//!
//! `GET /dashboard/callback` ([`callback`]) refuses, each with its own `400` code, a missing
//! or expired flow cookie (`oidc_flow_missing`), the issuer's `error` parameter
//! (`oidc_provider_error`), a `state` other than the cookie's (`oidc_state_mismatch`: a
//! forged or replayed callback), a code the token endpoint refuses (`oidc_code_refused`,
//! e.g. one already used) and an ID token whose `nonce` is not the cookie's
//! (`oidc_nonce_mismatch`: a token injected from another sign-in). Otherwise the ID token,
//! verified against the issuer's keys, is mapped to a Tally user exactly as a bearer token
//! is ([`crate::open_for_token`]), a session is opened, the session and CSRF cookies are
//! set and the browser goes to `/dashboard`. Every answer clears the flow cookie: a flow is
//! tried once.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tally_api::ApiState;
use tally_api::auth::cookie;
use tally_api::http::ApiError;
use tally_oidc::flow::{Authorize, FlowError, MAX_FLOW_VALUE_LEN, url_safe};

use crate::secure;

/// The cookie that carries the flow's verifier, `state`, `nonce` and redirect URI from the
/// start to the callback.
pub const FLOW_COOKIE: &str = "__Host-tally_oidc_flow";
/// How long a started sign-in may take at the issuer, in seconds.
pub const FLOW_TTL_SECS: i64 = 600;
/// The `aud` of the sealed flow state: no user token carries it, so neither can pass for
/// the other.
const FLOW_AUDIENCE: &str = "tally-dashboard-oidc-flow";
/// The longest callback query read, in bytes (a code, a state and an error description).
pub const MAX_CALLBACK_QUERY: usize = 8 * 1024;
/// The longest `Host` a redirect URI is derived from.
const MAX_HOST_LEN: usize = 255;

/// The flow's state, sealed in [`FLOW_COOKIE`].
#[derive(Debug, Serialize, Deserialize)]
struct Flow {
    aud: String,
    exp: i64,
    state: String,
    nonce: String,
    verifier: String,
    redirect_uri: String,
}

/// The callback's query: the issuer's code and state, or its error.
#[derive(Debug, Default, Deserialize)]
struct Callback {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// The issuer and its client, when the code flow is configured.
fn configured(
    state: &ApiState,
) -> Option<(&tally_oidc::OidcVerifier, &tally_oidc::flow::ClientSettings)> {
    let oidc = state.oidc.as_deref()?;
    Some((oidc, oidc.client()?))
}

/// The issuer's name for the "Sign in with …" button (its host), when the code flow is
/// configured.
pub fn provider_name(state: &ApiState) -> Option<String> {
    let (oidc, _) = configured(state)?;
    let issuer = oidc.issuer();
    let host = issuer
        .split_once("://")
        .map_or(issuer, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or(issuer);
    Some(host.to_owned())
}

/// The redirect URI: the configured one, else `/dashboard/callback` on the request's `Host`
/// (`http://` only on a loopback host, where browsers allow `Secure` cookies without TLS;
/// `https://` anywhere else). The issuer only redirects to URIs registered for the client,
/// so a forged `Host` gets nowhere.
fn redirect_uri(
    client: &tally_oidc::flow::ClientSettings,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    if let Some(url) = &client.redirect_url {
        return Ok(url.clone());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= MAX_HOST_LEN
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_host",
                "Host",
                "the Host header is missing or not a host name; set TALLY_OIDC_REDIRECT_URL",
            )
        })?;
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    let loopback = matches!(name, "127.0.0.1" | "localhost" | "[::1]");
    let scheme = if loopback { "http" } else { "https" };
    Ok(format!("{scheme}://{host}/dashboard/callback"))
}

fn not_configured() -> ApiError {
    ApiError::NotFound {
        message:
            "this server signs in with a pasted user token only (no OIDC client is configured)"
                .into(),
        field: None,
    }
}

fn flow_error(e: FlowError) -> ApiError {
    match e {
        FlowError::TokenEndpoint(detail) => ApiError::bad_request(
            "oidc_code_refused",
            "code",
            format!("the identity provider refused the sign-in code ({detail}); sign in again"),
        ),
        FlowError::Unavailable(detail) => {
            tracing::warn!(%detail, "OIDC issuer unreachable for the code flow");
            ApiError::UnavailableBecause {
                code: "identity_provider_unavailable",
                message: "the identity provider cannot be reached; retry shortly".into(),
                retry_after_secs: Some(5),
            }
        }
        FlowError::Input(what) => ApiError::bad_request(
            "invalid_callback",
            what,
            format!("{what} is empty or longer than {MAX_FLOW_VALUE_LEN} bytes"),
        ),
        FlowError::NoClient => not_configured(),
    }
}

/// The flow cookie set to `value` for [`FLOW_TTL_SECS`], or cleared (`None`).
fn flow_cookie(value: Option<&str>) -> Option<HeaderValue> {
    let (value, age) = match value {
        Some(v) => (v, FLOW_TTL_SECS),
        None => ("", 0),
    };
    HeaderValue::from_str(&format!(
        "{FLOW_COOKIE}={value}; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age={age}"
    ))
    .ok()
}

/// A `303 See Other` to `location` with these cookies.
fn see_other(
    location: &str,
    cookies: impl IntoIterator<Item = HeaderValue>,
) -> Result<Response, ApiError> {
    let location = HeaderValue::from_str(location)
        .map_err(|e| ApiError::Internal(format!("redirect location: {e}")))?;
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    for c in cookies {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(response)
}

/// `GET /dashboard/sign-in/oidc`: starts the code flow (`404` when none is configured).
pub(crate) async fn start(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let answer = start_inner(&state, &headers).await;
    secure(
        answer.unwrap_or_else(IntoResponse::into_response),
        "no-store",
    )
}

async fn start_inner(state: &ApiState, headers: &HeaderMap) -> Result<Response, ApiError> {
    let (oidc, client) = configured(state).ok_or_else(not_configured)?;
    let jwt = state.jwt.as_ref().ok_or_else(|| {
        ApiError::Unauthorized("user tokens are not configured on this server".into())
    })?;
    let now = state.clock.now();
    let flow = Flow {
        aud: FLOW_AUDIENCE.into(),
        exp: now.timestamp() + FLOW_TTL_SECS,
        state: url_safe(rand::random()),
        nonce: url_safe(rand::random()),
        verifier: url_safe(rand::random()),
        redirect_uri: redirect_uri(client, headers)?,
    };
    let url = oidc
        .authorization_url(
            now,
            &Authorize {
                redirect_uri: &flow.redirect_uri,
                state: &flow.state,
                nonce: &flow.nonce,
                verifier: &flow.verifier,
            },
        )
        .await
        .map_err(flow_error)?;
    let sealed = jwt
        .seal(&flow)
        .map_err(|e| ApiError::Internal(format!("sealing the sign-in flow: {e}")))?;
    let cookie = flow_cookie(Some(&sealed))
        .ok_or_else(|| ApiError::Internal("the flow cookie is not a header value".into()))?;
    see_other(&url, [cookie])
}

/// `GET /dashboard/callback`: finishes the code flow (see the module's doc for each
/// refusal); on success a `303` to `/dashboard` with the session and CSRF cookies.
pub(crate) async fn callback(
    State(state): State<ApiState>,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    let answer = callback_inner(&state, &mut parts).await;
    let mut response = answer.unwrap_or_else(IntoResponse::into_response);
    // Tried once, whatever the outcome.
    if let Some(clear) = flow_cookie(None) {
        response.headers_mut().append(header::SET_COOKIE, clear);
    }
    secure(response, "no-store")
}

/// The bound a callback field must fit, or a `400` naming it.
fn field<'a>(value: &'a Option<String>, name: &'static str) -> Result<&'a str, ApiError> {
    match value.as_deref() {
        Some(v) if !v.is_empty() && v.len() <= MAX_FLOW_VALUE_LEN => Ok(v),
        _ => Err(ApiError::bad_request(
            "invalid_callback",
            name,
            format!(
                "the callback's {name} is missing, empty or longer than {MAX_FLOW_VALUE_LEN} bytes"
            ),
        )),
    }
}

async fn callback_inner(
    state: &ApiState,
    parts: &mut axum::http::request::Parts,
) -> Result<Response, ApiError> {
    let (oidc, _) = configured(state).ok_or_else(not_configured)?;
    let jwt = state.jwt.as_ref().ok_or_else(|| {
        ApiError::Unauthorized("user tokens are not configured on this server".into())
    })?;
    if parts
        .uri
        .query()
        .is_some_and(|q| q.len() > MAX_CALLBACK_QUERY)
    {
        return Err(ApiError::bad_request(
            "invalid_callback",
            "query",
            format!("the callback's query is longer than {MAX_CALLBACK_QUERY} bytes"),
        ));
    }
    let Query(query) = Query::<Callback>::try_from_uri(&parts.uri).map_err(|e| {
        ApiError::bad_request(
            "invalid_callback",
            "query",
            format!("the callback's query: {e}"),
        )
    })?;
    let now = state.clock.now();
    let flow: Flow = cookie(&parts.headers, FLOW_COOKIE)
        .and_then(|sealed| jwt.open(sealed, FLOW_AUDIENCE, now))
        .ok_or_else(|| {
            ApiError::bad_request(
                "oidc_flow_missing",
                FLOW_COOKIE,
                format!(
                    "this sign-in was not started here, took longer than {} minutes, or was finished already; sign in again",
                    FLOW_TTL_SECS / 60
                ),
            )
        })?;
    if let Some(error) = &query.error {
        let mut said = format!(
            "{error}: {}",
            query.error_description.as_deref().unwrap_or("")
        );
        // The issuer's words, bounded and cut on a character boundary.
        let cut = said.char_indices().nth(300).map_or(said.len(), |(i, _)| i);
        said.truncate(cut);
        return Err(ApiError::bad_request(
            "oidc_provider_error",
            "error",
            format!("the identity provider did not sign you in ({said})"),
        ));
    }
    let sent_state = field(&query.state, "state")?;
    if !tally_api::auth::constant_time_eq(sent_state.as_bytes(), flow.state.as_bytes()) {
        return Err(ApiError::bad_request(
            "oidc_state_mismatch",
            "state",
            "the callback's state is not this browser's sign-in; sign in again",
        ));
    }
    let code = field(&query.code, "code")?;
    let id_token = oidc
        .exchange_code(now, code, &flow.verifier, &flow.redirect_uri)
        .await
        .map_err(flow_error)?;
    // The token's nonce must be the one this browser's flow sent: a token obtained for
    // another sign-in (injected with a stolen code) is refused. The full mapping below
    // verifies the token again, from the cached keys.
    let identity = oidc.verify(&id_token, now).await.map_err(|e| {
        tracing::info!(error = %e, "the code flow's ID token is not valid");
        ApiError::Unauthorized("the identity provider's ID token is not valid".into())
    })?;
    let nonce_ok = identity
        .nonce
        .as_deref()
        .is_some_and(|n| tally_api::auth::constant_time_eq(n.as_bytes(), flow.nonce.as_bytes()));
    if !nonce_ok {
        return Err(ApiError::bad_request(
            "oidc_nonce_mismatch",
            "id_token",
            "the ID token was not issued for this sign-in (its nonce differs); sign in again",
        ));
    }
    let opened = crate::open_for_token(state, parts, &id_token).await?;
    tracing::info!(user = %opened.user, session = %opened.session.session.id, "dashboard sign-in through OIDC");
    see_other("/dashboard", opened.cookies)
}
