//! Tally's usage and management API, written against the ports of `tally-core` only.
//!
//! Today it serves `GET /v1/usage` (see [`usage`]) and `GET /openapi.json`, the OpenAPI 3.1
//! document of every Tally route, ingest's included (see [`openapi`]); the management
//! routes (orgs, projects, keys, audit) join [`router`] in later issues. Callers are identified by [`auth::Caller`]:
//! API keys now, JWT bearer tokens of users later, behind the same extractor. Errors are the
//! shared JSON [`ApiError`] of `tally-ingest`, so every Tally API refuses alike.

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use tally_core::meter::MeterCatalogue;
use tally_core::ports::{Clock, TenantStore, UsageStore};
use tally_ingest::auth::KeyAuth;

pub mod auth;
pub mod openapi;
pub mod usage;

/// Every route [`router`] serves, as (method, path), for the OpenAPI check.
pub const ROUTES: &[(&str, &str)] = &[("GET", "/v1/usage"), ("GET", "/openapi.json")];

pub use tally_ingest::error::{ApiError, ErrorBody};
pub use usage::{SeriesPoint, UsageResponse};

/// Everything the API needs, as ports. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct ApiState {
    /// Orgs, projects and API keys.
    pub tenants: Arc<dyn TenantStore>,
    /// The counters usage is read from.
    pub usage: Arc<dyn UsageStore>,
    /// The meters that can be asked about.
    pub catalogue: Arc<MeterCatalogue>,
    /// The server's time: key expiry and the default range ("this month so far").
    pub clock: Arc<dyn Clock>,
}

impl ApiState {
    /// Bundles the ports.
    pub fn new(
        tenants: Arc<dyn TenantStore>,
        usage: Arc<dyn UsageStore>,
        catalogue: Arc<MeterCatalogue>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ApiState {
            tenants,
            usage,
            catalogue,
            clock,
        }
    }
}

impl fmt::Debug for ApiState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiState")
            .field("catalogue", &self.catalogue.names())
            .finish_non_exhaustive()
    }
}

impl FromRef<ApiState> for KeyAuth {
    fn from_ref(state: &ApiState) -> Self {
        KeyAuth::new(state.tenants.clone(), state.clock.clone())
    }
}

/// The API's routes: `GET /v1/usage` and `GET /openapi.json`, inside the request span of
/// [`tally_ingest::trace`].
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/usage", get(usage::get_usage))
        .route("/openapi.json", get(openapi::serve))
        .layer(axum::middleware::from_fn(
            tally_ingest::trace::trace_requests,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests;
