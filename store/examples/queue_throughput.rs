//! Measures `LocalQueue` throughput on a fresh file: one task publishes batches of events
//! while another receives and acknowledges them.
//!
//! `cargo run --release -p tally-store --example queue_throughput -- [events] [per publish] [per receive]`
//! (defaults: 500,000 events, 1,000 per publish, 5,000 per receive).

use std::time::{Duration, Instant};

use chrono::Utc;
use rust_decimal::Decimal;
use tally_core::event::{Event, Quantity};
use tally_core::ids::{EventId, MeterName, OrgId, ProjectId};
use tally_core::meter::Aggregation;
use tally_core::ports::EventQueue;
use tally_store::LocalQueue;

mod common;

use common::{arg, scratch_dir};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (total, per_publish, per_receive) = (arg(1, 500_000), arg(2, 1_000), arg(3, 5_000));
    let dir = scratch_dir("queue")?;
    let queue = LocalQueue::open(&dir.join("queue.db"))?;
    let org = OrgId::from_random(rand::random());
    let project = ProjectId::from_random(rand::random());
    let meter = MeterName::parse("api_calls")?;
    let began = Instant::now();
    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            while n < total {
                let events: Vec<Event> = (0..per_publish.min(total - n))
                    .filter_map(|i| {
                        Some(Event {
                            org_id: org.clone(),
                            id: EventId::parse(&format!("e{}", n + i)).ok()?,
                            project_id: project.clone(),
                            meter: meter.clone(),
                            aggregation: Aggregation::Sum,
                            quantity: Quantity::new(Decimal::ONE).ok()?,
                            timestamp: Utc::now(),
                            properties: serde_json::Map::new(),
                        })
                    })
                    .collect();
                n += events.len();
                queue.publish(&events).await?;
            }
            Ok::<_, tally_core::ports::QueueError>(began.elapsed())
        })
    };
    let mut received = 0usize;
    while received < total {
        let got = queue.receive(per_receive, Duration::from_secs(1)).await?;
        received += got.iter().map(|d| d.events.len()).sum::<usize>();
        let receipts: Vec<String> = got.into_iter().map(|d| d.receipt).collect();
        queue.ack(&receipts).await?;
    }
    let published_in = producer.await??;
    let secs = began.elapsed().as_secs_f64();
    println!(
        "published {total} in {:.1}s ({:.0}/s); received and acked all in {secs:.1}s ({:.0} events/s)",
        published_in.as_secs_f64(),
        total as f64 / published_in.as_secs_f64(),
        total as f64 / secs
    );
    drop(queue);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
