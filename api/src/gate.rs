//! The checks a signed-in user passes on every org-scoped request, once the caller
//! extractor ([`crate::auth`]) knows who they are: the org's security policy
//! ([`enforce_policy`], [`check_user`]) and, for a session token, its session
//! ([`check_session`], with the lookups cached in [`remember`]).
//!
//! They live apart from the routes that set policies and manage sessions
//! ([`crate::security`], [`crate::sessions`], which take a [`Caller`](crate::auth::Caller)
//! and so sit above `auth`) because `auth` calls them: this module imports neither, so the
//! modules import one another in one direction only.

use chrono::{DateTime, TimeDelta, Utc};
use tally_core::ids::{OrgId, SessionId, UserId};
use tally_core::security::{MFA_METHODS, SecurityPolicy, Session};

use crate::ApiState;
use crate::http::ApiError;

/// Code of the refusal of a token without a second factor by an org that requires one.
pub const MFA_REQUIRED: &str = "mfa_required";

/// How long a session lookup is trusted: a session revoked elsewhere stops working within
/// this many seconds.
pub const SESSION_CACHE_TTL_SECS: i64 = 2;

/// What an org's security policy looks at besides the user: how they signed in, where the
/// request comes from, and the session, for a session token.
#[derive(Debug, Clone, Default)]
pub struct UserContext {
    /// The token's `amr` (empty when it has none).
    pub amr: Vec<String>,
    /// The client's address ([`crate::http::client_ip_of`]).
    pub ip: Option<std::net::IpAddr>,
    /// The session of a session token, and when the token was issued.
    pub session: Option<(SessionId, DateTime<Utc>)>,
}

/// The refusals of `policy` for a user in `context` at `now`: `403 ip_not_allowed` outside
/// the allowlist, `403 mfa_required` without a second factor, `401` for a session token
/// older than the session lifetime.
pub fn check_user(
    policy: &SecurityPolicy,
    context: &UserContext,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    tally_http::auth::check_ip(policy, context.ip)?;
    if !policy.permits_amr(&context.amr) {
        return Err(ApiError::ForbiddenBecause {
            code: MFA_REQUIRED,
            message: format!(
                "this organization requires multi-factor sign-in; sign in again with a second factor (the token's amr must contain one of {})",
                MFA_METHODS.join(", ")
            ),
        });
    }
    if let Some((_, issued)) = &context.session
        && (now - *issued).num_seconds() >= i64::from(policy.session_lifetime_seconds)
    {
        return Err(ApiError::Unauthorized(format!(
            "this session is older than this organization's session lifetime of {} seconds; sign in again",
            policy.session_lifetime_seconds
        )));
    }
    Ok(())
}

/// Checks the org's stored policy (the default one admits everyone) against the user's
/// request ([`check_user`]).
pub async fn enforce_policy(
    state: &ApiState,
    org: &OrgId,
    context: &UserContext,
) -> Result<(), ApiError> {
    let Some(stored) = state.tenants.get_security_policy(org).await? else {
        return Ok(());
    };
    check_user(&stored.policy, context, state.clock.now())
}

/// `401` unless the user's session `sid` is active at `now`.
pub async fn check_session(
    state: &ApiState,
    user: &UserId,
    sid: &SessionId,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let key = (user.clone(), sid.clone());
    let session = match state.sessions.get(&key, now) {
        Some(found) => found,
        None => {
            let found = state.tenants.get_session(user, sid).await?;
            remember(state, key, found.clone(), now);
            found
        }
    };
    match session {
        Some(s) if s.is_active(now) => Ok(()),
        Some(s) if s.revoked_at.is_some_and(|r| r <= now) => Err(ApiError::Unauthorized(
            "this session has been revoked; sign in again".into(),
        )),
        Some(_) => Err(ApiError::Unauthorized(
            "this session has ended; sign in again".into(),
        )),
        None => Err(ApiError::Unauthorized(
            "this session does not exist; sign in again".into(),
        )),
    }
}

/// Caches what the store says of a session (after a lookup, or after this process revoked
/// it, so the revocation bites here at once). A cached revocation is never replaced by a
/// lookup that saw the session live: that lookup may have read the store just before this
/// process revoked it, and would otherwise undo the revocation here for a whole TTL.
pub fn remember(
    state: &ApiState,
    key: (UserId, SessionId),
    session: Option<Session>,
    now: DateTime<Utc>,
) {
    let expires_at = tally_http::cache::add(now, TimeDelta::seconds(SESSION_CACHE_TTL_SECS));
    state.sessions.update(key, now, |current| {
        let revoked = |s: &Option<Session>| s.as_ref().is_some_and(|s| s.revoked_at.is_some());
        match current {
            Some((cached, until)) if revoked(&cached) && !revoked(&session) => {
                ((), Some((cached, until)))
            }
            _ => ((), Some((session, expires_at))),
        }
    });
}
