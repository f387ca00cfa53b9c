//! Stored catalogue versions for the tests of the processes that pick them up while they
//! run (`tally serve`'s refresh, the Lambda functions' `tally_lambda::catalogue`
//! re-read).

use chrono::{DateTime, Utc};
use tally_core::Month;
use tally_core::catalogue::BUILTIN_JSON;
use tally_core::ports::{CatalogueVersion, catalogue_digest};

/// The built-in catalogue plus a `tokens` meter (the sum of `properties.tokens`, priced on
/// every plan at list price), stored as version `n` effective from `from` (`YYYY-MM`),
/// applied by `cli` at `applied_at`. A reader knows it is in force when it knows `tokens`.
///
/// # Panics
///
/// On a `from` that is not `YYYY-MM` (a test's own constant).
pub fn version_with_tokens(n: u32, from: &str, applied_at: DateTime<Utc>) -> CatalogueVersion {
    let mut v: serde_json::Value = serde_json::from_str(BUILTIN_JSON)
        .unwrap_or_else(|e| panic!("the built-in catalogue: {e}"));
    v["meters"]["tokens"] = serde_json::json!({
        "unit": "tokens", "aggregation": "sum", "value": "properties.tokens",
        "price_unit": "token", "price_unit_size": 1,
        "list_price": { "model": "per_unit", "unit_price": "0.01" }
    });
    for plan in ["free", "starter", "pro", "enterprise"] {
        v["plans"][plan]["meters"]["tokens"] = serde_json::json!({});
    }
    let body = v.to_string();
    CatalogueVersion {
        version: n,
        effective_from: Month::parse(from).unwrap_or_else(|e| panic!("{from:?}: {e}")),
        digest: catalogue_digest(&body),
        body,
        applied_by: "cli".into(),
        applied_at,
    }
}
