//! The billing crate's errors: a catalogue that cannot be loaded, a month that cannot be
//! priced. Both render as one line, fit for a CLI's stderr.

use std::fmt;
use std::path::PathBuf;

use rust_decimal::Decimal;
use tally_core::{MeterName, PlanId};

use crate::pricing::PriceError;

/// One thing wrong with a catalogue file, named by its path in the file
/// (`plans.starter.meters.api_calls.price.tiers[1].up_to`; array indexes count from 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending table or field.
    pub path: String,
    /// What is wrong, as a sentence.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a plan catalogue could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// The file could not be read.
    #[error("cannot read plan catalogue {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML, or does not have the catalogue's shape (unknown field, wrong
    /// type, a float where a decimal string belongs).
    #[error("plan catalogue {origin}, line {line}, column {column}: {message}")]
    Parse {
        /// The file's path, or `built-in` for the embedded default.
        origin: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The file parsed, but its content breaks the catalogue's rules.
    #[error("plan catalogue {origin} is invalid: {}", join(.problems))]
    Invalid {
        /// The file's path, or `built-in`.
        origin: String,
        /// Every problem found: meters first, then plans, each in name order.
        problems: Vec<Problem>,
    },
}

impl CatalogueError {
    /// The problems of an [`CatalogueError::Invalid`] catalogue (empty otherwise).
    pub fn problems(&self) -> &[Problem] {
        match self {
            CatalogueError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// Why an org's month could not be priced. Every variant names the meter, so the report
/// that failed can be traced to its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// Usage arrived for a meter the plan does not price; billing refuses to drop it.
    #[error("plan {plan} has no price for meter {meter}")]
    UnpricedMeter {
        /// The plan.
        plan: PlanId,
        /// The meter.
        meter: MeterName,
    },
    /// A month or project quantity was negative.
    #[error("meter {meter}: quantity {quantity} is negative")]
    NegativeQuantity {
        /// The meter.
        meter: MeterName,
        /// The quantity.
        quantity: Decimal,
    },
    /// The meter's price could not be applied.
    #[error("meter {meter}: {source}")]
    Price {
        /// The meter.
        meter: MeterName,
        /// What went wrong.
        #[source]
        source: PriceError,
    },
    /// A discount outside 0–100 %, or an amount out of the decimal range.
    #[error("meter {meter}: {reason}")]
    Invalid {
        /// The meter.
        meter: MeterName,
        /// What is wrong.
        reason: String,
    },
}
