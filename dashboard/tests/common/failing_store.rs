//! A failing-store seam: [`FailingRevoke`] wraps the memory adapter, delegates every tenant
//! method to it, and fails `revoke_session` with `StoreError::Unavailable` while its switch
//! is on, so a test can see what a route does when the store cannot record a revocation.
//! Every other method is a plain delegation, written once by [`delegate!`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tally_core::ids::{ApiKeyId, InvitationId, OrgId, ProjectId, SessionId, UserId};
use tally_core::ports::{
    Acceptance, ApiKeyStore, AuditLog, InvitationStore, KeyRotation, MemberStore, NewProjectMember,
    OrgMember, OrgStore, OwnerTransfer, PlanMove, ProjectMember, ProjectStore, ProjectUpdate,
    Revocation, RevokeSession, RoleChange, SecurityStore, StoreError, UserStore,
};
use tally_core::security::{OrgSecurityPolicy, Session};
use tally_core::tenant::{
    ApiKey, AuditPage, AuditQuery, AuditRecord, Invitation, KeyHash, KeyUse, Membership, Org,
    OrgChanges, PlanChange, Project, Role, User,
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

/// Writes `impl $port for FailingRevoke`: each listed method hands its arguments to the
/// memory adapter; one marked `fails while FIELD` first answers `Unavailable` (and changes
/// nothing) while that switch is on. A macro because a trait impl's methods cannot come
/// from a function; one line a method keeps the wrapper from restating every port signature.
macro_rules! delegate {
    ($port:ident {
        $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $(, fails while $switch:ident)?;)*
    }) => {
        #[async_trait]
        impl $port for FailingRevoke {
            $(async fn $name(&self, $($arg: $ty),*) -> Result<$ret, StoreError> {
                $(if self.$switch.load(Ordering::SeqCst) {
                    let planted = concat!("planted: ", stringify!($name), " fails");
                    return Err(StoreError::Unavailable(planted.into()));
                })?
                self.inner.$name($($arg),*).await
            })*
        }
    };
}

delegate!(UserStore {
    fn ensure_user(candidate: &User) -> User;
    fn get_user(id: &UserId) -> Option<User>;
    fn find_user_by_email(email: &str) -> Option<User>;
    fn list_user_memberships(user: &UserId) -> Vec<Membership>;
});

delegate!(OrgStore {
    fn create_org(org: &Org) -> ();
    fn get_org(id: &OrgId) -> Option<Org>;
    fn list_org_ids() -> Vec<OrgId>;
    fn update_org(id: &OrgId, changes: &OrgChanges) -> Option<Org>;
    fn change_plan(m: &PlanMove<'_>) -> Option<Org>;
    fn plan_history(id: &OrgId) -> Vec<PlanChange>;
    fn delete_org(id: &OrgId, at: DateTime<Utc>) -> Option<Org>;
});

delegate!(MemberStore {
    fn get_role(org: &OrgId, user: &UserId) -> Option<Role>;
    fn list_members(org: &OrgId) -> Vec<Membership>;
    fn add_member(member: &Membership) -> ();
    fn set_member_role(c: &RoleChange<'_>) -> Option<Membership>;
    fn remove_member(m: &OrgMember<'_>) -> Option<Membership>;
    fn transfer_ownership(t: &OwnerTransfer<'_>) -> Option<Org>;
    fn add_project_member(m: &NewProjectMember<'_>) -> ();
    fn remove_project_member(m: &ProjectMember<'_>) -> bool;
    fn list_user_projects(m: &OrgMember<'_>) -> Vec<ProjectId>;
});

delegate!(ProjectStore {
    fn create_project(project: &Project) -> ();
    fn get_project(org: &OrgId, id: &ProjectId) -> Option<Project>;
    fn list_projects(org: &OrgId) -> Vec<Project>;
    fn update_project(u: &ProjectUpdate<'_>) -> Option<Project>;
});

delegate!(ApiKeyStore {
    fn create_api_key(key: &ApiKey) -> ();
    fn find_api_key(hash: &KeyHash) -> Option<ApiKey>;
    fn list_api_keys(org: &OrgId) -> Vec<ApiKey>;
    fn revoke_api_key(r: &Revocation<'_, ApiKeyId>) -> Option<ApiKey>;
    fn rotate_api_key(r: &KeyRotation<'_>) -> Option<ApiKey>;
    fn touch_api_keys(uses: &[KeyUse]) -> ();
});

delegate!(InvitationStore {
    fn create_invitation(invitation: &Invitation) -> ();
    fn list_invitations(org: &OrgId, now: DateTime<Utc>) -> Vec<Invitation>;
    fn find_invitation(hash: &KeyHash, now: DateTime<Utc>) -> Option<Invitation>;
    fn revoke_invitation(r: &Revocation<'_, InvitationId>) -> Option<Invitation>;
    fn accept_invitation(a: &Acceptance<'_>) -> Membership;
});

delegate!(AuditLog {
    fn record_audit(record: &AuditRecord) -> ();
    fn list_audit(query: &AuditQuery) -> AuditPage;
});

delegate!(SecurityStore {
    fn get_security_policy(org: &OrgId) -> Option<OrgSecurityPolicy>;
    fn put_security_policy(policy: &OrgSecurityPolicy) -> Option<OrgSecurityPolicy>;
    fn create_session(session: &Session) -> ();
    fn get_session(user: &UserId, id: &SessionId) -> Option<Session>;
    fn list_sessions(user: &UserId, now: DateTime<Utc>) -> Vec<Session>;
    fn revoke_session(r: &RevokeSession<'_>) -> Option<Session>,
        fails while fail;
});
