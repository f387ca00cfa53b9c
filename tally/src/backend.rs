//! Choosing and opening the backends a command runs on.
//!
//! `--store` picks where state lives (`sqlite:PATH`, default `<data>/tally.db`, or
//! `dynamodb:TABLE`), `--queue` what sits between ingest and the aggregator (`local`, default
//! `<data>/queue.db`, `sqs:QUEUE_URL` or `kinesis:STREAM`), and `--aws-endpoint` points every
//! AWS client at an emulator. Clients are built once per process and shared. The local queue
//! has its own SQLite file so ingest's writes and the aggregator's never wait on one lock.
//! Two settings for tests that kill aggregators come from the environment:
//! `TALLY_DYNAMODB_CLAIM_LEASE_SECONDS` and `TALLY_QUEUE_VISIBILITY_SECONDS` (see
//! [`crate::settings::claim_lease`] and [`crate::settings::queue_visibility`]), and one for
//! the DynamoDB counter format: `TALLY_DYNAMODB_WRITER_SLOTS`
//! ([`crate::settings::writer_slots`]).
//! `tally replay` opens only the queue ([`open_dead_letters`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use aws_config::SdkConfig;
use clap::Args;
use serde::Serialize;
use tally_core::ports::{
    AlertLedger, EventQueue, ReportStore, SyncLedger, TenantStore, UsageStore,
};
use tally_store::coalesce::CoalescingQueue;
use tally_store::dynamodb::DynamoStore;
use tally_store::kinesis::{KinesisConfig, KinesisQueue};
use tally_store::local_queue::{LocalQueue, LocalQueueConfig};
use tally_store::replay::DeadLetterReplay;
use tally_store::sqlite::SqliteStore;
use tally_store::sqs::{SqsConfig, SqsQueue};

use crate::output::print;
use crate::settings::Common;

/// Where state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A DynamoDB table.
    Dynamo(String),
}

/// What carries events from ingest to the aggregator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueSpec {
    /// The durable local queue in an SQLite file.
    Local(PathBuf),
    /// An SQS queue, by URL.
    Sqs(String),
    /// A Kinesis stream, by name.
    Kinesis(String),
}

fn non_empty<'a>(flag: &str, kind: &str, rest: &'a str) -> anyhow::Result<&'a str> {
    if rest.trim().is_empty() {
        bail!("{flag} {kind}: needs a value after the colon");
    }
    Ok(rest)
}

impl StoreSpec {
    /// Parses `--store`, defaulting to SQLite under `--data`.
    pub fn from_common(common: &Common) -> anyhow::Result<StoreSpec> {
        let Some(spec) = common.store.as_deref() else {
            return Ok(StoreSpec::Sqlite(common.data.join("tally.db")));
        };
        match spec.split_once(':') {
            Some(("sqlite", path)) => Ok(StoreSpec::Sqlite(PathBuf::from(non_empty(
                "--store", "sqlite", path,
            )?))),
            Some(("dynamodb", table)) => {
                let table = non_empty("--store", "dynamodb", table)?;
                let ok = (3..=255).contains(&table.len())
                    && table
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                if !ok {
                    bail!(
                        "--store dynamodb:TABLE: table names are 3 to 255 letters, digits, '_', '.' or '-', got {table:?}"
                    );
                }
                Ok(StoreSpec::Dynamo(table.to_owned()))
            }
            _ => bail!("--store must be sqlite:PATH or dynamodb:TABLE, got {spec:?}"),
        }
    }
}

impl QueueSpec {
    /// Parses `--queue`, defaulting to the local queue under `--data`.
    pub fn from_common(common: &Common) -> anyhow::Result<QueueSpec> {
        let spec = common.queue.as_deref().unwrap_or("local");
        match spec.split_once(':') {
            None if spec == "local" => Ok(QueueSpec::Local(common.data.join("queue.db"))),
            Some(("local", path)) => Ok(QueueSpec::Local(PathBuf::from(non_empty(
                "--queue", "local", path,
            )?))),
            Some(("sqs", url)) => {
                let url = non_empty("--queue", "sqs", url)?;
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    bail!(
                        "--queue sqs:QUEUE_URL needs the queue's URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME), got {url:?}"
                    );
                }
                Ok(QueueSpec::Sqs(url.to_owned()))
            }
            Some(("kinesis", stream)) => Ok(QueueSpec::Kinesis(
                non_empty("--queue", "kinesis", stream)?.to_owned(),
            )),
            _ => bail!("--queue must be local, sqs:QUEUE_URL or kinesis:STREAM, got {spec:?}"),
        }
    }
}

/// The opened stores.
#[derive(Clone)]
pub struct Stores {
    /// Orgs, projects, keys.
    pub tenants: Arc<dyn TenantStore>,
    /// Ledger and counters.
    pub usage: Arc<dyn UsageStore>,
    /// Billing's usage reports.
    pub reports: Arc<dyn ReportStore>,
    /// The Stripe sync's ledger of steps (and webhook events).
    pub sync: Arc<dyn SyncLedger>,
    /// The outbox of plan-limit alerts.
    pub alerts: Arc<dyn AlertLedger>,
    /// The published catalogue versions (`tally catalogue apply`).
    pub catalogues: Arc<dyn tally_core::ports::CatalogueStore>,
    /// Each org's price overrides (`tally org override`).
    pub overrides: Arc<dyn tally_core::ports::OverrideStore>,
    /// The series of dimensioned meters and their cardinality bound (ingest).
    pub series: Arc<dyn tally_core::ports::SeriesRegistry>,
    /// The DynamoDB table, when the store is DynamoDB (Kinesis checkpoints live there too).
    dynamo: Option<(aws_sdk_dynamodb::Client, String)>,
    /// The SQLite store, when the store is SQLite: its ledger is pruned by Tally (on
    /// DynamoDB, TTL does it).
    sqlite: Option<SqliteStore>,
    /// The AWS configuration, built once if any AWS backend is in use.
    aws: Option<SdkConfig>,
}

/// The opened backends, shared by everything in the process.
#[derive(Clone)]
pub struct Backends {
    /// The stores.
    pub stores: Stores,
    /// The queue between ingest and the aggregator.
    pub queue: Arc<dyn EventQueue>,
}

impl Stores {
    /// Every store port served by the one `store`, on `dynamo`'s table when it is DynamoDB.
    fn of<S>(
        store: Arc<S>,
        dynamo: Option<(aws_sdk_dynamodb::Client, String)>,
        aws: Option<SdkConfig>,
    ) -> Stores
    where
        S: TenantStore
            + UsageStore
            + ReportStore
            + SyncLedger
            + AlertLedger
            + tally_core::ports::CatalogueStore
            + tally_core::ports::OverrideStore
            + tally_core::ports::SeriesRegistry
            + 'static,
    {
        Stores {
            tenants: store.clone(),
            usage: store.clone(),
            reports: store.clone(),
            sync: store.clone(),
            alerts: store.clone(),
            catalogues: store.clone(),
            overrides: store.clone(),
            series: store,
            dynamo,
            sqlite: None,
            aws,
        }
    }

    /// The SQLite store, whose ledger [`crate::prune`] prunes; `None` on DynamoDB.
    pub fn sqlite(&self) -> Option<&SqliteStore> {
        self.sqlite.as_ref()
    }
}

async fn aws_config(common: &Common, cached: &mut Option<SdkConfig>) -> SdkConfig {
    if let Some(c) = cached {
        return c.clone();
    }
    let c = tally_store::aws::sdk_config(common.aws_endpoint.as_deref()).await;
    *cached = Some(c.clone());
    c
}

/// Opens the store only (commands that never touch the queue).
pub async fn open_store(common: &Common) -> anyhow::Result<Stores> {
    match StoreSpec::from_common(common)? {
        StoreSpec::Sqlite(path) => {
            create_parent_dir(&path)?;
            // Ledger rows carry their write time from the process's clock (`TALLY_NOW`), the
            // clock pruning and reconcile go by.
            let store = SqliteStore::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?
                .with_clock(crate::clock::from_env()?);
            Ok(Stores {
                sqlite: Some(store.clone()),
                ..Stores::of(Arc::new(store), None, None)
            })
        }
        StoreSpec::Dynamo(table) => {
            let mut aws = None;
            let config = aws_config(common, &mut aws).await;
            let client = aws_sdk_dynamodb::Client::new(&config);
            let mut store = DynamoStore::new(client.clone(), table.clone());
            if let Some(lease) = crate::settings::claim_lease()? {
                store = store.with_claim_lease(lease);
            }
            if let Some(slots) = crate::settings::writer_slots()? {
                store = store.with_writer_slots(slots);
            }
            let store = Arc::new(store);
            Ok(Stores::of(store, Some((client, table)), aws))
        }
    }
}

/// Opens the store and the queue.
pub async fn open(common: &Common) -> anyhow::Result<Backends> {
    let mut stores = open_store(common).await?;
    let queue: Arc<dyn EventQueue> = match QueueSpec::from_common(common)? {
        QueueSpec::Local(path) => {
            create_parent_dir(&path)?;
            Arc::new(
                LocalQueue::open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            )
        }
        QueueSpec::Sqs(url) => {
            let config = aws_config(common, &mut stores.aws).await;
            let client = aws_sdk_sqs::Client::new(&config);
            match crate::settings::queue_visibility()? {
                // Concurrent ingest requests share SendMessageBatch calls (store::coalesce).
                Some(visibility_timeout) => Arc::new(CoalescingQueue::new(SqsQueue::with_config(
                    client,
                    url,
                    SqsConfig {
                        visibility_timeout,
                        ..SqsConfig::default()
                    },
                ))),
                None => Arc::new(CoalescingQueue::new(SqsQueue::new(client, url))),
            }
        }
        QueueSpec::Kinesis(stream) => {
            let Some((dynamo, table)) = stores.dynamo.clone() else {
                bail!(
                    "--queue kinesis:STREAM keeps its shard checkpoints in DynamoDB; use it with --store dynamodb:TABLE"
                );
            };
            let config = aws_config(common, &mut stores.aws).await;
            let key_spread = match std::env::var("TALLY_KINESIS_KEY_SPREAD") {
                Ok(v) if !v.trim().is_empty() => tally_core::envelope::parse_key_spread(&v)
                    .map_err(|why| anyhow::anyhow!("TALLY_KINESIS_KEY_SPREAD {why}"))?,
                _ => tally_core::envelope::DEFAULT_KEY_SPREAD,
            };
            // Concurrent ingest requests share PutRecords calls (store::coalesce).
            Arc::new(CoalescingQueue::new(KinesisQueue::with_config(
                aws_sdk_kinesis::Client::new(&config),
                stream,
                dynamo,
                table,
                "aggregator",
                KinesisConfig {
                    key_spread,
                    visibility_timeout: crate::settings::queue_visibility()?
                        .unwrap_or(KinesisConfig::default().visibility_timeout),
                    ..KinesisConfig::default()
                },
            )))
        }
    };
    Ok(Backends { stores, queue })
}

/// Opens the queue `--queue` names for replaying its dead letters (`tally replay`), without
/// the store. Kinesis is refused: its on-failure destination keeps only pointers to the
/// records, not the records, so there is nothing to put back.
pub async fn open_dead_letters(common: &Common) -> anyhow::Result<Box<dyn DeadLetterReplay>> {
    match QueueSpec::from_common(common)? {
        QueueSpec::Local(path) => {
            if !path.exists() {
                bail!(
                    "no local queue at {} (check --data or --queue)",
                    path.display()
                );
            }
            // Not a consumer: messages a running aggregator has in flight stay with it.
            let config = LocalQueueConfig {
                redeliver_on_open: false,
                checkpoint_interval: None,
                ..LocalQueueConfig::default()
            };
            Ok(Box::new(
                LocalQueue::open_with(&path, config)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ))
        }
        QueueSpec::Sqs(url) => {
            let config = aws_config(common, &mut None).await;
            Ok(Box::new(SqsQueue::new(
                aws_sdk_sqs::Client::new(&config),
                url,
            )))
        }
        QueueSpec::Kinesis(_) => bail!(
            "--queue kinesis: cannot replay dead letters: Kinesis's on-failure destination keeps only pointers to the records, not the records"
        ),
    }
}

/// Creates the directory `path` (a store or queue file) will be in, if it names one.
fn create_parent_dir(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    Ok(())
}

/// `tally init` flags.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Shards for a new Kinesis stream.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    shards: u32,
}

#[derive(Serialize, Default)]
struct InitOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter_queue_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sqlite: Option<PathBuf>,
}

/// Creates what `--store` and `--queue` name. For SQS the queue's name is the last segment of
/// its URL; the URL printed is the one to pass to `--queue sqs:` from then on.
pub async fn init(common: &Common, args: InitArgs) -> anyhow::Result<()> {
    let mut out = InitOut::default();
    let mut aws = None;
    match StoreSpec::from_common(common)? {
        StoreSpec::Sqlite(path) => {
            // Opening creates the file and its schema.
            open_store(common).await?;
            out.sqlite = Some(path);
        }
        StoreSpec::Dynamo(table) => {
            let config = aws_config(common, &mut aws).await;
            tally_store::dynamodb::create_table(&aws_sdk_dynamodb::Client::new(&config), &table)
                .await
                .with_context(|| format!("cannot create DynamoDB table {table}"))?;
            out.table = Some(table);
        }
    }
    match QueueSpec::from_common(common)? {
        QueueSpec::Local(path) => {
            LocalQueue::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        }
        QueueSpec::Sqs(url) => {
            let name = url
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            if name.is_empty() {
                bail!("--queue sqs:QUEUE_URL: cannot find a queue name at the end of {url:?}");
            }
            let config = aws_config(common, &mut aws).await;
            let (queue_url, dlq_url) =
                tally_store::sqs::create_queues(&aws_sdk_sqs::Client::new(&config), &name)
                    .await
                    .with_context(|| format!("cannot create SQS queue {name}"))?;
            out.queue_url = Some(queue_url);
            out.dead_letter_queue_url = Some(dlq_url);
        }
        QueueSpec::Kinesis(stream) => {
            let config = aws_config(common, &mut aws).await;
            tally_store::kinesis::create_stream(
                &aws_sdk_kinesis::Client::new(&config),
                &stream,
                args.shards,
            )
            .await
            .with_context(|| format!("cannot create Kinesis stream {stream}"))?;
            out.stream = Some(stream);
        }
    }
    print(common.json, &out, |o| {
        let mut parts = Vec::new();
        if let Some(p) = &o.sqlite {
            parts.push(format!("sqlite {}", p.display()));
        }
        if let Some(t) = &o.table {
            parts.push(format!("table {t}"));
        }
        if let Some(q) = &o.queue_url {
            parts.push(format!(
                "queue {q} (dead letters: {})",
                o.dead_letter_queue_url.as_deref().unwrap_or("?")
            ));
        }
        if let Some(s) = &o.stream {
            parts.push(format!("stream {s}"));
        }
        format!("ready: {}", parts.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(store: Option<&str>, queue: Option<&str>) -> Common {
        Common {
            data: PathBuf::from("/d"),
            store: store.map(str::to_owned),
            queue: queue.map(str::to_owned),
            aws_endpoint: None,
            catalogue: None,
            json: false,
        }
    }

    #[test]
    fn specs_parse_and_refuse_clearly() {
        assert_eq!(
            StoreSpec::from_common(&common(None, None)).unwrap(),
            StoreSpec::Sqlite("/d/tally.db".into())
        );
        assert_eq!(
            StoreSpec::from_common(&common(Some("dynamodb:tally"), None)).unwrap(),
            StoreSpec::Dynamo("tally".into())
        );
        assert!(StoreSpec::from_common(&common(Some("dynamodb:"), None)).is_err());
        assert!(StoreSpec::from_common(&common(Some("dynamodb:a b c"), None)).is_err());
        assert!(StoreSpec::from_common(&common(Some("postgres:x"), None)).is_err());
        assert_eq!(
            QueueSpec::from_common(&common(None, None)).unwrap(),
            QueueSpec::Local("/d/queue.db".into())
        );
        assert_eq!(
            QueueSpec::from_common(&common(None, Some("kinesis:s"))).unwrap(),
            QueueSpec::Kinesis("s".into())
        );
        assert!(QueueSpec::from_common(&common(None, Some("sqs:events"))).is_err());
        assert_eq!(
            QueueSpec::from_common(&common(None, Some("sqs:http://127.0.0.1:1/123/q"))).unwrap(),
            QueueSpec::Sqs("http://127.0.0.1:1/123/q".into())
        );
    }
}
