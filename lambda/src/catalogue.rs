//! The catalogue the ingest and API functions serve by: the stored version in force for the
//! current month, read at cold start and again, before a request, once
//! [`env::CATALOGUE_REFRESH_SECONDS`] have passed since the last read or the month has
//! turned ([`CatalogueRefresh`]). So a version published with `tally catalogue apply`
//! reaches a warm function within that interval of coming into force, with no redeploy and
//! no restart, and a version effective from next month takes over at the first request of
//! that month. The built-in catalogue is what a month no version covers is served with.
//! The previous month's version is read with it (when it is another one), so a late event,
//! stamped last month while that month is open, is validated with its own month's meters
//! at no cost per request.
//!
//! The check runs on the request, not on a timer: a Lambda execution environment is frozen
//! between invocations, so a timer could leave the first request after a long freeze on a
//! catalogue read long ago. A re-read lists the versions (one small query); only a changed
//! version is fetched and parsed. A failed read is logged and the function keeps serving the
//! catalogue it has, and tries again after the next interval.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tally_billing::Catalogue;
use tally_billing::versions::{self, PairKey, VersionError};
use tally_core::Month;
use tally_core::ports::{CatalogueStore, Clock, SystemClock};
use tally_ingest::LiveCatalogue;
use tokio::sync::Mutex;

use crate::backends::Store;
use crate::env::{self, Env, EnvError};

/// The refresh interval when [`env::CATALOGUE_REFRESH_SECONDS`] is unset: the same default
/// as `tally serve`'s.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

/// The longest interval accepted, in seconds (an hour).
pub const MAX_REFRESH_SECONDS: u64 = 3_600;

/// The refresh interval setting, [`env::CATALOGUE_REFRESH_SECONDS`]: [`DEFAULT_REFRESH`] when
/// unset, whole seconds from 1 to [`MAX_REFRESH_SECONDS`] otherwise.
pub const REFRESH: env::Seconds = env::Seconds::new(
    env::CATALOGUE_REFRESH_SECONDS,
    DEFAULT_REFRESH,
    MAX_REFRESH_SECONDS,
);

/// Why a function could not start serving its catalogue.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// [`env::CATALOGUE_REFRESH_SECONDS`] is not a valid interval; the message names it.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// The stored versions could not be read at cold start: the start fails.
    #[error("the catalogue version in force")]
    Read(#[source] VersionError),
}

/// The cold start of a function that serves the catalogue (ingest and the API): the
/// version in force in `store`'s table, else `fallback`, re-read every
/// [`env::CATALOGUE_REFRESH_SECONDS`] by the system clock.
pub async fn open_from_env(
    env: &Env,
    store: &Store,
    fallback: Catalogue,
) -> Result<Arc<CatalogueRefresh>, StartError> {
    let interval = REFRESH.read(env)?;
    CatalogueRefresh::open(
        store.dynamo.clone(),
        fallback,
        Arc::new(SystemClock),
        interval,
    )
    .await
    .map_err(StartError::Read)
}

/// Keeps a [`LiveCatalogue`] on the stored version in force (see the module doc).
pub struct CatalogueRefresh {
    store: Arc<dyn CatalogueStore>,
    fallback: Catalogue,
    live: LiveCatalogue,
    clock: Arc<dyn Clock>,
    interval: Duration,
    /// When the versions were last read, by `clock`, and which were in force then this
    /// month and the last.
    last_read: Mutex<(DateTime<Utc>, PairKey)>,
}

impl CatalogueRefresh {
    /// Reads the version in force now (the cold start's read: an unreadable store fails the
    /// start, as an unreadable table would anyway), else `fallback`.
    pub async fn open(
        store: Arc<dyn CatalogueStore>,
        fallback: Catalogue,
        clock: Arc<dyn Clock>,
        interval: Duration,
    ) -> Result<Arc<CatalogueRefresh>, VersionError> {
        let now = clock.now();
        let in_force = versions::pair_for(store.as_ref(), &fallback, Month::of(now)).await?;
        if let Some(version) = in_force.current.version {
            tracing::info!(version, "serving the published catalogue version");
        }
        Ok(Arc::new(CatalogueRefresh {
            live: LiveCatalogue::new(in_force.routes()),
            store,
            fallback,
            clock,
            interval,
            last_read: Mutex::new((now, in_force.key)),
        }))
    }

    /// The catalogue the routers read; [`CatalogueRefresh::refresh_if_due`] replaces it.
    pub fn catalogue(&self) -> LiveCatalogue {
        self.live.clone()
    }

    /// Re-reads the versions if the interval has passed since the last read or the month
    /// has turned (or the clock went back), and swaps in the version in force if it changed.
    /// Whether it read.
    pub async fn refresh_if_due(&self) -> bool {
        let mut last = self.last_read.lock().await;
        let now = self.clock.now();
        let elapsed = (now - last.0).to_std().ok();
        let due = Month::of(now) != Month::of(last.0) || elapsed.is_none_or(|e| e >= self.interval);
        if !due {
            return false;
        }
        last.0 = now;
        let current = self.live.load().version;
        let read = versions::pair_changed_since(
            self.store.as_ref(),
            &self.fallback,
            Month::of(now),
            Some(last.1),
        );
        match read.await {
            Ok(Some(next)) => {
                tracing::info!(from = ?current, to = ?next.current.version, previous_month = ?next.key.previous, "the catalogue in force changed; serving the new one");
                last.1 = next.key;
                self.live.store(next.routes());
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-read the catalogue versions; keeping the one in force");
            }
        }
        true
    }
}

/// `router` with every request first refreshing `refresh`'s catalogue when due.
pub fn refreshing(router: axum::Router, refresh: Arc<CatalogueRefresh>) -> axum::Router {
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let refresh = refresh.clone();
            async move {
                refresh.refresh_if_due().await;
                next.run(req).await
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tally_core::ports::FixedClock;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn version(n: u32, from: &str) -> tally_core::ports::CatalogueVersion {
        tally_tests::catalogues::version_with_tokens(n, from, at("2026-03-10T00:00:00Z"))
    }

    #[tokio::test]
    async fn a_warm_function_reads_a_new_version_after_the_interval_or_at_the_month_turn() {
        let store = Arc::new(tally_store::memory::MemoryStore::new());
        let clock = Arc::new(FixedClock::at(at("2026-03-31T23:50:00Z")));
        let refresh = CatalogueRefresh::open(
            store.clone(),
            Catalogue::builtin().unwrap(),
            clock.clone(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let live = refresh.catalogue();
        let knows_tokens = || live.load().meters.get("tokens").is_some();
        assert!(!knows_tokens());

        // Applied for this month: not read before the interval has passed, read after it.
        store
            .put_catalogue_version(&version(1, "2026-03"))
            .await
            .unwrap();
        clock.advance(chrono::Duration::seconds(29));
        assert!(!refresh.refresh_if_due().await, "within the interval");
        assert!(!knows_tokens());
        clock.advance(chrono::Duration::seconds(1));
        assert!(refresh.refresh_if_due().await);
        assert!(knows_tokens());
        assert_eq!(live.load().version, Some(1));

        // Version 2 starts in April: read at the first request of April, however soon.
        store
            .put_catalogue_version(&version(2, "2026-04"))
            .await
            .unwrap();
        clock.set(at("2026-04-01T00:00:01Z"));
        assert!(refresh.refresh_if_due().await, "the month turned");
        assert_eq!(live.load().version, Some(2));
        // March's version 1 stays at hand for March's late events.
        let previous = live.load().previous.clone().unwrap();
        assert_eq!(
            (previous.month.to_string(), previous.version),
            ("2026-03".into(), Some(1))
        );
        assert!(previous.meters.get("tokens").is_some());
    }

    #[test]
    fn the_interval_is_whole_seconds_within_bounds() {
        assert_eq!(REFRESH.parse(None).unwrap(), DEFAULT_REFRESH);
        assert_eq!(REFRESH.parse(Some("5")).unwrap(), Duration::from_secs(5));
        for bad in ["0", "3601", "1.5", "soon"] {
            let e = REFRESH.parse(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("TALLY_CATALOGUE_REFRESH_SECONDS"), "{bad}: {e}");
        }
    }
}
