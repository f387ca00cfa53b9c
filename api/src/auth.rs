//! Who is calling, and for which org they may act.
//!
//! [`Caller`] is the one extractor the API's routes use. A bearer credential that looks
//! like a JWT (three dot-separated parts; API keys start with `tk_`) is verified with the
//! server's [`JwtConfig`](crate::jwt::JwtConfig) and becomes [`Caller::User`]; anything
//! else is an API key, authenticated by `tally_ingest::auth` so keys behave the same on
//! every route. A user acts in an org through their role there ([`Caller::authorize`],
//! checked against [`crate::roles`]); a key acts for its own org within its scopes, and
//! only on `GET /v1/usage` (the management routes need a user).
//!
//! A JWT whose (unverified) `iss` is the configured OpenID Connect issuer goes to that
//! issuer's verifier instead ([`oidc_user`]), and its verified email names the Tally user;
//! the issuer's verifier accepts only its own asymmetric algorithms, so such a token can
//! never be checked against the local HS256 secret, nor a local token against the issuer's
//! keys.
//!
//! An org's security policy ([`crate::security`]) is checked once the caller is known to be
//! a member: its IP allowlist against the client's address, its MFA requirement against the
//! token's `amr`, and a session token's age against its session lifetime. A session token
//! (`sid`) is checked against the store on every request ([`crate::sessions`]).
//!
//! Another org is never revealed: an org the caller is not a member of (or that does not
//! exist, or whose id is malformed) is `404`; a role without the permission is `403`.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use tally_core::ids::{OrgId, ProjectId, UserId};
use tally_core::ports::OrgMember;
use tally_core::tenant::{ApiKey, KeyMode, KeyScope, Role};

use crate::ApiState;
pub use crate::gate::UserContext;
use crate::http::{ApiError, KeyAuth, bearer_token, require_scope};
use crate::jwt::looks_like_jwt;
use crate::roles::{Action, allows};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// An active API key. It acts for its own org only, within its scopes.
    ApiKey(ApiKey),
    /// A user, from a verified JWT. Acts in the orgs they are a member of, by role, as
    /// each org's security policy allows given the [`UserContext`].
    User(UserId, UserContext),
}

/// What [`Caller::authorize`] found: the org, and the caller's role in it.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// The org of the path.
    pub org: OrgId,
    /// The user.
    pub user: UserId,
    /// Their role in the org.
    pub role: Role,
}

impl Authorized {
    /// The user as a member of the org, as the member store names them.
    #[must_use]
    pub fn member(&self) -> OrgMember<'_> {
        OrgMember::new(&self.org, &self.user)
    }
}

/// The most projects a `per_project=true` answer splits into (each is one more store read;
/// past it the answer is `400 too_many_projects`, and a project at a time is the way).
pub const MAX_PER_PROJECT: usize = 100;

/// Who reads usage: the org, and the user with their role when a user token reads it (an
/// API key reads all of its org's usage).
#[derive(Debug, Clone)]
pub struct UsageReader {
    /// The org whose usage is read.
    pub org: OrgId,
    /// The user and role, for a user token.
    pub user: Option<Authorized>,
    /// For an API key, its mode: a key reads the usage of its own mode only, as Stripe's
    /// test keys see no live data.
    pub key_mode: Option<KeyMode>,
}

impl UsageReader {
    /// The org's projects whose usage the reader may see ([`Self::may_read_project`]), in
    /// id order; `400 too_many_projects` past
    /// [`MAX_PER_PROJECT`].
    pub async fn readable_projects(&self, state: &ApiState) -> Result<Vec<ProjectId>, ApiError> {
        let mut ids: Vec<ProjectId> = state
            .tenants
            .list_projects(&self.org)
            .await?
            .into_iter()
            .map(|p| p.id)
            .collect();
        if let Some(auth) = &self.user
            && matches!(auth.role, Role::Member | Role::Viewer)
        {
            let own = state.tenants.list_user_projects(&auth.member()).await?;
            ids.retain(|id| own.contains(id));
        }
        if ids.len() > MAX_PER_PROJECT {
            return Err(ApiError::bad_request(
                "too_many_projects",
                "per_project",
                format!(
                    "this org has {} projects you can see; per_project splits at most {} (read a project at a time with project_id)",
                    ids.len(),
                    MAX_PER_PROJECT
                ),
            ));
        }
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(ids)
    }

    /// Whether the reader may see `project`'s usage: API keys, owners and admins see every
    /// project; members and viewers the ones they are on, as the project routes show them.
    pub async fn may_read_project(
        &self,
        state: &ApiState,
        project: &ProjectId,
    ) -> Result<bool, ApiError> {
        let Some(auth) = &self.user else {
            return Ok(true);
        };
        match auth.role {
            Role::Owner | Role::Admin => Ok(true),
            Role::Member | Role::Viewer => Ok(state
                .tenants
                .list_user_projects(&auth.member())
                .await?
                .contains(project)),
        }
    }
}

/// The `404` for an org the caller cannot see.
pub fn org_not_found() -> ApiError {
    ApiError::not_found("org_id", "no such organization")
}

impl Caller {
    /// Who the caller is, for audit records: the user id, or `apikey:<id>`.
    pub fn actor(&self) -> String {
        match self {
            Caller::ApiKey(k) => format!("apikey:{}", k.id),
            Caller::User(u, _) => u.to_string(),
        }
    }

    /// The org this caller reads usage of, given the request's optional `org_id`: a key
    /// needs scope `usage:read` (`403`) and implies its org (another org is `404`); a user
    /// must name the org (`400`) and be a member of it (`404`).
    pub async fn usage_org(
        &self,
        state: &ApiState,
        requested: Option<&str>,
    ) -> Result<UsageReader, ApiError> {
        match self {
            Caller::ApiKey(key) => {
                require_scope(key, KeyScope::UsageRead)?;
                match requested {
                    Some(org) if org != key.org_id.as_str() => Err(ApiError::not_found(
                        "org_id",
                        "no such organization for this API key",
                    )),
                    _ => Ok(UsageReader {
                        org: key.org_id.clone(),
                        user: None,
                        key_mode: Some(key.mode()),
                    }),
                }
            }
            Caller::User(..) => {
                let org = requested.ok_or_else(|| {
                    ApiError::bad_request(
                        "missing_field",
                        "org_id",
                        "org_id is required with a user token",
                    )
                })?;
                let auth = self.authorize(state, org, Action::UsageRead).await?;
                Ok(UsageReader {
                    org: auth.org.clone(),
                    user: Some(auth),
                    key_mode: None,
                })
            }
        }
    }

    /// Checks that the caller may do `action` in the org `org` (a path parameter): `403`
    /// for an API key or a role without the permission, `404` when the caller is not a
    /// member (or the org does not exist).
    pub async fn authorize(
        &self,
        state: &ApiState,
        org: &str,
        action: Action,
    ) -> Result<Authorized, ApiError> {
        let (user, context) = match self {
            Caller::ApiKey(_) => {
                return Err(ApiError::Forbidden(
                    "this route needs a user's bearer token (JWT), not an API key".into(),
                ));
            }
            Caller::User(u, context) => (u, context),
        };
        let org = OrgId::parse(org).map_err(|_| org_not_found())?;
        tracing::Span::current().record("org", org.as_str());
        let role = state
            .tenants
            .get_role(&org, user)
            .await?
            .ok_or_else(org_not_found)?;
        crate::gate::enforce_policy(state, &org, context).await?;
        if !allows(role, action) {
            return Err(ApiError::Forbidden(format!(
                "the {} role may not do {}",
                role.as_str(),
                action.as_str()
            )));
        }
        Ok(Authorized {
            org,
            user: user.clone(),
            role,
        })
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let session = session_cookie_credential(parts)?;
        let credential = match &session {
            Some(token) => token.as_str(),
            None => bearer_token(&parts.headers)?,
        };
        if looks_like_jwt(credential) {
            let (user, context) = user_from_jwt(parts, state, credential).await?;
            return Ok(Caller::User(user, context));
        }
        let key = KeyAuth::from_ref(state).authenticate(credential).await?;
        // A key is its org's: the org's IP allowlist holds for it here as on ingest, or a
        // leaked key would read usage from anywhere. One store read per request, as for
        // users (this router has no key cache).
        if let Some(stored) = state.tenants.get_security_policy(&key.org_id).await? {
            tally_http::auth::check_ip(
                &stored.policy,
                crate::http::client_ip_of(parts, state.trusted_proxies),
            )?;
        }
        Ok(Caller::ApiKey(key))
    }
}

/// The user a JWT speaks for, with the [`UserContext`] their orgs' policies look at: an
/// OIDC issuer's token through [`oidc_user`], any other through the server's
/// [`JwtConfig`](crate::jwt::JwtConfig); a session token's session must be active
/// ([`crate::sessions::check_session`]). Charges the user's rate bucket before any store
/// read but the session check.
pub async fn user_from_jwt(
    parts: &Parts,
    state: &ApiState,
    credential: &str,
) -> Result<(UserId, UserContext), ApiError> {
    let now = state.clock.now();
    let (user, facts) = match &state.oidc {
        Some(oidc)
            if tally_oidc::unverified_issuer(credential).as_deref() == Some(oidc.issuer()) =>
        {
            oidc_user(state, oidc, credential, now).await?
        }
        _ => {
            let jwt = state.jwt.as_ref().ok_or_else(|| {
                ApiError::Unauthorized("user tokens are not configured on this server".into())
            })?;
            jwt.verify_facts(credential, now)?
        }
    };
    // One bucket per user, charged before any store read.
    state
        .users
        .charge(&user, state.user_rate, 1, now)
        .map_err(|t| ApiError::RateLimited {
            message: format!(
                "this user may make {} requests per second (bursts of {}); retry in {} s",
                t.limit.per_second, t.limit.burst, t.retry_after_secs
            ),
            retry_after_secs: t.retry_after_secs,
        })?;
    if let Some((sid, _)) = &facts.session {
        crate::gate::check_session(state, &user, sid, now).await?;
    }
    Ok((
        user,
        UserContext {
            amr: facts.amr,
            ip: crate::http::client_ip_of(parts, state.trusted_proxies),
            session: facts.session,
        },
    ))
}

/// The Tally user an OIDC issuer's token speaks for: the token verified
/// ([`tally_oidc::OidcVerifier::verify`]), then the user whose email is the token's
/// `email`, which the issuer must vouch for (`email_verified`). `401` with a sentence saying
/// which of these failed; `503` when the issuer's keys cannot be fetched.
pub async fn oidc_user(
    state: &ApiState,
    oidc: &tally_oidc::OidcVerifier,
    token: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(UserId, crate::jwt::TokenFacts), ApiError> {
    use tally_oidc::OidcError;
    let identity = oidc.verify(token, now).await.map_err(|e| match e {
        OidcError::Unavailable(detail) => {
            tracing::warn!(%detail, "OIDC keys unavailable");
            ApiError::UnavailableBecause {
                code: "identity_provider_unavailable",
                message: "the identity provider's signing keys cannot be fetched; retry shortly"
                    .into(),
                retry_after_secs: Some(5),
            }
        }
        OidcError::Expired | OidcError::NotYetValid => ApiError::Unauthorized(e.to_string()),
        OidcError::UnknownKey(_) => ApiError::Unauthorized(
            "the bearer token is signed with a key its issuer does not publish".into(),
        ),
        OidcError::Invalid(_) | OidcError::Algorithm(_) => {
            ApiError::Unauthorized("the bearer token is not valid".into())
        }
    })?;
    let Some(email) = identity.email.as_deref() else {
        return Err(ApiError::Unauthorized(
            "the identity token carries no email; send the provider's ID token".into(),
        ));
    };
    if !identity.email_verified {
        return Err(ApiError::Unauthorized(
            "the identity provider has not verified this email (email_verified is not true)".into(),
        ));
    }
    let facts = crate::jwt::TokenFacts {
        amr: crate::jwt::bounded_amr(&identity.amr),
        // An issuer's `sid` is its own session, not Tally's: only Tally's tokens name one.
        session: None,
    };
    match state.tenants.find_user_by_email(email).await? {
        Some(user) => Ok((user.id, facts)),
        None => Err(ApiError::Unauthorized(format!(
            "no Tally user has the email {email}; ask an org admin for an invitation"
        ))),
    }
}

/// The dashboard's session cookie: it holds the user token the sign-in page verified
/// (`tally_dashboard` sets it HTTP-only, `SameSite=Strict`). The `__Host-` prefix makes the
/// browser accept it only `Secure`, with `Path=/` and no `Domain`, so neither a sibling
/// subdomain nor a plain-HTTP page can plant or shadow it.
pub const SESSION_COOKIE: &str = "__Host-tally_session";

/// The dashboard's CSRF cookie (readable by the page's script), whose value every
/// cookie-authenticated mutation repeats in [`CSRF_HEADER`]; `__Host-` as
/// [`SESSION_COOKIE`], so a subdomain cannot plant a value of its choosing.
pub const CSRF_COOKIE: &str = "__Host-tally_csrf";

/// The header a cookie-authenticated mutation must carry, equal to [`CSRF_COOKIE`].
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The user token of the dashboard's session cookie, when the request has no
/// `Authorization` header (a header always wins, so API clients never meet this). A
/// request that is not `GET`/`HEAD` authenticated so must prove it comes from the
/// dashboard's own page: [`CSRF_HEADER`] equal to the [`CSRF_COOKIE`] (a cross-site page
/// can neither read the cookie nor set the header without a CORS preflight Tally never
/// grants) and an `Origin` naming this server's `Host`; otherwise `403 csrf`. A cookie
/// that holds no JWT is `401`: only users sign in to the dashboard.
pub fn session_cookie_credential(parts: &Parts) -> Result<Option<String>, ApiError> {
    use axum::http::{Method, header};
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return Ok(None);
    }
    let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    if !looks_like_jwt(token) {
        return Err(ApiError::Unauthorized(
            "the session cookie holds no user token; sign in again".into(),
        ));
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let csrf = |message: &str| ApiError::ForbiddenBecause {
            code: "csrf",
            message: message.into(),
        };
        let expected = cookie(&parts.headers, CSRF_COOKIE).filter(|c| !c.is_empty());
        let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        match (expected, sent) {
            (Some(e), Some(s)) if constant_time_eq(e.as_bytes(), s.as_bytes()) => {}
            _ => {
                return Err(csrf(
                    "a change made with the session cookie needs the X-CSRF-Token header equal to the __Host-tally_csrf cookie",
                ));
            }
        }
        if !same_origin(&parts.headers) {
            return Err(csrf(
                "a change made with the session cookie must come from this server's own origin",
            ));
        }
    }
    Ok(Some(token.to_owned()))
}

/// The value of cookie `name` in the request's `Cookie` headers, if present.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request's `Origin` names the server it was sent to (its `Host`). The scheme
/// is not compared: behind a TLS-terminating proxy the server cannot see it, and the host
/// alone is what another site cannot forge in a browser.
pub fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    use axum::http::header;
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host)),
        _ => false,
    }
}

/// Whether `a` equals `b`, in time that does not depend on where they first differ (for
/// secrets: CSRF values, the dashboard's sign-in `state` and `nonce`).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
