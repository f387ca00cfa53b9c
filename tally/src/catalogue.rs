//! `tally catalogue`: checking a catalogue file, publishing it as a new version in the store,
//! and reading the versions; and [`in_force`] / [`for_period`], the catalogue a composition
//! root runs with.
//!
//! The rule that decides which version prices a month, and what publishing refuses, is
//! `tally_billing::versions`' module doc; the README has the schema and an example.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use tally_billing::Catalogue;
use tally_billing::versions::{self, PublishPorts, PublishRequest, Versioned};
use tally_core::Month;
use tally_core::locate::{Finding, findings};
use tally_core::ports::{CatalogueVersionSummary, MAX_CATALOGUE_BYTES};

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
            "published catalogue version {} ({}), effective from {}; processes pick it up when they start",
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
            let month = Month::of(crate::clock::from_env()?.now());
            let listed = stores
                .catalogues
                .list_catalogue_versions()
                .await
                .context("cannot list the catalogue versions")?;
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

async fn list(common: &Common) -> anyhow::Result<()> {
    let stores = crate::backend::open_store(common).await?;
    let month = Month::of(crate::clock::from_env()?.now());
    let versions = stores
        .catalogues
        .list_catalogue_versions()
        .await
        .context("cannot list the catalogue versions")?;
    let out = VersionsOutput {
        in_force: tally_core::ports::effective_version(&versions, month),
        versions,
    };
    output::print(common.json, &out, |o| {
        let rows: Vec<Vec<String>> = o
            .versions
            .iter()
            .map(|v| {
                vec![
                    v.version.to_string(),
                    v.effective_from.to_string(),
                    if Some(v.version) == o.in_force {
                        "in force".into()
                    } else {
                        String::new()
                    },
                    v.applied_at.to_rfc3339(),
                    v.applied_by.clone(),
                    v.digest.clone(),
                ]
            })
            .collect();
        output::table(
            &["VERSION", "FROM", "", "APPLIED", "BY", "DIGEST"],
            &rows,
            "no catalogue version published: the --catalogue file or the built-in one is in force",
        )
    })
}

/// The catalogue in force now: the store's version effective for the current month (by the
/// process clock, `TALLY_NOW`), else the `--catalogue` file or the built-in one. A
/// composition root reads it once at start, so a published version reaches a running
/// process when it restarts.
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
