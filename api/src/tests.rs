//! Router tests of the usage API against the in-memory store (`tally_store::MemoryStore`,
//! the adapter that passes the storage conformance suite), seeded through the same
//! `apply_batch` the aggregator uses, with a [`FixedClock`].

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tally_core::event::{Event, Quantity};
use tally_core::ids::{ApiKeyId, EventId, MeterName, OrgId, ProjectId, UserId};
use tally_core::meter::{Aggregation, MeterCatalogue};
use tally_core::plan::PlanId;
use tally_core::ports::{ApiKeyStore, FixedClock, OrgStore, ProjectStore, UsageStore, UserStore};
use tally_core::tenant::{ApiKey, KeyScope, Org, Project, User};
use tally_store::MemoryStore;
use tally_store::memory::{Fault, Op};
use tower::ServiceExt;

use super::*;

/// An RFC 3339 instant, for the unit tests of every module of the crate.
pub(crate) fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const NOW: &str = "2026-11-26T12:30:00Z";
const READ_KEY: &str = "tk_live_3316348dbadfb7b11c7c2ea235949419e23f9fa898ad2c198f999617912a9925";
const WRITE_KEY: &str = "tk_live_10fd874b68dad080ed706762c8e163dabb20514bddae38fb159c56f714a3b143";

fn org(s: &str) -> OrgId {
    OrgId::parse(s).unwrap()
}

fn key(secret: &str, scopes: &[KeyScope]) -> ApiKey {
    let id = ApiKeyId::parse(&format!("key_{}", &secret[secret.len() - 12..])).unwrap();
    ApiKey {
        name: secret.into(),
        scopes: scopes.to_vec(),
        ..ApiKey::new(id, org("org_a"), secret, t("2026-01-01T00:00:00Z"))
    }
}

fn project(id: &str, org_id: &str) -> Project {
    Project {
        id: ProjectId::parse(id).unwrap(),
        org_id: org(org_id),
        name: id.into(),
        slug: id.replace('_', "-"),
        created_at: t("2026-01-01T00:00:00Z"),
        archived_at: None,
    }
}

/// One `api_calls` event.
fn usage(id: &str, org_id: &str, project_id: &str, at: &str, quantity: &str) -> Event {
    Event {
        id: EventId::parse(id).unwrap(),
        org_id: org(org_id),
        project_id: ProjectId::parse(project_id).unwrap(),
        meter: MeterName::parse("api_calls").unwrap(),
        aggregation: Aggregation::Sum,
        quantity: Quantity::new(quantity.parse().unwrap()).unwrap(),
        timestamp: t(at),
        properties: serde_json::Map::new(),
    }
}

/// Orgs a and b with a project each (a has two), org a's read and write keys, and usage:
/// org a 7 in October; 123 on 1 November (100 in prj_a1, 23 in prj_a2) and 2.50 on 2
/// November at 10:30 (prj_a2); org b 999 on 1 November.
async fn seeded() -> MemoryStore {
    let store = MemoryStore::new();
    let owner = store
        .ensure_user(&User {
            id: UserId::parse("usr_owner").unwrap(),
            email: "owner@example.com".into(),
            created_at: t("2026-01-01T00:00:00Z"),
        })
        .await
        .unwrap();
    for id in ["org_a", "org_b"] {
        let o = Org {
            id: org(id),
            name: id.into(),
            slug: id.replace('_', "-"),
            plan: PlanId::Pro,
            owner_id: owner.id.clone(),
            created_at: t("2026-01-01T00:00:00Z"),
            deleted_at: None,
        };
        store.create_org(&o).await.unwrap();
    }
    for (id, o) in [
        ("prj_a1", "org_a"),
        ("prj_a2", "org_a"),
        ("prj_b1", "org_b"),
    ] {
        store.create_project(&project(id, o)).await.unwrap();
    }
    for k in [
        key(READ_KEY, &[KeyScope::UsageRead]),
        key(WRITE_KEY, &[KeyScope::EventsWrite]),
    ] {
        store.create_api_key(&k).await.unwrap();
    }
    let events = [
        usage("oct", "org_a", "prj_a1", "2026-10-20T08:00:00Z", "7"),
        usage("nov1a", "org_a", "prj_a1", "2026-11-01T05:00:00Z", "100"),
        usage("nov1b", "org_a", "prj_a2", "2026-11-01T06:00:00Z", "23"),
        usage("nov2", "org_a", "prj_a2", "2026-11-02T10:30:00Z", "2.50"),
        usage("nov1", "org_b", "prj_b1", "2026-11-01T05:00:00Z", "999"),
    ];
    store.apply_batch(&events).await.unwrap();
    store
}

struct Answer {
    status: StatusCode,
    json: Value,
}

fn app(store: &MemoryStore) -> Router {
    let shared = Arc::new(store.clone());
    router(ApiState::new(
        shared.clone(),
        shared,
        Arc::new(MeterCatalogue::default()),
        Arc::new(FixedClock::at(t(NOW))),
    ))
}

/// The OpenAPI document, built once (apart from the one the route serves).
static DOC: tally_http::openapi::BuiltOnce = tally_http::openapi::BuiltOnce::new(openapi::document);

fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn schema_properties(name: &str) -> BTreeSet<String> {
    keys_of(&DOC.get()["components"]["schemas"][name]["properties"])
}

/// Every answer of `GET /v1/usage` the tests see must be documented.
fn assert_documented(a: &Answer) {
    let response =
        DOC.resolve(&DOC.get()["paths"]["/v1/usage"]["get"]["responses"][a.status.as_str()]);
    assert!(
        response.is_object(),
        "GET /v1/usage answered {} which is not documented",
        a.status
    );
    if a.status.is_success() {
        assert!(keys_of(&a.json).is_subset(&schema_properties("UsageResponse")));
    } else {
        assert!(
            keys_of(&a.json["error"]).is_subset(&schema_properties("ErrorBody")),
            "{}",
            a.json
        );
    }
}

/// `GET /v1/usage?{query}` with the org's read key.
async fn read(mem: &MemoryStore, query: &str) -> Answer {
    get(mem, Some(READ_KEY), query).await
}

/// [`read`], which must answer `200`.
async fn read_ok(mem: &MemoryStore, query: &str) -> Answer {
    let a = read(mem, query).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    a
}

async fn get(mem: &MemoryStore, key: Option<&str>, query: &str) -> Answer {
    let app = app(mem);
    let mut req = Request::get(format!("/v1/usage?{query}"));
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    let a = Answer { status, json };
    assert_documented(&a);
    a
}

fn series(a: &Answer) -> Vec<(String, String)> {
    a.json["series"]
        .as_array()
        .unwrap_or_else(|| panic!("no series: {}", a.json))
        .iter()
        .map(|p| {
            (
                p["start"].as_str().unwrap().to_owned(),
                p["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `v` as owned pairs, to compare with a series or groups read back (the unit tests of
/// every module of the crate).
pub(crate) fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn daily_series_of_the_current_month_by_default() {
    let mem = seeded().await;
    let a = read_ok(&mem, "meter=api_calls").await;
    assert_eq!(a.json["org_id"], "org_a");
    assert_eq!(a.json["meter"], "api_calls");
    assert_eq!(a.json["granularity"], "day");
    assert_eq!(
        series(&a),
        pairs(&[
            ("2026-11-01T00:00:00Z", "123"),
            ("2026-11-02T00:00:00Z", "2.5")
        ])
    );
    assert_eq!(a.json["from"], "2026-11-01T00:00:00Z");
    assert_eq!(a.json["to"], NOW);
    assert!(a.json["project_id"].is_null(), "{}", a.json);
}

#[tokio::test]
async fn granularity_and_range_select_the_buckets() {
    let mem = seeded().await;
    let a = read_ok(
        &mem,
        "meter=api_calls&granularity=month&from=2026-10-15&to=2026-12-01",
    )
    .await;
    assert_eq!(
        series(&a),
        pairs(&[
            ("2026-10-01T00:00:00Z", "7"),
            ("2026-11-01T00:00:00Z", "125.5")
        ])
    );
    assert_eq!(
        a.json["from"], "2026-10-01T00:00:00Z",
        "from is truncated to its bucket"
    );
    assert_eq!(a.json["granularity"], "month");

    let a = read(
        &mem,
        "meter=api_calls&granularity=hour&from=2026-11-02T10:15:00Z&to=2026-11-02T11:00:00Z",
    )
    .await;
    assert_eq!(series(&a), pairs(&[("2026-11-02T10:00:00Z", "2.5")]));
    assert_eq!(
        a.json["from"], "2026-11-02T10:00:00Z",
        "truncated to its hour"
    );

    // Half-open: `to` at a bucket start excludes that bucket.
    let a = read(
        &mem,
        "meter=api_calls&from=2026-11-01&to=2026-11-02T00:00:00Z",
    )
    .await;
    assert_eq!(series(&a), pairs(&[("2026-11-01T00:00:00Z", "123")]));

    // Only `to`: the month before it.
    let a = read(&mem, "meter=api_calls&to=2026-11-01").await;
    assert_eq!(a.json["from"], "2026-10-01T00:00:00Z");
}

#[tokio::test]
async fn project_filter_and_own_org_id() {
    let mem = seeded().await;
    let a = read_ok(&mem, "meter=api_calls&project_id=prj_a1&org_id=org_a").await;
    assert_eq!(a.json["project_id"], "prj_a1");
    assert_eq!(series(&a), pairs(&[("2026-11-01T00:00:00Z", "100")]));
}

/// `per_project=true`: the org's series and each project's in one answer, equal to what a
/// request per project reads; refused beside `project_id` and for a value not a boolean.
#[tokio::test]
async fn per_project_splits_the_org_in_one_answer() {
    let mem = seeded().await;
    let range = "meter=api_calls&from=2026-11-01&to=2026-11-03";
    let a = read_ok(&mem, &format!("{range}&per_project=true")).await;
    assert_eq!(
        series(&a),
        pairs(&[
            ("2026-11-01T00:00:00Z", "123"),
            ("2026-11-02T00:00:00Z", "2.5")
        ])
    );
    let projects = a.json["projects"].as_array().unwrap();
    let ids: Vec<&str> = projects
        .iter()
        .map(|p| p["project_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["prj_a1", "prj_a2"],
        "the org's projects only, in id order"
    );
    for p in projects {
        let id = p["project_id"].as_str().unwrap();
        let one = read_ok(&mem, &format!("{range}&project_id={id}")).await;
        assert_eq!(p["series"], one.json["series"], "{id}");
    }
    assert_eq!(
        projects[1]["series"],
        serde_json::json!([
            {"start": "2026-11-01T00:00:00Z", "value": "23"},
            {"start": "2026-11-02T00:00:00Z", "value": "2.5"}
        ])
    );
    // Without it, no `projects` at all.
    assert!(read_ok(&mem, range).await.json.get("projects").is_none());
    for query in [
        format!("{range}&per_project=true&project_id=prj_a1"),
        format!("{range}&per_project=yes"),
    ] {
        let a = read(&mem, &query).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(a.json["error"]["code"], "invalid_parameter", "{query}");
        assert_eq!(a.json["error"]["field"], "per_project", "{query}");
    }
}

#[tokio::test]
async fn other_orgs_and_their_projects_are_404() {
    let mem = seeded().await;
    for (query, field) in [
        ("meter=api_calls&project_id=prj_b1", "project_id"),
        ("meter=api_calls&project_id=prj_zzz", "project_id"),
        ("meter=api_calls&org_id=org_b", "org_id"),
        ("meter=api_calls&org_id=garbage", "org_id"),
    ] {
        let a = read(&mem, query).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{query}");
        assert_eq!(a.json["error"]["code"], "not_found");
        assert_eq!(a.json["error"]["field"], field, "{query}");
        assert!(!a.json.to_string().contains("999"));
    }
    assert_eq!(mem.calls(Op::CounterSeries), 0, "nothing is read for them");
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let mem = seeded().await;
    for (query, code, field) in [
        ("", "missing_field", "meter"),
        ("meter=", "missing_field", "meter"),
        ("meter=gpu_hours", "unknown_meter", "meter"),
        (
            "meter=api_calls&granularity=week",
            "invalid_granularity",
            "granularity",
        ),
        (
            "meter=api_calls&from=yesterday",
            "invalid_timestamp",
            "from",
        ),
        ("meter=api_calls&to=2026-13-01", "invalid_timestamp", "to"),
        (
            "meter=api_calls&from=2026-11-20&to=2026-11-10",
            "invalid_range",
            "to",
        ),
        (
            "meter=api_calls&granularity=hour&from=2025-01-01&to=2026-11-01",
            "range_too_large",
            "from",
        ),
        // 834 years of months is few buckets but thousands of month reads: refused.
        (
            "meter=api_calls&granularity=month&from=2000-01-01&to=2833-01-01",
            "range_too_large",
            "from",
        ),
        (
            "meter=api_calls&granularity=month&from=2020-01-01&to=2026-11-01",
            "range_too_large",
            "from",
        ),
        (
            "meter=api_calls&project_id=org_a",
            "invalid_id",
            "project_id",
        ),
    ] {
        let a = read(&mem, query).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}: {}", a.json);
        assert_eq!(a.json["error"]["code"], code, "{query}");
        assert_eq!(a.json["error"]["field"], field, "{query}");
    }
    // The same span in days is fine, and so are five years of months.
    let a = read(&mem, "meter=api_calls&from=2025-01-01&to=2026-11-01").await;
    assert_eq!(a.status, StatusCode::OK);
    let a = read(
        &mem,
        "meter=api_calls&granularity=month&from=2021-12-01&to=2026-12-01",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
}

#[tokio::test]
async fn keys_need_usage_read() {
    let mem = seeded().await;
    let a = get(&mem, None, "meter=api_calls").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = get(
        &mem,
        Some("eyJhbGciOiJIUzI1NiJ9.e30.sig"),
        "meter=api_calls",
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "without a JWT configuration, JWTs are refused"
    );
    let a = get(&mem, Some(WRITE_KEY), "meter=api_calls").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json["error"]["code"], "forbidden");
}

#[tokio::test]
async fn every_status_code_of_get_usage_is_produced_and_documented() {
    let mem = seeded().await;
    let mut seen = BTreeSet::new();
    for (key, query) in [
        (Some(READ_KEY), "meter=api_calls"),
        (Some(READ_KEY), "meter=nope"),
        (None, "meter=api_calls"),
        (Some(WRITE_KEY), "meter=api_calls"),
        (Some(READ_KEY), "meter=api_calls&org_id=org_b"),
    ] {
        seen.insert(get(&mem, key, query).await.status.as_u16());
    }
    for fail in [true, false] {
        let broken = seeded().await;
        let fault = if fail {
            Fault::Unavailable
        } else {
            Fault::Corrupt
        };
        broken.fail(Op::FindApiKey, Some(fault));
        seen.insert(
            get(&broken, Some(READ_KEY), "meter=api_calls")
                .await
                .status
                .as_u16(),
        );
    }
    // 429: a user's bucket (one request a second here) emptied by a user token.
    {
        let shared = Arc::new(mem.clone());
        let jwt = crate::jwt::JwtConfig::hs256(&[9; 32]).unwrap();
        let token = jwt
            .mint(
                &tally_core::ids::UserId::parse("usr_ann").unwrap(),
                t(NOW),
                chrono::Duration::hours(1),
            )
            .unwrap();
        let mut state = ApiState::new(
            shared.clone(),
            shared,
            Arc::new(MeterCatalogue::default()),
            Arc::new(FixedClock::at(t(NOW))),
        )
        .with_jwt(jwt);
        state.user_rate = tally_core::plan::RateLimit {
            per_second: 1,
            burst: 1,
        };
        let limited = router(state);
        for _ in 0..2 {
            let req = Request::get("/v1/usage?meter=api_calls&org_id=org_a")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            let res = limited.clone().oneshot(req).await.unwrap();
            seen.insert(res.status().as_u16());
        }
        assert!(seen.contains(&429));
    }
    let documented: BTreeSet<u16> = keys_of(&DOC.get()["paths"]["/v1/usage"]["get"]["responses"])
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(seen, documented);
    assert_eq!(
        openapi::GET_USAGE_STATUSES
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        documented
    );
}

#[tokio::test]
async fn the_document_is_served_and_matches_the_routes_and_the_structs() {
    let mem = seeded().await;
    let res = app(&mem)
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let served: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(&served, DOC.get());
    assert_eq!(served["openapi"], "3.1.0");

    // The documented operations are exactly the routes of both routers and the dashboard's
    // (which tally_dashboard's tests hold to its own table) ...
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method, r.path))
        .chain(tally_ingest::ROUTES.iter().copied())
        .chain(crate::openapi_dashboard::DASHBOARD_ROUTES.iter().copied())
        .map(|(m, p)| (m.to_ascii_lowercase(), p.to_owned()))
        .collect();
    let documented: BTreeSet<(String, String)> = DOC.get()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, item)| keys_of(item).into_iter().map(move |m| (m, p.clone())))
        .collect();
    assert_eq!(routes, documented);
    // ... and this router serves its own (not 404/405).
    for Route { method, path, .. } in ROUTES {
        let req = Request::builder()
            .method(*method)
            .uri(*path)
            .body(Body::empty())
            .unwrap();
        let status = app(&mem).oneshot(req).await.unwrap().status();
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {status}"
        );
    }

    // A real answer serializes to exactly the documented properties.
    let full = UsageResponse {
        org_id: "org_a".into(),
        project_id: Some("prj_a1".into()),
        mode: "live".into(),
        meter: "api_calls".into(),
        granularity: "day".into(),
        from: "2026-11-01T00:00:00Z".into(),
        to: "2026-11-02T00:00:00Z".into(),
        series: vec![SeriesPoint {
            start: "2026-11-01T00:00:00Z".into(),
            value: "1".into(),
        }],
        groups: Some(vec![crate::usage::UsageGroup {
            value: "gpt-4".into(),
            series: vec![],
        }]),
        projects: Some(vec![crate::usage::ProjectUsage {
            project_id: "prj_a1".into(),
            series: vec![],
            groups: Some(vec![]),
        }]),
    };
    let v = serde_json::to_value(&full).unwrap();
    assert_eq!(keys_of(&v), schema_properties("UsageResponse"));
    assert_eq!(keys_of(&v["series"][0]), schema_properties("SeriesPoint"));
    assert_eq!(keys_of(&v["groups"][0]), schema_properties("UsageGroup"));
    assert_eq!(
        keys_of(&v["projects"][0]),
        schema_properties("ProjectUsage")
    );
    let required: BTreeSet<String> =
        DOC.get()["components"]["schemas"]["UsageResponse"]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
    let minimal = serde_json::to_value(UsageResponse {
        project_id: None,
        groups: None,
        projects: None,
        ..full
    })
    .unwrap();
    assert_eq!(keys_of(&minimal), required);

    // Every documented query parameter is one the handler reads, and vice versa.
    let params: Vec<String> = DOC.get()["paths"]["/v1/usage"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let query = params
        .iter()
        // `filter` is a deepObject: `filter[<dimension>]=<value>`.
        .map(|p| match p.as_str() {
            "filter" => "filter[model]=x".to_owned(),
            _ => format!("{p}=x"),
        })
        .collect::<Vec<_>>()
        .join("&");
    let parsed: usage::UsageParams =
        axum::extract::Query::try_from_uri(&format!("/v1/usage?{query}").parse().unwrap())
            .unwrap()
            .0;
    let read = [
        ("meter", parsed.meter.is_some()),
        ("granularity", parsed.granularity.is_some()),
        ("from", parsed.from.is_some()),
        ("to", parsed.to.is_some()),
        ("project_id", parsed.project_id.is_some()),
        ("org_id", parsed.org_id.is_some()),
        ("mode", parsed.mode.is_some()),
        ("group_by", parsed.group_by.is_some()),
        ("per_project", parsed.per_project.is_some()),
        ("filter", parsed.other.contains_key("filter[model]")),
    ];
    assert_eq!(params.len(), read.len());
    for (name, is_read) in read {
        assert!(is_read && params.iter().any(|p| p == name), "{name}");
    }
}
