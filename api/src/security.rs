//! Org security policies: `GET` and `PUT /v1/orgs/{org_id}/security-policy` (owners and
//! admins), and [`enforce_policy`], which every org-scoped route runs once the caller is
//! known to be a member.
//!
//! A policy ([`SecurityPolicy`]) asks for three things:
//!
//! - `require_mfa`: the user's token must show a second factor in its `amr` claim (one of
//!   [`MFA_METHODS`](tally_core::security::MFA_METHODS): `mfa`, `otp`, `hwk`, `swk`), else
//!   `403 mfa_required`.
//! - `ip_allowlist`: at most [`MAX_ALLOWLIST`](tally_core::security::MAX_ALLOWLIST)
//!   IPv4/IPv6 CIDR blocks; a user's request from an address outside them is `403
//!   ip_not_allowed` on the org's routes, and so is an API key's on ingest (checked there
//!   from the key cache, see `tally_http::keys`). Empty: any address.
//! - `session_lifetime_seconds`: a session token older than this is `401` on the org's
//!   routes (5 minutes to 30 days; 12 hours for an org that set nothing).
//!
//! **Lock-out guard.** A `PUT` whose allowlist would refuse the caller's own address, or
//! that requires MFA from a caller whose token shows none, is refused with `409
//! would_lock_out` (field `ip_allowlist` or `require_mfa`) and changes nothing: an admin
//! cannot shut themselves (and so, often, everyone) out by a typo. Another admin can still
//! be shut out; that is what the policy is for.
//!
//! The policy is read from the store on each org-scoped management request (one lookup by
//! org, beside the role lookup), so a change applies to the next request.

use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_core::ids::OrgId;
use tally_core::security::{Cidr, OrgSecurityPolicy, SecurityPolicy};
use tally_core::tenant::FieldError;

pub use crate::gate::{MFA_REQUIRED, UserContext, check_user, enforce_policy};
use crate::http::ApiError;
use crate::mgmt::{Actor, Change, JsonObject, MgmtError, OrgCaller, PathParams, body, field_error};
use crate::roles::Action;

/// Code of the refusal of a policy that would shut its own author out.
pub const WOULD_LOCK_OUT: &str = "would_lock_out";

/// An org's policy as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    /// The org.
    pub org_id: OrgId,
    /// Users' tokens must show a second factor.
    pub require_mfa: bool,
    /// The client networks allowed (CIDR, canonical); empty: any address.
    pub ip_allowlist: Vec<Cidr>,
    /// How long a session of the org's members may live.
    pub session_lifetime_seconds: u32,
    /// When the policy was last set; `null` while the org has the default policy.
    pub updated_at: Option<DateTime<Utc>>,
}

impl PolicyView {
    fn of(org: &OrgId, stored: Option<OrgSecurityPolicy>) -> Self {
        let (policy, updated_at) = match stored {
            Some(s) => (s.policy, Some(s.updated_at)),
            None => (SecurityPolicy::default(), None),
        };
        PolicyView {
            org_id: org.clone(),
            require_mfa: policy.require_mfa,
            ip_allowlist: policy.ip_allowlist,
            session_lifetime_seconds: policy.session_lifetime_seconds,
            updated_at,
        }
    }
}

/// `PUT /v1/orgs/{org_id}/security-policy` body: the whole policy (every field required).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutPolicy {
    /// Require a second factor in users' tokens.
    pub require_mfa: bool,
    /// At most [`MAX_ALLOWLIST`](tally_core::security::MAX_ALLOWLIST) CIDR blocks (or bare
    /// addresses); empty: any address.
    pub ip_allowlist: Vec<String>,
    /// 300 to 2 592 000 seconds.
    pub session_lifetime_seconds: u32,
}

impl PutPolicy {
    /// The policy, parsed and bounded, or the `400` naming the field.
    fn parse(&self) -> Result<SecurityPolicy, FieldError> {
        // Bounded before any entry is parsed.
        SecurityPolicy::check_allowlist_len(self.ip_allowlist.len())?;
        let policy = SecurityPolicy {
            require_mfa: self.require_mfa,
            ip_allowlist: self
                .ip_allowlist
                .iter()
                .map(|c| Cidr::parse(c))
                .collect::<Result<_, _>>()?,
            session_lifetime_seconds: self.session_lifetime_seconds,
        };
        policy.check()?;
        Ok(policy)
    }
}

/// `409 would_lock_out` when `policy` would refuse the caller who is setting it.
fn guard_lock_out(policy: &SecurityPolicy, context: &UserContext) -> Result<(), ApiError> {
    if !policy.permits_ip(context.ip) {
        let from = context
            .ip
            .map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
        return Err(ApiError::ConflictBecause {
            code: WOULD_LOCK_OUT,
            message: format!(
                "this allowlist would refuse your own address ({from}); add it (or its network) to ip_allowlist first"
            ),
            field: "ip_allowlist",
        });
    }
    if !policy.permits_amr(&context.amr) {
        return Err(ApiError::ConflictBecause {
            code: WOULD_LOCK_OUT,
            message: "your own token shows no second factor, so requiring MFA would refuse you; sign in with MFA first".into(),
            field: "require_mfa",
        });
    }
    Ok(())
}

/// `GET /v1/orgs/{org_id}/security-policy` (`security_policy.read`): the org's policy (the
/// default one, `updated_at: null`, when it set none).
pub(crate) async fn get_policy(at: OrgCaller) -> Result<Json<PolicyView>, MgmtError> {
    let (state, auth) = at.authorize(Action::SecurityPolicyRead).await?;
    let stored = state.tenants.get_security_policy(&auth.org).await?;
    Ok(Json(PolicyView::of(&auth.org, stored)))
}

/// `PUT /v1/orgs/{org_id}/security-policy` (`security_policy.update`): replaces the policy
/// and answers it; audited with the policy before and after. `400` naming the field for a
/// policy out of bounds, `409 would_lock_out` for one that would refuse the caller.
pub(crate) async fn put_policy(
    actor: Actor,
    PathParams(org): PathParams<String>,
    payload: Result<JsonObject<PutPolicy>, MgmtError>,
) -> Result<Json<PolicyView>, MgmtError> {
    let context = actor.user_context().cloned().unwrap_or_default();
    let resource = "security_policy".to_owned();
    let view = actor
        .mutation(&org, Action::SecurityPolicyUpdate, resource)
        .run(async |state, auth| {
            let policy = body(payload)?.parse().map_err(field_error)?;
            guard_lock_out(&policy, &context)?;
            let stored = OrgSecurityPolicy {
                org_id: auth.org.clone(),
                policy,
                updated_at: state.clock.now(),
            };
            let before = state.tenants.put_security_policy(&stored).await?;
            let before = PolicyView::of(&auth.org, before);
            Ok(Change::updated(
                &before,
                PolicyView::of(&auth.org, Some(stored)),
            ))
        })
        .await?;
    Ok(Json(view))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(ip: &str, amr: &[&str]) -> UserContext {
        UserContext {
            amr: amr.iter().map(|s| (*s).to_owned()).collect(),
            ip: Some(ip.parse().unwrap()),
            session: None,
        }
    }

    fn policy(list: &[&str], mfa: bool) -> SecurityPolicy {
        SecurityPolicy {
            require_mfa: mfa,
            ip_allowlist: list.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
            ..SecurityPolicy::default()
        }
    }

    #[test]
    fn the_lock_out_guard_refuses_a_policy_that_shuts_its_author_out() {
        let me = context("203.0.113.5", &["pwd"]);
        assert!(guard_lock_out(&policy(&["203.0.113.0/24"], false), &me).is_ok());
        let e = guard_lock_out(&policy(&["198.51.100.0/24"], false), &me).unwrap_err();
        assert!(matches!(
            e,
            ApiError::ConflictBecause {
                field: "ip_allowlist",
                ..
            }
        ));
        let e = guard_lock_out(&policy(&[], true), &me).unwrap_err();
        assert!(matches!(
            e,
            ApiError::ConflictBecause {
                field: "require_mfa",
                ..
            }
        ));
        assert!(guard_lock_out(&policy(&[], true), &context("203.0.113.5", &["otp"])).is_ok());
    }

    #[test]
    fn bodies_are_bounded_and_name_the_field() {
        let put = |list: Vec<String>, secs| PutPolicy {
            require_mfa: false,
            ip_allowlist: list,
            session_lifetime_seconds: secs,
        };
        let e = put((0..51).map(|i| format!("10.0.{i}.0/24")).collect(), 3600)
            .parse()
            .unwrap_err();
        assert_eq!(e.field, "ip_allowlist");
        assert_eq!(
            put(vec!["nope".into()], 3600).parse().unwrap_err().field,
            "ip_allowlist"
        );
        assert_eq!(
            put(vec![], 60).parse().unwrap_err().field,
            "session_lifetime_seconds"
        );
        assert!(put(vec!["2001:db8::/32".into()], 3600).parse().is_ok());
    }
}
