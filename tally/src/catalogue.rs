//! `tally catalogue`: checking a catalogue file, publishing it as a new version in the store,
//! and reading the versions; and [`in_force`] / [`for_period`], the catalogue a composition
//! root runs with, and [`Running`] / [`refresh_periodically`], how a running `tally serve`
//! picks up a newly published version without a restart.
//!
//! `tally serve` re-reads the stored versions every `--catalogue-refresh` (env
//! `TALLY_CATALOGUE_REFRESH_SECONDS`, default [`DEFAULT_REFRESH_SECONDS`]) and also right
//! after each month turns (by its clock), and swaps the catalogue in force when the version
//! effective for the current month is another one. So a version applied for the current
//! month is served within one interval of `apply`, and one applied for a later month takes
//! over when that month starts. A re-read lists the versions (one small read); only a
//! changed version is fetched and parsed. The version in force last month is kept too
//! (its meters, when it is another version): ingest validates a late event, stamped last
//! month while that month is open, with the meters of its own month.
//!
//! The rule that decides which version prices a month, and what publishing refuses, is
//! `tally_billing::versions`' module doc; the README has the schema and an example.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use tally_billing::Catalogue;
use tally_billing::versions::{self, PublishPorts, PublishRequest, Versioned};
use tally_core::Month;
use tally_core::locate::{Finding, findings};
use tally_core::ports::{CatalogueStore, CatalogueVersionSummary, Clock, MAX_CATALOGUE_BYTES};
use tally_http::{InForce, Live, LiveCatalogue};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::backend::Stores;
use crate::output;
use crate::settings::Common;

/// Exit status of `tally catalogue check` when the file is not a valid catalogue (a file that
/// cannot be read at all exits 1, as every other failure).
pub const EXIT_INVALID: u8 = 2;

/// `tally catalogue` subcommands.
#[derive(Debug, Subcommand)]
pub enum CatalogueCommand {
    /// Validate a catalogue file: every problem with its line, column and field. Exits 0 if
    /// valid, 2 if not, 1 if it cannot be read.
    Check {
        /// The catalogue file (JSON, the schema of core/catalogue.json).
        file: PathBuf,
    },
    /// Publish a catalogue file as the next version in the store. It applies from next month
    /// unless --from says otherwise (the current month or later; never a billed month).
    Apply {
        /// The catalogue file.
        file: PathBuf,
        /// The first month it prices (YYYY-MM); default: next month.
        #[arg(long)]
        from: Option<String>,
    },
    /// Print a version's catalogue JSON (default: the one in force this month, which may be
    /// the --catalogue file or the built-in one when no stored version is).
    Show {
        /// The version number.
        #[arg(long)]
        version: Option<u32>,
    },
    /// List the published versions, oldest first, and which one is in force.
    Versions,
}

/// Runs a `tally catalogue` command: `Ok(false)` when `check` found the file invalid.
pub async fn catalogue(common: &Common, cmd: CatalogueCommand) -> anyhow::Result<bool> {
    match cmd {
        CatalogueCommand::Check { file } => check(common, &file),
        CatalogueCommand::Apply { file, from } => {
            apply(common, &file, from.as_deref()).await.map(|()| true)
        }
        CatalogueCommand::Show { version } => show(common, version).await.map(|()| true),
        CatalogueCommand::Versions => list(common).await.map(|()| true),
    }
}

/// Reads a catalogue file, refusing one larger than a stored version may be.
fn read(file: &Path) -> anyhow::Result<String> {
    let len = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    if len > MAX_CATALOGUE_BYTES as u64 {
        anyhow::bail!(
            "{} is {len} bytes; a catalogue may be at most {MAX_CATALOGUE_BYTES}",
            file.display()
        );
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

#[derive(Serialize)]
struct CheckOutput {
    file: String,
    valid: bool,
    problems: Vec<Finding>,
}

fn check(common: &Common, file: &Path) -> anyhow::Result<bool> {
    let text = read(file)?;
    let origin = file.display().to_string();
    let problems = match Catalogue::from_json(&text, &origin) {
        Ok(_) => Vec::new(),
        Err(e) => findings(&e, &text),
    };
    let out = CheckOutput {
        file: origin,
        valid: problems.is_empty(),
        problems,
    };
    if common.json {
        output::print(true, &out, |_| String::new())?;
    } else if out.valid {
        println!("{}: a valid catalogue", out.file);
    } else {
        // One line a problem, `file:line:column: field: message`, as compilers print them,
        // on stdout (it is the command's answer; stderr gets the one-line summary).
        for p in &out.problems {
            let field = if p.path.is_empty() {
                String::new()
            } else {
                format!("{}: ", p.path)
            };
            println!("{}:{}:{}: {field}{}", out.file, p.line, p.column, p.message);
        }
        eprintln!(
            "tally: {} is not a valid catalogue ({} problem{})",
            out.file,
            out.problems.len(),
            if out.problems.len() == 1 { "" } else { "s" }
        );
    }
    Ok(out.valid)
}

async fn apply(common: &Common, file: &Path, from: Option<&str>) -> anyhow::Result<()> {
    let from = from
        .map(|f| Month::parse(f).map_err(|_| anyhow::anyhow!("--from must be YYYY-MM, got {f:?}")))
        .transpose()?;
    let text = read(file)?;
    let fallback = common.load_catalogue()?;
    let stores = crate::backend::open_store(common).await?;
    let now = crate::clock::from_env()?.now();
    let ports = PublishPorts {
        versions: stores.catalogues.as_ref(),
        tenants: stores.tenants.as_ref(),
        usage: stores.usage.as_ref(),
    };
    let origin = file.display().to_string();
    let request = PublishRequest {
        text: &text,
        origin: &origin,
        from,
        actor: crate::manage::OPERATOR,
        now,
    };
    let published = versions::publish(ports, &fallback, &request)
        .await
        .with_context(|| format!("cannot apply {origin}"))?;
    let summary = published.summary();
    output::print(common.json, &summary, |v| {
        format!(
            "published catalogue version {} ({}), effective from {}; running processes serve it from then, within their TALLY_CATALOGUE_REFRESH_SECONDS (default {DEFAULT_REFRESH_SECONDS} s)",
            v.version, v.digest, v.effective_from
        )
    })
}

async fn show(common: &Common, version: Option<u32>) -> anyhow::Result<()> {
    let stores = crate::backend::open_store(common).await?;
    // The version to print, and what to say if it cannot be found.
    let wanted = match version {
        Some(n) => Some((n, format!("there is no catalogue version {n}"))),
        None => {
            let (listed, month) = versions_now(&stores).await?;
            tally_core::ports::effective_version(&listed, month)
                .map(|n| (n, format!("catalogue version {n} was listed but is gone")))
        }
    };
    let body = match wanted {
        Some((n, missing)) => {
            stores
                .catalogues
                .get_catalogue_version(n)
                .await
                .with_context(|| format!("cannot read catalogue version {n}"))?
                .context(missing)?
                .body
        }
        // No version in force: the file the operator named, else the built-in catalogue.
        None => match &common.catalogue {
            Some(path) => read(path)?,
            None => tally_billing::BUILTIN_JSON.to_owned(),
        },
    };
    print!("{body}");
    if !body.ends_with('\n') {
        println!();
    }
    Ok(())
}

#[derive(Serialize)]
struct VersionsOutput {
    /// The version in force this month; `None`: the file or built-in catalogue.
    in_force: Option<u32>,
    versions: Vec<CatalogueVersionSummary>,
}

/// The store's catalogue versions and the current month (by the process clock,
/// `TALLY_NOW`): what picks the version in force.
async fn versions_now(stores: &Stores) -> anyhow::Result<(Vec<CatalogueVersionSummary>, Month)> {
    let month = Month::of(crate::clock::from_env()?.now());
    let versions = stores
        .catalogues
        .list_catalogue_versions()
        .await
        .context("cannot list the catalogue versions")?;
    Ok((versions, month))
}

async fn list(common: &Common) -> anyhow::Result<()> {
    let stores = crate::backend::open_store(common).await?;
    let (versions, month) = versions_now(&stores).await?;
    let out = VersionsOutput {
        in_force: tally_core::ports::effective_version(&versions, month),
        versions,
    };
    output::print(common.json, &out, |o| {
        output::table_of(
            &["VERSION", "FROM", "", "APPLIED", "BY", "DIGEST"],
            &o.versions,
            "no catalogue version published: the --catalogue file or the built-in one is in force",
            |v| version_row(v, o.in_force),
        )
    })
}

/// A row of `tally catalogue list`.
fn version_row(v: &CatalogueVersionSummary, in_force: Option<u32>) -> Vec<String> {
    vec![
        v.version.to_string(),
        v.effective_from.to_string(),
        if Some(v.version) == in_force {
            "in force".into()
        } else {
            String::new()
        },
        v.applied_at.to_rfc3339(),
        v.applied_by.clone(),
        v.digest.clone(),
    ]
}

/// The catalogue in force now: the store's version effective for the current month (by the
/// process clock, `TALLY_NOW`), else the `--catalogue` file or the built-in one. A
/// composition root reads it at start; `tally serve` then keeps it current with
/// [`refresh_periodically`].
pub async fn in_force(common: &Common, stores: &Stores) -> anyhow::Result<Versioned> {
    let month = Month::of(crate::clock::from_env()?.now());
    for_period(common, stores, month).await
}

/// The catalogue that prices `period`: the version effective for it, else the `--catalogue`
/// file or the built-in one.
pub async fn for_period(
    common: &Common,
    stores: &Stores,
    period: Month,
) -> anyhow::Result<Versioned> {
    let fallback = common.load_catalogue()?;
    versions::catalogue_for(stores.catalogues.as_ref(), &fallback, period)
        .await
        .with_context(|| format!("cannot find the catalogue of {period}"))
}

/// How a message names the catalogue a check used: `version N`, or `file or built-in`
/// when no stored version is in force.
pub fn describe_version(version: Option<u32>) -> String {
    match version {
        Some(n) => format!("version {n}"),
        None => "file or built-in, no version in force".to_owned(),
    }
}

/// How often a running process re-reads the stored catalogue versions by default, in
/// seconds: a version applied for the current month is in force everywhere within this
/// long, for one small store read per process per interval.
pub const DEFAULT_REFRESH_SECONDS: u64 = 30;

/// The longest refresh interval accepted (an hour): longer would leave a new month priced
/// and limited by the old version for too long after it starts.
pub const MAX_REFRESH_SECONDS: u64 = 3_600;

/// The catalogue a running process serves by: the meters and plans ingest and the API read
/// ([`LiveCatalogue`]) and the whole priced catalogue with its version (the alert task's),
/// each replaced whole by [`refresh`]. Cheap to clone; every clone sees the replacements.
#[derive(Clone)]
pub struct Running {
    /// The meters and plans of the HTTP routes (and the previous month's meters, for late
    /// events, when another version was in force then).
    pub routes: LiveCatalogue,
    /// The whole catalogue and the version it came from.
    pub whole: Live<Versioned>,
    /// Which versions the last refresh found in force this month and the last (`None`
    /// before the first).
    key: Live<Option<versions::PairKey>>,
}

impl Running {
    /// Runs with `versioned` until a refresh replaces it.
    pub fn new(versioned: Versioned) -> Running {
        Running {
            routes: Live::new(routes_of(&versioned)),
            whole: Live::new(versioned),
            key: Live::new(None),
        }
    }

    /// The version in force (`None`: the file or built-in catalogue).
    pub fn version(&self) -> Option<u32> {
        self.whole.load().version
    }
}

/// The meters and plans of `versioned`, as the HTTP routes read them.
pub fn routes_of(versioned: &Versioned) -> InForce {
    InForce::new(
        versioned.catalogue.meter_catalogue(),
        versioned.catalogue.core_plans(),
        versioned.version,
    )
}

/// Re-reads the stored versions once and swaps `running` to the versions in force for the
/// current month (by `clock`) and the previous one (whose meters validate late events) if
/// either is another one: whether it swapped. The routes are swapped before the whole
/// catalogue; each is one atomic replacement, so every request reads one version's meters
/// and plans.
pub async fn refresh(
    store: &dyn CatalogueStore,
    fallback: &Catalogue,
    running: &Running,
    clock: &dyn Clock,
) -> Result<bool, versions::VersionError> {
    let month = Month::of(clock.now());
    let known = *running.key.load();
    let Some(next) = versions::pair_changed_since(store, fallback, month, known).await? else {
        return Ok(false);
    };
    running.key.store(Some(next.key));
    let routes = next.routes();
    let before = running.routes.load();
    let previous = |r: &InForce| r.previous.as_ref().map(|p| (p.month, p.version));
    if before.version == routes.version && previous(&before) == previous(&routes) {
        return Ok(false);
    }
    running.routes.store(routes);
    info!(
        from = ?before.version,
        to = ?next.current.version,
        previous_month = ?next.key.previous,
        month = %month,
        "the catalogue in force changed; serving the new one"
    );
    running.whole.store(next.current);
    Ok(true)
}

/// `tally serve`'s refresh task: [`refresh`] every `interval`, and at each month turn by
/// `clock` (so a version effective from next month takes over as the month starts), until
/// `stop`. A failed read is logged and retried at the next tick; the process keeps the
/// catalogue it has.
pub async fn refresh_periodically(
    store: Arc<dyn CatalogueStore>,
    fallback: Arc<Catalogue>,
    running: Running,
    clock: Arc<dyn Clock>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let wait = until_next_tick(clock.as_ref(), interval);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = refresh(store.as_ref(), &fallback, &running, clock.as_ref()).await {
            warn!(error = %e, "cannot re-read the catalogue versions; keeping the one in force");
        }
    }
}

/// How long to wait before the next re-read: `interval`, or less when the month turns
/// sooner (a moment after the turn, so the clock reads the new month).
fn until_next_tick(clock: &dyn Clock, interval: Duration) -> Duration {
    let now = clock.now();
    let turn = Month::of(now).next().start() - now + chrono::Duration::milliseconds(10);
    turn.to_std().map_or(interval, |t| t.min(interval))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tally_core::ports::FixedClock;

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        s.parse().unwrap()
    }

    fn version(n: u32, from: &str) -> tally_core::ports::CatalogueVersion {
        tally_tests::catalogues::version_with_tokens(n, from, at("2026-03-10T00:00:00Z"))
    }

    fn knows_tokens(running: &Running) -> bool {
        running.routes.load().meters.get("tokens").is_some()
    }

    #[tokio::test]
    async fn a_version_for_next_month_takes_over_when_the_month_turns() {
        let store = tally_store::memory::MemoryStore::new();
        let fallback = Catalogue::builtin().unwrap();
        let clock = FixedClock::at(at("2026-03-31T23:59:00Z"));
        let running = Running::new(Versioned {
            catalogue: fallback.clone(),
            version: None,
        });
        // Nothing stored: nothing to swap.
        assert!(!refresh(&store, &fallback, &running, &clock).await.unwrap());
        assert!(
            store
                .put_catalogue_version(&version(1, "2026-04"))
                .await
                .unwrap()
        );
        // Still March: version 1 is stored but not in force.
        assert!(!refresh(&store, &fallback, &running, &clock).await.unwrap());
        assert_eq!(running.version(), None);
        assert!(!knows_tokens(&running));
        // The month turns: the same process swaps in version 1, routes and whole alike.
        clock.set(at("2026-04-01T00:00:01Z"));
        let snapshot = running.routes.load();
        assert!(refresh(&store, &fallback, &running, &clock).await.unwrap());
        assert_eq!(running.version(), Some(1));
        assert_eq!(running.routes.load().version, Some(1));
        assert!(knows_tokens(&running));
        assert!(
            snapshot.meters.get("tokens").is_none(),
            "a request's snapshot taken before the swap keeps the old catalogue"
        );
        // March's meters (the built-in ones) stay at hand for March's late events.
        let previous = running.routes.load().previous.clone().unwrap();
        assert_eq!(previous.month, Month::parse("2026-03").unwrap());
        assert_eq!(previous.version, None);
        assert!(previous.meters.get("tokens").is_none());
        // Unchanged: no second swap.
        assert!(!refresh(&store, &fallback, &running, &clock).await.unwrap());
    }

    #[test]
    fn the_next_tick_comes_at_the_month_turn_when_it_is_sooner() {
        let interval = Duration::from_secs(30);
        let clock = FixedClock::at(at("2026-03-31T23:59:55Z"));
        assert_eq!(
            until_next_tick(&clock, interval),
            Duration::from_millis(5_010)
        );
        clock.set(at("2026-03-15T00:00:00Z"));
        assert_eq!(until_next_tick(&clock, interval), interval);
    }
}
