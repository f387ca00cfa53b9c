//! Splitting a rounded amount across projects so the parts add up to the cent.
//!
//! The largest-remainder method: each part first gets the whole cents of its exact
//! proportional share (`amount × weight / total weight`, rounded down), then the cents left
//! over go one each to the parts with the largest fractional remainders (ties: the larger
//! weight, then the earlier position, so the result is deterministic). Every part is then
//! within one cent of its exact share, and the parts always sum to the amount exactly.

use crate::Money;
use rust_decimal::Decimal;

/// Splits `amount` (whole cents; negative amounts are split as their absolute value and
/// negated) across `weights` in proportion. Returns `None` when there is nothing to split
/// by: no weights, a negative weight, a zero total weight, or an amount that is not whole
/// cents. Zero weights always get zero.
pub fn allocate_cents(amount: Money, weights: &[Decimal]) -> Option<Vec<Money>> {
    if weights.iter().any(|w| *w < Decimal::ZERO) {
        return None;
    }
    let mut total_weight = Decimal::ZERO;
    for w in weights {
        total_weight = total_weight.checked_add(*w)?;
    }
    if total_weight.is_zero() {
        return None;
    }
    let signed_cents = amount.amount().checked_mul(Decimal::ONE_HUNDRED)?;
    if !signed_cents.fract().is_zero() {
        return None;
    }
    let negative = signed_cents < Decimal::ZERO;
    let cents = signed_cents.abs();

    let mut parts = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    let mut given = Decimal::ZERO;
    for w in weights {
        // cents × w / W, or cents × (w / W) when the product would not fit.
        let share = match cents.checked_mul(*w) {
            Some(p) => p.checked_div(total_weight)?,
            None => w.checked_div(total_weight)?.checked_mul(cents)?,
        };
        let floor = share.floor().min(cents);
        given += floor;
        parts.push(floor);
        remainders.push(share - floor);
    }

    // Who gets leftover cents first: largest remainder, then larger weight, then position.
    let mut order: Vec<usize> = (0..weights.len())
        .filter(|&i| weights[i] > Decimal::ZERO)
        .collect();
    order.sort_by(|&a, &b| {
        remainders[b]
            .cmp(&remainders[a])
            .then(weights[b].cmp(&weights[a]))
            .then(a.cmp(&b))
    });
    let mut left = cents - given;
    // With exact shares 0 <= left < number of positive weights, so one pass suffices; the
    // loops only guard against a share rounded at the 28th digit across an integer.
    while left > Decimal::ZERO {
        for &i in &order {
            if left.is_zero() {
                break;
            }
            parts[i] += Decimal::ONE;
            left -= Decimal::ONE;
        }
    }
    while left < Decimal::ZERO {
        for &i in order.iter().rev() {
            if left.is_zero() {
                break;
            }
            if parts[i] > Decimal::ZERO {
                parts[i] -= Decimal::ONE;
                left += Decimal::ONE;
            }
        }
    }

    Some(
        parts
            .into_iter()
            .map(|c| {
                let c = if negative { -c } else { c };
                let mut m = c / Decimal::ONE_HUNDRED;
                m.rescale(2);
                Money::new(m)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn m(s: &str) -> Money {
        Money::new(Decimal::from_str(s).unwrap())
    }

    #[test]
    fn thirds_of_a_dollar() {
        let w = [Decimal::ONE, Decimal::ONE, Decimal::ONE];
        let parts = allocate_cents(m("1.00"), &w).unwrap();
        assert_eq!(parts, [m("0.34"), m("0.33"), m("0.33")]);
        let parts = allocate_cents(m("-1.00"), &w).unwrap();
        assert_eq!(parts, [m("-0.34"), m("-0.33"), m("-0.33")]);
    }

    #[test]
    fn worked_split() {
        // 21.11 by 1000 : 234.5 → exact 17.1000405… and 4.0099594…; floors 17.10 + 4.00
        // leave one cent, which goes to the larger remainder (the second).
        let parts = allocate_cents(
            m("21.11"),
            &[Decimal::from(1000), Decimal::from_str("234.5").unwrap()],
        )
        .unwrap();
        assert_eq!(parts, [m("17.10"), m("4.01")]);
    }

    #[test]
    fn nothing_to_split_by() {
        assert_eq!(allocate_cents(m("1.00"), &[]), None);
        assert_eq!(allocate_cents(m("1.00"), &[Decimal::ZERO]), None);
        assert_eq!(allocate_cents(m("1.005"), &[Decimal::ONE]), None);
        assert_eq!(
            allocate_cents(m("0.00"), &[Decimal::ONE, Decimal::ZERO]),
            Some(vec![m("0.00"), m("0.00")])
        );
    }
}
