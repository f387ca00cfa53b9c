//! The OpenAPI 3.1 document of the ingest API.
//!
//! The document itself (`POST /v1/events`, `GET /openapi.json`, the shared components and
//! the event schemas) lives in the HTTP seam, [`tally_http::openapi`], so that the usage
//! API can serve the whole service's document without depending on this crate; it is
//! re-exported here under its old paths. This module adds [`router`], which serves it for a
//! deployment of ingest alone (never merge it with `tally-api`'s router, which serves the
//! whole document at the same path: axum refuses a route twice).

use axum::Router;
use axum::routing::get;

pub use tally_http::openapi::*;

/// A router serving [`document`] at `GET /openapi.json`, for a deployment of ingest alone.
pub fn router() -> Router {
    Router::new().route("/openapi.json", get(|| async { axum::Json(document()) }))
}
