//! Security policies and sessions on SQLite: [`SecurityStore`].
//!
//! Schema version 12 ([`SCHEMA_V12`]) adds both tables; a file of an earlier version gains
//! them when it opens, and nothing else changes.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;
use tally_core::ids::{OrgId, SessionId, UserId};
use tally_core::ports::{RevokeSession, SecurityStore, StoreError};
use tally_core::security::{OrgSecurityPolicy, SecurityPolicy, Session};

use super::*;

/// Schema version 12: one policy row per org (the policy as JSON, so a new field needs no
/// migration), and one row per session keyed `(user, id)`, so the check every session
/// request makes is one primary-key lookup and a user's sessions one range scan.
/// `expires_unix` (Unix seconds) lets writes prune ended sessions.
pub(super) const SCHEMA_V12: &str = r#"
CREATE TABLE IF NOT EXISTS security_policies (
    org         TEXT PRIMARY KEY,
    policy      TEXT NOT NULL,      -- JSON: require_mfa, ip_allowlist, session_lifetime_seconds
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    user_id      TEXT NOT NULL,
    id           TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    expires_unix INTEGER NOT NULL,  -- Unix seconds of expires_at, rounded up
    ip           TEXT,
    user_agent   TEXT,
    revoked_at   TEXT,
    PRIMARY KEY (user_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_unix);
"#;

const SESSION_COLS: &str = "user_id, id, created_at, expires_at, ip, user_agent, revoked_at";

type SessionRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    r.try_into()
}

fn session_of(row: SessionRow) -> Result<Session, StoreError> {
    let (user, id, created, expires, ip, user_agent, revoked) = row;
    Ok(Session {
        id: parse_id(&id, SessionId::parse)?,
        user_id: parse_id(&user, UserId::parse)?,
        created_at: parse_ts(&created)?,
        expires_at: parse_ts(&expires)?,
        ip,
        user_agent,
        revoked_at: parse_opt_ts(revoked)?,
    })
}

fn policy_of(org: &OrgId, body: &str, updated: &str) -> Result<OrgSecurityPolicy, StoreError> {
    let policy: SecurityPolicy = serde_json::from_str(body)
        .map_err(|e| corrupt(format!("security policy of {org}: {e}")))?;
    Ok(OrgSecurityPolicy {
        org_id: org.clone(),
        policy,
        updated_at: parse_ts(updated)?,
    })
}

fn read_policy(conn: &Connection, org: &OrgId) -> Result<Option<OrgSecurityPolicy>, StoreError> {
    query_opt(
        conn,
        "SELECT policy, updated_at FROM security_policies WHERE org = ?1",
        params![org.as_str()],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
    )?
    .map(|(body, updated)| policy_of(org, &body, &updated))
    .transpose()
}

fn read_session(
    conn: &Connection,
    user: &UserId,
    id: &SessionId,
) -> Result<Option<Session>, StoreError> {
    let sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE user_id = ?1 AND id = ?2");
    read_one(
        conn,
        &sql,
        params![user.as_str(), id.as_str()],
        session_row,
        session_of,
    )
}

#[async_trait]
impl SecurityStore for SqliteStore {
    async fn get_security_policy(
        &self,
        org: &OrgId,
    ) -> Result<Option<OrgSecurityPolicy>, StoreError> {
        let org = org.clone();
        self.read(move |conn| read_policy(conn, &org)).await
    }

    async fn put_security_policy(
        &self,
        policy: &OrgSecurityPolicy,
    ) -> Result<Option<OrgSecurityPolicy>, StoreError> {
        let policy = policy.clone();
        self.transact(move |tx| {
            tenants::require_live_org(tx, &policy.org_id)?;
            let before = read_policy(tx, &policy.org_id)?;
            let body = serde_json::to_string(&policy.policy)
                .map_err(|e| StoreError::Unavailable(format!("encoding a policy: {e}")))?;
            execute(
                tx,
                "INSERT INTO security_policies (org, policy, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (org) DO UPDATE SET policy = excluded.policy,
                                                 updated_at = excluded.updated_at",
                params![policy.org_id.as_str(), body, ts_text(policy.updated_at)],
            )?;
            Ok(before)
        })
        .await
    }

    async fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        let s = session.clone();
        self.transact(move |tx| {
            // Ended sessions are gone for every reader; drop their rows here.
            execute(
                tx,
                "DELETE FROM sessions WHERE expires_unix <= ?1",
                params![s.created_at.timestamp()],
            )?;
            let inserted = execute(
                tx,
                "INSERT INTO sessions (user_id, id, created_at, expires_at, expires_unix, ip,
                                       user_agent, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                params![
                    s.user_id.as_str(),
                    s.id.as_str(),
                    ts_text(s.created_at),
                    ts_text(s.expires_at),
                    ceil_secs(s.expires_at),
                    s.ip,
                    s.user_agent,
                    s.revoked_at.map(ts_text),
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict {
                    what: format!("session {}", s.id),
                });
            }
            Ok(())
        })
        .await
    }

    async fn get_session(
        &self,
        user: &UserId,
        id: &SessionId,
    ) -> Result<Option<Session>, StoreError> {
        let (user, id) = (user.clone(), id.clone());
        self.read(move |conn| read_session(conn, &user, &id)).await
    }

    async fn list_sessions(
        &self,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError> {
        let user = user.clone();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {SESSION_COLS} FROM sessions WHERE user_id = ?1 ORDER BY created_at, id"
            );
            let mut all = query_all(conn, &sql, params![user.as_str()], session_row, session_of)?;
            all.retain(|s| s.is_active(now));
            // Text order is not time order when fractions of a second differ in width.
            all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(all)
        })
        .await
    }

    async fn revoke_session(&self, r: &RevokeSession<'_>) -> Result<Option<Session>, StoreError> {
        let (user, id, at) = (r.user, r.id, r.at);
        let (user, id) = (user.clone(), id.clone());
        self.transact(move |tx| {
            execute(
                tx,
                "UPDATE sessions SET revoked_at = ?3
                 WHERE user_id = ?1 AND id = ?2 AND revoked_at IS NULL",
                params![user.as_str(), id.as_str(), ts_text(at)],
            )?;
            read_session(tx, &user, &id)
        })
        .await
    }
}
