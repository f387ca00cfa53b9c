//! The API-key cache: [`ApiKeyStore::find_api_key`] behind a bounded in-process cache, and
//! the keys' last-used times kept in memory until they are flushed in bulk.
//!
//! A key found by hash is trusted for [`KeyCacheConfig::ttl`] (10 s by default): a key
//! revoked in the store stops working within that time, and so does a change of its scopes.
//! Expiry and a revocation time already on the cached record are checked against the clock
//! on every request, so they are exact. A hash the store does not know is remembered for
//! [`KeyCacheConfig::miss_ttl`] (2 s), so a flood of made-up keys reaches the store once per
//! distinct key per two seconds. New keys are unaffected by miss caching: a secret has 256
//! random bits, so nobody presents it before it exists.
//!
//! Each cached key carries its org's [`SecurityPolicy`] (read from the store with the key,
//! on a miss only), so ingest checks an org's IP allowlist with no store read per request.
//! A policy change is therefore seen within the same [`KeyCacheConfig::ttl`] (10 s) as a
//! revocation: an allowlist tightened in the management API refuses a key's requests from
//! a removed address at most that long afterwards.
//!
//! Last-used times are recorded in memory on every successful authentication (never a store
//! write per request); [`KeyCache::take_last_used`] hands them over for a bulk write.
//!
//! Ingest's `CacheConfig` carries these settings among its other caches' and converts into
//! a [`KeyCacheConfig`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::TimeDelta;
use tally_core::ids::ApiKeyId;
use tally_core::ports::{ApiKeyStore, Clock, SecurityStore, StoreError};
use tally_core::security::SecurityPolicy;
use tally_core::tenant::{ApiKey, KeyHash, KeyUse};

use tracing::Instrument;

use crate::cache::{DEFAULT_CAPACITY, TtlCache, delta};

/// Counter of key lookups, labelled `result` = `hit` (answered from the cache) or `miss`
/// (asked the store). Named for ingest, whose router the cache serves; the name stayed when
/// the cache moved here, so dashboards and alarms keep finding it.
pub const METRIC_KEY_CACHE: &str = "tally_ingest_key_cache_total";

/// The key cache's size and how long it trusts what the store said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCacheConfig {
    /// Entries at most (found keys and unknown hashes together).
    pub capacity: usize,
    /// A key found by hash is trusted this long: a revocation or a change of scopes written
    /// to the store is seen within it. Expiry (`expires_at`) is checked on every request.
    pub ttl: Duration,
    /// An unknown key hash is remembered this long, so a flood of bad keys reaches the store
    /// once per distinct key per TTL.
    pub miss_ttl: Duration,
}

impl Default for KeyCacheConfig {
    fn default() -> Self {
        KeyCacheConfig {
            capacity: DEFAULT_CAPACITY,
            ttl: Duration::from_secs(10),
            miss_ttl: Duration::from_secs(2),
        }
    }
}

/// A key as the cache holds it: the key and its org's security policy (the default when
/// the org set none), read together.
#[derive(Debug, Clone)]
pub struct CachedKey {
    /// The key.
    pub key: ApiKey,
    /// Its org's policy when the key was read.
    pub policy: SecurityPolicy,
}

/// API keys by hash, cached; plus last-used times. Share one per process (`Arc`).
pub struct KeyCache {
    store: Arc<dyn ApiKeyStore>,
    policies: Arc<dyn SecurityStore>,
    clock: Arc<dyn Clock>,
    keys: TtlCache<KeyHash, Option<Arc<CachedKey>>>,
    ttl: TimeDelta,
    miss_ttl: TimeDelta,
    last_used: Mutex<HashMap<ApiKeyId, KeyUse>>,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCache")
            .field("entries", &self.keys.len())
            .field("ttl", &self.ttl)
            .field("miss_ttl", &self.miss_ttl)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    /// A cache over `store` (keys) and `policies` (their orgs' security policies) with the
    /// capacity and TTLs of `config` (a [`KeyCacheConfig`], or anything that converts into
    /// one, such as ingest's `&CacheConfig`).
    pub fn new(
        store: Arc<dyn ApiKeyStore>,
        policies: Arc<dyn SecurityStore>,
        clock: Arc<dyn Clock>,
        config: impl Into<KeyCacheConfig>,
    ) -> Self {
        let config = config.into();
        KeyCache {
            store,
            policies,
            clock,
            keys: TtlCache::new(config.capacity),
            ttl: delta(config.ttl),
            miss_ttl: delta(config.miss_ttl),
            last_used: Mutex::new(HashMap::new()),
        }
    }

    /// The key whose secret hashes to `hash`, from the cache or (on a miss or after the TTL)
    /// from the store. Store errors are not cached.
    pub async fn find(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        Ok(self.find_with_policy(hash).await?.map(|c| c.key.clone()))
    }

    /// The key whose secret hashes to `hash` with its org's security policy, from the cache
    /// or (on a miss or after the TTL) from the store: the key, then its org's policy, two
    /// reads per miss and none per hit. Store errors are not cached.
    pub async fn find_with_policy(
        &self,
        hash: &KeyHash,
    ) -> Result<Option<Arc<CachedKey>>, StoreError> {
        let now = self.clock.now();
        if let Some(found) = self.keys.get(hash, now) {
            metrics::counter!(METRIC_KEY_CACHE, "result" => "hit").increment(1);
            return Ok(found);
        }
        metrics::counter!(METRIC_KEY_CACHE, "result" => "miss").increment(1);
        let found = self
            .store
            .find_api_key(hash)
            .instrument(tracing::debug_span!("find_api_key"))
            .await?;
        let found = match found {
            Some(key) => {
                let policy = self
                    .policies
                    .get_security_policy(&key.org_id)
                    .instrument(tracing::debug_span!("get_security_policy"))
                    .await?
                    .map(|p| p.policy)
                    .unwrap_or_default();
                Some(Arc::new(CachedKey { key, policy }))
            }
            None => None,
        };
        let ttl = if found.is_some() {
            self.ttl
        } else {
            self.miss_ttl
        };
        self.keys
            .insert_for(hash.clone(), found.clone(), ttl, self.clock.now());
        Ok(found)
    }

    /// Records that `key` was used now (in memory only).
    pub fn touch(&self, key: &ApiKey) {
        let now = self.clock.now();
        let mut used = self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match used.get_mut(&key.id) {
            Some(u) => u.at = u.at.max(now),
            None => {
                used.insert(
                    key.id.clone(),
                    KeyUse {
                        key_id: key.id.clone(),
                        org_id: key.org_id.clone(),
                        hash: key.hash.clone(),
                        at: now,
                    },
                );
            }
        }
    }

    /// Every key used since the last call, with its latest use, emptying the record. The
    /// composition root calls this periodically and writes the times in one batch; the map
    /// holds at most one entry per valid key used since the last call.
    /// The uses come sorted by key id, ready for [`ApiKeyStore::touch_api_keys`].
    pub fn take_last_used(&self) -> Vec<KeyUse> {
        let mut used = self
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<KeyUse> = used.drain().map(|(_, u)| u).collect();
        out.sort();
        out
    }

    /// Forgets every cached key (for tests and for an operator who just revoked a leaked
    /// key and cannot wait the TTL out).
    pub fn invalidate_all(&self) {
        self.keys.clear();
    }
}

/// How often the key cache's last-used times are written to the store by
/// [`flush_key_uses`] (`tally serve` and the ingest Lambda).
pub const KEY_USE_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes the keys' last-used times every `every`, and once more when `stop` resolves. A
/// failed write is logged and its times are dropped: a last-used time is advisory, and the
/// next use records a fresh one.
///
/// On Lambda the execution environment is frozen between invocations, so the timer only
/// runs while requests are served: a warm function writes at most once per `every`, never
/// once per request, and a write cut short by a freeze fails and is dropped as above.
pub async fn flush_key_uses(
    keys: Arc<KeyCache>,
    store: Arc<dyn ApiKeyStore>,
    every: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = &mut stop => true,
        };
        let uses = keys.take_last_used();
        for chunk in uses.chunks(tally_core::tenant::MAX_KEY_USES_PER_CALL) {
            if let Err(e) = store.touch_api_keys(chunk).await {
                tracing::warn!(error = %e, keys = chunk.len(), "cannot record API keys' last use");
            }
        }
        if stopping {
            return;
        }
    }
}
