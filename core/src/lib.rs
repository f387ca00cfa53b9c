//! Tally's domain core.
//!
//! Everything the other crates agree on lives here and nothing here does I/O: ids parsed at
//! the edge ([`ids`]), usage events and their validation ([`event`]), the meter catalogue
//! ([`meter`]), UTC periods ([`period`]), counter keys ([`counter`]), plans and their limits
//! ([`plan`]), the one catalogue file that defines meters, plans, limits and prices
//! ([`catalogue`]) and its price models ([`pricing`]), money ([`money`]), the pure batch fold
//! that turns events into counter deltas ([`fold`]), the queue envelope ([`envelope`]),
//! webhook signatures ([`signature`]), tenant records ([`tenant`]), the ports ([`ports`]) that
//! storage and queue adapters implement and the outgoing ones ([`sinks`]) that capabilities
//! hand alerts and poison records to, the one retry policy ([`backoff`]), and the canonical
//! ledger entry and report-line digest a customer audits a bill with ([`audit`]), and the
//! rows of the usage and ledger exports ([`export`]). Keeping it pure
//! means every rule is unit-testable without a database and every backend applies exactly the
//! same arithmetic.
//!
//! Other crates' tests also share test support from here, behind the `test-support` feature
//! their dev-dependencies turn on (never a normal build): `fixtures` (seeded tenant records,
//! a ledger's first page), `catalogue_as_written` (the catalogue file without the parser),
//! `envelope::test_event` and `ports::PublishOnly`.

/// Implements the two `String` conversions serde goes through for a type carried as text
/// (`#[serde(try_from = "String", into = "String")]`): `TryFrom<String>` by `$parse` (so a
/// deserialized value is always a parsed one, refused with `$err`) and `From<$ty> for String`
/// by `$show`. Trait impls, so a macro rather than a function.
macro_rules! string_conversions {
    ($ty:ty, $err:ty, $parse:expr, $show:expr) => {
        impl TryFrom<String> for $ty {
            type Error = $err;
            fn try_from(s: String) -> Result<Self, $err> {
                $parse(&s)
            }
        }

        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                $show(v)
            }
        }
    };
}

pub mod allocate;
pub mod audit;
pub mod backoff;
pub mod catalogue;
#[cfg(any(test, feature = "test-support"))]
pub mod catalogue_as_written;
pub mod counter;
pub mod dimension;
pub mod envelope;
pub mod event;
pub mod export;
#[cfg(any(test, feature = "test-support"))]
pub mod fixtures;
pub mod fold;
pub mod headroom;
pub mod ids;
pub mod json;
pub mod locate;
pub mod meter;
pub mod money;
pub mod overrides;
pub mod period;
pub mod plan;
pub mod ports;
pub mod pricing;
pub mod report;
pub mod security;
pub mod signature;
pub mod sinks;
pub mod tenant;
pub mod time_weighted;
pub mod upcoming;
pub mod value_source;

pub use catalogue::{Catalogue, CatalogueError, MeterPrice, MeterSpec, PlanSpec, Problem};
pub use counter::{CounterKey, CounterScope, OwnedCounterKey};
pub use event::{ErrorCode, Event, EventError, Quantity, RawEvent};
pub use fold::{Delta, Deltas};
pub use ids::{ApiKeyId, EventId, IdError, MeterName, OrgId, ProjectId, UserId};
pub use meter::{Aggregation, Meter, MeterCatalogue};
pub use money::Money;
pub use period::{Granularity, Month};
pub use plan::{Plan, PlanId, PlanLimits, RateLimit};
