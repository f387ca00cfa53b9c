//! Money in `rust_decimal`, never floats.
//!
//! Amounts keep full precision through every step; an invoice line is rounded exactly once,
//! to the currency's minor unit, half away from zero.

use std::fmt;
use std::ops::{Add, Mul};

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// An amount in a currency's major unit (dollars for `usd`). Serialized as a decimal string.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(#[serde(with = "rust_decimal::serde::str")] Decimal);

impl Money {
    /// Zero.
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// Wraps an exact amount.
    pub fn new(amount: Decimal) -> Self {
        Money(amount)
    }

    /// The exact amount.
    pub fn amount(self) -> Decimal {
        self.0
    }

    /// Rounds to cents (two places), half away from zero: the one rounding an invoice line
    /// gets.
    pub fn round_to_minor(self) -> Money {
        Money(
            self.0
                .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero),
        )
    }

    /// Amount in minor units (cents), after rounding; what Stripe takes.
    pub fn to_minor_units(self) -> Option<i64> {
        use rust_decimal::prelude::ToPrimitive;
        (self.round_to_minor().0 * Decimal::ONE_HUNDRED).to_i64()
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, rhs: Money) -> Money {
        Money(self.0 + rhs.0)
    }
}

impl Mul<Decimal> for Money {
    type Output = Money;
    fn mul(self, rhs: Decimal) -> Money {
        Money(self.0 * rhs)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn rounds_half_away_from_zero_once() {
        let m = |s| Money::new(Decimal::from_str(s).unwrap());
        assert_eq!(m("0.125").round_to_minor(), m("0.13"));
        assert_eq!(m("-0.125").round_to_minor(), m("-0.13"));
        assert_eq!(m("0.124999").round_to_minor(), m("0.12"));
        assert_eq!(m("142.05").to_minor_units(), Some(14205));
    }
}
