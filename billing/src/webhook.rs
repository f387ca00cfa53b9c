//! Stripe's invoice webhooks: `invoice.paid` and `invoice.payment_failed`, their
//! `Stripe-Signature` checked, the result recorded in the sync ledger beside the steps.
//!
//! Stripe signs `"<t>.<raw body>"` with HMAC-SHA256 under the endpoint's signing secret
//! and sends `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=…]` (several `v1` while a
//! secret is rolled). [`verify_signature`] accepts the request if any `v1` matches (in
//! constant time) and `t` is within the tolerance of now, which stops replays of an old,
//! validly signed request. HMAC is written out over `sha2` (a dozen lines) rather than
//! pulling a crate for it; it is checked against RFC 4231's vectors below.
//!
//! [`record_invoice_event`] finds the org and period from the invoice's
//! `metadata[tally_invoice]` (`<org>:<YYYY-MM>`, set by the adapter when it created the
//! invoice) and records the event as ledger step `webhook:<event type>` with the invoice id,
//! first write wins (Stripe delivers at least once). No I/O happens here: the HTTP route
//! hands in the header, the raw body and the time.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tally_core::ports::{StoreError, SyncLedger};
use tally_core::{Month, OrgId};

/// How far a signature's timestamp may be from now (Stripe's libraries use 5 minutes).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Largest webhook body accepted.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 256 * 1024;

/// Why a webhook was refused. Each variant says what the HTTP route answers.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The `Stripe-Signature` header is missing, malformed, stale or matches no `v1`
    /// signature. `400 Bad Request` (Stripe retries it; a real mismatch never passes).
    #[error("bad Stripe-Signature: {0}")]
    Signature(String),
    /// The body is not a Stripe event, is too big, or lacks the field named. `400`.
    #[error("bad webhook body: {0}")]
    Body(String),
    /// The ledger failed; `503`, so Stripe delivers the event again.
    #[error("sync ledger: {0}")]
    Ledger(#[from] StoreError),
}

/// HMAC-SHA256 (RFC 2104) over `sha2`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The header value Stripe would send for `body` at `t` (for tests and tools).
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    format!(
        "t={t},v1={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &msg))
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `Stripe-Signature` against the raw body.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<(), WebhookError> {
    let bad = |m: &str| WebhookError::Signature(m.to_owned());
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| bad("t is not a number"))?),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| bad("v1 is not hex"))?),
            _ => {}
        }
    }
    let t = t.ok_or_else(|| bad("no t="))?;
    if sigs.is_empty() {
        return Err(bad("no v1="));
    }
    if (now.timestamp() - t).abs() > tolerance_secs {
        return Err(bad("timestamp outside the tolerance"));
    }
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    let want = hmac_sha256(secret.as_bytes(), &msg);
    if sigs.iter().any(|s| constant_time_eq(s, &want)) {
        Ok(())
    } else {
        Err(bad("no signature matches"))
    }
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
        .record_step(&org, period, &format!("webhook:{}", event.kind), &invoice)
        .await?;
    Ok(WebhookOutcome::Recorded {
        org,
        period,
        kind: event.kind,
        invoice,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 and test case 6 (a key longer than a block).
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
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
