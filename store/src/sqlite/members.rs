//! Memberships on SQLite: [`MemberStore`].
//!
//! `memberships` (schema version 1) holds one row per (org, user) with the role;
//! `project_members` (version 4) which projects a member is on, keyed so that one user's
//! projects in an org are one range scan. The owner guards are [`rules`]'.

use async_trait::async_trait;
use rusqlite::params;
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
    let row = |r: &rusqlite::Row<'_>| <(String, String, String)>::try_from(r);
    query_all(conn, sql, params![key], row, |(id, role, created)| {
        let (org_id, user_id) = ids(&id)?;
        Ok(Membership {
            org_id,
            user_id,
            role: role_of(&role)?,
            created_at: parse_ts(&created)?,
        })
    })
}

/// Sets a member's role inside a write transaction (no checks: the caller made them).
fn set_role(
    tx: &rusqlite::Transaction<'_>,
    org: &OrgId,
    user: &UserId,
    role: Role,
) -> Result<usize, StoreError> {
    execute(
        tx,
        "UPDATE memberships SET role = ?3 WHERE org = ?1 AND user_id = ?2",
        params![org.as_str(), user.as_str(), role.as_str()],
    )
}

impl SqliteStore {
    /// Adds a membership inside a write transaction: `Conflict` for an owner or a member
    /// already, `NotFound` for a missing org or user.
    pub(super) fn insert_member(
        tx: &rusqlite::Transaction<'_>,
        m: &Membership,
    ) -> Result<(), StoreError> {
        rules::check_new_member(m.role)?;
        require_live_org(tx, &m.org_id)?;
        if !exists(
            tx,
            "SELECT 1 FROM users WHERE id = ?1",
            params![m.user_id.as_str()],
        )? {
            return Err(StoreError::NotFound {
                what: format!("user {}", m.user_id),
            });
        }
        let added = execute(
            tx,
            "INSERT INTO memberships (org, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (org, user_id) DO NOTHING",
            params![
                m.org_id.as_str(),
                m.user_id.as_str(),
                m.role.as_str(),
                ts_text(m.created_at)
            ],
        )?;
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
        let row = query_opt(
            tx,
            "SELECT role, created_at FROM memberships WHERE org = ?1 AND user_id = ?2",
            params![org.as_str(), user.as_str()],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )?;
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
            read_one(
                conn,
                "SELECT m.role FROM memberships m JOIN orgs o ON o.id = m.org
                 WHERE m.org = ?1 AND m.user_id = ?2 AND o.deleted_at IS NULL",
                params![org, user],
                |r| r.get::<_, String>(0),
                |r| role_of(&r),
            )
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
        self.transact(move |tx| Self::insert_member(tx, &m)).await
    }

    async fn set_member_role(&self, c: &RoleChange<'_>) -> Result<Option<Membership>, StoreError> {
        let (org, user, role) = (c.org, c.user, c.role);
        let (org, user) = (org.clone(), user.clone());
        self.transact(move |tx| {
            rules::check_new_member(role)?;
            let Some(before) = Self::member_for_change(tx, &org, &user)? else {
                return Ok(None);
            };
            set_role(tx, &org, &user, role)?;
            Ok(Some(before))
        })
        .await
    }

    async fn remove_member(&self, m: &OrgMember<'_>) -> Result<Option<Membership>, StoreError> {
        let (org, user) = (m.org, m.user);
        let (org, user) = (org.clone(), user.clone());
        self.transact(move |tx| {
            let Some(before) = Self::member_for_change(tx, &org, &user)? else {
                return Ok(None);
            };
            execute(
                tx,
                "DELETE FROM memberships WHERE org = ?1 AND user_id = ?2",
                params![org.as_str(), user.as_str()],
            )?;
            Ok(Some(before))
        })
        .await
    }

    async fn transfer_ownership(&self, t: &OwnerTransfer<'_>) -> Result<Option<Org>, StoreError> {
        let (org, from, to) = (t.org, t.from, t.to);
        let (org, from, to) = (org.clone(), from.clone(), to.clone());
        self.transact(move |tx| {
            let owner: Option<String> = query_opt(
                tx,
                "SELECT owner_id FROM orgs WHERE id = ?1",
                params![org.as_str()],
                |r| r.get(0),
            )?;
            let Some(owner) = owner else {
                return Ok(None);
            };
            let role_of_user = |u: &UserId| {
                read_one(
                    tx,
                    "SELECT role FROM memberships WHERE org = ?1 AND user_id = ?2",
                    params![org.as_str(), u.as_str()],
                    |r| r.get::<_, String>(0),
                    |r: String| role_of(&r),
                )
            };
            let owner = parse_id(&owner, UserId::parse)?;
            let (from_role, to_role) = (role_of_user(&from)?, role_of_user(&to)?);
            if rules::check_transfer(&org, &owner, &from, from_role, &to, to_role)? {
                set_role(tx, &org, &from, Role::Admin)?;
                set_role(tx, &org, &to, Role::Owner)?;
                execute(
                    tx,
                    "UPDATE orgs SET owner_id = ?2 WHERE id = ?1",
                    params![org.as_str(), to.as_str()],
                )?;
            }
            read_org(tx, org.as_str())
        })
        .await
    }

    async fn add_project_member(&self, m: &NewProjectMember<'_>) -> Result<(), StoreError> {
        let (org, project, user, at) = (m.org, m.project, m.user, m.at);
        let (org, project, user) = (
            org.as_str().to_owned(),
            project.as_str().to_owned(),
            user.as_str().to_owned(),
        );
        self.transact(move |tx| {
            if read_project(tx, &org, &project)?.is_none() {
                return Err(StoreError::NotFound {
                    what: format!("project {project} in org {org}"),
                });
            }
            let member = exists(
                tx,
                "SELECT 1 FROM memberships WHERE org = ?1 AND user_id = ?2",
                params![org, user],
            )?;
            if !member {
                return Err(StoreError::NotFound {
                    what: format!("member {user} of org {org}"),
                });
            }
            let added = execute(
                tx,
                "INSERT INTO project_members (org, user_id, project, created_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![org, user, project, ts_text(at)],
            )?;
            if added == 0 {
                return Err(StoreError::Conflict {
                    what: format!("user {user} on project {project}"),
                });
            }
            Ok(())
        })
        .await
    }

    async fn remove_project_member(&self, m: &ProjectMember<'_>) -> Result<bool, StoreError> {
        let (org, project, user) = (m.org, m.project, m.user);
        let (org, project, user) = (
            org.as_str().to_owned(),
            project.as_str().to_owned(),
            user.as_str().to_owned(),
        );
        self.write(move |conn| {
            let removed = execute(
                conn,
                "DELETE FROM project_members WHERE org = ?1 AND user_id = ?2 AND project = ?3",
                params![org, user, project],
            )?;
            Ok(removed > 0)
        })
        .await
    }

    async fn list_user_projects(&self, m: &OrgMember<'_>) -> Result<Vec<ProjectId>, StoreError> {
        let (org, user) = (m.org, m.user);
        let (org, user) = (org.as_str().to_owned(), user.as_str().to_owned());
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT project FROM project_members WHERE org = ?1 AND user_id = ?2
                 ORDER BY project",
                params![org, user],
                |r| r.get::<_, String>(0),
                |id| parse_id(&id, ProjectId::parse),
            )
        })
        .await
    }
}
