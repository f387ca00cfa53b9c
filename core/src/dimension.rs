//! Meter dimensions: the properties a meter splits its counters by (`model`, `region`), the
//! series key that names one combination of their values (`llm_tokens{model=gpt-4}`), and
//! the cardinality bound on how many series an org may make of one meter in a month.
//!
//! This is its own module so the rules of a series key live in one place: the catalogue
//! checks declarations with it, ingest reads an event's values with it, the stores and the
//! usage API parse keys back with it. The design and its reasons are in
//! `docs/meters-dimensions.md`.
//!
//! A meter without dimensions has no suffix, so its counters keep the keys every earlier
//! release wrote.

use serde::{Deserialize, Serialize};

use crate::value_source::ValueSource;

/// Most dimensions one meter may declare. Each is one more factor in the number of series,
/// and the usage API allows at most this many filters.
pub const MAX_DIMENSIONS: usize = 3;

/// Longest dimension name (`model`), in bytes.
pub const MAX_DIMENSION_NAME_LEN: usize = 32;

/// Longest dimension value (`gpt-4`), in bytes.
pub const MAX_DIMENSION_VALUE_LEN: usize = 64;

/// Series an org may make of one meter in one month unless the catalogue says otherwise.
pub const DEFAULT_MAX_SERIES: u32 = 1_000;

/// Largest `max_series` a catalogue may set: every series is a counter written on every
/// event and read by every total, so the bound is what keeps both cheap.
pub const MAX_MAX_SERIES: u32 = 10_000;

/// The characters a dimension value may hold besides ASCII letters and digits. Not `#` (the
/// DynamoDB key separator), not `{ } = ,` (the series key's own syntax), no spaces or
/// control characters; an event whose value has any other character is refused naming the
/// property, never rewritten, so two different values can never meet in one series.
pub const DIMENSION_VALUE_PUNCTUATION: &str = "_.:/-";

/// One declared dimension: its name (what `group_by` and `filter[..]` use, and what the
/// series key writes) and the property path its value is read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dimension {
    /// 1 to [`MAX_DIMENSION_NAME_LEN`] bytes of `a-z 0-9 _`, starting with a letter.
    pub name: String,
    /// Where an event holds the value: always a `properties.` path.
    pub property: ValueSource,
}

/// A meter's dimensions and its cardinality bound. The default (no dimensions) is every
/// meter stored before dimensions existed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dimensions {
    /// In catalogue order, which is the order of the series key.
    pub keys: Vec<Dimension>,
    /// Series one org may make of the meter in one month.
    pub max_series: u32,
}

impl Default for Dimensions {
    fn default() -> Self {
        Dimensions {
            keys: Vec::new(),
            max_series: DEFAULT_MAX_SERIES,
        }
    }
}

impl Dimensions {
    /// Whether the meter has no dimensions (one series, the bare meter name).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The declared dimension called `name`.
    pub fn get(&self, name: &str) -> Option<&Dimension> {
        self.keys.iter().find(|d| d.name == name)
    }

    /// The declared names, in order, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.keys.iter().map(|d| d.name.as_str()).collect()
    }
}

/// Checks a dimension name; the error is a sentence.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
    if name.len() > MAX_DIMENSION_NAME_LEN
        || !first
        || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "a dimension name is 1 to {MAX_DIMENSION_NAME_LEN} characters of a-z, 0-9 and _, \
             starting with a letter, got {:?}",
            clip(name)
        ));
    }
    Ok(())
}

/// Checks a dimension value; the error is a sentence naming the rule.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_DIMENSION_VALUE_LEN {
        return Err(format!(
            "a dimension value is 1 to {MAX_DIMENSION_VALUE_LEN} bytes, got {}",
            value.len()
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || DIMENSION_VALUE_PUNCTUATION.contains(*c)))
    {
        return Err(format!(
            "a dimension value may hold only A-Z, a-z, 0-9 and {DIMENSION_VALUE_PUNCTUATION}, \
             got {c:?} in {:?}",
            clip(value)
        ));
    }
    Ok(())
}

/// The series key of one combination of values: `meter{a=x,b=y}`, values in declaration
/// order. `values` must already be checked ([`check_value`]); a meter without dimensions
/// (empty `values`) is its bare name.
pub fn series_key(meter: &str, values: &[(&str, &str)]) -> String {
    if values.is_empty() {
        return meter.to_owned();
    }
    let mut key = String::with_capacity(meter.len() + 2 + values.len() * 16);
    key.push_str(meter);
    key.push('{');
    for (i, (name, value)) in values.iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(name);
        key.push('=');
        key.push_str(value);
    }
    key.push('}');
    key
}

/// A series key split back into its meter and `(dimension, value)` pairs; `None` if it is
/// not one [`series_key`] makes (a bare meter name gives no pairs).
pub fn parse_series_key(key: &str) -> Option<(&str, Vec<(&str, &str)>)> {
    let Some(open) = key.find('{') else {
        return Some((key, Vec::new()));
    };
    let meter = &key[..open];
    let inner = key[open + 1..].strip_suffix('}')?;
    let mut pairs = Vec::new();
    for part in inner.split(',') {
        let (name, value) = part.split_once('=')?;
        check_name(name).ok()?;
        check_value(value).ok()?;
        pairs.push((name, value));
    }
    (pairs.len() <= MAX_DIMENSIONS).then_some((meter, pairs))
}

/// Whether a stored counter key `key` counts toward meter `meter`'s total: the bare meter,
/// or one of its series (not another meter that shares the prefix, `api_calls_v2`).
pub fn is_series_of(key: &str, meter: &str) -> bool {
    key.strip_prefix(meter)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_keys_round_trip_and_bare_meters_keep_their_name() {
        assert_eq!(series_key("api_calls", &[]), "api_calls");
        let key = series_key(
            "llm_tokens",
            &[("model", "gpt-4"), ("region", "eu:1/a_b.c")],
        );
        assert_eq!(key, "llm_tokens{model=gpt-4,region=eu:1/a_b.c}");
        assert_eq!(
            parse_series_key(&key),
            Some((
                "llm_tokens",
                vec![("model", "gpt-4"), ("region", "eu:1/a_b.c")]
            ))
        );
        assert_eq!(parse_series_key("api_calls"), Some(("api_calls", vec![])));
        for bad in [
            "m{",
            "m{a}",
            "m{a=}",
            "m{a=b",
            "m{A=b}",
            "m{a=b c}",
            "m{a=1,b=2,c=3,d=4}",
        ] {
            assert_eq!(parse_series_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_series_belongs_to_its_meter_and_not_to_a_longer_name() {
        assert!(is_series_of("api_calls", "api_calls"));
        assert!(is_series_of("api_calls{model=x}", "api_calls"));
        assert!(!is_series_of("api_calls_v2", "api_calls"));
        assert!(!is_series_of("api_calls_v2{model=x}", "api_calls"));
        assert!(!is_series_of("api", "api_calls"));
    }

    #[test]
    fn values_are_bounded_in_length_and_charset() {
        assert!(check_value("gpt-4o-mini_2024.07:18/eu").is_ok());
        assert!(check_value(&"v".repeat(MAX_DIMENSION_VALUE_LEN)).is_ok());
        assert!(check_value(&"v".repeat(MAX_DIMENSION_VALUE_LEN + 1)).is_err());
        assert!(check_value("").is_err());
        for c in ['#', '{', '}', '=', ',', ' ', 'é', '\n', '%'] {
            let err = check_value(&format!("a{c}b")).unwrap_err();
            assert!(err.contains(&format!("{c:?}")), "{err}");
        }
        assert!(check_name("model").is_ok());
        assert!(check_name("model_2").is_ok());
        for bad in ["", "Model", "2model", "mo-del", &"m".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
