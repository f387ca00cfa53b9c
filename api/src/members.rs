//! The org's members: `GET`/`POST /v1/orgs/{org_id}/members` and `PATCH`/`DELETE
//! /v1/orgs/{org_id}/members/{user_id}`.
//!
//! A role is granted here (admin, member or viewer) but never owner: ownership moves only
//! by a transfer ([`crate::orgs`]), and the owner cannot be demoted or removed (`403`). A
//! user who is not a member is `404`. Adding a member past the plan's user limit is `403`
//! with `limit` and `count`, pending invitations counting as members. Mutations go through
//! `crate::mgmt::Mutation::run`, which authorizes them and writes their audit record.

use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_core::ids::{OrgId, UserId};
use tally_core::plan::Plan;
use tally_core::ports::{OrgMember, RoleChange, TenantStore};
use tally_core::tenant::{Membership, Org, Role};

use crate::http::ApiError;
use crate::mgmt::{Actor, Change, JsonObject, MgmtError, OrgCaller, PathParams, body};
use crate::roles::Action;

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

impl From<&Membership> for MemberView {
    fn from(m: &Membership) -> Self {
        MemberView {
            user_id: m.user_id.clone(),
            role: m.role,
            created_at: m.created_at,
        }
    }
}

/// `GET /v1/orgs/{org_id}/members` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersResponse {
    /// The members, in the order they joined.
    pub members: Vec<MemberView>,
}

/// `GET /v1/orgs/{org_id}/members` (`members.read`).
pub(crate) async fn list_members(at: OrgCaller) -> Result<Json<MembersResponse>, MgmtError> {
    let (state, auth) = at.authorize(Action::MembersRead).await?;
    let members = state.tenants.list_members(&auth.org).await?;
    Ok(Json(MembersResponse {
        members: members.into_iter().map(|m| MemberView::from(&m)).collect(),
    }))
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
pub(crate) fn member_not_found() -> ApiError {
    ApiError::not_found("user_id", "no such member of this organization")
}

/// The target of a member change: a member, and not the owner (`403`).
async fn changeable_member(
    tenants: &dyn TenantStore,
    org: &OrgId,
    user: &str,
) -> Result<UserId, MgmtError> {
    let user = UserId::parse(user).map_err(|_| member_not_found())?;
    match tenants.get_role(org, &user).await? {
        None => Err(member_not_found().into()),
        Some(Role::Owner) => Err(ApiError::Forbidden(
            "the owner cannot be demoted or removed except by transferring ownership".into(),
        )
        .into()),
        Some(_) => Ok(user),
    }
}

/// Refuses one more user (a member or an invitation) past the plan's user limit: `403` with
/// `limit` and `count`, where the count is the members plus the pending invitations (each
/// of which may become a member).
/// `plan` is the org's plan as the process's catalogue defines it.
pub async fn check_user_limit(
    tenants: &dyn TenantStore,
    plan: &Plan,
    org: &Org,
    now: DateTime<Utc>,
) -> Result<(), MgmtError> {
    let Some(limit) = plan.limits.users else {
        return Ok(());
    };
    let members = tenants.list_members(&org.id).await?.len();
    let pending = tenants.list_invitations(&org.id, now).await?.len();
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
    actor: Actor,
    PathParams((org, user)): PathParams<(String, String)>,
    payload: Result<JsonObject<UpdateMember>, MgmtError>,
) -> Result<Json<MemberView>, MgmtError> {
    let resource = format!("member:{user}");
    let member = actor
        .mutation(&org, Action::MemberUpdate, resource)
        .run(async |state, auth| {
            let req = body(payload)?;
            let (before, after) = set_role(&*state.tenants, &auth.org, &user, &req.role).await?;
            Ok(Change::updated(&before, after))
        })
        .await?;
    Ok(Json(member))
}

/// `DELETE /v1/orgs/{org_id}/members/{user_id}` (`member.remove`): the removed
/// membership; the owner is `403`.
pub(crate) async fn remove_member(
    actor: Actor,
    PathParams((org, user)): PathParams<(String, String)>,
) -> Result<Json<MemberView>, MgmtError> {
    let resource = format!("member:{user}");
    let removed = actor
        .mutation(&org, Action::MemberRemove, resource)
        .run(async |state, auth| {
            let removed = remove(&*state.tenants, &auth.org, &user).await?;
            Ok(Change::removed(removed))
        })
        .await?;
    Ok(Json(removed))
}

/// Removes the member `user` (a path parameter or a CLI flag) from `org`: the removed
/// membership; `404` for a user who is not a member, `403` for the owner (ownership moves
/// only by a transfer). The one removal both the route and `tally member remove` make.
pub async fn remove(
    tenants: &dyn TenantStore,
    org: &OrgId,
    user: &str,
) -> Result<MemberView, MgmtError> {
    let user = changeable_member(tenants, org, user).await?;
    let before = tenants
        .remove_member(&OrgMember::new(org, &user))
        .await?
        .ok_or_else(member_not_found)?;
    Ok(MemberView::from(&before))
}

/// Gives the member `user` (a path parameter or a CLI flag) of `org` the role `role`: the
/// membership before and after. `400` naming `role` unless it is admin, member or viewer,
/// `404` for a user who is not a member, `403` for the owner. The one role change both the
/// route and `tally member set-role` make.
pub async fn set_role(
    tenants: &dyn TenantStore,
    org: &OrgId,
    user: &str,
    role: &str,
) -> Result<(MemberView, MemberView), MgmtError> {
    let role = grantable_role(role)?;
    let user = changeable_member(tenants, org, user).await?;
    let before = tenants
        .set_member_role(&RoleChange {
            org,
            user: &user,
            role,
        })
        .await?
        .ok_or_else(member_not_found)?;
    let after = Membership {
        role,
        ..before.clone()
    };
    Ok((MemberView::from(&before), MemberView::from(&after)))
}
