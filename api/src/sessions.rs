//! Sign-in sessions: opening one (`POST /v1/sessions`, and the dashboard's sign-in through
//! [`open_session`]), listing and revoking one's own (`GET /v1/sessions`, `DELETE
//! /v1/sessions/{session_id}`), an org admin listing and revoking the sessions of the
//! org's members (`GET /v1/orgs/{org_id}/sessions`, `DELETE
//! /v1/orgs/{org_id}/sessions/{session_id}`, audited), and [`check_session`], the check
//! every session token gets.
//!
//! A Tally session token is an HS256 JWT of the server's own secret with a `sid` claim
//! naming a stored [`Session`] of its user (`sub`). It is opened with a user token (one of
//! `tally token create`, or the configured OIDC issuer's); a session token cannot open
//! another, so a stolen one dies with its session instead of renewing itself. The session
//! lives as long as the strictest `session_lifetime_seconds` among the user's orgs allows
//! ([`session_lifetime`]; an org that set no policy counts as
//! [`DEFAULT_SESSION_LIFETIME_SECS`], 12 hours), and carries the opening token's `amr`, so an org that requires MFA
//! still sees how the user signed in. A user holds at most [`MAX_SESSIONS_PER_USER`] live
//! sessions.
//!
//! A session is the user's, not an org's: an org admin sees and revokes the sessions of
//! the org's members (a member of two orgs is seen by the admins of both), never of anyone
//! else, and cannot tell a stranger's session id from one that does not exist (`404`).
//!
//! [`check_session`] runs on every request that carries a session token: the session must
//! exist and be active (not revoked, not expired). The answer is cached per (user,
//! session) for [`SESSION_CACHE_TTL_SECS`] seconds, so a revocation written by another
//! process bites within that bound; one written through this process ([`remember`]) bites
//! at once.

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::TimeDelta;
use serde::{Deserialize, Serialize};
use tally_core::ids::{OrgId, SessionId, UserId};
use tally_core::ports::{RevokeSession, StoreError};
use tally_core::security::{
    DEFAULT_SESSION_LIFETIME_SECS, MAX_SESSIONS_PER_USER, Session, clip_user_agent,
};

use crate::ApiState;
use crate::auth::Caller;
pub use crate::gate::{SESSION_CACHE_TTL_SECS, UserContext, check_session, remember};
use crate::http::ApiError;
use crate::jwt::TokenFacts;
use crate::mgmt::{Actor, Change, MgmtError, PathParams, RequestMeta};
use crate::roles::Action;

/// Most sessions whose lookups are cached at once.
pub const SESSION_CACHE_CAPACITY: usize = 10_000;

/// Most sessions `GET /v1/orgs/{org_id}/sessions` answers (newest first); more is marked
/// `truncated`. Each member holds at most [`MAX_SESSIONS_PER_USER`].
pub const MAX_LISTED_SESSIONS: usize = 500;

/// The cache of session lookups, by (user, session id); `None` remembers "no such session".
pub type SessionCache = tally_http::cache::TtlCache<(UserId, SessionId), Option<Session>>;

/// Why a session could not be opened, listed or revoked.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// `403 Forbidden`, code `session_token`: the credential is itself a session token; a
    /// session is opened with a user token only.
    #[error(
        "a session token cannot open another session; sign in with a user token (tally token create, or your identity provider's token)"
    )]
    FromSessionToken,
    /// `403 Forbidden`: an API key opens no session (and has none to list).
    #[error("sessions are users'; this route needs a user's bearer token (JWT), not an API key")]
    ApiKey,
    /// `409 Conflict`, code `too_many_sessions`, field `sessions`: the user holds
    /// [`MAX_SESSIONS_PER_USER`] live sessions already.
    #[error(
        "you hold {MAX_SESSIONS_PER_USER} live sessions already; revoke one (DELETE /v1/sessions/{{session_id}}) or wait for one to expire"
    )]
    TooMany,
    /// `404 Not Found`, field `session_id`: no such session of the caller (or, for an org
    /// admin, of the org's members).
    #[error("no such session")]
    NotFound,
    /// `503 Service Unavailable`, code `sessions_unavailable`: this server holds no HS256
    /// secret to sign session tokens with.
    #[error("this server cannot sign session tokens (it has no HS256 secret)")]
    NoSigner,
    /// `500` or `503`: the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Code of the refusal of a session token opening another session.
pub const SESSION_TOKEN: &str = "session_token";
/// Code of the refusal of a session past [`MAX_SESSIONS_PER_USER`].
pub const TOO_MANY_SESSIONS: &str = "too_many_sessions";

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let message = e.to_string();
        match e {
            SessionError::FromSessionToken => ApiError::ForbiddenBecause {
                code: SESSION_TOKEN,
                message,
            },
            SessionError::ApiKey => ApiError::Forbidden(message),
            SessionError::TooMany => ApiError::ConflictBecause {
                code: TOO_MANY_SESSIONS,
                message,
                field: "sessions",
            },
            SessionError::NotFound => ApiError::not_found("session_id", message),
            SessionError::NoSigner => ApiError::UnavailableBecause {
                code: "sessions_unavailable",
                message,
                retry_after_secs: None,
            },
            SessionError::Store(e) => e.into(),
        }
    }
}

impl From<SessionError> for MgmtError {
    fn from(e: SessionError) -> Self {
        MgmtError::Api(e.into())
    }
}

/// A session as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// The session as stored (its fields appear at the top level of the JSON).
    #[serde(flatten)]
    pub session: Session,
    /// Whether the request that shows it was made with it.
    pub current: bool,
}

impl SessionView {
    fn of(session: Session, context: Option<&UserContext>) -> Self {
        let current = context
            .and_then(|c| c.session.as_ref())
            .is_some_and(|(sid, _)| *sid == session.id);
        SessionView { session, current }
    }
}

/// `POST /v1/sessions` answer: the session and its token, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenedSession {
    /// The session token (HS256, `sid` = the session id), to send as a bearer token.
    pub token: String,
    /// The session.
    pub session: SessionView,
}

/// `GET /v1/sessions` and `GET /v1/orgs/{org_id}/sessions` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionsResponse {
    /// Live sessions, newest first.
    pub sessions: Vec<SessionView>,
    /// Whether more live sessions exist than [`MAX_LISTED_SESSIONS`] (the oldest are left
    /// out).
    pub truncated: bool,
}

/// How long a new session of `user` may live, in seconds: the shortest
/// `session_lifetime_seconds` among the user's orgs, an org that never set a policy
/// counting as [`DEFAULT_SESSION_LIFETIME_SECS`] (its default policy's value), and that
/// default for a user in no org. So every org's policy is honoured, longer than the default
/// too, when all the user's orgs allow it.
pub async fn session_lifetime(state: &ApiState, user: &UserId) -> Result<u32, StoreError> {
    let mut lifetime: Option<u32> = None;
    for m in state.tenants.list_user_memberships(user).await? {
        let org = match state.tenants.get_security_policy(&m.org_id).await? {
            Some(p) => p.policy.session_lifetime_seconds,
            None => DEFAULT_SESSION_LIFETIME_SECS,
        };
        lifetime = Some(lifetime.map_or(org, |l| l.min(org)));
    }
    Ok(lifetime.unwrap_or(DEFAULT_SESSION_LIFETIME_SECS))
}

/// Opens a session for `user`, who authenticated with a token that said `context` (a
/// session token is refused), from a client whose `User-Agent` was `user_agent`: stores it
/// and signs its token. The session lives [`session_lifetime`] seconds.
pub async fn open_session(
    state: &ApiState,
    user: &UserId,
    context: &UserContext,
    user_agent: Option<&str>,
) -> Result<OpenedSession, SessionError> {
    if context.session.is_some() {
        return Err(SessionError::FromSessionToken);
    }
    let jwt = state.jwt.as_ref().ok_or(SessionError::NoSigner)?;
    let now = state.clock.now();
    if state.tenants.list_sessions(user, now).await?.len() >= MAX_SESSIONS_PER_USER {
        return Err(SessionError::TooMany);
    }
    let lifetime = session_lifetime(state, user).await?;
    let session = Session {
        id: SessionId::from_random(crate::mgmt::random()),
        user_id: user.clone(),
        created_at: now,
        expires_at: now + TimeDelta::seconds(i64::from(lifetime)),
        ip: context.ip.map(|ip: IpAddr| ip.to_string()),
        user_agent: user_agent.map(clip_user_agent),
        revoked_at: None,
    };
    let facts = TokenFacts {
        amr: context.amr.clone(),
        session: Some((session.id.clone(), now)),
    };
    let token = jwt
        .mint_with(user, now, TimeDelta::seconds(i64::from(lifetime)), &facts)
        .map_err(|_| SessionError::NoSigner)?;
    state.tenants.create_session(&session).await?;
    tracing::info!(user = %user, session = %session.id, lifetime, "session opened");
    let own = UserContext {
        session: facts.session,
        ..context.clone()
    };
    Ok(OpenedSession {
        token,
        session: SessionView::of(session, Some(&own)),
    })
}

/// Revokes `user`'s session `sid` at the state's clock and caches the revocation, so this
/// process refuses the session's token at once (others within
/// [`SESSION_CACHE_TTL_SECS`]). `None` if the user has no such session.
pub async fn revoke(
    state: &ApiState,
    user: &UserId,
    sid: &SessionId,
) -> Result<Option<Session>, StoreError> {
    let now = state.clock.now();
    let revoked = state
        .tenants
        .revoke_session(&RevokeSession {
            user,
            id: sid,
            at: now,
        })
        .await?;
    if revoked.is_some() {
        remember(state, (user.clone(), sid.clone()), revoked.clone(), now);
        tracing::info!(user = %user, session = %sid, "session revoked");
    }
    Ok(revoked)
}

fn user_of(caller: &Caller) -> Result<(&UserId, &UserContext), SessionError> {
    match caller {
        Caller::User(user, context) => Ok((user, context)),
        Caller::ApiKey(_) => Err(SessionError::ApiKey),
    }
}

/// `POST /v1/sessions`: opens a session for the caller (a user token; a session token is
/// `403 session_token`, an API key `403`) and answers it with its token, `201`.
pub(crate) async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
) -> Result<(StatusCode, Json<OpenedSession>), MgmtError> {
    let (user, context) = user_of(&caller)?;
    let opened = open_session(&state, user, context, meta.user_agent.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(opened)))
}

/// Newest first, at most [`MAX_LISTED_SESSIONS`].
fn listing(mut sessions: Vec<Session>, context: Option<&UserContext>) -> SessionsResponse {
    sessions.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    let truncated = sessions.len() > MAX_LISTED_SESSIONS;
    sessions.truncate(MAX_LISTED_SESSIONS);
    SessionsResponse {
        sessions: sessions
            .into_iter()
            .map(|s| SessionView::of(s, context))
            .collect(),
        truncated,
    }
}

/// `GET /v1/sessions`: the caller's live sessions, newest first.
pub(crate) async fn list_mine(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<SessionsResponse>, MgmtError> {
    let (user, context) = user_of(&caller)?;
    let sessions = state.tenants.list_sessions(user, state.clock.now()).await?;
    Ok(Json(listing(sessions, Some(context))))
}

/// `DELETE /v1/sessions/{session_id}`: revokes one of the caller's own sessions (its token
/// stops at once here, within [`SESSION_CACHE_TTL_SECS`] elsewhere) and answers it;
/// revoking again keeps the first time. `404` for a session that is not the caller's.
pub(crate) async fn revoke_mine(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(sid): PathParams<String>,
) -> Result<Json<SessionView>, MgmtError> {
    let (user, context) = user_of(&caller)?;
    let sid = SessionId::parse(&sid).map_err(|_| SessionError::NotFound)?;
    let revoked = revoke(&state, user, &sid)
        .await?
        .ok_or(SessionError::NotFound)?;
    Ok(Json(SessionView::of(revoked, Some(context))))
}

/// `GET /v1/orgs/{org_id}/sessions` (`sessions.read`): the live sessions of the org's
/// members, newest first.
pub(crate) async fn list_org(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams(org): PathParams<String>,
) -> Result<Json<SessionsResponse>, MgmtError> {
    let auth = caller.authorize(&state, &org, Action::SessionsRead).await?;
    let now = state.clock.now();
    let mut sessions = Vec::new();
    for m in state.tenants.list_members(&auth.org).await? {
        sessions.extend(state.tenants.list_sessions(&m.user_id, now).await?);
    }
    let context = match &caller {
        Caller::User(_, c) => Some(c),
        Caller::ApiKey(_) => None,
    };
    Ok(Json(listing(sessions, context)))
}

/// The member of `org` whose session `sid` is, with the session: one lookup per member
/// (a session id names no org, and a session is its user's).
async fn find_member_session(
    state: &ApiState,
    org: &OrgId,
    sid: &SessionId,
) -> Result<Option<Session>, StoreError> {
    for m in state.tenants.list_members(org).await? {
        if let Some(s) = state.tenants.get_session(&m.user_id, sid).await? {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// `DELETE /v1/orgs/{org_id}/sessions/{session_id}` (`session.revoke`): revokes a session
/// of one of the org's members and answers it; audited with the session before and after.
/// `404` for a session of anyone outside the org (or none).
pub(crate) async fn revoke_org(
    actor: Actor,
    PathParams((org, sid)): PathParams<(String, String)>,
) -> Result<Json<SessionView>, MgmtError> {
    let context = actor.user_context().cloned();
    let resource = format!("session:{sid}");
    let view = actor
        .mutation(&org, Action::SessionRevoke, resource)
        .run(async |state, auth| {
            let sid = SessionId::parse(&sid).map_err(|_| SessionError::NotFound)?;
            let before = find_member_session(state, &auth.org, &sid)
                .await?
                .ok_or(SessionError::NotFound)?;
            let after = revoke(state, &before.user_id, &sid)
                .await?
                .ok_or(SessionError::NotFound)?;
            Ok(Change::updated(
                &SessionView::of(before, context.as_ref()),
                SessionView::of(after, context.as_ref()),
            ))
        })
        .await?;
    Ok(Json(view))
}
