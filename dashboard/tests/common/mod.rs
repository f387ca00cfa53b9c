//! What the dashboard's router tests share: the org they sign in to, the failing-store
//! seam, and one way to send a request and read its answer.

#![allow(dead_code, clippy::unwrap_used)]

pub mod failing_store;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tally_api::ApiState;
use tally_api::jwt::JwtConfig;
use tally_core::ids::{OrgId, UserId};
use tally_core::meter::MeterCatalogue;
use tally_core::plan::PlanId;
use tally_core::ports::{FixedClock, OrgStore, TenantStore, UsageStore, UserStore};
use tally_core::tenant::{Org, User};
use tally_store::MemoryStore;
use tower::ServiceExt;

/// A response: its status, headers and body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The header `name`'s value (empty when it has none).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// Every `Set-Cookie`, whole.
    pub fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The `Set-Cookie` of `name`, whole.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.cookies().into_iter().find(|c| c.starts_with(&prefix))
    }

    /// The `Location` header (empty when it has none).
    pub fn location(&self) -> String {
        self.header(header::LOCATION.as_str()).to_owned()
    }
}

/// The API with the dashboard merged in, on `tenants` and `usage` with the built-in meters
/// and the tests' fixed clock, taking user tokens signed with `secret`: the app, and a
/// 10-minute token for `owner`.
pub fn signed_app(
    tenants: Arc<dyn TenantStore>,
    usage: Arc<dyn UsageStore>,
    secret: &[u8],
    owner: &UserId,
) -> (Router, String) {
    let jwt = JwtConfig::hs256(secret).unwrap();
    let token = jwt
        .mint(owner, now(), chrono::Duration::minutes(10))
        .unwrap();
    let state = ApiState::new(
        tenants,
        usage,
        Arc::new(MeterCatalogue::default()),
        Arc::new(FixedClock::at(now())),
    )
    .with_jwt(jwt);
    (tally_dashboard::with_api(state), token)
}

/// The host the tests' requests name, and the dashboard's origin on it.
pub const HOST: &str = "tally.test:8080";
/// The origin a same-site request of the dashboard carries.
pub const ORIGIN: &str = "http://tally.test:8080";

/// Sends `req` to `app` and reads the whole answer.
pub async fn send(app: &Router, req: Request<Body>) -> Answer {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// A GET of `path` with no header at all.
pub fn bare_get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// A GET of `path` carrying only the session cookie `__Host-tally_session=<session>`.
pub fn session_get(path: &str, session: &str) -> Request<Body> {
    Request::get(path)
        .header(header::COOKIE, format!("__Host-tally_session={session}"))
        .body(Body::empty())
        .unwrap()
}

/// The tests' fixed clock.
pub fn now() -> DateTime<Utc> {
    "2026-11-26T12:30:00Z".parse().unwrap()
}

/// Stores `usr_owner` (owner@example.com) and the org `org_a` (Acme, pro) they own.
pub async fn seed_owner(store: &MemoryStore) -> User {
    let owner = store
        .ensure_user(&User {
            id: UserId::parse("usr_owner").unwrap(),
            email: "owner@example.com".into(),
            created_at: now(),
        })
        .await
        .unwrap();
    store
        .create_org(&Org {
            id: OrgId::parse("org_a").unwrap(),
            name: "Acme".into(),
            slug: "acme".into(),
            plan: PlanId::Pro,
            owner_id: owner.id.clone(),
            created_at: now(),
            deleted_at: None,
        })
        .await
        .unwrap();
    owner
}
