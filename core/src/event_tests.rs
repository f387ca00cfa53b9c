use super::*;

fn ctx_now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn validate(json: &str) -> Result<Event, EventError> {
    validate_in(json, &MeterCatalogue::default())
}

/// Validates `json` for `org_abc` at [`ctx_now`] against `cat`.
fn validate_in(json: &str, cat: &MeterCatalogue) -> Result<Event, EventError> {
    let org = OrgId::parse("org_abc").unwrap();
    Event::validate(
        json,
        &ValidationContext {
            org_id: &org,
            catalogue: cat,
            now: ctx_now(),
            other_month: None,
        },
    )
}

fn field_of(json: &str) -> (ErrorCode, String) {
    let e = validate(json).unwrap_err();
    (e.code, e.field)
}

/// Validates against a catalogue with one meter, `llm_tokens`, that sums
/// `properties.usage.tokens`.
fn validate_tokens(json: &str) -> Result<Event, EventError> {
    let cat = MeterCatalogue::new([Meter {
        name: MeterName::parse("llm_tokens").unwrap(),
        unit: "tokens".into(),
        aggregation: Aggregation::Sum,
        default_quantity: None,
        value: ValueSource::parse("properties.usage.tokens").unwrap(),
        dimensions: Default::default(),
    }]);
    validate_in(json, &cat)
}

fn tokens_event(properties: &str) -> String {
    format!(
        r#"{{"id":"evt_1","project_id":"prj_1","meter":"llm_tokens","timestamp":"2026-11-26T10:00:00Z","properties":{properties}}}"#
    )
}

#[test]
fn a_meter_reads_its_amount_from_a_property_path_exactly() {
    let e = validate_tokens(&tokens_event(
        r#"{"model":"gpt-4","usage":{"tokens":1234}}"#,
    ))
    .unwrap();
    assert_eq!(e.quantity.value(), Decimal::from(1234));
    // A decimal string, and a fraction with more digits than a float holds, stay exact.
    let e = validate_tokens(&tokens_event(r#"{"usage":{"tokens":"2.5"}}"#)).unwrap();
    assert_eq!(e.quantity.value().to_string(), "2.5");
    let e = validate_tokens(&tokens_event(r#"{"usage":{"tokens":123456789.123456789}}"#)).unwrap();
    assert_eq!(e.quantity.value().to_string(), "123456789.123456789");
    // The properties travel as sent.
    assert!(e.properties.contains_key("usage"));
}

#[test]
fn a_missing_or_bad_property_value_is_refused_naming_the_path() {
    let path = "properties.usage.tokens";
    let cases: &[(&str, ErrorCode)] = &[
        (r#"{"model":"gpt-4"}"#, ErrorCode::InvalidProperties),
        (r#"{"usage":{}}"#, ErrorCode::InvalidProperties),
        (r#"{"usage":{"tokens":null}}"#, ErrorCode::InvalidProperties),
        (r#"{"usage":7}"#, ErrorCode::InvalidProperties),
        (r#"{"usage":{"tokens":"many"}}"#, ErrorCode::InvalidQuantity),
        (r#"{"usage":{"tokens":true}}"#, ErrorCode::InvalidQuantity),
        (
            r#"{"usage":{"tokens":{"n":1}}}"#,
            ErrorCode::InvalidQuantity,
        ),
        (r#"{"usage":{"tokens":-1}}"#, ErrorCode::InvalidQuantity),
        (r#"{"usage":{"tokens":1e40}}"#, ErrorCode::InvalidQuantity),
        (
            r#"{"usage":{"tokens":1234567890123456789}}"#,
            ErrorCode::InvalidQuantity,
        ),
        (
            r#"{"usage":{"tokens":0.0000000001}}"#,
            ErrorCode::InvalidQuantity,
        ),
    ];
    for (props, code) in cases {
        let e = validate_tokens(&tokens_event(props)).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (*code, path), "{props}");
        assert!(e.message.contains(path), "{props}: {}", e.message);
    }
    // No properties at all.
    let no_props = r#"{"id":"evt_1","project_id":"prj_1","meter":"llm_tokens","timestamp":"2026-11-26T10:00:00Z"}"#;
    let e = validate_tokens(no_props).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::InvalidProperties, path)
    );
    // A quantity as well as the property: which one counts would be a guess.
    let both = no_props.replace(
        r#""timestamp""#,
        r#""quantity":5,"properties":{"usage":{"tokens":1}},"timestamp""#,
    );
    let e = validate_tokens(&both).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::InvalidQuantity, "quantity")
    );
}

const GOOD: &str = r#"{"id":"evt_1","project_id":"prj_1","meter":"compute_minutes","quantity":"2.50","timestamp":"2026-11-26T10:00:00Z","properties":{"route":"/x"}}"#;

#[test]
fn a_good_event_validates_and_keeps_exact_quantity() {
    let e = validate(GOOD).unwrap();
    assert_eq!(e.quantity.value().to_string(), "2.5");
    assert_eq!(e.org_id.as_str(), "org_abc");
    assert_eq!(e.properties["route"], "/x");
}

#[test]
fn quantities_never_pass_through_floats() {
    // 0.1 + 0.2 style values and 18-digit integers survive exactly.
    let e = validate(&GOOD.replace(r#""2.50""#, "123456789012345678")).unwrap();
    assert_eq!(e.quantity.value().to_string(), "123456789012345678");
    let e = validate(&GOOD.replace(r#""2.50""#, "0.1")).unwrap();
    assert_eq!(e.quantity.value().to_string(), "0.1");
    let e = validate(&GOOD.replace(r#""2.50""#, "1.5e3")).unwrap();
    assert_eq!(e.quantity.value().to_string(), "1500");
}

#[test]
fn every_error_names_its_field() {
    let cases: &[(&str, &str, ErrorCode, &str)] = &[
        (
            r#""quantity":"2.50""#,
            r#""quantity":-1"#,
            ErrorCode::InvalidQuantity,
            "quantity",
        ),
        (
            r#""quantity":"2.50""#,
            r#""quantity":"abc""#,
            ErrorCode::InvalidQuantity,
            "quantity",
        ),
        (
            r#""quantity":"2.50""#,
            r#""quantity":"NaN""#,
            ErrorCode::InvalidQuantity,
            "quantity",
        ),
        (
            r#""quantity":"2.50""#,
            r#""quantity":true"#,
            ErrorCode::InvalidQuantity,
            "quantity",
        ),
        (
            r#""quantity":"2.50""#,
            r#""quantity":1234567890123456789"#,
            ErrorCode::InvalidQuantity,
            "quantity",
        ),
        (
            r#""quantity":"2.50""#,
            r#""quantity":1e40"#,
            ErrorCode::InvalidQuantity,
            "quantity",
        ),
        (
            r#""timestamp":"2026-11-26T10:00:00Z""#,
            r#""timestamp":"yesterday""#,
            ErrorCode::InvalidTimestamp,
            "timestamp",
        ),
        (
            r#""timestamp":"2026-11-26T10:00:00Z""#,
            r#""timestamp":"2026-11-26T12:06:00Z""#,
            ErrorCode::TimestampInFuture,
            "timestamp",
        ),
        (
            r#""meter":"compute_minutes""#,
            r#""meter":"gpu_hours""#,
            ErrorCode::UnknownMeter,
            "meter",
        ),
        (
            r#""project_id":"prj_1""#,
            r#""project_id":"org_1""#,
            ErrorCode::UnknownProject,
            "project_id",
        ),
        (r#""id":"evt_1","#, "", ErrorCode::MissingField, "id"),
        (
            r#""id":"evt_1""#,
            r#""id":12"#,
            ErrorCode::InvalidType,
            "id",
        ),
        (
            r#""properties":{"route":"/x"}"#,
            r#""properties":[1]"#,
            ErrorCode::InvalidProperties,
            "properties",
        ),
        (
            r#""properties":{"route":"/x"}"#,
            r#""org_id":"org_x""#,
            ErrorCode::UnknownField,
            "org_id",
        ),
    ];
    for (from, to, code, field) in cases {
        let json = GOOD.replace(from, to);
        assert_ne!(json, GOOD, "{from}");
        assert_eq!(field_of(&json), (*code, field.to_string()), "{json}");
    }
    let long = GOOD.replace("evt_1", &"x".repeat(129));
    assert_eq!(field_of(&long), (ErrorCode::InvalidId, "id".into()));
    assert_eq!(field_of("[1,2]"), (ErrorCode::MalformedEvent, "".into()));
}

#[test]
fn api_calls_default_to_one_but_other_meters_need_a_quantity() {
    let e = validate(
        r#"{"id":"a","project_id":"prj_1","meter":"api_calls","timestamp":"2026-11-26T10:00:00Z"}"#,
    )
    .unwrap();
    assert_eq!(e.quantity, Quantity::ONE);
    let err = validate(r#"{"id":"a","project_id":"prj_1","meter":"compute_minutes","timestamp":"2026-11-26T10:00:00Z"}"#).unwrap_err();
    assert_eq!(
        (err.code, err.field.as_str()),
        (ErrorCode::MissingField, "quantity")
    );
}

#[test]
fn id_hint_survives_invalid_events() {
    assert_eq!(
        Event::id_hint(r#"{"id":"e9","quantity":-1}"#).as_deref(),
        Some("e9")
    );
    assert_eq!(Event::id_hint("nonsense"), None);
}

#[test]
fn events_round_trip_through_json() {
    let e = validate(GOOD).unwrap();
    let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
    assert_eq!(back, e);
}

#[test]
fn json_number_grammar() {
    for ok in ["0", "10", "-0", "1.5", "1e3", "1E-2", "0.0001"] {
        assert!(is_json_number(ok), "{ok}");
    }
    for bad in [
        "", "01", "+1", "1.", ".5", "1e", "0x10", "NaN", "Infinity", "1 ", "--1",
    ] {
        assert!(!is_json_number(bad), "{bad}");
    }
}

fn quantity_error(q: &str) -> String {
    let e = validate(&GOOD.replace(r#""2.50""#, q)).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::InvalidQuantity, "quantity"),
        "{q}"
    );
    e.message
}

#[test]
fn quantity_bounds_count_significant_digits_and_say_which_rule() {
    // Leading and trailing zeros are not significant.
    for ok in [
        "1e17",
        "\"100000000000000000\"",
        "999999999999999999",
        "0.000000001",
        "\"123456789.123456789\"",
        "1.5e-8",
        "0",
    ] {
        assert!(validate(&GOOD.replace(r#""2.50""#, ok)).is_ok(), "{ok}");
    }
    // One significant digit, but not below 10^18: the message says the range.
    assert!(quantity_error("1e18").contains("less than 10^18"));
    assert!(quantity_error("1e40").contains("too large"));
    // Too precise: the message says decimal places, not digits or range.
    assert!(quantity_error("1e-30").contains("decimal places"));
    assert!(quantity_error("\"0.0000000001\"").contains("decimal places"));
    // Nineteen significant digits within range and scale.
    assert!(quantity_error("\"1234567890.123456789\"").contains("significant digits"));
}

#[test]
fn sums_of_quantities_at_the_bounds_stay_exact() {
    // The documented promise: with at most 9 decimal places, every sum below 10^19
    // is exact. Ten of the largest quantities with the finest fraction, summed.
    let max =
        Quantity::parse("999999999.999999999").unwrap().value() * Decimal::from(1_000_000_000u64);
    assert_eq!(max.to_string(), "999999999999999999.000000000");
    let fine = Quantity::parse("0.000000001").unwrap().value();
    let mut sum = Decimal::ZERO;
    for _ in 0..10 {
        sum = sum.checked_add(max).unwrap().checked_add(fine).unwrap();
    }
    assert_eq!(sum.to_string(), "9999999999999999990.000000010");
}

#[test]
fn a_key_given_twice_is_refused_by_name() {
    let twice = GOOD.replace(
        r#""quantity":"2.50""#,
        r#""quantity":"1","quantity":"1000""#,
    );
    let e = validate(&twice).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::DuplicateKey, "quantity")
    );
    assert!(
        e.message.contains("\"quantity\" is given twice"),
        "{}",
        e.message
    );
    let nested = GOOD.replace(r#"{"route":"/x"}"#, r#"{"a":{"b":1,"b":2}}"#);
    assert_eq!(
        field_of(&nested),
        (ErrorCode::DuplicateKey, "properties.a.b".into())
    );
}

fn with_properties(props: &str) -> String {
    GOOD.replace(r#"{"route":"/x"}"#, props)
}

#[test]
fn properties_nest_at_most_eight_levels() {
    let nest = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    assert!(validate(&with_properties(&format!(r#"{{"a":{}}}"#, nest(7)))).is_ok());
    for n in [8, 125, 300] {
        let e = validate(&with_properties(&format!(r#"{{"a":{}}}"#, nest(n)))).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::InvalidProperties, "properties"),
            "{n}"
        );
        assert!(e.message.contains("nest at most 8"), "{}", e.message);
    }
    // Any other field that deep is named as itself.
    let e = validate(&GOOD.replace(r#""evt_1""#, &nest(20))).unwrap_err();
    assert_eq!((e.code, e.field.as_str()), (ErrorCode::InvalidType, "id"));
}

#[test]
fn properties_are_measured_as_stored_not_as_sent() {
    // 800 numbers written 1e15: about 3.9 KiB as sent, far more as stored.
    let numbers = vec!["1e15"; 800].join(",");
    let props = format!(r#"{{"n":[{numbers}]}}"#);
    assert!(props.len() <= MAX_PROPERTIES_BYTES, "{}", props.len());
    let e = validate(&with_properties(&props)).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::InvalidProperties, "properties")
    );
    assert!(e.message.contains("as Tally stores it"), "{}", e.message);
    // White space does not count against the bound.
    let spaced = format!(r#"{{"s":"{}"{}}}"#, "x".repeat(4000), " ".repeat(3000));
    assert!(validate(&with_properties(&spaced)).is_ok());
}

#[test]
fn check_is_what_validate_ends_with() {
    let e = validate(GOOD).unwrap();
    assert_eq!(e.check(), Ok(()));
    let mut deep = e.clone();
    let mut v = Value::Null;
    for _ in 0..8 {
        v = Value::Array(vec![v]);
    }
    deep.properties.insert("p".into(), v);
    assert_eq!(deep.check().unwrap_err().code, ErrorCode::InvalidProperties);
    let mut big = e.clone();
    big.properties
        .insert("p".into(), Value::String("x".repeat(MAX_PROPERTIES_BYTES)));
    assert_eq!(big.check().unwrap_err().code, ErrorCode::InvalidProperties);
}

mod accepted_means_decodable {
    //! Whatever [`Event::validate`] accepts crosses the queue envelope and passes the
    //! aggregator's [`Event::check`] unchanged: generated up to every bound.
    use super::*;
    use crate::envelope;
    use proptest::prelude::*;

    fn quantity() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..=999_999_999_999_999_999).prop_map(|n| n.to_string()),
            (0u64..=999_999_999_999_999_999, 0u32..=9).prop_map(|(n, scale)| {
                Decimal::from_i128_with_scale(i128::from(n % 10u64.pow(18 - scale.min(17))), scale)
                    .to_string()
            }),
            (1u64..=9, 0i32..=17).prop_map(|(d, e)| format!("{d}e{e}")),
            (1u64..=9, 1i32..=9).prop_map(|(d, e)| format!("\"{d}e-{e}\"")),
        ]
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            "[\\PC]{0,40}".prop_map(Value::String),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(7, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn properties() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[\\PC]{1,20}", value(), 0..=MAX_PROPERTIES_KEYS)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn every_accepted_event_decodes_and_passes_the_aggregator(
            id in "[!-~]{1,128}",
            q in quantity(),
            props in properties(),
        ) {
            let json = serde_json::json!({
                "id": id,
                "project_id": "prj_1",
                "meter": "compute_minutes",
                "timestamp": "2026-11-26T10:00:00Z",
                "properties": props,
            })
            .to_string();
            // Splice the quantity in as text, exactly as a client may send it.
            let json = format!(r#"{{"quantity":{q},{}"#, &json[1..]);
            if let Ok(event) = validate(&json) {
                let packed = envelope::pack(std::slice::from_ref(&event), 256 * 1024);
                prop_assert!(packed.failed.is_empty(), "{:?}", packed.failed);
                let (events, unreadable) =
                    envelope::decode_each_str(&packed.messages[0].body).unwrap();
                prop_assert!(unreadable.is_empty(), "{:?}", unreadable);
                prop_assert_eq!(&events, &vec![event.clone()]);
                prop_assert_eq!(events[0].check(), Ok(()));
            }
        }
    }
}

/// A late event (stamped last month) is validated with last month's meters when the context
/// carries them: a meter removed this month still takes it, a meter added this month
/// refuses it naming the field and the month, and this month's events use this month's.
#[test]
fn a_late_event_is_validated_with_the_meters_of_its_month() {
    let org = OrgId::parse("org_abc").unwrap();
    let meter = |name: &str| Meter {
        name: MeterName::parse(name).unwrap(),
        unit: "units".into(),
        aggregation: Aggregation::Sum,
        default_quantity: None,
        value: ValueSource::Quantity,
        dimensions: Default::default(),
    };
    // October had `old_meter`; November (now) replaced it with `new_meter`.
    let october = MeterCatalogue::new([meter("old_meter")]);
    let november = MeterCatalogue::new([meter("new_meter")]);
    let ctx = ValidationContext {
        org_id: &org,
        catalogue: &november,
        now: ctx_now(),
        other_month: Some((Month::parse("2026-10").unwrap(), &october)),
    };
    let event = |meter: &str, at: &str| {
        format!(
            r#"{{"id":"e1","project_id":"prj_1","meter":"{meter}","quantity":1,"timestamp":"{at}"}}"#
        )
    };
    let late = "2026-10-31T23:00:00Z";
    let now = "2026-11-26T10:00:00Z";
    assert!(Event::validate(&event("old_meter", late), &ctx).is_ok());
    assert!(Event::validate(&event("new_meter", now), &ctx).is_ok());
    let e = Event::validate(&event("new_meter", late), &ctx).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str()),
        (ErrorCode::UnknownMeter, "meter")
    );
    assert!(
        e.message.contains("for an event of 2026-10") && e.message.contains("old_meter"),
        "{}",
        e.message
    );
    let e = Event::validate(&event("old_meter", now), &ctx).unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownMeter);
    assert!(!e.message.contains("2026-10"), "{}", e.message);
    // Without last month's meters (the same version in force then), this month's apply.
    let same = ValidationContext {
        other_month: None,
        ..ctx
    };
    assert!(Event::validate(&event("new_meter", late), &same).is_ok());
}
