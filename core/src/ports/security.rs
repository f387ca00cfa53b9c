//! The security port: each org's [`OrgSecurityPolicy`] and users' sign-in [`Session`]s.
//!
//! A policy is one record per org, replaced whole by [`SecurityStore::put_security_policy`]
//! (which hands back the one it replaced, for the audit trail's before and after). A
//! session is found by its user and id in one lookup ([`SecurityStore::get_session`]): a
//! session token carries both, and every request that carries one reads it (through a
//! short cache), so this is the hot path. Revocation keeps the first revocation time.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::ids::{OrgId, SessionId, UserId};
use crate::security::{OrgSecurityPolicy, Session};

/// Org security policies and sign-in sessions.
#[async_trait]
pub trait SecurityStore: Send + Sync {
    /// The org's policy, `None` if it never set one (the default policy applies).
    async fn get_security_policy(
        &self,
        org: &OrgId,
    ) -> Result<Option<OrgSecurityPolicy>, StoreError>;
    /// Stores the org's policy, replacing any, and returns the one it replaced. `NotFound`
    /// if the org does not exist (or was deleted).
    async fn put_security_policy(
        &self,
        policy: &OrgSecurityPolicy,
    ) -> Result<Option<OrgSecurityPolicy>, StoreError>;
    /// Stores a new session. `Conflict` if the user has a session with this id already.
    async fn create_session(&self, session: &Session) -> Result<(), StoreError>;
    /// The user's session `id` in one lookup, revoked or expired included (the caller
    /// decides with [`Session::is_active`]); `None` if there is none.
    async fn get_session(
        &self,
        user: &UserId,
        id: &SessionId,
    ) -> Result<Option<Session>, StoreError>;
    /// The user's sessions active at `now` (not revoked, not expired), oldest first (then
    /// id).
    async fn list_sessions(
        &self,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError>;
    /// Marks the user's session `id` revoked at `at` and returns it as it is now; a session
    /// revoked before keeps its first revocation time. `None` if the user has no such
    /// session.
    async fn revoke_session(&self, r: &RevokeSession<'_>) -> Result<Option<Session>, StoreError>;
}

/// What [`SecurityStore::revoke_session`] is asked: revoke `user`'s session `id` at `at`.
#[derive(Debug, Clone, Copy)]
pub struct RevokeSession<'a> {
    /// The user the session belongs to.
    pub user: &'a UserId,
    /// The session.
    pub id: &'a SessionId,
    /// When it is revoked (kept unless it was revoked before).
    pub at: DateTime<Utc>,
}
