//! Memberships on DynamoDB: roles in an org, the owner guards (as [`rules`] decides them,
//! enforced with conditions on the membership items), ownership transfer, and which projects
//! a member is on. A membership is `org#<org>` / `member#<user>`, indexed under its user in
//! `gsi1` so a user's orgs are one query.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{ReturnValue, TransactWriteItem};
use tally_core::ids::{OrgId, ProjectId, UserId};
use tally_core::ports::{
    MemberStore, NewProjectMember, OrgMember, OrgStore, OwnerTransfer, ProjectMember, RoleChange,
    StoreError,
};
use tally_core::tenant::rules;
use tally_core::tenant::{Membership, Org, Role};

use super::DynamoStore;
use super::chunks::put_if_absent;
use super::codec::unless_condition_failed;
use super::codec::{Item, corrupt, get_s, item, parse_id, parse_ts, s, sdk_error, ts_text};
use super::keys::{self, GSI1PK, GSI1SK, ORG_SK, PK, SK, USER_SK};

use super::tx::{conflict, failed, must_exist, not_found, org_must_be_live, refusal, tx_update};

/// Conditions a membership's `UpdateItem` or `DeleteItem` on the membership existing and not
/// being the owner's, and asks for the old item back (what [`member_before`] reads). A macro
/// because the SDK's two request builders share these methods but no trait.
macro_rules! unless_owner_returning_old {
    ($write:expr) => {
        $write
            .condition_expression("attribute_exists(#pk) AND #role <> :owner")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#role", "role")
            .expression_attribute_values(":owner", s(Role::Owner.as_str()))
            .return_values(ReturnValue::AllOld)
    };
}

#[async_trait]
impl MemberStore for DynamoStore {
    /// The membership item `ORG#<org>` / `MEMBER#<user>` and the org item, two `GetItem`s at
    /// once (one round trip): no role in an org that is deleted.
    async fn get_role(&self, org: &OrgId, user: &UserId) -> Result<Option<Role>, StoreError> {
        let (role, org_item) = tokio::join!(
            member_role(self, org, user),
            self.get(keys::org_pk(org), ORG_SK),
        );
        match org_item? {
            Some(o) if !o.contains_key("deleted_at") => role,
            _ => Ok(None),
        }
    }

    /// The membership items of the org partition (one strongly consistent query).
    async fn list_members(&self, org: &OrgId) -> Result<Vec<Membership>, StoreError> {
        let items = self
            .query_prefix(keys::org_pk(org), keys::MEMBER_PREFIX)
            .await?;
        let mut members = items
            .iter()
            .map(|it| {
                let role = get_s(it, "role")?;
                Ok(Membership {
                    org_id: org.clone(),
                    user_id: parse_id(get_s(it, "user_id")?, UserId::parse)?,
                    role: Role::parse(role)
                        .ok_or_else(|| corrupt(format!("membership role {role:?}")))?,
                    created_at: parse_ts(get_s(it, "created_at")?)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        members.sort_by(|a, b| (a.created_at, &a.user_id).cmp(&(b.created_at, &b.user_id)));
        Ok(members)
    }

    /// Checks of the project and of the user's membership, and the put under
    /// `attribute_not_exists`, in one transaction.
    async fn add_project_member(&self, m: &NewProjectMember<'_>) -> Result<(), StoreError> {
        let (org, project, user, at) = (m.org, m.project, m.user, m.at);
        let table = self.table();
        let actions = vec![
            must_exist(table, keys::org_pk(org), &keys::project_sk(project))?,
            must_exist(table, keys::org_pk(org), &keys::member_sk(user))?,
            put_if_absent(
                table,
                item([
                    (PK, s(keys::org_pk(org))),
                    (SK, s(project_member_sk(user, project))),
                    ("user_id", s(user.as_str())),
                    ("project_id", s(project.as_str())),
                    ("created_at", s(ts_text(at))),
                ]),
            )?,
        ];
        let checks = [
            (0, not_found(format!("project {project} in org {org}"))),
            (1, not_found(format!("member {user} of org {org}"))),
        ];
        let taken = conflict(format!("user {user} on project {project}"));
        self.transact_tenant(actions)
            .await?
            .map_err(|r| refusal(&r, checks, taken))
    }

    /// One `DeleteItem`, returning the old item to tell whether there was one.
    async fn remove_project_member(&self, m: &ProjectMember<'_>) -> Result<bool, StoreError> {
        let (org, project, user) = (m.org, m.project, m.user);
        let out = self
            .delete_item_at(keys::org_pk(org), project_member_sk(user, project))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| sdk_error("DeleteItem", e))?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }

    /// One strongly consistent query of `PROJECTMEMBER#<user>#` in the org partition.
    async fn list_user_projects(&self, m: &OrgMember<'_>) -> Result<Vec<ProjectId>, StoreError> {
        let (org, user) = (m.org, m.user);
        let items = self
            .query_prefix(keys::org_pk(org), format!("PROJECTMEMBER#{user}#"))
            .await?;
        let mut out = items
            .iter()
            .map(|it| parse_id(get_s(it, "project_id")?, ProjectId::parse))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        Ok(out)
    }

    /// Membership put under `attribute_not_exists`, with checks that the org and the user
    /// exist, in one transaction.
    async fn add_member(&self, m: &Membership) -> Result<(), StoreError> {
        rules::check_new_member(m.role)?;
        let table = self.table();
        let actions = vec![
            org_must_be_live(table, &m.org_id)?,
            must_exist(table, keys::user_pk(&m.user_id), USER_SK)?,
            membership_put(table, m)?,
        ];
        let checks = [
            (0, rules::org_not_live(&m.org_id)),
            (1, not_found(format!("user {}", m.user_id))),
        ];
        let taken = member_taken(m);
        self.transact_tenant(actions)
            .await?
            .map_err(|r| refusal(&r, checks, taken))
    }

    /// One conditional `UpdateItem` (exists and is not the owner), returning the old item.
    async fn set_member_role(&self, c: &RoleChange<'_>) -> Result<Option<Membership>, StoreError> {
        let (org, user, role) = (c.org, c.user, c.role);
        rules::check_new_member(role)?;
        let update = self
            .update_item_at(keys::org_pk(org), keys::member_sk(user))
            .update_expression("SET #role = :role")
            .expression_attribute_values(":role", s(role.as_str()));
        let updated = unless_owner_returning_old!(update).send().await;
        let old = unless_condition_failed("UpdateItem", updated)?.map(|out| out.attributes);
        member_before(self, org, user, old).await
    }

    /// One conditional `DeleteItem` (exists and is not the owner), returning the old item.
    async fn remove_member(&self, m: &OrgMember<'_>) -> Result<Option<Membership>, StoreError> {
        let (org, user) = (m.org, m.user);
        let delete = self.delete_item_at(keys::org_pk(org), keys::member_sk(user));
        let deleted = unless_owner_returning_old!(delete).send().await;
        let old = unless_condition_failed("DeleteItem", deleted)?.map(|out| out.attributes);
        member_before(self, org, user, old).await
    }

    /// One transaction: the org's `owner_id` (conditioned on the old owner), the old owner's
    /// membership to admin (conditioned on being owner), the new owner's to owner (conditioned
    /// on existing).
    async fn transfer_ownership(&self, t: &OwnerTransfer<'_>) -> Result<Option<Org>, StoreError> {
        let (org, from, to) = (t.org, t.from, t.to);
        let Some(current) = self.get_org(org).await? else {
            return Ok(None);
        };
        // The org is read already: only the two memberships are left to read, at once. As
        // before the rules moved to core, nobody in a deleted org can take ownership over.
        let (from_role, to_role) =
            tokio::join!(member_role(self, org, from), member_role(self, org, to));
        let (from_role, to_role) = (
            from_role?,
            to_role?.filter(|_| current.deleted_at.is_none()),
        );
        if !rules::check_transfer(org, &current.owner_id, from, from_role, to, to_role)? {
            return Ok(Some(current));
        }
        let table = self.table();
        let role = [("#role", "role"), ("#pk", PK)];
        let actions = vec![
            tx_update(
                table,
                keys::org_pk(org),
                ORG_SK.into(),
                "SET owner_id = :to",
                "owner_id = :from",
                &[],
                &[(":to", s(to.as_str())), (":from", s(from.as_str()))],
            )?,
            tx_update(
                table,
                keys::org_pk(org),
                keys::member_sk(from),
                "SET #role = :admin",
                "#role = :owner",
                &role[..1],
                &[
                    (":admin", s(Role::Admin.as_str())),
                    (":owner", s(Role::Owner.as_str())),
                ],
            )?,
            tx_update(
                table,
                keys::org_pk(org),
                keys::member_sk(to),
                "SET #role = :owner",
                "attribute_exists(#pk)",
                &role,
                &[(":owner", s(Role::Owner.as_str()))],
            )?,
        ];
        match self.transact_tenant(actions).await? {
            Ok(()) => self.get_org(org).await,
            Err(r) if failed(&r, 2) && !failed(&r, 0) && !failed(&r, 1) => {
                Err(StoreError::NotFound {
                    what: format!("member {to} of org {org}"),
                })
            }
            Err(_) => Err(StoreError::Conflict {
                what: format!("a different owner of org {org}"),
            }),
        }
    }
}

/// The `Conflict` of a membership put whose item exists already (adding a member, accepting
/// an invitation).
pub(super) fn member_taken(m: &Membership) -> StoreError {
    conflict(format!(
        "membership of user {} in org {}",
        m.user_id, m.org_id
    ))
}

/// The role the membership item `ORG#<org>` / `MEMBER#<user>` holds, whatever the org's
/// state (one `GetItem`).
async fn member_role(
    store: &DynamoStore,
    org: &OrgId,
    user: &UserId,
) -> Result<Option<Role>, StoreError> {
    let Some(it) = store.get(keys::org_pk(org), &keys::member_sk(user)).await? else {
        return Ok(None);
    };
    let role = get_s(&it, "role")?;
    Role::parse(role)
        .map(Some)
        .ok_or_else(|| corrupt(format!("membership role {role:?}")))
}

/// `PROJECTMEMBER#<user>#<project>` inside the org partition.
fn project_member_sk(user: &UserId, project: &ProjectId) -> String {
    format!("PROJECTMEMBER#{user}#{project}")
}

pub(super) fn membership_of(org: &OrgId, it: &Item) -> Result<Membership, StoreError> {
    let role = get_s(it, "role")?;
    Ok(Membership {
        org_id: org.clone(),
        user_id: parse_id(get_s(it, "user_id")?, UserId::parse)?,
        role: Role::parse(role).ok_or_else(|| corrupt(format!("membership role {role:?}")))?,
        created_at: parse_ts(get_s(it, "created_at")?)?,
    })
}

/// The put of a new membership item (under `attribute_not_exists`), indexed under its user.
pub(super) fn membership_put(table: &str, m: &Membership) -> Result<TransactWriteItem, StoreError> {
    put_if_absent(
        table,
        item([
            (PK, s(keys::org_pk(&m.org_id))),
            (SK, s(keys::member_sk(&m.user_id))),
            ("user_id", s(m.user_id.as_str())),
            ("role", s(m.role.as_str())),
            ("created_at", s(ts_text(m.created_at))),
            (GSI1PK, s(keys::user_pk(&m.user_id))),
            (GSI1SK, s(keys::org_gsi_sk(&m.org_id))),
        ]),
    )
}

/// What a write of a membership conditioned on it existing and not being the owner's
/// answers: the membership as it was (`old`, the item it returned), or when the condition
/// failed (`None`), why ([`refused_member`]).
async fn member_before(
    store: &DynamoStore,
    org: &OrgId,
    user: &UserId,
    old: Option<Option<Item>>,
) -> Result<Option<Membership>, StoreError> {
    match old {
        Some(item) => item.as_ref().map(|it| membership_of(org, it)).transpose(),
        None => refused_member(store, org, user).await,
    }
}

/// After a refused conditional write of a membership: `None` if it does not exist, the
/// owner's refusal ([`rules::check_member_change`]) if it is the owner's (the only other way
/// the condition fails).
async fn refused_member(
    store: &DynamoStore,
    org: &OrgId,
    user: &UserId,
) -> Result<Option<Membership>, StoreError> {
    match store.get(keys::org_pk(org), &keys::member_sk(user)).await? {
        None => Ok(None),
        Some(it) => {
            rules::check_member_change(membership_of(org, &it)?.role)?;
            // The condition failed on a member who is not the owner: it became one between
            // the write and this read; the caller may retry.
            Err(StoreError::Unavailable(format!(
                "membership of {user} in org {org} changed during the update; retry"
            )))
        }
    }
}
