//! The world the security-policy and session tests share: two orgs on an in-memory store
//! (`org_a` owned by `usr_own` with an admin, a member and a viewer; `org_b` owned by
//! `usr_bown`, who is in no other org), the time helpers, and user tokens as `tally token
//! create` mints them; the API state on such a store, and one way to send a request and
//! read its answer.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{StatusCode, header, request};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use tally_api::ApiState;
use tally_api::jwt::{JwtConfig, TokenFacts};
use tally_core::MeterCatalogue;
use tally_core::ids::{OrgId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::{FixedClock, MemberStore, OrgStore, UserStore};
use tally_core::tenant::{Membership, Org, Role, User};
use tally_store::MemoryStore;
use tower::ServiceExt;

/// An RFC 3339 instant.
pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

/// An answer's status and JSON body (`null` when the body is not JSON), and the body as
/// text.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub json: Value,
    pub text: String,
}

impl Answer {
    /// The message of a refused request's error body (`error.message`); panics when the
    /// body has none.
    pub fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap()
    }
}

/// Sends `req` (its method, URI and any headers already set) to `app` with `bearer` as its
/// bearer token, `body` as a JSON body, and `from` as the client's address (the peer the
/// server sees); answers what came back.
pub async fn send(
    app: &Router,
    mut req: request::Builder,
    bearer: Option<&str>,
    from: Option<&str>,
    body: Option<String>,
) -> Answer {
    if let Some(b) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
    }
    let mut req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b)),
        None => req.body(Body::empty()),
    }
    .unwrap();
    if let Some(ip) = from {
        let addr: SocketAddr = format!("{ip}:50000").parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(addr));
    }
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// A store holding the two orgs and their five users.
pub async fn two_orgs() -> MemoryStore {
    let store = MemoryStore::new();
    let at = t("2026-01-01T00:00:00Z");
    for id in ["usr_own", "usr_adm", "usr_mem", "usr_view", "usr_bown"] {
        add_user(&store, id, &format!("{id}@example.com"), at).await;
    }
    for (org, owner) in [("org_a", "usr_own"), ("org_b", "usr_bown")] {
        let slug = org.replace('_', "-");
        add_org(&store, org, org, &slug, PlanId::Pro, owner, at).await;
    }
    for (id, role) in [
        ("usr_adm", Role::Admin),
        ("usr_mem", Role::Member),
        ("usr_view", Role::Viewer),
    ] {
        add_member(&store, "org_a", id, role, at).await;
    }
    store
}

/// Stores the user `id` with `email`, created at `at`.
pub async fn add_user(store: &MemoryStore, id: &str, email: &str, at: DateTime<Utc>) {
    store
        .ensure_user(&User {
            id: user(id),
            email: email.into(),
            created_at: at,
        })
        .await
        .unwrap();
}

/// Stores the org `id` named `name` (slug `slug`) on `plan`, owned by the user `owner`,
/// created at `at`.
pub async fn add_org(
    store: &MemoryStore,
    id: &str,
    name: &str,
    slug: &str,
    plan: PlanId,
    owner: &str,
    at: DateTime<Utc>,
) {
    store
        .create_org(&Org {
            id: OrgId::parse(id).unwrap(),
            name: name.into(),
            slug: slug.into(),
            plan,
            owner_id: user(owner),
            created_at: at,
            deleted_at: None,
        })
        .await
        .unwrap();
}

/// Stores the membership of the user `id` in `org` with `role`, since `at`.
pub async fn add_member(store: &MemoryStore, org: &str, id: &str, role: Role, at: DateTime<Utc>) {
    store
        .add_member(&Membership {
            org_id: OrgId::parse(org).unwrap(),
            user_id: user(id),
            role,
            created_at: at,
        })
        .await
        .unwrap();
}

/// A plain user token (no session) for `who`, signed in with `amr`, valid for an hour
/// from `now`.
pub fn user_token(jwt: &JwtConfig, who: &str, amr: &[&str], now: DateTime<Utc>) -> String {
    let facts = TokenFacts {
        amr: amr.iter().map(|s| (*s).to_owned()).collect(),
        session: None,
    };
    jwt.mint_with(&user(who), now, TimeDelta::hours(1), &facts)
        .unwrap()
}

/// The security-policy and session tests' world: one server process (`app`) on the
/// [`two_orgs`] store, a clock at their `NOW`, and the HS256 config that signs their user
/// tokens. Each test file adds its own methods.
pub struct World {
    pub app: Router,
    pub store: MemoryStore,
    pub clock: Arc<FixedClock>,
    pub jwt: JwtConfig,
}

impl World {
    /// The two orgs, the clock at `now` (RFC 3339), tokens signed with `secret`.
    pub async fn new(now: &str, secret: &[u8]) -> World {
        let store = two_orgs().await;
        let clock = Arc::new(FixedClock::at(t(now)));
        let jwt = JwtConfig::hs256(secret).unwrap();
        let app = tally_api::router(state(&store, &clock, &jwt));
        World {
            app,
            store,
            clock,
            jwt,
        }
    }

    /// Another server process on the same store, with a session cache of its own.
    pub fn other_process(&self) -> Router {
        tally_api::router(state(&self.store, &self.clock, &self.jwt))
    }
}

/// An API state on `store` (its tenants and its usage), with the built-in meters, `clock`
/// and `jwt`.
pub fn state(store: &MemoryStore, clock: &Arc<FixedClock>, jwt: &JwtConfig) -> ApiState {
    let shared = Arc::new(store.clone());
    ApiState::new(
        shared.clone(),
        shared,
        Arc::new(MeterCatalogue::default()),
        clock.clone(),
    )
    .with_jwt(jwt.clone())
}
