//! Fixtures the Lambda handler tests share.

use chrono::{DateTime, Utc};
use tally_core::ids::{OrgId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::{OrgStore, UserStore};
use tally_core::tenant::{Org, User};
use tally_store::sqlite::SqliteStore;

/// The org "Acme" on `plan`, created at `at` with its owner.
pub async fn acme(store: &SqliteStore, plan: PlanId, at: DateTime<Utc>) -> OrgId {
    let owner = store
        .ensure_user(&User {
            id: UserId::from_random([7; 16]),
            email: "ada@example.com".into(),
            created_at: at,
        })
        .await
        .unwrap();
    let org = Org {
        id: OrgId::from_random([9; 16]),
        name: "Acme".into(),
        slug: "acme".into(),
        plan,
        owner_id: owner.id,
        created_at: at,
        deleted_at: None,
    };
    store.create_org(&org).await.unwrap();
    org.id
}
