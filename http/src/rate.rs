//! Token buckets: one per key (an API key for ingest, a user for the management API), sized
//! by a [`RateLimit`] (`per_second`, `burst`).
//!
//! Tokens are counted in millionths and time in microseconds of the caller's clock, so
//! refills are exact integer arithmetic. A refused charge costs nothing and says how long
//! to wait ([`Throttled::retry_after_secs`], rounded up, at least 1). Buckets live in a
//! bounded [`TtlCache`] whose entries expire when the bucket would be full again, which is
//! exactly when forgetting it changes nothing. Ingest's per-request and per-event charging
//! is described in `tally_ingest::limits`.

use std::hash::Hash;

use chrono::{DateTime, TimeDelta, Utc};
use tally_core::plan::RateLimit;

use crate::cache::{TtlCache, add};

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

/// Token buckets, one per key (an API key id, a user id). See the module docs.
pub struct RateLimiter<K> {
    buckets: TtlCache<K, Bucket>,
}

impl<K> std::fmt::Debug for RateLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> RateLimiter<K> {
    /// A limiter keeping at most `capacity` buckets.
    pub fn new(capacity: usize) -> Self {
        RateLimiter {
            buckets: TtlCache::new(capacity),
        }
    }

    /// Refuses if `key`'s bucket holds less than one token; charges nothing.
    pub fn check(&self, key: &K, limit: RateLimit, now: DateTime<Utc>) -> Result<(), Throttled> {
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
        key: &K,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::t0;

    fn key() -> String {
        "key_x".to_owned()
    }

    /// A limiter (room for 10 buckets) whose bucket for [`key`] under `limit` was charged
    /// `tokens` at [`t0`], a charge it took; and `limit`.
    fn charged(limit: RateLimit, tokens: u64) -> (RateLimiter<String>, RateLimit) {
        let l = RateLimiter::<String>::new(10);
        assert!(l.charge(&key(), limit, tokens, t0()).is_ok());
        (l, limit)
    }

    #[test]
    fn a_clock_going_back_never_adds_tokens() {
        let (l, limit) = charged(RateLimit::new(10, 2), 2);
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
        let (l, limit) = charged(RateLimit::new(0, 0), 1);
        let refused = l.charge(&key(), limit, 1, t0()).unwrap_err();
        assert_eq!(refused.retry_after_secs, 1);
        assert!(
            l.charge(&key(), limit, 1, t0() + TimeDelta::seconds(1))
                .is_ok()
        );
    }

    #[test]
    fn a_bucket_is_forgotten_exactly_when_it_is_full_again() {
        let (l, _) = charged(RateLimit::new(10, 20), 5);
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
        let (l, limit) = charged(RateLimit::new(3, 3), 3);
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
        let other = "key_y".to_owned();
        assert!(l.charge(&other, limit, 5, t0()).is_ok());
        assert_eq!(
            l.charge(&other, limit, 5, t0())
                .unwrap_err()
                .retry_after_secs,
            5
        );
    }
}
