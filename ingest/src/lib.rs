//! Tally's ingest API: `POST /v1/events`, written against the ports of `tally-core` only,
//! so it runs unchanged on SQLite and the local queue or on DynamoDB and SQS/Kinesis.
//!
//! [`router`] builds the axum [`Router`]; the composition root serves it with `axum::serve`
//! locally or `lambda_http` on AWS, and tests drive it with `tower::ServiceExt::oneshot`.
//!
//! Modules other APIs reuse: [`auth`] (API-key authentication and scope checks, as an
//! extractor or as functions), [`error`] (the one JSON error type, [`error::ApiError`]) and
//! [`trace`] (a request span with a request id). [`body`] splits request bodies without
//! ever turning quantities into floats; [`events`] is the route itself.

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::routing::post;
use tally_core::meter::MeterCatalogue;
use tally_core::ports::{Clock, EventQueue, TenantStore, UsageStore};

pub mod auth;
pub mod body;
pub mod error;
pub mod events;
pub mod trace;

pub use auth::{KeyAuth, ScopedKey};
pub use error::{ApiError, ErrorBody};
pub use events::{IngestResponse, Rejection};

/// Everything the ingest route needs, as ports. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct IngestState {
    /// Finds API keys (auth) and projects (an event's project must be of the key's org).
    pub tenants: Arc<dyn TenantStore>,
    /// Says whether an event's month has been closed by billing.
    pub usage: Arc<dyn UsageStore>,
    /// Where accepted events go, for the aggregator.
    pub queue: Arc<dyn EventQueue>,
    /// The meters events may name.
    pub catalogue: Arc<MeterCatalogue>,
    /// The server's time: key expiry and the "not in the future" rule.
    pub clock: Arc<dyn Clock>,
}

impl IngestState {
    /// Bundles the ports.
    pub fn new(
        tenants: Arc<dyn TenantStore>,
        usage: Arc<dyn UsageStore>,
        queue: Arc<dyn EventQueue>,
        catalogue: Arc<MeterCatalogue>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        IngestState {
            tenants,
            usage,
            queue,
            catalogue,
            clock,
        }
    }
}

impl fmt::Debug for IngestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestState")
            .field("catalogue", &self.catalogue.names())
            .finish_non_exhaustive()
    }
}

impl FromRef<IngestState> for KeyAuth {
    fn from_ref(state: &IngestState) -> Self {
        KeyAuth::new(state.tenants.clone(), state.clock.clone())
    }
}

/// The ingest API: `POST /v1/events` (see [`events`]), with the 1 MiB body limit and the
/// request span of [`trace`].
pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/events", post(events::post_events))
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(trace::trace_requests))
        .with_state(state)
}

#[cfg(test)]
mod tests;
