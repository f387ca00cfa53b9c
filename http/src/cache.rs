//! A small bounded in-process cache with per-entry expiry, driven by the [`Clock`] port.
//!
//! [`TtlCache`] is what the hot path's caches are built from (API keys here, in
//! [`crate::keys`]; org plans, projects, closed periods, month-to-date usage and rate-limit
//! buckets in ingest). It is deliberately simple: one
//! `std::sync::Mutex` around a `HashMap` (critical sections are a lookup or an insert, never
//! an `.await`), an expiry instant per entry read from the caller's clock (so tests move time
//! instead of sleeping), and a hard cap on the number of entries.
//!
//! Eviction when the cap is reached: expired entries are swept out (a full sweep at most once
//! per `capacity / 8` writes, so a flood of new keys costs amortized O(1) per write), and if
//! the cache is still full the entry written longest ago goes (FIFO by last write, which is
//! LRU for entries rewritten on use, like rate-limit buckets, and close to it for the others,
//! which are rewritten every TTL). The write order is kept in a queue with lazy deletion:
//! rewriting a key appends to the queue and leaves a stale entry behind, and the queue is
//! compacted when stale entries outnumber live ones, so memory stays proportional to the cap.
//!
//! [`Clock`]: tally_core::ports::Clock

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};

/// Default number of entries each cache keeps at most.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// A bounded map whose entries expire. Values are cloned out, so keep them small or `Arc`ed.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    capacity: usize,
    inner: Mutex<Inner<K, V>>,
}

#[derive(Debug)]
struct Inner<K, V> {
    map: HashMap<K, Slot<V>>,
    /// Keys in write order, each with the generation it was written with; an entry whose
    /// generation no longer matches the map's is stale and skipped.
    order: VecDeque<(K, u64)>,
    next_generation: u64,
    /// Writes since the last sweep of expired entries.
    writes_since_sweep: usize,
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    expires_at: DateTime<Utc>,
    generation: u64,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        TtlCache {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                next_generation: 0,
                writes_since_sweep: usize::MAX,
            }),
        }
    }

    /// The most entries kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many entries are held (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value for `key` if it has not expired at `now`. An expired entry is removed.
    pub fn get<Q>(&self, key: &Q, now: DateTime<Utc>) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = self.lock();
        match inner.map.get(key) {
            Some(slot) if slot.expires_at > now => Some(slot.value.clone()),
            Some(_) => {
                inner.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` for `key` until `expires_at`, evicting if the cache is full.
    pub fn insert(&self, key: K, value: V, expires_at: DateTime<Utc>, now: DateTime<Utc>) {
        let mut inner = self.lock();
        inner.put(key, value, expires_at, now, self.capacity);
    }

    /// Stores `value` for `ttl` from `now`.
    pub fn insert_for(&self, key: K, value: V, ttl: TimeDelta, now: DateTime<Utc>) {
        self.insert(key, value, add(now, ttl), now);
    }

    /// Reads and rewrites one entry under the lock: `f` gets the unexpired value (if any)
    /// with its expiry, and returns its result plus what to store (`Some((value,
    /// expires_at))`) or `None` to remove the entry.
    pub fn update<R>(
        &self,
        key: K,
        now: DateTime<Utc>,
        f: impl FnOnce(Option<(V, DateTime<Utc>)>) -> (R, Option<(V, DateTime<Utc>)>),
    ) -> R {
        let mut inner = self.lock();
        let current = match inner.map.get(&key) {
            Some(slot) if slot.expires_at > now => Some((slot.value.clone(), slot.expires_at)),
            _ => None,
        };
        let (result, next) = f(current);
        match next {
            Some((value, expires_at)) => inner.put(key, value, expires_at, now, self.capacity),
            None => {
                inner.map.remove(&key);
            }
        }
        result
    }

    /// Drops every entry.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        inner.order.clear();
    }

    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        // A panic while holding the lock cannot leave the map half-written in a way that
        // matters for a cache (worst case a stale entry), so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Eq + Hash + Clone, V> Inner<K, V> {
    fn put(
        &mut self,
        key: K,
        value: V,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
        capacity: usize,
    ) {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let replaced = self
            .map
            .insert(
                key.clone(),
                Slot {
                    value,
                    expires_at,
                    generation,
                },
            )
            .is_some();
        self.order.push_back((key, generation));
        self.writes_since_sweep = self.writes_since_sweep.saturating_add(1);
        if !replaced && self.map.len() > capacity {
            self.evict(now, capacity);
        }
        if self.order.len() > 2 * self.map.len() + 64 {
            self.compact();
        }
    }

    fn evict(&mut self, now: DateTime<Utc>, capacity: usize) {
        if self.writes_since_sweep >= capacity / 8 {
            self.map.retain(|_, slot| slot.expires_at > now);
            self.writes_since_sweep = 0;
        }
        while self.map.len() > capacity {
            let Some((key, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .map
                .get(&key)
                .is_some_and(|s| s.generation == generation)
            {
                self.map.remove(&key);
            }
        }
    }

    fn compact(&mut self) {
        let map = &self.map;
        self.order
            .retain(|(k, g)| map.get(k).is_some_and(|s| s.generation == *g));
    }
}

/// `now + ttl`, saturating at the end of representable time.
pub fn add(now: DateTime<Utc>, ttl: TimeDelta) -> DateTime<Utc> {
    now.checked_add_signed(ttl)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A `std::time::Duration` as a chrono `TimeDelta`, saturating.
pub fn delta(d: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn secs(n: i64) -> TimeDelta {
        TimeDelta::seconds(n)
    }

    #[test]
    fn entries_expire_on_the_clock() {
        let c = TtlCache::new(10);
        c.insert_for("a", 1, secs(10), t0());
        assert_eq!(c.get("a", t0()), Some(1));
        assert_eq!(c.get("a", t0() + secs(9)), Some(1));
        assert_eq!(c.get("a", t0() + secs(10)), None, "expiry is exclusive");
        assert!(c.is_empty(), "an expired entry is removed when seen");
    }

    #[test]
    fn the_cap_evicts_expired_entries_first_then_the_oldest_write() {
        let c = TtlCache::new(3);
        c.insert_for("short", 0, secs(1), t0());
        c.insert_for("a", 1, secs(60), t0());
        c.insert_for("b", 2, secs(60), t0());
        // Full; "short" has expired by now, so it goes and "a" stays.
        let now = t0() + secs(5);
        c.insert_for("c", 3, secs(60), now);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("a", now), Some(1));
        // Nothing expired: the oldest write ("a") goes, even though it was just read.
        c.insert_for("d", 4, secs(60), now);
        assert_eq!(c.get("a", now), None);
        assert_eq!(
            (c.get("b", now), c.get("c", now), c.get("d", now)),
            (Some(2), Some(3), Some(4))
        );
        // Rewriting moves an entry to the back of the queue.
        c.insert_for("b", 22, secs(60), now);
        c.insert_for("e", 5, secs(60), now);
        assert_eq!(c.get("c", now), None);
        assert_eq!(c.get("b", now), Some(22));
    }

    #[test]
    fn memory_stays_bounded_under_rewrites() {
        let c = TtlCache::new(100);
        for i in 0..100_000u32 {
            c.insert_for(i % 150, i, secs(60), t0());
        }
        let inner = c.lock();
        assert_eq!(inner.map.len(), 100);
        assert!(inner.order.len() <= 2 * 100 + 64, "{}", inner.order.len());
    }

    #[test]
    fn update_reads_and_writes_under_one_lock() {
        let c = TtlCache::new(10);
        let seen = c.update("k", t0(), |v| (v, Some((1, t0() + secs(5)))));
        assert_eq!(seen, None);
        let seen = c.update("k", t0(), |v| {
            (v, Some((v.map_or(0, |(n, _)| n) + 1, t0() + secs(5))))
        });
        assert_eq!(seen, Some((1, t0() + secs(5))));
        assert_eq!(c.get("k", t0()), Some(2));
        let seen = c.update("k", t0() + secs(6), |v| (v, None));
        assert_eq!(seen, None, "expired values are not handed to update");
        assert!(c.is_empty());
    }
}
