//! What the ingest router tests share: sending a request, reading and checking a
//! `POST /v1/events` answer's rejections, the instants, orgs, projects and keys their
//! stores are seeded with, and the queue fake ingest publishes to.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tally_core::event::Event;
use tally_core::fixtures;
use tally_core::ids::OrgId;
use tally_core::plan::PlanId;
use tally_core::ports::{Delivery, EventQueue, PublishReport, QueueError, UserStore};
use tally_core::tenant::{ApiKey, KeyScope, Org};
use tally_store::MemoryStore;
use tokio::sync::Notify;
use tower::ServiceExt;

/// `router`'s answer to `req`: its status, headers and body.
pub async fn respond(router: Router, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let res = router.oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, bytes)
}

/// (index, code, field) of each rejection in a `POST /v1/events` answer, in its order.
pub fn rejections(answer: &Value) -> Vec<(u64, &str, &str)> {
    answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["error"]["code"].as_str().unwrap(),
                r["error"]["field"].as_str().unwrap(),
            )
        })
        .collect()
}

/// Expects a `POST /v1/events` answer (`status`, `answer`) to be a 202 that accepted
/// `accepted` events and rejected `rejected` (index, code, field), in order.
pub fn assert_accepted(
    status: StatusCode,
    answer: &Value,
    accepted: u64,
    rejected: &[(u64, &str, &str)],
) {
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["accepted"], accepted, "{answer}");
    assert_eq!(rejections(answer), rejected, "{answer}");
}

/// An RFC 3339 instant.
pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// The org id `s`.
pub fn org(s: &str) -> OrgId {
    OrgId::parse(s).unwrap()
}

/// The key of `secret` in `org_id` with `scopes`, created 2026-01-01, never expiring (its
/// id ends with the secret's last 16 characters).
pub fn key(secret: &str, org_id: &str, scopes: &[KeyScope]) -> ApiKey {
    let id = format!("key_{}", &secret[secret.len() - 16..]);
    fixtures::api_key(&id, org_id, secret, scopes)
}

/// The org `id` on `plan`, owned by `usr_owner`, created 2026-01-01.
pub fn an_org(id: &str, plan: PlanId) -> Org {
    fixtures::org(id, plan)
}

/// The project `id` of `org_id`, created 2026-01-01.
pub use fixtures::project;

/// Stores the user `usr_owner` (`owner@example.com`), who owns every org [`an_org`] builds.
pub async fn seed_owner(store: &MemoryStore) {
    store.ensure_user(&fixtures::owner()).await.unwrap();
}

/// How the [`Queue`] fake answers a publish.
#[derive(Default)]
pub enum PublishMode {
    #[default]
    Ok,
    /// The whole call fails.
    Error,
    /// These event ids are refused every time.
    FailIds(HashSet<String>),
    /// These event ids are refused on the first call only.
    FailIdsOnce(HashSet<String>),
}

/// The queue fake: records what ingest published, and refuses or holds publishes on demand
/// (what a queue does when it is down, full or slow).
#[derive(Default)]
pub struct Queue {
    /// What ingest published, in order.
    pub published: Mutex<Vec<Event>>,
    /// How many `publish` calls came.
    pub publish_calls: AtomicUsize,
    /// How `publish` answers.
    pub publish_mode: Mutex<PublishMode>,
    /// When set, `publish` waits for a notification before answering.
    pub publish_gate: Mutex<Option<Arc<Notify>>>,
}

impl Queue {
    /// The ids of the published events, in order.
    pub fn published_ids(&self) -> Vec<String> {
        self.published
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.id.as_str().to_owned())
            .collect()
    }
}

#[async_trait]
impl EventQueue for Queue {
    async fn publish(&self, events: &[Event]) -> Result<PublishReport, QueueError> {
        let call = self.publish_calls.fetch_add(1, Ordering::SeqCst);
        let gate = self.publish_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        let refuse: HashSet<String> = match &*self.publish_mode.lock().unwrap() {
            PublishMode::Ok => HashSet::new(),
            PublishMode::Error => return Err(QueueError::Unavailable("down".into())),
            PublishMode::FailIds(ids) => ids.clone(),
            PublishMode::FailIdsOnce(ids) if call == 0 => ids.clone(),
            PublishMode::FailIdsOnce(_) => HashSet::new(),
        };
        let mut published = self.published.lock().unwrap();
        let mut failed = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if refuse.contains(e.id.as_str()) {
                failed.push((i, "full".to_owned()));
            } else {
                published.push(e.clone());
            }
        }
        Ok(PublishReport { failed })
    }
    async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
        unreachable!("ingest only publishes")
    }
    async fn ack(&self, _: &[String]) -> Result<(), QueueError> {
        unreachable!("ingest only publishes")
    }
    async fn depth(&self) -> Result<u64, QueueError> {
        unreachable!("ingest only publishes")
    }
}
