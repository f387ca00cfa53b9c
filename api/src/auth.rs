//! Who is calling, and for which org they may act.
//!
//! [`Caller`] is the one extractor the API's routes use. Today every bearer credential is
//! an API key (authenticated by `tally_ingest::auth`, so keys behave the same on every
//! route). JWT bearer tokens for users arrive with the management API: they will be told
//! apart from keys in [`Caller`]'s extractor (the `JWT seam` below) and become a new variant,
//! and [`Caller::org_for`] will check the user's membership of the requested org instead
//! of a key's scope.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use tally_core::ids::OrgId;
use tally_core::tenant::{ApiKey, KeyScope};
use tally_ingest::auth::{KeyAuth, bearer_token, require_scope};
use tally_ingest::error::ApiError;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// An active API key. It acts for its own org only, within its scopes.
    ApiKey(ApiKey),
}

impl Caller {
    /// The org this caller acts for on a route needing `scope`, given the request's
    /// optional `org_id` parameter: `403` if a key lacks the scope, `404` if `requested`
    /// names any org but the key's own (another org's existence is not revealed).
    pub fn org_for(&self, requested: Option<&str>, scope: KeyScope) -> Result<OrgId, ApiError> {
        match self {
            Caller::ApiKey(key) => {
                require_scope(key, scope)?;
                match requested {
                    Some(org) if org != key.org_id.as_str() => Err(ApiError::not_found(
                        "org_id",
                        "no such organization for this API key",
                    )),
                    _ => Ok(key.org_id.clone()),
                }
            }
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    KeyAuth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let credential = bearer_token(&parts.headers)?;
        // JWT seam: once the management API lands, a credential that is a JWT (three
        // dot-separated base64url segments; API keys start with `tk_`) is verified here and
        // becomes `Caller::User`. Until then every credential is looked up as an API key,
        // so a JWT is answered like an unknown key (401).
        let key = KeyAuth::from_ref(state).authenticate(credential).await?;
        Ok(Caller::ApiKey(key))
    }
}
