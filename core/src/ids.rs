//! Identifier newtypes, parsed once at the edge.
//!
//! Every id that crosses a boundary (HTTP path, CLI flag, queue message, database row) is
//! parsed into one of these types, so code inside the workspace never holds an id that could
//! not have been issued. Tally-issued ids carry a type prefix (`org_`, `prj_`, `usr_`, `key_`,
//! `inv_`) so a project id pasted where an org id belongs is refused with a clear message instead of
//! silently matching nothing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused. The message names the field the caller got wrong; at the
/// HTTP edge it becomes a `400` (or a per-event rejection) carrying that field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The value was empty.
    #[error("{field} must not be empty")]
    Empty {
        /// The field that was empty.
        field: &'static str,
    },
    /// The value was longer than the field allows.
    #[error("{field} must be at most {max} characters")]
    TooLong {
        /// The offending field.
        field: &'static str,
        /// The limit.
        max: usize,
    },
    /// The value did not have the expected shape.
    #[error("{field} {expected}")]
    Malformed {
        /// The offending field.
        field: &'static str,
        /// What the field should look like, as a sentence fragment.
        expected: &'static str,
    },
}

impl IdError {
    /// The field this error is about.
    pub fn field(&self) -> &'static str {
        match self {
            IdError::Empty { field }
            | IdError::TooLong { field, .. }
            | IdError::Malformed { field, .. } => field,
        }
    }
}

/// Longest random part of a Tally-issued id.
const MAX_BODY: usize = 40;

/// What every text id shares, given a `parse`: `as_str`, `Display`, and the `String`
/// conversions serde goes through (`try_from = "String", into = "String"`), so a
/// deserialized id is always a parsed one.
macro_rules! text_id {
    ($name:ident) => {
        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        string_conversions!($name, IdError, $name::parse, |id: $name| id.0);
    };
}

/// Refuses an empty `s`, or one longer than `max` bytes, as the value of `field`.
fn check_len(s: &str, field: &'static str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { field });
    }
    if s.len() > max {
        return Err(IdError::TooLong { field, max });
    }
    Ok(())
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// Parses an id, refusing anything Tally could not have issued.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if s.is_empty() {
                    return Err(IdError::Empty { field: $field });
                }
                let body = s.strip_prefix($prefix).ok_or(IdError::Malformed {
                    field: $field,
                    expected: concat!("must start with \"", $prefix, "\""),
                })?;
                if body.is_empty() || body.len() > MAX_BODY {
                    return Err(IdError::Malformed {
                        field: $field,
                        expected: concat!("must be \"", $prefix, "\" followed by 1 to 40 lowercase letters or digits"),
                    });
                }
                if !body.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
                    return Err(IdError::Malformed {
                        field: $field,
                        expected: concat!("must be \"", $prefix, "\" followed by lowercase letters or digits"),
                    });
                }
                Ok(Self(s.to_owned()))
            }

            /// Builds a fresh id from 16 random bytes supplied by the caller (the core does
            /// no I/O, so randomness comes from outside).
            pub fn from_random(bytes: [u8; 16]) -> Self {
                Self(format!("{}{}", $prefix, hex::encode(bytes)))
            }
        }

        text_id!($name);

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

prefixed_id!(
    /// An organization: the tenant. Every stored item's key starts with it.
    OrgId, "org_", "org_id"
);
prefixed_id!(
    /// A project inside an organization.
    ProjectId, "prj_", "project_id"
);
prefixed_id!(
    /// A person; one user can belong to several organizations.
    UserId, "usr_", "user_id"
);
prefixed_id!(
    /// An API key's public id (the secret itself is never stored).
    ApiKeyId, "key_", "key_id"
);
prefixed_id!(
    /// An invitation's public id (its token is never stored, only the token's SHA-256).
    InvitationId, "inv_", "invitation_id"
);
prefixed_id!(
    /// A sign-in session's id (the `sid` claim of a session token).
    SessionId, "ses_", "session_id"
);

/// What a test-mode twin's id ends with (see [`OrgId::test_twin`]). Not hexadecimal, so no
/// issued org id (32 hex digits) ends with it.
pub const TEST_TWIN_SUFFIX: &str = "test";

impl OrgId {
    /// The id under which this org's **test-mode** usage is kept: events sent with a test key
    /// (`tk_test_…`) are stamped with it at ingest, so the ledger, the counters and the
    /// queue keep them apart from live usage with no new column or key anywhere. It is never
    /// an org (no org is stored under it), so month close, alerts, plan limits and Stripe,
    /// which all walk the stored orgs, never see test usage; the usage API reads it when
    /// asked for `mode=test`.
    ///
    /// The twin is the org's id with [`TEST_TWIN_SUFFIX`] appended (the random part cut to
    /// fit the 40-character bound first, which only ids Tally did not issue ever need), so it
    /// parses as an org id and survives every store and the queue envelope unchanged, and it
    /// cannot equal an issued id (those end in a hex digit).
    pub fn test_twin(&self) -> OrgId {
        let body = &self.0[Self::PREFIX.len()..];
        let keep = body.len().min(MAX_BODY - TEST_TWIN_SUFFIX.len());
        // Ids are ASCII (checked at parse), so any byte index is a char boundary.
        OrgId(format!(
            "{}{}{TEST_TWIN_SUFFIX}",
            Self::PREFIX,
            &body[..keep]
        ))
    }
}

/// Longest event id a client may send.
pub const MAX_EVENT_ID_LEN: usize = 128;

/// A client's idempotency key for one event: 1–128 printable ASCII characters, unique per
/// org. Resending an event with the same id never counts it twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventId(String);

impl EventId {
    /// Parses a client-supplied event id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_len(s, "id", MAX_EVENT_ID_LEN)?;
        if !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(IdError::Malformed {
                field: "id",
                expected: "must contain only printable ASCII characters",
            });
        }
        Ok(Self(s.to_owned()))
    }
}

text_id!(EventId);

/// An override's id ([`crate::overrides`]): `ovr_` and 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OverrideId(String);

impl OverrideId {
    /// Parses `ovr_` + 16 lowercase hex digits.
    pub fn parse(s: &str) -> Result<OverrideId, IdError> {
        let ok = s.len() == 20
            && s.starts_with("ovr_")
            && s[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(OverrideId(s.to_owned()))
        } else {
            Err(IdError::Malformed {
                field: "id",
                expected: "must be ovr_ and 16 lowercase hex digits",
            })
        }
    }

    /// A new id from 8 random bytes.
    pub fn from_random(bytes: [u8; 8]) -> OverrideId {
        OverrideId(format!("ovr_{}", hex::encode(bytes)))
    }
}

text_id!(OverrideId);

/// Longest meter name.
pub const MAX_METER_LEN: usize = 64;

/// A meter's name: 1–64 characters of lowercase letters, digits and `_`, starting with a
/// letter, so it is safe inside storage keys and URLs without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MeterName(String);

impl MeterName {
    /// Parses a meter name.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_len(s, "meter", MAX_METER_LEN)?;
        let mut bytes = s.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
        if !first_ok || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(IdError::Malformed {
                field: "meter",
                expected: "must start with a lowercase letter and contain only lowercase letters, digits and '_'",
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// Parses a counter key as the stores and the queue hold it: a meter name, or one of
    /// its series (`llm_tokens{model=gpt-4}`, see [`crate::dimension`]). What a client
    /// names a meter by is parsed with [`MeterName::parse`], which refuses series keys.
    pub fn parse_key(s: &str) -> Result<Self, IdError> {
        match crate::dimension::parse_series_key(s) {
            Some((base, pairs)) if !pairs.is_empty() => {
                MeterName::parse(base)?;
                Ok(Self(s.to_owned()))
            }
            _ => MeterName::parse(s),
        }
    }

    /// The key of one series of this meter: `values` are `(dimension, value)` pairs in
    /// declaration order, each already checked ([`crate::dimension::check_value`]). With no
    /// values, the meter itself.
    pub fn series(&self, values: &[(&str, &str)]) -> MeterName {
        Self(crate::dimension::series_key(self.base(), values))
    }

    /// The meter this key counts for: itself, or the meter of a series key.
    pub fn base(&self) -> &str {
        self.0.split_once('{').map_or(&self.0, |(base, _)| base)
    }

    /// The meter this key counts for, as a name of its own: what plan limits, prices and
    /// totals are keyed by (a clone of `self` for a bare meter).
    pub fn base_meter(&self) -> MeterName {
        Self(self.base().to_owned())
    }

    /// Whether this is the key of a series (`meter{...}`) rather than a bare meter.
    pub fn is_series(&self) -> bool {
        self.0.contains('{')
    }

    /// The `(dimension, value)` pairs of a series key; empty for a bare meter.
    pub fn series_values(&self) -> Vec<(&str, &str)> {
        crate::dimension::parse_series_key(&self.0)
            .map(|(_, pairs)| pairs)
            .unwrap_or_default()
    }
}

// Not `text_id!`: a stored or queued meter may be a series key, so decoding one takes
// `parse_key`, while everything a client sends goes through `parse`.
impl MeterName {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MeterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_conversions!(MeterName, IdError, MeterName::parse_key, |id: MeterName| id
    .0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orgs_test_twin_parses_and_never_equals_an_issued_id() {
        let org = OrgId::from_random([0xab; 16]);
        let twin = org.test_twin();
        assert_eq!(twin.as_str(), format!("{org}test"));
        assert_eq!(OrgId::parse(twin.as_str()), Ok(twin.clone()));
        assert_ne!(twin, org);
        // Issued ids are hex; a twin ends in "test".
        assert!(!twin.as_str()[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        // An id already at the 40-character bound still gives a parseable twin.
        let long = OrgId::parse(&format!("org_{}", "a".repeat(40))).unwrap();
        assert!(OrgId::parse(long.test_twin().as_str()).is_ok());
        assert_ne!(long.test_twin(), org.test_twin());
    }

    #[test]
    fn prefixed_ids_round_trip_and_refuse_wrong_kind() {
        let org = OrgId::from_random([7; 16]);
        assert_eq!(OrgId::parse(org.as_str()), Ok(org.clone()));
        let err = ProjectId::parse(org.as_str()).unwrap_err();
        assert_eq!(err.field(), "project_id");
        assert!(OrgId::parse("org_").is_err());
        assert!(OrgId::parse("org_ABC").is_err());
        assert!(OrgId::parse("").is_err());
        assert!(OrgId::parse(&format!("org_{}", "a".repeat(41))).is_err());
    }

    #[test]
    fn event_ids_are_bounded_printable_ascii() {
        assert!(EventId::parse("evt_01 ok").is_ok());
        assert!(EventId::parse(&"x".repeat(128)).is_ok());
        assert!(matches!(
            EventId::parse(&"x".repeat(129)),
            Err(IdError::TooLong { .. })
        ));
        assert!(EventId::parse("tab\there").is_err());
        assert!(EventId::parse("é").is_err());
        assert!(matches!(
            EventId::parse(""),
            Err(IdError::Empty { field: "id" })
        ));
    }

    #[test]
    fn meter_names_are_key_safe() {
        assert!(MeterName::parse("api_calls").is_ok());
        assert!(MeterName::parse("1abc").is_err());
        assert!(MeterName::parse("Api").is_err());
        assert!(MeterName::parse("a#b").is_err());
        // Series keys decode from storage and the queue, never from what a client names.
        assert!(MeterName::parse("llm{model=x}").is_err());
        let series = MeterName::parse_key("llm{model=gpt-4}").unwrap();
        assert_eq!(series.base(), "llm");
        assert!(series.is_series());
        assert_eq!(series.series_values(), [("model", "gpt-4")]);
        let json = serde_json::to_string(&series).unwrap();
        assert_eq!(serde_json::from_str::<MeterName>(&json).unwrap(), series);
        assert_eq!(
            MeterName::parse("llm")
                .unwrap()
                .series(&[("model", "gpt-4")]),
            series
        );
        for bad in ["Llm{model=x}", "llm{model=x", "llm{model=a#b}", "llm{}"] {
            assert!(MeterName::parse_key(bad).is_err(), "{bad}");
        }
        assert_eq!(
            MeterName::parse_key("api_calls").unwrap().base(),
            "api_calls"
        );
    }
}
