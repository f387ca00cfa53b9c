//! [`TenantStore`](tally_core::ports::TenantStore) on DynamoDB: every uniqueness rule is a
//! guard item put under `attribute_not_exists` in the same transaction as the record it
//! guards, and every "must exist" rule is a `ConditionCheck` in that transaction, so each
//! operation is one atomic request whose cancellation reasons say which rule failed.

use aws_sdk_dynamodb::types::{ConditionCheck, Put, TransactWriteItem};
use tally_core::ids::{ApiKeyId, OrgId, ProjectId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::StoreError;
use tally_core::tenant::{ApiKey, KeyHash, KeyScope, Org, Project, Role, User};

use super::apply::put_if_absent;
use super::codec::{
    Item, build_error, corrupt, get_opt_s, get_s, item, parse_id, parse_ts, s, ts_text,
};
use super::keys::{
    self, ALL_ORGS, EMAIL_SK, GSI1, GSI1PK, GSI1SK, KEY_SK, ORG_SK, PK, PROJECT_PREFIX, SK,
    SLUG_SK, USER_SK,
};
use super::{DynamoStore, QuerySpec};

const CONDITIONAL: &str = "ConditionalCheckFailed";

/// Whether the action at `i` failed its condition.
fn failed(reasons: &[String], i: usize) -> bool {
    reasons.get(i).is_some_and(|c| c == CONDITIONAL)
}

/// A check that an item exists, inside a transaction.
fn must_exist(table: &str, pk: String, sk: &str) -> Result<TransactWriteItem, StoreError> {
    let check = ConditionCheck::builder()
        .table_name(table)
        .key(PK, s(pk))
        .key(SK, s(sk))
        .condition_expression("attribute_exists(#pk)")
        .expression_attribute_names("#pk", PK)
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().condition_check(check).build())
}

/// A plain put inside a transaction.
fn put(table: &str, record: Item) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(record))
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

fn user_of(it: &Item) -> Result<User, StoreError> {
    Ok(User {
        id: parse_id(get_s(it, "id")?, UserId::parse)?,
        email: get_s(it, "email")?.to_owned(),
        created_at: parse_ts(get_s(it, "created_at")?)?,
    })
}

fn org_of(it: &Item) -> Result<Org, StoreError> {
    let plan = get_s(it, "plan")?;
    Ok(Org {
        id: parse_id(get_s(it, "id")?, OrgId::parse)?,
        name: get_s(it, "name")?.to_owned(),
        slug: get_s(it, "slug")?.to_owned(),
        plan: PlanId::parse(plan).ok_or_else(|| corrupt(format!("plan {plan:?}")))?,
        owner_id: parse_id(get_s(it, "owner_id")?, UserId::parse)?,
        created_at: parse_ts(get_s(it, "created_at")?)?,
    })
}

fn project_of(it: &Item) -> Result<Project, StoreError> {
    Ok(Project {
        id: parse_id(get_s(it, "id")?, ProjectId::parse)?,
        org_id: parse_id(get_s(it, "org_id")?, OrgId::parse)?,
        name: get_s(it, "name")?.to_owned(),
        slug: get_s(it, "slug")?.to_owned(),
        created_at: parse_ts(get_s(it, "created_at")?)?,
    })
}

fn key_of(it: &Item) -> Result<ApiKey, StoreError> {
    let scopes = get_s(it, "scopes")?;
    Ok(ApiKey {
        id: parse_id(get_s(it, "id")?, ApiKeyId::parse)?,
        org_id: parse_id(get_s(it, "org_id")?, OrgId::parse)?,
        name: get_s(it, "name")?.to_owned(),
        hash: KeyHash::from_hex(get_s(it, "hash")?).ok_or_else(|| corrupt("api key hash"))?,
        display_prefix: get_s(it, "display_prefix")?.to_owned(),
        scopes: serde_json::from_str::<Vec<KeyScope>>(scopes)
            .map_err(|e| corrupt(format!("api key scopes {scopes:?}: {e}")))?,
        created_at: parse_ts(get_s(it, "created_at")?)?,
        expires_at: get_opt_s(it, "expires_at")?.map(parse_ts).transpose()?,
        revoked_at: get_opt_s(it, "revoked_at")?.map(parse_ts).transpose()?,
    })
}

/// See [`TenantStore::ensure_user`](tally_core::ports::TenantStore::ensure_user): the email
/// guard and the user are put together; when the guard exists, its user is the answer.
pub(super) async fn ensure_user(store: &DynamoStore, candidate: &User) -> Result<User, StoreError> {
    let email = candidate.email.to_lowercase();
    // Two rounds: a concurrent creator can take the email between our read and our put.
    for _ in 0..2 {
        if let Some(guard) = store.get(keys::email_pk(&email), EMAIL_SK).await? {
            let id = parse_id(get_s(&guard, "user_id")?, UserId::parse)?;
            return get_user(store, &id).await?.ok_or_else(|| {
                corrupt(format!("email guard of {email:?} names missing user {id}"))
            });
        }
        let user = User {
            email: email.clone(),
            ..candidate.clone()
        };
        let table = store.table();
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
            put_if_absent(
                table,
                item([
                    (PK, s(keys::email_pk(&email))),
                    (SK, s(EMAIL_SK)),
                    ("user_id", s(user.id.as_str())),
                ]),
            )?,
        ];
        match store.transact_tenant(actions).await? {
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
pub(super) async fn get_user(store: &DynamoStore, id: &UserId) -> Result<Option<User>, StoreError> {
    store
        .get(keys::user_pk(id), USER_SK)
        .await?
        .as_ref()
        .map(user_of)
        .transpose()
}

/// Org, slug guard and owner membership in one transaction, checked against the owner.
pub(super) async fn create_org(store: &DynamoStore, org: &Org) -> Result<(), StoreError> {
    let table = store.table();
    let created = ts_text(org.created_at);
    let actions = vec![
        must_exist(table, keys::user_pk(&org.owner_id), USER_SK)?,
        put_if_absent(
            table,
            item([
                (PK, s(keys::slug_pk(&org.slug))),
                (SK, s(SLUG_SK)),
                ("org_id", s(org.id.as_str())),
            ]),
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
    match store.transact_tenant(actions).await? {
        Ok(()) => Ok(()),
        Err(r) if failed(&r, 0) => Err(StoreError::NotFound {
            what: format!("user {}", org.owner_id),
        }),
        Err(r) if failed(&r, 1) => Err(StoreError::Conflict {
            what: format!("org slug {:?}", org.slug),
        }),
        Err(_) => Err(StoreError::Conflict {
            what: format!("org {}", org.id),
        }),
    }
}

/// Looks an org up.
pub(super) async fn get_org(store: &DynamoStore, id: &OrgId) -> Result<Option<Org>, StoreError> {
    store
        .get(keys::org_pk(id), ORG_SK)
        .await?
        .as_ref()
        .map(org_of)
        .transpose()
}

/// Every org's id, from the index (in id order; eventually consistent).
pub(super) async fn list_org_ids(store: &DynamoStore) -> Result<Vec<OrgId>, StoreError> {
    let items = store
        .query_all(&QuerySpec {
            index: Some(GSI1),
            key_condition: "#pk = :pk",
            filter: None,
            names: &[],
            values: vec![(":pk", s(ALL_ORGS))],
        })
        .await?;
    items
        .iter()
        .map(|it| keys::parse_org_gsi_sk(get_s(it, GSI1SK)?))
        .collect()
}

/// Project and slug guard in one transaction, checked against the org.
pub(super) async fn create_project(store: &DynamoStore, p: &Project) -> Result<(), StoreError> {
    let table = store.table();
    let org_pk = keys::org_pk(&p.org_id);
    let actions = vec![
        must_exist(table, org_pk.clone(), ORG_SK)?,
        put_if_absent(
            table,
            item([
                (PK, s(&org_pk)),
                (SK, s(keys::project_slug_sk(&p.slug))),
                ("project_id", s(p.id.as_str())),
            ]),
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
            ]),
        )?,
    ];
    match store.transact_tenant(actions).await? {
        Ok(()) => Ok(()),
        Err(r) if failed(&r, 0) => Err(StoreError::NotFound {
            what: format!("org {}", p.org_id),
        }),
        Err(r) if failed(&r, 1) => Err(StoreError::Conflict {
            what: format!("project slug {:?} in org {}", p.slug, p.org_id),
        }),
        Err(_) => Err(StoreError::Conflict {
            what: format!("project {}", p.id),
        }),
    }
}

/// Looks a project up inside its org's partition, so another org's project is `None`.
pub(super) async fn get_project(
    store: &DynamoStore,
    org: &OrgId,
    id: &ProjectId,
) -> Result<Option<Project>, StoreError> {
    let found = store
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
pub(super) async fn list_projects(
    store: &DynamoStore,
    org: &OrgId,
) -> Result<Vec<Project>, StoreError> {
    let items = store
        .query_all(&QuerySpec {
            index: None,
            key_condition: "#pk = :pk AND begins_with(#sk, :prefix)",
            filter: None,
            names: &[],
            values: vec![
                (":pk", s(keys::org_pk(org))),
                (":prefix", s(PROJECT_PREFIX)),
            ],
        })
        .await?;
    let mut projects = items
        .iter()
        .map(project_of)
        .collect::<Result<Vec<_>, _>>()?;
    projects.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(projects)
}

/// Key item and key id guard in one transaction, checked against the org.
pub(super) async fn create_api_key(store: &DynamoStore, k: &ApiKey) -> Result<(), StoreError> {
    let table = store.table();
    let scopes = serde_json::to_string(&k.scopes)
        .map_err(|e| StoreError::Unavailable(format!("encoding scopes: {e}")))?;
    let mut record = item([
        (PK, s(keys::key_pk(&k.hash))),
        (SK, s(KEY_SK)),
        ("id", s(k.id.as_str())),
        ("org_id", s(k.org_id.as_str())),
        ("name", s(&k.name)),
        ("hash", s(k.hash.as_str())),
        ("display_prefix", s(&k.display_prefix)),
        ("scopes", s(scopes)),
        ("created_at", s(ts_text(k.created_at))),
        (GSI1PK, s(keys::org_pk(&k.org_id))),
        (GSI1SK, s(keys::key_id_sk(&k.id))),
    ]);
    if let Some(t) = k.expires_at {
        record.insert("expires_at".into(), s(ts_text(t)));
    }
    if let Some(t) = k.revoked_at {
        record.insert("revoked_at".into(), s(ts_text(t)));
    }
    let actions = vec![
        must_exist(table, keys::org_pk(&k.org_id), ORG_SK)?,
        put_if_absent(table, record)?,
        put_if_absent(
            table,
            item([
                (PK, s(keys::org_pk(&k.org_id))),
                (SK, s(keys::key_id_sk(&k.id))),
                ("hash", s(k.hash.as_str())),
            ]),
        )?,
    ];
    match store.transact_tenant(actions).await? {
        Ok(()) => Ok(()),
        Err(r) if failed(&r, 0) => Err(StoreError::NotFound {
            what: format!("org {}", k.org_id),
        }),
        Err(_) => Err(StoreError::Conflict {
            what: format!("api key {}", k.id),
        }),
    }
}

/// One `GetItem` by hash.
pub(super) async fn find_api_key(
    store: &DynamoStore,
    hash: &KeyHash,
) -> Result<Option<ApiKey>, StoreError> {
    store
        .get(keys::key_pk(hash), KEY_SK)
        .await?
        .as_ref()
        .map(key_of)
        .transpose()
}
