//! The aggregator as a library: a batch of queue records in, one [`RecordOutcome`] per
//! record out.
//!
//! A *record* is what a queue hands out and takes back as a unit: an SQS message, a Kinesis
//! record, a row of the local queue. It carries some events of one org. [`apply_records`]
//! judges every record, applies the events of the good ones in one
//! [`UsageStore::apply_batch`] call and says, per record, what the consumer must do:
//!
//! - [`RecordOutcome::Applied`] / [`RecordOutcome::Duplicate`]: every event is settled
//!   (counted now, or counted before); acknowledge it.
//! - [`RecordOutcome::Retry`]: some event is not settled (the store failed, a transaction
//!   chunk failed); do **not** acknowledge, it comes back.
//! - [`RecordOutcome::Poison`]: the record can never be applied (undecodable, or failing
//!   the core validation rules after the fact, or mixing orgs); none of its events are
//!   applied, and the consumer sets it aside in the dead-letter store with the reason.
//!   Poison is all-or-nothing per record: a record with one bad event is suspect as a
//!   whole, and the dead-letter store keeps it intact for a human to look at and redrive.
//!
//! The store reports the second copy of an event inside one batch as `Duplicate` whatever
//! happened to the first copy. That answer cannot settle the second copy's record: both
//! copies may be *one queue message* handed out twice (a redelivery while the batch was
//! being collected, an SQS at-least-once duplicate), and acknowledging either receipt deletes
//! the message, so a `Retry` of the first copy would bring nothing back and the events after
//! a failed chunk would be lost. So an event is settled only if no copy of it in the batch
//! failed, and a record only if all its events are settled; every record holding a copy of
//! a failed event is a `Retry`. (The fault harness in `tests/` injects exactly that case: a
//! delivery handed out twice in one batch, then a failed chunk.)

use std::collections::HashSet;

use chrono::Datelike;
use tally_core::envelope;
use tally_core::event::{Event, MAX_PROPERTIES_BYTES, MAX_PROPERTIES_KEYS, MIN_YEAR, Quantity};
use tally_core::ids::{EventId, OrgId};
use tally_core::meter::Aggregation;
use tally_core::ports::{ApplyOutcome, UsageStore};

/// The envelope version the queue adapters write (`{"v":1,"events":[...]}`), defined with
/// the envelope in core.
pub use tally_core::envelope::ENVELOPE_VERSION;

/// What a consumer hands to [`apply_records`]: one queue record.
#[derive(Debug, Clone, Copy)]
pub enum RecordInput<'a> {
    /// Events a queue adapter already decoded (the polling worker).
    Decoded {
        /// The events.
        events: &'a [Event],
        /// The org the queue says the record belongs to (a partition key, a message
        /// attribute), if it says; otherwise the first event's org.
        org: Option<&'a str>,
    },
    /// A raw record body (a Lambda event), decoded here; a body that does not decode is
    /// poison.
    Raw {
        /// The envelope bytes.
        body: &'a [u8],
        /// The org the queue says the record belongs to, if it says.
        org: Option<&'a str>,
    },
}

/// What happened to one record, and so what its consumer must do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// At least one event was newly counted and the rest were repeats. Acknowledge.
    Applied,
    /// Every event had been counted before. Acknowledge.
    Duplicate,
    /// Not (fully) applied; leave it on the queue so it comes back.
    Retry {
        /// Why.
        reason: String,
    },
    /// Can never be applied; move it to the dead-letter store with the reason.
    Poison {
        /// Why.
        reason: String,
    },
}

impl RecordOutcome {
    /// Whether the record may be acknowledged (every event settled).
    pub fn is_settled(&self) -> bool {
        matches!(self, RecordOutcome::Applied | RecordOutcome::Duplicate)
    }

    /// The outcome's name, for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            RecordOutcome::Applied => "applied",
            RecordOutcome::Duplicate => "duplicate",
            RecordOutcome::Retry { .. } => "retry",
            RecordOutcome::Poison { .. } => "poison",
        }
    }
}

/// Decodes a record body (the versioned envelope the queue adapters write,
/// [`tally_core::envelope`]). The error is the poison reason.
pub fn decode_envelope(body: &[u8]) -> Result<Vec<Event>, String> {
    envelope::decode(body).map_err(|e| e.to_string())
}

/// Checks a decoded record against the rules every event passed at ingest and that need
/// no storage: one org (the queue's, if it names one), a valid id and quantity, a plausible
/// timestamp, bounded properties, and the property a `unique_count` meter counts. The error
/// is the poison reason.
pub fn check_record(events: &[Event], org: Option<&str>) -> Result<(), String> {
    let Some(first) = events.first() else {
        return Err("record carries no events".to_owned());
    };
    let org = org.unwrap_or(first.org_id.as_str());
    if OrgId::parse(org).is_err() {
        return Err(format!("record org {org:?} is not an org id"));
    }
    for e in events {
        let bad = |why: String| Err(format!("event {:?}: {why}", e.id.as_str()));
        if e.org_id.as_str() != org {
            return bad(format!(
                "belongs to org {} but the record is org {org}",
                e.org_id.as_str()
            ));
        }
        if let Err(err) = EventId::parse(e.id.as_str()) {
            return bad(format!("invalid id: {err}"));
        }
        if let Err(err) = Quantity::new(e.quantity.value()) {
            return bad(format!("invalid quantity: {err}"));
        }
        if e.timestamp.year() < MIN_YEAR {
            return bad(format!("timestamp {} is before {MIN_YEAR}", e.timestamp));
        }
        if e.properties.len() > MAX_PROPERTIES_KEYS {
            return bad(format!("more than {MAX_PROPERTIES_KEYS} properties"));
        }
        let props_len = serde_json::to_string(&e.properties).map_or(usize::MAX, |s| s.len());
        if props_len > MAX_PROPERTIES_BYTES {
            return bad(format!("properties exceed {MAX_PROPERTIES_BYTES} bytes"));
        }
        if let Aggregation::UniqueCount { property } = &e.aggregation
            && e.unique_value().is_none()
        {
            return bad(format!(
                "unique_count meter {} needs property {property:?}",
                e.meter.as_str()
            ));
        }
    }
    Ok(())
}

/// Judges every record, applies the events of the good ones in one
/// [`UsageStore::apply_batch`] call and returns one outcome per record, in input order.
/// Never fails as a whole: a store failure makes every record it concerned a `Retry`.
pub async fn apply_records(
    usage: &dyn UsageStore,
    records: &[RecordInput<'_>],
) -> Vec<RecordOutcome> {
    let span = tracing::info_span!("apply_records", records = records.len());
    let guard = span.enter();
    let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; records.len()];
    // Raw bodies are decoded first; an undecodable one is poison.
    let decoded: Vec<Option<Vec<Event>>> = records
        .iter()
        .zip(outcomes.iter_mut())
        .map(|(r, out)| match r {
            RecordInput::Decoded { .. } => None,
            RecordInput::Raw { body, .. } => match decode_envelope(body) {
                Ok(evs) => Some(evs),
                Err(reason) => {
                    *out = Some(RecordOutcome::Poison { reason });
                    None
                }
            },
        })
        .collect();
    let events_of = |i: usize| -> (&[Event], Option<&str>) {
        match &records[i] {
            RecordInput::Decoded { events, org } => (events, *org),
            RecordInput::Raw { org, .. } => (decoded[i].as_deref().unwrap_or_default(), *org),
        }
    };
    // Which records are good, with the range of their events in the combined batch.
    let mut good: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    let mut total = 0usize;
    for (i, outcome) in outcomes.iter_mut().enumerate() {
        if outcome.is_some() {
            continue;
        }
        let (events, org) = events_of(i);
        match check_record(events, org) {
            Ok(()) => {
                good.push((i, total..total + events.len()));
                total += events.len();
            }
            Err(reason) => *outcome = Some(RecordOutcome::Poison { reason }),
        }
    }
    let batch: Vec<Event> = good
        .iter()
        .flat_map(|(i, _)| events_of(*i).0.iter().cloned())
        .collect();
    drop(guard);
    if !batch.is_empty() {
        let started = std::time::Instant::now();
        let span = tracing::info_span!("apply_batch", batch_size = batch.len());
        let result = {
            use tracing::Instrument;
            usage.apply_batch(&batch).instrument(span).await
        };
        metrics::histogram!("tally_apply_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("tally_batch_size").record(batch.len() as f64);
        match result {
            Err(e) => {
                let reason = format!("store failed: {e}");
                for (i, _) in &good {
                    outcomes[*i] = Some(RecordOutcome::Retry {
                        reason: reason.clone(),
                    });
                }
            }
            Ok(report) => {
                let per_event = report.outcomes;
                // Events with a failed copy anywhere in the batch: no copy of them is settled.
                let failed: HashSet<(&OrgId, &EventId)> = batch
                    .iter()
                    .zip(&per_event)
                    .filter(|(_, o)| matches!(o, ApplyOutcome::Failed(_)))
                    .map(|(e, _)| (&e.org_id, &e.id))
                    .collect();
                for (i, range) in &good {
                    let mut outcome = judge(per_event.get(range.clone()));
                    if outcome.is_settled()
                        && let Some(e) = batch
                            .get(range.clone())
                            .unwrap_or_default()
                            .iter()
                            .find(|e| failed.contains(&(&e.org_id, &e.id)))
                    {
                        outcome = RecordOutcome::Retry {
                            reason: format!(
                                "another copy of event {:?} in this batch was not applied",
                                e.id.as_str()
                            ),
                        };
                    }
                    outcomes[*i] = Some(outcome);
                }
            }
        }
    }
    let outcomes: Vec<RecordOutcome> = outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or(RecordOutcome::Retry {
                reason: "not judged".to_owned(),
            })
        })
        .collect();
    for o in &outcomes {
        metrics::counter!("tally_aggregator_records_total", "outcome" => o.label()).increment(1);
        if let RecordOutcome::Poison { reason } = o {
            metrics::counter!("tally_aggregator_poison_records_total").increment(1);
            tracing::warn!(%reason, "poison record");
        }
    }
    outcomes
}

fn judge(outcomes: Option<&[ApplyOutcome]>) -> RecordOutcome {
    let Some(outcomes) = outcomes else {
        return RecordOutcome::Retry {
            reason: "the store reported too few outcomes".to_owned(),
        };
    };
    if let Some(ApplyOutcome::Failed(why)) = outcomes
        .iter()
        .find(|o| matches!(o, ApplyOutcome::Failed(_)))
    {
        return RecordOutcome::Retry {
            reason: why.clone(),
        };
    }
    if outcomes.contains(&ApplyOutcome::Applied) {
        RecordOutcome::Applied
    } else {
        RecordOutcome::Duplicate
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::apply_only::{Apply, ApplyOnly};
    use async_trait::async_trait;
    use chrono::{TimeZone, Utc};
    use rust_decimal::Decimal;
    use std::sync::Mutex;

    use tally_core::ids::{MeterName, ProjectId};

    use tally_core::ports::{ApplyReport, StoreError};

    fn event(org: &str, id: &str) -> Event {
        Event {
            org_id: OrgId::parse(org).unwrap(),
            id: EventId::parse(id).unwrap(),
            project_id: ProjectId::parse("prj_1").unwrap(),
            meter: MeterName::parse("api_calls").unwrap(),
            aggregation: Aggregation::Sum,
            quantity: Quantity::new(Decimal::ONE).unwrap(),
            timestamp: Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
            properties: serde_json::Map::new(),
        }
    }

    /// Answers `apply_batch` with a scripted result and records what it was given.
    struct Scripted {
        answer: Mutex<Option<Result<Vec<ApplyOutcome>, StoreError>>>,
        seen: Mutex<Vec<Event>>,
    }

    impl Scripted {
        fn new(answer: Result<Vec<ApplyOutcome>, StoreError>) -> Self {
            Scripted {
                answer: Mutex::new(Some(answer)),
                seen: Mutex::new(Vec::new()),
            }
        }
    }

    #[async_trait]
    impl Apply for Scripted {
        async fn apply(&self, events: &[Event]) -> Result<ApplyReport, StoreError> {
            self.seen.lock().unwrap().extend(events.iter().cloned());
            self.answer
                .lock()
                .unwrap()
                .take()
                .unwrap()
                .map(|outcomes| ApplyReport { outcomes })
        }
    }

    #[test]
    fn envelopes_decode_and_bad_ones_say_why() {
        let body = serde_json::json!({"v": 1, "events": [event("org_a", "1")]}).to_string();
        assert_eq!(
            decode_envelope(body.as_bytes()).unwrap(),
            vec![event("org_a", "1")]
        );
        assert!(decode_envelope(b"\xff").unwrap_err().contains("UTF-8"));
        assert!(decode_envelope(b"nope").unwrap_err().contains("envelope"));
        assert!(
            decode_envelope(br#"{"v":2,"events":[]}"#)
                .unwrap_err()
                .contains("version 2")
        );
        let bad_qty = body.replace("\"1\",\"timestamp\"", "\"-1\",\"timestamp\"");
        assert!(decode_envelope(bad_qty.as_bytes()).is_err(), "{bad_qty}");
    }

    #[test]
    fn validation_after_the_fact() {
        assert!(check_record(&[], None).is_err());
        assert!(check_record(&[event("org_a", "1"), event("org_a", "2")], None).is_ok());
        let mixed = check_record(&[event("org_a", "1"), event("org_b", "2")], None);
        assert!(mixed.unwrap_err().contains("org_b"));
        assert!(check_record(&[event("org_a", "1")], Some("org_b")).is_err());
        let mut unique = event("org_a", "1");
        unique.aggregation = Aggregation::UniqueCount {
            property: "user".into(),
        };
        assert!(
            check_record(&[unique], None)
                .unwrap_err()
                .contains("needs property")
        );
        let mut old = event("org_a", "1");
        old.timestamp = Utc.with_ymd_and_hms(1999, 1, 1, 0, 0, 0).unwrap();
        assert!(check_record(&[old], None).is_err());
    }

    #[tokio::test]
    async fn one_outcome_per_record_and_poison_is_never_applied() {
        let a = [event("org_a", "1"), event("org_a", "2")];
        let b = [event("org_a", "2")];
        let c = [event("org_b", "3")];
        let poison = [event("org_a", "9"), event("org_b", "9")];
        let store = ApplyOnly(Scripted::new(Ok(vec![
            ApplyOutcome::Applied,
            ApplyOutcome::Applied,
            ApplyOutcome::Duplicate,
            ApplyOutcome::Failed("chunk failed".into()),
        ])));
        let records = [
            RecordInput::Decoded {
                events: &a,
                org: None,
            },
            RecordInput::Decoded {
                events: &poison,
                org: None,
            },
            RecordInput::Decoded {
                events: &b,
                org: None,
            },
            RecordInput::Raw {
                body: b"garbage",
                org: None,
            },
            RecordInput::Decoded {
                events: &c,
                org: None,
            },
        ];
        let out = apply_records(&store, &records).await;
        assert_eq!(out[0], RecordOutcome::Applied);
        assert!(matches!(&out[1], RecordOutcome::Poison { reason } if reason.contains("org_b")));
        assert_eq!(out[2], RecordOutcome::Duplicate);
        assert!(matches!(&out[3], RecordOutcome::Poison { .. }));
        assert!(matches!(&out[4], RecordOutcome::Retry { reason } if reason == "chunk failed"));
        // Only the good records' events reached the store.
        assert_eq!(store.seen.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_record_repeating_a_failed_event_is_not_settled() {
        // One message handed out twice in the batch: the store answers the second copy
        // `Duplicate` although the first copy's chunk failed. Acknowledging the second
        // receipt would delete the message, so both copies must come back.
        let m = [event("org_a", "1"), event("org_a", "2")];
        let other = [event("org_a", "3")];
        let store = ApplyOnly(Scripted::new(Ok(vec![
            ApplyOutcome::Applied,
            ApplyOutcome::Failed("chunk failed".into()),
            ApplyOutcome::Duplicate,
            ApplyOutcome::Duplicate,
            ApplyOutcome::Applied,
        ])));
        let records = [
            RecordInput::Decoded {
                events: &m,
                org: None,
            },
            RecordInput::Decoded {
                events: &m,
                org: None,
            },
            RecordInput::Decoded {
                events: &other,
                org: None,
            },
        ];
        let out = apply_records(&store, &records).await;
        assert!(matches!(&out[0], RecordOutcome::Retry { reason } if reason == "chunk failed"));
        assert!(
            matches!(&out[1], RecordOutcome::Retry { reason } if reason.contains("\"2\"")),
            "{:?}",
            out[1]
        );
        assert_eq!(out[2], RecordOutcome::Applied);
    }

    #[tokio::test]
    async fn a_store_failure_retries_every_good_record() {
        let a = [event("org_a", "1")];
        let store = ApplyOnly(Scripted::new(Err(StoreError::Unavailable("down".into()))));
        let body = serde_json::json!({"v": 1, "events": [event("org_a", "2")]}).to_string();
        let records = [
            RecordInput::Decoded {
                events: &a,
                org: None,
            },
            RecordInput::Raw {
                body: body.as_bytes(),
                org: Some("org_a"),
            },
        ];
        let out = apply_records(&store, &records).await;
        assert!(out.iter().all(|o| matches!(o, RecordOutcome::Retry { .. })));
        assert!(!out[0].is_settled());
    }
}
