//! [`TenantStore`](tally_core::ports::TenantStore) on DynamoDB: every uniqueness rule is a
//! guard item put under `attribute_not_exists` in the same transaction as the record it
//! guards, and every "must exist" rule is a `ConditionCheck` in that transaction, so each
//! operation is one atomic request whose cancellation reasons say which rule failed.

use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Put, ReturnValue, TransactWriteItem, Update,
};
use chrono::{DateTime, Utc};
use tally_core::ids::{ApiKeyId, OrgId, ProjectId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::StoreError;
use tally_core::tenant::rules;
use tally_core::tenant::{
    ApiKey, AuditPage, AuditQuery, AuditRecord, KeyHash, KeyScope, KeyUse, MAX_AUDIT_PAGE,
    MAX_KEY_USES_PER_CALL, Membership, Org, OrgChanges, Project, ProjectChanges, Role, User,
    audit_instant_key, last_used_text,
};

use super::apply::put_if_absent;
use super::codec::{
    Item, build_error, corrupt, get_opt_s, get_s, item, n, parse_id, parse_ts, s, sdk_error,
    ts_text,
};
use super::keys::{
    self, ALL_ORGS, EMAIL_SK, GSI1, GSI1PK, GSI1SK, KEY_SK, ORG_SK, PK, PROJECT_PREFIX, SK,
    SLUG_SK, TTL, USER_SK,
};
use super::{DynamoStore, QuerySpec};

const CONDITIONAL: &str = "ConditionalCheckFailed";

/// Whether the action at `i` failed its condition.
pub(super) fn failed(reasons: &[String], i: usize) -> bool {
    reasons.get(i).is_some_and(|c| c == CONDITIONAL)
}

/// A check that an item exists, inside a transaction.
pub(super) fn must_exist(
    table: &str,
    pk: String,
    sk: &str,
) -> Result<TransactWriteItem, StoreError> {
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

/// A check that the org exists and is not deleted, inside a transaction: what adding a
/// member, project, key or invitation to it needs.
pub(super) fn org_must_be_live(table: &str, org: &OrgId) -> Result<TransactWriteItem, StoreError> {
    let check = ConditionCheck::builder()
        .table_name(table)
        .key(PK, s(keys::org_pk(org)))
        .key(SK, s(ORG_SK))
        .condition_expression("attribute_exists(#pk) AND attribute_not_exists(deleted_at)")
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
        deleted_at: get_opt_s(it, "deleted_at")?.map(parse_ts).transpose()?,
    })
}

fn project_of(it: &Item) -> Result<Project, StoreError> {
    Ok(Project {
        id: parse_id(get_s(it, "id")?, ProjectId::parse)?,
        org_id: parse_id(get_s(it, "org_id")?, OrgId::parse)?,
        name: get_s(it, "name")?.to_owned(),
        slug: get_s(it, "slug")?.to_owned(),
        created_at: parse_ts(get_s(it, "created_at")?)?,
        archived_at: get_opt_s(it, "archived_at")?.map(parse_ts).transpose()?,
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
        last_used_at: get_opt_s(it, "last_used_at")?.map(parse_ts).transpose()?,
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
        org_must_be_live(table, &p.org_id)?,
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
            ])
            .into_iter()
            .chain(
                p.archived_at
                    .map(|t| ("archived_at".to_owned(), s(ts_text(t)))),
            )
            .collect(),
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

/// The key item and the key id guard of `k`, as conditional puts.
fn key_puts(table: &str, k: &ApiKey) -> Result<[TransactWriteItem; 2], StoreError> {
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
    Ok([
        put_if_absent(table, record)?,
        put_if_absent(
            table,
            item([
                (PK, s(keys::org_pk(&k.org_id))),
                (SK, s(keys::key_id_sk(&k.id))),
                ("hash", s(k.hash.as_str())),
            ]),
        )?,
    ])
}

/// Key item and key id guard in one transaction, checked against the org.
pub(super) async fn create_api_key(store: &DynamoStore, k: &ApiKey) -> Result<(), StoreError> {
    let table = store.table();
    let [key, guard] = key_puts(table, k)?;
    let actions = vec![org_must_be_live(table, &k.org_id)?, key, guard];
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

// ---------------------------------------------------------------------------------------
// The management API's methods.

/// The membership item `ORG#<org>` / `MEMBER#<user>` and the org item, two `GetItem`s at
/// once (one round trip): no role in an org that is deleted.
pub(super) async fn get_role(
    store: &DynamoStore,
    org: &OrgId,
    user: &UserId,
) -> Result<Option<Role>, StoreError> {
    let member_sk = keys::member_sk(user);
    let (member, org_item) = tokio::join!(
        store.get(keys::org_pk(org), &member_sk),
        store.get(keys::org_pk(org), ORG_SK),
    );
    let Some(it) = member? else {
        return Ok(None);
    };
    match org_item? {
        Some(o) if !o.contains_key("deleted_at") => {}
        _ => return Ok(None),
    }
    let role = get_s(&it, "role")?;
    Role::parse(role)
        .map(Some)
        .ok_or_else(|| corrupt(format!("membership role {role:?}")))
}

/// The membership items of the org partition (one strongly consistent query).
pub(super) async fn list_members(
    store: &DynamoStore,
    org: &OrgId,
) -> Result<Vec<Membership>, StoreError> {
    let items = store
        .query_all(&QuerySpec {
            index: None,
            key_condition: "#pk = :pk AND begins_with(#sk, :prefix)",
            filter: None,
            names: &[],
            values: vec![
                (":pk", s(keys::org_pk(org))),
                (":prefix", s(keys::MEMBER_PREFIX)),
            ],
        })
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

/// The org's key id guards (one strongly consistent query of the org partition), then each
/// key by its hash: consistent right after a create, unlike the index.
pub(super) async fn list_api_keys(
    store: &DynamoStore,
    org: &OrgId,
) -> Result<Vec<ApiKey>, StoreError> {
    let guards = store
        .query_all(&QuerySpec {
            index: None,
            key_condition: "#pk = :pk AND begins_with(#sk, :prefix)",
            filter: None,
            names: &[],
            values: vec![
                (":pk", s(keys::org_pk(org))),
                (":prefix", s(keys::APIKEY_PREFIX)),
            ],
        })
        .await?;
    let mut out = Vec::with_capacity(guards.len());
    for g in &guards {
        let hash =
            KeyHash::from_hex(get_s(g, "hash")?).ok_or_else(|| corrupt("api key id guard hash"))?;
        if let Some(key) = find_api_key(store, &hash).await?
            && &key.org_id == org
        {
            out.push(key);
        }
    }
    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(out)
}

/// The id guard gives the hash; one conditional `UpdateItem` of the key item sets
/// `revoked_at` unless it is set, and returns the key as it is now.
pub(super) async fn revoke_api_key(
    store: &DynamoStore,
    org: &OrgId,
    id: &ApiKeyId,
    at: DateTime<Utc>,
) -> Result<Option<ApiKey>, StoreError> {
    let Some(guard) = store.get(keys::org_pk(org), &keys::key_id_sk(id)).await? else {
        return Ok(None);
    };
    let hash = KeyHash::from_hex(get_s(&guard, "hash")?)
        .ok_or_else(|| corrupt("api key id guard hash"))?;
    let updated = store
        .client
        .update_item()
        .table_name(store.table())
        .key(PK, s(keys::key_pk(&hash)))
        .key(SK, s(KEY_SK))
        .update_expression("SET revoked_at = if_not_exists(revoked_at, :at)")
        .condition_expression("attribute_exists(#pk) AND org_id = :org")
        .expression_attribute_names("#pk", PK)
        .expression_attribute_values(":at", s(ts_text(at)))
        .expression_attribute_values(":org", s(org.as_str()))
        .return_values(ReturnValue::AllNew)
        .send()
        .await;
    match updated {
        Ok(out) => out.attributes.as_ref().map(key_of).transpose(),
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(UpdateItemError::ConditionalCheckFailedException(_))
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(sdk_error("UpdateItem", e)),
    }
}

/// One conditional put into `ORG#<org>#AUDIT`, with `ttl` 90 days on.
pub(super) async fn record_audit(store: &DynamoStore, r: &AuditRecord) -> Result<(), StoreError> {
    let body = serde_json::to_string(r)
        .map_err(|e| StoreError::Unavailable(format!("encoding audit record: {e}")))?;
    store
        .put_if_absent(item([
            (PK, s(keys::audit_pk(&r.org_id))),
            (SK, s(r.sort_key())),
            ("actor", s(&r.actor)),
            ("action", s(&r.action)),
            ("resource", s(&r.resource)),
            ("body", s(body)),
            (TTL, n(r.expires_at().timestamp())),
        ]))
        .await
        .map(|_| ())
}

/// A backward query of `ORG#<org>#AUDIT` between the bounds, filtered on actor, action,
/// resource and `ttl` (DynamoDB deletes expired items lazily), page after page until the
/// page is full.
pub(super) async fn list_audit(
    store: &DynamoStore,
    q: &AuditQuery,
) -> Result<AuditPage, StoreError> {
    let limit = q.limit.clamp(1, MAX_AUDIT_PAGE);
    let pk = keys::audit_pk(&q.org);
    let lower = q.from.map(audit_instant_key).unwrap_or_else(|| "0".into());
    let mut upper = q.to.map(audit_instant_key).unwrap_or_else(|| "~".into());
    if let Some(c) = q.cursor.as_ref().filter(|c| **c < upper) {
        upper = c.clone();
    }
    if upper < lower {
        return Ok(AuditPage::default());
    }
    let mut filters = vec!["#ttl > :now"];
    let mut names = vec![("#pk", PK), ("#sk", SK), ("#ttl", TTL)];
    let mut values = vec![
        (":pk", s(&pk)),
        (":lo", s(&lower)),
        (":hi", s(&upper)),
        (":now", n(q.now.timestamp())),
    ];
    for (attr, name, placeholder, v) in [
        ("actor", "#actor", ":actor", &q.actor),
        ("action", "#action", ":action", &q.action),
        ("resource", "#resource", ":resource", &q.resource),
    ] {
        if let Some(v) = v {
            filters.push(match attr {
                "actor" => "#actor = :actor",
                "action" => "#action = :action",
                _ => "#resource = :resource",
            });
            names.push((name, attr));
            values.push((placeholder, s(v)));
        }
    }
    let filter = filters.join(" AND ");
    let mut start = q
        .cursor
        .as_ref()
        .filter(|c| **c == upper)
        .map(|c| item([(PK, s(&pk)), (SK, s(c))]));
    let mut records = Vec::new();
    loop {
        let mut req = store
            .client
            .query()
            .table_name(store.table())
            .consistent_read(true)
            .scan_index_forward(false)
            .key_condition_expression("#pk = :pk AND #sk BETWEEN :lo AND :hi")
            .filter_expression(&filter)
            .set_exclusive_start_key(start.take());
        for (k, v) in &names {
            req = req.expression_attribute_names(*k, *v);
        }
        for (k, v) in &values {
            req = req.expression_attribute_values(*k, v.clone());
        }
        let out = req.send().await.map_err(|e| sdk_error("Query", e))?;
        for it in out.items.unwrap_or_default() {
            let body = get_s(&it, "body")?;
            let record: AuditRecord = serde_json::from_str(body)
                .map_err(|e| corrupt(format!("audit record {}: {e}", r_sk(&it))))?;
            records.push(record);
        }
        match out.last_evaluated_key {
            Some(k) if !k.is_empty() && records.len() <= limit => start = Some(k),
            _ => break,
        }
    }
    let next = if records.len() > limit {
        records.truncate(limit);
        records.last().map(AuditRecord::sort_key)
    } else {
        None
    };
    Ok(AuditPage { records, next })
}

fn r_sk(it: &Item) -> &str {
    get_s(it, SK).unwrap_or("?")
}

/// One conditional `UpdateItem` of the org item (`SET` of the changed fields), returning
/// the org as it is now; `None` when there is no such org.
pub(super) async fn update_org(
    store: &DynamoStore,
    id: &OrgId,
    changes: &OrgChanges,
) -> Result<Option<Org>, StoreError> {
    let mut sets = Vec::new();
    let mut req = store
        .client
        .update_item()
        .table_name(store.table())
        .key(PK, s(keys::org_pk(id)))
        .key(SK, s(ORG_SK))
        .condition_expression("attribute_exists(#pk)")
        .expression_attribute_names("#pk", PK)
        .return_values(ReturnValue::AllNew);
    if let Some(name) = &changes.name {
        sets.push("#name = :name");
        req = req
            .expression_attribute_names("#name", "name")
            .expression_attribute_values(":name", s(name));
    }
    if let Some(plan) = changes.plan {
        sets.push("#plan = :plan");
        req = req
            .expression_attribute_names("#plan", "plan")
            .expression_attribute_values(":plan", s(plan.as_str()));
    }
    if sets.is_empty() {
        return get_org(store, id).await;
    }
    update_existing(req, &sets, org_of).await
}

/// Sends `SET <sets>` on an update conditioned on the item existing (and returning
/// `ALL_NEW`), decoding what it returns; `None` when the condition failed.
async fn update_existing<T>(
    req: UpdateItemFluentBuilder,
    sets: &[&str],
    decode: impl Fn(&Item) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    match req
        .update_expression(format!("SET {}", sets.join(", ")))
        .send()
        .await
    {
        Ok(out) => out.attributes.as_ref().map(decode).transpose(),
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(UpdateItemError::ConditionalCheckFailedException(_))
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(sdk_error("UpdateItem", e)),
    }
}

/// One conditional `UpdateItem` of the project item (`SET` of the name, and of
/// `archived_at` unless set), returning the project as it is now; `None` when the org has no
/// such project.
pub(super) async fn update_project(
    store: &DynamoStore,
    org: &OrgId,
    id: &ProjectId,
    changes: &ProjectChanges,
) -> Result<Option<Project>, StoreError> {
    let mut sets = Vec::new();
    let mut req = store
        .client
        .update_item()
        .table_name(store.table())
        .key(PK, s(keys::org_pk(org)))
        .key(SK, s(keys::project_sk(id)))
        .condition_expression("attribute_exists(#pk)")
        .expression_attribute_names("#pk", PK)
        .return_values(ReturnValue::AllNew);
    if let Some(name) = &changes.name {
        sets.push("#name = :name");
        req = req
            .expression_attribute_names("#name", "name")
            .expression_attribute_values(":name", s(name));
    }
    if let Some(at) = changes.archive_at {
        sets.push("archived_at = if_not_exists(archived_at, :archived)");
        req = req.expression_attribute_values(":archived", s(ts_text(at)));
    }
    if sets.is_empty() {
        return get_project(store, org, id).await;
    }
    update_existing(req, &sets, project_of).await
}

/// One conditional `UpdateItem` per use, on the key item found by its hash: `SET
/// last_used_at` if the key is the use's org's and holds no later time (the fixed-width
/// text compares in time order). A refused condition (missing key, later time) is skipped.
pub(super) async fn touch_api_keys(store: &DynamoStore, uses: &[KeyUse]) -> Result<(), StoreError> {
    if uses.len() > MAX_KEY_USES_PER_CALL {
        return Err(StoreError::Unavailable(format!(
            "at most {MAX_KEY_USES_PER_CALL} key uses per call, got {}",
            uses.len()
        )));
    }
    for u in uses {
        let sent = store
            .client
            .update_item()
            .table_name(store.table())
            .key(PK, s(keys::key_pk(&u.hash)))
            .key(SK, s(KEY_SK))
            .update_expression("SET last_used_at = :at")
            .condition_expression(
                "attribute_exists(#pk) AND org_id = :org \
                 AND (attribute_not_exists(last_used_at) OR last_used_at < :at)",
            )
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":at", s(last_used_text(u.at)))
            .expression_attribute_values(":org", s(u.org_id.as_str()))
            .send()
            .await;
        match sent {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(UpdateItemError::ConditionalCheckFailedException(_))
                ) => {}
            Err(e) => return Err(sdk_error("UpdateItem", e)),
        }
    }
    Ok(())
}

/// `PROJECTMEMBER#<user>#<project>` inside the org partition.
fn project_member_sk(user: &UserId, project: &ProjectId) -> String {
    format!("PROJECTMEMBER#{user}#{project}")
}

/// Checks of the project and of the user's membership, and the put under
/// `attribute_not_exists`, in one transaction.
pub(super) async fn add_project_member(
    store: &DynamoStore,
    org: &OrgId,
    project: &ProjectId,
    user: &UserId,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let table = store.table();
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
    match store.transact_tenant(actions).await? {
        Ok(()) => Ok(()),
        Err(r) if failed(&r, 0) => Err(StoreError::NotFound {
            what: format!("project {project} in org {org}"),
        }),
        Err(r) if failed(&r, 1) => Err(StoreError::NotFound {
            what: format!("member {user} of org {org}"),
        }),
        Err(_) => Err(StoreError::Conflict {
            what: format!("user {user} on project {project}"),
        }),
    }
}

/// One `DeleteItem`, returning the old item to tell whether there was one.
pub(super) async fn remove_project_member(
    store: &DynamoStore,
    org: &OrgId,
    project: &ProjectId,
    user: &UserId,
) -> Result<bool, StoreError> {
    let out = store
        .client
        .delete_item()
        .table_name(store.table())
        .key(PK, s(keys::org_pk(org)))
        .key(SK, s(project_member_sk(user, project)))
        .return_values(ReturnValue::AllOld)
        .send()
        .await
        .map_err(|e| sdk_error("DeleteItem", e))?;
    Ok(out.attributes.is_some_and(|a| !a.is_empty()))
}

/// One strongly consistent query of `PROJECTMEMBER#<user>#` in the org partition.
pub(super) async fn list_user_projects(
    store: &DynamoStore,
    org: &OrgId,
    user: &UserId,
) -> Result<Vec<ProjectId>, StoreError> {
    let items = store
        .query_all(&QuerySpec {
            index: None,
            key_condition: "#pk = :pk AND begins_with(#sk, :prefix)",
            filter: None,
            names: &[],
            values: vec![
                (":pk", s(keys::org_pk(org))),
                (":prefix", s(format!("PROJECTMEMBER#{user}#"))),
            ],
        })
        .await?;
    let mut out = items
        .iter()
        .map(|it| parse_id(get_s(it, "project_id")?, ProjectId::parse))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    Ok(out)
}

/// Sets the org's `deleted_at` (kept if set: `if_not_exists`), then revokes each of its
/// keys that is not revoked (a conditional `UpdateItem` each, also `if_not_exists`). Not one
/// transaction (an org may have more keys than one holds), but every step is idempotent
/// and nothing can be added to a deleted org, so a retried delete finishes the job.
pub(super) async fn delete_org(
    store: &DynamoStore,
    id: &OrgId,
    at: DateTime<Utc>,
) -> Result<Option<Org>, StoreError> {
    let marked = store
        .client
        .update_item()
        .table_name(store.table())
        .key(PK, s(keys::org_pk(id)))
        .key(SK, s(ORG_SK))
        .update_expression("SET deleted_at = if_not_exists(deleted_at, :at)")
        .condition_expression("attribute_exists(#pk)")
        .expression_attribute_names("#pk", PK)
        .expression_attribute_values(":at", s(ts_text(at)))
        .return_values(ReturnValue::AllNew)
        .send()
        .await;
    let org = match marked {
        Ok(out) => match out.attributes.as_ref().map(org_of).transpose()? {
            Some(org) => org,
            None => return Ok(None),
        },
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(UpdateItemError::ConditionalCheckFailedException(_))
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(sdk_error("UpdateItem", e)),
    };
    let revoked_at = org.deleted_at.unwrap_or(at);
    for key in list_api_keys(store, id).await? {
        if key.revoked_at.is_none() {
            revoke_api_key(store, id, &key.id, revoked_at).await?;
        }
    }
    Ok(Some(org))
}

fn membership_of(org: &OrgId, it: &Item) -> Result<Membership, StoreError> {
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

/// Membership put under `attribute_not_exists`, with checks that the org and the user
/// exist, in one transaction.
pub(super) async fn add_member(store: &DynamoStore, m: &Membership) -> Result<(), StoreError> {
    rules::check_new_member(m.role)?;
    let table = store.table();
    let actions = vec![
        org_must_be_live(table, &m.org_id)?,
        must_exist(table, keys::user_pk(&m.user_id), USER_SK)?,
        membership_put(table, m)?,
    ];
    match store.transact_tenant(actions).await? {
        Ok(()) => Ok(()),
        Err(r) if failed(&r, 0) => Err(StoreError::NotFound {
            what: format!("org {}", m.org_id),
        }),
        Err(r) if failed(&r, 1) => Err(StoreError::NotFound {
            what: format!("user {}", m.user_id),
        }),
        Err(_) => Err(StoreError::Conflict {
            what: format!("membership of user {} in org {}", m.user_id, m.org_id),
        }),
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

/// One conditional `UpdateItem` (exists and is not the owner), returning the old item.
pub(super) async fn set_member_role(
    store: &DynamoStore,
    org: &OrgId,
    user: &UserId,
    role: Role,
) -> Result<Option<Membership>, StoreError> {
    rules::check_new_member(role)?;
    let updated = store
        .client
        .update_item()
        .table_name(store.table())
        .key(PK, s(keys::org_pk(org)))
        .key(SK, s(keys::member_sk(user)))
        .update_expression("SET #role = :role")
        .condition_expression("attribute_exists(#pk) AND #role <> :owner")
        .expression_attribute_names("#pk", PK)
        .expression_attribute_names("#role", "role")
        .expression_attribute_values(":role", s(role.as_str()))
        .expression_attribute_values(":owner", s(Role::Owner.as_str()))
        .return_values(ReturnValue::AllOld)
        .send()
        .await;
    match updated {
        Ok(out) => out
            .attributes
            .as_ref()
            .map(|it| membership_of(org, it))
            .transpose(),
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(UpdateItemError::ConditionalCheckFailedException(_))
            ) =>
        {
            refused_member(store, org, user).await
        }
        Err(e) => Err(sdk_error("UpdateItem", e)),
    }
}

/// One conditional `DeleteItem` (exists and is not the owner), returning the old item.
pub(super) async fn remove_member(
    store: &DynamoStore,
    org: &OrgId,
    user: &UserId,
) -> Result<Option<Membership>, StoreError> {
    let deleted = store
        .client
        .delete_item()
        .table_name(store.table())
        .key(PK, s(keys::org_pk(org)))
        .key(SK, s(keys::member_sk(user)))
        .condition_expression("attribute_exists(#pk) AND #role <> :owner")
        .expression_attribute_names("#pk", PK)
        .expression_attribute_names("#role", "role")
        .expression_attribute_values(":owner", s(Role::Owner.as_str()))
        .return_values(ReturnValue::AllOld)
        .send()
        .await;
    match deleted {
        Ok(out) => out
            .attributes
            .as_ref()
            .map(|it| membership_of(org, it))
            .transpose(),
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(DeleteItemError::ConditionalCheckFailedException(_))
            ) =>
        {
            refused_member(store, org, user).await
        }
        Err(e) => Err(sdk_error("DeleteItem", e)),
    }
}

/// An `Update` inside a transaction.
pub(super) fn tx_update(
    table: &str,
    pk: String,
    sk: String,
    expression: &str,
    condition: &str,
    names: &[(&str, &str)],
    values: &[(&str, AttributeValue)],
) -> Result<TransactWriteItem, StoreError> {
    let mut b = Update::builder()
        .table_name(table)
        .key(PK, s(pk))
        .key(SK, s(sk))
        .update_expression(expression)
        .condition_expression(condition);
    for (k, v) in names {
        b = b.expression_attribute_names(*k, *v);
    }
    for (k, v) in values {
        b = b.expression_attribute_values(*k, v.clone());
    }
    Ok(TransactWriteItem::builder()
        .update(b.build().map_err(build_error)?)
        .build())
}

/// One transaction: the org's `owner_id` (conditioned on the old owner), the old owner's
/// membership to admin (conditioned on being owner), the new owner's to owner (conditioned
/// on existing).
pub(super) async fn transfer_ownership(
    store: &DynamoStore,
    org: &OrgId,
    from: &UserId,
    to: &UserId,
) -> Result<Option<Org>, StoreError> {
    let Some(current) = get_org(store, org).await? else {
        return Ok(None);
    };
    let from_role = get_role(store, org, from).await?;
    let to_role = get_role(store, org, to).await?;
    if !rules::check_transfer(org, &current.owner_id, from, from_role, to, to_role)? {
        return Ok(Some(current));
    }
    let table = store.table();
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
    match store.transact_tenant(actions).await? {
        Ok(()) => get_org(store, org).await,
        Err(r) if failed(&r, 2) && !failed(&r, 0) && !failed(&r, 1) => Err(StoreError::NotFound {
            what: format!("member {to} of org {org}"),
        }),
        Err(_) => Err(StoreError::Conflict {
            what: format!("a different owner of org {org}"),
        }),
    }
}

/// The user's membership items, from the index (`gsi1pk` `USER#<user>`), by org id.
/// Eventually consistent.
pub(super) async fn list_user_memberships(
    store: &DynamoStore,
    user: &UserId,
) -> Result<Vec<Membership>, StoreError> {
    let items = store
        .query_all(&QuerySpec {
            index: Some(GSI1),
            key_condition: "#pk = :pk",
            filter: None,
            names: &[],
            values: vec![(":pk", s(keys::user_pk(user)))],
        })
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

/// The old key's guard gives its hash; one transaction puts the new key and its guard and
/// sets the old key's `expires_at` (conditioned on its org and on not being revoked).
pub(super) async fn rotate_api_key(
    store: &DynamoStore,
    old: &ApiKeyId,
    new: &ApiKey,
    old_expires_at: DateTime<Utc>,
) -> Result<Option<ApiKey>, StoreError> {
    let org = &new.org_id;
    let Some(guard) = store.get(keys::org_pk(org), &keys::key_id_sk(old)).await? else {
        return Ok(None);
    };
    let hash = KeyHash::from_hex(get_s(&guard, "hash")?)
        .ok_or_else(|| corrupt("api key id guard hash"))?;
    let Some(current) = find_api_key(store, &hash).await? else {
        return Ok(None);
    };
    let expires = rules::rotated_expiry(old, &current, old_expires_at)?;
    let table = store.table();
    let [key, key_guard] = key_puts(table, new)?;
    let actions = vec![
        tx_update(
            table,
            keys::key_pk(&hash),
            KEY_SK.into(),
            "SET expires_at = :exp",
            "org_id = :org AND attribute_not_exists(revoked_at)",
            &[],
            &[(":exp", s(ts_text(expires))), (":org", s(org.as_str()))],
        )?,
        key,
        key_guard,
    ];
    match store.transact_tenant(actions).await? {
        Ok(()) => Ok(Some(ApiKey {
            expires_at: Some(expires),
            ..current
        })),
        Err(r) if failed(&r, 0) => Err(StoreError::Conflict {
            what: format!("revocation of api key {old}"),
        }),
        Err(_) => Err(StoreError::Conflict {
            what: format!("api key {}", new.id),
        }),
    }
}
