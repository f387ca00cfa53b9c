//! `group_by` and `filter[..]` on `GET /v1/usage`, through [`UsageRequest::parse`] and
//! [`read`] over the memory store (the store primitives they use, `list_series` and a
//! series' `counter_series`, are held to the same answers on SQLite and DynamoDB by the
//! dimensions conformance suite), with every figure worked out by hand.

use std::sync::Arc;

use serde_json::Map;
use tally_core::dimension::{Dimension, Dimensions};
use tally_core::event::{Event, Quantity};
use tally_core::ids::{EventId, ProjectId};
use tally_core::meter::ValueSource;
use tally_core::ports::{NewSeries, SeriesRegistry};
use tally_store::MemoryStore;

use super::*;
use crate::tests::{pairs, t as ts};

fn catalogue() -> MeterCatalogue {
    let mut meters: Vec<Meter> = MeterCatalogue::default().meters().cloned().collect();
    let dim = |name: &str| Dimension {
        name: name.into(),
        property: ValueSource::parse(&format!("properties.{name}")).unwrap(),
    };
    meters.push(Meter {
        name: MeterName::parse("llm_tokens").unwrap(),
        unit: "tokens".into(),
        aggregation: Aggregation::Sum,
        default_quantity: None,
        value: ValueSource::parse("properties.tokens").unwrap(),
        dimensions: Dimensions {
            keys: vec![dim("model"), dim("region")],
            max_series: 10,
        },
    });
    MeterCatalogue::new(meters)
}

/// An org with three series of `llm_tokens` in November 2026, registered as ingest would:
/// gpt-4/eu 100 (Nov 3) + 30 (Nov 20), gpt-4/us 20 (Nov 3), claude/eu 7 (Nov 20).
async fn world() -> (MemoryStore, OrgId) {
    let store = MemoryStore::new();
    let org = OrgId::parse("org_dims").unwrap();
    let project = ProjectId::parse("prj_dims").unwrap();
    let llm = MeterName::parse("llm_tokens").unwrap();
    let rows = [
        ("e1", "gpt-4", "eu", "100", "2026-11-03T10:00:00Z"),
        ("e2", "gpt-4", "us", "20", "2026-11-03T11:00:00Z"),
        ("e3", "claude", "eu", "7", "2026-11-20T10:00:00Z"),
        ("e4", "gpt-4", "eu", "30", "2026-11-20T10:00:00Z"),
    ];
    let mut events = Vec::new();
    for (id, model, region, q, at) in rows {
        let series = llm.series(&[("model", model), ("region", region)]);
        let month = Month::of(ts(at));
        store
            .register_series(&NewSeries::new(&org, month, &series, 10))
            .await
            .unwrap();
        events.push(Event {
            org_id: org.clone(),
            id: EventId::parse(id).unwrap(),
            project_id: project.clone(),
            meter: series,
            aggregation: Aggregation::Sum,
            quantity: Quantity::parse(q).unwrap(),
            timestamp: ts(at),
            properties: Map::new(),
        });
    }
    store.apply_batch(&events).await.unwrap();
    (store, org)
}

fn params(extra: &[(&str, &str)]) -> UsageParams {
    let mut p = UsageParams {
        meter: Some("llm_tokens".into()),
        granularity: Some("month".into()),
        from: Some("2026-11-01".into()),
        to: Some("2026-12-01".into()),
        ..UsageParams::default()
    };
    for (k, v) in extra {
        if *k == "group_by" {
            p.group_by = Some((*v).to_owned());
        } else {
            p.other.insert((*k).to_owned(), (*v).to_owned());
        }
    }
    p
}

/// (value, month total) of each group, and the total.
async fn answer(extra: &[(&str, &str)]) -> (Vec<(String, String)>, Vec<String>) {
    let (store, org) = world().await;
    let req =
        UsageRequest::parse(&params(extra), &catalogue(), ts("2026-12-02T00:00:00Z")).unwrap();
    let registry: Arc<dyn SeriesRegistry> = Arc::new(store.clone());
    let r = read(&store, Some(&*registry), &org, KeyMode::Live, req)
        .await
        .unwrap();
    let groups = r
        .groups
        .unwrap_or_default()
        .into_iter()
        .map(|g| {
            assert_eq!(g.series.len(), 1, "one month bucket");
            (g.value, g.series[0].value.clone())
        })
        .collect();
    (groups, r.series.into_iter().map(|p| p.value).collect())
}

#[tokio::test]
async fn usage_is_grouped_and_filtered_by_dimension() {
    // The meter's total, as before dimensions: 100 + 30 + 20 + 7.
    assert_eq!(answer(&[]).await, (vec![], vec!["157".to_owned()]));
    // By model: claude 7; gpt-4 100 + 30 + 20 = 150; in value order.
    assert_eq!(
        answer(&[("group_by", "model")]).await,
        (
            pairs(&[("claude", "7"), ("gpt-4", "150")]),
            vec!["157".into()]
        )
    );
    // In eu only: claude 7, gpt-4 130; total 137.
    assert_eq!(
        answer(&[("group_by", "model"), ("filter[region]", "eu")]).await,
        (
            pairs(&[("claude", "7"), ("gpt-4", "130")]),
            vec!["137".into()]
        )
    );
    // A filter alone narrows the total: gpt-4 in us is 20.
    assert_eq!(
        answer(&[("filter[model]", "gpt-4"), ("filter[region]", "us")]).await,
        (vec![], vec!["20".into()])
    );
    // A value no series has reads as no usage.
    assert_eq!(
        answer(&[("filter[model]", "llama")]).await,
        (vec![], vec![])
    );
}

fn refused(extra: &[(&str, &str)], meter: &str) -> (&'static str, Option<String>) {
    let mut p = params(extra);
    p.meter = Some(meter.into());
    match UsageRequest::parse(&p, &catalogue(), ts("2026-12-02T00:00:00Z")) {
        Err(ApiError::BadRequest { code, field, .. }) => (code, field),
        other => panic!("{extra:?}: expected a 400, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_dimensions_are_refused_naming_the_parameter() {
    let long = "m".repeat(65);
    // (parameter, value, meter) -> (code, the field the refusal names: the parameter).
    for (param, value, meter, code) in [
        ("group_by", "colour", "llm_tokens", "unknown_dimension"),
        ("filter[colour]", "red", "llm_tokens", "unknown_dimension"),
        ("filter[model]", "gpt 4", "llm_tokens", "invalid_filter"),
        (
            "filter[model]",
            long.as_str(),
            "llm_tokens",
            "invalid_filter",
        ),
        ("group_by", "model", "api_calls", "no_dimensions"),
        ("filter[model]", "x", "api_calls", "no_dimensions"),
    ] {
        assert_eq!(
            refused(&[(param, value)], meter),
            (code, Some(param.to_owned())),
            "{param}={value} of {meter}"
        );
    }
    // Without a registry a split read is a 503, never a silently empty answer.
    let (store, org) = world().await;
    let req = UsageRequest::parse(
        &params(&[("group_by", "model")]),
        &catalogue(),
        ts("2026-12-02T00:00:00Z"),
    )
    .unwrap();
    let r = read(&store, None, &org, KeyMode::Live, req).await;
    assert!(matches!(r, Err(ApiError::Unavailable(_))), "{r:?}");
}

/// `per_project` beside a dimension split is refused naming `per_project`; the same split
/// without it passes the check.
#[test]
fn per_project_is_refused_beside_a_dimension_split() {
    let now = ts("2026-12-02T00:00:00Z");
    for extra in [[("group_by", "model")], [("filter[model]", "gpt-4")]] {
        let req = UsageRequest::parse(&params(&extra), &catalogue(), now).unwrap();
        assert!(crate::usage::check_per_project(false, &req).is_ok());
        let err = crate::usage::check_per_project(true, &req).unwrap_err();
        let text = format!("{err:?}");
        assert!(
            text.contains("per_project") && text.contains("group_by or filter"),
            "{text}"
        );
    }
    let plain = UsageRequest::parse(&params(&[]), &catalogue(), now).unwrap();
    assert!(crate::usage::check_per_project(true, &plain).is_ok());
}

/// The usage summary names each meter's dimensions in catalogue order (what the dashboard
/// offers to stack by) and leaves the field out for a meter without any.
#[tokio::test]
async fn the_summary_lists_each_meters_dimensions() {
    use axum::body::Body;
    use axum::http::{Request, header};
    use tally_core::ids::UserId;
    use tally_core::plan::PlanId;
    use tally_core::ports::{FixedClock, OrgStore, UserStore};
    use tally_core::tenant::{Org, User};
    use tower::ServiceExt;

    let (store, org) = world().await;
    let at = ts("2026-11-25T00:00:00Z");
    let owner = UserId::parse("usr_dims").unwrap();
    store
        .ensure_user(&User {
            id: owner.clone(),
            email: "dims@example.com".into(),
            created_at: at,
        })
        .await
        .unwrap();
    store
        .create_org(&Org {
            id: org.clone(),
            name: "Dims".into(),
            slug: "dims".into(),
            plan: PlanId::Pro,
            owner_id: owner.clone(),
            created_at: at,
            deleted_at: None,
        })
        .await
        .unwrap();
    let jwt = crate::jwt::JwtConfig::hs256(b"dimensions-summary-test-secret-32-bytes").unwrap();
    let token = jwt.mint(&owner, at, TimeDelta::minutes(5)).unwrap();
    let shared = Arc::new(store);
    let app = crate::router(
        crate::ApiState::new(
            shared.clone(),
            shared,
            Arc::new(catalogue()),
            Arc::new(FixedClock::at(at)),
        )
        .with_jwt(jwt),
    );
    let req = Request::get(format!("/v1/orgs/{org}/usage/summary"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), axum::http::StatusCode::OK);
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let meter = |name: &str| {
        summary["meters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["meter"] == name)
            .unwrap()
            .clone()
    };
    // 100 + 20 + 7 + 30 = 157 tokens this month, over the series of both dimensions.
    let llm = meter("llm_tokens");
    assert_eq!(llm["dimensions"], serde_json::json!(["model", "region"]));
    assert_eq!(llm["value"], "157");
    assert!(meter("api_calls").get("dimensions").is_none());
}
