//! The billing crate's errors: a catalogue that cannot be loaded, a month that cannot be
//! priced. Both render as one line, fit for a CLI's stderr.

use rust_decimal::Decimal;
use tally_core::pricing::PriceError;
use tally_core::{MeterName, PlanId};

/// Why a catalogue could not be loaded, and one problem in it: core's, since core parses
/// and validates the catalogue (this crate only reads the file).
pub use tally_core::catalogue::{CatalogueError, Problem};

/// Why an org's month could not be priced. Every variant names the meter, so the report
/// that failed can be traced to its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// Usage arrived for a meter the plan does not price; billing refuses to drop it.
    #[error("plan {plan} has no price for meter {meter}")]
    UnpricedMeter {
        /// The plan.
        plan: PlanId,
        /// The meter.
        meter: MeterName,
    },
    /// A month or project quantity was negative.
    #[error("meter {meter}: quantity {quantity} is negative")]
    NegativeQuantity {
        /// The meter.
        meter: MeterName,
        /// The quantity.
        quantity: Decimal,
    },
    /// The meter's price could not be applied.
    #[error("meter {meter}: {source}")]
    Price {
        /// The meter.
        meter: MeterName,
        /// What went wrong.
        #[source]
        source: PriceError,
    },
    /// A discount outside 0–100 %, or an amount out of the decimal range.
    #[error("meter {meter}: {reason}")]
    Invalid {
        /// The meter.
        meter: MeterName,
        /// What is wrong.
        reason: String,
    },
}
