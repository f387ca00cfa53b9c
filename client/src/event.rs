//! The event a service emits, checked on the caller's side against the bounds `POST
//! /v1/events` enforces, so a mistake is an error at the call that made it rather than a
//! rejection seconds later.
//!
//! Every event gets its id when it is made ([`Event::new`]), not when it is sent: a retry
//! resends the same id and Tally's ledger counts it once, so retrying is always free.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

/// Longest id Tally takes (README.md, HTTP: `id` is 1–128 printable ASCII characters).
pub const MAX_ID_LEN: usize = 128;
/// Longest project id, meter name or property key this crate sends; Tally's own bounds are
/// tighter for some of them and it names the field when it refuses.
pub const MAX_NAME_LEN: usize = 128;
/// Most properties on one event.
pub const MAX_PROPERTIES: usize = 32;

/// What is wrong with an event, before it is sent: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidEvent {
    /// The event's field to blame (`id`, `quantity`, `properties.KEY`, ...).
    pub field: String,
    /// A sentence saying what is wrong.
    pub message: String,
}

fn invalid(field: &str, message: String) -> InvalidEvent {
    InvalidEvent {
        field: field.to_owned(),
        message,
    }
}

/// One usage event, in the shape `POST /v1/events` takes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Unique per org; a resend under the same id never counts twice.
    pub id: String,
    /// The project the usage belongs to (`prj_…`).
    pub project_id: String,
    /// The meter (`api_calls`, `compute_minutes`, ...).
    pub meter: String,
    /// A decimal, sent as a string so no digit is lost to floating point.
    pub quantity: String,
    /// When the usage happened (RFC 3339).
    pub timestamp: String,
    /// Extra attributes.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
}

impl Event {
    /// An event of `quantity` units of `meter` in `project_id`, happening now, with a fresh
    /// random id (`evt_` and 32 hex digits). `quantity` is anything that prints as a decimal
    /// (`1`, `2.5`, a `rust_decimal::Decimal`); it is checked by [`Event::check`].
    pub fn new(
        project_id: impl Into<String>,
        meter: impl Into<String>,
        quantity: impl std::fmt::Display,
    ) -> Event {
        Event {
            id: format!("evt_{:032x}", rand::random::<u128>()),
            project_id: project_id.into(),
            meter: meter.into(),
            quantity: quantity.to_string(),
            timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            properties: Map::new(),
        }
    }

    /// The same event under the caller's own id (e.g. a request id): sending it twice, from
    /// two processes or after a restart, still counts once.
    pub fn with_id(mut self, id: impl Into<String>) -> Event {
        self.id = id.into();
        self
    }

    /// The same event at another instant.
    pub fn at(mut self, at: DateTime<Utc>) -> Event {
        self.timestamp = at.to_rfc3339_opts(SecondsFormat::Millis, true);
        self
    }

    /// The same event with one more property.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<Value>) -> Event {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Checks the bounds this crate can check without the catalogue: the id's length and
    /// characters, names present and bounded, a finite non-negative decimal quantity of at
    /// most 18 significant digits, at most [`MAX_PROPERTIES`] properties.
    pub fn check(&self) -> Result<(), InvalidEvent> {
        let id = &self.id;
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(invalid(
                "id",
                format!("must be 1 to {MAX_ID_LEN} characters, got {}", id.len()),
            ));
        }
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "id",
                "must be printable ASCII without spaces".to_owned(),
            ));
        }
        for (field, value) in [("project_id", &self.project_id), ("meter", &self.meter)] {
            if value.is_empty() || value.len() > MAX_NAME_LEN {
                return Err(invalid(
                    field,
                    format!(
                        "must be 1 to {MAX_NAME_LEN} characters, got {}",
                        value.len()
                    ),
                ));
            }
        }
        check_quantity(&self.quantity)?;
        if self.properties.len() > MAX_PROPERTIES {
            return Err(invalid(
                "properties",
                format!(
                    "at most {MAX_PROPERTIES} properties, got {}",
                    self.properties.len()
                ),
            ));
        }
        if let Some(key) = self
            .properties
            .keys()
            .find(|k| k.is_empty() || k.len() > MAX_NAME_LEN)
        {
            return Err(invalid(
                "properties",
                format!("a property key must be 1 to {MAX_NAME_LEN} characters: {key:?}"),
            ));
        }
        Ok(())
    }
}

/// A plain decimal: digits with at most one point, no sign, exponent or spaces, and at
/// most 18 significant digits (what Tally's counters keep exactly).
fn check_quantity(q: &str) -> Result<(), InvalidEvent> {
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || !digits_only(int)
        || !digits_only(frac)
        || (q.contains('.') && frac.is_empty())
    {
        return Err(invalid(
            "quantity",
            format!("must be a non-negative decimal such as 1 or 2.5, got {q:?}"),
        ));
    }
    let significant = format!("{int}{frac}");
    let significant = significant.trim_start_matches('0').trim_end_matches('0');
    if significant.len() > 18 {
        return Err(invalid(
            "quantity",
            format!("at most 18 significant digits, got {}", significant.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Event {
        Event::new("prj_1", "api_calls", 1)
    }

    #[test]
    fn new_events_get_distinct_ids_that_survive_clones() {
        let a = ok();
        let b = ok();
        assert_ne!(a.id, b.id);
        assert!(a.id.starts_with("evt_") && a.id.len() == 36, "{}", a.id);
        assert_eq!(a.clone().id, a.id, "a retry resends the same id");
        assert_eq!(a.check(), Ok(()));
    }

    #[test]
    fn each_bound_is_refused_naming_its_field() {
        let field = |e: Event| e.check().map_err(|e| e.field);
        assert_eq!(field(ok().with_id("")), Err("id".to_owned()));
        assert_eq!(field(ok().with_id("a b")), Err("id".to_owned()));
        assert_eq!(field(ok().with_id("x".repeat(129))), Err("id".to_owned()));
        assert_eq!(field(ok().with_id("x".repeat(128))), Ok(()));
        assert_eq!(field(Event::new("", "m", 1)), Err("project_id".to_owned()));
        assert_eq!(field(Event::new("p", "", 1)), Err("meter".to_owned()));
        for bad in ["-1", "1e3", "", ".5", "5.", "1.2.3", "NaN", " 1"] {
            assert_eq!(
                field(Event::new("p", "m", bad)),
                Err("quantity".to_owned()),
                "{bad:?}"
            );
        }
        for good in ["0", "2.5", "000123.4500", "123456789012345678"] {
            assert_eq!(field(Event::new("p", "m", good)), Ok(()), "{good:?}");
        }
        assert_eq!(
            field(Event::new("p", "m", "1234567890123456789")),
            Err("quantity".to_owned())
        );
        let many = (0..=MAX_PROPERTIES).fold(ok(), |e, i| e.property(format!("k{i}"), i));
        assert_eq!(field(many), Err("properties".to_owned()));
    }

    #[test]
    fn the_wire_shape_is_the_contracts() {
        let at: DateTime<Utc> = "2026-11-26T10:00:00Z".parse().unwrap_or_default();
        let e = Event::new("prj_1", "api_calls", "2.5")
            .with_id("evt_01")
            .at(at)
            .property("route", "/x");
        assert_eq!(
            serde_json::to_value(&e).ok(),
            Some(
                serde_json::json!({"id": "evt_01", "project_id": "prj_1", "meter": "api_calls",
                "quantity": "2.5", "timestamp": "2026-11-26T10:00:00.000Z",
                "properties": {"route": "/x"}})
            )
        );
    }
}
