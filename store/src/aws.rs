//! Building AWS SDK configuration once per process.
//!
//! Every AWS adapter takes ready clients; this is where the binary and the tests make them.
//! An explicit endpoint (`--aws-endpoint`, `TALLY_AWS_ENDPOINT`) points every client at an
//! emulator; without one the SDK's usual chain (environment, profile, instance role) decides
//! credentials, and the region falls back to `us-east-1` when none is configured.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Loads the shared SDK configuration, optionally pointed at `endpoint`.
pub async fn sdk_config(endpoint: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let config = loader.load().await;
    if config.region().is_some() {
        return config;
    }
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).region(Region::new("us-east-1"));
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}
