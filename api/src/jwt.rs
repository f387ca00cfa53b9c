//! JWT bearer tokens of users, for the management API (and `GET /v1/usage` with an
//! `org_id`).
//!
//! A token is signed with HS256 (a shared secret of at least [`MIN_SECRET_LEN`] bytes) or
//! RS256 (the server holds only the RSA public key, in PEM) as [`JwtConfig`] says. Its
//! claims are `sub` (the user id), `iss` and `aud`, `iat` and `exp` (Unix seconds), and an
//! optional `nbf`. Tally's own tokens (HS256) are pinned to issuer [`ISSUER`] and audience
//! [`AUDIENCE`]; an RS256 issuer's `iss` and `aud` are checked when configured
//! ([`JwtConfig::with_issuer`]). Time is checked against the API's
//! [`Clock`](tally_core::ports::Clock), with [`LEEWAY_SECS`] of leeway, so tests need no
//! sleeping: `exp` must be ahead, `iat` and `nbf` not ahead, and a token may not live longer
//! than [`MAX_TTL_SECS`] (`exp - iat`), so a leaked token is good for a day at most. Only the configured algorithm is accepted (no `alg: none`, no
//! HS/RS confusion). [`JwtConfig::mint`] signs tokens for `tally token create`; it needs
//! the HS256 secret (an RS256 server only verifies).

use std::fmt;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tally_core::ids::{SessionId, UserId};

use crate::http::ApiError;

/// Shortest HS256 secret accepted, in bytes (the hash's output size).
pub const MIN_SECRET_LEN: usize = 32;

/// Seconds of clock skew tolerated on `exp`, `iat` and `nbf`.
pub const LEEWAY_SECS: i64 = 30;
/// The `iss` of the tokens Tally mints, required of every HS256 token.
pub const ISSUER: &str = "tally";
/// The `aud` of the tokens Tally mints (its management API), required of every HS256 token.
pub const AUDIENCE: &str = "tally-api";
/// The longest a token may live, `exp - iat`: a day. `tally token create --ttl` is refused
/// past it, and a token claiming more is refused however it was signed.
pub const MAX_TTL_SECS: i64 = 24 * 3600;

/// Why a JWT configuration or a token could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The HS256 secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("the JWT secret must be at least {MIN_SECRET_LEN} bytes")]
    SecretTooShort,
    /// The RS256 public key is not an RSA public key in PEM.
    #[error("the JWT public key is not an RSA public key in PEM: {0}")]
    BadPublicKey(String),
    /// Minting needs the HS256 secret; this configuration only verifies.
    #[error("this JWT configuration cannot sign tokens (RS256 verification only)")]
    CannotSign,
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Signing(String),
    /// The lifetime asked for is not positive or longer than [`MAX_TTL_SECS`].
    #[error("a token lives more than 0 seconds and at most {MAX_TTL_SECS} seconds (a day)")]
    BadTtl,
}

/// The claims Tally reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Who issued it ([`ISSUER`] for Tally's own tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Whom it is for ([`AUDIENCE`] for Tally's own tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not valid before, Unix seconds, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// How the user authenticated (RFC 8176 values, e.g. `["pwd", "otp"]`); an org that
    /// requires MFA looks for a second factor here ([`tally_core::security::shows_mfa`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amr: Option<Vec<String>>,
    /// The sign-in session this token belongs to (a Tally session token, minted by
    /// `POST /v1/sessions`): the session is checked against the store on every request, so
    /// revoking it ends the token. Such a token may live up to
    /// [`tally_core::security::MAX_SESSION_LIFETIME_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// What a verified token says beyond the user: how they signed in, and the session, if the
/// token is a session token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenFacts {
    /// The token's `amr`, empty when it has none.
    pub amr: Vec<String>,
    /// The token's session and when it was issued (`iat`), for a session token.
    pub session: Option<(SessionId, DateTime<Utc>)>,
}

/// Most `amr` values read from a token, and the longest one: more is not a token Tally or a
/// real issuer minted.
pub const MAX_AMR_VALUES: usize = 16;
/// The longest `amr` value kept.
pub const MAX_AMR_LEN: usize = 32;

/// How tokens are verified (and, with HS256, minted).
#[derive(Clone)]
pub struct JwtConfig {
    algorithm: Algorithm,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    /// The `iss` and `aud` a token must carry, when pinned.
    pinned: Option<(String, String)>,
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl JwtConfig {
    /// HS256 with a shared secret (verifies and mints).
    pub fn hs256(secret: &[u8]) -> Result<Self, JwtError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(JwtError::SecretTooShort);
        }
        Ok(JwtConfig {
            algorithm: Algorithm::HS256,
            decoding: DecodingKey::from_secret(secret),
            encoding: Some(EncodingKey::from_secret(secret)),
            pinned: Some((ISSUER.to_owned(), AUDIENCE.to_owned())),
        })
    }

    /// RS256 with an RSA public key in PEM (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`);
    /// verifies only.
    pub fn rs256_public_pem(pem: &[u8]) -> Result<Self, JwtError> {
        let decoding =
            DecodingKey::from_rsa_pem(pem).map_err(|e| JwtError::BadPublicKey(e.to_string()))?;
        Ok(JwtConfig {
            algorithm: Algorithm::RS256,
            decoding,
            encoding: None,
            pinned: None,
        })
    }

    /// Requires `iss` and `aud` to be exactly these (an RS256 issuer's values).
    pub fn with_issuer(mut self, issuer: &str, audience: &str) -> Self {
        self.pinned = Some((issuer.to_owned(), audience.to_owned()));
        self
    }

    /// Signs a token for `user`, valid from `now` for `ttl`.
    pub fn mint(
        &self,
        user: &UserId,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<String, JwtError> {
        self.mint_with(user, now, ttl, &TokenFacts::default())
    }

    /// Signs a token for `user`, valid from `now` for `ttl`, carrying `facts`' `amr` and,
    /// for a session token, its `sid` (which allows a lifetime up to
    /// [`tally_core::security::MAX_SESSION_LIFETIME_SECS`] instead of [`MAX_TTL_SECS`]).
    pub fn mint_with(
        &self,
        user: &UserId,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
        facts: &TokenFacts,
    ) -> Result<String, JwtError> {
        let key = self.encoding.as_ref().ok_or(JwtError::CannotSign)?;
        let max = max_ttl(facts.session.is_some());
        if ttl <= chrono::Duration::zero() || ttl.num_seconds() > max {
            return Err(JwtError::BadTtl);
        }
        let (iss, aud) = match &self.pinned {
            Some((i, a)) => (Some(i.clone()), Some(a.clone())),
            None => (None, None),
        };
        let claims = Claims {
            sub: user.to_string(),
            iss,
            aud,
            iat: now.timestamp(),
            nbf: None,
            exp: (now + ttl).timestamp(),
            amr: (!facts.amr.is_empty()).then(|| facts.amr.clone()),
            sid: facts.session.as_ref().map(|(id, _)| id.to_string()),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| JwtError::Signing(e.to_string()))
    }

    /// The user a token speaks for: `401` when the signature, the algorithm or the claims
    /// are wrong, or the token has expired at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<UserId, ApiError> {
        self.verify_facts(token, now).map(|(user, _)| user)
    }

    /// The user a token speaks for and what else it says ([`TokenFacts`]): `401` when the
    /// signature, the algorithm or the claims are wrong, or the token has expired at `now`.
    pub fn verify_facts(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<(UserId, TokenFacts), ApiError> {
        let invalid = || ApiError::Unauthorized("the bearer token is not valid".into());
        let mut validation = Validation::new(self.algorithm);
        // Time is checked below against the API's clock, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let mut required = vec!["exp", "sub", "iat"];
        match &self.pinned {
            Some((iss, aud)) => {
                validation.set_issuer(&[iss]);
                validation.set_audience(&[aud]);
                required.extend(["iss", "aud"]);
            }
            None => validation.validate_aud = false,
        }
        validation.required_spec_claims = required.iter().map(|s| (*s).to_owned()).collect();
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|e| {
                tracing::debug!(error = %e, "JWT refused");
                invalid()
            })?;
        let c = &data.claims;
        let now = now.timestamp();
        if c.exp.saturating_add(LEEWAY_SECS) <= now {
            return Err(ApiError::Unauthorized(
                "the bearer token has expired".into(),
            ));
        }
        if c.iat.saturating_sub(LEEWAY_SECS) > now
            || c.nbf.is_some_and(|n| n.saturating_sub(LEEWAY_SECS) > now)
        {
            return Err(ApiError::Unauthorized(
                "the bearer token is not valid yet".into(),
            ));
        }
        // Only a token this server signs can name a Tally session: another issuer's `sid`
        // (Keycloak, Okta and Auth0 put their own there) is not ours and is ignored.
        let own = self.encoding.is_some();
        let max = max_ttl(own && c.sid.is_some());
        if c.exp.saturating_sub(c.iat) > max {
            return Err(ApiError::Unauthorized(format!(
                "the bearer token lives longer than {} hours; mint a shorter one",
                max / 3600
            )));
        }
        let user = UserId::parse(&c.sub).map_err(|_| invalid())?;
        let session = match c.sid.as_ref().filter(|_| own) {
            Some(sid) => {
                let id = SessionId::parse(sid).map_err(|_| invalid())?;
                let issued = DateTime::from_timestamp(c.iat, 0).ok_or_else(invalid)?;
                Some((id, issued))
            }
            None => None,
        };
        Ok((
            user,
            TokenFacts {
                amr: bounded_amr(c.amr.as_deref().unwrap_or_default()),
                session,
            },
        ))
    }
}

impl JwtConfig {
    /// Signs `claims` with the HS256 secret, for state this server hands a browser and reads
    /// back itself (the dashboard's sign-in flow cookie). The claims must carry `aud` (a
    /// value no user token has, so the one can never pass for the other) and `exp`.
    /// [`JwtError::CannotSign`] on a server that only verifies (RS256).
    pub fn seal<T: Serialize>(&self, claims: &T) -> Result<String, JwtError> {
        let key = self.encoding.as_ref().ok_or(JwtError::CannotSign)?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key)
            .map_err(|e| JwtError::Signing(e.to_string()))
    }

    /// What [`JwtConfig::seal`] signed for `audience`, if the signature holds, `aud` is
    /// `audience` and `exp` (Unix seconds) is after `now`; `None` for anything else (forged,
    /// altered, for another audience, expired, or a server that cannot seal).
    pub fn open<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
        now: DateTime<Utc>,
    ) -> Option<T> {
        self.encoding.as_ref()?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        // Time is checked below against the caller's clock, with no leeway: the state is
        // this server's own and short-lived.
        validation.validate_exp = false;
        validation.required_spec_claims = ["exp", "aud"].iter().map(|s| (*s).to_owned()).collect();
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &self.decoding, &validation).ok()?;
        let exp = data.claims.get("exp")?.as_i64()?;
        if exp <= now.timestamp() {
            return None;
        }
        serde_json::from_value(data.claims).ok()
    }
}

/// The longest a token may live: a session token (`sid`) as long as a session may, any
/// other [`MAX_TTL_SECS`].
fn max_ttl(session: bool) -> i64 {
    if session {
        i64::from(tally_core::security::MAX_SESSION_LIFETIME_SECS)
    } else {
        MAX_TTL_SECS
    }
}

/// The `amr` values kept from a token: at most [`MAX_AMR_VALUES`], each at most
/// [`MAX_AMR_LEN`] bytes (longer ones are dropped, never truncated into another value).
pub fn bounded_amr(amr: &[String]) -> Vec<String> {
    amr.iter()
        .filter(|m| m.len() <= MAX_AMR_LEN)
        .take(MAX_AMR_VALUES)
        .cloned()
        .collect()
}

/// Whether a bearer credential looks like a JWT (three dot-separated parts) rather than an
/// API key (`tk_…`).
pub fn looks_like_jwt(credential: &str) -> bool {
    !credential.starts_with("tk_") && credential.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::t;

    #[test]
    fn sealed_state_opens_only_for_its_audience_secret_and_time() {
        let cfg = JwtConfig::hs256(&[7; 32]).unwrap();
        let now = t("2026-11-26T12:00:00Z");
        // exp = now + 600 s.
        let state = serde_json::json!({"aud": "flow", "exp": now.timestamp() + 600, "x": 1});
        let sealed = cfg.seal(&state).unwrap();
        let open =
            |c: &JwtConfig, token: &str, aud: &str, at| c.open::<serde_json::Value>(token, aud, at);
        assert_eq!(open(&cfg, &sealed, "flow", now), Some(state));
        // Planted faults: another audience, another secret, at exp, a user token as state.
        assert_eq!(open(&cfg, &sealed, "other", now), None);
        let other = JwtConfig::hs256(&[8; 32]).unwrap();
        assert_eq!(open(&other, &sealed, "flow", now), None);
        let at_exp = now + chrono::Duration::seconds(600);
        assert_eq!(open(&cfg, &sealed, "flow", at_exp), None);
        let user = UserId::parse("usr_ann").unwrap();
        let token = cfg.mint(&user, now, chrono::Duration::hours(1)).unwrap();
        assert_eq!(open(&cfg, &token, "flow", now), None);
        // ...and sealed state is no user token.
        assert!(cfg.verify(&sealed, now).is_err());
        // A server that only verifies cannot seal.
        let rs =
            JwtConfig::rs256_public_pem(include_bytes!("testdata/rs256-test-public.pem")).unwrap();
        assert!(matches!(
            rs.seal(&serde_json::json!({})),
            Err(JwtError::CannotSign)
        ));
    }

    #[test]
    fn hs256_round_trips_and_expires() {
        let cfg = JwtConfig::hs256(&[7; 32]).unwrap();
        let user = UserId::parse("usr_ann").unwrap();
        let now = t("2026-11-26T12:00:00Z");
        let token = cfg.mint(&user, now, chrono::Duration::hours(1)).unwrap();
        assert!(looks_like_jwt(&token));
        assert_eq!(cfg.verify(&token, now).unwrap(), user);
        assert!(cfg.verify(&token, t("2026-11-26T13:01:00Z")).is_err());
        let other = JwtConfig::hs256(&[8; 32]).unwrap();
        assert!(other.verify(&token, now).is_err(), "another secret");
        assert!(cfg.verify("a.b.c", now).is_err());
        assert_eq!(
            JwtConfig::hs256(b"short").unwrap_err(),
            JwtError::SecretTooShort
        );
        assert!(!looks_like_jwt("tk_live_abc"));
    }

    #[test]
    fn rs256_verifies_with_the_public_key_only() {
        // A throwaway key pair made for this test (`openssl genrsa 2048`); only its public
        // half and one token it signed (`sub` usr_ann, valid 2026-11-26T16:00Z + 10 min,
        // signed with `openssl dgst -sha256 -sign`) are kept.
        let public = include_bytes!("testdata/rs256-test-public.pem");
        let token = include_str!("testdata/rs256-test-token.txt").trim();
        let cfg = JwtConfig::rs256_public_pem(public).unwrap();
        let user = UserId::parse("usr_ann").unwrap();
        let now = t("2026-11-26T16:05:00Z");
        assert_eq!(cfg.verify(token, now).unwrap(), user);
        assert!(
            cfg.verify(token, t("2026-11-26T17:00:00Z")).is_err(),
            "expired"
        );
        let mut tampered = token.to_owned();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(cfg.verify(&tampered, now).is_err());
        assert_eq!(
            cfg.mint(&user, now, chrono::Duration::hours(1)),
            Err(JwtError::CannotSign)
        );
        // An HS256 token is refused by an RS256 server, even one "signed" with the public key.
        let hs = JwtConfig::hs256(public).unwrap();
        let confused = hs.mint(&user, now, chrono::Duration::hours(1)).unwrap();
        assert!(cfg.verify(&confused, now).is_err());
    }

    /// Signs arbitrary claims with the HS256 test secret, as a forger holding it (or a
    /// buggy minter) would.
    fn forge(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(&[7; 32]),
        )
        .unwrap()
    }

    #[test]
    fn issuer_audience_time_and_lifetime_are_checked() {
        let cfg = JwtConfig::hs256(&[7; 32]).unwrap();
        let now = t("2026-11-26T12:00:00Z");
        let at = now.timestamp();
        let good = serde_json::json!({"sub": "usr_ann", "iss": ISSUER, "aud": AUDIENCE, "iat": at, "exp": at + 600});
        assert!(cfg.verify(&forge(&good), now).is_ok());
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good.clone();
            c[k] = v;
            forge(&c)
        };
        let without = |k: &str| {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove(k);
            forge(&c)
        };
        for (what, token) in [
            ("another issuer", with("iss", "evil".into())),
            ("another audience", with("aud", "billing".into())),
            ("no issuer", without("iss")),
            ("no audience", without("aud")),
            ("no iat", without("iat")),
            ("issued in the future", with("iat", (at + 3600).into())),
            ("not valid before later", with("nbf", (at + 3600).into())),
            ("a year long", with("exp", (at + 365 * 86400).into())),
        ] {
            let e = cfg.verify(&token, now).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::UNAUTHORIZED, "{what}");
        }
        // Minting is bounded the same way.
        let user = UserId::parse("usr_ann").unwrap();
        assert_eq!(
            cfg.mint(&user, now, chrono::Duration::days(2)),
            Err(JwtError::BadTtl)
        );
        assert_eq!(
            cfg.mint(&user, now, chrono::Duration::zero()),
            Err(JwtError::BadTtl)
        );
        assert!(cfg.mint(&user, now, chrono::Duration::hours(24)).is_ok());
    }

    #[test]
    fn alg_none_and_garbage_keys_are_refused() {
        let cfg = JwtConfig::hs256(&[7; 32]).unwrap();
        // {"alg":"none"} . {"sub":"usr_ann","exp":9999999999} . (no signature)
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1c3JfYW5uIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(cfg.verify(none, t("2026-11-26T12:00:00Z")).is_err());
        assert!(JwtConfig::rs256_public_pem(b"not a key").is_err());
    }
}
