//! The rows of Tally's exports: usage counters and ledger entries as CSV records, and a
//! ledger row read back into the event it records.
//!
//! `tally export` (to a file or S3) and the API's export route write these same rows, so a
//! file from either reads the same; `tally verify-report` reads ledger rows back with
//! [`ledger_event`]. Ledger fields are the canonical texts of [`crate::audit`], so an export
//! carries everything the line digest covers, and nothing is lost on the way back.

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

use crate::audit::{aggregation_text, canonical_object, parse_aggregation, quantity_text};
use crate::counter::OwnedCounterKey;
use crate::event::{Event, Quantity};
use crate::ids::{EventId, MeterName, OrgId, ProjectId};

/// The header of a counters export.
pub const COUNTER_COLUMNS: [&str; 6] = [
    "org_id",
    "project_id",
    "meter",
    "granularity",
    "start",
    "value",
];

/// The header of a ledger export.
pub const LEDGER_COLUMNS: [&str; 8] = [
    "event_id",
    "org_id",
    "project_id",
    "meter",
    "aggregation",
    "quantity",
    "timestamp",
    "properties",
];

/// One counter as a row under [`COUNTER_COLUMNS`]; `project_id` is empty for the org-wide
/// counter, `start` is RFC 3339 to the second.
pub fn counter_row(key: &OwnedCounterKey, value: Decimal) -> [String; 6] {
    [
        key.org.to_string(),
        key.project
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        key.meter.to_string(),
        key.granularity.to_string(),
        key.start.to_rfc3339_opts(SecondsFormat::Secs, true),
        value.normalize().to_string(),
    ]
}

/// One ledger entry as a row under [`LEDGER_COLUMNS`], in the canonical texts.
pub fn ledger_row(e: &Event) -> [String; 8] {
    [
        e.id.to_string(),
        e.org_id.to_string(),
        e.project_id.to_string(),
        e.meter.to_string(),
        aggregation_text(&e.aggregation),
        quantity_text(e.quantity.value()),
        crate::audit::timestamp_text(&e.timestamp),
        canonical_object(&e.properties),
    ]
}

/// A ledger row that does not read back; says which column and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {reason}")]
pub struct RowError {
    /// The column at fault (a [`LEDGER_COLUMNS`] name).
    pub column: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// Reads a row under [`LEDGER_COLUMNS`] (in that order) back into the event it records.
pub fn ledger_event(fields: &[&str]) -> Result<Event, RowError> {
    let bad = |column: &'static str, reason: String| RowError { column, reason };
    if fields.len() != LEDGER_COLUMNS.len() {
        return Err(bad(
            "event_id",
            format!(
                "a row has {} columns, not {}",
                fields.len(),
                LEDGER_COLUMNS.len()
            ),
        ));
    }
    let id = EventId::parse(fields[0]).map_err(|e| bad("event_id", e.to_string()))?;
    let org_id = OrgId::parse(fields[1]).map_err(|e| bad("org_id", e.to_string()))?;
    let project_id = ProjectId::parse(fields[2]).map_err(|e| bad("project_id", e.to_string()))?;
    let meter = MeterName::parse(fields[3]).map_err(|e| bad("meter", e.to_string()))?;
    let aggregation = parse_aggregation(fields[4]).ok_or_else(|| {
        bad(
            "aggregation",
            format!("unknown aggregation {:?}", fields[4]),
        )
    })?;
    let quantity = Quantity::parse(fields[5]).map_err(|e| bad("quantity", e.to_string()))?;
    let timestamp = DateTime::parse_from_rfc3339(fields[6])
        .map_err(|e| bad("timestamp", e.to_string()))?
        .with_timezone(&Utc);
    let properties = match serde_json::from_str::<Value>(fields[7]) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(bad("properties", "must be a JSON object".to_owned())),
        Err(e) => return Err(bad("properties", e.to_string())),
    };
    Ok(Event {
        org_id,
        id,
        project_id,
        meter,
        aggregation,
        quantity,
        timestamp,
        properties,
    })
}

/// `fields` as one CSV record (RFC 4180: a field holding a comma, a quote or a line break is
/// quoted, its quotes doubled), ending in `\n`.
pub fn csv_record<S: AsRef<str>>(fields: &[S]) -> String {
    let mut out = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let f = f.as_ref();
        if f.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&f.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(f);
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::meter::Aggregation;
    use chrono::TimeZone;

    #[test]
    fn a_ledger_row_reads_back_into_its_event() {
        let e = Event {
            org_id: OrgId::parse("org_a").unwrap(),
            id: EventId::parse("evt-1").unwrap(),
            project_id: ProjectId::parse("prj_a").unwrap(),
            meter: MeterName::parse("active_users").unwrap(),
            aggregation: Aggregation::UniqueCount {
                property: "user".into(),
            },
            quantity: Quantity::parse("2.50").unwrap(),
            timestamp: Utc.timestamp_opt(1_700_000_000, 123).unwrap(),
            properties: serde_json::json!({"user": "a,\"b\"", "n": 1.5})
                .as_object()
                .cloned()
                .unwrap(),
        };
        let row = ledger_row(&e);
        let fields: Vec<&str> = row.iter().map(String::as_str).collect();
        let back = ledger_event(&fields).unwrap();
        assert_eq!(
            crate::audit::canonical_entry(&back),
            crate::audit::canonical_entry(&e)
        );
        assert_eq!(
            csv_record(&["a", "b,c", "d\"e"]),
            "a,\"b,c\",\"d\"\"e\"\n".to_owned()
        );
        let mut broken = fields.clone();
        broken[5] = "-1";
        assert_eq!(ledger_event(&broken).unwrap_err().column, "quantity");
        assert_eq!(ledger_event(&fields[..3]).unwrap_err().column, "event_id");
    }
}
