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

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::ids::{EventId, IdError, MeterName, OrgId, ProjectId};
use crate::meter::{Aggregation, MeterCatalogue};

/// How far into the future a timestamp may be (clock skew between services).
pub const MAX_FUTURE_SKEW: Duration = Duration::minutes(5);
/// Most significant digits a quantity may carry.
pub const MAX_QUANTITY_DIGITS: u32 = 18;
/// Largest serialized `properties` object.
pub const MAX_PROPERTIES_BYTES: usize = 4096;
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
    /// The event's month has been closed by billing.
    PeriodClosed,
    /// `properties` is not a small JSON object, or lacks a property the meter needs.
    InvalidProperties,
    /// The event has a field Tally does not know.
    UnknownField,
    /// The event is not a JSON object at all.
    MalformedEvent,
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
            ErrorCode::PeriodClosed => "period_closed",
            ErrorCode::InvalidProperties => "invalid_properties",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::MalformedEvent => "malformed_event",
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

/// A non-negative decimal with at most 18 significant digits, parsed without floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Quantity(Decimal);

impl Quantity {
    /// Zero.
    pub const ZERO: Quantity = Quantity(Decimal::ZERO);
    /// One.
    pub const ONE: Quantity = Quantity(Decimal::ONE);

    /// Wraps a decimal, checking the same rules as parsing.
    pub fn new(d: Decimal) -> Result<Self, EventError> {
        if d.is_sign_negative() && !d.is_zero() {
            return Err(EventError::new(
                ErrorCode::InvalidQuantity,
                "quantity",
                "quantity must be >= 0",
            ));
        }
        let d = d.normalize();
        if digits(d.mantissa().unsigned_abs()) > MAX_QUANTITY_DIGITS {
            return Err(EventError::new(
                ErrorCode::InvalidQuantity,
                "quantity",
                format!("quantity must have at most {MAX_QUANTITY_DIGITS} significant digits"),
            ));
        }
        // Drop a negative zero's sign so "-0" and "0" are the same value everywhere.
        Ok(Quantity(if d.is_zero() { Decimal::ZERO } else { d }))
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
        let d = if text.bytes().any(|b| b == b'e' || b == b'E') {
            Decimal::from_scientific(text)
        } else {
            Decimal::from_str_exact(text)
        }
        .map_err(|_| {
            EventError::new(
                ErrorCode::InvalidQuantity,
                "quantity",
                format!("quantity {:?} is out of range (at most {MAX_QUANTITY_DIGITS} significant digits)", truncate(text, 40)),
            )
        })?;
        Quantity::new(d)
    }

    /// The value.
    pub fn value(self) -> Decimal {
        self.0
    }
}

impl TryFrom<String> for Quantity {
    type Error = EventError;
    fn try_from(s: String) -> Result<Self, EventError> {
        Quantity::parse(&s)
    }
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
    /// The tenant, taken from the API key, never from the body.
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

    /// Validates the JSON text of one event for the org behind the caller's API key.
    ///
    /// Checks everything that needs no storage: field presence and types, id, quantity,
    /// timestamp (RFC 3339, not more than five minutes ahead), meter (in the catalogue),
    /// project id syntax and properties. Whether the project belongs to the org and whether
    /// the month is still open are checked by ingest, which can ask the store.
    pub fn validate(json: &str, ctx: &ValidationContext<'_>) -> Result<Event, EventError> {
        let fields: HashMap<Cow<'_, str>, &RawValue> =
            serde_json::from_str(json).map_err(|_| {
                EventError::new(
                    ErrorCode::MalformedEvent,
                    "",
                    "each event must be a JSON object of fields",
                )
            })?;
        for name in fields.keys() {
            if !KNOWN_FIELDS.contains(&name.as_ref()) {
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
        let meter = ctx.catalogue.get(meter_name.as_str()).ok_or_else(|| {
            EventError::new(
                ErrorCode::UnknownMeter,
                "meter",
                format!(
                    "unknown meter {:?}; this org's meters are {}",
                    meter_name.as_str(),
                    ctx.catalogue.names().join(", ")
                ),
            )
        })?;
        let project_id = ProjectId::parse(&string_field(&fields, "project_id")?)
            .map_err(|e| EventError::from_id(ErrorCode::UnknownProject, e))?;
        let quantity = match fields.get("quantity") {
            Some(raw) if raw.get() != "null" => parse_quantity(raw)?,
            _ => match meter.default_quantity {
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
        let timestamp = parse_timestamp(&string_field(&fields, "timestamp")?, ctx.now)?;
        let properties = match fields.get("properties") {
            None => Map::new(),
            Some(raw) => parse_properties(raw)?,
        };
        if let crate::meter::Aggregation::UniqueCount { property } = &meter.aggregation
            && !properties.contains_key(property)
        {
            return Err(EventError::new(
                ErrorCode::InvalidProperties,
                format!("properties.{property}"),
                format!(
                    "meter {:?} counts distinct values of properties.{property}, which is missing",
                    meter.name.as_str()
                ),
            ));
        }
        Ok(Event {
            org_id: ctx.org_id.clone(),
            id,
            project_id,
            meter: meter.name.clone(),
            aggregation: meter.aggregation.clone(),
            quantity,
            timestamp,
            properties,
        })
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

const KNOWN_FIELDS: [&str; 6] = [
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
    /// The org of the API key.
    pub org_id: &'a OrgId,
    /// The org's meters.
    pub catalogue: &'a MeterCatalogue,
    /// The server's clock reading for this request.
    pub now: DateTime<Utc>,
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
    use chrono::Datelike;
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

fn parse_properties(raw: &RawValue) -> Result<Map<String, Value>, EventError> {
    let err = |m: String| EventError::new(ErrorCode::InvalidProperties, "properties", m);
    if raw.get().len() > MAX_PROPERTIES_BYTES {
        return Err(err(format!(
            "properties must be at most {MAX_PROPERTIES_BYTES} bytes of JSON"
        )));
    }
    let value: Value = serde_json::from_str(raw.get())
        .map_err(|_| err("properties must be a JSON object".into()))?;
    match value {
        Value::Null => Ok(Map::new()),
        Value::Object(map) => {
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
            Ok(map)
        }
        _ => Err(err("properties must be a JSON object".into())),
    }
}

impl FromStr for Quantity {
    type Err = EventError;
    fn from_str(s: &str) -> Result<Self, EventError> {
        Quantity::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn validate(json: &str) -> Result<Event, EventError> {
        let org = OrgId::parse("org_abc").unwrap();
        let cat = MeterCatalogue::default();
        Event::validate(
            json,
            &ValidationContext {
                org_id: &org,
                catalogue: &cat,
                now: ctx_now(),
            },
        )
    }

    fn field_of(json: &str) -> (ErrorCode, String) {
        let e = validate(json).unwrap_err();
        (e.code, e.field)
    }

    const GOOD: &str = r#"{"id":"evt_1","project_id":"prj_1","meter":"compute_minutes","quantity":"2.50","timestamp":"2026-11-26T10:00:00Z","properties":{"route":"/x"}}"#;

    #[test]
    fn a_good_event_validates_and_keeps_exact_quantity() {
        let e = validate(GOOD).unwrap();
        assert_eq!(e.quantity.value().to_string(), "2.5");
        assert_eq!(e.org_id.as_str(), "org_abc");
        assert_eq!(e.properties["route"], "/x");
    }

    #[test]
    fn quantities_never_pass_through_floats() {
        // 0.1 + 0.2 style values and 18-digit integers survive exactly.
        let e = validate(&GOOD.replace(r#""2.50""#, "123456789012345678")).unwrap();
        assert_eq!(e.quantity.value().to_string(), "123456789012345678");
        let e = validate(&GOOD.replace(r#""2.50""#, "0.1")).unwrap();
        assert_eq!(e.quantity.value().to_string(), "0.1");
        let e = validate(&GOOD.replace(r#""2.50""#, "1.5e3")).unwrap();
        assert_eq!(e.quantity.value().to_string(), "1500");
    }

    #[test]
    fn every_error_names_its_field() {
        let cases: &[(&str, &str, ErrorCode, &str)] = &[
            (
                r#""quantity":"2.50""#,
                r#""quantity":-1"#,
                ErrorCode::InvalidQuantity,
                "quantity",
            ),
            (
                r#""quantity":"2.50""#,
                r#""quantity":"abc""#,
                ErrorCode::InvalidQuantity,
                "quantity",
            ),
            (
                r#""quantity":"2.50""#,
                r#""quantity":"NaN""#,
                ErrorCode::InvalidQuantity,
                "quantity",
            ),
            (
                r#""quantity":"2.50""#,
                r#""quantity":true"#,
                ErrorCode::InvalidQuantity,
                "quantity",
            ),
            (
                r#""quantity":"2.50""#,
                r#""quantity":1234567890123456789"#,
                ErrorCode::InvalidQuantity,
                "quantity",
            ),
            (
                r#""quantity":"2.50""#,
                r#""quantity":1e40"#,
                ErrorCode::InvalidQuantity,
                "quantity",
            ),
            (
                r#""timestamp":"2026-11-26T10:00:00Z""#,
                r#""timestamp":"yesterday""#,
                ErrorCode::InvalidTimestamp,
                "timestamp",
            ),
            (
                r#""timestamp":"2026-11-26T10:00:00Z""#,
                r#""timestamp":"2026-11-26T12:06:00Z""#,
                ErrorCode::TimestampInFuture,
                "timestamp",
            ),
            (
                r#""meter":"compute_minutes""#,
                r#""meter":"gpu_hours""#,
                ErrorCode::UnknownMeter,
                "meter",
            ),
            (
                r#""project_id":"prj_1""#,
                r#""project_id":"org_1""#,
                ErrorCode::UnknownProject,
                "project_id",
            ),
            (r#""id":"evt_1","#, "", ErrorCode::MissingField, "id"),
            (
                r#""id":"evt_1""#,
                r#""id":12"#,
                ErrorCode::InvalidType,
                "id",
            ),
            (
                r#""properties":{"route":"/x"}"#,
                r#""properties":[1]"#,
                ErrorCode::InvalidProperties,
                "properties",
            ),
            (
                r#""properties":{"route":"/x"}"#,
                r#""org_id":"org_x""#,
                ErrorCode::UnknownField,
                "org_id",
            ),
        ];
        for (from, to, code, field) in cases {
            let json = GOOD.replace(from, to);
            assert_ne!(json, GOOD, "{from}");
            assert_eq!(field_of(&json), (*code, field.to_string()), "{json}");
        }
        let long = GOOD.replace("evt_1", &"x".repeat(129));
        assert_eq!(field_of(&long), (ErrorCode::InvalidId, "id".into()));
        assert_eq!(field_of("[1,2]"), (ErrorCode::MalformedEvent, "".into()));
    }

    #[test]
    fn api_calls_default_to_one_but_other_meters_need_a_quantity() {
        let e = validate(r#"{"id":"a","project_id":"prj_1","meter":"api_calls","timestamp":"2026-11-26T10:00:00Z"}"#).unwrap();
        assert_eq!(e.quantity, Quantity::ONE);
        let err = validate(r#"{"id":"a","project_id":"prj_1","meter":"compute_minutes","timestamp":"2026-11-26T10:00:00Z"}"#).unwrap_err();
        assert_eq!(
            (err.code, err.field.as_str()),
            (ErrorCode::MissingField, "quantity")
        );
    }

    #[test]
    fn id_hint_survives_invalid_events() {
        assert_eq!(
            Event::id_hint(r#"{"id":"e9","quantity":-1}"#).as_deref(),
            Some("e9")
        );
        assert_eq!(Event::id_hint("nonsense"), None);
    }

    #[test]
    fn events_round_trip_through_json() {
        let e = validate(GOOD).unwrap();
        let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn json_number_grammar() {
        for ok in ["0", "10", "-0", "1.5", "1e3", "1E-2", "0.0001"] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in [
            "", "01", "+1", "1.", ".5", "1e", "0x10", "NaN", "Infinity", "1 ", "--1",
        ] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }
}
