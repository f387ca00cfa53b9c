//! Shape checks on JSON text that `serde_json` does not make: a key given twice in one
//! object, and nesting deeper than a bound.
//!
//! `serde_json` keeps the last of two equal keys (`{"quantity":"1","quantity":"1000"}`
//! reads as 1000), so a body could mean one thing to Tally and another to a proxy, a log
//! reader or the client's own code. Ingest refuses such a body instead, naming the key
//! ([`check`]). Depth is bounded for the same reason the queue envelope needs it: an event
//! accepted with 126 levels of `properties` gains two more inside the envelope and no
//! longer decodes under `serde_json`'s recursion limit of 128.
//!
//! Pure: it walks the text once with `serde_json`'s own parser, building nothing.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// What [`check`] found wrong. `path` is where, in the dotted form errors name fields with
/// (`properties.route`, `properties.tags[2]`); `""` is the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// An object gives `key` twice.
    #[error("{key:?} is given twice{}; each key may appear once", at(path))]
    DuplicateKey {
        /// The object holding the key (`""` for the top level).
        path: String,
        /// The repeated key.
        key: String,
    },
    /// Objects and arrays nest deeper than allowed.
    #[error("the JSON nests deeper than {max} levels{}", at(path))]
    TooDeep {
        /// The first value past the bound.
        path: String,
        /// The bound.
        max: usize,
    },
    /// Not JSON at all (the caller usually parsed it already and reports its own error).
    #[error("not valid JSON: {0}")]
    Syntax(String),
}

impl ShapeError {
    /// The dotted path of the field the error is about: the duplicate key's own path, or
    /// the first value that is too deep.
    pub fn field(&self) -> String {
        match self {
            ShapeError::DuplicateKey { path, key } => join(path, key),
            ShapeError::TooDeep { path, .. } => path.clone(),
            ShapeError::Syntax(_) => String::new(),
        }
    }
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" in {path}")
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Checks that no object in `text` repeats a key and that objects and arrays nest at most
/// `max_depth` levels (the outermost object or array is level 1; scalars add none). `root`
/// is the path of `text` itself in error messages (`""`, or `properties` when checking
/// only that part of an event).
pub fn check(text: &str, max_depth: usize, root: &str) -> Result<(), ShapeError> {
    let found = RefCell::new(None);
    let walk = Walk {
        depth: 0,
        max_depth,
        path: Cow::Borrowed(root),
        found: &found,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let result = walk.deserialize(&mut de).and_then(|()| de.end());
    match (result, found.into_inner()) {
        (_, Some(shape)) => Err(shape),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(ShapeError::Syntax(e.to_string())),
    }
}

/// The members of the JSON object `text`, in order, each value as its raw text; a key
/// given twice is refused ([`ShapeError::DuplicateKey`] at path `""`). Only this level is
/// looked at: what the values hold is the caller's business. Not an object, or not JSON:
/// [`ShapeError::Syntax`].
pub fn entries(text: &str) -> Result<Vec<(String, &RawValue)>, ShapeError> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, &'de RawValue)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, &'de RawValue)> = Vec::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                let value: &'de RawValue = map.next_value()?;
                out.push((key.into_owned(), value));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let members = de::Deserializer::deserialize_map(&mut de, Members)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| ShapeError::Syntax(e.to_string()))?;
    let mut seen: HashSet<&str> = HashSet::with_capacity(members.len());
    for (key, _) in &members {
        if !seen.insert(key) {
            return Err(ShapeError::DuplicateKey {
                path: String::new(),
                key: key.clone(),
            });
        }
    }
    Ok(members)
}

/// One value being walked: how deep it sits and where, and the cell the first problem is
/// written to (serde's error type carries only a message, so the structured error travels
/// beside it).
struct Walk<'a> {
    depth: usize,
    max_depth: usize,
    path: Cow<'a, str>,
    found: &'a RefCell<Option<ShapeError>>,
}

impl Walk<'_> {
    fn fail<E: de::Error>(&self, shape: ShapeError) -> E {
        let message = shape.to_string();
        *self.found.borrow_mut() = Some(shape);
        E::custom(message)
    }

    fn enter<E: de::Error>(&self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > self.max_depth {
            return Err(self.fail(ShapeError::TooDeep {
                path: self.path.to_string(),
                max: self.max_depth,
            }));
        }
        Ok(depth)
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        let mut i = 0usize;
        loop {
            let item = Walk {
                depth,
                max_depth: self.max_depth,
                path: Cow::Owned(format!("{}[{i}]", self.path)),
                found: self.found,
            };
            if seq.next_element_seed(item)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let key = key.into_owned();
            if seen.contains(&key) {
                return Err(self.fail(ShapeError::DuplicateKey {
                    path: self.path.to_string(),
                    key,
                }));
            }
            let value = Walk {
                depth,
                max_depth: self.max_depth,
                path: Cow::Owned(join(&self.path, &key)),
                found: self.found,
            };
            map.next_value_seed(value)?;
            seen.insert(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_repeated_key_is_named_with_its_path() {
        let e = check(r#"{"quantity":"1","quantity":"1000"}"#, 8, "").unwrap_err();
        assert_eq!(
            e,
            ShapeError::DuplicateKey {
                path: String::new(),
                key: "quantity".into()
            }
        );
        assert_eq!(e.field(), "quantity");
        let e = check(r#"{"a":{"b":[1,{"c":1,"c":2}]}}"#, 8, "properties").unwrap_err();
        assert_eq!(e.field(), "properties.a.b[1].c");
        assert!(
            e.to_string()
                .contains("\"c\" is given twice in properties.a.b[1]")
        );
        // The same key in sibling objects, or escaped differently but equal, is judged as
        // the parser reads it.
        check(r#"{"a":{"k":1},"b":{"k":1}}"#, 8, "").unwrap();
        let e = check(r#"{"k":1,"\u006b":2}"#, 8, "").unwrap_err();
        assert_eq!(e.field(), "k");
    }

    #[test]
    fn depth_counts_objects_and_arrays() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        check(&nested(8), 8, "").unwrap();
        let e = check(&nested(9), 8, "p").unwrap_err();
        assert_eq!(
            e,
            ShapeError::TooDeep {
                path: "p[0][0][0][0][0][0][0][0]".into(),
                max: 8
            }
        );
        // Far past serde_json's own limit of 128: still our error, not a parser failure.
        let e = check(&nested(500), 8, "").unwrap_err();
        assert!(matches!(e, ShapeError::TooDeep { .. }));
        check(r#"{"a":"[[[[[[[[[[[[["}"#, 2, "").unwrap();
    }

    #[test]
    fn entries_keep_order_and_refuse_a_repeated_key_at_their_level_only() {
        let members = entries(r#"{"b":[1,{"x":1,"x":2}],"a":"s"}"#).unwrap();
        let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a"]);
        assert_eq!(members[0].1.get(), r#"[1,{"x":1,"x":2}]"#);
        assert_eq!(
            entries(r#"{"events":[],"events":[1]}"#)
                .unwrap_err()
                .field(),
            "events"
        );
        assert!(matches!(entries("[1]"), Err(ShapeError::Syntax(_))));
    }

    #[test]
    fn syntax_errors_are_reported_as_such() {
        assert!(matches!(check("{", 8, ""), Err(ShapeError::Syntax(_))));
        assert!(matches!(check("{} x", 8, ""), Err(ShapeError::Syntax(_))));
    }
}
