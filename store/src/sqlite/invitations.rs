//! Invitations on SQLite: [`InvitationStore`].
//!
//! Schema version 4 ([`SCHEMA_V4`]) adds invitations with soft-deleted orgs, archived
//! projects, keys' last use and project members.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, Params, params};
use tally_core::ids::{InvitationId, OrgId, UserId};
use tally_core::ports::*;
use tally_core::tenant::*;

use super::*;

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
    r.try_into()
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

/// The invitation a `WHERE` condition on `invitations` finds (on a plain connection or
/// inside a transaction): by hash, or by org and id.
fn read_invitation(
    conn: &Connection,
    cond: &str,
    params: impl Params,
) -> Result<Option<Invitation>, StoreError> {
    let sql = format!("SELECT {INVITATION_COLS} FROM invitations WHERE {cond}");
    read_one(conn, &sql, params, invitation_row, invitation_of)
}

#[async_trait]
impl InvitationStore for SqliteStore {
    async fn create_invitation(&self, inv: &Invitation) -> Result<(), StoreError> {
        let inv = inv.clone();
        self.transact(move |tx| {
            rules::check_new_member(inv.role)?;
            require_live_org(tx, &inv.org_id)?;
            // Expired invitations are gone for every reader; drop their rows here.
            execute(
                tx,
                "DELETE FROM invitations WHERE expires_unix <= ?1",
                params![inv.created_at.timestamp()],
            )?;
            execute(
                tx,
                "INSERT INTO invitations (org, id, hash, email, role, invited_by, created_at,
                                          expires_at, expires_unix, accepted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    inv.org_id.as_str(),
                    inv.id.as_str(),
                    inv.hash.as_str(),
                    inv.email.to_lowercase(),
                    inv.role.as_str(),
                    inv.invited_by.as_str(),
                    ts_text(inv.created_at),
                    ts_text(inv.expires_at),
                    crate::secs::ceil_secs(inv.expires_at),
                    inv.accepted_at.map(ts_text),
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_invitations(
        &self,
        org: &OrgId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Invitation>, StoreError> {
        let org = org.as_str().to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {INVITATION_COLS} FROM invitations
                 WHERE org = ?1 AND accepted_at IS NULL ORDER BY created_at, id"
            );
            let mut all = query_all(conn, &sql, params![org], invitation_row, invitation_of)?;
            all.retain(|inv| inv.is_pending(now));
            Ok(all)
        })
        .await
    }

    async fn find_invitation(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Invitation>, StoreError> {
        let hash = hash.as_str().to_owned();
        self.read(move |conn| {
            let found = read_invitation(conn, "hash = ?1", params![hash])?;
            Ok(found.filter(|inv| inv.expires_at > now))
        })
        .await
    }

    async fn revoke_invitation(
        &self,
        r: &Revocation<'_, InvitationId>,
    ) -> Result<Option<Invitation>, StoreError> {
        let (org, id, now) = (r.org, r.id, r.at);
        let (org, id) = (org.as_str().to_owned(), id.as_str().to_owned());
        self.transact(move |tx| {
            let found = read_invitation(tx, "org = ?1 AND id = ?2", params![org, id])?;
            let Some(inv) = found.filter(|inv| inv.is_pending(now)) else {
                return Ok(None);
            };
            execute(
                tx,
                "DELETE FROM invitations WHERE org = ?1 AND id = ?2",
                params![org, id],
            )?;
            Ok(Some(inv))
        })
        .await
    }

    async fn accept_invitation(&self, a: &Acceptance<'_>) -> Result<Membership, StoreError> {
        let (hash, user, at) = (a.hash, a.user, a.at);
        let (hash, user) = (hash.as_str().to_owned(), user.clone());
        self.transact(move |tx| {
            let found = read_invitation(tx, "hash = ?1", params![hash])?;
            let (_, m) = rules::accepted_membership(found, &user, at)?;
            Self::insert_member(tx, &m)?;
            execute(
                tx,
                "UPDATE invitations SET accepted_at = ?2 WHERE hash = ?1",
                params![hash, ts_text(at)],
            )?;
            Ok(m)
        })
        .await
    }
}
