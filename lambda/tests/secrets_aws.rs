//! Secrets read at run time from Secrets Manager (`tally_lambda::secrets`) on the emulator:
//! a rotated secret (a new `AWSCURRENT` version, as a rotation or `put-secret-value`
//! leaves it) is used once the refresh interval has passed on the test's clock, and not
//! before; the management API and the Stripe webhook receiver follow it without being
//! rebuilt by hand, and so do the billing run's Stripe adapter and alert signing; an outage
//! keeps the value read earlier. Needs `TALLY_TEST_AWS_ENDPOINT`
//! (the test command starts the emulator).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_secretsmanager::Client as SecretsClient;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::{Value, json};
use tally_core::plan::PlanId;
use tally_core::ports::{Clock, FixedClock};
use tally_lambda::handlers::http::{api_router, route_current, stripe_webhook_router};
use tally_lambda::secrets::{STRIPE_WEBHOOK_SECRET_FIELD, Secret};
use tally_tests::aws;
use tally_tests::conformance::fixtures::create_owned_org;

const REFRESH: Duration = Duration::from_secs(300);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 5, 12, 0, 0).unwrap()
}

/// A 64-character secret value, distinct per `c`.
fn value(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

/// A new secret holding `value`; its ARN.
async fn create_secret(client: &SecretsClient, value: &str) -> String {
    client
        .create_secret()
        .name(aws::fresh_name("tally-secret"))
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned()
}

/// What a rotation leaves behind: a new current version.
async fn rotate(client: &SecretsClient, arn: &str, value: &str) {
    client
        .put_secret_value()
        .secret_id(arn)
        .secret_string(value)
        .send()
        .await
        .unwrap();
}

async fn secrets_client() -> SecretsClient {
    SecretsClient::new(&aws::sdk_config().await)
}

/// A new secret holding `value(c)`, read once through a [`Secret`] on a fixed clock at
/// [`t0`]: the client, its ARN, the clock and the `Secret`.
async fn secret_read_once(c: char) -> (SecretsClient, String, Arc<FixedClock>, Secret) {
    let client = secrets_client().await;
    let arn = create_secret(&client, &value(c)).await;
    let clock = Arc::new(FixedClock::at(t0()));
    let secret = Secret::new(client.clone(), &arn, None, REFRESH, clock.clone());
    assert_eq!(&*secret.current().await.unwrap(), value(c));
    (client, arn, clock, secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_is_used_once_the_refresh_interval_has_passed_and_not_before() {
    let (client, arn, clock, secret) = secret_read_once('a').await;

    rotate(&client, &arn, &value('b')).await;
    assert_eq!(&*secret.current().await.unwrap(), value('a'), "still fresh");
    clock.advance(TimeDelta::seconds(299));
    assert_eq!(&*secret.current().await.unwrap(), value('a'), "1 s short");
    clock.advance(TimeDelta::seconds(1));
    assert_eq!(&*secret.current().await.unwrap(), value('b'), "refreshed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_cannot_be_read_again_keeps_the_value_read_earlier() {
    let (client, arn, clock, secret) = secret_read_once('a').await;
    client
        .delete_secret()
        .secret_id(&arn)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    clock.advance(TimeDelta::seconds(301));
    assert_eq!(&*secret.current().await.unwrap(), value('a'));

    // With nothing read before, the failure is the caller's, naming the ARN.
    let fresh = Secret::new(client, &arn, None, REFRESH, clock);
    let e = fresh.current().await.unwrap_err().to_string();
    assert!(e.contains(&arn) && e.contains("cannot read secret"), "{e}");
}

async fn get_my_orgs(
    router: &tally_lambda::secrets::Derived<axum::Router>,
    token: &str,
) -> StatusCode {
    let request = Request::get("/v1/me/orgs")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    route_current(router, request).await.status()
}

/// The management API verifies users' JWTs with the JWT secret as it is now: after a
/// rotation and the refresh interval, tokens of the new secret are accepted and those of
/// the old one refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_accepts_the_rotated_jwt_secret_after_the_refresh_interval() {
    let config = aws::sdk_config().await;
    let store = Arc::new(aws::fresh_dynamo_store(&config, "tally-secrets-api").await);
    let clock = Arc::new(FixedClock::at(t0()));
    let org = create_owned_org(
        store.as_ref(),
        (3, 4),
        "ada@example.com",
        "Acme",
        PlanId::Starter,
        t0() - TimeDelta::days(1),
    )
    .await;

    let client = SecretsClient::new(&config);
    let (old, new) = (value('o'), value('n'));
    let arn = create_secret(&client, &old).await;
    let state = common::api_state(store.clone(), clock.clone());
    let router = api_router(
        state,
        Secret::new(client.clone(), &arn, None, REFRESH, clock.clone()),
    );
    let token = |secret: &str| {
        tally_api::jwt::JwtConfig::hs256(secret.as_bytes())
            .unwrap()
            .mint(&org.owner_id, t0(), TimeDelta::hours(1))
            .unwrap()
    };
    let (old_token, new_token) = (token(&old), token(&new));
    assert_eq!(get_my_orgs(&router, &old_token).await, StatusCode::OK);
    assert_eq!(
        get_my_orgs(&router, &new_token).await,
        StatusCode::UNAUTHORIZED
    );

    rotate(&client, &arn, &new).await;
    assert_eq!(
        get_my_orgs(&router, &old_token).await,
        StatusCode::OK,
        "not yet refreshed"
    );
    clock.advance(TimeDelta::seconds(300));
    assert_eq!(get_my_orgs(&router, &new_token).await, StatusCode::OK);
    assert_eq!(
        get_my_orgs(&router, &old_token).await,
        StatusCode::UNAUTHORIZED
    );

    // A secret rotated to something the API refuses (shorter than 32 bytes) is loud: 503,
    // not the old secret kept working behind the operator's back.
    rotate(&client, &arn, "short").await;
    clock.advance(TimeDelta::seconds(300));
    assert_eq!(
        get_my_orgs(&router, &new_token).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

async fn post_webhook(
    router: &tally_lambda::secrets::Derived<axum::Router>,
    signing_secret: &str,
    now: DateTime<Utc>,
) -> (StatusCode, Value) {
    let body = json!({
        "id": "evt_1",
        "object": "event",
        "type": "customer.created",
        "data": {"object": {"id": "cus_1", "object": "customer"}},
    })
    .to_string();
    let signature = tally_billing::webhook::sign(signing_secret, now.timestamp(), body.as_bytes());
    let request = Request::post(tally_billing::webhook::WEBHOOK_PATH)
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(Body::from(body))
        .unwrap();
    let response = route_current(router, request).await;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// The Stripe webhook receiver checks signatures with the `webhook_signing_secret` field of
/// the Stripe secret as it is now; a secret that cannot be read is a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stripe_webhook_follows_a_rotated_signing_secret() {
    let config = aws::sdk_config().await;
    let store = Arc::new(aws::fresh_dynamo_store(&config, "tally-secrets-webhook").await);
    let clock = Arc::new(FixedClock::at(t0()));
    let client = SecretsClient::new(&config);
    let stripe_json = |whsec: &str| {
        json!({"secret_key": "sk_test_123", "webhook_signing_secret": whsec}).to_string()
    };
    let arn = create_secret(&client, &stripe_json("whsec_old_0123456789")).await;
    let router = stripe_webhook_router(
        store.clone(),
        clock.clone(),
        Secret::new(
            client.clone(),
            &arn,
            Some(STRIPE_WEBHOOK_SECRET_FIELD),
            REFRESH,
            clock.clone(),
        ),
    );
    let (status, v) = post_webhook(&router, "whsec_old_0123456789", clock.now()).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    rotate(&client, &arn, &stripe_json("whsec_new_0123456789")).await;
    clock.advance(TimeDelta::seconds(300));
    let (status, v) = post_webhook(&router, "whsec_new_0123456789", clock.now()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = post_webhook(&router, "whsec_old_0123456789", clock.now()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "bad_signature", "{v}");

    // No such secret (a typo in the ARN, or a role without access): 503.
    let missing = format!("{arn}-gone");
    let router = stripe_webhook_router(
        store,
        clock.clone(),
        Secret::new(
            client,
            missing,
            Some(STRIPE_WEBHOOK_SECRET_FIELD),
            REFRESH,
            clock.clone(),
        ),
    );
    let (status, v) = post_webhook(&router, "whsec_new_0123456789", clock.now()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "service_unavailable", "{v}");
}

/// The billing run's Stripe adapter uses the Stripe secret's `secret_key` as it is now: a
/// wrong key is refused by Stripe (the double), and after the key is rotated to the right
/// one and the refresh interval has passed, the same adapter handle is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stripe_adapter_follows_a_rotated_secret_key() {
    use tally_core::ports::InvoiceProvider;
    use tally_tests::stripe_double::{DOUBLE_SECRET_KEY, StripeDouble};

    let double = StripeDouble::start().await.unwrap();
    let client = secrets_client().await;
    let clock = Arc::new(FixedClock::at(t0()));
    let stripe_json = |key: &str| {
        json!({"secret_key": key, "webhook_signing_secret": "whsec_0123456789"}).to_string()
    };
    let arn = create_secret(&client, &stripe_json("sk_test_revoked")).await;
    let provider = tally_lambda::handlers::stripe_provider(
        Secret::new(
            client.clone(),
            &arn,
            Some(tally_lambda::secrets::STRIPE_SECRET_KEY_FIELD),
            REFRESH,
            clock.clone(),
        ),
        double.base_url(),
    );
    let org = tally_core::ids::OrgId::parse("org_acme").unwrap();
    let refused = provider.current().await.unwrap().find_customer(&org).await;
    assert!(refused.is_err(), "{refused:?}");

    rotate(&client, &arn, &stripe_json(DOUBLE_SECRET_KEY)).await;
    clock.advance(TimeDelta::seconds(300));
    let found = provider.current().await.unwrap().find_customer(&org).await;
    assert_eq!(found.unwrap(), None);
}

/// Plan-limit alerts are signed with the alert secret as it is now: after a rotation and
/// the refresh interval, the receiver verifies them with the new secret only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_signed_with_the_rotated_secret_after_the_refresh_interval() {
    use tally_core::sinks::AlertSender;

    let (url, received) = common::alert_receiver("/hook").await;
    let client = secrets_client().await;
    let clock = Arc::new(FixedClock::at(t0()));
    let (old, new) = (value('p'), value('q'));
    let arn = create_secret(&client, &old).await;
    let sender = tally_lambda::alerts::sender_from_secret(
        url,
        Secret::new(client.clone(), &arn, None, REFRESH, clock.clone()),
        clock.clone(),
    );
    // The same alert, signed with the secret as it is at each send.
    let send = || async {
        let current = sender.current().await.unwrap();
        current
            .send("alert_1", r#"{"id":"alert_1"}"#)
            .await
            .unwrap();
    };
    send().await;
    rotate(&client, &arn, &new).await;
    clock.advance(TimeDelta::seconds(300));
    send().await;

    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    let verifies = |secret: &str, (signature, body): &(String, Vec<u8>)| {
        tally_billing::webhook::verify_signature(secret, signature, body, clock.now(), 300).is_ok()
    };
    assert!(verifies(&old, &got[0]) && !verifies(&new, &got[0]));
    assert!(verifies(&new, &got[1]) && !verifies(&old, &got[1]));
}
