//! Cold restart on a big store (issue 21's target: a store holding 10 million ledger
//! entries serves its first request within 5 s of `tally serve` starting).
//!
//! Fills a data directory's SQLite store with workload W's tenants and `--entries` distinct
//! events (workload W's mix, 100,000 per generated chunk, no resends), applied through the
//! store's own `apply_batch` in batches of 10,000, the aggregator's path without the queue:
//! ledger rows, sealed tables and their persisted filters, counters, exactly as `tally
//! serve` would have written them. Then, `--rounds` times, it asks the kernel to drop its
//! page cache (`/proc/sys/vm/drop_caches`; the output says whether that was allowed), starts
//! `tally serve --data DIR` and posts one fresh event every 10 ms until one is answered
//! `202`. The figure is the time from spawning the process to that `202`; the time to the
//! first answer of any kind (the listener up) is printed beside it. The server is stopped
//! with SIGTERM after each round.
//!
//! `--data DIR` keeps the directory: a second run on it skips the fill (it finds
//! `cold_start_keys.txt`, written once the fill committed). Without it a temporary
//! directory is filled and removed at the end.
//!
//! `cargo run --release -p tally-bench --bin cold_start -- [--tally PATH] [--entries N]
//!  [--rounds R] [--data DIR]`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use tally_bench::flags::each_flag;
use tally_bench::server::{create_tenants, stop};
use tally_bench::workload::{Tenants, WorkloadSpec, generate, tenants};
use tally_core::ports::UsageStore;
use tally_store::SqliteStore;

/// Events generated at a time (memory stays around 100 MB).
const CHUNK: usize = 100_000;
/// Events per `apply_batch` call.
const BATCH: usize = 10_000;
/// Longest one round may wait for its `202`.
const ROUND_LIMIT: Duration = Duration::from_secs(120);
/// Where the keys of a filled directory are kept (one per line), written last.
const KEYS_FILE: &str = "cold_start_keys.txt";

struct Args {
    tally: PathBuf,
    entries: usize,
    rounds: usize,
    data: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        tally: PathBuf::from("target/release/tally"),
        entries: 10_000_000,
        rounds: 3,
        data: None,
    };
    each_flag(|flag, value| {
        match flag {
            "--tally" => a.tally = PathBuf::from(value),
            "--entries" => a.entries = value.parse().context("--entries")?,
            "--rounds" => a.rounds = value.parse().context("--rounds")?,
            "--data" => a.data = Some(PathBuf::from(value)),
            other => bail!("unknown flag {other}"),
        }
        Ok(())
    })?;
    if !(1..=100_000_000).contains(&a.entries) || !(1..=20).contains(&a.rounds) {
        bail!("--entries must be in 1..=100000000 and --rounds in 1..=20");
    }
    Ok(a)
}

/// Applies `entries` distinct events of workload W to the store at `db`.
async fn fill(db: &Path, t: &Tenants, entries: usize) -> anyhow::Result<()> {
    let store = SqliteStore::open(db)?;
    let started = Instant::now();
    let mut done = 0usize;
    let mut chunk_no = 0u64;
    while done < entries {
        let mut spec = WorkloadSpec::w(Utc::now() - chrono::Duration::hours(1));
        spec.events = CHUNK.min(entries - done);
        spec.resend_share = 0.0;
        spec.seed = 1_000 + chunk_no;
        let events = generate(&spec, t);
        for batch in events.chunks(BATCH) {
            store.apply_batch(batch).await?;
        }
        done += events.len();
        chunk_no += 1;
        if done % 1_000_000 < CHUNK {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "  filled {done} events in {secs:.1} s ({:.0}/s)",
                done as f64 / secs
            );
        }
    }
    Ok(())
}

/// Asks the kernel to drop clean cached pages; whether it was allowed.
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// One restart: (seconds to the first answer, seconds to the first `202`).
async fn round(
    a: &Args,
    dir: &Path,
    key: &str,
    t: &Tenants,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}/v1/events");
    let started = Instant::now();
    let mut child = Command::new(&a.tally)
        .args(["serve", "--no-billing-scheduler", "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(dir)
        .env("TALLY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            dir.join("cold_start_serve.log"),
        )?))
        .spawn()
        .with_context(|| format!("cannot start {}", a.tally.display()))?;
    let http = reqwest::Client::new();
    let mut first_answer = None;
    let mut attempt = 0u64;
    let outcome = loop {
        if started.elapsed() > ROUND_LIMIT {
            break Err(anyhow::anyhow!("no 202 within {ROUND_LIMIT:?}"));
        }
        attempt += 1;
        let body = serde_json::json!({
            "id": format!("cold_{n}_{attempt}_{:016x}", rand::random::<u64>()),
            "project_id": t.projects[0][0].as_str(),
            "meter": "api_calls",
            "quantity": "1",
            "timestamp": Utc::now().to_rfc3339(),
        });
        if let Ok(r) = http.post(&url).bearer_auth(key).json(&body).send().await {
            let secs = started.elapsed().as_secs_f64();
            first_answer.get_or_insert(secs);
            if r.status() == reqwest::StatusCode::ACCEPTED {
                break Ok((first_answer.unwrap_or(secs), secs));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    stop(&mut child, Duration::from_secs(30));
    outcome
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let temp;
    let dir = match &a.data {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let t = tenants(&WorkloadSpec::w(Utc::now()));
    let keys_path = dir.join(KEYS_FILE);
    let keys: Vec<String> = if keys_path.exists() {
        println!("reusing the filled store in {}", dir.display());
        std::fs::read_to_string(&keys_path)?
            .lines()
            .map(str::to_owned)
            .collect()
    } else {
        let db = dir.join("tally.db");
        let keys = create_tenants(&db, &t).await?;
        println!("filling {} with {} events", db.display(), a.entries);
        fill(&db, &t, a.entries).await?;
        std::fs::write(&keys_path, keys.join("\n"))?;
        keys
    };
    let key = keys.first().context("the keys file is empty")?;
    let bytes: u64 = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("data directory: {:.0} MiB", bytes as f64 / 1048576.0);
    for n in 1..=a.rounds {
        let dropped = drop_caches();
        let (answer, accepted) = round(&a, &dir, key, &t, n).await?;
        println!(
            "round {n}: first answer {answer:.3} s, first 202 {accepted:.3} s after spawn (page cache dropped: {})",
            if dropped { "yes" } else { "no, not permitted" }
        );
    }
    Ok(())
}
