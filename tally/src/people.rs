//! `tally member list|add|set-role|remove` and `tally invitation list|create|revoke`: who belongs to
//! an org, as the operator sees and changes it.
//!
//! A user joins an org only by accepting an invitation sent to their email (`POST
//! /v1/invitations/accept`), and the operator is held to that too: `member add` sends an
//! invitation rather than writing a membership. Writing one directly would put a person in
//! an org they never agreed to join, past the one check that the address is theirs, and
//! would skip the plan's user limit that pending invitations count against. Invitations
//! and removals go through the management API's own functions
//! (`tally_api::invitations::create`, `tally_api::members::remove`), so they refuse alike,
//! and are audited with actor `cli`.

use clap::{Args, Subcommand};
use tally_api::invitations::{
    CreateInvitation, CreatedInvitation, InvitationView, InvitationsResponse,
};
use tally_api::members::{MemberView, MembersResponse};

use crate::manage::{Audit, Change, live_org, now, open, open_any_org, open_live_org, org_id};
use crate::output::{print, table, table_of, when};
use crate::settings::Common;

/// Whom `tally member add` and `tally invitation create` invite, and as what.
#[derive(Debug, Args)]
pub struct InviteArgs {
    /// The organization's id (org_…).
    #[arg(long)]
    org: String,
    /// The invitee's email address.
    #[arg(long)]
    email: String,
    /// admin, member or viewer (ownership moves only by a transfer).
    #[arg(long, default_value = "member")]
    role: String,
}

/// `tally member …`
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List an organization's members with their roles.
    List {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
    },
    /// Invite someone to an organization: the same as `tally invitation create`. A user
    /// joins an org only by accepting an invitation sent to their email, the operator's
    /// included, so that nobody is made a member of an org they did not agree to join; the
    /// invitation's token is printed once for the operator to pass on.
    Add(InviteArgs),
    /// Give a member another role (admin, member or viewer); the owner's role changes only
    /// by `tally org transfer`. Audited as `member.update`.
    SetRole {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The member's user id (usr_…).
        #[arg(long)]
        user: String,
        /// admin, member or viewer.
        #[arg(long)]
        role: String,
    },
    /// Remove a member from an organization; the owner cannot be removed. Audited as
    /// `member.remove`.
    Remove {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The member's user id (usr_…).
        #[arg(long)]
        user: String,
    },
}

/// `tally invitation …`
#[derive(Debug, Subcommand)]
pub enum InvitationCommand {
    /// List an organization's pending invitations (never their tokens).
    List {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
    },
    /// Invite an email address to an organization with a role. The token to accept it with
    /// is printed once; the invitation names the org's owner as the one who sent it (the
    /// invitee knows them, not the operator), and the audit trail records the operator
    /// (`cli`). Refused past the plan's user limit, or if the address has a pending
    /// invitation already. Audited as `invitation.create`.
    Create(InviteArgs),
    /// Revoke a pending invitation. Audited as `invitation.revoke`.
    Revoke {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The invitation's id (inv_…).
        #[arg(long)]
        invitation: String,
    },
}

/// Runs a `member` command.
pub async fn member(common: &Common, cmd: MemberCommand) -> anyhow::Result<()> {
    match cmd {
        MemberCommand::List { org } => {
            let (store, id, _) = open_any_org(common, &org).await?;
            let members = store.tenants.list_members(&id).await?;
            let mut rows = Vec::new();
            for m in &members {
                let email = store
                    .tenants
                    .get_user(&m.user_id)
                    .await?
                    .map_or_else(|| "-".to_owned(), |u| u.email);
                rows.push(vec![
                    m.user_id.to_string(),
                    email,
                    m.role.as_str().to_owned(),
                    when(Some(m.created_at)),
                ]);
            }
            let answer = MembersResponse {
                members: members.iter().map(MemberView::from).collect(),
            };
            print(common.json, &answer, |_| {
                table(&["USER", "EMAIL", "ROLE", "SINCE"], &rows, "no members")
            })
        }
        MemberCommand::Add(a) => invite(common, &a.org, a.email, a.role).await,
        MemberCommand::SetRole { org, user, role } => {
            let (store, id, _) = open_live_org(common, &org).await?;
            let result = tally_api::members::set_role(&*store.tenants, &id, &user, &role)
                .await
                .map(|(before, after)| Change::updated(&before, after));
            let audit = Audit::new(&store, &id, "member.update", format!("member:{user}"));
            audit
                .record_and_print(common, result, |m| {
                    format!("{} is now {} of {id}", m.user_id, m.role.as_str())
                })
                .await
        }
        MemberCommand::Remove { org, user } => {
            let (store, id, _) = open_live_org(common, &org).await?;
            let result = tally_api::members::remove(&*store.tenants, &id, &user)
                .await
                .map(Change::removed);
            let audit = Audit::new(&store, &id, "member.remove", format!("member:{user}"));
            audit
                .record_and_print(common, result, |m| {
                    format!("removed {} ({}) from {id}", m.user_id, m.role.as_str())
                })
                .await
        }
    }
}

/// A row of `tally invitation list`.
fn invitation_row(i: &InvitationView) -> Vec<String> {
    vec![
        i.id.to_string(),
        i.email.clone(),
        i.role.as_str().to_owned(),
        i.invited_by.to_string(),
        when(Some(i.created_at)),
        when(Some(i.expires_at)),
    ]
}

/// Runs an `invitation` command.
pub async fn invitation(common: &Common, cmd: InvitationCommand) -> anyhow::Result<()> {
    match cmd {
        InvitationCommand::List { org } => {
            let (store, id, _) = open_any_org(common, &org).await?;
            let invitations = store.tenants.list_invitations(&id, now()?).await?;
            let answer = InvitationsResponse {
                invitations: invitations.iter().map(InvitationView::from).collect(),
            };
            print(common.json, &answer, |r| {
                table_of(
                    &["ID", "EMAIL", "ROLE", "INVITED BY", "CREATED", "EXPIRES"],
                    &r.invitations,
                    "no pending invitations",
                    invitation_row,
                )
            })
        }
        InvitationCommand::Create(a) => invite(common, &a.org, a.email, a.role).await,
        InvitationCommand::Revoke { org, invitation } => {
            let (store, id, _) = open_live_org(common, &org).await?;
            let result = tally_api::invitations::revoke(&*store.tenants, &id, &invitation, now()?)
                .await
                .map(Change::removed);
            let resource = format!("invitation:{invitation}");
            let audit = Audit::new(&store, &id, "invitation.revoke", resource);
            audit
                .record_and_print(common, result, |i| {
                    format!("revoked the invitation {} of {}", i.id, i.email)
                })
                .await
        }
    }
}

/// `invitation create` and `member add`: invites `email` to `org` as `role`, sent in the
/// owner's name, audited as `invitation.create`.
async fn invite(common: &Common, org: &str, email: String, role: String) -> anyhow::Result<()> {
    let id = org_id(org)?;
    let catalogue = common.load_catalogue()?;
    let store = open(common).await?;
    let org = live_org(&store, &id).await?;
    let plan = catalogue
        .core_plans()
        .get(&org.plan)
        .cloned()
        .unwrap_or_else(|| tally_core::plan::Plan::builtin(org.plan));
    let req = CreateInvitation { email, role };
    let result = tally_api::invitations::create(
        &*store.tenants,
        &plan,
        &org,
        &req,
        org.owner_id.clone(),
        now()?,
    )
    .await;
    // The record names the invitation once there is one, and never holds its token.
    let (resource, result) = match result {
        Ok(created) => (
            format!("invitation:{}", created.view.id),
            Ok(Change {
                before: None,
                after: serde_json::to_value(&created.view).ok(),
                answer: created,
            }),
        ),
        Err(e) => ("invitations".to_owned(), Err(e)),
    };
    let audit = Audit::new(&store, &id, "invitation.create", resource);
    audit
        .record_and_print(common, result, |c: &CreatedInvitation| {
            format!(
                "invited {} to {} as {} (invitation {}, expires {}); token (shown once): {}",
                c.view.email,
                c.view.org_id,
                c.view.role.as_str(),
                c.view.id,
                when(Some(c.view.expires_at)),
                c.token
            )
        })
        .await
}
