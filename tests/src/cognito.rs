//! The emulator's Amazon Cognito user pools (moto's `cognito-idp`), driven through its JSON
//! API with plain HTTP POSTs: the few calls the sign-in tests and the Lambda runtime test's
//! stack need (pools, clients, users, password sign-in). A POST is what the SDK would send;
//! `aws-sdk-cognitoidentityprovider` would be one more large SDK crate to build for five
//! calls.
//!
//! moto signs every pool's tokens with one fixed RSA key (`kid` `dummy`), publishes it at
//! `{endpoint}/{pool_id}/.well-known/jwks.json`, and writes the issuer real Cognito writes,
//! `https://cognito-idp.{region}.amazonaws.com/{pool_id}` ([`issuer`]).

// Test support code: a failed unwrap here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

/// The region the emulator's pools live in (moto's default when a request is unsigned).
pub const REGION: &str = "us-east-1";

/// One call of the Cognito JSON API (`AWSCognitoIdentityProviderService.{action}`); panics
/// (fails the test) on an error answer, naming the action and the answer.
pub async fn call(endpoint: &str, action: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/", endpoint.trim_end_matches('/')))
        .header(
            "X-Amz-Target",
            format!("AWSCognitoIdentityProviderService.{action}"),
        )
        .header("Content-Type", "application/x-amz-json-1.1")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "Cognito {action}: {status}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The `iss` of the pool's tokens.
pub fn issuer(pool_id: &str) -> String {
    format!("https://cognito-idp.{REGION}.amazonaws.com/{pool_id}")
}

/// Where the emulator publishes the pool's keys.
pub fn jwks_url(endpoint: &str, pool_id: &str) -> String {
    format!(
        "{}/{pool_id}/.well-known/jwks.json",
        endpoint.trim_end_matches('/')
    )
}

/// Creates a user pool named `name`: its id.
pub async fn create_user_pool(endpoint: &str, name: &str) -> String {
    let answer = call(endpoint, "CreateUserPool", json!({"PoolName": name})).await;
    answer["UserPool"]["Id"].as_str().unwrap().to_owned()
}

/// Creates a public client of the pool whose ID tokens carry `email` and
/// `email_verified`, allowing the admin password flow: its id (the tokens' `aud`).
pub async fn create_client(endpoint: &str, pool_id: &str, name: &str) -> String {
    let answer = call(
        endpoint,
        "CreateUserPoolClient",
        json!({
            "UserPoolId": pool_id,
            "ClientName": name,
            "ExplicitAuthFlows": ["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
            "ReadAttributes": ["email", "email_verified"],
        }),
    )
    .await;
    answer["UserPoolClient"]["ClientId"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Creates a confirmed user with `email` (verified or not, as Cognito's string attribute)
/// and a permanent `password`: the user's `sub`.
pub async fn create_user(
    endpoint: &str,
    pool_id: &str,
    username: &str,
    email: &str,
    verified: bool,
    password: &str,
) -> String {
    let answer = call(
        endpoint,
        "AdminCreateUser",
        json!({
            "UserPoolId": pool_id,
            "Username": username,
            "MessageAction": "SUPPRESS",
            "TemporaryPassword": "Temporary-Passw0rd!",
            "UserAttributes": [
                {"Name": "email", "Value": email},
                {"Name": "email_verified", "Value": if verified { "true" } else { "false" }},
            ],
        }),
    )
    .await;
    call(
        endpoint,
        "AdminSetUserPassword",
        json!({"UserPoolId": pool_id, "Username": username, "Password": password, "Permanent": true}),
    )
    .await;
    answer["User"]["Attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["Name"] == "sub")
        .and_then(|a| a["Value"].as_str())
        .unwrap()
        .to_owned()
}

/// Tokens of one sign-in.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The ID token (`aud` the client id; the user's email).
    pub id: String,
    /// The access token (`client_id`, no `aud`).
    pub access: String,
}

/// Signs `username` in with its password (`ADMIN_USER_PASSWORD_AUTH`).
pub async fn sign_in(
    endpoint: &str,
    pool_id: &str,
    client_id: &str,
    username: &str,
    password: &str,
) -> Tokens {
    let answer = call(
        endpoint,
        "AdminInitiateAuth",
        json!({
            "UserPoolId": pool_id,
            "ClientId": client_id,
            "AuthFlow": "ADMIN_USER_PASSWORD_AUTH",
            "AuthParameters": {"USERNAME": username, "PASSWORD": password},
        }),
    )
    .await;
    let result = &answer["AuthenticationResult"];
    Tokens {
        id: result["IdToken"].as_str().unwrap().to_owned(),
        access: result["AccessToken"].as_str().unwrap().to_owned(),
    }
}
