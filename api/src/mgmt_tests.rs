//! Tests of the management routes against an in-memory store: tenant isolation, the role
//! matrix and audit completeness walk every row of [`ROUTES`], so a new route is covered
//! (or fails to compile here) without anyone remembering to add it.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tally_core::counter::OwnedCounterKey;
use tally_core::event::Event;
use tally_core::ids::{ApiKeyId, InvitationId, OrgId, ProjectId, UserId};
use tally_core::period::Month;
use tally_core::plan::PlanId;
use tally_core::ports::{
    ApiKeyStore, ApplyReport, AuditLog, Clock, CounterQuery, CounterValue, InvitationStore,
    LedgerPage, MemberStore, OrgStore, ProjectStore, StoreError, UsageStore, UserStore,
};
use tally_core::tenant::{
    ApiKey, AuditOutcome, AuditPage, AuditQuery, AuditRecord, Invitation, KeyHash, KeyScope,
    KeyUse, Membership, Org, OrgChanges, Project, ProjectChanges, Role, User,
};
use tower::ServiceExt;

use super::*;
use crate::jwt::JwtConfig;
use crate::roles::{ROLES, allows};

const NOW: &str = "2026-11-26T12:30:00Z";
const KEY_A: &str = "tk_test_key_of_org_a";
const KEY_B: &str = "tk_test_key_of_org_b";
/// The token of org A's pending invitation (to `invitee@example.com`, as a member).
const INVITE_A: &str = "tinv_invitation_of_org_a";
/// The token of org B's pending invitation (to `invitee@example.com`, as a member).
const INVITE_B: &str = "tinv_invitation_of_org_b";

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        t(NOW)
    }
}

#[derive(Default)]
struct Data {
    orgs: HashMap<OrgId, Org>,
    members: Vec<Membership>,
    projects: Vec<Project>,
    keys: Vec<ApiKey>,
    audit: Vec<AuditRecord>,
    users: Vec<User>,
    invitations: Vec<Invitation>,
    /// (org, project, user): who is on which project.
    project_members: Vec<(OrgId, ProjectId, UserId)>,
}

/// Tenants in memory, with the same semantics as the conformance suite checks.
#[derive(Default)]
struct Mem(Mutex<Data>);

#[async_trait]
impl UserStore for Mem {
    async fn ensure_user(&self, u: &User) -> Result<User, StoreError> {
        Ok(u.clone())
    }
    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        let d = self.0.lock().unwrap();
        Ok(d.users.iter().find(|u| u.id == *id).cloned())
    }
    async fn list_user_memberships(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        let d = self.0.lock().unwrap();
        Ok(d.members
            .iter()
            .filter(|m| m.user_id == *user)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl OrgStore for Mem {
    async fn create_org(&self, org: &Org) -> Result<(), StoreError> {
        let mut d = self.0.lock().unwrap();
        d.members.push(Membership {
            org_id: org.id.clone(),
            user_id: org.owner_id.clone(),
            role: Role::Owner,
            created_at: org.created_at,
        });
        d.orgs.insert(org.id.clone(), org.clone());
        Ok(())
    }
    async fn get_org(&self, id: &OrgId) -> Result<Option<Org>, StoreError> {
        Ok(self.0.lock().unwrap().orgs.get(id).cloned())
    }
    async fn list_org_ids(&self) -> Result<Vec<OrgId>, StoreError> {
        Ok(self.0.lock().unwrap().orgs.keys().cloned().collect())
    }
    async fn update_org(
        &self,
        id: &OrgId,
        changes: &OrgChanges,
    ) -> Result<Option<Org>, StoreError> {
        let mut d = self.0.lock().unwrap();
        Ok(d.orgs.get_mut(id).map(|o| {
            if let Some(n) = &changes.name {
                o.name = n.clone();
            }
            if let Some(p) = changes.plan {
                o.plan = p;
            }
            o.clone()
        }))
    }
    async fn delete_org(&self, id: &OrgId, at: DateTime<Utc>) -> Result<Option<Org>, StoreError> {
        let mut d = self.0.lock().unwrap();
        let Some(org) = d.orgs.get_mut(id) else {
            return Ok(None);
        };
        org.deleted_at.get_or_insert(at);
        let org = org.clone();
        for k in d.keys.iter_mut().filter(|k| k.org_id == *id) {
            k.revoked_at.get_or_insert(at);
        }
        Ok(Some(org))
    }
}

#[async_trait]
impl MemberStore for Mem {
    async fn get_role(&self, org: &OrgId, user: &UserId) -> Result<Option<Role>, StoreError> {
        let d = self.0.lock().unwrap();
        if d.orgs.get(org).is_none_or(|o| o.deleted_at.is_some()) {
            return Ok(None);
        }
        Ok(d.members
            .iter()
            .find(|m| m.org_id == *org && m.user_id == *user)
            .map(|m| m.role))
    }
    async fn list_members(&self, org: &OrgId) -> Result<Vec<Membership>, StoreError> {
        let d = self.0.lock().unwrap();
        Ok(d.members
            .iter()
            .filter(|m| m.org_id == *org)
            .cloned()
            .collect())
    }
    async fn add_member(&self, m: &Membership) -> Result<(), StoreError> {
        let mut d = self.0.lock().unwrap();
        if d.members
            .iter()
            .any(|x| x.org_id == m.org_id && x.user_id == m.user_id)
        {
            return Err(StoreError::Conflict {
                what: "member".into(),
            });
        }
        d.members.push(m.clone());
        Ok(())
    }
    async fn set_member_role(
        &self,
        org: &OrgId,
        user: &UserId,
        role: Role,
    ) -> Result<Option<Membership>, StoreError> {
        let mut d = self.0.lock().unwrap();
        Ok(d.members
            .iter_mut()
            .find(|m| m.org_id == *org && m.user_id == *user)
            .map(|m| {
                let before = m.clone();
                m.role = role;
                before
            }))
    }
    async fn remove_member(
        &self,
        org: &OrgId,
        user: &UserId,
    ) -> Result<Option<Membership>, StoreError> {
        let mut d = self.0.lock().unwrap();
        let i = d
            .members
            .iter()
            .position(|m| m.org_id == *org && m.user_id == *user);
        Ok(i.map(|i| d.members.remove(i)))
    }
    async fn transfer_ownership(
        &self,
        org: &OrgId,
        from: &UserId,
        to: &UserId,
    ) -> Result<Option<Org>, StoreError> {
        let mut d = self.0.lock().unwrap();
        if !d
            .members
            .iter()
            .any(|m| m.org_id == *org && m.user_id == *to)
        {
            return Err(StoreError::NotFound {
                what: "member".into(),
            });
        }
        for m in d.members.iter_mut().filter(|m| m.org_id == *org) {
            if m.user_id == *from {
                m.role = Role::Admin;
            }
            if m.user_id == *to {
                m.role = Role::Owner;
            }
        }
        Ok(d.orgs.get_mut(org).map(|o| {
            o.owner_id = to.clone();
            o.clone()
        }))
    }
    async fn add_project_member(
        &self,
        org: &OrgId,
        project: &ProjectId,
        user: &UserId,
        _: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut d = self.0.lock().unwrap();
        if !d
            .projects
            .iter()
            .any(|p| p.org_id == *org && p.id == *project)
        {
            return Err(StoreError::NotFound {
                what: "project".into(),
            });
        }
        if !d
            .members
            .iter()
            .any(|m| m.org_id == *org && m.user_id == *user)
        {
            return Err(StoreError::NotFound {
                what: "member".into(),
            });
        }
        let row = (org.clone(), project.clone(), user.clone());
        if d.project_members.contains(&row) {
            return Err(StoreError::Conflict {
                what: "project member".into(),
            });
        }
        d.project_members.push(row);
        Ok(())
    }
    async fn remove_project_member(
        &self,
        org: &OrgId,
        project: &ProjectId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        let mut d = self.0.lock().unwrap();
        let before = d.project_members.len();
        d.project_members
            .retain(|(o, p, u)| !(o == org && p == project && u == user));
        Ok(d.project_members.len() < before)
    }
    async fn list_user_projects(
        &self,
        org: &OrgId,
        user: &UserId,
    ) -> Result<Vec<ProjectId>, StoreError> {
        let d = self.0.lock().unwrap();
        Ok(d.project_members
            .iter()
            .filter(|(o, _, u)| o == org && u == user)
            .map(|(_, p, _)| p.clone())
            .collect())
    }
}

#[async_trait]
impl ProjectStore for Mem {
    async fn create_project(&self, p: &Project) -> Result<(), StoreError> {
        let mut d = self.0.lock().unwrap();
        if d.projects
            .iter()
            .any(|q| q.org_id == p.org_id && q.slug == p.slug)
        {
            return Err(StoreError::Conflict {
                what: "project slug".into(),
            });
        }
        d.projects.push(p.clone());
        Ok(())
    }
    async fn get_project(
        &self,
        org: &OrgId,
        id: &ProjectId,
    ) -> Result<Option<Project>, StoreError> {
        let d = self.0.lock().unwrap();
        Ok(d.projects
            .iter()
            .find(|p| p.org_id == *org && p.id == *id)
            .cloned())
    }
    async fn list_projects(&self, org: &OrgId) -> Result<Vec<Project>, StoreError> {
        let d = self.0.lock().unwrap();
        Ok(d.projects
            .iter()
            .filter(|p| p.org_id == *org)
            .cloned()
            .collect())
    }
    async fn update_project(
        &self,
        org: &OrgId,
        id: &ProjectId,
        changes: &ProjectChanges,
    ) -> Result<Option<Project>, StoreError> {
        let mut d = self.0.lock().unwrap();
        Ok(d.projects
            .iter_mut()
            .find(|p| p.org_id == *org && p.id == *id)
            .map(|p| {
                if let Some(n) = &changes.name {
                    p.name = n.clone();
                }
                if let Some(at) = changes.archive_at {
                    p.archived_at.get_or_insert(at);
                }
                p.clone()
            }))
    }
}

#[async_trait]
impl ApiKeyStore for Mem {
    async fn create_api_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        self.0.lock().unwrap().keys.push(k.clone());
        Ok(())
    }
    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        let d = self.0.lock().unwrap();
        Ok(d.keys.iter().find(|k| k.hash == *hash).cloned())
    }
    async fn list_api_keys(&self, org: &OrgId) -> Result<Vec<ApiKey>, StoreError> {
        let d = self.0.lock().unwrap();
        Ok(d.keys
            .iter()
            .filter(|k| k.org_id == *org)
            .cloned()
            .collect())
    }
    async fn revoke_api_key(
        &self,
        org: &OrgId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let mut d = self.0.lock().unwrap();
        Ok(d.keys
            .iter_mut()
            .find(|k| k.org_id == *org && k.id == *id)
            .map(|k| {
                k.revoked_at.get_or_insert(at);
                k.clone()
            }))
    }
    async fn rotate_api_key(
        &self,
        old: &ApiKeyId,
        new: &ApiKey,
        old_expires_at: DateTime<Utc>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let mut d = self.0.lock().unwrap();
        let Some(k) = d
            .keys
            .iter_mut()
            .find(|k| k.org_id == new.org_id && k.id == *old)
        else {
            return Ok(None);
        };
        k.expires_at = Some(
            k.expires_at
                .map_or(old_expires_at, |e| e.min(old_expires_at)),
        );
        let before = k.clone();
        d.keys.push(new.clone());
        Ok(Some(before))
    }
    async fn touch_api_keys(&self, _: &[KeyUse]) -> Result<(), StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
}

#[async_trait]
impl InvitationStore for Mem {
    async fn create_invitation(&self, i: &Invitation) -> Result<(), StoreError> {
        self.0.lock().unwrap().invitations.push(i.clone());
        Ok(())
    }
    async fn list_invitations(
        &self,
        org: &OrgId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Invitation>, StoreError> {
        let d = self.0.lock().unwrap();
        Ok(d.invitations
            .iter()
            .filter(|i| i.org_id == *org && i.is_pending(now))
            .cloned()
            .collect())
    }
    async fn find_invitation(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Invitation>, StoreError> {
        let d = self.0.lock().unwrap();
        Ok(d.invitations
            .iter()
            .find(|i| i.hash == *hash && i.expires_at > now)
            .cloned())
    }
    async fn revoke_invitation(
        &self,
        org: &OrgId,
        id: &InvitationId,
        now: DateTime<Utc>,
    ) -> Result<Option<Invitation>, StoreError> {
        let mut d = self.0.lock().unwrap();
        let i = d
            .invitations
            .iter()
            .position(|i| i.org_id == *org && i.id == *id && i.is_pending(now));
        Ok(i.map(|i| d.invitations.remove(i)))
    }
    async fn accept_invitation(
        &self,
        hash: &KeyHash,
        user: &UserId,
        at: DateTime<Utc>,
    ) -> Result<Membership, StoreError> {
        let mut d = self.0.lock().unwrap();
        let Some(i) = d
            .invitations
            .iter()
            .position(|i| i.hash == *hash && i.expires_at > at)
        else {
            return Err(StoreError::NotFound {
                what: "invitation".into(),
            });
        };
        let inv = d.invitations[i].clone();
        if inv.accepted_at.is_some()
            || d.members
                .iter()
                .any(|m| m.org_id == inv.org_id && m.user_id == *user)
        {
            return Err(StoreError::Conflict {
                what: "acceptance".into(),
            });
        }
        d.invitations[i].accepted_at = Some(at);
        let m = Membership {
            org_id: inv.org_id,
            user_id: user.clone(),
            role: inv.role,
            created_at: at,
        };
        d.members.push(m.clone());
        Ok(m)
    }
}

#[async_trait]
impl AuditLog for Mem {
    async fn record_audit(&self, r: &AuditRecord) -> Result<(), StoreError> {
        self.0.lock().unwrap().audit.push(r.clone());
        Ok(())
    }
    async fn list_audit(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        let d = self.0.lock().unwrap();
        let mut recs: Vec<AuditRecord> = d
            .audit
            .iter()
            .filter(|r| {
                r.org_id == q.org
                    && q.from.is_none_or(|f| r.at >= f)
                    && q.to.is_none_or(|to| r.at < to)
                    && q.actor.as_ref().is_none_or(|a| *a == r.actor)
                    && q.action.as_ref().is_none_or(|a| *a == r.action)
                    && q.resource.as_ref().is_none_or(|a| *a == r.resource)
                    && q.cursor.as_ref().is_none_or(|c| r.sort_key() < *c)
            })
            .cloned()
            .collect();
        recs.sort_by_key(|r| std::cmp::Reverse(r.sort_key()));
        let next = (recs.len() > q.limit).then(|| recs[q.limit - 1].sort_key());
        recs.truncate(q.limit);
        Ok(AuditPage {
            records: recs,
            next,
        })
    }
}

#[async_trait]
impl UsageStore for Mem {
    async fn apply_batch(&self, _: &[Event]) -> Result<ApplyReport, StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
    async fn counter_series(&self, q: &CounterQuery) -> Result<Vec<CounterValue>, StoreError> {
        // Org A used 2,500 API calls this month.
        let used = q.org == org_id("org_a")
            && q.meter.as_str() == "api_calls"
            && q.granularity == tally_core::period::Granularity::Month;
        Ok(if used {
            vec![CounterValue {
                start: q.from,
                value: Decimal::from(2500),
            }]
        } else {
            Vec::new()
        })
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
        Ok(false)
    }
    async fn close_period(&self, _: Month, _: DateTime<Utc>) -> Result<(), StoreError> {
        unreachable!("the test double does not serve this port method; these tests never call it")
    }
}

fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn org_id(s: &str) -> OrgId {
    OrgId::parse(s).unwrap()
}

fn the_key(secret: &str, id: &str, org: &str) -> ApiKey {
    ApiKey {
        id: ApiKeyId::parse(id).unwrap(),
        org_id: org_id(org),
        name: format!("key {id}"),
        hash: KeyHash::of_secret(secret),
        display_prefix: secret.chars().take(12).collect(),
        scopes: vec![KeyScope::EventsWrite, KeyScope::UsageRead],
        created_at: t("2026-01-01T00:00:00Z"),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
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
/// invitation; B (starter) with its owner, a project, a key and a pending invitation. Every
/// user has an email (`<id without usr_>@example.com`); `usr_invitee` is in no org.
async fn world(plan: PlanId) -> Arc<Mem> {
    let mem = Arc::new(Mem::default());
    for (id, name, owner, plan) in [
        ("org_a", "Alpha Ltd", a_user(Role::Owner), plan),
        ("org_b", "Beta Corp", user("usr_bowner"), PlanId::Starter),
    ] {
        mem.create_org(&Org {
            id: org_id(id),
            name: name.into(),
            slug: name.to_lowercase().replace(' ', "-"),
            plan,
            owner_id: owner,
            created_at: t("2026-01-01T00:00:00Z"),
            deleted_at: None,
        })
        .await
        .unwrap();
    }
    {
        let mut d = mem.0.lock().unwrap();
        for role in [Role::Admin, Role::Member, Role::Viewer] {
            d.members.push(Membership {
                org_id: org_id("org_a"),
                user_id: a_user(role),
                role,
                created_at: t("2026-01-02T00:00:00Z"),
            });
        }
        for (org, p) in [("org_a", "prj_alpha1"), ("org_b", "prj_beta1")] {
            d.projects.push(Project {
                id: ProjectId::parse(p).unwrap(),
                org_id: org_id(org),
                name: format!("Project {p}"),
                slug: p.replace('_', "-"),
                created_at: t("2026-01-03T00:00:00Z"),
                archived_at: None,
            });
        }
        // A's member and viewer are on A's project (owners and admins see every project).
        for role in [Role::Member, Role::Viewer] {
            d.project_members.push((
                org_id("org_a"),
                ProjectId::parse("prj_alpha1").unwrap(),
                a_user(role),
            ));
        }
        d.keys.push(the_key(KEY_A, "key_alpha1", "org_a"));
        d.keys.push(the_key(KEY_B, "key_beta1", "org_b"));
        d.invitations.push(the_invitation(
            INVITE_A,
            "inv_alpha1",
            "org_a",
            "usr_aowner",
        ));
        d.invitations
            .push(the_invitation(INVITE_B, "inv_beta1", "org_b", "usr_bowner"));
        let mut ids: Vec<UserId> = ROLES.iter().map(|r| a_user(*r)).collect();
        ids.push(user("usr_bowner"));
        ids.push(user("usr_invitee"));
        for id in ids {
            d.users.push(User {
                email: format!("{}@example.com", &id.as_str()[4..]),
                id,
                created_at: t("2026-01-01T00:00:00Z"),
            });
        }
    }
    mem
}

fn jwt() -> JwtConfig {
    JwtConfig::hs256(&[7; 32]).unwrap()
}

fn token(u: &UserId) -> String {
    jwt().mint(u, t(NOW), chrono::Duration::hours(1)).unwrap()
}

fn app(mem: &Arc<Mem>) -> Router {
    router(
        ApiState::new(
            mem.clone(),
            mem.clone(),
            Arc::new(MeterCatalogue::default()),
            Arc::new(FixedClock),
        )
        .with_jwt(jwt()),
    )
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    json: Value,
    text: String,
}

async fn call(
    mem: &Arc<Mem>,
    method: &str,
    uri: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::USER_AGENT, "mgmt-tests/1")
        .header("x-forwarded-for", "203.0.113.9, 10.0.0.1");
    if let Some(b) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let res = app(mem).oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, json, text }
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
}

/// Org A's own resources (the user is a non-owner member).
const A_IDS: Ids = Ids {
    project: "prj_alpha1",
    key: "key_alpha1",
    user: "usr_aviewer",
    invitation: "inv_alpha1",
    token: INVITE_A,
    project_user: "usr_aadmin",
};

/// Org B's resources.
const B_IDS: Ids = Ids {
    project: "prj_beta1",
    key: "key_beta1",
    user: "usr_bowner",
    invitation: "inv_beta1",
    token: INVITE_B,
    project_user: "usr_bowner",
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
        .replace("{invitation_id}", ids.invitation);
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
        | Endpoint::RevokeInvitation => (path, None),
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
        Endpoint::AddMember => (
            path,
            Some(json!({"user_id": format!("usr_new{n}"), "role": "member"})),
        ),
        Endpoint::UpdateMember => (path, Some(json!({"role": "member"}))),
        Endpoint::RemoveMember | Endpoint::DeleteOrg | Endpoint::ArchiveProject => (path, None),
        Endpoint::UpdateProject => (path, Some(json!({"name": format!("Renamed {n}")}))),
        Endpoint::AddProjectMember => (path, Some(json!({"user_id": ids.project_user}))),
        Endpoint::RemoveProjectMember => (path, None),
        Endpoint::TransferOwnership => (path, Some(json!({"user_id": ids.user}))),
        Endpoint::RotateKey => (path, Some(json!({"overlap_seconds": 60}))),
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
        "tk_test_key",
        "inv_beta1",
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
        let nested = route.path.matches('{').count() > 1;
        let mut targets = vec!["org_b"];
        if nested {
            targets.push("org_a");
        }
        for (who, bearer) in &credentials {
            for org in &targets {
                n += 1;
                let (uri, body) = request_for(route, org, &B_IDS, n);
                let a = call(&mem, route.method, &uri, Some(bearer), body).await;
                // The caller's own orgs are theirs to list; B's must not be among them.
                let own = route.endpoint == Endpoint::MyOrgs && a.status == StatusCode::OK;
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
    let d = mem.0.lock().unwrap();
    assert_eq!(
        d.projects
            .iter()
            .filter(|p| p.org_id == org_id("org_b"))
            .collect::<Vec<_>>(),
        [&Project {
            id: ProjectId::parse("prj_beta1").unwrap(),
            org_id: org_id("org_b"),
            name: "Project prj_beta1".into(),
            slug: "prj-beta1".into(),
            created_at: t("2026-01-03T00:00:00Z"),
            archived_at: None,
        }],
        "B's project is neither renamed nor archived"
    );
    assert!(d.keys.iter().all(|k| k.revoked_at.is_none()));
    assert!(
        d.keys
            .iter()
            .filter(|k| k.org_id == org_id("org_b"))
            .count()
            == 1,
        "no key was created in B"
    );
    let b_invitations: Vec<&Invitation> = d
        .invitations
        .iter()
        .filter(|i| i.org_id == org_id("org_b"))
        .collect();
    assert_eq!(b_invitations.len(), 1, "no invitation was created in B");
    assert!(b_invitations[0].accepted_at.is_none(), "nor accepted");
    assert!(
        d.orgs[&org_id("org_b")].deleted_at.is_none(),
        "B is not deleted"
    );
    assert_eq!(
        d.members
            .iter()
            .filter(|m| m.org_id == org_id("org_b"))
            .count(),
        1,
        "nobody joined B"
    );
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
        assert_eq!(
            mutation,
            route.method != "GET",
            "{} {}: mutations are exactly the non-GET routes",
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
                let audit = mem.0.lock().unwrap().audit.clone();
                if !mutation {
                    assert!(
                        audit.is_empty(),
                        "{} {uri} is a read but wrote {audit:?}",
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
    let admin = token(&a_user(Role::Admin));
    let a = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/keys",
        Some(&admin),
        Some(json!({"name": "ci", "scopes": ["usage:read"], "test": true})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let secret = a.json["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tk_test_"));
    let id = a.json["id"].as_str().unwrap().to_owned();
    assert_eq!(a.json["scopes"], json!(["usage:read"]));

    let listed = call(&mem, "GET", "/v1/orgs/org_a/keys", Some(&admin), None).await;
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
    let ok = call(
        &mem,
        "GET",
        "/v1/usage?meter=api_calls",
        Some(&secret),
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let r = call(
        &mem,
        "POST",
        &format!("/v1/orgs/org_a/keys/{id}/revoke"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["revoked_at"], "2026-11-26T12:30:00Z");
    let refused = call(
        &mem,
        "GET",
        "/v1/usage?meter=api_calls",
        Some(&secret),
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let unknown = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/keys/key_nope/revoke",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let audit = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/audit?action=key.revoke",
        Some(&admin),
        None,
    )
    .await;
    let recs = audit.json["records"].as_array().unwrap();
    assert_eq!(recs.len(), 2, "{}", audit.text);
    assert_eq!(recs.iter().filter(|r| r["outcome"] == "allowed").count(), 1);
    let allowed = recs.iter().find(|r| r["outcome"] == "allowed").unwrap();
    assert_eq!(allowed["before"]["revoked_at"], Value::Null);
    assert_eq!(allowed["after"]["revoked_at"], "2026-11-26T12:30:00Z");
    assert_eq!(allowed["resource"], format!("key:{id}"));
}

#[tokio::test]
async fn projects_past_the_plan_limit_are_403_with_limit_and_count() {
    let mem = world(PlanId::Free).await; // free: 1 project, which org A has
    let owner = token(&a_user(Role::Owner));
    let a = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/projects",
        Some(&owner),
        Some(json!({"name": "Two", "slug": "two"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert_eq!(a.json["error"]["code"], "plan_limit_exceeded");
    assert_eq!(a.json["error"]["limit"], 1);
    assert_eq!(a.json["error"]["count"], 1);
    assert_eq!(a.json["error"]["field"], "projects");

    let mem = world(PlanId::Starter).await;
    let a = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/projects",
        Some(&owner),
        Some(json!({"name": "Two", "slug": "two"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = a.json["id"].as_str().unwrap().to_owned();
    let got = call(
        &mem,
        "GET",
        &format!("/v1/orgs/org_a/projects/{id}"),
        Some(&token(&a_user(Role::Admin))),
        None,
    )
    .await;
    assert_eq!(got.json["slug"], "two");
    let dup = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/projects",
        Some(&owner),
        Some(json!({"name": "Two", "slug": "two"})),
    )
    .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let bad = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/projects",
        Some(&owner),
        Some(json!({"name": "X", "slug": "Not A Slug"})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json["error"]["field"], "slug");
    let listed = call(&mem, "GET", "/v1/orgs/org_a/projects", Some(&owner), None).await;
    assert_eq!(listed.json["projects"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_org_and_its_members_are_read_by_members() {
    let mem = world(PlanId::Starter).await;
    let viewer = token(&a_user(Role::Viewer));
    let a = call(&mem, "GET", "/v1/orgs/org_a", Some(&viewer), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["name"], "Alpha Ltd");
    assert_eq!(a.json["owner_id"], "usr_aowner");
    let m = call(&mem, "GET", "/v1/orgs/org_a/members", Some(&viewer), None).await;
    let roles: Vec<&str> = m.json["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["owner", "admin", "member", "viewer"]);
    // Tokens: none, garbage, expired, another secret.
    assert_eq!(
        call(&mem, "GET", "/v1/orgs/org_a", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&mem, "GET", "/v1/orgs/org_a", Some("a.b.c"), None)
            .await
            .status,
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
        call(&mem, "GET", "/v1/orgs/org_a", Some(&expired), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let forged = JwtConfig::hs256(&[9; 32])
        .unwrap()
        .mint(&a_user(Role::Owner), t(NOW), chrono::Duration::hours(1))
        .unwrap();
    assert_eq!(
        call(&mem, "GET", "/v1/orgs/org_a", Some(&forged), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // Unknown and malformed org ids look the same as another org's.
    for org in ["org_zzz", "garbage", "org_b"] {
        let a = call(&mem, "GET", &format!("/v1/orgs/{org}"), Some(&viewer), None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{org}");
    }
}

#[tokio::test]
async fn usage_accepts_a_members_jwt_with_org_id() {
    let mem = world(PlanId::Starter).await;
    let viewer = token(&a_user(Role::Viewer));
    let a = call(
        &mem,
        "GET",
        "/v1/usage?meter=api_calls&org_id=org_a",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["org_id"], "org_a");
    let a = call(
        &mem,
        "GET",
        "/v1/usage?meter=api_calls",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["error"]["field"], "org_id");
    let a = call(
        &mem,
        "GET",
        "/v1/usage?meter=api_calls&org_id=org_b",
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_audit_trail_pages_newest_first_with_filters() {
    let mem = world(PlanId::Pro).await;
    let owner = token(&a_user(Role::Owner));
    for i in 0..5 {
        let a = call(
            &mem,
            "POST",
            "/v1/orgs/org_a/projects",
            Some(&owner),
            Some(json!({"name": "P", "slug": format!("p{i}")})),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED);
    }
    // Records of one instant are ordered by id; make their times distinct for the check.
    {
        let mut d = mem.0.lock().unwrap();
        for (i, r) in d.audit.iter_mut().enumerate() {
            r.at = t(NOW) - chrono::Duration::minutes(10 - i64::try_from(i).unwrap());
        }
    }
    let member = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/projects",
        Some(&token(&a_user(Role::Member))),
        Some(json!({"name": "P", "slug": "nope"})),
    )
    .await;
    assert_eq!(member.status, StatusCode::FORBIDDEN);

    let mut seen = Vec::new();
    let mut uri = "/v1/orgs/org_a/audit?limit=2".to_owned();
    loop {
        let page = call(&mem, "GET", &uri, Some(&owner), None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
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

    let refused_only = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/audit?user=usr_amember",
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(refused_only.json["records"].as_array().unwrap().len(), 1);
    let window = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/audit?from=2026-11-26T12:21:00Z&to=2026-11-26T12:23:00Z",
        Some(&owner),
        None,
    )
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
        let a = call(
            &mem,
            "GET",
            &format!("/v1/orgs/org_a/audit?{bad}"),
            Some(&owner),
            None,
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let viewer = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/audit",
        Some(&token(&a_user(Role::Viewer))),
        None,
    )
    .await;
    assert_eq!(viewer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn owners_and_admins_rename_and_replan_within_the_limits() {
    let mem = world(PlanId::Starter).await;
    let admin = token(&a_user(Role::Admin));
    let owner = token(&a_user(Role::Owner));
    for i in 0..2 {
        let a = call(
            &mem,
            "POST",
            "/v1/orgs/org_a/projects",
            Some(&owner),
            Some(json!({"name": "P", "slug": format!("p{i}")})),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED);
    }
    let a = call(
        &mem,
        "PATCH",
        "/v1/orgs/org_a",
        Some(&admin),
        Some(json!({"name": "Alpha Two", "plan": "pro"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["name"], "Alpha Two");
    assert_eq!(a.json["plan"], "pro");
    // Free allows 1 project; the org has 3.
    let a = call(
        &mem,
        "PATCH",
        "/v1/orgs/org_a",
        Some(&owner),
        Some(json!({"plan": "free"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert_eq!(a.json["error"]["limit"], 1);
    assert_eq!(a.json["error"]["count"], 3);
    let a = call(
        &mem,
        "PATCH",
        "/v1/orgs/org_a",
        Some(&owner),
        Some(json!({"plan": "gold"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["error"]["field"], "plan");
    let got = call(&mem, "GET", "/v1/orgs/org_a", Some(&owner), None).await;
    assert_eq!(got.json["plan"], "pro");
    let audit = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/audit?action=org.update",
        Some(&owner),
        None,
    )
    .await;
    let recs = audit.json["records"].as_array().unwrap();
    assert_eq!(recs.len(), 3);
    let allowed: Vec<&Value> = recs.iter().filter(|r| r["outcome"] == "allowed").collect();
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0]["before"]["plan"], "starter");
    assert_eq!(allowed[0]["after"]["plan"], "pro");
}

#[tokio::test]
async fn members_are_added_changed_and_removed_but_never_the_owner() {
    let mem = world(PlanId::Starter).await;
    let admin = token(&a_user(Role::Admin));
    let a = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/members",
        Some(&admin),
        Some(json!({"user_id": "usr_carol", "role": "viewer"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["role"], "viewer");
    let again = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/members",
        Some(&admin),
        Some(json!({"user_id": "usr_carol", "role": "viewer"})),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let owner = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/members",
        Some(&admin),
        Some(json!({"user_id": "usr_dave", "role": "owner"})),
    )
    .await;
    assert_eq!(owner.status, StatusCode::BAD_REQUEST);
    let p = call(
        &mem,
        "PATCH",
        "/v1/orgs/org_a/members/usr_carol",
        Some(&admin),
        Some(json!({"role": "admin"})),
    )
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
    let d = call(
        &mem,
        "DELETE",
        "/v1/orgs/org_a/members/usr_carol",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(d.status, StatusCode::OK);
    let gone = call(
        &mem,
        "DELETE",
        "/v1/orgs/org_a/members/usr_carol",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    // The free plan allows 3 users; org A has 4 members and 1 pending invitation already.
    let mem = world(PlanId::Free).await;
    let a = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/members",
        Some(&admin),
        Some(json!({"user_id": "usr_carol", "role": "viewer"})),
    )
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
    let a = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/transfer",
        Some(&admin),
        Some(body.clone()),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "admins cannot");
    let a = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/transfer",
        Some(&owner),
        Some(json!({"user_id": "usr_bowner"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "only to a member");
    let a = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/transfer",
        Some(&owner),
        Some(body),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["owner_id"], "usr_amember");
    // The old owner is an admin now: may rename, may not transfer, and may demote nobody
    // who owns.
    let again = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/transfer",
        Some(&owner),
        Some(json!({"user_id": "usr_aowner"})),
    )
    .await;
    assert_eq!(again.status, StatusCode::FORBIDDEN);
    let demote = call(
        &mem,
        "PATCH",
        "/v1/orgs/org_a/members/usr_amember",
        Some(&owner),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(demote.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn users_list_their_own_orgs_only() {
    let mem = world(PlanId::Starter).await;
    mem.0.lock().unwrap().members.push(Membership {
        org_id: org_id("org_b"),
        user_id: a_user(Role::Viewer),
        role: Role::Member,
        created_at: t(NOW),
    });
    let a = call(
        &mem,
        "GET",
        "/v1/me/orgs",
        Some(&token(&a_user(Role::Viewer))),
        None,
    )
    .await;
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
    let a = call(
        &mem,
        "GET",
        "/v1/me/orgs",
        Some(&token(&a_user(Role::Owner))),
        None,
    )
    .await;
    assert_eq!(a.json["orgs"].as_array().unwrap().len(), 1);
    assert!(!a.text.contains("org_b"));
    let a = call(&mem, "GET", "/v1/me/orgs", Some(KEY_A), None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = call(&mem, "GET", "/v1/me/orgs", None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn keys_rotate_and_the_old_secret_works_for_the_overlap() {
    let mem = world(PlanId::Starter).await;
    let admin = token(&a_user(Role::Admin));
    let a = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/keys/key_alpha1/rotate",
        Some(&admin),
        Some(json!({"overlap_seconds": 3600})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let secret = a.json["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tk_test_"), "keeps the mode");
    assert_eq!(a.json["previous"]["expires_at"], "2026-11-26T13:30:00Z");
    assert_eq!(a.json["new"]["name"], "key key_alpha1");
    // Both work now (the old one until the overlap ends).
    for k in [KEY_A, secret.as_str()] {
        let u = call(&mem, "GET", "/v1/usage?meter=api_calls", Some(k), None).await;
        assert_eq!(u.status, StatusCode::OK);
    }
    let audit = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/audit?action=key.rotate",
        Some(&admin),
        None,
    )
    .await;
    assert!(
        !audit.text.contains(&secret),
        "the audit trail never holds a secret"
    );
    let too_long = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/keys/key_alpha1/rotate",
        Some(&admin),
        Some(json!({"overlap_seconds": 99_999_999})),
    )
    .await;
    assert_eq!(too_long.status, StatusCode::BAD_REQUEST);
    call(
        &mem,
        "POST",
        "/v1/orgs/org_a/keys/key_alpha1/revoke",
        Some(&admin),
        None,
    )
    .await;
    let revoked = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/keys/key_alpha1/rotate",
        Some(&admin),
        Some(json!({})),
    )
    .await;
    assert_eq!(revoked.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn the_usage_summary_shows_value_allowance_and_percentage() {
    let mem = world(PlanId::Free).await;
    let a = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/usage/summary",
        Some(&token(&a_user(Role::Viewer))),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["period"], "2026-11");
    assert_eq!(a.json["plan"], "free");
    let meters = a.json["meters"].as_array().unwrap();
    let api = meters.iter().find(|m| m["meter"] == "api_calls").unwrap();
    assert_eq!(api["value"], "2500");
    assert_eq!(api["included"], "10000");
    assert_eq!(api["limit"], "10000", "free plan limits are hard");
    assert_eq!(api["percent_used"], "25.00");
    let bw = meters
        .iter()
        .find(|m| m["meter"] == "bandwidth_bytes")
        .unwrap();
    assert_eq!(bw["value"], "0");
    assert!(bw.get("included").is_none() && bw.get("percent_used").is_none());

    let mem = world(PlanId::Starter).await;
    let a = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/usage/summary",
        Some(&token(&a_user(Role::Owner))),
        None,
    )
    .await;
    let api = a.json["meters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["meter"] == "api_calls")
        .unwrap()
        .clone();
    assert_eq!(api["percent_used"], "2.50");
    assert!(
        api.get("limit").is_none(),
        "paid plans bill overage instead"
    );
}

#[tokio::test]
async fn invitations_are_sent_listed_accepted_once_and_revoked() {
    let mem = world(PlanId::Starter).await;
    let admin = token(&a_user(Role::Admin));
    let a = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/invitations",
        Some(&admin),
        Some(json!({"email": "Carol@Example.com", "role": "admin"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let invite = a.json["token"].as_str().unwrap().to_owned();
    let id = a.json["id"].as_str().unwrap().to_owned();
    assert!(invite.starts_with("tinv_") && invite.len() == 5 + 64);
    assert_eq!(a.json["email"], "carol@example.com");
    assert_eq!(a.json["expires_at"], "2026-12-03T12:30:00Z", "7 days");
    {
        let d = mem.0.lock().unwrap();
        let stored = d.invitations.iter().find(|i| i.id.as_str() == id).unwrap();
        assert_eq!(
            stored.hash,
            KeyHash::of_secret(&invite),
            "only the hash is kept"
        );
    }
    // The same email twice, and owner as a role, are refused.
    let again = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/invitations",
        Some(&admin),
        Some(json!({"email": "carol@example.com", "role": "viewer"})),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    for (body, field) in [
        (
            json!({"email": "dave@example.com", "role": "owner"}),
            "role",
        ),
        (json!({"email": "not an email", "role": "member"}), "email"),
    ] {
        let a = call(
            &mem,
            "POST",
            "/v1/orgs/org_a/invitations",
            Some(&admin),
            Some(body),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.json["error"]["field"], field);
    }
    let listed = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/invitations",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert_eq!(listed.json["invitations"].as_array().unwrap().len(), 2);
    assert!(
        !listed.text.contains(&invite[5..]),
        "the token is never listed"
    );
    assert!(!listed.text.contains(KeyHash::of_secret(&invite).as_str()));
    assert!(!listed.text.contains("hash") && !listed.text.contains("token"));

    // Carol signs up and accepts; a second accept is refused.
    mem.0.lock().unwrap().users.push(User {
        id: user("usr_carol"),
        email: "carol@example.com".into(),
        created_at: t(NOW),
    });
    let carol = token(&user("usr_carol"));
    let accept = |bearer: String, token: String| {
        let mem = mem.clone();
        async move {
            call(
                &mem,
                "POST",
                "/v1/invitations/accept",
                Some(&bearer),
                Some(json!({ "token": token })),
            )
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
    let role = call(&mem, "GET", "/v1/orgs/org_a/audit", Some(&carol), None).await;
    assert_eq!(role.status, StatusCode::OK, "carol is an admin of A now");
    let twice = accept(carol.clone(), invite.clone()).await;
    assert_eq!(twice.status, StatusCode::CONFLICT, "{}", twice.text);
    let unknown = accept(carol.clone(), "tinv_nope".into()).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let listed = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/invitations",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        listed.json["invitations"].as_array().unwrap().len(),
        1,
        "an accepted invitation is no longer pending"
    );
    let audit = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/audit?action=invitation.accept",
        Some(&admin),
        None,
    )
    .await;
    let recs = audit.json["records"].as_array().unwrap();
    assert_eq!(recs.len(), 4, "{}", audit.text);
    assert_eq!(recs.iter().filter(|r| r["outcome"] == "allowed").count(), 1);
    assert!(
        !audit.text.contains(&invite),
        "the audit trail never holds a token"
    );

    // Revoked: gone from the list, and its token no longer accepted.
    let r = call(
        &mem,
        "DELETE",
        "/v1/orgs/org_a/invitations/inv_alpha1",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["id"], "inv_alpha1");
    let gone = call(
        &mem,
        "DELETE",
        "/v1/orgs/org_a/invitations/inv_alpha1",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let revoked = accept(token(&user("usr_invitee")), INVITE_A.into()).await;
    assert_eq!(revoked.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn expired_invitations_are_refused_and_no_longer_count() {
    let mem = world(PlanId::Starter).await;
    mem.0.lock().unwrap().invitations[0].expires_at = t(NOW);
    let a = call(
        &mem,
        "POST",
        "/v1/invitations/accept",
        Some(&token(&user("usr_invitee"))),
        Some(json!({ "token": INVITE_A })),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    let listed = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/invitations",
        Some(&token(&a_user(Role::Owner))),
        None,
    )
    .await;
    assert!(listed.json["invitations"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn pending_invitations_count_against_the_user_limit() {
    // Starter allows 10 users: org A has 4 members and 1 pending invitation.
    let mem = world(PlanId::Starter).await;
    let owner = token(&a_user(Role::Owner));
    for i in 0..5 {
        let a = call(
            &mem,
            "POST",
            "/v1/orgs/org_a/invitations",
            Some(&owner),
            Some(json!({"email": format!("p{i}@example.com"), "role": "viewer"})),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }
    for (uri, body) in [
        (
            "/v1/orgs/org_a/invitations",
            json!({"email": "one-more@example.com", "role": "viewer"}),
        ),
        (
            "/v1/orgs/org_a/members",
            json!({"user_id": "usr_invitee", "role": "viewer"}),
        ),
    ] {
        let a = call(&mem, "POST", uri, Some(&owner), Some(body)).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{uri}: {}", a.text);
        assert_eq!(a.json["error"]["code"], "plan_limit_exceeded");
        assert_eq!(a.json["error"]["field"], "users");
        assert_eq!(a.json["error"]["limit"], 10);
        assert_eq!(a.json["error"]["count"], 10);
    }
    // Accepting turns a pending invitation into a member: the count stays, so it is allowed.
    let a = call(
        &mem,
        "POST",
        "/v1/invitations/accept",
        Some(&token(&user("usr_invitee"))),
        Some(json!({ "token": INVITE_A })),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json["role"], "member");
}

#[tokio::test]
async fn the_owner_deletes_the_org_its_keys_stop_and_its_routes_are_404() {
    let mem = world(PlanId::Starter).await;
    let owner = token(&a_user(Role::Owner));
    let admin = token(&a_user(Role::Admin));
    let ok = call(&mem, "GET", "/v1/usage?meter=api_calls", Some(KEY_A), None).await;
    assert_eq!(ok.status, StatusCode::OK);
    let a = call(&mem, "DELETE", "/v1/orgs/org_a", Some(&admin), None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "admins cannot");
    let a = call(&mem, "DELETE", "/v1/orgs/org_a", Some(&owner), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["deleted_at"], NOW);
    // Every key is revoked, so the key is refused; the org is gone for its members.
    let refused = call(&mem, "GET", "/v1/usage?meter=api_calls", Some(KEY_A), None).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(
        mem.0
            .lock()
            .unwrap()
            .keys
            .iter()
            .filter(|k| k.org_id == org_id("org_a"))
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
    let mine = call(&mem, "GET", "/v1/me/orgs", Some(&owner), None).await;
    assert_eq!(mine.json["orgs"], json!([]));
    // Its invitation can no longer be accepted either.
    let accept = call(
        &mem,
        "POST",
        "/v1/invitations/accept",
        Some(&token(&user("usr_invitee"))),
        Some(json!({ "token": INVITE_A })),
    )
    .await;
    assert_eq!(accept.status, StatusCode::NOT_FOUND, "{}", accept.text);
    let d = mem.0.lock().unwrap();
    let recs: Vec<&AuditRecord> = d
        .audit
        .iter()
        .filter(|r| r.action == "org.delete")
        .collect();
    assert_eq!(recs.len(), 3, "allowed and refused deletes are audited");
}

#[tokio::test]
async fn projects_are_renamed_and_archived_and_archived_ones_free_a_slot() {
    let mem = world(PlanId::Free).await; // free: 1 project, which org A has
    let admin = token(&a_user(Role::Admin));
    let a = call(
        &mem,
        "PATCH",
        "/v1/orgs/org_a/projects/prj_alpha1",
        Some(&admin),
        Some(json!({"name": "Alpha Main"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["name"], "Alpha Main");
    assert_eq!(a.json["slug"], "prj-alpha1");
    assert!(a.json.get("archived_at").is_none());
    let bad = call(
        &mem,
        "PATCH",
        "/v1/orgs/org_a/projects/prj_alpha1",
        Some(&admin),
        Some(json!({"name": ""})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json["error"]["field"], "name");
    let full = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/projects",
        Some(&admin),
        Some(json!({"name": "Two", "slug": "two"})),
    )
    .await;
    assert_eq!(full.status, StatusCode::FORBIDDEN, "the plan is full");

    let a = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/projects/prj_alpha1/archive",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["archived_at"], NOW);
    let listed = call(&mem, "GET", "/v1/orgs/org_a/projects", Some(&admin), None).await;
    assert_eq!(
        listed.json["projects"][0]["archived_at"], NOW,
        "listed, marked"
    );
    let two = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/projects",
        Some(&admin),
        Some(json!({"name": "Two", "slug": "two"})),
    )
    .await;
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
    let audit = call(
        &mem,
        "GET",
        "/v1/orgs/org_a/audit?resource=project:prj_alpha1",
        Some(&admin),
        None,
    )
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
    let member = token(&a_user(Role::Member));
    let two = call(
        &mem,
        "POST",
        "/v1/orgs/org_a/projects",
        Some(&admin),
        Some(json!({"name": "Two", "slug": "two"})),
    )
    .await;
    let two = two.json["id"].as_str().unwrap().to_owned();
    let ids = |a: &Answer| -> Vec<String> {
        a.json["projects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = call(&mem, "GET", "/v1/orgs/org_a/projects", Some(&admin), None).await;
    assert_eq!(ids(&all), ["prj_alpha1", two.as_str()], "admins see all");
    let mine = call(&mem, "GET", "/v1/orgs/org_a/projects", Some(&member), None).await;
    assert_eq!(ids(&mine), ["prj_alpha1"]);
    let hidden = call(
        &mem,
        "GET",
        &format!("/v1/orgs/org_a/projects/{two}"),
        Some(&member),
        None,
    )
    .await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);

    let add = |user: &'static str| {
        let (mem, admin, two) = (mem.clone(), admin.clone(), two.clone());
        async move {
            call(
                &mem,
                "POST",
                &format!("/v1/orgs/org_a/projects/{two}/members"),
                Some(&admin),
                Some(json!({ "user_id": user })),
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
    let mine = call(&mem, "GET", "/v1/orgs/org_a/projects", Some(&member), None).await;
    assert_eq!(ids(&mine), ["prj_alpha1", two.as_str()]);
    let removed = call(
        &mem,
        "DELETE",
        &format!("/v1/orgs/org_a/projects/{two}/members/usr_amember"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.text);
    let mine = call(&mem, "GET", "/v1/orgs/org_a/projects", Some(&member), None).await;
    assert_eq!(ids(&mine), ["prj_alpha1"]);
    let again = call(
        &mem,
        "DELETE",
        &format!("/v1/orgs/org_a/projects/{two}/members/usr_amember"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}
