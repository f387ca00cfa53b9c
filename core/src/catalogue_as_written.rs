//! The catalogue file's numbers read as plain JSON, without the catalogue's parser: what
//! the tests that check a parsed catalogue against the file (core's own, and ingest's
//! limits) compare with, so a parser that misread the file is caught rather than agreed
//! with. Test support only: compiled for core's tests and, behind the `test-support`
//! feature, for other crates' tests.

// Test support: a file that does not read as expected is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;

use crate::{MeterName, PlanId, PlanLimits};

/// A quantity as the built-in file writes it: an integer, or a string with an optional
/// binary byte unit (all the built-in file uses). Panics on anything else.
pub fn quantity(v: &Value) -> Decimal {
    match v {
        Value::Number(n) => Decimal::from(n.as_u64().unwrap()),
        Value::String(s) => match s.strip_suffix(" GiB") {
            Some(gib) => Decimal::from_str(gib).unwrap() * Decimal::from(1_u64 << 30),
            None => Decimal::from_str(s).unwrap(),
        },
        other => panic!("not a quantity: {other}"),
    }
}

/// Plan `id`'s limits as the catalogue JSON `text` states them.
pub fn plan_limits(text: &str, id: PlanId) -> PlanLimits {
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
