//! The billing function's queue of per-org work items ([`tally_billing::fanout`]) on AWS:
//! the SQS adapter of the [`BillQueue`] port, the consumer of the queue's event-source
//! batches, and how the one billing binary tells its events apart.
//!
//! The billing function has three jobs on the fan-out and one beside it, all in one binary
//! so they share one role, one log group and one set of secrets. [`BillingEvent::classify`]
//! tells them apart by the event's shape, never by a guess:
//!
//! - an event with a `Records` array is an SQS event-source batch of billing items: every
//!   record must say `"eventSource": "aws:sqs"`, otherwise the event is refused;
//! - `{"job": "alerts"}` (the five-minute schedule's input) is the plan-limit alert run;
//! - `{"job": "catch-up"}` (the daily schedule's input) is [`tally_billing::fanout::catch_up`];
//! - any other `job` is refused (a typo in a schedule's input must not bill);
//! - anything else, such as the monthly schedule's EventBridge event
//!   (`{"source": "aws.events", "detail-type": "Scheduled Event", …}`, no input of its own),
//!   is the monthly run: with a billing queue configured it only enqueues
//!   ([`tally_billing::fanout::enqueue_due`]); without one it bills in-process as before
//!   ([`crate::handlers::bill_and_sync`]).
//!
//! [`consume`] bills a batch's items one after the other under the invocation's time
//! budget: it starts an item only while [`ITEM_TIME_RESERVE`] is left, and reports every
//! item it did not start (or that failed) in `batchItemFailures`, so SQS makes exactly those
//! visible again and deletes the rest. An invocation that dies mid-item loses nothing: the
//! whole batch comes back after the visibility timeout and each item resumes from the store
//! and the sync ledger.

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use tally_billing::fanout::{
    BillItem, BillQueue, ItemOutcome, QueueError, StripeItemPorts, bill_item,
};
use tally_billing::{Catalogue, ClosePorts};
use tally_core::ports::Clock;
use tracing::Instrument;

/// Time an invocation keeps in hand to bill one more item: one item is a month close for
/// one org (a handful of reads and a write) and its Stripe invoice (four to a dozen calls,
/// each retried with backoff). With the function's 300 s, a batch of 10 normally finishes in
/// a few seconds; the reserve only matters when Stripe is slow.
pub const ITEM_TIME_RESERVE: Duration = Duration::seconds(60);

/// Most entries of one `SendMessageBatch` call (SQS's limit).
const SEND_BATCH: usize = 10;

/// How often a batch's refused entries are sent again before the enqueue fails.
const SEND_ATTEMPTS: usize = 3;

/// What the billing function was invoked for (see the [module doc](self)).
#[derive(Debug)]
pub enum BillingEvent {
    /// A batch of billing items from the queue.
    Queue(SqsEvent),
    /// The plan-limit alert run.
    Alerts,
    /// The daily catch-up.
    CatchUp,
    /// The monthly run (the EventBridge schedule's event).
    Schedule,
}

/// Why an event was refused; the invocation fails without doing anything.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// A `Records` event whose records are not all from SQS.
    #[error(
        "Records[{index}].eventSource is {found:?}; the billing function takes only aws:sqs batches"
    )]
    NotSqs {
        /// The record's position.
        index: usize,
        /// Its `eventSource`.
        found: String,
    },
    /// A `Records` event that does not parse as an SQS event.
    #[error("the event is not a well-formed SQS event: {0}")]
    Malformed(serde_json::Error),
    /// A `job` this function does not run.
    #[error("unknown job {0:?}; the billing function runs \"alerts\" and \"catch-up\"")]
    UnknownJob(String),
}

impl BillingEvent {
    /// Classifies an invocation's payload (see the [module doc](self)).
    pub fn classify(payload: Value) -> Result<BillingEvent, EventError> {
        if let Some(records) = payload.get("Records").and_then(Value::as_array) {
            for (index, r) in records.iter().enumerate() {
                let found = r
                    .get("eventSource")
                    .and_then(Value::as_str)
                    .unwrap_or("(none)");
                if found != "aws:sqs" {
                    return Err(EventError::NotSqs {
                        index,
                        found: found.to_owned(),
                    });
                }
            }
            return serde_json::from_value(payload)
                .map(BillingEvent::Queue)
                .map_err(EventError::Malformed);
        }
        match payload.get("job") {
            None => Ok(BillingEvent::Schedule),
            Some(job) => match job.as_str() {
                Some("alerts") => Ok(BillingEvent::Alerts),
                Some("catch-up") => Ok(BillingEvent::CatchUp),
                _ => Err(EventError::UnknownJob(
                    job.to_string().chars().take(64).collect(),
                )),
            },
        }
    }
}

/// The billing queue on SQS: items are sent ten to a `SendMessageBatch`, and entries SQS
/// refuses are sent again a few times before the enqueue fails.
#[derive(Debug, Clone)]
pub struct SqsBillQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsBillQueue {
    /// The queue at `url`.
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        SqsBillQueue { client, url }
    }
}

#[async_trait]
impl BillQueue for SqsBillQueue {
    async fn enqueue(&self, items: &[BillItem]) -> Result<(), QueueError> {
        for chunk in items.chunks(SEND_BATCH) {
            let mut pending: Vec<(usize, String)> = chunk
                .iter()
                .enumerate()
                .map(|(i, item)| (i, item.encode()))
                .collect();
            for attempt in 1..=SEND_ATTEMPTS {
                let entries = pending
                    .iter()
                    .map(|(i, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(body)
                            .build()
                            .map_err(|e| QueueError::Unavailable(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| {
                        QueueError::Unavailable(format!(
                            "SendMessageBatch: {}",
                            aws_sdk_sqs::error::DisplayErrorContext(e)
                        ))
                    })?;
                let failed: Vec<String> = out.failed().iter().map(|f| f.id().to_owned()).collect();
                pending.retain(|(i, _)| failed.contains(&i.to_string()));
                if pending.is_empty() {
                    break;
                }
                if attempt == SEND_ATTEMPTS {
                    let reasons = out
                        .failed()
                        .iter()
                        .map(|f| f.message().unwrap_or(f.code()).to_owned())
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Err(QueueError::Unavailable(format!(
                        "SQS refused {} item(s) {SEND_ATTEMPTS} times: {reasons}",
                        pending.len()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The invocation's time: items are started only while `reserve` is left before
/// `deadline`, by `clock`.
#[derive(Clone, Copy)]
pub struct Budget<'a> {
    /// Where "now" comes from (the system clock on Lambda; tests tick one by hand).
    pub clock: &'a dyn Clock,
    /// When the invocation is cut off (Lambda's deadline).
    pub deadline: DateTime<Utc>,
    /// What must be left to start an item ([`ITEM_TIME_RESERVE`] on Lambda).
    pub reserve: Duration,
}

impl Budget<'_> {
    /// Whether another item may be started now.
    pub fn has_time(&self) -> bool {
        self.clock.now() + self.reserve <= self.deadline
    }
}

/// Everything an item is billed with.
#[derive(Clone, Copy)]
pub struct ItemPorts<'a> {
    /// Month close's ports (the store and the clock).
    pub close: ClosePorts<'a>,
    /// Stripe, when invoices are synced.
    pub stripe: Option<StripeItemPorts<'a>>,
    /// The catalogue.
    pub catalogue: &'a Catalogue,
    /// The grace period after a month's end.
    pub grace: Duration,
}

/// Bills a batch of items (see the [module doc](self)) and answers which to retry. With no
/// `budget`, every item is started.
pub async fn consume(
    ports: ItemPorts<'_>,
    event: &SqsEvent,
    budget: Option<&Budget<'_>>,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let mut out_of_time = false;
    let (mut billed, mut skipped, mut failed) = (0u64, 0u64, 0u64);
    for record in &event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let fail = |response: &mut SqsBatchResponse| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id.clone();
            response.batch_item_failures.push(f);
        };
        if !out_of_time && budget.is_some_and(|b| !b.has_time()) {
            out_of_time = true;
            tracing::warn!("invocation time is short; leaving the batch's other items for later");
        }
        if out_of_time {
            fail(&mut response);
            continue;
        }
        let item = match BillItem::decode(record.body.as_deref().unwrap_or_default()) {
            Ok(item) => item,
            Err(e) => {
                tracing::error!(message_id = %id, error = %e, "not a billing item; it will be dead-lettered");
                failed += 1;
                fail(&mut response);
                continue;
            }
        };
        let span = tracing::info_span!("bill_item", org = %item.org, period = %item.period);
        match bill_item(
            ports.close,
            ports.stripe,
            ports.catalogue,
            ports.grace,
            &item,
        )
        .instrument(span)
        .await
        {
            Ok(ItemOutcome::Billed { .. }) => billed += 1,
            Ok(ItemOutcome::NotInPeriod) => {
                tracing::warn!(org = %item.org, period = %item.period, "the org did not exist in the month; nothing to bill");
                skipped += 1;
            }
            Err(e) => {
                tracing::error!(org = %item.org, period = %item.period, error = %e, "billing item failed; it will be retried");
                failed += 1;
                fail(&mut response);
            }
        }
    }
    metrics::counter!("tally_billing_items_billed_total").increment(billed);
    metrics::counter!("tally_billing_items_skipped_total").increment(skipped);
    metrics::counter!("tally_billing_items_failed_total").increment(failed);
    metrics::counter!("tally_billing_items_deferred_total")
        .increment((response.batch_item_failures.len() as u64).saturating_sub(failed));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_told_apart_by_shape_and_unknown_ones_refused() {
        let schedule = json!({
            "version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "1", "time": "2026-12-01T02:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:1:rule/r"], "detail": {}
        });
        assert!(matches!(
            BillingEvent::classify(schedule),
            Ok(BillingEvent::Schedule)
        ));
        assert!(matches!(
            BillingEvent::classify(json!({"job": "alerts"})),
            Ok(BillingEvent::Alerts)
        ));
        assert!(matches!(
            BillingEvent::classify(json!({"job": "catch-up"})),
            Ok(BillingEvent::CatchUp)
        ));
        let e = BillingEvent::classify(json!({"job": "catchup"})).unwrap_err();
        assert!(matches!(e, EventError::UnknownJob(_)), "{e}");
        let sqs = json!({"Records": [{
            "messageId": "m1", "receiptHandle": "r", "body": "{}",
            "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:1:q",
            "awsRegion": "us-east-1", "attributes": {}, "messageAttributes": {}
        }]});
        let Ok(BillingEvent::Queue(batch)) = BillingEvent::classify(sqs) else {
            panic!("an SQS batch")
        };
        assert_eq!(batch.records.len(), 1);
        let kinesis = json!({"Records": [{"eventSource": "aws:kinesis"}]});
        let e = BillingEvent::classify(kinesis).unwrap_err();
        assert!(matches!(e, EventError::NotSqs { index: 0, .. }), "{e}");
    }
}
