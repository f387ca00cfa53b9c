//! Backend-agnostic conformance suites for the ports in [`tally_core::ports`].
//!
//! - [`storage`]: [`TenantStore`](tally_core::ports::TenantStore) and
//!   [`UsageStore`](tally_core::ports::UsageStore), through a [`storage::StoreFactory`].
//! - [`security`]: [`SecurityStore`](tally_core::ports::SecurityStore), org security
//!   policies and sign-in sessions, through the same [`storage::StoreFactory`].
//! - [`allowance`]: [`AllowanceStore`](tally_core::ports::AllowanceStore), the shared
//!   limits of ingest instances, on handles onto one store.
//! - [`overrides`]: [`OverrideStore`](tally_core::ports::OverrideStore), each org's price
//!   overrides, through a [`storage::StoreFactory`].
//! - [`dimensions`]: [`SeriesRegistry`](tally_core::ports::SeriesRegistry), the series
//!   of dimensioned meters and their cardinality bound, through a [`storage::StoreFactory`].
//! - [`readings`]: [`ReadingStore`](tally_core::ports::ReadingStore), the hour cells of
//!   time-weighted meters, through a [`storage::StoreFactory`].
//! - [`queue`]: [`EventQueue`](tally_core::ports::EventQueue), through a
//!   [`queue::QueueFactory`].
//! - [`replay`]: replaying dead letters
//!   ([`DeadLetterReplay`](tally_store::replay::DeadLetterReplay)) on the queues that keep
//!   them whole (local, SQS), through the same factory.
//!
//! The suites never assume empty tables: every test makes fresh org ids (and slugs, emails,
//! months where a value is global), so a backend may share one table or server between tests
//! and between runs. Queues are the exception: a queue is one pipe, so each queue factory owns
//! a queue of its own.

// This module is test code that lives in a library so every backend's test file can run it;
// a failed unwrap here is a failed test, as in any #[test].
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod allowance;
pub mod dimensions;
pub mod fixtures;
pub mod overrides;
pub mod queue;
pub mod readings;
pub mod replay;
pub mod security;
pub mod storage;

/// What [`queue_conformance!`](crate::queue_conformance) and
/// [`storage_conformance!`](crate::storage_conformance) expand to: one `#[tokio::test]` per
/// test of the `suite` module, each building its factory with `factory`.
#[doc(hidden)]
#[macro_export]
macro_rules! conformance_tests {
    ($suite:ident, $factory:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let factory = $factory;
                $crate::conformance::$suite::$test(&factory).await;
            }
        )*
    };
}

/// Every suite a [`storage::StoreFactory`] runs (storage, overrides, dimensions, readings,
/// security), each in a module named after it, building the factory with `factory`: what a
/// storage backend's test file registers, so that a suite is added to every backend in one
/// place. The invoking module's items are in scope of each suite's module (`use super::*`).
#[macro_export]
macro_rules! store_conformance {
    ($factory:expr) => {
        mod storage {
            use super::*;
            $crate::storage_conformance!($factory);
        }
        mod overrides {
            use super::*;
            $crate::override_conformance!($factory);
        }
        mod dimensions {
            use super::*;
            $crate::dimensions_conformance!($factory);
        }
        mod readings {
            use super::*;
            $crate::readings_conformance!($factory);
        }
        mod security {
            use super::*;
            $crate::security_conformance!($factory);
        }
    };
}
