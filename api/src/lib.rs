//! Tally's usage and management API, written against the ports of `tally-core` only.
//!
//! It serves `GET /v1/usage` (see [`usage`]), the management routes under
//! `/v1/orgs/{org_id}` — the org itself ([`orgs`]), its members ([`members`]), projects
//! ([`projects`]), API keys ([`keys`]), audit trail ([`audit`]) and invitations with
//! `POST /v1/invitations/accept` ([`invitations`]), the ledger entries of a report line
//! ([`lines`]) and its streamed CSV export ([`export`]), the org's security policy
//! ([`security`]) and sign-in sessions, the caller's own and the org's ([`sessions`]) — and `GET /openapi.json`, the OpenAPI
//! 3.1 document of every Tally route, ingest's included (see [`openapi`]). Every route is a
//! row of [`ROUTES`], and [`router`] is built from that table, so the tests that walk it
//! (tenant isolation, role matrix, audit completeness, the OpenAPI check) cover every route
//! there is.
//!
//! Callers are identified by [`auth::Caller`]: API keys, or users by JWT bearer tokens
//! ([`jwt`], or an OpenID Connect issuer's through `tally_oidc`), whose role in the path's org is checked against the one permission table in
//! [`roles`], and a user then passes the org's security policy and their session's check
//! ([`gate`]). Every mutating management route is the one skeleton of `mgmt::Mutation::run`:
//! authorize, parse, change, write the audit record. Errors are the shared JSON
//! [`ApiError`], so every Tally API refuses alike; it and the rest of the HTTP seam (API-key
//! authentication, the request span, the OpenAPI helpers) come through [`http`] alone.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use tally_core::ids::{OrgId, UserId};
use tally_core::plan::{Plan, PlanId, RateLimit};
use tally_core::ports::{Clock, ReportStore, SyncLedger, TenantStore, UsageStore};
use tally_core::tenant::Org;
use tally_http::live::{InForce, LiveCatalogue};

pub mod audit;
pub mod auth;
pub mod export;
pub mod gate;
pub mod http;
pub mod invitations;
pub mod invoices;
pub mod jwt;
pub mod keys;
pub mod lines;
pub mod members;
pub mod mgmt;
pub mod openapi;
pub mod openapi_dashboard;
pub mod orgs;
pub mod projects;
pub mod roles;
pub mod security;
pub mod sessions;
pub mod usage;
mod usage_time_weighted;

use crate::http::KeyAuth;
use crate::jwt::JwtConfig;
use crate::roles::Action;

/// What a route does; [`router`] maps each to its handler with an exhaustive match, so a
/// new endpoint cannot be served without a row in [`ROUTES`] (and the tests that walk it
/// match on it exhaustively too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /v1/usage`.
    Usage,
    /// `GET /openapi.json`.
    OpenApi,
    /// `GET /v1/me/orgs`.
    MyOrgs,
    /// `GET /v1/orgs/{org_id}`.
    GetOrg,
    /// `PATCH /v1/orgs/{org_id}`.
    UpdateOrg,
    /// `DELETE /v1/orgs/{org_id}`.
    DeleteOrg,
    /// `GET /v1/orgs/{org_id}/members`.
    ListMembers,
    /// `POST /v1/orgs/{org_id}/transfer`.
    TransferOwnership,
    /// `PATCH /v1/orgs/{org_id}/members/{user_id}`.
    UpdateMember,
    /// `DELETE /v1/orgs/{org_id}/members/{user_id}`.
    RemoveMember,
    /// `GET /v1/orgs/{org_id}/projects`.
    ListProjects,
    /// `POST /v1/orgs/{org_id}/projects`.
    CreateProject,
    /// `GET /v1/orgs/{org_id}/projects/{project_id}`.
    GetProject,
    /// `PATCH /v1/orgs/{org_id}/projects/{project_id}`.
    UpdateProject,
    /// `POST /v1/orgs/{org_id}/projects/{project_id}/archive`.
    ArchiveProject,
    /// `POST /v1/orgs/{org_id}/projects/{project_id}/members`.
    AddProjectMember,
    /// `DELETE /v1/orgs/{org_id}/projects/{project_id}/members/{user_id}`.
    RemoveProjectMember,
    /// `GET /v1/orgs/{org_id}/keys`.
    ListKeys,
    /// `POST /v1/orgs/{org_id}/keys`.
    CreateKey,
    /// `POST /v1/orgs/{org_id}/keys/{key_id}/revoke`.
    RevokeKey,
    /// `POST /v1/orgs/{org_id}/keys/{key_id}/rotate`.
    RotateKey,
    /// `GET /v1/orgs/{org_id}/audit`.
    ListAudit,
    /// `GET /v1/orgs/{org_id}/usage/summary`.
    UsageSummary,
    /// `GET /v1/orgs/{org_id}/invitations`.
    ListInvitations,
    /// `POST /v1/orgs/{org_id}/invitations`.
    CreateInvitation,
    /// `DELETE /v1/orgs/{org_id}/invitations/{invitation_id}`.
    RevokeInvitation,
    /// `POST /v1/invitations/accept`.
    AcceptInvitation,
    /// `GET /v1/orgs/{org_id}/reports/{period}/lines/{meter}/events`.
    LineEvents,
    /// `GET /v1/orgs/{org_id}/export`.
    Export,
    /// `GET /v1/orgs/{org_id}/invoices/upcoming`.
    UpcomingInvoice,
    /// `GET /v1/orgs/{org_id}/invoices`.
    ListInvoices,
    /// `GET /v1/orgs/{org_id}/security-policy`.
    GetSecurityPolicy,
    /// `PUT /v1/orgs/{org_id}/security-policy`.
    PutSecurityPolicy,
    /// `POST /v1/sessions`.
    CreateSession,
    /// `GET /v1/sessions`.
    MySessions,
    /// `DELETE /v1/sessions/{session_id}`.
    RevokeMySession,
    /// `GET /v1/orgs/{org_id}/sessions`.
    ListOrgSessions,
    /// `DELETE /v1/orgs/{org_id}/sessions/{session_id}`.
    RevokeOrgSession,
}

/// The pattern of the endpoints outside the org scope, which the role table does not decide
/// (the document; usage, whose key callers need a scope instead; the caller's own orgs and
/// own sessions; accepting an invitation, which the invited email decides). A macro, not a
/// function, so that [`Endpoint::action`] and the OpenAPI document's operation table name
/// them in one place and both still match exhaustively.
macro_rules! outside_org {
    () => {
        Endpoint::Usage
            | Endpoint::OpenApi
            | Endpoint::MyOrgs
            | Endpoint::AcceptInvitation
            | Endpoint::CreateSession
            | Endpoint::MySessions
            | Endpoint::RevokeMySession
    };
}
pub(crate) use outside_org;

impl Endpoint {
    /// The role-table action the route is checked against (`None` for routes outside the
    /// org scope: the document; usage, whose key callers need a scope instead; the caller's
    /// own orgs and own sessions; accepting an invitation, which the invited email decides).
    pub fn action(self) -> Option<Action> {
        match self {
            outside_org!() => None,
            Endpoint::GetOrg => Some(Action::OrgRead),
            Endpoint::UpdateOrg => Some(Action::OrgUpdate),
            Endpoint::DeleteOrg => Some(Action::OrgDelete),
            Endpoint::ListMembers => Some(Action::MembersRead),
            Endpoint::TransferOwnership => Some(Action::OrgTransfer),
            Endpoint::UpdateMember => Some(Action::MemberUpdate),
            Endpoint::RemoveMember => Some(Action::MemberRemove),
            Endpoint::ListProjects | Endpoint::GetProject => Some(Action::ProjectsRead),
            Endpoint::CreateProject => Some(Action::ProjectCreate),
            Endpoint::UpdateProject => Some(Action::ProjectUpdate),
            Endpoint::ArchiveProject => Some(Action::ProjectArchive),
            Endpoint::AddProjectMember => Some(Action::ProjectMemberAdd),
            Endpoint::RemoveProjectMember => Some(Action::ProjectMemberRemove),
            Endpoint::ListKeys => Some(Action::KeysRead),
            Endpoint::CreateKey => Some(Action::KeyCreate),
            Endpoint::RevokeKey => Some(Action::KeyRevoke),
            Endpoint::RotateKey => Some(Action::KeyRotate),
            Endpoint::ListAudit => Some(Action::AuditRead),
            Endpoint::UsageSummary | Endpoint::UpcomingInvoice | Endpoint::ListInvoices => {
                Some(Action::UsageRead)
            }
            Endpoint::ListInvitations => Some(Action::InvitationsRead),
            Endpoint::CreateInvitation => Some(Action::InvitationCreate),
            Endpoint::RevokeInvitation => Some(Action::InvitationRevoke),
            Endpoint::LineEvents | Endpoint::Export => Some(Action::LedgerRead),
            Endpoint::GetSecurityPolicy => Some(Action::SecurityPolicyRead),
            Endpoint::PutSecurityPolicy => Some(Action::SecurityPolicyUpdate),
            Endpoint::ListOrgSessions => Some(Action::SessionsRead),
            Endpoint::RevokeOrgSession => Some(Action::SessionRevoke),
        }
    }

    /// The action a mutating route records in the audit trail (`None` for reads, and for a
    /// user's own sessions, which belong to no org's trail): its role-table action, or
    /// `invitation.accept`, which is outside the table.
    pub fn audit_action(self) -> Option<Action> {
        match self {
            Endpoint::AcceptInvitation => Some(Action::InvitationAccept),
            other => other.action().filter(|a| a.is_mutation()),
        }
    }
}

/// One route: method, path (axum syntax) and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path, with `{param}` segments.
    pub path: &'static str,
    /// The endpoint.
    pub endpoint: Endpoint,
}

const fn route(method: &'static str, path: &'static str, endpoint: Endpoint) -> Route {
    Route {
        method,
        path,
        endpoint,
    }
}

/// Every route [`router`] serves; the router is built from this table.
pub const ROUTES: &[Route] = &[
    route("GET", "/v1/usage", Endpoint::Usage),
    route("GET", "/openapi.json", Endpoint::OpenApi),
    route("GET", "/v1/me/orgs", Endpoint::MyOrgs),
    route("GET", "/v1/orgs/{org_id}", Endpoint::GetOrg),
    route("PATCH", "/v1/orgs/{org_id}", Endpoint::UpdateOrg),
    route("DELETE", "/v1/orgs/{org_id}", Endpoint::DeleteOrg),
    route("GET", "/v1/orgs/{org_id}/members", Endpoint::ListMembers),
    route(
        "POST",
        "/v1/orgs/{org_id}/transfer",
        Endpoint::TransferOwnership,
    ),
    route(
        "PATCH",
        "/v1/orgs/{org_id}/members/{user_id}",
        Endpoint::UpdateMember,
    ),
    route(
        "DELETE",
        "/v1/orgs/{org_id}/members/{user_id}",
        Endpoint::RemoveMember,
    ),
    route("GET", "/v1/orgs/{org_id}/projects", Endpoint::ListProjects),
    route(
        "POST",
        "/v1/orgs/{org_id}/projects",
        Endpoint::CreateProject,
    ),
    route(
        "GET",
        "/v1/orgs/{org_id}/projects/{project_id}",
        Endpoint::GetProject,
    ),
    route(
        "PATCH",
        "/v1/orgs/{org_id}/projects/{project_id}",
        Endpoint::UpdateProject,
    ),
    route(
        "POST",
        "/v1/orgs/{org_id}/projects/{project_id}/archive",
        Endpoint::ArchiveProject,
    ),
    route(
        "POST",
        "/v1/orgs/{org_id}/projects/{project_id}/members",
        Endpoint::AddProjectMember,
    ),
    route(
        "DELETE",
        "/v1/orgs/{org_id}/projects/{project_id}/members/{user_id}",
        Endpoint::RemoveProjectMember,
    ),
    route("GET", "/v1/orgs/{org_id}/keys", Endpoint::ListKeys),
    route("POST", "/v1/orgs/{org_id}/keys", Endpoint::CreateKey),
    route(
        "POST",
        "/v1/orgs/{org_id}/keys/{key_id}/revoke",
        Endpoint::RevokeKey,
    ),
    route(
        "POST",
        "/v1/orgs/{org_id}/keys/{key_id}/rotate",
        Endpoint::RotateKey,
    ),
    route("GET", "/v1/orgs/{org_id}/audit", Endpoint::ListAudit),
    route(
        "GET",
        "/v1/orgs/{org_id}/usage/summary",
        Endpoint::UsageSummary,
    ),
    route(
        "GET",
        "/v1/orgs/{org_id}/invitations",
        Endpoint::ListInvitations,
    ),
    route(
        "POST",
        "/v1/orgs/{org_id}/invitations",
        Endpoint::CreateInvitation,
    ),
    route(
        "DELETE",
        "/v1/orgs/{org_id}/invitations/{invitation_id}",
        Endpoint::RevokeInvitation,
    ),
    route("POST", "/v1/invitations/accept", Endpoint::AcceptInvitation),
    route(
        "GET",
        "/v1/orgs/{org_id}/reports/{period}/lines/{meter}/events",
        Endpoint::LineEvents,
    ),
    route("GET", "/v1/orgs/{org_id}/export", Endpoint::Export),
    route(
        "GET",
        "/v1/orgs/{org_id}/invoices/upcoming",
        Endpoint::UpcomingInvoice,
    ),
    route("GET", "/v1/orgs/{org_id}/invoices", Endpoint::ListInvoices),
    route(
        "GET",
        "/v1/orgs/{org_id}/security-policy",
        Endpoint::GetSecurityPolicy,
    ),
    route(
        "PUT",
        "/v1/orgs/{org_id}/security-policy",
        Endpoint::PutSecurityPolicy,
    ),
    route("POST", "/v1/sessions", Endpoint::CreateSession),
    route("GET", "/v1/sessions", Endpoint::MySessions),
    route(
        "DELETE",
        "/v1/sessions/{session_id}",
        Endpoint::RevokeMySession,
    ),
    route(
        "GET",
        "/v1/orgs/{org_id}/sessions",
        Endpoint::ListOrgSessions,
    ),
    route(
        "DELETE",
        "/v1/orgs/{org_id}/sessions/{session_id}",
        Endpoint::RevokeOrgSession,
    ),
];

pub use http::{ApiError, ErrorBody};
pub use usage::{SeriesPoint, UsageResponse};

/// Everything the API needs, as ports. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct ApiState {
    /// Orgs, projects and API keys.
    pub tenants: Arc<dyn TenantStore>,
    /// The counters usage is read from.
    pub usage: Arc<dyn UsageStore>,
    /// The catalogue in force: the meters that can be asked about, and the plans whose
    /// user and project caps the API enforces and whose allowances the usage summary shows
    /// (a plan missing from it is the built-in one). The composition root may replace it
    /// while the API runs; a request reads one snapshot ([`tally_http::live`]).
    pub catalogue: LiveCatalogue,
    /// The server's time: key and token expiry, audit times, the default usage range.
    pub clock: Arc<dyn Clock>,
    /// How users' JWTs are verified; `None` refuses every JWT with `401`.
    pub jwt: Option<Arc<JwtConfig>>,
    /// The OpenID Connect issuer whose tokens are accepted too (a token whose `iss` is
    /// this issuer goes to it, any other to [`ApiState::jwt`]); its users are matched to
    /// Tally users by verified email ([`auth`]).
    pub oidc: Option<Arc<tally_oidc::OidcVerifier>>,
    /// One token bucket per user across the management API and user-token usage reads
    /// ([`USER_RATE`] by default), so one user cannot flood the store for everyone.
    pub users: Arc<crate::http::RateLimiter<UserId>>,
    /// The size of each user's bucket.
    pub user_rate: RateLimit,
    /// How many proxies in front of this server append to `X-Forwarded-For` and are
    /// trusted to: the client address audit records show is the entry the outermost of
    /// them saw. 0 (the default): the connection's peer, and the header is ignored, since
    /// any client can write it.
    pub trusted_proxies: usize,
    /// The prices of the process's catalogue, for the upcoming invoice; `None`: the
    /// built-in catalogue's.
    pub prices: Option<Arc<tally_core::Catalogue>>,
    /// Month close's reports and the Stripe sync ledger, for the invoice list; `None`
    /// answers that route `503` (a deployment without billing).
    pub billing: Option<BillingPorts>,
    /// Session lookups of session tokens, cached for
    /// [`sessions::SESSION_CACHE_TTL_SECS`] ([`sessions`]).
    pub sessions: Arc<sessions::SessionCache>,
    /// The stored catalogue versions and the orgs' price overrides the upcoming invoice
    /// prices with, as month close does; `None` (a deployment that keeps neither): the
    /// month is previewed with [`ApiState::prices`] at list price.
    pub pricing: Option<PricingPorts>,
    /// The series of dimensioned meters, the index `group_by` and `filter[..]` read on
    /// `GET /v1/usage`; `None` answers such a request `503`.
    pub series: Option<Arc<dyn tally_core::ports::SeriesRegistry>>,
}

/// What the upcoming invoice reads to price a month as month close will.
#[derive(Clone)]
pub struct PricingPorts {
    /// The published catalogue versions.
    pub versions: Arc<dyn tally_core::ports::CatalogueStore>,
    /// Each org's price overrides (read only: no route of this API writes one).
    pub overrides: Arc<dyn tally_core::ports::OverrideStore>,
}

/// The billing records the invoice list reads.
#[derive(Clone)]
pub struct BillingPorts {
    /// Month close's stored reports.
    pub reports: Arc<dyn ReportStore>,
    /// The Stripe sync's recorded steps.
    pub sync: Arc<dyn SyncLedger>,
}

/// A user's requests per second (and burst) on the management API by default: far above
/// what a person or a dashboard needs, far below what hurts the store.
pub const USER_RATE: RateLimit = RateLimit {
    per_second: 20,
    burst: 40,
};

/// Most users whose buckets are kept at once (a full bucket is forgotten anyway).
pub const USER_BUCKETS: usize = 100_000;

impl ApiState {
    /// Bundles the ports.
    pub fn new(
        tenants: Arc<dyn TenantStore>,
        usage: Arc<dyn UsageStore>,
        catalogue: impl Into<LiveCatalogue>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ApiState {
            tenants,
            usage,
            catalogue: catalogue.into(),
            clock,
            jwt: None,
            oidc: None,
            users: Arc::new(crate::http::RateLimiter::new(USER_BUCKETS)),
            user_rate: USER_RATE,
            trusted_proxies: 0,
            prices: None,
            pricing: None,
            billing: None,
            series: None,
            sessions: Arc::new(sessions::SessionCache::new(
                sessions::SESSION_CACHE_CAPACITY,
            )),
        }
    }

    /// The same state, splitting dimensioned meters' usage by the series `registry` lists.
    pub fn with_series(mut self, registry: Arc<dyn tally_core::ports::SeriesRegistry>) -> Self {
        self.series = Some(registry);
        self
    }

    /// The same state, pricing upcoming invoices with `catalogue` (the one the composition
    /// root loaded, as month close does).
    pub fn with_prices(mut self, catalogue: tally_core::Catalogue) -> Self {
        self.prices = Some(Arc::new(catalogue));
        self
    }

    /// The same state, previewing the upcoming invoice with the catalogue versions in
    /// `versions` and the overrides in `overrides`, as month close prices.
    pub fn with_pricing(
        mut self,
        versions: Arc<dyn tally_core::ports::CatalogueStore>,
        overrides: Arc<dyn tally_core::ports::OverrideStore>,
    ) -> Self {
        self.pricing = Some(PricingPorts {
            versions,
            overrides,
        });
        self
    }

    /// The same state, listing closed months from `reports` and `sync`.
    pub fn with_billing(
        mut self,
        reports: Arc<dyn ReportStore>,
        sync: Arc<dyn SyncLedger>,
    ) -> Self {
        self.billing = Some(BillingPorts { reports, sync });
        self
    }

    /// The catalogue upcoming invoices are priced with.
    pub fn prices(&self) -> Result<Arc<tally_core::Catalogue>, ApiError> {
        match &self.prices {
            Some(c) => Ok(c.clone()),
            None => tally_core::Catalogue::builtin()
                .map(Arc::new)
                .map_err(|e| ApiError::Internal(format!("the built-in catalogue: {e}"))),
        }
    }

    /// The billing records, or the `503` of a deployment without them.
    pub fn billing(&self) -> Result<&BillingPorts, ApiError> {
        self.billing.as_ref().ok_or_else(|| {
            ApiError::Unavailable("this server does not keep billing records".into())
        })
    }

    /// The same state, accepting users' JWTs as `jwt` says.
    pub fn with_jwt(mut self, jwt: JwtConfig) -> Self {
        self.jwt = Some(Arc::new(jwt));
        self
    }

    /// The same state, accepting tokens of the OIDC issuer `oidc` verifies.
    pub fn with_oidc(mut self, oidc: tally_oidc::OidcVerifier) -> Self {
        self.oidc = Some(Arc::new(oidc));
        self
    }

    /// The same state, enforcing `plans` (the catalogue's, as the composition root loaded
    /// it) instead of the built-in ones.
    pub fn with_plans(mut self, plans: BTreeMap<PlanId, Plan>) -> Self {
        let meters = self.catalogue.load().meters.clone();
        self.catalogue = LiveCatalogue::new(InForce {
            meters,
            plans: plans.into_iter().map(|(id, p)| (id, Arc::new(p))).collect(),
            version: None,
            previous: None,
        });
        self
    }

    /// The same state, reading the meters and plans from `catalogue`, which the caller may
    /// replace while the API serves (`tally serve` and the Lambda API refresh it).
    pub fn with_catalogue(mut self, catalogue: LiveCatalogue) -> Self {
        self.catalogue = catalogue;
        self
    }

    /// Trusts `n` proxies' `X-Forwarded-For` entries (see [`ApiState::trusted_proxies`]).
    pub fn with_trusted_proxies(mut self, n: usize) -> Self {
        self.trusted_proxies = n;
        self
    }

    /// The org `id`, or the `404` of one that does not exist.
    pub async fn org(&self, id: &OrgId) -> Result<Org, ApiError> {
        self.tenants
            .get_org(id)
            .await?
            .ok_or_else(auth::org_not_found)
    }

    /// The plan `id` as the catalogue in force defines it.
    pub fn plan(&self, id: PlanId) -> Plan {
        Plan::clone(&self.catalogue.load().plan(id))
    }
}

impl fmt::Debug for ApiState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiState")
            .field("catalogue", &self.catalogue.load().meters.names())
            .finish_non_exhaustive()
    }
}

impl FromRef<ApiState> for KeyAuth {
    fn from_ref(state: &ApiState) -> Self {
        KeyAuth::new(state.tenants.clone(), state.clock.clone())
    }
}

fn handler(endpoint: Endpoint) -> MethodRouter<ApiState> {
    match endpoint {
        Endpoint::Usage => get(usage::get_usage),
        Endpoint::OpenApi => get(openapi::serve),
        Endpoint::MyOrgs => get(orgs::my_orgs),
        Endpoint::GetOrg => get(orgs::get_org),
        Endpoint::UpdateOrg => patch(orgs::update_org),
        Endpoint::DeleteOrg => delete(orgs::delete_org),
        Endpoint::ListMembers => get(members::list_members),
        Endpoint::TransferOwnership => post(orgs::transfer_ownership),
        Endpoint::UpdateMember => patch(members::update_member),
        Endpoint::RemoveMember => delete(members::remove_member),
        Endpoint::ListProjects => get(projects::list_projects),
        Endpoint::CreateProject => post(projects::create_project),
        Endpoint::GetProject => get(projects::get_project),
        Endpoint::UpdateProject => patch(projects::update_project),
        Endpoint::ArchiveProject => post(projects::archive_project),
        Endpoint::AddProjectMember => post(projects::add_project_member),
        Endpoint::RemoveProjectMember => delete(projects::remove_project_member),
        Endpoint::ListKeys => get(keys::list_keys),
        Endpoint::CreateKey => post(keys::create_key),
        Endpoint::RevokeKey => post(keys::revoke_key),
        Endpoint::RotateKey => post(keys::rotate_key),
        Endpoint::ListAudit => get(audit::list_audit),
        Endpoint::UsageSummary => get(orgs::usage_summary),
        Endpoint::ListInvitations => get(invitations::list_invitations),
        Endpoint::CreateInvitation => post(invitations::create_invitation),
        Endpoint::RevokeInvitation => delete(invitations::revoke_invitation),
        Endpoint::AcceptInvitation => post(invitations::accept_invitation),
        Endpoint::LineEvents => get(lines::line_events),
        Endpoint::Export => get(export::export),
        Endpoint::UpcomingInvoice => get(invoices::upcoming),
        Endpoint::ListInvoices => get(invoices::list),
        Endpoint::GetSecurityPolicy => get(security::get_policy),
        Endpoint::PutSecurityPolicy => put(security::put_policy),
        Endpoint::CreateSession => post(sessions::create),
        Endpoint::MySessions => get(sessions::list_mine),
        Endpoint::RevokeMySession => delete(sessions::revoke_mine),
        Endpoint::ListOrgSessions => get(sessions::list_org),
        Endpoint::RevokeOrgSession => delete(sessions::revoke_org),
    }
}

/// The API's routes, every row of [`ROUTES`], inside the request span of
/// [`http::trace_requests`] (method, path, request id, and the org once known) and
/// [`http::drain_unread_body`] (a body left unread by an early answer is drained, within
/// bounds, rather than reset).
pub fn router(state: ApiState) -> Router {
    ROUTES
        .iter()
        .fold(Router::new(), |r, route| {
            r.route(route.path, handler(route.endpoint))
        })
        .layer(axum::middleware::from_fn(http::trace_requests))
        // Outermost: an answer given before the body is read (401, 403, 413, 429) still
        // reaches a client that is sending it.
        .layer(axum::middleware::from_fn(http::drain_unread_body))
        .with_state(state)
}

#[cfg(test)]
mod tests;
