//! The org's audit trail: `GET /v1/orgs/{org_id}/audit`, newest first, paged with a
//! cursor, for owners and admins.
//!
//! Every mutation of the management API writes one record ([`crate::mgmt`] says what it
//! holds); records are kept 90 days. Filters: a time range (`from`, `to`), the actor
//! (`user`), the `action` and the `resource`.

use axum::Json;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_core::ids::OrgId;
use tally_core::tenant::{AuditQuery, AuditRecord, MAX_AUDIT_PAGE};

use crate::http::{ApiError, page_limit, query_params};
use crate::mgmt::{MgmtError, OrgCaller};
use crate::roles::Action;
use crate::usage::parse_instant;

/// Default page size of `GET /v1/orgs/{org_id}/audit`.
pub const DEFAULT_AUDIT_PAGE: usize = 50;

/// `GET /v1/orgs/{org_id}/audit` query.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditParams {
    /// Records at or after (RFC 3339 or `YYYY-MM-DD`).
    pub from: Option<String>,
    /// Records before.
    pub to: Option<String>,
    /// Only this actor (a user id, `apikey:<id>` or `cli`).
    pub user: Option<String>,
    /// Only this action (`project.create`, ...).
    pub action: Option<String>,
    /// Only this resource (`project:prj_…`).
    pub resource: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/orgs/{org_id}/audit` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditResponse {
    /// Newest first.
    pub records: Vec<AuditRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Whether a cursor has the shape of an audit sort key (20 digits, `#`, `aud_` + hex).
fn valid_cursor(c: &str) -> bool {
    let Some((instant, id)) = c.split_once('#') else {
        return false;
    };
    instant.len() == 20
        && instant.bytes().all(|b| b.is_ascii_digit())
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The store query of `org`'s audit trail that `p` asks for: `400` naming `limit`,
/// `cursor`, `from` or `to` when one is malformed. The route and `tally audit` both build
/// it here, so both refuse alike.
pub fn audit_query(org: OrgId, p: AuditParams, now: DateTime<Utc>) -> Result<AuditQuery, ApiError> {
    let limit = page_limit(p.limit.as_deref(), DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE)
        .map_err(|m| ApiError::bad_request("invalid_limit", "limit", m))?;
    if let Some(c) = &p.cursor
        && !valid_cursor(c)
    {
        return Err(ApiError::bad_request(
            "invalid_cursor",
            "cursor",
            "cursor must be the next_cursor of a previous page",
        ));
    }
    let from = p
        .from
        .as_deref()
        .map(|s| parse_instant("from", s))
        .transpose()?;
    let to =
        p.to.as_deref()
            .map(|s| parse_instant("to", s))
            .transpose()?;
    Ok(AuditQuery {
        org,
        from,
        to,
        actor: p.user,
        action: p.action,
        resource: p.resource,
        limit,
        cursor: p.cursor,
        now,
    })
}

/// `GET /v1/orgs/{org_id}/audit` (`audit.read`).
pub(crate) async fn list_audit(
    at: OrgCaller,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditResponse>, MgmtError> {
    let (state, auth) = at.authorize(Action::AuditRead).await?;
    let p = query_params(params)?;
    let page = state
        .tenants
        .list_audit(&audit_query(auth.org, p, state.clock.now())?)
        .await?;
    Ok(Json(AuditResponse {
        records: page.records,
        next_cursor: page.next,
    }))
}
