//! Signed webhooks: HMAC-SHA256 over `"<t>.<raw body>"`, sent as `t=<unix seconds>,v1=<hex>`.
//!
//! One scheme both ways: Stripe signs the invoice webhooks Tally receives this way, and
//! Tally signs the plan-limit alerts it sends the same way, so receivers can reuse a Stripe
//! verifier. It lives in core because it is pure (no I/O) and both the billing capability
//! (checking) and the outgoing webhook adapter (signing) need it; neither should depend on
//! the other for it. HMAC is written out over `sha2` (a dozen lines) rather than pulling a
//! crate for it; it is checked against RFC 4231's vectors below.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Why a signature header was refused: missing parts, a stale `t`, or no `v1` matching.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SignatureError(pub String);

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

/// The signature header value for `body` at `t` (unix seconds): `t=<t>,v1=<hex HMAC>`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    format!(
        "t={t},v1={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &msg))
    )
}

/// Compares without an early exit, so timing does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a signature header against the raw body: accepted if any `v1` matches (several
/// while a secret is rolled) and `t` is within `tolerance_secs` of `now`, which stops
/// replays of an old, validly signed request.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let bad = |m: &str| SignatureError(m.to_owned());
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
    fn a_signature_verifies_until_it_is_stale_or_altered() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let header = sign("whsec_x", now.timestamp(), b"{}");
        assert_eq!(verify("whsec_x", &header, b"{}", now, 300), Ok(()));
        assert!(verify("whsec_y", &header, b"{}", now, 300).is_err());
        assert!(verify("whsec_x", &header, b"{ }", now, 300).is_err());
        let later = now + chrono::Duration::seconds(301);
        assert!(verify("whsec_x", &header, b"{}", later, 300).is_err());
        assert!(verify("whsec_x", "v1=00", b"{}", now, 300).is_err());
    }
}
