//! What the dashboard's router tests share: the org they sign in to, and the failing-store
//! seam.

#![allow(dead_code, clippy::unwrap_used)]

pub mod failing_store;

use chrono::{DateTime, Utc};
use tally_core::ids::{OrgId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::{OrgStore, UserStore};
use tally_core::tenant::{Org, User};
use tally_store::MemoryStore;

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
