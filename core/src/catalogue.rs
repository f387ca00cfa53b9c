//! The catalogue as data: meters, plans with their limits, and list prices, read from one
//! JSON file and validated at parse. It is the only definition of a plan: what ingest and
//! the management API enforce ([`Plan`], [`PlanLimits`], [`MeterCatalogue`]) and what
//! billing prices with ([`PlanSpec`]) are both views of one parsed [`Catalogue`].
//!
//! The built-in catalogue is `core/catalogue.json`, compiled in ([`BUILTIN_JSON`],
//! [`Catalogue::builtin`]); an operator's file with the same schema replaces it (read by
//! `tally_billing::Catalogue::load`, since this crate does no I/O). [`Plan::builtin`] and
//! `MeterCatalogue::default()` are the built-in catalogue's plans and meters, for the
//! callers that do not take a loaded catalogue yet. A catalogue that parses is fully
//! checked: every plan prices every meter with a valid price, so pricing a month never
//! meets a bad price.
//!
//! # Schema (version 1)
//!
//! Decimals are written as JSON strings (`"0.10"`); whole numbers may also be JSON integers
//! (`10000`). JSON numbers with a fraction or an exponent are refused, because a binary
//! float cannot hold `0.10` exactly. Unknown fields are refused (a misspelt field is an
//! error, not a silent default).
//!
//! ```text
//! {
//!   "version": 1,              required, must be 1
//!   "currency": "usd",         required; only "usd" (2 decimal places) is supported
//!   "meters": {
//!     "NAME": {                one object per meter; NAME is a meter name (a-z, 0-9, _)
//!       "description": "...",  optional; shown on reports and invoices (default: NAME)
//!       "unit": "bytes",       required; what the meter's counters count
//!       "aggregation": "sum",  required: sum | count | max | latest | unique_count |
//!                              time_weighted_sum (value × hours: each event a reading held
//!                              until the next; no dimensions, no default_quantity, and no
//!                              included on a plan with hard_usage_limits)
//!       "property": "user_id", required for unique_count, refused otherwise
//!       "value": "properties.tokens",  optional (default "quantity"): the event field
//!                              holding the amount; a path of 1 to 4 keys (A-Z a-z 0-9 _ -,
//!                              1 to 64 each) under properties; not for count/unique_count
//!                              and not with default_quantity
//!       "default_quantity": 1, optional; quantity of an event that gives none (>= 0)
//!       "dimensions": [        optional (default none): at most 3, sum and count only;
//!         { "name": "model", "property": "properties.model" }   each name 1 to 32 of
//!       ],                     a-z 0-9 _ (letter first), each property a path as in value
//!       "max_series": 1000,    optional (default 1000, 1 to 10000), only with dimensions:
//!                              series one org may make of the meter in one month
//!       "price_unit": "GB",    required; the unit prices are quoted in, for people
//!       "price_unit_size": "1 GB",  required; meter units per price unit: a power of ten
//!       "list_price": { "model": "per_unit", "unit_price": "0.08" }  optional default price
//!     }
//!   },
//!   "plans": {
//!     "ID": {                  ID is one of free, starter, pro, enterprise; all four required
//!       "name": "Starter",     optional display name (default: ID)
//!       "monthly_fee": "29.00",  required, >= 0, whole cents; never discounted
//!       "users": 10,           optional hard cap on members (left out: unlimited)
//!       "projects": 5,         optional hard cap on projects (left out: unlimited)
//!       "hard_usage_limits": false,  optional (default false): refuse usage past `included`
//!       "discount_percent": "10",    optional (default 0), 0 to 100; off usage amounts only
//!       "meters": {            required: one entry per meter in "meters", no others
//!         "NAME": { "included": "10 GiB", "price": { ... } }
//!       }
//!     }
//!   }
//! }
//! ```
//!
//! `included` is the optional monthly allowance (>= 0) in the meter's unit, and the limit
//! ingest enforces; left out, there is no allowance and no limit. Byte meters accept KB,
//! MB, GB, TB, PB (powers of 1000) and KiB, MiB, GiB, TiB, PiB (powers of 1024). `price`
//! is optional, and required when the meter has no `list_price`. With
//! `hard_usage_limits`, ingest refuses events past an allowance instead of billing them as
//! overage; `users` and `projects` are always hard.
//!
//! A price (`list_price` or `price`) is one of, with every number in *price units* of
//! overage (quantity above `included`, divided by `price_unit_size`):
//!
//! ```text
//! { "model": "per_unit", "unit_price": "0.10" }
//! { "model": "package", "package_size": "1", "package_price": "0.50" }   per started block
//! { "model": "graduated", "tiers": [
//!     { "up_to": "100", "unit_price": "0.10" },                  the first 100 price units
//!     { "from": "100", "up_to": "1000", "unit_price": "0.08" },  `from` optional, checked
//!     { "unit_price": "0.05", "flat_fee": "1.00" } ] }           last tier: no up_to
//! { "model": "volume", "tiers": [ ... same shape ... ] }
//! ```
//!
//! Rules checked at parse, each reported with its path (`plans.pro.meters.api_calls.price.
//! tiers[1].up_to`): known version and currency; valid meter names; known aggregation (and
//! `property` exactly for `unique_count`); a `value` path within its bounds, only on `sum`,
//! `max`, `latest` and `time_weighted_sum` meters and never with a `default_quantity`; dimensions
//! ([`crate::dimension`]) with valid, distinct names and property paths, at most 3, only on
//! `sum` and `count` meters, and `max_series` within its bounds, only with dimensions; a positive
//! power-of-ten `price_unit_size`;
//! non-negative prices, fees and allowances; a positive package size; tiers non-empty,
//! strictly ascending and contiguous (`from`, when given, equals the previous `up_to`), only
//! the last one unbounded; volume tables whose amount never drops as usage grows; fees in
//! whole cents; discounts from 0 to 100; every plan present, pricing every meter and
//! nothing else.
//!
//! # The built-in catalogue
//!
//! The plans of the design notes. Free is $0 with hard limits, so usage past an allowance
//! is refused at ingest and nothing is ever charged: its prices are $0, yet its lines are
//! still computed, so anything that got past a limit (a peak of storage, events in flight
//! when the limit was reached) shows as billable at $0. Every free meter has a hard limit,
//! bandwidth included (1 GiB a month): a free plan with one unlimited meter is a free
//! plan without limits for whoever meters that. Enterprise is custom: by default no fee, no
//! allowances, no caps, list prices with 40 % off; a contract changes it in an operator's
//! catalogue file. An `api_calls` event without a quantity counts as one call; calls are
//! priced at $0.50 per 1,000 pro rata (per unit, not per started block: 1,500 calls over
//! the allowance cost $0.75). Storage's month quantity is its peak, so a GB held all month
//! is one GB-month; its allowances are in GiB (powers of 1024) but its price is per GB
//! (10^9 bytes), so the overage is (peak bytes − allowance bytes) / 10^9 GB, exactly.

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::dimension::Dimensions;
use crate::ids::MeterName;
use crate::meter::{Aggregation, Meter, MeterCatalogue, ValueSource};
use crate::money::Money;
use crate::plan::{Plan, PlanId, PlanLimits};
use crate::pricing::{Pricing, Tier};

/// The catalogue compiled into Tally: the text of `core/catalogue.json`.
pub const BUILTIN_JSON: &str = include_str!("../catalogue.json");

/// The only currency the catalogue supports (two decimal places).
pub const CURRENCY: &str = "usd";

/// The schema version this crate reads.
pub const SCHEMA_VERSION: i64 = 1;

/// A meter as the catalogue defines it: what core's [`Meter`] has, plus how it is priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterSpec {
    /// The meter's name.
    pub name: MeterName,
    /// Shown on reports and invoice items.
    pub description: String,
    /// What the meter's counters count (`bytes`, `calls`, `minutes`).
    pub unit: String,
    /// How events combine into the month's quantity.
    pub aggregation: Aggregation,
    /// Which field of an event holds the amount (left out in versions stored before it
    /// existed: `quantity`).
    #[serde(default)]
    pub value: ValueSource,
    /// Quantity of an event that gives none.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub default_quantity: Option<Decimal>,
    /// The unit prices are quoted in (`GB`, `1,000 calls`).
    pub price_unit: String,
    /// Meter units per price unit; a power of ten so the conversion is exact.
    #[serde(with = "rust_decimal::serde::str")]
    pub price_unit_size: Decimal,
    /// The price plans use unless they give their own.
    pub list_price: Option<Pricing>,
    /// The properties the meter's counters are split by, and its series bound (left out in
    /// versions stored before dimensions existed: none).
    #[serde(default)]
    pub dimensions: Dimensions,
}

impl MeterSpec {
    /// The meter as core knows it (name, unit, aggregation, default quantity).
    pub fn to_core(&self) -> Meter {
        Meter {
            name: self.name.clone(),
            unit: self.unit.clone(),
            aggregation: self.aggregation.clone(),
            default_quantity: self.default_quantity,
            value: self.value.clone(),
            dimensions: self.dimensions.clone(),
        }
    }
}

/// How one plan prices one meter. It carries the meter's units so a [`PlanSpec`] prices a
/// month on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterPrice {
    /// The meter.
    pub meter: MeterName,
    /// Shown on reports and invoice items.
    pub description: String,
    /// The meter's unit.
    pub unit: String,
    /// The unit prices are quoted in.
    pub price_unit: String,
    /// Meter units per price unit (a power of ten).
    #[serde(with = "rust_decimal::serde::str")]
    pub price_unit_size: Decimal,
    /// Monthly allowance in meter units; `None`: no allowance and no limit.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub included: Option<Decimal>,
    /// How usage above the allowance is priced (in price units).
    pub pricing: Pricing,
}

/// A plan with everything needed to price a month: fee, caps, discount and one
/// [`MeterPrice`] per meter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSpec {
    /// Which plan.
    pub id: PlanId,
    /// Display name.
    pub name: String,
    /// Flat monthly fee, whole cents, never discounted.
    pub monthly_fee: Money,
    /// Hard cap on users; `None` is unlimited.
    pub users: Option<u32>,
    /// Hard cap on projects; `None` is unlimited.
    pub projects: Option<u32>,
    /// Whether allowances refuse usage (free) rather than bill it as overage.
    pub hard_usage_limits: bool,
    /// Percentage off usage amounts (0–100), never off the monthly fee.
    #[serde(with = "rust_decimal::serde::str")]
    pub discount_percent: Decimal,
    /// One price per meter, by meter name.
    pub meters: BTreeMap<MeterName, MeterPrice>,
}

impl PlanSpec {
    /// The plan's limits as core enforces them: the caps, and an allowance per meter that
    /// has one.
    pub fn limits(&self) -> PlanLimits {
        PlanLimits {
            users: self.users,
            projects: self.projects,
            meters: self
                .meters
                .iter()
                .filter_map(|(name, p)| p.included.map(|q| (name.clone(), q)))
                .collect(),
            hard_usage_limits: self.hard_usage_limits,
        }
    }

    /// The plan as core knows it (id, fee, limits).
    pub fn to_core(&self) -> Plan {
        Plan {
            id: self.id,
            monthly_fee: self.monthly_fee,
            limits: self.limits(),
        }
    }
}

impl From<&PlanSpec> for Plan {
    fn from(spec: &PlanSpec) -> Plan {
        spec.to_core()
    }
}

/// The four plans; a loaded catalogue always has all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plans {
    free: PlanSpec,
    starter: PlanSpec,
    pro: PlanSpec,
    enterprise: PlanSpec,
}

/// A loaded, validated plan catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    meters: BTreeMap<MeterName, MeterSpec>,
    plans: Plans,
}

impl Catalogue {
    /// The built-in catalogue ([`BUILTIN_JSON`]). It is checked by this crate's tests, so an
    /// error here means the binary was built from a broken tree.
    pub fn builtin() -> Result<Catalogue, CatalogueError> {
        Catalogue::from_json(BUILTIN_JSON, "built-in")
    }

    /// Parses and validates catalogue JSON; `origin` (a path, or `built-in`) names it in
    /// errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Catalogue, CatalogueError> {
        let raw: RawCatalogue = serde_json::from_str(text).map_err(|e| CatalogueError::Parse {
            origin: origin.to_owned(),
            line: e.line(),
            column: e.column(),
            message: parse_message(&e),
        })?;
        let mut check = Checker::default();
        let catalogue = check.catalogue(raw);
        match catalogue {
            Some(c) if check.problems.is_empty() => Ok(c),
            _ => {
                if check.problems.is_empty() {
                    check.bad("", "the catalogue is incomplete");
                }
                Err(CatalogueError::Invalid {
                    origin: origin.to_owned(),
                    problems: check.problems,
                })
            }
        }
    }

    /// The currency of every price (always [`CURRENCY`]).
    pub fn currency(&self) -> &'static str {
        CURRENCY
    }

    /// All meters, in name order.
    pub fn meters(&self) -> impl Iterator<Item = &MeterSpec> {
        self.meters.values()
    }

    /// One meter by name.
    pub fn meter(&self, name: &MeterName) -> Option<&MeterSpec> {
        self.meters.get(name)
    }

    /// The meters as core's [`MeterCatalogue`] (what ingest validates events against).
    pub fn meter_catalogue(&self) -> MeterCatalogue {
        MeterCatalogue::new(self.meters.values().map(MeterSpec::to_core))
    }

    /// One plan.
    pub fn plan(&self, id: PlanId) -> &PlanSpec {
        match id {
            PlanId::Free => &self.plans.free,
            PlanId::Starter => &self.plans.starter,
            PlanId::Pro => &self.plans.pro,
            PlanId::Enterprise => &self.plans.enterprise,
        }
    }

    /// All four plans: free, starter, pro, enterprise.
    pub fn plans(&self) -> [&PlanSpec; 4] {
        [
            &self.plans.free,
            &self.plans.starter,
            &self.plans.pro,
            &self.plans.enterprise,
        ]
    }

    /// One plan as core knows it (fee and limits; what ingest and the API enforce).
    pub fn core_plan(&self, id: PlanId) -> Plan {
        self.plan(id).to_core()
    }

    /// Every plan as core knows it, by id: what ingest's configuration takes
    /// (`IngestConfig::plans`) so its hard limits are this catalogue's.
    pub fn core_plans(&self) -> BTreeMap<PlanId, Plan> {
        self.plans()
            .into_iter()
            .map(|p| (p.id, p.to_core()))
            .collect()
    }
}

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
    /// The file could not be read. Built by the loader (`tally_billing::Catalogue::load`):
    /// this crate does no I/O, but a caller handles every catalogue error in one type.
    #[error("cannot read plan catalogue {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON, or does not have the catalogue's shape (unknown field, wrong
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

/// The parser's message without serde_json's own "at line L column C" (the error names
/// the line and column once, in its own fields).
fn parse_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix)
        .unwrap_or(&text)
        .trim()
        .to_owned()
}

/// The built-in catalogue, parsed once per process.
fn builtin_catalogue() -> &'static Catalogue {
    static BUILTIN: OnceLock<Catalogue> = OnceLock::new();
    BUILTIN.get_or_init(|| Catalogue::builtin().unwrap_or_else(|e| broken_builtin(&e)))
}

// The built-in catalogue is compiled in and parsed by this crate's tests, so it failing is
// a broken build, not bad input: there is nothing a caller could do about it.
#[cold]
#[allow(clippy::panic)]
fn broken_builtin(e: &CatalogueError) -> ! {
    panic!("the built-in catalogue (core/catalogue.json) is invalid: {e}")
}

// These two live here rather than in `plan` and `meter` so that those modules need not
// import the catalogue that imports them: they are views of the built-in catalogue, kept
// for callers that are not handed a loaded catalogue yet.
impl Plan {
    /// The built-in catalogue's plan `id` ([`Catalogue::core_plan`] of
    /// [`Catalogue::builtin`]). Code that is handed a loaded catalogue uses that instead, so
    /// an operator's catalogue file applies.
    pub fn builtin(id: PlanId) -> Plan {
        builtin_catalogue().core_plan(id)
    }
}

impl Default for MeterCatalogue {
    /// The built-in catalogue's meters ([`Catalogue::meter_catalogue`] of
    /// [`Catalogue::builtin`]): `api_calls` (sum, 1 per call by default),
    /// `compute_minutes` (sum), `storage_bytes` (max over the period) and `bandwidth_bytes`
    /// (sum).
    fn default() -> Self {
        builtin_catalogue().meter_catalogue()
    }
}

// ----------------------------------------------------------------------------------------
// The file's shape, as serde reads it. Numbers stay text until validation, so that every
// bad number is reported with its path.

/// A number as written: a JSON string or integer, never a number with a fraction or an
/// exponent (serde_json reads those as binary floats).
#[derive(Debug, Clone)]
struct Num(String);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NumVisitor)
    }
}

struct NumVisitor;

impl Visitor<'_> for NumVisitor {
    type Value = Num;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a decimal written as a string (\"0.10\") or an integer; numbers with a fraction \
             are refused: JSON readers take them as binary floats, which cannot hold most \
             prices exactly",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Num, E> {
        Ok(Num(v.to_owned()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
        Ok(Num(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
        Ok(Num(v.to_string()))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalogue {
    version: i64,
    currency: String,
    meters: BTreeMap<String, RawMeter>,
    plans: BTreeMap<String, RawPlan>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeter {
    description: Option<String>,
    unit: String,
    aggregation: String,
    property: Option<String>,
    value: Option<String>,
    default_quantity: Option<Num>,
    price_unit: String,
    price_unit_size: Num,
    list_price: Option<RawPrice>,
    dimensions: Option<Vec<RawDimension>>,
    max_series: Option<i64>,
}

/// One entry of a meter's `dimensions`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDimension {
    name: String,
    property: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    name: Option<String>,
    monthly_fee: Num,
    users: Option<u32>,
    projects: Option<u32>,
    #[serde(default)]
    hard_usage_limits: bool,
    discount_percent: Option<Num>,
    meters: BTreeMap<String, RawPlanMeter>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlanMeter {
    included: Option<Num>,
    price: Option<RawPrice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    model: String,
    unit_price: Option<Num>,
    package_size: Option<Num>,
    package_price: Option<Num>,
    tiers: Option<Vec<RawTier>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    from: Option<Num>,
    up_to: Option<Num>,
    unit_price: Num,
    flat_fee: Option<Num>,
}

// ----------------------------------------------------------------------------------------
// Validation: turns the raw shape into a Catalogue, collecting every problem with its path.

/// Byte multiples accepted on quantities of meters counted in bytes.
const BYTE_UNITS: [(&str, u32, u32); 10] = [
    ("KB", 10, 3),
    ("MB", 10, 6),
    ("GB", 10, 9),
    ("TB", 10, 12),
    ("PB", 10, 15),
    ("KiB", 2, 10),
    ("MiB", 2, 20),
    ("GiB", 2, 30),
    ("TiB", 2, 40),
    ("PiB", 2, 50),
];

/// Parses `"12.5"`, `"10 GiB"` or `"1GB"`: a plain decimal, optionally followed by a byte
/// multiple when `bytes` is true. Exact: no rounding, no exponent notation.
fn parse_quantity(text: &str, bytes: bool) -> Result<Decimal, String> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, suffix) = (t[..split].trim(), t[split..].trim());
    let value =
        Decimal::from_str_exact(number).map_err(|_| format!("{text:?} is not a decimal number"))?;
    if suffix.is_empty() {
        return Ok(value);
    }
    let Some(&(_, base, exp)) = BYTE_UNITS.iter().find(|(s, _, _)| *s == suffix) else {
        return Err(format!(
            "{text:?} has an unknown unit {suffix:?} (byte meters accept KB, MB, GB, TB, PB, \
             KiB, MiB, GiB, TiB, PiB)"
        ));
    };
    if !bytes {
        return Err(format!(
            "{text:?} has a byte unit, but this number is not a quantity of bytes"
        ));
    }
    let factor = (0..exp)
        .try_fold(Decimal::ONE, |f, _| f.checked_mul(Decimal::from(base)))
        .ok_or_else(|| format!("{text:?} is out of range"))?;
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is out of range"))
}

fn is_power_of_ten(d: Decimal) -> bool {
    if d < Decimal::ONE || !d.fract().is_zero() {
        return false;
    }
    let ten = Decimal::TEN;
    let mut x = d;
    while x > Decimal::ONE {
        if !(x % ten).is_zero() {
            return false;
        }
        x /= ten;
    }
    x == Decimal::ONE
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn bad(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Whether a problem was already reported at `path` or inside it.
    fn has_problem_under(&self, path: &str) -> bool {
        self.problems.iter().any(|p| {
            p.path == path
                || p.path
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }

    /// A number that must be >= 0; `bytes` allows byte multiples.
    fn non_negative(&mut self, path: &str, raw: &Num, bytes: bool) -> Option<Decimal> {
        match parse_quantity(&raw.0, bytes) {
            Ok(d) if d < Decimal::ZERO => {
                self.bad(path, format!("must not be negative, got {}", raw.0));
                None
            }
            Ok(d) => Some(d),
            Err(message) => {
                self.bad(path, message);
                None
            }
        }
    }

    fn catalogue(&mut self, raw: RawCatalogue) -> Option<Catalogue> {
        if raw.version != SCHEMA_VERSION {
            self.bad(
                "version",
                format!(
                    "must be {SCHEMA_VERSION} (the schema this Tally reads), got {}",
                    raw.version
                ),
            );
        }
        if raw.currency != CURRENCY {
            self.bad(
                "currency",
                format!(
                    "must be {CURRENCY:?} (the only currency supported), got {:?}",
                    raw.currency
                ),
            );
        }
        if raw.meters.is_empty() {
            self.bad("meters", "needs at least one meter");
        }
        // Meters that are declared but invalid are reported once, where they are declared;
        // plans that price them are not blamed as well.
        let declared: Vec<String> = raw.meters.keys().cloned().collect();
        let mut meters = BTreeMap::new();
        for (name, m) in raw.meters {
            if let Some(spec) = self.meter(&name, m) {
                meters.insert(spec.name.clone(), spec);
            }
        }
        let mut found: BTreeMap<PlanId, PlanSpec> = BTreeMap::new();
        let mut seen = Vec::new();
        for (name, p) in raw.plans {
            let path = format!("plans.{name}");
            let Some(id) = PlanId::parse(&name) else {
                self.bad(
                    path,
                    "is not a Tally plan (the plans are free, starter, pro and enterprise)",
                );
                continue;
            };
            seen.push(id);
            if let Some(spec) = self.plan(id, &path, p, &meters, &declared) {
                found.insert(id, spec);
            }
        }
        for id in PlanId::ALL {
            if !seen.contains(&id) {
                self.bad(
                    format!("plans.{id}"),
                    "is missing; the catalogue must define free, starter, pro and enterprise",
                );
            }
        }
        let plans = Plans {
            free: found.remove(&PlanId::Free)?,
            starter: found.remove(&PlanId::Starter)?,
            pro: found.remove(&PlanId::Pro)?,
            enterprise: found.remove(&PlanId::Enterprise)?,
        };
        Some(Catalogue { meters, plans })
    }

    fn meter(&mut self, name: &str, m: RawMeter) -> Option<MeterSpec> {
        let path = format!("meters.{name}");
        let before = self.problems.len();
        let meter_name = match MeterName::parse(name) {
            Ok(n) => Some(n),
            Err(e) => {
                self.bad(&path, format!("is not a valid meter name: {e}"));
                None
            }
        };
        if m.unit.trim().is_empty() {
            self.bad(format!("{path}.unit"), "must not be empty");
        }
        let bytes = m.unit == "bytes";
        let tws = m.aggregation == "time_weighted_sum";
        let aggregation = match (m.aggregation.as_str(), m.property) {
            ("time_weighted_sum", None) if tws => Some(Aggregation::TimeWeightedSum),
            ("time_weighted_sum", Some(_)) if tws => {
                self.bad(
                    format!("{path}.property"),
                    "is only allowed with aggregation = \"unique_count\"",
                );
                None
            }
            ("sum", None) => Some(Aggregation::Sum),
            ("count", None) => Some(Aggregation::Count),
            ("max", None) => Some(Aggregation::Max),
            ("latest", None) => Some(Aggregation::Latest),
            ("unique_count", Some(property)) if !property.trim().is_empty() => {
                Some(Aggregation::UniqueCount { property })
            }
            ("unique_count", _) => {
                self.bad(
                    format!("{path}.property"),
                    "is required for unique_count: the property whose distinct values are counted",
                );
                None
            }
            ("sum" | "count" | "max" | "latest", Some(_)) => {
                self.bad(
                    format!("{path}.property"),
                    "is only allowed with aggregation = \"unique_count\"",
                );
                None
            }
            (other, _) => {
                self.bad(
                    format!("{path}.aggregation"),
                    format!(
                        "unknown aggregation {other:?}; expected sum, count, max, latest, \
                         unique_count or time_weighted_sum"
                    ),
                );
                None
            }
        };
        let value = match m.value.as_deref().map(ValueSource::parse) {
            None => Some(ValueSource::Quantity),
            Some(Err(message)) => {
                self.bad(format!("{path}.value"), message);
                None
            }
            Some(Ok(ValueSource::Quantity)) => Some(ValueSource::Quantity),
            Some(Ok(v)) => {
                if matches!(m.aggregation.as_str(), "count" | "unique_count") {
                    self.bad(
                        format!("{path}.value"),
                        format!(
                            "a {} meter reads no amount; value is for sum, max, latest \
                             and time_weighted_sum",
                            m.aggregation
                        ),
                    );
                }
                if m.default_quantity.is_some() {
                    self.bad(
                        format!("{path}.default_quantity"),
                        format!(
                            "cannot go with value = {:?}: an event without {} is refused, \
                             never counted as a guess",
                            v.path(),
                            v.path()
                        ),
                    );
                }
                Some(v)
            }
        };
        let default_quantity = m
            .default_quantity
            .as_ref()
            .map(|raw| self.non_negative(&format!("{path}.default_quantity"), raw, bytes));
        if m.price_unit.trim().is_empty() {
            self.bad(format!("{path}.price_unit"), "must not be empty");
        }
        let size_path = format!("{path}.price_unit_size");
        let price_unit_size = match parse_quantity(&m.price_unit_size.0, bytes) {
            Ok(d) if is_power_of_ten(d) => Some(d),
            Ok(d) => {
                self.bad(
                    &size_path,
                    format!(
                        "must be a power of ten (1, 1000, \"1 GB\", ...) so that quantities convert \
                         to price units exactly, got {}",
                        d.normalize()
                    ),
                );
                None
            }
            Err(message) => {
                self.bad(&size_path, message);
                None
            }
        };
        let list_price = match m.list_price {
            Some(raw) => self.price(&format!("{path}.list_price"), raw),
            None => None,
        };
        let dimensions = self.dimensions(&path, &m.aggregation, m.dimensions, m.max_series);
        if tws {
            self.time_weighted_meter(&path, m.default_quantity.is_some());
        }
        if self.problems.len() > before {
            return None;
        }
        Some(MeterSpec {
            description: m.description.unwrap_or_else(|| name.to_owned()),
            name: meter_name?,
            unit: m.unit,
            aggregation: aggregation?,
            value: value?,
            // A bad default quantity was reported above, so None here means "not given".
            default_quantity: default_quantity.flatten(),
            price_unit: m.price_unit,
            price_unit_size: price_unit_size?,
            list_price,
            dimensions: dimensions?,
        })
    }

    fn plan(
        &mut self,
        id: PlanId,
        path: &str,
        p: RawPlan,
        meters: &BTreeMap<MeterName, MeterSpec>,
        declared: &[String],
    ) -> Option<PlanSpec> {
        let before = self.problems.len();
        let fee_path = format!("{path}.monthly_fee");
        let monthly_fee = self.non_negative(&fee_path, &p.monthly_fee, false);
        if let Some(fee) = monthly_fee
            && fee.normalize().scale() > 2
        {
            self.bad(
                &fee_path,
                format!("must be whole cents, got {}", p.monthly_fee.0),
            );
        }
        let discount_path = format!("{path}.discount_percent");
        let discount_percent = match &p.discount_percent {
            Some(raw) => self.non_negative(&discount_path, raw, false),
            None => Some(Decimal::ZERO),
        };
        if let Some(d) = discount_percent
            && d > Decimal::ONE_HUNDRED
        {
            self.bad(&discount_path, format!("must be from 0 to 100, got {}", d));
        }
        let mut prices = BTreeMap::new();
        let mut invalid_meter = false;
        for (name, entry) in p.meters {
            let mpath = format!("{path}.meters.{name}");
            let Some(spec) = MeterName::parse(&name).ok().and_then(|n| meters.get(&n)) else {
                if declared.contains(&name) {
                    invalid_meter = true;
                    continue;
                }
                self.bad(
                    mpath,
                    format!("there is no meter {name:?} in [meters]; a plan prices only meters the catalogue defines"),
                );
                continue;
            };
            let included = match &entry.included {
                Some(raw) => {
                    self.non_negative(&format!("{mpath}.included"), raw, spec.unit == "bytes")
                }
                None => None,
            };
            if spec.aggregation == Aggregation::TimeWeightedSum {
                self.time_weighted_limit(&mpath, p.hard_usage_limits, entry.included.is_some());
            }
            let pricing = match entry.price {
                Some(raw) => self.price(&format!("{mpath}.price"), raw),
                None => {
                    if spec.list_price.is_none() {
                        self.bad(
                            format!("{mpath}.price"),
                            format!("is missing and meters.{name} has no list_price"),
                        );
                    }
                    spec.list_price.clone()
                }
            };
            if let Some(pricing) = pricing {
                prices.insert(
                    spec.name.clone(),
                    MeterPrice {
                        meter: spec.name.clone(),
                        description: spec.description.clone(),
                        unit: spec.unit.clone(),
                        price_unit: spec.price_unit.clone(),
                        price_unit_size: spec.price_unit_size,
                        included,
                        pricing,
                    },
                );
            }
        }
        for name in meters.keys() {
            if !prices.contains_key(name)
                && !self.has_problem_under(&format!("{path}.meters.{name}"))
            {
                self.bad(
                    format!("{path}.meters.{name}"),
                    format!(
                        "is missing; every plan prices every meter (write `{name} = {{}}` to use \
                         the list price)"
                    ),
                );
            }
        }
        if self.problems.len() > before || invalid_meter {
            return None;
        }
        let mut fee = monthly_fee?;
        fee.rescale(2);
        Some(PlanSpec {
            id,
            name: p.name.unwrap_or_else(|| id.as_str().to_owned()),
            monthly_fee: Money::new(fee),
            users: p.users,
            projects: p.projects,
            hard_usage_limits: p.hard_usage_limits,
            discount_percent: discount_percent?,
            meters: prices,
        })
    }

    fn price(&mut self, path: &str, raw: RawPrice) -> Option<Pricing> {
        let before = self.problems.len();
        let allowed: &[&str] = match raw.model.as_str() {
            "per_unit" => &["unit_price"],
            "package" => &["package_size", "package_price"],
            "graduated" | "volume" => &["tiers"],
            other => {
                self.bad(
                    format!("{path}.model"),
                    format!(
                        "unknown model {other:?}; expected per_unit, package, graduated or volume"
                    ),
                );
                return None;
            }
        };
        let given = [
            ("unit_price", raw.unit_price.is_some()),
            ("package_size", raw.package_size.is_some()),
            ("package_price", raw.package_price.is_some()),
            ("tiers", raw.tiers.is_some()),
        ];
        for (field, present) in given {
            if present && !allowed.contains(&field) {
                self.bad(
                    format!("{path}.{field}"),
                    format!("does not belong to model {:?}", raw.model),
                );
            } else if !present && allowed.contains(&field) {
                self.bad(
                    format!("{path}.{field}"),
                    format!("is required by model {:?}", raw.model),
                );
            }
        }
        if self.problems.len() > before {
            return None;
        }
        let number = |this: &mut Self, field: &str, n: &Option<Num>| -> Option<Decimal> {
            let raw = n.as_ref()?;
            match parse_quantity(&raw.0, false) {
                Ok(d) => Some(d),
                Err(message) => {
                    this.bad(format!("{path}.{field}"), message);
                    None
                }
            }
        };
        let pricing = match raw.model.as_str() {
            "per_unit" => Pricing::PerUnit {
                unit_price: number(self, "unit_price", &raw.unit_price)?,
            },
            "package" => {
                let size = number(self, "package_size", &raw.package_size);
                let price = number(self, "package_price", &raw.package_price);
                Pricing::Package {
                    package_size: size?,
                    package_price: price?,
                }
            }
            model => {
                let tiers = self.tiers(path, raw.tiers.unwrap_or_default())?;
                if model == "graduated" {
                    Pricing::Graduated { tiers }
                } else {
                    Pricing::Volume { tiers }
                }
            }
        };
        for p in pricing.problems() {
            self.bad(format!("{path}.{}", p.field), p.message);
        }
        (self.problems.len() == before).then_some(pricing)
    }

    fn tiers(&mut self, path: &str, raw: Vec<RawTier>) -> Option<Vec<Tier>> {
        let before = self.problems.len();
        let mut tiers = Vec::with_capacity(raw.len());
        let mut previous_end = Some(Decimal::ZERO);
        for (i, t) in raw.into_iter().enumerate() {
            let tpath = format!("{path}.tiers[{i}]");
            let mut parse = |field: &str, n: &Num| match parse_quantity(&n.0, false) {
                Ok(d) => Some(d),
                Err(message) => {
                    self.bad(format!("{tpath}.{field}"), message);
                    None
                }
            };
            let from = t.from.as_ref().map(|n| parse("from", n));
            let up_to = t.up_to.as_ref().map(|n| parse("up_to", n));
            let unit_price = parse("unit_price", &t.unit_price);
            let flat_fee = t.flat_fee.as_ref().map(|n| parse("flat_fee", n));
            if let (Some(Some(from)), Some(end)) = (from, previous_end)
                && from != end
            {
                self.bad(
                    format!("{tpath}.from"),
                    format!(
                        "is {} but the previous tier ends at {}; tiers must be contiguous",
                        from.normalize(),
                        end.normalize()
                    ),
                );
            }
            previous_end = up_to.flatten();
            let (Some(unit_price), Some(flat_fee)) =
                (unit_price, flat_fee.unwrap_or(Some(Decimal::ZERO)))
            else {
                continue;
            };
            let up_to = match up_to {
                Some(Some(u)) => Some(u),
                Some(None) => continue,
                None => None,
            };
            tiers.push(Tier {
                up_to,
                unit_price,
                flat_fee,
            });
        }
        (self.problems.len() == before).then_some(tiers)
    }
}

#[path = "catalogue_meters.rs"]
mod meters;

#[cfg(test)]
#[path = "catalogue_tests.rs"]
mod tests;
