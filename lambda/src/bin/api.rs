//! `tally-api-lambda`: the usage and management API (`tally_api::router`: `/v1/usage`,
//! `/v1/me/orgs`, `/v1/orgs/...`, `/openapi.json`) behind an API Gateway HTTP API.
//!
//! Users' JWTs are verified with the HS256 secret in [`tally_lambda::env::JWT_SECRET`]
//! (resolved from Secrets Manager when the stack deploys).

use std::sync::Arc;

use anyhow::Context;
use tally_api::jwt::JwtConfig;
use tally_billing::Catalogue;
use tally_core::ports::SystemClock;
use tally_lambda::env::{self, Env};
use tally_lambda::{backends, handlers, telemetry::Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::new(env::API);
    let telemetry = Telemetry::init(&env, "api")?;
    let secret = env.required(env::JWT_SECRET)?;
    let jwt = JwtConfig::hs256(secret.as_bytes()).context(env::JWT_SECRET)?;
    let catalogue = Catalogue::builtin().context("the built-in catalogue")?;
    let store = backends::store(&env).await?;
    let router = tally_api::router(
        tally_api::ApiState::new(
            store.tenants.clone(),
            store.usage.clone(),
            Arc::new(catalogue.meter_catalogue()),
            Arc::new(SystemClock),
        )
        .with_jwt(jwt)
        .with_plans(catalogue.core_plans())
        // API Gateway appends the address it was reached from to X-Forwarded-For.
        .with_trusted_proxies(1),
    );
    handlers::http::serve(router, telemetry)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("the Lambda runtime stopped")
}
