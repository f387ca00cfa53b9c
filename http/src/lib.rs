//! Tally's HTTP seam: what every Tally API (ingest, the usage and management API, billing's
//! Stripe webhook) shares at its HTTP edge, so they refuse, authenticate and trace alike.
//!
//! - [`error`]: the one JSON error, [`ApiError`] (each variant documents its status) and
//!   its body [`ErrorBody`], `{"error": {"code", "message", "field"}}`.
//! - [`auth`]: API-key authentication ([`KeyAuth`], the [`ScopedKey`] extractor,
//!   [`auth::bearer_token`], [`auth::require_scope`]), through the key cache of [`keys`]
//!   ([`KeyCache`]: 10 s for a found key, 2 s for an unknown hash, last-used times flushed
//!   in bulk), built on the bounded TTL map of [`cache`].
//! - [`trace`]: one request span with a request id, echoed in `x-request-id` (and in 5xx
//!   error bodies).
//! - [`drain`]: [`drain_unread_body`], the middleware that reads and discards (within
//!   bounds) a body left unread by an early answer (`401`, `413`, `429`, ...), so a client
//!   still sending it is not reset before it reads the answer.
//! - [`rate`]: token buckets per key, ingest's per-API-key limit and the management API's
//!   per-user limit.
//! - [`openapi`]: the shared part of the OpenAPI document (`POST /v1/events`, the error
//!   object, the security scheme) and the helpers each API adds its routes with; [`events`]
//!   holds the body limits of `POST /v1/events` the document states and ingest enforces.
//!
//! - [`live`]: the catalogue a running process serves by ([`LiveCatalogue`]), swapped
//!   whole when a new catalogue version comes into force.
//!
//! It depends on `tally-core` and the HTTP stack only, never on an adapter, so every API
//! that uses it still runs on every backend.

pub mod auth;
pub mod cache;
pub mod client;
pub mod drain;
pub mod error;
pub mod events;
pub mod keys;
pub mod live;
pub mod openapi;
pub mod rate;
pub mod trace;

pub use auth::{KeyAuth, ScopedKey};
pub use drain::drain_unread_body;
pub use error::{ApiError, ErrorBody, LimitDetails};
pub use keys::{KeyCache, KeyCacheConfig};
pub use live::{InForce, Live, LiveCatalogue};
