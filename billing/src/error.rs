//! The billing crate's errors: a catalogue that cannot be loaded, a month that cannot be
//! priced. Both render as one line, fit for a CLI's stderr.

/// Why a catalogue could not be loaded, and one problem in it: core's, since core parses
/// and validates the catalogue (this crate only reads the file).
pub use tally_core::catalogue::{CatalogueError, Problem};

/// Why an org's month could not be priced: core's, beside the pricing engine.
pub use tally_core::report::PricingError;
