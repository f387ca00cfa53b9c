//! The management API's part of [`TenantStore`](tally_core::ports::TenantStore) on SQLite:
//! memberships, key listing and revocation, the audit trail and invitations.
//!
//! The `memberships` and `api_keys` tables come from schema version 1. Version 2 adds the
//! audit trail ([`SCHEMA_V2`]): one row per record keyed `(org, sk)`, `sk` being the
//! record's [`AuditRecord::sort_key`] (microsecond instant, then id), so an org's trail,
//! newest first, is one backward range scan of the primary key. `expires_at` (Unix seconds,
//! 90 days after the record) plays DynamoDB's TTL: reads skip expired rows and every write
//! deletes the expired rows of all orgs through the `audit_by_expiry` index.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tally_core::ids::{ApiKeyId, InvitationId, OrgId, ProjectId, UserId};
use tally_core::ports::StoreError;
use tally_core::tenant::{
    ApiKey, AuditPage, AuditQuery, AuditRecord, Invitation, KeyHash, KeyUse, MAX_AUDIT_PAGE,
    MAX_KEY_USES_PER_CALL, Membership, Org, OrgChanges, Project, ProjectChanges, Role,
    audit_instant_key, last_used_text,
};

use super::{
    KeyRow, SqliteStore, corrupt, db, key_of, org_is_live, parse_id, parse_ts, read_org,
    read_project, ts_text,
};

/// Schema version 2: the audit trail.
pub(super) const SCHEMA_V2: &str = r#"
CREATE TABLE IF NOT EXISTS audit (
    org         TEXT NOT NULL,
    sk          TEXT NOT NULL,      -- 20-digit Unix microseconds '#' record id
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,   -- Unix seconds; the record's TTL
    body        TEXT NOT NULL,      -- the whole record, JSON
    PRIMARY KEY (org, sk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_by_expiry ON audit (expires_at);
"#;

/// Schema version 4: invitations and soft-deleted orgs. One row per invitation keyed
/// `(org, id)`, found by the token's hash through a unique index; `expires_unix` (Unix
/// seconds) lets writes prune expired rows, as DynamoDB's TTL would, and reads check the
/// expiry themselves. `orgs.deleted_at` marks a deleted org, `projects.archived_at` an
/// archived project, `api_keys.last_used_at` when ingest last accepted a key;
/// `project_members` says which projects a member is on, keyed so that one user's
/// projects in an org are one range scan.
pub(super) const SCHEMA_V4: &str = r#"
CREATE TABLE IF NOT EXISTS invitations (
    org          TEXT NOT NULL,
    id           TEXT NOT NULL,
    hash         TEXT NOT NULL,     -- SHA-256 hex of the token
    email        TEXT NOT NULL,     -- lowercased
    role         TEXT NOT NULL,
    invited_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    expires_unix INTEGER NOT NULL,  -- Unix seconds of expires_at, rounded up
    accepted_at  TEXT,
    PRIMARY KEY (org, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS invitations_by_hash ON invitations (hash);
CREATE INDEX IF NOT EXISTS invitations_by_expiry ON invitations (expires_unix);
ALTER TABLE orgs ADD COLUMN deleted_at TEXT;  -- soft delete; NULL while live
ALTER TABLE projects ADD COLUMN archived_at TEXT;  -- NULL while active
ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;  -- fixed-width micros: compares as text
CREATE TABLE IF NOT EXISTS project_members (
    org         TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    project     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (org, user_id, project)
) WITHOUT ROWID;
"#;

const INVITATION_COLS: &str =
    "org, id, hash, email, role, invited_by, created_at, expires_at, accepted_at";

type InvitationRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
);

fn invitation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InvitationRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

fn invitation_of(row: InvitationRow) -> Result<Invitation, StoreError> {
    let (org, id, hash, email, role, by, created, expires, accepted) = row;
    Ok(Invitation {
        id: parse_id(&id, InvitationId::parse)?,
        org_id: parse_id(&org, OrgId::parse)?,
        hash: KeyHash::from_hex(&hash).ok_or_else(|| corrupt("invitation hash"))?,
        email,
        role: role_of(&role)?,
        invited_by: parse_id(&by, UserId::parse)?,
        created_at: parse_ts(&created)?,
        expires_at: parse_ts(&expires)?,
        accepted_at: accepted.as_deref().map(parse_ts).transpose()?,
    })
}

/// Unix seconds of `t`, rounded up (an invitation is expired once `now >= expires_at`).
fn unix_ceil(t: DateTime<Utc>) -> i64 {
    let s = t.timestamp();
    if t.timestamp_subsec_nanos() > 0 {
        s.saturating_add(1)
    } else {
        s
    }
}

/// Reads an invitation by hash (on a plain connection or inside a transaction).
fn read_invitation(conn: &Connection, hash: &str) -> Result<Option<Invitation>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {INVITATION_COLS} FROM invitations WHERE hash = ?1"
    ))
    .and_then(|mut s| s.query_row(params![hash], invitation_row).optional())
    .map_err(db)?
    .map(invitation_of)
    .transpose()
}

const KEY_COLS: &str = "org, id, hash, name, display_prefix, scopes, created_at, expires_at,
     revoked_at, last_used_at";

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok(KeyRow {
        org: r.get(0)?,
        id: r.get(1)?,
        hash: r.get(2)?,
        name: r.get(3)?,
        prefix: r.get(4)?,
        scopes: r.get(5)?,
        created: r.get(6)?,
        expires: r.get(7)?,
        revoked: r.get(8)?,
        last_used: r.get(9)?,
    })
}

fn role_of(s: &str) -> Result<Role, StoreError> {
    Role::parse(s).ok_or_else(|| corrupt(format!("membership role {s:?}")))
}

impl SqliteStore {
    pub(super) async fn mgmt_update_org(
        &self,
        id: &OrgId,
        changes: &OrgChanges,
    ) -> Result<Option<Org>, StoreError> {
        let id = id.as_str().to_owned();
        let (name, plan) = (changes.name.clone(), changes.plan.map(|p| p.as_str()));
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
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

    pub(super) async fn mgmt_delete_org(
        &self,
        id: &OrgId,
        at: DateTime<Utc>,
    ) -> Result<Option<Org>, StoreError> {
        let (id, at) = (id.as_str().to_owned(), ts_text(at));
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
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

    pub(super) async fn mgmt_update_project(
        &self,
        org: &OrgId,
        id: &ProjectId,
        changes: &ProjectChanges,
    ) -> Result<Option<Project>, StoreError> {
        let (org, id) = (org.as_str().to_owned(), id.as_str().to_owned());
        let (name, archive) = (changes.name.clone(), changes.archive_at.map(ts_text));
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
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

    pub(super) async fn mgmt_touch_api_keys(&self, uses: &[KeyUse]) -> Result<(), StoreError> {
        if uses.len() > MAX_KEY_USES_PER_CALL {
            return Err(StoreError::Unavailable(format!(
                "at most {MAX_KEY_USES_PER_CALL} key uses per call, got {}",
                uses.len()
            )));
        }
        let uses = uses.to_vec();
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE api_keys SET last_used_at = ?3
                         WHERE hash = ?1 AND org = ?2
                           AND (last_used_at IS NULL OR last_used_at < ?3)",
                    )
                    .map_err(db)?;
                for u in &uses {
                    stmt.execute(params![
                        u.hash.as_str(),
                        u.org_id.as_str(),
                        last_used_text(u.at)
                    ])
                    .map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
        .await
    }

    pub(super) async fn mgmt_add_project_member(
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
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
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

    pub(super) async fn mgmt_remove_project_member(
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

    pub(super) async fn mgmt_list_user_projects(
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

    pub(super) async fn mgmt_get_role(
        &self,
        org: &OrgId,
        user: &UserId,
    ) -> Result<Option<Role>, StoreError> {
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

    pub(super) async fn mgmt_list_members(
        &self,
        org: &OrgId,
    ) -> Result<Vec<Membership>, StoreError> {
        let org_id = org.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT user_id, role, created_at FROM memberships WHERE org = ?1
                     ORDER BY created_at, user_id",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![org_id.as_str()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (user, role, created) = row.map_err(db)?;
                out.push(Membership {
                    org_id: org_id.clone(),
                    user_id: parse_id(&user, UserId::parse)?,
                    role: role_of(&role)?,
                    created_at: parse_ts(&created)?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn mgmt_add_member(&self, m: &Membership) -> Result<(), StoreError> {
        let m = m.clone();
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            Self::insert_member(&tx, &m)?;
            tx.commit().map_err(db)
        })
        .await
    }

    /// Adds a membership inside a write transaction: `Conflict` for an owner or a member
    /// already, `NotFound` for a missing org or user.
    fn insert_member(tx: &rusqlite::Transaction<'_>, m: &Membership) -> Result<(), StoreError> {
        if m.role == Role::Owner {
            return Err(StoreError::Conflict {
                what: "an owner of the org (ownership moves only by transfer)".into(),
            });
        }
        let exists = |sql: &str, id: &str| {
            tx.prepare_cached(sql)
                .and_then(|mut s| s.exists(params![id]))
                .map_err(db)
        };
        if !org_is_live(tx, m.org_id.as_str())? {
            return Err(StoreError::NotFound {
                what: format!("org {}", m.org_id),
            });
        }
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
        if role == Role::Owner {
            return Err(StoreError::Conflict {
                what: "the owner's membership cannot change except by transfer; an owner".into(),
            });
        }
        Ok(Some(Membership {
            org_id: org.clone(),
            user_id: user.clone(),
            role,
            created_at: parse_ts(&created)?,
        }))
    }

    pub(super) async fn mgmt_set_member_role(
        &self,
        org: &OrgId,
        user: &UserId,
        role: Role,
    ) -> Result<Option<Membership>, StoreError> {
        let (org, user) = (org.clone(), user.clone());
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            if role == Role::Owner {
                return Err(StoreError::Conflict {
                    what: "an owner of the org (ownership moves only by transfer)".into(),
                });
            }
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

    pub(super) async fn mgmt_remove_member(
        &self,
        org: &OrgId,
        user: &UserId,
    ) -> Result<Option<Membership>, StoreError> {
        let (org, user) = (org.clone(), user.clone());
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
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

    pub(super) async fn mgmt_transfer_ownership(
        &self,
        org: &OrgId,
        from: &UserId,
        to: &UserId,
    ) -> Result<Option<Org>, StoreError> {
        let (org, from, to) = (org.clone(), from.clone(), to.clone());
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
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
                    .map_err(db)
            };
            if owner != from.as_str() || role_of_user(&from)?.as_deref() != Some("owner") {
                return Err(StoreError::Conflict {
                    what: format!("a different owner of org {org}"),
                });
            }
            if role_of_user(&to)?.is_none() {
                return Err(StoreError::NotFound {
                    what: format!("member {to} of org {org}"),
                });
            }
            if from != to {
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

    pub(super) async fn mgmt_list_user_memberships(
        &self,
        user: &UserId,
    ) -> Result<Vec<Membership>, StoreError> {
        let user_id = user.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT org, role, created_at FROM memberships WHERE user_id = ?1 ORDER BY org",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![user_id.as_str()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (org, role, created) = row.map_err(db)?;
                out.push(Membership {
                    org_id: parse_id(&org, OrgId::parse)?,
                    user_id: user_id.clone(),
                    role: role_of(&role)?,
                    created_at: parse_ts(&created)?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn mgmt_list_api_keys(&self, org: &OrgId) -> Result<Vec<ApiKey>, StoreError> {
        let org = org.as_str().to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLS} FROM api_keys WHERE org = ?1 ORDER BY created_at, id"
                ))
                .map_err(db)?;
            let rows = stmt.query_map(params![org], key_row).map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(key_of(row.map_err(db)?)?);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn mgmt_revoke_api_key(
        &self,
        org: &OrgId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let (org, id, at) = (org.as_str().to_owned(), id.as_str().to_owned(), ts_text(at));
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            tx.prepare_cached(
                "UPDATE api_keys SET revoked_at = ?3
                 WHERE org = ?1 AND id = ?2 AND revoked_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![org, id, at]))
            .map_err(db)?;
            let key = tx
                .prepare_cached(&format!(
                    "SELECT {KEY_COLS} FROM api_keys WHERE org = ?1 AND id = ?2"
                ))
                .and_then(|mut s| s.query_row(params![org, id], key_row).optional())
                .map_err(db)?
                .map(key_of)
                .transpose()?;
            tx.commit().map_err(db)?;
            Ok(key)
        })
        .await
    }

    pub(super) async fn mgmt_rotate_api_key(
        &self,
        old: &ApiKeyId,
        new: &ApiKey,
        old_expires_at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let (old, new) = (old.as_str().to_owned(), new.clone());
        let scopes = serde_json::to_string(&new.scopes)
            .map_err(|e| StoreError::Unavailable(format!("encoding scopes: {e}")))?;
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            let org = new.org_id.as_str();
            let current = tx
                .prepare_cached(&format!(
                    "SELECT {KEY_COLS} FROM api_keys WHERE org = ?1 AND id = ?2"
                ))
                .and_then(|mut s| s.query_row(params![org, old], key_row).optional())
                .map_err(db)?
                .map(key_of)
                .transpose()?;
            let Some(current) = current else {
                return Ok(None);
            };
            if current.revoked_at.is_some() {
                return Err(StoreError::Conflict {
                    what: format!("revocation of api key {old}"),
                });
            }
            let expires = current
                .expires_at
                .map_or(old_expires_at, |e| e.min(old_expires_at));
            tx.prepare_cached("UPDATE api_keys SET expires_at = ?3 WHERE org = ?1 AND id = ?2")
                .and_then(|mut s| s.execute(params![org, old, ts_text(expires)]))
                .map_err(db)?;
            tx.prepare_cached(
                "INSERT INTO api_keys (org, id, hash, name, display_prefix, scopes, created_at,
                                       expires_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    org,
                    new.id.as_str(),
                    new.hash.as_str(),
                    new.name,
                    new.display_prefix,
                    scopes,
                    ts_text(new.created_at),
                    new.expires_at.map(ts_text),
                    new.revoked_at.map(ts_text),
                ])
            })
            .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(Some(ApiKey {
                expires_at: Some(expires),
                ..current
            }))
        })
        .await
    }

    pub(super) async fn mgmt_record_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let body = serde_json::to_string(record)
            .map_err(|e| StoreError::Unavailable(format!("encoding audit record: {e}")))?;
        let r = record.clone();
        let now = r.at.timestamp();
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            tx.prepare_cached("DELETE FROM audit WHERE expires_at <= ?1")
                .and_then(|mut s| s.execute(params![now]))
                .map_err(db)?;
            tx.prepare_cached(
                "INSERT INTO audit (org, sk, actor, action, resource, expires_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (org, sk) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    r.org_id.as_str(),
                    r.sort_key(),
                    r.actor,
                    r.action,
                    r.resource,
                    r.expires_at().timestamp(),
                    body
                ])
            })
            .map_err(db)?;
            tx.commit().map_err(db)
        })
        .await
    }

    pub(super) async fn mgmt_list_audit(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        let q = q.clone();
        self.read(move |conn| {
            let limit = q.limit.clamp(1, MAX_AUDIT_PAGE);
            // Upper bound (exclusive): the cursor, else `to`, else everything.
            let upper = match (&q.cursor, q.to) {
                (Some(c), _) => c.clone(),
                (None, Some(to)) => audit_instant_key(to),
                (None, None) => "~".to_owned(),
            };
            let upper = match q.to {
                Some(to) if audit_instant_key(to) < upper => audit_instant_key(to),
                _ => upper,
            };
            let lower = q.from.map(audit_instant_key).unwrap_or_default();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT sk, body FROM audit
                     WHERE org = ?1 AND sk < ?2 AND sk >= ?3 AND expires_at > ?4
                       AND (?5 IS NULL OR actor = ?5)
                       AND (?6 IS NULL OR action = ?6)
                       AND (?7 IS NULL OR resource = ?7)
                     ORDER BY sk DESC LIMIT ?8",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(
                    params![
                        q.org.as_str(),
                        upper,
                        lower,
                        q.now.timestamp(),
                        q.actor,
                        q.action,
                        q.resource,
                        i64::try_from(limit + 1).unwrap_or(i64::MAX)
                    ],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )
                .map_err(db)?;
            let mut records = Vec::new();
            for row in rows {
                let (sk, body) = row.map_err(db)?;
                let record: AuditRecord = serde_json::from_str(&body)
                    .map_err(|e| corrupt(format!("audit record {sk:?}: {e}")))?;
                records.push(record);
            }
            let next = if records.len() > limit {
                records.truncate(limit);
                records.last().map(AuditRecord::sort_key)
            } else {
                None
            };
            Ok(AuditPage { records, next })
        })
        .await
    }
}

impl SqliteStore {
    pub(super) async fn mgmt_create_invitation(&self, inv: &Invitation) -> Result<(), StoreError> {
        let inv = inv.clone();
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            if inv.role == Role::Owner {
                return Err(StoreError::Conflict {
                    what: "an owner of the org (ownership moves only by transfer)".into(),
                });
            }
            if !org_is_live(&tx, inv.org_id.as_str())? {
                return Err(StoreError::NotFound {
                    what: format!("org {}", inv.org_id),
                });
            }
            // Expired invitations are gone for every reader; drop their rows here.
            tx.prepare_cached("DELETE FROM invitations WHERE expires_unix <= ?1")
                .and_then(|mut s| s.execute(params![inv.created_at.timestamp()]))
                .map_err(db)?;
            tx.prepare_cached(
                "INSERT INTO invitations (org, id, hash, email, role, invited_by, created_at,
                                          expires_at, expires_unix, accepted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    inv.org_id.as_str(),
                    inv.id.as_str(),
                    inv.hash.as_str(),
                    inv.email.to_lowercase(),
                    inv.role.as_str(),
                    inv.invited_by.as_str(),
                    ts_text(inv.created_at),
                    ts_text(inv.expires_at),
                    unix_ceil(inv.expires_at),
                    inv.accepted_at.map(ts_text),
                ])
            })
            .map_err(db)?;
            tx.commit().map_err(db)
        })
        .await
    }

    pub(super) async fn mgmt_list_invitations(
        &self,
        org: &OrgId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Invitation>, StoreError> {
        let org = org.as_str().to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {INVITATION_COLS} FROM invitations
                     WHERE org = ?1 AND accepted_at IS NULL ORDER BY created_at, id"
                ))
                .map_err(db)?;
            let rows = stmt.query_map(params![org], invitation_row).map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let inv = invitation_of(row.map_err(db)?)?;
                if inv.is_pending(now) {
                    out.push(inv);
                }
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn mgmt_find_invitation(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Invitation>, StoreError> {
        let hash = hash.as_str().to_owned();
        self.read(move |conn| Ok(read_invitation(conn, &hash)?.filter(|inv| inv.expires_at > now)))
            .await
    }

    pub(super) async fn mgmt_revoke_invitation(
        &self,
        org: &OrgId,
        id: &InvitationId,
        now: DateTime<Utc>,
    ) -> Result<Option<Invitation>, StoreError> {
        let (org, id) = (org.as_str().to_owned(), id.as_str().to_owned());
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            let found = tx
                .prepare_cached(&format!(
                    "SELECT {INVITATION_COLS} FROM invitations WHERE org = ?1 AND id = ?2"
                ))
                .and_then(|mut s| s.query_row(params![org, id], invitation_row).optional())
                .map_err(db)?
                .map(invitation_of)
                .transpose()?;
            let Some(inv) = found.filter(|inv| inv.is_pending(now)) else {
                return Ok(None);
            };
            tx.prepare_cached("DELETE FROM invitations WHERE org = ?1 AND id = ?2")
                .and_then(|mut s| s.execute(params![org, id]))
                .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(Some(inv))
        })
        .await
    }

    pub(super) async fn mgmt_accept_invitation(
        &self,
        hash: &KeyHash,
        user: &UserId,
        at: DateTime<Utc>,
    ) -> Result<Membership, StoreError> {
        let (hash, user) = (hash.as_str().to_owned(), user.clone());
        self.write(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            let Some(inv) = read_invitation(&tx, &hash)?.filter(|inv| inv.expires_at > at) else {
                return Err(StoreError::NotFound {
                    what: "invitation".into(),
                });
            };
            if inv.accepted_at.is_some() {
                return Err(StoreError::Conflict {
                    what: format!("acceptance of invitation {}", inv.id),
                });
            }
            let m = Membership {
                org_id: inv.org_id.clone(),
                user_id: user,
                role: inv.role,
                created_at: at,
            };
            Self::insert_member(&tx, &m)?;
            tx.prepare_cached("UPDATE invitations SET accepted_at = ?2 WHERE hash = ?1")
                .and_then(|mut s| s.execute(params![hash, ts_text(at)]))
                .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(m)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rusqlite::Connection;
    use tally_core::tenant::AuditOutcome;

    use super::*;
    use crate::sqlite::SCHEMA_VERSION;

    fn record(org: &OrgId, at: &str) -> AuditRecord {
        AuditRecord {
            id: "aud_1".into(),
            org_id: org.clone(),
            actor: "cli".into(),
            action: "org.create".into(),
            resource: format!("org:{org}"),
            outcome: AuditOutcome::Allowed,
            reason: None,
            before: None,
            after: None,
            at: DateTime::parse_from_rfc3339(at)
                .unwrap()
                .with_timezone(&Utc),
            ip: None,
            user_agent: None,
        }
    }

    /// A file of schema version 1 (before the audit trail, invitations, soft deletes,
    /// archiving, last use and project members) is upgraded in place.
    #[tokio::test]
    async fn version_1_files_gain_the_audit_trail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.db");
        drop(SqliteStore::open(&path).unwrap());
        {
            let c = Connection::open(&path).unwrap();
            // What version 1 had: no audit trail, none of version 4's tables and columns.
            c.execute_batch(
                "DROP TABLE audit; DROP TABLE invitations; DROP TABLE project_members;
                 ALTER TABLE orgs DROP COLUMN deleted_at;
                 ALTER TABLE projects DROP COLUMN archived_at;
                 ALTER TABLE api_keys DROP COLUMN last_used_at;
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let org = OrgId::parse("org_a").unwrap();
        let r = record(&org, "2026-11-26T10:00:00Z");
        store.mgmt_record_audit(&r).await.unwrap();
        let q = AuditQuery {
            org: org.clone(),
            from: None,
            to: None,
            actor: None,
            action: None,
            resource: None,
            limit: 10,
            cursor: None,
            now: r.at,
        };
        assert_eq!(store.mgmt_list_audit(&q).await.unwrap().records, vec![r]);
        let c = Connection::open(&path).unwrap();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    /// Expired records are deleted by later writes, not only hidden.
    #[tokio::test]
    async fn expired_records_are_pruned_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("tally.db")).unwrap();
        let org = OrgId::parse("org_a").unwrap();
        store
            .mgmt_record_audit(&record(&org, "2026-01-01T00:00:00Z"))
            .await
            .unwrap();
        store
            .mgmt_record_audit(&AuditRecord {
                id: "aud_2".into(),
                ..record(&org, "2026-11-26T10:00:00Z")
            })
            .await
            .unwrap();
        let n: i64 = store
            .read(|c| {
                c.query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
                    .map_err(db)
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}
