//! The management routes under `/v1/orgs/{org_id}`: the org, its members, projects, API
//! keys and audit trail.
//!
//! Every route authenticates a user's JWT ([`Caller`]) and checks the caller's role in the
//! path's org against [`crate::roles`] before it reads anything: a caller outside the org
//! gets `404`, a role without the permission `403`, an API key `403`. Resources named in
//! the path are looked up inside the org only, so another org's project or key is `404`.
//!
//! Every mutation writes exactly one audit record ([`AuditRecord`]), allowed or refused,
//! with the caller, the action, the resource, before/after, the time, the IP
//! (`X-Forwarded-For`'s first address, else the peer address) and the user agent. Two
//! refusals leave no record because there is nothing to file it under: `401` (no caller)
//! and a path org id that is not an org id at all (no org). A record that cannot be
//! written is logged as an error; the answer is the mutation's own.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_core::ids::{ApiKeyId, OrgId, ProjectId, UserId};
use tally_core::period::{Granularity, Month};
use tally_core::plan::{Plan, PlanId};
use tally_core::ports::CounterQuery;
use tally_core::ports::StoreError;
use tally_core::tenant::{
    ApiKey, AuditOutcome, AuditQuery, AuditRecord, KeyHash, KeyMode, KeyScope, MAX_AUDIT_PAGE,
    Membership, Org, OrgChanges, Project, ProjectChanges, Role, api_key_secret, check_name,
    check_slug,
};
use tally_ingest::error::{ApiError, ErrorBody};

use crate::ApiState;
use crate::auth::{Authorized, Caller, org_not_found};
use crate::roles::Action;
use crate::usage::parse_instant;

/// Longest user agent kept in an audit record, in characters.
pub const MAX_USER_AGENT: usize = 256;

/// Default page size of `GET /v1/orgs/{org_id}/audit`.
pub const DEFAULT_AUDIT_PAGE: usize = 50;

/// A refusal of a management route.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    /// Any refusal of the shared [`ApiError`], with its status (`400`, `401`, `403`,
    /// `404`, `409`, `500`, `503`).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// `403 Forbidden`, code `plan_limit_exceeded`, with `limit` and `count` in the error
    /// object: the org's plan allows no more of `what` (projects).
    #[error("the {plan} plan allows {limit} {what}; the organization has {count}")]
    CountLimit {
        /// What is counted (`projects`).
        what: &'static str,
        /// The org's plan.
        plan: String,
        /// The plan's limit.
        limit: u32,
        /// How many the org has.
        count: usize,
    },
}

impl From<StoreError> for MgmtError {
    fn from(e: StoreError) -> Self {
        MgmtError::Api(e.into())
    }
}

impl MgmtError {
    /// The error code written to the audit record.
    fn code(&self) -> String {
        match self {
            MgmtError::Api(e) => e.body().code,
            MgmtError::CountLimit { .. } => tally_ingest::error::PLAN_LIMIT_EXCEEDED.to_owned(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            MgmtError::Api(e) => e.status(),
            MgmtError::CountLimit { .. } => StatusCode::FORBIDDEN,
        }
    }
}

/// What a plan-count refusal's error object carries besides code and message.
#[derive(Debug, Serialize)]
struct CountLimitBody {
    #[serde(flatten)]
    error: ErrorBody,
    limit: u32,
    count: usize,
}

impl IntoResponse for MgmtError {
    fn into_response(self) -> Response {
        match self {
            MgmtError::Api(e) => e.into_response(),
            MgmtError::CountLimit {
                what, limit, count, ..
            } => {
                let message = self.to_string();
                let body = CountLimitBody {
                    error: ErrorBody::new(
                        tally_ingest::error::PLAN_LIMIT_EXCEEDED,
                        message,
                        Some(what),
                    ),
                    limit,
                    count,
                };
                (
                    StatusCode::FORBIDDEN,
                    Json(serde_json::json!({ "error": body })),
                )
                    .into_response()
            }
        }
    }
}

/// Where a request came from, for audit records.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// `X-Forwarded-For`'s first address, else the peer address.
    pub ip: Option<String>,
    /// The `User-Agent`, clipped to [`MAX_USER_AGENT`] characters.
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().chars().take(64).collect::<String>())
            .filter(|v| !v.is_empty());
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(MAX_USER_AGENT).collect());
        Ok(RequestMeta {
            ip: forwarded.or(peer),
            user_agent,
        })
    }
}

/// An audit record being prepared by a mutating handler; [`Audit::finish`] writes it.
#[derive(Debug)]
pub(crate) struct Audit {
    org: Option<OrgId>,
    actor: String,
    action: Action,
    pub(crate) resource: String,
    pub(crate) before: Option<Value>,
    pub(crate) after: Option<Value>,
    meta: RequestMeta,
}

impl Audit {
    pub(crate) fn new(
        caller: &Caller,
        meta: RequestMeta,
        org: &str,
        action: Action,
        resource: String,
    ) -> Self {
        Audit {
            org: OrgId::parse(org).ok(),
            actor: caller.actor(),
            action,
            resource,
            before: None,
            after: None,
            meta,
        }
    }

    /// [`Audit::finish`] for a change: records the (before, after) pair of a success and
    /// hands on the after state.
    pub(crate) async fn finish_change<B: Serialize, A: Serialize>(
        mut self,
        state: &ApiState,
        result: Result<(B, A), MgmtError>,
    ) -> Result<A, MgmtError> {
        if let Ok((before, after)) = &result {
            self.before = to_json(before);
            self.after = to_json(after);
        }
        self.finish(state, result).await.map(|(_, after)| after)
    }

    /// Writes the one record of this request, allowed or refused, and hands the result on.
    pub(crate) async fn finish<T>(
        self,
        state: &ApiState,
        result: Result<T, MgmtError>,
    ) -> Result<T, MgmtError> {
        let Some(org) = self.org else {
            return result;
        };
        let now = state.clock.now();
        let record = AuditRecord {
            id: format!("aud_{}", hex_of(rand::random::<[u8; 16]>())),
            org_id: org,
            actor: self.actor,
            action: self.action.as_str().to_owned(),
            resource: self.resource,
            outcome: if result.is_ok() {
                AuditOutcome::Allowed
            } else {
                AuditOutcome::Refused
            },
            reason: result.as_ref().err().map(MgmtError::code),
            before: self.before,
            after: if result.is_ok() { self.after } else { None },
            at: now,
            ip: self.meta.ip,
            user_agent: self.meta.user_agent,
        };
        if let Err(e) = state.tenants.record_audit(&record).await {
            tracing::error!(error = %e, action = %record.action, org = %record.org_id, "cannot write the audit record");
        }
        result
    }
}

fn hex_of(bytes: [u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b);
    b
}

pub(crate) fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad_request("invalid_path", "path", e.body_text())
}

pub(crate) fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, MgmtError> {
    b.map(|Json(v)| v).map_err(|e| {
        MgmtError::Api(ApiError::bad_request(
            "invalid_body",
            "body",
            format!("the body is not the expected JSON: {}", e.body_text()),
        ))
    })
}

pub(crate) fn field_error(e: tally_core::tenant::FieldError) -> MgmtError {
    MgmtError::Api(ApiError::bad_request("invalid_field", e.field, e.message))
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Option<Value> {
    serde_json::to_value(v).ok()
}

// ---------------------------------------------------------------------------------------
// Org and members.

/// `GET /v1/orgs/{org_id}`: the org (`org.read`).
pub(crate) async fn get_org(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Org>, MgmtError> {
    let Path(org) = path.map_err(path_error)?;
    let auth = caller.authorize(&state, &org, Action::OrgRead).await?;
    let org = state
        .tenants
        .get_org(&auth.org)
        .await?
        .ok_or_else(org_not_found)?;
    Ok(Json(org))
}

/// One org of the caller, with their role there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MyOrg {
    /// The org.
    pub org: Org,
    /// The caller's role in it.
    pub role: Role,
}

/// `GET /v1/me/orgs` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MyOrgsResponse {
    /// The caller's orgs, by id.
    pub orgs: Vec<MyOrg>,
}

/// `GET /v1/me/orgs`: the orgs the caller (a user; an API key is `403`) is a member of.
pub(crate) async fn my_orgs(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<MyOrgsResponse>, MgmtError> {
    let Caller::User(user) = &caller else {
        return Err(ApiError::Forbidden(
            "this route needs a user's bearer token (JWT), not an API key".into(),
        )
        .into());
    };
    let mut orgs = Vec::new();
    for m in state.tenants.list_user_memberships(user).await? {
        if let Some(org) = state.tenants.get_org(&m.org_id).await?
            && org.deleted_at.is_none()
        {
            orgs.push(MyOrg { org, role: m.role });
        }
    }
    Ok(Json(MyOrgsResponse { orgs }))
}

/// `PATCH /v1/orgs/{org_id}` body: the fields to change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrg {
    /// A new display name.
    #[serde(default)]
    pub name: Option<String>,
    /// A new plan: `free`, `starter`, `pro` or `enterprise`.
    #[serde(default)]
    pub plan: Option<String>,
}

/// `PATCH /v1/orgs/{org_id}` (`org.update`): the org as changed. A plan whose project
/// limit the org already exceeds is refused `403` with `limit` and `count`.
pub(crate) async fn update_org(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<String>, PathRejection>,
    payload: Result<Json<UpdateOrg>, JsonRejection>,
) -> Result<Json<Org>, MgmtError> {
    let Path(org) = path.map_err(path_error)?;
    let audit = Audit::new(&caller, meta, &org, Action::OrgUpdate, format!("org:{org}"));
    let result = async {
        let auth = caller.authorize(&state, &org, Action::OrgUpdate).await?;
        let req = body(payload)?;
        if let Some(name) = &req.name {
            check_name("name", name).map_err(field_error)?;
        }
        let plan = req
            .plan
            .as_deref()
            .map(|p| {
                PlanId::parse(p).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_field",
                        "plan",
                        "plan must be free, starter, pro or enterprise",
                    )
                })
            })
            .transpose()?;
        let before = state
            .tenants
            .get_org(&auth.org)
            .await?
            .ok_or_else(org_not_found)?;
        if let Some(plan) = plan
            && let Some(limit) = Plan::builtin(plan).limits.projects
        {
            let count = active_projects(&state, &auth.org).await?;
            if count > usize::try_from(limit).unwrap_or(usize::MAX) {
                return Err(MgmtError::CountLimit {
                    what: "projects",
                    plan: plan.as_str().to_owned(),
                    limit,
                    count,
                });
            }
        }
        let after = state
            .tenants
            .update_org(
                &auth.org,
                &OrgChanges {
                    name: req.name,
                    plan,
                },
            )
            .await?
            .ok_or_else(org_not_found)?;
        Ok((before, after))
    }
    .await;
    Ok(Json(audit.finish_change(&state, result).await?))
}

/// `DELETE /v1/orgs/{org_id}` (`org.delete`, the owner only): the org, soft-deleted, with
/// every API key revoked (ingest refuses them once its key cache entry expires). From then
/// on the org's routes answer `404` to everyone; its usage and reports stay for billing.
pub(crate) async fn delete_org(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Org>, MgmtError> {
    let Path(org) = path.map_err(path_error)?;
    let audit = Audit::new(&caller, meta, &org, Action::OrgDelete, format!("org:{org}"));
    let result = async {
        let auth = caller.authorize(&state, &org, Action::OrgDelete).await?;
        let before = state
            .tenants
            .get_org(&auth.org)
            .await?
            .ok_or_else(org_not_found)?;
        let after = state
            .tenants
            .delete_org(&auth.org, state.clock.now())
            .await?
            .ok_or_else(org_not_found)?;
        Ok((before, after))
    }
    .await;
    Ok(Json(audit.finish_change(&state, result).await?))
}

/// One member as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// The user.
    pub user_id: UserId,
    /// Their role.
    pub role: Role,
    /// Since when.
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/orgs/{org_id}/members` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersResponse {
    /// The members, in the order they joined.
    pub members: Vec<MemberView>,
}

/// `GET /v1/orgs/{org_id}/members` (`members.read`).
pub(crate) async fn list_members(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<MembersResponse>, MgmtError> {
    let Path(org) = path.map_err(path_error)?;
    let auth = caller.authorize(&state, &org, Action::MembersRead).await?;
    let members = state.tenants.list_members(&auth.org).await?;
    Ok(Json(MembersResponse {
        members: members.into_iter().map(|m| MemberView::from(&m)).collect(),
    }))
}

impl From<&Membership> for MemberView {
    fn from(m: &Membership) -> Self {
        MemberView {
            user_id: m.user_id.clone(),
            role: m.role,
            created_at: m.created_at,
        }
    }
}

/// A role named in a body: any but `owner` (ownership moves only by transfer).
pub(crate) fn grantable_role(role: &str) -> Result<Role, MgmtError> {
    match Role::parse(role) {
        Some(Role::Owner) => Err(ApiError::bad_request(
            "invalid_field",
            "role",
            "nobody becomes owner this way; ownership moves only by a transfer",
        )
        .into()),
        Some(r) => Ok(r),
        None => Err(ApiError::bad_request(
            "invalid_field",
            "role",
            "role must be admin, member or viewer",
        )
        .into()),
    }
}

/// The `404` of a user who is not a member of the org.
fn member_not_found() -> ApiError {
    ApiError::not_found("user_id", "no such member of this organization")
}

/// The target of a member change: a member, and not the owner (`403`).
async fn changeable_member(state: &ApiState, org: &OrgId, user: &str) -> Result<UserId, MgmtError> {
    let user = UserId::parse(user).map_err(|_| member_not_found())?;
    match state.tenants.get_role(org, &user).await? {
        None => Err(member_not_found().into()),
        Some(Role::Owner) => Err(ApiError::Forbidden(
            "the owner cannot be demoted or removed except by transferring ownership".into(),
        )
        .into()),
        Some(_) => Ok(user),
    }
}

/// `POST /v1/orgs/{org_id}/transfer` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferOwnership {
    /// The member who becomes the owner.
    pub user_id: String,
}

/// `POST /v1/orgs/{org_id}/transfer` (`org.transfer`, the owner only): the org with its
/// new `owner_id`; the caller becomes an admin. `404` if the user is not a member.
pub(crate) async fn transfer_ownership(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<String>, PathRejection>,
    payload: Result<Json<TransferOwnership>, JsonRejection>,
) -> Result<Json<Org>, MgmtError> {
    let Path(org) = path.map_err(path_error)?;
    let audit = Audit::new(
        &caller,
        meta,
        &org,
        Action::OrgTransfer,
        format!("org:{org}"),
    );
    let result = async {
        let auth = caller.authorize(&state, &org, Action::OrgTransfer).await?;
        let req = body(payload)?;
        let to = UserId::parse(&req.user_id).map_err(|_| member_not_found())?;
        let before = state
            .tenants
            .get_org(&auth.org)
            .await?
            .ok_or_else(org_not_found)?;
        let after = state
            .tenants
            .transfer_ownership(&auth.org, &auth.user, &to)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => MgmtError::Api(member_not_found()),
                other => other.into(),
            })?
            .ok_or_else(org_not_found)?;
        Ok((before, after))
    }
    .await;
    Ok(Json(audit.finish_change(&state, result).await?))
}

/// `POST /v1/orgs/{org_id}/members` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// An existing user.
    pub user_id: String,
    /// `admin`, `member` or `viewer`.
    pub role: String,
}

/// `POST /v1/orgs/{org_id}/members` (`member.add`): `201` with the membership; `404` for
/// an unknown user, `409` for a member already, `403` with `limit` and `count` past the
/// plan's user limit (pending invitations count).
pub(crate) async fn add_member(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<String>, PathRejection>,
    payload: Result<Json<AddMember>, JsonRejection>,
) -> Result<(StatusCode, Json<MemberView>), MgmtError> {
    let Path(org) = path.map_err(path_error)?;
    let mut audit = Audit::new(&caller, meta, &org, Action::MemberAdd, "members".into());
    let result = async {
        let auth = caller.authorize(&state, &org, Action::MemberAdd).await?;
        let req = body(payload)?;
        let role = grantable_role(&req.role)?;
        let user = UserId::parse(&req.user_id)
            .map_err(|_| ApiError::not_found("user_id", "no such user"))?;
        let org = state
            .tenants
            .get_org(&auth.org)
            .await?
            .ok_or_else(org_not_found)?;
        check_user_limit(&state, &org).await?;
        let m = Membership {
            org_id: org.id,
            user_id: user,
            role,
            created_at: state.clock.now(),
        };
        state.tenants.add_member(&m).await.map_err(|e| match e {
            StoreError::NotFound { .. } => {
                MgmtError::Api(ApiError::not_found("user_id", "no such user"))
            }
            other => other.into(),
        })?;
        Ok(MemberView::from(&m))
    }
    .await;
    if let Ok(m) = &result {
        audit.resource = format!("member:{}", m.user_id);
        audit.after = to_json(m);
    }
    let m = audit.finish(&state, result).await?;
    Ok((StatusCode::CREATED, Json(m)))
}

/// Refuses one more user (a member or an invitation) past the plan's user limit: `403` with
/// `limit` and `count`, where the count is the members plus the pending invitations (each
/// of which may become a member).
pub(crate) async fn check_user_limit(state: &ApiState, org: &Org) -> Result<(), MgmtError> {
    let Some(limit) = Plan::builtin(org.plan).limits.users else {
        return Ok(());
    };
    let members = state.tenants.list_members(&org.id).await?.len();
    let pending = state
        .tenants
        .list_invitations(&org.id, state.clock.now())
        .await?
        .len();
    let count = members + pending;
    if count >= usize::try_from(limit).unwrap_or(usize::MAX) {
        return Err(MgmtError::CountLimit {
            what: "users",
            plan: org.plan.as_str().to_owned(),
            limit,
            count,
        });
    }
    Ok(())
}

/// `PATCH /v1/orgs/{org_id}/members/{user_id}` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    /// `admin`, `member` or `viewer`.
    pub role: String,
}

/// `PATCH /v1/orgs/{org_id}/members/{user_id}` (`member.update`): the membership as
/// changed; the owner's is `403`.
pub(crate) async fn update_member(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<(String, String)>, PathRejection>,
    payload: Result<Json<UpdateMember>, JsonRejection>,
) -> Result<Json<MemberView>, MgmtError> {
    let Path((org, user)) = path.map_err(path_error)?;
    let audit = Audit::new(
        &caller,
        meta,
        &org,
        Action::MemberUpdate,
        format!("member:{user}"),
    );
    let result = async {
        let auth = caller.authorize(&state, &org, Action::MemberUpdate).await?;
        let req = body(payload)?;
        let role = grantable_role(&req.role)?;
        let user = changeable_member(&state, &auth.org, &user).await?;
        let before = state
            .tenants
            .set_member_role(&auth.org, &user, role)
            .await?
            .ok_or_else(member_not_found)?;
        let after = Membership {
            role,
            ..before.clone()
        };
        Ok((MemberView::from(&before), MemberView::from(&after)))
    }
    .await;
    Ok(Json(audit.finish_change(&state, result).await?))
}

/// `DELETE /v1/orgs/{org_id}/members/{user_id}` (`member.remove`): the removed
/// membership; the owner is `403`.
pub(crate) async fn remove_member(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<MemberView>, MgmtError> {
    let Path((org, user)) = path.map_err(path_error)?;
    let mut audit = Audit::new(
        &caller,
        meta,
        &org,
        Action::MemberRemove,
        format!("member:{user}"),
    );
    let result = async {
        let auth = caller.authorize(&state, &org, Action::MemberRemove).await?;
        let user = changeable_member(&state, &auth.org, &user).await?;
        let before = state
            .tenants
            .remove_member(&auth.org, &user)
            .await?
            .ok_or_else(member_not_found)?;
        Ok(MemberView::from(&before))
    }
    .await;
    if let Ok(before) = &result {
        audit.before = to_json(before);
    }
    let before = audit.finish(&state, result).await?;
    Ok(Json(before))
}

// ---------------------------------------------------------------------------------------
// Projects.

/// `GET /v1/orgs/{org_id}/projects` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectsResponse {
    /// The org's projects, in creation order.
    pub projects: Vec<Project>,
}

/// `GET /v1/orgs/{org_id}/projects` (`projects.read`).
pub(crate) async fn list_projects(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ProjectsResponse>, MgmtError> {
    let Path(org) = path.map_err(path_error)?;
    let auth = caller.authorize(&state, &org, Action::ProjectsRead).await?;
    let mut projects = state.tenants.list_projects(&auth.org).await?;
    if let Some(mine) = visible_projects(&state, &auth).await? {
        projects.retain(|p| mine.contains(&p.id));
    }
    Ok(Json(ProjectsResponse { projects }))
}

/// `GET /v1/orgs/{org_id}/projects/{project_id}` (`projects.read`).
pub(crate) async fn get_project(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Project>, MgmtError> {
    let Path((org, project)) = path.map_err(path_error)?;
    let auth = caller.authorize(&state, &org, Action::ProjectsRead).await?;
    let not_found = || ApiError::not_found("project_id", "no such project in this organization");
    let id = ProjectId::parse(&project).map_err(|_| not_found())?;
    if let Some(mine) = visible_projects(&state, &auth).await?
        && !mine.contains(&id)
    {
        return Err(not_found().into());
    }
    let project = state
        .tenants
        .get_project(&auth.org, &id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(project))
}

/// The projects a caller may read: `None` for owners and admins (all of them), the ones
/// they are on for members and viewers.
async fn visible_projects(
    state: &ApiState,
    auth: &Authorized,
) -> Result<Option<Vec<ProjectId>>, MgmtError> {
    match auth.role {
        Role::Owner | Role::Admin => Ok(None),
        Role::Member | Role::Viewer => Ok(Some(
            state
                .tenants
                .list_user_projects(&auth.org, &auth.user)
                .await?,
        )),
    }
}

/// `POST /v1/orgs/{org_id}/projects/{project_id}/members` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddProjectMember {
    /// A member of the org.
    pub user_id: String,
}

/// A member's place on a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectMemberView {
    /// The project.
    pub project_id: ProjectId,
    /// The member.
    pub user_id: UserId,
}

/// `POST /v1/orgs/{org_id}/projects/{project_id}/members` (`project_member.add`): `201`;
/// `404` for a project of another org or a user who is not a member of the org, `409` if
/// they are on the project already.
pub(crate) async fn add_project_member(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<(String, String)>, PathRejection>,
    payload: Result<Json<AddProjectMember>, JsonRejection>,
) -> Result<(StatusCode, Json<ProjectMemberView>), MgmtError> {
    let Path((org, project)) = path.map_err(path_error)?;
    let mut audit = Audit::new(
        &caller,
        meta,
        &org,
        Action::ProjectMemberAdd,
        format!("project:{project}"),
    );
    let result = async {
        let auth = caller
            .authorize(&state, &org, Action::ProjectMemberAdd)
            .await?;
        let req = body(payload)?;
        let project = ProjectId::parse(&project).map_err(|_| project_not_found())?;
        let user = UserId::parse(&req.user_id).map_err(|_| member_not_found())?;
        state
            .tenants
            .add_project_member(&auth.org, &project, &user, state.clock.now())
            .await
            .map_err(|e| match e {
                StoreError::NotFound { what } if what.starts_with("project") => {
                    MgmtError::Api(project_not_found())
                }
                StoreError::NotFound { .. } => MgmtError::Api(member_not_found()),
                other => other.into(),
            })?;
        Ok(ProjectMemberView {
            project_id: project,
            user_id: user,
        })
    }
    .await;
    if let Ok(v) = &result {
        audit.after = to_json(v);
    }
    let v = audit.finish(&state, result).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// `DELETE /v1/orgs/{org_id}/projects/{project_id}/members/{user_id}`
/// (`project_member.remove`): the removed place; `404` if the user was not on the project.
pub(crate) async fn remove_project_member(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Json<ProjectMemberView>, MgmtError> {
    let Path((org, project, user)) = path.map_err(path_error)?;
    let mut audit = Audit::new(
        &caller,
        meta,
        &org,
        Action::ProjectMemberRemove,
        format!("project:{project}"),
    );
    let result = async {
        let auth = caller
            .authorize(&state, &org, Action::ProjectMemberRemove)
            .await?;
        let not_on = || ApiError::not_found("user_id", "no such member on this project");
        let project = ProjectId::parse(&project).map_err(|_| project_not_found())?;
        let user = UserId::parse(&user).map_err(|_| not_on())?;
        if !state
            .tenants
            .remove_project_member(&auth.org, &project, &user)
            .await?
        {
            return Err(not_on().into());
        }
        Ok(ProjectMemberView {
            project_id: project,
            user_id: user,
        })
    }
    .await;
    if let Ok(v) = &result {
        audit.before = to_json(v);
    }
    let v = audit.finish(&state, result).await?;
    Ok(Json(v))
}

/// How many of the org's projects count against the plan's limit: the ones not archived.
async fn active_projects(state: &ApiState, org: &OrgId) -> Result<usize, MgmtError> {
    Ok(state
        .tenants
        .list_projects(org)
        .await?
        .iter()
        .filter(|p| p.archived_at.is_none())
        .count())
}

/// `PATCH /v1/orgs/{org_id}/projects/{project_id}` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    /// A new display name.
    pub name: String,
}

/// The `404` of a project that is not the org's.
fn project_not_found() -> ApiError {
    ApiError::not_found("project_id", "no such project in this organization")
}

/// `PATCH /v1/orgs/{org_id}/projects/{project_id}` (`project.update`): the project,
/// renamed (its slug, which events never carry, stays).
pub(crate) async fn update_project(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<(String, String)>, PathRejection>,
    payload: Result<Json<UpdateProject>, JsonRejection>,
) -> Result<Json<Project>, MgmtError> {
    let Path((org, project)) = path.map_err(path_error)?;
    let audit = Audit::new(
        &caller,
        meta,
        &org,
        Action::ProjectUpdate,
        format!("project:{project}"),
    );
    let result = async {
        let auth = caller
            .authorize(&state, &org, Action::ProjectUpdate)
            .await?;
        let req = body(payload)?;
        check_name("name", &req.name).map_err(field_error)?;
        let id = ProjectId::parse(&project).map_err(|_| project_not_found())?;
        change_project(
            &state,
            &auth.org,
            &id,
            &ProjectChanges {
                name: Some(req.name),
                archive_at: None,
            },
        )
        .await
    }
    .await;
    Ok(Json(audit.finish_change(&state, result).await?))
}

/// `POST /v1/orgs/{org_id}/projects/{project_id}/archive` (`project.archive`): the project,
/// archived (one archived before keeps its first time). Ingest refuses its events once its
/// project cache entry expires (10 s by default), and it no longer counts against the
/// plan's project limit; it stays listed, with `archived_at`.
pub(crate) async fn archive_project(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Project>, MgmtError> {
    let Path((org, project)) = path.map_err(path_error)?;
    let audit = Audit::new(
        &caller,
        meta,
        &org,
        Action::ProjectArchive,
        format!("project:{project}"),
    );
    let result = async {
        let auth = caller
            .authorize(&state, &org, Action::ProjectArchive)
            .await?;
        let id = ProjectId::parse(&project).map_err(|_| project_not_found())?;
        change_project(
            &state,
            &auth.org,
            &id,
            &ProjectChanges {
                name: None,
                archive_at: Some(state.clock.now()),
            },
        )
        .await
    }
    .await;
    Ok(Json(audit.finish_change(&state, result).await?))
}

/// Applies `changes` to the org's project: (before, after), or `404`.
async fn change_project(
    state: &ApiState,
    org: &OrgId,
    id: &ProjectId,
    changes: &ProjectChanges,
) -> Result<(Project, Project), MgmtError> {
    let before = state
        .tenants
        .get_project(org, id)
        .await?
        .ok_or_else(project_not_found)?;
    let after = state
        .tenants
        .update_project(org, id, changes)
        .await?
        .ok_or_else(project_not_found)?;
    Ok((before, after))
}

/// `POST /v1/orgs/{org_id}/projects` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// Display name.
    pub name: String,
    /// Handle, unique in the org.
    pub slug: String,
}

/// `POST /v1/orgs/{org_id}/projects` (`project.create`): `201` with the project; `403`
/// with `limit` and `count` past the plan's project limit; `409` when the slug is taken.
pub(crate) async fn create_project(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<String>, PathRejection>,
    payload: Result<Json<CreateProject>, JsonRejection>,
) -> Result<(StatusCode, Json<Project>), MgmtError> {
    let Path(org) = path.map_err(path_error)?;
    let mut audit = Audit::new(
        &caller,
        meta,
        &org,
        Action::ProjectCreate,
        "projects".into(),
    );
    let result = async {
        let auth = caller
            .authorize(&state, &org, Action::ProjectCreate)
            .await?;
        let req = body(payload)?;
        check_name("name", &req.name).map_err(field_error)?;
        check_slug("slug", &req.slug).map_err(field_error)?;
        let org = state
            .tenants
            .get_org(&auth.org)
            .await?
            .ok_or_else(org_not_found)?;
        let plan = Plan::builtin(org.plan);
        if let Some(limit) = plan.limits.projects {
            let count = active_projects(&state, &org.id).await?;
            if count >= usize::try_from(limit).unwrap_or(usize::MAX) {
                return Err(MgmtError::CountLimit {
                    what: "projects",
                    plan: org.plan.as_str().to_owned(),
                    limit,
                    count,
                });
            }
        }
        let project = Project {
            id: ProjectId::from_random(random()),
            org_id: org.id,
            name: req.name,
            slug: req.slug,
            created_at: state.clock.now(),
            archived_at: None,
        };
        state.tenants.create_project(&project).await?;
        Ok(project)
    }
    .await;
    if let Ok(p) = &result {
        audit.resource = format!("project:{}", p.id);
        audit.after = to_json(p);
    }
    let project = audit.finish(&state, result).await?;
    Ok((StatusCode::CREATED, Json(project)))
}

// ---------------------------------------------------------------------------------------
// API keys.

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
pub(crate) async fn list_keys(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<KeysResponse>, MgmtError> {
    let Path(org) = path.map_err(path_error)?;
    let auth = caller.authorize(&state, &org, Action::KeysRead).await?;
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

/// `POST /v1/orgs/{org_id}/keys` (`key.create`): `201` with the secret, shown once.
pub(crate) async fn create_key(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<String>, PathRejection>,
    payload: Result<Json<CreateKey>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedKey>), MgmtError> {
    let Path(org) = path.map_err(path_error)?;
    let mut audit = Audit::new(&caller, meta, &org, Action::KeyCreate, "keys".into());
    let result = async {
        let auth = caller.authorize(&state, &org, Action::KeyCreate).await?;
        let req = body(payload)?;
        check_name("name", &req.name).map_err(field_error)?;
        let mut scopes = Vec::new();
        for s in req.scopes.unwrap_or_else(|| {
            KeyScope::ALL
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect()
        }) {
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
            )
            .into());
        }
        let expires_at = req
            .expires_at
            .as_deref()
            .map(|s| parse_instant("expires_at", s))
            .transpose()?;
        let mode = if req.test {
            KeyMode::Test
        } else {
            KeyMode::Live
        };
        let secret = api_key_secret(mode, random());
        let key = ApiKey {
            id: ApiKeyId::from_random(random()),
            org_id: auth.org,
            name: req.name,
            hash: KeyHash::of_secret(&secret),
            display_prefix: secret.chars().take(12).collect(),
            scopes,
            created_at: state.clock.now(),
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        state.tenants.create_api_key(&key).await?;
        Ok(CreatedKey {
            view: KeyView::from(&key),
            key: secret,
        })
    }
    .await;
    if let Ok(k) = &result {
        audit.resource = format!("key:{}", k.view.id);
        audit.after = to_json(&k.view);
    }
    let key = audit.finish(&state, result).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// `POST /v1/orgs/{org_id}/keys/{key_id}/revoke` (`key.revoke`): the key, revoked (a key
/// revoked before keeps its first revocation time). Ingest's key cache may accept it for
/// up to its TTL.
pub(crate) async fn revoke_key(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<KeyView>, MgmtError> {
    let Path((org, key)) = path.map_err(path_error)?;
    let audit = Audit::new(&caller, meta, &org, Action::KeyRevoke, format!("key:{key}"));
    let result = async {
        let auth: Authorized = caller.authorize(&state, &org, Action::KeyRevoke).await?;
        let not_found = || ApiError::not_found("key_id", "no such API key in this organization");
        let id = ApiKeyId::parse(&key).map_err(|_| not_found())?;
        let before = state
            .tenants
            .list_api_keys(&auth.org)
            .await?
            .into_iter()
            .find(|k| k.id == id)
            .ok_or_else(not_found)?;
        let after = state
            .tenants
            .revoke_api_key(&auth.org, &id, state.clock.now())
            .await?
            .ok_or_else(not_found)?;
        Ok((KeyView::from(&before), KeyView::from(&after)))
    }
    .await;
    Ok(Json(audit.finish_change(&state, result).await?))
}

/// Longest overlap of a rotation: 30 days.
pub const MAX_ROTATION_OVERLAP_SECS: u32 = 30 * 86_400;

/// `POST /v1/orgs/{org_id}/keys/{key_id}/rotate` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working, in seconds (default a day, at most 30 days).
    #[serde(default)]
    pub overlap_seconds: Option<u32>,
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
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    path: Result<Path<(String, String)>, PathRejection>,
    payload: Result<Json<RotateKey>, JsonRejection>,
) -> Result<(StatusCode, Json<RotatedKey>), MgmtError> {
    let Path((org, key)) = path.map_err(path_error)?;
    let mut audit = Audit::new(&caller, meta, &org, Action::KeyRotate, format!("key:{key}"));
    let result = async {
        let auth = caller.authorize(&state, &org, Action::KeyRotate).await?;
        let req = body(payload)?;
        let overlap = req.overlap_seconds.unwrap_or(86_400);
        if overlap > MAX_ROTATION_OVERLAP_SECS {
            return Err(ApiError::bad_request(
                "invalid_field",
                "overlap_seconds",
                format!("overlap_seconds must be at most {MAX_ROTATION_OVERLAP_SECS}"),
            )
            .into());
        }
        let not_found = || ApiError::not_found("key_id", "no such API key in this organization");
        let id = ApiKeyId::parse(&key).map_err(|_| not_found())?;
        let old = state
            .tenants
            .list_api_keys(&auth.org)
            .await?
            .into_iter()
            .find(|k| k.id == id)
            .ok_or_else(not_found)?;
        if old.revoked_at.is_some() {
            return Err(ApiError::Conflict("a revoked API key cannot be rotated".into()).into());
        }
        let now = state.clock.now();
        let secret = api_key_secret(
            if old.display_prefix.starts_with(KeyMode::Test.prefix()) {
                KeyMode::Test
            } else {
                KeyMode::Live
            },
            random(),
        );
        let new = ApiKey {
            id: ApiKeyId::from_random(random()),
            org_id: auth.org,
            name: old.name.clone(),
            hash: KeyHash::of_secret(&secret),
            display_prefix: secret.chars().take(12).collect(),
            scopes: old.scopes.clone(),
            created_at: now,
            expires_at: old.expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        let previous = state
            .tenants
            .rotate_api_key(
                &id,
                &new,
                now + chrono::TimeDelta::seconds(i64::from(overlap)),
            )
            .await?
            .ok_or_else(not_found)?;
        Ok((
            KeyView::from(&old),
            RotatedKey {
                key: secret,
                new: KeyView::from(&new),
                previous: KeyView::from(&previous),
            },
        ))
    }
    .await;
    if let Ok((before, after)) = &result {
        audit.before = to_json(before);
        audit.after = to_json(&json_pair(&after.previous, &after.new));
    }
    let (_, rotated) = audit.finish(&state, result).await?;
    Ok((StatusCode::CREATED, Json(rotated)))
}

/// The audit `after` of a rotation: both keys, never the secret.
fn json_pair(previous: &KeyView, new: &KeyView) -> Value {
    serde_json::json!({"previous": previous, "new": new})
}

// ---------------------------------------------------------------------------------------
// Usage summary.

/// One meter of the usage summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeterSummary {
    /// The meter.
    pub meter: String,
    /// The month's counter so far.
    pub value: String,
    /// The plan's monthly allowance, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included: Option<String>,
    /// The hard limit (the allowance, on plans whose limits refuse events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// `value / included × 100`, rounded to two decimals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_used: Option<String>,
}

/// `GET /v1/orgs/{org_id}/usage/summary` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageSummary {
    /// The org.
    pub org_id: OrgId,
    /// The current UTC month, `YYYY-MM`.
    pub period: String,
    /// The org's plan.
    pub plan: String,
    /// Every meter of the catalogue.
    pub meters: Vec<MeterSummary>,
}

/// `GET /v1/orgs/{org_id}/usage/summary` (`usage.read`): this month so far, per meter.
pub(crate) async fn usage_summary(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<UsageSummary>, MgmtError> {
    let Path(org) = path.map_err(path_error)?;
    let auth = caller.authorize(&state, &org, Action::UsageRead).await?;
    let org = state
        .tenants
        .get_org(&auth.org)
        .await?
        .ok_or_else(org_not_found)?;
    let plan = Plan::builtin(org.plan);
    let now = state.clock.now();
    let month = Month::of(now);
    let mut meters = Vec::new();
    for meter in state.catalogue.meters() {
        let series = state
            .usage
            .counter_series(&CounterQuery {
                org: org.id.clone(),
                project: None,
                meter: meter.name.clone(),
                granularity: Granularity::Month,
                from: month.start(),
                to: month.end(),
            })
            .await?;
        let value: Decimal = series.iter().map(|c| c.value).sum();
        let included = plan.meter_limit(&meter.name);
        let percent = included
            .filter(|i| !i.is_zero())
            .map(|i| (value * Decimal::ONE_HUNDRED / i).round_dp(2));
        meters.push(MeterSummary {
            meter: meter.name.to_string(),
            value: value.normalize().to_string(),
            included: included.map(|i| i.to_string()),
            limit: included
                .filter(|_| plan.limits.hard_usage_limits)
                .map(|i| i.to_string()),
            percent_used: percent.map(|p| format!("{p:.2}")),
        });
    }
    Ok(Json(UsageSummary {
        org_id: org.id,
        period: month.to_string(),
        plan: org.plan.as_str().to_owned(),
        meters,
    }))
}

// ---------------------------------------------------------------------------------------
// Audit trail.

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

/// `GET /v1/orgs/{org_id}/audit` (`audit.read`).
pub(crate) async fn list_audit(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditResponse>, MgmtError> {
    let Path(org) = path.map_err(path_error)?;
    let auth = caller.authorize(&state, &org, Action::AuditRead).await?;
    let Query(p) = params.map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            "query",
            format!("the query string is malformed: {}", e.body_text()),
        )
    })?;
    let limit = match p.limit.as_deref() {
        None => DEFAULT_AUDIT_PAGE,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_AUDIT_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    "limit",
                    format!("limit must be 1 to {MAX_AUDIT_PAGE}"),
                )
            })?,
    };
    if let Some(c) = &p.cursor
        && !valid_cursor(c)
    {
        return Err(ApiError::bad_request(
            "invalid_cursor",
            "cursor",
            "cursor must be the next_cursor of a previous page",
        )
        .into());
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
    let page = state
        .tenants
        .list_audit(&AuditQuery {
            org: auth.org,
            from,
            to,
            actor: p.user,
            action: p.action,
            resource: p.resource,
            limit,
            cursor: p.cursor,
            now: state.clock.now(),
        })
        .await?;
    Ok(Json(AuditResponse {
        records: page.records,
        next_cursor: page.next,
    }))
}
