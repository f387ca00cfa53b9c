use super::*;
use crate::catalogue_as_written::{plan_limits, quantity as raw_quantity};
use serde_json::Value;
use std::str::FromStr;

#[test]
fn the_builtin_catalogue_loads() {
    let c = Catalogue::builtin().unwrap();
    assert_eq!(c.plans().len(), 4);
    assert_eq!(builtin_catalogue(), &c);
}

/// The limits ingest and the API enforce (`Plan::builtin`, which ingest's configuration
/// falls back to, and `Catalogue::core_plans`, which a composition root hands it) are
/// the catalogue file's, read here straight from the JSON.
#[test]
fn enforced_limits_are_the_catalogue_files() {
    let file: Value = serde_json::from_str(BUILTIN_JSON).unwrap();
    let loaded = Catalogue::builtin().unwrap().core_plans();
    for id in PlanId::ALL {
        let raw = &file["plans"][id.as_str()];
        let want = plan_limits(BUILTIN_JSON, id);
        assert_eq!(Plan::builtin(id).limits, want, "{id}");
        assert_eq!(loaded[&id].limits, want, "{id}");
        assert_eq!(
            Plan::builtin(id).monthly_fee.amount(),
            raw_quantity(&raw["monthly_fee"]),
            "{id}"
        );
    }
    // And the design's numbers, so a bad edit of the file is caught here too.
    let calls = MeterName::parse("api_calls").unwrap();
    let free = Plan::builtin(PlanId::Free);
    assert!(free.limits.hard_usage_limits);
    assert_eq!(free.meter_limit(&calls), Some(Decimal::from(10_000)));
    // Every meter of the free plan is capped: a hard-limited plan with one unlimited
    // meter is unlimited for whoever meters that.
    for meter in MeterCatalogue::default().meters() {
        assert!(free.meter_limit(&meter.name).is_some(), "{}", meter.name);
    }
    assert_eq!(
        free.meter_limit(&MeterName::parse("bandwidth_bytes").unwrap()),
        Some(Decimal::from(1u64 << 30))
    );
    assert_eq!(
        Plan::builtin(PlanId::Pro).limits.meters.len(),
        3,
        "bandwidth has no allowance"
    );
}

#[test]
fn the_default_meter_catalogue_is_the_files() {
    let file: Value = serde_json::from_str(BUILTIN_JSON).unwrap();
    let meters = MeterCatalogue::default();
    let names: Vec<&str> = file["meters"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(meters.names(), names);
    for m in meters.meters() {
        let raw = &file["meters"][m.name.as_str()];
        assert_eq!(m.unit, raw["unit"].as_str().unwrap());
        assert_eq!(
            m.default_quantity,
            raw.get("default_quantity").map(raw_quantity)
        );
    }
}

#[test]
fn quantities_with_byte_units_are_exact() {
    assert_eq!(
        parse_quantity("10 GiB", true).unwrap(),
        Decimal::from(10_737_418_240_i64)
    );
    assert_eq!(
        parse_quantity("1GB", true).unwrap(),
        Decimal::from(1_000_000_000)
    );
    assert_eq!(parse_quantity("0.5 KiB", true).unwrap(), Decimal::from(512));
    assert!(parse_quantity("1 GiB", false).is_err());
    assert!(parse_quantity("1 parsec", true).is_err());
    assert!(parse_quantity("1e3", false).is_err());
    assert!(parse_quantity("", false).is_err());
}

#[test]
fn powers_of_ten() {
    for ok in ["1", "10", "1000", "1000000000"] {
        assert!(is_power_of_ten(Decimal::from_str(ok).unwrap()), "{ok}");
    }
    for bad in ["0", "0.1", "2", "1024", "1073741824", "110", "-10"] {
        assert!(!is_power_of_ten(Decimal::from_str(bad).unwrap()), "{bad}");
    }
}

/// The built-in catalogue plus a `storage_gb` meter (`meter` merged over a
/// time_weighted_sum meter priced per GB-hour), priced by every plan with `entries`
/// merged over `{}` per plan id.
fn with_storage_gb(meter: Value, entries: &[(&str, Value)]) -> String {
    let mut file: Value = serde_json::from_str(BUILTIN_JSON).unwrap();
    let mut m = serde_json::json!({
        "unit": "GB", "aggregation": "time_weighted_sum", "value": "properties.gb",
        "price_unit": "GB-hour", "price_unit_size": 1,
        "list_price": {"model": "per_unit", "unit_price": "0.0001"}
    });
    for (k, v) in meter.as_object().unwrap() {
        m[k] = v.clone();
    }
    file["meters"]["storage_gb"] = m;
    for id in ["free", "starter", "pro", "enterprise"] {
        let entry = entries
            .iter()
            .find(|(p, _)| *p == id)
            .map_or(serde_json::json!({}), |(_, v)| v.clone());
        file["plans"][id]["meters"]["storage_gb"] = entry;
    }
    file.to_string()
}

fn problem_paths(text: &str) -> Vec<String> {
    match Catalogue::from_json(text, "test") {
        Err(CatalogueError::Invalid { problems, .. }) => {
            problems.into_iter().map(|p| p.path).collect()
        }
        other => panic!("not refused as invalid: {other:?}"),
    }
}

/// A time_weighted_sum meter parses with its value path, and an allowance on a plan
/// without hard limits (billed as overage at month close).
#[test]
fn a_time_weighted_sum_meter_parses() {
    let text = with_storage_gb(
        serde_json::json!({}),
        &[("pro", serde_json::json!({"included": 1000}))],
    );
    let c = Catalogue::from_json(&text, "test").unwrap();
    let m = c.meter(&MeterName::parse("storage_gb").unwrap()).unwrap();
    assert_eq!(m.aggregation, Aggregation::TimeWeightedSum);
    assert_eq!(m.value, ValueSource::parse("properties.gb").unwrap());
    assert_eq!(
        c.plan(PlanId::Pro).meters[&m.name].included,
        Some(Decimal::from(1000))
    );
    assert_eq!(
        c.meter_catalogue().get("storage_gb").unwrap().aggregation,
        Aggregation::TimeWeightedSum
    );
}

/// Dimensions, a default quantity and a `property` are refused on the meter, each naming
/// its field; a hard limit (an `included` on a plan with `hard_usage_limits`: free) is
/// refused naming the plan's entry, and leaving `included` out there is accepted.
#[test]
fn a_time_weighted_sum_meter_refuses_dimensions_defaults_and_hard_limits() {
    let dims =
        serde_json::json!({"dimensions": [{"name": "region", "property": "properties.region"}]});
    assert_eq!(
        problem_paths(&with_storage_gb(dims, &[])),
        ["meters.storage_gb.dimensions"]
    );
    let guess = serde_json::json!({"value": "quantity", "default_quantity": 1});
    assert_eq!(
        problem_paths(&with_storage_gb(guess, &[])),
        ["meters.storage_gb.default_quantity"]
    );
    let prop = serde_json::json!({"property": "user_id"});
    assert_eq!(
        problem_paths(&with_storage_gb(prop, &[])),
        ["meters.storage_gb.property"]
    );
    let hard = [("free", serde_json::json!({"included": 10}))];
    let text = with_storage_gb(serde_json::json!({}), &hard);
    assert_eq!(
        problem_paths(&text),
        ["plans.free.meters.storage_gb.included"]
    );
    let Err(CatalogueError::Invalid { problems, .. }) = Catalogue::from_json(&text, "test") else {
        panic!("accepted");
    };
    assert!(problems[0].message.contains("hard limit"), "{problems:?}");
    // No allowance on the hard plan: no limit, accepted; the limits ingest enforces have
    // no entry for the meter.
    let c = Catalogue::from_json(&with_storage_gb(serde_json::json!({}), &[]), "test").unwrap();
    let gb = MeterName::parse("storage_gb").unwrap();
    assert!(!c.plan(PlanId::Free).limits().meters.contains_key(&gb));
}
