//! Tally's benchmarks and the workloads they share.
//!
//! Every benchmark prints its figures beside a baseline measured in the same run, and the
//! figures that matter are recorded in `bench/RESULTS.md` with the date, the machine and the
//! command. [`workload`] generates workload W from the issues: 1,000 orgs whose activity
//! follows a Zipf distribution (s = 1.1), 5 projects each, 4 meters, events spread over one
//! simulated hour, with a share of resends, deterministic for a given seed.
//!
//! - `benches/fold.rs` (criterion): the pure batch fold in events per second per core,
//!   against a naive fold that builds six owned counter keys per event.
//! - `src/bin/ingest_load.rs`: the end-to-end ingest benchmark of `tally serve` on the
//!   embedded default (workload W over HTTP on 127.0.0.1, 1, 100 and 1,000 events per
//!   request, half-load latency, a uniform spread), beside raw SQLite inserts of the same
//!   ledger rows as the machine's ceiling.
//! - `src/bin/page_load.rs`: every request the dashboard makes for an org's pages, against
//!   `tally serve`'s code in process, for an org with a million events this month beside one
//!   with a thousand (issue 20, item 5).
//! - `src/bin/cold_start.rs`: a store holding millions of ledger entries (10 M by default),
//!   filled through the store's own `apply_batch`; then the time from starting `tally
//!   serve` on it to its first `202` (issue 21's cold-restart target).
//! - `profile_ingest.sh` (with `flamegraph.py`): a `perf` flamegraph of `tally serve` under
//!   1-event requests (issue 21, item 2).
//! - `src/bin/write_cost.rs` (run by `bench/write_cost.sh`): DynamoDB write and read units
//!   per event of workload W through the aggregator against the emulator, beside a naive
//!   six-`UpdateItem` baseline, priced at on-demand rates. [`capacity`] measures the units on
//!   the wire with an SDK interceptor, by DynamoDB's published rules.

pub mod capacity;
pub mod flags;
pub mod server;
pub mod workload;
