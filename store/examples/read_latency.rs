//! Measures what a dashboard read costs on `SqliteStore` when a month is full: one org with
//! `projects` projects (default 5) and one `sum` event per project in every hour of November
//! 2026 (720 hours), plus `noise` other orgs (default 1,000) with the same activity in one
//! project, so the org's rows sit among others as they would in a shared file.
//!
//! `cargo run --release -p tally-store --example read_latency -- [projects] [noise]`
//!
//! Prints the mean time of the reads dashboards and billing make: a month total and a
//! 30-day daily series, org-wide and for one project.

use std::hint::black_box;
use std::time::Instant;

use chrono::Duration;
use rust_decimal::Decimal;
use tally_core::event::{Event, Quantity};
use tally_core::ids::{EventId, MeterName, OrgId, ProjectId};
use tally_core::meter::Aggregation;
use tally_core::period::{Granularity, Month};
use tally_core::ports::{CounterQuery, UsageStore};
use tally_store::SqliteStore;

mod common;

use common::{arg, scratch_dir};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (projects, noise) = (arg(1, 5), arg(2, 1_000));
    let dir = scratch_dir("read")?;
    let store = SqliteStore::open(&dir.join("tally.db"))?;
    let meter = MeterName::parse("api_calls")?;
    let month = Month::new(2026, 11).ok_or("no such month")?;
    let hours = (month.end() - month.start()).num_hours();

    let org = OrgId::from_random(rand::random());
    let ps: Vec<ProjectId> = (0..projects)
        .map(|_| ProjectId::from_random(rand::random()))
        .collect();
    let mut tenants: Vec<(OrgId, ProjectId)> =
        ps.iter().map(|p| (org.clone(), p.clone())).collect();
    tenants.extend((0..noise).map(|_| {
        (
            OrgId::from_random(rand::random()),
            ProjectId::from_random(rand::random()),
        )
    }));
    let loaded = Instant::now();
    for h in 0..hours {
        let events = tenants
            .iter()
            .map(|(o, p)| {
                Ok(Event {
                    org_id: o.clone(),
                    id: EventId::parse(&format!("{:032x}", rand::random::<u128>()))?,
                    project_id: p.clone(),
                    meter: meter.clone(),
                    aggregation: Aggregation::Sum,
                    quantity: Quantity::new(Decimal::ONE)?,
                    timestamp: month.start() + Duration::hours(h),
                    properties: serde_json::Map::new(),
                })
            })
            .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
        store.apply_batch(&events).await?;
    }
    println!(
        "loaded {} events ({} orgs, {hours} hours) in {:.1}s",
        hours as usize * tenants.len(),
        noise + 1,
        loaded.elapsed().as_secs_f64()
    );

    let query = |granularity, project: Option<&ProjectId>| CounterQuery {
        org: org.clone(),
        project: project.cloned(),
        meter: meter.clone(),
        granularity,
        from: month.start(),
        to: month.end(),
    };
    for (name, q) in [
        ("month total, org-wide", query(Granularity::Month, None)),
        ("30 daily values, org-wide", query(Granularity::Day, None)),
        (
            "month total, one project",
            query(Granularity::Month, ps.first()),
        ),
        (
            "30 daily values, one project",
            query(Granularity::Day, ps.first()),
        ),
    ] {
        let runs = 200u32;
        let mut buckets = 0;
        let t = Instant::now();
        for _ in 0..runs {
            buckets = black_box(store.counter_series(&q).await?).len();
        }
        println!(
            "{name:30} {:8.1} µs per read ({buckets} buckets)",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(runs)
        );
    }
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
