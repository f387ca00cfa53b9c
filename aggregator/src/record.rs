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
//! - [`RecordOutcome::SetAside`]: the record's good events are settled and some of its
//!   events can never be applied (they do not decode, fail [`Event::check`] — the very
//!   rules ingest checked before answering `202` — or belong to another org); the consumer
//!   keeps exactly those in the dead-letter store, then acknowledges the record. One bad
//!   event never costs its neighbours their count.
//! - [`RecordOutcome::Poison`]: none of the record can ever be applied (the envelope does
//!   not decode at all, or every event is bad); the consumer sets it aside whole, as
//!   received, with the reason.
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
//!
//! A consumer with a deadline (a Lambda invocation) calls [`apply_records_until`] instead:
//! the good records are applied in groups of whole records, one store call each, and no
//! group is started once less than the [`Deadline`]'s margin is left; the records of the
//! groups not started are `Retry` (`deadline: ...`) and come back. Copies of one event are
//! always put in the same group ([`group_records`]), so the rule above is judged whole.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use tally_core::envelope::{self, Unreadable};
use tally_core::event::Event;
use tally_core::ids::{EventId, OrgId};
use tally_core::ports::{ApplyOutcome, AuditLog, Clock, UsageStore};

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
        /// Events of the record that did not decode (set aside, never applied).
        unreadable: &'a [Unreadable],
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
    /// None of it can ever be applied; move it to the dead-letter store with the reason.
    Poison {
        /// Why.
        reason: String,
    },
    /// Its good events are settled (counted now or before), and these can never be
    /// applied: keep them in the dead-letter store, then acknowledge the record.
    SetAside(SetAside),
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
            RecordOutcome::SetAside(_) => "set_aside",
        }
    }
}

/// Decodes a record body (the versioned envelope the queue adapters write,
/// [`tally_core::envelope`]) strictly: every event must decode. The error is the reason.
/// [`apply_records`] reads bodies event by event instead ([`envelope::decode_each`]).
pub fn decode_envelope(body: &[u8]) -> Result<Vec<Event>, String> {
    envelope::decode(body).map_err(|e| e.to_string())
}

/// Checks a decoded record against the rules every event passed at ingest: one org (the
/// queue's, if it names one) and, per event, [`Event::check`], the very function ingest
/// ran before it answered `202`. The error names the first event that fails. (
/// [`apply_records`] judges each event on its own with [`split_record`] instead.)
pub fn check_record(events: &[Event], org: Option<&str>) -> Result<(), String> {
    let (_, bad) = split_record(events, org)?;
    match bad.into_iter().next() {
        Some((_, reason)) => Err(reason),
        None => Ok(()),
    }
}

/// A record split by [`split_record`]: the indexes of its good events, and the bad ones
/// with the reason naming each.
pub type Split = (Vec<usize>, Vec<(usize, String)>);

/// Splits a decoded record into the indexes of the events that may be applied and the
/// events that never can (index, reason naming the event): another org's event, or one
/// failing [`Event::check`]. The error is for the record as a whole: no events, or an org
/// that is not an org id.
pub fn split_record(events: &[Event], org: Option<&str>) -> Result<Split, String> {
    let Some(first) = events.first() else {
        return Err("record carries no events".to_owned());
    };
    let org = org.unwrap_or(first.org_id.as_str());
    if OrgId::parse(org).is_err() {
        return Err(format!("record org {org:?} is not an org id"));
    }
    let mut good = Vec::with_capacity(events.len());
    let mut bad = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let why = if e.org_id.as_str() != org {
            Some(format!(
                "belongs to org {} but the record is org {org}",
                e.org_id.as_str()
            ))
        } else {
            e.check()
                .err()
                .map(|err| format!("{} ({})", err.message, err.code))
        };
        match why {
            None => good.push(i),
            Some(why) => bad.push((i, format!("event {:?}: {why}", e.id.as_str()))),
        }
    }
    Ok((good, bad))
}

/// The part of a record that can never be applied, the rest of it having been settled: the
/// events to keep in the dead-letter store, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAside {
    /// Events that decode but fail the rules (or belong to another org).
    pub events: Vec<Event>,
    /// Events that do not decode at all.
    pub unreadable: Vec<Unreadable>,
    /// One line per event, naming it.
    pub reason: String,
}

impl SetAside {
    /// The dead letter's body: an envelope of exactly these events.
    pub fn body(&self) -> Result<String, String> {
        envelope::encode_parts(&self.events, &self.unreadable).map_err(|e| e.to_string())
    }

    /// How many events are set aside.
    pub fn len(&self) -> usize {
        self.events.len() + self.unreadable.len()
    }

    /// Whether nothing is set aside.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Longest reason kept for a record with many bad events (SQS attributes and logs stay
/// small); the events themselves are all in the dead letter.
const MAX_REASON_CHARS: usize = 2000;

fn join_reasons<'a>(reasons: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for r in reasons {
        if !out.is_empty() {
            out.push_str("; ");
        }
        if out.len() + r.len() > MAX_REASON_CHARS {
            out.push_str("...");
            break;
        }
        out.push_str(r);
    }
    out
}

/// One record being judged: its decoded events, the indexes of the good ones, and what
/// cannot be applied.
struct Judged<'a> {
    events: std::borrow::Cow<'a, [Event]>,
    good: Vec<usize>,
    set_aside: SetAside,
}

fn judge_input<'a>(input: &RecordInput<'a>) -> Result<Judged<'a>, String> {
    use std::borrow::Cow;
    let (events, unreadable, org): (Cow<'a, [Event]>, Vec<Unreadable>, Option<&str>) = match input {
        RecordInput::Decoded {
            events,
            unreadable,
            org,
        } => (Cow::Borrowed(*events), unreadable.to_vec(), *org),
        RecordInput::Raw { body, org } => {
            let (events, unreadable) = envelope::decode_each(body).map_err(|e| e.to_string())?;
            (Cow::Owned(events), unreadable, *org)
        }
    };
    let (good, bad) = if events.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        split_record(&events, org)?
    };
    let reason = join_reasons(
        bad.iter()
            .map(|(_, r)| r.as_str())
            .chain(unreadable.iter().map(|u| u.reason.as_str())),
    );
    if good.is_empty() {
        // Nothing here can be applied: the record goes aside whole, as received.
        return Err(if reason.is_empty() {
            "record carries no events".to_owned()
        } else {
            reason
        });
    }
    let set_aside = SetAside {
        events: bad.iter().map(|(i, _)| events[*i].clone()).collect(),
        unreadable,
        reason,
    };
    Ok(Judged {
        events,
        good,
        set_aside,
    })
}

/// Most events in one group of [`apply_records_until`]: the polling aggregator's batch
/// size ([`crate::AggregatorConfig`]'s `max_events`), and the DynamoDB store's intent size,
/// so one group is one store intent of whole records.
pub const GROUP_EVENTS: usize = 1_000;

/// Time kept in hand by default when [`apply_records_until`] decides whether to start
/// another group. A group already started runs to its end, and on DynamoDB its store calls
/// have bounds of their own that add up to about 25 s in a bad case: waiting on a batch that
/// is still claiming (up to 5 s per owner) for each of 4 rounds of ownership changes, plus
/// the transaction retries (8 attempts, ~2.6 s of backoff at most each). 30 s covers that;
/// against the aggregator function's 60 s timeout, groups start during the first half.
pub const DEFAULT_DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_secs(30);

/// When a consumer must stop starting groups: the invocation's deadline, the margin kept
/// before it, and the clock that tells the time (a test's own clock, or the system's).
#[derive(Clone, Copy)]
pub struct Deadline<'a> {
    /// When the invocation ends (Lambda's `context.deadline`).
    pub at: DateTime<Utc>,
    /// A group after the first is started only while at least this much is left.
    pub margin: std::time::Duration,
    /// Most events per group (a record bigger than this is a group of its own).
    pub group_events: usize,
    /// Where the time comes from.
    pub clock: &'a dyn Clock,
}

impl std::fmt::Debug for Deadline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline")
            .field("at", &self.at)
            .field("margin", &self.margin)
            .field("group_events", &self.group_events)
            .finish_non_exhaustive()
    }
}

impl<'a> Deadline<'a> {
    /// A deadline `at` with [`DEFAULT_DEADLINE_MARGIN`] and [`GROUP_EVENTS`] per group.
    pub fn new(at: DateTime<Utc>, clock: &'a dyn Clock) -> Self {
        Deadline {
            at,
            margin: DEFAULT_DEADLINE_MARGIN,
            group_events: GROUP_EVENTS,
            clock,
        }
    }

    /// Why no further group may start, or `None` while the margin is left.
    fn out_of_time(&self) -> Option<String> {
        let left = self.at - self.clock.now();
        let margin = chrono::Duration::from_std(self.margin).unwrap_or(chrono::Duration::MAX);
        (left < margin).then(|| {
            format!(
                "deadline: {:.1} s of the invocation left, under the {} s margin; not started, so it comes back",
                left.num_milliseconds() as f64 / 1000.0,
                self.margin.as_secs()
            )
        })
    }
}

/// Splits the records (each by the events it would apply, in input order) into groups of
/// whole records of at most `max_events` events, in order; a record bigger than that is a
/// group of its own. Records holding a copy of the same event (one queue message handed out
/// twice) always share a group, however far apart they are: the in-batch duplicate rule of
/// the [module doc](self) is judged within one store call, and a later group's store answer
/// could not tell a copy whose first group failed from one counted before. Each group lists
/// positions into `records`, ascending.
pub fn group_records(records: &[&[Event]], max_events: usize) -> Vec<Vec<usize>> {
    // Union-find over records sharing an event: each set is placed whole.
    let mut parent: Vec<usize> = (0..records.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first: HashMap<(&OrgId, &EventId), usize> = HashMap::new();
    for (p, events) in records.iter().enumerate() {
        for e in events.iter() {
            let seen = *first.entry((&e.org_id, &e.id)).or_insert(p);
            let (a, b) = (root(&mut parent, seen), root(&mut parent, p));
            // The smaller position stays the root, so a set is placed where it starts.
            if a != b {
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut sets: Vec<Vec<usize>> = Vec::new();
    let mut set_of: HashMap<usize, usize> = HashMap::new();
    for p in 0..records.len() {
        let r = root(&mut parent, p);
        let k = *set_of.entry(r).or_insert_with(|| {
            sets.push(Vec::new());
            sets.len() - 1
        });
        sets[k].push(p);
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut size = 0;
    for set in sets {
        let events: usize = set.iter().map(|&p| records[p].len()).sum();
        if !current.is_empty() && size + events > max_events {
            groups.push(std::mem::take(&mut current));
            size = 0;
        }
        size += events;
        current.extend(set);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    for g in &mut groups {
        g.sort_unstable();
    }
    groups
}

/// Judges every record, applies the events of the good ones in one
/// [`UsageStore::apply_batch`] call and returns one outcome per record, in input order.
/// Never fails as a whole: a store failure makes every record it concerned a `Retry`.
///
/// Bad events are judged one by one: a record's events that cannot be applied are handed
/// back in [`RecordOutcome::SetAside`] and the rest are applied; only a record none of
/// whose events can be applied is [`RecordOutcome::Poison`].
///
/// Duplicates whose contents differ from the counted copy are reported through
/// [`crate::conflicts::report`] (a metric, a log line and, given `audit`, a record in the
/// org's audit trail); they are settled like any duplicate.
pub async fn apply_records(
    usage: &dyn UsageStore,
    audit: Option<&dyn AuditLog>,
    records: &[RecordInput<'_>],
) -> Vec<RecordOutcome> {
    apply_records_until(usage, audit, records, None).await
}

/// [`apply_records`] against a deadline: with one, the good records are applied in groups
/// of whole records ([`group_records`], `deadline.group_events` events at most) one
/// [`UsageStore::apply_batch`] call after another, and a group after the first is started
/// only while `deadline.margin` is left before `deadline.at`. The records of the groups not
/// started are [`RecordOutcome::Retry`] with a reason starting `deadline:`, so the queue
/// hands back only them (SQS) or resends from the first of them (Kinesis). The first group
/// always starts, so a margin longer than the invocation still makes progress. A group
/// started is finished: its store calls have bounds of their own ([`DEFAULT_DEADLINE_MARGIN`]
/// says which). Without a deadline this is [`apply_records`]: one call for the whole batch.
pub async fn apply_records_until(
    usage: &dyn UsageStore,
    audit: Option<&dyn AuditLog>,
    records: &[RecordInput<'_>],
    deadline: Option<&Deadline<'_>>,
) -> Vec<RecordOutcome> {
    let span = tracing::info_span!("apply_records", records = records.len());
    let guard = span.enter();
    let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; records.len()];
    let mut judged: Vec<Option<Judged<'_>>> = Vec::with_capacity(records.len());
    for (r, out) in records.iter().zip(outcomes.iter_mut()) {
        match judge_input(r) {
            Ok(j) => judged.push(Some(j)),
            Err(reason) => {
                *out = Some(RecordOutcome::Poison { reason });
                judged.push(None);
            }
        }
    }
    // The records with events to apply, each with those events.
    let good: Vec<(usize, Vec<Event>)> = judged
        .iter()
        .enumerate()
        .filter_map(|(i, j)| {
            j.as_ref()
                .map(|j| (i, j.good.iter().map(|&k| j.events[k].clone()).collect()))
        })
        .collect();
    let groups = match deadline {
        Some(d) => {
            let events: Vec<&[Event]> = good.iter().map(|(_, e)| e.as_slice()).collect();
            group_records(&events, d.group_events.max(1))
        }
        None if good.is_empty() => Vec::new(),
        None => vec![(0..good.len()).collect()],
    };
    drop(guard);
    for (k, group) in groups.iter().enumerate() {
        if k > 0
            && let Some(why) = deadline.and_then(Deadline::out_of_time)
        {
            let left: Vec<usize> = groups[k..].iter().flatten().map(|&g| good[g].0).collect();
            metrics::counter!("tally_aggregator_deadline_retries_total")
                .increment(left.len() as u64);
            tracing::warn!(
                groups_left = groups.len() - k,
                records_left = left.len(),
                reason = %why,
                "out of time; the records of the groups not started come back"
            );
            for i in left {
                outcomes[i] = Some(RecordOutcome::Retry {
                    reason: why.clone(),
                });
            }
            break;
        }
        let members: Vec<(usize, &[Event])> = group
            .iter()
            .map(|&g| (good[g].0, good[g].1.as_slice()))
            .collect();
        apply_group(usage, audit, &members, &mut judged, &mut outcomes).await;
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
        match o {
            RecordOutcome::Poison { reason } => {
                metrics::counter!("tally_aggregator_poison_records_total").increment(1);
                tracing::warn!(%reason, "poison record");
            }
            RecordOutcome::SetAside(s) => {
                metrics::counter!("tally_aggregator_poison_events_total").increment(s.len() as u64);
                tracing::warn!(events = s.len(), reason = %s.reason, "events set aside; the rest of their record was applied");
            }
            _ => {}
        }
    }
    outcomes
}

/// Applies the good events of `members` (record index, its events) in one
/// [`UsageStore::apply_batch`] call and writes each member's outcome. Every copy of an
/// event in the batch is among the members ([`group_records`]), so the duplicate rule is
/// judged here whole.
async fn apply_group(
    usage: &dyn UsageStore,
    audit: Option<&dyn AuditLog>,
    members: &[(usize, &[Event])],
    judged: &mut [Option<Judged<'_>>],
    outcomes: &mut [Option<RecordOutcome>],
) {
    let mut batch: Vec<Event> = Vec::new();
    let mut good: Vec<(usize, std::ops::Range<usize>)> = Vec::with_capacity(members.len());
    for (i, events) in members {
        let start = batch.len();
        batch.extend_from_slice(events);
        good.push((*i, start..batch.len()));
    }
    if batch.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let span = tracing::info_span!("apply_batch", batch_size = batch.len());
    let result = {
        use tracing::Instrument;
        // The readings of time-weighted meters after the apply, only those of the events
        // the ledger counted (never a conflicting resend's). A failure there retries the
        // whole group: its redelivery is identical duplicates, which write the readings.
        async {
            tally_core::ports::check_keeps_readings(usage, &batch)?;
            let report = usage.apply_batch(&batch).await?;
            tally_core::ports::put_counted_readings(usage, &batch, &report).await?;
            Ok::<_, tally_core::ports::StoreError>(report)
        }
        .instrument(span)
        .await
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
            crate::conflicts::report(audit, &batch, &report.conflicts, chrono::Utc::now()).await;
            let per_event = report.outcomes;
            // Events with a failed copy anywhere in the batch: no copy of them is settled.
            let failed: HashSet<(&OrgId, &EventId)> = batch
                .iter()
                .zip(&per_event)
                .filter(|(_, o)| matches!(o, ApplyOutcome::Failed(_)))
                .map(|(e, _)| (&e.org_id, &e.id))
                .collect();
            for (i, range) in &good {
                if let Some(j) = judged[*i].as_mut() {
                    set_aside_overflows(
                        &mut j.set_aside,
                        batch.get(range.clone()).unwrap_or_default(),
                        per_event.get(range.clone()).unwrap_or_default(),
                    );
                }
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
                if outcome.is_settled()
                    && let Some(j) = judged[*i].as_mut()
                    && !j.set_aside.is_empty()
                {
                    outcome = RecordOutcome::SetAside(std::mem::take(&mut j.set_aside));
                }
                outcomes[*i] = Some(outcome);
            }
        }
    }
}

/// Moves a record's events that the store refused with
/// [`ApplyOutcome::Overflow`] into its set-aside part, reason `counter_overflow`: retrying
/// cannot count them, and the rest of the record is settled.
fn set_aside_overflows(part: &mut SetAside, events: &[Event], outcomes: &[ApplyOutcome]) {
    let refused: Vec<&Event> = events
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| **o == ApplyOutcome::Overflow)
        .map(|(e, _)| e)
        .collect();
    if refused.is_empty() {
        return;
    }
    metrics::counter!("tally_counter_overflow_events_total").increment(refused.len() as u64);
    for e in &refused {
        tracing::warn!(
            org = %e.org_id,
            event = %e.id.as_str(),
            meter = %e.meter.base(),
            series = %e.meter,
            "counter_overflow: the event would take its org's month total of the meter (over all its series) past the counter limit; dead-lettered"
        );
    }
    let reasons = refused.iter().map(|e| {
        format!(
            "event {:?}: counter_overflow: it would take the month's total of meter {:?} \
             (over all its series; the event's is {:?}) past {}",
            e.id.as_str(),
            e.meter.base(),
            e.meter.as_str(),
            tally_core::headroom::COUNTER_LIMIT
        )
    });
    let reasons: Vec<String> = reasons.collect();
    let joined = join_reasons(
        std::iter::once(part.reason.as_str())
            .filter(|r| !r.is_empty())
            .chain(reasons.iter().map(String::as_str)),
    );
    part.reason = joined;
    part.events.extend(refused.into_iter().cloned());
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

    use tally_core::event::Quantity;
    use tally_core::meter::Aggregation;

    use tally_core::ports::{ApplyReport, StoreError};

    fn event(org: &str, id: &str) -> Event {
        let at = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
        tally_core::envelope::test_event(org, id, at)
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
                .map(ApplyReport::of)
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

    /// A store that keeps no readings cannot take a time-weighted meter's events: the
    /// record comes back (never counted with its reading dropped, which would bill the
    /// meter as free) and the batch is never applied; a batch without such events is.
    #[tokio::test]
    async fn readings_go_first_and_a_store_without_them_is_refused() {
        let mut tws = event("org_a", "1");
        tws.aggregation = Aggregation::TimeWeightedSum;
        let store = ApplyOnly(Scripted::new(Ok(vec![ApplyOutcome::Applied])));
        let events = [tws];
        let input = [decoded(&events)];
        let out = apply_records(&store, None, &input).await;
        match &out[0] {
            RecordOutcome::Retry { reason } => assert!(reason.contains("keeps no readings")),
            other => panic!("{other:?}"),
        }
        assert!(store.seen.lock().unwrap().is_empty());
        let plain = [event("org_a", "2")];
        let input = [decoded(&plain)];
        assert_eq!(
            apply_records(&store, None, &input).await,
            [RecordOutcome::Applied]
        );
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
                .contains("properties.user, which is missing")
        );
        let mut old = event("org_a", "1");
        old.timestamp = Utc.with_ymd_and_hms(1999, 1, 1, 0, 0, 0).unwrap();
        assert!(check_record(&[old], None).is_err());
        // A quantity an earlier release queued with more decimal places than today's
        // bound decodes, and is refused by the same rule ingest applies now.
        let legacy: Event = serde_json::from_str(
            &serde_json::to_string(&event("org_a", "1"))
                .unwrap()
                .replace(r#""quantity":"1""#, r#""quantity":"0.000000000001""#),
        )
        .unwrap();
        assert!(
            check_record(&[legacy], None)
                .unwrap_err()
                .contains("decimal places")
        );
    }

    #[tokio::test]
    async fn one_outcome_per_record_and_bad_events_are_never_applied() {
        let a = [event("org_a", "1"), event("org_a", "2")];
        let b = [event("org_a", "2")];
        let c = [event("org_b", "3")];
        // One event of another org among good ones: it alone is set aside.
        let mixed = [event("org_a", "9"), event("org_b", "9")];
        // Every event bad: the record is poison as a whole.
        let mut deep = event("org_a", "8");
        deep.quantity = Quantity::new(Decimal::ONE).unwrap();
        let mut nested = serde_json::Value::Null;
        for _ in 0..20 {
            nested = serde_json::json!([nested]);
        }
        deep.properties.insert("p".into(), nested);
        let all_bad = [deep.clone()];
        let store = ApplyOnly(Scripted::new(Ok(vec![
            ApplyOutcome::Applied,
            ApplyOutcome::Applied,
            ApplyOutcome::Applied,
            ApplyOutcome::Duplicate,
            ApplyOutcome::Failed("chunk failed".into()),
        ])));
        let records = [
            decoded(&a),
            decoded(&mixed),
            decoded(&b),
            RecordInput::Raw {
                body: b"garbage",
                org: None,
            },
            decoded(&c),
            decoded(&all_bad),
        ];
        let out = apply_records(&store, None, &records).await;
        assert_eq!(out[0], RecordOutcome::Applied);
        match &out[1] {
            RecordOutcome::SetAside(part) => {
                assert_eq!(part.events, vec![event("org_b", "9")]);
                assert!(part.reason.contains("org_b"), "{}", part.reason);
                let body = part.body().unwrap();
                assert_eq!(decode_envelope(body.as_bytes()).unwrap(), part.events);
            }
            other => panic!("expected the org_b event set aside, got {other:?}"),
        }
        assert_eq!(out[2], RecordOutcome::Duplicate);
        assert!(matches!(&out[3], RecordOutcome::Poison { .. }));
        assert!(matches!(&out[4], RecordOutcome::Retry { reason } if reason == "chunk failed"));
        assert!(
            matches!(&out[5], RecordOutcome::Poison { reason } if reason.contains("nest")),
            "{:?}",
            out[5]
        );
        // Only the good events reached the store: org_a's "9" did, org_b's did not.
        let seen = store.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 5);
        assert!(seen.contains(&event("org_a", "9")));
        assert!(!seen.contains(&event("org_b", "9")) && !seen.contains(&deep));
    }

    #[tokio::test]
    async fn an_event_that_does_not_decode_is_set_aside_alone() {
        let good = serde_json::to_string(&event("org_a", "1")).unwrap();
        let body =
            format!(r#"{{"v":1,"events":[{good},{{"org_id":"org_a","id":"2","quantity":7}}]}}"#);
        let store = ApplyOnly(Scripted::new(Ok(vec![ApplyOutcome::Applied])));
        let out = apply_records(
            &store,
            None,
            &[RecordInput::Raw {
                body: body.as_bytes(),
                org: Some("org_a"),
            }],
        )
        .await;
        match &out[0] {
            RecordOutcome::SetAside(part) => {
                assert!(part.events.is_empty());
                assert_eq!(part.unreadable.len(), 1);
                assert!(part.body().unwrap().contains(r#""id":"2""#));
            }
            other => panic!("expected the unreadable event set aside, got {other:?}"),
        }
        assert_eq!(*store.seen.lock().unwrap(), vec![event("org_a", "1")]);
    }

    #[tokio::test]
    async fn events_refused_as_overflows_are_set_aside_alone_and_the_record_acknowledged() {
        // The store counts "1", refuses "2" (it would take the total past the limit), and
        // refuses the second record's only event too.
        let (m, lone) = two_and_one();
        let store = ApplyOnly(Scripted::new(Ok(vec![
            ApplyOutcome::Applied,
            ApplyOutcome::Overflow,
            ApplyOutcome::Overflow,
        ])));
        let records = [decoded(&m), decoded(&lone)];
        let out = apply_records(&store, None, &records).await;
        for (o, want) in out.iter().zip([&m[1], &lone[0]]) {
            match o {
                RecordOutcome::SetAside(part) => {
                    assert_eq!(part.events, vec![want.clone()]);
                    assert!(part.reason.contains("counter_overflow"), "{}", part.reason);
                    assert!(part.reason.contains(want.id.as_str()), "{}", part.reason);
                }
                other => panic!("expected the refused event set aside, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_record_repeating_a_failed_event_is_not_settled() {
        // One message handed out twice in the batch: the store answers the second copy
        // `Duplicate` although the first copy's chunk failed. Acknowledging the second
        // receipt would delete the message, so both copies must come back.
        let (m, other) = two_and_one();
        let store = ApplyOnly(Scripted::new(Ok(vec![
            ApplyOutcome::Applied,
            ApplyOutcome::Failed("chunk failed".into()),
            ApplyOutcome::Duplicate,
            ApplyOutcome::Duplicate,
            ApplyOutcome::Applied,
        ])));
        let records = [decoded(&m), decoded(&m), decoded(&other)];
        let out = apply_records(&store, None, &records).await;
        assert_repeat_not_settled(&out, 1, 2);
    }

    #[tokio::test]
    async fn a_store_failure_retries_every_good_record() {
        let a = [event("org_a", "1")];
        let store = ApplyOnly(Scripted::new(Err(StoreError::Unavailable("down".into()))));
        let body = serde_json::json!({"v": 1, "events": [event("org_a", "2")]}).to_string();
        let records = [
            decoded(&a),
            RecordInput::Raw {
                body: body.as_bytes(),
                org: Some("org_a"),
            },
        ];
        let out = apply_records(&store, None, &records).await;
        assert!(out.iter().all(|o| matches!(o, RecordOutcome::Retry { .. })));
        assert!(!out[0].is_settled());
    }

    /// Answers each `apply_batch` call with the next scripted answer (all `Applied` once
    /// the script runs out), records each call's events, and moves the clock on by `step`
    /// per call, as if each store call took that long.
    struct Timed<'c> {
        answers: Mutex<Vec<Vec<ApplyOutcome>>>,
        calls: Mutex<Vec<Vec<Event>>>,
        clock: &'c tally_core::ports::FixedClock,
        step: chrono::Duration,
    }

    #[async_trait]
    impl Apply for Timed<'_> {
        async fn apply(&self, events: &[Event]) -> Result<ApplyReport, StoreError> {
            self.calls.lock().unwrap().push(events.to_vec());
            self.clock.advance(self.step);
            let mut answers = self.answers.lock().unwrap();
            let answer = if answers.is_empty() {
                vec![ApplyOutcome::Applied; events.len()]
            } else {
                answers.remove(0)
            };
            Ok(ApplyReport::of(answer))
        }
    }

    /// The outcomes of [`two_and_one`]'s first record, whose chunk failed (`out[0]`), its
    /// repeat at `repeat` (not settled either: retried, naming event "2") and the lone
    /// record at `lone` (applied).
    fn assert_repeat_not_settled(out: &[RecordOutcome], repeat: usize, lone: usize) {
        assert!(matches!(&out[0], RecordOutcome::Retry { reason } if reason == "chunk failed"));
        assert!(
            matches!(&out[repeat], RecordOutcome::Retry { reason } if reason.contains("\"2\"")),
            "{:?}",
            out[repeat]
        );
        assert_eq!(out[lone], RecordOutcome::Applied);
    }

    /// The events of two records of `org_a`: "1" and "2", then "3" alone.
    fn two_and_one() -> ([Event; 2], [Event; 1]) {
        (
            [event("org_a", "1"), event("org_a", "2")],
            [event("org_a", "3")],
        )
    }

    fn decoded(events: &[Event]) -> RecordInput<'_> {
        RecordInput::Decoded {
            events,
            unreadable: &[],
            org: None,
        }
    }

    #[test]
    fn groups_hold_whole_records_and_every_copy_of_an_event_together() {
        let r0 = [
            event("org_a", "1"),
            event("org_a", "2"),
            event("org_a", "3"),
        ];
        let r1 = [
            event("org_a", "4"),
            event("org_a", "5"),
            event("org_a", "6"),
        ];
        let r2 = [event("org_a", "7"), event("org_a", "8")];
        let r3 = [event("org_a", "9"), event("org_a", "10")];
        // r4 is r0 delivered again; r5 shares one event with r1 (a resend cut differently).
        let r5 = [event("org_a", "6"), event("org_a", "11")];
        let records: [&[Event]; 6] = [&r0, &r1, &r2, &r3, &r0, &r5];
        let groups = group_records(&records, 4);
        assert_eq!(groups, vec![vec![0, 4], vec![1, 5], vec![2, 3]]);
        // Every record once, none split: groups list whole records by position.
        let mut all: Vec<usize> = groups.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..6).collect::<Vec<_>>());
        // A record over the bound is a group of its own; small ones still share.
        let groups = group_records(&[&r0, &r2[..1], &r3[..1]], 2);
        assert_eq!(groups, vec![vec![0], vec![1, 2]]);
        assert!(group_records(&[], 4).is_empty());
    }

    #[tokio::test]
    async fn groups_not_started_before_the_deadline_come_back() {
        let now = Utc.with_ymd_and_hms(2026, 10, 1, 12, 0, 0).unwrap();
        let clock = tally_core::ports::FixedClock::at(now);
        let store = ApplyOnly(Timed {
            answers: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            clock: &clock,
            step: chrono::Duration::seconds(20),
        });
        let (a, b, c) = (
            [event("org_a", "1"), event("org_a", "2")],
            [event("org_a", "3"), event("org_a", "4")],
            [event("org_a", "5")],
        );
        let records = [decoded(&a), decoded(&b), decoded(&c)];
        // 60 s left, 30 s margin, each group takes 20 s: the second group starts with 40 s
        // left, the third would start with 20 s left.
        let deadline = Deadline {
            at: now + chrono::Duration::seconds(60),
            margin: std::time::Duration::from_secs(30),
            group_events: 2,
            clock: &clock,
        };
        let out = apply_records_until(&store, None, &records, Some(&deadline)).await;
        assert_eq!(out[..2], [RecordOutcome::Applied, RecordOutcome::Applied]);
        assert!(
            matches!(&out[2], RecordOutcome::Retry { reason } if reason.starts_with("deadline:")),
            "{:?}",
            out[2]
        );
        assert_eq!(*store.calls.lock().unwrap(), vec![a.to_vec(), b.to_vec()]);

        // Already past the deadline: the first group still runs (progress whatever the
        // margin), nothing after it.
        store.calls.lock().unwrap().clear();
        let late = Deadline {
            at: now,
            ..deadline
        };
        let out = apply_records_until(&store, None, &records, Some(&late)).await;
        assert_eq!(out[0], RecordOutcome::Applied);
        assert!(out[1..].iter().all(|o| !o.is_settled()));
        assert_eq!(store.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_message_delivered_twice_is_judged_in_one_group() {
        // The same message at positions 0 and 2, another between; two events per group
        // would put them apart, but copies share a group, so the store's in-batch
        // `Duplicate` for the second copy is judged against the first copy's failure.
        let now = Utc.with_ymd_and_hms(2026, 10, 1, 12, 0, 0).unwrap();
        let clock = tally_core::ports::FixedClock::at(now);
        let store = ApplyOnly(Timed {
            answers: Mutex::new(vec![vec![
                ApplyOutcome::Applied,
                ApplyOutcome::Failed("chunk failed".into()),
                ApplyOutcome::Duplicate,
                ApplyOutcome::Duplicate,
            ]]),
            calls: Mutex::new(Vec::new()),
            clock: &clock,
            step: chrono::Duration::zero(),
        });
        let (m, other) = two_and_one();
        let records = [decoded(&m), decoded(&other), decoded(&m)];
        let deadline = Deadline {
            group_events: 2,
            ..Deadline::new(now + chrono::Duration::minutes(5), &clock)
        };
        let out = apply_records_until(&store, None, &records, Some(&deadline)).await;
        assert_repeat_not_settled(&out, 2, 1);
        let calls = store.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0], [m.to_vec(), m.to_vec()].concat());
    }
}
