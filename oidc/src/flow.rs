//! The OpenID Connect authorization-code flow with PKCE (RFC 7636, `S256`), for the
//! dashboard's "Sign in with …" button: the issuer's `authorization_endpoint` and
//! `token_endpoint` (from discovery, cached like the keys), the authorization URL with
//! `state`, `nonce` and `code_challenge`, and the exchange of a code for the ID token at the
//! token endpoint (with the verifier, and the client secret by HTTP Basic when the client is
//! confidential).
//!
//! The flow's state (verifier, `state`, `nonce`) is kept by the caller (the dashboard keeps
//! it in a signed cookie); this module only talks to the issuer. The ID token it hands back
//! is verified like any other token ([`crate::OidcVerifier::verify`], whose
//! [`crate::Identity::nonce`] the caller compares with its own).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hyper::Uri;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{
    DiscoveryDoc, JWKS_TTL_SECS, MAX_SETTING_LEN, OidcConfigError, OidcVerifier, parse_url,
};

/// The longest `state`, `nonce`, code verifier or authorization code handled, in bytes
/// (RFC 7636 caps the verifier at 128 characters; codes are opaque but short).
pub const MAX_FLOW_VALUE_LEN: usize = 1024;
/// The shortest PKCE code verifier RFC 7636 allows.
pub const MIN_VERIFIER_LEN: usize = 43;

/// The OAuth client the dashboard signs people in as.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// The client id registered at the issuer (Cognito: the user-pool client id).
    pub client_id: String,
    /// The client secret of a confidential client; `None` for a public client (PKCE alone).
    pub client_secret: Option<String>,
    /// The callback URL registered at the issuer (`https://HOST/dashboard/callback`); when
    /// unset the dashboard derives it from the request's `Host`.
    pub redirect_url: Option<String>,
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("ClientSettings")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "…"))
            .field("redirect_url", &self.redirect_url)
            .finish()
    }
}

impl ClientSettings {
    /// Checks the lengths and the redirect URL (start-up refuses bad settings).
    pub fn check(&self) -> Result<(), OidcConfigError> {
        let fits = |s: &str| !s.is_empty() && s.len() <= MAX_SETTING_LEN;
        if !fits(&self.client_id) {
            return Err(OidcConfigError::Client("the OIDC client id"));
        }
        if self.client_secret.as_deref().is_some_and(|s| !fits(s)) {
            return Err(OidcConfigError::Client("the OIDC client secret"));
        }
        if let Some(url) = &self.redirect_url {
            parse_url(url, "the OIDC redirect URL")?;
        }
        Ok(())
    }
}

/// Why a step of the code flow with the issuer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// `503`: the discovery document cannot be fetched or lacks the endpoints, or the
    /// token endpoint cannot be reached.
    #[error("the identity provider cannot be reached: {0}")]
    Unavailable(String),
    /// The token endpoint refused the code (e.g. `invalid_grant` for a used or expired
    /// code) or answered something that is not a token response; the detail says which, in
    /// the issuer's words when it gave any (the dashboard answers `400 oidc_code_refused`).
    #[error("the identity provider's token endpoint refused the code: {0}")]
    TokenEndpoint(String),
    /// A value the caller passed is empty or longer than [`MAX_FLOW_VALUE_LEN`].
    #[error("{0} is empty or longer than {MAX_FLOW_VALUE_LEN} bytes")]
    Input(&'static str),
    /// No client is configured ([`OidcVerifier::with_client`]).
    #[error("no OIDC client is configured")]
    NoClient,
}

/// The issuer's endpoints the code flow uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Where the browser is sent to sign in.
    pub authorization: String,
    /// Where the code is exchanged.
    pub token: String,
    /// When they were fetched (they are kept [`JWKS_TTL_SECS`]).
    pub fetched_at: DateTime<Utc>,
}

/// Seconds a failed discovery fetch is remembered: sign-ins in that window fail at once with
/// the same reason instead of each waiting out its own fetch (up to the client's timeout)
/// behind the cache's lock while the issuer is down.
pub const DISCOVERY_RETRY_SECS: i64 = 5;

/// Most bytes of an issuer's own error text kept in a refusal.
const MAX_ISSUER_TEXT: usize = 300;

/// `text` cut to at most `max` bytes on a character boundary (the text is the issuer's, and
/// `String::truncate` inside a character panics).
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let end = (0..=max)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(end);
    }
    text
}

/// The endpoints found by discovery, or the last failure to find them.
#[derive(Debug, Default)]
pub(crate) struct EndpointCache {
    found: Option<Endpoints>,
    failed: Option<(DateTime<Utc>, String)>,
}

/// What the authorization URL carries besides the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorize<'a> {
    /// Where the issuer sends the browser back.
    pub redirect_uri: &'a str,
    /// The anti-forgery value the callback must bring back unchanged.
    pub state: &'a str,
    /// The value the ID token must carry in `nonce`.
    pub nonce: &'a str,
    /// The PKCE verifier ([`pkce_challenge`] of it is sent).
    pub verifier: &'a str,
}

/// The `S256` code challenge of a PKCE verifier: `BASE64URL(SHA256(verifier))`.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A random URL-safe value of 32 bytes of entropy (43 characters): a PKCE verifier, a
/// `state` or a `nonce`, from the bytes the caller drew.
pub fn url_safe(random: [u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(random)
}

fn bounded(value: &str, what: &'static str) -> Result<(), FlowError> {
    if value.is_empty() || value.len() > MAX_FLOW_VALUE_LEN {
        return Err(FlowError::Input(what));
    }
    Ok(())
}

/// The part of the discovery document the code flow reads.
#[derive(Debug, Deserialize)]
struct FlowDiscovery {
    issuer: String,
    #[serde(default)]
    authorization_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint: Option<String>,
}

impl DiscoveryDoc for FlowDiscovery {
    fn issuer(&self) -> &str {
        &self.issuer
    }
}

/// The part of a token response read.
#[derive(Debug, Deserialize)]
struct TokenResponse {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

impl OidcVerifier {
    /// The issuer's authorization and token endpoints, from discovery, fetched at most once
    /// per [`JWKS_TTL_SECS`] (an issuer moves its endpoints as rarely as its keys).
    pub async fn endpoints(&self, now: DateTime<Utc>) -> Result<Endpoints, FlowError> {
        let mut cached = self.endpoints.lock().await;
        if let Some(e) = cached.found.as_ref()
            && now >= e.fetched_at
            && (now - e.fetched_at).num_seconds() < JWKS_TTL_SECS
        {
            return Ok(e.clone());
        }
        if let Some((at, reason)) = cached.failed.as_ref()
            && now >= *at
            && (now - *at).num_seconds() < DISCOVERY_RETRY_SECS
        {
            return Err(FlowError::Unavailable(reason.clone()));
        }
        match self.discover(now).await {
            Ok(found) => {
                cached.found = Some(found.clone());
                cached.failed = None;
                Ok(found)
            }
            Err(e) => {
                let reason = match &e {
                    FlowError::Unavailable(m) => m.clone(),
                    other => other.to_string(),
                };
                cached.failed = Some((now, reason));
                Err(e)
            }
        }
    }

    /// Fetches and checks the discovery document's endpoints.
    async fn discover(&self, now: DateTime<Utc>) -> Result<Endpoints, FlowError> {
        let body = self
            .get(&self.discovery_url)
            .await
            .map_err(|e| FlowError::Unavailable(e.to_string()))?;
        let doc: FlowDiscovery = self.read_discovery(&body).map_err(FlowError::Unavailable)?;
        let endpoint = |v: Option<String>, name: &'static str| {
            let v = v.ok_or_else(|| {
                FlowError::Unavailable(format!("the discovery document has no {name}"))
            })?;
            parse_url(&v, name)
                .map_err(|_| FlowError::Unavailable(format!("{name} {v:?} is not a URL")))?;
            Ok::<_, FlowError>(v)
        };
        Ok(Endpoints {
            authorization: endpoint(doc.authorization_endpoint, "authorization_endpoint")?,
            token: endpoint(doc.token_endpoint, "token_endpoint")?,
            fetched_at: now,
        })
    }

    /// The URL to send the browser to: the issuer's authorization endpoint with
    /// `response_type=code`, `scope=openid email`, the client id, the redirect URI, `state`,
    /// `nonce` and the `S256` challenge of the verifier.
    pub async fn authorization_url(
        &self,
        now: DateTime<Utc>,
        request: &Authorize<'_>,
    ) -> Result<String, FlowError> {
        let client = self.client.as_deref().ok_or(FlowError::NoClient)?;
        bounded(request.redirect_uri, "redirect_uri")?;
        bounded(request.state, "state")?;
        bounded(request.nonce, "nonce")?;
        bounded(request.verifier, "code_verifier")?;
        let endpoints = self.endpoints(now).await?;
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", request.redirect_uri)
            .append_pair("scope", "openid email")
            .append_pair("state", request.state)
            .append_pair("nonce", request.nonce)
            .append_pair("code_challenge", &pkce_challenge(request.verifier))
            .append_pair("code_challenge_method", "S256")
            .finish();
        let separator = if endpoints.authorization.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(format!("{}{separator}{query}", endpoints.authorization))
    }

    /// Exchanges `code` at the issuer's token endpoint (with the PKCE `verifier` and the
    /// `redirect_uri` the authorization request named) for the ID token, not yet verified:
    /// the caller verifies it ([`OidcVerifier::verify`]) and checks its nonce.
    pub async fn exchange_code(
        &self,
        now: DateTime<Utc>,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<String, FlowError> {
        let client = self.client.as_deref().ok_or(FlowError::NoClient)?;
        bounded(code, "code")?;
        bounded(verifier, "code_verifier")?;
        bounded(redirect_uri, "redirect_uri")?;
        let endpoints = self.endpoints(now).await?;
        let url: Uri = endpoints
            .token
            .parse()
            .map_err(|_| FlowError::Unavailable("the token endpoint is not a URL".into()))?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("client_id", &client.client_id)
            .append_pair("code_verifier", verifier)
            .finish();
        // RFC 6749 §2.3.1: the client id and secret, form-encoded, as Basic credentials.
        let basic = client.client_secret.as_ref().map(|secret| {
            let encode =
                |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            format!(
                "Basic {}",
                STANDARD.encode(format!("{}:{}", encode(&client.client_id), encode(secret)))
            )
        });
        let (status, body) = self
            .post_form(&url, Bytes::from(form), basic.as_deref())
            .await
            .map_err(FlowError::Unavailable)?;
        let parsed: Option<TokenResponse> = serde_json::from_slice(&body).ok();
        if status != hyper::StatusCode::OK {
            let detail = parsed
                .and_then(|r| {
                    r.error.map(|e| {
                        cut(
                            format!("{e}: {}", r.error_description.unwrap_or_default()),
                            MAX_ISSUER_TEXT,
                        )
                    })
                })
                .unwrap_or_else(|| format!("it answered {status}"));
            return Err(FlowError::TokenEndpoint(detail));
        }
        match parsed.and_then(|r| r.id_token) {
            Some(token) if !token.is_empty() && token.len() <= crate::MAX_TOKEN_BYTES => Ok(token),
            _ => Err(FlowError::TokenEndpoint(
                "the answer carries no usable id_token".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s256_challenge_is_rfc_7636s_example() {
        // RFC 7636 appendix B: this verifier's S256 challenge.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(url_safe([0; 32]).len(), MIN_VERIFIER_LEN);
    }

    #[test]
    fn an_issuers_text_is_cut_on_a_character_boundary() {
        // 299 ASCII bytes then a 3-byte character across the 300-byte bound.
        let text = format!("{}€€", "a".repeat(299));
        assert_eq!(cut(text, MAX_ISSUER_TEXT), "a".repeat(299));
        assert_eq!(cut("short".into(), MAX_ISSUER_TEXT), "short");
        let exact = "é".repeat(150);
        assert_eq!(cut(exact.clone(), MAX_ISSUER_TEXT), exact);
    }

    /// A discovery fetch that failed is remembered for [`DISCOVERY_RETRY_SECS`]: sign-ins in
    /// that window fail at once, without another fetch; after it, the issuer is asked again.
    #[tokio::test]
    async fn a_failed_discovery_is_not_fetched_again_within_its_retry_window() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            // Every connection is closed unanswered: the issuer is down.
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(socket);
            }
        });
        let verifier = crate::OidcVerifier::new(crate::OidcSettings {
            issuer: format!("http://127.0.0.1:{port}"),
            audience: "client".into(),
            jwks_url: None,
        })
        .unwrap();
        let t0 = DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let first = verifier.endpoints(t0).await.unwrap_err();
        let fetches = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert!(fetches >= 1, "the first sign-in asks the issuer");
        let again = verifier
            .endpoints(t0 + chrono::Duration::seconds(DISCOVERY_RETRY_SECS - 1))
            .await
            .unwrap_err();
        assert_eq!(again, first, "the same reason, remembered");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), fetches);
        verifier
            .endpoints(t0 + chrono::Duration::seconds(DISCOVERY_RETRY_SECS))
            .await
            .unwrap_err();
        assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) > fetches);
    }

    #[test]
    fn client_settings_are_checked() {
        let ok = ClientSettings {
            client_id: "client".into(),
            client_secret: None,
            redirect_url: Some("https://tally.example/dashboard/callback".into()),
        };
        assert!(ok.check().is_ok());
        // Each setting made bad in turn, and the error naming it.
        let no_id = ClientSettings {
            client_id: String::new(),
            ..ok.clone()
        };
        let bad_url = ClientSettings {
            redirect_url: Some("/dashboard/callback".into()),
            ..ok.clone()
        };
        let empty_secret = ClientSettings {
            client_secret: Some(String::new()),
            ..ok.clone()
        };
        for (bad, want) in [
            (no_id, OidcConfigError::Client("the OIDC client id")),
            (bad_url, OidcConfigError::Url("the OIDC redirect URL")),
            (
                empty_secret,
                OidcConfigError::Client("the OIDC client secret"),
            ),
        ] {
            assert_eq!(bad.check(), Err(want), "{bad:?}");
        }
        let secret = ClientSettings {
            client_secret: Some("s3cret-value".into()),
            ..ok
        };
        assert!(
            !format!("{secret:?}").contains("s3cret-value"),
            "{secret:?}"
        );
    }
}
