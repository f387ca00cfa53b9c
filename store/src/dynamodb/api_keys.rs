//! API keys on DynamoDB: a key item found by the hash of its secret (`key#<hash>`, one
//! `GetItem`), and an id guard under its org (`org#<org>` / `key#<id>`) for listing and
//! revoking by id; both are written in one transaction.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::TransactWriteItem;
use tally_core::ids::{ApiKeyId, OrgId};
use tally_core::ports::{ApiKeyStore, KeyRotation, Revocation, StoreError};
use tally_core::tenant::rules;
use tally_core::tenant::{
    ApiKey, KeyHash, KeyScope, KeyUse, MAX_KEY_USES_PER_CALL, last_used_text,
};

use super::DynamoStore;
use super::chunks::{put_guard, put_if_absent};
use super::codec::unless_condition_failed;
use super::codec::{
    Item, corrupt, get_opt_s, get_s, hash_of, item, parse_id, parse_ts, s, ts_text,
};
use super::keys::{self, GSI1PK, GSI1SK, KEY_SK, PK, SK};
use super::tenants::{revoke_existing, update_request};

use super::tx::{conflict, org_must_be_live, refusal, tx_update};

fn key_of(it: &Item) -> Result<ApiKey, StoreError> {
    let scopes = get_s(it, "scopes")?;
    Ok(ApiKey {
        id: parse_id(get_s(it, "id")?, ApiKeyId::parse)?,
        org_id: parse_id(get_s(it, "org_id")?, OrgId::parse)?,
        name: get_s(it, "name")?.to_owned(),
        hash: hash_of(it, "api key hash")?,
        display_prefix: get_s(it, "display_prefix")?.to_owned(),
        scopes: serde_json::from_str::<Vec<KeyScope>>(scopes)
            .map_err(|e| corrupt(format!("api key scopes {scopes:?}: {e}")))?,
        created_at: parse_ts(get_s(it, "created_at")?)?,
        expires_at: get_opt_s(it, "expires_at")?.map(parse_ts).transpose()?,
        revoked_at: get_opt_s(it, "revoked_at")?.map(parse_ts).transpose()?,
        last_used_at: get_opt_s(it, "last_used_at")?.map(parse_ts).transpose()?,
    })
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
        put_guard(
            table,
            (keys::org_pk(&k.org_id), keys::key_id_sk(&k.id)),
            ("hash", k.hash.as_str()),
        )?,
    ])
}

#[async_trait]
impl ApiKeyStore for DynamoStore {
    /// Key item and key id guard in one transaction, checked against the org.
    async fn create_api_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        let table = self.table();
        let [key, guard] = key_puts(table, k)?;
        let actions = vec![org_must_be_live(table, &k.org_id)?, key, guard];
        let org = rules::org_not_live(&k.org_id);
        let taken = conflict(format!("api key {}", k.id));
        self.transact_tenant(actions)
            .await?
            .map_err(|r| refusal(&r, [(0, org)], taken))
    }

    /// One `GetItem` by hash.
    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        self.get_as(keys::key_pk(hash), KEY_SK, key_of).await
    }

    /// The org's key id guards (one strongly consistent query of the org partition), then each
    /// key by its hash: consistent right after a create, unlike the index.
    async fn list_api_keys(&self, org: &OrgId) -> Result<Vec<ApiKey>, StoreError> {
        let guards = self
            .query_prefix(keys::org_pk(org), keys::APIKEY_PREFIX)
            .await?;
        let mut out = Vec::with_capacity(guards.len());
        for g in &guards {
            let hash = hash_of(g, "api key id guard hash")?;
            if let Some(key) = self.find_api_key(&hash).await?
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
    async fn revoke_api_key(
        &self,
        r: &Revocation<'_, ApiKeyId>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let (org, id, at) = (r.org, r.id, r.at);
        let sk = keys::key_id_sk(id);
        let Some(hash) = self.guarded_hash(org, &sk, "api key id guard hash").await? else {
            return Ok(None);
        };
        let req = update_request(self, keys::key_pk(&hash), KEY_SK)
            .condition_expression("attribute_exists(#pk) AND org_id = :org")
            .expression_attribute_values(":org", s(org.as_str()));
        revoke_existing(req, at, key_of).await
    }

    /// One conditional `UpdateItem` per use, on the key item found by its hash: `SET
    /// last_used_at` if the key is the use's org's and holds no later time (the fixed-width
    /// text compares in time order). A refused condition (missing key, later time) is skipped.
    async fn touch_api_keys(&self, uses: &[KeyUse]) -> Result<(), StoreError> {
        if uses.len() > MAX_KEY_USES_PER_CALL {
            return Err(StoreError::Unavailable(format!(
                "at most {MAX_KEY_USES_PER_CALL} key uses per call, got {}",
                uses.len()
            )));
        }
        for u in uses {
            let sent = self
                .update_item_at(keys::key_pk(&u.hash), KEY_SK)
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
            // A failed condition is a later use already recorded (or a key gone): nothing to do.
            unless_condition_failed("UpdateItem", sent)?;
        }
        Ok(())
    }

    /// The old key's guard gives its hash; one transaction puts the new key and its guard and
    /// sets the old key's `expires_at` (conditioned on its org and on not being revoked).
    async fn rotate_api_key(&self, r: &KeyRotation<'_>) -> Result<Option<ApiKey>, StoreError> {
        let (old, new, old_expires_at) = (r.old, r.new, r.old_expires_at);
        let org = &new.org_id;
        let sk = keys::key_id_sk(old);
        let Some(hash) = self.guarded_hash(org, &sk, "api key id guard hash").await? else {
            return Ok(None);
        };
        let Some(current) = self.find_api_key(&hash).await? else {
            return Ok(None);
        };
        let expires = rules::rotated_expiry(old, &current, old_expires_at)?;
        let table = self.table();
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
        let revoked = conflict(format!("revocation of api key {old}"));
        let taken = conflict(format!("api key {}", new.id));
        self.transact_tenant(actions)
            .await?
            .map_err(|r| refusal(&r, [(0, revoked)], taken))?;
        Ok(Some(ApiKey {
            expires_at: Some(expires),
            ..current
        }))
    }
}
