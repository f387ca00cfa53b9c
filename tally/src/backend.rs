//! Opening the backends a command runs on.
//!
//! Today that is the embedded default: SQLite (`tally.db`) and the durable local queue
//! (`queue.db`) under `--data`. The queue has its own file so ingest's writes and the
//! aggregator's writes never wait on one SQLite write lock.

use std::sync::Arc;

use anyhow::Context;
use tally_core::ports::{EventQueue, TenantStore, UsageStore};
use tally_store::local_queue::LocalQueue;
use tally_store::sqlite::SqliteStore;

use crate::Common;

/// The opened backends, shared by everything in the process.
#[derive(Clone)]
pub struct Backends {
    /// Orgs, projects, keys.
    pub tenants: Arc<dyn TenantStore>,
    /// Ledger and counters.
    pub usage: Arc<dyn UsageStore>,
    /// The queue between ingest and the aggregator.
    pub queue: Arc<dyn EventQueue>,
}

/// Opens the store only (commands that never touch the queue).
pub fn open_store(common: &Common) -> anyhow::Result<Arc<SqliteStore>> {
    std::fs::create_dir_all(&common.data)
        .with_context(|| format!("cannot create data directory {}", common.data.display()))?;
    let path = common.data.join("tally.db");
    let store =
        SqliteStore::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Arc::new(store))
}

/// Opens the store and the queue.
pub fn open(common: &Common) -> anyhow::Result<Backends> {
    let store = open_store(common)?;
    let path = common.data.join("queue.db");
    let queue =
        LocalQueue::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Backends {
        tenants: store.clone(),
        usage: store,
        queue: Arc::new(queue),
    })
}
