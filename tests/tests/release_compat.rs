//! A store file written by the previous release opens, reads and keeps counting in this one.
//!
//! `tests/fixtures/release-schema7/tally.db` was written by Tally at commit 4ae3ea0 (SQLite
//! schema 7), through its own CLI and `tally serve`: `org create` (Fixture Co, starter),
//! `project create`, `key create`, then five events posted to `POST /v1/events` and
//! applied by its aggregator, and a clean shutdown (the WAL then checkpointed into the
//! file). Every refactoring of the store must keep reading it: orgs, projects, keys by the
//! hash of their secret, the audit trail, counters, the ledger, and exactly-once on top.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::event::{Event, Quantity};
use tally_core::ids::{EventId, MeterName, OrgId, ProjectId};
use tally_core::meter::Aggregation;
use tally_core::period::{Granularity, Month};
use tally_core::plan::PlanId;
use tally_core::ports::{
    ApiKeyStore, ApplyOutcome, AuditLog, CounterQuery, LedgerPageQuery, OrgStore, ProjectStore,
    UsageStore,
};
use tally_core::tenant::{AuditQuery, KeyHash};
use tally_store::SqliteStore;

const ORG: &str = "org_7caddfd330a62d5b5539138aa01c4e9a";
const PROJECT: &str = "prj_a8d39fcf41228908470ba30e92ad40f9";
const KEY: &str = "tk_live_c6b935cb0459f3731a581a1c7bb49a9e260314f90f5983b1ef86082f950f35f3";

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A copy of the fixture, opened by this release (the fixture itself stays untouched).
fn open_copy() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.db");
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/release-schema7/tally.db");
    std::fs::copy(&fixture, &path).unwrap();
    let store = SqliteStore::open(&path).unwrap();
    (dir, store)
}

async fn month_total(store: &SqliteStore, meter: &str) -> Vec<Decimal> {
    store
        .counter_series(&CounterQuery {
            org: OrgId::parse(ORG).unwrap(),
            project: None,
            meter: MeterName::parse(meter).unwrap(),
            granularity: Granularity::Month,
            from: t("2026-12-01T00:00:00Z"),
            to: t("2027-01-01T00:00:00Z"),
        })
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.value)
        .collect()
}

#[tokio::test]
async fn the_previous_release_s_file_reads_and_counts_on() {
    let (_dir, store) = open_copy();
    let org_id = OrgId::parse(ORG).unwrap();

    let org = store.get_org(&org_id).await.unwrap().unwrap();
    assert_eq!(
        (org.name.as_str(), org.slug.as_str(), org.plan),
        ("Fixture Co", "fixture-co", PlanId::Starter)
    );
    let projects = store.list_projects(&org_id).await.unwrap();
    assert_eq!(projects.len(), 1);
    assert_eq!(projects[0].id.as_str(), PROJECT);
    assert_eq!(projects[0].slug, "web");
    let key = store
        .find_api_key(&KeyHash::of_secret(KEY))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key.org_id, org_id);
    assert!(key.revoked_at.is_none());
    let audit = store
        .list_audit(&AuditQuery {
            org: org_id.clone(),
            from: None,
            to: None,
            actor: None,
            action: None,
            resource: None,
            limit: 50,
            cursor: None,
            now: t("2026-12-05T12:00:00Z"),
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.records.iter().map(|r| r.action.as_str()).collect();
    for action in ["org.create", "project.create", "key.create"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }

    // What the five events implied: 2.5 + 4 compute-minutes, 1 API call, max(1000, 700)
    // bytes stored.
    assert_eq!(
        month_total(&store, "compute_minutes").await,
        [Decimal::new(65, 1)]
    );
    assert_eq!(month_total(&store, "api_calls").await, [Decimal::ONE]);
    assert_eq!(
        month_total(&store, "storage_bytes").await,
        [Decimal::from(1000)]
    );
    let december = Month::parse("2026-12").unwrap();
    let ledger = store
        .ledger_page(&LedgerPageQuery::new(&org_id, december, None, 100))
        .await
        .unwrap();
    assert_eq!(ledger.events.len(), 5);
    let drift = tally_aggregator::reconcile::reconcile(&store, &org_id, december, december.start())
        .await
        .unwrap();
    assert!(drift.is_empty(), "{drift:?}");

    // Exactly once carries on: a resent event is a duplicate, a new one counts.
    let event = |id: &str, quantity: i64| Event {
        id: EventId::parse(id).unwrap(),
        org_id: org_id.clone(),
        project_id: ProjectId::parse(PROJECT).unwrap(),
        meter: MeterName::parse("compute_minutes").unwrap(),
        aggregation: Aggregation::Sum,
        quantity: Quantity::new(Decimal::from(quantity)).unwrap(),
        timestamp: t("2026-12-05T08:00:00Z"),
        properties: serde_json::Map::new(),
    };
    let report = store
        .apply_batch(&[event("evt_1", 100), event("evt_6", 10)])
        .await
        .unwrap();
    assert_eq!(
        report.outcomes,
        [ApplyOutcome::Duplicate, ApplyOutcome::Applied]
    );
    assert_eq!(
        month_total(&store, "compute_minutes").await,
        [Decimal::new(165, 1)]
    );
    let drift = tally_aggregator::reconcile::reconcile(&store, &org_id, december, december.start())
        .await
        .unwrap();
    assert!(drift.is_empty(), "{drift:?}");
}
