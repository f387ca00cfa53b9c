//! Sign-in sessions: the check every session token gets.
//!
//! A Tally session token is an HS256 JWT of the server's own secret with a `sid` claim
//! naming a stored [`Session`] of its user (`sub`). [`check_session`] runs on every
//! request that carries one: the session must exist and be active (not revoked, not
//! expired). The answer is cached per (user, session) for [`SESSION_CACHE_TTL_SECS`]
//! seconds, so a revocation written by another process bites within that bound; one
//! written through this process's cache ([`remember`]) bites at once.

use chrono::{DateTime, TimeDelta, Utc};
use tally_core::ids::{SessionId, UserId};
use tally_core::security::Session;

use crate::ApiState;
use crate::http::ApiError;

/// How long a session lookup is trusted: a session revoked elsewhere stops working within
/// this many seconds.
pub const SESSION_CACHE_TTL_SECS: i64 = 2;

/// Most sessions whose lookups are cached at once.
pub const SESSION_CACHE_CAPACITY: usize = 10_000;

/// The cache of session lookups, by (user, session id); `None` remembers "no such session".
pub type SessionCache = tally_http::cache::TtlCache<(UserId, SessionId), Option<Session>>;

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
/// it, so the revocation bites here at once).
pub fn remember(
    state: &ApiState,
    key: (UserId, SessionId),
    session: Option<Session>,
    now: DateTime<Utc>,
) {
    state.sessions.insert_for(
        key,
        session,
        TimeDelta::seconds(SESSION_CACHE_TTL_SECS),
        now,
    );
}
