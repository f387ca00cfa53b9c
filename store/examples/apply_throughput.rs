//! Measures `SqliteStore::apply_batch` throughput on a fresh file: events of many orgs with
//! random ids (the ledger's worst case), applied in batches.
//!
//! `cargo run --release -p tally-store --example apply_throughput -- [events] [batch] [orgs]`
//! (defaults: 1,000,000 events, 1,000 per batch, 1,000 orgs).

use std::time::Instant;

use chrono::{Duration, Utc};
use rust_decimal::Decimal;
use tally_core::event::{Event, Quantity};
use tally_core::ids::{EventId, MeterName, OrgId, ProjectId};
use tally_core::meter::Aggregation;
use tally_core::ports::UsageStore;
use tally_store::SqliteStore;

mod common;

use common::{arg, scratch_dir};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (total, batch, orgs) = (arg(1, 1_000_000), arg(2, 1_000), arg(3, 1_000));
    let dir = scratch_dir("apply")?;
    // CHECKPOINT_MS=0 leaves checkpoints to SQLite (on commit), for comparison; CACHE_MIB
    // sets the writer's page cache.
    let mut config = tally_store::SqliteConfig::default();
    if let Some(ms) = std::env::var("CHECKPOINT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.checkpoint_interval = (ms > 0).then(|| std::time::Duration::from_millis(ms));
    }
    if let Some(mib) = std::env::var("CACHE_MIB").ok().and_then(|v| v.parse().ok()) {
        config.writer_cache_mib = mib;
    }
    let store = SqliteStore::open_with(&dir.join("tally.db"), config)?;
    let org_ids: Vec<OrgId> = (0..orgs)
        .map(|_| OrgId::from_random(rand::random()))
        .collect();
    let projects: Vec<ProjectId> = (0..orgs * 2)
        .map(|_| ProjectId::from_random(rand::random()))
        .collect();
    let meter = MeterName::parse("api_calls")?;
    let start_ts = Utc::now() - Duration::hours(1);
    let mut applied = 0usize;
    let mut busy = std::time::Duration::ZERO;
    let began = Instant::now();
    let mut n = 0usize;
    while n < total {
        let events: Vec<Event> = (0..batch.min(total - n))
            .map(|i| {
                let o = rand::random_range(0..orgs);
                Ok(Event {
                    org_id: org_ids[o].clone(),
                    id: EventId::parse(&format!("{:032x}", rand::random::<u128>()))?,
                    project_id: projects[o * 2 + rand::random_range(0..2)].clone(),
                    meter: meter.clone(),
                    aggregation: Aggregation::Sum,
                    quantity: Quantity::new(Decimal::ONE)?,
                    timestamp: start_ts + Duration::milliseconds(((n + i) / 50) as i64),
                    properties: serde_json::Map::new(),
                })
            })
            .collect::<Result<_, Box<dyn std::error::Error>>>()?;
        let t = Instant::now();
        applied += store.apply_batch(&events).await?.applied();
        busy += t.elapsed();
        n += events.len();
        if n % (total / 10).max(batch) < batch {
            println!(
                "{n:>9} events: {:>8.0} events/s in apply_batch",
                n as f64 / busy.as_secs_f64()
            );
        }
    }
    println!(
        "applied {applied} of {total} in {:.1}s wall, {:.0} events/s in apply_batch",
        began.elapsed().as_secs_f64(),
        total as f64 / busy.as_secs_f64()
    );
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
