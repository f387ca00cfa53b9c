//! Pricing one organization's month into a [`UsageReport`]: core's one pricing engine
//! ([`tally_core::report`]), re-exported here under its old path. It moved to core so the
//! API's upcoming invoice prices a month with the same code as month close (capability
//! crates do not depend on each other); see that module for how a line is priced and where
//! rounding happens.

pub use tally_core::report::*;
