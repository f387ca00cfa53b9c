//! The management API accepting an OpenID Connect issuer's tokens: a locally generated
//! RS256 issuer (an axum server on an ephemeral port serving discovery and a JWKS the test
//! can rotate) and tokens signed with throwaway RSA keys kept under `testdata/`
//! (`openssl genpkey -algorithm RSA`; their JWKs were derived from them). The API runs on
//! the in-memory store with a [`FixedClock`], so expiry and the refetch rate limit are
//! exercised by moving the clock, not by sleeping.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tally_api::jwt::JwtConfig;
use tally_api::router;
use tally_core::ids::UserId;
use tally_core::plan::PlanId;
use tally_core::ports::{Clock, FixedClock};
use tally_oidc::{OidcError, OidcSettings, OidcVerifier};
use tally_store::MemoryStore;
use tower::ServiceExt;

mod common;

const KEY1: &[u8] = include_bytes!("testdata/oidc-key1.pem");
const KEY1_PUBLIC: &[u8] = include_bytes!("testdata/oidc-key1.pub.pem");
const KEY2: &[u8] = include_bytes!("testdata/oidc-key2.pem");
const AUDIENCE: &str = "tally-dashboard";
const NOW: &str = "2026-12-05T12:00:00Z";

fn jwk(n: u8) -> Value {
    let text = match n {
        1 => include_str!("testdata/oidc-jwk1.json"),
        _ => include_str!("testdata/oidc-jwk2.json"),
    };
    serde_json::from_str(text).unwrap()
}

/// The issuer: discovery and a JWKS whose keys the test swaps, counting JWKS fetches.
struct Issuer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl Issuer {
    async fn start(keys: Vec<Value>) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let discovery = json!({
            "issuer": url,
            "jwks_uri": format!("{url}/keys"),
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        let (k, f) = (keys.clone(), fetches.clone());
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/keys",
                get(move || async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let keys = k.lock().unwrap().clone();
                    axum::Json(json!({ "keys": keys }))
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Issuer { url, keys, fetches }
    }

    fn serve_keys(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// The API with the embedded HS256 secret and the OIDC issuer both configured, a user
/// `ann@example.com` who owns `org_a`.
struct World {
    app: Router,
    clock: Arc<FixedClock>,
    issuer: Issuer,
    local: JwtConfig,
}

async fn world() -> World {
    let issuer = Issuer::start(vec![jwk(1)]).await;
    let store = MemoryStore::new();
    let at = t("2026-01-01T00:00:00Z");
    common::add_user(&store, "usr_ann", "Ann@Example.com", at).await;
    common::add_org(
        &store,
        "org_a",
        "Alpha",
        "alpha",
        PlanId::Starter,
        "usr_ann",
        at,
    )
    .await;
    let oidc = OidcVerifier::new(OidcSettings {
        issuer: issuer.url.clone(),
        audience: AUDIENCE.into(),
        jwks_url: None,
    })
    .unwrap();
    let clock = Arc::new(FixedClock::at(t(NOW)));
    let local = JwtConfig::hs256(&[7; 32]).unwrap();
    let app = router(common::state(&store, &clock, &local).with_oidc(oidc));
    World {
        app,
        clock,
        issuer,
        local,
    }
}

impl World {
    /// Claims of a good token for Ann at the clock's time.
    fn claims(&self) -> Value {
        let now = self.clock.now().timestamp();
        json!({
            "iss": self.issuer.url,
            "aud": AUDIENCE,
            "sub": "a6f1c3e0-idp-subject",
            "email": "ann@example.com",
            "email_verified": true,
            "iat": now,
            "exp": now + 3600,
        })
    }

    /// `GET /v1/orgs/org_a` with `token`: the status and the error message, if any.
    async fn get_org(&self, token: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .uri("/v1/orgs/org_a")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let message = body["error"]["message"]
            .as_str()
            .or(body["message"].as_str())
            .unwrap_or_default()
            .to_owned();
        (status, message)
    }

    /// `claims` signed with key 1 (the one the issuer serves at first), checked to be taken
    /// (`GET /v1/orgs/org_a` is 200): the tests' known-good token.
    async fn key1_token_taken(&self, claims: &Value) -> String {
        let token = sign(KEY1, "test-key-1", claims);
        assert_eq!(self.get_org(&token).await.0, StatusCode::OK);
        token
    }
}

fn sign(key_pem: &[u8], kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(key_pem).unwrap(),
    )
    .unwrap()
}

fn with(claims: &Value, k: &str, v: Value) -> Value {
    let mut c = claims.clone();
    c[k] = v;
    c
}

#[tokio::test]
async fn a_valid_token_of_the_issuer_acts_as_the_user_of_its_verified_email() {
    let w = world().await;
    let token = sign(KEY1, "test-key-1", &w.claims());
    assert_eq!(w.get_org(&token).await.0, StatusCode::OK);
    // The email is matched lowercased, and Cognito's string "true" counts as verified.
    let shouted = with(&w.claims(), "email", "ANN@example.COM".into());
    let shouted = with(&shouted, "email_verified", "true".into());
    assert_eq!(
        w.get_org(&sign(KEY1, "test-key-1", &shouted)).await.0,
        StatusCode::OK
    );
    // One fetch of the keys serves every token while they are fresh.
    assert_eq!(w.issuer.fetches(), 1);
    // The embedded default still works beside it.
    let local = w
        .local
        .mint(
            &UserId::parse("usr_ann").unwrap(),
            w.clock.now(),
            TimeDelta::hours(1),
        )
        .unwrap();
    assert_eq!(w.get_org(&local).await.0, StatusCode::OK);
}

#[tokio::test]
async fn tokens_with_wrong_claims_times_or_signatures_are_401() {
    let w = world().await;
    let good = w.claims();
    let now = w.clock.now().timestamp();
    let cases = [
        (
            "wrong audience",
            with(&good, "aud", "someone-else".into()),
            KEY1,
        ),
        ("expired", with(&good, "exp", (now - 120).into()), KEY1),
        (
            "not valid yet",
            with(&good, "nbf", (now + 600).into()),
            KEY1,
        ),
        (
            "issued in the future",
            with(&good, "iat", (now + 600).into()),
            KEY1,
        ),
        // Signed with key 2 while naming key 1.
        ("bad signature", good.clone(), KEY2),
        (
            "unverified email",
            with(&good, "email_verified", false.into()),
            KEY1,
        ),
        (
            "email_verified missing",
            {
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("email_verified");
                c
            },
            KEY1,
        ),
        (
            "no Tally user",
            with(&good, "email", "bob@example.com".into()),
            KEY1,
        ),
    ];
    for (what, claims, key) in cases {
        let (status, message) = w.get_org(&sign(key, "test-key-1", &claims)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {message}");
    }
    // The sentences say what to do.
    let unverified = with(&good, "email_verified", false.into());
    let (_, message) = w.get_org(&sign(KEY1, "test-key-1", &unverified)).await;
    assert!(message.contains("not verified"), "{message}");
    let stranger = with(&good, "email", "bob@example.com".into());
    let (_, message) = w.get_org(&sign(KEY1, "test-key-1", &stranger)).await;
    assert!(
        message.contains("no Tally user has the email bob@example.com"),
        "{message}"
    );
    let expired = with(&good, "exp", (now - 120).into());
    let (_, message) = w.get_org(&sign(KEY1, "test-key-1", &expired)).await;
    assert!(message.contains("expired"), "{message}");
    // Within the leeway is still good.
    let just_expired = with(&good, "exp", (now - 10).into());
    assert_eq!(
        w.get_org(&sign(KEY1, "test-key-1", &just_expired)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn another_issuer_is_refused_by_the_verifier_and_by_the_api() {
    let w = world().await;
    let other = with(&w.claims(), "iss", "https://evil.example".into());
    let token = sign(KEY1, "test-key-1", &other);
    // The API hands it to the local HS256 verifier, which refuses it.
    assert_eq!(w.get_org(&token).await.0, StatusCode::UNAUTHORIZED);
    // The issuer's verifier itself refuses a foreign `iss` even with a good signature.
    let verifier = OidcVerifier::new(OidcSettings {
        issuer: w.issuer.url.clone(),
        audience: AUDIENCE.into(),
        jwks_url: Some(format!("{}/keys", w.issuer.url)),
    })
    .unwrap();
    let now = w.clock.now();
    assert!(matches!(
        verifier.verify(&token, now).await,
        Err(OidcError::Invalid(_))
    ));
    let good = sign(KEY1, "test-key-1", &w.claims());
    let identity = verifier.verify(&good, now).await.unwrap();
    assert_eq!(identity.subject, "a6f1c3e0-idp-subject");
    assert_eq!(identity.email.as_deref(), Some("ann@example.com"));
    assert!(identity.email_verified);
}

#[tokio::test]
async fn alg_none_and_hs256_tokens_naming_an_rsa_key_are_refused() {
    let w = world().await;
    let claims = w.claims();
    let good = w.key1_token_taken(&claims).await;
    // HMAC keyed with the RSA public key, the classic confusion attack, and with the
    // JWK's text.
    for secret in [KEY1_PUBLIC, include_bytes!("testdata/oidc-jwk1.json")] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("test-key-1".into());
        let forged =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap();
        assert_eq!(w.get_org(&forged).await.0, StatusCode::UNAUTHORIZED);
    }
    // alg none: the good token's header and payload with no signature.
    let b64 = |s: &str| {
        use std::fmt::Write;
        // Unpadded base64url, written out here to keep the test free of another crate.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.write_char(A[((n >> (18 - 6 * i)) & 63) as usize] as char)
                    .unwrap();
            }
        }
        out
    };
    let payload = good.split('.').nth(1).unwrap();
    let none = format!("{}.{payload}.", b64(r#"{"alg":"none","kid":"test-key-1"}"#));
    assert_eq!(w.get_org(&none).await.0, StatusCode::UNAUTHORIZED);
    // The encoder is right (the header of the alg-none token in jwt.rs's tests).
    assert_eq!(b64(r#"{"alg":"none"}"#), "eyJhbGciOiJub25lIn0");
}

#[tokio::test]
async fn a_rotated_key_verifies_after_a_rate_limited_refetch() {
    let w = world().await;
    let claims = w.claims();
    let old = w.key1_token_taken(&claims).await;
    assert_eq!(w.issuer.fetches(), 1);

    // The issuer rotates: key 2 only. The cached set lacks it, and the last fetch was
    // just now, so no refetch yet.
    w.issuer.serve_keys(vec![jwk(2)]);
    let new = sign(KEY2, "test-key-2", &claims);
    let (status, message) = w.get_org(&new).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{message}");
    assert!(message.contains("does not publish"), "{message}");
    assert_eq!(w.issuer.fetches(), 1, "no refetch within 30 s");

    // Past the rate limit, the unknown kid makes one refetch, and the token verifies.
    w.clock.advance(TimeDelta::seconds(31));
    assert_eq!(w.get_org(&new).await.0, StatusCode::OK);
    assert_eq!(w.issuer.fetches(), 2);
    assert_eq!(w.get_org(&new).await.0, StatusCode::OK);
    assert_eq!(w.issuer.fetches(), 2, "the new set is cached");

    // The retired key no longer verifies.
    let (status, _) = w.get_org(&old).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // After the TTL the set is fetched again even for a known kid.
    w.clock
        .advance(TimeDelta::seconds(tally_oidc::JWKS_TTL_SECS));
    let fresh = sign(KEY2, "test-key-2", &w.claims());
    assert_eq!(w.get_org(&fresh).await.0, StatusCode::OK);
    assert_eq!(w.issuer.fetches(), 3);
}

#[tokio::test]
async fn an_unreachable_issuer_is_503_not_401() {
    // A port nothing listens on (bound, then closed).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let verifier = OidcVerifier::new(OidcSettings {
        issuer: url.clone(),
        audience: AUDIENCE.into(),
        jwks_url: None,
    })
    .unwrap();
    let now = t(NOW).timestamp();
    let claims = json!({"iss": url, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 60});
    let token = sign(KEY1, "test-key-1", &claims);
    assert!(matches!(
        verifier.verify(&token, t(NOW)).await,
        Err(OidcError::Unavailable(_))
    ));
}

#[tokio::test]
async fn es256_keys_verify_their_own_tokens_and_only_theirs() {
    let w = world().await;
    let ec: Value = serde_json::from_str(include_str!("testdata/oidc-ec-jwk.json")).unwrap();
    w.issuer.serve_keys(vec![jwk(1), ec]);
    let ec_key = EncodingKey::from_ec_pem(include_bytes!("testdata/oidc-ec-key.pem")).unwrap();
    let es256 = |kid: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &w.claims(), &ec_key).unwrap()
    };
    assert_eq!(w.get_org(&es256("test-ec-key")).await.0, StatusCode::OK);
    // An ES256 token naming the RSA key, and an RS256 one naming the EC key: refused.
    assert_eq!(
        w.get_org(&es256("test-key-1")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        w.get_org(&sign(KEY1, "test-ec-key", &w.claims())).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        w.get_org(&sign(KEY1, "test-key-1", &w.claims())).await.0,
        StatusCode::OK
    );
}
