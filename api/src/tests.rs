//! Router tests against small in-memory implementations of the ports.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use tally_core::counter::OwnedCounterKey;
use tally_core::event::Event;
use tally_core::ids::{ApiKeyId, InvitationId, MeterName, OrgId, ProjectId, UserId};
use tally_core::period::{Granularity, Month};
use tally_core::ports::{
    ApiKeyStore, ApplyReport, AuditLog, Clock, CounterQuery, CounterValue, InvitationStore,
    LedgerPage, MemberStore, OrgStore, ProjectStore, StoreError, UsageStore, UserStore,
};
use tally_core::tenant::{
    ApiKey, AuditPage, AuditQuery, AuditRecord, Invitation, KeyHash, KeyScope, KeyUse, Membership,
    Org, OrgChanges, Project, ProjectChanges, Role, User,
};
use tower::ServiceExt;

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const NOW: &str = "2026-11-26T12:30:00Z";
const READ_KEY: &str = "tk_test_read";
const WRITE_KEY: &str = "tk_test_write";

struct FixedClock(DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// A stored counter: (org, project, meter, granularity, bucket start) -> value.
type Row = (
    OrgId,
    Option<ProjectId>,
    MeterName,
    Granularity,
    DateTime<Utc>,
    Decimal,
);

#[derive(Default)]
struct Mem {
    keys: HashMap<KeyHash, ApiKey>,
    projects: Vec<Project>,
    counters: Vec<Row>,
    queries: Mutex<Vec<CounterQuery>>,
    /// Makes key lookups fail: `Some(true)` unavailable (503), `Some(false)` corrupt (500).
    keys_fail: Option<bool>,
}

fn org(s: &str) -> OrgId {
    OrgId::parse(s).unwrap()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn key(secret: &str, scopes: &[KeyScope]) -> ApiKey {
    ApiKey {
        id: ApiKeyId::parse(&format!("key_{}", secret.len())).unwrap(),
        org_id: org("org_a"),
        name: secret.into(),
        hash: KeyHash::of_secret(secret),
        display_prefix: secret.chars().take(12).collect(),
        scopes: scopes.to_vec(),
        created_at: t("2026-01-01T00:00:00Z"),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
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

impl Mem {
    fn seeded() -> Mem {
        let api = MeterName::parse("api_calls").unwrap();
        let a1 = Some(ProjectId::parse("prj_a1").unwrap());
        let row = |o: &str, p: &Option<ProjectId>, g, start: &str, v: &str| {
            (org(o), p.clone(), api.clone(), g, t(start), dec(v))
        };
        Mem {
            keys: [
                key(READ_KEY, &[KeyScope::UsageRead]),
                key(WRITE_KEY, &[KeyScope::EventsWrite]),
            ]
            .into_iter()
            .map(|k| (k.hash.clone(), k))
            .collect(),
            projects: vec![project("prj_a1", "org_a"), project("prj_b1", "org_b")],
            counters: vec![
                row(
                    "org_a",
                    &None,
                    Granularity::Day,
                    "2026-11-01T00:00:00Z",
                    "123",
                ),
                row(
                    "org_a",
                    &None,
                    Granularity::Day,
                    "2026-11-02T00:00:00Z",
                    "2.50",
                ),
                row(
                    "org_a",
                    &None,
                    Granularity::Month,
                    "2026-10-01T00:00:00Z",
                    "7",
                ),
                row(
                    "org_a",
                    &None,
                    Granularity::Month,
                    "2026-11-01T00:00:00Z",
                    "125.50",
                ),
                row(
                    "org_a",
                    &None,
                    Granularity::Hour,
                    "2026-11-02T10:00:00Z",
                    "2.50",
                ),
                row(
                    "org_a",
                    &a1,
                    Granularity::Day,
                    "2026-11-01T00:00:00Z",
                    "100",
                ),
                row(
                    "org_b",
                    &None,
                    Granularity::Day,
                    "2026-11-01T00:00:00Z",
                    "999",
                ),
            ],
            ..Mem::default()
        }
    }

    fn last_query(&self) -> CounterQuery {
        self.queries.lock().unwrap().last().cloned().unwrap()
    }
}

#[async_trait]
impl UserStore for Mem {
    async fn ensure_user(&self, _: &User) -> Result<User, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn get_user(&self, _: &UserId) -> Result<Option<User>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn list_user_memberships(&self, _: &UserId) -> Result<Vec<Membership>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
}

#[async_trait]
impl OrgStore for Mem {
    async fn create_org(&self, _: &Org) -> Result<(), StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn get_org(&self, _: &OrgId) -> Result<Option<Org>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn list_org_ids(&self) -> Result<Vec<OrgId>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn update_org(&self, _: &OrgId, _: &OrgChanges) -> Result<Option<Org>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn delete_org(&self, _: &OrgId, _: DateTime<Utc>) -> Result<Option<Org>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
}

#[async_trait]
impl MemberStore for Mem {
    async fn get_role(&self, _: &OrgId, _: &UserId) -> Result<Option<Role>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn list_members(&self, _: &OrgId) -> Result<Vec<Membership>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn add_member(&self, _: &Membership) -> Result<(), StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn set_member_role(
        &self,
        _: &OrgId,
        _: &UserId,
        _: Role,
    ) -> Result<Option<Membership>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn remove_member(&self, _: &OrgId, _: &UserId) -> Result<Option<Membership>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn transfer_ownership(
        &self,
        _: &OrgId,
        _: &UserId,
        _: &UserId,
    ) -> Result<Option<Org>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn add_project_member(
        &self,
        _: &OrgId,
        _: &ProjectId,
        _: &UserId,
        _: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn remove_project_member(
        &self,
        _: &OrgId,
        _: &ProjectId,
        _: &UserId,
    ) -> Result<bool, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn list_user_projects(
        &self,
        _: &OrgId,
        _: &UserId,
    ) -> Result<Vec<ProjectId>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
}

#[async_trait]
impl ProjectStore for Mem {
    async fn create_project(&self, _: &Project) -> Result<(), StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn get_project(
        &self,
        org: &OrgId,
        id: &ProjectId,
    ) -> Result<Option<Project>, StoreError> {
        Ok(self
            .projects
            .iter()
            .find(|p| p.org_id == *org && p.id == *id)
            .cloned())
    }
    async fn list_projects(&self, _: &OrgId) -> Result<Vec<Project>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn update_project(
        &self,
        _: &OrgId,
        _: &ProjectId,
        _: &ProjectChanges,
    ) -> Result<Option<Project>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
}

#[async_trait]
impl ApiKeyStore for Mem {
    async fn create_api_key(&self, _: &ApiKey) -> Result<(), StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        match self.keys_fail {
            Some(true) => return Err(StoreError::Unavailable("down".into())),
            Some(false) => return Err(StoreError::Corrupt("bad row".into())),
            None => {}
        }
        Ok(self.keys.get(hash).cloned())
    }
    async fn list_api_keys(&self, _: &OrgId) -> Result<Vec<ApiKey>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn revoke_api_key(
        &self,
        _: &OrgId,
        _: &ApiKeyId,
        _: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn rotate_api_key(
        &self,
        _: &ApiKeyId,
        _: &ApiKey,
        _: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn touch_api_keys(&self, _: &[KeyUse]) -> Result<(), StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
}

#[async_trait]
impl InvitationStore for Mem {
    async fn create_invitation(&self, _: &Invitation) -> Result<(), StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn list_invitations(
        &self,
        _: &OrgId,
        _: DateTime<Utc>,
    ) -> Result<Vec<Invitation>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn find_invitation(
        &self,
        _: &KeyHash,
        _: DateTime<Utc>,
    ) -> Result<Option<Invitation>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn revoke_invitation(
        &self,
        _: &OrgId,
        _: &InvitationId,
        _: DateTime<Utc>,
    ) -> Result<Option<Invitation>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn accept_invitation(
        &self,
        _: &KeyHash,
        _: &UserId,
        _: DateTime<Utc>,
    ) -> Result<Membership, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
}

#[async_trait]
impl AuditLog for Mem {
    async fn record_audit(&self, _: &AuditRecord) -> Result<(), StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn list_audit(&self, _: &AuditQuery) -> Result<AuditPage, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
}

#[async_trait]
impl UsageStore for Mem {
    async fn apply_batch(&self, _: &[Event]) -> Result<ApplyReport, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn counter_series(&self, q: &CounterQuery) -> Result<Vec<CounterValue>, StoreError> {
        self.queries.lock().unwrap().push(q.clone());
        let mut out: Vec<CounterValue> = self
            .counters
            .iter()
            .filter(|(o, p, m, g, start, _)| {
                *o == q.org
                    && *p == q.project
                    && *m == q.meter
                    && *g == q.granularity
                    && *start >= q.from
                    && *start < q.to
            })
            .map(|r| CounterValue {
                start: r.4,
                value: r.5,
            })
            .collect();
        out.sort_by_key(|c| c.start);
        Ok(out)
    }
    async fn ledger_page(
        &self,
        _: &OrgId,
        _: Month,
        _: Option<String>,
        _: usize,
    ) -> Result<LedgerPage, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn stored_counters(
        &self,
        _: &OrgId,
        _: Month,
    ) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn is_period_closed(&self, _: Month) -> Result<bool, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn close_period(&self, _: Month, _: DateTime<Utc>) -> Result<(), StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
}

struct Answer {
    status: StatusCode,
    json: Value,
}

fn app(mem: &Arc<Mem>) -> Router {
    router(ApiState::new(
        mem.clone(),
        mem.clone(),
        Arc::new(MeterCatalogue::default()),
        Arc::new(FixedClock(t(NOW))),
    ))
}

/// The OpenAPI document, built once.
fn doc() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(openapi::document)
}

fn resolve(v: &Value) -> &Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(
            doc()
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r}")),
        ),
        None => v,
    }
}

fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn schema_properties(name: &str) -> BTreeSet<String> {
    keys_of(&doc()["components"]["schemas"][name]["properties"])
}

/// Every answer of `GET /v1/usage` the tests see must be documented.
fn assert_documented(a: &Answer) {
    let response = resolve(&doc()["paths"]["/v1/usage"]["get"]["responses"][a.status.as_str()]);
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

async fn get(mem: &Arc<Mem>, key: Option<&str>, query: &str) -> Answer {
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

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn daily_series_of_the_current_month_by_default() {
    let mem = Arc::new(Mem::seeded());
    let a = get(&mem, Some(READ_KEY), "meter=api_calls").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["org_id"], "org_a");
    assert_eq!(a.json["meter"], "api_calls");
    assert_eq!(a.json["granularity"], "day");
    assert_eq!(
        series(&a),
        pairs(&[
            ("2026-11-01T00:00:00Z", "123"),
            ("2026-11-02T00:00:00Z", "2.50")
        ])
    );
    let q = mem.last_query();
    assert_eq!((q.from, q.to), (t("2026-11-01T00:00:00Z"), t(NOW)));
    assert_eq!(q.project, None);
    assert_eq!(q.org, org("org_a"));
}

#[tokio::test]
async fn granularity_and_range_select_the_buckets() {
    let mem = Arc::new(Mem::seeded());
    let a = get(
        &mem,
        Some(READ_KEY),
        "meter=api_calls&granularity=month&from=2026-10-15&to=2026-12-01",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(
        series(&a),
        pairs(&[
            ("2026-10-01T00:00:00Z", "7"),
            ("2026-11-01T00:00:00Z", "125.50")
        ])
    );
    assert_eq!(
        a.json["from"], "2026-10-01T00:00:00Z",
        "from is truncated to its bucket"
    );
    assert_eq!(mem.last_query().granularity, Granularity::Month);

    let a = get(
        &mem,
        Some(READ_KEY),
        "meter=api_calls&granularity=hour&from=2026-11-02T10:15:00Z&to=2026-11-02T11:00:00Z",
    )
    .await;
    assert_eq!(series(&a), pairs(&[("2026-11-02T10:00:00Z", "2.50")]));
    assert_eq!(mem.last_query().from, t("2026-11-02T10:00:00Z"));

    // Half-open: `to` at a bucket start excludes that bucket.
    let a = get(
        &mem,
        Some(READ_KEY),
        "meter=api_calls&from=2026-11-01&to=2026-11-02T00:00:00Z",
    )
    .await;
    assert_eq!(series(&a), pairs(&[("2026-11-01T00:00:00Z", "123")]));

    // Only `to`: the month before it.
    let a = get(&mem, Some(READ_KEY), "meter=api_calls&to=2026-11-01").await;
    assert_eq!(a.json["from"], "2026-10-01T00:00:00Z");
}

#[tokio::test]
async fn project_filter_and_own_org_id() {
    let mem = Arc::new(Mem::seeded());
    let a = get(
        &mem,
        Some(READ_KEY),
        "meter=api_calls&project_id=prj_a1&org_id=org_a",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["project_id"], "prj_a1");
    assert_eq!(series(&a), pairs(&[("2026-11-01T00:00:00Z", "100")]));
    assert_eq!(
        mem.last_query().project,
        Some(ProjectId::parse("prj_a1").unwrap())
    );
}

#[tokio::test]
async fn other_orgs_and_their_projects_are_404() {
    let mem = Arc::new(Mem::seeded());
    for (query, field) in [
        ("meter=api_calls&project_id=prj_b1", "project_id"),
        ("meter=api_calls&project_id=prj_zzz", "project_id"),
        ("meter=api_calls&org_id=org_b", "org_id"),
        ("meter=api_calls&org_id=garbage", "org_id"),
    ] {
        let a = get(&mem, Some(READ_KEY), query).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{query}");
        assert_eq!(a.json["error"]["code"], "not_found");
        assert_eq!(a.json["error"]["field"], field, "{query}");
        assert!(!a.json.to_string().contains("999"));
    }
    assert!(mem.queries.lock().unwrap().is_empty());
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let mem = Arc::new(Mem::seeded());
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
        (
            "meter=api_calls&project_id=org_a",
            "invalid_id",
            "project_id",
        ),
    ] {
        let a = get(&mem, Some(READ_KEY), query).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}: {}", a.json);
        assert_eq!(a.json["error"]["code"], code, "{query}");
        assert_eq!(a.json["error"]["field"], field, "{query}");
    }
    // The same span in days is fine.
    let a = get(
        &mem,
        Some(READ_KEY),
        "meter=api_calls&from=2025-01-01&to=2026-11-01",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn keys_need_usage_read() {
    let mem = Arc::new(Mem::seeded());
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
    let mem = Arc::new(Mem::seeded());
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
        let broken = Arc::new(Mem {
            keys_fail: Some(fail),
            ..Mem::seeded()
        });
        seen.insert(
            get(&broken, Some(READ_KEY), "meter=api_calls")
                .await
                .status
                .as_u16(),
        );
    }
    let documented: BTreeSet<u16> = keys_of(&doc()["paths"]["/v1/usage"]["get"]["responses"])
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
    let mem = Arc::new(Mem::seeded());
    let res = app(&mem)
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let served: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(&served, doc());
    assert_eq!(served["openapi"], "3.1.0");

    // The documented operations are exactly the routes of both routers ...
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method, r.path))
        .chain(tally_ingest::ROUTES.iter().copied())
        .map(|(m, p)| (m.to_ascii_lowercase(), p.to_owned()))
        .collect();
    let documented: BTreeSet<(String, String)> = doc()["paths"]
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
        meter: "api_calls".into(),
        granularity: "day".into(),
        from: "2026-11-01T00:00:00Z".into(),
        to: "2026-11-02T00:00:00Z".into(),
        series: vec![SeriesPoint {
            start: "2026-11-01T00:00:00Z".into(),
            value: "1".into(),
        }],
    };
    let v = serde_json::to_value(&full).unwrap();
    assert_eq!(keys_of(&v), schema_properties("UsageResponse"));
    assert_eq!(keys_of(&v["series"][0]), schema_properties("SeriesPoint"));
    let required: BTreeSet<String> = doc()["components"]["schemas"]["UsageResponse"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    let minimal = serde_json::to_value(UsageResponse {
        project_id: None,
        ..full
    })
    .unwrap();
    assert_eq!(keys_of(&minimal), required);

    // Every documented query parameter is one the handler reads, and vice versa.
    let params: Vec<String> = doc()["paths"]["/v1/usage"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let query = params
        .iter()
        .map(|p| format!("{p}=x"))
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
    ];
    assert_eq!(params.len(), read.len());
    for (name, is_read) in read {
        assert!(is_read && params.iter().any(|p| p == name), "{name}");
    }
}
