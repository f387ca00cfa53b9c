//! The org itself: `GET`/`PATCH`/`DELETE /v1/orgs/{org_id}`, `POST
//! /v1/orgs/{org_id}/transfer`, `GET /v1/orgs/{org_id}/usage/summary` and the caller's own
//! orgs, `GET /v1/me/orgs`.
//!
//! Every route authenticates a user's JWT ([`Caller`]) and checks the caller's role in the
//! path's org against [`crate::roles`] before it reads anything: a caller outside the org
//! gets `404`, a role without the permission `403`, an API key `403`. Mutations go through
//! `crate::mgmt::Mutation::run`, which writes their audit record. The org's members,
//! projects, API keys and audit trail have modules of their own ([`crate::members`],
//! [`crate::projects`], [`crate::keys`], [`crate::audit`]).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tally_core::counter::{Overflow, checked_percent, checked_sum};
use tally_core::ids::{OrgId, UserId};
use tally_core::period::{Granularity, Month};
use tally_core::ports::{CounterQuery, OwnerTransfer, StoreError, TenantStore};
use tally_core::tenant::{Org, OrgChanges, Role, check_name};

use crate::ApiState;
use crate::auth::{Caller, org_not_found};
use crate::http::ApiError;
use crate::members::member_not_found;
use crate::mgmt::{Actor, Change, JsonObject, MgmtError, OrgCaller, PathParams, body, field_error};
use crate::roles::Action;

/// `GET /v1/orgs/{org_id}`: the org (`org.read`).
pub(crate) async fn get_org(at: OrgCaller) -> Result<Json<Org>, MgmtError> {
    let (state, auth) = at.authorize(Action::OrgRead).await?;
    let org = state.org(&auth.org).await?;
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
    let Caller::User(user, _) = &caller else {
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
    /// Refused whenever present (`403 plan_change_forbidden`): a plan decides the bill, so
    /// it is the operator's to change (`tally org set-plan`), never a tenant role's. Kept in
    /// the body's shape so the refusal says that instead of "unknown field".
    #[serde(default)]
    pub plan: Option<serde_json::Value>,
}

/// `PATCH /v1/orgs/{org_id}` (`org.update`): the org as changed (its name). A `plan` is
/// refused `403 plan_change_forbidden` and audited as refused, whatever the caller's role.
pub(crate) async fn update_org(
    actor: Actor,
    PathParams(org): PathParams<String>,
    payload: Result<JsonObject<UpdateOrg>, MgmtError>,
) -> Result<Json<Org>, MgmtError> {
    let resource = format!("org:{org}");
    let org = actor
        .mutation(&org, Action::OrgUpdate, resource)
        .run(async |state, auth| {
            let req = body(payload)?;
            if req.plan.is_some() {
                return Err(MgmtError::PlanChangeForbidden);
            }
            if let Some(name) = &req.name {
                check_name("name", name).map_err(field_error)?;
            }
            let before = state.org(&auth.org).await?;
            let after = state
                .tenants
                .update_org(&auth.org, &OrgChanges { name: req.name })
                .await?
                .ok_or_else(org_not_found)?;
            Ok(Change::updated(&before, after))
        })
        .await?;
    Ok(Json(org))
}

/// `DELETE /v1/orgs/{org_id}` (`org.delete`, the owner only): the org, soft-deleted, with
/// every API key revoked (ingest refuses them once its key cache entry expires). From then
/// on the org's routes answer `404` to everyone; its usage and reports stay for billing.
pub(crate) async fn delete_org(
    actor: Actor,
    PathParams(org): PathParams<String>,
) -> Result<Json<Org>, MgmtError> {
    let resource = format!("org:{org}");
    let org = actor
        .mutation(&org, Action::OrgDelete, resource)
        .run(async |state, auth| {
            let before = state.org(&auth.org).await?;
            let after = state
                .tenants
                .delete_org(&auth.org, state.clock.now())
                .await?
                .ok_or_else(org_not_found)?;
            Ok(Change::updated(&before, after))
        })
        .await?;
    Ok(Json(org))
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
    actor: Actor,
    PathParams(org): PathParams<String>,
    payload: Result<JsonObject<TransferOwnership>, MgmtError>,
) -> Result<Json<Org>, MgmtError> {
    let resource = format!("org:{org}");
    let org = actor
        .mutation(&org, Action::OrgTransfer, resource)
        .run(async |state, auth| {
            let req = body(payload)?;
            let (before, after) =
                transfer(&*state.tenants, &auth.org, &auth.user, &req.user_id).await?;
            Ok(Change::updated(&before, after))
        })
        .await?;
    Ok(Json(org))
}

/// Makes the member `to` (a body field or a CLI flag) the owner of `org` in place of its
/// owner `from`, who becomes an admin: the org before and after. `404` if `to` is not a
/// member or there is no such org, `409` if `from` is not the owner (any more). The one
/// transfer both the route and `tally org transfer` make.
pub async fn transfer(
    tenants: &dyn TenantStore,
    org: &OrgId,
    from: &UserId,
    to: &str,
) -> Result<(Org, Org), MgmtError> {
    let to = UserId::parse(to).map_err(|_| member_not_found())?;
    let before = tenants.get_org(org).await?.ok_or_else(org_not_found)?;
    let after = tenants
        .transfer_ownership(&OwnerTransfer { org, from, to: &to })
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => MgmtError::Api(member_not_found()),
            other => other.into(),
        })?
        .ok_or_else(org_not_found)?;
    Ok((before, after))
}

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
    /// The meter's dimensions by name, in catalogue order (each one a `group_by` of
    /// `GET /v1/usage`); absent when it has none. The dashboard offers to stack by them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<String>,
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
pub(crate) async fn usage_summary(at: OrgCaller) -> Result<Json<UsageSummary>, MgmtError> {
    let (state, auth) = at.authorize(Action::UsageRead).await?;
    let org = state.org(&auth.org).await?;
    // One catalogue snapshot for the plan and its meters.
    let catalogue = state.catalogue.load();
    let plan = catalogue.plan(org.plan);
    let now = state.clock.now();
    let month = Month::of(now);
    let mut meters = Vec::new();
    for meter in catalogue.meters.meters() {
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
        let value = checked_sum(series.iter().map(|c| c.value)).map_err(overflow)?;
        let included = plan.meter_limit(&meter.name);
        let percent = match included {
            Some(i) => checked_percent(value, i).map_err(overflow)?,
            None => None,
        };
        meters.push(MeterSummary {
            meter: meter.name.to_string(),
            value: value.normalize().to_string(),
            included: included.map(|i| i.to_string()),
            limit: included
                .filter(|_| plan.limits.hard_usage_limits)
                .map(|i| i.to_string()),
            percent_used: percent.map(|p| format!("{p:.2}")),
            dimensions: meter
                .dimensions
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        });
    }
    Ok(Json(UsageSummary {
        org_id: org.id,
        period: month.to_string(),
        plan: org.plan.as_str().to_owned(),
        meters,
    }))
}

/// A summary this org's usage is too large to compute exactly: a `500` for this request
/// alone (the detail is logged), never a panic or a rounded figure.
fn overflow(e: Overflow) -> ApiError {
    ApiError::Internal(format!("usage summary: {e}"))
}
