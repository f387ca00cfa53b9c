//! CSV for `tally import`: a header line naming the columns, then one event per line,
//! rewritten into the JSON of a `POST /v1/events` event so that [`tally_core::Event::validate`]
//! checks it like any other.
//!
//! Each event field is read from the column `--columns FIELD=COLUMN` names, else from the
//! column named like the field (`id`, `project_id`, `meter`, `quantity`, `timestamp`); a
//! `properties` column holds a JSON object, and `properties.KEY` (a column so named, or
//! mapped with `--columns properties.KEY=COLUMN`) sets one property to the cell's text.
//! Other columns are ignored. An empty cell is an absent field (a meter's default quantity
//! then applies). Values keep their text: a quantity reaches validation as the exact
//! decimal written. A record must fit on its line (a quoted field may not hold a line
//! break), so CSV lines have the same bound as NDJSON ones. Errors name the column.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde_json::value::RawValue;
use tally_core::event::{EVENT_FIELDS, ErrorCode, EventError};

/// Most `properties.KEY` columns (an event has at most 32 properties).
const MAX_PROPERTY_COLUMNS: usize = 32;

/// Which column feeds which field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvLayout {
    /// Number of columns of the header.
    width: usize,
    /// (field, column index, column name), fields in [`EVENT_FIELDS`] order then properties.
    fields: Vec<(String, usize, String)>,
}

/// Parses one line as one CSV record.
fn record(line: &str) -> Result<csv::StringRecord, csv::Error> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .buffer_capacity(line.len().max(64))
        .from_reader(line.as_bytes());
    let mut rec = csv::StringRecord::new();
    if !reader.read_record(&mut rec)? {
        rec.clear();
    }
    Ok(rec)
}

/// Parses `--columns` entries (`FIELD=COLUMN`).
pub fn parse_columns(entries: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in entries {
        let Some((field, column)) = entry.split_once('=') else {
            bail!("--columns: {entry:?} must be FIELD=COLUMN");
        };
        let (field, column) = (field.trim(), column.trim());
        let known = EVENT_FIELDS.contains(&field)
            || field
                .strip_prefix("properties.")
                .is_some_and(|k| !k.is_empty() && !k.contains('.'));
        if !known {
            bail!(
                "--columns: {field:?} is not an event field; map {}, or properties.KEY",
                EVENT_FIELDS.join(", ")
            );
        }
        if column.is_empty() {
            bail!("--columns: the column for {field} is empty");
        }
        if out.iter().any(|(f, _)| f == field) {
            bail!("--columns: {field} is mapped twice");
        }
        out.push((field.to_owned(), column.to_owned()));
    }
    Ok(out)
}

impl CsvLayout {
    /// The layout of a file whose header line is `header`, with the `--columns` mapping.
    pub fn new(header: &str, columns: &[(String, String)]) -> anyhow::Result<CsvLayout> {
        let names: Vec<String> = record(header)
            .context("the CSV header line")?
            .iter()
            .map(|c| c.trim().to_owned())
            .collect();
        let index = |column: &str| names.iter().position(|n| n == column);
        let mut fields = Vec::new();
        for field in EVENT_FIELDS {
            let column = columns
                .iter()
                .find(|(f, _)| f == field)
                .map_or(field, |(_, c)| c.as_str());
            match index(column) {
                Some(i) => fields.push((field.to_owned(), i, column.to_owned())),
                None if column != field => {
                    bail!("--columns: the CSV header has no column {column:?} (for {field})")
                }
                None => {}
            }
        }
        let mut properties: Vec<(String, String)> = columns
            .iter()
            .filter(|(f, _)| f.starts_with("properties."))
            .cloned()
            .collect();
        for name in &names {
            let mapped = columns.iter().any(|(_, c)| c == name);
            if name.starts_with("properties.") && !mapped {
                properties.push((name.clone(), name.clone()));
            }
        }
        if properties.len() > MAX_PROPERTY_COLUMNS {
            bail!("the CSV maps more than {MAX_PROPERTY_COLUMNS} columns to properties");
        }
        for (field, column) in properties {
            let Some(i) = index(&column) else {
                bail!("--columns: the CSV header has no column {column:?} (for {field})");
            };
            fields.push((field, i, column));
        }
        Ok(CsvLayout {
            width: names.len(),
            fields,
        })
    }

    /// The column that feeds `field` (a field name as validation gives it), for errors.
    pub fn column_of(&self, field: &str) -> String {
        let exact = self.fields.iter().find(|(f, _, _)| f == field);
        match exact {
            Some((_, _, column)) => column.clone(),
            None => field.to_owned(),
        }
    }

    /// One record line rewritten into an event's JSON.
    pub fn to_json(&self, line: &str) -> Result<String, EventError> {
        let rec = record(line).map_err(|e| {
            EventError::new(
                ErrorCode::MalformedEvent,
                "",
                format!("the line is not a CSV record: {e}"),
            )
        })?;
        if rec.len() != self.width {
            return Err(EventError::new(
                ErrorCode::MalformedEvent,
                "",
                format!(
                    "the line has {} columns and the header {}",
                    rec.len(),
                    self.width
                ),
            ));
        }
        let mut event: BTreeMap<&str, Box<RawValue>> = BTreeMap::new();
        let mut properties: BTreeMap<&str, &str> = BTreeMap::new();
        let to_raw = |s: &str| serde_json::value::to_raw_value(s);
        let failed = |column: &str| {
            EventError::new(
                ErrorCode::MalformedEvent,
                column,
                format!("column {column:?} could not be read"),
            )
        };
        for (field, i, column) in &self.fields {
            let Some(cell) = rec.get(*i).filter(|c| !c.is_empty()) else {
                continue;
            };
            if let Some(key) = field.strip_prefix("properties.") {
                properties.insert(key, cell);
            } else if field == "properties" {
                let raw = RawValue::from_string(cell.to_owned()).map_err(|_| {
                    EventError::new(
                        ErrorCode::InvalidProperties,
                        "properties",
                        format!("column {column:?} must hold a JSON object"),
                    )
                })?;
                event.insert("properties", raw);
            } else {
                event.insert(field, to_raw(cell).map_err(|_| failed(column))?);
            }
        }
        if !properties.is_empty() {
            if event.contains_key("properties") {
                return Err(EventError::new(
                    ErrorCode::InvalidProperties,
                    "properties",
                    "a properties column and properties.KEY columns cannot both be set",
                ));
            }
            let raw =
                serde_json::value::to_raw_value(&properties).map_err(|_| failed("properties"))?;
            event.insert("properties", raw);
        }
        serde_json::to_string(&event).map_err(|_| failed(""))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn columns_map_fields_and_cells_become_event_json() {
        let columns = parse_columns(&[
            "id=event_id".to_owned(),
            "quantity=qty".to_owned(),
            "properties.region=where".to_owned(),
        ])
        .unwrap();
        let layout = CsvLayout::new(
            "event_id,project_id,meter,qty,timestamp,where,properties.tier,extra",
            &columns,
        )
        .unwrap();
        assert_eq!(
            layout
                .to_json(r#"e1,prj_a,compute_minutes,"1.50",2026-03-01T00:00:00Z,eu,gold,x"#)
                .unwrap(),
            r#"{"id":"e1","meter":"compute_minutes","project_id":"prj_a","properties":{"region":"eu","tier":"gold"},"quantity":"1.50","timestamp":"2026-03-01T00:00:00Z"}"#
        );
        // Empty cells are absent fields.
        assert_eq!(
            layout
                .to_json("e2,prj_a,api_calls,,2026-03-01T00:00:00Z,,,")
                .unwrap(),
            r#"{"id":"e2","meter":"api_calls","project_id":"prj_a","timestamp":"2026-03-01T00:00:00Z"}"#
        );
        assert_eq!(layout.column_of("quantity"), "qty");
        assert_eq!(layout.column_of("meter"), "meter");
        let e = layout.to_json("e3,prj_a").unwrap_err();
        assert_eq!(e.code, ErrorCode::MalformedEvent);
        assert!(e.message.contains("2 columns and the header 8"), "{e:?}");
    }

    #[test]
    fn bad_mappings_are_refused_before_any_line() {
        assert!(parse_columns(&["qty".to_owned()]).is_err());
        assert!(parse_columns(&["org_id=org".to_owned()]).is_err());
        assert!(parse_columns(&["id=a".to_owned(), "id=b".to_owned()]).is_err());
        let columns = parse_columns(&["quantity=qty".to_owned()]).unwrap();
        let err = CsvLayout::new("id,project_id,meter,amount,timestamp", &columns).unwrap_err();
        assert!(err.to_string().contains("\"qty\""), "{err}");
    }
}
