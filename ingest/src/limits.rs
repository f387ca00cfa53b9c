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

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use tally_core::event::Event;
use tally_core::ids::{ApiKeyId, MeterName, OrgId};
use tally_core::meter::Aggregation;
use tally_core::period::{Granularity, Month};
use tally_core::plan::{Plan, RateLimit};
use tally_core::ports::{Clock, CounterQuery, StoreError, UsageStore};

use tracing::Instrument;

use crate::cache::{TtlCache, add, delta};
use crate::config::CacheConfig;

/// Counter of requests refused by a rate limit.
pub const METRIC_RATE_LIMITED: &str = "tally_ingest_rate_limited_total";
/// Counter of events refused by a hard plan limit, labelled `meter`.
pub const METRIC_PLAN_LIMITED: &str = "tally_ingest_plan_limited_total";

const MICROS_PER_TOKEN: i64 = 1_000_000;
const MICROS_PER_SECOND: i64 = 1_000_000;

/// A refusal by the rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Whole seconds (rounded up, at least 1) until the request would be admitted.
    pub retry_after_secs: u64,
    /// The limit that applied.
    pub limit: RateLimit,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens in millionths; negative while in debt.
    micros: i64,
    /// When `micros` was computed.
    at: DateTime<Utc>,
}

/// Token buckets per API key. See the module docs.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: TtlCache<ApiKeyId, Bucket>,
}

impl RateLimiter {
    /// A limiter keeping at most `capacity` buckets.
    pub fn new(capacity: usize) -> Self {
        RateLimiter {
            buckets: TtlCache::new(capacity),
        }
    }

    /// Refuses if `key`'s bucket holds less than one token; charges nothing.
    pub fn check(
        &self,
        key: &ApiKeyId,
        limit: RateLimit,
        now: DateTime<Utc>,
    ) -> Result<(), Throttled> {
        self.buckets.update(key.clone(), now, |entry| {
            let bucket = entry.map(|(b, _)| b);
            let level = level(bucket, limit, now);
            let result = match wait_micros(level, MICROS_PER_TOKEN, limit) {
                0 => Ok(()),
                wait => Err(throttled(wait, limit)),
            };
            (result, entry)
        })
    }

    /// Charges `cost` tokens to `key`'s bucket if it holds `min(cost, burst)` (so the bucket
    /// may go into debt); otherwise charges nothing and says how long to wait.
    pub fn charge(
        &self,
        key: &ApiKeyId,
        limit: RateLimit,
        cost: u64,
        now: DateTime<Utc>,
    ) -> Result<(), Throttled> {
        let cost = i64::try_from(cost).unwrap_or(i64::MAX);
        let burst = i64::from(limit.burst.max(1));
        self.buckets.update(key.clone(), now, |entry| {
            let bucket = entry.map(|(b, _)| b);
            let level = level(bucket, limit, now);
            let need = cost.min(burst).saturating_mul(MICROS_PER_TOKEN);
            match wait_micros(level, need, limit) {
                0 => {
                    let b = Bucket {
                        micros: level.saturating_sub(cost.saturating_mul(MICROS_PER_TOKEN)),
                        at: bucket.map_or(now, |b| b.at.max(now)),
                    };
                    (Ok(()), Some((b, full_at(b, limit))))
                }
                wait => (Err(throttled(wait, limit)), entry),
            }
        })
    }
}

/// The bucket's level at `now` (a missing bucket is full).
fn level(bucket: Option<Bucket>, limit: RateLimit, now: DateTime<Utc>) -> i64 {
    let capacity = i64::from(limit.burst.max(1)) * MICROS_PER_TOKEN;
    let Some(b) = bucket else {
        return capacity;
    };
    let elapsed = (now - b.at).num_microseconds().unwrap_or(i64::MAX).max(0);
    let refill = elapsed.saturating_mul(i64::from(limit.per_second.max(1)));
    b.micros.saturating_add(refill).min(capacity)
}

/// Microseconds until a bucket at `level` holds `need`; 0 if it already does.
fn wait_micros(level: i64, need: i64, limit: RateLimit) -> i64 {
    if level >= need {
        return 0;
    }
    // `per_second` tokens per second is `per_second` millionths of a token per microsecond.
    let rate = i64::from(limit.per_second.max(1));
    need.saturating_sub(level).saturating_add(rate - 1) / rate
}

fn throttled(wait_micros: i64, limit: RateLimit) -> Throttled {
    let secs = wait_micros.saturating_add(MICROS_PER_SECOND - 1) / MICROS_PER_SECOND;
    Throttled {
        retry_after_secs: u64::try_from(secs).unwrap_or(u64::MAX).max(1),
        limit,
    }
}

/// When a bucket refills completely (after which it is the same as no bucket).
fn full_at(b: Bucket, limit: RateLimit) -> DateTime<Utc> {
    let capacity = i64::from(limit.burst.max(1)) * MICROS_PER_TOKEN;
    let wait = wait_micros(b.micros, capacity, limit);
    add(b.at, TimeDelta::microseconds(wait))
}

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
        Aggregation::Max | Aggregation::Latest => Step::Reading(q),
    }
}

impl PlanGuard {
    /// A guard reading counters from `usage`.
    pub fn new(usage: Arc<dyn UsageStore>, clock: Arc<dyn Clock>, config: &CacheConfig) -> Self {
        PlanGuard {
            usage,
            clock,
            cache: TtlCache::new(config.capacity),
            ttl: delta(config.usage_ttl),
        }
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
            if let Some(limit) = plan.meter_limit(&e.meter) {
                groups
                    .entry((e.meter.clone(), Month::of(e.timestamp)))
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
            let refusals = self.cache.update(key, now, |cached| {
                let (mut u, expires) = cached.unwrap_or((fetched, add(now, self.ttl)));
                let mut refusals = Vec::new();
                let mut full = false;
                for &i in &indexes {
                    let Some(e) = events.get(i) else { continue };
                    let current = u.stored + u.pending;
                    let refused = match step(e) {
                        Step::Add(inc) => {
                            full = full || current + inc > limit;
                            if !full {
                                u.pending += inc;
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
                (refusals, Some((u, expires)))
            });
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
            if plan.meter_limit(&e.meter).is_none() {
                continue;
            }
            let Step::Add(inc) = step(e) else { continue };
            let key = (org.clone(), e.meter.clone(), Month::of(e.timestamp));
            self.cache.update(key, now, |cached| {
                let next = cached.map(|(mut u, expires)| {
                    u.pending = (u.pending - inc).max(Decimal::ZERO);
                    (u, expires)
                });
                ((), next)
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn key() -> ApiKeyId {
        ApiKeyId::parse("key_x").unwrap()
    }

    #[test]
    fn a_clock_going_back_never_adds_tokens() {
        let l = RateLimiter::new(10);
        let limit = RateLimit::new(10, 2);
        assert!(l.charge(&key(), limit, 2, t0()).is_ok());
        let earlier = t0() - TimeDelta::seconds(60);
        assert!(l.charge(&key(), limit, 1, earlier).is_err());
        assert!(l.check(&key(), limit, t0()).is_err());
        assert!(
            l.check(&key(), limit, t0() + TimeDelta::milliseconds(100))
                .is_ok()
        );
    }

    #[test]
    fn zero_limits_are_treated_as_one() {
        let l = RateLimiter::new(10);
        let limit = RateLimit::new(0, 0);
        assert!(l.charge(&key(), limit, 1, t0()).is_ok());
        let refused = l.charge(&key(), limit, 1, t0()).unwrap_err();
        assert_eq!(refused.retry_after_secs, 1);
        assert!(
            l.charge(&key(), limit, 1, t0() + TimeDelta::seconds(1))
                .is_ok()
        );
    }

    #[test]
    fn a_bucket_is_forgotten_exactly_when_it_is_full_again() {
        let l = RateLimiter::new(10);
        let limit = RateLimit::new(10, 20);
        assert!(l.charge(&key(), limit, 5, t0()).is_ok());
        assert_eq!(l.buckets.len(), 1);
        // 5 tokens come back in 0.5 s: just before, the bucket is still remembered.
        let almost = t0() + TimeDelta::microseconds(499_999);
        assert!(l.buckets.get(&key(), almost).is_some());
        assert!(
            l.buckets
                .get(&key(), t0() + TimeDelta::milliseconds(500))
                .is_none()
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let l = RateLimiter::new(10);
        let limit = RateLimit::new(3, 3);
        assert!(l.charge(&key(), limit, 3, t0()).is_ok());
        // A third of a second per token.
        assert_eq!(
            l.check(&key(), limit, t0()).unwrap_err().retry_after_secs,
            1
        );
        assert_eq!(
            l.charge(&key(), limit, 3, t0())
                .unwrap_err()
                .retry_after_secs,
            1
        );
        let limit = RateLimit::new(1, 5);
        let other = ApiKeyId::parse("key_y").unwrap();
        assert!(l.charge(&other, limit, 5, t0()).is_ok());
        assert_eq!(
            l.charge(&other, limit, 5, t0())
                .unwrap_err()
                .retry_after_secs,
            5
        );
    }
}
