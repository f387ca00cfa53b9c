//! Memberships on SQLite: [`MemberStore`].
//!
//! `memberships` (schema version 1) holds one row per (org, user) with the role;
//! `project_members` (version 4) which projects a member is on, keyed so that one user's
//! projects in an org are one range scan. The owner guards are [`rules`]'.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use tally_core::ids::{OrgId, ProjectId, UserId};
use tally_core::ports::*;
use tally_core::tenant::*;

use super::*;

pub(super) fn role_of(s: &str) -> Result<Role, StoreError> {
    Role::parse(s).ok_or_else(|| corrupt(format!("membership role {s:?}")))
}

/// The memberships a `SELECT <id>, role, created_at FROM memberships WHERE … = ?1` query
/// finds for `key`, in the query's order; `ids` reads the row's id into the (org, user)
/// pair. Listing an org's members and a user's memberships decode their rows alike.
pub(super) fn query_memberships(
    conn: &rusqlite::Connection,
    sql: &str,
    key: &str,
    ids: impl Fn(&str) -> Result<(OrgId, UserId), StoreError>,
) -> Result<Vec<Membership>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(db)?;
    let rows = stmt
        .query_map(params![key], |r| <(String, String, String)>::try_from(r))
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, role, created) = row.map_err(db)?;
        let (org_id, user_id) = ids(&id)?;
        out.push(Membership {
            org_id,
            user_id,
            role: role_of(&role)?,
            created_at: parse_ts(&created)?,
        });
    }
    Ok(out)
}

impl SqliteStore {
    /// Adds a membership inside a write transaction: `Conflict` for an owner or a member
    /// already, `NotFound` for a missing org or user.
    pub(super) fn insert_member(
        tx: &rusqlite::Transaction<'_>,
        m: &Membership,
    ) -> Result<(), StoreError> {
        rules::check_new_member(m.role)?;
        let exists = |sql: &str, id: &str| {
            tx.prepare_cached(sql)
                .and_then(|mut s| s.exists(params![id]))
                .map_err(db)
        };
        require_live_org(tx, &m.org_id)?;
        if !exists("SELECT 1 FROM users WHERE id = ?1", m.user_id.as_str())? {
            return Err(StoreError::NotFound {
                what: format!("user {}", m.user_id),
            });
        }
        let added = tx
            .prepare_cached(
                "INSERT INTO memberships (org, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (org, user_id) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    m.org_id.as_str(),
                    m.user_id.as_str(),
                    m.role.as_str(),
                    ts_text(m.created_at)
                ])
            })
            .map_err(db)?;
        if added == 0 {
            return Err(StoreError::Conflict {
                what: format!("membership of user {} in org {}", m.user_id, m.org_id),
            });
        }
        Ok(())
    }

    /// Reads a membership inside a write transaction, refusing the owner's.
    fn member_for_change(
        tx: &rusqlite::Transaction<'_>,
        org: &OrgId,
        user: &UserId,
    ) -> Result<Option<Membership>, StoreError> {
        let row = tx
            .prepare_cached(
                "SELECT role, created_at FROM memberships WHERE org = ?1 AND user_id = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![org.as_str(), user.as_str()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()
            })
            .map_err(db)?;
        let Some((role, created)) = row else {
            return Ok(None);
        };
        let role = role_of(&role)?;
        rules::check_member_change(role)?;
        Ok(Some(Membership {
            org_id: org.clone(),
            user_id: user.clone(),
            role,
            created_at: parse_ts(&created)?,
        }))
    }
}

#[async_trait]
impl MemberStore for SqliteStore {
    async fn get_role(&self, org: &OrgId, user: &UserId) -> Result<Option<Role>, StoreError> {
        let (org, user) = (org.as_str().to_owned(), user.as_str().to_owned());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT m.role FROM memberships m JOIN orgs o ON o.id = m.org
                 WHERE m.org = ?1 AND m.user_id = ?2 AND o.deleted_at IS NULL",
            )
            .and_then(|mut s| {
                s.query_row(params![org, user], |r| r.get::<_, String>(0))
                    .optional()
            })
            .map_err(db)?
            .as_deref()
            .map(role_of)
            .transpose()
        })
        .await
    }

    async fn list_members(&self, org: &OrgId) -> Result<Vec<Membership>, StoreError> {
        let org_id = org.clone();
        self.read(move |conn| {
            query_memberships(
                conn,
                "SELECT user_id, role, created_at FROM memberships WHERE org = ?1
                 ORDER BY created_at, user_id",
                org_id.as_str(),
                |user| Ok((org_id.clone(), parse_id(user, UserId::parse)?)),
            )
        })
        .await
    }

    async fn add_member(&self, m: &Membership) -> Result<(), StoreError> {
        let m = m.clone();
        self.write(move |conn| {
            let tx = immediate(conn)?;
            Self::insert_member(&tx, &m)?;
            tx.commit().map_err(db)
        })
        .await
    }

    async fn set_member_role(
        &self,
        org: &OrgId,
        user: &UserId,
        role: Role,
    ) -> Result<Option<Membership>, StoreError> {
        let (org, user) = (org.clone(), user.clone());
        self.write(move |conn| {
            let tx = immediate(conn)?;
            rules::check_new_member(role)?;
            let Some(before) = Self::member_for_change(&tx, &org, &user)? else {
                return Ok(None);
            };
            tx.prepare_cached("UPDATE memberships SET role = ?3 WHERE org = ?1 AND user_id = ?2")
                .and_then(|mut s| s.execute(params![org.as_str(), user.as_str(), role.as_str()]))
                .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(Some(before))
        })
        .await
    }

    async fn remove_member(
        &self,
        org: &OrgId,
        user: &UserId,
    ) -> Result<Option<Membership>, StoreError> {
        let (org, user) = (org.clone(), user.clone());
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let Some(before) = Self::member_for_change(&tx, &org, &user)? else {
                return Ok(None);
            };
            tx.prepare_cached("DELETE FROM memberships WHERE org = ?1 AND user_id = ?2")
                .and_then(|mut s| s.execute(params![org.as_str(), user.as_str()]))
                .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(Some(before))
        })
        .await
    }

    async fn transfer_ownership(
        &self,
        org: &OrgId,
        from: &UserId,
        to: &UserId,
    ) -> Result<Option<Org>, StoreError> {
        let (org, from, to) = (org.clone(), from.clone(), to.clone());
        self.write(move |conn| {
            let tx = immediate(conn)?;
            let owner: Option<String> = tx
                .prepare_cached("SELECT owner_id FROM orgs WHERE id = ?1")
                .and_then(|mut s| s.query_row(params![org.as_str()], |r| r.get(0)).optional())
                .map_err(db)?;
            let Some(owner) = owner else {
                return Ok(None);
            };
            let role_of_user = |u: &UserId| {
                tx.prepare_cached("SELECT role FROM memberships WHERE org = ?1 AND user_id = ?2")
                    .and_then(|mut s| {
                        s.query_row(params![org.as_str(), u.as_str()], |r| r.get::<_, String>(0))
                            .optional()
                    })
                    .map_err(db)?
                    .map(|r| role_of(&r))
                    .transpose()
            };
            let owner = parse_id(&owner, UserId::parse)?;
            let (from_role, to_role) = (role_of_user(&from)?, role_of_user(&to)?);
            if rules::check_transfer(&org, &owner, &from, from_role, &to, to_role)? {
                let set = |u: &UserId, role: Role| {
                    tx.prepare_cached(
                        "UPDATE memberships SET role = ?3 WHERE org = ?1 AND user_id = ?2",
                    )
                    .and_then(|mut s| s.execute(params![org.as_str(), u.as_str(), role.as_str()]))
                    .map_err(db)
                };
                set(&from, Role::Admin)?;
                set(&to, Role::Owner)?;
                tx.prepare_cached("UPDATE orgs SET owner_id = ?2 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![org.as_str(), to.as_str()]))
                    .map_err(db)?;
            }
            let org = read_org(&tx, org.as_str())?;
            tx.commit().map_err(db)?;
            Ok(org)
        })
        .await
    }

    async fn add_project_member(
        &self,
        org: &OrgId,
        project: &ProjectId,
        user: &UserId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (org, project, user) = (
            org.as_str().to_owned(),
            project.as_str().to_owned(),
            user.as_str().to_owned(),
        );
        self.write(move |conn| {
            let tx = immediate(conn)?;
            if read_project(&tx, &org, &project)?.is_none() {
                return Err(StoreError::NotFound {
                    what: format!("project {project} in org {org}"),
                });
            }
            let member = tx
                .prepare_cached("SELECT 1 FROM memberships WHERE org = ?1 AND user_id = ?2")
                .and_then(|mut s| s.exists(params![org, user]))
                .map_err(db)?;
            if !member {
                return Err(StoreError::NotFound {
                    what: format!("member {user} of org {org}"),
                });
            }
            let added = tx
                .prepare_cached(
                    "INSERT INTO project_members (org, user_id, project, created_at)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )
                .and_then(|mut s| s.execute(params![org, user, project, ts_text(at)]))
                .map_err(db)?;
            if added == 0 {
                return Err(StoreError::Conflict {
                    what: format!("user {user} on project {project}"),
                });
            }
            tx.commit().map_err(db)
        })
        .await
    }

    async fn remove_project_member(
        &self,
        org: &OrgId,
        project: &ProjectId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let (org, project, user) = (
            org.as_str().to_owned(),
            project.as_str().to_owned(),
            user.as_str().to_owned(),
        );
        self.write(move |conn| {
            let removed = conn
                .prepare_cached(
                    "DELETE FROM project_members WHERE org = ?1 AND user_id = ?2 AND project = ?3",
                )
                .and_then(|mut s| s.execute(params![org, user, project]))
                .map_err(db)?;
            Ok(removed > 0)
        })
        .await
    }

    async fn list_user_projects(
        &self,
        org: &OrgId,
        user: &UserId,
    ) -> Result<Vec<ProjectId>, StoreError> {
        let (org, user) = (org.as_str().to_owned(), user.as_str().to_owned());
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT project FROM project_members WHERE org = ?1 AND user_id = ?2
                     ORDER BY project",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![org, user], |r| r.get::<_, String>(0))
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(parse_id(&row.map_err(db)?, ProjectId::parse)?);
            }
            Ok(out)
        })
        .await
    }
}
