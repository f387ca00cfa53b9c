//! Tally's ingest API: `POST /v1/events`, written against the ports of `tally-core` only,
//! so it runs unchanged on SQLite and the local queue or on DynamoDB and SQS/Kinesis.
//!
//! [`router`] builds the axum [`Router`]; the composition root serves it with `axum::serve`
//! locally or `lambda_http` on AWS, and tests drive it with `tower::ServiceExt::oneshot`.
//! [`Ingest`] is the same with its caches in reach (to flush keys' last-used times) and a
//! chosen [`IngestConfig`].
//!
//! # What a request goes through
//!
//! 1. **API key** ([`auth`], [`keys`]): `401` for a missing, unknown, revoked or expired key,
//!    `403` without `events:write`. Keys are cached for **10 s** (unknown keys for 2 s): a
//!    key revoked in the store stops working within 10 seconds; expiry is exact.
//! 2. **Rate limit** ([`limits`]): a token bucket per key, **one token per request** by
//!    default (one per event with [`config::RateCost::PerEvent`]), sized by the org's plan
//!    (free 10 requests/s with a burst of 20, starter 100/200, pro 1,000/2,000, enterprise
//!    5,000/10,000; see [`tally_core::plan::PlanId::default_rate_limit`]) or by a per-key
//!    override in [`config::RateLimitConfig`]. Taken before the body is read; refused with
//!    `429`, code `rate_limited`, and `Retry-After` (whole seconds, rounded up). On Lambda
//!    ([`Ingest::with_allowances`]) the key's rate is also held across all instances by a
//!    shared fixed window ([`shared`]): the limit is the plan's whatever the number of
//!    warm instances.
//! 3. **Body** ([`body`]): `413` over 1 MiB, `400` when it is not one event, a batch of 1 to
//!    1,000, or CloudEvents.
//! 4. **Each event** ([`events`]): validated on its own (field errors, a timestamp more than
//!    5 minutes ahead, an unknown meter or project, a closed month: `period_closed`), each
//!    problem a rejection inside the `202`. Project and period checks are cached
//!    ([`lookups`]: a project 10 s, an open month 5 s, a closed month 1 h).
//! 5. **Hard plan limits** ([`limits`]): on plans with hard limits (free), events past a
//!    meter's monthly allowance are refused with `plan_limit_exceeded`, giving the `limit`
//!    and the `usage`: the whole request is `429` (with `Retry-After` until the next month)
//!    when every one of its events is refused for it, otherwise those events are rejections
//!    inside the `202`. Enforcement lag: at most the usage cache TTL (**2 s**) + the
//!    aggregator's batching window (**200 ms**) + the time events wait in the queue.
//! 6. **Publish**: the events that passed go to the queue in one call; `202` is answered
//!    only after it returned. Events the queue did not take are published again once (only
//!    those), and what still fails is a `queue_unavailable` rejection. A publish that fails
//!    as a whole is `503` with `Retry-After: 1` (nothing was accepted; resend everything,
//!    resent ids are deduplicated downstream).
//!
//! `GET /v1/entitlements` ([`entitlements`]) answers, for the key's org, whether one more
//! event of a meter would be accepted now, with the limit, month-to-date usage and what
//! remains, from the same cached counters the hard limits read (same staleness bound).
//!
//! The HTTP seam ingest shares with the other APIs lives in `tally-http`: API-key
//! authentication ([`auth`], [`keys`]), the one JSON error ([`error`], [`ApiError`]),
//! the request span ([`trace`]), the bounded TTL map the caches are made of ([`cache`]) and
//! the shared OpenAPI document ([`openapi`] re-exports it and adds a router for ingest
//! alone). Those modules are re-exported here under their old paths, so
//! `tally_ingest::error::ApiError` and the like keep working. The cache TTLs above are
//! [`CacheConfig`]'s; its key TTLs configure the key cache through
//! [`KeyCacheConfig`](keys::KeyCacheConfig).

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::routing::{get, post};
use tally_core::ports::{
    ApiKeyStore, Clock, EventQueue, OrgStore, ProjectStore, SecurityStore, SeriesRegistry,
    TenantStore, UsageStore,
};

pub mod body;
pub mod config;
pub mod entitlements;
pub mod events;
pub mod limits;
pub mod lookups;
pub mod openapi;
pub mod series;
pub mod shared;

// The HTTP seam this crate shares with the other APIs lives in `tally-http`; its modules are
// re-exported under their old paths (`tally_ingest::error::ApiError`, `crate::auth::...`).
pub use tally_http::{auth, cache, error, keys, trace};

pub use auth::{KeyAuth, ScopedKey};
pub use config::{CacheConfig, IngestConfig, RateCost, RateLimitConfig};
pub use error::{ApiError, ErrorBody, LimitDetails};
pub use events::{IngestResponse, Rejection, placement};
pub use keys::KeyCache;
pub use tally_http::live::{InForce, LiveCatalogue};

/// Every route [`router`] serves, as (method, path), for the OpenAPI check.
pub const ROUTES: &[(&str, &str)] = &[("POST", "/v1/events"), ("GET", "/v1/entitlements")];

/// Everything the ingest route needs, as ports. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct IngestState {
    /// Finds API keys by hash (auth) and records their last use.
    pub keys: Arc<dyn ApiKeyStore>,
    /// The orgs' security policies (their IP allowlists apply to their keys), read into the
    /// key cache with each key.
    pub security: Arc<dyn SecurityStore>,
    /// Finds the key's org (its plan decides the limits).
    pub orgs: Arc<dyn OrgStore>,
    /// Finds projects (an event's project must be an active one of the key's org).
    pub projects: Arc<dyn ProjectStore>,
    /// Says whether an event's month has been closed by billing.
    pub usage: Arc<dyn UsageStore>,
    /// Where accepted events go, for the aggregator.
    pub queue: Arc<dyn EventQueue>,
    /// The meters events may name and the plans whose allowances hard limits enforce: the
    /// catalogue in force, which the composition root may replace while ingest runs (each
    /// request reads one snapshot; see [`tally_http::live`]).
    pub catalogue: LiveCatalogue,
    /// The server's time: key expiry and the "not in the future" rule.
    pub clock: Arc<dyn Clock>,
    /// Registers the series of dimensioned meters under their cardinality bound before an
    /// event that makes one is accepted. Without one, events of dimensioned meters are
    /// refused (`dimension_cardinality_exceeded`): an unbounded series count is never
    /// accepted.
    pub series: Option<Arc<dyn SeriesRegistry>>,
}

impl IngestState {
    /// Bundles the ports, taking the three tenant roles ingest uses from one store.
    pub fn new(
        tenants: Arc<dyn TenantStore>,
        usage: Arc<dyn UsageStore>,
        queue: Arc<dyn EventQueue>,
        catalogue: impl Into<LiveCatalogue>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        IngestState {
            keys: tenants.clone(),
            security: tenants.clone(),
            orgs: tenants.clone(),
            projects: tenants,
            usage,
            queue,
            catalogue: catalogue.into(),
            clock,
            series: None,
        }
    }

    /// The same ports with a series registry (see [`IngestState::series`]).
    pub fn with_series(mut self, series: Arc<dyn SeriesRegistry>) -> Self {
        self.series = Some(series);
        self
    }
}

impl fmt::Debug for IngestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestState")
            .field("catalogue", &self.catalogue.load().meters.names())
            .finish_non_exhaustive()
    }
}

impl FromRef<IngestState> for KeyAuth {
    fn from_ref(state: &IngestState) -> Self {
        KeyAuth::new(state.keys.clone(), state.clock.clone())
    }
}

/// The ingest API with its caches and limiters: the router's state. Cheap to clone (one
/// `Arc`); build it once per process so every request shares the caches.
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
}

struct Inner {
    ports: IngestState,
    config: IngestConfig,
    keys: Arc<KeyCache>,
    lookups: lookups::Lookups,
    limiter: limits::RateLimiter<tally_core::ids::ApiKeyId>,
    plan_guard: limits::PlanGuard,
    /// The cardinality bound of dimensioned meters ([`series`]).
    series: series::SeriesGuard,
    /// Rate and plan limits shared with the other instances ([`Ingest::with_allowances`]).
    shared: Option<Arc<shared::SharedLimits>>,
}

impl fmt::Debug for Ingest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ingest")
            .field("ports", &self.inner.ports)
            .field("config", &self.inner.config)
            .field("keys", &self.inner.keys)
            .finish_non_exhaustive()
    }
}

impl Ingest {
    /// Builds the caches and limiters over `ports`; the rate and plan limits are this
    /// process's own (exact for one process: `tally serve`).
    pub fn new(ports: IngestState, config: IngestConfig) -> Self {
        Self::build(ports, config, None)
    }

    /// The same, with rate and hard plan limits shared with every other instance through
    /// `allowances` ([`shared`]: what the Lambda ingest runs, on DynamoDB), sized by
    /// [`IngestConfig::shared`].
    pub fn with_allowances(
        ports: IngestState,
        config: IngestConfig,
        allowances: Arc<dyn tally_core::ports::AllowanceStore>,
    ) -> Self {
        let shared = Arc::new(shared::SharedLimits::new(
            allowances,
            config.shared,
            config.cache.capacity,
        ));
        Self::build(ports, config, Some(shared))
    }

    /// The shared limits, when built [`Ingest::with_allowances`] (to read their writes).
    pub fn shared_limits(&self) -> Option<Arc<shared::SharedLimits>> {
        self.inner.shared.clone()
    }

    fn build(
        ports: IngestState,
        config: IngestConfig,
        shared: Option<Arc<shared::SharedLimits>>,
    ) -> Self {
        let keys = Arc::new(KeyCache::new(
            ports.keys.clone(),
            ports.security.clone(),
            ports.clock.clone(),
            &config.cache,
        ));
        let lookups = lookups::Lookups::new(
            ports.orgs.clone(),
            ports.projects.clone(),
            ports.usage.clone(),
            ports.clock.clone(),
            &config.cache,
        );
        let limiter = limits::RateLimiter::new(config.cache.capacity);
        let mut plan_guard =
            limits::PlanGuard::new(ports.usage.clone(), ports.clock.clone(), &config.cache);
        if let Some(shared) = &shared {
            plan_guard = plan_guard.with_shared(shared.clone());
        }
        let series = series::SeriesGuard::new(
            ports.series.clone(),
            ports.clock.clone(),
            config.cache.capacity,
        );
        Ingest {
            inner: Arc::new(Inner {
                series,
                ports,
                config,
                keys,
                lookups,
                limiter,
                plan_guard,
                shared,
            }),
        }
    }

    /// The ports.
    pub fn ports(&self) -> &IngestState {
        &self.inner.ports
    }

    /// The configuration.
    pub fn config(&self) -> &IngestConfig {
        &self.inner.config
    }

    /// The API-key cache, to flush last-used times ([`KeyCache::take_last_used`]) or to
    /// share with another router that authenticates keys ([`KeyAuth::cached`]).
    pub fn key_cache(&self) -> Arc<KeyCache> {
        self.inner.keys.clone()
    }

    /// The ingest API: `POST /v1/events` (see [`events`]) and `GET /v1/entitlements` (see
    /// [`entitlements`]), with the 1 MiB body limit, the
    /// request span of [`trace`], and [`tally_http::drain`] so that an answer given before
    /// the body was read is not lost to a connection reset. It does not serve `/openapi.json`: the usage API's
    /// router serves the whole document (see [`openapi`]); a deployment of ingest alone
    /// merges [`openapi::router`].
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/events", post(events::post_events))
            .route("/v1/entitlements", get(entitlements::get_entitlements))
            .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn(trace::trace_requests))
            // Outermost: a 401/403/413/429 given before the body is read still reaches a
            // client that is sending it.
            .layer(axum::middleware::from_fn(tally_http::drain_unread_body))
            .with_state(self)
    }
}

impl FromRef<Ingest> for KeyAuth {
    fn from_ref(state: &Ingest) -> Self {
        KeyAuth::cached(
            state.inner.ports.keys.clone(),
            state.inner.ports.clock.clone(),
            state.inner.keys.clone(),
        )
    }
}

/// The ingest API with the default [`IngestConfig`]: [`Ingest::new`] then
/// [`Ingest::router`].
pub fn router(state: IngestState) -> Router {
    router_with(state, IngestConfig::default())
}

/// The ingest API with a chosen configuration.
pub fn router_with(state: IngestState, config: IngestConfig) -> Router {
    Ingest::new(state, config).router()
}
