//! The HTTP seam this API shares with Tally's other APIs, in one place: the JSON error
//! type, API-key authentication, the request span and the OpenAPI helpers, all from
//! `tally-http`. Every other module of this crate takes them from here, so a change of
//! where they live is a change of this file alone.

pub use tally_http::auth::{KeyAuth, bearer_token, require_scope};
pub use tally_http::client::client_ip_of;
pub use tally_http::drain::drain_unread_body;
pub use tally_http::error::{ApiError, ErrorBody, PLAN_LIMIT_EXCEEDED};
pub use tally_http::rate::RateLimiter;
pub use tally_http::trace::trace_requests;

/// The query string of a route, deserialized, or the `400` (`invalid_query`, field `query`)
/// every route answers for one that does not fit its parameters.
pub fn query_params<T>(
    params: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    params.map(|axum::extract::Query(p)| p).map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            "query",
            format!("the query string is malformed: {}", e.body_text()),
        )
    })
}

/// The page size a `limit` query parameter (`raw`, as sent) asks for: `default` when it is
/// absent, else a whole number from 1 to `max`. `Err` carries the message every paged route
/// answers for any other value (`limit must be 1 to {max}`); the route picks the error code.
pub fn page_limit(raw: Option<&str>, default: usize, max: usize) -> Result<usize, String> {
    match raw {
        None => Ok(default),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| format!("limit must be 1 to {max}")),
    }
}

/// The OpenAPI pieces shared by every API's document.
pub mod openapi {
    pub use tally_http::openapi::{
        BuiltOnce, add_paths, add_schemas, add_security_schemes, document as service_document,
        error_responses, json_response, operation_responses, schema_ref,
    };
}
