//! The world the security-policy and session tests share: two orgs on an in-memory store
//! (`org_a` owned by `usr_own` with an admin, a member and a viewer; `org_b` owned by
//! `usr_bown`, who is in no other org), the time helpers, and user tokens as `tally token
//! create` mints them.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use axum::http::StatusCode;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use tally_api::jwt::{JwtConfig, TokenFacts};
use tally_core::ids::{OrgId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::{MemberStore, OrgStore, UserStore};
use tally_core::tenant::{Membership, Org, Role, User};
use tally_store::MemoryStore;

/// An RFC 3339 instant.
pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

/// An answer's status and JSON body (`null` when the body is not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub json: Value,
}

/// A store holding the two orgs and their five users.
pub async fn two_orgs() -> MemoryStore {
    let store = MemoryStore::new();
    let at = t("2026-01-01T00:00:00Z");
    for id in ["usr_own", "usr_adm", "usr_mem", "usr_view", "usr_bown"] {
        store
            .ensure_user(&User {
                id: user(id),
                email: format!("{id}@example.com"),
                created_at: at,
            })
            .await
            .unwrap();
    }
    for (org, owner) in [("org_a", "usr_own"), ("org_b", "usr_bown")] {
        store
            .create_org(&Org {
                id: OrgId::parse(org).unwrap(),
                name: org.into(),
                slug: org.replace('_', "-"),
                plan: PlanId::Pro,
                owner_id: user(owner),
                created_at: at,
                deleted_at: None,
            })
            .await
            .unwrap();
    }
    for (id, role) in [
        ("usr_adm", Role::Admin),
        ("usr_mem", Role::Member),
        ("usr_view", Role::Viewer),
    ] {
        store
            .add_member(&Membership {
                org_id: OrgId::parse("org_a").unwrap(),
                user_id: user(id),
                role,
                created_at: at,
            })
            .await
            .unwrap();
    }
    store
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
