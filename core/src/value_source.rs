//! Where a meter reads an event's amount from ([`ValueSource`]): `quantity` or a property
//! path such as `properties.tokens`.
//!
//! Its own module because both [`crate::meter`] (a meter's value) and [`crate::dimension`]
//! (the property a dimension splits by) use it, and a meter also holds its dimensions: with
//! the type in either of the two, each would import the other.

use serde::{Deserialize, Serialize};

/// Most segments a meter's property path may have after `properties.` (`properties.a.b.c.d`).
/// Bounded so that reading an event's value is a short walk, and kept within
/// [`crate::event::MAX_PROPERTIES_DEPTH`] so every path can exist in an accepted event.
pub const MAX_VALUE_PATH_SEGMENTS: usize = 4;

/// Longest segment of a property path; the same bound as a property key
/// ([`crate::event::MAX_PROPERTY_KEY_LEN`]).
pub const MAX_VALUE_PATH_SEGMENT_LEN: usize = 64;

/// Where a meter reads an event's amount from: the event's `quantity` (every built-in
/// meter), or a number inside its `properties` (`properties.tokens`,
/// `properties.usage.output_tokens`), for events that carry several amounts or come from a
/// producer that cannot fill `quantity`.
///
/// Ingest resolves it: the amount read becomes the queued event's `quantity`, so the
/// aggregator, the stores and billing never need to know which field it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ValueSource {
    /// The event's `quantity` field.
    #[default]
    Quantity,
    /// A property path: the keys to follow from `properties` down to a number. Each
    /// segment is 1 to [`MAX_VALUE_PATH_SEGMENT_LEN`] bytes of `A-Z a-z 0-9 _ -` (so a dot
    /// always separates segments), at most [`MAX_VALUE_PATH_SEGMENTS`] of them.
    Property(Vec<String>),
}

impl ValueSource {
    /// Parses `quantity` or `properties.KEY[.KEY...]`; the error is a sentence naming
    /// the rule broken.
    pub fn parse(text: &str) -> Result<ValueSource, String> {
        if text == "quantity" {
            return Ok(ValueSource::Quantity);
        }
        let Some(rest) = text.strip_prefix("properties.") else {
            return Err(format!(
                "must be \"quantity\" or a property path like \"properties.tokens\", got {:?}",
                truncate(text, 80)
            ));
        };
        let segments: Vec<&str> = rest.split('.').collect();
        if segments.len() > MAX_VALUE_PATH_SEGMENTS {
            return Err(format!(
                "a property path may have at most {MAX_VALUE_PATH_SEGMENTS} keys after \
                 \"properties.\", got {}",
                segments.len()
            ));
        }
        for s in &segments {
            if s.is_empty()
                || s.len() > MAX_VALUE_PATH_SEGMENT_LEN
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "each key of a property path must be 1 to {MAX_VALUE_PATH_SEGMENT_LEN} \
                     characters of A-Z, a-z, 0-9, _ and -, got {:?}",
                    truncate(s, 80)
                ));
            }
        }
        Ok(ValueSource::Property(
            segments.into_iter().map(str::to_owned).collect(),
        ))
    }

    /// The path as written in the catalogue and named in errors (`properties.tokens`).
    pub fn path(&self) -> String {
        match self {
            ValueSource::Quantity => "quantity".to_owned(),
            ValueSource::Property(keys) => format!("properties.{}", keys.join(".")),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

string_conversions!(ValueSource, String, ValueSource::parse, |v: ValueSource| v
    .path());

impl std::fmt::Display for ValueSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_paths_are_bounded_and_round_trip() {
        assert_eq!(ValueSource::parse("quantity"), Ok(ValueSource::Quantity));
        let tokens = ValueSource::parse("properties.tokens").unwrap();
        assert_eq!(tokens, ValueSource::Property(vec!["tokens".into()]));
        assert_eq!(tokens.path(), "properties.tokens");
        let deep = ValueSource::parse("properties.usage.out_put.x-1.d").unwrap();
        assert_eq!(deep.path(), "properties.usage.out_put.x-1.d");
        let json = serde_json::to_string(&deep).unwrap();
        assert_eq!(json, "\"properties.usage.out_put.x-1.d\"");
        assert_eq!(serde_json::from_str::<ValueSource>(&json).unwrap(), deep);
        for bad in [
            "",
            "tokens",
            "properties",
            "properties.",
            "properties.a..b",
            "properties.a.b.c.d.e",
            "properties.a b",
            "properties.é",
            "data.tokens",
        ] {
            assert!(ValueSource::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("properties.{}", "k".repeat(MAX_VALUE_PATH_SEGMENT_LEN + 1));
        assert!(ValueSource::parse(&long).is_err());
        let longest = format!("properties.{}", "k".repeat(MAX_VALUE_PATH_SEGMENT_LEN));
        assert!(ValueSource::parse(&longest).is_ok());
    }
}
