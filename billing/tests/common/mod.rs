//! What several billing integration tests share: literal parsers and a pro org made the
//! way the tenant routes make one, in the in-memory store.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use tally_billing::{Catalogue, ClosePorts, CloseRequest, NoProgress, UsageReport, close_month};
use tally_core::ports::{FixedClock, OrgStore, UserStore};
use tally_core::tenant::{Org, User};
use tally_core::{Month, OrgId, PlanId, UserId};
use tally_store::MemoryStore;

/// Parses an RFC 3339 time (test literals only).
pub fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Parses a month (`2026-03`; test literals only).
pub fn month(s: &str) -> Month {
    Month::parse(s).unwrap()
}

/// Makes an org on the built-in pro plan called `name` (slug: `name` lowercased), owned by
/// a new user `email`, both created 2026-01-01 with fixed ids (user `[1; 16]`, org
/// `[2; 16]`): the org's id.
pub async fn pro_org(store: &MemoryStore, email: &str, name: &str) -> OrgId {
    let owner = store
        .ensure_user(&User {
            id: UserId::from_random([1; 16]),
            email: email.into(),
            created_at: ts("2026-01-01T00:00:00Z"),
        })
        .await
        .unwrap();
    let org = Org {
        id: OrgId::from_random([2; 16]),
        name: name.into(),
        slug: name.to_lowercase(),
        plan: PlanId::Pro,
        owner_id: owner.id,
        created_at: ts("2026-01-01T00:00:00Z"),
        deleted_at: None,
    };
    store.create_org(&org).await.unwrap();
    org.id
}

/// Closes `period` at `now` with `catalogue`, for a store holding one billable org: its
/// report (asserting there is exactly one).
pub async fn close_one(
    store: &MemoryStore,
    catalogue: &Catalogue,
    now: &str,
    period: &str,
) -> UsageReport {
    let clock = FixedClock::at(ts(now));
    let out = close_month(
        ClosePorts::of(store, &clock),
        catalogue,
        &CloseRequest::new(month(period)),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(out.reports.len(), 1);
    out.reports.into_iter().next().unwrap()
}
