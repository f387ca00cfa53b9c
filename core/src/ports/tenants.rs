//! The tenant ports, one small trait per role: users, orgs, members, projects, API keys,
//! invitations and the audit trail.
//!
//! Each capability holds only the roles it calls (ingest: keys, orgs and projects; billing:
//! orgs; the management API: all of them), so a store that lacks a method does not compile,
//! and a test double for one capability implements only what that capability uses. Every
//! method is required: there are no defaults that answer "unsupported" at run time.
//!
//! [`TenantStore`] is the sum of the roles, implemented for every type that implements all
//! of them; the composition root builds one store and hands each capability the roles it
//! needs (an `Arc<dyn TenantStore>` coerces to an `Arc<dyn OrgStore>` and the others).
//!
//! The rules these methods enforce (who may become owner, what a rotation does to the old
//! key, ...) are written once in [`crate::tenant::rules`]; adapters call those functions
//! inside their transactions, so both backends decide the same way.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::ids::{ApiKeyId, InvitationId, OrgId, ProjectId, UserId};
use crate::plan::PlanId;
use crate::tenant::{
    ApiKey, AuditPage, AuditQuery, AuditRecord, Invitation, KeyHash, KeyUse, Membership, Org,
    OrgChanges, PlanChange, Project, ProjectChanges, Role, User,
};

/// Users: people who act in the management API, unique by lowercased email.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Returns the user with this email, creating `candidate` if there is none.
    async fn ensure_user(&self, candidate: &User) -> Result<User, StoreError>;
    /// Looks a user up.
    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError>;
    /// The user with this email (compared lowercased), if any. Creates nothing: an
    /// identity provider's verified email finds the Tally user it belongs to.
    async fn find_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    /// The user's memberships in every org, by org id. May lag a membership created a
    /// moment ago on backends whose index is eventually consistent (DynamoDB).
    async fn list_user_memberships(&self, user: &UserId) -> Result<Vec<Membership>, StoreError>;
}

/// Organizations: the tenants.
#[async_trait]
pub trait OrgStore: Send + Sync {
    /// Creates an org and makes `org.owner_id` its owner, atomically. `Conflict` if the slug
    /// is taken.
    async fn create_org(&self, org: &Org) -> Result<(), StoreError>;
    /// Looks an org up.
    async fn get_org(&self, id: &OrgId) -> Result<Option<Org>, StoreError>;
    /// Every org's id (for billing and reconcile runs over all tenants).
    async fn list_org_ids(&self) -> Result<Vec<OrgId>, StoreError>;
    /// Applies `changes` to the org and returns it as it is now; `None` if there is no
    /// such org.
    async fn update_org(&self, id: &OrgId, changes: &OrgChanges)
    -> Result<Option<Org>, StoreError>;
    /// Moves a live org `m.org` to `m.plan` from `m.at` on and keeps the change in its plan
    /// history, in one atomic write; returns the org as it is now, or `None` if there is no
    /// such live org. Moving to the plan it is on changes nothing and records nothing.
    /// Changes are kept in time order: one at an instant before the org's last change is a
    /// `Conflict`, and so is the loser of two racing changes (read the org and try again).
    async fn change_plan(&self, m: &PlanMove<'_>) -> Result<Option<Org>, StoreError>;
    /// The org's plan changes, oldest first (empty for an org never moved).
    async fn plan_history(&self, id: &OrgId) -> Result<Vec<PlanChange>, StoreError>;
    /// Soft-deletes the org: sets its `deleted_at` to `at` (a second delete keeps the first
    /// time) and revokes every API key of it that is not revoked yet, then returns the org
    /// as it is now; `None` if there is no such org. From then on
    /// [`MemberStore::get_role`] answers `None` for it (so nobody acts in it), no member,
    /// project, key or invitation acceptance can be added to it (`NotFound`), and
    /// [`get_org`](OrgStore::get_org) still returns it (billing closes its last month), with
    /// `deleted_at` set.
    async fn delete_org(&self, id: &OrgId, at: DateTime<Utc>) -> Result<Option<Org>, StoreError>;
}

/// An org moving to another plan ([`OrgStore::change_plan`]).
#[derive(Debug, Clone, Copy)]
pub struct PlanMove<'a> {
    /// The org.
    pub org: &'a OrgId,
    /// The plan it moves to.
    pub plan: PlanId,
    /// From when (the plan change's `at`).
    pub at: DateTime<Utc>,
}

impl<'a> PlanMove<'a> {
    /// `org` moves to `plan` from `at` on.
    #[must_use]
    pub const fn new(org: &'a OrgId, plan: PlanId, at: DateTime<Utc>) -> Self {
        Self { org, plan, at }
    }
}

/// Who belongs to an org, with which role, and on which of its projects.
#[async_trait]
pub trait MemberStore: Send + Sync {
    /// The user's role in the org, in one round trip; `None` when the user is not a member
    /// (or either does not exist, or the org was deleted).
    async fn get_role(&self, org: &OrgId, user: &UserId) -> Result<Option<Role>, StoreError>;
    /// The org's members, in the order they joined (then user id).
    async fn list_members(&self, org: &OrgId) -> Result<Vec<Membership>, StoreError>;
    /// Adds a member with a role other than owner. `NotFound` if the org or the user does
    /// not exist, `Conflict` if the user is a member already (or the role is owner:
    /// [`rules::check_new_member`](crate::tenant::rules::check_new_member)).
    async fn add_member(&self, member: &Membership) -> Result<(), StoreError>;
    /// Changes a member's role and returns the membership as it was; `None` if the user is
    /// not a member. The owner's role cannot change, and nobody becomes owner this way
    /// (only by a transfer): both are `Conflict`
    /// ([`rules::check_role_change`](crate::tenant::rules::check_role_change)).
    async fn set_member_role(&self, c: &RoleChange<'_>) -> Result<Option<Membership>, StoreError>;
    /// Removes a member and returns the membership as it was; `None` if the user is not a
    /// member. The owner cannot be removed (`Conflict`).
    async fn remove_member(&self, m: &OrgMember<'_>) -> Result<Option<Membership>, StoreError>;
    /// Makes `to` (a member) the owner and the owner `from` an admin, and records `to` as
    /// the org's `owner_id`, atomically. Returns the org as it is now; `None` if there is no
    /// such org; `NotFound` if `to` is not a member; `Conflict` if `from` is not the owner
    /// (any more).
    async fn transfer_ownership(&self, t: &OwnerTransfer<'_>) -> Result<Option<Org>, StoreError>;
    /// Puts a member of the org on one of its projects (members and viewers see only the
    /// projects they are on). `NotFound` if the org has no such project or the user is not
    /// a member of the org; `Conflict` if they are on it already.
    async fn add_project_member(&self, m: &NewProjectMember<'_>) -> Result<(), StoreError>;
    /// Takes a user off one of the org's projects; `false` if they were not on it.
    async fn remove_project_member(&self, m: &ProjectMember<'_>) -> Result<bool, StoreError>;
    /// The ids of the org's projects the user is on, in id order.
    async fn list_user_projects(&self, m: &OrgMember<'_>) -> Result<Vec<ProjectId>, StoreError>;
}

/// A user of an org: the member [`MemberStore::remove_member`] removes, or whose projects
/// [`MemberStore::list_user_projects`] lists.
#[derive(Debug, Clone, Copy)]
pub struct OrgMember<'a> {
    /// The org.
    pub org: &'a OrgId,
    /// The user.
    pub user: &'a UserId,
}

impl<'a> OrgMember<'a> {
    /// `user` of `org`.
    #[must_use]
    pub const fn new(org: &'a OrgId, user: &'a UserId) -> Self {
        Self { org, user }
    }
}

/// A member's new role ([`MemberStore::set_member_role`]).
#[derive(Debug, Clone, Copy)]
pub struct RoleChange<'a> {
    /// The org.
    pub org: &'a OrgId,
    /// The member.
    pub user: &'a UserId,
    /// The role they get (never owner).
    pub role: Role,
}

/// An org's owner handing the org to another member ([`MemberStore::transfer_ownership`]).
/// No positional constructor: `from` and `to` are both user ids, so callers name them.
#[derive(Debug, Clone, Copy)]
pub struct OwnerTransfer<'a> {
    /// The org.
    pub org: &'a OrgId,
    /// The owner, who becomes an admin.
    pub from: &'a UserId,
    /// The member who becomes the owner.
    pub to: &'a UserId,
}

/// A member on one of the org's projects, as [`MemberStore::remove_project_member`] takes
/// them off it.
#[derive(Debug, Clone, Copy)]
pub struct ProjectMember<'a> {
    /// The org.
    pub org: &'a OrgId,
    /// The org's project.
    pub project: &'a ProjectId,
    /// The member of the org on it.
    pub user: &'a UserId,
}

impl<'a> ProjectMember<'a> {
    /// `user` of `org` on `project`.
    #[must_use]
    pub const fn new(org: &'a OrgId, project: &'a ProjectId, user: &'a UserId) -> Self {
        Self { org, project, user }
    }
}

/// A member of an org [`MemberStore::add_project_member`] puts on one of its projects.
#[derive(Debug, Clone, Copy)]
pub struct NewProjectMember<'a> {
    /// The org.
    pub org: &'a OrgId,
    /// The org's project.
    pub project: &'a ProjectId,
    /// The member of the org put on it.
    pub user: &'a UserId,
    /// When (kept as the project membership's `created_at`).
    pub at: DateTime<Utc>,
}

impl<'a> NewProjectMember<'a> {
    /// `user` of `org` on `project` from `at`.
    #[must_use]
    pub const fn new(
        org: &'a OrgId,
        project: &'a ProjectId,
        user: &'a UserId,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            org,
            project,
            user,
            at,
        }
    }
}

/// Projects inside an org.
#[async_trait]
pub trait ProjectStore: Send + Sync {
    /// Creates a project. `NotFound` if the org does not exist, `Conflict` if the slug is
    /// taken in the org.
    async fn create_project(&self, project: &Project) -> Result<(), StoreError>;
    /// Looks a project up inside its org (a project of another org is `None`).
    async fn get_project(&self, org: &OrgId, id: &ProjectId)
    -> Result<Option<Project>, StoreError>;
    /// The org's projects.
    async fn list_projects(&self, org: &OrgId) -> Result<Vec<Project>, StoreError>;
    /// Applies `u.changes` to the org's project `u.id` and returns it as it is now; `None` if
    /// the org has no such project.
    async fn update_project(&self, u: &ProjectUpdate<'_>) -> Result<Option<Project>, StoreError>;
}

/// Changes to one of an org's projects ([`ProjectStore::update_project`]).
#[derive(Debug, Clone, Copy)]
pub struct ProjectUpdate<'a> {
    /// The org.
    pub org: &'a OrgId,
    /// The org's project.
    pub id: &'a ProjectId,
    /// What changes.
    pub changes: &'a ProjectChanges,
}

impl<'a> ProjectUpdate<'a> {
    /// `changes` to the project `id` of `org`.
    #[must_use]
    pub const fn new(org: &'a OrgId, id: &'a ProjectId, changes: &'a ProjectChanges) -> Self {
        Self { org, id, changes }
    }
}

/// API keys, stored by the hash of their secret.
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Stores a new API key. `NotFound` if the org does not exist.
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;
    /// Finds a key by the hash of its secret, in one lookup.
    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError>;
    /// The org's API keys (hash included: callers must not show it), in creation order
    /// (then id).
    async fn list_api_keys(&self, org: &OrgId) -> Result<Vec<ApiKey>, StoreError>;
    /// Marks the org's key `id` revoked at `at` and returns it as it is now; a key revoked
    /// before keeps its first revocation time. `None` if the org has no such key.
    async fn revoke_api_key(
        &self,
        r: &Revocation<'_, ApiKeyId>,
    ) -> Result<Option<ApiKey>, StoreError>;
    /// Rotates the org's key `old`: stores `new` (a key of the same org) and makes `old`
    /// expire at `old_expires_at` (or keeps its earlier expiry), atomically. Returns the old
    /// key as it is now; `None` if the org has no such key; `Conflict` if it is revoked
    /// ([`rules::rotated_expiry`](crate::tenant::rules::rotated_expiry)).
    async fn rotate_api_key(&self, r: &KeyRotation<'_>) -> Result<Option<ApiKey>, StoreError>;
    /// Records when keys were last used: each key's `last_used_at` becomes the use's `at`
    /// (to the microsecond) unless it holds a later time. A use whose key does not exist,
    /// or is not of the use's org, is skipped. At most
    /// [`MAX_KEY_USES_PER_CALL`](crate::tenant::MAX_KEY_USES_PER_CALL) uses per call
    /// (`Unavailable` beyond).
    async fn touch_api_keys(&self, uses: &[KeyUse]) -> Result<(), StoreError>;
}

/// A key rotation ([`ApiKeyStore::rotate_api_key`]).
#[derive(Debug, Clone, Copy)]
pub struct KeyRotation<'a> {
    /// The org's key that is rotated out.
    pub old: &'a ApiKeyId,
    /// The new key (of the same org) stored in its place.
    pub new: &'a ApiKey,
    /// When the old key is to expire (unless it expires earlier already).
    pub old_expires_at: DateTime<Utc>,
}

impl<'a> KeyRotation<'a> {
    /// `new` replaces `old`, which expires at `old_expires_at`.
    #[must_use]
    pub const fn new(old: &'a ApiKeyId, new: &'a ApiKey, old_expires_at: DateTime<Utc>) -> Self {
        Self {
            old,
            new,
            old_expires_at,
        }
    }
}

/// One of an org's items, named by its id, to revoke at an instant: the key
/// [`ApiKeyStore::revoke_api_key`] revokes, the invitation
/// [`InvitationStore::revoke_invitation`] deletes (if it is pending at that instant).
#[derive(Debug, Clone, Copy)]
pub struct Revocation<'a, Id> {
    /// The org the item belongs to (an item of another org is not found).
    pub org: &'a OrgId,
    /// The item's id.
    pub id: &'a Id,
    /// When it is revoked.
    pub at: DateTime<Utc>,
}

impl<'a, Id> Revocation<'a, Id> {
    /// The org's item `id`, revoked at `at`.
    #[must_use]
    pub const fn new(org: &'a OrgId, id: &'a Id, at: DateTime<Utc>) -> Self {
        Self { org, id, at }
    }
}

/// Invitations to join an org, found by the hash of their token.
#[async_trait]
pub trait InvitationStore: Send + Sync {
    /// Stores a new invitation. `NotFound` if the org does not exist.
    async fn create_invitation(&self, invitation: &Invitation) -> Result<(), StoreError>;
    /// The org's invitations pending at `now` (not accepted, not expired), in creation
    /// order (then id).
    async fn list_invitations(
        &self,
        org: &OrgId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Invitation>, StoreError>;
    /// Finds an invitation by the hash of its token, in one lookup; `None` if there is none
    /// or it expired before `now` (expired items may linger until TTL deletion). An
    /// accepted invitation is returned, with its `accepted_at`.
    async fn find_invitation(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Invitation>, StoreError>;
    /// Deletes the org's invitation `r.id` if it is pending at `r.at`, and returns it;
    /// `None` if the org has no such pending invitation.
    async fn revoke_invitation(
        &self,
        r: &Revocation<'_, InvitationId>,
    ) -> Result<Option<Invitation>, StoreError>;
    /// Accepts the invitation whose token hashes to `a.hash` for `a.user` at `a.at`,
    /// atomically: marks it accepted and adds the membership with the invitation's role,
    /// which it returns. `NotFound` if there is no such invitation, it expired, or the org or
    /// the user does not exist; `Conflict` if it was accepted already or the user is a member
    /// already. (Whether the user's email matches is the caller's check.)
    async fn accept_invitation(&self, a: &Acceptance<'_>) -> Result<Membership, StoreError>;
}

/// A user accepting an invitation ([`InvitationStore::accept_invitation`]).
#[derive(Debug, Clone, Copy)]
pub struct Acceptance<'a> {
    /// The hash of the invitation's token.
    pub hash: &'a KeyHash,
    /// The user who becomes a member.
    pub user: &'a UserId,
    /// When: the invitation's `accepted_at`, the membership's `created_at`, and the instant
    /// the invitation must not have expired by.
    pub at: DateTime<Utc>,
}

impl<'a> Acceptance<'a> {
    /// `user` accepts the invitation whose token hashes to `hash`, at `at`.
    #[must_use]
    pub const fn new(hash: &'a KeyHash, user: &'a UserId, at: DateTime<Utc>) -> Self {
        Self { hash, user, at }
    }
}

/// The audit trail of every mutation, allowed or refused.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Writes one audit record, kept [`AUDIT_RETENTION_DAYS`](crate::tenant::AUDIT_RETENTION_DAYS)
    /// days. Writing the same record id twice keeps one.
    async fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError>;
    /// A page of the org's audit trail, newest first, filtered as the query says; expired
    /// records are never returned.
    async fn list_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError>;
}

/// Every tenant role at once: what a whole backend (memory, SQLite, DynamoDB) implements and
/// what the composition root builds. Capabilities should hold the roles they use instead.
pub trait TenantStore:
    UserStore
    + OrgStore
    + MemberStore
    + ProjectStore
    + ApiKeyStore
    + InvitationStore
    + AuditLog
    + super::SecurityStore
{
}

impl<T> TenantStore for T where
    T: UserStore
        + OrgStore
        + MemberStore
        + ProjectStore
        + ApiKeyStore
        + InvitationStore
        + AuditLog
        + super::SecurityStore
        + ?Sized
{
}
