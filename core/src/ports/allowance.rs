//! [`AllowanceStore`]: fixed-window allowances that every process limiting the same thing
//! shares, so a limit holds across all of them and not per process.
//!
//! Ingest's token buckets and its hard-plan-limit estimate live in each process's memory;
//! on Lambda every warm instance is one more process, so a key's rate and an org's monthly
//! allowance would be multiplied by the number of instances. An allowance store keeps, per
//! (scope, window), how many units all processes have **taken** so far, and hands units out
//! atomically under a cap: the total taken never passes the cap, whoever asks. Callers take
//! units in blocks and spend them locally (`tally_ingest::shared` says how, and what it
//! costs), so the store sees one write per block rather than one per request.
//!
//! It is a storage port like the others: DynamoDB implements it with one conditional
//! `UpdateItem` per call (`tally_store::dynamodb`), the in-memory store under its lock. The
//! SQLite store does not: `tally serve` is one process, whose own buckets are already exact,
//! so it runs without one.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::StoreError;

/// Longest [`AllowanceWindow::scope`], in bytes.
pub const MAX_ALLOWANCE_SCOPE_BYTES: usize = 256;
/// Longest [`AllowanceWindow::window`], in bytes.
pub const MAX_ALLOWANCE_WINDOW_BYTES: usize = 64;

/// One window of one limited thing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AllowanceWindow {
    /// What is limited, e.g. `RATE#<api key id>` or `PLAN#<org>#<meter>`: 1 to
    /// [`MAX_ALLOWANCE_SCOPE_BYTES`] bytes, no control characters.
    pub scope: String,
    /// Which window of it, e.g. its start in Unix seconds or a month `2026-11`: 1 to
    /// [`MAX_ALLOWANCE_WINDOW_BYTES`] bytes, no control characters.
    pub window: String,
    /// When the window is over: after it, nobody asks for it again and a store may forget
    /// it (DynamoDB's TTL; the memory store prunes by it).
    pub expires_at: DateTime<Utc>,
}

/// What one [`AllowanceStore::take_allowance`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Units handed to the caller: at most what it asked for, zero once the window's cap is
    /// taken.
    pub granted: Decimal,
    /// Writes the call cost the store (each a conditional write of one small item; on
    /// DynamoDB 1 WCU each, a failed condition included). For measuring the write cost.
    pub writes: u32,
}

/// Shared fixed-window allowances. See the [module docs](self).
#[async_trait]
pub trait AllowanceStore: Send + Sync {
    /// Takes up to `want` units of `window`'s `cap`, atomically with every other caller of
    /// every process: grants `min(want, cap − taken so far)`, or zero once the cap is
    /// taken, and counts the grant as taken. A window nobody took from starts at zero.
    /// `now` is the caller's clock (windows expired at `now` may be forgotten).
    ///
    /// `want` must be above zero and `cap` not negative, the window's strings within their
    /// bounds: otherwise [`StoreError::Corrupt`] (a caller's bug, `500`), naming the field.
    async fn take_allowance(&self, req: &AllowanceRequest<'_>) -> Result<Grant, StoreError>;
}

/// One [`AllowanceStore::take_allowance`] call: take up to `want` units of `window`'s `cap`.
#[derive(Debug, Clone, Copy)]
pub struct AllowanceRequest<'a> {
    /// The window taken from.
    pub window: &'a AllowanceWindow,
    /// The most all callers together may take from it (not negative).
    pub cap: Decimal,
    /// How many units this caller asks for (above zero).
    pub want: Decimal,
    /// The caller's clock (windows expired at `now` may be forgotten).
    pub now: DateTime<Utc>,
}

impl<'a> AllowanceRequest<'a> {
    /// Up to `want` units of `window`'s `cap`, asked at `now`.
    #[must_use]
    pub const fn new(
        window: &'a AllowanceWindow,
        cap: Decimal,
        want: Decimal,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            window,
            cap,
            want,
            now,
        }
    }
}

/// Checks a [`AllowanceStore::take_allowance`] request's bounds, as every store does before
/// it writes.
pub fn check_allowance_request(
    window: &AllowanceWindow,
    cap: Decimal,
    want: Decimal,
) -> Result<(), StoreError> {
    let text = |field: &str, value: &str, max: usize| {
        if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
            Err(StoreError::Corrupt(format!(
                "allowance {field} must be 1 to {max} bytes without control characters"
            )))
        } else {
            Ok(())
        }
    };
    text("scope", &window.scope, MAX_ALLOWANCE_SCOPE_BYTES)?;
    text("window", &window.window, MAX_ALLOWANCE_WINDOW_BYTES)?;
    if want <= Decimal::ZERO {
        return Err(StoreError::Corrupt(format!(
            "allowance want must be above zero, not {want}"
        )));
    }
    if cap < Decimal::ZERO {
        return Err(StoreError::Corrupt(format!(
            "allowance cap must not be negative, not {cap}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(scope: &str, window: &str) -> AllowanceWindow {
        AllowanceWindow {
            scope: scope.to_owned(),
            window: window.to_owned(),
            expires_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn requests_out_of_bounds_are_refused_naming_the_field() {
        let ok = window("RATE#k", "1");
        assert!(check_allowance_request(&ok, Decimal::TEN, Decimal::ONE).is_ok());
        let cases = [
            (window("", "1"), Decimal::TEN, Decimal::ONE, "scope"),
            (
                window(&"x".repeat(257), "1"),
                Decimal::TEN,
                Decimal::ONE,
                "scope",
            ),
            (
                window("RATE#k", "a\nb"),
                Decimal::TEN,
                Decimal::ONE,
                "window",
            ),
            (ok.clone(), Decimal::TEN, Decimal::ZERO, "want"),
            (ok.clone(), Decimal::NEGATIVE_ONE, Decimal::ONE, "cap"),
        ];
        for (w, cap, want, field) in cases {
            let e = check_allowance_request(&w, cap, want).unwrap_err();
            assert!(e.to_string().contains(field), "{e} should name {field}");
        }
    }
}
