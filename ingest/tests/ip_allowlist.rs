//! An org's IP allowlist applied to its API keys on ingest: `POST /v1/events` and
//! `GET /v1/entitlements` from an address outside it are `403 ip_not_allowed`, inside it
//! they are served; the address is the peer, or behind trusted proxies the entry the
//! outermost appended (a client's own `X-Forwarded-For` words are never believed). The
//! policy travels in the key cache with the key, so a change is seen within the cache's
//! TTL, which the test shows by moving the clock, not by sleeping.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use tally_core::MeterCatalogue;
use tally_core::event::Event;
use tally_core::ids::{ApiKeyId, OrgId, ProjectId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::{
    ApiKeyStore, Delivery, EventQueue, FixedClock, OrgStore, ProjectStore, PublishReport,
    QueueError, SecurityStore, UserStore,
};
use tally_core::security::{Cidr, OrgSecurityPolicy, SecurityPolicy};
use tally_core::tenant::{ApiKey, KeyHash, KeyScope, Org, Project, User};
use tally_ingest::{Ingest, IngestConfig, IngestState};
use tally_store::MemoryStore;
use tower::ServiceExt;

const NOW: &str = "2026-11-26T12:00:00Z";
const KEY: &str = "tk_live_770e607624d689265ca6c44884d0807d9b054d23c473c106c72be9de08b7376c";

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A queue that takes every event.
struct Sink;

#[async_trait]
impl EventQueue for Sink {
    async fn publish(&self, _: &[Event]) -> Result<PublishReport, QueueError> {
        Ok(PublishReport::default())
    }
    async fn receive(&self, _: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
        Ok(Vec::new())
    }
    async fn ack(&self, _: &[String]) -> Result<(), QueueError> {
        Ok(())
    }
    async fn depth(&self) -> Result<u64, QueueError> {
        Ok(0)
    }
}

struct World {
    store: MemoryStore,
    clock: Arc<FixedClock>,
    ingest: Ingest,
}

async fn world(trusted_proxies: usize, allowlist: &[&str]) -> World {
    let store = MemoryStore::new();
    let at = t("2026-01-01T00:00:00Z");
    let owner = UserId::parse("usr_owner").unwrap();
    store
        .ensure_user(&User {
            id: owner.clone(),
            email: "owner@example.com".into(),
            created_at: at,
        })
        .await
        .unwrap();
    let org = OrgId::parse("org_a").unwrap();
    store
        .create_org(&Org {
            id: org.clone(),
            name: "Alpha".into(),
            slug: "alpha".into(),
            plan: PlanId::Pro,
            owner_id: owner,
            created_at: at,
            deleted_at: None,
        })
        .await
        .unwrap();
    store
        .create_project(&Project {
            id: ProjectId::parse("prj_a1").unwrap(),
            org_id: org.clone(),
            name: "A1".into(),
            slug: "a1".into(),
            created_at: at,
            archived_at: None,
        })
        .await
        .unwrap();
    store
        .create_api_key(&ApiKey {
            id: ApiKeyId::parse("key_a1").unwrap(),
            org_id: org.clone(),
            name: "ci".into(),
            hash: KeyHash::of_secret(KEY),
            display_prefix: KEY.chars().take(12).collect(),
            scopes: vec![KeyScope::EventsWrite, KeyScope::UsageRead],
            created_at: at,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        })
        .await
        .unwrap();
    set_policy(&store, allowlist).await;
    let clock = Arc::new(FixedClock::at(t(NOW)));
    let shared = Arc::new(store.clone());
    let ingest = Ingest::new(
        IngestState::new(
            shared.clone(),
            shared,
            Arc::new(Sink),
            Arc::new(MeterCatalogue::default()),
            clock.clone(),
        ),
        IngestConfig {
            trusted_proxies,
            ..IngestConfig::default()
        },
    );
    World {
        store,
        clock,
        ingest,
    }
}

async fn set_policy(store: &MemoryStore, allowlist: &[&str]) {
    store
        .put_security_policy(&OrgSecurityPolicy {
            org_id: OrgId::parse("org_a").unwrap(),
            policy: SecurityPolicy {
                ip_allowlist: allowlist.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
                ..SecurityPolicy::default()
            },
            updated_at: t(NOW),
        })
        .await
        .unwrap();
}

fn event_body() -> String {
    json!({"id": "e1", "project_id": "prj_a1", "meter": "api_calls", "quantity": 1,
           "timestamp": "2026-11-26T10:00:00Z"})
    .to_string()
}

impl World {
    /// Sends `route` (`events` or `entitlements`) from `peer`, with `forwarded` as its
    /// `X-Forwarded-For` if given.
    async fn call(
        &self,
        route: &str,
        peer: Option<&str>,
        forwarded: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = match route {
            "events" => {
                Request::post("/v1/events").header(header::CONTENT_TYPE, "application/json")
            }
            _ => Request::get("/v1/entitlements"),
        }
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"));
        if let Some(xff) = forwarded {
            req = req.header("x-forwarded-for", xff);
        }
        let body = if route == "events" {
            Body::from(event_body())
        } else {
            Body::empty()
        };
        let mut req = req.body(body).unwrap();
        if let Some(peer) = peer {
            let addr: SocketAddr = format!("{peer}:40000")
                .parse()
                .unwrap_or_else(|_| format!("[{peer}]:40000").parse().unwrap());
            req.extensions_mut().insert(ConnectInfo(addr));
        }
        let res = self.ingest.clone().router().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

fn refused(answer: &(StatusCode, Value)) -> bool {
    answer.0 == StatusCode::FORBIDDEN && answer.1["error"]["code"] == "ip_not_allowed"
}

#[tokio::test]
async fn keys_are_served_inside_the_allowlist_and_refused_outside_it() {
    let w = world(0, &["203.0.113.0/24", "2001:db8::/32"]).await;
    for route in ["events", "entitlements"] {
        let inside = w.call(route, Some("203.0.113.7"), None).await;
        assert!(inside.0.is_success(), "{route} from inside: {inside:?}");
        let v6 = w.call(route, Some("2001:db8::9"), None).await;
        assert!(v6.0.is_success(), "{route} from inside (IPv6): {v6:?}");
        let outside = w.call(route, Some("198.51.100.1"), None).await;
        assert!(refused(&outside), "{route} from outside: {outside:?}");
        // Without trusted proxies the client's own X-Forwarded-For is not believed.
        let spoofed = w
            .call(route, Some("198.51.100.1"), Some("203.0.113.7"))
            .await;
        assert!(
            refused(&spoofed),
            "{route} spoofing the header: {spoofed:?}"
        );
        // No address at all fails closed.
        let unknown = w.call(route, None, None).await;
        assert!(refused(&unknown), "{route} from nowhere: {unknown:?}");
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_its_entry_is_the_address() {
    let w = world(1, &["203.0.113.0/24"]).await;
    let proxy = Some("10.0.0.2");
    let inside = w
        .call("entitlements", proxy, Some("198.51.100.1, 203.0.113.7"))
        .await;
    assert!(inside.0.is_success(), "{inside:?}");
    let outside = w
        .call("entitlements", proxy, Some("203.0.113.7, 198.51.100.1"))
        .await;
    assert!(refused(&outside), "{outside:?}");
}

#[tokio::test]
async fn an_empty_allowlist_admits_any_address() {
    let w = world(0, &[]).await;
    let any = w.call("events", Some("192.0.2.44"), None).await;
    assert!(any.0.is_success(), "{any:?}");
}

#[tokio::test]
async fn a_policy_change_reaches_ingest_within_the_key_cache_ttl() {
    let w = world(0, &[]).await;
    assert!(
        w.call("entitlements", Some("192.0.2.44"), None)
            .await
            .0
            .is_success()
    );
    set_policy(&w.store, &["203.0.113.0/24"]).await;
    // The key and its policy are cached: no store read per request, so the old policy
    // holds until the cache's TTL (10 s) runs out...
    w.clock.advance(TimeDelta::seconds(5));
    assert!(
        w.call("entitlements", Some("192.0.2.44"), None)
            .await
            .0
            .is_success()
    );
    // ...and not a moment past it.
    w.clock.advance(TimeDelta::seconds(6));
    assert!(refused(
        &w.call("entitlements", Some("192.0.2.44"), None).await
    ));
}
