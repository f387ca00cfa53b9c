//! The management API signing people in with the emulator's Amazon Cognito (moto's
//! `cognito-idp`, as the template's user pool in production): a pool, a client and users
//! made through Cognito's API, ID tokens from a password sign-in, verified against the keys
//! the emulator publishes for the pool. The issuer is the one moto writes in `iss` (real
//! Cognito's form, `https://cognito-idp.us-east-1.amazonaws.com/POOL`); the keys are fetched
//! from the emulator (`--oidc-jwks-url`), since that issuer's discovery URL is AWS's.
//!
//! Needs `TALLY_TEST_AWS_ENDPOINT` (the test fails, not skips, without it).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Utc;
use tally_api::{ApiState, router};
use tally_core::MeterCatalogue;
use tally_core::ids::{OrgId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::{OrgStore, SystemClock, UserStore};
use tally_core::tenant::{Org, User};
use tally_oidc::{OidcSettings, OidcVerifier};
use tally_store::MemoryStore;
use tally_tests::{aws, cognito};
use tower::ServiceExt;

const PASSWORD: &str = "Correct-Horse-9";

async fn get_org(app: &axum::Router, org: &str, token: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .uri(format!("/v1/orgs/{org}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn cognito_id_tokens_sign_in_the_user_of_their_verified_email() {
    let endpoint = aws::endpoint();
    let pool = cognito::create_user_pool(&endpoint, &aws::fresh_name("tally-users")).await;
    let client = cognito::create_client(&endpoint, &pool, "tally-api").await;
    let suffix = aws::fresh_name("u");
    let ann_email = format!("Ann.{suffix}@Example.com");
    cognito::create_user(&endpoint, &pool, "ann", &ann_email, true, PASSWORD).await;
    cognito::create_user(
        &endpoint,
        &pool,
        "eve",
        &format!("eve.{suffix}@example.com"),
        false,
        PASSWORD,
    )
    .await;
    cognito::create_user(
        &endpoint,
        &pool,
        "bob",
        &format!("bob.{suffix}@example.com"),
        true,
        PASSWORD,
    )
    .await;

    // Tally knows Ann (owner of org_a) and Eve, by email; not Bob.
    let store = MemoryStore::new();
    let ann = UserId::parse("usr_ann").unwrap();
    for (id, email) in [
        (ann.clone(), ann_email.clone()),
        (
            UserId::parse("usr_eve").unwrap(),
            format!("eve.{suffix}@example.com"),
        ),
    ] {
        store
            .ensure_user(&User {
                id,
                email,
                created_at: Utc::now(),
            })
            .await
            .unwrap();
    }
    store
        .create_org(&Org {
            id: OrgId::parse("org_a").unwrap(),
            name: "Alpha".into(),
            slug: "alpha".into(),
            plan: PlanId::Starter,
            owner_id: ann,
            created_at: Utc::now(),
            deleted_at: None,
        })
        .await
        .unwrap();
    let oidc = OidcVerifier::new(OidcSettings {
        issuer: cognito::issuer(&pool),
        audience: client.clone(),
        jwks_url: Some(cognito::jwks_url(&endpoint, &pool)),
    })
    .unwrap();
    let store = Arc::new(store);
    let app = router(
        ApiState::new(
            store.clone(),
            store,
            Arc::new(MeterCatalogue::default()),
            Arc::new(SystemClock),
        )
        .with_oidc(oidc),
    );

    let tokens = cognito::sign_in(&endpoint, &pool, &client, "ann", PASSWORD).await;
    let (status, body) = get_org(&app, "org_a", &tokens.id).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The access token has no `aud` and no email: refused, saying so.
    let (status, _) = get_org(&app, "org_a", &tokens.access).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Eve's email is not verified; Bob is no Tally user.
    let eve = cognito::sign_in(&endpoint, &pool, &client, "eve", PASSWORD).await;
    let (status, body) = get_org(&app, "org_a", &eve.id).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("not verified"), "{body}");
    let bob = cognito::sign_in(&endpoint, &pool, &client, "bob", PASSWORD).await;
    let (status, body) = get_org(&app, "org_a", &bob.id).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("no Tally user"), "{body}");

    // Another pool's token (same emulator key, another issuer and audience) is refused.
    let other = cognito::create_user_pool(&endpoint, &aws::fresh_name("tally-other")).await;
    let other_client = cognito::create_client(&endpoint, &other, "elsewhere").await;
    cognito::create_user(&endpoint, &other, "ann", &ann_email, true, PASSWORD).await;
    let foreign = cognito::sign_in(&endpoint, &other, &other_client, "ann", PASSWORD).await;
    let (status, _) = get_org(&app, "org_a", &foreign.id).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
