//! Rate and hard plan limits shared by every ingest instance, through an
//! [`AllowanceStore`] (DynamoDB on AWS).
//!
//! Each process's token buckets ([`crate::limits`]) and hard-limit estimate see only the
//! requests that process served, so on Lambda, where every warm instance is a process, a
//! key's rate and an org's monthly allowance would each be multiplied by the number of
//! instances. With [`SharedLimits`] (built by [`crate::Ingest::with_allowances`]) a request
//! is admitted only against units taken from a shared fixed-window allowance, whose total
//! taken never passes its cap whatever the number of instances. `tally serve` is one
//! process, whose own buckets are exact, so it runs without one.
//!
//! # Blocks
//!
//! A process takes units in **blocks**, one store write each (one conditional
//! `UpdateItem` on DynamoDB, 1 WCU), and spends them from memory. Its first block of a
//! window is what the request needs; each later one is as big as everything it took in
//! the window so far (so it doubles), capped at `cap / blocks`
//! ([`SharedConfig::rate_blocks`], [`SharedConfig::plan_blocks`]). A quiet instance thus
//! takes one unit at a time and strands little; a busy one writes about `blocks` times per
//! window plus the doubling steps. Once the store grants less than asked, the window is
//! used up: the process refuses locally, with no further write, until the window ends
//! (rate) or for the usage cache TTL (plan: a few seconds, since the counters may have
//! moved).
//!
//! # Bounds
//!
//! Because every admitted unit was taken under the cap, the shared limits never
//! **overshoot** through ingest, with any number of instances: at most `cap` requests (or
//! events) of a key per rate window, and at most the allowance of a hard-limited meter per
//! month. What the blocks cost is **undershoot**: units an instance holds and does not
//! spend before its window ends (or before it is stopped) are lost, at most one block per
//! instance per window, so with N busy instances at least `cap − N × block` is admitted per
//! window, and a free org's monthly allowance can be reached early by at most one block
//! (at most `limit / plan_blocks`, and never more than the instance itself admitted) per
//! instance that stopped while holding one. Events resent after a lost answer take units
//! again (the store cannot tell a resend), which also only refuses early.
//!
//! # Rate windows
//!
//! A key's limit `(per_second, burst)` becomes windows of `w = ceil(burst / per_second)`
//! seconds (2 s for every built-in plan) aligned on the clock, each of `cap = per_second × w`
//! units: the sustained rate is exactly `per_second` and a window admits a burst of `cap`.
//! Two windows back to back may admit `2 × cap` within a short time across their boundary,
//! as any fixed window does; each process's own token bucket still applies too, so one
//! process never passes its bucket. Requests refused by the shared window are answered
//! `429` with `Retry-After` = the seconds until the window ends (rounded up, at least 1).
//!
//! # Write cost per request
//!
//! A key costs `writes per window / requests per window`: each instance writes once per
//! block and once more to learn a window is used up (refused requests after that cost
//! nothing). Measured on the emulator (`bench/RESULTS.md`, `limiter_cost`), per admitted
//! request of a saturated key with the default 8 blocks: **free 0.6 WCU** on one instance,
//! 0.7 on two, 0.9 on four; starter 0.07–0.16; pro 0.009–0.022; against 1.0 and more for a
//! counter written on every request. Spread thin over many instances (16 sharing one
//! key) each instance's blocks stay small and the cost nears one write per request (free
//! 1.8, as the baseline; pro 0.07). Hard limits cost one write per block of a month's
//! allowance (or per request, when a request's events need more than a block), plus one
//! per instance per usage-cache TTL while the allowance is used up.
//!
//! # When the store fails
//!
//! A rate-limit take that fails falls back to the process's own bucket (the request is
//! not refused for it; `tally_ingest_shared_limit_errors_total` counts it): an outage of the
//! limiter must not stop ingest. A hard-limit take that fails is a `503`, as a failed
//! usage read is today: admitting then could overshoot a free org's allowance.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use tally_core::ids::{ApiKeyId, MeterName, OrgId};
use tally_core::period::Month;
use tally_core::plan::RateLimit;
use tally_core::ports::{AllowanceRequest, AllowanceStore, AllowanceWindow, StoreError};
use tally_http::rate::Throttled;

use crate::cache::TtlCache;

/// Counter of allowance store writes (each 1 WCU on DynamoDB), labelled `limit`
/// (`rate` or `plan`).
pub const METRIC_SHARED_WRITES: &str = "tally_ingest_shared_limit_writes_total";
/// Counter of allowance store failures that fell back to per-process rate limits.
pub const METRIC_SHARED_ERRORS: &str = "tally_ingest_shared_limit_errors_total";

/// Most blocks a window may be split into (bounds [`SharedConfig`]).
pub const MAX_BLOCKS: u32 = 10_000;

/// How finely shared allowances are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedConfig {
    /// A rate window's blocks are at most `cap / rate_blocks` (at least 1): more blocks
    /// strand less at a window's end and cost more writes. 1 to [`MAX_BLOCKS`]; default 8.
    pub rate_blocks: u32,
    /// A month's hard-limit blocks are at most `limit / plan_blocks`. 1 to [`MAX_BLOCKS`];
    /// default 100 (a free org's 10,000 calls: blocks of at most 100).
    pub plan_blocks: u32,
}

impl Default for SharedConfig {
    fn default() -> Self {
        SharedConfig {
            rate_blocks: 8,
            plan_blocks: 100,
        }
    }
}

impl SharedConfig {
    /// Refuses block counts out of range, naming the field.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("rate_blocks", self.rate_blocks),
            ("plan_blocks", self.plan_blocks),
        ] {
            if v == 0 || v > MAX_BLOCKS {
                return Err(format!("{name} must be 1 to {MAX_BLOCKS}, not {v}"));
            }
        }
        Ok(())
    }
}

/// An org's allowance of a meter in a month: what a hard plan limit is shared per.
pub type PlanKey = (OrgId, MeterName, Month);

/// What this process holds of one window.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    /// Taken from the store and not spent.
    left: Decimal,
    /// Taken from the store by this process in this window (the next block's size).
    taken: Decimal,
    /// The store granted less than asked: refuse locally until then.
    used_up_until: Option<DateTime<Utc>>,
}

/// One take: the window, its cap, what is needed, the largest block, and how long a
/// used-up answer stands.
struct Take<'a> {
    window: &'a AllowanceWindow,
    cap: Decimal,
    need: Decimal,
    max_block: Decimal,
    used_up_for: TimeDelta,
    limit: &'static str,
}

/// Shared rate and plan limits. See the module docs.
pub struct SharedLimits {
    store: Arc<dyn AllowanceStore>,
    config: SharedConfig,
    held: TtlCache<(String, String), Held>,
    writes: AtomicU64,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("config", &self.config)
            .field("windows", &self.held.len())
            .field("writes", &self.writes())
            .finish_non_exhaustive()
    }
}

impl SharedLimits {
    /// Limits over `store`, holding at most `capacity` windows in memory (a window
    /// forgotten early only loses what it held).
    pub fn new(store: Arc<dyn AllowanceStore>, config: SharedConfig, capacity: usize) -> Self {
        SharedLimits {
            store,
            config,
            held: TtlCache::new(capacity),
            writes: AtomicU64::new(0),
        }
    }

    /// Writes this process made to the allowance store so far (1 WCU each on DynamoDB).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// The rate window of `key` at `now`, its cap and its largest block.
    fn rate_window(
        &self,
        key: &ApiKeyId,
        limit: RateLimit,
        now: DateTime<Utc>,
    ) -> (AllowanceWindow, Decimal, Decimal, i64) {
        let per = i64::from(limit.per_second.max(1));
        let burst = i64::from(limit.burst.max(1));
        let secs = ((burst + per - 1) / per).max(1);
        let start = now.timestamp().div_euclid(secs) * secs;
        let end = start.saturating_add(secs);
        let cap = per.saturating_mul(secs);
        let window = AllowanceWindow {
            scope: format!("RATE#{}", key.as_str()),
            window: start.to_string(),
            expires_at: DateTime::from_timestamp(end, 0).unwrap_or(DateTime::<Utc>::MAX_UTC),
        };
        let max_block = (cap / i64::from(self.config.rate_blocks)).max(1);
        (window, Decimal::from(cap), Decimal::from(max_block), end)
    }

    /// Refuses when `key`'s current window is known to be used up and nothing is held;
    /// charges nothing and writes nothing (the check before a per-event request's body is
    /// read).
    pub fn check_rate(
        &self,
        key: &ApiKeyId,
        limit: RateLimit,
        now: DateTime<Utc>,
    ) -> Result<(), Throttled> {
        let (w, _, _, end) = self.rate_window(key, limit, now);
        let held = self.held.get(&(w.scope, w.window), now).unwrap_or_default();
        let used_up = held.used_up_until.is_some_and(|t| t > now);
        if used_up && held.left < Decimal::ONE {
            return Err(throttled(end, now, limit));
        }
        Ok(())
    }

    /// Takes `cost` units (at most a window's cap: a bigger per-event batch is charged a
    /// whole window) of `key`'s shared rate allowance, or refuses taking nothing. A store
    /// failure admits (see the module docs).
    pub async fn take_rate(
        &self,
        key: &ApiKeyId,
        limit: RateLimit,
        cost: u64,
        now: DateTime<Utc>,
    ) -> Result<(), Throttled> {
        let (window, cap, max_block, end) = self.rate_window(key, limit, now);
        let need = Decimal::from(cost).min(cap).max(Decimal::ONE);
        let take = Take {
            window: &window,
            cap,
            need,
            max_block,
            used_up_for: TimeDelta::seconds(end - now.timestamp()),
            limit: "rate",
        };
        match self.take(&take, now).await {
            Ok(got) if got >= need => Ok(()),
            Ok(got) => {
                self.give_back(&window, got, now);
                Err(throttled(end, now, limit))
            }
            Err(e) => {
                metrics::counter!(METRIC_SHARED_ERRORS).increment(1);
                tracing::warn!(error = %e, "shared rate limit unavailable; per-process limit only");
                Ok(())
            }
        }
    }

    /// Gives back rate units taken by [`SharedLimits::take_rate`] for a request that was
    /// then refused by the process's own bucket, so they stay in hand for the next one.
    pub fn give_back_rate(&self, key: &ApiKeyId, limit: RateLimit, cost: u64, now: DateTime<Utc>) {
        let (window, cap, _, _) = self.rate_window(key, limit, now);
        let n = Decimal::from(cost).min(cap).max(Decimal::ONE);
        self.give_back(&window, n, now);
    }

    fn plan_window((org, meter, month): &PlanKey) -> AllowanceWindow {
        AllowanceWindow {
            scope: format!("PLAN#{}#{}", org.as_str(), meter.as_str()),
            window: month.to_string(),
            expires_at: month.end(),
        }
    }

    /// Takes up to `need` of an org's shared allowance of a meter in a month (`key`;
    /// `limit` in all); what it got, which may be less. `used_up_for`: how long a used-up
    /// month is refused without asking the store again.
    pub async fn take_plan(
        &self,
        key: &PlanKey,
        limit: Decimal,
        need: Decimal,
        used_up_for: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Decimal, StoreError> {
        if need <= Decimal::ZERO {
            return Ok(Decimal::ZERO);
        }
        let window = Self::plan_window(key);
        let take = Take {
            window: &window,
            cap: limit.max(Decimal::ZERO),
            need,
            max_block: limit / Decimal::from(self.config.plan_blocks),
            used_up_for,
            limit: "plan",
        };
        self.take(&take, now).await
    }

    /// Gives back plan units taken for events that were then not queued.
    pub fn give_back_plan(&self, key: &PlanKey, n: Decimal, now: DateTime<Utc>) {
        self.give_back(&Self::plan_window(key), n, now);
    }

    fn give_back(&self, window: &AllowanceWindow, n: Decimal, now: DateTime<Utc>) {
        if n <= Decimal::ZERO {
            return;
        }
        let key = (window.scope.clone(), window.window.clone());
        self.held.update(key, now, |entry| {
            let (mut h, expires) = entry.unwrap_or((Held::default(), window.expires_at));
            h.left += n;
            ((), Some((h, expires)))
        });
    }

    /// Up to `need` units: from what is held, then (unless the window is used up) one
    /// block from the store.
    async fn take(&self, t: &Take<'_>, now: DateTime<Utc>) -> Result<Decimal, StoreError> {
        let key = (t.window.scope.clone(), t.window.window.clone());
        let expires = t.window.expires_at;
        // From what is held; `Some(taken so far)` when the store must be asked.
        let (got, ask_store) = self.held.update(key.clone(), now, |entry| {
            let (mut h, exp) = entry.unwrap_or((Held::default(), expires));
            let got = h.left.min(t.need);
            h.left -= got;
            let used_up = h.used_up_until.is_some_and(|u| u > now);
            let ask = (got < t.need && !used_up).then_some(h.taken);
            ((got, ask), Some((h, exp)))
        });
        let Some(taken_so_far) = ask_store else {
            return Ok(got);
        };
        let short = t.need - got;
        let ask = short
            .max(taken_so_far.min(t.max_block))
            .min(t.cap.max(short));
        let grant = match self
            .store
            .take_allowance(&AllowanceRequest::new(t.window, t.cap, ask, now))
            .await
        {
            Ok(g) => g,
            Err(e) => {
                self.give_back(t.window, got, now);
                return Err(e);
            }
        };
        self.writes
            .fetch_add(u64::from(grant.writes), Ordering::Relaxed);
        metrics::counter!(METRIC_SHARED_WRITES, "limit" => t.limit)
            .increment(u64::from(grant.writes));
        let used_up_until = now.checked_add_signed(t.used_up_for).unwrap_or(expires);
        let more = self.held.update(key, now, |entry| {
            let (mut h, exp) = entry.unwrap_or((Held::default(), expires));
            h.left += grant.granted;
            h.taken += grant.granted;
            if grant.granted < ask {
                h.used_up_until = Some(used_up_until);
            }
            let more = h.left.min(short);
            h.left -= more;
            (more, Some((h, exp)))
        });
        Ok(got + more)
    }
}

/// The refusal of a used-up rate window ending at Unix second `end`.
fn throttled(end: i64, now: DateTime<Utc>, limit: RateLimit) -> Throttled {
    let micros_left = (end.saturating_mul(1_000_000))
        .saturating_sub(now.timestamp_micros())
        .max(0);
    let secs = micros_left.saturating_add(999_999) / 1_000_000;
    Throttled {
        retry_after_secs: u64::try_from(secs).unwrap_or(u64::MAX).max(1),
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_store::MemoryStore;

    fn t(secs: i64, millis: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + secs, 0).unwrap() + TimeDelta::milliseconds(millis)
    }

    fn key() -> ApiKeyId {
        ApiKeyId::from_random([7; 16])
    }

    /// Two processes' limiters on one store admit exactly the window's cap between them,
    /// and a used-up window costs no further writes.
    #[tokio::test]
    async fn two_processes_share_one_window_cap() {
        let store = Arc::new(MemoryStore::new());
        let a = SharedLimits::new(store.clone(), SharedConfig::default(), 100);
        let b = SharedLimits::new(store, SharedConfig::default(), 100);
        let free = RateLimit::new(10, 20);
        let mut admitted = 0;
        for i in 0..100 {
            let l = if i % 2 == 0 { &a } else { &b };
            if l.take_rate(&key(), free, 1, t(0, i)).await.is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 20);
        let writes = a.writes() + b.writes();
        assert!(writes <= 14, "{writes} writes for 20 requests");
        let refused = a.take_rate(&key(), free, 1, t(1, 500)).await.unwrap_err();
        assert_eq!(refused.retry_after_secs, 1);
        assert_eq!(
            a.writes() + b.writes(),
            writes,
            "a used-up window is not asked again"
        );
        assert!(
            a.check_rate(&key(), free, t(1, 600)).is_err(),
            "the pre-check refuses too"
        );
        // A unit given back (the process's own bucket refused after the shared take) is
        // spent by the next request, with no write.
        a.give_back_rate(&key(), free, 1, t(1, 600));
        assert!(a.check_rate(&key(), free, t(1, 600)).is_ok());
        assert!(a.take_rate(&key(), free, 1, t(1, 700)).await.is_ok());
        assert!(a.take_rate(&key(), free, 1, t(1, 800)).await.is_err());
        assert_eq!(a.writes() + b.writes(), writes);
        // The next window starts afresh.
        assert!(a.take_rate(&key(), free, 1, t(2, 0)).await.is_ok());
    }

    #[tokio::test]
    async fn plan_takes_stop_at_the_limit_and_give_back_is_reused() {
        let store = Arc::new(MemoryStore::new());
        let limits: Vec<_> = (0..4)
            .map(|_| SharedLimits::new(store.clone(), SharedConfig::default(), 100))
            .collect();
        let org = OrgId::from_random([9; 16]);
        let meter = MeterName::parse("api_calls").unwrap();
        let key = (org, meter, Month::of(t(0, 0)));
        let limit = Decimal::from(500);
        // Each take asks for 3 units of the 500 at t(0, 0), marking the key used up for 2 s.
        let take = async |l: &SharedLimits| {
            l.take_plan(
                &key,
                limit,
                Decimal::from(3),
                TimeDelta::seconds(2),
                t(0, 0),
            )
            .await
            .unwrap()
        };
        let mut got = Decimal::ZERO;
        for i in 0..400 {
            got += take(&limits[i % 4]).await;
        }
        assert!(got <= limit, "{got} taken of {limit}");
        limits[0].give_back_plan(&key, Decimal::from(3), t(0, 0));
        let again = take(&limits[0]).await;
        assert_eq!(again, Decimal::from(3));
    }
}
