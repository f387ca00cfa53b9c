//! Org security policies on the management API: who may read and set them, their bounds,
//! the lock-out guard, and what they enforce on the org's routes (MFA from the token's
//! `amr`, the IP allowlist against the client address, the session lifetime), plus session
//! tokens, which stop working once their session is revoked. In-memory store, a
//! [`FixedClock`]: cache bounds and lifetimes are crossed by moving the clock.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use tally_api::jwt::{JwtConfig, TokenFacts};
use tally_core::ids::{OrgId, SessionId};
use tally_core::ports::{FixedClock, RevokeSession, SecurityStore};
use tally_core::security::Session;
use tower::ServiceExt;

mod common;
use common::{Answer, World, t, user};

const NOW: &str = "2026-12-05T12:00:00Z";
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-policy";
const OFFICE: &str = "203.0.113.7";
const ELSEWHERE: &str = "198.51.100.1";

/// `org_a` owned by `usr_own` with an admin, a member and a viewer; `org_b` owned by
/// `usr_bown`.
async fn world() -> World {
    World::new(NOW, SECRET).await
}

impl World {
    fn token(&self, who: &str, amr: &[&str]) -> String {
        common::user_token(&self.jwt, who, amr, self.clock.now_utc())
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: &str,
        from: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let req = Request::builder().method(method).uri(uri);
        let body = body.map(|b| b.to_string());
        common::send(&self.app, req, Some(token), from, body).await
    }

    /// The status of `GET uri` with `token`, from no known address.
    async fn get_status(&self, uri: &str, token: &str) -> StatusCode {
        self.call("GET", uri, token, None, None).await.status
    }

    /// The owner, from the office, sets a policy that allows only the office's /24 (no MFA).
    async fn allow_only_the_office(&self) {
        let owner = self.token("usr_own", &[]);
        assert_eq!(
            self.put_policy(
                &owner,
                Some(OFFICE),
                policy(false, &["203.0.113.0/24"], 3600)
            )
            .await
            .status,
            StatusCode::OK
        );
    }

    async fn put_policy(&self, token: &str, from: Option<&str>, policy: Value) -> Answer {
        self.call(
            "PUT",
            "/v1/orgs/org_a/security-policy",
            token,
            from,
            Some(policy),
        )
        .await
    }
}

trait NowUtc {
    fn now_utc(&self) -> DateTime<Utc>;
}

impl NowUtc for FixedClock {
    fn now_utc(&self) -> DateTime<Utc> {
        tally_core::ports::Clock::now(self)
    }
}

fn policy(mfa: bool, list: &[&str], secs: u32) -> Value {
    json!({"require_mfa": mfa, "ip_allowlist": list, "session_lifetime_seconds": secs})
}

fn code(a: &Answer) -> &str {
    a.json["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn owners_and_admins_set_the_policy_and_the_change_is_audited() {
    let w = world().await;
    let owner = w.token("usr_own", &[]);
    let read = w
        .call("GET", "/v1/orgs/org_a/security-policy", &owner, None, None)
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json["require_mfa"], false);
    assert_eq!(read.json["ip_allowlist"], json!([]));
    assert_eq!(read.json["session_lifetime_seconds"], 12 * 3600);
    assert_eq!(read.json["updated_at"], Value::Null);

    let admin = w.token("usr_adm", &[]);
    let set = w
        .put_policy(
            &admin,
            Some(OFFICE),
            policy(false, &["203.0.113.0/24", "2001:db8::/32"], 3600),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.json);
    assert_eq!(
        set.json["ip_allowlist"],
        json!(["203.0.113.0/24", "2001:db8::/32"])
    );
    let read = w
        .call(
            "GET",
            "/v1/orgs/org_a/security-policy",
            &owner,
            Some(OFFICE),
            None,
        )
        .await;
    assert_eq!(read.json, set.json);

    for who in ["usr_mem", "usr_view"] {
        let refused = w
            .put_policy(&w.token(who, &[]), Some(OFFICE), policy(false, &[], 3600))
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{who}");
        assert_eq!(code(&refused), "forbidden");
    }
    // An outsider learns nothing of the org.
    let outsider = w
        .call(
            "GET",
            "/v1/orgs/org_a/security-policy",
            &w.token("usr_bown", &[]),
            Some(OFFICE),
            None,
        )
        .await;
    assert_eq!(outsider.status, StatusCode::NOT_FOUND);

    let audit = w
        .call(
            "GET",
            "/v1/orgs/org_a/audit?action=security_policy.update",
            &owner,
            Some(OFFICE),
            None,
        )
        .await;
    let records = audit.json["records"].as_array().unwrap();
    let allowed: Vec<&Value> = records
        .iter()
        .filter(|r| r["outcome"] == "allowed")
        .collect();
    assert_eq!(allowed.len(), 1, "{records:?}");
    assert_eq!(allowed[0]["actor"], "usr_adm");
    assert_eq!(allowed[0]["before"]["ip_allowlist"], json!([]));
    assert_eq!(
        allowed[0]["after"]["ip_allowlist"],
        json!(["203.0.113.0/24", "2001:db8::/32"])
    );
    assert_eq!(allowed[0]["ip"], OFFICE);
    assert_eq!(
        records.iter().filter(|r| r["outcome"] == "refused").count(),
        2,
        "the member's and the viewer's attempts"
    );
}

#[tokio::test]
async fn policies_out_of_bounds_are_refused_naming_the_field() {
    let w = world().await;
    let owner = w.token("usr_own", &[]);
    let many: Vec<String> = (0..51).map(|i| format!("10.0.{i}.0/24")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let cases = [
        (policy(false, &many, 3600), "ip_allowlist"),
        (policy(false, &["10.0.0.1/8"], 3600), "ip_allowlist"),
        (policy(false, &["office"], 3600), "ip_allowlist"),
        (policy(false, &[], 299), "session_lifetime_seconds"),
        (policy(false, &[], 2_592_001), "session_lifetime_seconds"),
        (json!({"require_mfa": false, "ip_allowlist": []}), "body"),
        (
            json!({"require_mfa": false, "ip_allowlist": [], "session_lifetime_seconds": 600, "x": 1}),
            "body",
        ),
    ];
    for (body, field) in cases {
        let a = w.put_policy(&owner, None, body.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.json);
        assert_eq!(a.json["error"]["field"], field, "{body}");
    }
    let read = w
        .call("GET", "/v1/orgs/org_a/security-policy", &owner, None, None)
        .await;
    assert_eq!(read.json["updated_at"], Value::Null, "nothing was stored");
}

#[tokio::test]
async fn a_policy_that_would_lock_its_author_out_is_refused() {
    let w = world().await;
    let owner = w.token("usr_own", &["pwd"]);
    let a = w
        .put_policy(
            &owner,
            Some(ELSEWHERE),
            policy(false, &["203.0.113.0/24"], 3600),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.json);
    assert_eq!(code(&a), "would_lock_out");
    assert_eq!(a.json["error"]["field"], "ip_allowlist");
    let a = w
        .put_policy(&owner, Some(OFFICE), policy(true, &[], 3600))
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.json);
    assert_eq!(a.json["error"]["field"], "require_mfa");
    // Nothing changed: the org is still open to everyone.
    let from_anywhere = w
        .call("GET", "/v1/orgs/org_a", &owner, Some(ELSEWHERE), None)
        .await;
    assert_eq!(from_anywhere.status, StatusCode::OK);
    // From inside, with MFA, both are accepted.
    let mfa = w.token("usr_own", &["pwd", "otp"]);
    let a = w
        .put_policy(&mfa, Some(OFFICE), policy(true, &["203.0.113.0/24"], 3600))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
}

#[tokio::test]
async fn the_allowlist_refuses_users_from_outside_on_the_orgs_routes_only() {
    let w = world().await;
    w.allow_only_the_office().await;
    let viewer = w.token("usr_view", &[]);
    for uri in [
        "/v1/orgs/org_a",
        "/v1/orgs/org_a/members",
        "/v1/orgs/org_a/projects",
    ] {
        let inside = w.call("GET", uri, &viewer, Some(OFFICE), None).await;
        assert_eq!(inside.status, StatusCode::OK, "{uri}");
        let outside = w.call("GET", uri, &viewer, Some(ELSEWHERE), None).await;
        assert_eq!(outside.status, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(code(&outside), "ip_not_allowed");
        // No address known (no peer, no trusted proxy): closed, never open.
        let unknown = w.call("GET", uri, &viewer, None, None).await;
        assert_eq!(code(&unknown), "ip_not_allowed", "{uri}");
    }
    // A client's own X-Forwarded-For is not believed without trusted proxies.
    let mut req = Request::get("/v1/orgs/org_a")
        .header(header::AUTHORIZATION, format!("Bearer {viewer}"))
        .header("x-forwarded-for", OFFICE)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(ConnectInfo(
        format!("{ELSEWHERE}:1").parse::<SocketAddr>().unwrap(),
    ));
    let spoofed = w.app.clone().oneshot(req).await.unwrap();
    assert_eq!(spoofed.status(), StatusCode::FORBIDDEN);
    // Another org, and the caller's org list, are untouched by org_a's allowlist.
    let bowner = w.token("usr_bown", &[]);
    let b = w
        .call("GET", "/v1/orgs/org_b", &bowner, Some(ELSEWHERE), None)
        .await;
    assert_eq!(b.status, StatusCode::OK);
    let mine = w
        .call("GET", "/v1/me/orgs", &viewer, Some(ELSEWHERE), None)
        .await;
    assert_eq!(mine.status, StatusCode::OK);
    // An outsider is still told nothing (404 before any policy is consulted).
    let outsider = w
        .call("GET", "/v1/orgs/org_a", &bowner, Some(ELSEWHERE), None)
        .await;
    assert_eq!(outsider.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn mfa_is_required_from_the_tokens_amr() {
    let w = world().await;
    let mfa_owner = w.token("usr_own", &["pwd", "mfa"]);
    assert_eq!(
        w.put_policy(&mfa_owner, None, policy(true, &[], 3600))
            .await
            .status,
        StatusCode::OK
    );
    for (amr, ok) in [
        (vec![], false),
        (vec!["pwd"], false),
        (vec!["pwd", "MFA"], false),
        (vec!["pwd", "otp"], true),
        (vec!["hwk"], true),
        (vec!["swk"], true),
        (vec!["mfa"], true),
    ] {
        let a = w
            .call(
                "GET",
                "/v1/orgs/org_a",
                &w.token("usr_mem", &amr),
                None,
                None,
            )
            .await;
        if ok {
            assert_eq!(a.status, StatusCode::OK, "{amr:?}");
        } else {
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{amr:?}");
            assert_eq!(code(&a), "mfa_required", "{amr:?}");
        }
    }
    // Claiming a second factor takes a token signed by the server: one signed with
    // another secret is refused whatever its amr says.
    let forged = JwtConfig::hs256(b"another-secret-another-secret-another")
        .unwrap()
        .mint_with(
            &user("usr_mem"),
            t(NOW),
            TimeDelta::hours(1),
            &TokenFacts {
                amr: vec!["mfa".into()],
                session: None,
            },
        )
        .unwrap();
    let a = w.call("GET", "/v1/orgs/org_a", &forged, None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // org_b does not require MFA.
    let b = w
        .call(
            "GET",
            "/v1/orgs/org_b",
            &w.token("usr_bown", &[]),
            None,
            None,
        )
        .await;
    assert_eq!(b.status, StatusCode::OK);
}

/// A session token for `who`'s stored session `sid`, issued now for an hour.
async fn session_token(w: &World, who: &str, ttl: i64) -> (String, SessionId) {
    let now = w.clock.now_utc();
    let sid = SessionId::from_random(rand::random());
    w.store
        .create_session(&Session {
            id: sid.clone(),
            user_id: user(who),
            created_at: now,
            expires_at: now + TimeDelta::seconds(ttl),
            ip: None,
            user_agent: None,
            revoked_at: None,
        })
        .await
        .unwrap();
    let token = w
        .jwt
        .mint_with(
            &user(who),
            now,
            TimeDelta::seconds(ttl),
            &TokenFacts {
                amr: vec![],
                session: Some((sid.clone(), now)),
            },
        )
        .unwrap();
    (token, sid)
}

#[tokio::test]
async fn a_revoked_session_stops_its_token_within_the_cache_bound() {
    let w = world().await;
    let (token, sid) = session_token(&w, "usr_mem", 3600).await;
    assert_eq!(w.get_status("/v1/orgs/org_a", &token).await, StatusCode::OK);
    w.store
        .revoke_session(&RevokeSession {
            user: &user("usr_mem"),
            id: &sid,
            at: w.clock.now_utc(),
        })
        .await
        .unwrap();
    // Another process revoked it: this one trusts its lookup for at most 2 s.
    w.clock.advance(TimeDelta::seconds(2));
    let a = w.call("GET", "/v1/orgs/org_a", &token, None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.json);
    assert!(a.message().contains("revoked"), "{}", a.json);
    // A session token whose session was never stored is refused too, and so is one of
    // another user's session.
    let member_token_of = |sid: SessionId| {
        w.jwt
            .mint_with(
                &user("usr_mem"),
                w.clock.now_utc(),
                TimeDelta::hours(1),
                &TokenFacts {
                    amr: vec![],
                    session: Some((sid, w.clock.now_utc())),
                },
            )
            .unwrap()
    };
    let ghost = member_token_of(SessionId::from_random(rand::random()));
    assert_eq!(
        w.get_status("/v1/me/orgs", &ghost).await,
        StatusCode::UNAUTHORIZED
    );
    let (_, adm_sid) = session_token(&w, "usr_adm", 3600).await;
    let borrowed = member_token_of(adm_sid);
    assert_eq!(
        w.get_status("/v1/me/orgs", &borrowed).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_session_older_than_the_orgs_lifetime_is_refused_there() {
    let w = world().await;
    let owner = w.token("usr_own", &[]);
    assert_eq!(
        w.put_policy(&owner, None, policy(false, &[], 300))
            .await
            .status,
        StatusCode::OK
    );
    let (token, _) = session_token(&w, "usr_mem", 3600).await;
    assert_eq!(w.get_status("/v1/orgs/org_a", &token).await, StatusCode::OK);
    w.clock.advance(TimeDelta::seconds(301));
    let a = w.call("GET", "/v1/orgs/org_a", &token, None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.json);
    // The session itself lives on where no policy shortens it.
    assert_eq!(w.get_status("/v1/me/orgs", &token).await, StatusCode::OK);
}

/// An API key is its org's: on the management API too (`GET /v1/usage`) a key used from
/// outside the org's allowlist is refused, as on ingest.
#[tokio::test]
async fn the_allowlist_holds_for_the_orgs_api_keys_on_the_management_api() {
    use tally_core::ids::ApiKeyId;
    use tally_core::ports::ApiKeyStore;
    use tally_core::tenant::{ApiKey, KeyScope};
    const KEY: &str = "tk_live_5e1f0c3a9b7d2e4f6a8c0b1d3e5f7a9c2b4d6e8f0a1c3e5b7d9f2a4c6e8b0d1f";
    let w = world().await;
    let id = ApiKeyId::parse("key_policy1").unwrap();
    let created_at = t("2026-01-01T00:00:00Z");
    w.store
        .create_api_key(&ApiKey {
            name: "reader".into(),
            scopes: vec![KeyScope::UsageRead],
            ..ApiKey::new(id, OrgId::parse("org_a").unwrap(), KEY, created_at)
        })
        .await
        .unwrap();
    let uri = "/v1/usage?meter=api_calls&granularity=day&from=2026-12-01&to=2026-12-05";
    // Before any policy the key reads its org's usage from anywhere.
    let before = w.call("GET", uri, KEY, Some(ELSEWHERE), None).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.json);
    w.allow_only_the_office().await;
    let inside = w.call("GET", uri, KEY, Some(OFFICE), None).await;
    assert_eq!(inside.status, StatusCode::OK, "{}", inside.json);
    let outside = w.call("GET", uri, KEY, Some(ELSEWHERE), None).await;
    assert_eq!(outside.status, StatusCode::FORBIDDEN, "{}", outside.json);
    assert_eq!(code(&outside), "ip_not_allowed");
}
