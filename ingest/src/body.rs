//! Splitting a `POST /v1/events` body into the raw JSON of each event.
//!
//! The body is never parsed into a `serde_json::Value`: it is split into borrowed
//! [`RawValue`]s so that each event's quantity reaches [`tally_core::Event::validate`] as the
//! exact text the client sent (a float would round `0.1` and 19-digit integers). A body-level
//! problem (not JSON, wrong shape, empty or oversized batch) is a [`BodyError`] naming `body`
//! or `events`, answered `400`; a problem with one event is that event's rejection only.
//!
//! Three encodings, chosen by `Content-Type` ([`BodyFormat`]): Tally's own (one event object
//! or `{"events": [...]}`), one CloudEvent (`application/cloudevents+json`) and a CloudEvents
//! batch (`application/cloudevents-batch+json`, a JSON array). CloudEvents are rewritten into
//! Tally's event JSON (`id` → id, `type` → meter, `subject` → project_id, `time` → timestamp,
//! `data.quantity` → quantity, other `data` fields → properties) and their errors name the
//! CloudEvents attribute ([`BodyFormat::client_field`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use axum::http::{HeaderMap, header};
use serde_json::value::RawValue;
use tally_core::event::{ErrorCode, EventError, MAX_PROPERTIES_DEPTH};
use tally_core::json;

use crate::error::ApiError;

// The limits live in the HTTP seam, where every API's OpenAPI document states them too.
// Larger than `MAX_BODY_BYTES` is `413`; more than `MAX_BATCH_EVENTS` events is `400`.
pub use tally_http::events::{MAX_BATCH_EVENTS, MAX_BODY_BYTES};

/// How a body is encoded, decided by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// Tally's own: one event object, or `{"events": [...]}` (any other content type,
    /// including none, is read this way).
    Native,
    /// `application/cloudevents+json`: one CloudEvent in structured mode.
    CloudEvent,
    /// `application/cloudevents-batch+json`: a JSON array of CloudEvents.
    CloudEventBatch,
}

impl BodyFormat {
    /// Reads the `Content-Type` (media type only, case-insensitive).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        match media.as_deref() {
            Some("application/cloudevents+json") => BodyFormat::CloudEvent,
            Some("application/cloudevents-batch+json") => BodyFormat::CloudEventBatch,
            _ => BodyFormat::Native,
        }
    }

    /// The name the client used for a field that validation names in Tally's terms
    /// (`meter` is `type` in a CloudEvent, `quantity` is `data.quantity`, ...).
    pub fn client_field(self, field: &str) -> String {
        if self == BodyFormat::Native {
            return field.to_owned();
        }
        match field {
            "meter" => "type".into(),
            "project_id" => "subject".into(),
            "timestamp" => "time".into(),
            "quantity" => "data.quantity".into(),
            "properties" => "data".into(),
            other => match other.strip_prefix("properties.") {
                Some(rest) => format!("data.{rest}"),
                None => other.to_owned(),
            },
        }
    }
}

/// Why a whole body was refused (`400`). `field` is `body` or `events`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BodyError {
    /// `malformed_json` (not JSON at all) or `invalid_body` (JSON of the wrong shape).
    pub code: &'static str,
    /// `body` or `events`.
    pub field: &'static str,
    /// Human sentence.
    pub message: String,
}

impl BodyError {
    fn shape(field: &'static str, message: impl Into<String>) -> Self {
        BodyError {
            code: "invalid_body",
            field,
            message: message.into(),
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        ApiError::bad_request(e.code, e.field, e.message)
    }
}

/// One event of a body: its JSON text in Tally's shape, ready for
/// [`tally_core::Event::validate`], or why it could not even be rewritten into that shape
/// (a CloudEvent that is not an object, say). Either way it is that event's business only.
pub type Candidate<'a> = Result<Cow<'a, str>, EventError>;

/// Splits a body into its events. Errors name `body` or `events`; the result holds 1 to
/// [`MAX_BATCH_EVENTS`] candidates.
pub fn split_body(format: BodyFormat, body: &[u8]) -> Result<Vec<Candidate<'_>>, BodyError> {
    let top = parse_json(body)?;
    match format {
        BodyFormat::Native => split_native(top),
        BodyFormat::CloudEvent => {
            if !top.get().starts_with('{') {
                return Err(BodyError::shape(
                    "body",
                    "an application/cloudevents+json body must be one CloudEvent object",
                ));
            }
            Ok(vec![cloudevent_to_native(top).map(Cow::Owned)])
        }
        BodyFormat::CloudEventBatch => {
            let events: Vec<&RawValue> = serde_json::from_str(top.get()).map_err(|_| {
                BodyError::shape(
                    "body",
                    "an application/cloudevents-batch+json body must be a JSON array of CloudEvents",
                )
            })?;
            check_count("body", events.len())?;
            Ok(events
                .into_iter()
                .map(|e| cloudevent_to_native(e).map(Cow::Owned))
                .collect())
        }
    }
}

fn parse_json(body: &[u8]) -> Result<&RawValue, BodyError> {
    let malformed = |message: String| BodyError {
        code: "malformed_json",
        field: "body",
        message,
    };
    let text = std::str::from_utf8(body).map_err(|e| {
        malformed(format!(
            "the body must be UTF-8 JSON; invalid UTF-8 at byte {}",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(malformed(
            "the body is empty; send one event object or {\"events\": [...]}".into(),
        ));
    }
    serde_json::from_str(text).map_err(|e| malformed(format!("the body is not valid JSON: {e}")))
}

fn split_native(top: &RawValue) -> Result<Vec<Candidate<'_>>, BodyError> {
    let wrong_shape = || {
        BodyError::shape(
            "body",
            "the body must be one event object or {\"events\": [event, ...]}",
        )
    };
    if !top.get().starts_with('{') {
        return Err(wrong_shape());
    }
    let fields = match json::entries(top.get()) {
        Ok(fields) => fields,
        Err(e @ json::ShapeError::DuplicateKey { .. }) if e.field() == "events" => {
            return Err(BodyError::shape("events", e.to_string()));
        }
        Err(e @ json::ShapeError::DuplicateKey { .. }) => {
            let batch = serde_json::from_str::<HashMap<Cow<'_, str>, &RawValue>>(top.get())
                .is_ok_and(|f| f.contains_key("events"));
            if batch {
                return Err(BodyError::shape("body", e.to_string()));
            }
            // One event repeating a key is that event's rejection, not the body's.
            return Ok(vec![Ok(Cow::Borrowed(top.get()))]);
        }
        Err(_) => return Err(wrong_shape()),
    };
    let Some((_, events)) = fields.iter().find(|(k, _)| k == "events") else {
        return Ok(vec![Ok(Cow::Borrowed(top.get()))]);
    };
    if let Some((other, _)) = fields.iter().find(|(k, _)| k != "events") {
        return Err(BodyError::shape(
            "body",
            format!(
                "a batch body holds only \"events\", not {:?}",
                other.chars().take(64).collect::<String>()
            ),
        ));
    }
    let events: Vec<&RawValue> = serde_json::from_str(events.get())
        .map_err(|_| BodyError::shape("events", "events must be an array of event objects"))?;
    check_count("events", events.len())?;
    Ok(events
        .into_iter()
        .map(|e| Ok(Cow::Borrowed(e.get())))
        .collect())
}

fn check_count(field: &'static str, n: usize) -> Result<(), BodyError> {
    if n == 0 {
        Err(BodyError::shape(
            field,
            format!("{field} must hold at least one event"),
        ))
    } else if n > MAX_BATCH_EVENTS {
        Err(BodyError::shape(
            field,
            format!("{field} may hold at most {MAX_BATCH_EVENTS} events, got {n}; split the batch"),
        ))
    } else {
        Ok(())
    }
}

/// Rewrites one structured-mode CloudEvent into Tally's event JSON, keeping every value's
/// text as sent (so `data.quantity` never becomes a float). Attributes Tally does not use
/// (`specversion`, `source`, extensions, ...) are ignored.
fn cloudevent_to_native(raw: &RawValue) -> Result<String, EventError> {
    let not_object = || {
        EventError::new(
            ErrorCode::MalformedEvent,
            "",
            "each CloudEvent must be a JSON object of attributes",
        )
    };
    // A repeated attribute (or data member) would be read as its last copy; refuse it,
    // named as the client wrote it, and bound the nesting as for a native event.
    if let Err(e) = json::check(raw.get(), MAX_PROPERTIES_DEPTH + 1, "") {
        return Err(match e {
            json::ShapeError::DuplicateKey { .. } => {
                EventError::new(ErrorCode::DuplicateKey, e.field(), e.to_string())
            }
            json::ShapeError::TooDeep { .. } => EventError::new(
                ErrorCode::InvalidProperties,
                "properties",
                format!(
                    "data may nest at most {MAX_PROPERTIES_DEPTH} levels of objects and arrays"
                ),
            ),
            json::ShapeError::Syntax(_) => not_object(),
        });
    }
    let attrs: HashMap<Cow<'_, str>, &RawValue> =
        serde_json::from_str(raw.get()).map_err(|_| not_object())?;
    // The two required attributes Tally does not use are still required: a body without
    // them is not a CloudEvent, and taking it would hide a client's mistake.
    for (name, want) in [("specversion", Some("1.0")), ("source", None)] {
        let value = attrs
            .get(name)
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
            .filter(|v| !v.is_empty());
        match (value, want) {
            (None, _) => {
                return Err(EventError::new(
                    ErrorCode::MissingField,
                    name,
                    format!("a CloudEvent needs the {name} attribute (a non-empty string)"),
                ));
            }
            (Some(v), Some(want)) if v != want => {
                return Err(EventError::new(
                    ErrorCode::InvalidType,
                    name,
                    format!(
                        "specversion must be \"1.0\", got {:?}",
                        v.chars().take(16).collect::<String>()
                    ),
                ));
            }
            _ => {}
        }
    }
    let mut native: BTreeMap<&'static str, Cow<'_, RawValue>> = BTreeMap::new();
    for (ce, ours) in [
        ("id", "id"),
        ("type", "meter"),
        ("subject", "project_id"),
        ("time", "timestamp"),
    ] {
        if let Some(v) = attrs.get(ce) {
            native.insert(ours, Cow::Borrowed(*v));
        }
    }
    if let Some(data) = attrs.get("data").filter(|d| d.get() != "null") {
        let fields: BTreeMap<Cow<'_, str>, &RawValue> =
            serde_json::from_str(data.get()).map_err(|_| {
                EventError::new(
                    ErrorCode::InvalidProperties,
                    "properties",
                    "data must be a JSON object holding quantity and other properties",
                )
            })?;
        let mut properties = BTreeMap::new();
        for (k, v) in fields {
            if k == "quantity" {
                native.insert("quantity", Cow::Borrowed(v));
            } else {
                properties.insert(k, v);
            }
        }
        if !properties.is_empty() {
            let props = serde_json::value::to_raw_value(&properties).map_err(|_| {
                EventError::new(
                    ErrorCode::InvalidProperties,
                    "properties",
                    "data is invalid",
                )
            })?;
            native.insert("properties", Cow::Owned(props));
        }
    }
    serde_json::to_string(&native).map_err(|_| not_object())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn texts(c: &[Candidate<'_>]) -> Vec<String> {
        c.iter().map(|c| c.as_ref().unwrap().to_string()).collect()
    }

    #[test]
    fn one_event_or_a_batch() {
        let one = split_body(BodyFormat::Native, br#" {"id":"a","quantity":0.1} "#).unwrap();
        assert_eq!(texts(&one), [r#"{"id":"a","quantity":0.1}"#]);
        let batch = split_body(
            BodyFormat::Native,
            br#"{"events":[{"id":"a"}, 7, {"quantity":1e3}]}"#,
        )
        .unwrap();
        assert_eq!(texts(&batch), [r#"{"id":"a"}"#, "7", r#"{"quantity":1e3}"#]);
    }

    #[test]
    fn body_errors_name_body_or_events() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"", "malformed_json", "body"),
            (b"{", "malformed_json", "body"),
            (b"{} x", "malformed_json", "body"),
            (b"\xff", "malformed_json", "body"),
            (b"[1]", "invalid_body", "body"),
            (b"\"e\"", "invalid_body", "body"),
            (br#"{"events":[]}"#, "invalid_body", "events"),
            (br#"{"events":{}}"#, "invalid_body", "events"),
            (br#"{"events":null}"#, "invalid_body", "events"),
            (br#"{"events":[{}],"x":1}"#, "invalid_body", "body"),
            (
                br#"{"events":[{}],"events":[{}]}"#,
                "invalid_body",
                "events",
            ),
            (br#"{"events":[{}],"x":1,"x":2}"#, "invalid_body", "body"),
        ];
        for (body, code, field) in cases {
            let e = split_body(BodyFormat::Native, body).unwrap_err();
            assert_eq!((e.code, e.field), (*code, *field), "{body:?}");
        }
        let many = format!("{{\"events\":[{}]}}", vec!["{}"; 1001].join(","));
        let e = split_body(BodyFormat::Native, many.as_bytes()).unwrap_err();
        assert_eq!(e.field, "events");
        assert!(e.message.contains("1000"), "{}", e.message);
        let max = format!("{{\"events\":[{}]}}", vec!["{}"; 1000].join(","));
        assert_eq!(
            split_body(BodyFormat::Native, max.as_bytes())
                .unwrap()
                .len(),
            1000
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = "[".repeat(200_000);
        assert!(split_body(BodyFormat::Native, deep.as_bytes()).is_err());
        let deep = format!("{{\"events\":{}", "[".repeat(200_000));
        assert!(split_body(BodyFormat::Native, deep.as_bytes()).is_err());
    }

    #[test]
    fn content_type_picks_the_format() {
        let mut h = HeaderMap::new();
        assert_eq!(BodyFormat::from_headers(&h), BodyFormat::Native);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/CloudEvents+JSON; charset=utf-8"),
        );
        assert_eq!(BodyFormat::from_headers(&h), BodyFormat::CloudEvent);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents-batch+json"),
        );
        assert_eq!(BodyFormat::from_headers(&h), BodyFormat::CloudEventBatch);
    }

    #[test]
    fn cloudevents_are_rewritten_keeping_exact_text() {
        let ce = br#"{"specversion":"1.0","source":"/svc","id":"e1","type":"compute_minutes",
            "subject":"prj_1","time":"2026-11-26T10:00:00Z",
            "data":{"quantity":0.1000000000000000055,"route":"/x"}}"#;
        let got = split_body(BodyFormat::CloudEvent, ce).unwrap();
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(got[0].as_ref().unwrap()).unwrap();
        assert_eq!(v["meter"], "compute_minutes");
        assert_eq!(v["project_id"], "prj_1");
        assert_eq!(v["timestamp"], "2026-11-26T10:00:00Z");
        assert_eq!(v["properties"], serde_json::json!({"route": "/x"}));
        assert!(
            got[0]
                .as_ref()
                .unwrap()
                .contains(r#""quantity":0.1000000000000000055"#)
        );
        let batch = split_body(
            BodyFormat::CloudEventBatch,
            br#"[{"specversion":"1.0","source":"/s","id":"a"}, 3, {"id":"b"},
                {"specversion":"0.3","source":"/s"}, {"specversion":"1.0","source":""}]"#,
        )
        .unwrap();
        assert!(batch[0].is_ok());
        assert_eq!(
            batch[1].as_ref().unwrap_err().code,
            ErrorCode::MalformedEvent
        );
        // specversion and source are required, specversion is 1.0, source is not empty.
        let fields: Vec<&str> = batch[2..]
            .iter()
            .map(|c| c.as_ref().unwrap_err().field.as_str())
            .collect();
        assert_eq!(fields, ["specversion", "specversion", "source"]);
        let bad = split_body(
            BodyFormat::CloudEventBatch,
            br#"[{"specversion":"1.0","source":"/s","data":"text"}]"#,
        )
        .unwrap();
        assert_eq!(bad[0].as_ref().unwrap_err().field, "properties");
        assert_eq!(BodyFormat::CloudEvent.client_field("properties"), "data");
        assert_eq!(BodyFormat::CloudEvent.client_field("meter"), "type");
        assert_eq!(
            BodyFormat::CloudEvent.client_field("properties.user"),
            "data.user"
        );
        assert_eq!(BodyFormat::Native.client_field("meter"), "meter");
        assert_eq!(
            split_body(BodyFormat::CloudEventBatch, b"[]")
                .unwrap_err()
                .field,
            "body"
        );
        assert_eq!(
            split_body(BodyFormat::CloudEvent, b"[]").unwrap_err().field,
            "body"
        );
    }

    fn check(format: BodyFormat, body: &[u8]) {
        match split_body(format, body) {
            Ok(c) => assert!((1..=MAX_BATCH_EVENTS).contains(&c.len())),
            Err(e) => {
                assert!(e.field == "body" || e.field == "events", "{e:?}");
                assert!(!e.message.is_empty());
            }
        }
    }

    const FORMATS: [BodyFormat; 3] = [
        BodyFormat::Native,
        BodyFormat::CloudEvent,
        BodyFormat::CloudEventBatch,
    ];

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            for f in FORMATS {
                check(f, &body);
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(body in ".{0,256}") {
            for f in FORMATS {
                check(f, body.as_bytes());
            }
        }

        #[test]
        fn json_like_bodies_never_panic(
            body in r#"[\[\]{}",:0-9a-z \-.e\\]{0,128}"#,
            wrap in 0..4u8,
        ) {
            let body = match wrap {
                0 => body,
                1 => format!("{{\"events\":{body}}}"),
                2 => format!("{{\"events\":[{body}]}}"),
                _ => format!("[{{\"data\":{body}}}]"),
            };
            for f in FORMATS {
                check(f, body.as_bytes());
            }
        }
    }
}
