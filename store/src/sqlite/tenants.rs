//! Users, orgs and projects on SQLite: [`UserStore`], [`OrgStore`] and [`ProjectStore`].
//!
//! `users`, `orgs`, `projects` and `memberships` come from schema version 1; an org and its
//! owner's membership are written in one transaction. Soft deletion (`orgs.deleted_at`) and
//! archiving (`projects.archived_at`) come from version 4.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
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
    read_one(
        conn,
        "SELECT id, name, slug, plan, owner_id, created_at, deleted_at FROM orgs WHERE id = ?1",
        params![id],
        |r| r.try_into(),
        org_of,
    )
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
    let sql = format!("SELECT {PROJECT_COLS} FROM projects WHERE org = ?1 AND id = ?2");
    read_one(conn, &sql, params![org, id], project_row, project_of)
}

pub(super) fn org_exists(conn: &Connection, org: &OrgId) -> Result<bool, StoreError> {
    exists(
        conn,
        "SELECT 1 FROM orgs WHERE id = ?1",
        params![org.as_str()],
    )
}

/// `NotFound` unless the org exists and is not deleted: what adding anything to it needs,
/// refused the same way for members, projects, keys and invitations.
pub(super) fn require_live_org(conn: &Connection, org: &OrgId) -> Result<(), StoreError> {
    let live = exists(
        conn,
        "SELECT 1 FROM orgs WHERE id = ?1 AND deleted_at IS NULL",
        params![org.as_str()],
    )?;
    rules::require_live_org(org, live)
}

/// The user whose `column` (`id`, or `email` lowercased: both unique) is `value`.
async fn user_where(
    store: &SqliteStore,
    column: &'static str,
    value: String,
) -> Result<Option<User>, StoreError> {
    store
        .read(move |conn| {
            let sql = format!("SELECT {USER_COLS} FROM users WHERE {column} = ?1");
            read_one(conn, &sql, params![value], user_row, user_of)
        })
        .await
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn ensure_user(&self, candidate: &User) -> Result<User, StoreError> {
        let id = candidate.id.as_str().to_owned();
        let email = candidate.email.to_lowercase();
        let created = ts_text(candidate.created_at);
        self.transact(move |tx| {
            let sql = format!("SELECT {USER_COLS} FROM users WHERE email = ?1");
            if let Some(row) = query_opt(tx, &sql, params![email], user_row)? {
                return user_of(row);
            }
            if exists(tx, "SELECT 1 FROM users WHERE id = ?1", params![id])? {
                return Err(StoreError::Conflict {
                    what: format!("user id {id:?}"),
                });
            }
            execute(
                tx,
                "INSERT INTO users (id, email, created_at) VALUES (?1, ?2, ?3)",
                params![id, email, created],
            )?;
            user_of((id, email, created))
        })
        .await
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        user_where(self, "id", id.as_str().to_owned()).await
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        user_where(self, "email", email.to_lowercase()).await
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
        self.transact(move |tx| {
            let owner = org.owner_id.as_str();
            if !exists(tx, "SELECT 1 FROM users WHERE id = ?1", params![owner])? {
                return Err(StoreError::NotFound {
                    what: format!("user {}", org.owner_id),
                });
            }
            if exists(tx, "SELECT 1 FROM orgs WHERE slug = ?1", params![org.slug])? {
                return Err(StoreError::Conflict {
                    what: format!("org slug {:?}", org.slug),
                });
            }
            if org_exists(tx, &org.id)? {
                return Err(StoreError::Conflict {
                    what: format!("org {}", org.id),
                });
            }
            let created = ts_text(org.created_at);
            execute(
                tx,
                "INSERT INTO orgs (id, slug, name, plan, owner_id, created_at, deleted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    org.id.as_str(),
                    org.slug,
                    org.name,
                    org.plan.as_str(),
                    owner,
                    created,
                    org.deleted_at.map(ts_text)
                ],
            )?;
            execute(
                tx,
                "INSERT INTO memberships (org, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![org.id.as_str(), owner, Role::Owner.as_str(), created],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_org(&self, id: &OrgId) -> Result<Option<Org>, StoreError> {
        let id = id.as_str().to_owned();
        self.read(move |conn| read_org(conn, &id)).await
    }

    async fn list_org_ids(&self) -> Result<Vec<OrgId>, StoreError> {
        self.read(|conn| {
            query_all(
                conn,
                "SELECT id FROM orgs ORDER BY id",
                [],
                |r| r.get::<_, String>(0),
                |id| parse_id(&id, OrgId::parse),
            )
        })
        .await
    }

    async fn update_org(
        &self,
        id: &OrgId,
        changes: &OrgChanges,
    ) -> Result<Option<Org>, StoreError> {
        let id = id.as_str().to_owned();
        let name = changes.name.clone();
        self.transact(move |tx| {
            execute(
                tx,
                "UPDATE orgs SET name = coalesce(?2, name) WHERE id = ?1",
                params![id, name],
            )?;
            read_org(tx, &id)
        })
        .await
    }

    /// The org row and its history row in one write transaction (which also serializes
    /// racing changes: the second reads the first's plan as its `from`).
    async fn change_plan(&self, m: &PlanMove<'_>) -> Result<Option<Org>, StoreError> {
        let (id, plan, at) = (m.org, m.plan, m.at);
        // Fixed width (microseconds always written), so times compare and sort as text.
        let (id, at) = (
            id.as_str().to_owned(),
            at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        );
        self.transact(move |tx| {
            let Some(org) = read_org(tx, &id)?.filter(|o| o.deleted_at.is_none()) else {
                return Ok(None);
            };
            if org.plan == plan {
                return Ok(Some(org));
            }
            let last: Option<String> = query_opt(
                tx,
                "SELECT max(at) FROM plan_changes WHERE org = ?1",
                params![id],
                |r| r.get::<_, Option<String>>(0),
            )?
            .flatten();
            if let Some(last) = last.filter(|l| *l > at) {
                return Err(StoreError::Conflict {
                    what: format!("the plan of org {id} (it changed later, at {last})"),
                });
            }
            execute(
                tx,
                "UPDATE orgs SET plan = ?2 WHERE id = ?1",
                params![id, plan.as_str()],
            )?;
            execute(
                tx,
                "INSERT INTO plan_changes (org, at, from_plan, to_plan) VALUES (?1, ?2, ?3, ?4)",
                params![id, at, org.plan.as_str(), plan.as_str()],
            )?;
            read_org(tx, &id)
        })
        .await
    }

    async fn plan_history(&self, id: &OrgId) -> Result<Vec<PlanChange>, StoreError> {
        let org = id.clone();
        let key = id.as_str().to_owned();
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT at, from_plan, to_plan FROM plan_changes WHERE org = ?1 ORDER BY at, seq",
                params![key],
                |r| r.try_into(),
                |(at, from, to): (String, String, String)| {
                    let plan = |p: &str| {
                        PlanId::parse(p)
                            .ok_or_else(|| corrupt(format!("plan {p:?} in plan_changes")))
                    };
                    Ok(PlanChange {
                        org_id: org.clone(),
                        from: plan(&from)?,
                        to: plan(&to)?,
                        at: parse_ts(&at)?,
                    })
                },
            )
        })
        .await
    }

    async fn delete_org(&self, id: &OrgId, at: DateTime<Utc>) -> Result<Option<Org>, StoreError> {
        let (id, at) = (id.as_str().to_owned(), ts_text(at));
        self.transact(move |tx| {
            let marked = execute(
                tx,
                "UPDATE orgs SET deleted_at = coalesce(deleted_at, ?2) WHERE id = ?1",
                params![id, at],
            )?;
            if marked == 0 {
                return Ok(None);
            }
            execute(
                tx,
                "UPDATE api_keys SET revoked_at = ?2 WHERE org = ?1 AND revoked_at IS NULL",
                params![id, at],
            )?;
            read_org(tx, &id)
        })
        .await
    }
}

#[async_trait]
impl ProjectStore for SqliteStore {
    async fn create_project(&self, project: &Project) -> Result<(), StoreError> {
        let p = project.clone();
        self.transact(move |tx| {
            require_live_org(tx, &p.org_id)?;
            let org = p.org_id.as_str();
            let slug_taken = exists(
                tx,
                "SELECT 1 FROM projects WHERE org = ?1 AND slug = ?2",
                params![org, p.slug],
            )?;
            if slug_taken {
                return Err(StoreError::Conflict {
                    what: format!("project slug {:?} in org {}", p.slug, p.org_id),
                });
            }
            let id_taken = exists(
                tx,
                "SELECT 1 FROM projects WHERE org = ?1 AND id = ?2",
                params![org, p.id.as_str()],
            )?;
            if id_taken {
                return Err(StoreError::Conflict {
                    what: format!("project {}", p.id),
                });
            }
            execute(
                tx,
                "INSERT INTO projects (org, id, slug, name, created_at, archived_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    org,
                    p.id.as_str(),
                    p.slug,
                    p.name,
                    ts_text(p.created_at),
                    p.archived_at.map(ts_text)
                ],
            )?;
            Ok(())
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
            let sql = format!(
                "SELECT {PROJECT_COLS} FROM projects WHERE org = ?1 ORDER BY created_at, id"
            );
            query_all(conn, &sql, params![org], project_row, project_of)
        })
        .await
    }

    async fn update_project(&self, u: &ProjectUpdate<'_>) -> Result<Option<Project>, StoreError> {
        let (org, id, changes) = (u.org, u.id, u.changes);
        let (org, id) = (org.as_str().to_owned(), id.as_str().to_owned());
        let (name, archive) = (changes.name.clone(), changes.archive_at.map(ts_text));
        self.transact(move |tx| {
            execute(
                tx,
                "UPDATE projects SET name = coalesce(?3, name),
                                     archived_at = coalesce(archived_at, ?4)
                 WHERE org = ?1 AND id = ?2",
                params![org, id, name, archive],
            )?;
            read_project(tx, &org, &id)
        })
        .await
    }
}
