//! Publishing catalogue versions (`tally catalogue apply`) against the versions a new one
//! would follow or replace: a meter changed under live counters of the version in force, or
//! under a version already scheduled for the month before the new one starts, is refused
//! with the meter and both versions named; a scheduled version the new one replaces
//! (it starts no later) never runs, so changing its meters is allowed.
//!
//! The clock is 2026-03-10: March is the current month, nothing is closed, and with no
//! version stored the built-in catalogue is in force.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{month, pro_org, ts};

use serde_json::{Map, Value, json};
use tally_billing::Catalogue;
use tally_billing::versions::{PublishPorts, PublishRequest, VersionError, publish};
use tally_core::ports::{CatalogueVersion, UsageStore};
use tally_core::{Aggregation, Event, EventId, MeterName, OrgId, ProjectId, Quantity};
use tally_store::memory::MemoryStore;

const NOW: &str = "2026-03-10T00:00:00Z";

/// The built-in catalogue with a `gpu_hours` meter of `aggregation`, priced on every plan.
fn with_gpu_hours(aggregation: &str) -> String {
    edited(|v| {
        v["meters"]["gpu_hours"] = json!({
            "unit": "hours",
            "aggregation": aggregation,
            "price_unit": "hour",
            "price_unit_size": 1,
            "list_price": { "model": "per_unit", "unit_price": "2.00" }
        });
        for plan in ["free", "starter", "pro", "enterprise"] {
            v["plans"][plan]["meters"]["gpu_hours"] = json!({});
        }
    })
}

/// The built-in catalogue JSON with `edit` applied.
fn edited(edit: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(tally_billing::BUILTIN_JSON).unwrap();
    edit(&mut v);
    serde_json::to_string_pretty(&v).unwrap()
}

/// Publishes `text` from `from` (`None`: next month) at [`NOW`].
async fn apply(
    store: &MemoryStore,
    text: &str,
    from: Option<&str>,
) -> Result<CatalogueVersion, VersionError> {
    let ports = PublishPorts {
        versions: store,
        tenants: store,
        usage: store,
    };
    let request = PublishRequest {
        text,
        origin: "test.json",
        from: from.map(month),
        actor: "cli",
        now: ts(NOW),
    };
    publish(ports, &Catalogue::builtin().unwrap(), &request).await
}

/// An org with `q` compute minutes counted on 2026-03-02.
async fn org_with_minutes(store: &MemoryStore, q: &str) -> OrgId {
    let org = pro_org(store, "ops@example.com", "Acme").await;
    let event = Event {
        org_id: org.clone(),
        id: EventId::parse("m1").unwrap(),
        project_id: ProjectId::from_random([3; 16]),
        meter: MeterName::parse("compute_minutes").unwrap(),
        aggregation: Aggregation::Sum,
        quantity: Quantity::parse(q).unwrap(),
        timestamp: ts("2026-03-02T00:00:00Z"),
        properties: Map::new(),
    };
    assert_eq!(store.apply_batch(&[event]).await.unwrap().applied(), 1);
    org
}

/// Order one: version 1 (scheduled from April) defines `gpu_hours` as a sum; a file from
/// May making it a max would follow it, April's counters (aggregated as sums) still open
/// in May: refused, naming the meter, version 1, its month and the number the new one would
/// have had. From April instead, the new file replaces version 1: allowed.
#[tokio::test]
async fn a_change_to_a_scheduled_version_it_would_follow_is_refused() {
    let store = MemoryStore::new();
    let v1 = apply(&store, &with_gpu_hours("sum"), Some("2026-04"))
        .await
        .unwrap();
    assert_eq!((v1.version, v1.effective_from), (1, month("2026-04")));

    let max = with_gpu_hours("max");
    let err = apply(&store, &max, Some("2026-05")).await.unwrap_err();
    match &err {
        VersionError::ScheduledMeter(m) => {
            assert_eq!(m.meter.as_str(), "gpu_hours");
            assert_eq!((m.old, m.old_from), (1, month("2026-04")));
            assert_eq!(
                (m.new, m.from, m.last),
                (2, month("2026-05"), month("2026-04"))
            );
        }
        other => panic!("expected ScheduledMeter, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("meter gpu_hours changes aggregation from sum to max from version 1")
            && text.contains("new version 2 (from 2026-05)")
            && text.contains("Apply the new version from 2026-04"),
        "{text}"
    );
    // Removing the meter is a change too; a later month than May follows version 1 as well.
    let err = apply(&store, tally_billing::BUILTIN_JSON, Some("2026-07"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("meter gpu_hours is removed from version 1"),
        "{err}"
    );
    assert_eq!(store_versions(&store).await, 1, "nothing stored");

    // From version 1's own month the new file replaces it: version 1 never runs.
    let v2 = apply(&store, &max, Some("2026-04")).await.unwrap();
    assert_eq!((v2.version, v2.effective_from), (2, month("2026-04")));
}

/// Order two: version 1 (scheduled from May) makes `gpu_hours` a max; a file from April
/// making it a sum starts before it and replaces it (the highest number wins every month
/// from its own), so it is allowed; version 1 then never runs. A file from June would follow
/// version 2 (in force from April) and is checked against it.
#[tokio::test]
async fn a_new_version_that_replaces_a_scheduled_one_may_change_its_meters() {
    let store = MemoryStore::new();
    apply(&store, &with_gpu_hours("max"), Some("2026-05"))
        .await
        .unwrap();
    let v2 = apply(&store, &with_gpu_hours("sum"), Some("2026-04"))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let err = apply(&store, &with_gpu_hours("max"), Some("2026-06"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VersionError::ScheduledMeter(m) if (m.old, m.new) == (2, 3)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("from sum to max from version 2"),
        "{err}"
    );
}

/// A change under live counters names the catalogue it changes from (here the built-in
/// one, no version being in force) and the number the new one would have had; a version
/// in force (version 1, from March) is named by its number.
#[tokio::test]
async fn a_change_under_live_counters_names_both_versions() {
    let store = MemoryStore::new();
    let org = org_with_minutes(&store, "10").await;
    let to_max = edited(|v| v["meters"]["compute_minutes"]["aggregation"] = json!("max"));
    let err = apply(&store, &to_max, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "meter compute_minutes changes aggregation from sum to max from the file or \
             built-in catalogue to the new version 1"
        ) && text.contains(org.as_str())
            && text.contains("open period 2026-03"),
        "{text}"
    );
    apply(&store, &with_gpu_hours("sum"), Some("2026-03"))
        .await
        .unwrap();
    let err = apply(&store, &to_max, None).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("from sum to max from version 1 to the new version 2"),
        "{err}"
    );
}

async fn store_versions(store: &MemoryStore) -> usize {
    use tally_core::ports::CatalogueStore;
    store.list_catalogue_versions().await.unwrap().len()
}
