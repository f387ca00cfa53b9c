//! The tenant records other crates' tests seed their stores with (ingest's router tests,
//! the usage API's): an owner, orgs, projects and API keys, all created 2026-01-01; and the
//! first page of a ledger as any store answers it (the SQLite adapter's unit tests and the
//! conformance suite). Test support only: compiled for core's tests and, behind the
//! `test-support` feature, for other crates' tests.

// Test support: an id that does not parse is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, TimeZone, Utc};

use crate::ids::{ApiKeyId, OrgId, ProjectId, UserId};
use crate::period::Month;
use crate::plan::PlanId;
use crate::ports::{LedgerPage, LedgerPageQuery, UsageStore};
use crate::tenant::{ApiKey, KeyScope, Org, Project, User};

/// 2026-01-01T00:00:00Z: when every fixture was created.
pub fn created() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

/// The user `usr_owner` (`owner@example.com`), who owns every org [`org`] builds.
pub fn owner() -> User {
    User {
        id: UserId::parse("usr_owner").unwrap(),
        email: "owner@example.com".into(),
        created_at: created(),
    }
}

/// The org `id` on `plan`, named `id`, its slug `id` with `-` for `_`, owned by [`owner`].
pub fn org(id: &str, plan: PlanId) -> Org {
    Org {
        id: OrgId::parse(id).unwrap(),
        name: id.into(),
        slug: id.replace('_', "-"),
        plan,
        owner_id: owner().id,
        created_at: created(),
        deleted_at: None,
    }
}

/// The project `id` of `org_id`, named `id`, its slug `id` with `-` for `_`.
pub fn project(id: &str, org_id: &str) -> Project {
    Project {
        id: ProjectId::parse(id).unwrap(),
        org_id: OrgId::parse(org_id).unwrap(),
        name: id.into(),
        slug: id.replace('_', "-"),
        created_at: created(),
        archived_at: None,
    }
}

/// The key `id` of `org_id` whose secret is `secret` (also its name), with `scopes`, never
/// expiring, revoked or used.
pub fn api_key(id: &str, org_id: &str, secret: &str, scopes: &[KeyScope]) -> ApiKey {
    ApiKey {
        name: secret.into(),
        scopes: scopes.to_vec(),
        ..ApiKey::new(
            ApiKeyId::parse(id).unwrap(),
            OrgId::parse(org_id).unwrap(),
            secret,
            created(),
        )
    }
}

/// The first page of `org`'s ledger of `month`, at most `limit` events.
pub async fn first_ledger_page<S: UsageStore + ?Sized>(
    s: &S,
    org: &OrgId,
    month: Month,
    limit: usize,
) -> LedgerPage {
    s.ledger_page(&LedgerPageQuery::new(org, month, None, limit))
        .await
        .unwrap()
}
