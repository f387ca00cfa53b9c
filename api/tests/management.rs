//! Tests of the management routes against the in-memory store (`tally_store::MemoryStore`,
//! the adapter that passes the storage conformance suite): tenant isolation, the role
//! matrix and audit completeness walk every row of [`ROUTES`], so a new route is covered
//! (or fails to compile here) without anyone remembering to add it.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tally_core::event::{Event, Quantity};
use tally_core::ids::{
    ApiKeyId, EventId, InvitationId, MeterName, OrgId, ProjectId, SessionId, UserId,
};
use tally_core::meter::Aggregation;
use tally_core::plan::PlanId;
use tally_core::ports::{
    ApiKeyStore, AuditLog, Clock, FixedClock, InvitationStore, MemberStore, NewProjectMember,
    OrgStore, ProjectStore, ReportStore, Revocation, SecurityStore, StepKey, SyncLedger,
    UsageStore,
};
use tally_core::tenant::{
    ApiKey, AuditOutcome, AuditQuery, AuditRecord, Invitation, KeyHash, KeyScope, MAX_AUDIT_PAGE,
    Project, Role,
};
use tally_store::MemoryStore;
use tower::ServiceExt;

use tally_api::jwt::JwtConfig;
use tally_api::roles::{ROLES, allows};
use tally_api::*;
use tally_core::MeterCatalogue;

mod common;
use common::Answer;

const NOW: &str = "2026-11-26T12:30:00Z";
const KEY_A: &str = "tk_live_a88b9b7c672fb38c5270af4721bd209c3d58beb6ebe1e76eb10a76817dc76491";
const KEY_B: &str = "tk_live_9960a17fc76af7594b9ffb54aae98c384dd7c65d182cf60746f79ea492af8643";
/// The token of org A's pending invitation (to `invitee@example.com`, as a member).
const INVITE_A: &str = "tinv_invitation_of_org_a";
/// The token of org B's pending invitation (to `invitee@example.com`, as a member).
const INVITE_B: &str = "tinv_invitation_of_org_b";

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// The store the API runs against and the API's clock. Derefs to the store, so a test
/// reads and seeds it through the ports.
#[derive(Clone)]
struct World {
    store: MemoryStore,
    clock: Arc<FixedClock>,
    /// The catalogue's plans the API is given; empty: the built-in ones.
    plans: std::collections::BTreeMap<PlanId, tally_core::plan::Plan>,
}

impl std::ops::Deref for World {
    type Target = MemoryStore;
    fn deref(&self) -> &MemoryStore {
        &self.store
    }
}

impl World {
    /// Every audit record of `org`, newest first.
    async fn audit_of(&self, org: &str) -> Vec<AuditRecord> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .list_audit(&AuditQuery {
                    org: org_id(org),
                    from: None,
                    to: None,
                    actor: None,
                    action: None,
                    resource: None,
                    limit: MAX_AUDIT_PAGE,
                    cursor,
                    now: self.clock.now(),
                })
                .await
                .unwrap();
            out.extend(page.records);
            match page.next {
                Some(c) => cursor = Some(c),
                None => return out,
            }
        }
    }

    /// Both orgs' audit records.
    async fn all_audit(&self) -> Vec<AuditRecord> {
        let mut all = self.audit_of("org_a").await;
        all.extend(self.audit_of("org_b").await);
        all
    }
}

fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn org_id(s: &str) -> OrgId {
    OrgId::parse(s).unwrap()
}

fn the_key(secret: &str, id: &str, org: &str) -> ApiKey {
    let key_id = ApiKeyId::parse(id).unwrap();
    let created_at = t("2026-01-01T00:00:00Z");
    ApiKey {
        name: format!("key {id}"),
        scopes: vec![KeyScope::EventsWrite, KeyScope::UsageRead],
        ..ApiKey::new(key_id, org_id(org), secret, created_at)
    }
}

/// The user of org A with `role`.
fn a_user(role: Role) -> UserId {
    user(&format!("usr_a{}", role.as_str()))
}

fn the_invitation(token: &str, id: &str, org: &str, by: &str) -> Invitation {
    Invitation {
        id: InvitationId::parse(id).unwrap(),
        org_id: org_id(org),
        email: "invitee@example.com".into(),
        role: Role::Member,
        hash: KeyHash::of_secret(token),
        invited_by: user(by),
        created_at: t("2026-11-25T00:00:00Z"),
        expires_at: t("2026-12-02T00:00:00Z"),
        accepted_at: None,
    }
}

/// Two orgs: A (`plan`) with a user of each role, a project, a key and a pending
/// invitation, and 2,500 API calls this month; B (starter) with its owner, a project, a key
/// and a pending invitation. Every user has an email (`<id without usr_>@example.com`);
/// `usr_invitee` is in no org.
async fn world(plan: PlanId) -> World {
    let store = MemoryStore::new();
    let mut ids: Vec<UserId> = ROLES.iter().map(|r| a_user(*r)).collect();
    ids.push(user("usr_bowner"));
    ids.push(user("usr_invitee"));
    for id in ids {
        let id = id.as_str();
        common::add_user(
            &store,
            id,
            &format!("{}@example.com", &id[4..]),
            t("2026-01-01T00:00:00Z"),
        )
        .await;
    }
    for (id, name, owner, plan) in [
        ("org_a", "Alpha Ltd", a_user(Role::Owner), plan),
        ("org_b", "Beta Corp", user("usr_bowner"), PlanId::Starter),
    ] {
        let slug = name.to_lowercase().replace(' ', "-");
        let at = t("2026-01-01T00:00:00Z");
        common::add_org(&store, id, name, &slug, plan, owner.as_str(), at).await;
    }
    for role in [Role::Admin, Role::Member, Role::Viewer] {
        let at = t("2026-01-02T00:00:00Z");
        common::add_member(&store, "org_a", a_user(role).as_str(), role, at).await;
    }
    for (org, p) in [("org_a", "prj_alpha1"), ("org_b", "prj_beta1")] {
        store
            .create_project(&Project {
                id: ProjectId::parse(p).unwrap(),
                org_id: org_id(org),
                name: format!("Project {p}"),
                slug: p.replace('_', "-"),
                created_at: t("2026-01-03T00:00:00Z"),
                archived_at: None,
            })
            .await
            .unwrap();
    }
    // A's member and viewer are on A's project (owners and admins see every project).
    for role in [Role::Member, Role::Viewer] {
        store
            .add_project_member(&NewProjectMember::new(
                &org_id("org_a"),
                &ProjectId::parse("prj_alpha1").unwrap(),
                &a_user(role),
                t("2026-01-03T00:00:00Z"),
            ))
            .await
            .unwrap();
    }
    for k in [
        the_key(KEY_A, "key_alpha1", "org_a"),
        the_key(KEY_B, "key_beta1", "org_b"),
    ] {
        store.create_api_key(&k).await.unwrap();
    }
    for inv in [
        the_invitation(INVITE_A, "inv_alpha1", "org_a", "usr_aowner"),
        the_invitation(INVITE_B, "inv_beta1", "org_b", "usr_bowner"),
    ] {
        store.create_invitation(&inv).await.unwrap();
    }
    // A's viewer and B's owner are signed in.
    for (sid, who) in [("ses_alpha1", "usr_aviewer"), ("ses_beta1", "usr_bowner")] {
        store
            .create_session(&tally_core::security::Session {
                id: SessionId::parse(sid).unwrap(),
                user_id: user(who),
                created_at: t("2026-11-26T12:00:00Z"),
                expires_at: t("2026-11-27T00:00:00Z"),
                ip: Some("203.0.113.9".into()),
                user_agent: Some("mgmt-tests/1".into()),
                revoked_at: None,
            })
            .await
            .unwrap();
    }
    // Org A used 2,500 API calls this month.
    let used = seeded_usage(org_id("org_a"), 2500);
    store.apply_batch(&[used]).await.unwrap();
    World {
        store,
        clock: Arc::new(FixedClock::at(t(NOW))),
        plans: std::collections::BTreeMap::new(),
    }
}

/// The event `seeded_usage`: `quantity` API calls of `org` on project `prj_alpha1`, on
/// 2026-11-02.
fn seeded_usage(org: OrgId, quantity: u32) -> Event {
    Event {
        id: EventId::parse("seeded_usage").unwrap(),
        org_id: org,
        project_id: ProjectId::parse("prj_alpha1").unwrap(),
        meter: MeterName::parse("api_calls").unwrap(),
        aggregation: Aggregation::Sum,
        quantity: Quantity::new(quantity.into()).unwrap(),
        timestamp: t("2026-11-02T00:00:00Z"),
        properties: serde_json::Map::new(),
    }
}

fn jwt() -> JwtConfig {
    JwtConfig::hs256(&[7; 32]).unwrap()
}

fn token(u: &UserId) -> String {
    jwt().mint(u, t(NOW), chrono::Duration::hours(1)).unwrap()
}

fn app(mem: &World) -> Router {
    let store = Arc::new(mem.store.clone());
    router(
        ApiState::new(
            store.clone(),
            store,
            Arc::new(MeterCatalogue::default()),
            mem.clock.clone(),
        )
        .with_jwt(jwt())
        .with_plans(mem.plans.clone())
        .with_billing(Arc::new(mem.store.clone()), Arc::new(mem.store.clone()))
        .with_pricing(Arc::new(mem.store.clone()), Arc::new(mem.store.clone()))
        // The tests' requests come through two trusted proxies: the client 203.0.113.9
        // reached the outer one, which reached the inner one, 10.0.0.1.
        .with_trusted_proxies(2),
    )
}

async fn call(
    mem: &World,
    method: &str,
    uri: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Answer {
    call_text(mem, method, uri, bearer, body.map(|b| b.to_string())).await
}

/// A caller of the API: the world it calls and the bearer token it sends.
struct Caller<'a> {
    mem: &'a World,
    bearer: String,
}

/// `mem` called with `bearer` as the bearer token.
fn caller<'a>(mem: &'a World, bearer: &str) -> Caller<'a> {
    Caller {
        mem,
        bearer: bearer.to_owned(),
    }
}

/// `mem` called by org A's user with `role`.
fn as_a(mem: &World, role: Role) -> Caller<'_> {
    caller(mem, &token(&a_user(role)))
}

impl Caller<'_> {
    /// `GET uri`.
    async fn get(&self, uri: &str) -> Answer {
        get_with(self.mem, uri, &self.bearer).await
    }

    /// `POST uri` with the JSON `body`.
    async fn post(&self, uri: &str, body: Value) -> Answer {
        call(self.mem, "POST", uri, Some(&self.bearer), Some(body)).await
    }

    /// `PATCH uri` with the JSON `body`.
    async fn patch(&self, uri: &str, body: Value) -> Answer {
        call(self.mem, "PATCH", uri, Some(&self.bearer), Some(body)).await
    }

    /// `POST /v1/orgs/org_a/projects`: a new project of org A named `name`.
    async fn new_project(&self, name: &str, slug: &str) -> Answer {
        let body = json!({"name": name, "slug": slug});
        self.post("/v1/orgs/org_a/projects", body).await
    }

    /// `POST /v1/orgs/org_a/invitations`: invites `email` to org A as `role`.
    async fn invite(&self, email: &str, role: &str) -> Answer {
        let body = json!({"email": email, "role": role});
        self.post("/v1/orgs/org_a/invitations", body).await
    }

    /// `POST /v1/orgs/org_a/keys/key_alpha1/rotate` with the JSON `body`.
    async fn rotate(&self, body: Value) -> Answer {
        self.post("/v1/orgs/org_a/keys/key_alpha1/rotate", body)
            .await
    }

    /// `GET uri`, expecting 200.
    async fn get_ok(&self, uri: &str) -> Answer {
        let a = self.get(uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.text);
        a
    }

    /// `POST uri` without a body: an action on a resource (revoke, archive).
    async fn act(&self, uri: &str) -> Answer {
        call(self.mem, "POST", uri, Some(&self.bearer), None).await
    }

    /// `GET /v1/orgs/org_a/audit?action={action}`: the answer and its records.
    async fn audit(&self, action: &str) -> (Answer, Vec<Value>) {
        let a = self
            .get(&format!("/v1/orgs/org_a/audit?action={action}"))
            .await;
        let records = a.json["records"].as_array().unwrap().clone();
        (a, records)
    }

    /// `DELETE uri`.
    async fn delete(&self, uri: &str) -> Answer {
        call(self.mem, "DELETE", uri, Some(&self.bearer), None).await
    }
}

/// `GET uri` with `bearer` as the bearer token.
async fn get_with(mem: &World, uri: &str, bearer: &str) -> Answer {
    call(mem, "GET", uri, Some(bearer), None).await
}

/// [`call`] with the body as written, for JSON a `Value` cannot hold (a key given twice).
async fn call_text(
    mem: &World,
    method: &str,
    uri: &str,
    bearer: Option<&str>,
    body: Option<String>,
) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::USER_AGENT, "mgmt-tests/1")
        .header("x-forwarded-for", "203.0.113.9, 10.0.0.1");
    common::send(&app(mem), req, bearer, None, body).await
}

/// The ids a request's nested path parameters are filled with.
struct Ids {
    project: &'static str,
    key: &'static str,
    user: &'static str,
    invitation: &'static str,
    token: &'static str,
    /// A member of the org who is not on its project yet.
    project_user: &'static str,
    /// A sign-in session of a member of the org.
    session: &'static str,
}

/// Org A's own resources (the user is a non-owner member).
const A_IDS: Ids = Ids {
    project: "prj_alpha1",
    key: "key_alpha1",
    user: "usr_aviewer",
    invitation: "inv_alpha1",
    token: INVITE_A,
    project_user: "usr_aadmin",
    session: "ses_alpha1",
};

/// Org B's resources.
const B_IDS: Ids = Ids {
    project: "prj_beta1",
    key: "key_beta1",
    user: "usr_bowner",
    invitation: "inv_beta1",
    token: INVITE_B,
    project_user: "usr_bowner",
    session: "ses_beta1",
};

/// The request that exercises `route` on `org` with the nested ids given, and the body it
/// sends. Every path parameter must be filled in.
fn request_for(route: &Route, org: &str, ids: &Ids, n: usize) -> (String, Option<Value>) {
    let path = route
        .path
        .replace("{org_id}", org)
        .replace("{project_id}", ids.project)
        .replace("{key_id}", ids.key)
        .replace("{user_id}", ids.user)
        .replace("{invitation_id}", ids.invitation)
        .replace("{session_id}", ids.session)
        .replace("{period}", "2026-03")
        .replace("{meter}", "api_calls");
    assert!(
        !path.contains('{'),
        "a path parameter of {} is not filled in",
        route.path
    );
    match route.endpoint {
        Endpoint::Usage => (format!("{path}?meter=api_calls&org_id={org}"), None),
        Endpoint::OpenApi
        | Endpoint::MyOrgs
        | Endpoint::GetOrg
        | Endpoint::ListMembers
        | Endpoint::ListProjects
        | Endpoint::GetProject
        | Endpoint::ListKeys
        | Endpoint::RevokeKey
        | Endpoint::ListAudit
        | Endpoint::UsageSummary
        | Endpoint::ListInvitations
        | Endpoint::RevokeInvitation
        | Endpoint::LineEvents
        | Endpoint::UpcomingInvoice
        | Endpoint::ListInvoices
        | Endpoint::CreateSession
        | Endpoint::MySessions
        | Endpoint::RevokeMySession
        | Endpoint::ListOrgSessions
        | Endpoint::RevokeOrgSession => (path, None),
        Endpoint::Export => (format!("{path}?period=2026-03"), None),
        Endpoint::CreateInvitation => (
            path,
            Some(json!({"email": format!("new{n}@example.com"), "role": "viewer"})),
        ),
        Endpoint::AcceptInvitation => (path, Some(json!({"token": ids.token}))),
        Endpoint::CreateProject => (
            path,
            Some(json!({"name": format!("New {n}"), "slug": format!("new-{n}")})),
        ),
        Endpoint::CreateKey => (path, Some(json!({"name": format!("key {n}")}))),
        Endpoint::UpdateOrg => (path, Some(json!({"name": format!("Renamed {n}")}))),
        Endpoint::UpdateMember => (path, Some(json!({"role": "member"}))),
        Endpoint::RemoveMember | Endpoint::DeleteOrg | Endpoint::ArchiveProject => (path, None),
        Endpoint::UpdateProject => (path, Some(json!({"name": format!("Renamed {n}")}))),
        Endpoint::AddProjectMember => (path, Some(json!({"user_id": ids.project_user}))),
        Endpoint::RemoveProjectMember => (path, None),
        Endpoint::TransferOwnership => (path, Some(json!({"user_id": ids.user}))),
        Endpoint::RotateKey => (path, Some(json!({"overlap_seconds": 60}))),
        Endpoint::GetSecurityPolicy => (path, None),
        Endpoint::PutSecurityPolicy => (
            path,
            Some(
                json!({"require_mfa": false, "ip_allowlist": [], "session_lifetime_seconds": 3600}),
            ),
        ),
    }
}

fn documented(route: &Route, status: StatusCode) {
    assert!(
        openapi::statuses(route.endpoint).contains(&status.as_u16()),
        "{} {} answered {status}, which its OpenAPI entry does not list",
        route.method,
        route.path
    );
}

/// Every route, with every credential of org A (each role's JWT and an API key), against
/// org B: `404` or `403`, never B's data, and B is unchanged. Nested ids of B under A's own
/// org are `404` too.
#[tokio::test]
async fn tenant_isolation_every_route() {
    let mem = world(PlanId::Starter).await;
    let secrets = [
        "Beta Corp",
        "beta-corp",
        "prj_beta1",
        "key_beta1",
        "usr_bowner",
        "tk_test_2c70e12b7a0646f92279f427c7b38e7334d8e5389cff167a1dc30e73f826b683",
        "inv_beta1",
        "ses_beta1",
    ];
    let mut credentials: Vec<(String, String)> = ROLES
        .iter()
        .map(|r| (format!("A {}", r.as_str()), token(&a_user(*r))))
        .collect();
    credentials.push(("A api key".into(), KEY_A.into()));
    let mut n = 0;
    for route in ROUTES {
        if route.endpoint == Endpoint::OpenApi {
            continue; // public, not tenant data
        }
        // A line's period and meter are not another org's resources: org A's line is A's.
        let nested = route.path.matches('{').count() > 1 && route.endpoint != Endpoint::LineEvents;
        let mut targets = vec!["org_b"];
        if nested {
            targets.push("org_a");
        }
        for (who, bearer) in &credentials {
            for org in &targets {
                n += 1;
                let (uri, body) = request_for(route, org, &B_IDS, n);
                let a = call(&mem, route.method, &uri, Some(bearer), body).await;
                // The caller's own orgs and sessions are theirs to list (and open); B's must
                // not be among them.
                let own = matches!(
                    route.endpoint,
                    Endpoint::MyOrgs | Endpoint::MySessions | Endpoint::CreateSession
                ) && a.status.is_success();
                assert!(
                    own || a.status == StatusCode::NOT_FOUND || a.status == StatusCode::FORBIDDEN,
                    "{who}: {} {uri} answered {}: {}",
                    route.method,
                    a.status,
                    a.text
                );
                documented(route, a.status);
                for s in secrets {
                    assert!(
                        !a.text.contains(s),
                        "{who}: {} {uri} leaked {s}: {}",
                        route.method,
                        a.text
                    );
                }
            }
        }
    }
    let (a, b) = (org_id("org_a"), org_id("org_b"));
    assert_eq!(
        mem.list_projects(&b).await.unwrap(),
        [Project {
            id: ProjectId::parse("prj_beta1").unwrap(),
            org_id: b.clone(),
            name: "Project prj_beta1".into(),
            slug: "prj-beta1".into(),
            created_at: t("2026-01-03T00:00:00Z"),
            archived_at: None,
        }],
        "B's project is neither renamed nor archived"
    );
    let mut keys = mem.list_api_keys(&a).await.unwrap();
    let b_keys = mem.list_api_keys(&b).await.unwrap();
    assert_eq!(b_keys.len(), 1, "no key was created in B");
    keys.extend(b_keys);
    assert!(keys.iter().all(|k| k.revoked_at.is_none()));
    let b_invitations = mem.list_invitations(&b, t(NOW)).await.unwrap();
    assert_eq!(
        b_invitations.len(),
        1,
        "no invitation was created in B, nor accepted"
    );
    assert!(
        mem.get_org(&b).await.unwrap().unwrap().deleted_at.is_none(),
        "B is not deleted"
    );
    assert_eq!(
        mem.list_members(&b).await.unwrap().len(),
        1,
        "nobody joined B"
    );
    let b_session = mem
        .get_session(&user("usr_bowner"), &SessionId::parse("ses_beta1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(b_session.revoked_at.is_none(), "B's session is not revoked");
}

/// Every org-scoped route against every role of the org: allowed by the table is 2xx,
/// refused is 403; an API key is 403 on every management route.
#[tokio::test]
async fn role_matrix_every_route_every_role() {
    let mut n = 0;
    for route in ROUTES {
        let Some(action) = route.endpoint.action() else {
            continue;
        };
        for role in ROLES {
            let mem = world(PlanId::Starter).await;
            n += 1;
            let (uri, body) = request_for(route, "org_a", &A_IDS, n);
            let a = call(&mem, route.method, &uri, Some(&token(&a_user(role))), body).await;
            documented(route, a.status);
            if allows(role, action) {
                assert!(
                    a.status.is_success(),
                    "{} {uri} as {role:?}: {} {}",
                    route.method,
                    a.status,
                    a.text
                );
            } else {
                assert_eq!(
                    a.status,
                    StatusCode::FORBIDDEN,
                    "{} {uri} as {role:?}: {}",
                    route.method,
                    a.text
                );
                assert_eq!(a.json["error"]["code"], "forbidden");
            }
        }
        if route.endpoint != Endpoint::Usage {
            let mem = world(PlanId::Starter).await;
            let (uri, body) = request_for(route, "org_a", &A_IDS, 0);
            let a = call(&mem, route.method, &uri, Some(KEY_A), body).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "API key on {uri}");
        }
    }
}

/// Every mutating route writes exactly one audit record per call, allowed or refused
/// (each role, an API key, an outsider, a malformed body), with who, what, outcome, IP and
/// user agent; reads write none.
#[tokio::test]
async fn audit_completeness_every_mutating_route() {
    let mut n = 0;
    for route in ROUTES {
        let mutation = route.endpoint.audit_action().is_some();
        // A user's own sessions are no org's: there is no trail to file them in.
        let own_session = route.path.starts_with("/v1/sessions");
        assert_eq!(
            mutation,
            route.method != "GET" && !own_session,
            "{} {}: mutations are exactly the non-GET routes but one's own sessions",
            route.method,
            route.path
        );
        let mut callers: Vec<(String, String)> = ROLES
            .iter()
            .map(|r| (a_user(*r).to_string(), token(&a_user(*r))))
            .collect();
        callers.push(("apikey:key_alpha1".into(), KEY_A.into()));
        callers.push(("usr_bowner".into(), token(&user("usr_bowner"))));
        for (actor, bearer) in &callers {
            for malformed in [false, true] {
                if malformed
                    && !matches!(
                        route.endpoint,
                        Endpoint::CreateProject | Endpoint::CreateKey
                    )
                {
                    continue;
                }
                let mem = world(PlanId::Starter).await;
                n += 1;
                let (uri, mut body) = request_for(route, "org_a", &A_IDS, n);
                if malformed {
                    body = Some(json!({"nonsense": true}));
                }
                let a = call(&mem, route.method, &uri, Some(bearer), body).await;
                let audit = mem.all_audit().await;
                if !mutation {
                    assert!(
                        audit.is_empty(),
                        "{} {uri} is a read but wrote {audit:?}",
                        route.method
                    );
                    continue;
                }
                if actor == "usr_bowner" && route.endpoint != Endpoint::AcceptInvitation {
                    // Not a member of org_a: refused, and nothing written into org_a's
                    // trail (a stranger's probe is a server log line). Accepting an
                    // invitation is the exception: whoever holds one of org_a's invitation
                    // tokens is on record there, as the invitation's own route decides.
                    assert!(!a.status.is_success(), "{} {uri}", route.method);
                    assert!(
                        audit.is_empty(),
                        "{} {uri} by a non-member wrote {audit:?}",
                        route.method
                    );
                    continue;
                }
                assert_eq!(
                    audit.len(),
                    1,
                    "{} {uri} as {actor}: {} -> {audit:?}",
                    route.method,
                    a.status
                );
                let r = &audit[0];
                assert_eq!(r.org_id, org_id("org_a"));
                assert_eq!(&r.actor, actor);
                assert_eq!(
                    Some(r.action.as_str()),
                    route.endpoint.audit_action().map(|a| a.as_str())
                );
                assert_eq!(r.at, t(NOW));
                assert_eq!(r.ip.as_deref(), Some("203.0.113.9"));
                assert_eq!(r.user_agent.as_deref(), Some("mgmt-tests/1"));
                if a.status.is_success() {
                    assert_eq!(r.outcome, AuditOutcome::Allowed);
                    assert!(r.reason.is_none());
                    assert!(r.after.is_some() || r.before.is_some(), "{r:?}");
                } else {
                    assert_eq!(r.outcome, AuditOutcome::Refused, "{}", a.status);
                    assert_eq!(r.reason.as_deref(), a.json["error"]["code"].as_str());
                    assert!(r.after.is_none());
                }
            }
        }
    }
}

#[tokio::test]
async fn keys_show_the_secret_once_list_without_it_and_revoke() {
    let mem = world(PlanId::Starter).await;
    let admin = as_a(&mem, Role::Admin);
    let a = admin
        .post(
            "/v1/orgs/org_a/keys",
            json!({"name": "ci", "scopes": ["usage:read"], "test": true}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let secret = a.json["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tk_test_"));
    // A key cannot be created already expired.
    let expired = admin
        .post(
            "/v1/orgs/org_a/keys",
            json!({"name": "late", "scopes": ["usage:read"], "expires_at": "2026-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(expired.status, StatusCode::BAD_REQUEST, "{}", expired.text);
    assert_eq!(expired.json["error"]["field"], "expires_at");
    let id = a.json["id"].as_str().unwrap().to_owned();
    assert_eq!(a.json["scopes"], json!(["usage:read"]));

    let listed = admin.get("/v1/orgs/org_a/keys").await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.json["keys"].as_array().unwrap().len(), 2);
    assert!(
        !listed.text.contains(&secret[12..]),
        "the secret is never listed"
    );
    assert!(
        !listed.text.contains(KeyHash::of_secret(&secret).as_str()),
        "nor its hash"
    );
    assert!(!listed.text.contains("hash"));

    // The new key reads usage; once revoked it is refused.
    let ok = caller(&mem, &secret).get("/v1/usage?meter=api_calls").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let r = admin.act(&format!("/v1/orgs/org_a/keys/{id}/revoke")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["revoked_at"], "2026-11-26T12:30:00Z");
    let refused = caller(&mem, &secret).get("/v1/usage?meter=api_calls").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let unknown = admin.act("/v1/orgs/org_a/keys/key_nope/revoke").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let (audit, recs) = admin.audit("key.revoke").await;
    assert_eq!(recs.len(), 2, "{}", audit.text);
    assert_eq!(recs.iter().filter(|r| r["outcome"] == "allowed").count(), 1);
    let allowed = recs.iter().find(|r| r["outcome"] == "allowed").unwrap();
    assert_eq!(allowed["before"]["revoked_at"], Value::Null);
    assert_eq!(allowed["after"]["revoked_at"], "2026-11-26T12:30:00Z");
    assert_eq!(allowed["resource"], format!("key:{id}"));
}

/// The caps come from the catalogue the process loaded, not from a built-in table: an
/// operator's free plan with 2 projects lets org A make a second one and refuses a third.
#[tokio::test]
async fn the_api_enforces_the_loaded_catalogue_s_caps() {
    let mut mem = world(PlanId::Free).await; // org A has its one project
    let mut free = tally_core::plan::Plan::builtin(PlanId::Free);
    free.limits.projects = Some(2);
    mem.plans.insert(PlanId::Free, free);
    let owner = token(&a_user(Role::Owner));
    let create = |slug: &'static str| {
        let (mem, owner) = (mem.clone(), owner.clone());
        async move { caller(&mem, &owner).new_project(slug, slug).await }
    };
    let two = create("two").await;
    assert_eq!(two.status, StatusCode::CREATED, "{}", two.text);
    let three = create("three").await;
    assert_eq!(three.status, StatusCode::FORBIDDEN, "{}", three.text);
    assert_eq!(three.json["error"]["limit"], 2);
    assert_eq!(three.json["error"]["count"], 2);
}

#[tokio::test]
async fn projects_past_the_plan_limit_are_403_with_limit_and_count() {
    let mem = world(PlanId::Free).await; // free: 1 project, which org A has
    let owner = as_a(&mem, Role::Owner);
    let a = owner.new_project("Two", "two").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert_eq!(a.json["error"]["code"], "plan_limit_exceeded");
    assert_eq!(a.json["error"]["limit"], 1);
    assert_eq!(a.json["error"]["count"], 1);
    assert_eq!(a.json["error"]["field"], "projects");

    let mem = world(PlanId::Starter).await;
    let owner = as_a(&mem, Role::Owner);
    let a = owner.new_project("Two", "two").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = a.json["id"].as_str().unwrap().to_owned();
    let got = as_a(&mem, Role::Admin)
        .get(&format!("/v1/orgs/org_a/projects/{id}"))
        .await;
    assert_eq!(got.json["slug"], "two");
    let dup = owner.new_project("Two", "two").await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let bad = owner.new_project("X", "Not A Slug").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json["error"]["field"], "slug");
    let listed = owner.get("/v1/orgs/org_a/projects").await;
    assert_eq!(listed.json["projects"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_org_and_its_members_are_read_by_members() {
    let mem = world(PlanId::Starter).await;
    let viewer = token(&a_user(Role::Viewer));
    let a = caller(&mem, &viewer).get("/v1/orgs/org_a").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["name"], "Alpha Ltd");
    assert_eq!(a.json["owner_id"], "usr_aowner");
    let m = caller(&mem, &viewer).get("/v1/orgs/org_a/members").await;
    let roles = texts(&m.json, "members", "role");
    assert_eq!(roles, ["owner", "admin", "member", "viewer"]);
    // Tokens: none, garbage, expired, another secret.
    assert_eq!(
        call(&mem, "GET", "/v1/orgs/org_a", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        caller(&mem, "a.b.c").get("/v1/orgs/org_a").await.status,
        StatusCode::UNAUTHORIZED
    );
    let expired = jwt()
        .mint(
            &a_user(Role::Owner),
            t("2026-11-25T00:00:00Z"),
            chrono::Duration::hours(1),
        )
        .unwrap();
    assert_eq!(
        caller(&mem, &expired).get("/v1/orgs/org_a").await.status,
        StatusCode::UNAUTHORIZED
    );
    let forged = JwtConfig::hs256(&[9; 32])
        .unwrap()
        .mint(&a_user(Role::Owner), t(NOW), chrono::Duration::hours(1))
        .unwrap();
    assert_eq!(
        caller(&mem, &forged).get("/v1/orgs/org_a").await.status,
        StatusCode::UNAUTHORIZED
    );
    // Unknown and malformed org ids look the same as another org's.
    for org in ["org_zzz", "garbage", "org_b"] {
        let a = caller(&mem, &viewer).get(&format!("/v1/orgs/{org}")).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{org}");
    }
}

#[tokio::test]
async fn usage_accepts_a_members_jwt_with_org_id() {
    let mem = world(PlanId::Starter).await;
    let viewer = as_a(&mem, Role::Viewer);
    let a = viewer.get("/v1/usage?meter=api_calls&org_id=org_a").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["org_id"], "org_a");
    let a = viewer.get("/v1/usage?meter=api_calls").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["error"]["field"], "org_id");
    let a = viewer.get("/v1/usage?meter=api_calls&org_id=org_b").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

/// Test-mode usage (sent with `tk_test_` keys, kept under the org's test twin) is read with
/// `mode=test` or a test key, never mixed into live usage; a key reads its own mode only.
#[tokio::test]
async fn test_mode_usage_is_read_apart_and_a_key_reads_its_own_mode_only() {
    let mem = world(PlanId::Starter).await;
    let test_key = "tk_test_5e1f0c3b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
    mem.store
        .create_api_key(&the_key(test_key, "key_alphatest", "org_a"))
        .await
        .unwrap();
    let sent_in_test = seeded_usage(org_id("org_a").test_twin(), 7);
    mem.store.apply_batch(&[sent_in_test]).await.unwrap();
    let month = "meter=api_calls&granularity=month";
    let value = |a: &Answer| a.json["series"][0]["value"].as_str().unwrap().to_owned();

    let viewer = token(&a_user(Role::Viewer));
    let read = |q: String, who: String| {
        let mem = &mem;
        async move { call(mem, "GET", &format!("/v1/usage?{q}"), Some(&who), None).await }
    };
    let live = read(format!("{month}&org_id=org_a"), viewer.clone()).await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.text);
    assert_eq!(
        (value(&live), live.json["mode"].clone()),
        ("2500".into(), json!("live"))
    );
    let test = read(format!("{month}&org_id=org_a&mode=test"), viewer.clone()).await;
    assert_eq!(test.status, StatusCode::OK, "{}", test.text);
    assert_eq!(
        (value(&test), test.json["mode"].clone()),
        ("7".into(), json!("test"))
    );
    assert_eq!(test.json["org_id"], "org_a", "the org, not its twin");
    let bad = read(format!("{month}&org_id=org_a&mode=sandbox"), viewer).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json["error"]["field"], "mode");

    // A test key reads test usage by default and is refused live usage; a live key the reverse.
    let by_test_key = read(month.into(), test_key.into()).await;
    assert_eq!(by_test_key.status, StatusCode::OK, "{}", by_test_key.text);
    assert_eq!(value(&by_test_key), "7");
    let refused = read(format!("{month}&mode=live"), test_key.into()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    let refused = read(format!("{month}&mode=test"), KEY_A.into()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    let by_live_key = read(month.into(), KEY_A.into()).await;
    assert_eq!(value(&by_live_key), "2500");
    // A rotated test key stays a test key.
    let admin = as_a(&mem, Role::Admin);
    let rotated = admin
        .post("/v1/orgs/org_a/keys/key_alphatest/rotate", json!({}))
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.text);
    assert!(
        rotated.json["key"]
            .as_str()
            .unwrap()
            .starts_with("tk_test_")
    );

    // The usage summary (what plan limits and alerts see) counts live usage only.
    let owner = as_a(&mem, Role::Owner);
    let summary = owner.get("/v1/orgs/org_a/usage/summary").await;
    assert!(summary.text.contains("\"2500\""), "{}", summary.text);
    assert!(!summary.text.contains("2507"), "{}", summary.text);
}

/// Members and viewers read the usage of the projects they are on and no other, as the
/// project routes show them; owners and admins (and keys) read every project's.
#[tokio::test]
async fn usage_of_a_project_is_read_only_by_those_who_see_the_project() {
    let mem = world(PlanId::Starter).await;
    mem.store
        .create_project(&Project {
            id: ProjectId::parse("prj_alpha2").unwrap(),
            org_id: org_id("org_a"),
            name: "Secret".into(),
            slug: "secret".into(),
            created_at: t("2026-01-03T00:00:00Z"),
            archived_at: None,
        })
        .await
        .unwrap();
    let read =
        |project: &str| format!("/v1/usage?meter=api_calls&org_id=org_a&project_id={project}");
    for role in [Role::Member, Role::Viewer] {
        let bearer = token(&a_user(role));
        let own = caller(&mem, &bearer).get(&read("prj_alpha1")).await;
        assert_eq!(own.status, StatusCode::OK, "{role:?}: {}", own.text);
        let other = caller(&mem, &bearer).get(&read("prj_alpha2")).await;
        assert_eq!(
            other.status,
            StatusCode::NOT_FOUND,
            "{role:?}: {}",
            other.text
        );
        assert_eq!(other.json["error"]["field"], "project_id");
        let project = caller(&mem, &bearer)
            .get("/v1/orgs/org_a/projects/prj_alpha2")
            .await;
        assert_eq!(
            project.status,
            StatusCode::NOT_FOUND,
            "the project routes agree"
        );
        // Split by project, the answer holds only the projects they see.
        let split = caller(&mem, &bearer).get(PER_PROJECT).await;
        assert_eq!(split.status, StatusCode::OK, "{role:?}: {}", split.text);
        let split_ids = texts(&split.json, "projects", "project_id");
        assert_eq!(split_ids, ["prj_alpha1"], "{role:?}");
    }
    for role in [Role::Owner, Role::Admin] {
        let bearer = token(&a_user(role));
        let a = caller(&mem, &bearer).get(&read("prj_alpha2")).await;
        assert_eq!(a.status, StatusCode::OK, "{role:?}: {}", a.text);
        let split = caller(&mem, &bearer).get(PER_PROJECT).await;
        let split_ids = texts(&split.json, "projects", "project_id");
        assert_eq!(split_ids, ["prj_alpha1", "prj_alpha2"], "{role:?}");
    }
}

const PER_PROJECT: &str = "/v1/usage?meter=api_calls&org_id=org_a&per_project=true";

/// The item of `answer[list]` (an invoice's `lines`, a summary's `meters`) of `meter`.
fn of_meter<'a>(answer: &'a Value, list: &str, meter: &str) -> &'a Value {
    answer[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["meter"] == meter)
        .unwrap()
}

/// The text `field` of each element of the array `answer[list]`, in its order.
fn texts<'a>(answer: &'a Value, list: &str, field: &str) -> Vec<&'a str> {
    answer[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list}: {answer}"))
        .iter()
        .map(|e| e[field].as_str().unwrap())
        .collect()
}

/// One token bucket per user across the management API: a burst of 40, then 429 with
/// Retry-After, refilling 20 a second; another user is not affected.
#[tokio::test]
async fn each_user_is_rate_limited_on_the_management_api() {
    let mem = world(PlanId::Starter).await;
    let router = app(&mem);
    let get = |bearer: String| {
        let router = router.clone();
        async move {
            let req = Request::get("/v1/orgs/org_a")
                .header(header::AUTHORIZATION, format!("Bearer {bearer}"))
                .body(Body::empty())
                .unwrap();
            router.oneshot(req).await.unwrap()
        }
    };
    let owner = token(&a_user(Role::Owner));
    for i in 0..tally_api::USER_RATE.burst {
        assert_eq!(
            get(owner.clone()).await.status(),
            StatusCode::OK,
            "request {i}"
        );
    }
    let refused = get(owner.clone()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
    let body = axum::body::to_bytes(refused.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another user has a bucket of their own.
    let admin = token(&a_user(Role::Admin));
    assert_eq!(get(admin).await.status(), StatusCode::OK);
    // A second later, 20 more.
    mem.clock.set(t(NOW) + chrono::Duration::seconds(1));
    for i in 0..tally_api::USER_RATE.per_second {
        assert_eq!(
            get(owner.clone()).await.status(),
            StatusCode::OK,
            "refill {i}"
        );
    }
    assert_eq!(get(owner).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_audit_trail_pages_newest_first_with_filters() {
    let mem = world(PlanId::Pro).await;
    // Minted before the first request below: a token issued in the future is refused.
    let owner = jwt()
        .mint(
            &a_user(Role::Owner),
            t(NOW) - chrono::Duration::minutes(10),
            chrono::Duration::hours(1),
        )
        .unwrap();
    // Records of one instant are ordered by id; the five are a minute apart for the check.
    for i in 0..5 {
        mem.clock.set(t(NOW) - chrono::Duration::minutes(10 - i));
        let a = caller(&mem, &owner)
            .new_project("P", &format!("p{i}"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
    }
    mem.clock.set(t(NOW));
    let member = as_a(&mem, Role::Member).new_project("P", "nope").await;
    assert_eq!(member.status, StatusCode::FORBIDDEN);

    let mut seen = Vec::new();
    let mut uri = "/v1/orgs/org_a/audit?limit=2".to_owned();
    loop {
        let page = caller(&mem, &owner).get_ok(&uri).await;
        let recs = page.json["records"].as_array().unwrap().clone();
        assert!(recs.len() <= 2);
        seen.extend(recs);
        match page.json["next_cursor"].as_str() {
            Some(c) => {
                uri = format!(
                    "/v1/orgs/org_a/audit?limit=2&cursor={}",
                    c.replace('#', "%23")
                )
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    let times: Vec<&str> = seen.iter().map(|r| r["at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    assert_eq!(seen[0]["outcome"], "refused");
    assert_eq!(seen[0]["actor"], "usr_amember");

    let refused_only = caller(&mem, &owner)
        .get("/v1/orgs/org_a/audit?user=usr_amember")
        .await;
    assert_eq!(refused_only.json["records"].as_array().unwrap().len(), 1);
    let window = caller(&mem, &owner)
        .get("/v1/orgs/org_a/audit?from=2026-11-26T12:21:00Z&to=2026-11-26T12:23:00Z")
        .await;
    assert_eq!(
        window.json["records"].as_array().unwrap().len(),
        2,
        "{}",
        window.text
    );
    for bad in [
        "limit=0",
        "limit=201",
        "limit=x",
        "cursor=zzz",
        "from=yesterday",
    ] {
        let a = caller(&mem, &owner)
            .get(&format!("/v1/orgs/org_a/audit?{bad}"))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let viewer = get_with(&mem, "/v1/orgs/org_a/audit", &token(&a_user(Role::Viewer))).await;
    assert_eq!(viewer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn owners_and_admins_rename_but_never_replan() {
    let mem = world(PlanId::Starter).await;
    let admin = token(&a_user(Role::Admin));
    let owner = token(&a_user(Role::Owner));
    for i in 0..2 {
        let a = caller(&mem, &owner)
            .new_project("P", &format!("p{i}"))
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
    }
    // The name changes; the plan is the operator's, whatever the caller's role or the
    // plan asked for (a cheaper one to shrink the bill, a richer one to skip its fee).
    let a = caller(&mem, &admin)
        .patch("/v1/orgs/org_a", json!({"name": "Alpha Two"}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["name"], "Alpha Two");
    for (who, body) in [
        (&admin, json!({"name": "Alpha Three", "plan": "free"})),
        (&owner, json!({"plan": "enterprise"})),
        (&owner, json!({"plan": "gold"})),
    ] {
        let a = caller(&mem, who)
            .patch("/v1/orgs/org_a", body.clone())
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{body}: {}", a.text);
        assert_eq!(a.json["error"]["code"], "plan_change_forbidden", "{body}");
        assert_eq!(a.json["error"]["field"], "plan", "{body}");
    }
    let got = caller(&mem, &owner).get("/v1/orgs/org_a").await;
    assert_eq!(got.json["plan"], "starter");
    assert_eq!(got.json["name"], "Alpha Two");
    let (_, recs) = caller(&mem, &owner).audit("org.update").await;
    assert_eq!(recs.len(), 4);
    let allowed: Vec<&Value> = recs.iter().filter(|r| r["outcome"] == "allowed").collect();
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0]["before"]["name"], "Alpha Ltd");
    assert_eq!(allowed[0]["after"]["name"], "Alpha Two");
    assert!(
        recs.iter()
            .filter(|r| r["outcome"] != "allowed")
            .all(|r| r.to_string().contains("plan_change_forbidden")),
        "{recs:?}"
    );
}

#[tokio::test]
async fn members_join_by_invitation_only_and_are_changed_and_removed_but_never_the_owner() {
    let mem = world(PlanId::Starter).await;
    for (id, email) in [
        ("usr_carol", "carol@example.com"),
        ("usr_dave", "dave@example.com"),
    ] {
        common::add_user(&mem, id, email, t(NOW)).await;
    }
    let admin = token(&a_user(Role::Admin));
    // Nobody is added to an org without consent: there is no route that adds an existing
    // user by id; a user joins by accepting an invitation sent to their email.
    let a = caller(&mem, &admin)
        .post(
            "/v1/orgs/org_a/members",
            json!({"user_id": "usr_carol", "role": "viewer"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{}", a.text);
    assert!(
        mem.get_role(&org_id("org_a"), &user("usr_carol"))
            .await
            .unwrap()
            .is_none()
    );
    // Carol accepted an invitation (what the invitation tests drive end to end).
    common::add_member(&mem, "org_a", "usr_carol", Role::Viewer, t(NOW)).await;
    let p = caller(&mem, &admin)
        .patch("/v1/orgs/org_a/members/usr_carol", json!({"role": "admin"}))
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    assert_eq!(p.json["role"], "admin");
    for (method, body) in [("PATCH", Some(json!({"role": "admin"}))), ("DELETE", None)] {
        let a = call(
            &mem,
            method,
            "/v1/orgs/org_a/members/usr_aowner",
            Some(&admin),
            body,
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{method}: {}", a.text);
    }
    let d = caller(&mem, &admin)
        .delete("/v1/orgs/org_a/members/usr_carol")
        .await;
    assert_eq!(d.status, StatusCode::OK);
    let gone = caller(&mem, &admin)
        .delete("/v1/orgs/org_a/members/usr_carol")
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    // The free plan allows 3 users; org A has 4 members and 1 pending invitation already,
    // so another invitation is refused.
    let mem = world(PlanId::Free).await;
    let a = caller(&mem, &admin)
        .invite("carol@example.com", "viewer")
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json["error"]["field"], "users");
    assert_eq!(a.json["error"]["count"], 5);
}

#[tokio::test]
async fn the_owner_hands_over_ownership_to_a_member() {
    let mem = world(PlanId::Starter).await;
    let owner = token(&a_user(Role::Owner));
    let admin = token(&a_user(Role::Admin));
    let body = json!({"user_id": "usr_amember"});
    let a = caller(&mem, &admin)
        .post("/v1/orgs/org_a/transfer", body.clone())
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "admins cannot");
    let a = caller(&mem, &owner)
        .post("/v1/orgs/org_a/transfer", json!({"user_id": "usr_bowner"}))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "only to a member");
    let a = caller(&mem, &owner)
        .post("/v1/orgs/org_a/transfer", body)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["owner_id"], "usr_amember");
    // The old owner is an admin now: may rename, may not transfer, and may demote nobody
    // who owns.
    let again = caller(&mem, &owner)
        .post("/v1/orgs/org_a/transfer", json!({"user_id": "usr_aowner"}))
        .await;
    assert_eq!(again.status, StatusCode::FORBIDDEN);
    let demote = caller(&mem, &owner)
        .patch(
            "/v1/orgs/org_a/members/usr_amember",
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(demote.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn users_list_their_own_orgs_only() {
    let mem = world(PlanId::Starter).await;
    let viewer = a_user(Role::Viewer);
    common::add_member(&mem, "org_b", viewer.as_str(), Role::Member, t(NOW)).await;
    let a = get_with(&mem, "/v1/me/orgs", &token(&viewer)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let orgs: Vec<(&str, &str)> = a.json["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["org"]["id"].as_str().unwrap(),
                o["role"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(orgs, [("org_a", "viewer"), ("org_b", "member")]);
    let a = get_with(&mem, "/v1/me/orgs", &token(&a_user(Role::Owner))).await;
    assert_eq!(a.json["orgs"].as_array().unwrap().len(), 1);
    assert!(!a.text.contains("org_b"));
    let a = caller(&mem, KEY_A).get("/v1/me/orgs").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = call(&mem, "GET", "/v1/me/orgs", None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn keys_rotate_and_the_old_secret_works_for_the_overlap() {
    let mem = world(PlanId::Starter).await;
    let admin = as_a(&mem, Role::Admin);
    let a = admin.rotate(json!({"overlap_seconds": 3600})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let secret = a.json["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tk_live_"), "keeps the mode");
    assert_eq!(a.json["previous"]["expires_at"], "2026-11-26T13:30:00Z");
    assert_eq!(a.json["new"]["name"], "key key_alpha1");
    // Both work now (the old one until the overlap ends).
    for k in [KEY_A, secret.as_str()] {
        let u = caller(&mem, k).get("/v1/usage?meter=api_calls").await;
        assert_eq!(u.status, StatusCode::OK);
    }
    let audit = admin.get("/v1/orgs/org_a/audit?action=key.rotate").await;
    assert!(
        !audit.text.contains(&secret),
        "the audit trail never holds a secret"
    );
    let too_long = admin.rotate(json!({"overlap_seconds": 99_999_999})).await;
    assert_eq!(too_long.status, StatusCode::BAD_REQUEST);
    admin.act("/v1/orgs/org_a/keys/key_alpha1/revoke").await;
    let revoked = admin.rotate(json!({})).await;
    assert_eq!(revoked.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn the_usage_summary_shows_value_allowance_and_percentage() {
    // Org A's usage summary in a world on `plan`, as its user with `role` reads it.
    async fn summary(plan: PlanId, role: Role) -> Answer {
        let mem = world(plan).await;
        as_a(&mem, role)
            .get_ok("/v1/orgs/org_a/usage/summary")
            .await
    }
    let a = summary(PlanId::Free, Role::Viewer).await;
    assert_eq!(a.json["period"], "2026-11");
    assert_eq!(a.json["plan"], "free");
    let api = of_meter(&a.json, "meters", "api_calls");
    assert_eq!(api["value"], "2500");
    assert_eq!(api["included"], "10000");
    assert_eq!(api["limit"], "10000", "free plan limits are hard");
    assert_eq!(api["percent_used"], "25.00");
    let bw = of_meter(&a.json, "meters", "bandwidth_bytes");
    assert_eq!(bw["value"], "0");
    // Every free meter is capped, bandwidth included (1 GiB).
    assert_eq!(bw["included"], "1073741824");
    assert_eq!(bw["limit"], "1073741824");
    assert_eq!(bw["percent_used"], "0.00");

    let a = summary(PlanId::Starter, Role::Owner).await;
    let api = of_meter(&a.json, "meters", "api_calls");
    assert_eq!(api["percent_used"], "2.50");
    assert!(
        api.get("limit").is_none(),
        "paid plans bill overage instead"
    );
    // A meter without an allowance (starter's bandwidth) shows no allowance or percentage.
    let bw = of_meter(&a.json, "meters", "bandwidth_bytes");
    assert!(
        bw.get("included").is_none() && bw.get("percent_used").is_none(),
        "{bw}"
    );
}

#[tokio::test]
async fn invitations_are_sent_listed_accepted_once_and_revoked() {
    let mem = world(PlanId::Starter).await;
    let admin = token(&a_user(Role::Admin));
    let a = caller(&mem, &admin)
        .invite("Carol@Example.com", "admin")
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let invite = a.json["token"].as_str().unwrap().to_owned();
    let id = a.json["id"].as_str().unwrap().to_owned();
    assert!(invite.starts_with("tinv_") && invite.len() == 5 + 64);
    assert_eq!(a.json["email"], "carol@example.com");
    assert_eq!(a.json["expires_at"], "2026-12-03T12:30:00Z", "7 days");
    let stored = mem
        .find_invitation(&KeyHash::of_secret(&invite), t(NOW))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.id.as_str(), id, "found by the token's hash");
    assert_eq!(
        stored.hash,
        KeyHash::of_secret(&invite),
        "only the hash is kept"
    );
    // The same email twice, and owner as a role, are refused.
    let again = caller(&mem, &admin)
        .invite("carol@example.com", "viewer")
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    for (body, field) in [
        (
            json!({"email": "dave@example.com", "role": "owner"}),
            "role",
        ),
        (json!({"email": "not an email", "role": "member"}), "email"),
    ] {
        let a = caller(&mem, &admin)
            .post("/v1/orgs/org_a/invitations", body)
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.json["error"]["field"], field);
    }
    let listed = caller(&mem, &admin).get("/v1/orgs/org_a/invitations").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert_eq!(listed.json["invitations"].as_array().unwrap().len(), 2);
    assert!(
        !listed.text.contains(&invite[5..]),
        "the token is never listed"
    );
    assert!(!listed.text.contains(KeyHash::of_secret(&invite).as_str()));
    assert!(!listed.text.contains("hash") && !listed.text.contains("token"));

    // Carol signs up and accepts; a second accept is refused.
    common::add_user(&mem, "usr_carol", "carol@example.com", t(NOW)).await;
    let carol = token(&user("usr_carol"));
    let accept = |bearer: String, token: String| {
        let mem = mem.clone();
        async move {
            caller(&mem, &bearer)
                .post("/v1/invitations/accept", json!({ "token": token }))
                .await
        }
    };
    let wrong = accept(token(&user("usr_invitee")), invite.clone()).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "another email");
    assert!(!wrong.text.contains("carol"), "{}", wrong.text);
    let key = accept(KEY_A.to_owned(), invite.clone()).await;
    assert_eq!(key.status, StatusCode::FORBIDDEN, "not an API key");
    let ok = accept(carol.clone(), invite.clone()).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    assert_eq!(ok.json["org_id"], "org_a");
    assert_eq!(ok.json["role"], "admin");
    let role = caller(&mem, &carol).get("/v1/orgs/org_a/audit").await;
    assert_eq!(role.status, StatusCode::OK, "carol is an admin of A now");
    let twice = accept(carol.clone(), invite.clone()).await;
    assert_eq!(twice.status, StatusCode::CONFLICT, "{}", twice.text);
    let unknown = accept(carol.clone(), "tinv_nope".into()).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let listed = caller(&mem, &admin).get("/v1/orgs/org_a/invitations").await;
    assert_eq!(
        listed.json["invitations"].as_array().unwrap().len(),
        1,
        "an accepted invitation is no longer pending"
    );
    let (audit, recs) = caller(&mem, &admin).audit("invitation.accept").await;
    assert_eq!(recs.len(), 4, "{}", audit.text);
    assert_eq!(recs.iter().filter(|r| r["outcome"] == "allowed").count(), 1);
    assert!(
        !audit.text.contains(&invite),
        "the audit trail never holds a token"
    );

    // Revoked: gone from the list, and its token no longer accepted.
    let r = caller(&mem, &admin)
        .delete("/v1/orgs/org_a/invitations/inv_alpha1")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["id"], "inv_alpha1");
    let gone = caller(&mem, &admin)
        .delete("/v1/orgs/org_a/invitations/inv_alpha1")
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let revoked = accept(token(&user("usr_invitee")), INVITE_A.into()).await;
    assert_eq!(revoked.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn expired_invitations_are_refused_and_no_longer_count() {
    let mem = world(PlanId::Starter).await;
    // A's invitation, as it is once its expiry has come.
    let a_inv = InvitationId::parse("inv_alpha1").unwrap();
    mem.revoke_invitation(&Revocation::new(&org_id("org_a"), &a_inv, t(NOW)))
        .await
        .unwrap()
        .unwrap();
    let mut expired = the_invitation(INVITE_A, "inv_alpha1", "org_a", "usr_aowner");
    expired.expires_at = t(NOW);
    mem.create_invitation(&expired).await.unwrap();
    let a = caller(&mem, &token(&user("usr_invitee")))
        .post("/v1/invitations/accept", json!({ "token": INVITE_A }))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    let listed = as_a(&mem, Role::Owner)
        .get("/v1/orgs/org_a/invitations")
        .await;
    assert!(listed.json["invitations"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn pending_invitations_count_against_the_user_limit() {
    // Starter allows 10 users: org A has 4 members and 1 pending invitation.
    let mem = world(PlanId::Starter).await;
    let owner = as_a(&mem, Role::Owner);
    for i in 0..5 {
        let a = owner.invite(&format!("p{i}@example.com"), "viewer").await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }
    for (uri, body) in [(
        "/v1/orgs/org_a/invitations",
        json!({"email": "one-more@example.com", "role": "viewer"}),
    )] {
        let a = owner.post(uri, body).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{uri}: {}", a.text);
        assert_eq!(a.json["error"]["code"], "plan_limit_exceeded");
        assert_eq!(a.json["error"]["field"], "users");
        assert_eq!(a.json["error"]["limit"], 10);
        assert_eq!(a.json["error"]["count"], 10);
    }
    // Accepting turns a pending invitation into a member: the count stays, so it is allowed.
    let a = caller(&mem, &token(&user("usr_invitee")))
        .post("/v1/invitations/accept", json!({ "token": INVITE_A }))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["role"], "member");
}

#[tokio::test]
async fn the_owner_deletes_the_org_its_keys_stop_and_its_routes_are_404() {
    let mem = world(PlanId::Starter).await;
    let owner = token(&a_user(Role::Owner));
    let admin = token(&a_user(Role::Admin));
    let ok = caller(&mem, KEY_A).get("/v1/usage?meter=api_calls").await;
    assert_eq!(ok.status, StatusCode::OK);
    let a = caller(&mem, &admin).delete("/v1/orgs/org_a").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "admins cannot");
    let a = caller(&mem, &owner).delete("/v1/orgs/org_a").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["deleted_at"], NOW);
    // Every key is revoked, so the key is refused; the org is gone for its members.
    let refused = caller(&mem, KEY_A).get("/v1/usage?meter=api_calls").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(
        mem.list_api_keys(&org_id("org_a"))
            .await
            .unwrap()
            .iter()
            .all(|k| k.revoked_at == Some(t(NOW)))
    );
    for (method, uri) in [
        ("GET", "/v1/orgs/org_a"),
        ("GET", "/v1/orgs/org_a/projects"),
        ("DELETE", "/v1/orgs/org_a"),
    ] {
        let a = call(&mem, method, uri, Some(&owner), None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{method} {uri}");
    }
    let mine = caller(&mem, &owner).get("/v1/me/orgs").await;
    assert_eq!(mine.json["orgs"], json!([]));
    // Its invitation can no longer be accepted either.
    let accept = caller(&mem, &token(&user("usr_invitee")))
        .post("/v1/invitations/accept", json!({ "token": INVITE_A }))
        .await;
    assert_eq!(accept.status, StatusCode::NOT_FOUND, "{}", accept.text);
    let audit = mem.all_audit().await;
    let recs: Vec<&AuditRecord> = audit.iter().filter(|r| r.action == "org.delete").collect();
    // The admin's refused delete and the owner's delete; the owner's second try finds no
    // org (it is gone), which is a server log line, not a record in its trail.
    assert_eq!(recs.len(), 2, "allowed and refused deletes are audited");
    assert_eq!(
        recs.iter()
            .filter(|r| r.outcome == AuditOutcome::Refused)
            .count(),
        1
    );
}

#[tokio::test]
async fn projects_are_renamed_and_archived_and_archived_ones_free_a_slot() {
    let mem = world(PlanId::Free).await; // free: 1 project, which org A has
    let admin = token(&a_user(Role::Admin));
    let a = caller(&mem, &admin)
        .patch(
            "/v1/orgs/org_a/projects/prj_alpha1",
            json!({"name": "Alpha Main"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["name"], "Alpha Main");
    assert_eq!(a.json["slug"], "prj-alpha1");
    assert!(a.json.get("archived_at").is_none());
    let bad = caller(&mem, &admin)
        .patch("/v1/orgs/org_a/projects/prj_alpha1", json!({"name": ""}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json["error"]["field"], "name");
    let full = caller(&mem, &admin).new_project("Two", "two").await;
    assert_eq!(full.status, StatusCode::FORBIDDEN, "the plan is full");

    let a = caller(&mem, &admin)
        .act("/v1/orgs/org_a/projects/prj_alpha1/archive")
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["archived_at"], NOW);
    let listed = caller(&mem, &admin).get("/v1/orgs/org_a/projects").await;
    assert_eq!(
        listed.json["projects"][0]["archived_at"], NOW,
        "listed, marked"
    );
    let two = caller(&mem, &admin).new_project("Two", "two").await;
    assert_eq!(
        two.status,
        StatusCode::CREATED,
        "archived projects do not count"
    );
    for (method, uri) in [
        ("PATCH", "/v1/orgs/org_a/projects/prj_nope"),
        ("POST", "/v1/orgs/org_a/projects/prj_nope/archive"),
        ("POST", "/v1/orgs/org_a/projects/prj_beta1/archive"),
    ] {
        let body = (method == "PATCH").then(|| json!({"name": "X"}));
        let a = call(&mem, method, uri, Some(&admin), body).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{method} {uri}");
    }
    let audit = caller(&mem, &admin)
        .get("/v1/orgs/org_a/audit?resource=project:prj_alpha1")
        .await;
    let recs = audit.json["records"].as_array().unwrap();
    let archived = recs
        .iter()
        .find(|r| r["action"] == "project.archive")
        .unwrap();
    assert!(archived["before"].get("archived_at").is_none());
    assert_eq!(archived["after"]["archived_at"], NOW);
}

#[tokio::test]
async fn members_and_viewers_see_only_the_projects_they_are_on() {
    let mem = world(PlanId::Starter).await;
    let admin = token(&a_user(Role::Admin));
    let member = as_a(&mem, Role::Member);
    let two = caller(&mem, &admin).new_project("Two", "two").await;
    let two = two.json["id"].as_str().unwrap().to_owned();
    let ids = |a: &Answer| -> Vec<String> {
        a.json["projects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = caller(&mem, &admin).get("/v1/orgs/org_a/projects").await;
    assert_eq!(ids(&all), ["prj_alpha1", two.as_str()], "admins see all");
    let mine = member.get("/v1/orgs/org_a/projects").await;
    assert_eq!(ids(&mine), ["prj_alpha1"]);
    let hidden = member.get(&format!("/v1/orgs/org_a/projects/{two}")).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);

    let add = |user: &'static str| {
        let (mem, admin, two) = (mem.clone(), admin.clone(), two.clone());
        async move {
            caller(&mem, &admin)
                .post(
                    &format!("/v1/orgs/org_a/projects/{two}/members"),
                    json!({ "user_id": user }),
                )
                .await
        }
    };
    let a = add("usr_amember").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(add("usr_amember").await.status, StatusCode::CONFLICT);
    assert_eq!(
        add("usr_bowner").await.status,
        StatusCode::NOT_FOUND,
        "only members of the org"
    );
    let mine = member.get("/v1/orgs/org_a/projects").await;
    assert_eq!(ids(&mine), ["prj_alpha1", two.as_str()]);
    let removed = caller(&mem, &admin)
        .delete(&format!(
            "/v1/orgs/org_a/projects/{two}/members/usr_amember"
        ))
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text);
    let mine = member.get("/v1/orgs/org_a/projects").await;
    assert_eq!(ids(&mine), ["prj_alpha1"]);
    let again = caller(&mem, &admin)
        .delete(&format!(
            "/v1/orgs/org_a/projects/{two}/members/usr_amember"
        ))
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

/// What schemathesis found against the OpenAPI document (scripts/openapi_check.py): a body
/// must be a JSON object (serde alone reads `[null, null]` as `{}`) with each field once, an
/// integer the document allows may be spelled `60.0`, and the invitation token's limit
/// counts characters.
#[tokio::test]
async fn bodies_are_objects_integers_are_whole_and_token_limits_count_characters() {
    let mem = world(PlanId::Starter).await;
    let owner = token(&a_user(Role::Owner));
    let array = caller(&mem, &owner)
        .patch("/v1/orgs/org_a", json!([null, null]))
        .await;
    assert_eq!(array.status, StatusCode::BAD_REQUEST, "{}", array.text);
    assert_eq!(array.json["error"]["code"], "invalid_body");
    assert_eq!(array.json["error"]["field"], "body");
    // A field given twice is ambiguous (which role did the caller mean?): refused, not
    // settled as "the last one wins".
    let twice = call_text(
        &mem,
        "PATCH",
        "/v1/orgs/org_a",
        Some(&owner),
        Some(r#"{"name": "Alpha", "name": "Omega"}"#.to_owned()),
    )
    .await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST, "{}", twice.text);
    assert_eq!(twice.json["error"]["code"], "invalid_body");

    let half = caller(&mem, &owner)
        .rotate(json!({"overlap_seconds": 60.5}))
        .await;
    assert_eq!(half.status, StatusCode::BAD_REQUEST, "{}", half.text);
    let whole = caller(&mem, &owner)
        .rotate(json!({"overlap_seconds": 60.0}))
        .await;
    assert_eq!(whole.status, StatusCode::CREATED, "{}", whole.text);

    // 128 characters of 2 bytes each: within the documented 1–128, so an unknown token (404).
    let long = caller(&mem, &owner)
        .post("/v1/invitations/accept", json!({"token": "é".repeat(128)}))
        .await;
    assert_eq!(long.status, StatusCode::NOT_FOUND, "{}", long.text);
    let too_long = caller(&mem, &owner)
        .post("/v1/invitations/accept", json!({"token": "é".repeat(129)}))
        .await;
    assert_eq!(
        too_long.status,
        StatusCode::BAD_REQUEST,
        "{}",
        too_long.text
    );
}

/// The ledger entries of a report line: owners and admins page through them and rebuild the
/// line's digest and quantity from the pages alone; members, viewers and API keys are
/// refused; bad parameters are 400 naming the parameter.
#[tokio::test]
async fn report_line_events_are_paged_for_owners_and_admins_only() {
    use tally_core::audit::LineTally;
    use tally_core::export::ledger_event;
    let mem = world(PlanId::Starter).await;
    let event = |org: &str, id: String, meter: &str, q: &str, day: u32| Event {
        org_id: org_id(org),
        id: EventId::parse(&id).unwrap(),
        project_id: ProjectId::parse("prj_alpha1").unwrap(),
        meter: MeterName::parse(meter).unwrap(),
        aggregation: Aggregation::Sum,
        quantity: Quantity::parse(q).unwrap(),
        timestamp: t(&format!("2026-03-{day:02}T10:00:00.5Z")),
        properties: json!({"region": "eu", "n": day})
            .as_object()
            .cloned()
            .unwrap(),
    };
    let mut line: Vec<Event> = (0..23)
        .map(|i| {
            event(
                "org_a",
                format!("cm-{i}"),
                "compute_minutes",
                &format!("{i}.5"),
                1 + i,
            )
        })
        .collect();
    let mut all = line.clone();
    all.extend((0..5).map(|i| event("org_a", format!("ac-{i}"), "api_calls", "1", 2 + i)));
    all.push(event("org_a", "cm-apr".into(), "compute_minutes", "9", 1));
    all.last_mut().unwrap().timestamp = t("2026-04-01T00:00:00Z");
    all.push(event("org_b", "cm-0".into(), "compute_minutes", "100", 3));
    all.push(line[0].clone());
    mem.store.apply_batch(&all).await.unwrap();
    let mut want = LineTally::new();
    line.iter().for_each(|e| want.add(e));
    line.clear();

    let base = "/v1/orgs/org_a/reports/2026-03/lines/compute_minutes/events";
    for role in [Role::Owner, Role::Admin] {
        let bearer = token(&a_user(role));
        let mut got = LineTally::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let uri = match &cursor {
                Some(c) => format!("{base}?limit=7&cursor={c}"),
                None => format!("{base}?limit=7"),
            };
            let a = caller(&mem, &bearer).get_ok(&uri).await;
            let events = a.json["events"].as_array().unwrap();
            assert!(events.len() <= 7, "{}", a.text);
            for e in events {
                let props = tally_core::audit::canonical_json(&e["properties"]);
                // The ledger's columns are the event's fields, its canonical properties last.
                let (last, fields) = tally_core::export::LEDGER_COLUMNS.split_last().unwrap();
                assert_eq!(*last, "properties");
                let cells: Vec<&str> = fields
                    .iter()
                    .map(|k| e[*k].as_str().unwrap())
                    .chain([props.as_str()])
                    .collect();
                got.add(&ledger_event(&cells).unwrap());
            }
            pages += 1;
            match a.json["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert!(pages >= 4, "{pages} pages of at most 7");
        assert_eq!(got.event_count(), 23, "{role:?}");
        assert_eq!(got.digest(), want.digest(), "{role:?}");
        assert_eq!(got.quantity(), want.quantity(), "{role:?}");
    }
    let bad = [
        (
            "/v1/orgs/org_a/reports/2026-13/lines/compute_minutes/events".to_owned(),
            "period",
        ),
        (
            "/v1/orgs/org_a/reports/2026-03/lines/Bad%20Meter/events".to_owned(),
            "meter",
        ),
        (format!("{base}?limit=0"), "limit"),
        (format!("{base}?limit=1001"), "limit"),
        (format!("{base}?cursor=not-a-cursor"), "cursor"),
    ];
    assert_ledger_refusals(&mem, base, &bad).await;
}

/// A `ledger.read` route at `base` refuses members, viewers and API keys (`403`), and
/// answers the owner's request of each `(uri, field)` of `bad` with a `400` naming `field`.
async fn assert_ledger_refusals(mem: &World, base: &str, bad: &[(String, &str)]) {
    for role in [Role::Member, Role::Viewer] {
        let a = call(mem, "GET", base, Some(&token(&a_user(role))), None).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{role:?}: {}", a.text);
    }
    let a = call(mem, "GET", base, Some(KEY_A), None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let owner = token(&a_user(Role::Owner));
    for (uri, field) in bad {
        let a = call(mem, "GET", uri, Some(&owner), None).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}: {}", a.text);
        assert_eq!(a.json["error"]["field"], *field, "{uri}: {}", a.text);
    }
}

/// `GET /v1/orgs/{org_id}/export`: owners and admins get the month's ledger entries or
/// counters as CSV, streamed (no `Content-Length`: the body is sent a page at a time);
/// members, viewers and API keys are refused.
#[tokio::test]
async fn the_export_streams_csv_to_owners_and_admins_only() {
    let mem = world(PlanId::Starter).await;
    let events: Vec<Event> = (0..1_203u32)
        .map(|i| Event {
            org_id: org_id("org_a"),
            id: EventId::parse(&format!("ex-{i}")).unwrap(),
            project_id: ProjectId::parse("prj_alpha1").unwrap(),
            meter: MeterName::parse(if i % 3 == 0 {
                "api_calls"
            } else {
                "compute_minutes"
            })
            .unwrap(),
            aggregation: Aggregation::Sum,
            quantity: Quantity::parse("2").unwrap(),
            timestamp: t(&format!("2026-03-{:02}T10:00:00Z", 1 + i % 28)),
            properties: Default::default(),
        })
        .collect();
    for chunk in events.chunks(500) {
        mem.store.apply_batch(chunk).await.unwrap();
    }
    let base = "/v1/orgs/org_a/export?period=2026-03";
    for role in [Role::Owner, Role::Admin] {
        let bearer = token(&a_user(role));
        let req = Request::builder()
            .uri(format!("{base}&kind=ledger&meter=compute_minutes"))
            .header(header::AUTHORIZATION, format!("Bearer {bearer}"))
            .body(Body::empty())
            .unwrap();
        let res = app(&mem).oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{role:?}");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/csv; charset=utf-8"
        );
        assert!(
            res.headers().get(header::CONTENT_LENGTH).is_none(),
            "a streamed body has no length"
        );
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("event_id,org_id,project_id,meter,aggregation,quantity,timestamp,properties")
        );
        let rows: Vec<&str> = lines.collect();
        assert_eq!(rows.len(), 802, "{role:?}");
        assert!(rows.iter().all(|r| r.contains(",compute_minutes,sum,2,")));
        let ids: std::collections::HashSet<&str> =
            rows.iter().map(|r| r.split(',').next().unwrap()).collect();
        assert_eq!(ids.len(), 802, "each entry once");
    }
    let owner = as_a(&mem, Role::Owner);
    let a = owner.get_ok(base).await;
    assert!(
        a.text
            .lines()
            .any(|l| l == "org_a,,compute_minutes,month,2026-03-01T00:00:00Z,1604"),
        "{}",
        a.text
    );
    let bad = [
        ("/v1/orgs/org_a/export".to_owned(), "period"),
        (format!("{base}&kind=all"), "kind"),
        (format!("{base}&meter=Bad%20Meter"), "meter"),
    ];
    assert_ledger_refusals(&mem, base, &bad).await;
}

/// The upcoming invoice through the route: starter, 2,500 API calls by 2026-11-26T12:30Z
/// (under the 100,000 included), so the month so far is the $29.00 fee. Elapsed: 25 days
/// 12.5 hours = 2,205,000 s of November's 2,592,000, so the calls project to
/// 2,500 × 2,592,000 / 2,205,000 = 2,938.775510204 (9 places), still included: $29.00.
#[tokio::test]
async fn the_upcoming_invoice_prices_the_month_so_far_and_projects_it() {
    let mem = world(PlanId::Starter).await;
    let a = as_a(&mem, Role::Viewer)
        .get_ok("/v1/orgs/org_a/invoices/upcoming")
        .await;
    assert_eq!(a.json["period"], "2026-11");
    assert_eq!(a.json["plan"], "starter");
    assert_eq!(a.json["as_of"], NOW);
    assert_eq!(a.json["days_in_month"], 30);
    assert_eq!(a.json["days_elapsed"], "25.520833");
    let api = of_meter(&a.json, "lines", "api_calls");
    assert_eq!(api["quantity"], "2500");
    assert_eq!(api["included"], "100000");
    assert_eq!(api["billable"], "0");
    assert_eq!(api["amount"], "0.00");
    assert_eq!(api["projected_quantity"], "2938.775510204");
    assert_eq!(a.json["total"], "29.00");
    assert_eq!(a.json["projected_total"], "29.00");
}

/// The org's price override applies to the preview as month close would apply it, and the
/// line says so. Starter with 1,000 API calls included instead of 100,000 (set by the
/// operator from 2026-11): 2,500 calls so far → 1,500 billable = 1.5 × $0.50 = $0.75, −10 %
/// = 0.675 → $0.68, total $29.68; projected 2,938.775510204 − 1,000 = 1.938775510204 ×
/// $0.50 × 0.9 = 0.87244… → $0.87, projected total $29.87.
#[tokio::test]
async fn the_upcoming_invoice_applies_the_orgs_price_override() {
    let mem = world(PlanId::Starter).await;
    let o = tally_core::overrides::PriceOverride {
        id: tally_core::overrides::OverrideId::from_random([5; 8]),
        org_id: org_id("org_a"),
        plan: PlanId::Starter,
        change: tally_core::overrides::OverrideChange::Included {
            meter: MeterName::parse("api_calls").unwrap(),
            quantity: 1000.into(),
        },
        start: tally_core::period::Month::parse("2026-11").unwrap(),
        end: None,
        reason: None,
        created_by: "cli".into(),
        created_at: t("2026-11-01T00:00:00Z"),
    };
    assert!(
        tally_core::ports::OverrideStore::put_override(&mem.store, &o)
            .await
            .unwrap()
    );
    let a = as_a(&mem, Role::Viewer)
        .get_ok("/v1/orgs/org_a/invoices/upcoming")
        .await;
    let api = of_meter(&a.json, "lines", "api_calls");
    assert_eq!(api["included"], "1000");
    assert_eq!(api["amount"], "0.68");
    assert_eq!(api["overrides"], json!([o.id.to_string()]));
    assert_eq!(api["catalogue_version"], "builtin");
    assert_eq!(a.json["total"], "29.68");
    assert_eq!(a.json["projected_total"], "29.87");
    assert_eq!(a.json["overrides"], json!([o.id.to_string()]));
}

/// Closed months come newest first with their total and Stripe state, a page at a time.
#[tokio::test]
async fn the_invoice_list_shows_closed_months_with_their_stripe_status() {
    let mem = world(PlanId::Starter).await;
    let catalogue = tally_core::Catalogue::builtin().unwrap();
    let org = org_id("org_a");
    for period in ["2026-09", "2026-10"] {
        let period = tally_core::period::Month::parse(period).unwrap();
        let report = tally_core::report::price_month(
            org.clone(),
            period,
            catalogue.plan(PlanId::Starter),
            &tally_core::report::MonthUsage::default(),
        )
        .unwrap();
        mem.store
            .save_report(&tally_core::ports::StoredReport {
                org_id: org.clone(),
                period,
                body: serde_json::to_string(&report).unwrap(),
                created_at: period.end(),
            })
            .await
            .unwrap();
    }
    let oct = tally_core::period::Month::parse("2026-10").unwrap();
    for (step, result) in [
        ("invoice", "in_123"),
        ("finalize", "open 2900"),
        ("webhook:invoice.paid", "in_123"),
    ] {
        mem.store
            .record_step(&StepKey::new(&org, oct, step), result)
            .await
            .unwrap();
    }
    let bearer = as_a(&mem, Role::Member);
    let a = bearer.get("/v1/orgs/org_a/invoices?limit=1").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.json,
        json!({"invoices": [{"period": "2026-10", "plan": "starter", "currency": "usd",
            "total": "29.00", "closed_at": "2026-11-01T00:00:00Z",
            "stripe": {"status": "paid", "invoice_id": "in_123", "hosted_url": null}}],
            "next_before": "2026-10"})
    );
    let a = bearer.get("/v1/orgs/org_a/invoices?before=2026-10").await;
    assert_eq!(a.json["invoices"][0]["period"], "2026-09");
    assert_eq!(a.json["invoices"][0]["stripe"]["status"], "not_synced");
    assert!(a.json.get("next_before").is_none());
    for bad in ["limit=0", "limit=101", "before=2026-13", "before=soon"] {
        let a = bearer.get(&format!("/v1/orgs/org_a/invoices?{bad}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}
