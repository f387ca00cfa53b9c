//! Tally's composition root, as a library: configuration, wiring, the CLI and the local
//! server. The `tally` binary (`main.rs`) only parses the command line and calls
//! [`cli::main`]; tests call the same code in process (above all [`serve::run`]).
//!
//! Layout, leaves first (no two modules import each other):
//!
//! - [`settings`]: the global flags ([`settings::Common`]), the duration syntax of flags
//!   and the JWT configuration `serve` and `token create` share.
//! - [`signal`]: the SIGINT/SIGTERM future `serve` and `aggregate` stop on.
//! - [`clock`], [`backend`], [`stripe`], [`alerts`]: the clock (`TALLY_NOW`), the backends
//!   `--store` and `--queue` name, and the outside services configured by the environment.
//! - [`catalogue`]: `tally catalogue` (check, apply, show, versions), and the catalogue in
//!   force that `serve` and `bill` run with (the store's version, else the file).
//! - [`serve`]: `tally serve`, and [`serve::run`], which runs the whole app on a bound
//!   listener until a shutdown future completes.
//! - `commands`, `bill`, `aggregate`, `replay`, `prune`, `import`, `export` (with
//!   `verify-report`; `export_parquet` is its Parquet writer), `output`: the other commands
//!   and their printing.
//! - `manage` (what the operator's management commands share: refusals, audit records),
//!   `inventory` (orgs, projects, keys), `people` (members, invitations) and `records`
//!   (usage, audit trail, reports): the operator's parity with the management API.
//! - [`cli`]: the command line and the dispatch to the commands.
//!
//! Nothing here holds business logic; see the crates it wires together.

pub mod alerts;
pub mod backend;
pub mod catalogue;
pub mod cli;
pub mod clock;
pub mod serve;
pub mod settings;
pub mod signal;
pub mod stripe;

mod aggregate;
mod bill;
mod commands;
mod export;
mod export_parquet;
mod export_s3;
mod import;
mod import_csv;
mod import_months;
mod inventory;
mod invoices;
mod manage;
mod output;
mod overrides;
mod people;
mod prune;
mod records;
mod replay;
