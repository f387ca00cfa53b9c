//! The limits ingest enforces are the catalogue file's: with no plans in its catalogue it
//! falls back to the built-in catalogue (`core/catalogue.json`), and a loaded catalogue's
//! plans handed to ingest as its [`InForce`] catalogue replace them. The file is read here as plain JSON, not through
//! the catalogue's parser, so a parser that misread it would be caught.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rust_decimal::Decimal;
use tally_core::catalogue::BUILTIN_JSON;
use tally_core::catalogue_as_written::plan_limits;
use tally_core::{Catalogue, MeterName, PlanId};
use tally_ingest::InForce;

#[test]
fn ingest_enforces_the_builtin_catalogue_files_limits() {
    let config = InForce::meters_only(std::sync::Arc::new(Default::default()));
    for id in PlanId::ALL {
        assert_eq!(
            config.plan(id).limits,
            plan_limits(BUILTIN_JSON, id),
            "{id}"
        );
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
        assert_eq!(config.plan(id).limits, plan_limits(&text, id), "{id}");
    }
    assert_eq!(
        config
            .plan(PlanId::Free)
            .meter_limit(&MeterName::parse("api_calls").unwrap()),
        Some(Decimal::from(500))
    );
}
