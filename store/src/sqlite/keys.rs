//! API keys on SQLite: [`ApiKeyStore`].
//!
//! One row per key in `api_keys`, keyed `(org, id)` and found by the secret's hash through a
//! unique index (one lookup, never a scan). `last_used_at` (schema version 4) holds
//! fixed-width microsecond text, so "unless it holds a later time" is a text comparison.

use async_trait::async_trait;
use rusqlite::{Connection, Params, params};
use tally_core::ids::{ApiKeyId, OrgId};
use tally_core::ports::*;
use tally_core::tenant::*;

use super::*;

pub(super) struct KeyRow {
    org: String,
    id: String,
    hash: String,
    name: String,
    prefix: String,
    scopes: String,
    created: String,
    expires: Option<String>,
    revoked: Option<String>,
    last_used: Option<String>,
}

pub(super) fn key_of(k: KeyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: parse_id(&k.id, ApiKeyId::parse)?,
        org_id: parse_id(&k.org, OrgId::parse)?,
        hash: KeyHash::from_hex(&k.hash).ok_or_else(|| corrupt("api key hash"))?,
        scopes: serde_json::from_str::<Vec<KeyScope>>(&k.scopes)
            .map_err(|e| corrupt(format!("api key scopes {:?}: {e}", k.scopes)))?,
        created_at: parse_ts(&k.created)?,
        expires_at: parse_opt_ts(k.expires)?,
        revoked_at: parse_opt_ts(k.revoked)?,
        last_used_at: parse_opt_ts(k.last_used)?,
        name: k.name,
        display_prefix: k.prefix,
    })
}

pub(super) const KEY_COLS: &str =
    "org, id, hash, name, display_prefix, scopes, created_at, expires_at,
     revoked_at, last_used_at";

pub(super) fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
    Ok(KeyRow {
        org: r.get(0)?,
        id: r.get(1)?,
        hash: r.get(2)?,
        name: r.get(3)?,
        prefix: r.get(4)?,
        scopes: r.get(5)?,
        created: r.get(6)?,
        expires: r.get(7)?,
        revoked: r.get(8)?,
        last_used: r.get(9)?,
    })
}

/// The key a `WHERE` condition on `api_keys` finds (on a plain connection or inside a
/// transaction): by hash, or by org and id.
fn read_key(
    conn: &Connection,
    cond: &str,
    params: impl Params,
) -> Result<Option<ApiKey>, StoreError> {
    let sql = format!("SELECT {KEY_COLS} FROM api_keys WHERE {cond}");
    read_one(conn, &sql, params, key_row, key_of)
}

/// A key's scopes as the `scopes` column holds them (JSON), encoded before the write
/// transaction starts.
fn encode_scopes(scopes: &[KeyScope]) -> Result<String, StoreError> {
    serde_json::to_string(scopes)
        .map_err(|e| StoreError::Unavailable(format!("encoding scopes: {e}")))
}

/// Inserts a new key row (never used yet, so no `last_used_at`) with its `scopes` already
/// encoded: creating a key and rotating one write the new key alike.
fn insert_key(tx: &rusqlite::Transaction<'_>, k: &ApiKey, scopes: &str) -> Result<(), StoreError> {
    execute(
        tx,
        "INSERT INTO api_keys (org, id, hash, name, display_prefix, scopes, created_at,
                               expires_at, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            k.org_id.as_str(),
            k.id.as_str(),
            k.hash.as_str(),
            k.name,
            k.display_prefix,
            scopes,
            ts_text(k.created_at),
            k.expires_at.map(ts_text),
            k.revoked_at.map(ts_text),
        ],
    )?;
    Ok(())
}

#[async_trait]
impl ApiKeyStore for SqliteStore {
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let k = key.clone();
        let scopes = encode_scopes(&k.scopes)?;
        self.transact(move |tx| {
            require_live_org(tx, &k.org_id)?;
            let hash_taken = exists(
                tx,
                "SELECT 1 FROM api_keys WHERE hash = ?1",
                params![k.hash.as_str()],
            )?;
            let id_taken = exists(
                tx,
                "SELECT 1 FROM api_keys WHERE org = ?1 AND id = ?2",
                params![k.org_id.as_str(), k.id.as_str()],
            )?;
            if hash_taken || id_taken {
                return Err(StoreError::Conflict {
                    what: format!("api key {}", k.id),
                });
            }
            insert_key(tx, &k, &scopes)
        })
        .await
    }

    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        let hash = hash.as_str().to_owned();
        self.read(move |conn| read_key(conn, "hash = ?1", params![hash]))
            .await
    }

    async fn list_api_keys(&self, org: &OrgId) -> Result<Vec<ApiKey>, StoreError> {
        let org = org.as_str().to_owned();
        self.read(move |conn| {
            let sql =
                format!("SELECT {KEY_COLS} FROM api_keys WHERE org = ?1 ORDER BY created_at, id");
            query_all(conn, &sql, params![org], key_row, key_of)
        })
        .await
    }

    async fn revoke_api_key(
        &self,
        r: &Revocation<'_, ApiKeyId>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let (org, id, at) = (r.org, r.id, r.at);
        let (org, id, at) = (org.as_str().to_owned(), id.as_str().to_owned(), ts_text(at));
        self.transact(move |tx| {
            execute(
                tx,
                "UPDATE api_keys SET revoked_at = ?3
                 WHERE org = ?1 AND id = ?2 AND revoked_at IS NULL",
                params![org, id, at],
            )?;
            read_key(tx, "org = ?1 AND id = ?2", params![org, id])
        })
        .await
    }

    async fn rotate_api_key(&self, r: &KeyRotation<'_>) -> Result<Option<ApiKey>, StoreError> {
        let (old, new, old_expires_at) = (r.old, r.new, r.old_expires_at);
        let (old_id, old, new) = (old.clone(), old.as_str().to_owned(), new.clone());
        let scopes = encode_scopes(&new.scopes)?;
        self.transact(move |tx| {
            let org = new.org_id.as_str();
            let Some(current) = read_key(tx, "org = ?1 AND id = ?2", params![org, old])? else {
                return Ok(None);
            };
            let expires = rules::rotated_expiry(&old_id, &current, old_expires_at)?;
            execute(
                tx,
                "UPDATE api_keys SET expires_at = ?3 WHERE org = ?1 AND id = ?2",
                params![org, old, ts_text(expires)],
            )?;
            insert_key(tx, &new, &scopes)?;
            Ok(Some(ApiKey {
                expires_at: Some(expires),
                ..current
            }))
        })
        .await
    }

    async fn touch_api_keys(&self, uses: &[KeyUse]) -> Result<(), StoreError> {
        if uses.len() > MAX_KEY_USES_PER_CALL {
            return Err(StoreError::Unavailable(format!(
                "at most {MAX_KEY_USES_PER_CALL} key uses per call, got {}",
                uses.len()
            )));
        }
        let uses = uses.to_vec();
        self.transact(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE api_keys SET last_used_at = ?3
                     WHERE hash = ?1 AND org = ?2
                       AND (last_used_at IS NULL OR last_used_at < ?3)",
                )
                .map_err(db)?;
            for u in &uses {
                stmt.execute(params![
                    u.hash.as_str(),
                    u.org_id.as_str(),
                    last_used_text(u.at)
                ])
                .map_err(db)?;
            }
            Ok(())
        })
        .await
    }
}
