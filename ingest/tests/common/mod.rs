//! What the ingest router tests share: reading a `POST /v1/events` answer's rejections, and
//! the instants, orgs, projects and keys their stores are seeded with.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use serde_json::Value;
use tally_core::ids::{ApiKeyId, OrgId, ProjectId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::UserStore;
use tally_core::tenant::{ApiKey, KeyHash, KeyScope, Org, Project, User};
use tally_store::MemoryStore;

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
    ApiKey {
        id: ApiKeyId::parse(&format!("key_{}", &secret[secret.len() - 16..])).unwrap(),
        org_id: org(org_id),
        name: secret.into(),
        hash: KeyHash::of_secret(secret),
        display_prefix: secret.chars().take(12).collect(),
        scopes: scopes.to_vec(),
        created_at: t("2026-01-01T00:00:00Z"),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
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
