//! The pricing models: how a billable quantity becomes an exact amount of money.
//!
//! Everything here works on exact [`Decimal`]s and rounds nothing: the one rounding an
//! invoice line gets happens later, in `tally-billing`'s report, after the discount. Quantities
//! here are in *price units* (for example GB, or thousands of calls): the conversion from
//! the meter's unit (bytes, calls) happens in the report, where the included allowance is
//! subtracted first. So a tier's `up_to` is "the first N price units of overage".
//!
//! Four models:
//!
//! | model | amount for a billable quantity `q` (price units) |
//! |---|---|
//! | `per_unit` | `q × unit_price` |
//! | `package` | `ceil(q / package_size) × package_price` (a started package is paid in full) |
//! | `graduated` | each tier prices the part of `q` that falls in it: `part × unit_price + flat_fee` (the flat fee only if some of `q` falls in the tier), summed |
//! | `volume` | the tier `q` falls in prices all of `q`: `q × unit_price + flat_fee` |
//!
//! Tiers are half-open from below: tier *i* covers `(from, up_to]`, where `from` is the
//! previous tier's `up_to` (0 for the first), and the last tier has no `up_to`. A quantity
//! of zero costs nothing under every model (no tier flat fee is charged for no usage).
//!
//! Every accepted price makes the amount non-decreasing in the quantity. That holds by
//! construction for `per_unit`, `package` and `graduated` (prices and fees are never
//! negative). A `volume` table could drop at a boundary (1,000 units at $1 cost $1,000 but
//! 1,001 units at $0.50 cost $500.50), which would let a customer lower a bill by using more,
//! so [`Pricing::problems`] refuses such a table and says which flat fee would fix it.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One row of a graduated or volume price table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// Inclusive upper bound in price units; `None` (only on the last tier) means no bound.
    /// Left out when `None`, and read back from a missing field, `null` or a string: a
    /// `Tier` sits inside the internally tagged [`Pricing`], whose buffered `null` reaches a
    /// field as a unit, which `rust_decimal::serde::str_option` refuses (so a stored report
    /// of a graduated or volume price with an unbounded last tier could not be read back).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "rust_decimal::serde::str_option::serialize",
        deserialize_with = "optional_decimal_str"
    )]
    pub up_to: Option<Decimal>,
    /// Price per price unit inside this tier.
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// Fixed amount charged once when some of the quantity falls in this tier (graduated)
    /// or when the quantity lands in this tier (volume).
    #[serde(default, with = "rust_decimal::serde::str")]
    pub flat_fee: Decimal,
}

/// An optional decimal string: `null`, a unit or `""` is `None`.
fn optional_decimal_str<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Decimal>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

impl Tier {
    /// A tier without a flat fee.
    pub fn new(up_to: Option<Decimal>, unit_price: Decimal) -> Self {
        Tier {
            up_to,
            unit_price,
            flat_fee: Decimal::ZERO,
        }
    }
}

/// How a meter's billable quantity (in price units) is priced. See the module docs for the
/// formulas. Built from the catalogue; [`Pricing::problems`] says whether it is valid, and
/// [`Pricing::price`] refuses to price with an invalid one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum Pricing {
    /// A single price per unit.
    PerUnit {
        /// Price per price unit.
        #[serde(with = "rust_decimal::serde::str")]
        unit_price: Decimal,
    },
    /// A price per started block of `package_size` units.
    Package {
        /// Units per package (> 0).
        #[serde(with = "rust_decimal::serde::str")]
        package_size: Decimal,
        /// Price of one package.
        #[serde(with = "rust_decimal::serde::str")]
        package_price: Decimal,
    },
    /// Each tier prices the part of the quantity that falls in it.
    Graduated {
        /// The tiers, ascending; the last one unbounded.
        tiers: Vec<Tier>,
    },
    /// The tier the whole quantity falls in prices all of it.
    Volume {
        /// The tiers, ascending; the last one unbounded.
        tiers: Vec<Tier>,
    },
}

/// What one tier (or the single row of a per-unit or package price) charged. Summing
/// `amount` over a line's charges gives the line's exact list amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierCharge {
    /// Which row of the price table, counting from 1 (always 1 for per-unit and package).
    pub tier: usize,
    /// Lower bound of the row (exclusive), in price units.
    #[serde(with = "rust_decimal::serde::str")]
    pub from: Decimal,
    /// Upper bound of the row (inclusive), in price units; `null` when unbounded.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub up_to: Option<Decimal>,
    /// Price units of the billable quantity that this row priced (volume: all of them).
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// What `unit_price` multiplies: equal to `quantity`, except for a package price, where
    /// it is the number of packages started.
    #[serde(with = "rust_decimal::serde::str")]
    pub billed_quantity: Decimal,
    /// Price per billed unit (per package for a package price).
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// Fixed part of this row's charge.
    #[serde(with = "rust_decimal::serde::str")]
    pub flat_fee: Decimal,
    /// `billed_quantity × unit_price + flat_fee`, exact (not rounded).
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// The exact result of pricing a quantity: the breakdown and its sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// One entry per tier that charged something; empty for a zero quantity.
    pub charges: Vec<TierCharge>,
    /// The sum of the charges' amounts, exact.
    pub amount: Decimal,
}

/// Why a quantity could not be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// Quantities are never negative (events carry quantities >= 0).
    #[error("quantity {0} is negative")]
    NegativeQuantity(Decimal),
    /// The price itself is invalid (the catalogue refuses such prices at load).
    #[error("invalid price: {0}")]
    InvalidPrice(String),
    /// The amount does not fit in a decimal (28 significant digits).
    #[error("amount overflows the decimal range")]
    Overflow,
}

/// One thing wrong with a price, relative to the price's own definition (`field` is a path
/// such as `tiers[1].up_to`, 0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceProblem {
    /// The offending field, relative to the price.
    pub field: String,
    /// What is wrong, as a sentence.
    pub message: String,
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> PriceProblem {
    PriceProblem {
        field: field.into(),
        message: message.into(),
    }
}

impl Pricing {
    /// The model's name as the catalogue spells it.
    pub fn model(&self) -> &'static str {
        match self {
            Pricing::PerUnit { .. } => "per_unit",
            Pricing::Package { .. } => "package",
            Pricing::Graduated { .. } => "graduated",
            Pricing::Volume { .. } => "volume",
        }
    }

    /// Everything wrong with this price; empty when it is valid. Checks: no negative price
    /// or fee, a positive package size, at least one tier, `up_to` strictly ascending and
    /// positive, only the last tier unbounded (so every quantity is priced), and volume
    /// tables that never make the amount drop as the quantity grows.
    pub fn problems(&self) -> Vec<PriceProblem> {
        let mut out = Vec::new();
        match self {
            Pricing::PerUnit { unit_price } => {
                if *unit_price < Decimal::ZERO {
                    out.push(problem("unit_price", "must not be negative"));
                }
            }
            Pricing::Package {
                package_size,
                package_price,
            } => {
                if *package_size <= Decimal::ZERO {
                    out.push(problem("package_size", "must be greater than zero"));
                }
                if *package_price < Decimal::ZERO {
                    out.push(problem("package_price", "must not be negative"));
                }
            }
            Pricing::Graduated { tiers } => tier_problems(tiers, &mut out),
            Pricing::Volume { tiers } => {
                tier_problems(tiers, &mut out);
                if out.is_empty() {
                    volume_monotonic_problems(tiers, &mut out);
                }
            }
        }
        out
    }

    /// Prices `quantity` (in price units) exactly. Refuses a negative quantity and an
    /// invalid price; never rounds.
    pub fn price(&self, quantity: Decimal) -> Result<Priced, PriceError> {
        if quantity < Decimal::ZERO {
            return Err(PriceError::NegativeQuantity(quantity));
        }
        if let Some(p) = self.problems().first() {
            return Err(PriceError::InvalidPrice(format!(
                "{}: {}",
                p.field, p.message
            )));
        }
        if quantity.is_zero() {
            return Ok(Priced {
                charges: Vec::new(),
                amount: Decimal::ZERO,
            });
        }
        let charges = match self {
            Pricing::PerUnit { unit_price } => vec![charge(
                1,
                Decimal::ZERO,
                None,
                quantity,
                quantity,
                *unit_price,
                Decimal::ZERO,
            )?],
            Pricing::Package {
                package_size,
                package_price,
            } => {
                let packages = ceil_div(quantity, *package_size).ok_or(PriceError::Overflow)?;
                vec![charge(
                    1,
                    Decimal::ZERO,
                    None,
                    quantity,
                    packages,
                    *package_price,
                    Decimal::ZERO,
                )?]
            }
            Pricing::Graduated { tiers } => graduated(tiers, quantity)?,
            Pricing::Volume { tiers } => volume(tiers, quantity)?,
        };
        let mut amount = Decimal::ZERO;
        for c in &charges {
            amount = amount.checked_add(c.amount).ok_or(PriceError::Overflow)?;
        }
        Ok(Priced {
            charges,
            amount: amount.normalize(),
        })
    }

    /// The list price of the marginal unit: per-unit price, package price, or the unit
    /// price of the tier holding `quantity` (the first tier for zero). Shown as a line's
    /// `unit_price`; the tier breakdown is what the amount is computed from.
    pub fn marginal_unit_price(&self, quantity: Decimal) -> Decimal {
        match self {
            Pricing::PerUnit { unit_price } => *unit_price,
            Pricing::Package { package_price, .. } => *package_price,
            Pricing::Graduated { tiers } | Pricing::Volume { tiers } => tiers
                .iter()
                .find(|t| t.up_to.is_none_or(|u| quantity <= u))
                .or(tiers.last())
                .map_or(Decimal::ZERO, |t| t.unit_price),
        }
    }
}

fn tier_problems(tiers: &[Tier], out: &mut Vec<PriceProblem>) {
    if tiers.is_empty() {
        out.push(problem("tiers", "needs at least one tier"));
        return;
    }
    let last = tiers.len() - 1;
    let mut from = Decimal::ZERO;
    for (i, t) in tiers.iter().enumerate() {
        if t.unit_price < Decimal::ZERO {
            out.push(problem(
                format!("tiers[{i}].unit_price"),
                "must not be negative",
            ));
        }
        if t.flat_fee < Decimal::ZERO {
            out.push(problem(
                format!("tiers[{i}].flat_fee"),
                "must not be negative",
            ));
        }
        match (t.up_to, i == last) {
            (Some(u), false) => {
                if u <= from {
                    out.push(problem(
                        format!("tiers[{i}].up_to"),
                        format!(
                            "must be greater than the previous bound {from} (tiers ascend and \
                             each starts where the previous one ends)"
                        ),
                    ));
                }
                from = u;
            }
            (None, false) => out.push(problem(
                format!("tiers[{i}].up_to"),
                "is missing; only the last tier may be unbounded",
            )),
            (Some(_), true) => out.push(problem(
                format!("tiers[{i}].up_to"),
                "must be left out on the last tier, so that every quantity is priced",
            )),
            (None, true) => {}
        }
    }
}

/// At each boundary `u` between tiers `i` and `i + 1`, the volume amount just above `u`
/// (`f[i+1] + u × p[i+1]`, approached from above) must not be below the amount at `u`
/// (`f[i] + u × p[i]`); within a tier the amount grows with the quantity.
fn volume_monotonic_problems(tiers: &[Tier], out: &mut Vec<PriceProblem>) {
    for (i, pair) in tiers.windows(2).enumerate() {
        let (lo, hi) = (&pair[0], &pair[1]);
        let Some(u) = lo.up_to else { continue };
        let at = u
            .checked_mul(lo.unit_price)
            .and_then(|a| a.checked_add(lo.flat_fee));
        let above = u
            .checked_mul(hi.unit_price)
            .and_then(|a| a.checked_add(hi.flat_fee));
        match (at, above) {
            (Some(at), Some(above)) if above < at => {
                let needed = at - u * hi.unit_price;
                out.push(problem(
                    format!("tiers[{}].flat_fee", i + 1),
                    format!(
                        "volume amount would drop from {at} to {above} as usage passes {u}; \
                         a bill must never shrink when usage grows, so this tier's flat_fee \
                         must be at least {needed}",
                        at = at.normalize(),
                        above = above.normalize(),
                        u = u.normalize(),
                        needed = needed.normalize(),
                    ),
                ));
            }
            (Some(_), Some(_)) => {}
            _ => out.push(problem(
                format!("tiers[{}]", i + 1),
                "bound times price overflows the decimal range",
            )),
        }
    }
}

fn charge(
    tier: usize,
    from: Decimal,
    up_to: Option<Decimal>,
    quantity: Decimal,
    billed_quantity: Decimal,
    unit_price: Decimal,
    flat_fee: Decimal,
) -> Result<TierCharge, PriceError> {
    let amount = billed_quantity
        .checked_mul(unit_price)
        .and_then(|a| a.checked_add(flat_fee))
        .ok_or(PriceError::Overflow)?;
    Ok(TierCharge {
        tier,
        from,
        up_to,
        quantity: quantity.normalize(),
        billed_quantity: billed_quantity.normalize(),
        unit_price,
        flat_fee,
        amount: amount.normalize(),
    })
}

fn graduated(tiers: &[Tier], quantity: Decimal) -> Result<Vec<TierCharge>, PriceError> {
    let mut out = Vec::new();
    let mut from = Decimal::ZERO;
    for (i, t) in tiers.iter().enumerate() {
        if quantity <= from {
            break;
        }
        let top = t.up_to.map_or(quantity, |u| quantity.min(u));
        let part = top - from;
        out.push(charge(
            i + 1,
            from,
            t.up_to,
            part,
            part,
            t.unit_price,
            t.flat_fee,
        )?);
        match t.up_to {
            Some(u) => from = u,
            None => break,
        }
    }
    Ok(out)
}

fn volume(tiers: &[Tier], quantity: Decimal) -> Result<Vec<TierCharge>, PriceError> {
    let mut from = Decimal::ZERO;
    for (i, t) in tiers.iter().enumerate() {
        if t.up_to.is_none_or(|u| quantity <= u) {
            return Ok(vec![charge(
                i + 1,
                from,
                t.up_to,
                quantity,
                quantity,
                t.unit_price,
                t.flat_fee,
            )?]);
        }
        if let Some(u) = t.up_to {
            from = u;
        }
    }
    // Unreachable for a valid table (the last tier is unbounded); `price` checks validity.
    Err(PriceError::InvalidPrice(
        "the last tier must be unbounded".to_owned(),
    ))
}

/// `ceil(q / size)` exactly, for `q >= 0` and `size > 0`. The decimal quotient carries 28
/// significant digits, so it is checked against exact products and nudged by one if the
/// division rounded across an integer.
pub(crate) fn ceil_div(q: Decimal, size: Decimal) -> Option<Decimal> {
    let mut n = q.checked_div(size)?.ceil();
    for _ in 0..2 {
        if n > Decimal::ZERO && (n - Decimal::ONE).checked_mul(size)? >= q {
            n -= Decimal::ONE;
        } else if n.checked_mul(size)? < q {
            n += Decimal::ONE;
        } else {
            break;
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A graduated price whose last tier is unbounded survives a round trip through JSON,
    /// as a stored report holds it; so does the `null` older reports wrote for it.
    #[test]
    fn an_unbounded_last_tier_reads_back_from_stored_json() {
        let pricing = Pricing::Graduated {
            tiers: vec![
                Tier::new(Some(Decimal::from(20)), Decimal::new(50, 2)),
                Tier::new(None, Decimal::new(30, 2)),
            ],
        };
        let json = serde_json::to_string(&pricing).unwrap();
        assert_eq!(serde_json::from_str::<Pricing>(&json).unwrap(), pricing);
        let with_null = json.replace(
            r#""unit_price":"0.30""#,
            r#""up_to":null,"unit_price":"0.30""#,
        );
        assert_ne!(with_null, json, "the planted null is in the text");
        assert_eq!(
            serde_json::from_str::<Pricing>(&with_null).unwrap(),
            pricing
        );
    }
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn package_rounds_started_blocks_up() {
        let p = Pricing::Package {
            package_size: d("1000"),
            package_price: d("0.50"),
        };
        assert_eq!(p.price(d("1")).unwrap().amount, d("0.5"));
        assert_eq!(p.price(d("1000")).unwrap().amount, d("0.5"));
        assert_eq!(p.price(d("1000.001")).unwrap().amount, d("1"));
        assert_eq!(p.price(Decimal::ZERO).unwrap().charges, vec![]);
        assert_eq!(ceil_div(d("10"), d("3")), Some(d("4")));
        assert_eq!(ceil_div(d("9"), d("3")), Some(d("3")));
    }

    #[test]
    fn graduated_and_volume_on_a_small_table() {
        let tiers = vec![
            Tier::new(Some(d("10")), d("1")),
            Tier::new(Some(d("20")), d("0.5")),
            Tier {
                up_to: None,
                unit_price: d("0.25"),
                flat_fee: d("2"),
            },
        ];
        let g = Pricing::Graduated {
            tiers: tiers.clone(),
        };
        // 10 × 1 + 10 × 0.5 + (5 × 0.25 + 2) = 18.25
        let priced = g.price(d("25")).unwrap();
        assert_eq!(priced.amount, d("18.25"));
        assert_eq!(priced.charges.len(), 3);
        assert_eq!(g.marginal_unit_price(d("15")), d("0.5"));

        // Volume: 25 × 0.25 + 2 = 8.25, but 20 × 0.5 = 10 > 20⁺ × 0.25 + 2 = 7: refused.
        let v = Pricing::Volume { tiers };
        let problems = v.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].field, "tiers[1].flat_fee");
        assert!(matches!(v.price(d("5")), Err(PriceError::InvalidPrice(_))));
    }

    #[test]
    fn invalid_tables_are_named() {
        let v = Pricing::Graduated {
            tiers: vec![
                Tier::new(Some(d("10")), d("1")),
                Tier::new(Some(d("10")), d("-1")),
                Tier::new(None, d("1")),
            ],
        };
        let fields: Vec<_> = v.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["tiers[1].unit_price", "tiers[1].up_to"]);
        let v = Pricing::Graduated {
            tiers: vec![Tier::new(Some(d("10")), d("1"))],
        };
        assert_eq!(v.problems()[0].field, "tiers[0].up_to");
        assert!(matches!(
            v.price(d("-1")),
            Err(PriceError::NegativeQuantity(_))
        ));
    }
}
