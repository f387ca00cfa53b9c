//! [`SqsQueue`]: the [`EventQueue`] on Amazon SQS (a standard queue plus its dead-letter
//! queue).
//!
//! **Message format.** A message body is a versioned JSON envelope holding some events of one
//! org: `{"v":1,"events":[<event>,...]}`, each event as [`Event`] serializes it
//! ([`tally_core::envelope`] packs and decodes it). The same envelope is the data of a
//! Kinesis record ([`crate::kinesis`]). A reader refuses an envelope of another version, one
//! with no events and one mixing orgs; such a message is dead-lettered, never handed out.
//!
//! - **Publish** groups the events by org (in order of first appearance) and packs each group
//!   greedily into bodies of at most [`MAX_MESSAGE_BYTES`] (256 KiB). The bodies go out with
//!   `SendMessageBatch`, at most 10 entries and 256 KiB per call. Entries SQS refuses for a
//!   reason of its own (throttling, an internal error) are sent again, and only they, up to
//!   [`SqsConfig::retry`] allows, with jittered exponential backoff; entries refused for the
//!   sender's fault are not retried. Every event of an entry that still failed is listed in
//!   [`PublishReport::failed`] with the reason, as is an event that alone does not fit a
//!   message (impossible for validated events: their properties are at most 4 KiB).
//! - **Receive** long-polls (`WaitTimeSeconds` = the whole seconds left of `wait`, at most
//!   [`SqsConfig::max_wait`] and 20; the sub-second rest is spent on short polls 100 ms
//!   apart) until a first message arrives, then keeps taking what is immediately there while
//!   it is under `max_events`. `MaxNumberOfMessages` is `min(10, events still wanted)`, so
//!   one-event messages never overshoot. A message that would overshoot (multi-event
//!   messages) is not released (that would bump its receive count towards the redrive limit)
//!   but kept by the handle and handed out first by its next `receive`, while it still has
//!   at least half its visibility timeout left; older ones are made visible again. The
//!   receipt is the SQS receipt handle, `receive_count` is `ApproximateReceiveCount`.
//! - **Dead letters.** A body that does not decode is sent to the dead-letter queue with the
//!   reason in the message attribute [`REASON_ATTRIBUTE`] and then deleted from the main
//!   queue. The dead-letter queue is [`SqsConfig::dead_letter_queue_url`], or else found
//!   through the main queue's `RedrivePolicy` (as [`create_queues`] sets it). If that fails
//!   the message stays where it is (not handed out); the redrive policy moves it to the
//!   dead-letter queue after `maxReceiveCount` receives, without a reason attribute.
//!   Nothing is dropped.
//! - **Replay** ([`SqsQueue::replay_dead_letters`], `tally replay`): once the fault is
//!   fixed, dead letters go back to the main queue: received from the dead-letter queue,
//!   sent to the main queue byte for byte without the reason attribute, and only then
//!   deleted from the dead-letter queue (a crash in between replays the letter again,
//!   which the ledger makes harmless; it is never lost). Letters the redrive policy moved
//!   (no reason attribute) are replayed like the others; a body that is not a Tally
//!   envelope is left and reported. See [`crate::replay`].
//! - **Ack** deletes with `DeleteMessageBatch` (10 per call), retrying failed entries. An
//!   entry refused as the sender's fault (an unknown or stale receipt handle, e.g. acked
//!   twice) is logged and skipped: at worst the message comes back, and the store applies
//!   events exactly once.
//! - **Visibility.** Each receive passes [`SqsConfig::visibility_timeout`] (whole seconds,
//!   rounded up); a message not acknowledged in time is handed out again by SQS.
//!   [`EventQueue::extend_visibility`] is `ChangeMessageVisibilityBatch`.
//! - **Depth** is `ApproximateNumberOfMessages + ApproximateNumberOfMessagesNotVisible`
//!   (+ `Delayed`): messages not yet deleted, in flight included.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{BuildError, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use chrono::DateTime;
use tally_core::backoff::Backoff;
use tally_core::envelope;
use tally_core::event::Event;
use tally_core::ports::{Delivery, EventQueue, PublishReport, QueueError};
use tokio::time::Instant;
use tracing::Instrument;

use crate::aws::{
    BatchNames, ENTRY_RETRY, EntryResult, describe_sdk_error, publish_packed, send_with_retries,
    sleep_before_retry, truncate_utf8,
};
use crate::replay::{LetterStatus, MAX_REPLAY_LIMIT, ReplayReport, ReplayRequest, ReplayedLetter};

/// The envelope version this build writes and reads (defined with the envelope, in core).
pub use tally_core::envelope::ENVELOPE_VERSION;
/// Largest message body [`SqsQueue::publish`] writes (and the largest total payload of one
/// `SendMessageBatch` call): 256 KiB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Message attribute of a dead-lettered message that says why it was set aside.
pub const REASON_ATTRIBUTE: &str = "tally_dead_letter_reason";
/// Message attribute of a dead-lettered message: its message id in the main queue.
pub const SOURCE_ID_ATTRIBUTE: &str = "tally_source_message_id";
/// `maxReceiveCount` of the redrive policy [`create_queues`] sets: a message handed out this
/// many times without being deleted moves to the dead-letter queue.
pub const MAX_RECEIVE_COUNT: u32 = 5;

/// Entries per SQS batch call.
const BATCH_ENTRIES: usize = 10;
/// SQS caps a long poll at 20 s.
const MAX_WAIT_SECONDS: u64 = 20;
/// Pause between short polls when less than a second of `wait` is left.
const SHORT_POLL_PAUSE: Duration = Duration::from_millis(100);
/// SQS caps a visibility timeout at 12 hours.
const MAX_VISIBILITY_SECONDS: u64 = 12 * 60 * 60;
/// Longest dead-letter reason kept in the attribute.
const MAX_REASON_BYTES: usize = 1024;
/// How long a replay keeps the dead letters it looks at hidden from other readers of the
/// dead-letter queue; it makes those it does not replay visible again when it is done.
pub const REPLAY_VISIBILITY_SECONDS: i32 = 300;
/// Most dead letters one replay examines, selected or not (a filter may skip many).
pub const MAX_REPLAY_SCAN: usize = 2 * MAX_REPLAY_LIMIT;

// ---------------------------------------------------------------------------------------
// Configuration and construction
// ---------------------------------------------------------------------------------------

/// Settings of an [`SqsQueue`].
#[derive(Debug, Clone)]
pub struct SqsConfig {
    /// How long a received message stays hidden before SQS hands it out again, unless
    /// deleted. Sent with every `ReceiveMessage` in whole seconds (rounded up, at most 12 h).
    /// Default 30 s.
    pub visibility_timeout: Duration,
    /// Longest single long poll (`WaitTimeSeconds`); SQS allows at most 20 s. Default 20 s.
    pub max_wait: Duration,
    /// Where undecodable messages go. `None` (the default): the dead-letter target of the
    /// main queue's `RedrivePolicy`, looked up once.
    pub dead_letter_queue_url: Option<String>,
    /// Attempts per batch entry for sends, deletes and visibility changes (the SDK's own
    /// retries of a failed call come on top), and the jittered pause between them. Default
    /// [`ENTRY_RETRY`]: 5 attempts, 50 ms doubling, at most 2 s.
    pub retry: Backoff,
}

impl Default for SqsConfig {
    fn default() -> Self {
        SqsConfig {
            visibility_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(MAX_WAIT_SECONDS),
            dead_letter_queue_url: None,
            retry: ENTRY_RETRY,
        }
    }
}

/// A message received but not handed out yet (it would have overshot `max_events`).
struct Prefetched {
    delivery: Delivery,
    received_at: Instant,
}

struct Inner {
    client: Client,
    queue_url: String,
    config: SqsConfig,
    /// The dead-letter queue's URL, once known.
    dlq_url: Mutex<Option<String>>,
    /// Messages received for an earlier `receive` that did not fit it, oldest first.
    prefetched: Mutex<VecDeque<Prefetched>>,
}

/// The SQS event queue. Cheap to clone (clones share the client and the prefetch buffer).
#[derive(Clone)]
pub struct SqsQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsQueue")
            .field("queue_url", &self.inner.queue_url)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A message found in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsDeadLetter {
    /// Its message id in the dead-letter queue.
    pub message_id: String,
    /// The body, as it was in the main queue.
    pub body: String,
    /// Why Tally set it aside; `None` if the redrive policy moved it (received
    /// `maxReceiveCount` times without being deleted).
    pub reason: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sdk_err<E, R>(what: &str, e: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    QueueError::Unavailable(format!("SQS {what}: {}", describe_sdk_error(&e)))
}

fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The [`REASON_ATTRIBUTE`] a dead letter is sent with: `reason`, cut to
/// [`MAX_REASON_BYTES`].
fn reason_attribute(reason: &str) -> Result<MessageAttributeValue, QueueError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(truncate_utf8(reason, MAX_REASON_BYTES))
        .build()
        .map_err(|e| QueueError::Unavailable(format!("building attribute: {e}")))
}

/// The reason a dead letter carries in [`REASON_ATTRIBUTE`], if it has one.
fn reason_of(m: &Message) -> Option<String> {
    m.message_attributes
        .as_ref()
        .and_then(|a| a.get(REASON_ATTRIBUTE))
        .and_then(|v| v.string_value.clone())
}

/// One attribute of the queue `url` (`GetQueueAttributes` of `name`); `None` when SQS
/// returns none. `what` names the call in errors.
async fn queue_attribute(
    client: &Client,
    url: &str,
    name: QueueAttributeName,
    what: &str,
) -> Result<Option<String>, QueueError> {
    Ok(client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .map_err(|e| sdk_err(what, e))?
        .attributes
        .and_then(|mut a| a.remove(&name)))
}

fn visibility_seconds(d: Duration) -> i32 {
    i32::try_from(whole_seconds_up(d).min(MAX_VISIBILITY_SECONDS)).unwrap_or(i32::MAX)
}

/// Creates (or finds) the queue `name` and its dead-letter queue `<name>-dlq`, and points
/// the queue's `RedrivePolicy` at the dead-letter queue (`maxReceiveCount`
/// [`MAX_RECEIVE_COUNT`]). Idempotent: running it again returns the same URLs and leaves the
/// queues as they are. Returns `(queue url, dead-letter queue url)`.
pub async fn create_queues(client: &Client, name: &str) -> Result<(String, String), QueueError> {
    let dlq_name = format!("{name}-dlq");
    let dlq_url = create_queue(client, &dlq_name).await?;
    client
        .set_queue_attributes()
        .queue_url(&dlq_url)
        // Fourteen days, the most SQS keeps: dead letters wait for a human.
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(|e| sdk_err("SetQueueAttributes (dead-letter queue)", e))?;
    let arn = QueueAttributeName::QueueArn;
    let dlq_arn = queue_attribute(
        client,
        &dlq_url,
        arn,
        "GetQueueAttributes (dead-letter queue)",
    )
    .await?
    .ok_or_else(|| QueueError::Unavailable(format!("SQS did not return the ARN of {dlq_name}")))?;
    let url = create_queue(client, name).await?;
    let policy = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": MAX_RECEIVE_COUNT.to_string(),
    });
    client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
        .send()
        .await
        .map_err(|e| sdk_err("SetQueueAttributes (redrive policy)", e))?;
    Ok((url, dlq_url))
}

async fn create_queue(client: &Client, name: &str) -> Result<String, QueueError> {
    // No attributes here: CreateQueue with none matches an existing queue whatever its
    // attributes, which keeps this idempotent; they are set separately.
    client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| sdk_err(&format!("CreateQueue {name}"), e))?
        .queue_url
        .ok_or_else(|| QueueError::Unavailable(format!("SQS returned no URL for queue {name}")))
}

impl SqsQueue {
    /// A queue on `queue_url` with the default [`SqsConfig`].
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        Self::with_config(client, queue_url, SqsConfig::default())
    }

    /// A queue on `queue_url` with explicit settings.
    pub fn with_config(client: Client, queue_url: impl Into<String>, config: SqsConfig) -> Self {
        let dlq_url = config.dead_letter_queue_url.clone();
        SqsQueue {
            inner: Arc::new(Inner {
                client,
                queue_url: queue_url.into(),
                config,
                dlq_url: Mutex::new(dlq_url),
                prefetched: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// The main queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.inner.queue_url
    }

    /// Sends a message with this exact body, unchecked. For tools and tests (a body that
    /// does not decode exercises the dead-letter path); `publish` is the way to queue events.
    pub async fn publish_raw(&self, body: &str) -> Result<(), QueueError> {
        self.inner
            .client
            .send_message()
            .queue_url(&self.inner.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| sdk_err("SendMessage", e))?;
        Ok(())
    }

    /// The dead-letter queue's URL: configured, or the main queue's redrive target.
    pub async fn dead_letter_queue_url(&self) -> Result<String, QueueError> {
        if let Some(url) = lock(&self.inner.dlq_url).clone() {
            return Ok(url);
        }
        let (client, url) = (&self.inner.client, &self.inner.queue_url);
        let redrive = QueueAttributeName::RedrivePolicy;
        let policy = queue_attribute(client, url, redrive, "GetQueueAttributes (redrive policy)")
            .await?
            .ok_or_else(|| {
                QueueError::Unavailable(format!(
                    "queue {} has no RedrivePolicy and no dead-letter queue is configured",
                    self.inner.queue_url
                ))
            })?;
        let arn = serde_json::from_str::<serde_json::Value>(&policy)
            .ok()
            .and_then(|v| v.get("deadLetterTargetArn")?.as_str().map(str::to_owned))
            .ok_or_else(|| {
                QueueError::Unavailable(format!(
                    "RedrivePolicy has no deadLetterTargetArn: {policy}"
                ))
            })?;
        // arn:aws:sqs:<region>:<account>:<name>
        let parts: Vec<&str> = arn.split(':').collect();
        let (Some(account), Some(name)) = (parts.get(4), parts.get(5)) else {
            return Err(QueueError::Unavailable(format!(
                "dead-letter target {arn:?} is not an SQS queue ARN"
            )));
        };
        let url = self
            .inner
            .client
            .get_queue_url()
            .queue_name(*name)
            .queue_owner_aws_account_id(*account)
            .send()
            .await
            .map_err(|e| sdk_err("GetQueueUrl (dead-letter queue)", e))?
            .queue_url
            .ok_or_else(|| {
                QueueError::Unavailable(format!("SQS returned no URL for queue {name}"))
            })?;
        *lock(&self.inner.dlq_url) = Some(url.clone());
        Ok(url)
    }

    /// Looks at (up to `max` of) the messages in the dead-letter queue without taking them
    /// (they stay visible). Best effort, like every SQS receive: a deep dead-letter queue is
    /// sampled, not listed.
    pub async fn dead_letters(&self, max: usize) -> Result<Vec<SqsDeadLetter>, QueueError> {
        let dlq = self.dead_letter_queue_url().await?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        // Visibility 0 hands the same messages out again, so stop once a call brings nothing
        // new.
        for _ in 0..10 {
            if out.len() >= max {
                break;
            }
            let messages = self
                .inner
                .client
                .receive_message()
                .queue_url(&dlq)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .wait_time_seconds(0)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| sdk_err("ReceiveMessage (dead-letter queue)", e))?
                .messages
                .unwrap_or_default();
            let mut new = 0;
            for m in messages {
                let id = m.message_id.clone().unwrap_or_default();
                if !seen.insert(id.clone()) {
                    continue;
                }
                new += 1;
                let reason = reason_of(&m);
                out.push(SqsDeadLetter {
                    message_id: id,
                    body: m.body.unwrap_or_default(),
                    reason,
                });
            }
            if new == 0 {
                break;
            }
        }
        out.truncate(max);
        Ok(out)
    }

    /// Replays (or, for a dry run, lists) the dead letters `request` selects: receives them
    /// from the dead-letter queue (hidden for [`REPLAY_VISIBILITY_SECONDS`] while the run
    /// looks at them), sends each selected body to the main queue byte for byte and without
    /// attributes (the reason is dropped), and only once SQS has taken the copy deletes the
    /// letter from the dead-letter queue. A crash in between leaves the letter there, to be
    /// replayed again; the ledger makes the second copy harmless. A body that is not a Tally
    /// envelope this build reads is left and reported. Everything looked at and not
    /// replayed is made visible again before returning. Ids are the dead-letter queue's
    /// message ids. At most [`MAX_REPLAY_SCAN`] letters are examined per run. It is also the
    /// queue's [`crate::replay::DeadLetterReplay`].
    pub async fn replay_dead_letters(
        &self,
        request: &ReplayRequest,
    ) -> Result<ReplayReport, QueueError> {
        let dlq = self.dead_letter_queue_url().await?;
        let started = Instant::now();
        // Stop looking well before the first letters looked at become visible again.
        let budget = Duration::from_secs(REPLAY_VISIBILITY_SECONDS.unsigned_abs().into()) / 2;
        let mut seen = HashSet::new();
        let mut release: Vec<String> = Vec::new();
        let mut chosen: Vec<ReplayCandidate> = Vec::new();
        let mut examined = 0usize;
        let mut exhausted = false;
        while examined < MAX_REPLAY_SCAN
            && chosen.len() < request.limit()
            && started.elapsed() < budget
        {
            let received = self
                .inner
                .client
                .receive_message()
                .queue_url(&dlq)
                .max_number_of_messages(i32::try_from(BATCH_ENTRIES).unwrap_or(10))
                .visibility_timeout(REPLAY_VISIBILITY_SECONDS)
                // A long poll asks every SQS server, so an empty answer means empty.
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .send()
                .await;
            let messages = match received {
                Ok(out) => out.messages.unwrap_or_default(),
                Err(e) => {
                    release.extend(chosen.into_iter().map(|c| c.receipt));
                    self.release_dead_letters(&dlq, &release).await;
                    return Err(sdk_err("ReceiveMessage (dead-letter queue)", e));
                }
            };
            if messages.is_empty() {
                exhausted = true;
                break;
            }
            for m in messages {
                let Some(receipt) = m.receipt_handle.clone() else {
                    continue;
                };
                let id = m.message_id.clone().unwrap_or_default();
                // A letter handed out twice (at-least-once delivery) is judged once.
                if !seen.insert(id.clone()) || chosen.len() == request.limit() {
                    release.push(receipt);
                    continue;
                }
                examined += 1;
                let reason = reason_of(&m);
                if !request.matches(&id, reason.as_deref()) {
                    release.push(receipt);
                    continue;
                }
                let body = m.body.unwrap_or_default();
                let check = envelope::decode_each_str(&body)
                    .map(|(events, unreadable)| events.len() + unreadable.len())
                    .map_err(|e| format!("not a Tally envelope this build reads: {e}"));
                let dead_lettered_at = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|t| t.parse::<i64>().ok())
                    .and_then(DateTime::from_timestamp_millis);
                chosen.push(ReplayCandidate {
                    receipt,
                    letter: ReplayedLetter {
                        id,
                        reason,
                        events: *check.as_ref().unwrap_or(&0),
                        dead_lettered_at,
                        status: LetterStatus::Left,
                        problem: check.as_ref().err().cloned(),
                    },
                    body,
                    replayable: check.is_ok(),
                });
            }
            if !request.ids().is_empty() && chosen.len() == request.ids().len() {
                break;
            }
        }
        let mut to_send: Vec<usize> = Vec::new();
        for (i, c) in chosen.iter_mut().enumerate() {
            if !c.replayable {
                release.push(c.receipt.clone());
            } else if request.dry_run() {
                c.letter.status = LetterStatus::WouldReplay;
                release.push(c.receipt.clone());
            } else {
                to_send.push(i);
            }
        }
        for batch in size_batches(&to_send, |i| chosen[i].body.len()) {
            let bodies: Vec<&str> = batch.iter().map(|&i| chosen[i].body.as_str()).collect();
            let failed = self.send_batch(&bodies).await;
            for (k, &i) in batch.iter().enumerate() {
                let c = &mut chosen[i];
                if let Some((_, why)) = failed.iter().find(|(f, _)| *f == k) {
                    c.letter.problem = Some(format!("republishing failed: {why}"));
                    release.push(c.receipt.clone());
                    continue;
                }
                // The copy is on the main queue: only now may the letter go.
                let deleted = self
                    .inner
                    .client
                    .delete_message()
                    .queue_url(&dlq)
                    .receipt_handle(&c.receipt)
                    .send()
                    .await;
                match deleted {
                    Ok(_) => c.letter.status = LetterStatus::Replayed,
                    Err(e) => {
                        c.letter.status = LetterStatus::ReplayedNotRemoved;
                        c.letter.problem = Some(format!(
                            "republished, but not removed from the dead-letter queue ({}); replaying it again is harmless",
                            describe_sdk_error(&e)
                        ));
                        release.push(c.receipt.clone());
                    }
                }
            }
        }
        self.release_dead_letters(&dlq, &release).await;
        let letters: Vec<ReplayedLetter> = chosen.into_iter().map(|c| c.letter).collect();
        let report = ReplayReport {
            dry_run: request.dry_run(),
            missing_ids: request.missing(letters.iter().map(|l| l.id.as_str())),
            // Ids asked for are all found before the limit (it is at least their number).
            limit_reached: request.ids().is_empty()
                && !exhausted
                && letters.len() == request.limit(),
            letters,
        };
        if !report.dry_run && report.republished() > 0 {
            tracing::info!(
                letters = report.republished(),
                events = report.events_republished(),
                "replayed SQS dead letters onto the main queue"
            );
        }
        Ok(report)
    }

    /// Makes dead letters a replay looked at visible again at once; best effort (they come
    /// back by themselves when their visibility timeout ends).
    async fn release_dead_letters(&self, dlq: &str, receipts: &[String]) {
        if receipts.is_empty() {
            return;
        }
        let released = self
            .change_visibility_in(
                dlq,
                "ChangeMessageVisibilityBatch (dead-letter queue)",
                receipts,
                0,
                |n| tracing::debug_span!("sqs_release_dead_letters", entries = n),
            )
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "dead letters a replay looked at stay hidden until their timeout ends");
        }
    }

    /// Sends one batch of at most 10 bodies, retrying only failed entries
    /// ([`send_with_retries`]). Returns the entries (indexes into `bodies`) that still
    /// failed, with the reason.
    async fn send_batch(&self, bodies: &[&str]) -> Vec<(usize, String)> {
        let total: usize = bodies.iter().map(|b| b.len()).sum();
        let span = tracing::info_span!("sqs_send_batch", entries = bodies.len(), bytes = total);
        let names = BatchNames {
            backend: "sqs",
            call: "SQS send",
            entry: "SQS message",
        };
        send_with_retries(
            &self.inner.config.retry,
            &names,
            bodies.len(),
            |k| {
                SendMessageBatchRequestEntry::builder()
                    .id(k.to_string())
                    .message_body(bodies[k])
                    .build()
                    .map_err(|e| format!("building the SQS entry: {e}"))
            },
            |entries| async move {
                self.inner
                    .client
                    .send_message_batch()
                    .queue_url(&self.inner.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| sdk_err("SendMessageBatch", e).to_string())
            },
            judge_sends,
        )
        .instrument(span)
        .await
    }

    /// Hands out prefetched messages that fit and are fresh; releases stale ones.
    async fn take_prefetched(&self, out: &mut Vec<Delivery>, events: &mut usize, max: usize) {
        let fresh_for = self.inner.config.visibility_timeout / 2;
        let mut stale = Vec::new();
        {
            let mut buf = lock(&self.inner.prefetched);
            while let Some(p) = buf.front() {
                if p.received_at.elapsed() >= fresh_for {
                    if let Some(p) = buf.pop_front() {
                        stale.push(p.delivery.receipt);
                    }
                    continue;
                }
                let n = p.delivery.events.len();
                if !out.is_empty() && *events + n > max {
                    break;
                }
                let Some(p) = buf.pop_front() else { break };
                *events += n;
                out.push(p.delivery);
                if *events >= max {
                    break;
                }
            }
        }
        if !stale.is_empty() {
            // Visible again now rather than at the end of their timeout; best effort.
            if let Err(e) = self.change_visibility(&stale, 0).await {
                tracing::debug!(error = %e, "releasing stale prefetched messages");
            }
        }
    }

    /// Dead-letters an undecodable message: to the dead-letter queue with the reason, then
    /// deleted from the main queue. On failure the message is left where it is.
    async fn dead_letter(&self, m: &Message, reason: &str) {
        let message_id = m.message_id().unwrap_or_default();
        tracing::error!(message_id, reason, "dead-lettering SQS message");
        let result: Result<(), QueueError> = async {
            let dlq = self.dead_letter_queue_url().await?;
            let reason_value = reason_attribute(reason)?;
            let mut send = self
                .inner
                .client
                .send_message()
                .queue_url(&dlq)
                // SQS refuses an empty body, so an (impossible) empty one is marked.
                .message_body(match m.body() {
                    Some(b) if !b.is_empty() => b,
                    _ => "(empty body)",
                })
                .message_attributes(REASON_ATTRIBUTE, reason_value);
            if !message_id.is_empty() {
                let id_value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(message_id)
                    .build()
                    .map_err(|e| QueueError::Unavailable(format!("building attribute: {e}")))?;
                send = send.message_attributes(SOURCE_ID_ATTRIBUTE, id_value);
            }
            send.send()
                .await
                .map_err(|e| sdk_err("SendMessage (dead-letter queue)", e))?;
            if let Some(handle) = m.receipt_handle() {
                self.inner
                    .client
                    .delete_message()
                    .queue_url(&self.inner.queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .map_err(|e| sdk_err("DeleteMessage (dead-lettered)", e))?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                metrics::counter!("tally_queue_messages_dead_lettered_total", "backend" => "sqs")
                    .increment(1);
            }
            Err(e) => {
                metrics::counter!("tally_queue_dead_letter_failures_total", "backend" => "sqs")
                    .increment(1);
                tracing::error!(
                    message_id,
                    error = %e,
                    "could not dead-letter SQS message; it stays queued for the redrive policy"
                );
            }
        }
    }

    /// One `ReceiveMessage` call.
    async fn receive_once(&self, want: usize, wait_secs: u64) -> Result<Vec<Message>, QueueError> {
        let span = tracing::debug_span!("sqs_receive", want, wait_secs);
        self.inner
            .client
            .receive_message()
            .queue_url(&self.inner.queue_url)
            .max_number_of_messages(i32::try_from(want.clamp(1, BATCH_ENTRIES)).unwrap_or(1))
            .wait_time_seconds(i32::try_from(wait_secs.min(MAX_WAIT_SECONDS)).unwrap_or(0))
            .visibility_timeout(visibility_seconds(self.inner.config.visibility_timeout))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .instrument(span)
            .await
            .map(|out| out.messages.unwrap_or_default())
            .map_err(|e| sdk_err("ReceiveMessage", e))
    }

    /// `ChangeMessageVisibilityBatch` over `receipts`, 10 per call, retrying failed entries.
    async fn change_visibility(&self, receipts: &[String], seconds: i32) -> Result<(), QueueError> {
        self.change_visibility_in(
            &self.inner.queue_url,
            "ChangeMessageVisibilityBatch",
            receipts,
            seconds,
            |n| tracing::debug_span!("sqs_change_visibility_batch", entries = n, seconds),
        )
        .await
    }

    /// `ChangeMessageVisibilityBatch` over `receipts` of the queue `url` (the main one, or the
    /// dead-letter queue), 10 per call under the span `span(entries)`, retrying failed
    /// entries; `what` names it in errors.
    async fn change_visibility_in(
        &self,
        url: &str,
        what: &str,
        receipts: &[String],
        seconds: i32,
        span: impl Fn(usize) -> tracing::Span,
    ) -> Result<(), QueueError> {
        self.receipt_batches(
            what,
            receipts,
            span,
            |id, handle| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(handle)
                    .visibility_timeout(seconds)
                    .build()
            },
            |entries| async move {
                let out = self
                    .inner
                    .client
                    .change_message_visibility_batch()
                    .queue_url(url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| sdk_err("ChangeMessageVisibilityBatch", e))?;
                Ok(out.failed().to_vec())
            },
        )
        .await
    }

    /// Runs one of SQS's receipt-handle batch calls, `what` (`DeleteMessageBatch` or
    /// `ChangeMessageVisibilityBatch`), over `receipts`, duplicates dropped, 10 entries per
    /// call under the span `span(entries)`, retrying failed entries
    /// ([`Self::batch_with_retry`]). `entry` builds the entry of one receipt handle from its
    /// id in the call; `send` makes the call and returns the entries SQS reports failed.
    async fn receipt_batches<E, Fut>(
        &self,
        what: &str,
        receipts: &[String],
        span: impl Fn(usize) -> tracing::Span,
        entry: impl Fn(String, &str) -> Result<E, BuildError>,
        send: impl Fn(Vec<E>) -> Fut,
    ) -> Result<(), QueueError>
    where
        Fut: std::future::Future<Output = Result<Vec<BatchResultErrorEntry>, QueueError>>,
    {
        for chunk in dedup(receipts).chunks(BATCH_ENTRIES) {
            self.batch_with_retry(what, chunk, |pending| {
                let entries = pending
                    .iter()
                    .map(|(id, handle)| entry(id.clone(), handle))
                    .collect::<Result<Vec<_>, _>>();
                let sent = entries
                    .map_err(|e| QueueError::Unavailable(format!("building entry: {e}")))
                    .map(&send);
                async move {
                    let failed = sent?.await?;
                    Ok(failed
                        .iter()
                        .map(|f| {
                            (
                                f.id().to_owned(),
                                f.sender_fault(),
                                format!("{} {}", f.code(), f.message().unwrap_or_default()),
                            )
                        })
                        .collect())
                }
            })
            .instrument(span(chunk.len()))
            .await?;
        }
        Ok(())
    }

    /// Runs a batch call over `handles` (at most 10), retrying the entries that failed for
    /// a reason that is not the sender's fault. Sender-fault failures (unknown or stale
    /// receipt handles) are logged and skipped. Errs only if the call itself keeps failing.
    async fn batch_with_retry<'a, F, Fut>(
        &self,
        what: &str,
        handles: &[&'a str],
        call: F,
    ) -> Result<(), QueueError>
    where
        F: Fn(&[(String, &'a str)]) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<(String, bool, String)>, QueueError>>,
    {
        let cfg = &self.inner.config;
        let mut pending: Vec<(String, &str)> = handles
            .iter()
            .enumerate()
            .map(|(i, h)| (i.to_string(), *h))
            .collect();
        let mut last_error = None;
        for attempt in 0..cfg.retry.max_attempts.max(1) {
            if pending.is_empty() {
                return Ok(());
            }
            if attempt > 0 {
                sleep_before_retry(&cfg.retry, attempt).await;
            }
            match call(&pending).await {
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "{what} call failed");
                    last_error = Some(e);
                }
                Ok(failures) => {
                    last_error = None;
                    let mut retry = Vec::new();
                    for (id, sender_fault, reason) in failures {
                        let Some(entry) = pending.iter().find(|(i, _)| *i == id) else {
                            continue;
                        };
                        if sender_fault {
                            tracing::warn!(%reason, "{what}: entry refused; skipping it");
                        } else {
                            tracing::warn!(%reason, attempt, "{what}: entry failed; retrying");
                            last_error = Some(QueueError::Unavailable(format!(
                                "SQS {what} entry failed: {reason}"
                            )));
                            retry.push(entry.clone());
                        }
                    }
                    pending = retry;
                }
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        Err(last_error.unwrap_or_else(|| QueueError::Unavailable(format!("SQS {what} failed"))))
    }
}

/// A dead letter a replay selected: its receipt in the dead-letter queue and its body.
struct ReplayCandidate {
    receipt: String,
    letter: ReplayedLetter,
    body: String,
    replayable: bool,
}

/// Splits `items` into `SendMessageBatch` calls: at most 10 entries and
/// [`MAX_MESSAGE_BYTES`] of bodies per call (one body alone always fits: it came from SQS).
fn size_batches(items: &[usize], size: impl Fn(usize) -> usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0usize;
    for &i in items {
        let n = size(i);
        match out.last_mut() {
            Some(last) if last.len() < BATCH_ENTRIES && bytes + n <= MAX_MESSAGE_BYTES => {
                last.push(i);
                bytes += n;
            }
            _ => {
                out.push(vec![i]);
                bytes = n;
            }
        }
    }
    out
}

/// How each sent entry of a `SendMessageBatch` went: refused for good when SQS says it is
/// the sender's fault, else retried; an entry named in neither list is retried too.
fn judge_sends(out: &SendMessageBatchOutput, sent: &[usize]) -> Vec<EntryResult> {
    let ok: HashSet<&str> = out.successful().iter().map(|s| s.id()).collect();
    sent.iter()
        .map(|k| {
            let id = k.to_string();
            match out.failed().iter().find(|f| f.id() == id) {
                Some(f) => {
                    let reason = format!(
                        "SQS refused the message: {} {}",
                        f.code(),
                        f.message().unwrap_or_default()
                    );
                    if f.sender_fault() {
                        EntryResult::Refused(reason)
                    } else {
                        EntryResult::Retry(reason)
                    }
                }
                None if ok.contains(id.as_str()) => EntryResult::Sent,
                None => EntryResult::Retry("SQS did not report on the message".into()),
            }
        })
        .collect()
}

fn dedup(receipts: &[String]) -> Vec<&str> {
    let mut seen = HashSet::new();
    receipts
        .iter()
        .map(String::as_str)
        .filter(|r| seen.insert(*r))
        .collect()
}

#[async_trait]
impl EventQueue for SqsQueue {
    async fn publish(&self, events: &[Event]) -> Result<PublishReport, QueueError> {
        let limits = (BATCH_ENTRIES, MAX_MESSAGE_BYTES);
        let packed = envelope::pack(events, MAX_MESSAGE_BYTES);
        let report = publish_packed(
            &packed,
            limits,
            |m| m.body.len(),
            |batch, _| {
                Box::pin(async move {
                    let bodies: Vec<&str> = batch.iter().map(|m| m.body.as_str()).collect();
                    self.send_batch(&bodies).await
                })
            },
        )
        .await;
        Ok(report)
    }

    async fn receive(
        &self,
        max_events: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let max_events = max_events.max(1);
        let deadline = Instant::now() + wait;
        let max_wait = self.inner.config.max_wait.as_secs().min(MAX_WAIT_SECONDS);
        let mut out: Vec<Delivery> = Vec::new();
        let mut events = 0usize;
        self.take_prefetched(&mut out, &mut events, max_events)
            .await;
        while events < max_events {
            let left = deadline.saturating_duration_since(Instant::now());
            // Wait for the first message only; after that take what is there at once.
            let wait_secs = if out.is_empty() {
                left.as_secs().min(max_wait)
            } else {
                0
            };
            let messages = match self.receive_once(max_events - events, wait_secs).await {
                Ok(m) => m,
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    // Hand out what is in hand; the failed call took nothing.
                    tracing::warn!(error = %e, "SQS receive failed after some messages");
                    break;
                }
            };
            let got_any = !messages.is_empty();
            metrics::counter!("tally_queue_messages_received_total", "backend" => "sqs")
                .increment(messages.len() as u64);
            let mut overflowed = false;
            for m in messages {
                let decoded = match m.body() {
                    Some(body) => envelope::decode_each_str(body).map_err(|e| e.to_string()),
                    None => Err("message has no body".to_owned()),
                };
                let (evs, unreadable) = match decoded {
                    Ok(parts) => parts,
                    Err(reason) => {
                        self.dead_letter(&m, &reason).await;
                        continue;
                    }
                };
                let Some(receipt) = m.receipt_handle else {
                    tracing::warn!("SQS message without a receipt handle; it will come back");
                    continue;
                };
                let receive_count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse::<u32>().ok())
                    .unwrap_or(1)
                    .max(1);
                let delivery = Delivery {
                    receipt,
                    events: evs,
                    unreadable,
                    receive_count,
                };
                if !out.is_empty() && events + delivery.events.len() > max_events {
                    overflowed = true;
                    lock(&self.inner.prefetched).push_back(Prefetched {
                        delivery,
                        received_at: Instant::now(),
                    });
                } else {
                    events += delivery.events.len();
                    out.push(delivery);
                }
            }
            let now = Instant::now();
            if overflowed || now >= deadline {
                break;
            }
            if !out.is_empty() {
                // Keep taking while messages keep coming and time remains.
                if !got_any {
                    break;
                }
                continue;
            }
            if !got_any && wait_secs == 0 {
                // Less than a second left: short polls, a little apart.
                tokio::time::sleep(SHORT_POLL_PAUSE.min(deadline - now)).await;
            }
        }
        Ok(out)
    }

    async fn ack(&self, receipts: &[String]) -> Result<(), QueueError> {
        self.receipt_batches(
            "DeleteMessageBatch",
            receipts,
            |n| tracing::debug_span!("sqs_delete_batch", entries = n),
            |id, handle| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(handle)
                    .build()
            },
            |entries| async move {
                let out = self
                    .inner
                    .client
                    .delete_message_batch()
                    .queue_url(&self.inner.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| sdk_err("DeleteMessageBatch", e))?;
                Ok(out.failed().to_vec())
            },
        )
        .await
    }

    /// Sends the delivery's events (re-encoded as an envelope) to the dead-letter queue
    /// with the reason in [`REASON_ATTRIBUTE`], then deletes the message from the main
    /// queue. If either step fails the message stays queued and comes back (a second send
    /// to the dead-letter queue is possible then; it is a copy, never a loss).
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        tracing::error!(receipt = %delivery.receipt, reason, "dead-lettering poison SQS message");
        let body = envelope::encode_parts(&delivery.events, &delivery.unreadable)
            .map_err(|e| QueueError::Malformed(format!("re-encoding the events: {e}")))?;
        let dlq = self.dead_letter_queue_url().await?;
        let reason_value = reason_attribute(reason)?;
        self.inner
            .client
            .send_message()
            .queue_url(&dlq)
            .message_body(body)
            .message_attributes(REASON_ATTRIBUTE, reason_value)
            .send()
            .await
            .map_err(|e| sdk_err("SendMessage (dead-letter queue)", e))?;
        self.inner
            .client
            .delete_message()
            .queue_url(&self.inner.queue_url)
            .receipt_handle(&delivery.receipt)
            .send()
            .await
            .map_err(|e| sdk_err("DeleteMessage (dead-lettered)", e))?;
        metrics::counter!("tally_queue_messages_dead_lettered_total", "backend" => "sqs")
            .increment(1);
        Ok(())
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        let attributes = self
            .inner
            .client
            .get_queue_attributes()
            .queue_url(&self.inner.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| sdk_err("GetQueueAttributes", e))?
            .attributes
            .unwrap_or_default();
        Ok(attributes
            .values()
            .filter_map(|v| v.parse::<u64>().ok())
            .sum())
    }

    async fn extend_visibility(&self, receipts: &[String], by: Duration) -> Result<(), QueueError> {
        if receipts.is_empty() {
            return Ok(());
        }
        self.change_visibility(receipts, visibility_seconds(by))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_rounds_up() {
        assert_eq!(visibility_seconds(Duration::from_millis(100)), 1);
        assert_eq!(visibility_seconds(Duration::from_secs(2)), 2);
        assert_eq!(visibility_seconds(Duration::from_secs(1 << 40)), 43200);
    }
}
