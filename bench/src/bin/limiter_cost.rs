//! Write cost of the rate limits ingest instances share through DynamoDB
//! (`tally_ingest::shared`), per admitted request, against the naive shared counter
//! (one conditional write per request) measured in the same run.
//!
//! For each plan (free, starter, pro) and fleet size (1, 2, 4, 16 instances), every
//! instance has its own `SharedLimits` and its own DynamoDB client on one fresh table of
//! the emulator, and sends its share of the key's traffic in 10 ms steps of a simulated
//! clock for 10 s (5 windows of 2 s; pro 4 s): either **2× the plan's rate** (a saturated key: the
//! limiter refuses half) or **half the rate** (a busy, well-behaved key). The figures are
//! the requests admitted per second, the writes the instances made (each 1 WCU: the item is
//! under 1 KB, and a failed condition is billed too) and their ratio, WCU per admitted
//! request; the baseline is the same run with blocks of one unit
//! (`rate_blocks` = the window's cap), i.e. one `UpdateItem` per admitted request.
//!
//! Only a loopback endpoint is accepted (`TALLY_TEST_AWS_ENDPOINT`).
//!
//! `TALLY_TEST_AWS_ENDPOINT=http://127.0.0.1:PORT cargo run -p tally-bench --bin limiter_cost`

use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::{DateTime, TimeDelta, Utc};
use tally_core::ids::ApiKeyId;
use tally_core::plan::PlanId;
use tally_ingest::shared::{SharedConfig, SharedLimits};
use tally_store::dynamodb::sdk::Client;
use tally_store::dynamodb::{DynamoStore, create_table};

/// Simulated seconds per run: 5 windows, 2 for pro (whose baseline writes thousands of
/// items per second to the emulator).
fn seconds(plan: PlanId) -> i64 {
    if plan == PlanId::Pro { 4 } else { 10 }
}
/// Clock steps per second.
const STEPS: i64 = 100;

/// One run's figures.
struct Run {
    admitted: u64,
    writes: u64,
}

/// `instances` limiters over `table` sending `per_second` requests in all of one key.
async fn run(
    client: &Client,
    table: &str,
    plan: PlanId,
    instances: usize,
    per_second: u64,
    config: SharedConfig,
) -> anyhow::Result<Run> {
    let limit = plan.default_rate_limit();
    let limiters: Vec<SharedLimits> = (0..instances)
        .map(|_| {
            let store = Arc::new(DynamoStore::new(client.clone(), table));
            SharedLimits::new(store, config, 1_000)
        })
        .collect();
    let key = ApiKeyId::from_random(rand::random());
    let t0: DateTime<Utc> =
        DateTime::from_timestamp(1_790_000_000, 0).context("the benchmark's start time")?;
    let mut admitted = 0;
    // Requests are spread evenly over steps and instances (a remainder carried over).
    let mut owed = 0u64;
    for step in 0..seconds(plan) * STEPS {
        let now = t0 + TimeDelta::milliseconds(step * 1_000 / STEPS);
        owed += per_second;
        let n = owed / STEPS as u64;
        owed %= STEPS as u64;
        for r in 0..n {
            let l = &limiters[(step as usize + r as usize) % instances];
            if l.take_rate(&key, limit, 1, now).await.is_ok() {
                admitted += 1;
            }
        }
    }
    Ok(Run {
        admitted,
        writes: limiters.iter().map(SharedLimits::writes).sum(),
    })
}

/// The endpoint, refused unless it is on this machine: the benchmark creates a table.
fn loopback_endpoint() -> anyhow::Result<String> {
    let url = std::env::var("TALLY_TEST_AWS_ENDPOINT")
        .context("no emulator endpoint: set TALLY_TEST_AWS_ENDPOINT=http://127.0.0.1:PORT")?;
    if !(url.starts_with("http://127.0.0.1:") || url.starts_with("http://localhost:")) {
        bail!("endpoint {url:?} is not an http loopback address; refusing to run");
    }
    Ok(url)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint = loopback_endpoint()?;
    let sdk = tally_store::aws::sdk_config(Some(&endpoint)).await;
    let table = format!("tally-limiter-cost-{:08x}", rand::random::<u32>());
    let client = Client::new(&sdk);
    create_table(&client, &table)
        .await
        .map_err(|e| anyhow::anyhow!("creating the table: {e}"))?;
    println!(
        "shared rate limits, 10 s simulated per run (pro 4 s), default blocks (rate_blocks 8) vs one write per request"
    );
    println!(
        "| plan | instances | offered req/s | admitted req/s | writes | WCU / admitted request | baseline WCU / admitted request |"
    );
    println!("|---|---|---|---|---|---|---|");
    for plan in [PlanId::Free, PlanId::Starter, PlanId::Pro] {
        let rate = u64::from(plan.default_rate_limit().per_second);
        let cap = rate * 2;
        for instances in [1usize, 2, 4, 16] {
            for offered in [rate * 2, rate / 2] {
                let shared = run(
                    &client,
                    &table,
                    plan,
                    instances,
                    offered,
                    SharedConfig::default(),
                )
                .await?;
                let naive = SharedConfig {
                    rate_blocks: u32::try_from(cap).unwrap_or(u32::MAX),
                    ..SharedConfig::default()
                };
                let base = run(&client, &table, plan, instances, offered, naive).await?;
                println!(
                    "| {plan} | {instances} | {offered} | {:.1} | {} | {:.4} | {:.4} |",
                    shared.admitted as f64 / seconds(plan) as f64,
                    shared.writes,
                    shared.writes as f64 / shared.admitted.max(1) as f64,
                    base.writes as f64 / base.admitted.max(1) as f64,
                );
            }
        }
    }
    Ok(())
}
