//! The limits ingest enforces are the catalogue file's: with no plans in its catalogue it
//! falls back to the built-in catalogue (`core/catalogue.json`), and a loaded catalogue's
//! plans handed to ingest as its [`InForce`] catalogue replace them. The file is read here as plain JSON, not through
//! the catalogue's parser, so a parser that misread it would be caught.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;
use tally_core::catalogue::BUILTIN_JSON;
use tally_core::{Catalogue, MeterName, PlanId, PlanLimits};
use tally_ingest::InForce;

/// A quantity as the built-in file writes it: an integer, or a string with an optional
/// `GiB` (all the file uses).
fn quantity(v: &Value) -> Decimal {
    match v {
        Value::Number(n) => Decimal::from(n.as_u64().unwrap()),
        Value::String(s) => match s.strip_suffix(" GiB") {
            Some(gib) => Decimal::from_str(gib).unwrap() * Decimal::from(1_u64 << 30),
            None => Decimal::from_str(s).unwrap(),
        },
        other => panic!("not a quantity: {other}"),
    }
}

/// Plan `id`'s limits as the catalogue text states them.
fn limits_in(text: &str, id: PlanId) -> PlanLimits {
    let file: Value = serde_json::from_str(text).unwrap();
    let plan = &file["plans"][id.as_str()];
    let cap = |field: &str| {
        plan.get(field)
            .map(|v| u32::try_from(v.as_u64().unwrap()).unwrap())
    };
    PlanLimits {
        users: cap("users"),
        projects: cap("projects"),
        meters: plan["meters"]
            .as_object()
            .unwrap()
            .iter()
            .filter_map(|(name, m)| {
                Some((
                    MeterName::parse(name).unwrap(),
                    quantity(m.get("included")?),
                ))
            })
            .collect(),
        hard_usage_limits: plan["hard_usage_limits"].as_bool().unwrap(),
    }
}

#[test]
fn ingest_enforces_the_builtin_catalogue_files_limits() {
    let config = InForce::meters_only(std::sync::Arc::new(Default::default()));
    for id in PlanId::ALL {
        assert_eq!(config.plan(id).limits, limits_in(BUILTIN_JSON, id), "{id}");
    }
    // The file is not empty of limits: free is hard-limited at 10,000 calls.
    let free = config.plan(PlanId::Free);
    assert!(free.limits.hard_usage_limits);
    assert_eq!(
        free.meter_limit(&MeterName::parse("api_calls").unwrap()),
        Some(Decimal::from(10_000))
    );
}

#[test]
fn ingest_enforces_a_loaded_catalogues_limits() {
    let text = BUILTIN_JSON.replacen(r#""included": 10000,"#, r#""included": 500,"#, 1);
    assert_ne!(
        text, BUILTIN_JSON,
        "the free api_calls allowance is in the file"
    );
    let catalogue = Catalogue::from_json(&text, "test").unwrap();
    let config = InForce::new(catalogue.meter_catalogue(), catalogue.core_plans(), None);
    for id in PlanId::ALL {
        assert_eq!(config.plan(id).limits, limits_in(&text, id), "{id}");
    }
    assert_eq!(
        config
            .plan(PlanId::Free)
            .meter_limit(&MeterName::parse("api_calls").unwrap()),
        Some(Decimal::from(500))
    );
}
