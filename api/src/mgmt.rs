//! What every management route shares: the refusal type [`MgmtError`], the audit record of
//! a mutation, and [`Mutation::run`], the one skeleton of a mutating route.
//!
//! Every mutating route is the same four steps, written once in [`Mutation::run`]:
//! authorize the caller for the route's action in the path's org (a caller outside the org
//! gets `404`, a role without the permission `403`, an API key `403`), parse the body, make
//! the change, and write exactly one audit record ([`AuditRecord`]), allowed or refused,
//! with the caller, the action, the resource, before/after, the time, the IP
//! (`X-Forwarded-For`'s first address, else the peer address) and the user agent. A handler
//! supplies only the middle part, as a `Change` that says what to answer and what to
//! record. It takes the caller as an [`Actor`] and its path as [`PathParams`].
//!
//! Two refusals leave no record because there is nothing to file it under: `401` (no
//! caller) and a path org id that is not an org id at all (no org). A record that cannot be
//! written is logged as an error; the answer is the mutation's own.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tally_core::ids::OrgId;
use tally_core::ports::StoreError;
use tally_core::tenant::{AuditOutcome, AuditRecord};

use crate::ApiState;
use crate::auth::{Authorized, Caller};
use crate::http::{ApiError, ErrorBody, PLAN_LIMIT_EXCEEDED};
use crate::roles::Action;

/// Longest user agent kept in an audit record, in characters.
pub const MAX_USER_AGENT: usize = 256;

/// A refusal of a management route.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    /// Any refusal of the shared [`ApiError`], with its status (`400`, `401`, `403`,
    /// `404`, `409`, `500`, `503`).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// `403 Forbidden`, code `plan_limit_exceeded`, with `limit` and `count` in the error
    /// object: the org's plan allows no more of `what` (projects, users).
    #[error("the {plan} plan allows {limit} {what}; the organization has {count}")]
    CountLimit {
        /// What is counted (`projects`, `users`).
        what: &'static str,
        /// The org's plan.
        plan: String,
        /// The plan's limit.
        limit: u32,
        /// How many the org has.
        count: usize,
    },
    /// `403 Forbidden`, code `plan_change_forbidden`, field `plan`: an org's plan decides
    /// its bill, so no tenant role may change it; the operator does (`tally org set-plan`).
    #[error(
        "an organization's plan is changed by the operator of this Tally (tally org set-plan), not through the API"
    )]
    PlanChangeForbidden,
}

impl From<StoreError> for MgmtError {
    fn from(e: StoreError) -> Self {
        MgmtError::Api(e.into())
    }
}

impl MgmtError {
    /// The error code: the one the answer carries and the audit record shows.
    pub fn code(&self) -> String {
        match self {
            MgmtError::Api(e) => e.body().code,
            MgmtError::CountLimit { .. } => PLAN_LIMIT_EXCEEDED.to_owned(),
            MgmtError::PlanChangeForbidden => PLAN_CHANGE_FORBIDDEN.to_owned(),
        }
    }

    /// The field to blame, as the answer's error object names it.
    pub fn field(&self) -> Option<String> {
        match self {
            MgmtError::Api(e) => e.body().field,
            MgmtError::CountLimit { what, .. } => Some((*what).to_owned()),
            MgmtError::PlanChangeForbidden => Some("plan".to_owned()),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            MgmtError::Api(e) => e.status(),
            MgmtError::CountLimit { .. } | MgmtError::PlanChangeForbidden => StatusCode::FORBIDDEN,
        }
    }
}

/// Code of the refusal of a plan change through the API.
pub const PLAN_CHANGE_FORBIDDEN: &str = "plan_change_forbidden";

/// What a plan-count refusal's error object carries besides code and message.
#[derive(Debug, Serialize)]
struct CountLimitBody {
    #[serde(flatten)]
    error: ErrorBody,
    limit: u32,
    count: usize,
}

impl IntoResponse for MgmtError {
    fn into_response(self) -> Response {
        match self {
            MgmtError::Api(e) => e.into_response(),
            MgmtError::CountLimit {
                what, limit, count, ..
            } => {
                let message = self.to_string();
                let body = CountLimitBody {
                    error: ErrorBody::new(PLAN_LIMIT_EXCEEDED, message, Some(what)),
                    limit,
                    count,
                };
                (
                    StatusCode::FORBIDDEN,
                    Json(serde_json::json!({ "error": body })),
                )
                    .into_response()
            }
            MgmtError::PlanChangeForbidden => {
                let body = ErrorBody::new(PLAN_CHANGE_FORBIDDEN, self.to_string(), Some("plan"));
                (
                    StatusCode::FORBIDDEN,
                    Json(serde_json::json!({ "error": body })),
                )
                    .into_response()
            }
        }
    }
}

/// Where a request came from, for audit records.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// The client's address as [`ApiState::trusted_proxies`] says to find it.
    pub ip: Option<String>,
    /// The `User-Agent`, clipped to [`MAX_USER_AGENT`] characters.
    pub user_agent: Option<String>,
}

impl FromRequestParts<ApiState> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(MAX_USER_AGENT).collect());
        Ok(RequestMeta {
            ip: crate::http::client_ip_of(parts, state.trusted_proxies).map(|ip| ip.to_string()),
            user_agent,
        })
    }
}

/// What a successful change answers, and what its audit record shows.
#[derive(Debug)]
pub(crate) struct Change<T> {
    /// What the route answers (may hold a secret shown once, which is never recorded).
    answer: T,
    /// The resource's state before, if it had one.
    before: Option<Value>,
    /// Its state after, if it still has one.
    after: Option<Value>,
    /// The resource, when only the change names it (the id of something created).
    resource: Option<String>,
}

impl<T> Change<T> {
    /// Answers `answer` and records no state; add it with the builders below.
    pub(crate) fn new(answer: T) -> Self {
        Change {
            answer,
            before: None,
            after: None,
            resource: None,
        }
    }

    /// Records `state` as the resource's state before the change.
    pub(crate) fn before(mut self, state: &impl Serialize) -> Self {
        self.before = to_json(state);
        self
    }

    /// Records `state` as the resource's state after the change.
    pub(crate) fn after(mut self, state: &impl Serialize) -> Self {
        self.after = to_json(state);
        self
    }

    /// Names the resource in the record (a created one's id is known only now).
    pub(crate) fn resource(mut self, resource: String) -> Self {
        self.resource = Some(resource);
        self
    }
}

impl<T: Serialize> Change<T> {
    /// An update: records `before` and the answer as the state after.
    pub(crate) fn updated(before: &impl Serialize, after: T) -> Self {
        Change::added(after).before(before)
    }

    /// An addition to a resource named already: records the answer as the state after.
    pub(crate) fn added(answer: T) -> Self {
        Change::recording(answer, |c| &mut c.after)
    }

    /// A removal: records the answer (what was removed) as the state before.
    pub(crate) fn removed(answer: T) -> Self {
        Change::recording(answer, |c| &mut c.before)
    }

    /// A creation: names the new `resource` and records the answer as its state.
    pub(crate) fn created(resource: String, answer: T) -> Self {
        Change::added(answer).resource(resource)
    }

    /// Answers `answer` and records it as the state `side` picks (before or after).
    fn recording(answer: T, side: fn(&mut Self) -> &mut Option<Value>) -> Self {
        let state = to_json(&answer);
        let mut change = Change::new(answer);
        *side(&mut change) = state;
        change
    }
}

/// Who makes a management request, and from where: the authenticated [`Caller`] and the
/// [`RequestMeta`] its audit record shows, with the app's state (as [`OrgCaller`] holds it
/// for a read route). A mutating route takes it and calls [`Actor::mutation`]; it refuses
/// like [`Caller`] (`401`) before anything else is read.
#[derive(Debug)]
pub(crate) struct Actor {
    state: ApiState,
    caller: Caller,
    meta: RequestMeta,
}

/// The inputs of a read route of one org (`/v1/orgs/{org_id}/...`): the app's state, the
/// caller and the org path parameter, extracted in that order (the caller first, as when
/// they were three extractors: a request without credentials is a `401` whatever its path).
pub(crate) struct OrgCaller {
    state: ApiState,
    caller: Caller,
    org: String,
}

impl FromRequestParts<ApiState> for OrgCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let PathParams(org) = PathParams::<String>::from_request_parts(parts, state).await?;
        Ok(OrgCaller {
            state: state.clone(),
            caller,
            org,
        })
    }
}

impl OrgCaller {
    /// The caller authorized for `action` in the org ([`Caller::authorize`]), and the app's
    /// state.
    pub(crate) async fn authorize(
        self,
        action: Action,
    ) -> Result<(ApiState, Authorized), ApiError> {
        let auth = self
            .caller
            .authorize(&self.state, &self.org, action)
            .await?;
        Ok((self.state, auth))
    }
}

impl FromRequestParts<ApiState> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let Ok(meta) = RequestMeta::from_request_parts(parts, state).await;
        Ok(Actor {
            state: state.clone(),
            caller,
            meta,
        })
    }
}

impl Actor {
    /// The user's request context (how they signed in, from where), for a user.
    pub(crate) fn user_context(&self) -> Option<&crate::auth::UserContext> {
        match &self.caller {
            Caller::User(_, context) => Some(context),
            Caller::ApiKey(_) => None,
        }
    }

    /// The caller doing `action` on `resource` in the org `org` (a path parameter): a
    /// mutation, made and audited by [`Mutation::run`].
    pub(crate) fn mutation(self, org: &str, action: Action, resource: String) -> Mutation<'_> {
        Mutation {
            audit: Audit::new(&self.caller, self.meta, org, action, resource),
            caller: self.caller,
            state: self.state,
            org,
            action,
        }
    }
}

/// A mutation about to be made: what [`Actor::mutation`] names, with its audit record.
#[derive(Debug)]
pub(crate) struct Mutation<'a> {
    caller: Caller,
    state: ApiState,
    org: &'a str,
    action: Action,
    audit: Audit,
}

impl Mutation<'_> {
    /// The one skeleton of a mutating management route: authorizes the caller for the
    /// action in the org, runs `work` with the app's state and that authorization (it parses
    /// the body and makes the change), and writes the audit record of the outcome, allowed
    /// or refused. Answers `work`'s answer, or the refusal.
    pub(crate) async fn run<T>(
        self,
        work: impl AsyncFnOnce(&ApiState, Authorized) -> Result<Change<T>, MgmtError>,
    ) -> Result<T, MgmtError> {
        let Mutation {
            caller,
            state,
            org,
            action,
            mut audit,
        } = self;
        let result = match caller.authorize(&state, org, action).await {
            Ok(auth) => work(&state, auth).await,
            Err(e) => {
                if matches!(e, ApiError::NotFound { .. } | ApiError::Unauthorized(_)) {
                    // Not a member (or no valid credential): the org's trail is its members'
                    // business, so a stranger's probe is a server event, not a record there.
                    tracing::warn!(org, action = action.as_str(), actor = %audit.actor, ip = ?audit.meta.ip, "refused a caller outside the org");
                    audit.org = None;
                }
                Err(e.into())
            }
        };
        let result = result.map(|c| {
            audit.before = c.before;
            audit.after = c.after;
            if let Some(resource) = c.resource {
                audit.resource = resource;
            }
            c.answer
        });
        audit.finish(&state, result).await
    }
}

/// A management route's path parameters (the org id first), or the `400`
/// (`invalid_path`) of ones that do not parse, which no audit record shows.
pub(crate) struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| PathParams(v))
            .map_err(path_error)
    }
}

/// An audit record being prepared; [`Audit::finish`] writes it. [`Mutation::run`] uses it
/// for every route in the role table; accepting an invitation, which no role decides, uses
/// it directly.
#[derive(Debug)]
pub(crate) struct Audit {
    org: Option<OrgId>,
    actor: String,
    action: Action,
    resource: String,
    pub(crate) before: Option<Value>,
    pub(crate) after: Option<Value>,
    meta: RequestMeta,
}

impl Audit {
    /// A record of `caller` doing `action` on `resource` in `org` (filed nowhere when `org`
    /// is not an org id).
    pub(crate) fn new(
        caller: &Caller,
        meta: RequestMeta,
        org: &str,
        action: Action,
        resource: String,
    ) -> Self {
        Audit {
            org: OrgId::parse(org).ok(),
            actor: caller.actor(),
            action,
            resource,
            before: None,
            after: None,
            meta,
        }
    }

    /// Writes the one record of this request, allowed or refused, and hands the result on.
    pub(crate) async fn finish<T>(
        self,
        state: &ApiState,
        result: Result<T, MgmtError>,
    ) -> Result<T, MgmtError> {
        let Some(org) = self.org else {
            return result;
        };
        let now = state.clock.now();
        let record = AuditRecord {
            id: format!("aud_{}", hex_of(rand::random::<[u8; 16]>())),
            org_id: org,
            actor: self.actor,
            action: self.action.as_str().to_owned(),
            resource: self.resource,
            outcome: if result.is_ok() {
                AuditOutcome::Allowed
            } else {
                AuditOutcome::Refused
            },
            reason: result.as_ref().err().map(MgmtError::code),
            before: self.before,
            after: if result.is_ok() { self.after } else { None },
            at: now,
            ip: self.meta.ip,
            user_agent: self.meta.user_agent,
        };
        if let Err(e) = state.tenants.record_audit(&record).await {
            tracing::error!(error = %e, action = %record.action, org = %record.org_id, "cannot write the audit record");
        }
        result
    }
}

fn hex_of(bytes: [u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` random bytes, for ids and secrets.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b);
    b
}

/// The `400` of a path whose parameters do not parse.
fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad_request("invalid_path", "path", e.body_text())
}

/// A management request's JSON body: a JSON object (never an array, which serde would
/// otherwise read field by field, so `[null, null]` would pass for `{}`), deserialized into
/// `T`. Handlers take it as `Result<JsonObject<T>, MgmtError>` and unwrap it with [`body`]
/// where the refusal is audited.
pub(crate) struct JsonObject<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonObject<T> {
    type Rejection = MgmtError;

    async fn from_request(req: Request, state: &S) -> Result<Self, MgmtError> {
        let invalid = |message: String| {
            MgmtError::Api(ApiError::bad_request(
                "invalid_body",
                "body",
                format!("the body is not the expected JSON: {message}"),
            ))
        };
        // Kept as text, not a `Value`: deserializing `T` from the text keeps serde's refusal
        // of a field given twice, which a `Value` would have settled as "the last one wins".
        let Json(raw) = Json::<Box<serde_json::value::RawValue>>::from_request(req, state)
            .await
            .map_err(|e: JsonRejection| invalid(e.body_text()))?;
        if !raw.get().trim_start().starts_with('{') {
            return Err(invalid("it must be a JSON object".into()));
        }
        serde_json::from_str(raw.get())
            .map(JsonObject)
            .map_err(|e| invalid(e.to_string()))
    }
}

/// The JSON body, or the `400` (`invalid_body`) of one that is not the expected JSON.
pub(crate) fn body<T>(b: Result<JsonObject<T>, MgmtError>) -> Result<T, MgmtError> {
    b.map(|JsonObject(v)| v)
}

/// The `400` (`invalid_field`) of a field core's checks refused.
pub(crate) fn field_error(e: tally_core::tenant::FieldError) -> MgmtError {
    MgmtError::Api(ApiError::bad_request("invalid_field", e.field, e.message))
}

/// `v` as JSON for an audit record (`None` if it does not serialize, which our types do).
pub(crate) fn to_json<T: Serialize>(v: &T) -> Option<Value> {
    serde_json::to_value(v).ok()
}
