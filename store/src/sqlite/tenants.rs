//! Users, orgs and projects on SQLite: [`UserStore`], [`OrgStore`] and [`ProjectStore`].
//!
//! `users`, `orgs`, `projects` and `memberships` come from schema version 1; an org and its
//! owner's membership are written in one transaction. Soft deletion (`orgs.deleted_at`) and
//! archiving (`projects.archived_at`) come from version 4.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use tally_core::ids::{OrgId, ProjectId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::*;
use tally_core::tenant::*;

use super::*;

pub(super) const USER_COLS: &str = "id, email, created_at";

pub(super) fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

pub(super) fn user_of((id, email, created): (String, String, String)) -> Result<User, StoreError> {
    Ok(User {
        id: parse_id(&id, UserId::parse)?,
        email,
        created_at: parse_ts(&created)?,
    })
}

pub(super) type OrgRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
);

pub(super) fn org_of(
    (id, name, slug, plan, owner, created, deleted): OrgRow,
) -> Result<Org, StoreError> {
    Ok(Org {
        id: parse_id(&id, OrgId::parse)?,
        plan: PlanId::parse(&plan).ok_or_else(|| corrupt(format!("plan {plan:?}")))?,
        owner_id: parse_id(&owner, UserId::parse)?,
        created_at: parse_ts(&created)?,
        deleted_at: parse_opt_ts(deleted)?,
        name,
        slug,
    })
}

/// Reads one org by id (on a plain connection or inside a transaction).
pub(super) fn read_org(conn: &Connection, id: &str) -> Result<Option<Org>, StoreError> {
    conn.prepare_cached(
        "SELECT id, name, slug, plan, owner_id, created_at, deleted_at FROM orgs WHERE id = ?1",
    )
    .and_then(|mut s| s.query_row(params![id], |r| r.try_into()).optional())
    .map_err(db)?
    .map(org_of)
    .transpose()
}

pub(super) type ProjectRow = (String, String, String, String, String, Option<String>);

/// The columns [`project_row`] reads, in order.
pub(super) const PROJECT_COLS: &str = "org, id, name, slug, created_at, archived_at";

pub(super) fn project_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ProjectRow> {
    r.try_into()
}

pub(super) fn project_of(
    (org, id, name, slug, created, archived): ProjectRow,
) -> Result<Project, StoreError> {
    Ok(Project {
        id: parse_id(&id, ProjectId::parse)?,
        org_id: parse_id(&org, OrgId::parse)?,
        created_at: parse_ts(&created)?,
        archived_at: parse_opt_ts(archived)?,
        name,
        slug,
    })
}

/// Reads one project of an org (on a plain connection or inside a transaction).
pub(super) fn read_project(
    conn: &Connection,
    org: &str,
    id: &str,
) -> Result<Option<Project>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {PROJECT_COLS} FROM projects WHERE org = ?1 AND id = ?2"
    ))
    .and_then(|mut s| s.query_row(params![org, id], project_row).optional())
    .map_err(db)?
    .map(project_of)
    .transpose()
}

pub(super) fn org_exists(conn: &Connection, org: &OrgId) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM orgs WHERE id = ?1")
        .and_then(|mut s| s.exists(params![org.as_str()]))
        .map_err(db)
}

/// `NotFound` unless the org exists and is not deleted: what adding anything to it needs,
/// refused the same way for members, projects, keys and invitations.
pub(super) fn require_live_org(conn: &Connection, org: &OrgId) -> Result<(), StoreError> {
    let live = conn
        .prepare_cached("SELECT 1 FROM orgs WHERE id = ?1 AND deleted_at IS NULL")
        .and_then(|mut s| s.exists(params![org.as_str()]))
        .map_err(db)?;
    if live {
        Ok(())
    } else {
        Err(StoreError::NotFound {
            what: format!("org {org}"),
        })
    }
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn ensure_user(&self, candidate: &User) -> Result<User, StoreError> {
        let id = candidate.id.as_str().to_owned();
        let email = candidate.email.to_lowercase();
        let created = ts_text(candidate.created_at);
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let existing = tx
                .prepare_cached(&format!("SELECT {USER_COLS} FROM users WHERE email = ?1"))
                .and_then(|mut s| s.query_row(params![email], user_row).optional())
                .map_err(db)?;
            let row = match existing {
                Some(row) => row,
                None => {
                    let taken = tx
                        .prepare_cached("SELECT 1 FROM users WHERE id = ?1")
                        .and_then(|mut s| s.exists(params![id]))
                        .map_err(db)?;
                    if taken {
                        return Err(StoreError::Conflict {
                            what: format!("user id {id:?}"),
                        });
                    }
                    tx.prepare_cached(
                        "INSERT INTO users (id, email, created_at) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut s| s.execute(params![id, email, created]))
                    .map_err(db)?;
                    (id, email, created)
                }
            };
            tx.commit().map_err(db)?;
            user_of(row)
        })
        .await
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        let id = id.as_str().to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!("SELECT {USER_COLS} FROM users WHERE id = ?1"))
                .and_then(|mut s| s.query_row(params![id], user_row).optional())
                .map_err(db)?
                .map(user_of)
                .transpose()
        })
        .await
    }

    async fn list_user_memberships(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        let user_id = user.clone();
        self.read(move |conn| {
            members::query_memberships(
                conn,
                "SELECT org, role, created_at FROM memberships WHERE user_id = ?1 ORDER BY org",
                user_id.as_str(),
                |org| Ok((parse_id(org, OrgId::parse)?, user_id.clone())),
            )
        })
        .await
    }
}

#[async_trait]
impl OrgStore for SqliteStore {
    async fn create_org(&self, org: &Org) -> Result<(), StoreError> {
        let org = org.clone();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let owner_known = tx
                .prepare_cached("SELECT 1 FROM users WHERE id = ?1")
                .and_then(|mut s| s.exists(params![org.owner_id.as_str()]))
                .map_err(db)?;
            if !owner_known {
                return Err(StoreError::NotFound {
                    what: format!("user {}", org.owner_id),
                });
            }
            let slug_taken = tx
                .prepare_cached("SELECT 1 FROM orgs WHERE slug = ?1")
                .and_then(|mut s| s.exists(params![org.slug]))
                .map_err(db)?;
            if slug_taken {
                return Err(StoreError::Conflict {
                    what: format!("org slug {:?}", org.slug),
                });
            }
            if org_exists(&tx, &org.id)? {
                return Err(StoreError::Conflict {
                    what: format!("org {}", org.id),
                });
            }
            let created = ts_text(org.created_at);
            tx.prepare_cached(
                "INSERT INTO orgs (id, slug, name, plan, owner_id, created_at, deleted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    org.id.as_str(),
                    org.slug,
                    org.name,
                    org.plan.as_str(),
                    org.owner_id.as_str(),
                    created,
                    org.deleted_at.map(ts_text)
                ])
            })
            .map_err(db)?;
            tx.prepare_cached(
                "INSERT INTO memberships (org, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    org.id.as_str(),
                    org.owner_id.as_str(),
                    Role::Owner.as_str(),
                    created
                ])
            })
            .map_err(db)?;
            tx.commit().map_err(db)
        })
        .await
    }

    async fn get_org(&self, id: &OrgId) -> Result<Option<Org>, StoreError> {
        let id = id.as_str().to_owned();
        self.read(move |conn| read_org(conn, &id)).await
    }

    async fn list_org_ids(&self) -> Result<Vec<OrgId>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT id FROM orgs ORDER BY id")
                .map_err(db)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(parse_id(&row.map_err(db)?, OrgId::parse)?);
            }
            Ok(out)
        })
        .await
    }

    async fn update_org(
        &self,
        id: &OrgId,
        changes: &OrgChanges,
    ) -> Result<Option<Org>, StoreError> {
        let id = id.as_str().to_owned();
        let (name, plan) = (changes.name.clone(), changes.plan.map(|p| p.as_str()));
        self.write(move |conn| {
            let tx = immediate(conn)?;
            tx.prepare_cached(
                "UPDATE orgs SET name = coalesce(?2, name), plan = coalesce(?3, plan) WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, name, plan]))
            .map_err(db)?;
            let org = read_org(&tx, &id)?;
            tx.commit().map_err(db)?;
            Ok(org)
        })
        .await
    }

    async fn delete_org(&self, id: &OrgId, at: DateTime<Utc>) -> Result<Option<Org>, StoreError> {
        let (id, at) = (id.as_str().to_owned(), ts_text(at));
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let marked = tx
                .prepare_cached(
                    "UPDATE orgs SET deleted_at = coalesce(deleted_at, ?2) WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![id, at]))
                .map_err(db)?;
            if marked == 0 {
                return Ok(None);
            }
            tx.prepare_cached(
                "UPDATE api_keys SET revoked_at = ?2 WHERE org = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![id, at]))
            .map_err(db)?;
            let org = read_org(&tx, &id)?;
            tx.commit().map_err(db)?;
            Ok(org)
        })
        .await
    }
}

#[async_trait]
impl ProjectStore for SqliteStore {
    async fn create_project(&self, project: &Project) -> Result<(), StoreError> {
        let p = project.clone();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            require_live_org(&tx, &p.org_id)?;
            let slug_taken = tx
                .prepare_cached("SELECT 1 FROM projects WHERE org = ?1 AND slug = ?2")
                .and_then(|mut s| s.exists(params![p.org_id.as_str(), p.slug]))
                .map_err(db)?;
            if slug_taken {
                return Err(StoreError::Conflict {
                    what: format!("project slug {:?} in org {}", p.slug, p.org_id),
                });
            }
            let id_taken = tx
                .prepare_cached("SELECT 1 FROM projects WHERE org = ?1 AND id = ?2")
                .and_then(|mut s| s.exists(params![p.org_id.as_str(), p.id.as_str()]))
                .map_err(db)?;
            if id_taken {
                return Err(StoreError::Conflict {
                    what: format!("project {}", p.id),
                });
            }
            tx.prepare_cached(
                "INSERT INTO projects (org, id, slug, name, created_at, archived_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    p.org_id.as_str(),
                    p.id.as_str(),
                    p.slug,
                    p.name,
                    ts_text(p.created_at),
                    p.archived_at.map(ts_text)
                ])
            })
            .map_err(db)?;
            tx.commit().map_err(db)
        })
        .await
    }

    async fn get_project(
        &self,
        org: &OrgId,
        id: &ProjectId,
    ) -> Result<Option<Project>, StoreError> {
        let (org, id) = (org.as_str().to_owned(), id.as_str().to_owned());
        self.read(move |conn| read_project(conn, &org, &id)).await
    }

    async fn list_projects(&self, org: &OrgId) -> Result<Vec<Project>, StoreError> {
        let org = org.as_str().to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {PROJECT_COLS} FROM projects WHERE org = ?1 ORDER BY created_at, id"
                ))
                .map_err(db)?;
            let rows = stmt.query_map(params![org], project_row).map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(project_of(row.map_err(db)?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn update_project(
        &self,
        org: &OrgId,
        id: &ProjectId,
        changes: &ProjectChanges,
    ) -> Result<Option<Project>, StoreError> {
        let (org, id) = (org.as_str().to_owned(), id.as_str().to_owned());
        let (name, archive) = (changes.name.clone(), changes.archive_at.map(ts_text));
        self.write(move |conn| {
            let tx = immediate(conn)?;
            tx.prepare_cached(
                "UPDATE projects SET name = coalesce(?3, name),
                                     archived_at = coalesce(archived_at, ?4)
                 WHERE org = ?1 AND id = ?2",
            )
            .and_then(|mut s| s.execute(params![org, id, name, archive]))
            .map_err(db)?;
            let project = read_project(&tx, &org, &id)?;
            tx.commit().map_err(db)?;
            Ok(project)
        })
        .await
    }
}
