//! Plan-limit alerts end to end below the binary: [`check_alerts`] over each store backend
//! (SQLite, and DynamoDB on the emulator named by `TALLY_TEST_AWS_ENDPOINT`), sending through the real HTTP sender ([`WebhookSender`]) to a loopback receiver that
//! records every request and can be told to fail. The clock is a test clock; backoff goes
//! through a sleeper that records and returns at once.
//!
//! What the feature promises, and each test checks: the webhook is signed so a receiver
//! can verify it; crossing 80 % and then 100 % of an allowance sends exactly one alert per
//! threshold per month, however many checks run, one after another or at once; a failing
//! endpoint is retried with backoff, leaves the alert pending, and a later check delivers
//! the same alert; hard-limit plans are alerted too, and say so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::Duration;
use tally_billing::Catalogue;
use tally_billing::alerts::{AlertPayload, AlertPorts, CheckOutcome, DEFAULT_LEASE, check_alerts};
use tally_billing::sync::Sleeper;
use tally_billing::webhook::verify_signature;
use tally_core::ports::{AlertLedger, Clock, FixedClock, TenantStore, UsageStore};
use tally_core::tenant::{Org, User};
use tally_core::{Month, OrgId, PlanId, UserId};
use tally_notify::{WebhookConfig, WebhookSender};
use tally_store::SqliteStore;
use tally_store::dynamodb::sdk::Client;
use tally_store::dynamodb::{DynamoStore, create_table};
use tally_tests::aws;
use tally_tests::conformance::fixtures::{event, fresh_org, fresh_project, random_hex, ts};

const SECRET: &str = "whsec_alerts_0123456789";

/// Records the backoff it was asked for and returns at once.
#[derive(Default)]
struct RecordingSleeper(Mutex<Vec<StdDuration>>);

#[async_trait]
impl Sleeper for RecordingSleeper {
    async fn sleep(&self, duration: StdDuration) {
        self.0.lock().unwrap().push(duration);
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    signature: String,
    body: Vec<u8>,
    answered: u16,
}

/// What the receiver answers next: these first (a status, or 0 to hang), then 204.
#[derive(Default)]
struct ReceiverState {
    script: Mutex<VecDeque<u16>>,
    got: Mutex<Vec<Received>>,
}

struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let app = Router::new()
            .route("/hooks/tally", post(receive))
            .with_state(Arc::clone(&state));
        let addr = tally_tests::serve_local(app).await.unwrap();
        Receiver {
            url: format!("http://{addr}/hooks/tally"),
            state,
        }
    }

    fn then_answer(&self, statuses: &[u16]) {
        self.state.script.lock().unwrap().extend(statuses);
    }

    fn got(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    /// The alerts it acknowledged, as payloads.
    fn delivered(&self) -> Vec<AlertPayload> {
        self.got()
            .iter()
            .filter(|r| (200..300).contains(&r.answered))
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1]) {
    let next = state.script.lock().unwrap().pop_front().unwrap_or(204);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    state.got.lock().unwrap().push(Received {
        id: header("tally-alert-id"),
        signature: header("tally-signature"),
        body: body.to_vec(),
        answered: next,
    });
    if next == 0 {
        // Longer than the sender's per-attempt timeout.
        tokio::time::sleep(StdDuration::from_secs(5)).await;
        return (StatusCode::NO_CONTENT, [("x-ignored", "")]);
    }
    // A busy endpoint says when to come back.
    let header = if next == 429 {
        ("retry-after", "3")
    } else {
        ("x-ignored", "")
    };
    (StatusCode::from_u16(next).unwrap(), [header])
}

/// Every port a check needs, in one store.
trait Ports: TenantStore + UsageStore + AlertLedger {}
impl<T: TenantStore + UsageStore + AlertLedger> Ports for T {}

/// Where the world's state lives; each `open` is a new handle (like another process).
enum Backing {
    Sqlite {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    },
    Dynamo {
        config: Box<aws_config::SdkConfig>,
        table: String,
    },
}

impl Backing {
    async fn open(&self) -> Arc<dyn Ports> {
        match self {
            Backing::Sqlite { path, .. } => Arc::new(SqliteStore::open(path).unwrap()),
            Backing::Dynamo { config, table } => {
                Arc::new(DynamoStore::new(Client::new(config), table.clone()))
            }
        }
    }
}

struct World {
    backing: Backing,
    store: Arc<dyn Ports>,
    clock: Arc<FixedClock>,
    sleeper: Arc<RecordingSleeper>,
    receiver: Receiver,
    catalogue: Catalogue,
}

impl World {
    /// A world on `backend` on 10 November with one org of `plan` that has used `q` of
    /// `meter`, and an endpoint that answers `answers` first.
    async fn answering(
        backend: &str,
        plan: PlanId,
        (meter, q): (&str, &str),
        answers: &[u16],
    ) -> (World, OrgId) {
        let w = World::new(backend, "2026-11-10T12:00:00Z").await;
        let org = w.org(plan).await;
        w.use_(&org, meter, q).await;
        w.receiver.then_answer(answers);
        (w, org)
    }

    async fn new(backend: &str, now: &str) -> World {
        let backing = match backend {
            "sqlite" => {
                let dir = tempfile::tempdir().unwrap();
                Backing::Sqlite {
                    path: dir.path().join("tally.db"),
                    _dir: dir,
                }
            }
            _ => {
                let config = aws::sdk_config().await;
                let table = aws::fresh_name("tally-alerts");
                create_table(&Client::new(&config), &table).await.unwrap();
                Backing::Dynamo {
                    config: Box::new(config),
                    table,
                }
            }
        };
        World {
            store: backing.open().await,
            backing,
            clock: Arc::new(FixedClock::at(ts(now))),
            sleeper: Arc::default(),
            receiver: Receiver::start().await,
            catalogue: Catalogue::builtin().unwrap(),
        }
    }

    fn sender(&self) -> WebhookSender {
        let mut config = WebhookConfig::new(&self.receiver.url, SECRET);
        config.max_attempts = 3;
        config.timeout = StdDuration::from_millis(300);
        WebhookSender::new(config, self.clock.clone(), self.sleeper.clone()).unwrap()
    }

    async fn org(&self, plan: PlanId) -> OrgId {
        let owner = self
            .store
            .ensure_user(&User {
                id: UserId::from_random(rand::random()),
                email: format!("ada.{}@example.com", random_hex()),
                created_at: self.clock.now(),
            })
            .await
            .unwrap();
        let org = Org {
            id: fresh_org(),
            name: "Acme".into(),
            slug: format!("acme-{}", random_hex()),
            plan,
            owner_id: owner.id,
            created_at: self.clock.now(),
            deleted_at: None,
        };
        self.store.create_org(&org).await.unwrap();
        org.id
    }

    /// Counts `quantity` more of `meter` for the org, stamped now.
    async fn use_(&self, org: &OrgId, meter: &str, quantity: &str) {
        let at = self.clock.now().to_rfc3339();
        let e = event(org, &fresh_project(), &random_hex(), meter, quantity, &at);
        let report = self.store.apply_batch(&[e]).await.unwrap();
        assert_eq!(report.applied(), 1);
    }

    async fn check(&self) -> CheckOutcome {
        check_on(self.store.as_ref(), self).await
    }

    /// Runs a check that must claim and deliver nothing, and asserts the endpoint has had
    /// `requests` requests in all (none of them from this check).
    async fn assert_quiet_check(&self, requests: usize) {
        let out = self.check().await;
        assert_eq!((out.claimed, out.delivered), (0, 0));
        assert_eq!(self.receiver.got().len(), requests);
    }
}

/// One pass on `store` (another handle on the world's state, or the world's own).
async fn check_on(store: &dyn Ports, w: &World) -> CheckOutcome {
    let ports = AlertPorts {
        tenants: store,
        usage: store,
        alerts: store,
        clock: w.clock.as_ref(),
    };
    check_alerts(ports, &w.catalogue, &w.sender(), DEFAULT_LEASE)
        .await
        .unwrap()
}

/// Starter allows 1,000 compute minutes a month. 700 alerts nothing; 850 sends the 80 %
/// alert, signed, once however often the check runs; 1,050 sends the 100 % alert once even
/// with four checks racing from four store handles; December starts afresh.
async fn crossing_80_then_100_percent_sends_one_signed_alert_per_threshold(backend: &str) {
    let w = World::new(backend, "2026-11-10T12:00:00Z").await;
    let org = w.org(PlanId::Starter).await;

    w.use_(&org, "compute_minutes", "700").await;
    let out = w.check().await;
    assert_eq!((out.claimed, out.delivered), (0, 0), "{:?}", out.problems);
    assert!(w.receiver.got().is_empty());

    w.use_(&org, "compute_minutes", "150").await;
    let out = w.check().await;
    assert_eq!((out.claimed, out.delivered), (1, 1), "{:?}", out.problems);
    let got = w.receiver.got();
    assert_eq!(got.len(), 1);
    let first = &got[0];
    verify_signature(SECRET, &first.signature, &first.body, w.clock.now(), 300).unwrap();
    assert!(
        verify_signature(
            "whsec_someone_else_entirely",
            &first.signature,
            &first.body,
            w.clock.now(),
            300
        )
        .is_err()
    );
    let payload: AlertPayload = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(payload.id, first.id);
    assert_eq!(payload.kind, "usage.threshold_crossed");
    assert_eq!(payload.org_id, org);
    assert_eq!(payload.period, Month::parse("2026-11").unwrap());
    assert_eq!(payload.meter.as_str(), "compute_minutes");
    assert_eq!(payload.threshold_percent, 80);
    assert_eq!(payload.limit.to_string(), "1000");
    assert_eq!(payload.usage.to_string(), "850");
    assert_eq!(payload.unit, "minutes");
    assert_eq!(payload.plan, PlanId::Starter);
    assert!(!payload.hard_limit);

    w.clock.advance(Duration::minutes(1));
    for _ in 0..3 {
        let out = w.check().await;
        assert_eq!((out.claimed, out.delivered), (0, 0));
    }
    assert_eq!(w.receiver.got().len(), 1);

    w.use_(&org, "compute_minutes", "200").await;
    let world = Arc::new(w);
    let mut racers = Vec::new();
    for _ in 0..4 {
        let w = Arc::clone(&world);
        racers.push(tokio::spawn(async move {
            let handle = w.backing.open().await;
            check_on(handle.as_ref(), &w).await
        }));
    }
    let mut claimed = 0;
    for r in racers {
        let out = r.await.unwrap();
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        claimed += out.claimed;
    }
    assert_eq!(claimed, 1);
    let w = world;
    let delivered = w.receiver.delivered();
    let thresholds: Vec<u8> = delivered.iter().map(|p| p.threshold_percent).collect();
    assert_eq!(thresholds, vec![80, 100]);
    assert_eq!(delivered[1].usage.to_string(), "1050");
    assert_ne!(delivered[0].id, delivered[1].id);
    assert!(
        w.store
            .pending_alerts(&org, Month::parse("2026-11").unwrap())
            .await
            .unwrap()
            .is_empty()
    );

    // A new month: nothing used yet, nothing sent.
    w.clock.advance(Duration::days(22));
    w.assert_quiet_check(2).await;
}

/// The endpoint fails every attempt of the first check (5xx, then a hang past the
/// timeout): the sender retries with growing backoff, the alert stays pending, and a check
/// inside the lease leaves it alone. Once the lease is over, the next check sends the same
/// body with the same id, and it is delivered and no longer pending.
async fn a_failing_endpoint_leaves_the_alert_pending_and_a_later_check_delivers_it(backend: &str) {
    let usage = ("api_calls", "800000");
    let (w, org) = World::answering(backend, PlanId::Pro, usage, &[500, 0, 503]).await;
    let nov = Month::parse("2026-11").unwrap();

    let out = w.check().await;
    assert_eq!((out.claimed, out.delivered), (1, 0));
    assert_eq!(out.problems.len(), 1, "{:?}", out.problems);
    let attempts = w.receiver.got();
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts
            .iter()
            .all(|a| a.id == attempts[0].id && a.body == attempts[0].body)
    );
    let waits = w.sleeper.0.lock().unwrap().clone();
    assert_eq!(waits.len(), 2, "{waits:?}");
    assert!(waits[0] >= StdDuration::from_millis(250) && waits[0] <= StdDuration::from_millis(500));
    assert!(waits[1] >= StdDuration::from_millis(500) && waits[1] <= StdDuration::from_secs(1));
    let pending = w.store.pending_alerts(&org, nov).await.unwrap();
    assert_eq!(pending.len(), 1);

    // Inside the lease the claimer may still be at it: no second sender.
    w.clock.advance(Duration::minutes(1));
    w.assert_quiet_check(3).await;

    w.clock.advance(DEFAULT_LEASE);
    let out = w.check().await;
    assert_eq!((out.claimed, out.delivered), (0, 1), "{:?}", out.problems);
    let got = w.receiver.got();
    assert_eq!(got.len(), 4);
    assert_eq!(
        (got[3].id.as_str(), &got[3].body),
        (attempts[0].id.as_str(), &attempts[0].body)
    );
    verify_signature(SECRET, &got[3].signature, &got[3].body, w.clock.now(), 300).unwrap();
    assert!(w.store.pending_alerts(&org, nov).await.unwrap().is_empty());
    let stored = w.store.get_alert(&pending[0].key).await.unwrap().unwrap();
    assert_eq!(stored.delivered_at, Some(w.clock.now()));

    w.clock.advance(DEFAULT_LEASE * 2);
    w.assert_quiet_check(4).await;
}

/// A 4xx other than 408/429 cannot get better by retrying at once: one attempt, and the
/// alert waits for a later check (after its lease), which delivers it.
async fn a_refusing_endpoint_is_not_hammered(backend: &str) {
    let usage = ("compute_minutes", "999");
    let (w, _) = World::answering(backend, PlanId::Starter, usage, &[404]).await;
    let out = w.check().await;
    assert_eq!((out.claimed, out.delivered, out.problems.len()), (1, 0, 1));
    assert_eq!(w.receiver.got().len(), 1);
    assert!(w.sleeper.0.lock().unwrap().is_empty());
    w.clock.advance(DEFAULT_LEASE + Duration::seconds(1));
    let out = w.check().await;
    assert_eq!((out.claimed, out.delivered), (0, 1));
    assert_eq!(w.receiver.delivered().len(), 1);
}

/// A 429 with `Retry-After` is retried after the endpoint's wait (not the backoff), within
/// the same check.
async fn a_busy_endpoint_is_retried_when_it_asks(backend: &str) {
    let usage = ("api_calls", "80000");
    let (w, _) = World::answering(backend, PlanId::Starter, usage, &[429]).await;
    let out = w.check().await;
    assert_eq!((out.claimed, out.delivered), (1, 1), "{:?}", out.problems);
    assert_eq!(w.receiver.got().len(), 2);
    assert_eq!(
        *w.sleeper.0.lock().unwrap(),
        vec![StdDuration::from_secs(3)]
    );
}

/// Free has hard limits on every meter: 80 % warns, 100 % says events are now refused
/// (`hard_limit`). Deleted orgs and enterprise (no allowances, so unlimited meters) are
/// never alerted.
async fn hard_limit_plans_are_alerted_and_say_so(backend: &str) {
    let w = World::new(backend, "2026-11-10T12:00:00Z").await;
    let free = w.org(PlanId::Free).await;
    let enterprise = w.org(PlanId::Enterprise).await;
    let gone = w.org(PlanId::Free).await;
    for org in [&free, &enterprise, &gone] {
        w.use_(org, "api_calls", "10000").await;
        // Past free's 1 GiB of bandwidth; enterprise's bandwidth is unlimited.
        w.use_(org, "bandwidth_bytes", "999999999999").await;
    }
    w.store.delete_org(&gone, w.clock.now()).await.unwrap();
    let out = w.check().await;
    assert_eq!(out.orgs, 3);
    assert_eq!((out.claimed, out.delivered), (4, 4), "{:?}", out.problems);
    let delivered = w.receiver.delivered();
    assert!(delivered.iter().all(|p| p.org_id == free && p.hard_limit));
    let mut seen: Vec<(String, u8)> = delivered
        .iter()
        .map(|p| (p.meter.as_str().to_owned(), p.threshold_percent))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("api_calls".to_owned(), 80),
            ("api_calls".to_owned(), 100),
            ("bandwidth_bytes".to_owned(), 80),
            ("bandwidth_bytes".to_owned(), 100),
        ]
    );
    let calls_100 = delivered
        .iter()
        .find(|p| p.meter.as_str() == "api_calls" && p.threshold_percent == 100)
        .unwrap();
    assert_eq!(calls_100.limit.to_string(), "10000");
}

/// Runs each scenario on SQLite and on DynamoDB.
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario("sqlite").await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario("dynamodb").await;
                }
            )*
        }
    };
}

on_every_backend!(
    crossing_80_then_100_percent_sends_one_signed_alert_per_threshold,
    a_failing_endpoint_leaves_the_alert_pending_and_a_later_check_delivers_it,
    a_refusing_endpoint_is_not_hammered,
    a_busy_endpoint_is_retried_when_it_asks,
    hard_limit_plans_are_alerted_and_say_so,
);
