//! Fixtures the Lambda handler tests share.

use chrono::{DateTime, Utc};
use tally_core::ids::OrgId;
use tally_core::plan::PlanId;
use tally_core::ports::{OrgStore, UserStore};
use tally_tests::conformance::fixtures::create_owned_org;

/// The org "Acme" on `plan`, created at `at` with its owner, in any store.
pub async fn acme<S: UserStore + OrgStore>(store: &S, plan: PlanId, at: DateTime<Utc>) -> OrgId {
    create_owned_org(store, (7, 9), "ada@example.com", "Acme", plan, at)
        .await
        .id
}
