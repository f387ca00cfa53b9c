//! The one retry policy: how many attempts, and how long to wait between them.
//!
//! Every adapter and capability that retries (DynamoDB writes, SQS and Kinesis batch
//! entries, the alert webhook, the Stripe sync) uses [`Backoff`]: exponential from
//! [`Backoff::base_delay`], doubling per failed attempt, capped at [`Backoff::max_delay`],
//! and (where many writers retry one resource at once) jittered to a random point in the
//! upper half of that ("equal jitter"), so they spread out but never retry sooner than half
//! the backoff. A server's `Retry-After` replaces the backoff, capped at the same maximum.
//!
//! It is pure: the caller brings the randomness (a number in `[0, 1]`) and does the waiting,
//! through its runtime's timer or the [`Sleeper`] port, which lets tests record the waits
//! instead of sleeping.
//!
//! Not `backon`: its jitter adds up to a whole backoff on top (so a wait can pass
//! `max_delay`), not the upper-half jitter above, and its retry loop wraps one closure per
//! attempt, while the adapters' loops carry state between attempts (the entries of a batch
//! still failing, a `Retry-After`, a ledger step to record). Keeping this policy and
//! wrapping it for backon would add a dependency and make no loop shorter.

use std::time::Duration;

use async_trait::async_trait;

/// Attempts and backoff of one kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts in all (the first one included) before giving up; 0 counts as 1.
    pub max_attempts: u32,
    /// Backoff after the first failed attempt; it doubles with each further one.
    pub base_delay: Duration,
    /// Longest wait between two attempts, whatever the backoff or a `Retry-After` says.
    pub max_delay: Duration,
}

impl Default for Backoff {
    /// 5 attempts, 500 ms doubling, at most a minute: a remote API that may ask to slow
    /// down (the Stripe sync's policy). Adapters with tighter loops set their own.
    fn default() -> Self {
        Backoff {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// A policy of `max_attempts` attempts, `base_delay` doubling up to `max_delay`.
    pub const fn new(max_attempts: u32, base_delay: Duration, max_delay: Duration) -> Self {
        Backoff {
            max_attempts,
            base_delay,
            max_delay,
        }
    }

    /// Whether failed attempt number `attempt` (1-based) may be followed by another.
    pub fn retries_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts.max(1)
    }

    /// The backoff after failed attempt `attempt` (1-based), without jitter:
    /// `base_delay * 2^(attempt-1)`, capped at `max_delay`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // The shift is bounded so it cannot overflow; the cap takes over long before.
        self.base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay)
    }

    /// The jittered backoff after failed attempt `attempt` (1-based): a point in the upper
    /// half of [`ceiling`](Self::ceiling), `unit` (in `[0, 1]`, from the caller's random
    /// source; anything else counts as 0) saying where.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let cap = self.ceiling(attempt);
        cap / 2 + cap.mul_f64(unit / 2.0)
    }

    /// The wait before the next attempt when the server named one (`Retry-After`): that,
    /// capped at `max_delay`; otherwise `backoff` (the caller's [`delay`](Self::delay) or
    /// [`ceiling`](Self::ceiling)).
    pub fn wait(&self, retry_after: Option<Duration>, backoff: Duration) -> Duration {
        retry_after.unwrap_or(backoff).min(self.max_delay)
    }
}

/// Waits between retries; a port so tests (and the chaos tests) need not sleep for real.
#[async_trait]
pub trait Sleeper: Send + Sync {
    /// Returns after `duration` (or sooner, in tests).
    async fn sleep(&self, duration: Duration);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::new(4, 100 * MS, 350 * MS);
        assert_eq!(b.ceiling(1), 100 * MS);
        assert_eq!(b.ceiling(2), 200 * MS);
        assert_eq!(b.ceiling(3), 350 * MS);
        assert_eq!(b.ceiling(u32::MAX), 350 * MS);
        assert_eq!(b.ceiling(0), 100 * MS);
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let b = Backoff::new(4, 100 * MS, 350 * MS);
        assert_eq!(b.delay(1, 0.0), 50 * MS);
        assert_eq!(b.delay(1, 1.0), 100 * MS);
        assert_eq!(b.delay(2, 0.5), 150 * MS);
        assert_eq!(b.delay(10, 1.0), 350 * MS);
        assert_eq!(b.delay(1, 7.0), 100 * MS);
        assert_eq!(b.delay(1, f64::NAN), 50 * MS);
        assert_eq!(b.delay(1, -1.0), 50 * MS);
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let b = Backoff::new(4, 100 * MS, 350 * MS);
        assert_eq!(b.wait(Some(200 * MS), b.ceiling(1)), 200 * MS);
        assert_eq!(b.wait(Some(Duration::from_secs(9)), b.ceiling(1)), 350 * MS);
        assert_eq!(b.wait(None, b.ceiling(2)), 200 * MS);
    }

    #[test]
    fn attempts_are_counted_from_one_and_zero_means_one() {
        let b = Backoff::new(3, MS, MS);
        assert!(b.retries_after(1) && b.retries_after(2) && !b.retries_after(3));
        assert!(!Backoff::new(0, MS, MS).retries_after(1));
    }
}
