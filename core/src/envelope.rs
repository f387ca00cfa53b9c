//! The queue envelope: how events travel between ingest and the aggregator on SQS and
//! Kinesis, and how a Lambda consumer reads them back.
//!
//! A message body (an SQS message, a Kinesis record's data) is a versioned JSON object
//! holding some events of one org: `{"v":1,"events":[<event>,...]}`, each event as
//! [`Event`] serializes it. These bytes are a wire format: messages already in flight and
//! dead letters kept for weeks are read by later builds, so [`pack`] writes exactly what
//! earlier builds wrote (a test pins the bytes) and [`decode`] reads every envelope of
//! [`ENVELOPE_VERSION`]. A reader refuses an envelope of another version, one with no
//! events and one mixing orgs; the queue adapters dead-letter such a message with the
//! [`EnvelopeError`] as the reason, never hand it out.
//!
//! Events are read one by one ([`decode_each`]): an event that does not decode (a corrupt
//! or hand-edited message, another build's field) is handed back as [`Unreadable`] beside
//! the ones that do, so the consumer sets aside that event alone and applies the rest. Only
//! an envelope that is unreadable as a whole is refused as a whole.
//!
//! Pure: no I/O, so the SQS and Kinesis adapters, the polling worker and the Lambda
//! consumers all share one encoder and one decoder.

use std::collections::HashMap;

use serde::Deserialize;

use crate::event::Event;
use crate::ids::OrgId;

/// The envelope version this build writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// What every packed body starts with; kept in step with [`ENVELOPE_VERSION`] by a test.
const ENVELOPE_PREFIX: &str = r#"{"v":1,"events":["#;
/// What every packed body ends with.
const ENVELOPE_SUFFIX: &str = "]}";

/// Bytes an envelope adds around its events' JSON (prefix and suffix); an event whose JSON
/// is larger than `max_bytes - ENVELOPE_OVERHEAD` cannot be packed at all.
pub const ENVELOPE_OVERHEAD: usize = ENVELOPE_PREFIX.len() + ENVELOPE_SUFFIX.len();

/// Why a body is not a readable envelope. The message (its `Display`) is the reason a
/// dead-lettered message carries, so it names what is wrong in a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The bytes are not UTF-8 text.
    #[error("message body is not UTF-8: {0}")]
    NotUtf8(String),
    /// The text is not a JSON object with a numeric `v`.
    #[error("message body is not a Tally event envelope: {0}")]
    NotEnvelope(String),
    /// Another build's version.
    #[error("envelope version {found} is not supported (this build reads {ENVELOPE_VERSION})")]
    Version {
        /// The version the body names.
        found: u32,
    },
    /// The version is right but the events do not decode as [`Event`]s.
    #[error("message body does not decode as events: {0}")]
    Events(String),
    /// `events` is empty.
    #[error("envelope holds no events")]
    Empty,
    /// Events of more than one org in one envelope (a writer never does that).
    #[error("envelope mixes events of several orgs")]
    MixedOrgs,
}

/// An event of an envelope that does not decode as an [`Event`]: its JSON as it stood in
/// the message and why. It is never applied; the consumer dead-letters it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The event's JSON text as it stood in the message.
    pub json: String,
    /// Why it does not decode.
    pub reason: String,
}

/// One envelope's worth of events of one org, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedMessage {
    /// The org all events belong to (the Kinesis partition key is made from it, see
    /// [`partition_key`]).
    pub org: String,
    /// The envelope JSON.
    pub body: String,
    /// Indexes of the events (into the packed slice), in order.
    pub indexes: Vec<usize>,
}

/// What [`pack`] made of a slice of events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The envelopes, grouped by org in order of the org's first appearance.
    pub messages: Vec<PackedMessage>,
    /// Events that could not be packed at all (index into the slice, reason).
    pub failed: Vec<(usize, String)>,
}

/// Groups `events` by org (in order of first appearance) and packs each group greedily
/// into envelopes of at most `max_bytes` bytes. An event that alone does not fit (or does
/// not encode) is listed in [`Packed::failed`] with the reason, and the rest go on.
pub fn pack(events: &[Event], max_bytes: usize) -> Packed {
    let mut groups: Vec<(&OrgId, Vec<usize>)> = Vec::new();
    let mut index: HashMap<&OrgId, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let g = *index.entry(&e.org_id).or_insert_with(|| {
            groups.push((&e.org_id, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    let mut packed = Packed::default();
    for (org, indexes) in groups {
        let mut current: Option<PackedMessage> = None;
        for i in indexes {
            let json = match serde_json::to_string(&events[i]) {
                Ok(j) => escape_nonchars(j),
                Err(e) => {
                    packed
                        .failed
                        .push((i, format!("event does not encode as JSON: {e}")));
                    continue;
                }
            };
            if ENVELOPE_OVERHEAD + json.len() > max_bytes {
                packed.failed.push((
                    i,
                    format!(
                        "event is {} bytes of JSON; a message holds at most {max_bytes}",
                        json.len()
                    ),
                ));
                continue;
            }
            if let Some(m) = current.as_mut()
                && m.body.len() + 1 + json.len() + ENVELOPE_SUFFIX.len() <= max_bytes
            {
                m.body.push(',');
                m.body.push_str(&json);
                m.indexes.push(i);
                continue;
            }
            if let Some(mut done) = current.take() {
                done.body.push_str(ENVELOPE_SUFFIX);
                packed.messages.push(done);
            }
            let mut body = String::with_capacity(max_bytes.min(64 * 1024));
            body.push_str(ENVELOPE_PREFIX);
            body.push_str(&json);
            current = Some(PackedMessage {
                org: org.as_str().to_owned(),
                body,
                indexes: vec![i],
            });
        }
        if let Some(mut done) = current {
            done.body.push_str(ENVELOPE_SUFFIX);
            packed.messages.push(done);
        }
    }
    packed
}

/// Encodes `events` as one envelope, unbounded, the way a dead-lettered message is kept
/// (`{"v":1,"events":[...]}` through `serde_json::Value`, so the key order is what
/// earlier builds wrote with `json!`). The caller decided the events belong together.
pub fn encode(events: &[Event]) -> Result<String, serde_json::Error> {
    let mut map = serde_json::Map::new();
    map.insert("v".to_owned(), ENVELOPE_VERSION.into());
    map.insert("events".to_owned(), serde_json::to_value(events)?);
    Ok(escape_nonchars(serde_json::Value::Object(map).to_string()))
}

/// [`encode`] for a dead letter that also holds events that never decoded: the decodable
/// ones first, then each [`Unreadable`] as the JSON it was.
pub fn encode_parts(
    events: &[Event],
    unreadable: &[Unreadable],
) -> Result<String, serde_json::Error> {
    if unreadable.is_empty() {
        return encode(events);
    }
    let mut body = String::from(ENVELOPE_PREFIX);
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&serde_json::to_string(e)?);
    }
    for (i, u) in unreadable.iter().enumerate() {
        if i > 0 || !events.is_empty() {
            body.push(',');
        }
        // Kept as it stood, but only if it is JSON at all, so the dead letter stays an
        // envelope a later build can read event by event.
        body.push_str(serde_json::value::RawValue::from_string(u.json.clone())?.get());
    }
    body.push_str(ENVELOPE_SUFFIX);
    Ok(escape_nonchars(body))
}

/// SQS accepts only XML characters in a body: JSON escapes everything below U+0020 already;
/// this escapes the two non-characters U+FFFE and U+FFFF (they can only occur inside JSON
/// strings, where `\uXXXX` means the same).
fn escape_nonchars(json: String) -> String {
    if !json.contains(['\u{fffe}', '\u{ffff}']) {
        return json;
    }
    json.replace('\u{fffe}', "\\ufffe")
        .replace('\u{ffff}', "\\uffff")
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    v: u32,
    #[serde(borrow)]
    events: Vec<&'a serde_json::value::RawValue>,
}

/// Decodes an envelope's bytes: UTF-8, version [`ENVELOPE_VERSION`], at least one event,
/// all of one org. The error is the reason to dead-letter it.
pub fn decode(body: &[u8]) -> Result<Vec<Event>, EnvelopeError> {
    let text = std::str::from_utf8(body).map_err(|e| EnvelopeError::NotUtf8(e.to_string()))?;
    decode_str(text)
}

/// [`decode`] for a body that is text already (an SQS message body).
pub fn decode_str(body: &str) -> Result<Vec<Event>, EnvelopeError> {
    let (events, unreadable) = decode_each_str(body)?;
    if let Some(u) = unreadable.first() {
        return Err(EnvelopeError::Events(u.reason.clone()));
    }
    let Some(first) = events.first() else {
        return Err(EnvelopeError::Empty);
    };
    if events.iter().any(|e| e.org_id != first.org_id) {
        return Err(EnvelopeError::MixedOrgs);
    }
    Ok(events)
}

/// Decodes an envelope event by event: the events that decode, and those that do not
/// ([`Unreadable`]), in message order within each list. The error is for an envelope that
/// is unreadable as a whole (not UTF-8, not an envelope, another version, no events); the
/// org of each event is the caller's to check.
pub fn decode_each(body: &[u8]) -> Result<(Vec<Event>, Vec<Unreadable>), EnvelopeError> {
    let text = std::str::from_utf8(body).map_err(|e| EnvelopeError::NotUtf8(e.to_string()))?;
    decode_each_str(text)
}

/// [`decode_each`] for a body that is text already.
pub fn decode_each_str(body: &str) -> Result<(Vec<Event>, Vec<Unreadable>), EnvelopeError> {
    // The version first, alone: a newer build's envelope is refused as such, not with
    // whatever its events fail to decode as.
    #[derive(Deserialize)]
    struct VersionOnly {
        v: u32,
    }
    let version = serde_json::from_str::<VersionOnly>(body)
        .map_err(|e| EnvelopeError::NotEnvelope(e.to_string()))?
        .v;
    if version != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version { found: version });
    }
    let envelope: EnvelopeIn<'_> =
        serde_json::from_str(body).map_err(|e| EnvelopeError::Events(e.to_string()))?;
    debug_assert_eq!(envelope.v, ENVELOPE_VERSION);
    if envelope.events.is_empty() {
        return Err(EnvelopeError::Empty);
    }
    Ok(decode_items(envelope.events))
}

/// Decodes events one by one from their JSON texts (an envelope's `events`, the local
/// queue's stored array), keeping those that do not decode as [`Unreadable`].
pub fn decode_items<'a>(
    raws: impl IntoIterator<Item = &'a serde_json::value::RawValue>,
) -> (Vec<Event>, Vec<Unreadable>) {
    let mut events = Vec::new();
    let mut unreadable = Vec::new();
    for raw in raws {
        match serde_json::from_str::<Event>(raw.get()) {
            Ok(e) => events.push(e),
            Err(e) => unreadable.push(Unreadable {
                json: raw.get().to_owned(),
                reason: format!("event does not decode: {e}"),
            }),
        }
    }
    (events, unreadable)
}

/// How many Kinesis partition keys one org's messages are spread over by default: the top
/// org is no longer pinned to one shard (1 MB/s, 1,000 records/s), while one org's records
/// still touch at most this many shards.
pub const DEFAULT_KEY_SPREAD: u16 = 8;

/// Most partition keys one org's messages may be spread over.
pub const MAX_KEY_SPREAD: u16 = 64;

/// The Kinesis partition key of `message`: the org id when `spread` is 1 (what earlier
/// builds wrote), else `<org>#<n>` with `n` below `spread`, taken from a hash of the
/// message's body, so one org's messages land on up to `spread` shards. Order between an
/// org's messages never mattered (the ledger makes every apply order give the same
/// counters); [`org_of_partition_key`] reads the org back.
pub fn partition_key(message: &PackedMessage, spread: u16) -> String {
    if spread <= 1 {
        return message.org.clone();
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = message
        .body
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{}#{}", message.org, hash % u64::from(spread))
}

/// The org a Kinesis partition key names: the part before `#` (org ids hold no `#`).
pub fn org_of_partition_key(key: &str) -> &str {
    key.split_once('#').map_or(key, |(org, _)| org)
}

/// Reads a key spread (`TALLY_KINESIS_KEY_SPREAD`): a whole number from 1 to
/// [`MAX_KEY_SPREAD`]; the error says so.
pub fn parse_key_spread(v: &str) -> Result<u16, String> {
    match v.trim().parse::<u16>() {
        Ok(n) if (1..=MAX_KEY_SPREAD).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a whole number from 1 to {MAX_KEY_SPREAD}, got {v:?}"
        )),
    }
}

/// One `api_calls` unit (`Sum`, quantity 1) of project `prj_1` for `org` at `timestamp`,
/// with no properties: the event the queue tests (this module's, the queue adapters' and
/// the aggregator's) pack, send and decode. Test-only (tests, or the `test-support`
/// feature a dev-dependency turns on); panics on an id that does not parse.
#[cfg(any(test, feature = "test-support"))]
#[allow(clippy::unwrap_used)] // test fixture: the ids are the caller's literals
pub fn test_event(org: &str, id: &str, timestamp: chrono::DateTime<chrono::Utc>) -> Event {
    use crate::event::Quantity;
    use crate::ids::{EventId, MeterName, ProjectId};
    use crate::meter::Aggregation;
    Event {
        org_id: OrgId::parse(org).unwrap(),
        id: EventId::parse(id).unwrap(),
        project_id: ProjectId::parse("prj_1").unwrap(),
        meter: MeterName::parse("api_calls").unwrap(),
        aggregation: Aggregation::Sum,
        quantity: Quantity::new(rust_decimal::Decimal::ONE).unwrap(),
        timestamp,
        properties: serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn partition_keys_spread_an_org_and_name_it_back() {
        let msg = |body: String| PackedMessage {
            org: "org_a".into(),
            body,
            indexes: vec![0],
        };
        assert_eq!(partition_key(&msg("x".into()), 1), "org_a");
        let keys: std::collections::BTreeSet<String> = (0..1000)
            .map(|i| partition_key(&msg(format!("body {i}")), 8))
            .collect();
        assert_eq!(keys.len(), 8, "{keys:?}");
        for k in &keys {
            assert_eq!(org_of_partition_key(k), "org_a");
        }
        assert_eq!(org_of_partition_key("org_a"), "org_a");
        // The same message always gets the same key.
        assert_eq!(
            partition_key(&msg("same".into()), 8),
            partition_key(&msg("same".into()), 8)
        );
        assert_eq!(parse_key_spread("8"), Ok(8));
        assert!(parse_key_spread("0").is_err());
        assert!(parse_key_spread("65").is_err());
        assert!(parse_key_spread("x").is_err());
    }
    use crate::event::Quantity;
    use chrono::TimeZone;
    use rust_decimal::Decimal;

    fn event(org: &str, id: &str, blob: usize) -> Event {
        let mut e = test_event(org, id, chrono::Utc::now());
        if blob > 0 {
            e.properties.insert("blob".into(), "x".repeat(blob).into());
        }
        e
    }

    /// A message exactly as the SQS and Kinesis adapters wrote it before the envelope moved
    /// here: messages in flight across the upgrade must still decode, and new ones must be
    /// the same bytes.
    const PINNED: &str = concat!(
        r#"{"v":1,"events":[{"org_id":"org_a","id":"evt_1","project_id":"prj_1","#,
        r#""meter":"api_calls","aggregation":{"kind":"sum"},"quantity":"1.5","#,
        r#""timestamp":"2026-11-26T10:00:00Z","properties":{"route":"/x"}},"#,
        r#"{"org_id":"org_a","id":"evt_2","project_id":"prj_1","meter":"api_calls","#,
        r#""aggregation":{"kind":"sum"},"quantity":"2","timestamp":"2026-11-26T10:00:01Z"}]}"#
    );

    fn pinned_events() -> Vec<Event> {
        let mut a = event("org_a", "evt_1", 0);
        a.quantity = Quantity::new(Decimal::new(15, 1)).unwrap();
        a.timestamp = chrono::Utc
            .with_ymd_and_hms(2026, 11, 26, 10, 0, 0)
            .unwrap();
        a.properties.insert("route".into(), "/x".into());
        let mut b = event("org_a", "evt_2", 0);
        b.quantity = Quantity::new(Decimal::TWO).unwrap();
        b.timestamp = chrono::Utc
            .with_ymd_and_hms(2026, 11, 26, 10, 0, 1)
            .unwrap();
        vec![a, b]
    }

    #[test]
    fn the_wire_bytes_are_pinned() {
        let events = pinned_events();
        assert_eq!(decode(PINNED.as_bytes()).unwrap(), events);
        let packed = pack(&events, 256 * 1024);
        assert!(packed.failed.is_empty());
        assert_eq!(packed.messages.len(), 1);
        assert_eq!(packed.messages[0].body, PINNED);
        assert_eq!(packed.messages[0].org, "org_a");
        assert_eq!(packed.messages[0].indexes, vec![0, 1]);
    }

    #[test]
    fn dead_letter_encoding_is_what_json_macro_wrote() {
        let events = pinned_events();
        let old = serde_json::json!({ "v": ENVELOPE_VERSION, "events": events }).to_string();
        assert_eq!(encode(&events).unwrap(), old);
        assert_eq!(decode(old.as_bytes()).unwrap(), events);
    }

    #[test]
    fn the_prefix_names_the_current_version() {
        assert_eq!(
            ENVELOPE_PREFIX,
            format!(r#"{{"v":{ENVELOPE_VERSION},"events":["#)
        );
    }

    #[test]
    fn packing_splits_by_org_and_size_and_round_trips() {
        let mut events: Vec<Event> = (0..40)
            .map(|i| {
                event(
                    if i % 3 == 0 { "org_b" } else { "org_a" },
                    &format!("e{i}"),
                    4000,
                )
            })
            .collect();
        events.push(event("org_a", "huge", 40_000));
        let packed = pack(&events, 32 * 1024);
        assert_eq!(packed.failed.len(), 1);
        assert_eq!(packed.failed[0].0, 40);
        let mut seen = Vec::new();
        for m in &packed.messages {
            assert!(m.body.len() <= 32 * 1024, "{}", m.body.len());
            let decoded = decode_str(&m.body).unwrap();
            assert_eq!(decoded.len(), m.indexes.len());
            for (e, &i) in decoded.iter().zip(&m.indexes) {
                assert_eq!(e, &events[i]);
                assert_eq!(e.org_id.as_str(), m.org);
            }
            seen.extend(m.indexes.iter().copied());
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..40).collect::<Vec<_>>());
        assert!(packed.messages.len() > 2);
        // Orgs in first-appearance order.
        assert_eq!(packed.messages[0].org, "org_b");
    }

    #[test]
    fn bad_envelopes_are_refused_with_a_reason() {
        let reason = |b: &[u8]| decode(b).unwrap_err().to_string();
        assert!(reason(b"\xff").contains("UTF-8"));
        assert!(reason(b"not json").contains("not a Tally event envelope"));
        assert!(reason(br#"{"v":2,"events":[]}"#).contains("version 2"));
        assert!(reason(br#"{"v":1,"events":[]}"#).contains("no events"));
        assert!(reason(br#"{"v":1,"events":[{"org_id":"org_a"}]}"#).contains("as events"));
        let a = serde_json::to_string(&event("org_a", "1", 0)).unwrap();
        let b = serde_json::to_string(&event("org_b", "2", 0)).unwrap();
        let mixed = format!(r#"{{"v":1,"events":[{a},{b}]}}"#);
        assert_eq!(decode_str(&mixed), Err(EnvelopeError::MixedOrgs));
        let bad_qty = format!(r#"{{"v":1,"events":[{a}]}}"#)
            .replace("\"1\",\"timestamp\"", "\"-1\",\"timestamp\"");
        assert!(decode_str(&bad_qty).is_err(), "{bad_qty}");
        assert_eq!(
            decode_str(&format!(r#"{{"v":1,"events":[{a}]}}"#))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn non_characters_are_escaped_and_survive() {
        let mut e = event("org_a", "1", 0);
        e.properties.insert("k".into(), "a\u{fffe}b\u{ffff}".into());
        let packed = pack(std::slice::from_ref(&e), 256 * 1024);
        let body = &packed.messages[0].body;
        assert!(!body.contains('\u{fffe}') && !body.contains('\u{ffff}'));
        assert_eq!(decode_str(body).unwrap(), vec![e.clone()]);
        let kept = encode(std::slice::from_ref(&e)).unwrap();
        assert!(!kept.contains('\u{fffe}') && !kept.contains('\u{ffff}'));
        assert_eq!(decode_str(&kept).unwrap(), vec![e]);
    }

    #[test]
    fn events_that_do_not_decode_are_handed_back_alone() {
        let a = serde_json::to_string(&event("org_a", "1", 0)).unwrap();
        let body = format!(r#"{{"v":1,"events":[{a},{{"org_id":"org_a","id":7}},{a}]}}"#);
        let (events, unreadable) = decode_each_str(&body).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(unreadable.len(), 1);
        assert_eq!(unreadable[0].json, r#"{"org_id":"org_a","id":7}"#);
        assert!(
            unreadable[0].reason.contains("does not decode"),
            "{}",
            unreadable[0].reason
        );
        // The strict reader still refuses the message, naming the event's problem.
        assert!(matches!(decode_str(&body), Err(EnvelopeError::Events(_))));
        // A dead letter keeps both kinds, and reads back the same way.
        let kept = encode_parts(&events, &unreadable).unwrap();
        assert_eq!(decode_each_str(&kept).unwrap(), (events, unreadable));
        // Whole-envelope problems stay whole.
        assert_eq!(
            decode_each_str(r#"{"v":1,"events":[]}"#),
            Err(EnvelopeError::Empty)
        );
        assert!(matches!(
            decode_each_str(r#"{"v":1,"events":7}"#),
            Err(EnvelopeError::Events(_))
        ));
    }
}
