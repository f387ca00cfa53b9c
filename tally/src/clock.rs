//! The process's clock: the system clock, or one shifted to start at `TALLY_NOW`.
//!
//! Month close, the billing scheduler and ingest's timestamp checks all ask a
//! [`Clock`] for the time. Black-box tests of the binary cannot wait for a month to end, so
//! the hidden `TALLY_NOW` environment variable (RFC 3339) makes the process's clock read that
//! instant at start and run on from there at normal speed. It is for tests and drills; it
//! is not documented in `--help`. Tests that run the app in process get the same clock from
//! [`starting_at`] and set it on the app, since they share one environment.

use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use tally_core::ports::{Clock, SystemClock};

/// The environment variable that shifts the clock.
pub const NOW_ENV: &str = "TALLY_NOW";

/// The system clock plus a fixed offset.
#[derive(Debug, Clone, Copy)]
struct ShiftedClock {
    offset: Duration,
}

impl Clock for ShiftedClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

/// The clock this process runs on: shifted to `TALLY_NOW` if it is set, else the system
/// clock.
pub fn from_env() -> anyhow::Result<Arc<dyn Clock>> {
    let Some(raw) = std::env::var_os(NOW_ENV).filter(|v| !v.is_empty()) else {
        return Ok(Arc::new(SystemClock));
    };
    let raw = raw
        .into_string()
        .map_err(|_| anyhow::anyhow!("{NOW_ENV} must be UTF-8"))?;
    let start = DateTime::parse_from_rfc3339(raw.trim())
        .with_context(|| format!("{NOW_ENV} must be RFC 3339, got {raw:?}"))?
        .with_timezone(&Utc);
    Ok(starting_at(start))
}

/// A clock that reads `start` now and runs on from there at normal speed: what `TALLY_NOW`
/// gives a process, for tests that run the app in process (and cannot set the environment
/// of a process they share with other tests).
pub fn starting_at(start: DateTime<Utc>) -> Arc<dyn Clock> {
    Arc::new(ShiftedClock {
        offset: start - Utc::now(),
    })
}
