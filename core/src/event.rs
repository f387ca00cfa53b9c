//! Usage events and their validation.
//!
//! A client sends events as JSON; [`Event::validate`] turns the JSON of one event into an
//! [`Event`] or an [`EventError`] that names the offending field, so one bad event is refused
//! on its own and never sinks its batch. Quantities are parsed from the JSON text itself (a
//! number or a decimal string) straight into `rust_decimal`, so they never pass through a
//! float. The org is never read from the body: it comes from the API key, through
//! [`ValidationContext`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::ids::{EventId, IdError, MeterName, OrgId, ProjectId};
use crate::meter::{Aggregation, Meter, MeterCatalogue, ValueSource};
use crate::period::Month;

/// How far into the future a timestamp may be (clock skew between services).
pub const MAX_FUTURE_SKEW: Duration = Duration::minutes(5);
/// Most significant digits a quantity may carry (leading and trailing zeros do not count:
/// `1e17` has one, `0.000000001` has one).
pub const MAX_QUANTITY_DIGITS: u32 = 18;
/// Most decimal places a quantity may carry.
pub const MAX_QUANTITY_SCALE: u32 = 9;
/// Digits before the decimal point: every quantity is below 10^18.
pub const MAX_QUANTITY_INTEGER_DIGITS: u32 = 18;
/// Largest `properties` object, counted on the JSON Tally queues and stores (numbers as
/// `serde_json` writes them, no white space), not on the text as sent.
pub const MAX_PROPERTIES_BYTES: usize = 4096;
/// Deepest nesting of objects and arrays in `properties`, the object itself being level 1.
/// With the queue envelope around an event this stays far below `serde_json`'s recursion
/// limit of 128, so every accepted event decodes on the other side.
pub const MAX_PROPERTIES_DEPTH: usize = 8;
/// Most keys in `properties`.
pub const MAX_PROPERTIES_KEYS: usize = 32;
/// Longest key in `properties`.
pub const MAX_PROPERTY_KEY_LEN: usize = 64;
/// Earliest year an event may carry.
pub const MIN_YEAR: i32 = 2000;

/// Machine-readable reason an event (or request) was refused. Serialized in snake_case as
/// the `code` of the error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type.
    InvalidType,
    /// The event id is empty, too long or not printable ASCII.
    InvalidId,
    /// The quantity is negative, not a decimal, or too precise.
    InvalidQuantity,
    /// The timestamp is not RFC 3339 or out of range.
    InvalidTimestamp,
    /// The timestamp is more than five minutes ahead of the server clock.
    TimestampInFuture,
    /// The meter is not in the org's catalogue.
    UnknownMeter,
    /// The project id is malformed or not a project of the key's org.
    UnknownProject,
    /// The project is the org's but archived: it takes no more usage.
    ProjectArchived,
    /// The request names more distinct projects than one request may.
    TooManyProjects,
    /// The event's month has been closed by billing.
    PeriodClosed,
    /// `properties` is not a small JSON object, or lacks a property the meter needs.
    InvalidProperties,
    /// The event has a field Tally does not know.
    UnknownField,
    /// The event is not a JSON object at all.
    MalformedEvent,
    /// An object in the event gives the same key twice (`field` names it).
    DuplicateKey,
    /// The event would make a new series of a dimensioned meter past the org's bound for
    /// the month (`field` names the dimension's property; see [`crate::dimension`]).
    DimensionCardinalityExceeded,
}

impl ErrorCode {
    /// The snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidType => "invalid_type",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::InvalidQuantity => "invalid_quantity",
            ErrorCode::InvalidTimestamp => "invalid_timestamp",
            ErrorCode::TimestampInFuture => "timestamp_in_future",
            ErrorCode::UnknownMeter => "unknown_meter",
            ErrorCode::UnknownProject => "unknown_project",
            ErrorCode::ProjectArchived => "project_archived",
            ErrorCode::TooManyProjects => "too_many_projects",
            ErrorCode::PeriodClosed => "period_closed",
            ErrorCode::InvalidProperties => "invalid_properties",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::MalformedEvent => "malformed_event",
            ErrorCode::DuplicateKey => "duplicate_key",
            ErrorCode::DimensionCardinalityExceeded => "dimension_cardinality_exceeded",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one event was refused. Ingest answers it inside a `202` as a per-event rejection; the
/// `field` is the JSON path of what the client got wrong (`""` for the event as a whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct EventError {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human sentence.
    pub message: String,
    /// The offending field.
    pub field: String,
}

impl EventError {
    /// Builds an error.
    pub fn new(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        EventError {
            code,
            field: field.into(),
            message: message.into(),
        }
    }

    fn from_id(code: ErrorCode, e: IdError) -> Self {
        EventError::new(code, e.field(), e.to_string())
    }
}

/// A non-negative decimal below 10^18 with at most 9 decimal places and 18 significant
/// digits, parsed without floats.
///
/// The bounds make every counter exact: `rust_decimal` holds 28 digits, so with at most 9
/// decimal places every sum up to 10^19 is exact at every granularity, and the stores refuse
/// any event that would take a month total past that ([`crate::headroom`],
/// `counter_overflow`). Every reader that sums counters still does so with checked
/// arithmetic ([`crate::counter::checked_sum`]) rather than bill a rounded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Quantity(Decimal);

impl Quantity {
    /// Zero.
    pub const ZERO: Quantity = Quantity(Decimal::ZERO);
    /// One.
    pub const ONE: Quantity = Quantity(Decimal::ONE);

    /// Wraps a decimal, checking the same rules as parsing: not negative, at most
    /// [`MAX_QUANTITY_SCALE`] decimal places, below 10^[`MAX_QUANTITY_INTEGER_DIGITS`], at
    /// most [`MAX_QUANTITY_DIGITS`] significant digits. Each rule has its own message.
    pub fn new(d: Decimal) -> Result<Self, EventError> {
        let d = non_negative(d)?;
        let bad = |m: String| Err(EventError::new(ErrorCode::InvalidQuantity, "quantity", m));
        if d.scale() > MAX_QUANTITY_SCALE {
            return bad(format!(
                "quantity may have at most {MAX_QUANTITY_SCALE} decimal places, got {d}"
            ));
        }
        if d >= Decimal::from(10u64.pow(MAX_QUANTITY_INTEGER_DIGITS)) {
            return bad(format!(
                "quantity must be less than 10^{MAX_QUANTITY_INTEGER_DIGITS}, got {d}"
            ));
        }
        if significant_digits(d) > MAX_QUANTITY_DIGITS {
            return bad(format!(
                "quantity must have at most {MAX_QUANTITY_DIGITS} significant digits, got {d}"
            ));
        }
        Ok(Quantity(d))
    }

    /// Wraps a decimal read back from the queue or the store, by the rule every earlier
    /// release accepted at ingest (not negative, at most 18 digits in the mantissa), so
    /// events queued or stored before the current bounds still decode; whether they are
    /// still applied is [`Event::check`]'s call.
    fn stored(d: Decimal) -> Result<Self, EventError> {
        let d = non_negative(d)?;
        if digits(d.mantissa().unsigned_abs()) > MAX_QUANTITY_DIGITS {
            return Err(EventError::new(
                ErrorCode::InvalidQuantity,
                "quantity",
                format!("quantity must have at most {MAX_QUANTITY_DIGITS} significant digits"),
            ));
        }
        Ok(Quantity(d))
    }

    /// Parses a decimal written as JSON number text or as the content of a JSON string:
    /// `12`, `0.5`, `1e3`. Anything else (NaN, infinities, hex, a leading `+`) is refused.
    pub fn parse(text: &str) -> Result<Self, EventError> {
        let bad = || {
            EventError::new(
                ErrorCode::InvalidQuantity,
                "quantity",
                format!(
                    "quantity must be a finite decimal number like 12 or 0.5, got {:?}",
                    truncate(text, 40)
                ),
            )
        };
        if !is_json_number(text) {
            return Err(bad());
        }
        Quantity::new(decimal_of(text).ok_or_else(|| out_of_range(text))?)
    }

    /// [`Quantity::parse`] by the rule for stored and queued quantities
    /// ([`Quantity::stored`]).
    fn parse_stored(text: &str) -> Result<Self, EventError> {
        if !is_json_number(text) {
            return Err(EventError::new(
                ErrorCode::InvalidQuantity,
                "quantity",
                format!("stored quantity {:?} is not a decimal", truncate(text, 40)),
            ));
        }
        Quantity::stored(decimal_of(text).ok_or_else(|| out_of_range(text))?)
    }

    /// The value.
    pub fn value(self) -> Decimal {
        self.0
    }
}

impl TryFrom<String> for Quantity {
    type Error = EventError;
    /// Deserialization (the queue envelope, stored rows): the stored rule, so nothing an
    /// earlier release queued or stored becomes unreadable.
    fn try_from(s: String) -> Result<Self, EventError> {
        Quantity::parse_stored(&s)
    }
}

/// Refuses a negative decimal and normalizes the rest; a negative zero loses its sign so
/// "-0" and "0" are the same value everywhere.
fn non_negative(d: Decimal) -> Result<Decimal, EventError> {
    if d.is_sign_negative() && !d.is_zero() {
        return Err(EventError::new(
            ErrorCode::InvalidQuantity,
            "quantity",
            "quantity must be >= 0",
        ));
    }
    let d = d.normalize();
    Ok(if d.is_zero() { Decimal::ZERO } else { d })
}

/// The decimal a JSON number text denotes, if `rust_decimal` can hold it exactly.
fn decimal_of(text: &str) -> Option<Decimal> {
    if text.bytes().any(|b| b == b'e' || b == b'E') {
        Decimal::from_scientific(text).ok()
    } else {
        Decimal::from_str_exact(text).ok()
    }
}

/// The refusal of a number `rust_decimal` cannot hold: too large, or too many decimal
/// places. Which one is judged on the text's magnitude (a float is fine for that: it only
/// picks the message).
fn out_of_range(text: &str) -> EventError {
    let message = match text.parse::<f64>() {
        Ok(f) if f.abs() < 1.0 => format!(
            "quantity {:?} has too many decimal places (at most {MAX_QUANTITY_SCALE})",
            truncate(text, 40)
        ),
        _ => format!(
            "quantity {:?} is too large (it must be less than 10^{MAX_QUANTITY_INTEGER_DIGITS})",
            truncate(text, 40)
        ),
    };
    EventError::new(ErrorCode::InvalidQuantity, "quantity", message)
}

/// Significant digits of a normalized decimal: the mantissa's, trailing zeros left out
/// (`1e17` has one).
fn significant_digits(d: Decimal) -> u32 {
    let mut m = d.mantissa().unsigned_abs();
    if m == 0 {
        return 1;
    }
    while m.is_multiple_of(10) {
        m /= 10;
    }
    digits(m)
}

impl From<Quantity> for String {
    fn from(q: Quantity) -> String {
        q.0.to_string()
    }
}

fn digits(mut n: u128) -> u32 {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let run = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    if !run(&mut i) || (b[int_start] == b'0' && i - int_start > 1) {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if !run(&mut i) {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if !run(&mut i) {
            return false;
        }
    }
    i == b.len()
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A validated usage event, as it travels on the queue and sits in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The tenant, taken from the API key, never from the body: for a test key, the org's
    /// [test twin](OrgId::test_twin), so test usage is kept apart from live usage.
    pub org_id: OrgId,
    /// The client's idempotency key, unique per org.
    pub id: EventId,
    /// The project the usage belongs to.
    pub project_id: ProjectId,
    /// What was used.
    pub meter: MeterName,
    /// How the meter aggregates, resolved at ingest so the aggregator needs no catalogue
    /// and applies exactly what was validated.
    pub aggregation: Aggregation,
    /// How much was used.
    pub quantity: Quantity,
    /// When it was used (UTC).
    pub timestamp: DateTime<Utc>,
    /// Small free-form attributes (bounded at validation).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
}

impl Event {
    /// The value a `unique_count` meter counts for this event: the named property, strings
    /// as they are and other JSON values as their JSON text.
    pub fn unique_value(&self) -> Option<Cow<'_, str>> {
        let Aggregation::UniqueCount { property } = &self.aggregation else {
            return None;
        };
        Some(match self.properties.get(property)? {
            Value::String(s) => Cow::Borrowed(s.as_str()),
            other => Cow::Owned(other.to_string()),
        })
    }

    /// The rules every event obeys wherever it is: checked by ingest on the event it is
    /// about to queue ([`Event::validate`] ends with it) and by the aggregator on the event
    /// it decoded, so whatever ingest accepted the aggregator applies, by construction.
    ///
    /// Checked on this canonical form (the one queued and stored), not on the text a client
    /// sent: a valid id; a quantity within [`Quantity::new`]'s bounds; a timestamp from
    /// [`MIN_YEAR`] on; `properties` of at most [`MAX_PROPERTIES_KEYS`] keys of 1 to
    /// [`MAX_PROPERTY_KEY_LEN`] characters, nesting at most [`MAX_PROPERTIES_DEPTH`] levels
    /// and at most [`MAX_PROPERTIES_BYTES`] bytes as serialized; and the property a
    /// `unique_count` meter counts.
    pub fn check(&self) -> Result<(), EventError> {
        EventId::parse(self.id.as_str())
            .map_err(|e| EventError::from_id(ErrorCode::InvalidId, e))?;
        Quantity::new(self.quantity.value())?;
        if self.timestamp.year() < MIN_YEAR {
            return Err(EventError::new(
                ErrorCode::InvalidTimestamp,
                "timestamp",
                format!("timestamp must be in {MIN_YEAR} or later"),
            ));
        }
        check_properties(&self.properties)?;
        if let Aggregation::UniqueCount { property } = &self.aggregation
            && !self.properties.contains_key(property)
        {
            return Err(EventError::new(
                ErrorCode::InvalidProperties,
                format!("properties.{property}"),
                format!(
                    "meter {:?} counts distinct values of properties.{property}, which is missing",
                    self.meter.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// Validates the JSON text of one event for the org behind the caller's API key.
    ///
    /// Checks everything that needs no storage: field presence and types, id, quantity,
    /// timestamp (RFC 3339, not more than five minutes ahead), meter (in the catalogue),
    /// project id syntax and properties. Whether the project belongs to the org and whether
    /// the month is still open are checked by ingest, which can ask the store.
    pub fn validate(json: &str, ctx: &ValidationContext<'_>) -> Result<Event, EventError> {
        // Keys given twice and runaway nesting first: the map below would keep the last
        // of two equal keys, and nesting past the bound could not cross the queue.
        crate::json::check(json, MAX_PROPERTIES_DEPTH + 1, "").map_err(shape_error)?;
        let fields: HashMap<Cow<'_, str>, &RawValue> =
            serde_json::from_str(json).map_err(|_| {
                EventError::new(
                    ErrorCode::MalformedEvent,
                    "",
                    "each event must be a JSON object of fields",
                )
            })?;
        for name in fields.keys() {
            if !EVENT_FIELDS.contains(&name.as_ref()) {
                let hint = if name == "org_id" {
                    "; the org comes from the API key"
                } else {
                    ""
                };
                return Err(EventError::new(
                    ErrorCode::UnknownField,
                    truncate(name, 64),
                    format!("{:?} is not an event field{hint}", truncate(name, 64)),
                ));
            }
        }
        let id = EventId::parse(&string_field(&fields, "id")?)
            .map_err(|e| EventError::from_id(ErrorCode::InvalidId, e))?;
        let meter_text = string_field(&fields, "meter")?;
        let meter_name = MeterName::parse(&meter_text)
            .map_err(|e| EventError::from_id(ErrorCode::UnknownMeter, e))?;
        // The timestamp picks the catalogue (an event of last month is held to that
        // month's meters); its own errors are reported where they always were, below.
        let timestamp =
            string_field(&fields, "timestamp").and_then(|t| parse_timestamp(&t, ctx.now));
        let (catalogue, other) = match &timestamp {
            Ok(at) => ctx.meters_at(*at),
            Err(_) => (ctx.catalogue, None),
        };
        let meter = catalogue.get(meter_name.as_str()).ok_or_else(|| {
            let when = match other {
                Some(m) => format!(
                    " for an event of {m} (its timestamp's month, priced by the catalogue in force then)"
                ),
                None => String::new(),
            };
            let whose = if other.is_some() { "that month's" } else { "this org's" };
            EventError::new(
                ErrorCode::UnknownMeter,
                "meter",
                format!(
                    "unknown meter {:?}{when}; {whose} meters are {}",
                    meter_name.as_str(),
                    catalogue.names().join(", ")
                ),
            )
        })?;
        let project_id = ProjectId::parse(&string_field(&fields, "project_id")?)
            .map_err(|e| EventError::from_id(ErrorCode::UnknownProject, e))?;
        let quantity = match (&meter.value, fields.get("quantity")) {
            (ValueSource::Property(_), Some(raw)) if raw.get() != "null" => {
                // Two amounts would leave the client guessing which one was counted.
                return Err(EventError::new(
                    ErrorCode::InvalidQuantity,
                    "quantity",
                    format!(
                        "meter {:?} reads its amount from {}; leave quantity out",
                        meter.name.as_str(),
                        meter.value
                    ),
                ));
            }
            (ValueSource::Property(keys), _) => {
                property_value(fields.get("properties").copied(), keys, meter)?
            }
            (ValueSource::Quantity, Some(raw)) if raw.get() != "null" => parse_quantity(raw)?,
            (ValueSource::Quantity, _) => match meter.default_quantity {
                Some(d) => Quantity::new(d)?,
                None => {
                    return Err(EventError::new(
                        ErrorCode::MissingField,
                        "quantity",
                        format!("quantity is required for meter {:?}", meter.name.as_str()),
                    ));
                }
            },
        };
        let timestamp = timestamp?;
        let properties = match fields.get("properties") {
            None => Map::new(),
            Some(raw) => parse_properties(raw)?,
        };
        let event = Event {
            org_id: ctx.org_id.clone(),
            id,
            project_id,
            meter: series_of(meter, &properties)?,
            aggregation: meter.aggregation.clone(),
            quantity,
            timestamp,
            properties,
        };
        event.check()?;
        Ok(event)
    }

    /// Best-effort id of an event that failed validation, for the rejection list.
    pub fn id_hint(json: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct IdOnly<'a> {
            #[serde(borrow)]
            id: Option<Cow<'a, str>>,
        }
        let parsed: IdOnly<'_> = serde_json::from_str(json).ok()?;
        parsed
            .id
            .map(|s| truncate(&s, crate::ids::MAX_EVENT_ID_LEN).to_owned())
    }
}

/// The fields an event's JSON object may hold (the org comes from the API key, never the
/// body); any other field is refused. The CSV import maps columns onto these.
pub const EVENT_FIELDS: [&str; 6] = [
    "id",
    "project_id",
    "meter",
    "quantity",
    "timestamp",
    "properties",
];

/// What validation needs to know about the caller and the moment.
#[derive(Debug, Clone, Copy)]
pub struct ValidationContext<'a> {
    /// The org the events are stamped with: the API key's org, or its
    /// [test twin](OrgId::test_twin) for a test key.
    pub org_id: &'a OrgId,
    /// The org's meters.
    pub catalogue: &'a MeterCatalogue,
    /// The server's clock reading for this request.
    pub now: DateTime<Utc>,
    /// Another month's meters: an event stamped in that month is validated with them
    /// instead of `catalogue`. Ingest passes the previous month's when another catalogue
    /// version was in force then, so a late event (stamped last month, accepted while that
    /// month is open) is held to the meters of its own month. `None`: `catalogue` for all.
    pub other_month: Option<(Month, &'a MeterCatalogue)>,
}

impl<'a> ValidationContext<'a> {
    /// The meters an event stamped `at` is validated with, and the month they are another
    /// month's (`None`: `catalogue`, the meters in force now).
    pub fn meters_at(&self, at: DateTime<Utc>) -> (&'a MeterCatalogue, Option<Month>) {
        match self.other_month {
            Some((month, meters)) if Month::of(at) == month => (meters, Some(month)),
            _ => (self.catalogue, None),
        }
    }
}

/// Raw JSON of one event as the client sent it (a thin alias kept for readability at call
/// sites that hold many of them).
pub type RawEvent = Box<RawValue>;

fn string_field(
    fields: &HashMap<Cow<'_, str>, &RawValue>,
    name: &'static str,
) -> Result<String, EventError> {
    let raw = fields
        .get(name)
        .filter(|r| r.get() != "null")
        .ok_or_else(|| {
            EventError::new(ErrorCode::MissingField, name, format!("{name} is required"))
        })?;
    serde_json::from_str::<String>(raw.get()).map_err(|_| {
        EventError::new(
            ErrorCode::InvalidType,
            name,
            format!("{name} must be a string"),
        )
    })
}

fn parse_quantity(raw: &RawValue) -> Result<Quantity, EventError> {
    let text = raw.get();
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text).map_err(|_| {
            EventError::new(
                ErrorCode::InvalidQuantity,
                "quantity",
                "quantity must be a number or a decimal string",
            )
        })?;
        Quantity::parse(s.trim())
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        Quantity::parse(text)
    } else {
        Err(EventError::new(
            ErrorCode::InvalidQuantity,
            "quantity",
            "quantity must be a number or a decimal string",
        ))
    }
}

/// The amount of an event for a meter that reads a property path: the number at
/// `properties.KEY...`, read from the JSON text as sent (not from the parsed map, where a
/// fraction would have passed through a binary float), by the rules of `quantity`. A
/// missing key, a value that is not a number or a decimal string, or a number out of
/// `quantity`'s range is refused with the path as the field.
fn property_value(
    properties: Option<&RawValue>,
    keys: &[String],
    meter: &Meter,
) -> Result<Quantity, EventError> {
    let path = meter.value.path();
    let missing = || {
        EventError::new(
            ErrorCode::InvalidProperties,
            path.clone(),
            format!(
                "meter {:?} reads its amount from {path}, which is missing",
                meter.name.as_str()
            ),
        )
    };
    let mut raw = properties
        .filter(|r| r.get() != "null")
        .ok_or_else(missing)?;
    for key in keys {
        // Keys given twice were refused before (`json::check`), so a map loses nothing.
        let object: HashMap<Cow<'_, str>, &RawValue> =
            serde_json::from_str(raw.get()).map_err(|_| missing())?;
        raw = object.get(key.as_str()).copied().ok_or_else(missing)?;
    }
    if raw.get() == "null" {
        return Err(missing());
    }
    parse_quantity(raw).map_err(|e| {
        EventError::new(
            ErrorCode::InvalidQuantity,
            path.clone(),
            e.message.replacen("quantity", &path, 1),
        )
    })
}

/// The counter key an event of `meter` lands in: the meter itself, or for a dimensioned
/// meter its series (`llm_tokens{model=gpt-4}`) from the event's values. A value that is
/// missing, `null`, not a string, or outside [`crate::dimension::check_value`] is refused
/// naming its property; it is never rewritten, so two values never share a series.
fn series_of(meter: &Meter, properties: &Map<String, Value>) -> Result<MeterName, EventError> {
    if meter.dimensions.is_empty() {
        return Ok(meter.name.clone());
    }
    let mut values: Vec<(&str, &str)> = Vec::with_capacity(meter.dimensions.keys.len());
    for d in &meter.dimensions.keys {
        let path = d.property.path();
        let bad = |why: String| {
            EventError::new(
                ErrorCode::InvalidProperties,
                path.clone(),
                format!(
                    "meter {:?} splits its usage by {} from {path}: {why}",
                    meter.name.as_str(),
                    d.name
                ),
            )
        };
        let ValueSource::Property(keys) = &d.property else {
            return Err(bad("not a property path".into()));
        };
        let mut at = properties.get(keys[0].as_str());
        for key in &keys[1..] {
            at = at.and_then(|v| v.get(key.as_str()));
        }
        let value = match at {
            None | Some(Value::Null) => return Err(bad("it is missing".into())),
            Some(Value::String(v)) => v.as_str(),
            Some(_) => return Err(bad("it must be a string".into())),
        };
        crate::dimension::check_value(value).map_err(bad)?;
        values.push((d.name.as_str(), value));
    }
    Ok(meter.name.series(&values))
}

fn parse_timestamp(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, EventError> {
    let ts = DateTime::parse_from_rfc3339(text)
        .map_err(|e| {
            EventError::new(
                ErrorCode::InvalidTimestamp,
                "timestamp",
                format!(
                    "timestamp must be RFC 3339 like 2026-11-26T10:00:00Z ({e}), got {:?}",
                    truncate(text, 40)
                ),
            )
        })?
        .with_timezone(&Utc);
    if ts.year() < MIN_YEAR {
        return Err(EventError::new(
            ErrorCode::InvalidTimestamp,
            "timestamp",
            format!("timestamp must be in {MIN_YEAR} or later"),
        ));
    }
    if ts > now + MAX_FUTURE_SKEW {
        return Err(EventError::new(
            ErrorCode::TimestampInFuture,
            "timestamp",
            format!(
                "timestamp {} is more than 5 minutes ahead of the server clock ({})",
                ts.to_rfc3339(),
                now.to_rfc3339()
            ),
        ));
    }
    Ok(ts)
}

/// The error of a body that repeats a key or nests too deep, as a rejection of the event.
fn shape_error(e: crate::json::ShapeError) -> EventError {
    use crate::json::ShapeError;
    match &e {
        ShapeError::DuplicateKey { .. } => {
            EventError::new(ErrorCode::DuplicateKey, e.field(), e.to_string())
        }
        ShapeError::TooDeep { path, .. } => {
            // Only `properties` may nest at all; any other field this deep has the wrong
            // type anyway, and is named as such.
            let top = path.split(['.', '[']).next().unwrap_or_default();
            if top == "properties" {
                EventError::new(
                    ErrorCode::InvalidProperties,
                    "properties",
                    format!(
                        "properties may nest at most {MAX_PROPERTIES_DEPTH} levels of objects and arrays"
                    ),
                )
            } else {
                EventError::new(
                    ErrorCode::InvalidType,
                    truncate(top, 64),
                    format!("{:?} nests objects or arrays too deep", truncate(top, 64)),
                )
            }
        }
        ShapeError::Syntax(_) => EventError::new(
            ErrorCode::MalformedEvent,
            "",
            "each event must be a JSON object of fields",
        ),
    }
}

fn parse_properties(raw: &RawValue) -> Result<Map<String, Value>, EventError> {
    let err = |m: String| EventError::new(ErrorCode::InvalidProperties, "properties", m);
    // A cheap bound before parsing; the real one is on the serialized form, in
    // `check_properties` (white space shrinks, `1e15` grows to `1000000000000000.0`).
    if raw.get().len() > 2 * MAX_PROPERTIES_BYTES {
        return Err(err(format!(
            "properties must be at most {MAX_PROPERTIES_BYTES} bytes of JSON"
        )));
    }
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::Null) => Ok(Map::new()),
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(err("properties must be a JSON object".into())),
        Err(e) => Err(err(format!("properties must be a JSON object: {e}"))),
    }
}

/// `properties`' bounds, on the map as it is queued and stored.
fn check_properties(map: &Map<String, Value>) -> Result<(), EventError> {
    let err = |m: String| EventError::new(ErrorCode::InvalidProperties, "properties", m);
    if map.len() > MAX_PROPERTIES_KEYS {
        return Err(err(format!(
            "properties may have at most {MAX_PROPERTIES_KEYS} keys"
        )));
    }
    if let Some(k) = map
        .keys()
        .find(|k| k.is_empty() || k.len() > MAX_PROPERTY_KEY_LEN)
    {
        return Err(err(format!(
            "property names must be 1 to {MAX_PROPERTY_KEY_LEN} characters, got {:?}",
            truncate(k, 70)
        )));
    }
    if map.values().map(depth).max().unwrap_or(0) + 1 > MAX_PROPERTIES_DEPTH {
        return Err(err(format!(
            "properties may nest at most {MAX_PROPERTIES_DEPTH} levels of objects and arrays"
        )));
    }
    let bytes = serde_json::to_string(map).map_or(usize::MAX, |s| s.len());
    if bytes > MAX_PROPERTIES_BYTES {
        return Err(err(format!(
            "properties must be at most {MAX_PROPERTIES_BYTES} bytes of JSON as Tally stores \
             it (without white space, numbers as 1000000000000000.0 for 1e15), got {bytes}"
        )));
    }
    Ok(())
}

/// Levels of objects and arrays in a value (a scalar has none). Only called on values that
/// came through a parser with a recursion limit, so the recursion here is bounded too.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

impl FromStr for Quantity {
    type Err = EventError;
    fn from_str(s: &str) -> Result<Self, EventError> {
        Quantity::parse(s)
    }
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
