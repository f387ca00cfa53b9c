//! Invitations: `GET`/`POST /v1/orgs/{org_id}/invitations`, `DELETE
//! /v1/orgs/{org_id}/invitations/{invitation_id}` and `POST /v1/invitations/accept`.
//!
//! An owner or admin invites an email address with a role (never owner). The answer holds
//! the invitation's token, shown this once: only its SHA-256 is stored, and accepting finds
//! the invitation by that hash in one lookup. An invitation can be accepted for
//! [`INVITATION_TTL_DAYS`] days, by a signed-in user whose email is the invited one, once;
//! accepting creates the membership. While it is pending it counts against the plan's user
//! limit like a member.
//!
//! Accepting is audited under the invitation's org. A token that matches no invitation
//! (unknown, revoked, expired) leaves no record, as there is no org to file it under; the
//! answer is `404` either way, so nobody learns which tokens once existed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_core::ids::{InvitationId, OrgId, UserId};
use tally_core::plan::Plan;
use tally_core::ports::{Acceptance, Revocation, StoreError, TenantStore};
use tally_core::tenant::{
    INVITATION_TTL_DAYS, Invitation, KeyHash, MAX_INVITATION_TOKEN_LEN, Membership, Org, Role,
    check_email, invitation_token,
};

use crate::ApiState;
use crate::auth::Caller;
use crate::http::ApiError;
use crate::members::{check_user_limit, grantable_role};
use crate::mgmt::{
    Actor, Audit, Change, JsonObject, MgmtError, OrgCaller, PathParams, RequestMeta, body,
    field_error, random, to_json,
};
use crate::roles::Action;

/// An invitation as listed: never its token, never its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationView {
    /// The invitation's id.
    pub id: InvitationId,
    /// The org it invites to.
    pub org_id: OrgId,
    /// Who may accept it.
    pub email: String,
    /// The role the membership will have.
    pub role: Role,
    /// Who sent it.
    pub invited_by: UserId,
    /// When it was sent.
    pub created_at: DateTime<Utc>,
    /// When it stops being acceptable.
    pub expires_at: DateTime<Utc>,
}

impl From<&Invitation> for InvitationView {
    fn from(i: &Invitation) -> Self {
        InvitationView {
            id: i.id.clone(),
            org_id: i.org_id.clone(),
            email: i.email.clone(),
            role: i.role,
            invited_by: i.invited_by.clone(),
            created_at: i.created_at,
            expires_at: i.expires_at,
        }
    }
}

/// `GET /v1/orgs/{org_id}/invitations` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvitationsResponse {
    /// The pending invitations, oldest first.
    pub invitations: Vec<InvitationView>,
}

/// `GET /v1/orgs/{org_id}/invitations` (`invitations.read`): the pending invitations.
pub(crate) async fn list_invitations(
    at: OrgCaller,
) -> Result<Json<InvitationsResponse>, MgmtError> {
    let (state, auth) = at.authorize(Action::InvitationsRead).await?;
    let invitations = state
        .tenants
        .list_invitations(&auth.org, state.clock.now())
        .await?;
    Ok(Json(InvitationsResponse {
        invitations: invitations.iter().map(InvitationView::from).collect(),
    }))
}

/// `POST /v1/orgs/{org_id}/invitations` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    /// Who is invited.
    pub email: String,
    /// `admin`, `member` or `viewer`.
    pub role: String,
}

/// `POST /v1/orgs/{org_id}/invitations` answer: the invitation, with its token shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedInvitation {
    /// The invitation as it will be listed.
    #[serde(flatten)]
    pub view: InvitationView,
    /// The token to accept it with, shown once and never stored.
    pub token: String,
}

/// Invites `req.email` to `org` (on `plan`, as the process's catalogue defines it) with
/// `req.role`, sent by `invited_by`: the invitation with its token, shown this once. `400`
/// naming `email` or `role` when one is malformed (`owner` is never granted), `409` if the
/// email has a pending invitation already, `403` with `limit` and `count` past the plan's
/// user limit. The one invitation both the route and `tally invitation create` make.
pub async fn create(
    tenants: &dyn TenantStore,
    plan: &Plan,
    org: &Org,
    req: &CreateInvitation,
    invited_by: UserId,
    now: DateTime<Utc>,
) -> Result<CreatedInvitation, MgmtError> {
    check_email("email", &req.email).map_err(field_error)?;
    let role = grantable_role(&req.role)?;
    let email = req.email.to_lowercase();
    if tenants
        .list_invitations(&org.id, now)
        .await?
        .iter()
        .any(|i| i.email == email)
    {
        return Err(ApiError::Conflict(
            "this email has a pending invitation to the organization already".into(),
        )
        .into());
    }
    check_user_limit(tenants, plan, org, now).await?;
    let token = invitation_token(random());
    let invitation = Invitation {
        id: InvitationId::from_random(random()),
        org_id: org.id.clone(),
        email,
        role,
        hash: KeyHash::of_secret(&token),
        invited_by,
        created_at: now,
        expires_at: now + chrono::TimeDelta::days(INVITATION_TTL_DAYS),
        accepted_at: None,
    };
    tenants.create_invitation(&invitation).await?;
    Ok(CreatedInvitation {
        view: InvitationView::from(&invitation),
        token,
    })
}

/// The `404` of an invitation that is not pending in the org.
fn invitation_not_found() -> ApiError {
    ApiError::not_found(
        "invitation_id",
        "no such pending invitation in this organization",
    )
}

/// Revokes `org`'s pending invitation `id` (a path parameter or a CLI flag) at `now`: the
/// revoked invitation; one that is not pending (accepted, expired, revoked) is `404`. The
/// one revocation both the route and `tally invitation revoke` make.
pub async fn revoke(
    tenants: &dyn TenantStore,
    org: &OrgId,
    id: &str,
    now: DateTime<Utc>,
) -> Result<InvitationView, MgmtError> {
    let id = InvitationId::parse(id).map_err(|_| invitation_not_found())?;
    let revoked = tenants
        .revoke_invitation(&Revocation::new(org, &id, now))
        .await?
        .ok_or_else(invitation_not_found)?;
    Ok(InvitationView::from(&revoked))
}

/// `POST /v1/orgs/{org_id}/invitations` (`invitation.create`): `201` with the token;
/// `409` if the email has a pending invitation already; `403` with `limit` and `count`
/// past the plan's user limit (members plus pending invitations).
pub(crate) async fn create_invitation(
    actor: Actor,
    PathParams(org): PathParams<String>,
    payload: Result<JsonObject<CreateInvitation>, MgmtError>,
) -> Result<(StatusCode, Json<CreatedInvitation>), MgmtError> {
    let resource = "invitations".to_owned();
    let created = actor
        .mutation(&org, Action::InvitationCreate, resource)
        .run(async |state, auth| {
            let req = body(payload)?;
            let org = state.org(&auth.org).await?;
            let plan = state.plan(org.plan);
            let created = create(
                &*state.tenants,
                &plan,
                &org,
                &req,
                auth.user,
                state.clock.now(),
            )
            .await?;
            let view = created.view.clone();
            // The record shows the invitation as listed; the token is in the answer only.
            let resource = format!("invitation:{}", view.id);
            Ok(Change::new(created).resource(resource).after(&view))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `DELETE /v1/orgs/{org_id}/invitations/{invitation_id}` (`invitation.revoke`): the
/// revoked invitation; one that is not pending (accepted, expired, revoked) is `404`.
pub(crate) async fn revoke_invitation(
    actor: Actor,
    PathParams((org, id)): PathParams<(String, String)>,
) -> Result<Json<InvitationView>, MgmtError> {
    let resource = format!("invitation:{id}");
    let revoked = actor
        .mutation(&org, Action::InvitationRevoke, resource)
        .run(async |state, auth| {
            let revoked = revoke(&*state.tenants, &auth.org, &id, state.clock.now()).await?;
            Ok(Change::removed(revoked))
        })
        .await?;
    Ok(Json(revoked))
}

/// `POST /v1/invitations/accept` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    /// The token the invitation was created with.
    pub token: String,
}

/// The `404` of a token that matches no acceptable invitation.
fn no_such_invitation() -> ApiError {
    ApiError::not_found(
        "token",
        "no pending invitation has this token (unknown, revoked or expired)",
    )
}

/// `POST /v1/invitations/accept` (`invitation.accept`): `201` with the new membership.
/// Needs a user's JWT (an API key is `403`) whose user's email is the invited one (`403`
/// otherwise); a second accept is `409`; an unknown, revoked or expired token, or one of a
/// deleted org, `404`.
pub(crate) async fn accept_invitation(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    payload: Result<JsonObject<AcceptInvitation>, MgmtError>,
) -> Result<(StatusCode, Json<Membership>), MgmtError> {
    let req = body(payload)?;
    if req.token.is_empty() || req.token.chars().count() > MAX_INVITATION_TOKEN_LEN {
        return Err(ApiError::bad_request(
            "invalid_field",
            "token",
            format!("token must be 1 to {MAX_INVITATION_TOKEN_LEN} characters"),
        )
        .into());
    }
    let hash = KeyHash::of_secret(&req.token);
    let now = state.clock.now();
    let invitation = state
        .tenants
        .find_invitation(&hash, now)
        .await?
        .ok_or_else(no_such_invitation)?;
    let mut audit = Audit::new(
        &caller,
        meta,
        invitation.org_id.as_str(),
        Action::InvitationAccept,
        format!("invitation:{}", invitation.id),
    );
    let result = async {
        // A deleted org's invitations die with it.
        match state.tenants.get_org(&invitation.org_id).await? {
            Some(org) if org.deleted_at.is_none() => {}
            _ => return Err(no_such_invitation().into()),
        }
        let Caller::User(user, _) = &caller else {
            return Err(ApiError::Forbidden(
                "accepting an invitation needs a user's bearer token (JWT), not an API key".into(),
            )
            .into());
        };
        let email = state
            .tenants
            .get_user(user)
            .await?
            .map(|u| u.email.to_lowercase());
        // The invited address is not echoed: the caller may not be the one it was sent to.
        if email.as_deref() != Some(invitation.email.as_str()) {
            return Err(ApiError::Forbidden(
                "this invitation was sent to another email address".into(),
            )
            .into());
        }
        if invitation.accepted_at.is_some() {
            return Err(ApiError::Conflict("this invitation was accepted already".into()).into());
        }
        state
            .tenants
            .accept_invitation(&Acceptance::new(&hash, user, now))
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => MgmtError::Api(no_such_invitation()),
                StoreError::Conflict { .. } => MgmtError::Api(ApiError::Conflict(
                    "this invitation was accepted already, or you are a member already".into(),
                )),
                other => other.into(),
            })
    }
    .await;
    if let Ok(m) = &result {
        audit.after = to_json(m);
    }
    let membership = audit.finish(&state, result).await?;
    Ok((StatusCode::CREATED, Json(membership)))
}
