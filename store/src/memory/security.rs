//! Security policies and sessions in memory: [`SecurityStore`], with the semantics of
//! `sqlite/security.rs`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tally_core::ids::{OrgId, SessionId, UserId};
use tally_core::ports::{RevokeSession, SecurityStore, StoreError};
use tally_core::security::{OrgSecurityPolicy, Session};

use super::{MemoryStore, insert_new};

#[async_trait]
impl SecurityStore for MemoryStore {
    async fn get_security_policy(
        &self,
        org: &OrgId,
    ) -> Result<Option<OrgSecurityPolicy>, StoreError> {
        Ok(self.lock().policies.get(org).cloned())
    }

    async fn put_security_policy(
        &self,
        policy: &OrgSecurityPolicy,
    ) -> Result<Option<OrgSecurityPolicy>, StoreError> {
        let mut st = self.lock();
        st.require_live_org(&policy.org_id)?;
        Ok(st.policies.insert(policy.org_id.clone(), policy.clone()))
    }

    async fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        let mut st = self.lock();
        let key = (session.user_id.clone(), session.id.clone());
        insert_new(&mut st.sessions, key, session.clone(), || {
            format!("session {}", session.id)
        })
    }

    async fn get_session(
        &self,
        user: &UserId,
        id: &SessionId,
    ) -> Result<Option<Session>, StoreError> {
        Ok(self
            .lock()
            .sessions
            .get(&(user.clone(), id.clone()))
            .cloned())
    }

    async fn list_sessions(
        &self,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError> {
        let mut st = self.lock();
        // Expired sessions are gone for every reader; drop them here, as SQLite does.
        st.sessions.retain(|_, s| s.expires_at > now);
        let mut out: Vec<Session> = st
            .sessions
            .values()
            .filter(|s| &s.user_id == user && s.is_active(now))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn revoke_session(&self, r: &RevokeSession<'_>) -> Result<Option<Session>, StoreError> {
        let (user, id, at) = (r.user, r.id, r.at);
        let mut st = self.lock();
        Ok(st.sessions.get_mut(&(user.clone(), id.clone())).map(|s| {
            s.revoked_at.get_or_insert(at);
            s.clone()
        }))
    }
}
