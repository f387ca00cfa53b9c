//! Settings every command shares: the global flags ([`Common`]), the duration syntax of
//! flags such as `--grace-period` ([`parse_duration`]) and the JWT configuration that
//! `tally serve` verifies with and `tally token create` signs with ([`jwt_config`]).
//!
//! They live here, apart from the commands, so that the command modules (`serve`,
//! `commands`, `bill`, `aggregate`, ...) depend on this one and never on each other.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tally_api::jwt::{JwtConfig, MIN_SECRET_LEN};

/// Settings every command shares. Tests that run the app in process build one directly.
/// Help lists them under a heading of their own, after each command's own flags.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct Common {
    /// Directory of the embedded SQLite database and local queue.
    #[arg(
        long,
        global = true,
        env = "TALLY_DATA",
        default_value = "./tally-data"
    )]
    pub data: PathBuf,
    /// Where state lives: `sqlite:PATH` or `dynamodb:TABLE` (default: sqlite under --data).
    #[arg(long, global = true, env = "TALLY_STORE")]
    pub store: Option<String>,
    /// The queue between ingest and the aggregator: `local`, `sqs:QUEUE_URL` or
    /// `kinesis:STREAM` (Kinesis keeps its shard checkpoints in the DynamoDB store).
    #[arg(long, global = true, env = "TALLY_QUEUE")]
    pub queue: Option<String>,
    /// Endpoint for every AWS client, e.g. an emulator on http://127.0.0.1:5000.
    #[arg(long, global = true, env = "TALLY_AWS_ENDPOINT")]
    pub aws_endpoint: Option<String>,
    /// The catalogue file (meters, plans with their limits, prices; JSON as
    /// `core/catalogue.json`); default: the built-in one. Every command and task of one run
    /// uses this one catalogue, so what ingest enforces and what billing charges agree.
    #[arg(long, global = true, env = "TALLY_CATALOGUE")]
    pub catalogue: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Common {
    /// The embedded default (SQLite and the local queue) under `data`, human output.
    pub fn embedded(data: impl Into<PathBuf>) -> Common {
        Common {
            data: data.into(),
            store: None,
            queue: None,
            aws_endpoint: None,
            catalogue: None,
            json: false,
        }
    }

    /// Loads the catalogue `--catalogue` names, or the built-in one.
    pub fn load_catalogue(&self) -> anyhow::Result<tally_billing::Catalogue> {
        let loaded = tally_billing::Catalogue::load_or_builtin(self.catalogue.as_deref());
        match &self.catalogue {
            Some(path) => loaded.with_context(|| format!("the catalogue {}", path.display())),
            None => loaded.context("the built-in catalogue"),
        }
    }
}

/// Parses `90s`, `30m`, `1h`, `2d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 90s, 30m or 1h, got {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => {
            return Err(format!(
                "unknown duration unit {unit:?} in {s:?}; use s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

/// How many proxies in front of `tally serve` append to `X-Forwarded-For` and are trusted
/// to (`TALLY_TRUSTED_PROXIES`, default 0: audit records show the connection's peer and the
/// header, which any client can write, is ignored).
pub fn trusted_proxies() -> anyhow::Result<usize> {
    match std::env::var("TALLY_TRUSTED_PROXIES") {
        Err(_) => Ok(0),
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= 8)
            .with_context(|| {
                format!("TALLY_TRUSTED_PROXIES must be a number from 0 to 8, got {v:?}")
            }),
    }
}

/// Each user's requests per second on the management API (`TALLY_USER_RATE`, 1 to
/// 1,000,000, bursts of twice that; default [`tally_api::USER_RATE`]).
pub fn user_rate() -> anyhow::Result<tally_core::plan::RateLimit> {
    match std::env::var("TALLY_USER_RATE") {
        Err(_) => Ok(tally_api::USER_RATE),
        Ok(v) => {
            let n = v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .with_context(|| {
                    format!("TALLY_USER_RATE must be a number from 1 to 1000000, got {v:?}")
                })?;
            Ok(tally_core::plan::RateLimit {
                per_second: n,
                burst: n.saturating_mul(2),
            })
        }
    }
}

/// An optional whole number of seconds from the environment variable `name`, from 1 to
/// `max`: `None` when it is unset or empty.
fn env_seconds(name: &str, max: u64) -> anyhow::Result<Option<Duration>> {
    parse_seconds(name, std::env::var(name).ok().as_deref(), max)
}

/// [`env_seconds`] of the variable's value `value`.
fn parse_seconds(name: &str, value: Option<&str>, max: u64) -> anyhow::Result<Option<Duration>> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .map(|n| Some(Duration::from_secs(n)))
            .with_context(|| {
                format!("{name} must be a number of seconds from 1 to {max}, got {v:?}")
            }),
    }
}

/// The DynamoDB store's claim lease (`TALLY_DYNAMODB_CLAIM_LEASE_SECONDS`, 1 to 3600;
/// default [`tally_store::dynamodb::DEFAULT_CLAIM_LEASE`]): how long events claimed by a
/// batch that has not written its intent are left to it before another aggregator takes
/// them over. For tests that kill aggregators and want their work back quickly; shorter
/// than a batch's claim-to-intent time makes live batches lose races and retry.
pub fn claim_lease() -> anyhow::Result<Option<Duration>> {
    env_seconds("TALLY_DYNAMODB_CLAIM_LEASE_SECONDS", 3600)
}

/// The DynamoDB store's writer slots (`TALLY_DYNAMODB_WRITER_SLOTS`, 0 to
/// [`tally_store::dynamodb::MAX_WRITER_SLOTS`]; default
/// [`tally_store::dynamodb::DEFAULT_WRITER_SLOTS`]): how many batches every aggregator of
/// the table may apply at once in the slotted counter format
/// (`docs/dynamodb-writer-slots.md`); 0 writes the chunked format of earlier releases.
pub fn writer_slots() -> anyhow::Result<Option<u32>> {
    parse_writer_slots(std::env::var("TALLY_DYNAMODB_WRITER_SLOTS").ok().as_deref())
}

fn parse_writer_slots(value: Option<&str>) -> anyhow::Result<Option<u32>> {
    let max = tally_store::dynamodb::MAX_WRITER_SLOTS;
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= max)
            .map(Some)
            .with_context(|| {
                format!(
                    "TALLY_DYNAMODB_WRITER_SLOTS must be a whole number from 0 to {max}, got {v:?}"
                )
            }),
    }
}

/// The visibility timeout of the SQS and Kinesis queues (`TALLY_QUEUE_VISIBILITY_SECONDS`,
/// 1 to 43200; default 30 s): how long a message or record handed out and not acknowledged
/// (its aggregator died, or left it for redelivery) stays hidden. With it set,
/// `tally aggregate` extends a slow batch's visibility by as much every third of it.
pub fn queue_visibility() -> anyhow::Result<Option<Duration>> {
    env_seconds("TALLY_QUEUE_VISIBILITY_SECONDS", 43_200)
}

/// File under `--data` holding the generated HS256 secret (hex, mode 0600).
pub const JWT_SECRET_FILE: &str = "jwt-secret";

/// The JWT configuration `serve` verifies with and `token create` signs with, the same for
/// both: RS256 with the PEM public key at `TALLY_JWT_PUBLIC_KEY` (verification only; with
/// `TALLY_JWT_ISSUER` and `TALLY_JWT_AUDIENCE` set, tokens must carry exactly those); else
/// HS256 with `TALLY_JWT_SECRET` (at least 32 bytes); else HS256 with a secret generated
/// once and kept in `<data>/jwt-secret` (0600).
pub fn jwt_config(common: &Common) -> anyhow::Result<JwtConfig> {
    if let Some(path) = std::env::var_os("TALLY_JWT_PUBLIC_KEY").filter(|v| !v.is_empty()) {
        let pem = std::fs::read(&path).with_context(|| {
            format!(
                "cannot read TALLY_JWT_PUBLIC_KEY {}",
                Path::new(&path).display()
            )
        })?;
        let config = JwtConfig::rs256_public_pem(&pem).context("TALLY_JWT_PUBLIC_KEY")?;
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        return match (var("TALLY_JWT_ISSUER"), var("TALLY_JWT_AUDIENCE")) {
            (Some(iss), Some(aud)) => Ok(config.with_issuer(&iss, &aud)),
            (None, None) => Ok(config),
            _ => anyhow::bail!("set both TALLY_JWT_ISSUER and TALLY_JWT_AUDIENCE, or neither"),
        };
    }
    if let Some(secret) = std::env::var_os("TALLY_JWT_SECRET").filter(|v| !v.is_empty()) {
        let secret = secret
            .into_string()
            .map_err(|_| anyhow::anyhow!("TALLY_JWT_SECRET must be UTF-8"))?;
        return JwtConfig::hs256(secret.as_bytes()).context("TALLY_JWT_SECRET");
    }
    let secret = data_dir_secret(&common.data)?;
    JwtConfig::hs256(secret.as_bytes()).context("the JWT secret file")
}

/// Reads `<dir>/jwt-secret`, creating it (64 hex digits, mode 0600) if it is missing.
fn data_dir_secret(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(JWT_SECRET_FILE);
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            let secret = hex::encode(bytes);
            file.write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let secret = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let secret = secret.trim().to_owned();
            if secret.len() < MIN_SECRET_LEN {
                bail!(
                    "{} holds fewer than {MIN_SECRET_LEN} characters; delete it to make a new one",
                    path.display()
                );
            }
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_slots_parse_within_their_bounds() {
        assert_eq!(parse_writer_slots(None).unwrap(), None);
        assert_eq!(parse_writer_slots(Some(" ")).unwrap(), None);
        assert_eq!(parse_writer_slots(Some("0")).unwrap(), Some(0));
        assert_eq!(parse_writer_slots(Some("64")).unwrap(), Some(64));
        for bad in ["65", "-1", "many", "3.5"] {
            let e = parse_writer_slots(Some(bad)).unwrap_err().to_string();
            assert!(
                e.contains("TALLY_DYNAMODB_WRITER_SLOTS") && e.contains("0 to 64"),
                "{e}"
            );
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn env_seconds_parse_and_refuse_clearly() {
        let name = "TALLY_X_SECONDS";
        assert_eq!(parse_seconds(name, None, 10).unwrap(), None);
        assert_eq!(parse_seconds(name, Some(" "), 10).unwrap(), None);
        assert_eq!(
            parse_seconds(name, Some(" 7 "), 10).unwrap(),
            Some(Duration::from_secs(7))
        );
        for bad in ["0", "11", "5s", "-1"] {
            let err = parse_seconds(name, Some(bad), 10).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("1 to 10"), "{err}");
        }
    }
}
