//! Rate limits (a token bucket per API key) and hard plan limits (monthly allowances that
//! refuse events past them).
//!
//! # Rate limits
//!
//! [`RateLimiter`] keeps one token bucket per key, sized by the key's [`RateLimit`] (its
//! per-key override, else its org's plan default). What a token pays for is configured
//! ([`RateCost`](crate::config::RateCost)):
//!
//! - **per request** (the default): one token, taken before the body is read, so the plan
//!   limits read as requests per second and a throttled or garbage-sending client costs no
//!   body parsing. The body cap (1,000 events, 1 MiB) bounds what one request carries.
//! - **per event**: a request of N events costs N, since events are what cost queue, ledger
//!   and counter writes. Before the body is read the bucket must hold one token; once the
//!   body is split, the request is admitted when the bucket holds `min(N, burst)` tokens and
//!   then takes all N, possibly going below zero (debt). So a batch larger than the burst is
//!   still possible (it waits for a full bucket), and the sustained rate stays exactly
//!   `per_second` events per second whatever the batch sizes.
//!
//! Tokens are counted in millionths and time in microseconds of the [`Clock`] port, so
//! refills are exact integer arithmetic. A refused request is answered `429` with
//! `Retry-After`: the seconds (rounded up, at least 1) until the bucket holds enough. A
//! refused request costs nothing.
//!
//! Buckets live in a bounded [`TtlCache`] whose entries expire when the bucket would be full
//! again, which is exactly when forgetting it changes nothing. If more than the cache's
//! capacity of keys are throttled at once, a bucket that was not charged again since it was
//! made is forgotten first (the cache keeps entries in use), which can only let its key
//! through earlier.
//!
//! # Hard plan limits
//!
//! [`PlanGuard`] applies to orgs whose plan has `hard_usage_limits` (free by default). For
//! each meter the plan limits and each month the request's events fall in, it reads the
//! org-wide month counter ([`UsageStore::counter_series`] at month granularity) and caches it
//! for [`CacheConfig::usage_ttl`] (2 s); events this process accepts in between are added to
//! the cached figure at once, so one process never overshoots by more than what the
//! aggregator has not applied yet. Per event, in body order:
//!
//! - `sum`, `count` and `unique_count` meters: the event is refused when the usage plus its
//!   increment (its quantity; 1 for `count`; 1 for `unique_count`, an upper bound since the
//!   value may have been seen) would pass the allowance. Once one event of a meter is
//!   refused, the later events of that meter in the request are refused too, so what is
//!   accepted is always a prefix.
//! - `max` and `latest` meters: a reading is refused when it alone is above the allowance.
//!
//! **Enforcement lag**: usage another process (or this one before its last re-read) accepted
//! is seen once the aggregator has applied it and the cache is re-read: at most
//! `usage_ttl` (2 s) + the aggregator's batching window (200 ms) + the time events wait in
//! the queue (about zero when the aggregator keeps up). Within one process, events accepted
//! since the last re-read are counted at once. Resent events are counted locally as if new
//! until the next re-read (so the guard errs towards refusing, never towards overshooting).
//!
//! **Across processes** (Lambda): the above bounds one process. With
//! [`SharedLimits`](crate::shared::SharedLimits) (the Lambda ingest has it), the increments
//! an event passes with must also be taken from the org's shared monthly allowance of the
//! meter, capped at the plan's limit, so what all instances accept through ingest together
//! never passes the limit (overshoot **0**, with four instances as with one); the cost is
//! an early refusal of at most one block per instance (see [`crate::shared`]). The events
//! past what the shared allowance grants are refused like any other (a prefix per meter),
//! with `usage` reported as the limit.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::TimeDelta;
use rust_decimal::Decimal;
use tally_core::event::Event;
use tally_core::ids::{MeterName, OrgId};
use tally_core::meter::Aggregation;
use tally_core::period::{Granularity, Month};
use tally_core::plan::Plan;
use tally_core::ports::{Clock, CounterQuery, StoreError, UsageStore};

use tracing::Instrument;

use crate::cache::{TtlCache, add, delta};

use crate::config::CacheConfig;
/// The token buckets, shared with the management API's per-user limit (see the module doc
/// above for how ingest charges them).
pub use tally_http::rate::{RateLimiter, Throttled};

/// Counter of requests refused by a rate limit.
pub const METRIC_RATE_LIMITED: &str = "tally_ingest_rate_limited_total";
/// Counter of events refused by a hard plan limit, labelled `meter`.
pub const METRIC_PLAN_LIMITED: &str = "tally_ingest_plan_limited_total";

/// Why one event was refused by a hard plan limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRefusal {
    /// The meter whose allowance is used up.
    pub meter: MeterName,
    /// The month whose allowance it is.
    pub month: Month,
    /// The plan's allowance for the meter.
    pub limit: Decimal,
    /// The org's usage of the meter in that month, as ingest knows it.
    pub usage: Decimal,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    /// The month counter as last read from the store.
    stored: Decimal,
    /// Increments this process accepted since.
    pending: Decimal,
}

type UsageKey = (OrgId, MeterName, Month);

/// Hard plan limits. See the module docs.
pub struct PlanGuard {
    usage: Arc<dyn UsageStore>,
    shared: Option<Arc<crate::shared::SharedLimits>>,
    clock: Arc<dyn Clock>,
    cache: TtlCache<UsageKey, Usage>,
    ttl: TimeDelta,
}

impl std::fmt::Debug for PlanGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanGuard")
            .field("entries", &self.cache.len())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// How an event moves a meter's month figure.
enum Step {
    /// Adds this much (`sum`, `count`, `unique_count`).
    Add(Decimal),
    /// Is a reading compared on its own (`max`, `latest`).
    Reading(Decimal),
}

fn step(event: &Event) -> Step {
    let q = event.quantity.value();
    match event.aggregation {
        Aggregation::Sum => Step::Add(q),
        Aggregation::Count | Aggregation::UniqueCount { .. } => Step::Add(Decimal::ONE),
        // A time-weighted meter never has a hard limit (the catalogue refuses one); its
        // counter holds the reading, like `latest`.
        Aggregation::Max | Aggregation::Latest | Aggregation::TimeWeightedSum => Step::Reading(q),
    }
}

impl PlanGuard {
    /// A guard reading counters from `usage`.
    pub fn new(usage: Arc<dyn UsageStore>, clock: Arc<dyn Clock>, config: &CacheConfig) -> Self {
        PlanGuard {
            usage,
            shared: None,
            clock,
            cache: TtlCache::new(config.capacity),
            ttl: delta(config.usage_ttl),
        }
    }

    /// The same guard, also holding every process together to the limit through `shared`
    /// (see the module docs).
    pub fn with_shared(mut self, shared: Arc<crate::shared::SharedLimits>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Decides, per event, whether `org`'s plan refuses it; the accepted events' increments
    /// are added to the local usage at once (undo with [`PlanGuard::release`] if they end
    /// up not queued). The result has one entry per event, `Some` for a refusal.
    pub async fn check(
        &self,
        org: &OrgId,
        plan: &Plan,
        events: &[Event],
    ) -> Result<Vec<Option<PlanRefusal>>, StoreError> {
        let mut out = vec![None; events.len()];
        if !plan.limits.hard_usage_limits {
            return Ok(out);
        }
        // Group the limited events by (meter, month), in body order.
        let mut groups: HashMap<(MeterName, Month), (Decimal, Vec<usize>)> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            // A series counts toward its meter's limit: the key is the bare meter, whose
            // month counter is the total over its series.
            let meter = e.meter.base_meter();
            if let Some(limit) = plan.meter_limit(&meter) {
                groups
                    .entry((meter, Month::of(e.timestamp)))
                    .or_insert_with(|| (limit, Vec::new()))
                    .1
                    .push(i);
            }
        }
        for ((meter, month), (limit, indexes)) in groups {
            let key = (org.clone(), meter.clone(), month);
            let fetched = match self.cache.get(&key, self.clock.now()) {
                Some(u) => u,
                None => {
                    self.fetch(&key)
                        .instrument(tracing::debug_span!("month_usage", meter = meter.as_str()))
                        .await?
                }
            };
            let now = self.clock.now();
            let (mut refusals, accepted) = self.cache.update(key.clone(), now, |cached| {
                let (mut u, expires) = cached.unwrap_or((fetched, add(now, self.ttl)));
                let mut refusals = Vec::new();
                let mut accepted = Vec::new();
                let mut full = false;
                for &i in &indexes {
                    let Some(e) = events.get(i) else { continue };
                    let current = u.stored + u.pending;
                    let refused = match step(e) {
                        Step::Add(inc) => {
                            full = full || current + inc > limit;
                            if !full {
                                u.pending += inc;
                                accepted.push((i, inc, current));
                            }
                            full
                        }
                        Step::Reading(q) => q > limit,
                    };
                    if refused {
                        refusals.push((
                            i,
                            PlanRefusal {
                                meter: meter.clone(),
                                month,
                                limit,
                                usage: current,
                            },
                        ));
                    }
                }
                ((refusals, accepted), Some((u, expires)))
            });
            if let Some(shared) = &self.shared {
                let denied = self
                    .take_shared(shared, &key, limit, &accepted)
                    .instrument(tracing::debug_span!(
                        "shared_allowance",
                        meter = meter.as_str()
                    ))
                    .await?;
                for (i, current) in denied {
                    refusals.push((
                        i,
                        PlanRefusal {
                            meter: meter.clone(),
                            month,
                            limit,
                            usage: current.max(limit),
                        },
                    ));
                }
            }
            for (i, r) in refusals {
                metrics::counter!(METRIC_PLAN_LIMITED, "meter" => r.meter.as_str().to_owned())
                    .increment(1);
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(r);
                }
            }
        }
        Ok(out)
    }

    /// Takes back the increments of events [`PlanGuard::check`] accepted that were then not
    /// queued (the queue refused them), so they do not count against the allowance.
    pub fn release<'a>(
        &self,
        org: &OrgId,
        plan: &Plan,
        events: impl IntoIterator<Item = &'a Event>,
    ) {
        if !plan.limits.hard_usage_limits {
            return;
        }
        let now = self.clock.now();
        for e in events {
            let meter = e.meter.base_meter();
            if plan.meter_limit(&meter).is_none() {
                continue;
            }
            let Step::Add(inc) = step(e) else { continue };
            let key = (org.clone(), meter, Month::of(e.timestamp));
            if let Some(shared) = &self.shared {
                shared.give_back_plan(&key, inc, now);
            }
            self.cache.update(key, now, |cached| {
                let next = cached.map(|(mut u, expires)| {
                    u.pending = (u.pending - inc).max(Decimal::ZERO);
                    (u, expires)
                });
                ((), next)
            });
        }
    }

    /// Takes what the `accepted` events (index, increment, usage before it) add up to from
    /// the shared allowance; those past what it grants (a suffix) are taken back out of the
    /// local usage and returned, with the usage they saw, to be refused.
    async fn take_shared(
        &self,
        shared: &crate::shared::SharedLimits,
        key: &UsageKey,
        limit: Decimal,
        accepted: &[(usize, Decimal, Decimal)],
    ) -> Result<Vec<(usize, Decimal)>, StoreError> {
        let need: Decimal = accepted.iter().map(|(_, inc, _)| *inc).sum();
        let got = match shared
            .take_plan(key, limit, need, self.ttl, self.clock.now())
            .await
        {
            Ok(got) => got,
            Err(e) => {
                self.unpend(key, need);
                return Err(e);
            }
        };
        if got >= need {
            return Ok(Vec::new());
        }
        let mut used = Decimal::ZERO;
        let mut denied = Vec::new();
        let mut unpended = Decimal::ZERO;
        for &(i, inc, current) in accepted {
            if denied.is_empty() && used + inc <= got {
                used += inc;
            } else {
                unpended += inc;
                denied.push((i, current));
            }
        }
        self.unpend(key, unpended);
        shared.give_back_plan(key, got - used, self.clock.now());
        Ok(denied)
    }

    /// Takes `n` back out of a key's local pending usage.
    fn unpend(&self, key: &UsageKey, n: Decimal) {
        if n <= Decimal::ZERO {
            return;
        }
        self.cache.update(key.clone(), self.clock.now(), |cached| {
            let next = cached.map(|(mut u, expires)| {
                u.pending = (u.pending - n).max(Decimal::ZERO);
                (u, expires)
            });
            ((), next)
        });
    }

    /// The org's month-to-date usage of `meter` in `month` as this guard sees it: the
    /// cached month counter (re-read from the store once it is older than the usage TTL)
    /// plus what this process accepted since. The figure `GET /v1/entitlements` answers
    /// with (see [`crate::entitlements`]), from the same cache the hard limits read, so it
    /// is exactly as stale as enforcement is. A figure read here is cached too, so asking
    /// costs at most one store read per (org, meter, month) and TTL.
    pub async fn month_usage(
        &self,
        org: &OrgId,
        meter: &MeterName,
        month: Month,
    ) -> Result<Decimal, StoreError> {
        let key = (org.clone(), meter.clone(), month);
        if let Some(u) = self.cache.get(&key, self.clock.now()) {
            return Ok(u.stored + u.pending);
        }
        let fetched = self
            .fetch(&key)
            .instrument(tracing::debug_span!("month_usage", meter = meter.as_str()))
            .await?;
        let now = self.clock.now();
        // Another request may have cached (and added to) the figure meanwhile: keep it.
        Ok(self.cache.update(key, now, |cached| {
            let (u, expires) = cached.unwrap_or((fetched, add(now, self.ttl)));
            (u.stored + u.pending, Some((u, expires)))
        }))
    }

    async fn fetch(&self, key: &UsageKey) -> Result<Usage, StoreError> {
        let (org, meter, month) = key;
        let series = self
            .usage
            .counter_series(&CounterQuery {
                org: org.clone(),
                project: None,
                meter: meter.clone(),
                granularity: Granularity::Month,
                from: month.start(),
                to: month.end(),
            })
            .await?;
        let stored = series.iter().map(|c| c.value).sum();
        Ok(Usage {
            stored,
            pending: Decimal::ZERO,
        })
    }
}
