//! [`LocalQueue`]: the embedded [`EventQueue`], a durable queue in its own SQLite file.
//!
//! It has its own file, not a table in the store's file, so ingest (publishing) and the
//! aggregator (applying batches to the store) never wait for one write lock.
//!
//! - **Publish** writes one message row per org in the call (ingest publishes one request,
//!   which is one org, so normally exactly one row) in one transaction, which concurrent
//!   publishes share ([`group_commit`]: one transaction and one blocking-pool hop for all
//!   the publishes waiting, each answered only once it committed). WAL mode with
//!   `synchronous=NORMAL`: once `publish` returns, the message survives a crash of the process
//!   (a SIGKILL); `LocalQueueConfig::sync_full` also covers power loss.
//! - **Receive** takes visible messages, oldest first, until about `max_events` events (the
//!   first message is always taken, however large, so no message can get stuck), makes them
//!   invisible for the visibility timeout and bumps their receive count. If none is visible it
//!   waits up to `wait`: a publish in the same process wakes it at once (a
//!   `tokio::sync::Notify`), a publish from another process is seen by polling (every 20 ms by
//!   default).
//! - **A lease rewrites one page, not the body.** A message is written visible with
//!   `visible_at` = [`VISIBLE`] (2^40 ms, a moment in 2004), not 0: SQLite stores 0 in no
//!   bytes and a lease deadline (Unix ms) in six, so hiding a message at 0 changed its
//!   record's size, and SQLite then rewrote the whole row, overflow pages of the body
//!   included (a 100-event message is about 20 KiB: five pages more in the WAL per take,
//!   and as many again at checkpoint). With six bytes either way the record keeps its
//!   size, SQLite overwrites it in place and only the page holding the changed bytes is
//!   written (`receive_count` 0 → 1 is no bytes either way). The test
//!   `taking_a_large_message_writes_only_its_first_page` counts the WAL frames.
//! - **Ack** deletes the messages. Receipts are `"<message id>.<receive count>"`; message ids
//!   come from `AUTOINCREMENT`, so an id is never reused and a late ack cannot delete a newer
//!   message.
//! - A message whose body does not decode is moved to the `dead_letters` table with the
//!   reason, in the transaction that found it, and is not returned. Nothing is dropped
//!   silently; [`LocalQueue::dead_letters`] lists them.
//! - A message left invisible by a consumer that crashed becomes visible again when its
//!   timeout passes. In addition, by default, opening the queue makes every message visible
//!   again at once (`LocalQueueConfig::redeliver_on_open`): the local queue has one consuming
//!   process, and when it (re)opens the file, whatever was in flight belonged to a consumer
//!   that is gone. Redelivery is harmless because the store applies events exactly once.
//! - **Replay** ([`LocalQueue::replay_dead_letters`], `tally replay`): once the fault is
//!   fixed, dead letters whose body is a list of events go back into `messages` as they
//!   are, and their rows are deleted, in one transaction: never lost, never on both sides.
//!   The ledger makes a replay of events already counted harmless; one still unreadable is
//!   dead-lettered again by the aggregator with its reason. See [`crate::replay`].
//! - **Depth** counts messages not yet acknowledged, in flight included, so "depth is 0"
//!   means everything published was applied.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::value::RawValue;
use tally_core::envelope;
use tally_core::event::Event;
use tally_core::ids::OrgId;
use tally_core::ports::{Delivery, EventQueue, PublishReport, QueueError};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::conn::{self, Kind};
use crate::poll::poll_receive;

mod group_commit;
use crate::replay::{LetterStatus, ReplayReport, ReplayRequest, ReplayedLetter};
pub use group_commit::METRIC_PUBLISHES_PER_COMMIT;
use group_commit::{GroupCommit, Writer};

/// `visible_at` of a message nobody holds: long past, and stored in the six bytes a lease
/// deadline (Unix ms until 2^47, the year 6429) takes, so taking a message overwrites its
/// record in place (see the module doc). Rows written as 0 by older builds are visible too.
const VISIBLE: i64 = 1 << 40;

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: receipts stay unique
    body            TEXT NOT NULL,                      -- JSON array of events
    event_count     INTEGER NOT NULL,
    visible_at      INTEGER NOT NULL DEFAULT 0,         -- Unix ms; taken when <= now
    receive_count   INTEGER NOT NULL DEFAULT 0,
    enqueued_at     INTEGER NOT NULL                    -- Unix ms
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      INTEGER NOT NULL,
    body            TEXT NOT NULL,
    reason          TEXT NOT NULL,
    receive_count   INTEGER NOT NULL,
    enqueued_at     INTEGER NOT NULL,
    dead_at         INTEGER NOT NULL
);
"#;

/// Settings of a [`LocalQueue`]. Its `file_settings()` (what all connections to the queue's
/// file share) is in `conn.rs`, beside the store's.
#[derive(Debug, Clone, Copy)]
pub struct LocalQueueConfig {
    /// How long a received message stays invisible before it is handed out again, unless
    /// acknowledged. Default 30 s.
    pub visibility_timeout: Duration,
    /// How often a waiting `receive` looks for messages published by other processes.
    /// Default 20 ms (publishes in the same process wake it at once).
    pub poll_interval: Duration,
    /// How long a write waits for another process's write lock. Default 5 s.
    pub busy_timeout: Duration,
    /// Make every message visible again when the queue is opened (the previous consumer is
    /// gone). Default `true`; turn it off if several processes consume one file.
    pub redeliver_on_open: bool,
    /// `synchronous=FULL`: a published message also survives power loss, at the cost of an
    /// fsync per publish. Default `false` (survives a process crash).
    pub sync_full: bool,
    /// Checkpoint the WAL from a background thread this often, so a publish never stops to
    /// copy pages into the database file (SQLite's automatic checkpoint runs inside the
    /// commit that crosses its threshold, fsync included: a stall of tens of milliseconds
    /// for whichever request was unlucky). `None` leaves it to the automatic checkpoint.
    /// Default 200 ms.
    pub checkpoint_interval: Option<Duration>,
}

impl Default for LocalQueueConfig {
    fn default() -> Self {
        LocalQueueConfig {
            visibility_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(20),
            busy_timeout: Duration::from_secs(5),
            redeliver_on_open: true,
            sync_full: false,
            checkpoint_interval: Some(Duration::from_millis(200)),
        }
    }
}

/// A message that could not be decoded, kept with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message's id in the queue.
    pub message_id: i64,
    /// The events set aside, as a JSON array like a message's stored body: the body as it
    /// was for a message that did not decode at all, otherwise the events of the message
    /// that could not be applied (the others were).
    pub body: String,
    /// Why it was set aside.
    pub reason: String,
    /// How many times it had been handed out before (it is set aside on the receive that
    /// finds it undecodable, so normally 0).
    pub receive_count: u32,
    /// When it was moved here.
    pub dead_at: DateTime<Utc>,
}

/// The durable local queue. Cheap to clone (clones share the connection and the wake-up).
#[derive(Clone)]
pub struct LocalQueue {
    inner: Arc<Inner>,
}

struct Inner {
    /// One connection: every queue operation is a short write (publish, take, ack).
    conn: Mutex<Connection>,
    /// Wakes waiting receivers when this process publishes.
    published: Notify,
    /// Publishes waiting for the transaction that will write them.
    group: Arc<GroupCommit>,
    config: LocalQueueConfig,
    /// Checkpoints the WAL in the background; stops when the queue is dropped.
    _checkpointer: Option<conn::Checkpointer>,
}

impl std::fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalQueue")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn qerr(e: rusqlite::Error) -> QueueError {
    match conn::kind(&e) {
        Kind::Corrupt => QueueError::Malformed(e.to_string()),
        Kind::Transient | Kind::Constraint | Kind::Other => QueueError::Unavailable(e.to_string()),
    }
}

/// Begins a write transaction that takes the file's write lock at once (`BEGIN
/// IMMEDIATE`): it waits for another writer (up to the busy timeout) before anything is
/// read, instead of failing when its first write finds the lock taken.
fn write_tx(conn: &mut Connection) -> Result<rusqlite::Transaction<'_>, QueueError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(qerr)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl LocalQueue {
    /// Opens (creating if missing) the queue file at `path` with the default
    /// [`LocalQueueConfig`].
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        Self::open_with(path, LocalQueueConfig::default())
    }

    /// Opens the queue file at `path` with explicit settings.
    pub fn open_with(path: &Path, config: LocalQueueConfig) -> Result<Self, QueueError> {
        let file = config.file_settings();
        let mut conn = conn::open(path, file.conn(8)).map_err(qerr)?;
        let tx = write_tx(&mut conn)?;
        let version =
            conn::schema_version(&tx, "queue", SCHEMA_VERSION, qerr, QueueError::Malformed)?;
        if version < 1 {
            tx.execute_batch(SCHEMA_V1).map_err(qerr)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(qerr)?;
        }
        if config.redeliver_on_open {
            tx.execute(
                "UPDATE messages SET visible_at = ?1 WHERE visible_at > ?1",
                params![VISIBLE],
            )
            .map_err(qerr)?;
        }
        tx.commit().map_err(qerr)?;
        let checkpointer = file.checkpointer(path).map_err(QueueError::Unavailable)?;
        Ok(LocalQueue {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                published: Notify::new(),
                group: Arc::default(),
                config,
                _checkpointer: checkpointer,
            }),
        })
    }

    async fn run<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &LocalQueueConfig) -> Result<T, QueueError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&mut conn::lock(&inner.conn), &inner.config))
            .await
            .map_err(|e| QueueError::Unavailable(format!("queue task failed: {e}")))?
    }

    /// Appends a message with this exact body, unchecked. For tools and tests (a body that
    /// does not decode exercises the dead-letter path); `publish` is the way to queue events.
    pub async fn publish_raw(&self, body: String) -> Result<(), QueueError> {
        self.insert_bodies(vec![(body, 1)]).await
    }

    /// The dead-lettered messages, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.run(|conn, _| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT message_id, body, reason, receive_count, dead_at FROM dead_letters
                     ORDER BY id",
                )
                .map_err(qerr)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(DeadLetter {
                        message_id: r.get(0)?,
                        body: r.get(1)?,
                        reason: r.get(2)?,
                        receive_count: r.get(3)?,
                        dead_at: DateTime::from_timestamp_millis(r.get(4)?).unwrap_or_default(),
                    })
                })
                .map_err(qerr)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(qerr)
        })
        .await
    }

    /// Writes `bodies` as messages, in the next group commit ([`group_commit`]), and
    /// returns once the transaction holding them committed.
    async fn insert_bodies(&self, bodies: Vec<(String, usize)>) -> Result<(), QueueError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        if self.inner.group.join(bodies, done) {
            // No writer runs: this publish starts one. It is detached: it answers every
            // publish it writes, this one included, and hands over while any is left. Its
            // guard fails the waiting publishes if it never runs or panics.
            start_writer(Arc::clone(&self.inner), tokio::runtime::Handle::current());
        }
        outcome.await.unwrap_or_else(|_| {
            Err(QueueError::Unavailable(
                "the queue's writer stopped before answering".into(),
            ))
        })?;
        self.inner.published.notify_waiters();
        Ok(())
    }

    /// One attempt at taking messages; empty when none is visible.
    ///
    /// The write lock is held only to pick and hide the messages (by their stored event
    /// counts); bodies are decoded after it is released, so a publish never waits behind
    /// the decoding of a large batch. A body that does not decode is then moved to the
    /// dead letters in a transaction of its own: should that fail, the message only comes
    /// back after its visibility timeout and is found again.
    async fn take(&self, max_events: usize) -> Result<Vec<Delivery>, QueueError> {
        let taken = self
            .run(move |conn, config| {
                let now = conn::now_millis();
                let invisible_until = now.saturating_add(millis(config.visibility_timeout));
                let tx = write_tx(conn)?;
                let mut taken = Vec::new();
                {
                    let mut scan = tx
                        .prepare_cached(
                            "SELECT id, body, receive_count, event_count
                             FROM messages WHERE visible_at <= ?1 ORDER BY id",
                        )
                        .map_err(qerr)?;
                    let mut hide = tx
                        .prepare_cached(
                            "UPDATE messages SET visible_at = ?2, receive_count = receive_count + 1
                             WHERE id = ?1",
                        )
                        .map_err(qerr)?;
                    let mut events = 0usize;
                    let mut rows = scan.query(params![now]).map_err(qerr)?;
                    while let Some(row) = rows.next().map_err(qerr)? {
                        let stored: i64 = row.get(3).map_err(qerr)?;
                        let n = usize::try_from(stored).unwrap_or(1).max(1);
                        if !taken.is_empty() && events + n > max_events {
                            break;
                        }
                        let message = Taken {
                            id: row.get(0).map_err(qerr)?,
                            body: row.get(1).map_err(qerr)?,
                            receive_count: row.get(2).map_err(qerr)?,
                        };
                        hide.execute(params![message.id, invisible_until])
                            .map_err(qerr)?;
                        taken.push(message);
                        events += n;
                        if events >= max_events {
                            break;
                        }
                    }
                }
                tx.commit().map_err(qerr)?;
                Ok(taken)
            })
            .await?;
        if taken.is_empty() {
            return Ok(Vec::new());
        }
        let (out, bad) = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(taken.len());
            let mut bad = Vec::new();
            for m in taken {
                // Event by event: one that does not decode is set aside alone by the
                // consumer, the rest are applied.
                match serde_json::from_str::<Vec<&RawValue>>(&m.body) {
                    Ok(raws) => {
                        let (events, unreadable) = envelope::decode_items(raws);
                        out.push(Delivery {
                            receipt: format!("{}.{}", m.id, m.receive_count + 1),
                            events,
                            unreadable,
                            receive_count: m.receive_count + 1,
                        })
                    }
                    Err(e) => {
                        let reason = format!("message body does not decode as events: {e}");
                        bad.push((m, reason));
                    }
                }
            }
            (out, bad)
        })
        .await
        .map_err(|e| QueueError::Unavailable(format!("queue decode task failed: {e}")))?;
        if !bad.is_empty() {
            self.run(move |conn, _| {
                let now = conn::now_millis();
                let tx = write_tx(conn)?;
                {
                    let mut dead = tx
                        .prepare_cached(
                            "INSERT INTO dead_letters
                                 (message_id, body, reason, receive_count, enqueued_at, dead_at)
                             SELECT id, body, ?2, ?3, enqueued_at, ?4 FROM messages WHERE id = ?1",
                        )
                        .map_err(qerr)?;
                    let mut delete = tx
                        .prepare_cached("DELETE FROM messages WHERE id = ?1")
                        .map_err(qerr)?;
                    for (m, reason) in &bad {
                        tracing::error!(message_id = m.id, %reason, "dead-lettering queue message");
                        dead.execute(params![m.id, reason, m.receive_count, now])
                            .map_err(qerr)?;
                        delete.execute(params![m.id]).map_err(qerr)?;
                    }
                }
                tx.commit().map_err(qerr)
            })
            .await?;
        }
        Ok(out)
    }
}

/// A dead letter chosen by [`LocalQueue::replay_dead_letters`], read in its transaction.
struct ReplayRow {
    row: i64,
    letter: ReplayedLetter,
    body: String,
    /// Events of the body, or why it is not a message of events.
    items: Result<usize, String>,
}

/// How many events a dead letter's body holds, if it is a message this build reads: a
/// non-empty JSON array (what `publish` and `dead_letter` store). A body that is not (a
/// message moved here because it did not decode) is not replayed.
fn replayable_items(body: &str) -> Result<usize, String> {
    match serde_json::from_str::<Vec<&RawValue>>(body) {
        Ok(items) if items.is_empty() => Err("the letter holds no events".to_owned()),
        Ok(items) => Ok(items.len()),
        Err(e) => Err(format!("the body is not a list of events ({e})")),
    }
}

impl LocalQueue {
    /// Replays (or, for a dry run, lists) the dead letters `request` selects, oldest first:
    /// each body goes back into `messages` as it is and its dead-letter row is deleted, both
    /// in one transaction with the selection, so a letter is never lost and never on
    /// both sides. A body that is not a list of events stays and is reported.
    /// Ids are the `message_id`s [`LocalQueue::dead_letters`] lists. It is also the queue's
    /// [`crate::replay::DeadLetterReplay`].
    pub async fn replay_dead_letters(
        &self,
        request: &ReplayRequest,
    ) -> Result<ReplayReport, QueueError> {
        let request = request.clone();
        let report = self
            .run(move |conn, _| {
                let now = conn::now_millis();
                let tx = write_tx(conn)?;
                let mut chosen: Vec<ReplayRow> = Vec::new();
                let mut limit_reached = false;
                {
                    let mut scan = tx
                        .prepare_cached(
                            "SELECT id, message_id, body, reason, dead_at FROM dead_letters
                             ORDER BY id",
                        )
                        .map_err(qerr)?;
                    let mut rows = scan.query([]).map_err(qerr)?;
                    while let Some(r) = rows.next().map_err(qerr)? {
                        let message_id: i64 = r.get(1).map_err(qerr)?;
                        let reason: String = r.get(3).map_err(qerr)?;
                        let id = message_id.to_string();
                        if !request.matches(&id, Some(&reason)) {
                            continue;
                        }
                        if chosen.len() == request.limit() {
                            limit_reached = true;
                            break;
                        }
                        let body: String = r.get(2).map_err(qerr)?;
                        let items = replayable_items(&body);
                        chosen.push(ReplayRow {
                            row: r.get(0).map_err(qerr)?,
                            letter: ReplayedLetter {
                                id,
                                reason: Some(reason),
                                events: *items.as_ref().unwrap_or(&0),
                                dead_lettered_at: DateTime::from_timestamp_millis(
                                    r.get(4).map_err(qerr)?,
                                ),
                                status: LetterStatus::Left,
                                problem: None,
                            },
                            body,
                            items,
                        });
                    }
                }
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO messages (body, event_count, visible_at, enqueued_at)
                             VALUES (?1, ?2, ?4, ?3)",
                        )
                        .map_err(qerr)?;
                    let mut delete = tx
                        .prepare_cached("DELETE FROM dead_letters WHERE id = ?1")
                        .map_err(qerr)?;
                    for c in &mut chosen {
                        match &c.items {
                            Err(problem) => c.letter.problem = Some(problem.clone()),
                            Ok(_) if request.dry_run() => {
                                c.letter.status = LetterStatus::WouldReplay;
                            }
                            Ok(n) => {
                                insert
                                    .execute(params![c.body, *n as i64, now, VISIBLE])
                                    .map_err(qerr)?;
                                delete.execute(params![c.row]).map_err(qerr)?;
                                c.letter.status = LetterStatus::Replayed;
                            }
                        }
                    }
                }
                if request.dry_run() {
                    tx.rollback().map_err(qerr)?;
                } else {
                    tx.commit().map_err(qerr)?;
                }
                let letters: Vec<ReplayedLetter> = chosen.into_iter().map(|c| c.letter).collect();
                Ok(ReplayReport {
                    dry_run: request.dry_run(),
                    missing_ids: request.missing(letters.iter().map(|l| l.id.as_str())),
                    letters,
                    limit_reached,
                })
            })
            .await?;
        if report.republished() > 0 && !report.dry_run {
            tracing::info!(
                letters = report.republished(),
                events = report.events_republished(),
                "replayed dead letters onto the local queue"
            );
            self.inner.published.notify_waiters();
        }
        Ok(report)
    }
}

/// The stored-body form (a JSON array) of a delivery's events, unreadable ones as they
/// stood.
fn array_body(delivery: &Delivery) -> Result<String, QueueError> {
    let mut items: Vec<Box<RawValue>> =
        Vec::with_capacity(delivery.events.len() + delivery.unreadable.len());
    for e in &delivery.events {
        items.push(
            serde_json::value::to_raw_value(e)
                .map_err(|e| QueueError::Malformed(format!("re-encoding an event: {e}")))?,
        );
    }
    for u in &delivery.unreadable {
        items.push(
            RawValue::from_string(u.json.clone())
                .map_err(|e| QueueError::Malformed(format!("keeping an unreadable event: {e}")))?,
        );
    }
    serde_json::to_string(&items)
        .map_err(|e| QueueError::Malformed(format!("encoding a dead letter: {e}")))
}

/// A message picked and hidden by [`LocalQueue::take`], not yet decoded.
struct Taken {
    id: i64,
    body: String,
    /// Receives before this one.
    receive_count: u32,
}

/// Starts a group-commit writer ([`write_group`]) on `runtime`'s blocking pool.
fn start_writer(inner: Arc<Inner>, runtime: tokio::runtime::Handle) {
    let writer = Writer::new(Arc::clone(&inner.group));
    let next = runtime.clone();
    runtime.spawn_blocking(move || write_group(inner, writer, next));
}

/// The group-commit writer (on the blocking pool): takes the pending publishes under the
/// queue's connection, writes them in one transaction and answers each with the outcome.
/// When more are pending by then, it hands over to a fresh writer task instead of looping,
/// so the connection's other users (the aggregator's take and ack) get their turn at its
/// lock between groups rather than racing a thread that takes it straight back.
fn write_group(inner: Arc<Inner>, writer: Writer, runtime: tokio::runtime::Handle) {
    let mut conn = conn::lock(&inner.conn);
    let Some(group) = inner.group.next_group() else {
        writer.finish();
        return;
    };
    metrics::histogram!(group_commit::METRIC_PUBLISHES_PER_COMMIT).record(group.publishes() as f64);
    let result = write_messages(&mut conn, &group.bodies);
    drop(conn);
    group.answer(&result);
    let more = inner.group.more();
    writer.finish();
    if more {
        start_writer(inner, runtime);
    }
}

/// Inserts `bodies` (each a message body and its event count) in one write transaction.
fn write_messages(conn: &mut Connection, bodies: &[(String, usize)]) -> Result<(), QueueError> {
    let now = conn::now_millis();
    let tx = write_tx(conn)?;
    {
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO messages (body, event_count, visible_at, enqueued_at)
                 VALUES (?1, ?2, ?4, ?3)",
            )
            .map_err(qerr)?;
        for (body, n) in bodies {
            ins.execute(params![body, *n as i64, now, VISIBLE])
                .map_err(qerr)?;
        }
    }
    tx.commit().map_err(qerr)
}

fn parse_receipt(r: &str) -> Result<i64, QueueError> {
    r.split_once('.')
        .and_then(|(id, _)| id.parse::<i64>().ok())
        .ok_or_else(|| QueueError::Malformed(format!("receipt {r:?} was not issued by this queue")))
}

#[async_trait]
impl EventQueue for LocalQueue {
    async fn publish(&self, events: &[Event]) -> Result<PublishReport, QueueError> {
        if events.is_empty() {
            return Ok(PublishReport::default());
        }
        // One message per org, in order of first appearance (a delivery carries one org).
        let mut groups: Vec<Vec<&Event>> = Vec::new();
        let mut index: HashMap<&OrgId, usize> = HashMap::new();
        for e in events {
            let g = *index.entry(&e.org_id).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(e);
        }
        let bodies = groups
            .iter()
            .map(|g| {
                serde_json::to_string(g)
                    .map(|b| (b, g.len()))
                    .map_err(|e| QueueError::Unavailable(format!("encoding events: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.insert_bodies(bodies).await?;
        Ok(PublishReport::default())
    }

    async fn receive(
        &self,
        max_events: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        poll_receive(max_events, wait, |max| async move {
            // Register for the wake-up before looking, so a publish in between is not missed.
            let mut published = Box::pin(self.inner.published.notified());
            published.as_mut().enable();
            let got = self.take(max).await?;
            let nap = move |now: Instant, deadline: Instant| async move {
                let nap = (deadline - now).min(self.inner.config.poll_interval);
                let _ = tokio::time::timeout(nap, published).await;
            };
            Ok::<_, QueueError>((got, nap))
        })
        .await
    }

    async fn ack(&self, receipts: &[String]) -> Result<(), QueueError> {
        let ids = receipts
            .iter()
            .map(|r| parse_receipt(r))
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            return Ok(());
        }
        self.run(move |conn, _| {
            let tx = write_tx(conn)?;
            {
                let mut del = tx
                    .prepare_cached("DELETE FROM messages WHERE id = ?1")
                    .map_err(qerr)?;
                for id in &ids {
                    del.execute(params![id]).map_err(qerr)?;
                }
            }
            tx.commit().map_err(qerr)
        })
        .await
    }

    /// Keeps the delivery's events (all of the message, or the part of it that cannot be
    /// applied; a JSON array like the stored body, unreadable events as they stood) in the
    /// `dead_letters` table with the reason and deletes the message, in one transaction. A
    /// message already gone (acknowledged or dead-lettered by another consumer) is left
    /// alone.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        let id = parse_receipt(&delivery.receipt)?;
        let reason = reason.to_owned();
        let body = array_body(delivery)?;
        tracing::error!(message_id = id, %reason, "dead-lettering poison queue message");
        self.run(move |conn, _| {
            let now = conn::now_millis();
            let tx = write_tx(conn)?;
            tx.execute(
                "INSERT INTO dead_letters
                     (message_id, body, reason, receive_count, enqueued_at, dead_at)
                 SELECT id, ?4, ?2, receive_count, enqueued_at, ?3 FROM messages WHERE id = ?1",
                params![id, reason, now, body],
            )
            .map_err(qerr)?;
            tx.execute("DELETE FROM messages WHERE id = ?1", params![id])
                .map_err(qerr)?;
            tx.commit().map_err(qerr)
        })
        .await
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        self.run(|conn, _| {
            conn.prepare_cached("SELECT COUNT(*) FROM messages")
                .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
                .map(|n| n.max(0) as u64)
                .map_err(qerr)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::temp_file;

    fn event(org: &str, id: &str) -> Event {
        tally_core::envelope::test_event(org, id, Utc::now())
    }

    #[tokio::test]
    async fn publish_splits_by_org_in_one_transaction() {
        let (_dir, path) = temp_file("q.db");
        let q = LocalQueue::open(&path).unwrap();
        let batch = [
            event("org_a", "1"),
            event("org_b", "2"),
            event("org_a", "3"),
        ];
        q.publish(&batch).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), 2);
        let got = q.receive(100, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].events, vec![batch[0].clone(), batch[2].clone()]);
        assert_eq!(got[1].events, vec![batch[1].clone()]);
    }

    /// Starts `n` one-event publishes (one org each) while the test holds the queue's
    /// connection, and waits until all of them are pending, so that they form one group.
    /// Synchronous on purpose: the caller holds the connection's lock, and the publishes
    /// run on the multi-thread runtime's workers while this thread spins.
    fn held_publishes(
        q: &LocalQueue,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<Result<PublishReport, QueueError>>> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let q = q.clone();
                tokio::spawn(async move { q.publish(&[event(&format!("org_{i}"), "1")]).await })
            })
            .collect();
        while q.inner.group.pending() < n {
            std::thread::yield_now();
        }
        tasks
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publishes_share_one_transaction_and_each_returns_once_it_committed() {
        let (_dir, path) = temp_file("q.db");
        let q = LocalQueue::open(&path).unwrap();
        let held = conn::lock(&q.inner.conn);
        let tasks = held_publishes(&q, 20);
        // Nothing can have returned: the writer waits for the connection.
        assert!(tasks.iter().all(|t| !t.is_finished()));
        let groups_before = q.inner.group.groups();
        drop(held);
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), PublishReport::default());
        }
        // One transaction wrote the 20 rows: the writer took every pending publish at once.
        assert_eq!(q.inner.group.groups() - groups_before, 1);
        assert_eq!(q.depth().await.unwrap(), 20, "one message per publish");
        let got = q.receive(100, Duration::ZERO).await.unwrap();
        let mut orgs: Vec<String> = got.iter().map(|d| d.events[0].org_id.to_string()).collect();
        orgs.sort();
        orgs.dedup();
        assert_eq!(orgs.len(), 20, "each publish's own message, one org each");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_group_transaction_fails_each_of_its_publishes_and_writes_none() {
        let (_dir, path) = temp_file("q.db");
        let config = LocalQueueConfig {
            busy_timeout: Duration::from_millis(50),
            ..LocalQueueConfig::default()
        };
        let q = LocalQueue::open_with(&path, config).unwrap();
        // The fault: another connection holds the file's write lock past the busy timeout.
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let held = conn::lock(&q.inner.conn);
        let tasks = held_publishes(&q, 5);
        drop(held);
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Err(QueueError::Unavailable(_))));
        }
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(q.depth().await.unwrap(), 0, "a failed publish left no row");
        // The writer stopped cleanly: the next publish starts another and succeeds.
        q.publish(&[event("org_a", "2")]).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_large_first_message_is_still_delivered_and_bad_receipts_are_refused() {
        let (_dir, path) = temp_file("q.db");
        let q = LocalQueue::open(&path).unwrap();
        let big: Vec<Event> = (0..5).map(|i| event("org_a", &i.to_string())).collect();
        q.publish(&big).await.unwrap();
        let got = q.receive(2, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].events.len(), 5);
        assert!(matches!(
            q.ack(&["nonsense".into()]).await,
            Err(QueueError::Malformed(_))
        ));
        q.ack(&[got[0].receipt.clone()]).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn taking_a_large_message_writes_only_its_first_page() {
        // 200 events of ~200 bytes: a body of ~40 KiB, ten 4 KiB overflow pages. Hiding it
        // must overwrite its record in place (one leaf page, plus at most the pages
        // SQLite's header and the table's root may need), not write the body again: with
        // a message written at `visible_at = 0` the take wrote 11 frames.
        let (_dir, path) = temp_file("q.db");
        let config = LocalQueueConfig {
            checkpoint_interval: None,
            ..LocalQueueConfig::default()
        };
        let q = LocalQueue::open_with(&path, config).unwrap();
        let big: Vec<Event> = (0..200)
            .map(|i| event("org_a", &format!("event-{i:04}")))
            .collect();
        q.publish(&big).await.unwrap();
        let other = Connection::open(&path).unwrap();
        let frames = |mode: &str| -> i64 {
            other
                .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(1))
                .unwrap()
        };
        assert!(frames("PASSIVE") >= 10, "the body spans ten pages or more");
        frames("TRUNCATE");
        let got = q.receive(1_000, Duration::ZERO).await.unwrap();
        assert_eq!(got[0].events.len(), 200);
        let written = frames("PASSIVE");
        assert!(
            (1..=3).contains(&written),
            "taking the message wrote {written} WAL frames"
        );
    }

    #[tokio::test]
    async fn a_publish_that_returned_survives_a_handle_that_never_closed() {
        // What a SIGKILL leaves behind: connections never closed, the WAL never checkpointed.
        let (_dir, path) = temp_file("q.db");
        let q = LocalQueue::open(&path).unwrap();
        let batch = [event("org_a", "1"), event("org_a", "2")];
        q.publish(&batch).await.unwrap();
        assert_eq!(q.receive(10, Duration::ZERO).await.unwrap().len(), 1);
        std::mem::forget(q);
        let q = LocalQueue::open(&path).unwrap();
        let got = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].events, batch);
        assert_eq!(got[0].receive_count, 2);
    }

    #[tokio::test]
    async fn without_redeliver_on_open_in_flight_messages_wait_for_their_timeout() {
        let (_dir, path) = temp_file("q.db");
        let config = LocalQueueConfig {
            redeliver_on_open: false,
            visibility_timeout: Duration::from_secs(60),
            ..LocalQueueConfig::default()
        };
        let q = LocalQueue::open_with(&path, config).unwrap();
        q.publish(&[event("org_a", "1")]).await.unwrap();
        assert_eq!(q.receive(10, Duration::ZERO).await.unwrap().len(), 1);
        drop(q);
        let q = LocalQueue::open_with(&path, config).unwrap();
        assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(q.depth().await.unwrap(), 1);
        drop(q);
        let q = LocalQueue::open(&path).unwrap();
        assert_eq!(q.receive(10, Duration::ZERO).await.unwrap().len(), 1);
    }
}
