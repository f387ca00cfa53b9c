//! [`TenantStore`](tally_core::ports::TenantStore) on DynamoDB: every uniqueness rule is a
//! guard item put under `attribute_not_exists` in the same transaction as the record it
//! guards, and every "must exist" rule is a `ConditionCheck` in that transaction, so each
//! operation is one atomic request whose cancellation reasons say which rule failed.

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::ReturnValue;
use chrono::{DateTime, Utc};
use tally_core::ids::{OrgId, ProjectId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::{
    ApiKeyStore, OrgStore, PlanMove, ProjectStore, ProjectUpdate, Revocation, StoreError, UserStore,
};
use tally_core::tenant::{Membership, Org, OrgChanges, PlanChange, Project, Role, User, rules};

use super::DynamoStore;
use super::chunks::{put_guard, put_if_absent};
use super::codec::unless_condition_failed;
use super::codec::{Item, corrupt, get_opt_s, get_s, item, parse_id, parse_ts, s, ts_text};
use super::keys::{
    self, ALL_ORGS, EMAIL_SK, GSI1, GSI1PK, GSI1SK, ORG_SK, PK, PROJECT_PREFIX, SK, SLUG_SK,
    USER_SK,
};
use super::members::membership_of;
use super::tx::{
    conflict, failed, must_exist, not_found, org_must_be_live, put, refusal, tx_update,
};

/// Sort key prefix of an org's plan changes (`PLAN#<at>#<to>`), in its partition.
pub const PLAN_CHANGE_PREFIX: &str = "PLAN#";

pub(super) fn user_of(it: &Item) -> Result<User, StoreError> {
    Ok(User {
        id: parse_id(get_s(it, "id")?, UserId::parse)?,
        email: get_s(it, "email")?.to_owned(),
        created_at: parse_ts(get_s(it, "created_at")?)?,
    })
}

pub(super) fn org_of(it: &Item) -> Result<Org, StoreError> {
    let plan = get_s(it, "plan")?;
    Ok(Org {
        id: parse_id(get_s(it, "id")?, OrgId::parse)?,
        name: get_s(it, "name")?.to_owned(),
        slug: get_s(it, "slug")?.to_owned(),
        plan: PlanId::parse(plan).ok_or_else(|| corrupt(format!("plan {plan:?}")))?,
        owner_id: parse_id(get_s(it, "owner_id")?, UserId::parse)?,
        created_at: parse_ts(get_s(it, "created_at")?)?,
        deleted_at: get_opt_s(it, "deleted_at")?.map(parse_ts).transpose()?,
    })
}

pub(super) fn project_of(it: &Item) -> Result<Project, StoreError> {
    Ok(Project {
        id: parse_id(get_s(it, "id")?, ProjectId::parse)?,
        org_id: parse_id(get_s(it, "org_id")?, OrgId::parse)?,
        name: get_s(it, "name")?.to_owned(),
        slug: get_s(it, "slug")?.to_owned(),
        created_at: parse_ts(get_s(it, "created_at")?)?,
        archived_at: get_opt_s(it, "archived_at")?.map(parse_ts).transpose()?,
    })
}

#[async_trait]
impl UserStore for DynamoStore {
    /// See [`TenantStore::ensure_user`](tally_core::ports::TenantStore::ensure_user): the email
    /// guard and the user are put together; when the guard exists, its user is the answer.
    async fn ensure_user(&self, candidate: &User) -> Result<User, StoreError> {
        let email = candidate.email.to_lowercase();
        // Two rounds: a concurrent creator can take the email between our read and our put.
        for _ in 0..2 {
            if let Some(guard) = self.get(keys::email_pk(&email), EMAIL_SK).await? {
                let id = parse_id(get_s(&guard, "user_id")?, UserId::parse)?;
                return self.get_user(&id).await?.ok_or_else(|| {
                    corrupt(format!("email guard of {email:?} names missing user {id}"))
                });
            }
            let user = User {
                email: email.clone(),
                ..candidate.clone()
            };
            let table = self.table();
            let actions = vec![
                put_if_absent(
                    table,
                    item([
                        (PK, s(keys::user_pk(&user.id))),
                        (SK, s(USER_SK)),
                        ("id", s(user.id.as_str())),
                        ("email", s(&user.email)),
                        ("created_at", s(ts_text(user.created_at))),
                    ]),
                )?,
                put_guard(
                    table,
                    (keys::email_pk(&email), EMAIL_SK.to_owned()),
                    ("user_id", user.id.as_str()),
                )?,
            ];
            match self.transact_tenant(actions).await? {
                Ok(()) => return Ok(user),
                Err(reasons) if failed(&reasons, 1) => continue,
                Err(_) => {
                    return Err(StoreError::Conflict {
                        what: format!("user id {:?}", user.id.as_str()),
                    });
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "the user of email {email:?} kept changing"
        )))
    }

    /// Looks a user up.
    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        self.get_as(keys::user_pk(id), USER_SK, user_of).await
    }

    /// Through the email guard (`EMAIL#<email>`), which names the user.
    async fn find_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let email = email.to_lowercase();
        let Some(guard) = self.get(keys::email_pk(&email), EMAIL_SK).await? else {
            return Ok(None);
        };
        let id = parse_id(get_s(&guard, "user_id")?, UserId::parse)?;
        self.get_user(&id)
            .await?
            .ok_or_else(|| corrupt(format!("email guard of {email:?} names missing user {id}")))
            .map(Some)
    }

    /// The user's membership items, from the index (`gsi1pk` `USER#<user>`), by org id.
    /// Eventually consistent.
    async fn list_user_memberships(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        let items = self
            .query_partition(Some(GSI1), keys::user_pk(user))
            .await?;
        let mut out = items
            .iter()
            .map(|it| {
                let org = keys::parse_org_gsi_sk(get_s(it, GSI1SK)?)?;
                membership_of(&org, it)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| a.org_id.cmp(&b.org_id));
        Ok(out)
    }
}

#[async_trait]
impl OrgStore for DynamoStore {
    /// Org, slug guard and owner membership in one transaction, checked against the owner.
    async fn create_org(&self, org: &Org) -> Result<(), StoreError> {
        let table = self.table();
        let created = ts_text(org.created_at);
        let actions = vec![
            must_exist(table, keys::user_pk(&org.owner_id), USER_SK)?,
            put_guard(
                table,
                (keys::slug_pk(&org.slug), SLUG_SK.to_owned()),
                ("org_id", org.id.as_str()),
            )?,
            put_if_absent(
                table,
                item([
                    (PK, s(keys::org_pk(&org.id))),
                    (SK, s(ORG_SK)),
                    ("id", s(org.id.as_str())),
                    ("name", s(&org.name)),
                    ("slug", s(&org.slug)),
                    ("plan", s(org.plan.as_str())),
                    ("owner_id", s(org.owner_id.as_str())),
                    ("created_at", s(&created)),
                    (GSI1PK, s(ALL_ORGS)),
                    (GSI1SK, s(keys::org_gsi_sk(&org.id))),
                ]),
            )?,
            put(
                table,
                item([
                    (PK, s(keys::org_pk(&org.id))),
                    (SK, s(keys::member_sk(&org.owner_id))),
                    ("user_id", s(org.owner_id.as_str())),
                    ("role", s(Role::Owner.as_str())),
                    ("created_at", s(&created)),
                    (GSI1PK, s(keys::user_pk(&org.owner_id))),
                    (GSI1SK, s(keys::org_gsi_sk(&org.id))),
                ]),
            )?,
        ];
        let checks = [
            (0, not_found(format!("user {}", org.owner_id))),
            (1, conflict(format!("org slug {:?}", org.slug))),
        ];
        let taken = conflict(format!("org {}", org.id));
        self.transact_tenant(actions)
            .await?
            .map_err(|r| refusal(&r, checks, taken))
    }

    /// Looks an org up.
    async fn get_org(&self, id: &OrgId) -> Result<Option<Org>, StoreError> {
        self.get_as(keys::org_pk(id), ORG_SK, org_of).await
    }

    /// Every org's id, from the index (in id order; eventually consistent).
    async fn list_org_ids(&self) -> Result<Vec<OrgId>, StoreError> {
        let items = self.query_partition(Some(GSI1), ALL_ORGS).await?;
        items
            .iter()
            .map(|it| keys::parse_org_gsi_sk(get_s(it, GSI1SK)?))
            .collect()
    }

    /// One conditional `UpdateItem` of the org item (`SET` of the changed fields), returning
    /// the org as it is now; `None` when there is no such org.
    async fn update_org(
        &self,
        id: &OrgId,
        changes: &OrgChanges,
    ) -> Result<Option<Org>, StoreError> {
        let (req, sets) = update_named(self, keys::org_pk(id), ORG_SK, &changes.name);
        if sets.is_empty() {
            return self.get_org(id).await;
        }
        update_existing(req, &sets, org_of).await
    }

    /// One transaction: the org's `plan` and `plan_changed_at`, conditioned on the plan it
    /// was read with, on being live and on no later change, and the history item
    /// `PLAN#<at>#<to>` (put if absent). A racing or out-of-order change fails the
    /// condition: `Conflict`.
    async fn change_plan(&self, m: &PlanMove<'_>) -> Result<Option<Org>, StoreError> {
        let (id, plan, at) = (m.org, m.plan, m.at);
        let Some(org) = self.get_org(id).await?.filter(|o| o.deleted_at.is_none()) else {
            return Ok(None);
        };
        if org.plan == plan {
            return Ok(Some(org));
        }
        let table = self.table();
        // Fixed width (microseconds always written): the condition below and the sort keys
        // compare these as text.
        let when = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let actions = vec![
            tx_update(
                table,
                keys::org_pk(id),
                ORG_SK.to_owned(),
                "SET #plan = :to, plan_changed_at = :at",
                // The plan read, a live org, and no change recorded after this one: the
                // history stays in time order.
                "#plan = :from AND attribute_not_exists(deleted_at) AND \
                 (attribute_not_exists(plan_changed_at) OR plan_changed_at <= :at)",
                &[("#plan", "plan")],
                &[
                    (":to", s(plan.as_str())),
                    (":from", s(org.plan.as_str())),
                    (":at", s(&when)),
                ],
            )?,
            put_if_absent(
                table,
                item([
                    (PK, s(keys::org_pk(id))),
                    (
                        SK,
                        s(format!("{PLAN_CHANGE_PREFIX}{when}#{}", plan.as_str())),
                    ),
                    ("from", s(org.plan.as_str())),
                    ("to", s(plan.as_str())),
                    ("at", s(&when)),
                ]),
            )?,
        ];
        match self.transact_tenant(actions).await? {
            Ok(()) => Ok(Some(Org { plan, ..org })),
            Err(_) => Err(StoreError::Conflict {
                what: format!("the plan of org {id} (it changed meanwhile; read it again)"),
            }),
        }
    }

    /// Query `begins_with PLAN#` of the org's partition: sort keys hold the time, so the
    /// answer is oldest first.
    async fn plan_history(&self, id: &OrgId) -> Result<Vec<PlanChange>, StoreError> {
        let plan = |it: &Item, name: &str| {
            let p = get_s(it, name)?;
            PlanId::parse(p).ok_or_else(|| corrupt(format!("plan {p:?} in a plan change")))
        };
        self.query_prefix(keys::org_pk(id), PLAN_CHANGE_PREFIX)
            .await?
            .iter()
            .map(|it| {
                Ok(PlanChange {
                    org_id: id.clone(),
                    from: plan(it, "from")?,
                    to: plan(it, "to")?,
                    at: parse_ts(get_s(it, "at")?)?,
                })
            })
            .collect()
    }

    /// Revokes each of the org's keys that is not revoked (a conditional `UpdateItem` each,
    /// `if_not_exists`), **then** sets its `deleted_at` (kept if set), then revokes once more
    /// any key created in between. Not one transaction (an org may have more keys than one
    /// holds), but in this order a deletion that stops half-way leaves the org live, so its
    /// owner can simply delete it again; every step is idempotent; and ingest refuses a
    /// deleted org's keys whatever state they are in.
    async fn delete_org(&self, id: &OrgId, at: DateTime<Utc>) -> Result<Option<Org>, StoreError> {
        let Some(before) = self.get_org(id).await? else {
            return Ok(None);
        };
        // A retried deletion revokes at the first deletion's time.
        let revoked_at = before.deleted_at.unwrap_or(at);
        self.revoke_live_keys(id, revoked_at).await?;
        let marked = self
            .update_item_at(keys::org_pk(id), ORG_SK)
            .update_expression("SET deleted_at = if_not_exists(deleted_at, :at)")
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":at", s(ts_text(revoked_at)))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let marked = unless_condition_failed("UpdateItem", marked)?.and_then(|out| out.attributes);
        let Some(org) = marked.as_ref().map(org_of).transpose()? else {
            return Ok(None);
        };
        // A key created while the first pass ran (the org was still live then).
        self.revoke_live_keys(id, org.deleted_at.unwrap_or(revoked_at))
            .await?;
        Ok(Some(org))
    }
}

impl DynamoStore {
    /// Revokes every key of `org` that is not revoked yet, at `at`.
    async fn revoke_live_keys(&self, org: &OrgId, at: DateTime<Utc>) -> Result<(), StoreError> {
        for key in self.list_api_keys(org).await? {
            if key.revoked_at.is_none() {
                self.revoke_api_key(&Revocation::new(org, &key.id, at))
                    .await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ProjectStore for DynamoStore {
    /// Project and slug guard in one transaction, checked against the org.
    async fn create_project(&self, p: &Project) -> Result<(), StoreError> {
        let table = self.table();
        let org_pk = keys::org_pk(&p.org_id);
        let actions = vec![
            org_must_be_live(table, &p.org_id)?,
            put_guard(
                table,
                (org_pk.clone(), keys::project_slug_sk(&p.slug)),
                ("project_id", p.id.as_str()),
            )?,
            put_if_absent(
                table,
                item([
                    (PK, s(&org_pk)),
                    (SK, s(keys::project_sk(&p.id))),
                    ("id", s(p.id.as_str())),
                    ("org_id", s(p.org_id.as_str())),
                    ("name", s(&p.name)),
                    ("slug", s(&p.slug)),
                    ("created_at", s(ts_text(p.created_at))),
                ])
                .into_iter()
                .chain(
                    p.archived_at
                        .map(|t| ("archived_at".to_owned(), s(ts_text(t)))),
                )
                .collect(),
            )?,
        ];
        let checks = [
            (0, rules::org_not_live(&p.org_id)),
            (
                1,
                conflict(format!("project slug {:?} in org {}", p.slug, p.org_id)),
            ),
        ];
        let taken = conflict(format!("project {}", p.id));
        self.transact_tenant(actions)
            .await?
            .map_err(|r| refusal(&r, checks, taken))
    }

    /// Looks a project up inside its org's partition, so another org's project is `None`.
    async fn get_project(
        &self,
        org: &OrgId,
        id: &ProjectId,
    ) -> Result<Option<Project>, StoreError> {
        let found = self
            .get(keys::org_pk(org), &keys::project_sk(id))
            .await?
            .as_ref()
            .map(project_of)
            .transpose()?;
        match found {
            Some(p) if &p.org_id != org => Err(corrupt(format!(
                "project {id} under org {org} says it belongs to {}",
                p.org_id
            ))),
            other => Ok(other),
        }
    }

    /// The org's projects, in creation order (then id), as the SQLite store lists them.
    async fn list_projects(&self, org: &OrgId) -> Result<Vec<Project>, StoreError> {
        let items = self.query_prefix(keys::org_pk(org), PROJECT_PREFIX).await?;
        let mut projects = items
            .iter()
            .map(project_of)
            .collect::<Result<Vec<_>, _>>()?;
        projects.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(projects)
    }

    /// One conditional `UpdateItem` of the project item (`SET` of the name, and of
    /// `archived_at` unless set), returning the project as it is now; `None` when the org has no
    /// such project.
    async fn update_project(&self, u: &ProjectUpdate<'_>) -> Result<Option<Project>, StoreError> {
        let (org, id, changes) = (u.org, u.id, u.changes);
        let sk = keys::project_sk(id);
        let (mut req, mut sets) = update_named(self, keys::org_pk(org), &sk, &changes.name);
        if let Some(at) = changes.archive_at {
            sets.push("archived_at = if_not_exists(archived_at, :archived)");
            req = req.expression_attribute_values(":archived", s(ts_text(at)));
        }
        if sets.is_empty() {
            return self.get_project(org, id).await;
        }
        update_existing(req, &sets, project_of).await
    }
}

/// The start of [`update_existing`]'s request for the item `pk`/`sk` (an org or a project),
/// with the `SET` of a new `name` when there is one: what the two updates share.
fn update_named(
    store: &DynamoStore,
    pk: String,
    sk: &str,
    name: &Option<String>,
) -> (UpdateItemFluentBuilder, Vec<&'static str>) {
    let mut sets = Vec::new();
    let mut req = update_request(store, pk, sk);
    if let Some(name) = name {
        sets.push("#name = :name");
        req = req
            .expression_attribute_names("#name", "name")
            .expression_attribute_values(":name", s(name));
    }
    (req, sets)
}

/// An `UpdateItem` of the item `pk`/`sk` conditioned on it existing (`#pk` names the
/// partition key) and returning `ALL_NEW`: the start of every [`update_existing`] request.
pub(super) fn update_request(store: &DynamoStore, pk: String, sk: &str) -> UpdateItemFluentBuilder {
    store
        .update_item_at(pk, sk)
        .condition_expression("attribute_exists(#pk)")
        .expression_attribute_names("#pk", PK)
        .return_values(ReturnValue::AllNew)
}

/// Sets `revoked_at` to `at` on the item `req` updates unless it is set already (a second
/// revoke keeps the first time), returning the item as it is now; `None` when `req`'s
/// condition failed. What revoking a key and a session share.
pub(super) async fn revoke_existing<T>(
    req: UpdateItemFluentBuilder,
    at: DateTime<Utc>,
    decode: impl Fn(&Item) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let req = req.expression_attribute_values(":at", s(ts_text(at)));
    update_existing(
        req,
        &["revoked_at = if_not_exists(revoked_at, :at)"],
        decode,
    )
    .await
}

/// Sends `SET <sets>` on an update conditioned on the item existing (and returning
/// `ALL_NEW`), decoding what it returns; `None` when the condition failed.
pub(super) async fn update_existing<T>(
    req: UpdateItemFluentBuilder,
    sets: &[&str],
    decode: impl Fn(&Item) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let sent = req
        .update_expression(format!("SET {}", sets.join(", ")))
        .send()
        .await;
    unless_condition_failed("UpdateItem", sent)?
        .and_then(|out| out.attributes)
        .as_ref()
        .map(decode)
        .transpose()
}
