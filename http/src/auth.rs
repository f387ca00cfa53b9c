//! API-key authentication, shared by every Tally API that accepts keys.
//!
//! A caller sends `Authorization: Bearer <secret>`. The secret is refused before hashing
//! when it is longer than [`MAX_KEY_SECRET_LEN`] or not shaped like a key (a mode prefix and
//! 64 hex digits, [`looks_like_key`]): an invented credential costs no hashing, no store read
//! and no cache slot. A key-shaped secret is then looked up by its SHA-256 in one
//! [`ApiKeyStore::find_api_key`] call. Missing, unknown, revoked and expired keys are `401`;
//! a key without the route's scope is `403`.
//!
//! With a [`KeyCache`] ([`KeyAuth::cached`], which the ingest router uses) the lookup is
//! answered from memory for up to the cache's TTL (see [`crate::keys`]) and the key's
//! last-used time is recorded; without one ([`KeyAuth::new`]) every request asks the store.
//!
//! Two ways to use it: the [`ScopedKey`] extractor (authentication and the scope check run
//! before the body is read, so an anonymous caller never gets to upload a megabyte), or
//! [`KeyAuth::authenticate`] plus [`require_scope`] for routes that accept other credentials
//! too (the usage API will also take JWTs).

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use tally_core::ports::{ApiKeyStore, Clock};
use tally_core::security::SecurityPolicy;
use tally_core::tenant::{ApiKey, KeyHash, KeyScope, MAX_KEY_SECRET_LEN, looks_like_key};

use crate::error::ApiError;
use crate::keys::{CachedKey, KeyCache};

/// What key authentication needs: where keys live and what time it is. Cheap to clone
/// (`Arc`s); a router state provides it through [`FromRef`].
#[derive(Clone)]
pub struct KeyAuth {
    /// Where API keys are looked up by hash.
    pub keys: Arc<dyn ApiKeyStore>,
    /// Decides whether a key has expired or been revoked.
    pub clock: Arc<dyn Clock>,
    /// When set, keys are looked up through this cache (and their use recorded in it).
    pub cache: Option<Arc<KeyCache>>,
}

impl fmt::Debug for KeyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAuth").finish_non_exhaustive()
    }
}

impl KeyAuth {
    /// Bundles a key store and a clock; every authentication asks the store.
    pub fn new(keys: Arc<dyn ApiKeyStore>, clock: Arc<dyn Clock>) -> Self {
        KeyAuth {
            keys,
            clock,
            cache: None,
        }
    }

    /// Authenticates through `cache` (which holds its own store and clock).
    pub fn cached(keys: Arc<dyn ApiKeyStore>, clock: Arc<dyn Clock>, cache: Arc<KeyCache>) -> Self {
        KeyAuth {
            keys,
            clock,
            cache: Some(cache),
        }
    }

    /// Finds the active key whose secret is `secret`: `401` when it is too long, unknown,
    /// revoked or expired; `503`/`500` when the store fails.
    pub async fn authenticate(&self, secret: &str) -> Result<ApiKey, ApiError> {
        let hash = Self::hash_of(secret)?;
        let found = match &self.cache {
            Some(cache) => cache.find(&hash).await?,
            None => self.keys.find_api_key(&hash).await?,
        };
        let key = found.ok_or_else(|| ApiError::Unauthorized("the API key is not valid".into()))?;
        self.admit(&key)?;
        Ok(key)
    }

    /// [`KeyAuth::authenticate`], then the key's org's IP allowlist against the client's
    /// address `client` ([`SecurityPolicy::permits_ip`]): `403 ip_not_allowed` outside it.
    /// The policy comes from the key cache with the key, so the check reads nothing per
    /// request (see [`crate::keys`] for how soon a policy change is seen); without a cache
    /// there is no policy to check against, and the request is refused with `500` rather
    /// than admitted unchecked.
    pub async fn authenticate_from(
        &self,
        secret: &str,
        client: Option<IpAddr>,
    ) -> Result<ApiKey, ApiError> {
        Ok(self.authenticate_cached(secret, client).await?.key.clone())
    }

    /// [`KeyAuth::authenticate_from`], answering the cache's own entry instead of a copy
    /// of the key: a hot path that only reads the key (ingest's) skips cloning its strings
    /// on every request. The checks are the same ones, in the same order.
    pub async fn authenticate_cached(
        &self,
        secret: &str,
        client: Option<IpAddr>,
    ) -> Result<Arc<CachedKey>, ApiError> {
        let hash = Self::hash_of(secret)?;
        let Some(cache) = &self.cache else {
            return Err(ApiError::Internal(
                "IP allowlists are checked through the key cache, and this router has none".into(),
            ));
        };
        let found = cache
            .find_with_policy(&hash)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("the API key is not valid".into()))?;
        self.admit(&found.key)?;
        check_ip(&found.policy, client)?;
        Ok(found)
    }

    /// The hash a key-shaped secret is looked up by, or the `401` of one that is too long
    /// or not shaped like a key (no hashing, no store read, no cache slot for it).
    fn hash_of(secret: &str) -> Result<KeyHash, ApiError> {
        if secret.len() > MAX_KEY_SECRET_LEN || !looks_like_key(secret) {
            return Err(ApiError::Unauthorized("the API key is not valid".into()));
        }
        Ok(KeyHash::of_secret(secret))
    }

    /// `401` unless the key found is active now; records its use in the cache.
    fn admit(&self, key: &ApiKey) -> Result<(), ApiError> {
        let now = self.clock.now();
        if key.revoked_at.is_some_and(|r| r <= now) {
            return Err(ApiError::Unauthorized(
                "the API key has been revoked".into(),
            ));
        }
        if key.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::Unauthorized("the API key has expired".into()));
        }
        debug_assert!(key.is_active(now));
        if let Some(cache) = &self.cache {
            cache.touch(key);
        }
        Ok(())
    }

    /// Authenticates the bearer key of a request and checks that it carries `scope`.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        scope: KeyScope,
    ) -> Result<ApiKey, ApiError> {
        let key = self.authenticate(bearer_token(headers)?).await?;
        require_scope(&key, scope)?;
        Ok(key)
    }
}

/// Code of the refusal of a client outside its org's IP allowlist (`403`).
pub const IP_NOT_ALLOWED: &str = "ip_not_allowed";

/// `403 ip_not_allowed` unless `policy` lets a client at `client` act for its org.
pub fn check_ip(policy: &SecurityPolicy, client: Option<IpAddr>) -> Result<(), ApiError> {
    if policy.permits_ip(client) {
        return Ok(());
    }
    let from = client.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
    Err(ApiError::ForbiddenBecause {
        code: IP_NOT_ALLOWED,
        message: format!(
            "requests from {from} are not allowed by this organization's IP allowlist"
        ),
    })
}

/// The credential of `Authorization: Bearer <credential>` (scheme case-insensitive): `401`
/// when the header is missing, not text, of another scheme or empty.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::Unauthorized(
            "missing Authorization header; send `Authorization: Bearer <api key>`".into(),
        )
    })?;
    let text = value.to_str().map_err(|_| {
        ApiError::Unauthorized("the Authorization header must be visible ASCII".into())
    })?;
    let (scheme, credential) = text.trim().split_once(' ').ok_or_else(|| {
        ApiError::Unauthorized("the Authorization header must be `Bearer <api key>`".into())
    })?;
    let credential = credential.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(ApiError::Unauthorized(
            "the Authorization header must be `Bearer <api key>`".into(),
        ));
    }
    Ok(credential)
}

/// `403` unless the key carries `scope`.
pub fn require_scope(key: &ApiKey, scope: KeyScope) -> Result<(), ApiError> {
    if key.has_scope(scope) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "this API key lacks the scope {scope:?} that this route needs",
            scope = scope.as_str()
        )))
    }
}

/// A scope a route demands, as a type, so [`ScopedKey`] can check it during extraction.
pub trait RequiredScope: Send + Sync + 'static {
    /// The scope.
    const SCOPE: KeyScope;
}

/// Marker for [`KeyScope::EventsWrite`].
#[derive(Debug, Clone, Copy)]
pub struct EventsWrite;

impl RequiredScope for EventsWrite {
    const SCOPE: KeyScope = KeyScope::EventsWrite;
}

/// Marker for [`KeyScope::UsageRead`].
#[derive(Debug, Clone, Copy)]
pub struct UsageRead;

impl RequiredScope for UsageRead {
    const SCOPE: KeyScope = KeyScope::UsageRead;
}

/// Extractor: the caller's active API key, which carries scope `S`. Rejects with the JSON
/// [`ApiError`] (`401`/`403`/`503`). Needs a state from which a [`KeyAuth`] can be taken.
#[derive(Debug, Clone)]
pub struct ScopedKey<S> {
    /// The authenticated key; its `org_id` is the caller's org.
    pub key: ApiKey,
    _scope: PhantomData<fn() -> S>,
}

impl<S> ScopedKey<S> {
    /// The key.
    pub fn into_inner(self) -> ApiKey {
        self.key
    }
}

impl<S, St> FromRequestParts<St> for ScopedKey<S>
where
    S: RequiredScope,
    KeyAuth: FromRef<St>,
    St: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        let auth = KeyAuth::from_ref(state);
        let key = auth.authorize(&parts.headers, S::SCOPE).await?;
        Ok(ScopedKey {
            key,
            _scope: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn bearer_tokens_parse_strictly() {
        assert_eq!(bearer_token(&headers("Bearer tk_x")).unwrap(), "tk_x");
        assert_eq!(bearer_token(&headers("bearer  tk_x ")).unwrap(), "tk_x");
        for bad in ["Basic abc", "Bearer", "Bearer ", "tk_x"] {
            assert!(
                matches!(bearer_token(&headers(bad)), Err(ApiError::Unauthorized(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            bearer_token(&HeaderMap::new()),
            Err(ApiError::Unauthorized(_))
        ));
    }
}
