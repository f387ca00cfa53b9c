//! The JSON error every Tally HTTP API answers with.
//!
//! Every refusal is `{"error": {"code": "snake_case", "message": "human sentence", "field":
//! "optional.path"}}` with a fitting status. A hard plan limit adds `meter`, `period`,
//! `limit` and `usage` to the error object ([`LimitDetails`]). `429` and `503` answers carry
//! `Retry-After` (seconds). [`ApiError`] is the one type handlers return for
//! whole-request failures; each variant's doc states its HTTP status. Per-event rejections
//! inside a `202` use [`ErrorBody`] directly. Storage and queue failures are logged in full
//! but answered with a generic sentence, so backend details never reach a client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tally_core::ports::{QueueError, StoreError};

/// The inside of an error answer: what went wrong, for machines and for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable reason in snake_case (`invalid_body`, `unknown_project`, ...).
    pub code: String,
    /// A human sentence saying what is wrong and, where possible, how to fix it.
    pub message: String,
    /// The offending field (`events`, `body`, `timestamp`, ...), when one field is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `plan_limit_exceeded`: which allowance, and how much of it is used.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitDetails>,
}

/// What a `plan_limit_exceeded` error adds to the error object. Quantities are decimal
/// strings, like every quantity Tally answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitDetails {
    /// The meter whose monthly allowance is used up.
    pub meter: String,
    /// The month (`YYYY-MM`) the allowance is for.
    pub period: String,
    /// The plan's allowance for the meter in that month.
    pub limit: String,
    /// The org's usage of the meter in that month, as ingest knows it (see the enforcement
    /// lag in the crate docs).
    pub usage: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(
        code: impl Into<String>,
        message: impl Into<String>,
        field: Option<impl Into<String>>,
    ) -> Self {
        ErrorBody {
            code: code.into(),
            message: message.into(),
            field: field.map(Into::into),
            limit: None,
        }
    }
}

/// Code of a refusal by a hard plan limit (a `429`, or a per-event rejection).
pub const PLAN_LIMIT_EXCEEDED: &str = "plan_limit_exceeded";

/// The envelope: `{"error": {...}}`.
#[derive(Debug, Serialize)]
struct Envelope<'a> {
    error: &'a ErrorBody,
}

/// A whole-request failure. Each variant documents the status it answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// `400 Bad Request`: the request is malformed (body, query, path); `field` names the
    /// part to fix (`body`, `events`, `meter`, `from`, ...).
    #[error("{message}")]
    BadRequest {
        /// Machine-readable reason, snake_case.
        code: &'static str,
        /// Human sentence.
        message: String,
        /// The offending field, if one is to blame.
        field: Option<String>,
    },
    /// `401 Unauthorized` (with `WWW-Authenticate: Bearer`): no credentials, or credentials
    /// that are unknown, revoked or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// `403 Forbidden`: valid credentials that lack the permission (a key without the
    /// route's scope).
    #[error("{0}")]
    Forbidden(String),
    /// `403 Forbidden` with a code of its own, its message shown as written: `csrf` (a
    /// cookie-authenticated mutation without the page's CSRF header or from another origin),
    /// or the org's security policy refusing a caller who is who they say (`mfa_required`:
    /// the token shows no second factor; `ip_not_allowed`: the client address is outside the
    /// org's allowlist).
    #[error("{message}")]
    ForbiddenBecause {
        /// Machine-readable reason, snake_case.
        code: &'static str,
        /// Human sentence saying what to do.
        message: String,
    },
    /// `404 Not Found`: the resource does not exist or belongs to another org (the two are
    /// indistinguishable on purpose, so nothing leaks across tenants).
    #[error("{message}")]
    NotFound {
        /// Human sentence.
        message: String,
        /// The parameter that named the missing resource (`project_id`, `org_id`, ...).
        field: Option<String>,
    },
    /// `409 Conflict`: a unique value is taken.
    #[error("{0}")]
    Conflict(String),
    /// `409 Conflict` with a code and field of its own: the change is well formed but would
    /// leave things in a state the server refuses (`would_lock_out`: an IP allowlist that
    /// excludes the caller's own address).
    #[error("{message}")]
    ConflictBecause {
        /// Machine-readable reason, snake_case.
        code: &'static str,
        /// Human sentence saying what to change.
        message: String,
        /// The field to change.
        field: &'static str,
    },
    /// `413 Payload Too Large`: the body is larger than `limit` bytes.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The largest body accepted, in bytes.
        limit: usize,
    },
    /// `429 Too Many Requests` (with `Retry-After`), code `rate_limited`: the key's token
    /// bucket is empty.
    #[error("{message}")]
    RateLimited {
        /// Human sentence naming the limit.
        message: String,
        /// Seconds until the request would be admitted (rounded up, at least 1).
        retry_after_secs: u64,
    },
    /// `429 Too Many Requests` (with `Retry-After` until the next month), code
    /// `plan_limit_exceeded`: every event of the request was refused by a hard plan limit.
    #[error("{message}")]
    PlanLimitExceeded {
        /// Human sentence.
        message: String,
        /// The allowance and the usage (of the first refused event's meter).
        details: Box<LimitDetails>,
        /// Seconds until the next month starts.
        retry_after_secs: u64,
    },
    /// `503 Service Unavailable` (with `Retry-After: 1`): storage or the queue could not be
    /// reached; retrying later may help. The detail is logged, not shown.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// `503 Service Unavailable` with a code and sentence of the route's own, shown as
    /// written (so they must hold no backend detail), and `Retry-After` when
    /// `retry_after_secs` is set: a route that cannot serve for a reason its caller or
    /// operator can act on (the Stripe webhook without a signing secret; its ledger down,
    /// so Stripe delivers again).
    #[error("{message}")]
    UnavailableBecause {
        /// Machine-readable reason, snake_case.
        code: &'static str,
        /// Human sentence saying what to do.
        message: String,
        /// Seconds to wait before retrying, if the caller should.
        retry_after_secs: Option<u64>,
    },
    /// `500 Internal Server Error`: a bug or corrupt data. The detail is logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A `400` with a code, a message and the field to blame.
    pub fn bad_request(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// A `404` naming the parameter that pointed at nothing.
    pub fn not_found(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::NotFound {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::ForbiddenBecause { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::ConflictBecause { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } | ApiError::PlanLimitExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_) | ApiError::UnavailableBecause { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `Retry-After` seconds this error answers with, if any: the wait for `429`s, 1
    /// for [`ApiError::Unavailable`], the route's own for [`ApiError::UnavailableBecause`].
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited {
                retry_after_secs, ..
            }
            | ApiError::PlanLimitExceeded {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::Unavailable(_) => Some(1),
            ApiError::UnavailableBecause {
                retry_after_secs, ..
            } => *retry_after_secs,
            _ => None,
        }
    }

    /// The body a client sees. Server-side details (`Unavailable`, `Internal`) are replaced
    /// by a generic sentence.
    pub fn body(&self) -> ErrorBody {
        let none = None::<String>;
        match self {
            ApiError::BadRequest {
                code,
                message,
                field,
            } => ErrorBody::new(*code, message.clone(), field.clone()),
            ApiError::Unauthorized(m) => ErrorBody::new("unauthorized", m.clone(), none),
            ApiError::Forbidden(m) => ErrorBody::new("forbidden", m.clone(), none),
            ApiError::ForbiddenBecause { code, message } => {
                ErrorBody::new(*code, message.clone(), none)
            }
            ApiError::NotFound { message, field } => {
                ErrorBody::new("not_found", message.clone(), field.clone())
            }
            ApiError::Conflict(m) => ErrorBody::new("conflict", m.clone(), none),
            ApiError::ConflictBecause {
                code,
                message,
                field,
            } => ErrorBody::new(*code, message.clone(), Some(*field)),
            ApiError::PayloadTooLarge { limit } => ErrorBody::new(
                "payload_too_large",
                format!("the request body must be at most {limit} bytes; send smaller batches"),
                Some("body"),
            ),
            ApiError::RateLimited { message, .. } => {
                ErrorBody::new("rate_limited", message.clone(), none)
            }
            ApiError::PlanLimitExceeded {
                message, details, ..
            } => ErrorBody {
                limit: Some((**details).clone()),
                ..ErrorBody::new(PLAN_LIMIT_EXCEEDED, message.clone(), Some("meter"))
            },
            ApiError::Unavailable(_) => ErrorBody::new(
                "service_unavailable",
                "the service is temporarily unavailable; retry later",
                none,
            ),
            ApiError::UnavailableBecause { code, message, .. } => {
                ErrorBody::new(*code, message.clone(), none)
            }
            ApiError::Internal(_) => ErrorBody::new(
                "internal_error",
                "something went wrong on our side; it has been logged",
                none,
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Unavailable(detail) => tracing::warn!(%detail, "answering 503"),
            ApiError::Internal(detail) => tracing::error!(%detail, "answering 500"),
            _ => tracing::debug!(status = status.as_u16(), error = %self, "request refused"),
        }
        let body = self.body();
        let mut response = (status, Json(Envelope { error: &body })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    /// As [`StoreError`]'s docs say: `Conflict` 409, `NotFound` 404, `Unavailable` 503,
    /// `Corrupt` 500.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { what } => ApiError::Conflict(format!("{what} already exists")),
            StoreError::NotFound { what } => ApiError::NotFound {
                message: format!("{what} not found"),
                field: None,
            },
            StoreError::Unavailable(m) => ApiError::Unavailable(format!("storage: {m}")),
            StoreError::Corrupt(m) => ApiError::Internal(format!("corrupt stored data: {m}")),
        }
    }
}

impl From<QueueError> for ApiError {
    /// `Unavailable` is a 503 (retry later); `Malformed` a 500.
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Unavailable(m) => ApiError::Unavailable(format!("queue: {m}")),
            QueueError::Malformed(m) => ApiError::Internal(format!("queue: {m}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn json_of(e: ApiError) -> (StatusCode, serde_json::Value, Option<HeaderValue>) {
        let r = e.into_response();
        let status = r.status();
        let auth = r.headers().get(header::WWW_AUTHENTICATE).cloned();
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap(), auth)
    }

    #[tokio::test]
    async fn errors_have_the_contract_shape() {
        let (s, v, _) = json_of(ApiError::bad_request("invalid_body", "events", "nope")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "invalid_body", "message": "nope", "field": "events"}})
        );
        let (s, v, auth) = json_of(ApiError::Unauthorized("no key".into())).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(v["error"]["code"], "unauthorized");
        assert!(v["error"].get("field").is_none());
        assert_eq!(auth.unwrap(), "Bearer");
    }

    #[tokio::test]
    async fn store_errors_map_to_their_documented_status_without_leaking_detail() {
        let (s, v, _) = json_of(StoreError::Unavailable("dynamo at 10.0.0.1".into()).into()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!v.to_string().contains("10.0.0.1"));
        let (s, _, _) = json_of(StoreError::Corrupt("x".into()).into()).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        let (s, _, _) = json_of(StoreError::NotFound { what: "x".into() }.into()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _, _) = json_of(StoreError::Conflict { what: "x".into() }.into()).await;
        assert_eq!(s, StatusCode::CONFLICT);
        let (s, _, _) = json_of(QueueError::Unavailable("x".into()).into()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn limits_are_429_with_retry_after_and_details() {
        let r = ApiError::RateLimited {
            message: "slow down".into(),
            retry_after_secs: 3,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let details = LimitDetails {
            meter: "api_calls".into(),
            period: "2026-11".into(),
            limit: "10000".into(),
            usage: "10000".into(),
        };
        let (s, v, _) = json_of(ApiError::PlanLimitExceeded {
            message: "used up".into(),
            details: Box::new(details.clone()),
            retry_after_secs: 60,
        })
        .await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "plan_limit_exceeded", "message": "used up",
                "field": "meter", "meter": "api_calls", "period": "2026-11",
                "limit": "10000", "usage": "10000"}})
        );
        let back: ErrorBody = serde_json::from_value(v["error"].clone()).unwrap();
        assert_eq!(back.limit, Some(details));
        let plain: ErrorBody =
            serde_json::from_value(serde_json::json!({"code": "x", "message": "y"})).unwrap();
        assert_eq!(plain.limit, None);
        let r = ApiError::Unavailable("x".into()).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[tokio::test]
    async fn a_route_s_own_503_shows_its_code_and_sentence() {
        let e = ApiError::UnavailableBecause {
            code: "not_configured",
            message: "set X".into(),
            retry_after_secs: None,
        };
        let r = e.clone().into_response();
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        let (s, v, _) = json_of(e).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "not_configured", "message": "set X"}})
        );
        let r = ApiError::UnavailableBecause {
            code: "unavailable",
            message: "later".into(),
            retry_after_secs: Some(5),
        }
        .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
    }
}
