//! An OpenID Connect issuer double for the dashboard's code-flow tests: an axum server on
//! an ephemeral port with discovery, an authorization endpoint that signs the user in at
//! once (redirecting straight back with a code), a token endpoint that checks the code
//! (single use), the PKCE verifier, the client and the redirect URI, and a JWKS. ID tokens
//! are RS256, signed with the throwaway key of `api/tests/testdata/` (the API's own OIDC
//! tests' issuer key). Knobs plant faults: an ID token carrying another nonce, a token
//! endpoint that fails, an authorization endpoint that answers with an error.
//!
//! Shared by `dashboard/tests/code_flow.rs` and the browser test
//! (`tally/tests/e2e_dashboard.rs`) through `#[path]`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const KEY: &[u8] = include_bytes!("../../../api/tests/testdata/oidc-key1.pem");
const JWK: &str = include_str!("../../../api/tests/testdata/oidc-jwk1.json");
const KID: &str = "test-key-1";

/// What one authorization request left for the token endpoint.
#[derive(Debug, Clone)]
struct Grant {
    nonce: String,
    challenge: String,
    redirect_uri: String,
    client_id: String,
}

/// The faults a test can plant.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Sign ID tokens with this nonce instead of the one the request carried.
    pub nonce: Option<String>,
    /// The authorization endpoint redirects back with `error=access_denied`.
    pub deny: bool,
    /// The token endpoint answers `500`.
    pub token_endpoint_down: bool,
}

#[derive(Debug)]
struct Inner {
    url: String,
    client_id: String,
    email: String,
    /// The `iat` of the tokens it signs (Unix seconds); `exp` is an hour later.
    now: i64,
    grants: HashMap<String, Grant>,
    next: u64,
    faults: Faults,
    /// Codes exchanged successfully so far.
    exchanged: usize,
}

/// A running issuer double.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// Its URL (the `iss` of its tokens), `http://127.0.0.1:PORT`.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl Issuer {
    /// Starts an issuer for `client_id` whose every sign-in is `email` (verified), signing
    /// tokens issued at `now` (Unix seconds).
    pub async fn start(client_id: &str, email: &str, now: i64) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner {
            url: url.clone(),
            client_id: client_id.to_owned(),
            email: email.to_owned(),
            now,
            grants: HashMap::new(),
            next: 0,
            faults: Faults::default(),
            exchanged: 0,
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(keys))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(inner.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Issuer { url, inner }
    }

    /// Plants `faults` (replacing any planted before).
    pub fn plant(&self, faults: Faults) {
        self.inner.lock().unwrap().faults = faults;
    }

    /// How many codes were exchanged for tokens.
    pub fn exchanged(&self) -> usize {
        self.inner.lock().unwrap().exchanged
    }

    /// What the authorization endpoint answers for `authorize_url` (the dashboard's
    /// redirect), without HTTP: the URL it sends the browser back to. For in-process tests.
    pub fn authorize_url(&self, authorize_url: &str) -> String {
        let query = authorize_url.split_once('?').map_or("", |(_, q)| q);
        let params = parse(query);
        match sign_in(&self.inner, &params) {
            Ok(location) => location,
            Err((status, why)) => panic!("the issuer refused the authorization: {status} {why}"),
        }
    }
}

fn parse(query: &str) -> HashMap<String, String> {
    let uri: axum::http::Uri = format!("/?{query}").parse().unwrap();
    Query::<HashMap<String, String>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

async fn discovery(State(inner): State<Arc<Mutex<Inner>>>) -> Response {
    let url = inner.lock().unwrap().url.clone();
    axum::Json(json!({
        "issuer": url,
        "jwks_uri": format!("{url}/keys"),
        "authorization_endpoint": format!("{url}/authorize"),
        "token_endpoint": format!("{url}/token"),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

async fn keys() -> Response {
    let jwk: Value = serde_json::from_str(JWK).unwrap();
    axum::Json(json!({ "keys": [jwk] })).into_response()
}

/// Signs the user in at once and answers where to send the browser back.
fn sign_in(
    inner: &Mutex<Inner>,
    q: &HashMap<String, String>,
) -> Result<String, (StatusCode, String)> {
    let mut inner = inner.lock().unwrap();
    let need = |k: &str| {
        q.get(k)
            .cloned()
            .ok_or((StatusCode::BAD_REQUEST, format!("no {k}")))
    };
    let redirect_uri = need("redirect_uri")?;
    let state = need("state")?;
    if q.get("response_type").map(String::as_str) != Some("code")
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
        || q.get("client_id") != Some(&inner.client_id)
    {
        return Err((StatusCode::BAD_REQUEST, format!("bad request {q:?}")));
    }
    if inner.faults.deny {
        return Ok(format!(
            "{redirect_uri}?error=access_denied&error_description=User+cancelled&state={state}"
        ));
    }
    inner.next += 1;
    let code = format!("code-{}", inner.next);
    let grant = Grant {
        nonce: need("nonce")?,
        challenge: need("code_challenge")?,
        redirect_uri: redirect_uri.clone(),
        client_id: inner.client_id.clone(),
    };
    inner.grants.insert(code.clone(), grant);
    Ok(format!("{redirect_uri}?code={code}&state={state}"))
}

async fn authorize(
    State(inner): State<Arc<Mutex<Inner>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match sign_in(&inner, &q) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(refused) => refused.into_response(),
    }
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn token(State(inner): State<Arc<Mutex<Inner>>>, body: String) -> Response {
    let form = parse(&body);
    let mut inner = inner.lock().unwrap();
    if inner.faults.token_endpoint_down {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error("unsupported_grant_type", "only authorization_code");
    }
    // A code is good once: removed whatever the outcome.
    let Some(grant) = form.get("code").and_then(|c| inner.grants.remove(c)) else {
        return oauth_error("invalid_grant", "the code is unknown or was used already");
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if tally_oidc::flow::pkce_challenge(&verifier) != grant.challenge {
        return oauth_error("invalid_grant", "the code_verifier does not match");
    }
    if form.get("redirect_uri") != Some(&grant.redirect_uri)
        || form.get("client_id") != Some(&grant.client_id)
    {
        return oauth_error("invalid_grant", "redirect_uri or client_id differ");
    }
    let nonce = inner.faults.nonce.clone().unwrap_or(grant.nonce);
    let claims = json!({
        "iss": inner.url,
        "aud": inner.client_id,
        "sub": "issuer-user-1",
        "email": inner.email,
        "email_verified": true,
        "nonce": nonce,
        "iat": inner.now,
        "exp": inner.now + 3600,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.into());
    let id_token =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(KEY).unwrap()).unwrap();
    inner.exchanged += 1;
    axum::Json(json!({
        "id_token": id_token,
        "access_token": "opaque",
        "token_type": "Bearer",
        "expires_in": 3600,
    }))
    .into_response()
}
