//! The [`SecurityStore`] conformance suite: org security policies and sign-in sessions, on
//! every backend through the storage suite's [`StoreFactory`]. Run it with
//! [`security_conformance!`](crate::security_conformance) next to `storage_conformance!`.
//!
//! A policy is replaced whole and the one replaced comes back (the audit trail's "before");
//! an org that does not exist, or was deleted, cannot get one. A session is found by user
//! and id, listed while active, and revoked once (the first time stays); another user's
//! id finds nothing.

use chrono::{DateTime, Duration, Utc};
use tally_core::ids::{OrgId, SessionId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::{OrgStore, RevokeSession, SecurityStore, StoreError, UserStore};
use tally_core::security::{Cidr, OrgSecurityPolicy, SecurityPolicy, Session};
use tally_core::tenant::{Org, User};

use super::fixtures::{created, fresh_org, random_hex};
use super::storage::StoreFactory;

/// Every test of this suite, as `#[tokio::test]`s building the factory with `$factory`.
#[macro_export]
macro_rules! security_conformance {
    ($factory:expr) => {
        $crate::conformance_tests!(security, $factory);
    };
}

async fn new_user<S: UserStore>(s: &S) -> User {
    s.ensure_user(&User {
        id: UserId::from_random(rand::random()),
        email: format!("grace.{}@example.com", random_hex()),
        created_at: created(),
    })
    .await
    .unwrap()
}

async fn new_org<S: UserStore + OrgStore>(s: &S) -> Org {
    let owner = new_user(s).await;
    let org = Org {
        id: fresh_org(),
        name: "Acme Inc.".into(),
        slug: format!("acme-{}", random_hex()),
        plan: PlanId::Starter,
        owner_id: owner.id,
        created_at: created(),
        deleted_at: None,
    };
    s.create_org(&org).await.unwrap();
    org
}

fn policy(org: &OrgId, list: &[&str], mfa: bool, at: DateTime<Utc>) -> OrgSecurityPolicy {
    OrgSecurityPolicy {
        org_id: org.clone(),
        policy: SecurityPolicy {
            require_mfa: mfa,
            ip_allowlist: list.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
            session_lifetime_seconds: 3600,
        },
        updated_at: at,
    }
}

/// Two fresh users: one whose sessions a test makes, one who must not see or revoke them.
async fn two_users<S: UserStore>(s: &S) -> (User, User) {
    (new_user(s).await, new_user(s).await)
}

fn session(user: &UserId, created_at: DateTime<Utc>, ttl_secs: i64) -> Session {
    Session {
        id: SessionId::from_random(rand::random()),
        user_id: user.clone(),
        created_at,
        expires_at: created_at + Duration::seconds(ttl_secs),
        ip: Some("2001:db8::7".into()),
        user_agent: Some("Mozilla/5.0 (X11; Linux) «test»".into()),
        revoked_at: None,
    }
}

/// A policy is stored per org, replaced whole, and the replaced one returned; another org
/// is untouched.
pub async fn policies_are_replaced_whole_and_the_old_one_returned<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let a = new_org(&s).await;
    let b = new_org(&s).await;
    assert_eq!(s.get_security_policy(&a.id).await.unwrap(), None);
    let first = policy(&a.id, &["203.0.113.0/24", "2001:db8::/32"], true, created());
    assert_eq!(s.put_security_policy(&first).await.unwrap(), None);
    // Another handle (process) reads what this one wrote.
    let other = f.open().await;
    assert_eq!(
        other.get_security_policy(&a.id).await.unwrap(),
        Some(first.clone())
    );
    let second = policy(&a.id, &[], false, created() + Duration::minutes(5));
    assert_eq!(
        other.put_security_policy(&second).await.unwrap(),
        Some(first),
        "the replaced policy comes back for the audit trail"
    );
    assert_eq!(s.get_security_policy(&a.id).await.unwrap(), Some(second));
    assert_eq!(s.get_security_policy(&b.id).await.unwrap(), None);
    // The org itself reads as before.
    assert_eq!(s.get_org(&a.id).await.unwrap(), Some(a));
}

/// An org that does not exist, or was deleted, gets no policy.
pub async fn policies_need_a_live_org<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let missing = fresh_org();
    let refused = s
        .put_security_policy(&policy(&missing, &[], true, created()))
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotFound { .. })),
        "{refused:?}"
    );
    assert_eq!(s.get_security_policy(&missing).await.unwrap(), None);
    let org = new_org(&s).await;
    s.delete_org(&org.id, created()).await.unwrap();
    let refused = s
        .put_security_policy(&policy(&org.id, &[], true, created()))
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotFound { .. })),
        "{refused:?}"
    );
}

/// A session is found by its user and id exactly as stored; another user's id finds
/// nothing; an id is not stored twice.
pub async fn sessions_are_found_by_user_and_id<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let (ada, bob) = two_users(&s).await;
    let mine = session(&ada.id, created(), 3600);
    s.create_session(&mine).await.unwrap();
    let other = f.open().await;
    assert_eq!(
        other.get_session(&ada.id, &mine.id).await.unwrap(),
        Some(mine.clone())
    );
    assert_eq!(other.get_session(&bob.id, &mine.id).await.unwrap(), None);
    let again = s.create_session(&mine).await;
    assert!(
        matches!(again, Err(StoreError::Conflict { .. })),
        "{again:?}"
    );
    let bare = Session {
        ip: None,
        user_agent: None,
        ..session(&ada.id, created(), 60)
    };
    s.create_session(&bare).await.unwrap();
    assert_eq!(s.get_session(&ada.id, &bare.id).await.unwrap(), Some(bare));
}

/// A user's active sessions are listed oldest first; expired and revoked ones, and other
/// users', are not.
pub async fn sessions_are_listed_while_active<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let (ada, bob) = two_users(&s).await;
    let t0 = created();
    let later = session(&ada.id, t0 + Duration::seconds(10), 3600);
    let earlier = session(&ada.id, t0, 3600);
    let short = session(&ada.id, t0, 60);
    let revoked = session(&ada.id, t0, 3600);
    for x in [&later, &earlier, &short, &revoked] {
        s.create_session(x).await.unwrap();
    }
    s.create_session(&session(&bob.id, t0, 3600)).await.unwrap();
    s.revoke_session(&revoking(&ada.id, &revoked.id, t0 + Duration::seconds(30)))
        .await
        .unwrap();
    let now = t0 + Duration::seconds(120);
    let ids: Vec<SessionId> = s
        .list_sessions(&ada.id, now)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(ids, vec![earlier.id.clone(), later.id.clone()]);
    // At their end, none is left.
    assert!(
        s.list_sessions(&ada.id, t0 + Duration::hours(2))
            .await
            .unwrap()
            .is_empty()
    );
}

/// The request to revoke `user`'s session `id` at `at`.
fn revoking<'a>(user: &'a UserId, id: &'a SessionId, at: DateTime<Utc>) -> RevokeSession<'a> {
    RevokeSession { user, id, at }
}

/// Revoking marks the session at the first revocation time and returns it; a second
/// revocation keeps that time; another user cannot revoke it; an unknown id is `None`.
pub async fn sessions_are_revoked_once<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let (ada, bob) = two_users(&s).await;
    let x = session(&ada.id, created(), 3600);
    s.create_session(&x).await.unwrap();
    let first = created() + Duration::milliseconds(1500);
    assert_eq!(
        s.revoke_session(&revoking(&bob.id, &x.id, first))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.get_session(&ada.id, &x.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None,
        "another user's revocation changed nothing"
    );
    let revoked = s
        .revoke_session(&revoking(&ada.id, &x.id, first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(first));
    assert!(!revoked.is_active(first));
    let again = s
        .revoke_session(&revoking(&ada.id, &x.id, first + Duration::hours(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.revoked_at, Some(first), "the first revocation stays");
    let other = f.open().await;
    assert_eq!(
        other.get_session(&ada.id, &x.id).await.unwrap(),
        Some(revoked)
    );
    assert_eq!(
        s.revoke_session(&revoking(
            &ada.id,
            &SessionId::from_random(rand::random()),
            first
        ))
        .await
        .unwrap(),
        None
    );
}
