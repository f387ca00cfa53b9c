//! Splitting a rounded amount across projects so the parts add up to the cent: core's
//! [`tally_core::allocate`], re-exported under its old path.

pub use tally_core::allocate::*;
