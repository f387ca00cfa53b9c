//! The storage conformance suite: what every [`TenantStore`] + [`UsageStore`] +
//! [`ReportStore`] backend must do, and the Stripe sync ledger and plan-limit alert outbox
//! ([`SyncLedger`](tally_core::ports::SyncLedger), [`AlertLedger`](tally_core::ports::AlertLedger))
//! that live in the same store.
//!
//! Each `pub async fn` here is one test taking a [`StoreFactory`]; [`storage_conformance!`]
//! (crate::storage_conformance) expands to one `#[tokio::test]` per function for a factory
//! expression. Tests use fresh org ids, slugs, emails and (for period closing) random far-off
//! months, so backends may share tables between tests and runs.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use tally_core::event::Event;
use tally_core::ids::{ApiKeyId, InvitationId, MeterName, OrgId, ProjectId, UserId};
use tally_core::period::{Granularity, Month};
use tally_core::plan::PlanId;
use tally_core::ports::{
    Acceptance, AlertLease, ApiKeyStore, ApplyOutcome, AuditLog, CatalogueStore, CatalogueVersion,
    CounterQuery, InvitationStore, KeyRotation, LedgerPageQuery, MAX_REPORT_BODY_BYTES,
    MemberStore, NewProjectMember, OrgMember, OrgStore, OverrideStore, OwnerTransfer, PlanMove,
    ProjectMember, ProjectStore, ProjectUpdate, ReadingStore, ReportStore, Revocation, RoleChange,
    SeriesRegistry, StepKey, StoreError, StoredReport, TenantStore, UsageStore, UserStore,
    catalogue_digest,
};
use tally_core::tenant::{
    ApiKey, AuditOutcome, AuditQuery, AuditRecord, Invitation, KeyHash, KeyScope, KeyUse,
    Membership, Org, OrgChanges, Project, ProjectChanges, Role, User,
};

use super::fixtures::{
    MIXED_METERS, api_key, created, dec, dice, event, expected_counters, first_ledger_page,
    fresh_org, fresh_project, month, random_hex, stored_counter_map, ts, with_prop,
};

/// Makes handles onto one backing store.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// The backend under test.
    type Store: TenantStore
        + UsageStore
        + ReportStore
        + tally_core::ports::SyncLedger
        + tally_core::ports::AlertLedger
        + tally_core::ports::CatalogueStore
        + 'static;

    /// A new handle onto this factory's data. A second call is like a second process opening
    /// the same database: both see each other's writes.
    async fn open(&self) -> Self::Store;
}

/// A [`StoreFactory`] whose store also keeps time-weighted readings: what the
/// [`readings`](super::readings) suite runs on (one bound its tests share).
pub trait ReadingFactory: StoreFactory<Store: ReadingStore> {}

impl<F: StoreFactory<Store: ReadingStore>> ReadingFactory for F {}

/// A [`StoreFactory`] whose store also keeps price overrides: what the
/// [`overrides`](super::overrides) suite runs on.
pub trait OverrideFactory: StoreFactory<Store: OverrideStore> {}

impl<F: StoreFactory<Store: OverrideStore>> OverrideFactory for F {}

/// A [`StoreFactory`] whose store also registers series: what the registry tests of the
/// [`dimensions`](super::dimensions) suite run on.
pub trait SeriesFactory: StoreFactory<Store: SeriesRegistry> {}

impl<F: StoreFactory<Store: SeriesRegistry>> SeriesFactory for F {}

/// Expands to one `#[tokio::test]` per storage conformance test, each building its factory
/// with the given expression (evaluated inside the async test, so it may `.await`).
///
/// ```text
/// tally_tests::storage_conformance!(SqliteFactory::new());
/// ```
#[macro_export]
macro_rules! storage_conformance {
    ($factory:expr) => {
        $crate::conformance_tests!(storage, $factory);
    };
}

// ---------------------------------------------------------------------------------------
// Helpers.

async fn new_user<S: TenantStore>(s: &S) -> User {
    let candidate = User {
        id: UserId::from_random(rand::random()),
        email: format!("ada.{}@example.com", random_hex()),
        created_at: created(),
    };
    let user = s.ensure_user(&candidate).await.unwrap();
    assert_eq!(user, candidate);
    user
}

fn org_for(owner: &User) -> Org {
    Org {
        id: fresh_org(),
        name: "Acme Inc.".into(),
        slug: format!("acme-{}", random_hex()),
        plan: PlanId::Starter,
        owner_id: owner.id.clone(),
        created_at: created(),
        deleted_at: None,
    }
}

async fn new_org<S: TenantStore>(s: &S) -> Org {
    let owner = new_user(s).await;
    let org = org_for(&owner);
    s.create_org(&org).await.unwrap();
    org
}

/// When `key` was revoked, as `s` reads it (`None`: live).
async fn revoked_at<S: TenantStore>(s: &S, key: &ApiKey) -> Option<DateTime<Utc>> {
    s.find_api_key(&key.hash).await.unwrap().unwrap().revoked_at
}

/// Moves `org` to `plan` at `at`; the org as it is after.
async fn move_plan<S: TenantStore>(s: &S, org: &OrgId, plan: PlanId, at: DateTime<Utc>) -> Org {
    s.change_plan(&PlanMove::new(org, plan, at))
        .await
        .unwrap()
        .unwrap()
}

/// The org's pending alerts since month `m`, as a new handle reads them.
async fn pending_in_a_new_handle<F: StoreFactory>(
    f: &F,
    org: &OrgId,
    m: &str,
) -> Vec<tally_core::ports::StoredAlert> {
    use tally_core::ports::AlertLedger;
    f.open().await.pending_alerts(org, month(m)).await.unwrap()
}

/// A new org and a new user who is its member with `role`.
async fn org_with_member<S: TenantStore>(s: &S, role: Role) -> (Org, User) {
    let org = new_org(s).await;
    let user = new_user(s).await;
    s.add_member(&membership(&org.id, &user.id, role))
        .await
        .unwrap();
    (org, user)
}

/// `user`'s membership of `org` with `role`, made at [`created`].
fn membership(org: &OrgId, user: &UserId, role: Role) -> Membership {
    Membership {
        org_id: org.clone(),
        user_id: user.clone(),
        role,
        created_at: created(),
    }
}

/// Renames `org`'s project `project` to `name` (nothing else changes), as `s` answers it.
async fn rename_project<S: TenantStore>(
    s: &S,
    org: &OrgId,
    project: &ProjectId,
    name: &str,
) -> Option<Project> {
    let changes = ProjectChanges {
        name: Some(name.into()),
        archive_at: None,
    };
    let update = ProjectUpdate::new(org, project, &changes);
    s.update_project(&update).await.unwrap()
}

/// Archives `org`'s project `project` at `at` (nothing else changes), as `s` answers it.
async fn archive_project<S: TenantStore>(
    s: &S,
    org: &OrgId,
    project: &ProjectId,
    at: DateTime<Utc>,
) -> Option<Project> {
    let changes = ProjectChanges {
        name: None,
        archive_at: Some(at),
    };
    let update = ProjectUpdate::new(org, project, &changes);
    s.update_project(&update).await.unwrap()
}

/// What each of `handles` answered, in order (a task that panicked fails the test).
async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut got = Vec::new();
    for h in handles {
        got.push(h.await.unwrap());
    }
    got
}

fn project_in(org: &OrgId, slug: &str) -> Project {
    Project {
        id: fresh_project(),
        org_id: org.clone(),
        name: format!("Project {slug}"),
        slug: slug.into(),
        created_at: created(),
        archived_at: None,
    }
}

fn key_in(org: &OrgId) -> ApiKey {
    let secret = format!("tk_test_{}{}", random_hex(), random_hex());
    ApiKey {
        expires_at: Some(ts("2027-01-01T00:00:00Z")),
        ..api_key(org, &secret, &KeyScope::ALL, created())
    }
}

/// A counter series as (bucket start, value) pairs.
async fn series<S: UsageStore>(
    s: &S,
    org: &OrgId,
    project: Option<&ProjectId>,
    meter: &str,
    granularity: Granularity,
    from: &str,
    to: &str,
) -> Vec<(DateTime<Utc>, Decimal)> {
    s.counter_series(&CounterQuery {
        org: org.clone(),
        project: project.cloned(),
        meter: MeterName::parse(meter).unwrap(),
        granularity,
        from: ts(from),
        to: ts(to),
    })
    .await
    .unwrap()
    .into_iter()
    .map(|v| (v.start, v.value))
    .collect()
}

/// Builds an expected series from (start, value) literals.
fn exp(points: &[(&str, &str)]) -> Vec<(DateTime<Utc>, Decimal)> {
    points.iter().map(|(t, v)| (ts(t), dec(v))).collect()
}

/// The month value of a counter over November 2026.
async fn november<S: UsageStore>(
    s: &S,
    org: &OrgId,
    project: Option<&ProjectId>,
    meter: &str,
) -> Vec<(DateTime<Utc>, Decimal)> {
    series(
        s,
        org,
        project,
        meter,
        Granularity::Month,
        "2026-11-01T00:00:00Z",
        "2026-12-01T00:00:00Z",
    )
    .await
}

/// Asserts `meter`'s November value in each scope of `totals` (`None`: the whole org,
/// else one project) is the value paired with it.
async fn assert_novembers<S: UsageStore>(
    s: &S,
    org: &OrgId,
    meter: &str,
    totals: &[(Option<&ProjectId>, &str)],
) {
    for (project, value) in totals {
        assert_eq!(
            november(s, org, *project, meter).await,
            exp(&[("2026-11-01T00:00:00Z", value)]),
            "{project:?}"
        );
    }
}

async fn apply<S: UsageStore>(s: &S, events: &[Event]) -> Vec<ApplyOutcome> {
    let report = s.apply_batch(events).await.unwrap();
    assert_eq!(report.outcomes.len(), events.len(), "one outcome per event");
    report.outcomes
}

async fn whole_ledger<S: UsageStore>(s: &S, org: &OrgId, month: Month, limit: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let mut cursor = None;
    for _ in 0..10_000 {
        let page = s
            .ledger_page(&LedgerPageQuery::new(org, month, cursor, limit))
            .await
            .unwrap();
        assert!(
            page.events.len() <= limit,
            "a page holds at most `limit` events"
        );
        out.extend(page.events);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
    panic!("ledger paging did not end");
}

use ApplyOutcome::{Applied, Duplicate};

// ---------------------------------------------------------------------------------------
// Tenants.

/// Deleting an org marks it `deleted_at` (the first time stays), revokes every key of it
/// (a key revoked before keeps its time), takes every role in it away, refuses new
/// members, projects, keys and invitations, and leaves other orgs alone; `get_org` and
/// `list_org_ids` still see it (billing closes its last month).
pub async fn orgs_are_soft_deleted_with_their_keys_revoked<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let (a, member) = org_with_member(&s, Role::Admin).await;
    let b = new_org(&s).await;
    let early = ts("2026-11-20T00:00:00Z");
    let k1 = key_in(&a.id);
    let k2 = ApiKey {
        revoked_at: Some(early),
        last_used_at: None,
        ..key_in(&a.id)
    };
    let kb = key_in(&b.id);
    for k in [&k1, &k2, &kb] {
        s.create_api_key(k).await.unwrap();
    }
    let at = ts("2026-11-27T08:00:00.5Z");
    let deleted = s.delete_org(&a.id, at).await.unwrap();
    let expected = Org {
        deleted_at: Some(at),
        ..a.clone()
    };
    assert_eq!(deleted, Some(expected.clone()));
    let again = s.delete_org(&a.id, at + Duration::hours(1)).await.unwrap();
    assert_eq!(
        again,
        Some(expected.clone()),
        "the first deletion time stays"
    );
    let other = f.open().await;
    assert_eq!(other.get_org(&a.id).await.unwrap(), Some(expected));
    assert!(other.list_org_ids().await.unwrap().contains(&a.id));
    assert_eq!(revoked_at(&other, &k1).await, Some(at));
    assert_eq!(revoked_at(&other, &k2).await, Some(early));
    assert_eq!(other.find_api_key(&kb.hash).await.unwrap(), Some(kb));
    for user in [&a.owner_id, &member.id] {
        assert_eq!(other.get_role(&a.id, user).await.unwrap(), None);
    }
    assert_eq!(
        other.get_role(&b.id, &b.owner_id).await.unwrap(),
        Some(Role::Owner)
    );
    let newcomer = new_user(&s).await;
    assert!(matches!(
        s.add_member(&membership(&a.id, &newcomer.id, Role::Member))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.create_project(&project_in(&a.id, "late")).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.create_api_key(&key_in(&a.id)).await,
        Err(StoreError::NotFound { .. })
    ));
    let (inv, _) = invitation_to(&a, &newcomer.email, Role::Member);
    assert!(matches!(
        s.create_invitation(&inv).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.delete_org(&fresh_org(), at).await.unwrap(), None);
}

/// A project is renamed and archived in place, within its org only; archiving again keeps
/// the first time; the slug stays.
pub async fn projects_are_renamed_and_archived_in_their_org<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let a = new_org(&s).await;
    let b = new_org(&s).await;
    let p = project_in(&a.id, "web");
    s.create_project(&p).await.unwrap();
    let renamed = rename_project(&s, &a.id, &p.id, "Website").await;
    let expected = Project {
        name: "Website".into(),
        ..p.clone()
    };
    assert_eq!(renamed, Some(expected.clone()));
    let at = ts("2026-11-27T09:00:00.75Z");
    let archived = archive_project(&s, &a.id, &p.id, at).await;
    let expected = Project {
        archived_at: Some(at),
        ..expected
    };
    assert_eq!(archived, Some(expected.clone()));
    let again = archive_project(&s, &a.id, &p.id, at + Duration::hours(1)).await;
    assert_eq!(
        again,
        Some(expected.clone()),
        "the first archive time stays"
    );
    let other = f.open().await;
    assert_eq!(
        other.get_project(&a.id, &p.id).await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(other.list_projects(&a.id).await.unwrap(), vec![expected]);
    let through_b = rename_project(&s, &b.id, &p.id, "Stolen").await;
    assert_eq!(through_b, None, "another org's project is not found");
    assert!(other.list_projects(&b.id).await.unwrap().is_empty());
}

/// `touch_api_keys` keeps each key's latest use (to the microsecond), never moves it back,
/// and skips uses of keys that do not exist or are not the use's org's.
pub async fn api_keys_remember_their_latest_use<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let a = new_org(&s).await;
    let b = new_org(&s).await;
    let k1 = key_in(&a.id);
    let kb = key_in(&b.id);
    for k in [&k1, &kb] {
        s.create_api_key(k).await.unwrap();
    }
    let use_of = |k: &ApiKey, org: &OrgId, at| KeyUse {
        key_id: k.id.clone(),
        org_id: org.clone(),
        hash: k.hash.clone(),
        at,
    };
    let t1 = ts("2026-11-27T10:00:00.123456Z");
    let t2 = ts("2026-11-27T10:00:01Z");
    let unknown = key_in(&a.id);
    s.touch_api_keys(&[
        use_of(&k1, &a.id, t2),
        use_of(&kb, &a.id, t2),
        use_of(&unknown, &a.id, t2),
    ])
    .await
    .unwrap();
    s.touch_api_keys(&[use_of(&k1, &a.id, t1)]).await.unwrap();
    let other = f.open().await;
    let found = other.find_api_key(&k1.hash).await.unwrap().unwrap();
    assert_eq!(
        found.last_used_at,
        Some(t2),
        "an earlier use does not move it back"
    );
    assert_eq!(
        other
            .find_api_key(&kb.hash)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        None,
        "a use naming another org is skipped"
    );
    assert_eq!(other.find_api_key(&unknown.hash).await.unwrap(), None);
    let t3 = t2 + Duration::microseconds(1);
    s.touch_api_keys(&[use_of(&k1, &a.id, t3)]).await.unwrap();
    assert_eq!(
        other.list_api_keys(&a.id).await.unwrap(),
        vec![ApiKey {
            last_used_at: Some(t3),
            ..k1
        }]
    );
    s.touch_api_keys(&[]).await.unwrap();
}

/// Members are put on (and taken off) projects of their org only, once each; the list of a
/// user's projects is per org.
pub async fn members_are_put_on_projects_of_their_org<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let (a, member) = org_with_member(&s, Role::Member).await;
    let b = new_org(&s).await;
    let p1 = project_in(&a.id, "one");
    let p2 = project_in(&a.id, "two");
    let pb = project_in(&b.id, "bee");
    for p in [&p1, &p2, &pb] {
        s.create_project(p).await.unwrap();
    }
    s.add_project_member(&NewProjectMember::new(&a.id, &p2.id, &member.id, created()))
        .await
        .unwrap();
    s.add_project_member(&NewProjectMember::new(&a.id, &p1.id, &member.id, created()))
        .await
        .unwrap();
    assert!(matches!(
        s.add_project_member(&NewProjectMember::new(&a.id, &p1.id, &member.id, created()))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        s.add_project_member(&NewProjectMember::new(&a.id, &pb.id, &member.id, created()))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        matches!(
            s.add_project_member(&NewProjectMember::new(&b.id, &pb.id, &member.id, created()))
                .await,
            Err(StoreError::NotFound { .. })
        ),
        "not a member of B"
    );
    let mut expected = vec![p1.id.clone(), p2.id.clone()];
    expected.sort();
    let other = f.open().await;
    assert_eq!(
        other
            .list_user_projects(&OrgMember::new(&a.id, &member.id))
            .await
            .unwrap(),
        expected
    );
    assert!(
        other
            .list_user_projects(&OrgMember::new(&b.id, &member.id))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.remove_project_member(&ProjectMember::new(&a.id, &p1.id, &member.id))
            .await
            .unwrap()
    );
    assert!(
        !s.remove_project_member(&ProjectMember::new(&a.id, &p1.id, &member.id))
            .await
            .unwrap()
    );
    assert_eq!(
        other
            .list_user_projects(&OrgMember::new(&a.id, &member.id))
            .await
            .unwrap(),
        vec![p2.id.clone()]
    );
    assert!(
        other
            .list_projects(&a.id)
            .await
            .unwrap()
            .iter()
            .all(|p| p.id == p1.id || p.id == p2.id),
        "project members are not projects"
    );
}

/// A pending invitation to `org` for `email`, sent at `created()`, with its token.
fn invitation_to(org: &Org, email: &str, role: Role) -> (Invitation, String) {
    let token = format!("tinv_{}{}", random_hex(), random_hex());
    let inv = Invitation {
        id: InvitationId::from_random(rand::random()),
        org_id: org.id.clone(),
        email: email.to_owned(),
        role,
        hash: KeyHash::of_secret(&token),
        invited_by: org.owner_id.clone(),
        created_at: created(),
        expires_at: created() + Duration::days(7),
        accepted_at: None,
    };
    (inv, token)
}

/// Invitations are found by the hash of their token (never after they expire), listed per
/// org while pending, accepted once (the membership is created with the invited role, and
/// a second accept or a member already is `Conflict`), and revoked by id within their org.
pub async fn invitations_are_found_by_hash_accepted_once_and_revoked<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let a = new_org(&s).await;
    let b = new_org(&s).await;
    let invitee = new_user(&s).await;
    let (inv, token) = invitation_to(&a, &invitee.email, Role::Admin);
    let (other, _) = invitation_to(&a, "someone.else@example.com", Role::Viewer);
    let other = Invitation {
        created_at: created() + Duration::seconds(1),
        ..other
    };
    let (in_b, _) = invitation_to(&b, &invitee.email, Role::Member);
    for i in [&inv, &other, &in_b] {
        s.create_invitation(i).await.unwrap();
    }
    let (orphan, _) = invitation_to(&org_for(&invitee), "x@example.com", Role::Member);
    assert!(matches!(
        s.create_invitation(&orphan).await,
        Err(StoreError::NotFound { .. })
    ));
    let now = created() + Duration::hours(1);
    let hash = KeyHash::of_secret(&token);
    let other_handle = f.open().await;
    assert_eq!(
        other_handle.find_invitation(&hash, now).await.unwrap(),
        Some(inv.clone())
    );
    assert_eq!(
        s.find_invitation(&hash, inv.expires_at).await.unwrap(),
        None,
        "expired on read, whatever TTL deletion did"
    );
    assert_eq!(
        s.list_invitations(&a.id, now).await.unwrap(),
        vec![inv.clone(), other.clone()]
    );
    assert_eq!(
        s.list_invitations(&b.id, now).await.unwrap(),
        vec![in_b.clone()]
    );
    assert!(
        s.list_invitations(&a.id, inv.expires_at)
            .await
            .unwrap()
            .is_empty()
    );

    // Too late is refused; in time makes the membership once.
    assert!(matches!(
        s.accept_invitation(&Acceptance::new(&hash, &invitee.id, inv.expires_at))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let m = s
        .accept_invitation(&Acceptance::new(&hash, &invitee.id, now))
        .await
        .unwrap();
    assert_eq!(
        m,
        Membership {
            org_id: a.id.clone(),
            user_id: invitee.id.clone(),
            role: Role::Admin,
            created_at: now,
        }
    );
    assert_eq!(
        other_handle.get_role(&a.id, &invitee.id).await.unwrap(),
        Some(Role::Admin)
    );
    assert!(matches!(
        s.accept_invitation(&Acceptance::new(&hash, &invitee.id, now))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let accepted = s.find_invitation(&hash, now).await.unwrap().unwrap();
    assert_eq!(accepted.accepted_at, Some(now));
    assert_eq!(
        s.list_invitations(&a.id, now).await.unwrap(),
        vec![other.clone()],
        "an accepted invitation is not pending"
    );
    assert!(matches!(
        s.accept_invitation(&Acceptance::new(
            &KeyHash::of_secret("tinv_unknown"),
            &invitee.id,
            now
        ))
        .await,
        Err(StoreError::NotFound { .. })
    ));
    // A member already cannot accept a second invitation to the same org.
    let (dup, dup_token) = invitation_to(&a, &invitee.email, Role::Viewer);
    s.create_invitation(&dup).await.unwrap();
    assert!(matches!(
        s.accept_invitation(&Acceptance::new(
            &KeyHash::of_secret(&dup_token),
            &invitee.id,
            now
        ))
        .await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        s.get_role(&a.id, &invitee.id).await.unwrap(),
        Some(Role::Admin),
        "the refused accept changed nothing"
    );

    // Revocation: within the org only, pending only.
    let of_b = Revocation::new(&b.id, &other.id, now);
    let accepted_inv = Revocation::new(&a.id, &inv.id, now);
    let pending = Revocation::new(&a.id, &other.id, now);
    assert_eq!(s.revoke_invitation(&of_b).await.unwrap(), None);
    assert_eq!(s.revoke_invitation(&accepted_inv).await.unwrap(), None);
    assert_eq!(
        s.revoke_invitation(&pending).await.unwrap(),
        Some(other.clone())
    );
    assert_eq!(s.revoke_invitation(&pending).await.unwrap(), None);
    assert_eq!(s.find_invitation(&other.hash, now).await.unwrap(), None);
    assert_eq!(s.list_invitations(&a.id, now).await.unwrap(), vec![dup]);
    assert_eq!(s.list_invitations(&b.id, now).await.unwrap(), vec![in_b]);
}

/// `ensure_user` creates a user once per email, compared and stored lowercased, and
/// `find_user_by_email` finds it by that email in any case.
pub async fn users_are_unique_by_lowercased_email<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let local = format!("Grace.{}", random_hex());
    let first = User {
        id: UserId::from_random(rand::random()),
        email: format!("{local}@Example.COM"),
        created_at: created(),
    };
    let stored = s.ensure_user(&first).await.unwrap();
    assert_eq!(stored.id, first.id);
    assert_eq!(stored.email, format!("{local}@example.com").to_lowercase());
    assert_eq!(stored.created_at, first.created_at);

    let second = User {
        id: UserId::from_random(rand::random()),
        email: format!("{}@example.com", local.to_uppercase()),
        created_at: ts("2026-11-27T00:00:00Z"),
    };
    let again = s.ensure_user(&second).await.unwrap();
    assert_eq!(
        again, stored,
        "the existing user is returned, not a second one"
    );

    assert_eq!(s.get_user(&first.id).await.unwrap(), Some(stored.clone()));
    assert_eq!(s.get_user(&second.id).await.unwrap(), None);

    // Found by email in any case; an unknown email finds nothing and creates nothing.
    let shouted = format!("{}@EXAMPLE.com", local.to_uppercase());
    assert_eq!(
        s.find_user_by_email(&shouted).await.unwrap(),
        Some(stored.clone())
    );
    let stranger = format!("nobody.{}@example.com", random_hex());
    assert_eq!(s.find_user_by_email(&stranger).await.unwrap(), None);
}

/// `create_org` stores the org with its owner; slugs are unique; the owner must exist.
pub async fn orgs_have_an_owner_and_unique_slugs<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let owner = new_user(&s).await;
    let org = org_for(&owner);
    s.create_org(&org).await.unwrap();
    assert_eq!(s.get_org(&org.id).await.unwrap(), Some(org.clone()));
    assert!(s.list_org_ids().await.unwrap().contains(&org.id));

    let mut same_slug = org_for(&owner);
    same_slug.slug = org.slug.clone();
    let err = s.create_org(&same_slug).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(
        s.get_org(&same_slug.id).await.unwrap(),
        None,
        "nothing of it was stored"
    );

    let orphan = Org {
        owner_id: UserId::from_random(rand::random()),
        ..org_for(&owner)
    };
    let err = s.create_org(&orphan).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(s.get_org(&orphan.id).await.unwrap(), None);

    assert_eq!(s.get_org(&fresh_org()).await.unwrap(), None);
    // A second handle (another process) sees the org at once.
    let other = f.open().await;
    assert_eq!(other.get_org(&org.id).await.unwrap(), Some(org));
}

/// Projects live inside their org: slugs are unique per org, and a project is invisible
/// through any other org.
pub async fn projects_are_scoped_to_their_org<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let a = new_org(&s).await;
    let b = new_org(&s).await;
    let web = project_in(&a.id, "web");
    let api = project_in(&a.id, "api");
    s.create_project(&web).await.unwrap();
    s.create_project(&api).await.unwrap();
    s.create_project(&project_in(&b.id, "web")).await.unwrap();

    let err = s
        .create_project(&project_in(&a.id, "web"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let err = s
        .create_project(&project_in(&fresh_org(), "web"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");

    assert_eq!(
        s.get_project(&a.id, &web.id).await.unwrap(),
        Some(web.clone())
    );
    assert_eq!(
        s.get_project(&b.id, &web.id).await.unwrap(),
        None,
        "cross-org lookup"
    );
    assert_eq!(s.get_project(&a.id, &fresh_project()).await.unwrap(), None);

    let mut listed = s.list_projects(&a.id).await.unwrap();
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    let mut expected = vec![web, api];
    expected.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(listed, expected);
    assert_eq!(s.list_projects(&b.id).await.unwrap().len(), 1);
    assert!(s.list_projects(&fresh_org()).await.unwrap().is_empty());
}

/// API keys are found by the hash of their secret, exactly as stored.
pub async fn api_keys_are_found_by_hash<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = new_org(&s).await;
    let key = key_in(&org.id);
    s.create_api_key(&key).await.unwrap();
    let revoked = ApiKey {
        revoked_at: Some(ts("2026-11-26T11:00:00.5Z")),
        last_used_at: None,
        expires_at: None,
        scopes: vec![KeyScope::UsageRead],
        ..key_in(&org.id)
    };
    s.create_api_key(&revoked).await.unwrap();

    assert_eq!(s.find_api_key(&key.hash).await.unwrap(), Some(key.clone()));
    assert_eq!(s.find_api_key(&revoked.hash).await.unwrap(), Some(revoked));
    let unknown = KeyHash::of_secret(&format!("tk_live_{}", random_hex()));
    assert_eq!(s.find_api_key(&unknown).await.unwrap(), None);

    let err = s.create_api_key(&key_in(&fresh_org())).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let other = f.open().await;
    assert_eq!(other.find_api_key(&key.hash).await.unwrap(), Some(key));
}

/// A user's role is found per org in one lookup; an owner is a member of their org only;
/// members are listed per org.
pub async fn roles_are_looked_up_per_org_and_members_listed<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let a = new_org(&s).await;
    let b = new_org(&s).await;
    assert_eq!(
        s.get_role(&a.id, &a.owner_id).await.unwrap(),
        Some(Role::Owner)
    );
    assert_eq!(
        s.get_role(&b.id, &a.owner_id).await.unwrap(),
        None,
        "cross-org"
    );
    assert_eq!(s.get_role(&fresh_org(), &a.owner_id).await.unwrap(), None);
    let stranger = UserId::from_random(rand::random());
    assert_eq!(s.get_role(&a.id, &stranger).await.unwrap(), None);

    let members = s.list_members(&a.id).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, a.owner_id);
    assert_eq!(members[0].role, Role::Owner);
    assert_eq!(members[0].org_id, a.id);
    assert_eq!(members[0].created_at, a.created_at);
    assert!(s.list_members(&fresh_org()).await.unwrap().is_empty());
    let other = f.open().await;
    assert_eq!(
        other.get_role(&a.id, &a.owner_id).await.unwrap(),
        Some(Role::Owner)
    );
}

/// Members are added once (to an existing org and user), their role changes and they are
/// removed; the owner's membership never changes this way, and nobody becomes owner.
pub async fn members_are_added_changed_and_removed_but_never_the_owner<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let a = new_org(&s).await;
    let b = new_org(&s).await;
    let bob = new_user(&s).await;
    let m = Membership {
        org_id: a.id.clone(),
        user_id: bob.id.clone(),
        role: Role::Viewer,
        created_at: created() + Duration::seconds(5),
    };
    s.add_member(&m).await.unwrap();
    let err = s.add_member(&m).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    type Refusal = fn(&StoreError) -> bool;
    let not_found: Refusal = |e| matches!(e, StoreError::NotFound { .. });
    let conflict: Refusal = |e| matches!(e, StoreError::Conflict { .. });
    let refused = [
        (
            "unknown user",
            Membership {
                user_id: UserId::from_random(rand::random()),
                ..m.clone()
            },
            not_found,
        ),
        (
            "unknown org",
            Membership {
                org_id: fresh_org(),
                ..m.clone()
            },
            not_found,
        ),
        (
            "a second owner",
            Membership {
                org_id: b.id.clone(),
                role: Role::Owner,
                ..m.clone()
            },
            conflict,
        ),
    ];
    for (what, membership, expected) in refused {
        let err = s.add_member(&membership).await.unwrap_err();
        assert!(expected(&err), "{what}: {err:?}");
    }

    let other = f.open().await;
    assert_eq!(
        other.get_role(&a.id, &bob.id).await.unwrap(),
        Some(Role::Viewer)
    );
    assert_eq!(other.get_role(&b.id, &bob.id).await.unwrap(), None);
    let listed = other.list_members(&a.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1], m);

    let before = s
        .set_member_role(&RoleChange {
            org: &a.id,
            user: &bob.id,
            role: Role::Admin,
        })
        .await
        .unwrap();
    assert_eq!(before, Some(m.clone()));
    assert_eq!(s.get_role(&a.id, &bob.id).await.unwrap(), Some(Role::Admin));
    assert_eq!(
        s.set_member_role(&RoleChange {
            org: &b.id,
            user: &bob.id,
            role: Role::Admin,
        })
        .await
        .unwrap(),
        None
    );
    for change in [
        s.set_member_role(&RoleChange {
            org: &a.id,
            user: &a.owner_id,
            role: Role::Admin,
        })
        .await,
        s.set_member_role(&RoleChange {
            org: &a.id,
            user: &bob.id,
            role: Role::Owner,
        })
        .await,
        s.remove_member(&OrgMember::new(&a.id, &a.owner_id)).await,
    ] {
        assert!(
            matches!(change, Err(StoreError::Conflict { .. })),
            "{change:?}"
        );
    }
    assert_eq!(
        s.get_role(&a.id, &a.owner_id).await.unwrap(),
        Some(Role::Owner)
    );
    assert_eq!(s.get_role(&a.id, &bob.id).await.unwrap(), Some(Role::Admin));

    let mut expected = vec![
        Membership {
            role: Role::Admin,
            ..m.clone()
        },
        Membership {
            org_id: b.id.clone(),
            role: Role::Member,
            ..m.clone()
        },
    ];
    s.add_member(&expected[1]).await.unwrap();
    expected.sort_by(|x, y| x.org_id.cmp(&y.org_id));
    assert_eq!(
        other.list_user_memberships(&bob.id).await.unwrap(),
        expected
    );
    let owned = other.list_user_memberships(&a.owner_id).await.unwrap();
    assert_eq!(owned.len(), 1);
    assert_eq!((&owned[0].org_id, owned[0].role), (&a.id, Role::Owner));
    assert!(
        other
            .list_user_memberships(&UserId::from_random(rand::random()))
            .await
            .unwrap()
            .is_empty()
    );

    let removed = s
        .remove_member(&OrgMember::new(&a.id, &bob.id))
        .await
        .unwrap();
    assert_eq!(
        removed,
        Some(Membership {
            role: Role::Admin,
            ..m
        })
    );
    assert_eq!(
        s.remove_member(&OrgMember::new(&a.id, &bob.id))
            .await
            .unwrap(),
        None
    );
    assert_eq!(other.get_role(&a.id, &bob.id).await.unwrap(), None);
    assert_eq!(other.list_members(&a.id).await.unwrap().len(), 1);
}

/// A transfer makes a member the owner (and the org's `owner_id`) and the old owner an
/// admin, at once; only the current owner can hand it over, and only to a member.
pub async fn ownership_moves_only_by_transfer_to_a_member<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let (a, bob) = org_with_member(&s, Role::Member).await;
    let stranger = new_user(&s).await;
    let err = s
        .transfer_ownership(&OwnerTransfer {
            org: &a.id,
            from: &a.owner_id,
            to: &stranger.id,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let err = s
        .transfer_ownership(&OwnerTransfer {
            org: &a.id,
            from: &bob.id,
            to: &bob.id,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "not the owner: {err:?}"
    );
    assert_eq!(
        s.transfer_ownership(&OwnerTransfer {
            org: &fresh_org(),
            from: &a.owner_id,
            to: &bob.id
        })
        .await
        .unwrap(),
        None
    );

    let moved = s
        .transfer_ownership(&OwnerTransfer {
            org: &a.id,
            from: &a.owner_id,
            to: &bob.id,
        })
        .await
        .unwrap();
    assert_eq!(
        moved,
        Some(Org {
            owner_id: bob.id.clone(),
            ..a.clone()
        })
    );
    let other = f.open().await;
    assert_eq!(
        other.get_role(&a.id, &bob.id).await.unwrap(),
        Some(Role::Owner)
    );
    assert_eq!(
        other.get_role(&a.id, &a.owner_id).await.unwrap(),
        Some(Role::Admin)
    );
    assert_eq!(
        other.get_org(&a.id).await.unwrap().unwrap().owner_id,
        bob.id
    );
    // The old owner cannot hand it over again; the new one is protected.
    let err = s
        .transfer_ownership(&OwnerTransfer {
            org: &a.id,
            from: &a.owner_id,
            to: &a.owner_id,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(matches!(
        s.remove_member(&OrgMember::new(&a.id, &bob.id)).await,
        Err(StoreError::Conflict { .. })
    ));
}

/// An org's name changes in place; the rest stays; a missing org is `None`.
pub async fn orgs_are_updated_in_place<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let a = new_org(&s).await;
    let b = new_org(&s).await;
    let renamed = s
        .update_org(
            &a.id,
            &OrgChanges {
                name: Some("Acme Renamed".into()),
            },
        )
        .await
        .unwrap();
    let expected = Org {
        name: "Acme Renamed".into(),
        ..a.clone()
    };
    assert_eq!(renamed, Some(expected.clone()));
    assert_eq!(
        s.update_org(&a.id, &OrgChanges::default()).await.unwrap(),
        Some(expected.clone())
    );
    let other = f.open().await;
    assert_eq!(other.get_org(&a.id).await.unwrap(), Some(expected));
    assert_eq!(
        other.get_org(&b.id).await.unwrap(),
        Some(b),
        "another org is untouched"
    );
    let missing = s
        .update_org(
            &fresh_org(),
            &OrgChanges {
                name: Some("x".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(missing, None);
}

/// A plan change moves the org and is kept in its history, oldest first, with the plan
/// before and after; moving to the plan it is on records nothing; a deleted or missing org
/// is `None`; racing changes leave a history that chains (each `from` is the previous
/// `to`, the last `to` is the org's plan), whoever won.
pub async fn plan_changes_are_kept_in_order<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let a = new_org(&s).await;
    assert_eq!(a.plan, PlanId::Starter);
    assert!(s.plan_history(&a.id).await.unwrap().is_empty());
    let t1 = ts("2026-11-10T08:00:00.5Z");
    let t2 = ts("2026-11-20T09:30:00Z");
    let moved = move_plan(&s, &a.id, PlanId::Pro, t1).await;
    assert_eq!(moved.plan, PlanId::Pro);
    let same = move_plan(&s, &a.id, PlanId::Pro, t2).await;
    assert_eq!(same.plan, PlanId::Pro);
    s.change_plan(&PlanMove::new(&a.id, PlanId::Free, t2))
        .await
        .unwrap();
    let other = f.open().await;
    assert_eq!(
        other.get_org(&a.id).await.unwrap().unwrap().plan,
        PlanId::Free
    );
    let history = other.plan_history(&a.id).await.unwrap();
    let seen: Vec<(PlanId, PlanId, DateTime<Utc>)> =
        history.iter().map(|c| (c.from, c.to, c.at)).collect();
    assert_eq!(
        seen,
        [
            (PlanId::Starter, PlanId::Pro, t1),
            (PlanId::Pro, PlanId::Free, t2)
        ]
    );
    assert!(history.iter().all(|c| c.org_id == a.id));
    // Kept in time order: a change dated before the last one is refused, and changes
    // nothing.
    let earlier = s
        .change_plan(&PlanMove::new(&a.id, PlanId::Enterprise, t1))
        .await;
    assert!(
        matches!(earlier, Err(StoreError::Conflict { .. })),
        "{earlier:?}"
    );
    assert_eq!(s.get_org(&a.id).await.unwrap().unwrap().plan, PlanId::Free);
    assert_eq!(s.plan_history(&a.id).await.unwrap().len(), 2);
    assert_eq!(
        s.change_plan(&PlanMove::new(&fresh_org(), PlanId::Pro, t2))
            .await
            .unwrap(),
        None
    );
    let b = new_org(&s).await;
    assert!(s.plan_history(&b.id).await.unwrap().is_empty(), "per org");
    s.delete_org(&b.id, t2).await.unwrap();
    assert_eq!(
        s.change_plan(&PlanMove::new(&b.id, PlanId::Pro, t2))
            .await
            .unwrap(),
        None
    );
    assert!(s.plan_history(&b.id).await.unwrap().is_empty());

    // Racing changes.
    let c = new_org(&s).await;
    let (x, y) = (f.open().await, f.open().await);
    let t3 = ts("2026-11-21T00:00:00Z");
    let to_pro = PlanMove::new(&c.id, PlanId::Pro, t3);
    let to_enterprise = PlanMove::new(&c.id, PlanId::Enterprise, t3 + chrono::Duration::seconds(1));
    let (rx, ry) = tokio::join!(x.change_plan(&to_pro), y.change_plan(&to_enterprise));
    for r in [&rx, &ry] {
        assert!(
            matches!(r, Ok(Some(_)) | Err(StoreError::Conflict { .. })),
            "{r:?}"
        );
    }
    let history = s.plan_history(&c.id).await.unwrap();
    assert!(!history.is_empty());
    let mut plan = PlanId::Starter;
    for change in &history {
        assert_eq!(change.from, plan, "{history:?}");
        plan = change.to;
    }
    assert_eq!(s.get_org(&c.id).await.unwrap().unwrap().plan, plan);
}

/// An org's keys are listed (its own only) and revoked by id; a revocation is kept at its
/// first time, is seen by lookups by hash, and never reaches another org's key.
pub async fn api_keys_are_listed_and_revoked_by_id<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let a = new_org(&s).await;
    let b = new_org(&s).await;
    let k1 = key_in(&a.id);
    let k2 = ApiKey {
        created_at: created() + Duration::seconds(1),
        ..key_in(&a.id)
    };
    let kb = key_in(&b.id);
    for k in [&k1, &k2, &kb] {
        s.create_api_key(k).await.unwrap();
    }
    assert_eq!(
        s.list_api_keys(&a.id).await.unwrap(),
        vec![k1.clone(), k2.clone()]
    );
    assert_eq!(s.list_api_keys(&b.id).await.unwrap(), vec![kb.clone()]);
    assert!(s.list_api_keys(&fresh_org()).await.unwrap().is_empty());

    // Another org's key id is not found through this org.
    assert_eq!(
        s.revoke_api_key(&Revocation::new(&a.id, &kb.id, ts("2026-11-27T00:00:00Z")))
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.find_api_key(&kb.hash).await.unwrap(), Some(kb));

    let at = ts("2026-11-27T00:00:00.25Z");
    let revoked = s
        .revoke_api_key(&Revocation::new(&a.id, &k1.id, at))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        revoked,
        ApiKey {
            revoked_at: Some(at),
            last_used_at: None,
            ..k1.clone()
        }
    );
    let again = s
        .revoke_api_key(&Revocation::new(&a.id, &k1.id, at + Duration::hours(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.revoked_at,
        Some(at),
        "the first revocation time stays"
    );
    let other = f.open().await;
    assert_eq!(other.find_api_key(&k1.hash).await.unwrap(), Some(revoked));
    assert_eq!(other.find_api_key(&k2.hash).await.unwrap(), Some(k2));
    let unknown = ApiKeyId::from_random(rand::random());
    assert_eq!(
        s.revoke_api_key(&Revocation::new(&a.id, &unknown, at))
            .await
            .unwrap(),
        None
    );
}

/// A rotation stores the new key and makes the old one expire at the end of the overlap
/// (or keeps its earlier expiry), at once; revoked keys and other orgs' keys do not rotate.
pub async fn api_keys_rotate_with_an_overlap<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let a = new_org(&s).await;
    let b = new_org(&s).await;
    let old = ApiKey {
        expires_at: None,
        ..key_in(&a.id)
    };
    s.create_api_key(&old).await.unwrap();
    let new = ApiKey {
        name: old.name.clone(),
        created_at: created() + Duration::hours(1),
        ..key_in(&a.id)
    };
    let end = ts("2026-11-27T11:00:00.5Z");
    let before = s
        .rotate_api_key(&KeyRotation::new(&old.id, &new, end))
        .await
        .unwrap();
    let rotated = ApiKey {
        expires_at: Some(end),
        ..old.clone()
    };
    assert_eq!(before, Some(rotated.clone()));
    let other = f.open().await;
    assert_eq!(other.find_api_key(&old.hash).await.unwrap(), Some(rotated));
    assert_eq!(
        other.find_api_key(&new.hash).await.unwrap(),
        Some(new.clone())
    );
    assert_eq!(other.list_api_keys(&a.id).await.unwrap().len(), 2);

    // An earlier expiry is kept.
    let third = key_in(&a.id);
    let kept = s
        .rotate_api_key(&KeyRotation::new(
            &new.id,
            &third,
            ts("2099-01-01T00:00:00Z"),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.expires_at, new.expires_at);

    // Another org's key id is not found through this org; revoked keys do not rotate.
    let kb = key_in(&b.id);
    s.create_api_key(&kb).await.unwrap();
    assert_eq!(
        s.rotate_api_key(&KeyRotation::new(&kb.id, &key_in(&a.id), end))
            .await
            .unwrap(),
        None
    );
    s.revoke_api_key(&Revocation::new(&a.id, &third.id, end))
        .await
        .unwrap();
    let err = s
        .rotate_api_key(&KeyRotation::new(&third.id, &key_in(&a.id), end))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(s.list_api_keys(&a.id).await.unwrap().len(), 3);
}

fn audit_at(
    org: &OrgId,
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    resource: &str,
) -> AuditRecord {
    AuditRecord {
        id: format!("aud_{}{}", random_hex(), random_hex()),
        org_id: org.clone(),
        actor: actor.into(),
        action: action.into(),
        resource: resource.into(),
        outcome: AuditOutcome::Allowed,
        reason: None,
        before: None,
        after: Some(serde_json::json!({"name": "web"})),
        at,
        ip: Some("127.0.0.1".into()),
        user_agent: Some("curl/8".into()),
    }
}

/// The audit trail of an org reads newest first, a page at a time, filtered by time,
/// actor, action and resource; another org's records and expired ones never show.
pub async fn audit_records_page_newest_first_with_filters<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let a = fresh_org();
    let b = fresh_org();
    let t0 = ts("2026-11-26T10:00:00.000001Z");
    let mut written = Vec::new();
    for i in 0..7 {
        let (actor, action) = if i % 2 == 0 {
            ("usr_ann", "project.create")
        } else {
            ("usr_bob", "key.create")
        };
        let r = audit_at(
            &a,
            t0 + Duration::minutes(i),
            actor,
            action,
            &format!("thing:{i}"),
        );
        s.record_audit(&r).await.unwrap();
        written.push(r);
    }
    // Two records of one instant are both kept; writing a record twice keeps one.
    let twin = audit_at(
        &a,
        t0 + Duration::minutes(6),
        "usr_ann",
        "org.update",
        "org:x",
    );
    s.record_audit(&twin).await.unwrap();
    s.record_audit(&twin).await.unwrap();
    written.push(twin);
    s.record_audit(&audit_at(&b, t0, "usr_ann", "project.create", "thing:0"))
        .await
        .unwrap();
    let expired = audit_at(
        &a,
        ts("2026-01-01T00:00:00Z"),
        "usr_old",
        "org.create",
        "org:x",
    );
    s.record_audit(&expired).await.unwrap();

    let now = t0 + Duration::days(1);
    let query = |limit| AuditQuery {
        org: a.clone(),
        from: None,
        to: None,
        actor: None,
        action: None,
        resource: None,
        limit,
        cursor: None,
        now,
    };
    let mut expected = written.clone();
    expected.sort_by_key(|r| std::cmp::Reverse(r.sort_key()));

    // Pages of 3 cover everything once, newest first.
    let other = f.open().await;
    let mut seen = Vec::new();
    let mut q = query(3);
    loop {
        let page = other.list_audit(&q).await.unwrap();
        assert!(page.records.len() <= 3);
        seen.extend(page.records);
        match page.next {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, expected);

    let only = |q: AuditQuery| {
        let s = &s;
        async move { s.list_audit(&q).await.unwrap().records }
    };
    let ann = only(AuditQuery {
        actor: Some("usr_ann".into()),
        ..query(50)
    })
    .await;
    assert_eq!(ann.len(), 5);
    assert!(ann.iter().all(|r| r.actor == "usr_ann"));
    let keys = only(AuditQuery {
        action: Some("key.create".into()),
        ..query(50)
    })
    .await;
    assert_eq!(keys.len(), 3);
    let one = only(AuditQuery {
        resource: Some("thing:2".into()),
        ..query(50)
    })
    .await;
    assert_eq!(one, vec![written[2].clone()]);
    // [from, to): minutes 2, 3 and 4.
    let window = only(AuditQuery {
        from: Some(t0 + Duration::minutes(2)),
        to: Some(t0 + Duration::minutes(5)),
        ..query(50)
    })
    .await;
    assert_eq!(
        window
            .iter()
            .map(|r| r.resource.as_str())
            .collect::<Vec<_>>(),
        ["thing:4", "thing:3", "thing:2"]
    );
    // A filter with a small page still fills pages and pages on.
    let first = s
        .list_audit(&AuditQuery {
            action: Some("project.create".into()),
            ..query(2)
        })
        .await
        .unwrap();
    assert_eq!(first.records.len(), 2);
    let rest = s
        .list_audit(&AuditQuery {
            action: Some("project.create".into()),
            cursor: first.next.clone(),
            ..query(2)
        })
        .await
        .unwrap();
    assert_eq!(rest.records.len(), 2);
    assert!(
        rest.records
            .iter()
            .all(|r| r.sort_key() < first.records[1].sort_key())
    );
    assert!(
        only(query(50)).await.iter().all(|r| r.actor != "usr_old"),
        "expired"
    );
    assert!(
        only(AuditQuery {
            org: fresh_org(),
            ..query(50)
        })
        .await
        .is_empty()
    );
}

// ---------------------------------------------------------------------------------------
// Exactly once.

/// Resent ids, repeats inside a batch and a whole batch applied twice count once; outcomes
/// come in input order; the first copy of an event is the one that counts.
pub async fn apply_batch_counts_each_event_once<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let p = fresh_project();
    let e = |id: &str, q: &str| event(&org, &p, id, "compute_minutes", q, "2026-11-26T10:00:00Z");

    assert!(s.apply_batch(&[]).await.unwrap().outcomes.is_empty());

    let first = [e("a", "1"), e("b", "2"), e("c", "4")];
    assert_eq!(apply(&s, &first).await, [Applied, Applied, Applied]);
    assert_eq!(
        november(&s, &org, None, "compute_minutes").await,
        exp(&[("2026-11-01T00:00:00Z", "7")])
    );

    // c resent with another quantity, d twice in one batch, e new.
    let second = [e("c", "100"), e("d", "8"), e("d", "8"), e("e", "16")];
    assert_eq!(
        apply(&s, &second).await,
        [Duplicate, Applied, Duplicate, Applied]
    );
    assert_eq!(
        november(&s, &org, None, "compute_minutes").await,
        exp(&[("2026-11-01T00:00:00Z", "31")])
    );

    // The same batches again (a redelivery), from another handle too.
    assert_eq!(apply(&s, &second).await, [const { Duplicate }; 4]);
    let other = f.open().await;
    assert_eq!(apply(&other, &first).await, [const { Duplicate }; 3]);
    assert_eq!(
        november(&s, &org, None, "compute_minutes").await,
        exp(&[("2026-11-01T00:00:00Z", "31")])
    );
    assert_eq!(
        november(&s, &org, Some(&p), "compute_minutes").await,
        exp(&[("2026-11-01T00:00:00Z", "31")])
    );

    // The ledger keeps the first copy of c.
    let ledger = whole_ledger(&s, &org, Month::parse("2026-11").unwrap(), 100).await;
    let c = ledger.iter().find(|x| x.id.as_str() == "c").unwrap();
    assert_eq!(c.quantity.value(), dec("4"));
    assert_eq!(ledger.len(), 5);
}

/// A store that released what it holds for writing ([`UsageStore::release_writers`], what
/// a stopping aggregator calls: DynamoDB's writer slots; nothing elsewhere) keeps working:
/// its next batch applies, and a resend of an event applied before the release is still a
/// duplicate. Releasing twice is harmless.
pub async fn a_store_applies_again_after_releasing_its_writers<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let p = fresh_project();
    let e = |id: &str, q: &str| event(&org, &p, id, "compute_minutes", q, "2026-11-26T10:00:00Z");
    assert_eq!(
        apply(&s, &[e("a", "1"), e("b", "2")]).await,
        [Applied, Applied]
    );
    s.release_writers().await.unwrap();
    s.release_writers().await.unwrap();
    assert_eq!(
        apply(&s, &[e("b", "2"), e("c", "4")]).await,
        [Duplicate, Applied]
    );
    // 1 + 2 + 4: b once.
    assert_eq!(
        november(&s, &org, None, "compute_minutes").await,
        exp(&[("2026-11-01T00:00:00Z", "7")])
    );
}

/// A duplicate whose contents differ from the counted copy (in an earlier batch or earlier
/// in the same batch) is reported in `conflicts`; an identical resend, or one that differs
/// only in how a number is written, is not. The first copy stays counted.
pub async fn resends_with_other_contents_are_reported_as_conflicts<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let p = fresh_project();
    let e = |id: &str, q: &str| event(&org, &p, id, "compute_minutes", q, "2026-11-26T10:00:00Z");

    let first = s.apply_batch(&[e("a", "1"), e("b", "2")]).await.unwrap();
    assert_eq!(first.conflicts, Vec::<usize>::new());
    let second = [
        e("a", "1.0"),
        e("b", "3"),
        e("c", "5"),
        e("c", "6"),
        e("d", "7"),
        e("d", "7"),
    ];
    let report = s.apply_batch(&second).await.unwrap();
    assert_eq!(
        report.outcomes,
        [Duplicate, Duplicate, Applied, Duplicate, Applied, Duplicate]
    );
    assert_eq!(
        report.conflicts,
        [1, 3],
        "b resent with 3, c repeated with 6"
    );
    // A redelivery of the same batch, from another handle: the same conflicts.
    let other = f.open().await;
    let again = other.apply_batch(&second).await.unwrap();
    assert_eq!(again.outcomes, [const { Duplicate }; 6]);
    assert_eq!(again.conflicts, [1, 3]);
    assert_eq!(
        november(&s, &org, None, "compute_minutes").await,
        exp(&[("2026-11-01T00:00:00Z", "15")]),
        "1 + 2 + 5 + 7: the first copies"
    );
}

/// The same event id in two orgs is two events.
pub async fn event_ids_are_unique_per_org_not_globally<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let (a, b) = (fresh_org(), fresh_org());
    let p = fresh_project();
    let batch = [
        event(
            &a,
            &p,
            "same",
            "compute_minutes",
            "1",
            "2026-11-26T10:00:00Z",
        ),
        event(
            &b,
            &p,
            "same",
            "compute_minutes",
            "2",
            "2026-11-26T10:00:00Z",
        ),
    ];
    assert_eq!(apply(&s, &batch).await, [Applied, Applied]);
    assert_eq!(
        november(&s, &a, None, "compute_minutes").await,
        exp(&[("2026-11-01T00:00:00Z", "1")])
    );
    assert_eq!(
        november(&s, &b, None, "compute_minutes").await,
        exp(&[("2026-11-01T00:00:00Z", "2")])
    );
}

/// Two handles applying overlapping batches at the same time count every event once.
pub async fn concurrent_overlapping_batches_count_once<F: StoreFactory>(f: &F) {
    let a = Arc::new(f.open().await);
    let b = Arc::new(f.open().await);
    let org = fresh_org();
    let p = fresh_project();
    let n = 240usize;
    let events: Vec<Event> = (0..n)
        .map(|i| {
            event(
                &org,
                &p,
                &format!("ev-{i:04}"),
                "compute_minutes",
                &i.to_string(),
                &format!("2026-11-26T10:{:02}:00Z", i % 60),
            )
        })
        .collect();
    let left: Vec<Event> = events[..160].to_vec();
    let mut right: Vec<Event> = events[80..].to_vec();
    right.reverse();

    let run = |store: Arc<F::Store>, events: Vec<Event>, chunk: usize| {
        tokio::spawn(async move {
            let mut applied = 0;
            // Twice over: the second pass is a redelivery racing the other task's first.
            for _ in 0..2 {
                for batch in events.chunks(chunk) {
                    let report = store.apply_batch(batch).await.unwrap();
                    assert!(report.all_settled());
                    applied += report.applied();
                }
            }
            applied
        })
    };
    let (x, y) = tokio::join!(run(a.clone(), left, 8), run(b.clone(), right, 5));
    assert_eq!(
        x.unwrap() + y.unwrap(),
        n,
        "each event applied exactly once"
    );

    let total: usize = (0..n).sum();
    for store in [&a, &b] {
        assert_eq!(
            november(store.as_ref(), &org, None, "compute_minutes").await,
            exp(&[("2026-11-01T00:00:00Z", &total.to_string())])
        );
    }
    let hour: Decimal = (0..n).map(Decimal::from).sum();
    assert_eq!(
        series(
            a.as_ref(),
            &org,
            Some(&p),
            "compute_minutes",
            Granularity::Hour,
            "2026-11-26T00:00:00Z",
            "2026-11-27T00:00:00Z"
        )
        .await,
        vec![(ts("2026-11-26T10:00:00Z"), hour)]
    );
    assert_eq!(
        whole_ledger(a.as_ref(), &org, Month::parse("2026-11").unwrap(), 1000)
            .await
            .len(),
        n
    );
}

/// The largest quantity an event may carry: 10^18 − 1.
const MAX_QUANTITY: &str = "999999999999999999";

/// An event that would take its org's month total of an adding meter past
/// `COUNTER_LIMIT` (10^19) is refused alone (`Overflow`), in batch order: it is not in the
/// ledger, a smaller one after it still fits, a repeat of it is refused too, and other
/// months, meters and orgs are counted as usual. Another handle (a second aggregator) meets
/// the same limit.
pub async fn events_past_the_counter_limit_are_refused_one_by_one<F: StoreFactory>(f: &F) {
    use ApplyOutcome::Overflow;
    let s = f.open().await;
    let (org, other) = (fresh_org(), fresh_org());
    let (p1, p2) = (fresh_project(), fresh_project());
    let nov = |org: &OrgId, p: &ProjectId, id: &str, q: &str, at: &str| {
        event(org, p, id, "compute_minutes", q, at)
    };
    // Nine of the largest, over two projects and two days.
    let first: Vec<Event> = (0..9)
        .map(|i| {
            let (p, at) = if i % 2 == 0 {
                (&p1, "2026-11-02T10:00:00Z")
            } else {
                (&p2, "2026-11-20T03:00:00Z")
            };
            nov(&org, p, &format!("m{i}"), MAX_QUANTITY, at)
        })
        .collect();
    assert_eq!(apply(&s, &first).await, vec![Applied; 9]);
    // Room left: 10^19 − 9 × (10^18 − 1) = 10^18 + 9.
    let at = "2026-11-26T10:00:00Z";
    let second = [
        nov(&org, &p1, "n1", MAX_QUANTITY, at), // fits, 10 left
        nov(&org, &p2, "n2", "11", at),         // one too many
        nov(&org, &p1, "n3", "10", at),         // fits exactly
        nov(&org, &p1, "n4", "0.000000001", at),
        nov(&org, &p2, "n2", "11", at), // a repeat of a refused event
        nov(&other, &p1, "o1", MAX_QUANTITY, at), // another org
        nov(&org, &p1, "oct", MAX_QUANTITY, "2026-10-15T00:00:00Z"), // another month
        event(&org, &p1, "r1", "requests", "1", at), // another meter
    ];
    assert_eq!(
        apply(&s, &second).await,
        [
            Applied, Overflow, Applied, Overflow, Overflow, Applied, Applied, Applied
        ]
    );
    assert_eq!(
        november(&s, &org, None, "compute_minutes").await,
        exp(&[("2026-11-01T00:00:00Z", "10000000000000000000")]),
        "the total reaches the limit exactly and not a unit past it"
    );
    assert_eq!(
        november(&s, &other, None, "compute_minutes").await,
        exp(&[("2026-11-01T00:00:00Z", MAX_QUANTITY)])
    );
    let ledger: BTreeSet<String> = whole_ledger(&s, &org, Month::parse("2026-11").unwrap(), 100)
        .await
        .into_iter()
        .map(|e| e.id.as_str().to_owned())
        .collect();
    assert!(
        !ledger.contains("n2") && !ledger.contains("n4"),
        "refused events are not in the ledger: {ledger:?}"
    );
    assert_eq!(ledger.len(), 12, "9 + n1 + n3 + r1: {ledger:?}");

    // A second handle: nothing more fits, a counted event is still a duplicate.
    let s2 = f.open().await;
    assert_eq!(
        apply(
            &s2,
            &[
                nov(&org, &p2, "n2", "11", at),
                nov(&org, &p1, "n1", MAX_QUANTITY, at)
            ]
        )
        .await,
        [Overflow, Duplicate]
    );
    assert_eq!(
        november(&s2, &org, None, "compute_minutes").await,
        exp(&[("2026-11-01T00:00:00Z", "10000000000000000000")])
    );
}

/// Handles racing to fill one total (several aggregators at once) never take it past the
/// limit: what they applied adds up to exactly the stored total, at most 10^19, and every
/// event was either counted or refused.
pub async fn racing_handles_never_take_a_total_past_the_counter_limit<F: StoreFactory>(f: &F) {
    let org = fresh_org();
    let p = fresh_project();
    let mut tasks = Vec::new();
    for h in 0..6 {
        let store = f.open().await;
        let (org, p) = (org.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            let mut applied = Decimal::ZERO;
            for b in 0..2 {
                let batch: Vec<Event> = (0..2)
                    .map(|i| {
                        event(
                            &org,
                            &p,
                            &format!("h{h}-b{b}-{i}"),
                            "compute_minutes",
                            MAX_QUANTITY,
                            "2026-11-26T10:00:00Z",
                        )
                    })
                    .collect();
                let report = store.apply_batch(&batch).await.unwrap();
                assert!(report.all_settled(), "{report:?}");
                for (e, o) in batch.iter().zip(&report.outcomes) {
                    match o {
                        Applied => applied += e.quantity.value(),
                        ApplyOutcome::Overflow => {}
                        other => panic!("a fresh event was {other:?}"),
                    }
                }
            }
            applied
        }));
    }
    let mut applied = Decimal::ZERO;
    for t in tasks {
        applied += t.await.unwrap();
    }
    let one = Decimal::from(999_999_999_999_999_999u64);
    // 24 events of 10^18 − 1 were sent and ten fit under 10^19. A store that reserves room
    // ahead (the DynamoDB guard) may lose a small share of it with each handle, never more
    // than the one event.
    assert!(
        applied <= one * Decimal::from(10) && applied >= one * Decimal::from(9),
        "between nine and ten fit: {applied}"
    );
    let s = f.open().await;
    assert_eq!(
        november(&s, &org, None, "compute_minutes").await,
        vec![(ts("2026-11-01T00:00:00Z"), applied)]
    );
}

// ---------------------------------------------------------------------------------------
// Arithmetic.

const NOV: (&str, &str) = ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z");

/// `sum` adds exact decimals and `count` counts events, per hour, day and month, org-wide
/// and per project.
pub async fn sum_and_count_arithmetic<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let (p1, p2) = (fresh_project(), fresh_project());
    let m = "compute_minutes";
    apply(
        &s,
        &[
            event(&org, &p1, "e1", m, "1.5", "2026-11-26T10:05:00Z"),
            event(&org, &p2, "e3", m, "3", "2026-11-26T11:10:00Z"),
            event(&org, &p1, "r1", "requests", "5", "2026-11-26T10:05:00Z"),
        ],
    )
    .await;
    apply(
        &s,
        &[
            event(&org, &p1, "e2", m, "2.25", "2026-11-26T10:55:00Z"),
            event(&org, &p1, "e4", m, "0.25", "2026-11-27T00:30:00Z"),
            event(&org, &p2, "e5", m, "100", "2026-12-01T00:00:00Z"),
            event(&org, &p1, "r2", "requests", "0", "2026-11-26T10:59:59.999Z"),
            event(&org, &p2, "r3", "requests", "7", "2026-11-27T23:00:00Z"),
        ],
    )
    .await;
    let (from, to) = NOV;
    use Granularity::{Day, Hour, Month as M};
    assert_eq!(
        series(&s, &org, None, m, Hour, from, to).await,
        exp(&[
            ("2026-11-26T10:00:00Z", "3.75"),
            ("2026-11-26T11:00:00Z", "3"),
            ("2026-11-27T00:00:00Z", "0.25")
        ])
    );
    assert_eq!(
        series(&s, &org, None, m, Day, from, to).await,
        exp(&[
            ("2026-11-26T00:00:00Z", "6.75"),
            ("2026-11-27T00:00:00Z", "0.25")
        ])
    );
    assert_eq!(
        series(&s, &org, None, m, M, from, to).await,
        exp(&[("2026-11-01T00:00:00Z", "7")])
    );
    assert_eq!(
        series(&s, &org, None, m, M, from, "2027-01-01T00:00:00Z").await,
        exp(&[
            ("2026-11-01T00:00:00Z", "7"),
            ("2026-12-01T00:00:00Z", "100")
        ])
    );
    assert_eq!(
        series(&s, &org, Some(&p1), m, Hour, from, to).await,
        exp(&[
            ("2026-11-26T10:00:00Z", "3.75"),
            ("2026-11-27T00:00:00Z", "0.25")
        ])
    );
    assert_eq!(
        series(&s, &org, Some(&p1), m, Day, from, to).await,
        exp(&[
            ("2026-11-26T00:00:00Z", "3.75"),
            ("2026-11-27T00:00:00Z", "0.25")
        ])
    );
    assert_eq!(
        series(&s, &org, Some(&p1), m, M, from, to).await,
        exp(&[("2026-11-01T00:00:00Z", "4")])
    );
    assert_eq!(
        series(&s, &org, Some(&p2), m, Hour, from, to).await,
        exp(&[("2026-11-26T11:00:00Z", "3")])
    );
    assert_eq!(
        series(&s, &org, Some(&p2), m, M, from, to).await,
        exp(&[("2026-11-01T00:00:00Z", "3")])
    );

    // count ignores quantities (zero included).
    assert_eq!(
        series(&s, &org, None, "requests", M, from, to).await,
        exp(&[("2026-11-01T00:00:00Z", "3")])
    );
    assert_eq!(
        series(&s, &org, None, "requests", Day, from, to).await,
        exp(&[("2026-11-26T00:00:00Z", "2"), ("2026-11-27T00:00:00Z", "1")])
    );
    assert_eq!(
        series(&s, &org, Some(&p1), "requests", Hour, from, to).await,
        exp(&[("2026-11-26T10:00:00Z", "2")])
    );
    assert_eq!(
        series(&s, &org, Some(&p2), "requests", M, from, to).await,
        exp(&[("2026-11-01T00:00:00Z", "1")])
    );
}

/// `max` keeps the largest quantity per bucket, across batches.
pub async fn max_arithmetic<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let (p1, p2) = (fresh_project(), fresh_project());
    let m = "storage_bytes";
    apply(
        &s,
        &[
            event(&org, &p1, "a", m, "100", "2026-11-26T10:00:00Z"),
            event(&org, &p1, "b", m, "300", "2026-11-26T10:30:00Z"),
        ],
    )
    .await;
    apply(
        &s,
        &[event(&org, &p2, "c", m, "200", "2026-11-26T11:00:00Z")],
    )
    .await;
    apply(
        &s,
        &[event(&org, &p1, "d", m, "50", "2026-11-26T11:30:00Z")],
    )
    .await;
    // A resend of the peak with a bigger quantity changes nothing.
    apply(
        &s,
        &[event(&org, &p1, "b", m, "9999", "2026-11-26T10:30:00Z")],
    )
    .await;
    let (from, to) = NOV;
    use Granularity::{Day, Hour, Month as M};
    assert_eq!(
        series(&s, &org, None, m, Hour, from, to).await,
        exp(&[
            ("2026-11-26T10:00:00Z", "300"),
            ("2026-11-26T11:00:00Z", "200")
        ])
    );
    assert_eq!(
        series(&s, &org, None, m, Day, from, to).await,
        exp(&[("2026-11-26T00:00:00Z", "300")])
    );
    assert_eq!(
        series(&s, &org, None, m, M, from, to).await,
        exp(&[("2026-11-01T00:00:00Z", "300")])
    );
    assert_eq!(
        series(&s, &org, Some(&p1), m, Hour, from, to).await,
        exp(&[
            ("2026-11-26T10:00:00Z", "300"),
            ("2026-11-26T11:00:00Z", "50")
        ])
    );
    assert_eq!(
        series(&s, &org, Some(&p2), m, M, from, to).await,
        exp(&[("2026-11-01T00:00:00Z", "200")])
    );
}

/// `latest` keeps the reading with the latest timestamp (ties: the larger value), whatever
/// order the readings arrive in.
pub async fn latest_arithmetic<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let (p1, p2) = (fresh_project(), fresh_project());
    let m = "temperature";
    apply(&s, &[event(&org, &p1, "a", m, "5", "2026-11-26T10:00:00Z")]).await;
    apply(&s, &[event(&org, &p1, "b", m, "7", "2026-11-26T12:00:00Z")]).await;
    // Late and older: lands in its own hour, changes neither day nor month.
    apply(&s, &[event(&org, &p1, "c", m, "9", "2026-11-26T11:00:00Z")]).await;
    let (from, to) = NOV;
    use Granularity::{Day, Hour, Month as M};
    assert_eq!(
        series(&s, &org, Some(&p1), m, M, from, to).await,
        exp(&[("2026-11-01T00:00:00Z", "7")])
    );
    assert_eq!(
        series(&s, &org, Some(&p1), m, Day, from, to).await,
        exp(&[("2026-11-26T00:00:00Z", "7")])
    );
    assert_eq!(
        series(&s, &org, Some(&p1), m, Hour, from, to).await,
        exp(&[
            ("2026-11-26T10:00:00Z", "5"),
            ("2026-11-26T11:00:00Z", "9"),
            ("2026-11-26T12:00:00Z", "7")
        ])
    );
    // Same instant, smaller value: no change. Same instant, larger value (other project):
    // wins org-wide.
    apply(&s, &[event(&org, &p1, "d", m, "4", "2026-11-26T12:00:00Z")]).await;
    assert_eq!(
        series(&s, &org, None, m, M, from, to).await,
        exp(&[("2026-11-01T00:00:00Z", "7")])
    );
    apply(&s, &[event(&org, &p2, "e", m, "8", "2026-11-26T12:00:00Z")]).await;
    let totals = [(None, "8"), (Some(&p1), "7"), (Some(&p2), "8")];
    assert_novembers(&s, &org, m, &totals).await;
    // Sub-second order is respected.
    apply(
        &s,
        &[event(&org, &p2, "f", m, "1", "2026-11-26T12:00:00.001Z")],
    )
    .await;
    assert_eq!(
        series(&s, &org, None, m, M, from, to).await,
        exp(&[("2026-11-01T00:00:00Z", "1")])
    );
    assert_eq!(
        series(&s, &org, None, m, Hour, "2026-11-26T12:00:00Z", to).await,
        exp(&[("2026-11-26T12:00:00Z", "1")])
    );
}

/// `unique_count` counts distinct property values per bucket, across batches and
/// projects.
pub async fn unique_count_arithmetic<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let (p1, p2) = (fresh_project(), fresh_project());
    let m = "active_users";
    let e = |p: &ProjectId, id: &str, user: &str, at: &str| {
        with_prop(event(&org, p, id, m, "1", at), "user", user)
    };
    apply(
        &s,
        &[
            e(&p1, "1", "ann", "2026-11-26T10:00:00Z"),
            e(&p1, "2", "ann", "2026-11-26T10:10:00Z"),
        ],
    )
    .await;
    apply(
        &s,
        &[
            e(&p2, "3", "ann", "2026-11-26T10:20:00Z"),
            e(&p1, "4", "bob", "2026-11-26T11:00:00Z"),
            e(&p1, "4", "bob", "2026-11-26T11:00:00Z"),
        ],
    )
    .await;
    // A resent event with another user changes nothing.
    apply(&s, &[e(&p1, "1", "zed", "2026-11-26T10:00:00Z")]).await;
    let (from, to) = NOV;
    use Granularity::{Day, Hour, Month as M};
    assert_eq!(
        series(&s, &org, None, m, Hour, from, to).await,
        exp(&[("2026-11-26T10:00:00Z", "1"), ("2026-11-26T11:00:00Z", "1")])
    );
    assert_eq!(
        series(&s, &org, None, m, Day, from, to).await,
        exp(&[("2026-11-26T00:00:00Z", "2")])
    );
    let totals = [(None, "2"), (Some(&p1), "2"), (Some(&p2), "1")];
    assert_novembers(&s, &org, m, &totals).await;
    apply(
        &s,
        &[
            e(&p2, "5", "cy", "2026-11-27T09:00:00Z"),
            e(&p2, "6", "bob", "2026-11-27T09:30:00Z"),
        ],
    )
    .await;
    assert_eq!(
        series(&s, &org, None, m, M, from, to).await,
        exp(&[("2026-11-01T00:00:00Z", "3")])
    );
    assert_eq!(
        series(&s, &org, None, m, Day, from, to).await,
        exp(&[("2026-11-26T00:00:00Z", "2"), ("2026-11-27T00:00:00Z", "2")])
    );
    assert_eq!(
        series(&s, &org, Some(&p2), m, M, from, to).await,
        exp(&[("2026-11-01T00:00:00Z", "3")])
    );
}

// ---------------------------------------------------------------------------------------
// Reads.

/// Series hold the buckets whose start is in [from, to), in time order, without empty
/// buckets, for exactly the org, scope and meter asked.
pub async fn counter_series_range_semantics<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let p = fresh_project();
    let m = "bandwidth_bytes";
    let mut batch: Vec<Event> = [
        ("a", "1", "2026-11-26T13:05:00Z"),
        ("b", "2", "2026-11-26T10:15:00Z"),
        ("c", "4", "2026-11-26T11:45:00Z"),
        ("d", "8", "2026-11-27T09:00:00Z"),
        ("e", "16", "2026-10-31T23:59:59.999Z"),
        ("f", "32", "2026-12-01T00:00:00Z"),
    ]
    .iter()
    .map(|(id, q, at)| event(&org, &p, id, m, q, at))
    .collect();
    batch.push(event(
        &fresh_org(),
        &p,
        "a",
        m,
        "1000",
        "2026-11-26T11:00:00Z",
    ));
    apply(&s, &batch).await;
    use Granularity::{Day, Hour, Month as M};
    let day = ("2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z");
    // The whole org's series of `m`: what most cases ask for.
    let whole = |g: Granularity, from: &'static str, to: &'static str| {
        series(&s, &org, None, m, g, from, to)
    };
    assert_eq!(
        whole(Hour, day.0, day.1).await,
        exp(&[
            ("2026-11-26T10:00:00Z", "2"),
            ("2026-11-26T11:00:00Z", "4"),
            ("2026-11-26T13:00:00Z", "1")
        ])
    );
    // `to` is exclusive; empty hours are omitted.
    assert_eq!(
        whole(Hour, "2026-11-26T11:00:00Z", "2026-11-26T13:00:00Z").await,
        exp(&[("2026-11-26T11:00:00Z", "4")])
    );
    // A bucket that starts before `from` is left out; one starting before `to` is in.
    assert_eq!(
        whole(Hour, "2026-11-26T10:30:00Z", "2026-11-26T13:00:00.001Z").await,
        exp(&[("2026-11-26T11:00:00Z", "4"), ("2026-11-26T13:00:00Z", "1")])
    );
    assert_eq!(
        series(
            &s,
            &org,
            Some(&p),
            m,
            Day,
            "2026-10-01T00:00:00Z",
            "2027-01-01T00:00:00Z"
        )
        .await,
        exp(&[
            ("2026-10-31T00:00:00Z", "16"),
            ("2026-11-26T00:00:00Z", "7"),
            ("2026-11-27T00:00:00Z", "8"),
            ("2026-12-01T00:00:00Z", "32"),
        ])
    );
    assert_eq!(
        whole(M, "2026-10-01T00:00:00Z", "2027-01-01T00:00:00Z").await,
        exp(&[
            ("2026-10-01T00:00:00Z", "16"),
            ("2026-11-01T00:00:00Z", "15"),
            ("2026-12-01T00:00:00Z", "32")
        ])
    );
    assert_eq!(
        whole(M, "2026-11-02T00:00:00Z", "2027-01-01T00:00:00Z").await,
        exp(&[("2026-12-01T00:00:00Z", "32")])
    );
    assert!(whole(Hour, day.0, day.0).await.is_empty());
    assert!(whole(Hour, day.1, day.0).await.is_empty());
    assert!(
        series(&s, &org, None, "compute_minutes", Hour, day.0, day.1)
            .await
            .is_empty()
    );
    assert!(
        series(&s, &org, Some(&fresh_project()), m, Hour, day.0, day.1)
            .await
            .is_empty()
    );
    assert!(
        series(&s, &fresh_org(), None, m, Hour, day.0, day.1)
            .await
            .is_empty()
    );
}

/// Paging the ledger of one org and month returns each of its events exactly once, as
/// applied (first copy, properties included), and nothing of other orgs or months.
pub async fn ledger_pages_cover_each_event_once<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let other = fresh_org();
    let p = fresh_project();
    let mut nov = Vec::new();
    for i in 0..53u32 {
        // Ids in scrambled order, timestamps spread over the month.
        let id = format!("evt-{:03}", (i * 37) % 53);
        let at = format!("2026-11-{:02}T{:02}:{:02}:00Z", 1 + i % 30, i % 24, i % 60);
        let mut e = event(&org, &p, &id, "compute_minutes", &format!("{i}.5"), &at);
        if i % 3 == 0 {
            e = with_prop(e, "route", format!("/v1/{i}"));
        }
        nov.push(e);
    }
    let edges = [
        event(
            &org,
            &p,
            "oct-1",
            "compute_minutes",
            "1",
            "2026-10-31T23:59:59.999Z",
        ),
        event(
            &org,
            &p,
            "dec-1",
            "compute_minutes",
            "1",
            "2026-12-01T00:00:00Z",
        ),
        event(
            &other,
            &p,
            "evt-001",
            "compute_minutes",
            "1",
            "2026-11-02T00:00:00Z",
        ),
    ];
    let mut all: Vec<Event> = nov.iter().chain(edges.iter()).cloned().collect();
    all.push(nov[3].clone());
    for chunk in all.chunks(10) {
        apply(&s, chunk).await;
    }
    // A resend with other content does not replace the first copy.
    let mut changed = nov[5].clone();
    changed.quantity = tally_core::event::Quantity::parse("999").unwrap();
    apply(&s, &[changed]).await;

    let month = Month::parse("2026-11").unwrap();
    for limit in [1, 7, 53, 1000] {
        let got = whole_ledger(&s, &org, month, limit).await;
        let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        let distinct: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), distinct.len(), "no event twice (limit {limit})");
        let mut got_sorted = got.clone();
        got_sorted.sort_by(|a, b| a.id.cmp(&b.id));
        let mut want = nov.clone();
        want.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(got_sorted, want, "limit {limit}");
    }
    let oct = whole_ledger(&s, &org, Month::parse("2026-10").unwrap(), 10).await;
    assert_eq!(oct, vec![edges[0].clone()]);
    let empty = first_ledger_page(&s, &org, Month::parse("2026-09").unwrap(), 10).await;
    assert!(empty.events.is_empty() && empty.next.is_none());
    assert_eq!(
        whole_ledger(&s, &other, month, 10).await,
        vec![edges[2].clone()]
    );
}

/// What month close records on a report line and `tally export --ledger` hands out: the
/// ledger entries of an (org, month, meter), read in pages, recompute the org-wide month
/// counter for every aggregation, count each event once (duplicates and resends with other
/// contents are not entries; another month's or org's events are not the line's), and
/// digest to the same value however they are paged and after a trip through the export's
/// CSV rows. A changed entry changes the digest.
pub async fn report_lines_tally_from_the_ledger_as_the_counters_say<F: StoreFactory>(f: &F) {
    use tally_core::audit::LineTally;
    use tally_core::export::{ledger_event, ledger_row};
    let s = f.open().await;
    let org = fresh_org();
    let other = fresh_org();
    let (p1, p2) = (fresh_project(), fresh_project());
    let mut roll = dice();
    let mut applied: Vec<Event> = Vec::new();
    for i in 0..60u64 {
        let meter = MIXED_METERS[(i % 5) as usize];
        let p = if roll(2) == 0 { &p1 } else { &p2 };
        let at = format!(
            "2026-11-{:02}T{:02}:00:0{}Z",
            1 + roll(30),
            roll(24),
            roll(10)
        );
        let mut e = event(
            &org,
            p,
            &format!("line-{i}"),
            meter,
            &format!("{}.25", roll(50)),
            &at,
        );
        e = with_prop(e, "user", format!("u{}", roll(7)));
        applied.push(e);
    }
    let mut sent = applied.clone();
    sent.push(applied[4].clone());
    let mut resent = applied[9].clone();
    resent.quantity = tally_core::event::Quantity::parse("777").unwrap();
    sent.push(resent);
    sent.push(event(
        &org,
        &p1,
        "line-oct",
        "compute_minutes",
        "5",
        "2026-10-31T23:59:59Z",
    ));
    sent.push(event(
        &other,
        &p1,
        "line-0",
        "compute_minutes",
        "5",
        "2026-11-03T00:00:00Z",
    ));
    for chunk in sent.chunks(9) {
        apply(&s, chunk).await;
    }

    let month = Month::parse("2026-11").unwrap();
    let tallies = tally_billing::digest::tally_lines(&s, &org, month)
        .await
        .unwrap();
    let counters = stored_counter_map(&s, &org, month).await;
    assert_eq!(tallies.len(), MIXED_METERS.len());
    for meter in MIXED_METERS {
        let name = MeterName::parse(meter).unwrap();
        let tally = &tallies[&name];
        let counter = counters
            .iter()
            .find(|(k, _)| {
                k.project.is_none() && k.meter == name && k.granularity == Granularity::Month
            })
            .map(|(_, v)| *v)
            .unwrap();
        assert_eq!(tally.quantity().unwrap(), counter, "{meter}");
        let mine: Vec<&Event> = applied.iter().filter(|e| e.meter == name).collect();
        assert_eq!(tally.event_count(), mine.len() as u64, "{meter}");
        let mut want = LineTally::new();
        mine.iter().for_each(|e| want.add(e));
        assert_eq!(tally.digest(), want.digest(), "{meter}");

        // Small pages, and a trip through the export's rows, digest alike.
        let mut paged = LineTally::new();
        for e in whole_ledger(&s, &org, month, 7).await {
            if e.meter == name {
                let row = ledger_row(&e);
                let fields: Vec<&str> = row.iter().map(String::as_str).collect();
                paged.add(&ledger_event(&fields).unwrap());
            }
        }
        assert_eq!(paged.digest(), want.digest(), "{meter}");

        let mut changed: Vec<Event> = mine.iter().map(|e| (*e).clone()).collect();
        changed[0].timestamp += Duration::milliseconds(1);
        let mut planted = LineTally::new();
        changed.iter().for_each(|e| planted.add(e));
        assert_ne!(planted.digest(), want.digest(), "{meter}");
    }
}

/// Every stored counter of a month equals what a fold of the month's ledger implies, and
/// what the events accepted imply; nothing more is stored.
pub async fn stored_counters_agree_with_a_fold_of_the_ledger<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let projects = [fresh_project(), fresh_project()];
    let meters = MIXED_METERS;
    let mut next = dice();
    let mut stream = Vec::new();
    for i in 0..300u64 {
        // About one in five is a resend of an earlier id (maybe with other content).
        let id = if i > 10 && next(5) == 0 { next(i) } else { i };
        let meter = meters[next(meters.len() as u64) as usize];
        let p = &projects[next(2) as usize];
        let (day, hour, minute) = (next(32), next(24), next(60));
        let at = match day {
            0 => format!("2026-10-31T{hour:02}:{minute:02}:00Z"),
            31 => format!("2026-12-01T{hour:02}:{minute:02}:00Z"),
            d => format!(
                "2026-11-{d:02}T{hour:02}:{minute:02}:{:02}.{:03}Z",
                next(60),
                next(1000)
            ),
        };
        let q = format!("{}.{}", next(1000), next(100));
        let mut e = event(&org, p, &format!("id-{id}"), meter, &q, &at);
        if meter == "active_users" {
            e = with_prop(e, "user", format!("u{}", next(6)));
        }
        stream.push(e);
    }
    let mut accepted: Vec<Event> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut start = 0;
    while start < stream.len() {
        let len = 1 + next(40) as usize;
        let mut batch: Vec<Event> = stream[start..(start + len).min(stream.len())].to_vec();
        if next(3) == 0
            && let Some(e) = batch.first().cloned()
        {
            batch.push(e);
        }
        let outcomes = apply(&s, &batch).await;
        for (e, o) in batch.iter().zip(outcomes) {
            let fresh = seen.insert(e.id.clone());
            assert_eq!(o, if fresh { Applied } else { Duplicate }, "event {}", e.id);
            if fresh {
                accepted.push(e.clone());
            }
        }
        start += len;
    }

    let month = Month::parse("2026-11").unwrap();
    let stored = stored_counter_map(&s, &org, month).await;
    let ledger = whole_ledger(&s, &org, month, 25).await;
    let from_ledger = expected_counters(&ledger);
    let in_month: Vec<Event> = accepted
        .into_iter()
        .filter(|e| month.contains(e.timestamp))
        .collect();
    let from_accepted = expected_counters(&in_month);
    assert_eq!(
        from_ledger, from_accepted,
        "the ledger holds exactly the accepted events"
    );
    assert!(!stored.is_empty());
    assert_eq!(
        stored, from_ledger,
        "stored counters equal a fold of the ledger"
    );
    assert!(
        stored
            .keys()
            .all(|k| k.org == org && month.contains(k.start))
    );
    assert!(
        s.stored_counters(&fresh_org(), month)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Closing a period is recorded, idempotent, and touches no other month.
pub async fn periods_close_idempotently<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    // A far-off random month, so tests and runs sharing a table do not collide.
    let month = Month::new(
        2200 + (rand::random::<u32>() % 7000) as i32,
        1 + rand::random::<u32>() % 12,
    )
    .unwrap();
    assert!(!s.is_period_closed(month).await.unwrap());
    let at = ts("2026-12-01T01:00:00Z");
    s.close_period(month, at).await.unwrap();
    assert!(s.is_period_closed(month).await.unwrap());
    s.close_period(month, at + Duration::hours(1))
        .await
        .unwrap();
    assert!(s.is_period_closed(month).await.unwrap());
    assert!(f.open().await.is_period_closed(month).await.unwrap());
    assert!(!s.is_period_closed(month.next()).await.unwrap());
    assert!(!s.is_period_closed(month.prev()).await.unwrap());
}

fn report(org: &OrgId, period: &str, body: &str) -> StoredReport {
    StoredReport {
        org_id: org.clone(),
        period: month(period),
        body: body.to_owned(),
        // Sub-second precision, as elsewhere: it must round-trip exactly.
        created_at: created(),
    }
}

/// A report is stored once per (org, month): the first write wins and every later write,
/// equal or not, gets the stored one back; reads and lists see it from another handle;
/// lists are per org and oldest first.
pub async fn reports_are_written_once_and_listed_per_org<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let (org, other) = (fresh_org(), fresh_org());
    let oct = month("2026-10");
    assert_eq!(s.get_report(&org, oct).await.unwrap(), None);
    assert!(s.list_reports(&org).await.unwrap().is_empty());

    // A body with what JSON reports carry: quotes, unicode, big decimals.
    let first = report(&org, "2026-10", r#"{"total":"142.05","note":"é ✓ \"q\""}"#);
    assert_eq!(s.save_report(&first).await.unwrap(), first);
    // A rerun computing the same report: a no-op returning the stored one.
    assert_eq!(s.save_report(&first).await.unwrap(), first);
    // A rerun computing something else (late usage): still the first one.
    let mut later = report(&org, "2026-10", r#"{"total":"150.00"}"#);
    later.created_at = created() + Duration::days(1);
    assert_eq!(s.save_report(&later).await.unwrap(), first);
    assert_eq!(s.get_report(&org, oct).await.unwrap(), Some(first.clone()));
    assert_eq!(
        f.open().await.get_report(&org, oct).await.unwrap(),
        Some(first.clone())
    );

    // Other months and other orgs are separate.
    let dec_ = report(&org, "2026-12", r#"{"total":"1.00"}"#);
    let sep = report(&org, "2026-09", r#"{"total":"2.00"}"#);
    let theirs = report(&other, "2026-10", r#"{"total":"3.00"}"#);
    for r in [&dec_, &sep, &theirs] {
        assert_eq!(s.save_report(r).await.unwrap(), *r);
    }
    assert_eq!(s.get_report(&org, oct.next()).await.unwrap(), None);
    assert_eq!(
        s.list_reports(&org).await.unwrap(),
        vec![sep, first.clone(), dec_]
    );
    assert_eq!(s.list_reports(&other).await.unwrap(), vec![theirs.clone()]);
    assert_eq!(s.get_report(&other, oct).await.unwrap(), Some(theirs));
}

/// Month-close runs racing on the same (org, month) from several handles (processes) store
/// one report, and every writer gets that one back.
pub async fn racing_report_writes_keep_one<F: StoreFactory>(f: &F) {
    let org = fresh_org();
    let mut handles = Vec::new();
    for i in 0..6 {
        let s = Arc::new(f.open().await);
        let r = report(&org, "2026-10", &format!(r#"{{"writer":{i}}}"#));
        handles.push(tokio::spawn(
            async move { s.save_report(&r).await.unwrap() },
        ));
    }
    let got = join_all(handles).await;
    let stored = f
        .open()
        .await
        .get_report(&org, month("2026-10"))
        .await
        .unwrap()
        .unwrap();
    assert!(got.iter().all(|r| *r == stored), "{got:?} vs {stored:?}");
    assert_eq!(f.open().await.list_reports(&org).await.unwrap().len(), 1);
}

/// A body over [`MAX_REPORT_BODY_BYTES`] is refused and nothing is stored; one at the
/// limit is kept whole.
pub async fn oversized_reports_are_refused<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let org = fresh_org();
    let big = report(&org, "2026-10", &"x".repeat(MAX_REPORT_BODY_BYTES + 1));
    assert!(matches!(
        s.save_report(&big).await,
        Err(StoreError::Unavailable(_))
    ));
    assert_eq!(s.get_report(&org, month("2026-10")).await.unwrap(), None);
    let at_limit = report(&org, "2026-10", &"y".repeat(MAX_REPORT_BODY_BYTES));
    assert_eq!(s.save_report(&at_limit).await.unwrap(), at_limit);
    assert_eq!(
        s.get_report(&org, month("2026-10")).await.unwrap(),
        Some(at_limit)
    );
}

// ---------------------------------------------------------------------------------------
// Catalogue versions.

fn catalogue_version(version: u32, from: &str, body: &str) -> CatalogueVersion {
    CatalogueVersion {
        version,
        effective_from: month(from),
        body: body.to_owned(),
        digest: catalogue_digest(body),
        applied_by: "cli".into(),
        applied_at: created(),
    }
}

/// A version number is taken once (first write wins, the stored one kept whole, also among
/// racing handles), read back whole by number, listed oldest first without bodies, and the
/// latest is the highest number. The table may hold versions of earlier runs, so numbers
/// start past the latest.
pub async fn catalogue_versions_are_numbered_once_and_listed_in_order<F: StoreFactory>(f: &F) {
    let s = f.open().await;
    let base = s
        .latest_catalogue_version()
        .await
        .unwrap()
        .map_or(0, |v| v.version);
    let first = catalogue_version(base + 1, "2031-01", r#"{"first":true}"#);
    assert!(s.put_catalogue_version(&first).await.unwrap());
    let again = catalogue_version(base + 1, "2031-02", r#"{"second":true}"#);
    assert!(!s.put_catalogue_version(&again).await.unwrap());
    assert_eq!(
        s.get_catalogue_version(base + 1).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(s.get_catalogue_version(base + 1_000).await.unwrap(), None);

    // Six handles race for the next number: exactly one wins, and its body is stored.
    let mut handles = Vec::new();
    for i in 0..6 {
        let h = f.open().await;
        let v = catalogue_version(base + 2, "2031-03", &format!(r#"{{"writer":{i}}}"#));
        handles.push(tokio::spawn(async move {
            (h.put_catalogue_version(&v).await.unwrap(), v)
        }));
    }
    let mut winners = Vec::new();
    for h in handles {
        let (won, v) = h.await.unwrap();
        if won {
            winners.push(v);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let latest = f.open().await.latest_catalogue_version().await.unwrap();
    assert_eq!(latest, Some(winners[0].clone()));

    let listed = s.list_catalogue_versions().await.unwrap();
    let mine: Vec<_> = listed.iter().filter(|v| v.version > base).collect();
    assert_eq!(mine, vec![&first.summary(), &winners[0].summary()]);
    assert!(listed.windows(2).all(|w| w[0].version < w[1].version));

    // Bounds: number 0 and a digest that is not the body's are refused, nothing stored.
    let zero = catalogue_version(0, "2031-01", "{}");
    assert!(s.put_catalogue_version(&zero).await.is_err());
    let mut forged = catalogue_version(base + 3, "2031-01", "{}");
    forged.digest = catalogue_digest("{ }");
    assert!(s.put_catalogue_version(&forged).await.is_err());
    assert_eq!(s.get_catalogue_version(base + 3).await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------
// The Stripe sync ledger.

/// A step's result is recorded once per (org, period, step): later writes get the first
/// result back; steps are listed per (org, period) by name; values are bounded.
pub async fn sync_steps_are_recorded_once_per_org_period_and_step<F: StoreFactory>(f: &F) {
    use tally_core::ports::{MAX_SYNC_VALUE_LEN, SyncLedger, SyncStep};
    let s = f.open().await;
    let (org, other) = (fresh_org(), fresh_org());
    let (oct, nov) = (month("2026-10"), month("2026-11"));
    assert_eq!(
        s.get_step(&StepKey::new(&org, oct, "invoice"))
            .await
            .unwrap(),
        None
    );
    assert!(s.list_steps(&org, oct).await.unwrap().is_empty());

    assert_eq!(
        s.record_step(&StepKey::new(&org, oct, "invoice"), "in_1")
            .await
            .unwrap(),
        "in_1"
    );
    // A rerun that got another answer (or a racing run) keeps the first.
    assert_eq!(
        s.record_step(&StepKey::new(&org, oct, "invoice"), "in_2")
            .await
            .unwrap(),
        "in_1"
    );
    assert_eq!(
        f.open()
            .await
            .get_step(&StepKey::new(&org, oct, "invoice"))
            .await
            .unwrap(),
        Some("in_1".to_owned())
    );
    for (o, period, st, v) in [
        (&org, oct, "item:0", "ii_a"),
        (&org, oct, "finalize", "open 14205"),
        (&org, nov, "invoice", "in_9"),
        (&other, oct, "invoice", "in_x"),
    ] {
        s.record_step(&StepKey::new(o, period, st), v)
            .await
            .unwrap();
    }
    let step = |a: &str, b: &str| SyncStep {
        step: a.to_owned(),
        result: b.to_owned(),
    };
    assert_eq!(
        s.list_steps(&org, oct).await.unwrap(),
        vec![
            step("finalize", "open 14205"),
            step("invoice", "in_1"),
            step("item:0", "ii_a"),
        ]
    );
    assert_eq!(
        s.list_steps(&org, nov).await.unwrap(),
        vec![step("invoice", "in_9")]
    );
    assert_eq!(
        s.list_steps(&other, oct).await.unwrap(),
        vec![step("invoice", "in_x")]
    );

    for (st, v) in [
        ("", "x"),
        ("x", ""),
        ("y", &*"z".repeat(MAX_SYNC_VALUE_LEN + 1)),
    ] {
        assert!(
            matches!(
                s.record_step(&StepKey::new(&org, oct, st), v).await,
                Err(StoreError::Unavailable(_))
            ),
            "{st:?}/{} bytes",
            v.len()
        );
    }
    let at_limit = "r".repeat(MAX_SYNC_VALUE_LEN);
    assert_eq!(
        s.record_step(&StepKey::new(&org, oct, "big"), &at_limit)
            .await
            .unwrap(),
        at_limit
    );
}

/// Sync runs racing on one step from several handles store one result, and every writer
/// gets that one back.
pub async fn racing_sync_step_writes_keep_one<F: StoreFactory>(f: &F) {
    use tally_core::ports::SyncLedger;
    let org = fresh_org();
    let oct = month("2026-10");
    let mut handles = Vec::new();
    for i in 0..6 {
        let s = Arc::new(f.open().await);
        let org = org.clone();
        handles.push(tokio::spawn(async move {
            s.record_step(&StepKey::new(&org, oct, "invoice"), &format!("in_{i}"))
                .await
                .unwrap()
        }));
    }
    let got = join_all(handles).await;
    let stored = f
        .open()
        .await
        .get_step(&StepKey::new(&org, oct, "invoice"))
        .await
        .unwrap()
        .unwrap();
    assert!(got.iter().all(|r| *r == stored), "{got:?} vs {stored:?}");
    assert_eq!(f.open().await.list_steps(&org, oct).await.unwrap().len(), 1);
}

/// An org's Stripe customer is recorded once; later writes get the first id back.
pub async fn sync_customers_are_recorded_once_per_org<F: StoreFactory>(f: &F) {
    use tally_core::ports::SyncLedger;
    let s = f.open().await;
    let (org, other) = (fresh_org(), fresh_org());
    assert_eq!(s.get_customer(&org).await.unwrap(), None);
    assert_eq!(s.record_customer(&org, "cus_1").await.unwrap(), "cus_1");
    assert_eq!(s.record_customer(&org, "cus_2").await.unwrap(), "cus_1");
    assert_eq!(
        f.open().await.get_customer(&org).await.unwrap(),
        Some("cus_1".to_owned())
    );
    assert_eq!(s.get_customer(&other).await.unwrap(), None);
    assert!(matches!(
        s.record_customer(&other, "").await,
        Err(StoreError::Unavailable(_))
    ));
}

// ---------------------------------------------------------------------------------------
// The plan-limit alert outbox.

fn alert(
    org: &OrgId,
    period: &str,
    meter: &str,
    pct: u8,
    body: &str,
) -> tally_core::ports::StoredAlert {
    use tally_core::ports::{AlertKey, StoredAlert, ThresholdPct};
    StoredAlert {
        key: AlertKey {
            org: org.clone(),
            period: month(period),
            meter: MeterName::parse(meter).unwrap(),
            threshold: ThresholdPct::new(pct).unwrap(),
        },
        body: body.to_owned(),
        claimed_at: ts("2026-11-20T10:00:00.123456Z"),
        lease_until: ts("2026-11-20T10:05:00.123456Z"),
        delivered_at: None,
    }
}

/// The first claim of an (org, month, meter, threshold) wins and stores the alert; later
/// claims, from any handle, get `false` and change nothing. Claimed alerts are pending (per
/// org, from a month on, by month, meter and threshold) until their delivery is recorded,
/// which keeps its first time. Bodies are bounded.
pub async fn alerts_are_claimed_once_and_pending_until_delivered<F: StoreFactory>(f: &F) {
    use tally_core::ports::{AlertLedger, MAX_ALERT_BODY_BYTES};
    let s = f.open().await;
    let (org, other) = (fresh_org(), fresh_org());
    let warn = alert(&org, "2026-11", "api_calls", 80, r#"{"n":1}"#);
    assert_eq!(s.get_alert(&warn.key).await.unwrap(), None);
    assert!(
        s.pending_alerts(&org, month("2026-01"))
            .await
            .unwrap()
            .is_empty()
    );

    assert!(s.claim_alert(&warn).await.unwrap());
    let mut again = warn.clone();
    again.body = r#"{"n":2}"#.to_owned();
    again.claimed_at = ts("2026-11-21T00:00:00Z");
    assert!(!f.open().await.claim_alert(&again).await.unwrap());
    assert_eq!(s.get_alert(&warn.key).await.unwrap(), Some(warn.clone()));

    let reached = alert(&org, "2026-11", "api_calls", 100, "{}");
    let compute = alert(&org, "2026-11", "compute_minutes", 80, "{}");
    let october = alert(&org, "2026-10", "api_calls", 100, "{}");
    let december = alert(&org, "2026-12", "api_calls", 80, "{}");
    for a in [&december, &compute, &reached, &october] {
        assert!(s.claim_alert(a).await.unwrap());
    }
    assert!(
        s.claim_alert(&alert(&other, "2026-11", "api_calls", 80, "{}"))
            .await
            .unwrap()
    );
    let pending = pending_in_a_new_handle(f, &org, "2026-11").await;
    assert_eq!(
        pending,
        vec![
            warn.clone(),
            reached.clone(),
            compute.clone(),
            december.clone()
        ]
    );
    assert_eq!(
        s.pending_alerts(&org, month("2026-10"))
            .await
            .unwrap()
            .len(),
        5
    );

    let first = ts("2026-11-20T10:00:01.5Z");
    s.mark_alert_delivered(&warn.key, first).await.unwrap();
    s.mark_alert_delivered(&warn.key, ts("2026-11-22T00:00:00Z"))
        .await
        .unwrap();
    let stored = f.open().await.get_alert(&warn.key).await.unwrap().unwrap();
    assert_eq!(stored.delivered_at, Some(first));
    assert_eq!(
        s.pending_alerts(&org, month("2026-11")).await.unwrap(),
        vec![reached.clone(), compute, december]
    );
    // Delivered stays delivered: a late claim does not bring it back.
    assert!(!s.claim_alert(&warn).await.unwrap());
    assert_eq!(
        s.pending_alerts(&org, month("2026-11"))
            .await
            .unwrap()
            .len(),
        3
    );

    let never = alert(&org, "2026-09", "api_calls", 80, "{}");
    assert!(matches!(
        s.mark_alert_delivered(&never.key, first).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.get_alert(&never.key).await.unwrap(), None);

    for body in [String::new(), "x".repeat(MAX_ALERT_BODY_BYTES + 1)] {
        let a = alert(&other, "2026-11", "compute_minutes", 100, &body);
        assert!(
            matches!(s.claim_alert(&a).await, Err(StoreError::Unavailable(_))),
            "{} bytes",
            body.len()
        );
        assert_eq!(s.get_alert(&a.key).await.unwrap(), None);
    }
    let big = alert(
        &other,
        "2026-11",
        "compute_minutes",
        100,
        &"y".repeat(MAX_ALERT_BODY_BYTES),
    );
    assert!(s.claim_alert(&big).await.unwrap());
    assert_eq!(s.get_alert(&big.key).await.unwrap(), Some(big));
}

/// Checks racing on one threshold from several handles (processes): exactly one claim
/// wins, so exactly one of them sends the alert.
pub async fn racing_alert_claims_have_one_winner<F: StoreFactory>(f: &F) {
    use tally_core::ports::AlertLedger;
    let org = fresh_org();
    let mut handles = Vec::new();
    for i in 0..6 {
        let s = Arc::new(f.open().await);
        let a = alert(
            &org,
            "2026-11",
            "api_calls",
            100,
            &format!(r#"{{"writer":{i}}}"#),
        );
        handles.push(tokio::spawn(
            async move { s.claim_alert(&a).await.unwrap() },
        ));
    }
    let mut wins = 0;
    for h in handles {
        wins += usize::from(h.await.unwrap());
    }
    assert_eq!(wins, 1);
    let pending = pending_in_a_new_handle(f, &org, "2026-11").await;
    assert_eq!(pending.len(), 1);
}

/// A pending alert's delivery is taken over by a compare-and-set of its lease: of several
/// handles presenting the lease they saw, one wins; a stale lease, a delivered alert or an
/// unknown one is refused.
pub async fn alert_leases_are_taken_over_once<F: StoreFactory>(f: &F) {
    use tally_core::ports::AlertLedger;
    let s = f.open().await;
    let org = fresh_org();
    let a = alert(&org, "2026-11", "compute_minutes", 80, "{}");
    assert!(s.claim_alert(&a).await.unwrap());
    let seen = a.lease_until;
    let mut handles = Vec::new();
    for i in 0..6 {
        let s = Arc::new(f.open().await);
        let key = a.key.clone();
        let until = seen + Duration::minutes(10) + Duration::microseconds(i);
        handles.push(tokio::spawn(async move {
            s.renew_alert_lease(&AlertLease::new(&key, seen, until))
                .await
                .unwrap()
        }));
    }
    let mut wins = 0;
    for h in handles {
        wins += usize::from(h.await.unwrap());
    }
    assert_eq!(wins, 1);
    let now = s.get_alert(&a.key).await.unwrap().unwrap();
    assert!(now.lease_until > seen);
    assert!(
        !s.renew_alert_lease(&AlertLease::new(&a.key, seen, seen))
            .await
            .unwrap()
    );
    let later = now.lease_until + Duration::minutes(5);
    assert!(
        s.renew_alert_lease(&AlertLease::new(&a.key, now.lease_until, later))
            .await
            .unwrap()
    );
    assert_eq!(
        s.get_alert(&a.key).await.unwrap().unwrap().lease_until,
        later
    );

    s.mark_alert_delivered(&a.key, later).await.unwrap();
    assert!(
        !s.renew_alert_lease(&AlertLease::new(
            &a.key,
            later,
            later + Duration::minutes(1)
        ))
        .await
        .unwrap()
    );
    let unknown = alert(&org, "2026-11", "api_calls", 80, "{}");
    assert!(
        !s.renew_alert_lease(&AlertLease::new(&unknown.key, unknown.lease_until, later))
            .await
            .unwrap()
    );
    assert_eq!(s.get_alert(&unknown.key).await.unwrap(), None);
}
