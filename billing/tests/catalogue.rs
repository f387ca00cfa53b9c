//! The catalogue: the built-in file loads, is what core's built-in plans and meter catalogue
//! are, loads from a path, and bad files are refused with errors that name the plan, meter
//! and field (or the line, for a file that is not the catalogue's JSON shape).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rust_decimal::Decimal;
use tally_billing::{BUILTIN_JSON, Catalogue, CatalogueError, Pricing};
use tally_core::{MeterCatalogue, MeterName, Plan, PlanId};

#[test]
fn builtin_catalogue_agrees_with_core_plans() {
    let c = Catalogue::builtin().unwrap();
    for id in PlanId::ALL {
        assert_eq!(c.core_plan(id), Plan::builtin(id), "{id}");
        assert_eq!(Plan::from(c.plan(id)), Plan::builtin(id), "{id}");
        // And back: core's plan priced by the catalogue is the catalogue's plan.
        assert_eq!(&c.priced(&Plan::builtin(id)).unwrap(), c.plan(id), "{id}");
    }
    assert_eq!(c.meter_catalogue(), MeterCatalogue::default());
    let plans = c.core_plans();
    assert_eq!(plans.keys().copied().collect::<Vec<_>>(), PlanId::ALL);
    for (id, plan) in plans {
        assert_eq!(plan, Plan::builtin(id), "{id}");
    }
}

#[test]
fn builtin_catalogue_has_the_design_prices() {
    let c = Catalogue::builtin().unwrap();
    let unit_price = |plan: PlanId, meter: &str| match &c.plan(plan).meters
        [&MeterName::parse(meter).unwrap()]
        .pricing
    {
        Pricing::PerUnit { unit_price } => *unit_price,
        other => panic!("{other:?}"),
    };
    for plan in [PlanId::Starter, PlanId::Pro, PlanId::Enterprise] {
        assert_eq!(unit_price(plan, "api_calls"), Decimal::new(50, 2));
        assert_eq!(unit_price(plan, "compute_minutes"), Decimal::new(10, 2));
        assert_eq!(unit_price(plan, "storage_bytes"), Decimal::new(10, 2));
        assert_eq!(unit_price(plan, "bandwidth_bytes"), Decimal::new(8, 2));
    }
    for meter in [
        "api_calls",
        "compute_minutes",
        "storage_bytes",
        "bandwidth_bytes",
    ] {
        assert_eq!(unit_price(PlanId::Free, meter), Decimal::ZERO);
    }
    let discount = |p| c.plan(p).discount_percent;
    assert_eq!(discount(PlanId::Free), Decimal::ZERO);
    assert_eq!(discount(PlanId::Starter), Decimal::from(10));
    assert_eq!(discount(PlanId::Pro), Decimal::from(20));
    assert_eq!(discount(PlanId::Enterprise), Decimal::from(40));
    let size = |m: &str| {
        c.meter(&MeterName::parse(m).unwrap())
            .unwrap()
            .price_unit_size
    };
    assert_eq!(size("api_calls"), Decimal::from(1000));
    assert_eq!(size("storage_bytes"), Decimal::from(1_000_000_000));
    assert_eq!(size("bandwidth_bytes"), Decimal::from(1_000_000_000));
    assert_eq!(c.plan(PlanId::Starter).monthly_fee.to_string(), "29.00");
}

#[test]
fn loads_from_a_path_and_reports_a_missing_file() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join("tally-billing-catalogue.json");
    std::fs::write(&path, BUILTIN_JSON).unwrap();
    assert_eq!(
        Catalogue::load(&path).unwrap(),
        Catalogue::builtin().unwrap()
    );
    assert_eq!(
        Catalogue::load_or_builtin(Some(&path)).unwrap(),
        Catalogue::load_or_builtin(None).unwrap()
    );
    let missing = dir.join("no-such-catalogue.json");
    let err = Catalogue::load(&missing).unwrap_err();
    assert!(matches!(err, CatalogueError::Read { .. }), "{err}");
    assert!(err.to_string().contains("no-such-catalogue.json"), "{err}");
}

/// The built-in file with `old` replaced by `new` (which must occur exactly once).
fn edited(old: &str, new: &str) -> String {
    assert_eq!(
        BUILTIN_JSON.matches(old).count(),
        1,
        "{old:?} must occur once in catalogue.json"
    );
    BUILTIN_JSON.replacen(old, new, 1)
}

/// Loads `text` and returns its problems as "path: message" strings (panics if it loads or
/// fails to parse).
fn problems(text: &str) -> Vec<String> {
    match Catalogue::from_json(text, "test.json") {
        Err(e @ CatalogueError::Invalid { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("plan catalogue test.json is invalid: "),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "one line: {msg}");
            e.problems().iter().map(|p| p.to_string()).collect()
        }
        Err(e) => panic!("expected Invalid, got {e}"),
        Ok(_) => panic!("expected Invalid, it loaded"),
    }
}

/// Asserts exactly one problem, at `path`, whose message contains `needle`.
fn assert_problem(text: &str, path: &str, needle: &str) {
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(&format!("{path}: ")),
        "expected {path}, got {found:?}"
    );
    assert!(found[0].contains(needle), "{found:?} lacks {needle:?}");
}

fn parse_error(text: &str) -> (usize, String) {
    match Catalogue::from_json(text, "test.json") {
        Err(CatalogueError::Parse { line, message, .. }) => (line, message),
        Err(e) => panic!("expected Parse, got {e}"),
        Ok(_) => panic!("expected Parse, it loaded"),
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn a_float_price_is_refused_with_its_line() {
    let text = edited(
        r#""list_price": { "model": "per_unit", "unit_price": "0.08" }"#,
        r#""list_price": { "model": "per_unit", "unit_price": 0.08 }"#,
    );
    let (line, message) = parse_error(&text);
    assert_eq!(line, line_of(&text, r#""unit_price": 0.08"#));
    assert!(message.contains("floating point"), "{message}");
    assert!(message.contains("string"), "{message}");
}

#[test]
fn a_misspelt_field_is_refused_with_its_line() {
    let text = edited(r#""discount_percent": "20""#, r#""discount_pct": "20""#);
    let (line, message) = parse_error(&text);
    assert_eq!(line, line_of(&text, "discount_pct"));
    assert!(message.contains("discount_pct"), "{message}");
    let err = Catalogue::from_json(&text, "catalogue.json").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("plan catalogue catalogue.json, line ")
    );
}

/// Pro's `api_calls` entry, which the price tests replace.
const PRO_CALLS: &str = r#""api_calls": { "included": 1000000 }"#;
/// Starter's `compute_minutes` entry, which the price tests replace.
const STARTER_MINUTES: &str = r#""compute_minutes": { "included": 1000 }"#;

/// A price table's tiers ascend, meet without gaps, and only the last is unbounded: each
/// case (the entry replaced, its replacement) is refused at its path, naming the rule.
#[test]
fn tier_tables_must_ascend_be_contiguous_and_end_unbounded() {
    let cases = [
        (
            PRO_CALLS,
            r#""api_calls": { "included": 1000000, "price": { "model": "graduated", "tiers": [
            { "up_to": "100", "unit_price": "0.50" },
            { "up_to": "100", "unit_price": "0.40" },
            { "unit_price": "0.30" } ] } }"#,
            "plans.pro.meters.api_calls.price.tiers[1].up_to",
            "greater than the previous bound 100",
        ),
        (
            PRO_CALLS,
            r#""api_calls": { "included": 1000000, "price": { "model": "graduated", "tiers": [
            { "from": "0", "up_to": "100", "unit_price": "0.50" },
            { "from": "150", "up_to": "200", "unit_price": "0.40" },
            { "from": "200", "unit_price": "0.30" } ] } }"#,
            "plans.pro.meters.api_calls.price.tiers[1].from",
            "previous tier ends at 100",
        ),
        (
            STARTER_MINUTES,
            r#""compute_minutes": { "included": 1000, "price": { "model": "volume", "tiers": [
            { "up_to": "100", "unit_price": "0.10" },
            { "up_to": "200", "unit_price": "0.10" } ] } }"#,
            "plans.starter.meters.compute_minutes.price.tiers[1].up_to",
            "last tier",
        ),
        (
            STARTER_MINUTES,
            r#""compute_minutes": { "included": 1000, "price": { "model": "graduated", "tiers": [
            { "unit_price": "0.10" }, { "unit_price": "0.10" } ] } }"#,
            "plans.starter.meters.compute_minutes.price.tiers[0].up_to",
            "only the last tier may be unbounded",
        ),
    ];
    for (entry, replacement, path, needle) in cases {
        assert_problem(&edited(entry, replacement), path, needle);
    }
}

#[test]
fn a_volume_table_may_not_lower_a_bill() {
    // 1,000 minutes at $0.10 = $100, but 1,000⁺ at $0.05 = $50: refused, with the fix.
    let text = edited(
        STARTER_MINUTES,
        r#""compute_minutes": { "included": 1000, "price": { "model": "volume", "tiers": [
            { "up_to": "1000", "unit_price": "0.10" },
            { "unit_price": "0.05" } ] } }"#,
    );
    assert_problem(
        &text,
        "plans.starter.meters.compute_minutes.price.tiers[1].flat_fee",
        "flat_fee must be at least 50",
    );
    // With the flat fee it asks for, the same table loads.
    let fixed = text.replace(
        r#"{ "unit_price": "0.05" }"#,
        r#"{ "unit_price": "0.05", "flat_fee": "50" }"#,
    );
    Catalogue::from_json(&fixed, "fixed").unwrap();
}

#[test]
fn prices_fees_and_allowances_are_not_negative() {
    assert_problem(
        &edited(r#""unit_price": "0.08""#, r#""unit_price": "-0.08""#),
        "meters.bandwidth_bytes.list_price.unit_price",
        "must not be negative",
    );
    assert_problem(
        &edited(
            STARTER_MINUTES,
            r#""compute_minutes": { "included": "-1" }"#,
        ),
        "plans.starter.meters.compute_minutes.included",
        "must not be negative",
    );
    assert_problem(
        &edited(r#""monthly_fee": "99.00""#, r#""monthly_fee": "-99""#),
        "plans.pro.monthly_fee",
        "must not be negative",
    );
}

#[test]
fn fees_are_whole_cents_and_discounts_a_percentage() {
    assert_problem(
        &edited(r#""monthly_fee": "29.00""#, r#""monthly_fee": "29.001""#),
        "plans.starter.monthly_fee",
        "whole cents",
    );
    assert_problem(
        &edited(
            r#""discount_percent": "40""#,
            r#""discount_percent": "150""#,
        ),
        "plans.enterprise.discount_percent",
        "from 0 to 100",
    );
    assert_problem(
        &edited(
            r#""discount_percent": "40""#,
            r#""discount_percent": "forty""#,
        ),
        "plans.enterprise.discount_percent",
        "not a decimal",
    );
}

#[test]
fn aggregations_are_known() {
    assert_problem(
        &edited(r#""aggregation": "max""#, r#""aggregation": "avg""#),
        "meters.storage_bytes.aggregation",
        "unknown aggregation \"avg\"",
    );
    assert_problem(
        &edited(
            r#""aggregation": "max""#,
            r#""aggregation": "unique_count""#,
        ),
        "meters.storage_bytes.property",
        "required for unique_count",
    );
    assert_problem(
        &edited(
            r#""aggregation": "max""#,
            r#""aggregation": "max", "property": "region""#,
        ),
        "meters.storage_bytes.property",
        "only allowed with",
    );
    // unique_count with its property loads.
    let ok = edited(
        r#""aggregation": "max""#,
        r#""aggregation": "unique_count", "property": "user_id""#,
    );
    Catalogue::from_json(&ok, "ok").unwrap();
}

#[test]
fn a_value_path_is_checked_with_its_aggregation() {
    // compute_minutes is a sum meter with no default quantity; api_calls has one.
    let minutes = r#""unit": "minutes","#;
    let ok = edited(
        minutes,
        r#""unit": "minutes", "value": "properties.usage.minutes","#,
    );
    let c = Catalogue::from_json(&ok, "ok").unwrap();
    let m = c
        .meter(&MeterName::parse("compute_minutes").unwrap())
        .unwrap();
    assert_eq!(m.value.path(), "properties.usage.minutes");
    assert_eq!(m.to_core().value, m.value);
    // Writing the default explicitly is the same as leaving it out.
    let explicit = edited(minutes, r#""unit": "minutes", "value": "quantity","#);
    assert_eq!(
        Catalogue::from_json(&explicit, "x").unwrap(),
        Catalogue::builtin().unwrap()
    );
    // Changing the field a meter reads is a change that live counters refuse.
    let changes = tally_billing::versions::meter_changes(&Catalogue::builtin().unwrap(), &c);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].0.as_str(), "compute_minutes");
    assert!(
        changes[0]
            .1
            .contains("changes its value from quantity to properties.usage.minutes"),
        "{changes:?}"
    );
    assert_problem(
        &edited(minutes, r#""unit": "minutes", "value": "tokens","#),
        "meters.compute_minutes.value",
        "property path like",
    );
    assert_problem(
        &edited(
            minutes,
            r#""unit": "minutes", "value": "properties.a.b.c.d.e","#,
        ),
        "meters.compute_minutes.value",
        "at most 4 keys",
    );
    assert_problem(
        &edited(minutes, r#""unit": "minutes", "value": "properties.a..b","#),
        "meters.compute_minutes.value",
        "each key of a property path",
    );
    // A count reads no amount.
    let count = edited(
        r#""aggregation": "max""#,
        r#""aggregation": "count", "value": "properties.bytes""#,
    );
    assert_problem(&count, "meters.storage_bytes.value", "reads no amount");
    // A default quantity would count a missing property as a guess.
    assert_problem(
        &edited(
            r#""default_quantity": 1,"#,
            r#""default_quantity": 1, "value": "properties.calls","#,
        ),
        "meters.api_calls.default_quantity",
        "refused, never counted as a guess",
    );
}

#[test]
fn units_convert_exactly() {
    assert_problem(
        &edited(
            r#""price_unit": "GB-month","#,
            r#""price_unit": "GiB-month", "price_unit_size": "1 GiB","#,
        )
        .replacen(r#""price_unit_size": "1 GB","#, "", 1),
        "meters.storage_bytes.price_unit_size",
        "power of ten",
    );
    assert_problem(
        &edited(
            STARTER_MINUTES,
            r#""compute_minutes": { "included": "1 GB" }"#,
        ),
        "plans.starter.meters.compute_minutes.included",
        "not a quantity of bytes",
    );
    assert_problem(
        &edited(r#""included": "10 GiB""#, r#""included": "10 GiBs""#),
        "plans.starter.meters.storage_bytes.included",
        "unknown unit",
    );
}

#[test]
fn every_plan_is_defined_once() {
    let found = problems(&edited(r#""pro": {"#, r#""gold": {"#));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("plans.gold: is not a Tally plan"),
        "{found:?}"
    );
    assert!(found[1].starts_with("plans.pro: is missing"), "{found:?}");
}

/// Enterprise's last two meter entries, which these tests change.
const ENTERPRISE_TAIL: &str = "\"storage_bytes\": {},\n        \"bandwidth_bytes\": {}";

#[test]
fn every_plan_prices_every_meter_and_nothing_else() {
    assert_problem(
        &edited(ENTERPRISE_TAIL, r#""storage_bytes": {}"#),
        "plans.enterprise.meters.bandwidth_bytes",
        "every plan prices every meter",
    );
    assert_problem(
        &edited(
            ENTERPRISE_TAIL,
            r#""storage_bytes": {}, "bandwidth_bytes": {}, "egress_bytes": {}"#,
        ),
        "plans.enterprise.meters.egress_bytes",
        "no meter \"egress_bytes\"",
    );
    // Without a list price, every plan that relies on it is named.
    let found = problems(&edited(
        ",\n      \"list_price\": { \"model\": \"per_unit\", \"unit_price\": \"0.08\" }",
        "",
    ));
    assert_eq!(
        found,
        [
            "plans.enterprise.meters.bandwidth_bytes.price: is missing and meters.bandwidth_bytes has no list_price",
            "plans.pro.meters.bandwidth_bytes.price: is missing and meters.bandwidth_bytes has no list_price",
            "plans.starter.meters.bandwidth_bytes.price: is missing and meters.bandwidth_bytes has no list_price",
        ]
    );
}

#[test]
fn price_models_have_their_own_fields() {
    let with = |price: &str| {
        edited(
            PRO_CALLS,
            &format!(r#""api_calls": {{ "included": 1000000, "price": {price} }}"#),
        )
    };
    assert_problem(
        &with(r#"{ "model": "tiered", "unit_price": "1" }"#),
        "plans.pro.meters.api_calls.price.model",
        "unknown model \"tiered\"",
    );
    assert_problem(
        &with(r#"{ "model": "package", "package_size": "0", "package_price": "0.50" }"#),
        "plans.pro.meters.api_calls.price.package_size",
        "greater than zero",
    );
    assert_problem(
        &with(r#"{ "model": "package", "package_price": "0.50" }"#),
        "plans.pro.meters.api_calls.price.package_size",
        "required by model \"package\"",
    );
    assert_problem(
        &with(r#"{ "model": "per_unit", "unit_price": "1", "tiers": [] }"#),
        "plans.pro.meters.api_calls.price.tiers",
        "does not belong to model \"per_unit\"",
    );
    assert_problem(
        &with(r#"{ "model": "graduated", "tiers": [] }"#),
        "plans.pro.meters.api_calls.price.tiers",
        "at least one tier",
    );
    // A package price of $0.50 per started 1,000 calls (1 price unit = 1,000 calls) loads.
    Catalogue::from_json(
        &with(r#"{ "model": "package", "package_size": "1", "package_price": "0.50" }"#),
        "ok",
    )
    .unwrap();
}

#[test]
fn version_currency_and_names_are_checked() {
    let found = problems(&edited(r#""version": 1,"#, r#""version": 2,"#).replacen(
        r#""currency": "usd""#,
        r#""currency": "eur""#,
        1,
    ));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("version: must be 1"), "{found:?}");
    assert!(
        found[1].starts_with("currency: must be \"usd\""),
        "{found:?}"
    );

    let found = problems(&edited("\"compute_minutes\": {\n", "\"Compute\": {\n"));
    assert!(
        found[0].starts_with("meters.Compute: is not a valid meter name"),
        "{found:?}"
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = edited(r#""monthly_fee": "29.00""#, r#""monthly_fee": "29.001""#).replacen(
        r#""aggregation": "max""#,
        r#""aggregation": "avg""#,
        1,
    );
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("meters.storage_bytes.aggregation"));
    assert!(found[1].starts_with("plans.starter.monthly_fee"));
}

#[test]
fn a_number_with_an_exponent_is_refused_like_a_float() {
    let text = edited(r#""default_quantity": 1,"#, r#""default_quantity": 1e0,"#);
    let (line, message) = parse_error(&text);
    assert_eq!(line, line_of(&text, "1e0"));
    assert!(message.contains("floating point"), "{message}");
}

#[test]
fn dimensions_are_checked_with_their_bounds() {
    let minutes = r#""unit": "minutes","#;
    let with = |dims: &str| edited(minutes, &format!(r#""unit": "minutes", {dims}"#));
    let ok = with(
        r#""dimensions": [{ "name": "model", "property": "properties.model" },
                          { "name": "region", "property": "properties.where.region" }],
           "max_series": 250,"#,
    );
    let c = Catalogue::from_json(&ok, "ok").unwrap();
    let m = c
        .meter(&MeterName::parse("compute_minutes").unwrap())
        .unwrap();
    assert_eq!(m.dimensions.names(), ["model", "region"]);
    assert_eq!(
        m.dimensions.keys[1].property.path(),
        "properties.where.region"
    );
    assert_eq!(m.dimensions.max_series, 250);
    assert_eq!(m.to_core().dimensions, m.dimensions);
    // Left out, the bound is the documented default.
    let default = with(r#""dimensions": [{ "name": "model", "property": "properties.model" }],"#);
    let d = Catalogue::from_json(&default, "d").unwrap();
    let dm = d
        .meter(&MeterName::parse("compute_minutes").unwrap())
        .unwrap();
    assert_eq!(
        dm.dimensions.max_series,
        tally_core::dimension::DEFAULT_MAX_SERIES
    );
    // Adding, removing or changing dimensions under live counters is refused.
    let changes = tally_billing::versions::meter_changes(&Catalogue::builtin().unwrap(), &c);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(
        changes[0]
            .1
            .contains("changes its dimensions from [] to [model, region]"),
        "{changes:?}"
    );
    assert_eq!(
        tally_billing::versions::meter_changes(&d, &c)[0].1,
        "changes its dimensions from [model] to [model, region]"
    );
    // A new bound alone is not a change of the counters.
    let wider = with(
        r#""dimensions": [{ "name": "model", "property": "properties.model" },
                          { "name": "region", "property": "properties.where.region" }],
           "max_series": 5000,"#,
    );
    assert!(
        tally_billing::versions::meter_changes(&c, &Catalogue::from_json(&wider, "w").unwrap())
            .is_empty()
    );

    let one = r#"{ "name": "a", "property": "properties.a" }"#;
    let p = "meters.compute_minutes";
    assert_problem(
        &with(&format!(
            r#""dimensions": [{one}, {{ "name": "b", "property": "properties.b" }},
               {{ "name": "c", "property": "properties.c" }},
               {{ "name": "d", "property": "properties.d" }}],"#
        )),
        &format!("{p}.dimensions"),
        "at most 3 dimensions",
    );
    assert_problem(
        &with(r#""dimensions": [{ "name": "Model", "property": "properties.model" }],"#),
        &format!("{p}.dimensions[0].name"),
        "a-z, 0-9 and _",
    );
    assert_problem(
        &with(&format!(r#""dimensions": [{one}, {one}],"#)),
        &format!("{p}.dimensions[1].name"),
        "declared twice",
    );
    assert_problem(
        &with(r#""dimensions": [{ "name": "model", "property": "quantity" }],"#),
        &format!("{p}.dimensions[0].property"),
        "not quantity",
    );
    assert_problem(
        &with(r#""dimensions": [{ "name": "model", "property": "model" }],"#),
        &format!("{p}.dimensions[0].property"),
        "property path like",
    );
    assert_problem(
        &with(&format!(r#""dimensions": [{one}], "max_series": 0,"#)),
        &format!("{p}.max_series"),
        "must be 1 to 10000",
    );
    assert_problem(
        &with(&format!(r#""dimensions": [{one}], "max_series": 10001,"#)),
        &format!("{p}.max_series"),
        "must be 1 to 10000",
    );
    assert_problem(
        &with(r#""max_series": 10,"#),
        &format!("{p}.max_series"),
        "only allowed on a meter with dimensions",
    );
    // unique_count cannot be split (distinct values across series).
    let unique = edited(
        r#""aggregation": "max""#,
        r#""aggregation": "unique_count", "property": "user_id",
           "dimensions": [{ "name": "model", "property": "properties.model" }]"#,
    );
    assert_problem(
        &unique,
        "meters.storage_bytes.dimensions",
        "unique_count meter cannot have dimensions",
    );
    // Nor can a gauge: its total over series would be one series' reading, and billing and
    // hard limits would undercount what is held across them.
    for gauge in ["max", "latest"] {
        let split = edited(
            r#""aggregation": "max""#,
            &format!(
                r#""aggregation": "{gauge}",
                   "dimensions": [{{ "name": "region", "property": "properties.region" }}]"#
            ),
        );
        assert_problem(
            &split,
            "meters.storage_bytes.dimensions",
            &format!("{gauge} meter cannot have dimensions"),
        );
    }
    // A misspelt field inside a dimension is a shape error with its line.
    let (line, message) = parse_error(&with(
        r#""dimensions": [{ "name": "model", "path": "properties.model" }],"#,
    ));
    assert_eq!(line, line_of(BUILTIN_JSON, minutes));
    assert!(message.contains("unknown field `path`"), "{message}");
}
