//! The tenant rules every backend enforces, written once.
//!
//! Adapters read what a rule needs inside their transaction (or conditional write), call the
//! function here, and write only what it allows; so a rule cannot drift between SQLite,
//! DynamoDB and the in-memory store. The errors are the ports' [`StoreError`]s, worded as
//! the management API shows them (`409` for a [`StoreError::Conflict`]).

use chrono::{DateTime, Utc};

use super::{ApiKey, Invitation, Membership, Role};
use crate::ids::{ApiKeyId, OrgId, UserId};
use crate::ports::StoreError;

/// The refusal of making anyone owner other than by a transfer.
pub fn owner_by_transfer_only() -> StoreError {
    StoreError::Conflict {
        what: "an owner of the org (ownership moves only by transfer)".into(),
    }
}

/// How adding anything to a missing or deleted org (a member, project, key, invitation or
/// security policy) is refused: `NotFound`, naming the org.
pub fn org_not_live(org: &OrgId) -> StoreError {
    StoreError::NotFound {
        what: format!("org {org}"),
    }
}

/// `Ok` when the org is `live` (it exists and is not deleted), else [`org_not_live`]: for
/// adapters that read liveness themselves before they add to the org.
pub fn require_live_org(org: &OrgId, live: bool) -> Result<(), StoreError> {
    if live { Ok(()) } else { Err(org_not_live(org)) }
}

/// A new membership (added directly or by an invitation) may have any role but owner.
pub fn check_new_member(role: Role) -> Result<(), StoreError> {
    if role == Role::Owner {
        return Err(owner_by_transfer_only());
    }
    Ok(())
}

/// A member's role may change to anything but owner, and the owner's role not at all;
/// `current` is the member's role now.
pub fn check_role_change(current: Role, new: Role) -> Result<(), StoreError> {
    check_new_member(new)?;
    check_member_change(current)
}

/// The owner's membership cannot be changed or removed except by a transfer; `current` is
/// the member's role now.
pub fn check_member_change(current: Role) -> Result<(), StoreError> {
    if current == Role::Owner {
        return Err(StoreError::Conflict {
            what: "the owner's membership cannot change except by transfer; an owner".into(),
        });
    }
    Ok(())
}

/// Checks an ownership transfer of `org` from `from` to `to`, given the org's recorded
/// owner and both users' roles in it now (`None`: not a member). `Conflict` if `from` is
/// not the owner (any more), `NotFound` if `to` is not a member. Returns whether anything
/// changes (a transfer to oneself is a no-op that succeeds).
pub fn check_transfer(
    org: &OrgId,
    owner_id: &UserId,
    from: &UserId,
    from_role: Option<Role>,
    to: &UserId,
    to_role: Option<Role>,
) -> Result<bool, StoreError> {
    if owner_id != from || from_role != Some(Role::Owner) {
        return Err(StoreError::Conflict {
            what: format!("a different owner of org {org}"),
        });
    }
    if to_role.is_none() {
        return Err(StoreError::NotFound {
            what: format!("member {to} of org {org}"),
        });
    }
    Ok(from != to)
}

/// Checks a new key's expiry: none, or later than `now`. A key created already expired
/// would look issued and never work; the error is the sentence to show (field
/// `expires_at`).
pub fn check_new_key_expiry(
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    match expires_at {
        Some(at) if at <= now => Err(format!(
            "expires_at ({}) must be in the future (it is now {})",
            at.to_rfc3339(),
            now.to_rfc3339()
        )),
        _ => Ok(()),
    }
}

/// When a rotated key `current` (id `old`) stops working: at `requested`, or at its own
/// earlier expiry. A revoked key cannot be rotated (`Conflict`): its replacement would
/// outlive a revocation someone meant.
pub fn rotated_expiry(
    old: &ApiKeyId,
    current: &ApiKey,
    requested: DateTime<Utc>,
) -> Result<DateTime<Utc>, StoreError> {
    if current.revoked_at.is_some() {
        return Err(StoreError::Conflict {
            what: format!("revocation of api key {old}"),
        });
    }
    Ok(current.expires_at.map_or(requested, |e| e.min(requested)))
}

/// A key's revocation time after revoking it at `at`: a key revoked before keeps its first
/// revocation time, so the audit trail and the key agree on when it stopped working.
pub fn revocation_time(current: Option<DateTime<Utc>>, at: DateTime<Utc>) -> DateTime<Utc> {
    current.unwrap_or(at)
}

/// A key's last-used time after a use at `at`: never moves back, since uses are flushed
/// from several processes in no particular order.
pub fn last_used_after(current: Option<DateTime<Utc>>, at: DateTime<Utc>) -> DateTime<Utc> {
    current.map_or(at, |c| c.max(at))
}

/// The membership `user` gets by accepting, at `at`, the invitation its token's hash finds
/// (`found`), with that invitation: `NotFound` when there is none or it expired, `Conflict`
/// when it was accepted already.
pub fn accepted_membership(
    found: Option<Invitation>,
    user: &UserId,
    at: DateTime<Utc>,
) -> Result<(Invitation, Membership), StoreError> {
    let Some(inv) = found.filter(|inv| inv.expires_at > at) else {
        return Err(StoreError::NotFound {
            what: "invitation".into(),
        });
    };
    if inv.accepted_at.is_some() {
        return Err(StoreError::Conflict {
            what: format!("acceptance of invitation {}", inv.id),
        });
    }
    let m = Membership {
        org_id: inv.org_id.clone(),
        user_id: user.clone(),
        role: inv.role,
        created_at: at,
    };
    Ok((inv, m))
}

#[cfg(test)]
mod tests {

    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;

    use super::*;
    use crate::tenant::{KeyHash, KeyScope};

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, h, 0, 0).unwrap()
    }

    fn key(expires: Option<DateTime<Utc>>, revoked: Option<DateTime<Utc>>) -> ApiKey {
        let id = ApiKeyId::parse("key_a").unwrap();
        let org = OrgId::parse("org_a").unwrap();
        ApiKey {
            name: "k".into(),
            scopes: vec![KeyScope::EventsWrite],
            expires_at: expires,
            revoked_at: revoked,
            ..ApiKey::new(id, org, "tk_test_x", t(0))
        }
    }

    /// Adding to a missing or deleted org is `NotFound` naming the org, the same wording
    /// every adapter answers; a live org passes.
    #[test]
    fn only_a_live_org_is_added_to() {
        let org = OrgId::parse("org_a").unwrap();
        assert!(require_live_org(&org, true).is_ok());
        let err = require_live_org(&org, false).unwrap_err();
        assert!(
            matches!(&err, StoreError::NotFound { what } if what == "org org_a"),
            "{err:?}"
        );
    }

    #[test]
    fn an_invitation_is_accepted_once_and_before_it_expires() {
        let inv = Invitation {
            id: crate::ids::InvitationId::parse("inv_a").unwrap(),
            org_id: OrgId::parse("org_a").unwrap(),
            email: "a@example.com".into(),
            role: Role::Member,
            hash: KeyHash::of_secret("tk_invite_x"),
            invited_by: UserId::parse("usr_a").unwrap(),
            created_at: t(0),
            expires_at: t(2),
            accepted_at: None,
        };
        let user = UserId::parse("usr_b").unwrap();
        let (found, m) = accepted_membership(Some(inv.clone()), &user, t(1)).unwrap();
        assert_eq!(found, inv);
        assert_eq!(
            (m.org_id, m.user_id, m.role),
            (inv.org_id.clone(), user.clone(), Role::Member)
        );
        assert_eq!(m.created_at, t(1));
        let expired = accepted_membership(Some(inv.clone()), &user, t(2));
        assert!(matches!(expired, Err(StoreError::NotFound { .. })));
        let missing = accepted_membership(None, &user, t(1));
        assert!(matches!(missing, Err(StoreError::NotFound { .. })));
        let twice = Invitation {
            accepted_at: Some(t(1)),
            ..inv
        };
        let again = accepted_membership(Some(twice), &user, t(1));
        assert!(matches!(again, Err(StoreError::Conflict { .. })));
    }

    #[test]
    fn nobody_becomes_owner_except_by_transfer() {
        assert!(check_new_member(Role::Admin).is_ok());
        assert!(matches!(
            check_new_member(Role::Owner),
            Err(StoreError::Conflict { .. })
        ));
        assert!(check_role_change(Role::Member, Role::Admin).is_ok());
        assert!(check_role_change(Role::Member, Role::Owner).is_err());
        assert!(check_role_change(Role::Owner, Role::Admin).is_err());
        assert!(check_member_change(Role::Owner).is_err());
        assert!(check_member_change(Role::Viewer).is_ok());
    }

    #[test]
    fn transfers_need_the_owner_and_a_member() {
        let org = OrgId::parse("org_a").unwrap();
        let (a, b) = (
            UserId::parse("usr_a").unwrap(),
            UserId::parse("usr_b").unwrap(),
        );
        let ok = check_transfer(&org, &a, &a, Some(Role::Owner), &b, Some(Role::Member));
        assert!(ok.unwrap());
        let to_self = check_transfer(&org, &a, &a, Some(Role::Owner), &a, Some(Role::Owner));
        assert!(!to_self.unwrap());
        let not_owner = check_transfer(&org, &a, &b, Some(Role::Admin), &a, Some(Role::Owner));
        assert!(matches!(not_owner, Err(StoreError::Conflict { .. })));
        let stale = check_transfer(&org, &b, &a, Some(Role::Owner), &b, Some(Role::Member));
        assert!(matches!(stale, Err(StoreError::Conflict { .. })));
        let stranger = check_transfer(&org, &a, &a, Some(Role::Owner), &b, None);
        assert!(matches!(stranger, Err(StoreError::NotFound { .. })));
    }

    #[test]
    fn rotation_keeps_the_earlier_expiry_and_refuses_revoked_keys() {
        let id = ApiKeyId::parse("key_a").unwrap();
        assert_eq!(rotated_expiry(&id, &key(None, None), t(5)).unwrap(), t(5));
        assert_eq!(
            rotated_expiry(&id, &key(Some(t(3)), None), t(5)).unwrap(),
            t(3)
        );
        assert_eq!(
            rotated_expiry(&id, &key(Some(t(9)), None), t(5)).unwrap(),
            t(5)
        );
        assert!(matches!(
            rotated_expiry(&id, &key(None, Some(t(1))), t(5)),
            Err(StoreError::Conflict { .. })
        ));
    }

    #[test]
    fn revocation_and_last_use_keep_their_first_and_latest_times() {
        assert_eq!(revocation_time(None, t(4)), t(4));
        assert_eq!(revocation_time(Some(t(2)), t(4)), t(2));
        assert_eq!(last_used_after(None, t(4)), t(4));
        assert_eq!(last_used_after(Some(t(6)), t(4)), t(6));
        assert_eq!(last_used_after(Some(t(2)), t(4)), t(4));
    }
    #[test]
    fn a_new_key_expires_in_the_future_or_never() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert!(check_new_key_expiry(None, now).is_ok());
        assert!(check_new_key_expiry(Some(now + chrono::Duration::seconds(1)), now).is_ok());
        assert!(check_new_key_expiry(Some(now), now).is_err());
        assert!(check_new_key_expiry(Some(now - chrono::Duration::days(1)), now).is_err());
    }
}
