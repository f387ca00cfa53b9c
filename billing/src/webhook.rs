//! Stripe's invoice webhooks: `invoice.paid` and `invoice.payment_failed`, their
//! `Stripe-Signature` checked, the result recorded in the sync ledger beside the steps.
//!
//! Stripe signs `"<t>.<raw body>"` with HMAC-SHA256 under the endpoint's signing secret
//! and sends `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=…]` (several `v1` while a
//! secret is rolled). [`verify_signature`] accepts the request if any `v1` matches (in
//! constant time) and `t` is within the tolerance of now, which stops replays of an old,
//! validly signed request. The HMAC and the check are [`tally_core::signature`]'s (Tally's
//! own alert webhooks are signed the same way); the RFC 4231 vectors are checked below too.
//!
//! [`record_invoice_event`] finds the org and period from the invoice's
//! `metadata[tally_invoice]` (`<org>:<YYYY-MM>`, set by the adapter when it created the
//! invoice) and records the event as ledger step `webhook:<event type>` with the invoice id,
//! first write wins (Stripe delivers at least once). No I/O happens there: the HTTP route
//! hands in the header, the raw body and the time.
//!
//! [`router`] is that HTTP route, `POST /v1/stripe/webhook`, as one axum `Router` that
//! `tally serve` merges into its app and the webhook Lambda serves on `lambda_http`. It
//! answers `200` for a recorded event and for one it ignores (other event types, invoices
//! Tally did not create: Stripe stops resending), `400` for a bad signature (missing,
//! malformed, stale beyond [`DEFAULT_TOLERANCE_SECS`], or not matching) or a bad body,
//! `413` for a body over [`MAX_WEBHOOK_BODY_BYTES`], and `503` when the ledger fails (Stripe
//! delivers again) or no signing secret is configured (so a misconfigured deployment is
//! loud rather than silently dropping events). Refusals are the shared [`ApiError`] of
//! `tally-http`, so they have the `{"error": {"code", "message", "field"}}` shape of every
//! Tally API: codes `bad_signature` (field `Stripe-Signature`), `invalid_body`,
//! `payload_too_large`, `stripe_webhook_not_configured` and `unavailable` (with
//! `Retry-After: 5`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_LENGTH;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use tally_core::ports::{Clock, StepKey, StoreError, SyncLedger};
use tally_core::{Month, OrgId};
use tally_http::ApiError;

/// How far a signature's timestamp may be from now (Stripe's libraries use 5 minutes).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Largest webhook body accepted.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 256 * 1024;

/// Why a webhook was refused. Each variant says what the HTTP route answers (as the shared
/// [`ApiError`] it converts into).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The `Stripe-Signature` header is missing, malformed, stale or matches no `v1`
    /// signature. `400 Bad Request`, code `bad_signature`, field `Stripe-Signature` (Stripe
    /// retries it; a real mismatch never passes).
    #[error("bad Stripe-Signature: {0}")]
    Signature(String),
    /// The body is not a Stripe event, is too big, or lacks the field named. `400 Bad
    /// Request`, code `invalid_body`, field `body`.
    #[error("bad webhook body: {0}")]
    Body(String),
    /// The ledger failed: `503 Service Unavailable`, code `unavailable`, with
    /// `Retry-After: 5`, so Stripe delivers the event again. The detail is logged, not shown.
    #[error("sync ledger: {0}")]
    Ledger(#[from] StoreError),
}

/// The HMAC and the header signing live in core (the alert webhook sender signs the same
/// way); re-exported here, where the Stripe check has always offered them.
pub use tally_core::signature::{hmac_sha256, sign};

/// Checks `Stripe-Signature` against the raw body ([`tally_core::signature::verify`]).
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<(), WebhookError> {
    tally_core::signature::verify(secret, header, body, now, tolerance_secs)
        .map_err(|e| WebhookError::Signature(e.0))
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: InvoiceObject,
}

#[derive(Deserialize)]
struct InvoiceObject {
    id: String,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

/// What a verified webhook did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Recorded (or already recorded) as ledger step `webhook:<kind>` of the org's period.
    Recorded {
        /// The org.
        org: OrgId,
        /// The invoiced month.
        period: Month,
        /// `invoice.paid` or `invoice.payment_failed`.
        kind: String,
        /// The invoice.
        invoice: String,
    },
    /// Another event type, or an invoice Tally did not create: acknowledged, nothing kept.
    Ignored,
}

/// Verifies a webhook and records an `invoice.paid` / `invoice.payment_failed` event.
pub async fn record_invoice_event(
    ledger: &dyn SyncLedger,
    secret: &str,
    signature: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<WebhookOutcome, WebhookError> {
    if body.len() > MAX_WEBHOOK_BODY_BYTES {
        return Err(WebhookError::Body(format!(
            "body of {} bytes exceeds {MAX_WEBHOOK_BODY_BYTES}",
            body.len()
        )));
    }
    verify_signature(secret, signature, body, now, DEFAULT_TOLERANCE_SECS)?;
    let event: Event =
        serde_json::from_slice(body).map_err(|e| WebhookError::Body(e.to_string()))?;
    if event.kind != "invoice.paid" && event.kind != "invoice.payment_failed" {
        return Ok(WebhookOutcome::Ignored);
    }
    let Some((org, period)) = event
        .data
        .object
        .metadata
        .get("tally_invoice")
        .and_then(|v| v.split_once(':'))
    else {
        return Ok(WebhookOutcome::Ignored);
    };
    let org = OrgId::parse(org)
        .map_err(|e| WebhookError::Body(format!("metadata.tally_invoice org: {e}")))?;
    let period = Month::parse(period)
        .map_err(|e| WebhookError::Body(format!("metadata.tally_invoice period: {e}")))?;
    let invoice = event.data.object.id;
    ledger
        .record_step(
            &StepKey::new(&org, period, &format!("webhook:{}", event.kind)),
            &invoice,
        )
        .await?;
    Ok(WebhookOutcome::Recorded {
        org,
        period,
        kind: event.kind,
        invoice,
    })
}

/// The route's path.
pub const WEBHOOK_PATH: &str = "/v1/stripe/webhook";

/// What the webhook route needs.
#[derive(Clone)]
pub struct WebhookState {
    /// Where events are recorded.
    pub ledger: Arc<dyn SyncLedger>,
    /// The endpoint's signing secret (`whsec_…`); `None` answers every request `503`.
    pub secret: Option<Arc<str>>,
    /// Now, for the signature's tolerance.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("WebhookState")
            .field("configured", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// `POST /v1/stripe/webhook` (see the [module doc](self)).
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(handle))
        // The body is read with its own limit below, which answers in Tally's error shape.
        .layer(DefaultBodyLimit::disable())
        // A 413 or a refused signature answered before the body is read still reaches a
        // client that is sending it.
        .layer(axum::middleware::from_fn(tally_http::drain_unread_body))
        .with_state(state)
}

/// What the route answers for a webhook it refuses.
impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Signature(_) => {
                ApiError::bad_request("bad_signature", "Stripe-Signature", e.to_string())
            }
            WebhookError::Body(_) => ApiError::bad_request("invalid_body", "body", e.to_string()),
            WebhookError::Ledger(detail) => {
                // The answer stays generic; the store's detail is for the operator.
                tracing::warn!(error = %detail, "cannot record a Stripe webhook event");
                ApiError::UnavailableBecause {
                    code: "unavailable",
                    message: "the event could not be recorded right now; Stripe delivers it again"
                        .into(),
                    retry_after_secs: Some(5),
                }
            }
        }
    }
}

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge {
        limit: MAX_WEBHOOK_BODY_BYTES,
    }
}

async fn handle(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let Some(secret) = state.secret.as_deref() else {
        return Err(ApiError::UnavailableBecause {
            code: "stripe_webhook_not_configured",
            message: "Stripe webhooks are not configured here: set TALLY_STRIPE_WEBHOOK_SECRET to the endpoint's signing secret (whsec_...), or on AWS deploy with the StripeSecretName parameter".into(),
            retry_after_secs: None,
        });
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_WEBHOOK_BODY_BYTES as u64) {
        return Err(too_large());
    }
    // The only way reading a body under a limit fails on a healthy connection is the limit.
    let Ok(body) = axum::body::to_bytes(body, MAX_WEBHOOK_BODY_BYTES).await else {
        return Err(too_large());
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_signature",
                "Stripe-Signature",
                "the Stripe-Signature header is missing",
            )
        })?;
    let outcome = record_invoice_event(
        state.ledger.as_ref(),
        secret,
        signature,
        &body,
        state.clock.now(),
    )
    .await?;
    Ok(Json(match outcome {
        WebhookOutcome::Recorded {
            org,
            period,
            kind,
            invoice,
        } => serde_json::json!({
            "received": true,
            "recorded": {"org_id": org.as_str(), "period": period.to_string(), "type": kind, "invoice": invoice},
        }),
        WebhookOutcome::Ignored => serde_json::json!({"received": true, "ignored": true}),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refusals_keep_their_codes_statuses_and_retry_after() {
        use axum::http::StatusCode;
        let e = ApiError::from(WebhookError::Ledger(StoreError::Unavailable(
            "sqlite at /srv/tally".into(),
        )));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after(), Some(5));
        let body = e.body();
        assert_eq!(body.code, "unavailable");
        assert!(!body.message.contains("/srv/tally"), "{body:?}");
        let e = ApiError::from(WebhookError::Signature("no v1=".into()));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let body = e.body();
        assert_eq!(
            (body.code.as_str(), body.field.as_deref()),
            ("bad_signature", Some("Stripe-Signature"))
        );
        let body = ApiError::from(WebhookError::Body("not json".into())).body();
        assert_eq!(
            (body.code.as_str(), body.field.as_deref()),
            ("invalid_body", Some("body"))
        );
    }

    #[test]
    fn signatures_are_checked_with_a_tolerance() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let body = br#"{"type":"invoice.paid"}"#;
        let header = sign("whsec_x", now.timestamp() - 10, body);
        verify_signature("whsec_x", &header, body, now, 300).unwrap();
        // A rolled secret: any v1 may match.
        let two = format!("{header},v1={}", "00".repeat(32));
        verify_signature("whsec_x", &two, body, now, 300).unwrap();
        for (secret, header, body) in [
            ("whsec_y", header.as_str(), &body[..]),
            ("whsec_x", header.as_str(), b"{}"),
            ("whsec_x", "v1=00", &body[..]),
            ("whsec_x", "t=1800000000", &body[..]),
        ] {
            assert!(
                verify_signature(secret, header, body, now, 300).is_err(),
                "{header}"
            );
        }
        let stale = sign("whsec_x", now.timestamp() - 301, body);
        assert!(verify_signature("whsec_x", &stale, body, now, 300).is_err());
    }
}
