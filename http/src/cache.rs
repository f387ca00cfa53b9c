//! A small bounded in-process cache with per-entry expiry, driven by the [`Clock`] port.
//!
//! [`TtlCache`] is what the hot path's caches are built from (API keys here, in
//! [`crate::keys`]; org plans, projects, closed periods, month-to-date usage and rate-limit
//! buckets in ingest). The bounded map itself is [`quick_cache`]'s sharded concurrent cache;
//! this module adds what it does not do: an expiry instant per entry, read from the caller's
//! clock (so tests move time instead of sleeping, and the [`Clock`] port stays the only
//! source of time), and a read-and-rewrite of one entry under its shard's lock.
//!
//! Eviction when the cap is reached: expired entries are swept out first (a full sweep at
//! most once per `capacity / 8` writes into a full cache, so a flood of new keys costs
//! amortized O(1) per write); if the cache is still full, quick_cache's policy (a CLOCK-Pro
//! variant close to S3-FIFO) picks the entry: a new entry has to be read again to be kept,
//! so a flood of one-off keys (made-up API keys, say) churns among itself and cannot push
//! out the entries in use. Memory stays proportional to the cap whatever the churn.
//!
//! quick_cache is built with its `parking_lot` locks, which are not poisoned by a panic:
//! like the `Mutex` this module used before, a panic in an [`TtlCache::update`] closure
//! leaves at worst a stale entry, never a cache that refuses every later call.
//!
//! [`Clock`]: tally_core::ports::Clock

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use quick_cache::sync::{Cache, EntryAction, EntryResult};

/// Default number of entries each cache keeps at most.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// A bounded map whose entries expire. Values are cloned out, so keep them small or `Arc`ed.
pub struct TtlCache<K, V> {
    capacity: usize,
    inner: Cache<K, Slot<V>>,
    /// Writes made while the cache was full, to space out the sweeps of expired entries.
    full_writes: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Slot<V> {
    value: V,
    expires_at: DateTime<Utc>,
}

impl<K: Eq + Hash, V: Clone> std::fmt::Debug for TtlCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCache")
            .field("capacity", &self.capacity)
            .field("len", &self.inner.len())
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        TtlCache {
            capacity,
            inner: Cache::new(capacity),
            full_writes: AtomicUsize::new(0),
        }
    }

    /// The most entries kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many entries are held (expired ones included until they are seen or evicted).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The value for `key` if it has not expired at `now`. An expired entry is removed.
    pub fn get<Q>(&self, key: &Q, now: DateTime<Utc>) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = self.inner.get(key)?;
        if slot.expires_at > now {
            return Some(slot.value);
        }
        // Only if still expired: another caller may have stored a fresh value meanwhile.
        self.inner.remove_if(key, |s| s.expires_at <= now);
        None
    }

    /// Stores `value` for `key` until `expires_at`, evicting if the cache is full.
    pub fn insert(&self, key: K, value: V, expires_at: DateTime<Utc>, now: DateTime<Utc>) {
        self.make_room(now);
        self.inner.insert(key, Slot { value, expires_at });
    }

    /// Stores `value` for `ttl` from `now`.
    pub fn insert_for(&self, key: K, value: V, ttl: TimeDelta, now: DateTime<Utc>) {
        self.insert(key, value, add(now, ttl), now);
    }

    /// Reads and rewrites one entry atomically: `f` gets the unexpired value (if any) with
    /// its expiry, and returns its result plus what to store (`Some((value, expires_at))`)
    /// or `None` to remove the entry. Concurrent updates of one key run one after the other.
    /// `f` runs under a shard lock: keep it short, and do not touch this cache from it.
    pub fn update<R>(
        &self,
        key: K,
        now: DateTime<Utc>,
        f: impl FnOnce(Option<(V, DateTime<Utc>)>) -> (R, Option<(V, DateTime<Utc>)>),
    ) -> R {
        // `f` is called at most once, in one of the two branches below.
        let mut f = Some(f);
        let mut result = None;
        let entry = self.inner.entry(&key, None, |_, slot| {
            let Some(f) = f.take() else {
                return EntryAction::Retain(());
            };
            let current = (slot.expires_at > now).then(|| (slot.value.clone(), slot.expires_at));
            let (r, next) = f(current);
            result = Some(r);
            match next {
                Some((value, expires_at)) => {
                    *slot = Slot { value, expires_at };
                    EntryAction::Retain(())
                }
                None => EntryAction::Remove,
            }
        });
        let guard = match entry {
            // Absent: the guard holds the key, so a concurrent update of it waits for this
            // one; dropping the guard without a value leaves the key absent.
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => Some(guard),
            // No timeout was given, so `Timeout` does not happen; were it to, `f` runs below
            // without storing anything.
            EntryResult::Retained(()) | EntryResult::Removed(..) | EntryResult::Timeout => None,
        };
        if let Some(f) = f.take() {
            let (r, next) = f(None);
            if let (Some(guard), Some((value, expires_at))) = (guard, next) {
                self.make_room(now);
                // Err only if the placeholder went meanwhile (a `clear`), which would have
                // dropped the value anyway.
                let _ = guard.insert(Slot { value, expires_at });
            }
            return r;
        }
        match result {
            Some(r) => r,
            // `f` was taken by the entry callback, which always sets `result`.
            None => unreachable!("the entry callback ran `f` without a result"),
        }
    }

    /// Before a write into a full cache, sweeps out the expired entries, so they go before
    /// any live one. A sweep visits every entry, so it runs on the first write that finds
    /// the cache full and then at most once per `capacity / 8` such writes: a flood of new
    /// keys costs amortized O(1) per write.
    fn make_room(&self, now: DateTime<Utc>) {
        if self.inner.len() < self.capacity {
            return;
        }
        let n = self.full_writes.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of((self.capacity / 8).max(1)) {
            self.inner.retain(|_, slot| slot.expires_at > now);
        }
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.inner.clear();
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
pub(crate) mod tests {
    use super::*;

    /// The fixed instant the crate's time-based unit tests start from.
    pub(crate) fn t0() -> DateTime<Utc> {
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
    fn the_cap_evicts_expired_entries_first_then_unread_ones() {
        let c = TtlCache::new(3);
        c.insert_for("short", 0, secs(1), t0());
        c.insert_for("a", 1, secs(60), t0());
        c.insert_for("b", 2, secs(60), t0());
        // Full; "short" has expired by now, so it goes and "a" stays.
        let now = t0() + secs(5);
        c.insert_for("c", 3, secs(60), now);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("a", now), Some(1));
        // Nothing expired: of the older entries, the one never read ("b") goes, and "a",
        // which was just read, stays.
        c.insert_for("d", 4, secs(60), now);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("b", now), None);
        assert_eq!(
            (c.get("a", now), c.get("c", now), c.get("d", now)),
            (Some(1), Some(3), Some(4))
        );
        // Rewriting a held key evicts nothing.
        c.insert_for("d", 44, secs(60), now);
        assert_eq!(
            (c.get("a", now), c.get("c", now), c.get("d", now)),
            (Some(1), Some(3), Some(44))
        );
    }

    #[test]
    fn entries_in_use_survive_a_flood_of_one_off_keys() {
        let c = TtlCache::new(100);
        for k in 0..10u32 {
            c.insert_for(k, k, secs(60), t0());
        }
        for i in 1_000..20_000u32 {
            c.insert_for(i, i, secs(60), t0());
            assert!(c.len() <= 100, "{}", c.len());
            for k in 0..10u32 {
                assert_eq!(c.get(&k, t0()), Some(k), "entry {k} evicted after {i}");
            }
        }
    }

    #[test]
    fn memory_stays_bounded_under_rewrites() {
        let c = TtlCache::new(100);
        for i in 0..100_000u32 {
            c.insert_for(i % 150, i, secs(60), t0());
        }
        assert_eq!(c.len(), 100);
    }

    #[test]
    fn concurrent_updates_of_one_key_do_not_lose_writes() {
        let c = TtlCache::new(10);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        c.update("n", t0(), |v| {
                            let n = v.map_or(0, |(n, _)| n) + 1;
                            ((), Some((n, t0() + secs(60))))
                        });
                    }
                });
            }
        });
        assert_eq!(c.get("n", t0()), Some(4_000));
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
