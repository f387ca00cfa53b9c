//! [`KinesisQueue`]: the [`EventQueue`] on an Amazon Kinesis data stream, with a polling
//! consumer whose per-shard checkpoints live in the DynamoDB table.
//!
//! **Records.** One record per org-message: the events of one org packed into the versioned
//! JSON envelope of [`tally_core::envelope`] (`{"v":1,"events":[...]}`), the same as on SQS,
//! at most 1 MiB with its partition key, which is the org id followed by `#<n>`, `n` below
//! [`KinesisConfig::key_spread`] (from a hash of the body: see
//! [`tally_core::envelope::partition_key`]), so the top org's records spread over up to that
//! many shards instead of being pinned to one (1 MB/s, 1,000 records/s). Consumers read the
//! org back with [`tally_core::envelope::org_of_partition_key`]; a key without `#` (written
//! by earlier builds, or with a spread of 1) is the org itself.
//!
//! - **Publish** sends `PutRecords` calls of at most 500 records and 5 MiB. Records Kinesis
//!   refuses (throttled, internal failure) are sent again, and only they, up to
//!   [`KinesisConfig::retry`] allows, with jittered exponential backoff; the events of records
//!   that still failed are listed in [`PublishReport::failed`] with Kinesis's error.
//! - **Consume.** The handle lists the stream's shards (`ListShards`, again every
//!   [`KinesisConfig::shard_refresh`]) and polls each with `GetRecords`, at most once per
//!   [`KinesisConfig::poll_interval`] per shard (Kinesis allows 5 calls a second per shard,
//!   shared by every consumer). A shard is read from `AFTER_SEQUENCE_NUMBER` its checkpoint,
//!   or `TRIM_HORIZON` when it has none. A receipt is `<shard id>/<sequence number>`;
//!   `receive` waits up to `wait` for the first records, like a long poll.
//! - **Checkpoints.** One DynamoDB item per shard: `pk` = `CHECKPOINT#<stream>#<consumer>`,
//!   `sk` = `SHARD#<shard id>`, `seq` (S) the sequence number of the last record done,
//!   `seq_order` (S) the same left-padded with zeros to 80 digits (so that string order is
//!   numeric order; sequence numbers are decimal strings of varying length) and `updated_at`.
//!   `ack` marks records done; the checkpoint then moves over the contiguous run of done
//!   records after it, never past a record handed out and not acknowledged, and is written
//!   with `UpdateItem` conditioned on `seq_order` being smaller, so it never moves backwards
//!   (not even when two handles race).
//! - **Visibility and redelivery.** A record handed out stays hidden for
//!   [`KinesisConfig::visibility_timeout`] (or what [`EventQueue::extend_visibility`] sets).
//!   When it passes unacknowledged, the shard is read again from its checkpoint: records
//!   already done or still hidden are skipped, the rest are handed out again with a higher
//!   `receive_count`. A new handle (a restart) reads from the checkpoint, so whatever the
//!   previous one had not acknowledged is handed out again at once. Receive counts live in
//!   the handle (a new handle counts from 1 again).
//! - **Dead letters.** A record that does not decode is written to the DynamoDB table as an
//!   item `pk` = `DEADLETTER#<stream>#<consumer>`, `sk` = `<shard id>#<seq_order>` with the
//!   reason, the shard, sequence number, partition key, time and the data (`data`, binary;
//!   cut to [`MAX_DEAD_LETTER_DATA`] bytes to fit a DynamoDB item, with `data_bytes` and
//!   `truncated` saying so), and then counts as done. If that write fails the record stays
//!   unacknowledged and is tried again after the visibility timeout, so the checkpoint never
//!   passes a record that was neither applied nor dead-lettered.
//!   [`KinesisQueue::dead_letters`] lists them.
//! - **Depth** is best effort: the records after each shard's stored checkpoint that this
//!   handle does not know to be done, counted by reading the shards (one `GetRecords` of up
//!   to 10,000 records per shard, following empty pages a few times). It includes records in
//!   flight and is exact while the backlog is small; for a large backlog it is a lower bound.
//!   It spends `GetRecords` calls, so it is for draining and tests, not for a hot loop.
//!
//! One handle per consumer name should consume at a time: two handles with the same
//! consumer name each read every record (harmless, since the store applies events exactly
//! once, but wasted work). Parent and child shards after a reshard are read side by side.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::put_records::PutRecordsOutput;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use chrono::Utc;
use tally_core::backoff::Backoff;
use tally_core::envelope::{self, PackedMessage};
use tally_core::event::Event;
use tally_core::ports::{Delivery, EventQueue, PublishReport, QueueError};
use tokio::sync::Mutex;
use tokio::time::{Instant, Sleep, sleep_until};
use tracing::Instrument;

use crate::aws::{
    BatchNames, ENTRY_RETRY, EntryResult, describe_sdk_error, publish_packed, send_with_retries,
    truncate_utf8,
};
use crate::poll::poll_receive;

/// Largest record (data plus partition key) Kinesis accepts: 1 MiB.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Most records per `PutRecords` call.
pub const MAX_RECORDS_PER_CALL: usize = 500;
/// Most bytes (data plus partition keys) per `PutRecords` call: 5 MiB.
pub const MAX_BYTES_PER_CALL: usize = 5 * 1024 * 1024;
/// Most bytes of a dead record's data kept in its dead-letter item (a DynamoDB item holds
/// at most 400 KB).
pub const MAX_DEAD_LETTER_DATA: usize = 350 * 1024;

/// Longest partition key Kinesis accepts; the envelope leaves room for it.
const MAX_PARTITION_KEY: usize = 256;
/// Width sequence numbers are padded to in `seq_order`.
const SEQ_ORDER_WIDTH: usize = 80;
/// Longest dead-letter reason kept.
const MAX_REASON_BYTES: usize = 1024;
/// `GetRecords` pages `depth` follows per shard while they come back empty.
const DEPTH_PAGES: usize = 5;

/// Settings of a [`KinesisQueue`].
#[derive(Debug, Clone)]
pub struct KinesisConfig {
    /// How long a record handed out stays hidden before it is handed out again, unless
    /// acknowledged. Default 30 s.
    pub visibility_timeout: Duration,
    /// Least time between two `GetRecords` calls on one shard by this handle (Kinesis allows
    /// five per second per shard across all consumers). Default 250 ms.
    pub poll_interval: Duration,
    /// `Limit` of a `GetRecords` call. Default 1,000.
    pub records_per_call: i32,
    /// How often the shard list is fetched again (to pick up a reshard). Default 60 s.
    pub shard_refresh: Duration,
    /// Attempts per record for `PutRecords`, and the jittered pause between them. Default
    /// [`ENTRY_RETRY`]: 5 attempts, 50 ms doubling, at most 2 s.
    pub retry: Backoff,
    /// Over how many partition keys one org's records are spread (1 to
    /// [`tally_core::envelope::MAX_KEY_SPREAD`]). Default
    /// [`tally_core::envelope::DEFAULT_KEY_SPREAD`] (8).
    pub key_spread: u16,
}

impl Default for KinesisConfig {
    fn default() -> Self {
        KinesisConfig {
            visibility_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
            records_per_call: 1000,
            shard_refresh: Duration::from_secs(60),
            retry: ENTRY_RETRY,
            key_spread: tally_core::envelope::DEFAULT_KEY_SPREAD,
        }
    }
}

/// A record set aside because it does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisDeadLetter {
    /// The shard it was read from.
    pub shard_id: String,
    /// Its sequence number.
    pub sequence_number: String,
    /// Its partition key.
    pub partition_key: String,
    /// Its data (lossily as text; cut to [`MAX_DEAD_LETTER_DATA`] bytes if `truncated`).
    pub body: String,
    /// Whether `body` is only the start of the data.
    pub truncated: bool,
    /// Why it was set aside.
    pub reason: String,
    /// When (RFC 3339).
    pub dead_at: String,
}

/// Where a shard will be read next.
#[derive(Debug, Clone)]
enum Position {
    /// A shard iterator from the last `GetRecords`.
    Iterator(String),
    /// Get a new iterator after `ShardState::fetched_up_to` (or at the trim horizon).
    Fresh,
    /// The shard is closed and read to its end.
    Ended,
}

/// One record of the shard this handle has handed out (or dead-lettered) since the
/// checkpoint.
#[derive(Debug, Clone)]
struct Track {
    seq: String,
    done: bool,
    /// Hidden until then; `None` when not handed out (its timeout passed).
    hidden_until: Option<Instant>,
    receive_count: u32,
}

/// A record read from the shard, not yet handed out.
#[derive(Debug)]
struct Fetched {
    seq: String,
    partition_key: String,
    data: Vec<u8>,
}

#[derive(Debug)]
struct ShardState {
    /// The last checkpoint this handle knows (read at start, or written since).
    checkpoint: Option<String>,
    /// Where the next `GetRecords` starts.
    position: Position,
    /// The sequence number of the last record fetched (the end of `buffer`), for a fresh
    /// iterator.
    fetched_up_to: Option<String>,
    last_poll: Option<Instant>,
    /// Fetched, not handed out yet, in order.
    buffer: VecDeque<Fetched>,
    /// Every record after the checkpoint that left the buffer, by `seq_order`. Contiguous:
    /// records are read in order starting right after the checkpoint.
    tracked: BTreeMap<String, Track>,
}

impl ShardState {
    fn new(checkpoint: Option<String>) -> Self {
        ShardState {
            fetched_up_to: checkpoint.clone(),
            checkpoint,
            position: Position::Fresh,
            last_poll: None,
            buffer: VecDeque::new(),
            tracked: BTreeMap::new(),
        }
    }

    /// Reads the shard again from its checkpoint (records whose visibility passed come
    /// back).
    fn rewind(&mut self) {
        self.buffer.clear();
        self.fetched_up_to = self.checkpoint.clone();
        self.position = Position::Fresh;
    }
}

#[derive(Debug, Default)]
struct State {
    shards: BTreeMap<String, ShardState>,
    listed_at: Option<Instant>,
    /// Which shard a pass starts at, so one busy shard does not starve the others.
    next_start: usize,
}

struct Inner {
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    dynamo: aws_sdk_dynamodb::Client,
    table: String,
    consumer: String,
    config: KinesisConfig,
    state: Mutex<State>,
}

/// The Kinesis event queue. Cheap to clone (clones share the consumer state).
#[derive(Clone)]
pub struct KinesisQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KinesisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisQueue")
            .field("stream", &self.inner.stream)
            .field("table", &self.inner.table)
            .field("consumer", &self.inner.consumer)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn kerr<E, R>(what: &str, e: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    QueueError::Unavailable(format!("Kinesis {what}: {}", describe_sdk_error(&e)))
}

fn derr<E, R>(what: &str, e: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    QueueError::Unavailable(format!("DynamoDB {what}: {}", describe_sdk_error(&e)))
}

/// A sequence number left-padded with zeros, so that string order is numeric order.
fn seq_order(seq: &str) -> String {
    format!("{seq:0>SEQ_ORDER_WIDTH$}")
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn get_s(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

/// Creates the stream `name` with `shards` shards if it does not exist, and waits (up to
/// five minutes) until it is `ACTIVE`. Idempotent.
pub async fn create_stream(
    client: &aws_sdk_kinesis::Client,
    name: &str,
    shards: u32,
) -> Result<(), QueueError> {
    let count = i32::try_from(shards.max(1)).unwrap_or(i32::MAX);
    match client
        .create_stream()
        .stream_name(name)
        .shard_count(count)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) => {}
        Err(e) => return Err(kerr(&format!("CreateStream {name}"), e)),
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut pause = Duration::from_millis(100);
    loop {
        let status = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .map_err(|e| kerr(&format!("DescribeStreamSummary {name}"), e))?
            .stream_description_summary
            .map(|d| d.stream_status);
        if status == Some(StreamStatus::Active) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(QueueError::Unavailable(format!(
                "Kinesis stream {name} is not ACTIVE after 5 minutes (status {status:?})"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

impl KinesisQueue {
    /// A consumer (and producer) on `stream`, keeping the checkpoints of `consumer` in the
    /// DynamoDB `table`, with the default [`KinesisConfig`].
    pub fn new(
        kinesis: aws_sdk_kinesis::Client,
        stream: impl Into<String>,
        dynamo: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        Self::with_config(
            kinesis,
            stream,
            dynamo,
            table,
            consumer,
            KinesisConfig::default(),
        )
    }

    /// Like [`KinesisQueue::new`], with explicit settings.
    pub fn with_config(
        kinesis: aws_sdk_kinesis::Client,
        stream: impl Into<String>,
        dynamo: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        consumer: impl Into<String>,
        config: KinesisConfig,
    ) -> Self {
        KinesisQueue {
            inner: Arc::new(Inner {
                kinesis,
                stream: stream.into(),
                dynamo,
                table: table.into(),
                consumer: consumer.into(),
                config,
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn checkpoint_pk(&self) -> String {
        format!("CHECKPOINT#{}#{}", self.inner.stream, self.inner.consumer)
    }

    fn dead_letter_pk(&self) -> String {
        format!("DEADLETTER#{}#{}", self.inner.stream, self.inner.consumer)
    }

    /// Puts a record with this exact data, unchecked. For tools and tests (data that does
    /// not decode exercises the dead-letter path); `publish` is the way to queue events.
    pub async fn publish_raw(&self, partition_key: &str, data: &[u8]) -> Result<(), QueueError> {
        self.inner
            .kinesis
            .put_record()
            .stream_name(&self.inner.stream)
            .partition_key(partition_key)
            .data(Blob::new(data))
            .send()
            .await
            .map_err(|e| kerr("PutRecord", e))?;
        Ok(())
    }

    /// The stored checkpoints of this consumer: shard id -> sequence number of the last
    /// record done.
    pub async fn checkpoints(&self) -> Result<BTreeMap<String, String>, QueueError> {
        let items = self
            .query_all(&self.checkpoint_pk(), Some("SHARD#"))
            .await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let shard = get_s(item, "sk")?.strip_prefix("SHARD#")?.to_owned();
                Some((shard, get_s(item, "seq")?))
            })
            .collect())
    }

    /// The dead-lettered records of this consumer, in shard and sequence order.
    pub async fn dead_letters(&self) -> Result<Vec<KinesisDeadLetter>, QueueError> {
        let items = self.query_all(&self.dead_letter_pk(), None).await?;
        Ok(items
            .iter()
            .map(|item| {
                let body = match item.get("data") {
                    Some(AttributeValue::B(b)) => String::from_utf8_lossy(b.as_ref()).into_owned(),
                    _ => String::new(),
                };
                KinesisDeadLetter {
                    shard_id: get_s(item, "shard").unwrap_or_default(),
                    sequence_number: get_s(item, "seq").unwrap_or_default(),
                    partition_key: get_s(item, "partition_key").unwrap_or_default(),
                    body,
                    truncated: matches!(item.get("truncated"), Some(AttributeValue::Bool(true))),
                    reason: get_s(item, "reason").unwrap_or_default(),
                    dead_at: get_s(item, "dead_at").unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn query_all(
        &self,
        pk: &str,
        sk_prefix: Option<&str>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, QueueError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let mut query = self
                .inner
                .dynamo
                .query()
                .table_name(&self.inner.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(pk));
            if let Some(prefix) = sk_prefix {
                query = query
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix));
            }
            let page = query
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| derr("Query", e))?;
            out.extend(page.items.unwrap_or_default());
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(out);
            }
        }
    }

    /// Lists the stream's shards.
    async fn list_shards(&self) -> Result<Vec<String>, QueueError> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut call = self.inner.kinesis.list_shards();
            call = match &token {
                Some(t) => call.next_token(t),
                None => call.stream_name(&self.inner.stream),
            };
            let page = call.send().await.map_err(|e| kerr("ListShards", e))?;
            shards.extend(
                page.shards
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| s.shard_id),
            );
            token = page.next_token;
            if token.is_none() {
                return Ok(shards);
            }
        }
    }

    /// Lists the shards when due, and starts tracking new ones from their checkpoints.
    async fn refresh_shards(&self, st: &mut State) -> Result<(), QueueError> {
        let due = st
            .listed_at
            .is_none_or(|t| t.elapsed() >= self.inner.config.shard_refresh);
        if !due {
            return Ok(());
        }
        let listed = self.list_shards().await?;
        let checkpoints = self.checkpoints().await?;
        st.shards.retain(|id, _| listed.contains(id));
        for id in listed {
            st.shards
                .entry(id.clone())
                .or_insert_with(|| ShardState::new(checkpoints.get(&id).cloned()));
        }
        st.listed_at = Some(Instant::now());
        Ok(())
    }

    /// A shard iterator after `after` (or at the trim horizon).
    async fn iterator(&self, shard: &str, after: Option<&str>) -> Result<String, QueueError> {
        let mut call = self
            .inner
            .kinesis
            .get_shard_iterator()
            .stream_name(&self.inner.stream)
            .shard_id(shard);
        call = match after {
            Some(seq) => call
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            None => call.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        call.send()
            .await
            .map_err(|e| kerr("GetShardIterator", e))?
            .shard_iterator
            .ok_or_else(|| QueueError::Unavailable(format!("no shard iterator for {shard}")))
    }

    /// One `GetRecords` on a shard into its buffer.
    async fn poll_shard(&self, shard_id: &str, sh: &mut ShardState) -> Result<(), QueueError> {
        let iterator = match &sh.position {
            Position::Ended => return Ok(()),
            Position::Iterator(it) => it.clone(),
            Position::Fresh => self.iterator(shard_id, sh.fetched_up_to.as_deref()).await?,
        };
        sh.last_poll = Some(Instant::now());
        let span = tracing::debug_span!("kinesis_get_records", shard = shard_id);
        let result = self
            .inner
            .kinesis
            .get_records()
            .shard_iterator(iterator)
            .limit(self.inner.config.records_per_call.clamp(1, 10_000))
            .send()
            .instrument(span)
            .await;
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                let service = e.as_service_error();
                if service.is_some_and(|s| s.is_expired_iterator_exception()) {
                    tracing::debug!(
                        shard = shard_id,
                        "shard iterator expired; getting a new one"
                    );
                    sh.position = Position::Fresh;
                    return Ok(());
                }
                if service.is_some_and(|s| s.is_provisioned_throughput_exceeded_exception()) {
                    tracing::warn!(shard = shard_id, "GetRecords throttled; polling later");
                    return Ok(());
                }
                sh.position = Position::Fresh;
                return Err(kerr("GetRecords", e));
            }
        };
        metrics::counter!("tally_queue_messages_received_total", "backend" => "kinesis")
            .increment(out.records.len() as u64);
        for r in out.records {
            sh.fetched_up_to = Some(r.sequence_number.clone());
            sh.buffer.push_back(Fetched {
                seq: r.sequence_number,
                partition_key: r.partition_key.unwrap_or_default(),
                data: r.data.into_inner(),
            });
        }
        sh.position = match out.next_shard_iterator {
            Some(it) => Position::Iterator(it),
            None => Position::Ended,
        };
        Ok(())
    }

    /// Writes a dead-letter item for an undecodable record.
    async fn dead_letter(
        &self,
        shard_id: &str,
        rec: &Fetched,
        reason: &str,
    ) -> Result<(), QueueError> {
        tracing::error!(shard = shard_id, seq = %rec.seq, reason, "dead-lettering Kinesis record");
        let kept = &rec.data[..rec.data.len().min(MAX_DEAD_LETTER_DATA)];
        self.inner
            .dynamo
            .put_item()
            .table_name(&self.inner.table)
            .item("pk", s(self.dead_letter_pk()))
            .item("sk", s(format!("{shard_id}#{}", seq_order(&rec.seq))))
            .item("shard", s(shard_id))
            .item("seq", s(&rec.seq))
            .item("partition_key", s(&rec.partition_key))
            .item("reason", s(truncate_utf8(reason, MAX_REASON_BYTES)))
            .item(
                "data",
                AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(kept)),
            )
            .item("data_bytes", AttributeValue::N(rec.data.len().to_string()))
            .item(
                "truncated",
                AttributeValue::Bool(kept.len() < rec.data.len()),
            )
            .item("dead_at", s(Utc::now().to_rfc3339()))
            .send()
            .await
            .map_err(|e| derr("PutItem (dead letter)", e))?;
        metrics::counter!("tally_queue_messages_dead_lettered_total", "backend" => "kinesis")
            .increment(1);
        Ok(())
    }

    /// Hands out records from a shard's buffer until `max_events`; returns whether the
    /// budget is used up.
    async fn drain_buffer(
        &self,
        shard_id: &str,
        sh: &mut ShardState,
        out: &mut Vec<Delivery>,
        events: &mut usize,
        max_events: usize,
    ) -> bool {
        let now = Instant::now();
        let visibility = self.inner.config.visibility_timeout;
        while let Some(rec) = sh.buffer.front() {
            let key = seq_order(&rec.seq);
            if sh
                .checkpoint
                .as_deref()
                .is_some_and(|c| seq_order(c) >= key)
            {
                sh.buffer.pop_front();
                continue;
            }
            if let Some(t) = sh.tracked.get(&key)
                && (t.done || t.hidden_until.is_some_and(|h| h > now))
            {
                sh.buffer.pop_front();
                continue;
            }
            let decoded = envelope::decode_each(&rec.data).map_err(|e| e.to_string());
            match decoded {
                Err(reason) => {
                    let Some(rec) = sh.buffer.pop_front() else {
                        break;
                    };
                    let done = match self.dead_letter(shard_id, &rec, &reason).await {
                        Ok(()) => true,
                        Err(e) => {
                            metrics::counter!(
                                "tally_queue_dead_letter_failures_total",
                                "backend" => "kinesis"
                            )
                            .increment(1);
                            tracing::error!(
                                shard = shard_id,
                                seq = %rec.seq,
                                error = %e,
                                "could not dead-letter Kinesis record; retrying after the visibility timeout"
                            );
                            false
                        }
                    };
                    let t = sh.tracked.entry(key).or_insert_with(|| Track {
                        seq: rec.seq.clone(),
                        done: false,
                        hidden_until: None,
                        receive_count: 0,
                    });
                    t.done = done;
                    t.hidden_until = (!done).then(|| now + visibility);
                    // A dead letter right after the checkpoint moves it now, not only on
                    // the next ack (which might never come if it was the last record).
                    if done
                        && sh.tracked.values().next().is_some_and(|t| t.done)
                        && let Err(e) = self.advance(shard_id, sh).await
                    {
                        tracing::warn!(shard = shard_id, error = %e, "checkpoint not written; retried on the next ack");
                    }
                }
                Ok((evs, unreadable)) => {
                    if !out.is_empty() && *events + evs.len() > max_events {
                        return true;
                    }
                    let Some(rec) = sh.buffer.pop_front() else {
                        break;
                    };
                    let t = sh.tracked.entry(key).or_insert_with(|| Track {
                        seq: rec.seq.clone(),
                        done: false,
                        hidden_until: None,
                        receive_count: 0,
                    });
                    t.receive_count += 1;
                    t.hidden_until = Some(now + visibility);
                    *events += evs.len();
                    out.push(Delivery {
                        receipt: format!("{shard_id}/{}", rec.seq),
                        events: evs,
                        unreadable,
                        receive_count: t.receive_count,
                    });
                    if *events >= max_events {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// One look of [`poll_receive`]: a [`Self::pass`] over the shards, and the nap until the
    /// next shard is due (at least 5 ms, at most until the deadline).
    async fn look(
        &self,
        max_events: usize,
    ) -> Result<(Vec<Delivery>, impl FnOnce(Instant, Instant) -> Sleep), QueueError> {
        let (out, next_poll) = self.pass(max_events).await?;
        let nap = move |now: Instant, deadline| {
            sleep_until(next_poll.max(now + Duration::from_millis(5)).min(deadline))
        };
        Ok((out, nap))
    }

    /// One pass over the shards: rewinds shards with expired records, hands out buffered
    /// records, polls shards that are due. Returns the deliveries and when the next poll is
    /// due.
    async fn pass(&self, max_events: usize) -> Result<(Vec<Delivery>, Instant), QueueError> {
        let mut st = self.inner.state.lock().await;
        self.refresh_shards(&mut st).await?;
        let now = Instant::now();
        let interval = self.inner.config.poll_interval;
        let mut next_poll = now + interval;
        let mut out = Vec::new();
        let mut events = 0usize;
        let ids: Vec<String> = st.shards.keys().cloned().collect();
        if ids.is_empty() {
            return Ok((out, next_poll));
        }
        let start = st.next_start % ids.len();
        st.next_start = st.next_start.wrapping_add(1);
        let mut first_error = None;
        for k in 0..ids.len() {
            let id = &ids[(start + k) % ids.len()];
            let Some(sh) = st.shards.get_mut(id) else {
                continue;
            };
            let mut expired = false;
            for t in sh.tracked.values_mut() {
                if !t.done && t.hidden_until.is_some_and(|h| h <= now) {
                    t.hidden_until = None;
                    expired = true;
                }
            }
            if expired {
                tracing::debug!(shard = %id, "visibility timeout passed; reading again from the checkpoint");
                sh.rewind();
            }
            if self
                .drain_buffer(id, sh, &mut out, &mut events, max_events)
                .await
            {
                break;
            }
            let due = sh.last_poll.is_none_or(|t| t + interval <= now);
            if !due {
                if let Some(t) = sh.last_poll {
                    next_poll = next_poll.min(t + interval);
                }
                continue;
            }
            if matches!(sh.position, Position::Ended) {
                continue;
            }
            if let Err(e) = self.poll_shard(id, sh).await {
                tracing::warn!(shard = %id, error = %e, "polling shard failed");
                first_error.get_or_insert(e);
                continue;
            }
            if self
                .drain_buffer(id, sh, &mut out, &mut events, max_events)
                .await
            {
                break;
            }
        }
        match first_error {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok((out, next_poll)),
        }
    }

    /// Writes a shard's checkpoint, conditioned on it moving forward. `Ok(false)` when the
    /// stored checkpoint was already at or past `seq`.
    async fn write_checkpoint(&self, shard_id: &str, seq: &str) -> Result<bool, QueueError> {
        let span = tracing::debug_span!("kinesis_checkpoint", shard = shard_id, seq);
        let result = self
            .inner
            .dynamo
            .update_item()
            .table_name(&self.inner.table)
            .key("pk", s(self.checkpoint_pk()))
            .key("sk", s(format!("SHARD#{shard_id}")))
            .update_expression("SET #seq = :seq, #ord = :ord, #at = :at")
            .condition_expression("attribute_not_exists(#ord) OR #ord < :ord")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_names("#ord", "seq_order")
            .expression_attribute_names("#at", "updated_at")
            .expression_attribute_values(":seq", s(seq))
            .expression_attribute_values(":ord", s(seq_order(seq)))
            .expression_attribute_values(":at", s(Utc::now().to_rfc3339()))
            .send()
            .instrument(span)
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(derr("UpdateItem (checkpoint)", e)),
        }
    }

    /// Moves a shard's checkpoint over the contiguous run of done records after it.
    async fn advance(&self, shard_id: &str, sh: &mut ShardState) -> Result<(), QueueError> {
        let mut last_done = None;
        for t in sh.tracked.values() {
            if !t.done {
                break;
            }
            last_done = Some(t.seq.clone());
        }
        let Some(seq) = last_done else {
            return Ok(());
        };
        if !self.write_checkpoint(shard_id, &seq).await? {
            tracing::debug!(shard = shard_id, %seq, "stored checkpoint is already further");
        }
        let key = seq_order(&seq);
        sh.tracked.retain(|k, _| *k > key);
        sh.checkpoint = Some(seq);
        Ok(())
    }

    /// Counts records after `after` in a shard that this handle does not know to be done.
    async fn count_after(
        &self,
        shard_id: &str,
        after: Option<&str>,
        done: &BTreeSet<String>,
    ) -> Result<u64, QueueError> {
        let mut iterator = Some(self.iterator(shard_id, after).await?);
        let mut count = 0u64;
        let mut pages = 0;
        while let Some(it) = iterator.take() {
            let out = self
                .inner
                .kinesis
                .get_records()
                .shard_iterator(it)
                .limit(10_000)
                .send()
                .await
                .map_err(|e| kerr("GetRecords (depth)", e))?;
            pages += 1;
            let empty = out.records.is_empty();
            count += out
                .records
                .iter()
                .filter(|r| !done.contains(&seq_order(&r.sequence_number)))
                .count() as u64;
            let behind = out.millis_behind_latest.unwrap_or(0) > 0;
            if empty && behind && pages < DEPTH_PAGES {
                iterator = out.next_shard_iterator;
            }
        }
        Ok(count)
    }
}

fn parse_receipt(r: &str) -> Result<(&str, &str), QueueError> {
    r.rsplit_once('/')
        .filter(|(shard, seq)| {
            !shard.is_empty() && !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit())
        })
        .ok_or_else(|| QueueError::Malformed(format!("receipt {r:?} was not issued by this queue")))
}

#[async_trait]
impl EventQueue for KinesisQueue {
    async fn publish(&self, events: &[Event]) -> Result<PublishReport, QueueError> {
        let packed = envelope::pack(events, MAX_RECORD_BYTES - MAX_PARTITION_KEY);
        let report = publish_packed(
            &packed,
            (MAX_RECORDS_PER_CALL, MAX_BYTES_PER_CALL),
            |m| m.body.len() + m.org.len(),
            |batch, bytes| {
                let span = tracing::info_span!("kinesis_put_records", records = batch.len(), bytes);
                Box::pin(self.put_batch(batch).instrument(span))
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
        poll_receive(max_events, wait, |max| self.look(max)).await
    }

    async fn ack(&self, receipts: &[String]) -> Result<(), QueueError> {
        let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in receipts {
            let (shard, seq) = parse_receipt(r)?;
            by_shard.entry(shard).or_default().push(seq);
        }
        let mut st = self.inner.state.lock().await;
        let mut first_error = None;
        for (shard_id, seqs) in by_shard {
            let Some(sh) = st.shards.get_mut(shard_id) else {
                tracing::warn!(
                    shard = shard_id,
                    "ack for a shard this handle does not read; ignored"
                );
                continue;
            };
            let checkpoint = sh.checkpoint.as_deref().map(seq_order);
            for seq in seqs {
                let key = seq_order(seq);
                if checkpoint.as_ref().is_some_and(|c| *c >= key) {
                    continue;
                }
                match sh.tracked.get_mut(&key) {
                    Some(t) => {
                        t.done = true;
                        t.hidden_until = None;
                    }
                    None => tracing::warn!(
                        shard = shard_id,
                        seq,
                        "ack for a record this handle did not hand out; ignored"
                    ),
                }
            }
            if let Err(e) = self.advance(shard_id, sh).await {
                tracing::warn!(shard = shard_id, error = %e, "checkpoint not written; retried on the next ack");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        let checkpoints = self.checkpoints().await?;
        let mut st = self.inner.state.lock().await;
        self.refresh_shards(&mut st).await?;
        let mut total = 0u64;
        for (id, sh) in &st.shards {
            let done: BTreeSet<String> = sh
                .tracked
                .iter()
                .filter(|(_, t)| t.done)
                .map(|(k, _)| k.clone())
                .collect();
            // The furthest checkpoint known: stored (maybe by another handle) or ours.
            let after = match (checkpoints.get(id), &sh.checkpoint) {
                (Some(a), Some(b)) => Some(if seq_order(a) >= seq_order(b) { a } else { b }),
                (a, b) => a.or(b.as_ref()),
            };
            total += self
                .count_after(id, after.map(String::as_str), &done)
                .await?;
        }
        Ok(total)
    }

    /// Writes the record's dead-letter item (the events re-encoded as an envelope, with the
    /// reason), then marks the record done like an ack, so the checkpoint can pass it.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        let (shard_id, seq) = parse_receipt(&delivery.receipt)?;
        let data = envelope::encode_parts(&delivery.events, &delivery.unreadable)
            .map_err(|e| QueueError::Malformed(format!("re-encoding the events: {e}")))?
            .into_bytes();
        let rec = Fetched {
            seq: seq.to_owned(),
            partition_key: delivery
                .events
                .first()
                .map(|e| e.org_id.as_str().to_owned())
                .unwrap_or_default(),
            data,
        };
        self.dead_letter(shard_id, &rec, reason).await?;
        self.ack(std::slice::from_ref(&delivery.receipt)).await
    }

    async fn extend_visibility(&self, receipts: &[String], by: Duration) -> Result<(), QueueError> {
        let mut st = self.inner.state.lock().await;
        let until = Instant::now() + by;
        for r in receipts {
            let (shard, seq) = parse_receipt(r)?;
            if let Some(t) = st
                .shards
                .get_mut(shard)
                .and_then(|sh| sh.tracked.get_mut(&seq_order(seq)))
                && !t.done
            {
                t.hidden_until = Some(until);
            }
        }
        Ok(())
    }
}

impl KinesisQueue {
    /// Sends one `PutRecords` batch, retrying only the failed records
    /// ([`send_with_retries`]). Returns the records (indexes into `batch`) that still failed,
    /// with the reason.
    async fn put_batch(&self, batch: &[PackedMessage]) -> Vec<(usize, String)> {
        let names = BatchNames {
            backend: "kinesis",
            call: "Kinesis put",
            entry: "Kinesis record",
        };
        send_with_retries(
            &self.inner.config.retry,
            &names,
            batch.len(),
            |k| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(batch[k].body.as_bytes()))
                    .partition_key(tally_core::envelope::partition_key(
                        &batch[k],
                        self.inner.config.key_spread,
                    ))
                    .build()
                    .map_err(|e| format!("building the Kinesis record: {e}"))
            },
            |entries| async move {
                self.inner
                    .kinesis
                    .put_records()
                    .stream_name(&self.inner.stream)
                    .set_records(Some(entries))
                    .send()
                    .await
                    .map_err(|e| kerr("PutRecords", e).to_string())
            },
            judge_puts,
        )
        .await
    }
}

/// How each sent record of a `PutRecords` call went; results come in request order. A
/// refused record is retried (Kinesis refuses only for throttling or an internal error).
fn judge_puts(out: &PutRecordsOutput, sent: &[usize]) -> Vec<EntryResult> {
    (0..sent.len())
        .map(|n| match out.records.get(n) {
            Some(r) if r.error_code.is_none() && r.sequence_number.is_some() => EntryResult::Sent,
            Some(r) => EntryResult::Retry(format!(
                "Kinesis refused the record: {} {}",
                r.error_code.as_deref().unwrap_or("(no code)"),
                r.error_message.as_deref().unwrap_or_default()
            )),
            None => EntryResult::Retry("Kinesis did not report on the record".into()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn seq_order_is_numeric_order() {
        assert!(seq_order("9") < seq_order("10"));
        assert!(
            seq_order("49590338271490256608559692538361571095921575989136588898")
                > seq_order("49590338271490256608559692538361571095921575989136588897")
        );
        assert_eq!(seq_order("1").len(), SEQ_ORDER_WIDTH);
    }

    #[test]
    fn receipts_parse() {
        assert_eq!(
            parse_receipt("shardId-000000000001/123").unwrap(),
            ("shardId-000000000001", "123")
        );
        for bad in ["", "x", "/1", "shard/", "shard/12a"] {
            assert!(
                matches!(parse_receipt(bad), Err(QueueError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
