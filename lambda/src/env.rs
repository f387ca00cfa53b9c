//! The environment variables the Lambda functions read: their names, which binary reads
//! which, and one reader that names the variable in every error.
//!
//! The lists are the contract with `template.yaml`: `lambda/tests/template_agreement.rs`
//! checks that each function in the template sets every variable of its binary's list.
//! [`Env`] only reads names on its list, so a binary cannot start reading a variable the
//! test does not know about.

/// Why a variable could not be read. Each message names the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// The code asked for a variable its binary's list does not hold (a bug: add it to the
    /// list and to `template.yaml`).
    #[error(
        "{0} is not in this function's list of environment variables (tally_lambda::env); add it there and to template.yaml"
    )]
    NotListed(String),
    /// A required variable is unset or empty.
    #[error("environment variable {0} must be set")]
    Missing(String),
    /// The value is longer than any sane value.
    #[error("{name} is {len} bytes; at most {max}")]
    TooLong {
        /// The variable.
        name: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(String),
    /// The value is not one the variable takes.
    #[error("{name}={value:?}: {expected}")]
    Invalid {
        /// The variable.
        name: String,
        /// What it holds.
        value: String,
        /// What it should hold.
        expected: String,
    },
}

impl EnvError {
    /// An [`EnvError::Invalid`] for `name`.
    pub fn invalid(name: &str, value: &str, expected: impl Into<String>) -> Self {
        EnvError::Invalid {
            name: name.to_owned(),
            value: value.to_owned(),
            expected: expected.into(),
        }
    }
}

/// The DynamoDB table holding everything (`TALLY_TABLE`).
pub const TABLE: &str = "TALLY_TABLE";
/// What carries events from ingest to the aggregator: `sqs` or `kinesis`
/// (`TALLY_TRANSPORT`; the template's `Transport` parameter).
pub const TRANSPORT: &str = "TALLY_TRANSPORT";
/// The SQS queue's URL, read when the transport is `sqs` (`TALLY_QUEUE_URL`).
pub const QUEUE_URL: &str = "TALLY_QUEUE_URL";
/// The Kinesis stream's name, read when the transport is `kinesis` (`TALLY_STREAM`).
pub const STREAM: &str = "TALLY_STREAM";
/// Over how many Kinesis partition keys one org's records are spread, 1 to 64, read when the
/// transport is `kinesis` (`TALLY_KINESIS_KEY_SPREAD`; default 8, see
/// [`tally_core::envelope::partition_key`]).
pub const KINESIS_KEY_SPREAD: &str = "TALLY_KINESIS_KEY_SPREAD";
/// The queue poison records are set aside in, with their reason
/// (`TALLY_DEAD_LETTER_QUEUE_URL`).
pub const DEAD_LETTER_QUEUE_URL: &str = "TALLY_DEAD_LETTER_QUEUE_URL";
/// The ARN of the Secrets Manager secret holding the HS256 secret users' JWTs are verified
/// with, at least 32 bytes (`TALLY_JWT_SECRET_ARN`; read at run time, see
/// [`crate::secrets`]).
pub const JWT_SECRET_ARN: &str = "TALLY_JWT_SECRET_ARN";
/// The OpenID Connect issuer whose ID tokens the API accepts besides its own HS256 tokens
/// (`TALLY_OIDC_ISSUER`; the template's Cognito user pool,
/// `https://cognito-idp.REGION.amazonaws.com/POOL_ID`). Unset: only the HS256 tokens.
pub const OIDC_ISSUER: &str = "TALLY_OIDC_ISSUER";
/// The `aud` the issuer's tokens must carry (`TALLY_OIDC_AUDIENCE`; the user-pool client's
/// id). Set with [`OIDC_ISSUER`], or neither.
pub const OIDC_AUDIENCE: &str = "TALLY_OIDC_AUDIENCE";
/// The user-pool client the dashboard's "Sign in with …" button uses, a public client
/// (the authorization-code flow with PKCE; `TALLY_OIDC_CLIENT_ID`). Unset: the dashboard
/// takes a pasted token only.
pub const OIDC_CLIENT_ID: &str = "TALLY_OIDC_CLIENT_ID";
/// The callback URL registered for that client, `https://HOST/dashboard/callback`
/// (`TALLY_OIDC_REDIRECT_URL`; the template's `DashboardCallbackUrl`). Unset: derived from
/// each request's `Host`.
pub const OIDC_REDIRECT_URL: &str = "TALLY_OIDC_REDIRECT_URL";
/// Seconds after a month ends before billing closes it (`TALLY_GRACE_PERIOD_SECONDS`).
pub const GRACE_PERIOD_SECONDS: &str = "TALLY_GRACE_PERIOD_SECONDS";
/// Where plan-limit alerts are POSTed (`TALLY_ALERT_WEBHOOK_URL`; the template's
/// `AlertWebhookUrl` parameter, empty: alerts off).
pub const ALERT_WEBHOOK_URL: &str = "TALLY_ALERT_WEBHOOK_URL";
/// The ARN of the Secrets Manager secret alerts are signed with
/// (`TALLY_ALERT_WEBHOOK_SECRET_ARN`; read at run time, see [`crate::secrets`]).
pub const ALERT_WEBHOOK_SECRET_ARN: &str = "TALLY_ALERT_WEBHOOK_SECRET_ARN";
/// The ARN of the Secrets Manager secret holding Stripe's keys as JSON,
/// `{"secret_key": "sk_...", "webhook_signing_secret": "whsec_..."}`
/// (`TALLY_STRIPE_SECRET_ARN`; read at run time, see [`crate::secrets`]). The billing run
/// syncs invoices to Stripe with `secret_key` only when it is set; the webhook function
/// checks signatures with `webhook_signing_secret`, and answers `503` when it is unset.
pub const STRIPE_SECRET_ARN: &str = "TALLY_STRIPE_SECRET_ARN";
/// How many seconds a secret read from Secrets Manager is used before it is read again, so
/// how long a rotation takes to reach a warm function (`TALLY_SECRETS_REFRESH_SECONDS`;
/// 300 when unset, see [`crate::secrets::DEFAULT_REFRESH`]).
pub const SECRETS_REFRESH_SECONDS: &str = "TALLY_SECRETS_REFRESH_SECONDS";
/// Seconds of its invocation the aggregator keeps in hand: it starts no further group of
/// records once less is left, and reports the rest as failures so they come back
/// (`TALLY_DEADLINE_MARGIN_SECONDS`; whole seconds, 30 when unset, see
/// [`tally_aggregator::DEFAULT_DEADLINE_MARGIN`] for why).
pub const DEADLINE_MARGIN_SECONDS: &str = "TALLY_DEADLINE_MARGIN_SECONDS";
/// How many batches the aggregators of the table may apply at once in the slotted counter
/// format (`TALLY_DYNAMODB_WRITER_SLOTS`, 0 to [`tally_store::dynamodb::MAX_WRITER_SLOTS`];
/// [`tally_store::dynamodb::DEFAULT_WRITER_SLOTS`] when unset; 0 is the chunked format of
/// earlier releases). It must exceed the aggregator's concurrency: see
/// `docs/dynamodb-writer-slots.md`.
pub const WRITER_SLOTS: &str = "TALLY_DYNAMODB_WRITER_SLOTS";
/// Longest [`DEADLINE_MARGIN_SECONDS`] accepted: Lambda's longest timeout, 15 minutes.
pub const MAX_DEADLINE_MARGIN_SECONDS: u64 = 900;
/// The URL of the billing function's queue of per-org work items
/// (`TALLY_BILLING_QUEUE_URL`; see [`crate::fanout`]). Set: the monthly run only enqueues
/// one item per org and the daily catch-up may run; unset: the monthly run bills every org
/// itself, as before the fan-out.
pub const BILLING_QUEUE_URL: &str = "TALLY_BILLING_QUEUE_URL";
/// Ingest takes a key's shared rate allowance in blocks of at most 1/this of a window's
/// cap, 1 to 10,000 (`TALLY_SHARED_RATE_BLOCKS`; 8 when unset, see
/// [`tally_ingest::shared::SharedConfig`]).
pub const SHARED_RATE_BLOCKS: &str = "TALLY_SHARED_RATE_BLOCKS";
/// Ingest takes a hard-limited org's monthly allowance in blocks of at most 1/this of it,
/// 1 to 10,000 (`TALLY_SHARED_PLAN_BLOCKS`; 100 when unset).
pub const SHARED_PLAN_BLOCKS: &str = "TALLY_SHARED_PLAN_BLOCKS";
/// How many seconds the ingest and API functions serve a catalogue before reading the
/// stored versions again, so how long a version published for the current month takes to
/// reach a warm function (`TALLY_CATALOGUE_REFRESH_SECONDS`; 30 when unset, 1 to 3,600; see
/// [`crate::catalogue`]). A version effective from a later month is read at the first
/// request of that month.
pub const CATALOGUE_REFRESH_SECONDS: &str = "TALLY_CATALOGUE_REFRESH_SECONDS";
/// The `tracing` filter, e.g. `info` or `tally=debug` (`TALLY_LOG`); `info` when unset.
pub const LOG: &str = "TALLY_LOG";

/// What `tally-ingest-lambda` reads.
pub const INGEST: &[&str] = &[
    TABLE,
    TRANSPORT,
    QUEUE_URL,
    STREAM,
    KINESIS_KEY_SPREAD,
    SHARED_RATE_BLOCKS,
    SHARED_PLAN_BLOCKS,
    CATALOGUE_REFRESH_SECONDS,
    LOG,
];
/// What `tally-api-lambda` reads.
pub const API: &[&str] = &[
    TABLE,
    JWT_SECRET_ARN,
    SECRETS_REFRESH_SECONDS,
    OIDC_ISSUER,
    OIDC_AUDIENCE,
    OIDC_CLIENT_ID,
    OIDC_REDIRECT_URL,
    CATALOGUE_REFRESH_SECONDS,
    LOG,
];
/// What `tally-aggregator-lambda` reads.
pub const AGGREGATOR: &[&str] = &[
    TABLE,
    TRANSPORT,
    DEAD_LETTER_QUEUE_URL,
    DEADLINE_MARGIN_SECONDS,
    WRITER_SLOTS,
    LOG,
];
/// What `tally-billing-lambda` reads.
pub const BILLING: &[&str] = &[
    TABLE,
    GRACE_PERIOD_SECONDS,
    ALERT_WEBHOOK_URL,
    ALERT_WEBHOOK_SECRET_ARN,
    STRIPE_SECRET_ARN,
    SECRETS_REFRESH_SECONDS,
    BILLING_QUEUE_URL,
    LOG,
];
/// What `tally-stripe-webhook-lambda` reads.
pub const STRIPE_WEBHOOK: &[&str] = &[TABLE, STRIPE_SECRET_ARN, SECRETS_REFRESH_SECONDS, LOG];

/// Every binary of this crate with the variables it reads, for the agreement test.
pub const BINARIES: &[(&str, &[&str])] = &[
    ("tally-ingest-lambda", INGEST),
    ("tally-api-lambda", API),
    ("tally-aggregator-lambda", AGGREGATOR),
    ("tally-billing-lambda", BILLING),
    ("tally-stripe-webhook-lambda", STRIPE_WEBHOOK),
];

/// Longest value accepted from any variable: far above a URL or a key, far below
/// anything that would be a mistake worth carrying around.
const MAX_VALUE_BYTES: usize = 16 * 1024;

/// An interval setting (the refresh intervals of the secrets and the catalogue): its
/// variable, the interval when that is unset, and the most whole seconds it may be.
#[derive(Debug, Clone, Copy)]
pub struct Seconds {
    name: &'static str,
    default: std::time::Duration,
    max_secs: u64,
}

impl Seconds {
    /// Variable `name`: `default` when unset, whole seconds from 1 to `max_secs` otherwise.
    pub const fn new(name: &'static str, default: std::time::Duration, max_secs: u64) -> Self {
        Seconds {
            name,
            default,
            max_secs,
        }
    }

    /// The interval the variable's value `v` sets ([`parse_seconds`]).
    pub fn parse(&self, v: Option<&str>) -> Result<std::time::Duration, EnvError> {
        parse_seconds(self.name, v, self.default, self.max_secs)
    }

    /// The interval `env` sets.
    pub fn read(&self, env: &Env) -> Result<std::time::Duration, EnvError> {
        self.parse(env.optional(self.name)?.as_deref())
    }
}

/// An interval setting's value `v` of variable `name`: `default` when unset, whole seconds
/// from 1 to `max_secs` otherwise (the refresh intervals of the secrets and the catalogue).
pub fn parse_seconds(
    name: &str,
    v: Option<&str>,
    default: std::time::Duration,
    max_secs: u64,
) -> Result<std::time::Duration, EnvError> {
    let Some(v) = v else {
        return Ok(default);
    };
    match v.trim().parse::<u64>() {
        Ok(secs) if (1..=max_secs).contains(&secs) => Ok(std::time::Duration::from_secs(secs)),
        _ => Err(EnvError::invalid(
            name,
            v,
            format!("must be whole seconds, 1 to {max_secs}"),
        )),
    }
}

/// Reads the variables of one binary's list, and only those.
#[derive(Debug, Clone, Copy)]
pub struct Env {
    allowed: &'static [&'static str],
}

impl Env {
    /// A reader of the variables in `allowed` (one of the lists above).
    pub const fn new(allowed: &'static [&'static str]) -> Self {
        Env { allowed }
    }

    /// The value of `name`, `None` when unset or empty.
    pub fn optional(&self, name: &str) -> Result<Option<String>, EnvError> {
        if !self.allowed.contains(&name) {
            return Err(EnvError::NotListed(name.to_owned()));
        }
        match std::env::var(name) {
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) if v.len() > MAX_VALUE_BYTES => Err(EnvError::TooLong {
                name: name.to_owned(),
                len: v.len(),
                max: MAX_VALUE_BYTES,
            }),
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(EnvError::NotUtf8(name.to_owned())),
        }
    }

    /// The value of `name`; [`EnvError::Missing`] when unset or empty.
    pub fn required(&self, name: &str) -> Result<String, EnvError> {
        self.optional(name)?
            .ok_or_else(|| EnvError::Missing(name.to_owned()))
    }

    /// The aggregator's deadline margin ([`DEADLINE_MARGIN_SECONDS`]):
    /// [`tally_aggregator::DEFAULT_DEADLINE_MARGIN`] when unset; whole seconds up to
    /// [`MAX_DEADLINE_MARGIN_SECONDS`] otherwise.
    pub fn deadline_margin(&self) -> Result<std::time::Duration, EnvError> {
        parse_deadline_margin(self.optional(DEADLINE_MARGIN_SECONDS)?.as_deref())
    }

    /// Whether this binary reads `name` (it is on its list).
    pub fn lists(&self, name: &str) -> bool {
        self.allowed.contains(&name)
    }

    /// The DynamoDB store's writer slots ([`WRITER_SLOTS`]).
    pub fn writer_slots(&self) -> Result<u32, EnvError> {
        parse_writer_slots(self.optional(WRITER_SLOTS)?.as_deref())
    }

    /// The Kinesis key spread named by [`KINESIS_KEY_SPREAD`], or the default when unset.
    pub fn kinesis_key_spread(&self) -> Result<u16, EnvError> {
        match self.optional(KINESIS_KEY_SPREAD)? {
            None => Ok(tally_core::envelope::DEFAULT_KEY_SPREAD),
            Some(v) => tally_core::envelope::parse_key_spread(&v)
                .map_err(|why| EnvError::invalid(KINESIS_KEY_SPREAD, &v, why)),
        }
    }

    /// How finely ingest takes shared limits ([`SHARED_RATE_BLOCKS`],
    /// [`SHARED_PLAN_BLOCKS`]), the defaults for what is unset.
    pub fn shared_limits(&self) -> Result<tally_ingest::shared::SharedConfig, EnvError> {
        let mut config = tally_ingest::shared::SharedConfig::default();
        for (name, slot) in [
            (SHARED_RATE_BLOCKS, &mut config.rate_blocks),
            (SHARED_PLAN_BLOCKS, &mut config.plan_blocks),
        ] {
            if let Some(v) = self.optional(name)? {
                *slot = parse_blocks(name, &v)?;
            }
        }
        Ok(config)
    }

    /// The transport named by [`TRANSPORT`].
    pub fn transport(&self) -> Result<Transport, EnvError> {
        let v = self.required(TRANSPORT)?;
        Transport::parse(&v)
            .ok_or_else(|| EnvError::invalid(TRANSPORT, &v, "must be sqs or kinesis"))
    }
}

/// [`Env::deadline_margin`] of the variable's value (`None`: unset or empty).
fn parse_deadline_margin(v: Option<&str>) -> Result<std::time::Duration, EnvError> {
    let Some(v) = v else {
        return Ok(tally_aggregator::DEFAULT_DEADLINE_MARGIN);
    };
    match v.trim().parse::<u64>() {
        Ok(secs) if secs <= MAX_DEADLINE_MARGIN_SECONDS => Ok(std::time::Duration::from_secs(secs)),
        _ => Err(EnvError::invalid(
            DEADLINE_MARGIN_SECONDS,
            v,
            format!("must be whole seconds, 0 to {MAX_DEADLINE_MARGIN_SECONDS}"),
        )),
    }
}

fn parse_writer_slots(v: Option<&str>) -> Result<u32, EnvError> {
    let max = tally_store::dynamodb::MAX_WRITER_SLOTS;
    let Some(v) = v else {
        return Ok(tally_store::dynamodb::DEFAULT_WRITER_SLOTS);
    };
    match v.trim().parse::<u32>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(EnvError::invalid(
            WRITER_SLOTS,
            v,
            format!("must be a whole number, 0 to {max}"),
        )),
    }
}

/// A block count of [`Env::shared_limits`]: whole, 1 to [`tally_ingest::shared::MAX_BLOCKS`].
fn parse_blocks(name: &str, v: &str) -> Result<u32, EnvError> {
    let max = tally_ingest::shared::MAX_BLOCKS;
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(EnvError::invalid(
            name,
            v,
            format!("must be a whole number, 1 to {max}"),
        )),
    }
}

/// What carries events from ingest to the aggregator on AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// An SQS standard queue with a dead-letter queue.
    Sqs,
    /// A Kinesis data stream.
    Kinesis,
}

impl Transport {
    /// Parses `sqs` or `kinesis` (the template's `Transport` parameter values).
    pub fn parse(s: &str) -> Option<Transport> {
        match s.trim() {
            "sqs" => Some(Transport::Sqs),
            "kinesis" => Some(Transport::Kinesis),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_only_listed_names_and_names_them_in_errors() {
        let env = Env::new(&[LOG]);
        let e = env.required(TABLE).unwrap_err().to_string();
        assert!(
            e.contains("TALLY_TABLE") && e.contains("not in this function's list"),
            "{e}"
        );
        let env = Env::new(BILLING);
        // The test process never sets TALLY_TABLE.
        let e = env.required(TABLE).unwrap_err().to_string();
        assert_eq!(e, "environment variable TALLY_TABLE must be set");
    }

    #[test]
    fn shared_limit_blocks_are_whole_numbers_in_range() {
        assert_eq!(parse_blocks(SHARED_RATE_BLOCKS, "8"), Ok(8));
        for bad in ["0", "10001", "-1", "2.5", "many"] {
            let e = parse_blocks(SHARED_RATE_BLOCKS, bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("TALLY_SHARED_RATE_BLOCKS"), "{e}");
        }
    }

    #[test]
    fn the_deadline_margin_defaults_to_30_s_and_refuses_nonsense() {
        use std::time::Duration;
        assert_eq!(parse_deadline_margin(None), Ok(Duration::from_secs(30)));
        assert_eq!(
            parse_deadline_margin(Some(" 20 ")),
            Ok(Duration::from_secs(20))
        );
        assert_eq!(parse_deadline_margin(Some("0")), Ok(Duration::ZERO));
        for bad in ["-1", "2.5", "30s", "901"] {
            let e = parse_deadline_margin(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(DEADLINE_MARGIN_SECONDS), "{e}");
        }
    }

    #[test]
    fn writer_slots_default_to_32_and_refuse_nonsense() {
        assert_eq!(parse_writer_slots(None), Ok(32));
        assert_eq!(parse_writer_slots(Some(" 0 ")), Ok(0));
        assert_eq!(parse_writer_slots(Some("64")), Ok(64));
        for bad in ["-1", "65", "8.5", "lots"] {
            let e = parse_writer_slots(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(WRITER_SLOTS), "{e}");
        }
    }

    #[test]
    fn transports_parse() {
        assert_eq!(Transport::parse("sqs"), Some(Transport::Sqs));
        assert_eq!(Transport::parse("kinesis"), Some(Transport::Kinesis));
        assert_eq!(Transport::parse("SQS"), None);
    }
}
