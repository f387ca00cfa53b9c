//! `tally-api-lambda`: the usage and management API (`tally_api::router`: `/v1/usage`,
//! `/v1/me/orgs`, `/v1/orgs/...`, `/openapi.json`) behind an API Gateway HTTP API.
//!
//! Users' JWTs are verified with the HS256 secret read from Secrets Manager at the ARN in
//! [`tally_lambda::env::JWT_SECRET_ARN`], read again every
//! [`tally_lambda::env::SECRETS_REFRESH_SECONDS`] ([`tally_lambda::secrets`]), so a
//! rotated secret takes over without a redeploy. ID tokens of the OpenID Connect issuer in
//! [`tally_lambda::env::OIDC_ISSUER`] (the template's Cognito user pool) are accepted too,
//! verified against the pool's published keys (`tally_oidc`). Its meters and plans are the
//! stored catalogue version in force, re-read every `TALLY_CATALOGUE_REFRESH_SECONDS`
//! ([`tally_lambda::catalogue`]).

use std::sync::Arc;

use anyhow::Context;
use tally_billing::Catalogue;
use tally_core::ports::SystemClock;
use tally_lambda::catalogue;
use tally_lambda::env;
use tally_lambda::secrets::Secret;
use tally_lambda::{backends, handlers};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (env, telemetry, store) = backends::start(env::API, "api").await?;
    let catalogue = Catalogue::builtin().context("the built-in catalogue")?;
    let secret =
        Secret::from_env(&env, env::JWT_SECRET_ARN, None, &store.sdk)?.ok_or_else(|| {
            anyhow::anyhow!("environment variable {} must be set", env::JWT_SECRET_ARN)
        })?;
    // Read once at start: a missing secret or a role without access shows in the cold
    // start's log, not only as 503s.
    if let Err(e) = secret.current().await {
        tracing::error!(error = %e, "the JWT secret cannot be read yet");
    }
    // The upcoming invoice of a month no stored version covers is priced with the built-in
    // catalogue, as month close prices it.
    let prices = catalogue.core().clone();
    let refresh = catalogue::open_from_env(&env, &store, catalogue).await?;
    let state = tally_api::ApiState::new(
        store.tenants.clone(),
        store.usage.clone(),
        refresh.catalogue(),
        Arc::new(SystemClock),
    )
    .with_prices(prices)
    .with_billing(store.reports.clone(), store.dynamo.clone())
    .with_pricing(store.dynamo.clone(), store.dynamo.clone())
    .with_series(store.dynamo.clone())
    // API Gateway appends the address it was reached from to X-Forwarded-For.
    .with_trusted_proxies(1);
    let state = match (
        env.optional(env::OIDC_ISSUER)?,
        env.optional(env::OIDC_AUDIENCE)?,
    ) {
        (Some(issuer), Some(audience)) => {
            let oidc = tally_oidc::OidcVerifier::new(tally_oidc::OidcSettings {
                issuer,
                audience,
                jwks_url: None,
            })
            .with_context(|| format!("{} or {}", env::OIDC_ISSUER, env::OIDC_AUDIENCE))?;
            let oidc = match env.optional(env::OIDC_CLIENT_ID)? {
                Some(client_id) => oidc
                    .with_client(tally_oidc::flow::ClientSettings {
                        client_id,
                        client_secret: None,
                        redirect_url: env.optional(env::OIDC_REDIRECT_URL)?,
                    })
                    .with_context(|| {
                        format!("{} or {}", env::OIDC_CLIENT_ID, env::OIDC_REDIRECT_URL)
                    })?,
                None => oidc,
            };
            state.with_oidc(oidc)
        }
        (None, None) => state,
        _ => anyhow::bail!(
            "set both {} and {}, or neither",
            env::OIDC_ISSUER,
            env::OIDC_AUDIENCE
        ),
    };
    let router = handlers::http::api_router_with(state, secret, move |router| {
        catalogue::refreshing(router, refresh.clone())
    });
    handlers::http::serve_derived(Arc::new(router), telemetry)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("the Lambda runtime stopped")
}
