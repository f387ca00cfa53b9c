//! A fault proxy between the AWS SDK and the emulator, for DynamoDB: real AWS failure modes
//! in tests whose emulator has none (moto serializes every request, so no transaction ever
//! conflicts, nothing is throttled and no answer is lost).
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` and forwards every request to the
//! emulator, which stays the source of truth. Point an SDK client at [`FaultProxy::url`]
//! (e.g. with [`crate::aws::sdk_config_at`]) and, on a seeded schedule, some DynamoDB calls
//! are answered the way DynamoDB answers them under load instead:
//!
//! | [`Fault`] | the answer | applies to |
//! |---|---|---|
//! | `ProvisionedThroughputExceeded` | 400, `__type` `com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException`; nothing forwarded | writes, reads |
//! | `Throttling` | 400, `com.amazon.coral.availability#ThrottlingException`; nothing forwarded | writes, reads |
//! | `TransactionConflict` | 400, `...#TransactionConflictException` (a plain write meeting an item a transaction holds); nothing forwarded | `PutItem`, `UpdateItem`, `DeleteItem` |
//! | `TransactionCanceled` | 400, `...#TransactionCanceledException` with `CancellationReasons`, one per action of the request: `TransactionConflict` for one, `None` for the rest; nothing forwarded | `TransactWriteItems` |
//! | `InternalServerError` | 500, `...#InternalServerError`; nothing forwarded | writes, reads |
//! | `Latency` | the emulator's own answer, [`FaultConfig::latency`] late | writes, reads |
//! | `AnswerLost500` | forwarded (the emulator applies the write), then answered 500 `InternalServerError` instead of the emulator's answer | writes |
//! | `ConnectionCut` | forwarded (applied), then the connection is cut after the answer's headers: the client never reads the answer | writes |
//!
//! Writes are `PutItem`, `UpdateItem`, `DeleteItem`, `TransactWriteItems` and
//! `BatchWriteItem`; reads (only with [`FaultConfig::reads`]) are `GetItem`, `Query`,
//! `Scan`, `BatchGetItem` and `TransactGetItems`. Everything else (table creation,
//! `DescribeTable`, TTL settings: a test's setup) always passes. The operation is the
//! `X-Amz-Target` header (`DynamoDB_20120810.<Operation>`).
//!
//! The schedule: the `n`th eligible request (counted from 0 in arrival order) draws from a
//! `StdRng` seeded by `(seed, n)` alone, and meets the first fault whose cumulative
//! probability ([`FaultConfig::rates`]) covers the draw, or none; a fault that does not
//! apply to the operation is no fault. Arrival order of concurrent requests follows
//! timing, so a run is replayable only roughly, as the harness in [`crate::faults`] is.
//! [`FaultProxy::force`] queues faults for the next eligible requests they apply to, ahead
//! of the schedule (to test one answer at a time); [`FaultProxy::force_on`] for the next
//! request of one operation. [`FaultProxy::injected`] counts what was
//! injected, by kind, so a test can show each kind was met.
//!
//! The SDK's own retry (standard mode, 3 attempts) retries throttling codes, 500s and lost
//! connections before the store sees them; `TransactionConflictException` and
//! `TransactionCanceledException` reach the store at once.
//!
//! [`FaultProxy::crash_at`] simulates a process killed inside a protocol: when the request
//! it names arrives (the `nth` of an operation whose body contains a given text, e.g. the
//! `TransactWriteItems` of `CHUNK#1`), the proxy goes dark ([`CrashMode`]: before
//! forwarding it, after forwarding it with the answer lost, or after answering it), and
//! from then on answers every request a 500 without forwarding it, so the client behind it
//! can write nothing more, like a dead process. [`CrashMode::Stall`] pauses the process
//! instead: that request and every later one are held until [`FaultProxy::resume`], then
//! forwarded (a zombie: a long GC pause or a frozen VM, that wakes up after others took its
//! work over). [`FaultProxy::until_crashed`] waits for the crash; [`FaultProxy::crash_log`]
//! lists what reached the emulator since the crash was armed.
//!
//! SQS and Kinesis batch sends meet partial failures ([`FaultProxy::fail_entries`]): in an
//! SQS `SendMessageBatch` (`AmazonSQS.SendMessageBatch`, JSON protocol) or a Kinesis
//! `PutRecords` (`Kinesis_20131202.PutRecords`), each entry fails with probability `rate`
//! (drawn from `(seed, n)` for the `n`th such call); only the others are forwarded, and the
//! emulator's answer is merged with the failures the way the services report them: an SQS
//! `Failed` entry (`InternalError`, `SenderFault` false) beside the `Successful` ones, or a
//! Kinesis record result with `ErrorCode` `ProvisionedThroughputExceededException` (or
//! `InternalFailure`) in the record's place and `FailedRecordCount` raised.
//! [`FaultProxy::entries_forwarded`] and [`FaultProxy::entries_failed`] count them, so a
//! test can show a sender resends only the failed entries. With
//! [`FaultProxy::fail_calls`] every `k`th batch send (the first one included) is throttled
//! whole instead (not forwarded): SQS
//! 400 `RequestThrottled`, Kinesis 400 `ProvisionedThroughputExceededException`
//! ([`FaultProxy::calls_failed`] counts them).

// Test support code: a failed unwrap here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// One way the proxy answers a DynamoDB call instead of (or besides) the emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// 400 `ProvisionedThroughputExceededException`, not forwarded.
    ProvisionedThroughputExceeded,
    /// 400 `ThrottlingException`, not forwarded.
    Throttling,
    /// 400 `TransactionConflictException` to a plain write, not forwarded.
    TransactionConflict,
    /// 400 `TransactionCanceledException` to a `TransactWriteItems`, one reason per action
    /// (`TransactionConflict` for one of them), not forwarded.
    TransactionCanceled,
    /// 500 `InternalServerError`, not forwarded.
    InternalServerError,
    /// Forwarded, answered late.
    Latency,
    /// Forwarded and applied, answered 500 `InternalServerError`.
    AnswerLost500,
    /// Forwarded and applied, the connection cut before the answer's body.
    ConnectionCut,
}

impl Fault {
    /// Every kind, in the order the schedule tries them.
    pub const ALL: [Fault; 8] = [
        Fault::ProvisionedThroughputExceeded,
        Fault::Throttling,
        Fault::TransactionConflict,
        Fault::TransactionCanceled,
        Fault::InternalServerError,
        Fault::Latency,
        Fault::AnswerLost500,
        Fault::ConnectionCut,
    ];

    /// Whether this fault can meet operation `op` (`PutItem`, `TransactWriteItems`, ...).
    pub fn applies_to(self, op: &str) -> bool {
        let write = WRITES.contains(&op);
        match self {
            Fault::TransactionConflict => matches!(op, "PutItem" | "UpdateItem" | "DeleteItem"),
            Fault::TransactionCanceled => op == "TransactWriteItems",
            Fault::AnswerLost500 | Fault::ConnectionCut => write,
            Fault::ProvisionedThroughputExceeded
            | Fault::Throttling
            | Fault::InternalServerError
            | Fault::Latency => write || READS.contains(&op),
        }
    }
}

/// Where a [`CrashPoint`] kills the process behind the proxy, relative to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CrashMode {
    /// The request never leaves: the process died just before sending it.
    Before,
    /// The request is applied, its answer lost: the process died waiting for it.
    AnswerLost,
    /// The request is applied and answered: the process died just after reading it.
    After,
    /// The request and every later one wait for [`FaultProxy::resume`], then go through:
    /// the process was paused just before sending it, not killed.
    Stall,
}

/// The request at which [`FaultProxy::crash_at`] goes dark: the `nth` (from 0, in arrival
/// order) request of operation `op` whose body contains `needle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    /// The operation (`PutItem`, `TransactWriteItems`, ...).
    pub op: String,
    /// Text the request's body must contain (empty: any request of `op`).
    pub needle: String,
    /// Which of the matching requests.
    pub nth: u64,
    /// What becomes of that request.
    pub mode: CrashMode,
}

/// A forced fault: only requests of this operation (if set), only those whose body contains
/// this text (if set), and the fault.
type Forced = (Option<String>, Option<String>, Fault);

/// An armed crash: its point and how many requests matched so far.
struct Armed {
    point: CrashPoint,
    matched: u64,
}

/// The operations faults are injected on by default.
pub const WRITES: [&str; 5] = [
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "TransactWriteItems",
    "BatchWriteItem",
];
/// The operations faults are injected on with [`FaultConfig::reads`].
pub const READS: [&str; 5] = [
    "GetItem",
    "Query",
    "Scan",
    "BatchGetItem",
    "TransactGetItems",
];

/// The proxy's schedule.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Seed of the schedule.
    pub seed: u64,
    /// Probability of each fault per eligible request (their sum at most 1).
    pub rates: Vec<(Fault, f64)>,
    /// Added delay of a [`Fault::Latency`].
    pub latency: Duration,
    /// Whether reads are eligible too (only writes otherwise).
    pub reads: bool,
}

impl FaultConfig {
    /// Every fault at probability `rate`, writes only, 40 ms latency.
    pub fn uniform(seed: u64, rate: f64) -> Self {
        FaultConfig {
            seed,
            rates: Fault::ALL.iter().map(|&f| (f, rate)).collect(),
            latency: Duration::from_millis(40),
            reads: false,
        }
    }

    /// No scheduled fault: only [`FaultProxy::force`]d ones.
    pub fn quiet() -> Self {
        FaultConfig {
            seed: 0,
            rates: Vec::new(),
            latency: Duration::from_millis(40),
            reads: false,
        }
    }
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    config: FaultConfig,
    active: AtomicBool,
    eligible: AtomicU64,
    forwarded: AtomicU64,
    /// Forced faults, each with the one operation it is for and the text its request's body
    /// must hold (`None`: any request it applies to).
    forced: Mutex<VecDeque<Forced>>,
    injected: Mutex<BTreeMap<Fault, u64>>,
    /// The armed crash, if any (see [`FaultProxy::crash_at`]).
    crash: Mutex<Option<Armed>>,
    /// Set when the armed crash fired: nothing is forwarded any more.
    dark: AtomicBool,
    /// (operation, body) of every request forwarded since the crash was armed.
    crash_log: Mutex<Vec<(String, String)>>,
    /// Set when the armed crash fired, whatever its mode.
    fired: AtomicBool,
    /// Wakes [`FaultProxy::until_crashed`].
    fired_notify: tokio::sync::Notify,
    /// Requests on their way to the emulator.
    in_flight: AtomicU64,
    /// Set by a [`CrashMode::Stall`] crash until [`FaultProxy::resume`].
    stalled: AtomicBool,
    /// Wakes the requests a stall holds.
    resumed: tokio::sync::Notify,
    /// Probability (as `f64` bits) that an entry of a batch send fails.
    entry_failure_rate: AtomicU64,
    /// Batch sends seen (numbers their draws).
    batch_calls: AtomicU64,
    /// Batch-send entries forwarded to the emulator, and failed by the proxy.
    entries_forwarded: AtomicU64,
    entries_failed: AtomicU64,
    /// Every how many batch sends one is throttled whole (0: none).
    call_failure_every: AtomicU64,
    /// Batch sends throttled whole.
    calls_failed: AtomicU64,
    /// A hot item: `TransactWriteItems` whose body holds this text are cancelled with a
    /// conflict, this many more times ([`FaultProxy::contend`]).
    contended: Mutex<Option<(String, u64)>>,
    /// The bodies of the transactions cancelled for contention, in order.
    contention_log: Mutex<Vec<String>>,
}

/// A running fault proxy (see the [module doc](self)). It serves until the test's runtime
/// ends.
#[derive(Clone)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (the emulator's endpoint, e.g.
    /// `http://127.0.0.1:5655`) on a free loopback port.
    pub async fn start(upstream: &str, config: FaultConfig) -> std::io::Result<FaultProxy> {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            config,
            active: AtomicBool::new(true),
            eligible: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            forced: Mutex::new(VecDeque::new()),
            injected: Mutex::new(BTreeMap::new()),
            crash: Mutex::new(None),
            dark: AtomicBool::new(false),
            crash_log: Mutex::new(Vec::new()),
            fired: AtomicBool::new(false),
            fired_notify: tokio::sync::Notify::new(),
            in_flight: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
            entry_failure_rate: AtomicU64::new(0f64.to_bits()),
            batch_calls: AtomicU64::new(0),
            entries_forwarded: AtomicU64::new(0),
            entries_failed: AtomicU64::new(0),
            call_failure_every: AtomicU64::new(0),
            calls_failed: AtomicU64::new(0),
            contended: Mutex::new(None),
            contention_log: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let addr = crate::serve_local(app).await?;
        Ok(FaultProxy { addr, shared })
    }

    /// The endpoint to give the SDK: `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Injects `fault` into the next eligible request it applies to, ahead of the schedule
    /// (and even while the proxy is [`set_active`](Self::set_active)`(false)`).
    pub fn force(&self, fault: Fault) {
        self.shared
            .forced
            .lock()
            .unwrap()
            .push_back((None, None, fault));
    }

    /// Like [`force`](Self::force), for the next request of operation `op` only (e.g.
    /// `GetItem`, which is eligible only with [`FaultConfig::reads`]).
    pub fn force_on(&self, op: &str, fault: Fault) {
        self.shared
            .forced
            .lock()
            .unwrap()
            .push_back((Some(op.to_owned()), None, fault));
    }

    /// Like [`force_on`](Self::force_on), for the next request of `op` whose body contains
    /// `needle` (e.g. a `PutItem` of a batch's `INTENT`): other requests pass by it.
    pub fn force_where(&self, op: &str, needle: &str, fault: Fault) {
        self.shared.forced.lock().unwrap().push_back((
            Some(op.to_owned()),
            Some(needle.to_owned()),
            fault,
        ));
    }

    /// Contention on a hot item, as concurrent writers cause it on DynamoDB: the next
    /// `times` `TransactWriteItems` whose body contains `needle` (an org id, a key) are
    /// cancelled with a `TransactionConflict`, not forwarded; others pass.
    pub fn contend(&self, needle: &str, times: u64) {
        *self.shared.contended.lock().unwrap() = Some((needle.to_owned(), times));
    }

    /// The bodies of the transactions [`contend`](Self::contend) cancelled, in order.
    pub fn contention_log(&self) -> Vec<String> {
        self.shared.contention_log.lock().unwrap().clone()
    }

    /// Turns the schedule on or off (off: everything not forced passes).
    pub fn set_active(&self, active: bool) {
        self.shared.active.store(active, Ordering::SeqCst);
    }

    /// Faults injected so far, by kind (kinds never injected are absent).
    pub fn injected(&self) -> BTreeMap<Fault, u64> {
        self.shared.injected.lock().unwrap().clone()
    }

    /// How many times `fault` was injected so far.
    pub fn injected_count(&self, fault: Fault) -> u64 {
        self.injected().get(&fault).copied().unwrap_or(0)
    }

    /// How many requests reached the emulator (faults that forward included).
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Arms a crash at `point` (replacing any earlier one, and lighting the proxy up again
    /// if an earlier crash left it dark): see the [module doc](self).
    pub fn crash_at(&self, point: CrashPoint) {
        *self.shared.crash.lock().unwrap() = Some(Armed { point, matched: 0 });
        self.shared.crash_log.lock().unwrap().clear();
        self.shared.dark.store(false, Ordering::SeqCst);
        self.shared.fired.store(false, Ordering::SeqCst);
        self.resume();
    }

    /// Whether the armed crash fired (the proxy is dark, or stalled).
    pub fn crashed(&self) -> bool {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Waits until the armed crash fired and every request forwarded before it was
    /// answered by the emulator (so the table holds all the crashed process wrote).
    pub async fn until_crashed(&self) {
        loop {
            // Registered before the check, so a fire in between is not missed.
            let fired = self.shared.fired_notify.notified();
            if self.crashed() && self.shared.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            fired.await;
        }
    }

    /// Lets the requests a [`CrashMode::Stall`] holds (and all later ones) through.
    pub fn resume(&self) {
        self.shared.stalled.store(false, Ordering::SeqCst);
        self.shared.resumed.notify_waiters();
    }

    /// (operation, body) of every request that reached the emulator since the crash was
    /// armed, in the order they were forwarded.
    pub fn crash_log(&self) -> Vec<(String, String)> {
        self.shared.crash_log.lock().unwrap().clone()
    }

    /// Fails each entry of SQS `SendMessageBatch` and Kinesis `PutRecords` calls with
    /// probability `rate` (0 turns it off): see the [module doc](self).
    pub fn fail_entries(&self, rate: f64) {
        self.shared
            .entry_failure_rate
            .store(rate.to_bits(), Ordering::SeqCst);
    }

    /// Throttles every `every`th SQS `SendMessageBatch` or Kinesis `PutRecords` call whole,
    /// counting from the first (0 turns it off); the others meet [`Self::fail_entries`].
    pub fn fail_calls(&self, every: u64) {
        self.shared
            .call_failure_every
            .store(every, Ordering::SeqCst);
    }

    /// Batch sends throttled whole (never forwarded).
    pub fn calls_failed(&self) -> u64 {
        self.shared.calls_failed.load(Ordering::SeqCst)
    }

    /// Entries of batch sends forwarded to the emulator (each one is a message or record
    /// the emulator now holds).
    pub fn entries_forwarded(&self) -> u64 {
        self.shared.entries_forwarded.load(Ordering::SeqCst)
    }

    /// Entries of batch sends the proxy answered failed (never forwarded).
    pub fn entries_failed(&self) -> u64 {
        self.shared.entries_failed.load(Ordering::SeqCst)
    }

    /// How many requests were eligible for a fault (by operation).
    pub fn eligible(&self) -> u64 {
        self.shared.eligible.load(Ordering::SeqCst)
    }
}

/// The fault eligible request `n` of operation `op` meets, if any: a forced one that applies first,
/// else the schedule's draw.
fn pick(shared: &Shared, op: &str, n: u64, body: &[u8]) -> Option<Fault> {
    {
        let mut forced = shared.forced.lock().unwrap();
        let fits = |(only, needle, f): &Forced| {
            f.applies_to(op)
                && only.as_deref().is_none_or(|o| o == op)
                && needle
                    .as_deref()
                    .is_none_or(|t| String::from_utf8_lossy(body).contains(t))
        };
        if let Some(at) = forced.iter().position(fits) {
            return forced.remove(at).map(|(_, _, f)| f);
        }
    }
    if !shared.active.load(Ordering::SeqCst) {
        return None;
    }
    let mut rng = request_rng(shared.config.seed, n);
    let draw: f64 = rng.random();
    let mut cumulative = 0.0;
    for &(fault, rate) in &shared.config.rates {
        cumulative += rate;
        if draw < cumulative {
            return fault.applies_to(op).then_some(fault);
        }
    }
    None
}

/// Whether a transaction meets the contention rule (and takes one of its turns).
fn contended(shared: &Shared, body: &[u8]) -> bool {
    let mut rule = shared.contended.lock().unwrap();
    let Some((needle, left)) = rule.as_mut() else {
        return false;
    };
    let text = String::from_utf8_lossy(body);
    if *left == 0 || !text.contains(needle.as_str()) {
        return false;
    }
    *left -= 1;
    shared
        .contention_log
        .lock()
        .unwrap()
        .push(text.into_owned());
    true
}

/// The generator of eligible request `n`: a function of `(seed, n)` alone.
fn request_rng(seed: u64, n: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The operation a request names in its `x-amz-target` header (`PutItem` of
/// `DynamoDB_20120810.PutItem`), or empty.
fn target_op(headers: &HeaderMap) -> String {
    headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_owned()
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("proxy: reading body: {e}")),
    };
    let op = target_op(&parts.headers);
    until_resumed(&shared).await;
    if shared.dark.load(Ordering::SeqCst) {
        return internal_error();
    }
    if let Some(mode) = crash_fires(&shared, &op, &body) {
        return match mode {
            CrashMode::Before => internal_error(),
            CrashMode::AnswerLost => {
                let _applied = forward(&shared, &parts, body).await;
                internal_error()
            }
            CrashMode::After => forward(&shared, &parts, body).await.0,
            CrashMode::Stall => {
                until_resumed(&shared).await;
                forward(&shared, &parts, body).await.0
            }
        };
    }
    if op == "TransactWriteItems" && contended(&shared, &body) {
        let n = shared.eligible.fetch_add(1, Ordering::SeqCst);
        return transaction_canceled(shared.config.seed, n, &body);
    }
    let entry_rate = f64::from_bits(shared.entry_failure_rate.load(Ordering::SeqCst));
    let every = shared.call_failure_every.load(Ordering::SeqCst);
    if (entry_rate > 0.0 || every > 0) && matches!(op.as_str(), "SendMessageBatch" | "PutRecords") {
        return partial_batch(&shared, &parts, body, &op, entry_rate, every).await;
    }
    let eligible =
        WRITES.contains(&op.as_str()) || (shared.config.reads && READS.contains(&op.as_str()));
    let n = eligible.then(|| shared.eligible.fetch_add(1, Ordering::SeqCst));
    let fault = n.and_then(|n| pick(&shared, &op, n, &body));
    if let Some(f) = fault {
        *shared.injected.lock().unwrap().entry(f).or_default() += 1;
    }
    match fault {
        Some(Fault::ProvisionedThroughputExceeded) => dynamodb_error(
            StatusCode::BAD_REQUEST,
            "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
            "The level of configured provisioned throughput for the table was exceeded. \
             Consider increasing your provisioning level with the UpdateTable API.",
        ),
        Some(Fault::Throttling) => dynamodb_error(
            StatusCode::BAD_REQUEST,
            "com.amazon.coral.availability#ThrottlingException",
            "Rate of requests exceeds the allowed throughput.",
        ),
        Some(Fault::TransactionConflict) => dynamodb_error(
            StatusCode::BAD_REQUEST,
            "com.amazonaws.dynamodb.v20120810#TransactionConflictException",
            "Transaction is ongoing for the item",
        ),
        Some(Fault::TransactionCanceled) => {
            transaction_canceled(shared.config.seed, n.unwrap_or(0), &body)
        }
        Some(Fault::InternalServerError) => internal_error(),
        Some(Fault::Latency) => {
            tokio::time::sleep(shared.config.latency).await;
            forward(&shared, &parts, body).await.0
        }
        Some(Fault::AnswerLost500) => {
            let _applied = forward(&shared, &parts, body).await;
            internal_error()
        }
        Some(Fault::ConnectionCut) => {
            let (answer, len) = forward(&shared, &parts, body).await;
            cut_after_headers(answer, len)
        }
        None => forward(&shared, &parts, body).await.0,
    }
}

/// Whether this request fires the armed crash, and how; the proxy is dark from here on if so.
fn crash_fires(shared: &Shared, op: &str, body: &[u8]) -> Option<CrashMode> {
    let mut crash = shared.crash.lock().unwrap();
    let armed = crash.as_mut()?;
    if armed.point.op != op {
        return None;
    }
    if !armed.point.needle.is_empty()
        && !String::from_utf8_lossy(body).contains(armed.point.needle.as_str())
    {
        return None;
    }
    armed.matched += 1;
    if armed.matched - 1 != armed.point.nth {
        return None;
    }
    let mode = armed.point.mode;
    *crash = None;
    // Dark (or stalled) before this request is forwarded: requests arriving from now on are
    // refused (or held).
    if mode == CrashMode::Stall {
        shared.stalled.store(true, Ordering::SeqCst);
    } else {
        shared.dark.store(true, Ordering::SeqCst);
    }
    shared.fired.store(true, Ordering::SeqCst);
    shared.fired_notify.notify_waiters();
    Some(mode)
}

/// A batch send (`SendMessageBatch` or `PutRecords`) with some entries failed: the others
/// are forwarded, and the emulator's answer is merged with the failures.
async fn partial_batch(
    shared: &Shared,
    parts: &axum::http::request::Parts,
    body: Bytes,
    op: &str,
    rate: f64,
    every: u64,
) -> Response {
    let sqs = op == "SendMessageBatch";
    let n = shared.batch_calls.fetch_add(1, Ordering::SeqCst);
    let mut rng = request_rng(shared.config.seed ^ 0xba7c_4ed5, n);
    if every > 0 && n.is_multiple_of(every) {
        shared.calls_failed.fetch_add(1, Ordering::SeqCst);
        let mut r = if sqs {
            json_answer(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({
                    "__type": "com.amazonaws.sqs#RequestThrottled",
                    "message": "Request is throttled.",
                }),
            )
        } else {
            json_answer(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({
                    "__type": "ProvisionedThroughputExceededException",
                    "message": "Rate exceeded for stream under account 123456789012.",
                }),
            )
        };
        if sqs {
            r.headers_mut().insert(
                "x-amzn-query-error",
                HeaderValue::from_static("RequestThrottled;Sender"),
            );
        } else {
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/x-amz-json-1.1"),
            );
        }
        return r;
    }
    let list = if sqs { "Entries" } else { "Records" };
    let Ok(mut request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return forward(shared, parts, body).await.0;
    };
    let entries = request
        .get(list)
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let fails: Vec<bool> = entries.iter().map(|_| rng.random::<f64>() < rate).collect();
    let kept: Vec<serde_json::Value> = entries
        .iter()
        .zip(&fails)
        .filter(|(_, f)| !**f)
        .map(|(e, _)| e.clone())
        .collect();
    let failed = fails.iter().filter(|f| **f).count() as u64;
    shared.entries_failed.fetch_add(failed, Ordering::SeqCst);
    shared
        .entries_forwarded
        .fetch_add(kept.len() as u64, Ordering::SeqCst);
    let (mut answer, content_type) = if kept.is_empty() {
        let empty = if sqs {
            serde_json::json!({ "Successful": [], "Failed": [] })
        } else {
            serde_json::json!({ "FailedRecordCount": 0, "Records": [] })
        };
        let ct = if sqs {
            "application/x-amz-json-1.0"
        } else {
            "application/x-amz-json-1.1"
        };
        (empty, HeaderValue::from_static(ct))
    } else {
        request[list] = serde_json::Value::Array(kept);
        let forwarded = Bytes::from(serde_json::to_vec(&request).unwrap());
        let (response, _) = forward(shared, parts, forwarded).await;
        if !response.status().is_success() {
            return response;
        }
        let ct = response
            .headers()
            .get("content-type")
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/x-amz-json-1.0"));
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
            .await
            .unwrap_or_default();
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => (v, ct),
            Err(e) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("proxy: the emulator's answer is not JSON: {e}"),
                );
            }
        }
    };
    if sqs {
        let mut refused: Vec<serde_json::Value> = answer
            .get("Failed")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        for (entry, _) in entries.iter().zip(&fails).filter(|(_, f)| **f) {
            refused.push(serde_json::json!({
                "Id": entry.get("Id").cloned().unwrap_or_default(),
                "SenderFault": false,
                "Code": "InternalError",
                "Message": "We encountered an internal error. Please try again.",
            }));
        }
        answer["Failed"] = serde_json::Value::Array(refused);
    } else {
        let mut landed = answer
            .get("Records")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default()
            .into_iter();
        let already = answer
            .get("FailedRecordCount")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let records: Vec<serde_json::Value> = fails
            .iter()
            .enumerate()
            .map(|(i, &f)| match (f, i % 2) {
                (true, 0) => serde_json::json!({
                    "ErrorCode": "ProvisionedThroughputExceededException",
                    "ErrorMessage": "Rate exceeded for shard shardId-000000000000 in stream \
                                     under account 123456789012.",
                }),
                (true, _) => serde_json::json!({
                    "ErrorCode": "InternalFailure",
                    "ErrorMessage": "Internal service failure.",
                }),
                (false, _) => landed.next().unwrap_or_default(),
            })
            .collect();
        answer["Records"] = serde_json::Value::Array(records);
        answer["FailedRecordCount"] = serde_json::json!(already + failed);
    }
    let mut r = Response::new(Body::from(answer.to_string()));
    r.headers_mut().insert("content-type", content_type);
    r.headers_mut().insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&format!("FAULTPROXY{:016X}", rand::random::<u64>())).unwrap(),
    );
    r
}

/// Returns once no stall holds requests.
async fn until_resumed(shared: &Shared) {
    loop {
        let resumed = shared.resumed.notified();
        if !shared.stalled.load(Ordering::SeqCst) {
            return;
        }
        resumed.await;
    }
}

/// Sends the request on to the emulator; its answer, and the answer body's length.
async fn forward(
    shared: &Shared,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> (Response, usize) {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", shared.upstream);
    let mut req = shared
        .http
        .request(parts.method.clone(), url)
        .body(body.clone());
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            req = req.header(name, value);
        }
    }
    shared.forwarded.fetch_add(1, Ordering::SeqCst);
    if shared.crash.lock().unwrap().is_some() || shared.fired.load(Ordering::SeqCst) {
        let op = target_op(&parts.headers);
        let text = String::from_utf8_lossy(&body).into_owned();
        shared.crash_log.lock().unwrap().push((op, text));
    }
    shared.in_flight.fetch_add(1, Ordering::SeqCst);
    let sent = req.send().await;
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    shared.fired_notify.notify_waiters();
    let answer = match sent {
        Ok(a) => a,
        Err(e) => return (plain(StatusCode::BAD_GATEWAY, format!("proxy: {e}")), 0),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = match answer.bytes().await {
        Ok(b) => b,
        Err(e) => return (plain(StatusCode::BAD_GATEWAY, format!("proxy: {e}")), 0),
    };
    let len = bytes.len();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    copy_headers(&headers, response.headers_mut());
    (response, len)
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "connection" | "keep-alive" | "transfer-encoding" | "content-length"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r
}

/// A DynamoDB JSON-protocol error: the type in `__type`, as DynamoDB sends it.
fn dynamodb_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    json_answer(
        status,
        &serde_json::json!({ "__type": error_type, "message": message }),
    )
}

fn internal_error() -> Response {
    dynamodb_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "com.amazonaws.dynamodb.v20120810#InternalServerError",
        "Internal server error",
    )
}

fn json_answer(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    h.insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&format!("FAULTPROXY{:016X}", rand::random::<u64>())).unwrap(),
    );
    r
}

/// `TransactionCanceledException` for the `TransactWriteItems` in `body`: one reason per
/// action, `TransactionConflict` for one picked at random, `None` for the others (what
/// DynamoDB answers when another transaction or write holds one of the items).
fn transaction_canceled(seed: u64, n: u64, body: &[u8]) -> Response {
    let actions = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("TransactItems")?.as_array().map(Vec::len))
        .unwrap_or(1)
        .max(1);
    let conflict = request_rng(seed ^ 0x5eed, n).random_range(0..actions);
    let reasons: Vec<serde_json::Value> = (0..actions)
        .map(|i| {
            if i == conflict {
                serde_json::json!({
                    "Code": "TransactionConflict",
                    "Message": "Transaction is ongoing for the item"
                })
            } else {
                serde_json::json!({ "Code": "None" })
            }
        })
        .collect();
    let codes: Vec<&str> = (0..actions)
        .map(|i| {
            if i == conflict {
                "TransactionConflict"
            } else {
                "None"
            }
        })
        .collect();
    json_answer(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "Message": format!(
                "Transaction cancelled, please refer cancellation reasons for specific \
                 reasons [{}]",
                codes.join(", ")
            ),
            "CancellationReasons": reasons,
        }),
    )
}

/// The emulator's answer with its headers (and its `content-length`) but a body that fails
/// at once: the server sends the head, then drops the connection, and the client never
/// reads an answer to a write that was applied.
fn cut_after_headers(answer: Response, len: usize) -> Response {
    let (mut parts, _) = answer.into_parts();
    parts.headers.insert(
        "content-length",
        HeaderValue::from_str(&len.max(1).to_string()).unwrap(),
    );
    Response::from_parts(parts, Body::new(CutBody))
}

/// A response body whose first frame is an error: hyper closes the connection mid-answer.
struct CutBody;

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "fault proxy: connection cut",
        ))))
    }
}
