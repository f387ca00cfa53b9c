//! The body limits of `POST /v1/events` that the contract states: at most
//! [`MAX_BATCH_EVENTS`] events in at most [`MAX_BODY_BYTES`] bytes.
//!
//! Ingest enforces them (`tally_ingest::body`) and every API's OpenAPI document states them
//! ([`crate::openapi`]); they live here so that both see the one value without the usage
//! API depending on ingest.

/// Largest request body accepted, in bytes (1 MiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Most events in one request.
pub const MAX_BATCH_EVENTS: usize = 1000;
