//! `tally prune-ledger`, and the hourly pruning `tally serve` and `tally aggregate` run: the
//! SQLite ledger keeps an event's record [`LEDGER_RETENTION`] (45 days) after writing it,
//! as DynamoDB's TTL does, and this deletes it afterwards. Counters are never pruned.
//!
//! Why that is safe, and how the store prunes in short transactions, is in the store's
//! module doc (`tally_store::sqlite`, "Retention"). On DynamoDB there is nothing to do:
//! DynamoDB's TTL deletes the records itself.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tally_core::period::LEDGER_RETENTION;
use tally_core::ports::Clock;
use tally_store::sqlite::{PruneReport, SqliteStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::backend::{self, Backends};
use crate::output::print;
use crate::settings::Common;

/// How often `tally serve` and `tally aggregate` prune (the first time a minute after
/// start, so a restart loop does not prune in a loop).
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long after start the first pruning runs.
const FIRST_PRUNE_AFTER: Duration = Duration::from_secs(60);

/// `tally prune-ledger` flags.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Count the ledger rows that would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What `tally prune-ledger` prints.
#[derive(Debug, Serialize)]
struct PruneOut {
    /// `sqlite` or `dynamodb`.
    store: &'static str,
    /// Days a ledger record is kept after it is written.
    retention_days: i64,
    /// What the store did; `None` on DynamoDB (its TTL prunes).
    #[serde(flatten)]
    report: Option<PruneReport>,
}

/// `tally prune-ledger [--dry-run]`: prunes the SQLite ledger now, at the process's clock.
pub async fn prune_ledger(common: &Common, args: PruneArgs) -> anyhow::Result<()> {
    let now = crate::clock::from_env()?.now();
    let stores = backend::open_store(common).await?;
    let out = match stores.sqlite() {
        Some(store) => {
            // A spinner while the store works (10,000 rows per transaction); quiet in
            // `--json` mode and when stderr is not a terminal.
            let spinner = (!common.json && std::io::stderr().is_terminal()).then(|| {
                let s = indicatif::ProgressBar::new_spinner();
                s.set_message("pruning the ledger");
                s.enable_steady_tick(std::time::Duration::from_millis(120));
                s
            });
            let report = store.prune_ledger(now, args.dry_run).await;
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            PruneOut {
                store: "sqlite",
                retention_days: LEDGER_RETENTION.num_days(),
                report: Some(report?),
            }
        }
        None => PruneOut {
            store: "dynamodb",
            retention_days: LEDGER_RETENTION.num_days(),
            report: None,
        },
    };
    print(common.json, &out, |o| match &o.report {
        Some(r) if r.dry_run => format!(
            "{} ledger row(s) written before {} would be deleted (kept {} days); nothing deleted",
            r.deleted,
            r.cutoff.to_rfc3339(),
            o.retention_days
        ),
        Some(r) => format!(
            "deleted {} ledger row(s) written before {} (kept {} days) in {} transaction(s); counters untouched",
            r.deleted,
            r.cutoff.to_rfc3339(),
            o.retention_days,
            r.batches
        ),
        None => format!(
            "nothing to do: DynamoDB deletes ledger records {} days after they are written by TTL",
            o.retention_days
        ),
    })
}

/// Starts [`run_periodically`] every [`PRUNE_EVERY`] on `backends`' store when it is SQLite
/// (DynamoDB expires ledger records itself), until `stop` turns true.
pub fn spawn_periodic(
    backends: &Backends,
    clock: Arc<dyn Clock>,
    stop: &watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let store = backends.stores.sqlite().cloned()?;
    Some(tokio::spawn(run_periodically(
        store,
        clock,
        PRUNE_EVERY,
        stop.clone(),
    )))
}

/// Prunes `store`'s ledger every `every` at `clock`'s time until `stop` turns true. A failed
/// run (the store busy past its timeout) is logged and retried at the next tick.
pub async fn run_periodically(
    store: SqliteStore,
    clock: Arc<dyn Clock>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut wait = FIRST_PRUNE_AFTER.min(every);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        wait = every;
        match store.prune_ledger(clock.now(), false).await {
            Ok(r) if r.deleted > 0 => info!(
                deleted = r.deleted,
                transactions = r.batches,
                "pruned ledger rows past the retention"
            ),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "could not prune the ledger; retrying at the next interval")
            }
        }
    }
}
