//! Cross-crate and end-to-end tests for Tally live in `tests/tests/`; this library holds
//! the helpers they share.
