//! The org's API keys: `GET`/`POST /v1/orgs/{org_id}/keys` and `POST
//! /v1/orgs/{org_id}/keys/{key_id}/revoke` and `/rotate`.
//!
//! A key's secret is shown once, in the answer that creates it (or rotates to it); only its
//! SHA-256 is stored, and neither the secret nor the hash is ever listed or written to the
//! audit trail ([`KeyView`] is what is). Ingest caches keys, so a revocation takes effect
//! within its key cache's TTL. Mutations go through `crate::mgmt::Mutation::run`, which
//! authorizes them and writes their audit record.

use axum::Json;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_core::ids::{ApiKeyId, OrgId};
use tally_core::ports::{KeyRotation, Revocation, TenantStore};
use tally_core::tenant::{ApiKey, KeyMode, KeyScope, api_key_secret, check_name};

use crate::http::ApiError;
use crate::mgmt::{
    Actor, Change, JsonObject, MgmtError, OrgCaller, PathParams, body, field_error, random,
};
use crate::roles::Action;
use crate::usage::parse_instant;

/// Longest overlap of a rotation: 30 days.
pub const MAX_ROTATION_OVERLAP_SECS: u32 = 30 * 86_400;

/// An API key as listed: never its secret, never its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// The key's id.
    pub id: ApiKeyId,
    /// Its org.
    pub org_id: OrgId,
    /// Display name.
    pub name: String,
    /// The secret's first characters, to tell keys apart.
    pub display_prefix: String,
    /// What it may do.
    pub scopes: Vec<KeyScope>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it expires, if it does.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When ingest last accepted it (to the microsecond, as of ingest's last flush, every
    /// few seconds); `null` if never.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<&ApiKey> for KeyView {
    fn from(k: &ApiKey) -> Self {
        KeyView {
            id: k.id.clone(),
            org_id: k.org_id.clone(),
            name: k.name.clone(),
            display_prefix: k.display_prefix.clone(),
            scopes: k.scopes.clone(),
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
        }
    }
}

/// `GET /v1/orgs/{org_id}/keys` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysResponse {
    /// The org's keys, in creation order.
    pub keys: Vec<KeyView>,
}

/// `GET /v1/orgs/{org_id}/keys` (`keys.read`).
pub(crate) async fn list_keys(at: OrgCaller) -> Result<Json<KeysResponse>, MgmtError> {
    let (state, auth) = at.authorize(Action::KeysRead).await?;
    let keys = state.tenants.list_api_keys(&auth.org).await?;
    Ok(Json(KeysResponse {
        keys: keys.iter().map(KeyView::from).collect(),
    }))
}

/// `POST /v1/orgs/{org_id}/keys` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Display name.
    pub name: String,
    /// Scopes; default both (`events:write`, `usage:read`).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Expiry, RFC 3339; never by default.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// A test key (`tk_test_…`) instead of a live one.
    #[serde(default)]
    pub test: bool,
}

/// `POST /v1/orgs/{org_id}/keys` answer: the key, with its secret shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedKey {
    /// The key as it will be listed.
    #[serde(flatten)]
    pub view: KeyView,
    /// The secret, shown once and never stored.
    pub key: String,
}

/// The scopes a new key asks for (both by default), each once: `400` for an unknown one or
/// none at all.
fn parse_scopes(requested: Option<Vec<String>>) -> Result<Vec<KeyScope>, ApiError> {
    let requested = requested.unwrap_or_else(|| {
        KeyScope::ALL
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect()
    });
    let mut scopes = Vec::new();
    for s in requested {
        let scope = KeyScope::parse(&s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                "scopes",
                "scopes must be events:write and/or usage:read",
            )
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "scopes",
            "name at least one scope",
        ));
    }
    Ok(scopes)
}

/// `POST /v1/orgs/{org_id}/keys` (`key.create`): `201` with the secret, shown once.
pub(crate) async fn create_key(
    actor: Actor,
    PathParams(org): PathParams<String>,
    payload: Result<JsonObject<CreateKey>, MgmtError>,
) -> Result<(StatusCode, Json<CreatedKey>), MgmtError> {
    let resource = "keys".to_owned();
    let created = actor
        .mutation(&org, Action::KeyCreate, resource)
        .run(async |state, auth| {
            let req = body(payload)?;
            check_name("name", &req.name).map_err(field_error)?;
            let scopes = parse_scopes(req.scopes)?;
            let expires_at = req
                .expires_at
                .as_deref()
                .map(|s| parse_instant("expires_at", s))
                .transpose()?;
            tally_core::tenant::rules::check_new_key_expiry(expires_at, state.clock.now())
                .map_err(|m| ApiError::bad_request("invalid_field", "expires_at", m))?;
            let mode = if req.test {
                KeyMode::Test
            } else {
                KeyMode::Live
            };
            let secret = api_key_secret(mode, random());
            let id = ApiKeyId::from_random(random());
            let key = ApiKey {
                name: req.name,
                scopes,
                expires_at,
                ..ApiKey::new(id, auth.org, &secret, state.clock.now())
            };
            state.tenants.create_api_key(&key).await?;
            let view = KeyView::from(&key);
            // The record shows the key as listed; the secret is in the answer only.
            let resource = format!("key:{}", view.id);
            Ok(Change::new(CreatedKey {
                view: view.clone(),
                key: secret,
            })
            .resource(resource)
            .after(&view))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The `404` of a key that is not the org's.
fn key_not_found() -> ApiError {
    ApiError::not_found("key_id", "no such API key in this organization")
}

/// The org's key `key` (a path parameter or a CLI flag), or the `404` of one that is not
/// the org's.
pub async fn org_key(
    tenants: &dyn TenantStore,
    org: &OrgId,
    key: &str,
) -> Result<ApiKey, MgmtError> {
    let id = ApiKeyId::parse(key).map_err(|_| key_not_found())?;
    let key = tenants
        .list_api_keys(org)
        .await?
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(key_not_found)?;
    Ok(key)
}

/// Revokes the org's key `key` at `now`: the key before and after (a key revoked before
/// keeps its first revocation time), or `404`. The one revocation both the route and
/// `tally key revoke` make.
pub async fn revoke(
    tenants: &dyn TenantStore,
    org: &OrgId,
    key: &str,
    now: DateTime<Utc>,
) -> Result<(KeyView, KeyView), MgmtError> {
    let before = org_key(tenants, org, key).await?;
    let after = tenants
        .revoke_api_key(&Revocation::new(org, &before.id, now))
        .await?
        .ok_or_else(key_not_found)?;
    Ok((KeyView::from(&before), KeyView::from(&after)))
}

/// `POST /v1/orgs/{org_id}/keys/{key_id}/revoke` (`key.revoke`): the key, revoked (a key
/// revoked before keeps its first revocation time). Ingest's key cache may accept it for
/// up to its TTL.
pub(crate) async fn revoke_key(
    actor: Actor,
    PathParams((org, key)): PathParams<(String, String)>,
) -> Result<Json<KeyView>, MgmtError> {
    let resource = format!("key:{key}");
    let revoked = actor
        .mutation(&org, Action::KeyRevoke, resource)
        .run(async |state, auth| {
            let (before, after) =
                revoke(&*state.tenants, &auth.org, &key, state.clock.now()).await?;
            Ok(Change::updated(&before, after))
        })
        .await?;
    Ok(Json(revoked))
}

/// `POST /v1/orgs/{org_id}/keys/{key_id}/rotate` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working, in seconds (default a day, at most 30 days).
    #[serde(default, deserialize_with = "whole_seconds")]
    pub overlap_seconds: Option<u32>,
}

/// A whole number of seconds as JSON Schema reads an integer (`3600` or `3600.0`, never
/// `3600.5`), so what the OpenAPI document calls an integer is one here too; `null` is the
/// default.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = match n.as_u64() {
        Some(u) => Some(u),
        None => n
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
            .map(|f| f as u64),
    };
    whole
        .and_then(|u| u32::try_from(u).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("expected a whole number of seconds, got {n}")))
}

/// `POST /v1/orgs/{org_id}/keys/{key_id}/rotate` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotatedKey {
    /// The new key's secret, shown this once.
    pub key: String,
    /// The new key.
    pub new: KeyView,
    /// The old key, now expiring at the end of the overlap.
    pub previous: KeyView,
}

/// `POST /v1/orgs/{org_id}/keys/{key_id}/rotate` (`key.rotate`): `201` with a new key of
/// the same name and scopes; the old key expires after the overlap. A revoked key is `409`.
pub(crate) async fn rotate_key(
    actor: Actor,
    PathParams((org, key)): PathParams<(String, String)>,
    payload: Result<JsonObject<RotateKey>, MgmtError>,
) -> Result<(StatusCode, Json<RotatedKey>), MgmtError> {
    let resource = format!("key:{key}");
    let rotated = actor
        .mutation(&org, Action::KeyRotate, resource)
        .run(async |state, auth| {
            let req = body(payload)?;
            let (old, rotated) = rotate(
                &*state.tenants,
                &auth.org,
                &key,
                req.overlap_seconds,
                state.clock.now(),
            )
            .await?;
            let after = json_pair(&rotated.previous, &rotated.new);
            Ok(Change::new(rotated).before(&old).after(&after))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(rotated)))
}

/// Rotates the org's key `key` at `now`: a new key of the same name, scopes and mode, while
/// the old one keeps working for `overlap_seconds` (default a day, at most
/// [`MAX_ROTATION_OVERLAP_SECS`], else `400` naming `overlap_seconds`). Answers the old key
/// as it was and the rotation (with the new secret, shown once); `404` for a key that is
/// not the org's, `409` for a revoked one. The one rotation both the route and `tally key
/// rotate` make.
pub async fn rotate(
    tenants: &dyn TenantStore,
    org: &OrgId,
    key: &str,
    overlap_seconds: Option<u32>,
    now: DateTime<Utc>,
) -> Result<(KeyView, RotatedKey), MgmtError> {
    let overlap = overlap_seconds.unwrap_or(86_400);
    if overlap > MAX_ROTATION_OVERLAP_SECS {
        return Err(ApiError::bad_request(
            "invalid_field",
            "overlap_seconds",
            format!("overlap_seconds must be at most {MAX_ROTATION_OVERLAP_SECS}"),
        )
        .into());
    }
    let old = org_key(tenants, org, key).await?;
    if old.revoked_at.is_some() {
        return Err(ApiError::Conflict("a revoked API key cannot be rotated".into()).into());
    }
    let secret = api_key_secret(old.mode(), random());
    let new = ApiKey {
        name: old.name.clone(),
        scopes: old.scopes.clone(),
        expires_at: old.expires_at,
        ..ApiKey::new(ApiKeyId::from_random(random()), org.clone(), &secret, now)
    };
    let previous = tenants
        .rotate_api_key(&KeyRotation::new(
            &old.id,
            &new,
            now + chrono::TimeDelta::seconds(i64::from(overlap)),
        ))
        .await?
        .ok_or_else(key_not_found)?;
    let rotated = RotatedKey {
        key: secret,
        new: KeyView::from(&new),
        previous: KeyView::from(&previous),
    };
    Ok((KeyView::from(&old), rotated))
}

/// The audit `after` of a rotation: both keys, never the secret.
pub fn json_pair(previous: &KeyView, new: &KeyView) -> Value {
    serde_json::json!({"previous": previous, "new": new})
}
