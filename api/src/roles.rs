//! Who may do what: the one role-permission table every management route is checked
//! against.
//!
//! | action | what | owner | admin | member | viewer |
//! |---|---|:-:|:-:|:-:|:-:|
//! | `org.read` | `GET /v1/orgs/{org_id}` | ✓ | ✓ | ✓ | ✓ |
//! | `org.update` | `PATCH /v1/orgs/{org_id}` (name; a plan is refused: only the operator changes it) | ✓ | ✓ | | |
//! | `org.delete` | `DELETE /v1/orgs/{org_id}` (soft; revokes every API key) | ✓ | | | |
//! | `members.read` | `GET /v1/orgs/{org_id}/members` | ✓ | ✓ | ✓ | ✓ |
//! | `org.transfer` | `POST /v1/orgs/{org_id}/transfer` (ownership to a member) | ✓ | | | |
//! | `member.update` | `PATCH /v1/orgs/{org_id}/members/{user_id}` (role) | ✓ | ✓ | | |
//! | `member.remove` | `DELETE /v1/orgs/{org_id}/members/{user_id}` | ✓ | ✓ | | |
//! | `projects.read` | `GET /v1/orgs/{org_id}/projects`, `GET …/projects/{project_id}` | ✓ | ✓ | ✓ | ✓ |
//! | `project.create` | `POST /v1/orgs/{org_id}/projects` | ✓ | ✓ | | |
//! | `project.update` | `PATCH /v1/orgs/{org_id}/projects/{project_id}` (name) | ✓ | ✓ | | |
//! | `project.archive` | `POST /v1/orgs/{org_id}/projects/{project_id}/archive` | ✓ | ✓ | | |
//! | `project_member.add` | `POST /v1/orgs/{org_id}/projects/{project_id}/members` | ✓ | ✓ | | |
//! | `project_member.remove` | `DELETE /v1/orgs/{org_id}/projects/{project_id}/members/{user_id}` | ✓ | ✓ | | |
//! | `keys.read` | `GET /v1/orgs/{org_id}/keys` | ✓ | ✓ | ✓ | |
//! | `key.create` | `POST /v1/orgs/{org_id}/keys` | ✓ | ✓ | | |
//! | `key.revoke` | `POST /v1/orgs/{org_id}/keys/{key_id}/revoke` | ✓ | ✓ | | |
//! | `key.rotate` | `POST /v1/orgs/{org_id}/keys/{key_id}/rotate` | ✓ | ✓ | | |
//! | `audit.read` | `GET /v1/orgs/{org_id}/audit` | ✓ | ✓ | | |
//! | `usage.read` | `GET /v1/usage` with a JWT, `GET /v1/orgs/{org_id}/usage/summary`, `GET /v1/orgs/{org_id}/invoices/upcoming`, `GET /v1/orgs/{org_id}/invoices` | ✓ | ✓ | ✓ | ✓ |
//! | `invitations.read` | `GET /v1/orgs/{org_id}/invitations` (pending ones) | ✓ | ✓ | | |
//! | `invitation.create` | `POST /v1/orgs/{org_id}/invitations` | ✓ | ✓ | | |
//! | `invitation.revoke` | `DELETE /v1/orgs/{org_id}/invitations/{invitation_id}` | ✓ | ✓ | | |
//! | `security_policy.read` | `GET /v1/orgs/{org_id}/security-policy` | ✓ | ✓ | | |
//! | `security_policy.update` | `PUT /v1/orgs/{org_id}/security-policy` (MFA, IP allowlist, session lifetime; audited) | ✓ | ✓ | | |
//! | `sessions.read` | `GET /v1/orgs/{org_id}/sessions` (the live sign-in sessions of the org's members) | ✓ | ✓ | | |
//! | `session.revoke` | `DELETE /v1/orgs/{org_id}/sessions/{session_id}` (a member's session; audited) | ✓ | ✓ | | |
//! | `ledger.read` | `GET /v1/orgs/{org_id}/reports/{period}/lines/{meter}/events` (the ledger entries a bill's line is made of), `GET /v1/orgs/{org_id}/export` (a month's counters or ledger entries as CSV) | ✓ | ✓ | | |
//!
//! `projects.read` gives members and viewers only the projects they were put on (with
//! `project_member.add`); owners and admins read every project.
//!
//! `GET /v1/me/orgs` is outside the table: any user may list the orgs they belong to. So
//! are a user's own sessions (`POST`/`GET /v1/sessions`, `DELETE /v1/sessions/{session_id}`):
//! any user opens, lists and revokes their own. So is
//! `invitation.accept` (`POST /v1/invitations/accept`): any user whose email is the one the
//! invitation was sent to, whatever their roles elsewhere.
//!
//! Nobody becomes owner, and the owner is not demoted or removed, through these routes:
//! ownership moves only by a transfer.
//!
//! [`PERMISSIONS`] is this table in code; [`allows`] is the only check the handlers use,
//! and the role-matrix test walks every route against every role from it. The same table
//! is in the OpenAPI document's description.

use tally_core::tenant::Role;

/// Something a caller may try in an org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read the org.
    OrgRead,
    /// Change the org's name (its plan is the operator's).
    OrgUpdate,
    /// Delete the org (soft: marked deleted, its API keys revoked).
    OrgDelete,
    /// List the members.
    MembersRead,
    /// Hand ownership to another member (the owner becomes an admin).
    OrgTransfer,
    /// Change a member's role. (There is no "add a member": a user joins an org only by
    /// accepting an invitation sent to their email, never by being added without consent.)
    MemberUpdate,
    /// Remove a member.
    MemberRemove,
    /// List or read projects.
    ProjectsRead,
    /// Create a project.
    ProjectCreate,
    /// Rename a project.
    ProjectUpdate,
    /// Archive a project (ingest refuses its events from then on).
    ProjectArchive,
    /// Put a member on a project (members and viewers see only their projects).
    ProjectMemberAdd,
    /// Take a member off a project.
    ProjectMemberRemove,
    /// List API keys (never their secrets or hashes).
    KeysRead,
    /// Create an API key.
    KeyCreate,
    /// Revoke an API key.
    KeyRevoke,
    /// Rotate an API key (a new secret; the old one works for an overlap).
    KeyRotate,
    /// Read the audit trail.
    AuditRead,
    /// Read usage counters.
    UsageRead,
    /// List the pending invitations (never their tokens or hashes).
    InvitationsRead,
    /// Invite someone by email with a role.
    InvitationCreate,
    /// Revoke a pending invitation.
    InvitationRevoke,
    /// Accept an invitation (outside the table: the invited email decides; audited).
    InvitationAccept,
    /// Read the ledger entries a report line bills (every event of a meter in a month).
    LedgerRead,
    /// Read the org's security policy.
    SecurityPolicyRead,
    /// Replace the org's security policy (MFA, IP allowlist, session lifetime).
    SecurityPolicyUpdate,
    /// List the live sign-in sessions of the org's members.
    SessionsRead,
    /// Revoke a sign-in session of one of the org's members.
    SessionRevoke,
}

impl Action {
    /// The action's name, as in the table (and, for mutations, the audit `action`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::OrgRead => "org.read",
            Action::OrgUpdate => "org.update",
            Action::OrgDelete => "org.delete",
            Action::MembersRead => "members.read",
            Action::OrgTransfer => "org.transfer",
            Action::MemberUpdate => "member.update",
            Action::MemberRemove => "member.remove",
            Action::ProjectsRead => "projects.read",
            Action::ProjectCreate => "project.create",
            Action::ProjectUpdate => "project.update",
            Action::ProjectArchive => "project.archive",
            Action::ProjectMemberAdd => "project_member.add",
            Action::ProjectMemberRemove => "project_member.remove",
            Action::KeysRead => "keys.read",
            Action::KeyCreate => "key.create",
            Action::KeyRevoke => "key.revoke",
            Action::KeyRotate => "key.rotate",
            Action::AuditRead => "audit.read",
            Action::UsageRead => "usage.read",
            Action::InvitationsRead => "invitations.read",
            Action::InvitationCreate => "invitation.create",
            Action::InvitationRevoke => "invitation.revoke",
            Action::InvitationAccept => "invitation.accept",
            Action::LedgerRead => "ledger.read",
            Action::SecurityPolicyRead => "security_policy.read",
            Action::SecurityPolicyUpdate => "security_policy.update",
            Action::SessionsRead => "sessions.read",
            Action::SessionRevoke => "session.revoke",
        }
    }

    /// Whether the action changes something (and so writes an audit record).
    pub fn is_mutation(self) -> bool {
        matches!(
            self,
            Action::OrgUpdate
                | Action::OrgDelete
                | Action::OrgTransfer
                | Action::MemberUpdate
                | Action::MemberRemove
                | Action::ProjectCreate
                | Action::ProjectUpdate
                | Action::ProjectArchive
                | Action::ProjectMemberAdd
                | Action::ProjectMemberRemove
                | Action::KeyCreate
                | Action::KeyRevoke
                | Action::KeyRotate
                | Action::InvitationCreate
                | Action::InvitationRevoke
                | Action::InvitationAccept
                | Action::SecurityPolicyUpdate
                | Action::SessionRevoke
        )
    }
}

/// The roles in the table's column order.
pub const ROLES: [Role; 4] = [Role::Owner, Role::Admin, Role::Member, Role::Viewer];

/// The table: for each action, whether owner, admin, member and viewer may do it.
pub const PERMISSIONS: &[(Action, [bool; 4])] = &[
    (Action::OrgRead, [true, true, true, true]),
    (Action::OrgUpdate, [true, true, false, false]),
    (Action::OrgDelete, [true, false, false, false]),
    (Action::MembersRead, [true, true, true, true]),
    (Action::OrgTransfer, [true, false, false, false]),
    (Action::MemberUpdate, [true, true, false, false]),
    (Action::MemberRemove, [true, true, false, false]),
    (Action::ProjectsRead, [true, true, true, true]),
    (Action::ProjectCreate, [true, true, false, false]),
    (Action::ProjectUpdate, [true, true, false, false]),
    (Action::ProjectArchive, [true, true, false, false]),
    (Action::ProjectMemberAdd, [true, true, false, false]),
    (Action::ProjectMemberRemove, [true, true, false, false]),
    (Action::KeysRead, [true, true, true, false]),
    (Action::KeyCreate, [true, true, false, false]),
    (Action::KeyRevoke, [true, true, false, false]),
    (Action::KeyRotate, [true, true, false, false]),
    (Action::AuditRead, [true, true, false, false]),
    (Action::UsageRead, [true, true, true, true]),
    (Action::InvitationsRead, [true, true, false, false]),
    (Action::InvitationCreate, [true, true, false, false]),
    (Action::InvitationRevoke, [true, true, false, false]),
    (Action::LedgerRead, [true, true, false, false]),
    (Action::SecurityPolicyRead, [true, true, false, false]),
    (Action::SecurityPolicyUpdate, [true, true, false, false]),
    (Action::SessionsRead, [true, true, false, false]),
    (Action::SessionRevoke, [true, true, false, false]),
];

/// Whether `role` may do `action` (an action missing from the table is refused).
pub fn allows(role: Role, action: Action) -> bool {
    let column = match role {
        Role::Owner => 0,
        Role::Admin => 1,
        Role::Member => 2,
        Role::Viewer => 3,
    };
    PERMISSIONS
        .iter()
        .find(|(a, _)| *a == action)
        .is_some_and(|(_, row)| row[column])
}

/// The table as Markdown (for the OpenAPI document).
pub fn markdown_table() -> String {
    let mut out =
        String::from("| action | owner | admin | member | viewer |\n|---|---|---|---|---|\n");
    for (action, row) in PERMISSIONS {
        let cells: Vec<&str> = row
            .iter()
            .map(|ok| if *ok { "yes" } else { "no" })
            .collect();
        out.push_str(&format!(
            "| `{}` | {} |\n",
            action.as_str(),
            cells.join(" | ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_is_in_the_table_once_and_owners_may_do_everything() {
        for (i, (a, row)) in PERMISSIONS.iter().enumerate() {
            assert_eq!(
                PERMISSIONS.iter().filter(|(b, _)| b == a).count(),
                1,
                "{a:?}"
            );
            assert!(row[0], "owner may {}", a.as_str());
            // Rights only shrink from owner to viewer.
            assert!(row.windows(2).all(|w| w[0] || !w[1]), "row {i}");
        }
        assert!(allows(Role::Admin, Action::AuditRead));
        assert!(!allows(Role::Member, Action::AuditRead));
        assert!(!allows(Role::Viewer, Action::KeysRead));
    }
}
