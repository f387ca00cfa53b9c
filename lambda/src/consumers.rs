//! The aggregator's Lambda consumers, as plain functions over the event shapes Lambda sends
//! (`aws_lambda_events`), so they are tested by feeding them real event JSON. They judge and
//! apply records through the aggregator library ([`tally_aggregator::apply_records`]); the
//! Lambda event plumbing lives here so the aggregator itself knows nothing of Lambda.
//! [`crate::handlers::aggregate`] calls them.
//!
//! - [`handle_sqs`] answers an SQS event with `batchItemFailures`
//!   (`ReportBatchItemFailures`): every message not settled is listed by its message id,
//!   and SQS deletes only the others.
//! - [`handle_kinesis`] answers a Kinesis event with the sequence number of the first record
//!   not settled: Lambda checkpoints before it and sends it (and everything after it)
//!   again; the ledger turns the repeats into no-ops.
//!
//! With a [`Deadline`] (the invocation's, from the Lambda context), the records are applied
//! in groups of whole records ([`tally_aggregator::apply_records_until`]) and no group is
//! started once less than the margin is left: its records are reported like any record not
//! settled, so SQS redelivers only them and Kinesis resends from the first of them, instead
//! of the timeout failing the whole batch.
//!
//! Poison records go to a [`PoisonSink`] (core's port; [`crate::sink`] is the SQS one) and then
//! count as settled. Without a sink, or when the sink fails, a poison record is reported as
//! a failure, so it is never dropped: for SQS the redrive policy moves it to the
//! dead-letter queue after `maxReceiveCount` receives; for Kinesis the function's
//! on-failure destination takes it.

/// The event types, re-exported so callers need not depend on the crate themselves.
pub use aws_lambda_events;

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_lambda_events::event::streams::KinesisEventResponse;
use tally_aggregator::{RecordInput, RecordOutcome, SetAside, apply_records_until};
use tally_core::ports::{AuditLog, UsageStore};
use tracing::warn;

/// The dead-letter port, core's; re-exported here beside the handlers that take it.
pub use tally_core::sinks::PoisonSink;

/// The aggregator's deadline and its defaults, re-exported beside the handlers that take it.
pub use tally_aggregator::{DEFAULT_DEADLINE_MARGIN, Deadline, GROUP_EVENTS};

/// Settles a poison record through the sink; `true` if it is set aside.
async fn set_aside(sink: Option<&dyn PoisonSink>, id: &str, body: &[u8], reason: &str) -> bool {
    let Some(sink) = sink else {
        warn!(
            id,
            reason, "poison record and no dead-letter sink; reporting it as failed"
        );
        return false;
    };
    match sink.dead_letter(id, body, reason).await {
        Ok(()) => true,
        Err(e) => {
            metrics::counter!("tally_aggregator_dead_letter_failures_total").increment(1);
            warn!(id, reason, error = %e, "could not dead-letter poison record; reporting it as failed");
            false
        }
    }
}

/// Settles the bad part of a record whose good events were applied: those events alone go
/// to the sink; `true` if they are set aside (the record may then be acknowledged).
async fn set_aside_part(sink: Option<&dyn PoisonSink>, id: &str, part: &SetAside) -> bool {
    match part.body() {
        Ok(body) => set_aside(sink, id, body.as_bytes(), &part.reason).await,
        Err(e) => {
            warn!(id, error = %e, "could not encode the events to set aside; reporting the record as failed");
            false
        }
    }
}

/// What a consumer applies a batch through: the counters, the audit log and the poison sink
/// (see the module doc), and the invocation's deadline. Only `usage` is required.
#[derive(Clone, Copy)]
pub struct Consumer<'a> {
    /// Where the events are applied.
    pub usage: &'a dyn UsageStore,
    /// Where apply-time decisions are recorded, if anywhere.
    pub audit: Option<&'a dyn AuditLog>,
    /// Where poison records are set aside; without one they are reported as failures.
    pub sink: Option<&'a dyn PoisonSink>,
    /// With one, records are applied in groups and no group is started too near it.
    pub deadline: Option<&'a Deadline<'a>>,
}

impl<'a> Consumer<'a> {
    /// Applies to `usage`, with no audit log, no sink and no deadline.
    pub fn new(usage: &'a dyn UsageStore) -> Self {
        Consumer {
            usage,
            audit: None,
            sink: None,
            deadline: None,
        }
    }

    /// The same, recording apply-time decisions in `audit`.
    pub fn with_audit(self, audit: &'a dyn AuditLog) -> Self {
        Consumer {
            audit: Some(audit),
            ..self
        }
    }

    /// The same, setting poison records aside in `sink`.
    pub fn with_sink(self, sink: &'a dyn PoisonSink) -> Self {
        Consumer {
            sink: Some(sink),
            ..self
        }
    }

    /// The same, starting no group of records too near `deadline`.
    pub fn with_deadline(self, deadline: &'a Deadline<'a>) -> Self {
        Consumer {
            deadline: Some(deadline),
            ..self
        }
    }
}

/// Applies an SQS event and returns the partial batch response: the message ids of every
/// message not settled (retry, poison that could not be set aside, or, with a deadline,
/// in a group there was no time left to start).
pub async fn handle_sqs(consumer: &Consumer<'_>, event: &SqsEvent) -> SqsBatchResponse {
    let span = tracing::info_span!("handle_sqs", records = event.records.len());
    let _enter = span.enter();
    let bodies: Vec<&[u8]> = event
        .records
        .iter()
        .map(|m| m.body.as_deref().unwrap_or_default().as_bytes())
        .collect();
    drop(_enter);
    let inputs: Vec<RecordInput<'_>> = bodies
        .iter()
        .map(|body| RecordInput::Raw { body, org: None })
        .collect();
    let outcomes =
        apply_records_until(consumer.usage, consumer.audit, &inputs, consumer.deadline).await;
    let mut response = SqsBatchResponse::default();
    for ((message, body), outcome) in event.records.iter().zip(&bodies).zip(&outcomes) {
        let id = message.message_id.clone().unwrap_or_default();
        let settled = match outcome {
            RecordOutcome::Applied | RecordOutcome::Duplicate => true,
            RecordOutcome::Retry { reason } => {
                warn!(message_id = %id, %reason, "message not applied; SQS will redeliver it");
                false
            }
            RecordOutcome::Poison { reason } => set_aside(consumer.sink, &id, body, reason).await,
            RecordOutcome::SetAside(part) => set_aside_part(consumer.sink, &id, part).await,
        };
        if !settled {
            response.add_failure(id);
        }
    }
    response
}

/// Applies a Kinesis event and returns the response naming the first record not settled
/// (none when all are); with a deadline, the first record of the groups there was no
/// time left to start is such a record, unless an earlier one is.
pub async fn handle_kinesis(consumer: &Consumer<'_>, event: &KinesisEvent) -> KinesisEventResponse {
    let inputs: Vec<RecordInput<'_>> = event
        .records
        .iter()
        .map(|r| RecordInput::Raw {
            body: &r.kinesis.data.0,
            org: Some(tally_core::envelope::org_of_partition_key(
                &r.kinesis.partition_key,
            )),
        })
        .collect();
    let span = tracing::info_span!("handle_kinesis", records = event.records.len());
    let outcomes = {
        use tracing::Instrument;
        apply_records_until(consumer.usage, consumer.audit, &inputs, consumer.deadline)
            .instrument(span)
            .await
    };
    let mut response = KinesisEventResponse::default();
    for (record, outcome) in event.records.iter().zip(&outcomes) {
        let seq = &record.kinesis.sequence_number;
        let settled = match outcome {
            RecordOutcome::Applied | RecordOutcome::Duplicate => true,
            RecordOutcome::Retry { reason } => {
                warn!(sequence_number = %seq, %reason, "record not applied; Kinesis will resend from it");
                false
            }
            RecordOutcome::Poison { reason } => {
                set_aside(consumer.sink, seq, &record.kinesis.data.0, reason).await
            }
            RecordOutcome::SetAside(part) => set_aside_part(consumer.sink, seq, part).await,
        };
        if !settled {
            response.add_failure(seq.clone());
            break;
        }
    }
    response
}
