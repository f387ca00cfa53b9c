//! Sign-in sessions on the management API: opening one with a user token (`POST
//! /v1/sessions`), its lifetime (the strictest of the user's orgs), listing and revoking
//! one's own, and org admins listing and revoking their members' sessions, with the role
//! table and tenant bounds. In-memory store and a [`FixedClock`]: the session cache's bound
//! is crossed by moving the clock, never by sleeping. Two routers on one store stand for
//! two server processes.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Router;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use tally_api::ApiState;
use tally_api::sessions::SESSION_CACHE_TTL_SECS;
use tally_core::MeterCatalogue;
use tally_core::ids::{OrgId, SessionId};
use tally_core::ports::{AuditLog, Clock, SecurityStore};
use tally_core::security::{DEFAULT_SESSION_LIFETIME_SECS, MAX_SESSIONS_PER_USER, Session};
use tally_core::tenant::{AuditOutcome, AuditQuery};

mod common;
use common::{Answer, World, t, user};

const NOW: &str = "2026-12-05T12:00:00Z";
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-sessions";
const FROM: &str = "203.0.113.7";

/// `org_a` owned by `usr_own` with an admin, a member and a viewer; `org_b` owned by
/// `usr_bown`, who is in no other org.
async fn world() -> World {
    World::new(NOW, SECRET).await
}

impl World {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A plain user token (no session), as `tally token create` mints, with `amr`.
    fn token(&self, who: &str, amr: &[&str]) -> String {
        common::user_token(&self.jwt, who, amr, self.now())
    }

    async fn call_on(
        &self,
        app: &Router,
        method: &str,
        uri: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::USER_AGENT, "sessions-test/1");
        let body = body.map(|b| b.to_string());
        common::send(app, req, Some(bearer), Some(FROM), body).await
    }

    async fn call(&self, method: &str, uri: &str, bearer: &str) -> Answer {
        self.call_on(&self.app, method, uri, bearer, None).await
    }

    /// `POST /v1/sessions` with a plain token of `who` signed in with `amr`: the answer.
    async fn post_session(&self, who: &str, amr: &[&str]) -> Answer {
        self.call("POST", "/v1/sessions", &self.token(who, amr))
            .await
    }

    /// `DELETE /v1/sessions/{sid}` (revoking one's own session) with `bearer`.
    async fn revoke_own(&self, sid: &str, bearer: &str) -> Answer {
        self.call("DELETE", &format!("/v1/sessions/{sid}"), bearer)
            .await
    }

    /// `DELETE /v1/orgs/{org}/sessions/{sid}` (an admin revoking a member's) with `bearer`.
    async fn revoke_in(&self, org: &str, sid: &str, bearer: &str) -> Answer {
        self.call("DELETE", &format!("/v1/orgs/{org}/sessions/{sid}"), bearer)
            .await
    }

    /// The stored session `sid` of `who`, which must exist.
    async fn stored_session(&self, who: &str, sid: &str) -> Session {
        self.store
            .get_session(&user(who), &SessionId::parse(sid).unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    /// Opens a session for `who` (signed in with `amr`) and answers its token and id.
    async fn open(&self, who: &str, amr: &[&str]) -> (String, String) {
        let a = self.post_session(who, amr).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.json);
        (
            a.json["token"].as_str().unwrap().to_owned(),
            a.json["session"]["id"].as_str().unwrap().to_owned(),
        )
    }

    async fn put_policy(&self, org: &str, owner: &str, policy: Value) {
        let a = self
            .call_on(
                &self.app,
                "PUT",
                &format!("/v1/orgs/{org}/security-policy"),
                &self.token(owner, &["pwd", "otp"]),
                Some(policy),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    }
}

/// A session policy: MFA required or not, no allowlist, sessions of `secs` seconds.
fn policy(mfa: bool, secs: u32) -> Value {
    json!({"require_mfa": mfa, "ip_allowlist": [], "session_lifetime_seconds": secs})
}

/// When the session a `POST /v1/sessions` answer opened expires.
fn expires_at(a: &Answer) -> DateTime<Utc> {
    t(a.json["session"]["expires_at"].as_str().unwrap())
}

fn code(a: &Answer) -> &str {
    a.json["error"]["code"].as_str().unwrap_or("")
}

fn ids(a: &Answer) -> Vec<String> {
    a.json["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_user_token_opens_a_session_that_is_listed_and_revoked_by_its_user() {
    let w = world().await;
    let a = w.post_session("usr_mem", &["pwd"]).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.json);
    let s = &a.json["session"];
    assert_eq!(s["user_id"], "usr_mem");
    assert_eq!(s["ip"], FROM);
    assert_eq!(s["user_agent"], "sessions-test/1");
    assert_eq!(s["current"], true);
    assert!(s["revoked_at"].is_null());
    let expires = t(s["expires_at"].as_str().unwrap());
    assert_eq!(
        expires - w.now(),
        TimeDelta::seconds(i64::from(DEFAULT_SESSION_LIFETIME_SECS)),
        "no org of the user sets a lifetime: the default, 12 hours"
    );
    let token = a.json["token"].as_str().unwrap().to_owned();
    let sid = s["id"].as_str().unwrap().to_owned();
    // The token is a session token of this server: its `sid` names the stored session.
    let (who, facts) = w.jwt.verify_facts(&token, w.now()).unwrap();
    assert_eq!(who, user("usr_mem"));
    assert_eq!(facts.session.unwrap().0.as_str(), sid);
    assert_eq!(facts.amr, ["pwd"]);

    assert_eq!(
        w.call("GET", "/v1/orgs/org_a", &token).await.status,
        StatusCode::OK
    );
    let (_, second) = w.open("usr_mem", &[]).await;
    let mine = w.call("GET", "/v1/sessions", &token).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.json);
    let listed = ids(&mine);
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&sid) && listed.contains(&second));
    for s in mine.json["sessions"].as_array().unwrap() {
        assert_eq!(s["current"], s["id"] == sid.as_str(), "{s}");
    }

    // Revoked by its user: refused at once by the process that revoked it.
    let r = w.revoke_own(&sid, &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(t(r.json["revoked_at"].as_str().unwrap()), w.now());
    let refused = w.call("GET", "/v1/orgs/org_a", &token).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.message().contains("revoked"), "{}", refused.json);
    let left = w
        .call("GET", "/v1/sessions", &w.token("usr_mem", &[]))
        .await;
    assert_eq!(ids(&left), std::slice::from_ref(&second));
    // Revoking again keeps the first time; an unknown or malformed id is 404.
    w.clock.advance(TimeDelta::seconds(60));
    let again = w.revoke_own(&sid, &w.token("usr_mem", &[])).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json["revoked_at"], r.json["revoked_at"]);
    for bad in ["ses_0000", "nonsense"] {
        let a = w.revoke_own(bad, &w.token("usr_mem", &[])).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{bad}");
    }
}

#[tokio::test]
async fn the_session_lives_as_long_as_the_strictest_of_the_users_orgs_allows() {
    let w = world().await;
    w.put_policy("org_a", "usr_own", policy(false, 900)).await;
    let a = w.post_session("usr_mem", &[]).await;
    let expires = expires_at(&a);
    assert_eq!(expires - w.now(), TimeDelta::seconds(900));
    let token = a.json["token"].as_str().unwrap();
    let (_, facts) = w.jwt.verify_facts(token, w.now()).unwrap();
    assert!(facts.session.is_some());
    // The token itself ends with the session.
    assert!(
        w.jwt
            .verify(token, w.now() + TimeDelta::seconds(960))
            .is_err()
    );
    // org_b's owner is in no org that shortens it.
    let b = w.post_session("usr_bown", &[]).await;
    let expires = expires_at(&b);
    assert_eq!(
        expires - w.now(),
        TimeDelta::seconds(i64::from(DEFAULT_SESSION_LIFETIME_SECS))
    );
    // An org may also allow longer than the default: two days for org_b's only member.
    w.put_policy("org_b", "usr_bown", policy(false, 172_800))
        .await;
    let longer = w.post_session("usr_bown", &[]).await;
    let expires = expires_at(&longer);
    assert_eq!(expires - w.now(), TimeDelta::seconds(172_800));
}

#[tokio::test]
async fn a_session_keeps_the_sign_in_factors_an_mfa_org_asks_for() {
    let w = world().await;
    w.put_policy("org_a", "usr_own", policy(true, 3600)).await;
    let (with_mfa, _) = w.open("usr_mem", &["pwd", "otp"]).await;
    let (without, _) = w.open("usr_mem", &["pwd"]).await;
    assert_eq!(
        w.call("GET", "/v1/orgs/org_a", &with_mfa).await.status,
        StatusCode::OK
    );
    let a = w.call("GET", "/v1/orgs/org_a", &without).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(code(&a), "mfa_required");
}

#[tokio::test]
async fn a_session_token_opens_no_session_and_a_user_holds_a_bounded_number() {
    let w = world().await;
    let (token, _) = w.open("usr_mem", &[]).await;
    let a = w.call("POST", "/v1/sessions", &token).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.json);
    assert_eq!(code(&a), "session_token");
    // A user holds at most MAX_SESSIONS_PER_USER live sessions (opened a tenth of a
    // second apart, within the user's request rate).
    for _ in 1..MAX_SESSIONS_PER_USER {
        w.clock.advance(TimeDelta::milliseconds(100));
        w.open("usr_mem", &[]).await;
    }
    let a = w.post_session("usr_mem", &[]).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.json);
    assert_eq!(code(&a), "too_many_sessions");
    assert_eq!(a.json["error"]["field"], "sessions");
    // One ends: there is room again.
    let plain = w.token("usr_mem", &[]);
    let oldest = ids(&w.call("GET", "/v1/sessions", &plain).await)[0].clone();
    let a = w.revoke_own(&oldest, &plain).await;
    assert_eq!(a.status, StatusCode::OK);
    w.open("usr_mem", &[]).await;
}

#[tokio::test]
async fn a_session_revoked_by_another_process_stops_within_the_cache_bound() {
    let w = world().await;
    let other = w.other_process();
    let (token, sid) = w.open("usr_mem", &[]).await;
    // The other process has looked the session up (and cached it).
    let seen = w
        .call_on(&other, "GET", "/v1/orgs/org_a", &token, None)
        .await;
    assert_eq!(seen.status, StatusCode::OK);
    let admin = w.token("usr_adm", &[]);
    let r = w.revoke_in("org_a", &sid, &admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["user_id"], "usr_mem");
    // At once where it was revoked ...
    assert_eq!(
        w.call("GET", "/v1/orgs/org_a", &token).await.status,
        StatusCode::UNAUTHORIZED
    );
    // ... and in the other process once its lookup is SESSION_CACHE_TTL_SECS old.
    w.clock.advance(TimeDelta::seconds(SESSION_CACHE_TTL_SECS));
    let a = w
        .call_on(&other, "GET", "/v1/orgs/org_a", &token, None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.json);
}

#[tokio::test]
async fn owners_and_admins_list_and_revoke_their_members_sessions_and_the_revocation_is_audited() {
    let w = world().await;
    let (_, mem_sid) = w.open("usr_mem", &[]).await;
    let (adm_token, adm_sid) = w.open("usr_adm", &[]).await;
    let (_, bown_sid) = w.open("usr_bown", &[]).await;
    for (who, listed) in [
        ("usr_own", true),
        ("usr_adm", true),
        ("usr_mem", false),
        ("usr_view", false),
    ] {
        let a = w
            .call("GET", "/v1/orgs/org_a/sessions", &w.token(who, &[]))
            .await;
        if listed {
            assert_eq!(a.status, StatusCode::OK, "{who}: {}", a.json);
            let got = ids(&a);
            assert!(got.contains(&mem_sid) && got.contains(&adm_sid), "{who}");
            assert!(!got.contains(&bown_sid), "{who} saw a stranger's session");
            assert_eq!(a.json["truncated"], false);
        } else {
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{who}: {}", a.json);
        }
    }
    // The admin's own session token marks itself current in the org's list.
    let a = w.call("GET", "/v1/orgs/org_a/sessions", &adm_token).await;
    for s in a.json["sessions"].as_array().unwrap() {
        assert_eq!(s["current"], s["id"] == adm_sid.as_str(), "{s}");
    }
    // A member cannot revoke another member's session, through either route.
    let member = w.token("usr_mem", &[]);
    let a = w.revoke_in("org_a", &adm_sid, &member).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.json);
    let a = w.revoke_own(&adm_sid, &member).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.json);
    let adm = w.stored_session("usr_adm", &adm_sid).await;
    assert!(
        adm.revoked_at.is_none(),
        "the member revoked the admin's session"
    );
    // An admin of org_a neither lists nor revokes the session of a user only in org_b.
    let admin = w.token("usr_adm", &[]);
    let a = w.revoke_in("org_a", &bown_sid, &admin).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.json);
    let a = w.call("GET", "/v1/orgs/org_b/sessions", &admin).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.json);
    let a = w.revoke_in("org_b", &bown_sid, &admin).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.json);
    let bown = w.stored_session("usr_bown", &bown_sid).await;
    assert!(bown.revoked_at.is_none());
    // The owner revokes the member's session: allowed and on record with before and after.
    let a = w
        .revoke_in("org_a", &mem_sid, &w.token("usr_own", &[]))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let audit = w
        .store
        .list_audit(&AuditQuery {
            org: OrgId::parse("org_a").unwrap(),
            from: None,
            to: None,
            actor: None,
            action: Some("session.revoke".into()),
            resource: None,
            limit: 50,
            cursor: None,
            now: w.now(),
        })
        .await
        .unwrap()
        .records;
    let allowed: Vec<_> = audit
        .iter()
        .filter(|r| r.outcome == AuditOutcome::Allowed)
        .collect();
    assert_eq!(allowed.len(), 1, "{audit:?}");
    assert_eq!(allowed[0].actor, "usr_own");
    assert_eq!(allowed[0].resource, format!("session:{mem_sid}"));
    assert!(allowed[0].before.as_ref().unwrap()["revoked_at"].is_null());
    assert!(!allowed[0].after.as_ref().unwrap()["revoked_at"].is_null());
    assert_eq!(allowed[0].ip.as_deref(), Some(FROM));
    let refused = audit
        .iter()
        .filter(|r| r.outcome == AuditOutcome::Refused)
        .count();
    assert_eq!(refused, 2, "the member's try and the stranger's session");
    let left = ids(&w.call("GET", "/v1/orgs/org_a/sessions", &admin).await);
    assert!(!left.contains(&mem_sid));
}

/// A lookup that read the session live just before this process revoked it does not undo
/// the revocation in this process's cache (it would otherwise stand for a whole TTL).
#[tokio::test]
async fn a_stale_live_lookup_never_replaces_a_cached_revocation() {
    let w = world().await;
    let (_, sid) = w.open("usr_mem", &["pwd"]).await;
    let key = (user("usr_mem"), SessionId::parse(&sid).unwrap());
    let live = w.store.get_session(&key.0, &key.1).await.unwrap();
    assert!(live.as_ref().unwrap().revoked_at.is_none());
    let state = ApiState::new(
        Arc::new(w.store.clone()),
        Arc::new(w.store.clone()),
        Arc::new(MeterCatalogue::default()),
        w.clock.clone(),
    );
    let revoked = tally_api::sessions::revoke(&state, &key.0, &key.1)
        .await
        .unwrap();
    assert!(revoked.unwrap().revoked_at.is_some());
    // The stale answer of a lookup that raced the revocation arrives last.
    tally_api::sessions::remember(&state, key.clone(), live.clone(), w.now());
    let cached = state.sessions.get(&key, w.now()).unwrap();
    assert!(
        cached.unwrap().revoked_at.is_some(),
        "the revocation stays cached"
    );
    // A fresh revocation still replaces a live entry.
    let other = (
        user("usr_mem"),
        SessionId::parse(&w.open("usr_mem", &["pwd"]).await.1).unwrap(),
    );
    let fresh = w.store.get_session(&other.0, &other.1).await.unwrap();
    tally_api::sessions::remember(&state, other.clone(), fresh, w.now());
    tally_api::sessions::revoke(&state, &other.0, &other.1)
        .await
        .unwrap();
    assert!(
        state
            .sessions
            .get(&other, w.now())
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
}
