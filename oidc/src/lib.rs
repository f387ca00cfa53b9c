//! Verification of OpenID Connect tokens from one configured issuer (Amazon Cognito by
//! default, or any OIDC provider), for the management API's users.
//!
//! [`OidcVerifier`] finds the issuer's signing keys through discovery
//! (`{issuer}/.well-known/openid-configuration` → `jwks_uri`) or a configured JWKS URL,
//! fetches them over HTTP(S) with the same small hyper/rustls client the Stripe and
//! webhook adapters use, and keeps them for [`JWKS_TTL_SECS`]. A token naming a key id
//! (`kid`) the cached set lacks makes it fetch again (the issuer rotated its keys), at most
//! once per [`REFETCH_MIN_SECS`] so a stream of forged `kid`s cannot make Tally hammer the
//! issuer. Only RS256 and ES256 are accepted, and the algorithm must match the key's type
//! (and its `alg`, when the key names one): an `alg: none` or HS256 token is refused
//! whatever `kid` it names, so a public key is never used as an HMAC secret.
//!
//! `iss` and `aud` must be the configured ones; `exp`, `nbf` and `iat` are checked against
//! the caller's clock (the `now` passed in, so tests need no sleeping) with
//! [`LEEWAY_SECS`] of leeway. What the token says about its user comes back as an
//! [`Identity`]; mapping it to a Tally user is the API's business.
//!
//! With a client configured ([`OidcVerifier::with_client`]), [`flow`] also drives the
//! authorization-code flow with PKCE for the dashboard's "Sign in with …" button.
//!
//! This crate does the I/O (the fetches) so that the API crate stays written against ports.

pub mod flow;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::Mutex;

/// How long a fetched key set is used before it is fetched again.
pub const JWKS_TTL_SECS: i64 = 3600;
/// The shortest pause between two fetches of the key set (an unknown `kid` does not
/// refetch sooner).
pub const REFETCH_MIN_SECS: i64 = 30;
/// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: i64 = 30;
/// The longest token looked at, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The largest discovery or JWKS document read, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The most keys kept from one JWKS.
pub const MAX_KEYS: usize = 64;
/// The longest issuer, audience or URL accepted in the configuration.
pub const MAX_SETTING_LEN: usize = 2048;
/// How long one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Which issuer to trust, and for which audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// The issuer, exactly as tokens carry it in `iss` (e.g.
    /// `https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbC`).
    pub issuer: String,
    /// The `aud` tokens must carry (Cognito: the user-pool client id).
    pub audience: String,
    /// Where the keys are, when not found by discovery under the issuer.
    pub jwks_url: Option<String>,
}

/// Why the settings were refused (at start-up).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcConfigError {
    /// A URL setting is not an `http(s)://host/...` URL; names the setting.
    #[error("{0} must be an http:// or https:// URL of at most {MAX_SETTING_LEN} characters")]
    Url(&'static str),
    /// The audience is empty or too long.
    #[error("the OIDC audience must be 1 to {MAX_SETTING_LEN} characters")]
    Audience,
    /// A client setting (named) is empty or too long.
    #[error("{0} must be 1 to {MAX_SETTING_LEN} characters")]
    Client(&'static str),
    /// The code flow's client id is not the audience tokens are checked against: the ID
    /// token an issuer returns to a client names that client in `aud`, so every sign-in
    /// through the flow would be refused.
    #[error(
        "the OIDC client id ({client:?}) must equal the OIDC audience ({audience:?}): the ID token the sign-in flow receives names its client as its audience"
    )]
    ClientAudience {
        /// The configured client id.
        client: String,
        /// The configured audience.
        audience: String,
    },
}

/// Why a token was refused. Every variant but [`OidcError::Unavailable`] is the caller's
/// `401`; `Unavailable` is a `503` (the issuer's keys could not be fetched).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// `401`: malformed, badly signed, or with the wrong `iss`/`aud`/claims. The detail is
    /// for logs.
    #[error("the bearer token is not valid: {0}")]
    Invalid(String),
    /// `401`: the algorithm is not RS256/ES256, or does not fit the key it names.
    #[error("the bearer token's algorithm is not accepted: {0}")]
    Algorithm(String),
    /// `401`: no key of the issuer has this `kid`, even after fetching the keys again.
    #[error("the bearer token names a key the issuer does not publish: {0:?}")]
    UnknownKey(String),
    /// `401`: `exp` has passed.
    #[error("the bearer token has expired")]
    Expired,
    /// `401`: `nbf` or `iat` is in the future.
    #[error("the bearer token is not valid yet")]
    NotYetValid,
    /// `503`: the issuer's keys could not be fetched and none are cached.
    #[error("the identity provider's keys cannot be fetched: {0}")]
    Unavailable(String),
}

/// Who a verified token speaks for, as the issuer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The issuer (`iss`).
    pub issuer: String,
    /// The issuer's id of the user (`sub`).
    pub subject: String,
    /// The `email` claim, lowercased, if any.
    pub email: Option<String>,
    /// Whether the issuer vouches for the email (`email_verified` true, as a JSON boolean
    /// or, as Cognito writes its attributes, the string `"true"`).
    pub email_verified: bool,
    /// The `amr` claim (how the user authenticated, e.g. Cognito's `["pwd", "otp", "mfa"]`),
    /// empty when absent; a single string is read as a one-value list.
    pub amr: Vec<String>,
    /// The `nonce` claim, when the token carries one of at most
    /// [`flow::MAX_FLOW_VALUE_LEN`] bytes: the code flow compares it with the nonce it sent.
    pub nonce: Option<String>,
}

/// The claims read from a token (beyond `iss`/`aud`, which `jsonwebtoken` checks).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(default)]
    amr: Option<serde_json::Value>,
    #[serde(default)]
    nonce: Option<String>,
}

/// The part of an OpenID provider's discovery document Tally reads.
#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl DiscoveryDoc for Discovery {
    fn issuer(&self) -> &str {
        &self.issuer
    }
}

/// The part of the issuer's discovery document one caller reads; every such part holds the
/// issuer it names, which must be the configured one.
trait DiscoveryDoc: serde::de::DeserializeOwned {
    fn issuer(&self) -> &str;
}

/// The cached keys and when they were fetched.
#[derive(Debug, Default)]
struct Cache {
    /// The JWKS URL, once known (configured, or from discovery).
    jwks_url: Option<Uri>,
    keys: Vec<Jwk>,
    fetched_at: Option<DateTime<Utc>>,
    /// The last fetch tried, successful or not: the refetch rate limit counts from it.
    last_attempt: Option<DateTime<Utc>>,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Verifies tokens of one OIDC issuer against its published keys.
#[derive(Clone)]
pub struct OidcVerifier {
    settings: Arc<OidcSettings>,
    discovery_url: Uri,
    client_http: HttpClient,
    cache: Arc<Mutex<Cache>>,
    /// The code flow's client, when the dashboard signs people in through the issuer.
    client: Option<Arc<flow::ClientSettings>>,
    /// The issuer's authorization and token endpoints, once discovered.
    endpoints: Arc<Mutex<flow::EndpointCache>>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.settings.issuer)
            .field("audience", &self.settings.audience)
            .finish_non_exhaustive()
    }
}

pub(crate) fn parse_url(value: &str, setting: &'static str) -> Result<Uri, OidcConfigError> {
    if value.len() > MAX_SETTING_LEN {
        return Err(OidcConfigError::Url(setting));
    }
    let uri: Uri = value.parse().map_err(|_| OidcConfigError::Url(setting))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(OidcConfigError::Url(setting));
    }
    Ok(uri)
}

/// The `iss` a token claims, read without verifying it: only for choosing which verifier
/// to hand the token to (the chosen one verifies everything).
pub fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(token)
        .ok()
        .and_then(|c| c.iss)
}

impl OidcVerifier {
    /// Checks the settings and builds the HTTP client; fetches nothing yet (the first
    /// token does).
    pub fn new(settings: OidcSettings) -> Result<Self, OidcConfigError> {
        parse_url(&settings.issuer, "the OIDC issuer")?;
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            settings.issuer.trim_end_matches('/')
        );
        let discovery_url = parse_url(&discovery, "the OIDC issuer")?;
        let jwks_url = settings
            .jwks_url
            .as_deref()
            .map(|u| parse_url(u, "the OIDC JWKS URL"))
            .transpose()?;
        if settings.audience.is_empty() || settings.audience.len() > MAX_SETTING_LEN {
            return Err(OidcConfigError::Audience);
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(OidcVerifier {
            settings: Arc::new(settings),
            discovery_url,
            client_http: Client::builder(TokioExecutor::new()).build(https),
            cache: Arc::new(Mutex::new(Cache {
                jwks_url,
                ..Cache::default()
            })),
            client: None,
            endpoints: Arc::new(Mutex::new(flow::EndpointCache::default())),
        })
    }

    /// Adds the OAuth client the dashboard's code flow signs people in as (checked:
    /// [`flow::ClientSettings::check`]).
    pub fn with_client(mut self, client: flow::ClientSettings) -> Result<Self, OidcConfigError> {
        client.check()?;
        if client.client_id != self.settings.audience {
            return Err(OidcConfigError::ClientAudience {
                client: client.client_id,
                audience: self.settings.audience.clone(),
            });
        }
        self.client = Some(Arc::new(client));
        Ok(self)
    }

    /// The code flow's client, when one is configured.
    pub fn client(&self) -> Option<&flow::ClientSettings> {
        self.client.as_deref()
    }

    /// The configured issuer (what `iss` must be).
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// Verifies `token` at `now` and says whom it is for.
    pub async fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Identity, OidcError> {
        let outcome = self.verify_inner(token, now).await;
        let label = match &outcome {
            Ok(_) => "accepted",
            Err(OidcError::Unavailable(_)) => "unavailable",
            Err(_) => "refused",
        };
        metrics::counter!("tally_oidc_tokens_total", "outcome" => label).increment(1);
        if let Err(e) = &outcome {
            tracing::debug!(error = %e, "OIDC token refused");
        }
        outcome
    }

    async fn verify_inner(&self, token: &str, now: DateTime<Utc>) -> Result<Identity, OidcError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(OidcError::Invalid(format!(
                "longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| OidcError::Invalid(e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(OidcError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or_else(|| OidcError::Invalid("no usable kid in the header".into()))?;
        let jwk = self.key(&kid, now).await?;
        let key = decoding_key(&jwk, header.alg)?;

        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        // Time is checked below against the caller's clock, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = ["exp", "iss", "aud", "sub"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| OidcError::Invalid(e.to_string()))?;
        let c = data.claims;
        let now = now.timestamp();
        if c.exp.saturating_add(LEEWAY_SECS) <= now {
            return Err(OidcError::Expired);
        }
        let ahead = |t: Option<i64>| t.is_some_and(|t| t.saturating_sub(LEEWAY_SECS) > now);
        if ahead(c.nbf) || ahead(c.iat) {
            return Err(OidcError::NotYetValid);
        }
        if c.sub.is_empty() || c.sub.len() > 256 {
            return Err(OidcError::Invalid("sub is empty or longer than 256".into()));
        }
        let email_verified = matches!(c.email_verified, Some(serde_json::Value::Bool(true)))
            || matches!(&c.email_verified, Some(serde_json::Value::String(s)) if s == "true");
        Ok(Identity {
            issuer: self.settings.issuer.clone(),
            subject: c.sub,
            email: c.email.filter(|e| e.len() <= 320).map(|e| e.to_lowercase()),
            email_verified,
            amr: match c.amr {
                Some(serde_json::Value::Array(values)) => values
                    .into_iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                Some(serde_json::Value::String(one)) => vec![one],
                _ => Vec::new(),
            },
            nonce: c
                .nonce
                .filter(|n| !n.is_empty() && n.len() <= flow::MAX_FLOW_VALUE_LEN),
        })
    }

    /// The issuer's key `kid`: from the cache while it is fresh, else fetched; an unknown
    /// `kid` fetches again unless the last fetch was under [`REFETCH_MIN_SECS`] ago.
    async fn key(&self, kid: &str, now: DateTime<Utc>) -> Result<Jwk, OidcError> {
        // One lock across the fetch: concurrent requests wait for one fetch instead of
        // each making their own.
        let mut cache = self.cache.lock().await;
        let may_fetch = |c: &Cache| {
            c.last_attempt
                .is_none_or(|t| now < t || (now - t).num_seconds() >= REFETCH_MIN_SECS)
        };
        let stale = cache
            .fetched_at
            .is_none_or(|t| now < t || (now - t).num_seconds() >= JWKS_TTL_SECS);
        let mut fetched = false;
        if stale && may_fetch(&cache) {
            fetched = true;
            if let Err(e) = self.refresh(&mut cache, now).await {
                if cache.keys.is_empty() {
                    return Err(e);
                }
                // The old keys still verify the tokens they signed; serve on with them.
                tracing::warn!(error = %e, "OIDC keys could not be refreshed; using the cached set");
            }
        }
        if cache.keys.is_empty() && cache.fetched_at.is_none() {
            return Err(OidcError::Unavailable(
                "the last fetch failed; retrying shortly".into(),
            ));
        }
        if let Some(k) = find(&cache.keys, kid) {
            return Ok(k);
        }
        if !fetched && may_fetch(&cache) {
            tracing::info!(kid, "unknown OIDC key id; fetching the issuer's keys again");
            self.refresh(&mut cache, now).await?;
            if let Some(k) = find(&cache.keys, kid) {
                return Ok(k);
            }
        }
        Err(OidcError::UnknownKey(kid.to_owned()))
    }

    /// Fetches the key set (finding its URL by discovery first if needed) into `cache`.
    async fn refresh(&self, cache: &mut Cache, now: DateTime<Utc>) -> Result<(), OidcError> {
        cache.last_attempt = Some(now);
        let result = self.fetch_keys(cache).await;
        let label = if result.is_ok() { "ok" } else { "failed" };
        metrics::counter!("tally_oidc_jwks_fetches_total", "outcome" => label).increment(1);
        let keys = result?;
        tracing::info!(keys = keys.len(), "fetched the OIDC issuer's keys");
        cache.keys = keys;
        cache.fetched_at = Some(now);
        Ok(())
    }

    async fn fetch_keys(&self, cache: &mut Cache) -> Result<Vec<Jwk>, OidcError> {
        let url = match &cache.jwks_url {
            Some(u) => u.clone(),
            None => {
                let body = self.get(&self.discovery_url).await?;
                let doc: Discovery = self.read_discovery(&body).map_err(OidcError::Unavailable)?;
                let url = parse_url(&doc.jwks_uri, "jwks_uri").map_err(|_| {
                    OidcError::Unavailable(format!("jwks_uri {:?} is not a URL", doc.jwks_uri))
                })?;
                cache.jwks_url = Some(url.clone());
                url
            }
        };
        let body = self.get(&url).await?;
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| OidcError::Unavailable(format!("the JWKS is not valid: {e}")))?;
        if set.keys.len() > MAX_KEYS {
            return Err(OidcError::Unavailable(format!(
                "the JWKS has {} keys, more than {MAX_KEYS}",
                set.keys.len()
            )));
        }
        Ok(set.keys)
    }

    /// Parses the discovery document `body` and checks that it names the configured
    /// issuer; why not, if it is not valid or names another.
    fn read_discovery<D: DiscoveryDoc>(&self, body: &[u8]) -> Result<D, String> {
        let doc: D = serde_json::from_slice(body)
            .map_err(|e| format!("the discovery document is not valid: {e}"))?;
        if doc.issuer() != self.settings.issuer {
            return Err(format!(
                "the discovery document names issuer {:?}, not the configured one",
                doc.issuer()
            ));
        }
        Ok(doc)
    }

    /// A bounded GET that must answer 200 within [`FETCH_TIMEOUT`].
    async fn get(&self, url: &Uri) -> Result<Bytes, OidcError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(url.clone())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("tally/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::new()))
            .map_err(|e| OidcError::Unavailable(format!("cannot build the request: {e}")))?;
        self.exchange(request, url, Answer::OnlyOk)
            .await
            .map(|(_, body)| body)
            .map_err(OidcError::Unavailable)
    }

    /// Sends `request` (to `url`) and reads its answer, all within [`FETCH_TIMEOUT`]: the
    /// status and at most [`MAX_DOCUMENT_BYTES`] of body, or why not, naming the method and
    /// the URL. With [`Answer::OnlyOk`] a status other than 200 is a failure, and its body
    /// is not read.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        url: &Uri,
        answer: Answer,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        let method = request.method().clone();
        let exchange = async {
            let response = self
                .client_http
                .request(request)
                .await
                .map_err(|e| format!("{method} {url} failed: {e}"))?;
            let status = response.status();
            if answer == Answer::OnlyOk && status != hyper::StatusCode::OK {
                return Err(format!("{method} {url} answered {status}"));
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| {
                    format!(
                        "{method} {url}: body unreadable or over {MAX_DOCUMENT_BYTES} bytes: {e}"
                    )
                })?;
            Ok((status, body))
        };
        match tokio::time::timeout(FETCH_TIMEOUT, exchange).await {
            Err(_) => Err(format!(
                "{method} {url}: no answer within {FETCH_TIMEOUT:?}"
            )),
            Ok(r) => r,
        }
    }
}

impl OidcVerifier {
    /// A bounded form POST answered within [`FETCH_TIMEOUT`]: its status and body (any
    /// status; the caller reads the issuer's error from the body), or why it failed.
    async fn post_form(
        &self,
        url: &Uri,
        form: Bytes,
        authorization: Option<&str>,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(USER_AGENT, concat!("tally/", env!("CARGO_PKG_VERSION")));
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(form))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        self.exchange(request, url, Answer::Any).await
    }
}

/// Which answers [`OidcVerifier::exchange`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Only a `200`: any other status fails the exchange, naming it.
    OnlyOk,
    /// Any status: the caller reads the issuer's error from the body.
    Any,
}

fn find(keys: &[Jwk], kid: &str) -> Option<Jwk> {
    keys.iter()
        .find(|k| k.common.key_id.as_deref() == Some(kid))
        .cloned()
}

/// The key to verify a token of algorithm `alg` with: the key's type must fit the
/// algorithm (RSA for RS256, P-256 for ES256), and so must its `alg` and `use` when set.
fn decoding_key(jwk: &Jwk, alg: Algorithm) -> Result<DecodingKey, OidcError> {
    let fits = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        _ => false,
    };
    let named = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(_) => false,
    };
    let for_signing = matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    );
    if !(fits && named && for_signing) {
        return Err(OidcError::Algorithm(format!(
            "{alg:?} does not fit the key it names"
        )));
    }
    DecodingKey::from_jwk(jwk).map_err(|e| OidcError::Invalid(format!("unusable key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok = OidcSettings {
            issuer: "https://issuer.example".into(),
            audience: "client".into(),
            jwks_url: None,
        };
        assert!(OidcVerifier::new(ok.clone()).is_ok());
        let bad_issuer = OidcSettings {
            issuer: "issuer.example".into(),
            ..ok.clone()
        };
        assert_eq!(
            OidcVerifier::new(bad_issuer).unwrap_err(),
            OidcConfigError::Url("the OIDC issuer")
        );
        let bad_jwks = OidcSettings {
            jwks_url: Some("ftp://x/keys".into()),
            ..ok.clone()
        };
        assert_eq!(
            OidcVerifier::new(bad_jwks).unwrap_err(),
            OidcConfigError::Url("the OIDC JWKS URL")
        );
        let no_audience = OidcSettings {
            audience: String::new(),
            ..ok
        };
        assert_eq!(
            OidcVerifier::new(no_audience).unwrap_err(),
            OidcConfigError::Audience
        );
    }

    #[test]
    fn a_code_flow_client_must_be_the_audience_its_id_tokens_name() {
        let verifier = || {
            OidcVerifier::new(OidcSettings {
                issuer: "https://issuer.example".into(),
                audience: "client".into(),
                jwks_url: None,
            })
            .unwrap()
        };
        let client = |id: &str| flow::ClientSettings {
            client_id: id.into(),
            client_secret: None,
            redirect_url: None,
        };
        assert!(verifier().with_client(client("client")).is_ok());
        assert!(matches!(
            verifier().with_client(client("another")).unwrap_err(),
            OidcConfigError::ClientAudience { client, audience } if client == "another" && audience == "client"
        ));
    }

    #[test]
    fn the_unverified_issuer_is_read_from_the_payload() {
        // {"alg":"none"} . {"iss":"https://i.example","sub":"x"} .
        let token = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2kuZXhhbXBsZSIsInN1YiI6IngifQ.";
        assert_eq!(
            unverified_issuer(token).as_deref(),
            Some("https://i.example")
        );
        assert_eq!(unverified_issuer("a.b.c"), None);
    }
}
