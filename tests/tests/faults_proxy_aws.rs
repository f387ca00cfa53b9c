//! DynamoDB's own failure modes, injected by the fault proxy ([`tally_tests::fault_proxy`])
//! between the SDK and the emulator, on Tally's DynamoDB apply path.
//!
//! - `each_injected_answer_reaches_the_sdk_as_dynamodb_s_would`: one request per fault kind,
//!   forced, through a client without retries: the SDK parses each answer into the error
//!   DynamoDB's would be (modelled variant, status, cancellation reasons), a write whose
//!   answer was lost is in the emulator all the same, and with the SDK's standard retry a
//!   throttle is retried by the SDK while a `TransactionConflictException` reaches the
//!   caller. Then a `DynamoStore` behind the proxy applies one event per forced fault and
//!   every one is `Applied`.
//! - `a_failed_read_of_another_batch_s_state_is_retried`: a resend's read of the batch
//!   that applied its first copy, answered a throttle or a 500, is retried by the store.
//! - `counters_are_exact_under_dynamodb_failure_modes`: two store handles (separate clients
//!   and caches, as two aggregators) apply overlapping batches of `sum`, `count`, `max`,
//!   `latest` and `unique_count` events with resends, concurrently, while the proxy injects
//!   every fault kind at a few percent on writes and reads. Events reported `Failed` are
//!   applied again (as the queue would redeliver them) until none is left. Then, read
//!   straight from the emulator: reconcile finds no drift, and every counter equals a fold
//!   of the distinct events. A planted drift (a counted event whose ledger record is
//!   deleted behind the store's back) shows that both checks catch one. The seed is printed;
//!   `TALLY_PROXY_SEED` replays it (roughly: request order follows timing).
//!
//! Needs `TALLY_TEST_AWS_ENDPOINT`; without it the tests fail and say how to run them.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rust_decimal::Decimal;
use tally_aggregator::reconcile;
use tally_core::event::Event;
use tally_core::ids::{EventId, OrgId, ProjectId};
use tally_core::period::Month;
use tally_core::ports::{ApplyOutcome, UsageStore};
use tally_store::dynamodb::sdk::Client;
use tally_store::dynamodb::{DynamoStore, create_table};
use tally_tests::aws;
use tally_tests::conformance::fixtures::{
    MIXED_METERS, drawn_quantity, event, expected_counters, fresh_event, fresh_org, fresh_project,
    stored_counter_map, with_prop,
};
use tally_tests::fault_proxy::{Fault, FaultConfig, FaultProxy};

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

/// A fresh table in the emulator (created directly, not through the proxy) and a client on
/// the emulator itself, for setup and for reading the truth.
async fn fresh_table() -> (Client, String) {
    let direct = Client::new(&aws::sdk_config().await);
    let table = aws::fresh_name("tally-proxy");
    create_table(&direct, &table).await.unwrap();
    (direct, table)
}

/// A client through `proxy` with the SDK's retries off, so that what the store does with a
/// faulted answer is all that happens to it.
async fn bare_client(proxy: &FaultProxy) -> Client {
    Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&aws::sdk_config_at(&proxy.url()).await)
            .retry_config(RetryConfig::disabled())
            .build(),
    )
}

/// A proxy before the emulator with `config`, and a fresh table with a direct client.
async fn table_behind(config: FaultConfig) -> (FaultProxy, Client, String) {
    let proxy = FaultProxy::start(&aws::endpoint(), config).await.unwrap();
    let (direct, table) = fresh_table().await;
    (proxy, direct, table)
}

/// A proxy that may fault reads as well as writes before a fresh table, a store on the table
/// with a direct client, and one through the proxy with no SDK retry (the store itself must
/// retry what the proxy faults).
async fn read_fault_stores() -> (FaultProxy, DynamoStore, DynamoStore) {
    let (proxy, direct, table) = table_behind(FaultConfig {
        reads: true,
        ..FaultConfig::quiet()
    })
    .await;
    let bare = bare_client(&proxy).await;
    let (direct, proxied) = (
        DynamoStore::new(direct, &table),
        DynamoStore::new(bare, &table),
    );
    (proxy, direct, proxied)
}

/// The put of item `pk`/`x` into `table`, ready to send.
fn put_x(client: &Client, table: &str, pk: &str) -> PutItemFluentBuilder {
    client
        .put_item()
        .table_name(table)
        .item("pk", s(pk))
        .item("sk", s("x"))
}

/// `q` compute minutes of `project` at 10:00 on 3 November 2026, event id `id`.
fn minutes(org: &OrgId, project: &ProjectId, id: &str, q: &str) -> Event {
    event(
        org,
        project,
        id,
        "compute_minutes",
        q,
        "2026-11-03T10:00:00Z",
    )
}

/// Whether the emulator holds `pk`/`sk` in `table`.
async fn exists(direct: &Client, table: &str, pk: &str) -> bool {
    direct
        .get_item()
        .table_name(table)
        .key("pk", s(pk))
        .key("sk", s("x"))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_injected_answer_reaches_the_sdk_as_dynamodb_s_would() {
    let (proxy, direct, table) = table_behind(FaultConfig::quiet()).await;
    let proxied = aws::sdk_config_at(&proxy.url()).await;
    let bare = bare_client(&proxy).await;
    let put = |pk: &str| put_x(&bare, &table, pk).send();

    // Refused answers: the modelled error, nothing written.
    type Check = fn(&PutItemError) -> bool;
    let refused: [(Fault, u16, &str, Check); 4] = [
        (
            Fault::ProvisionedThroughputExceeded,
            400,
            "ProvisionedThroughputExceededException",
            PutItemError::is_provisioned_throughput_exceeded_exception,
        ),
        (
            Fault::Throttling,
            400,
            "ThrottlingException",
            PutItemError::is_throttling_exception,
        ),
        (
            Fault::TransactionConflict,
            400,
            "TransactionConflictException",
            PutItemError::is_transaction_conflict_exception,
        ),
        (
            Fault::InternalServerError,
            500,
            "InternalServerError",
            PutItemError::is_internal_server_error,
        ),
    ];
    for (fault, status, code, is_variant) in refused {
        proxy.force(fault);
        let pk = format!("refused-{fault:?}");
        let e = put(&pk).await.expect_err("the proxy answers an error");
        let service = e.as_service_error().expect("a service error");
        assert!(is_variant(service), "{fault:?}: {service:?}");
        assert_eq!(service.code(), Some(code), "{fault:?}");
        assert_eq!(e.raw_response().unwrap().status().as_u16(), status);
        assert!(
            !exists(&direct, &table, &pk).await,
            "{fault:?} is not forwarded"
        );
    }

    // Lost answers: an error, but the write is in the emulator.
    proxy.force(Fault::AnswerLost500);
    let e = put("lost-500")
        .await
        .expect_err("a 500 instead of the answer");
    assert!(matches!(
        e.as_service_error(),
        Some(PutItemError::InternalServerError(_))
    ));
    assert!(exists(&direct, &table, "lost-500").await);
    proxy.force(Fault::ConnectionCut);
    let e = put("lost-cut").await.expect_err("the connection is cut");
    assert!(
        e.as_service_error().is_none()
            && matches!(e, SdkError::ResponseError(_) | SdkError::DispatchFailure(_)),
        "a cut connection is a transport failure, not an answer: {e:?}"
    );
    assert!(exists(&direct, &table, "lost-cut").await);

    // Latency: the emulator's answer, late.
    proxy.force(Fault::Latency);
    let t = Instant::now();
    put("late").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(40));

    // A cancelled transaction: one reason per action, in order, one conflict.
    let tx_put = |pk: &str| {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&table)
                    .item("pk", s(pk))
                    .item("sk", s("x"))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    proxy.force(Fault::TransactionCanceled);
    let e = bare
        .transact_write_items()
        .transact_items(tx_put("tx-a"))
        .transact_items(tx_put("tx-b"))
        .transact_items(tx_put("tx-c"))
        .send()
        .await
        .expect_err("cancelled");
    let Some(TransactWriteItemsError::TransactionCanceledException(c)) = e.as_service_error()
    else {
        panic!("not a TransactionCanceledException: {e:?}");
    };
    let codes: Vec<&str> = c
        .cancellation_reasons()
        .iter()
        .map(|r| r.code().unwrap_or("?"))
        .collect();
    assert_eq!(codes.len(), 3, "{codes:?}");
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == "TransactionConflict")
            .count(),
        1
    );
    assert_eq!(codes.iter().filter(|c| **c == "None").count(), 2);
    assert!(!exists(&direct, &table, "tx-a").await);

    // With the SDK's standard retry: a throttle is retried inside the SDK, a transaction
    // conflict is handed to the caller (the store's own retry takes it).
    let standard = Client::new(&proxied);
    let before = proxy.eligible();
    proxy.force(Fault::Throttling);
    put_x(&standard, &table, "retried").send().await.unwrap();
    assert_eq!(proxy.eligible() - before, 2, "one throttled, one retried");
    proxy.force(Fault::TransactionConflict);
    let e = put_x(&standard, &table, "conflicted")
        .send()
        .await
        .expect_err("not retried by the SDK");
    assert_eq!(e.code(), Some("TransactionConflictException"));

    let injected = proxy.injected();
    for f in Fault::ALL {
        assert!(injected.get(&f).copied().unwrap_or(0) >= 1, "{injected:?}");
    }

    // The store meets each fault once, on whichever write of `apply_batch` comes next
    // that it applies to, and still applies the event exactly once.
    // The chunked format: some faults answer a `TransactWriteItems`, which it sends.
    let store = DynamoStore::new(Client::new(&proxied), &table).with_chunked_counters();
    let (org, project) = (fresh_org(), fresh_project());
    for (i, fault) in Fault::ALL.into_iter().enumerate() {
        let before = proxy.injected_count(fault);
        proxy.force(fault);
        let e = minutes(&org, &project, &format!("one-{i}"), "2");
        let report = store.apply_batch(&[e]).await.unwrap();
        assert_eq!(report.outcomes, vec![ApplyOutcome::Applied], "{fault:?}");
        assert_eq!(proxy.injected_count(fault), before + 1, "{fault:?} was met");
    }
    let month = Month::parse("2026-11").unwrap();
    let stored: Vec<_> = store.stored_counters(&org, month).await.unwrap();
    let total = stored
        .iter()
        .find(|(k, _)| {
            k.project.is_none() && k.granularity == tally_core::period::Granularity::Month
        })
        .map(|(_, v)| *v);
    assert_eq!(total, Some(Decimal::from(2 * Fault::ALL.len() as i64)));
}

/// A resend whose first copy another process applied makes the store read that batch's
/// state (`GetItem`); a throttle or 500 on that read is retried by the store, so the resend
/// is a `Duplicate` at once instead of `Failed` until its next delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_of_another_batch_s_state_is_retried() {
    // The second store has no SDK retry: the store itself must retry the read.
    let (proxy, first, second) = read_fault_stores().await;
    let (org, project) = (fresh_org(), fresh_project());
    for (i, fault) in [
        Fault::InternalServerError,
        Fault::Throttling,
        Fault::ProvisionedThroughputExceeded,
    ]
    .into_iter()
    .enumerate()
    {
        let e = minutes(&org, &project, &format!("resent-{i}"), "1");
        let report = first.apply_batch(std::slice::from_ref(&e)).await.unwrap();
        assert_eq!(report.outcomes, vec![ApplyOutcome::Applied]);
        let before = proxy.injected_count(fault);
        proxy.force_on("GetItem", fault);
        let report = second.apply_batch(&[e]).await.unwrap();
        assert_eq!(report.outcomes, vec![ApplyOutcome::Duplicate], "{fault:?}");
        assert_eq!(proxy.injected_count(fault), before + 1, "{fault:?} was met");
    }
}

/// Reads page through queries; one throttled or failed page is retried by the store, so a
/// usage read or a reconcile does not fail on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_query_page_is_retried() {
    let (proxy, writer, reader) = read_fault_stores().await;
    let (org, _, e) = fresh_event("q", "compute_minutes", "4", "2026-11-03T10:00:00Z");
    writer.apply_batch(&[e]).await.unwrap();
    let month = Month::parse("2026-11").unwrap();
    for fault in [
        Fault::Throttling,
        Fault::ProvisionedThroughputExceeded,
        Fault::InternalServerError,
    ] {
        let before = proxy.injected_count(fault);
        proxy.force_on("Query", fault);
        let drift = reconcile(
            &reader,
            &org,
            month,
            "2026-11-20T00:00:00Z".parse().unwrap(),
        )
        .await
        .unwrap();
        assert!(drift.is_empty(), "{fault:?}: {drift:?}");
        assert_eq!(proxy.injected_count(fault), before + 1, "{fault:?} was met");
    }
}

/// A batch that claimed an event and died before its intent (here: its intent put was
/// throttled, so it aborted itself) leaves an orphan; the next delivery takes it over. A
/// throttle or a 5xx on that takeover is retried by the store (before, the event failed
/// until the next delivery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_takeover_of_an_orphan_is_retried() {
    let (proxy, _, table) = table_behind(FaultConfig::quiet()).await;
    let bare = || bare_client(&proxy);
    // One attempt per write: the throttled intent put is final for this batch.
    let dying = DynamoStore::new(bare().await, &table).with_retry_policy(
        tally_core::backoff::Backoff::new(1, Duration::from_millis(1), Duration::from_millis(1)),
    );
    let taker = DynamoStore::new(bare().await, &table).with_claim_lease(Duration::ZERO);
    let (org, project) = (fresh_org(), fresh_project());
    for (i, fault) in [Fault::Throttling, Fault::InternalServerError]
        .into_iter()
        .enumerate()
    {
        let e = minutes(&org, &project, &format!("orphan-{i}"), "2");
        // The claim passes (late), the intent put is throttled: the batch fails its event.
        proxy.force_on("PutItem", Fault::Latency);
        proxy.force_on("PutItem", Fault::Throttling);
        let died = dying.apply_batch(std::slice::from_ref(&e)).await.unwrap();
        assert!(
            matches!(died.outcomes[..], [ApplyOutcome::Failed(_)]),
            "{died:?}"
        );
        let before = proxy.injected_count(fault);
        proxy.force_on("UpdateItem", fault);
        // The redelivered copy carries other contents (an id resent with 5): the taker
        // counts 5, and the ledger must say 5 too, or reconcile sees drift.
        let mut resent = e.clone();
        resent.quantity = tally_core::event::Quantity::parse("5").unwrap();
        let taken = taker
            .apply_batch(std::slice::from_ref(&resent))
            .await
            .unwrap();
        assert_eq!(taken.outcomes, vec![ApplyOutcome::Applied], "{fault:?}");
        assert_eq!(
            proxy.injected_count(fault),
            before + 1,
            "{fault:?} was met by the takeover"
        );
    }
    let month = Month::parse("2026-11").unwrap();
    let drift = reconcile(&taker, &org, month, "2026-11-20T00:00:00Z".parse().unwrap())
        .await
        .unwrap();
    assert!(
        drift.is_empty(),
        "the ledger holds the copy counted: {drift:?}"
    );
}

/// The workload: `n` distinct events of every aggregation for one org, over three days of
/// November 2026, and the stream sent (the distinct events plus `resends` exact copies,
/// shuffled).
fn workload(rng: &mut StdRng, org: &OrgId, n: usize, resends: usize) -> (Vec<Event>, Vec<Event>) {
    let projects = [fresh_project(), fresh_project()];
    let distinct: Vec<Event> = (0..n)
        .map(|i| {
            let meter = MIXED_METERS[rng.random_range(0..MIXED_METERS.len())];
            let quantity = drawn_quantity(meter, rng);
            let at = format!(
                "2026-11-0{}T{:02}:{:02}:{:02}Z",
                3 + rng.random_range(0..3),
                rng.random_range(0..24),
                rng.random_range(0..60),
                rng.random_range(0..60)
            );
            let project = &projects[rng.random_range(0..2)];
            let e = event(org, project, &format!("ev-{i}"), meter, &quantity, &at);
            if meter == "active_users" {
                with_prop(e, "user", format!("u{}", rng.random_range(0..20)))
            } else {
                e
            }
        })
        .collect();
    let mut stream = distinct.clone();
    for _ in 0..resends {
        stream.push(distinct[rng.random_range(0..n)].clone());
    }
    stream.shuffle(rng);
    (distinct, stream)
}

/// What one handle's run saw.
#[derive(Default)]
struct Seen {
    /// Events reported `Failed` (or in a call that failed) at least once.
    failed_once: HashSet<EventId>,
    /// Why, by reason (first 60 characters).
    reasons: BTreeMap<String, usize>,
    calls_failed: usize,
    rounds: usize,
}

/// Applies `batches` on `store`, then applies every event that came back `Failed` (or whose
/// call failed) again, as a queue redelivers it, until none is left or `max_rounds` passed;
/// the events still not applied.
async fn run_handle(
    store: &DynamoStore,
    batches: Vec<Vec<Event>>,
    batch: usize,
    max_rounds: usize,
    seen: &Mutex<Seen>,
) -> Vec<Event> {
    let mut pending: Vec<Event> = Vec::new();
    let apply =
        async |events: &[Event], pending: &mut Vec<Event>| match store.apply_batch(events).await {
            Ok(report) => {
                for (e, o) in events.iter().zip(&report.outcomes) {
                    if let ApplyOutcome::Failed(why) = o {
                        let mut seen = seen.lock().unwrap();
                        seen.failed_once.insert(e.id.clone());
                        *seen
                            .reasons
                            .entry(why.chars().take(60).collect())
                            .or_default() += 1;
                        pending.push(e.clone());
                    }
                }
            }
            Err(err) => {
                let mut seen = seen.lock().unwrap();
                seen.calls_failed += 1;
                *seen
                    .reasons
                    .entry(format!(
                        "call: {}",
                        err.to_string().chars().take(54).collect::<String>()
                    ))
                    .or_default() += 1;
                for e in events {
                    seen.failed_once.insert(e.id.clone());
                }
                pending.extend(events.iter().cloned());
            }
        };
    for b in &batches {
        let t = Instant::now();
        apply(b, &mut pending).await;
        if std::env::var_os("TALLY_PROXY_TRACE").is_some() {
            eprintln!(
                "batch of {} in {:.1?}, {} pending",
                b.len(),
                t.elapsed(),
                pending.len()
            );
        }
    }
    let mut round = 0;
    while !pending.is_empty() && round < max_rounds {
        round += 1;
        let again = std::mem::take(&mut pending);
        for b in again.chunks(batch) {
            apply(b, &mut pending).await;
        }
    }
    let mut seen = seen.lock().unwrap();
    seen.rounds = seen.rounds.max(round);
    pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_exact_under_dynamodb_failure_modes() {
    failure_modes(false).await;
}

/// The same in the slotted counter format (`with_writer_slots`): no transaction is sent, so
/// every fault but `TransactionCanceled` meets the plain conditional updates and the writer
/// slots' own writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slotted_counters_are_exact_under_dynamodb_failure_modes() {
    failure_modes(true).await;
}

async fn failure_modes(slotted: bool) {
    let seed = std::env::var("TALLY_PROXY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("fault proxy schedule: TALLY_PROXY_SEED={seed}");
    // `TALLY_PROXY_SCALE` multiplies every rate (a soak with more faults).
    let scale: f64 = std::env::var("TALLY_PROXY_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let mut config = FaultConfig {
        seed,
        rates: vec![
            (Fault::ProvisionedThroughputExceeded, 0.02),
            (Fault::Throttling, 0.02),
            (Fault::TransactionConflict, 0.03),
            // Only transactions meet it, and a batch sends one or two (a few dozen in a run): a
            // high rate, so every run meets it several times.
            (Fault::TransactionCanceled, 0.40),
            (Fault::InternalServerError, 0.02),
            (Fault::Latency, 0.03),
            (Fault::AnswerLost500, 0.03),
            (Fault::ConnectionCut, 0.03),
        ],
        latency: Duration::from_millis(30),
        reads: true,
    };
    for (_, rate) in &mut config.rates {
        *rate *= scale;
    }
    let (proxy, direct, table) = table_behind(config).await;
    let proxied = aws::sdk_config_at(&proxy.url()).await;
    // `TALLY_PROXY_NO_SDK_RETRY`: the store meets every fault itself (the SDK's standard
    // retry otherwise absorbs most throttles, 500s and cut connections).
    let client = || {
        let mut b = aws_sdk_dynamodb::config::Builder::from(&proxied);
        if std::env::var_os("TALLY_PROXY_NO_SDK_RETRY").is_some() {
            b = b.retry_config(RetryConfig::disabled());
        }
        Client::from_conf(b.build())
    };
    // Two aggregators: separate clients, separate caches of done batches and known hours.
    let format = |store: DynamoStore| {
        if slotted {
            store.with_writer_slots(4)
        } else {
            store.with_chunked_counters()
        }
    };
    let a = format(DynamoStore::new(client(), &table));
    let b = format(DynamoStore::new(client(), &table));

    let mut rng = StdRng::seed_from_u64(seed);
    let org = fresh_org();
    let (distinct, stream) = workload(&mut rng, &org, 160, 40);
    // Both handles apply the whole stream, B's batches offset by half a batch from A's, so
    // every event is claimed by both at about the same time.
    const BATCH: usize = 20;
    let batches_a: Vec<Vec<Event>> = stream.chunks(BATCH).map(<[Event]>::to_vec).collect();
    let mut rotated = stream.clone();
    rotated.rotate_left(BATCH / 2);
    let batches_b: Vec<Vec<Event>> = rotated.chunks(BATCH).map(<[Event]>::to_vec).collect();

    let started = Instant::now();
    let seen = Mutex::new(Seen::default());
    let (left_a, left_b) = tokio::join!(
        run_handle(&a, batches_a, BATCH, 20, &seen),
        run_handle(&b, batches_b, BATCH, 20, &seen),
    );
    let took = started.elapsed();
    let injected = proxy.injected();
    let seen = seen.into_inner().unwrap();
    println!(
        "fault proxy: {} events ({} distinct) applied by 2 handles in {took:.1?}; {} eligible \
         requests, {} forwarded; faults injected: {injected:?}; {} distinct events Failed at \
         least once ({} apply calls failed, {} redelivery rounds at most); reasons: {:?}",
        stream.len(),
        distinct.len(),
        proxy.eligible(),
        proxy.forwarded(),
        seen.failed_once.len(),
        seen.calls_failed,
        seen.rounds,
        seen.reasons,
    );
    assert!(
        left_a.is_empty() && left_b.is_empty(),
        "events still failing after 20 redeliveries: {} and {}",
        left_a.len(),
        left_b.len()
    );
    // A batch fails as a whole only when one of its counter transactions is cancelled or
    // refused 8 times running (0.4^8 per chunk at these rates): rare, and then it is one
    // batch, not a quarter of the events.
    assert!(
        seen.failed_once.len() <= distinct.len() / 4,
        "{} of {} events failed at least once (seed {seed})",
        seen.failed_once.len(),
        distinct.len()
    );
    for f in Fault::ALL {
        if slotted && f == Fault::TransactionCanceled {
            assert_eq!(
                injected.get(&f),
                None,
                "the slotted format sent a transaction"
            );
            continue;
        }
        assert!(
            injected.get(&f).copied().unwrap_or(0) > 0,
            "{f:?} was never injected (TALLY_PROXY_SEED={seed}): {injected:?}"
        );
    }

    // The truth, read from the emulator itself.
    proxy.set_active(false);
    let truth_store = DynamoStore::new(direct.clone(), &table);
    let month = Month::parse("2026-11").unwrap();
    let truth = expected_counters(&distinct);
    let stored = |store: DynamoStore, org: OrgId| async move {
        stored_counter_map(&store, &org, month).await
    };
    let drift = reconcile(&truth_store, &org, month, month.start())
        .await
        .unwrap();
    assert!(drift.is_empty(), "drift (seed {seed}): {drift:?}");
    assert_eq!(
        stored(truth_store.clone(), org.clone()).await,
        truth,
        "counters differ from the distinct events (seed {seed})"
    );

    // A planted drift: an event counted, its ledger record then deleted behind the store's
    // back. Both checks must see it.
    let planted = event(
        &org,
        &fresh_project(),
        "planted",
        "compute_minutes",
        "7",
        "2026-11-04T12:00:00Z",
    );
    let report = truth_store
        .apply_batch(std::slice::from_ref(&planted))
        .await
        .unwrap();
    assert_eq!(report.outcomes, vec![ApplyOutcome::Applied]);
    let found = direct
        .scan()
        .table_name(&table)
        .filter_expression("sk = :sk")
        .expression_attribute_values(":sk", s("EVT#planted"))
        .send()
        .await
        .unwrap();
    let keys: Vec<HashMap<String, AttributeValue>> = found
        .items()
        .iter()
        .map(|it| {
            it.iter()
                .filter(|(k, _)| *k == "pk" || *k == "sk")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .collect();
    assert_eq!(keys.len(), 1, "the planted event's ledger record");
    direct
        .delete_item()
        .table_name(&table)
        .set_key(keys.into_iter().next())
        .send()
        .await
        .unwrap();
    let drift = reconcile(&truth_store, &org, month, month.start())
        .await
        .unwrap();
    assert!(!drift.is_empty(), "reconcile misses the planted drift");
    assert_ne!(
        stored(truth_store, org).await,
        truth,
        "the oracle misses the planted drift"
    );
}

/// A hot org's cells are what concurrent batches fight over: with its counter ops in
/// chunks of their own (`Packing::HotApart`), the transactions DynamoDB cancels for
/// conflicts on its cells hold none of the other orgs' cells, so the tail is never
/// cancelled or delayed by them, and everything still counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_a_hot_org_never_cancel_other_orgs_writes() {
    let (proxy, _direct, table) = table_behind(FaultConfig::quiet()).await;
    // The chunked format, whose chunk transactions are what conflicts could cancel.
    let store = DynamoStore::new(Client::new(&aws::sdk_config_at(&proxy.url()).await), &table)
        .with_chunked_counters();
    let hot = fresh_org();
    let projects: Vec<_> = (0..10).map(|_| fresh_project()).collect();
    let mut events: Vec<Event> = (0..40)
        .map(|i| {
            event(
                &hot,
                &projects[i % 10],
                &format!("h{i}"),
                ["compute_minutes", "requests"][i % 2],
                "1",
                "2026-11-26T10:00:00Z",
            )
        })
        .collect();
    let cold: Vec<OrgId> = (0..40).map(|_| fresh_org()).collect();
    events.extend(cold.iter().enumerate().map(|(i, org)| {
        event(
            org,
            &projects[0],
            &format!("c{i}"),
            "compute_minutes",
            "2",
            "2026-11-26T10:00:00Z",
        )
    }));
    // Three conflicts in a row on the hot org's cells: within the store's retries.
    proxy.contend(hot.as_str(), 3);
    let report = store.apply_batch(&events).await.unwrap();
    assert!(
        report.outcomes.iter().all(|o| *o == ApplyOutcome::Applied),
        "{report:?}"
    );
    let cancelled = proxy.contention_log();
    assert_eq!(cancelled.len(), 3, "the hot chunk met every conflict");
    for body in &cancelled {
        let tail: Vec<&OrgId> = cold.iter().filter(|o| body.contains(o.as_str())).collect();
        assert!(
            tail.is_empty(),
            "a transaction cancelled for the hot org carried {} other orgs' cells",
            tail.len()
        );
    }
    let month = Month::parse("2026-11").unwrap();
    let counters = stored_counter_map(&store, &hot, month).await;
    assert_eq!(counters, expected_counters(&events[..40]));
}
