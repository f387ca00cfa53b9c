//! The org's projects: `GET`/`POST /v1/orgs/{org_id}/projects`, `GET`/`PATCH
//! /v1/orgs/{org_id}/projects/{project_id}`, its `archive` and its `members`.
//!
//! Owners and admins see every project; members and viewers only those they are on. A
//! project of another org, or one the caller may not see, is `404`. Creating a project past
//! the plan's project limit is `403` with `limit` and `count` (archived projects do not
//! count). Mutations go through `crate::mgmt::Mutation::run`, which authorizes them and
//! writes their audit record.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tally_core::ids::{OrgId, ProjectId, UserId};
use tally_core::ports::{NewProjectMember, ProjectMember, ProjectUpdate, StoreError, TenantStore};
use tally_core::tenant::{Org, Project, ProjectChanges, Role, check_name, check_slug};

use crate::ApiState;
use crate::auth::{Authorized, Caller};
use crate::http::ApiError;
use crate::members::member_not_found;
use crate::mgmt::{
    Actor, Change, JsonObject, MgmtError, OrgCaller, PathParams, body, field_error, random,
};
use crate::roles::Action;

/// `GET /v1/orgs/{org_id}/projects` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectsResponse {
    /// The org's projects, in creation order.
    pub projects: Vec<Project>,
}

/// The `404` of a project that is not the org's.
pub fn project_not_found() -> ApiError {
    ApiError::not_found("project_id", "no such project in this organization")
}

/// `GET /v1/orgs/{org_id}/projects` (`projects.read`).
pub(crate) async fn list_projects(at: OrgCaller) -> Result<Json<ProjectsResponse>, MgmtError> {
    let (state, auth) = at.authorize(Action::ProjectsRead).await?;
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
    PathParams((org, project)): PathParams<(String, String)>,
) -> Result<Json<Project>, MgmtError> {
    let auth = caller.authorize(&state, &org, Action::ProjectsRead).await?;
    let id = ProjectId::parse(&project).map_err(|_| project_not_found())?;
    if let Some(mine) = visible_projects(&state, &auth).await?
        && !mine.contains(&id)
    {
        return Err(project_not_found().into());
    }
    let project = state
        .tenants
        .get_project(&auth.org, &id)
        .await?
        .ok_or_else(project_not_found)?;
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
            state.tenants.list_user_projects(&auth.member()).await?,
        )),
    }
}

/// How many of the org's projects count against the plan's limit: the ones not archived.
async fn active_projects(tenants: &dyn TenantStore, org: &OrgId) -> Result<usize, MgmtError> {
    Ok(tenants
        .list_projects(org)
        .await?
        .iter()
        .filter(|p| p.archived_at.is_none())
        .count())
}

/// Refuses a new project past the org's plan limit (`limit`, `None` for unlimited):
/// [`MgmtError::CountLimit`], `403` with `limit` and `count`. The management API and the
/// operator's `tally project create` both call it, so neither can go past the plan.
pub async fn check_project_room(
    tenants: &dyn TenantStore,
    org: &Org,
    limit: Option<u32>,
) -> Result<(), MgmtError> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let count = active_projects(tenants, &org.id).await?;
    if count >= usize::try_from(limit).unwrap_or(usize::MAX) {
        return Err(MgmtError::CountLimit {
            what: "projects",
            plan: org.plan.as_str().to_owned(),
            limit,
            count,
        });
    }
    Ok(())
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
    actor: Actor,
    PathParams(org): PathParams<String>,
    payload: Result<JsonObject<CreateProject>, MgmtError>,
) -> Result<(StatusCode, Json<Project>), MgmtError> {
    let resource = "projects".to_owned();
    let project = actor
        .mutation(&org, Action::ProjectCreate, resource)
        .run(async |state, auth| {
            let req = body(payload)?;
            check_name("name", &req.name).map_err(field_error)?;
            check_slug("slug", &req.slug).map_err(field_error)?;
            let org = state.org(&auth.org).await?;
            let plan = state.plan(org.plan);
            check_project_room(&*state.tenants, &org, plan.limits.projects).await?;
            let project = Project {
                id: ProjectId::from_random(random()),
                org_id: org.id,
                name: req.name,
                slug: req.slug,
                created_at: state.clock.now(),
                archived_at: None,
            };
            state.tenants.create_project(&project).await?;
            Ok(Change::created(format!("project:{}", project.id), project))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

/// `PATCH /v1/orgs/{org_id}/projects/{project_id}` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    /// A new display name.
    pub name: String,
}

/// `PATCH /v1/orgs/{org_id}/projects/{project_id}` (`project.update`): the project,
/// renamed (its slug, which events never carry, stays).
pub(crate) async fn update_project(
    actor: Actor,
    PathParams((org, project)): PathParams<(String, String)>,
    payload: Result<JsonObject<UpdateProject>, MgmtError>,
) -> Result<Json<Project>, MgmtError> {
    let resource = format!("project:{project}");
    let project = actor
        .mutation(&org, Action::ProjectUpdate, resource)
        .run(async |state, auth| {
            let req = body(payload)?;
            check_name("name", &req.name).map_err(field_error)?;
            let changes = ProjectChanges {
                name: Some(req.name),
                archive_at: None,
            };
            let (before, after) =
                change_project(&*state.tenants, &auth.org, &project, &changes).await?;
            Ok(Change::updated(&before, after))
        })
        .await?;
    Ok(Json(project))
}

/// `POST /v1/orgs/{org_id}/projects/{project_id}/archive` (`project.archive`): the project,
/// archived (one archived before keeps its first time). Ingest refuses its events once its
/// project cache entry expires (10 s by default), and it no longer counts against the
/// plan's project limit; it stays listed, with `archived_at`.
pub(crate) async fn archive_project(
    actor: Actor,
    PathParams((org, project)): PathParams<(String, String)>,
) -> Result<Json<Project>, MgmtError> {
    let resource = format!("project:{project}");
    let project = actor
        .mutation(&org, Action::ProjectArchive, resource)
        .run(async |state, auth| {
            let changes = ProjectChanges {
                name: None,
                archive_at: Some(state.clock.now()),
            };
            let (before, after) =
                change_project(&*state.tenants, &auth.org, &project, &changes).await?;
            Ok(Change::updated(&before, after))
        })
        .await?;
    Ok(Json(project))
}

/// Applies `changes` to the org's project `id` (a path parameter or a CLI flag): the
/// project before and after, or `404`. The one project change both the routes and `tally
/// project rename|archive` make.
pub async fn change_project(
    tenants: &dyn TenantStore,
    org: &OrgId,
    id: &str,
    changes: &ProjectChanges,
) -> Result<(Project, Project), MgmtError> {
    let id = ProjectId::parse(id).map_err(|_| project_not_found())?;
    let before = tenants
        .get_project(org, &id)
        .await?
        .ok_or_else(project_not_found)?;
    let after = tenants
        .update_project(&ProjectUpdate::new(org, &id, changes))
        .await?
        .ok_or_else(project_not_found)?;
    Ok((before, after))
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
    actor: Actor,
    PathParams((org, project)): PathParams<(String, String)>,
    payload: Result<JsonObject<AddProjectMember>, MgmtError>,
) -> Result<(StatusCode, Json<ProjectMemberView>), MgmtError> {
    let resource = format!("project:{project}");
    let added = actor
        .mutation(&org, Action::ProjectMemberAdd, resource)
        .run(async |state, auth| {
            let req = body(payload)?;
            let project = ProjectId::parse(&project).map_err(|_| project_not_found())?;
            let user = UserId::parse(&req.user_id).map_err(|_| member_not_found())?;
            state
                .tenants
                .add_project_member(&NewProjectMember::new(
                    &auth.org,
                    &project,
                    &user,
                    state.clock.now(),
                ))
                .await
                .map_err(|e| match e {
                    StoreError::NotFound { what } if what.starts_with("project") => {
                        MgmtError::Api(project_not_found())
                    }
                    StoreError::NotFound { .. } => MgmtError::Api(member_not_found()),
                    other => other.into(),
                })?;
            Ok(Change::added(ProjectMemberView {
                project_id: project,
                user_id: user,
            }))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(added)))
}

/// `DELETE /v1/orgs/{org_id}/projects/{project_id}/members/{user_id}`
/// (`project_member.remove`): the removed place; `404` if the user was not on the project.
pub(crate) async fn remove_project_member(
    actor: Actor,
    PathParams((org, project, user)): PathParams<(String, String, String)>,
) -> Result<Json<ProjectMemberView>, MgmtError> {
    let resource = format!("project:{project}");
    let removed = actor
        .mutation(&org, Action::ProjectMemberRemove, resource)
        .run(async |state, auth| {
            let not_on = || ApiError::not_found("user_id", "no such member on this project");
            let project = ProjectId::parse(&project).map_err(|_| project_not_found())?;
            let user = UserId::parse(&user).map_err(|_| not_on())?;
            if !state
                .tenants
                .remove_project_member(&ProjectMember::new(&auth.org, &project, &user))
                .await?
            {
                return Err(not_on().into());
            }
            Ok(Change::removed(ProjectMemberView {
                project_id: project,
                user_id: user,
            }))
        })
        .await?;
    Ok(Json(removed))
}
