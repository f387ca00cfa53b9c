//! Tally's outgoing webhooks: [`WebhookSender`] implements core's [`AlertSender`] port (the
//! billing alert pass calls it) by POSTing each plan-limit alert, signed, to one configured
//! URL.
//!
//! # The request
//!
//! `POST <url>` with the alert's JSON as the body and the headers
//!
//! - `Content-Type: application/json`
//! - `Tally-Alert-Id: alert_…` (the payload's `id`; the same on every send of one alert)
//! - `Tally-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//!
//! as payment providers sign theirs (the same code as the Stripe webhook check,
//! [`tally_core::signature::sign`]). A receiver recomputes the HMAC over `t`, a `.` and the
//! raw body with the shared secret, compares in constant time, and refuses a `t` far from its
//! clock (stops replays); [`tally_core::signature::verify`] does exactly that.
//!
//! # Delivery
//!
//! Any 2xx answer is delivery. Each attempt has its own timeout ([`WebhookConfig::timeout`]).
//! A timeout, a connection failure, a 408, a 429 or a 5xx is retried, up to
//! [`WebhookConfig::max_attempts`] attempts, after a jittered exponential backoff (or the
//! endpoint's `Retry-After`, capped); each attempt is signed afresh (a new `t`). Any other
//! answer stops at once. Either way the caller gets a [`SendError`] and the alert stays
//! pending in the outbox, so a later pass sends it again: alerts are delivered at least
//! once, and receivers dedupe on `Tally-Alert-Id`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tally_core::backoff::{Backoff, Sleeper};
use tally_core::ports::Clock;
use tally_core::signature::sign;
use tally_core::sinks::{AlertSender, SendError};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "tally-signature";

/// The alert id header.
pub const ALERT_ID_HEADER: &str = "tally-alert-id";

/// Longest answer body read (and ignored) before the connection is reused.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Where and how to send alerts.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The endpoint, `https://…` (or `http://…`, for loopback receivers in tests).
    pub url: String,
    /// The shared signing secret; at least [`MIN_SECRET_LEN`] bytes.
    pub secret: String,
    /// How long one attempt may take. Default 10 s.
    pub timeout: Duration,
    /// Attempts per alert per pass (at least 1). Default 4.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles per attempt. Default 500 ms.
    pub base_backoff: Duration,
    /// Longest backoff, whatever `Retry-After` says. Default 10 s.
    pub max_backoff: Duration,
}

/// Shortest secret accepted: 16 bytes (the secret is the only thing a forger lacks).
pub const MIN_SECRET_LEN: usize = 16;

impl WebhookConfig {
    /// A config with the default timeout, attempts and backoff.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            secret: secret.into(),
            timeout: Duration::from_secs(10),
            max_attempts: 4,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
        }
    }

    /// The longest one alert's attempts and backoff can take: what the alert lease must
    /// exceed.
    pub fn worst_case(&self) -> Duration {
        self.timeout * self.max_attempts + self.max_backoff * self.max_attempts
    }

    /// The attempts and backoff as the workspace's one retry policy.
    pub fn retry(&self) -> Backoff {
        Backoff::new(self.max_attempts, self.base_backoff, self.max_backoff)
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// What is wrong with a [`WebhookConfig`]. Each variant names the setting.
#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigError {
    /// `url` is not an absolute `http://` or `https://` URL.
    #[error("alert webhook url must be an absolute http(s) URL, got {0:?}")]
    Url(String),
    /// `secret` is too short or holds characters that are not printable ASCII.
    #[error("alert webhook secret must be at least {MIN_SECRET_LEN} printable ASCII characters")]
    Secret,
    /// `max_attempts` is 0 or `timeout` is zero.
    #[error("alert webhook {0} must be positive")]
    NotPositive(&'static str),
}

/// Sleeps on the tokio timer: the production [`Sleeper`] for alert delivery and Stripe sync
/// alike (`tally` and the Lambdas use this one).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleeper;

#[async_trait]
impl Sleeper for TokioSleeper {
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// The signed-webhook sender. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct WebhookSender {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
    config: WebhookConfig,
    clock: Arc<dyn Clock>,
    sleeper: Arc<dyn Sleeper>,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth another attempt, after the endpoint's `Retry-After` if it gave one.
    Retry(String, Option<Duration>),
    Stop(String),
}

impl WebhookSender {
    /// Checks the config and builds the client (TLS with the webpki roots). `clock` gives
    /// the signature's `t`; `sleeper` waits out the backoff.
    pub fn new(
        config: WebhookConfig,
        clock: Arc<dyn Clock>,
        sleeper: Arc<dyn Sleeper>,
    ) -> Result<Self, WebhookConfigError> {
        let url: Uri = config
            .url
            .parse()
            .map_err(|_| WebhookConfigError::Url(config.url.clone()))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(WebhookConfigError::Url(config.url.clone()));
        }
        if config.secret.len() < MIN_SECRET_LEN
            || !config.secret.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(WebhookConfigError::Secret);
        }
        if config.max_attempts == 0 {
            return Err(WebhookConfigError::NotPositive("max_attempts"));
        }
        if config.timeout.is_zero() {
            return Err(WebhookConfigError::NotPositive("timeout"));
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(WebhookSender {
            client: Client::builder(TokioExecutor::new()).build(https),
            url,
            config,
            clock,
            sleeper,
        })
    }

    /// The pause after failed attempt `attempt` (1-based): exponential from the base,
    /// capped, jittered to a random point in its upper half so that many senders retrying
    /// one endpoint spread out.
    fn backoff(&self, attempt: u32) -> Duration {
        self.config.retry().delay(attempt, rand::random::<f64>())
    }

    async fn attempt(&self, id: &str, body: &str) -> Attempt {
        let t = self.clock.now().timestamp();
        let signature = sign(&self.config.secret, t, body.as_bytes());
        let (Ok(signature), Ok(id_value)) =
            (HeaderValue::from_str(&signature), HeaderValue::from_str(id))
        else {
            return Attempt::Stop(format!("alert id {id:?} cannot be sent as a header"));
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("tally/", env!("CARGO_PKG_VERSION")))
            .header(SIGNATURE_HEADER, signature)
            .header(ALERT_ID_HEADER, id_value)
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Attempt::Stop(format!("cannot build the request: {e}")),
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // Read (a bounded amount of) the answer so the connection can be reused; its
            // content does not matter.
            let _ = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after))
        };
        match tokio::time::timeout(self.config.timeout, exchange).await {
            Err(_) => Attempt::Retry(format!("no answer within {:?}", self.config.timeout), None),
            Ok(Err(e)) => Attempt::Retry(format!("request failed: {e}"), None),
            Ok(Ok((status, _))) if status.is_success() => Attempt::Delivered,
            Ok(Ok((status, retry_after)))
                if status.is_server_error()
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT =>
            {
                Attempt::Retry(format!("endpoint answered {status}"), retry_after)
            }
            Ok(Ok((status, _))) => Attempt::Stop(format!("endpoint answered {status}")),
        }
    }
}

#[async_trait]
impl AlertSender for WebhookSender {
    async fn send(&self, id: &str, body: &str) -> Result<(), SendError> {
        let mut attempt = 1;
        loop {
            match self.attempt(id, body).await {
                Attempt::Delivered => return Ok(()),
                Attempt::Stop(why) => return Err(SendError(why)),
                Attempt::Retry(why, retry_after) => {
                    let retry = self.config.retry();
                    if !retry.retries_after(attempt) {
                        return Err(SendError(format!("{why} (after {attempt} attempts)")));
                    }
                    // The endpoint's `Retry-After` (capped) wins over the backoff.
                    let wait = retry.wait(retry_after, self.backoff(attempt));
                    self.sleeper.sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tally_core::ports::SystemClock;

    fn sender(url: &str, secret: &str) -> Result<WebhookSender, WebhookConfigError> {
        WebhookSender::new(
            WebhookConfig::new(url, secret),
            Arc::new(SystemClock),
            Arc::new(TokioSleeper),
        )
    }

    #[test]
    fn config_is_checked_and_the_secret_never_printed() {
        let secret = "whsec_0123456789abcdef";
        let ok = sender("https://hooks.example.com/tally", secret).unwrap();
        assert!(!format!("{ok:?}").contains(secret));
        for bad in ["", "hooks.example.com/x", "ftp://example.com/", "/relative"] {
            assert!(
                matches!(sender(bad, secret), Err(WebhookConfigError::Url(_))),
                "{bad}"
            );
        }
        for bad in ["short", "has a space in it!!"] {
            assert!(matches!(
                sender("https://example.com/", bad),
                Err(WebhookConfigError::Secret)
            ));
        }
    }

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let mut config = WebhookConfig::new("https://example.com/", "whsec_0123456789abcdef");
        config.base_backoff = Duration::from_millis(100);
        config.max_backoff = Duration::from_millis(350);
        let s = WebhookSender::new(config, Arc::new(SystemClock), Arc::new(TokioSleeper)).unwrap();
        for _ in 0..50 {
            let first = s.backoff(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
            let second = s.backoff(2);
            assert!((Duration::from_millis(100)..=Duration::from_millis(200)).contains(&second));
            let capped = s.backoff(10);
            assert!((Duration::from_millis(175)..=Duration::from_millis(350)).contains(&capped));
        }
    }
}
