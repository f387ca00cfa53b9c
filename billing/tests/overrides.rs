//! Per-org price overrides through month close and the upcoming invoice, worked by hand.
//!
//! An org on the built-in pro plan ($99.00 a month, 20 % off usage; api_calls: 1,000,000
//! included, then $0.50 per 1,000 calls). In June 2026 the operator gives it a contract for
//! July and August (`start 2026-07`, `end 2026-09`, exclusive): 2,000,000 calls included
//! and $0.40 per 1,000 above. Catalogue version 1 (the built-in text, stored) is in force
//! from August, so August's lines say `1` where June's and July's say `builtin`.
//!
//! | month | calls | included | billable | list | amount (−20 %) | total (+ $99) |
//! |---|---|---|---|---|---|---|
//! | June (no override) | 1,500,000 | 1,000,000 | 500,000 = 500 × 0.50 | 250.00 | 200.00 | 299.00 |
//! | July (both) | 2,500,000 | 2,000,000 | 500,000 = 500 × 0.40 | 200.00 | 160.00 | 259.00 |
//! | August (both) | 1,800,000 | 2,000,000 | 0 | 0.00 | 0.00 | 99.00 |
//! | September so far (ended) | 1,200,000 | 1,000,000 | 200,000 = 200 × 0.50 | 100.00 | 80.00 | 179.00 |
//!
//! September is previewed on 2026-09-16T00:00:00Z, 15 of 30 days gone, so calls project ×2:
//! 2,400,000 − 1,000,000 = 1,400 × 0.50 = 700.00, −20 % = 560.00, projected total 659.00.
//! Without the override August would have cost 99 + (800 × 0.50 × 0.8) = 419.00.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{close_one, month, ts};

use rust_decimal::Decimal;
use serde_json::Map;
use tally_billing::{Catalogue, UsageReport};
use tally_core::catalogue::BUILTIN_JSON;
use tally_core::overrides::{OverrideChange, OverrideId, PriceOverride, apply_overrides};
use tally_core::ports::{
    CatalogueStore, CatalogueVersion, OverrideStore, ProjectStore, ReportStore, UsageStore,
    catalogue_digest,
};
use tally_core::pricing::Pricing;
use tally_core::report::MonthUsage;
use tally_core::tenant::Project;
use tally_core::upcoming::upcoming_invoice_priced;
use tally_core::{
    Aggregation, Event, EventId, MeterName, Money, OrgId, PlanId, ProjectId, Quantity,
};
use tally_store::MemoryStore;

fn api_calls() -> MeterName {
    MeterName::parse("api_calls").unwrap()
}

async fn pro_org(store: &MemoryStore) -> (OrgId, ProjectId) {
    let org = common::pro_org(store, "contract@example.com", "Contract").await;
    let project = Project {
        id: ProjectId::from_random([3; 16]),
        org_id: org.clone(),
        name: "Web".into(),
        slug: "web".into(),
        created_at: ts("2026-01-01T00:00:00Z"),
        archived_at: None,
    };
    store.create_project(&project).await.unwrap();
    (org, project.id)
}

async fn calls(store: &MemoryStore, org: &OrgId, project: &ProjectId, id: &str, q: u64, at: &str) {
    let event = Event {
        org_id: org.clone(),
        id: EventId::parse(id).unwrap(),
        project_id: project.clone(),
        meter: api_calls(),
        aggregation: Aggregation::Sum,
        quantity: Quantity::parse(&q.to_string()).unwrap(),
        timestamp: ts(at),
        properties: Map::new(),
    };
    assert_eq!(store.apply_batch(&[event]).await.unwrap().applied(), 1);
}

fn contract(org: &OrgId, n: u8, change: OverrideChange) -> PriceOverride {
    PriceOverride {
        id: OverrideId::from_random([n; 8]),
        org_id: org.clone(),
        plan: PlanId::Pro,
        change,
        start: month("2026-07"),
        end: Some(month("2026-09")),
        reason: Some("contract 2026-117".into()),
        created_by: "cli".into(),
        created_at: ts("2026-06-10T12:00:00Z") + chrono::Duration::seconds(i64::from(n)),
    }
}

async fn close(store: &MemoryStore, now: &str, period: &str) -> UsageReport {
    close_one(store, &Catalogue::builtin().unwrap(), now, period).await
}

/// (list amount, amount, catalogue version, override ids) of the api_calls line, and the
/// report's total.
fn api_line(r: &UsageReport) -> (String, String, Option<String>, Vec<String>, String) {
    let l = r.lines.iter().find(|l| l.meter == api_calls()).unwrap();
    assert_eq!(l.plan, Some(PlanId::Pro));
    (
        l.list_amount.to_string(),
        l.amount.to_string(),
        l.catalogue_version.clone(),
        l.overrides.iter().map(ToString::to_string).collect(),
        r.total.to_string(),
    )
}

/// Asserts `r`'s api_calls line and total as [`api_line`] gives them.
fn assert_api_line(r: &UsageReport, want: (&str, &str, Option<&str>, &[String], &str)) {
    let (list, amount, version, overrides, total) = api_line(r);
    let got = (
        list.as_str(),
        amount.as_str(),
        version.as_deref(),
        overrides.as_slice(),
        total.as_str(),
    );
    assert_eq!(got, want);
}

#[tokio::test]
async fn an_override_for_july_and_august_prices_both_closed_months_and_not_september() {
    let store = MemoryStore::new();
    let (org, project) = pro_org(&store).await;
    let included = contract(
        &org,
        1,
        OverrideChange::Included {
            meter: api_calls(),
            quantity: Decimal::from(2_000_000),
        },
    );
    let price = contract(
        &org,
        2,
        OverrideChange::Price {
            meter: api_calls(),
            pricing: Pricing::PerUnit {
                unit_price: "0.40".parse().unwrap(),
            },
        },
    );
    assert!(store.put_override(&included).await.unwrap());
    assert!(store.put_override(&price).await.unwrap());
    // Version 1 (the built-in prices, stored) is in force from August.
    assert!(
        store
            .put_catalogue_version(&CatalogueVersion {
                version: 1,
                effective_from: month("2026-08"),
                body: BUILTIN_JSON.to_owned(),
                digest: catalogue_digest(BUILTIN_JSON),
                applied_by: "cli".into(),
                applied_at: ts("2026-06-10T12:00:00Z"),
            })
            .await
            .unwrap()
    );
    let both = vec![included.id.to_string(), price.id.to_string()];

    for (id, n, at) in [
        ("evt_june", 1_500_000, "2026-06-20T00:00:00Z"),
        ("evt_july", 2_500_000, "2026-07-20T00:00:00Z"),
        ("evt_aug", 1_800_000, "2026-08-20T00:00:00Z"),
        ("evt_sep", 1_200_000, "2026-09-10T00:00:00Z"),
    ] {
        calls(&store, &org, &project, id, n, at).await;
    }

    let june = close(&store, "2026-07-02T00:00:00Z", "2026-06").await;
    assert_api_line(&june, ("250.00", "200.00", Some("builtin"), &[], "299.00"));
    assert!(june.overrides.is_empty());

    let july = close(&store, "2026-08-02T00:00:00Z", "2026-07").await;
    assert_api_line(
        &july,
        ("200.00", "160.00", Some("builtin"), &both, "259.00"),
    );
    assert_eq!(july.overrides, vec![included.id.clone(), price.id.clone()]);
    // The other lines are at list price and say so.
    let compute = july
        .lines
        .iter()
        .find(|l| l.meter.as_str() == "compute_minutes")
        .unwrap();
    assert!(compute.overrides.is_empty());
    assert_eq!(july.check(), Ok(()));

    let august = close(&store, "2026-09-02T00:00:00Z", "2026-08").await;
    assert_api_line(&august, ("0.00", "0.00", Some("1"), &both, "99.00"));
    assert_eq!(august.catalogue_version.as_deref(), Some("1"));

    // The preview of September, as `GET /v1/orgs/{id}/invoices/upcoming` builds it: the
    // override has ended, so list price again.
    let now = ts("2026-09-16T00:00:00Z");
    let catalogue = Catalogue::builtin().unwrap();
    let usage = MonthUsage::from_counters(
        store.stored_counters(&org, month("2026-09")).await.unwrap(),
        month("2026-09"),
    )
    .unwrap();
    let overrides = store.list_overrides(&org).await.unwrap();
    let priced = apply_overrides(
        catalogue.plan(PlanId::Pro),
        "1",
        &overrides,
        month("2026-09"),
    )
    .unwrap();
    let preview =
        upcoming_invoice_priced(&org, &priced, &catalogue.meter_catalogue(), &usage, now).unwrap();
    let line = preview
        .lines
        .iter()
        .find(|l| l.meter == "api_calls")
        .unwrap();
    assert_eq!(
        (line.amount.as_str(), line.projected_amount.as_str()),
        ("80.00", "560.00")
    );
    assert!(line.overrides.is_empty());
    assert_eq!(
        (preview.total.as_str(), preview.projected_total.as_str()),
        ("179.00", "659.00")
    );

    // A later override reaching back into July (the CLI refuses it; here it is planted
    // straight in the store) does not re-price the closed month: its stored report stands.
    let late = PriceOverride {
        start: month("2026-07"),
        end: None,
        created_at: ts("2026-09-16T00:00:00Z"),
        ..contract(
            &org,
            3,
            OverrideChange::MonthlyFee {
                amount: Money::new(Decimal::ZERO),
            },
        )
    };
    assert!(store.put_override(&late).await.unwrap());
    let again = close(&store, "2026-09-16T00:00:00Z", "2026-07").await;
    assert_eq!(again, july);
    assert_eq!(again.total.to_string(), "259.00");
    let stored = store
        .get_report(&org, month("2026-07"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<UsageReport>(&stored.body).unwrap(),
        july
    );
}

/// A report stored by the previous release (no plan, version or override fields on its
/// lines) still reads, with the new fields empty.
#[test]
fn reports_from_the_previous_release_still_read() {
    let catalogue = Catalogue::builtin().unwrap();
    let mut usage = MonthUsage::default();
    usage.meters.insert(api_calls(), Decimal::from(5));
    let report = catalogue
        .price_month(
            OrgId::from_random([9; 16]),
            month("2026-05"),
            PlanId::Pro,
            &usage,
        )
        .unwrap();
    let mut json = serde_json::to_value(&report).unwrap();
    for line in json["lines"].as_array_mut().unwrap() {
        let line = line.as_object_mut().unwrap();
        assert!(line.remove("plan").is_some());
        line.remove("catalogue_version");
        line.remove("overrides");
    }
    let old: UsageReport = serde_json::from_value(json).unwrap();
    assert!(
        old.lines
            .iter()
            .all(|l| l.plan.is_none() && l.catalogue_version.is_none() && l.overrides.is_empty())
    );
    assert_eq!(old.catalogue_version, None);
}
