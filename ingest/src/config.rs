//! Ingest's tunables, with the defaults the crate docs promise.
//!
//! Everything here has a working default ([`IngestConfig::default`]); the composition root
//! overrides what its deployment needs (a per-key rate limit, longer caches on Lambda, rate
//! limits off for a benchmark).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tally_core::ids::ApiKeyId;
use tally_core::plan::{PlanId, RateLimit};

use crate::cache::DEFAULT_CAPACITY;
use crate::keys::KeyCacheConfig;

/// How long each hot-path lookup is cached. See the crate docs for what each TTL means to a
/// caller (how long a revocation, a plan change or a closed period takes to be seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Entries per cache (keys, orgs, projects, usage, rate-limit buckets each have one).
    pub capacity: usize,
    /// A key found by hash is trusted this long: a revocation or a change of scopes written
    /// to the store is seen within it. Expiry (`expires_at`) is checked on every request.
    pub key_ttl: Duration,
    /// An unknown key hash is remembered this long, so a flood of bad keys reaches the store
    /// once per distinct key per TTL.
    pub key_miss_ttl: Duration,
    /// An org's plan is trusted this long (a plan change applies to limits within it).
    pub org_ttl: Duration,
    /// "This project belongs to this org" is trusted this long.
    pub project_ttl: Duration,
    /// "No such project in this org" is remembered this long.
    pub project_miss_ttl: Duration,
    /// "This month is still open" is trusted this long: billing closing a month is seen
    /// within it (events accepted in between become adjustments, as the design says).
    pub open_period_ttl: Duration,
    /// "This month is closed" is remembered this long (a closed month never reopens).
    pub closed_period_ttl: Duration,
    /// An org's month-to-date usage of a meter (hard plan limits) is re-read from the
    /// counters this often; events accepted by this process in between are added to it
    /// locally.
    pub usage_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: DEFAULT_CAPACITY,
            key_ttl: Duration::from_secs(10),
            key_miss_ttl: Duration::from_secs(2),
            org_ttl: Duration::from_secs(10),
            project_ttl: Duration::from_secs(10),
            project_miss_ttl: Duration::from_secs(2),
            open_period_ttl: Duration::from_secs(5),
            closed_period_ttl: Duration::from_secs(3600),
            usage_ttl: Duration::from_secs(2),
        }
    }
}

impl From<&CacheConfig> for KeyCacheConfig {
    /// The API-key cache's part: the shared capacity and the key TTLs.
    fn from(c: &CacheConfig) -> Self {
        KeyCacheConfig {
            capacity: c.capacity,
            ttl: c.key_ttl,
            miss_ttl: c.key_miss_ttl,
        }
    }
}

/// What one token of a key's bucket pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateCost {
    /// One token per request, whatever its size (the default): the plan limits read as
    /// requests per second, and the body cap (1,000 events, 1 MiB) bounds what a request
    /// carries. The token is taken before the body is read, so malformed requests pay too.
    #[default]
    PerRequest,
    /// One token per event: a request of N events costs N (checked for one token before the
    /// body is read, charged N once it is split); see [`crate::limits`] for batches larger
    /// than the burst.
    PerEvent,
}

/// Per-key token buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// When false no request is rate limited (benchmarks, trusted internal callers).
    pub enabled: bool,
    /// What a token pays for.
    pub cost: RateCost,
    /// Limit for keys of orgs on each plan; a plan missing here uses
    /// [`PlanId::default_rate_limit`].
    pub per_plan: BTreeMap<PlanId, RateLimit>,
    /// Limits for particular keys, overriding their plan's. (Kept here rather than on the
    /// stored `ApiKey` because the SQLite store maps key columns by hand; moving it onto the
    /// key is a store change.)
    pub per_key: HashMap<ApiKeyId, RateLimit>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            cost: RateCost::PerRequest,
            per_plan: BTreeMap::new(),
            per_key: HashMap::new(),
        }
    }
}

impl RateLimitConfig {
    /// The limit of a key of an org on `plan`.
    pub fn limit_for(&self, key: &ApiKeyId, plan: PlanId) -> RateLimit {
        self.per_key
            .get(key)
            .or_else(|| self.per_plan.get(&plan))
            .copied()
            .unwrap_or_else(|| plan.default_rate_limit())
    }
}

/// Everything [`crate::Ingest`] can be tuned with.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestConfig {
    /// Cache sizes and TTLs.
    pub cache: CacheConfig,
    /// Rate limits.
    pub rate_limits: RateLimitConfig,
    /// How many times events the queue did not take are published again (the failed ones
    /// only) before they are reported as rejections.
    pub publish_retries: u32,
    /// How finely limits shared across instances are taken (only with
    /// [`crate::Ingest::with_allowances`]).
    pub shared: crate::shared::SharedConfig,
    /// How many proxies in front append to `X-Forwarded-For` and are trusted to
    /// ([`tally_http::client`]): the address an org's IP allowlist is checked against. 0
    /// (the default, `tally serve` without `--trusted-proxies`): the connection's peer.
    pub trusted_proxies: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            cache: CacheConfig::default(),
            rate_limits: RateLimitConfig::default(),
            publish_retries: 1,
            shared: crate::shared::SharedConfig::default(),
            trusted_proxies: 0,
        }
    }
}
