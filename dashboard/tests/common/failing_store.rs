//! A failing-store seam: [`FailingRevoke`] wraps the memory adapter, delegates every tenant
//! method to it, and fails `revoke_session` with `StoreError::Unavailable` while its switch
//! is on, so a test can see what a route does when the store cannot record a revocation.
//! Every other method is a plain delegation (generated from the port traits' signatures).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tally_core::ids::{ApiKeyId, InvitationId, OrgId, ProjectId, SessionId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::{
    ApiKeyStore, AuditLog, InvitationStore, MemberStore, OrgStore, ProjectStore, SecurityStore,
    StoreError, UserStore,
};
use tally_core::security::{OrgSecurityPolicy, Session};
use tally_core::tenant::{
    ApiKey, AuditPage, AuditQuery, AuditRecord, Invitation, KeyHash, KeyUse, Membership, Org,
    OrgChanges, PlanChange, Project, ProjectChanges, Role, User,
};
use tally_store::MemoryStore;

/// The memory adapter, with `revoke_session` failing while [`FailingRevoke::fail`] is set.
pub struct FailingRevoke {
    /// The store every call reaches (revocations too, while not failing).
    pub inner: Arc<MemoryStore>,
    /// While `true`, `revoke_session` answers `Unavailable` and changes nothing.
    pub fail: AtomicBool,
}

impl FailingRevoke {
    /// Wraps `inner`, not failing yet.
    pub fn new(inner: Arc<MemoryStore>) -> Self {
        FailingRevoke {
            inner,
            fail: AtomicBool::new(false),
        }
    }

    /// Turns the planted fault on or off.
    pub fn set_failing(&self, on: bool) {
        self.fail.store(on, Ordering::SeqCst);
    }
}

#[async_trait]
impl UserStore for FailingRevoke {
    async fn ensure_user(&self, candidate: &User) -> Result<User, StoreError> {
        self.inner.ensure_user(candidate).await
    }
    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        self.inner.get_user(id).await
    }
    async fn find_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.inner.find_user_by_email(email).await
    }
    async fn list_user_memberships(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        self.inner.list_user_memberships(user).await
    }
}

#[async_trait]
impl OrgStore for FailingRevoke {
    async fn create_org(&self, org: &Org) -> Result<(), StoreError> {
        self.inner.create_org(org).await
    }
    async fn get_org(&self, id: &OrgId) -> Result<Option<Org>, StoreError> {
        self.inner.get_org(id).await
    }
    async fn list_org_ids(&self) -> Result<Vec<OrgId>, StoreError> {
        self.inner.list_org_ids().await
    }
    async fn update_org(
        &self,
        id: &OrgId,
        changes: &OrgChanges,
    ) -> Result<Option<Org>, StoreError> {
        self.inner.update_org(id, changes).await
    }
    async fn change_plan(
        &self,
        id: &OrgId,
        plan: PlanId,
        at: DateTime<Utc>,
    ) -> Result<Option<Org>, StoreError> {
        self.inner.change_plan(id, plan, at).await
    }
    async fn plan_history(&self, id: &OrgId) -> Result<Vec<PlanChange>, StoreError> {
        self.inner.plan_history(id).await
    }
    async fn delete_org(&self, id: &OrgId, at: DateTime<Utc>) -> Result<Option<Org>, StoreError> {
        self.inner.delete_org(id, at).await
    }
}

#[async_trait]
impl MemberStore for FailingRevoke {
    async fn get_role(&self, org: &OrgId, user: &UserId) -> Result<Option<Role>, StoreError> {
        self.inner.get_role(org, user).await
    }
    async fn list_members(&self, org: &OrgId) -> Result<Vec<Membership>, StoreError> {
        self.inner.list_members(org).await
    }
    async fn add_member(&self, member: &Membership) -> Result<(), StoreError> {
        self.inner.add_member(member).await
    }
    async fn set_member_role(
        &self,
        org: &OrgId,
        user: &UserId,
        role: Role,
    ) -> Result<Option<Membership>, StoreError> {
        self.inner.set_member_role(org, user, role).await
    }
    async fn remove_member(
        &self,
        org: &OrgId,
        user: &UserId,
    ) -> Result<Option<Membership>, StoreError> {
        self.inner.remove_member(org, user).await
    }
    async fn transfer_ownership(
        &self,
        org: &OrgId,
        from: &UserId,
        to: &UserId,
    ) -> Result<Option<Org>, StoreError> {
        self.inner.transfer_ownership(org, from, to).await
    }
    async fn add_project_member(
        &self,
        org: &OrgId,
        project: &ProjectId,
        user: &UserId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.add_project_member(org, project, user, at).await
    }
    async fn remove_project_member(
        &self,
        org: &OrgId,
        project: &ProjectId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        self.inner.remove_project_member(org, project, user).await
    }
    async fn list_user_projects(
        &self,
        org: &OrgId,
        user: &UserId,
    ) -> Result<Vec<ProjectId>, StoreError> {
        self.inner.list_user_projects(org, user).await
    }
}

#[async_trait]
impl ProjectStore for FailingRevoke {
    async fn create_project(&self, project: &Project) -> Result<(), StoreError> {
        self.inner.create_project(project).await
    }
    async fn get_project(
        &self,
        org: &OrgId,
        id: &ProjectId,
    ) -> Result<Option<Project>, StoreError> {
        self.inner.get_project(org, id).await
    }
    async fn list_projects(&self, org: &OrgId) -> Result<Vec<Project>, StoreError> {
        self.inner.list_projects(org).await
    }
    async fn update_project(
        &self,
        org: &OrgId,
        id: &ProjectId,
        changes: &ProjectChanges,
    ) -> Result<Option<Project>, StoreError> {
        self.inner.update_project(org, id, changes).await
    }
}

#[async_trait]
impl ApiKeyStore for FailingRevoke {
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        self.inner.create_api_key(key).await
    }
    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        self.inner.find_api_key(hash).await
    }
    async fn list_api_keys(&self, org: &OrgId) -> Result<Vec<ApiKey>, StoreError> {
        self.inner.list_api_keys(org).await
    }
    async fn revoke_api_key(
        &self,
        org: &OrgId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.inner.revoke_api_key(org, id, at).await
    }
    async fn rotate_api_key(
        &self,
        old: &ApiKeyId,
        new: &ApiKey,
        old_expires_at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.inner.rotate_api_key(old, new, old_expires_at).await
    }
    async fn touch_api_keys(&self, uses: &[KeyUse]) -> Result<(), StoreError> {
        self.inner.touch_api_keys(uses).await
    }
}

#[async_trait]
impl InvitationStore for FailingRevoke {
    async fn create_invitation(&self, invitation: &Invitation) -> Result<(), StoreError> {
        self.inner.create_invitation(invitation).await
    }
    async fn list_invitations(
        &self,
        org: &OrgId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Invitation>, StoreError> {
        self.inner.list_invitations(org, now).await
    }
    async fn find_invitation(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Invitation>, StoreError> {
        self.inner.find_invitation(hash, now).await
    }
    async fn revoke_invitation(
        &self,
        org: &OrgId,
        id: &InvitationId,
        now: DateTime<Utc>,
    ) -> Result<Option<Invitation>, StoreError> {
        self.inner.revoke_invitation(org, id, now).await
    }
    async fn accept_invitation(
        &self,
        hash: &KeyHash,
        user: &UserId,
        at: DateTime<Utc>,
    ) -> Result<Membership, StoreError> {
        self.inner.accept_invitation(hash, user, at).await
    }
}

#[async_trait]
impl AuditLog for FailingRevoke {
    async fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.inner.record_audit(record).await
    }
    async fn list_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        self.inner.list_audit(query).await
    }
}

#[async_trait]
impl SecurityStore for FailingRevoke {
    async fn get_security_policy(
        &self,
        org: &OrgId,
    ) -> Result<Option<OrgSecurityPolicy>, StoreError> {
        self.inner.get_security_policy(org).await
    }
    async fn put_security_policy(
        &self,
        policy: &OrgSecurityPolicy,
    ) -> Result<Option<OrgSecurityPolicy>, StoreError> {
        self.inner.put_security_policy(policy).await
    }
    async fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        self.inner.create_session(session).await
    }
    async fn get_session(
        &self,
        user: &UserId,
        id: &SessionId,
    ) -> Result<Option<Session>, StoreError> {
        self.inner.get_session(user, id).await
    }
    async fn list_sessions(
        &self,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError> {
        self.inner.list_sessions(user, now).await
    }
    async fn revoke_session(
        &self,
        user: &UserId,
        id: &SessionId,
        at: DateTime<Utc>,
    ) -> Result<Option<Session>, StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "planted: revoke_session fails".into(),
            ));
        }
        self.inner.revoke_session(user, id, at).await
    }
}
