//! What the ingest router tests share: reading a `POST /v1/events` answer's rejections, the
//! instants, orgs, projects and keys their stores are seeded with, and the queue fake ingest
//! publishes to.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tally_core::event::Event;
use tally_core::ids::{ApiKeyId, OrgId, ProjectId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::{Delivery, EventQueue, PublishReport, QueueError, UserStore};
use tally_core::tenant::{ApiKey, KeyScope, Org, Project, User};
use tally_store::MemoryStore;
use tokio::sync::Notify;

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
    let id = ApiKeyId::parse(&format!("key_{}", &secret[secret.len() - 16..])).unwrap();
    ApiKey {
        name: secret.into(),
        scopes: scopes.to_vec(),
        ..ApiKey::new(id, org(org_id), secret, t("2026-01-01T00:00:00Z"))
    }
}

/// The org `id` on `plan`, owned by `usr_owner`, created 2026-01-01.
pub fn an_org(id: &str, plan: PlanId) -> Org {
    Org {
        id: org(id),
        name: id.into(),
        slug: id.replace('_', "-"),
        plan,
        owner_id: UserId::parse("usr_owner").unwrap(),
        created_at: t("2026-01-01T00:00:00Z"),
        deleted_at: None,
    }
}

/// The project `id` of `org_id`, created 2026-01-01.
pub fn project(id: &str, org_id: &str) -> Project {
    Project {
        id: ProjectId::parse(id).unwrap(),
        org_id: org(org_id),
        name: id.into(),
        slug: id.replace('_', "-"),
        created_at: t("2026-01-01T00:00:00Z"),
        archived_at: None,
    }
}

/// Stores the user `usr_owner` (`owner@example.com`), who owns every org [`an_org`] builds.
pub async fn seed_owner(store: &MemoryStore) {
    store
        .ensure_user(&User {
            id: UserId::parse("usr_owner").unwrap(),
            email: "owner@example.com".into(),
            created_at: t("2026-01-01T00:00:00Z"),
        })
        .await
        .unwrap();
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
