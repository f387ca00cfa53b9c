//! `tally export` and `tally verify-report`: usage counters and ledger entries out to a
//! file, and a bill's line checked against an export of the entries it bills.
//!
//! Both write and read the rows of `tally_core::export` (the API's export route writes the
//! same), and verification recomputes a line with `tally_core::audit`, the code month close
//! recorded the line's digest with, so the three cannot drift apart. An export streams: the
//! ledger is read a page at a time and each page written before the next is read, so memory
//! stays flat whatever the month holds. `docs/audit.md` specifies the formats; Parquet is
//! written by `crate::export_parquet` from the same rows.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tally_billing::UsageReport;
use tally_core::audit::LineTally;
use tally_core::export::{
    COUNTER_COLUMNS, LEDGER_COLUMNS, counter_row, csv_record, ledger_event, ledger_row,
};
use tally_core::ports::LedgerPageQuery;
use tally_core::{MeterName, Month, OrgId};

use crate::backend::{Stores, open_store};
use crate::export_parquet::{GROUP_ROWS, ParquetStream, read_rows};
use crate::export_s3::S3Target;
use crate::manage::{any_org, org_id};
use crate::output::{print, table};
use crate::settings::Common;

/// Exit status of `verify-report` when the export does not match the line.
pub const EXIT_MISMATCH: u8 = 6;

/// Ledger entries read per page.
const PAGE: usize = 1_000;

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header row (RFC 4180).
    Csv,
    /// Apache Parquet: the same columns and rows, every column a UTF-8 string.
    Parquet,
}

/// `tally export` flags.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Export the ledger's entries (one row per event counted) instead of the counters.
    #[arg(long)]
    ledger: bool,
    /// One organization (org_…); every organization by default.
    #[arg(long)]
    org: Option<String>,
    /// The month, YYYY-MM: counters whose buckets start in it, or entries stamped in it.
    #[arg(long)]
    period: String,
    /// Only this meter. With --ledger, --org and --period these are exactly the entries of
    /// that report line (what `tally verify-report` checks).
    #[arg(long)]
    meter: Option<String>,
    /// The file format: csv, or parquet (the same rows, every column a UTF-8 string).
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
    /// Where to write: a file, `-` for stdout (the default), or `s3://BUCKET/PREFIX` (an
    /// object named `<kind>-<period>[-<org>][-<meter>].<format>` under the prefix).
    #[arg(long, default_value = "-")]
    out: String,
}

/// What `tally export` prints when it wrote to a file.
#[derive(Debug, Serialize)]
struct ExportSummary {
    /// `counters` or `ledger`.
    kind: &'static str,
    period: Month,
    format: Format,
    orgs: usize,
    rows: u64,
    out: String,
}

/// Runs `tally export`.
pub async fn export(common: &Common, args: ExportArgs) -> anyhow::Result<()> {
    let period = Month::parse(&args.period).context("--period")?;
    let org = args.org.as_deref().map(org_id).transpose()?;
    let meter = args
        .meter
        .as_deref()
        .map(MeterName::parse)
        .transpose()
        .context("--meter")?;
    let store = open_store(common).await?;
    let orgs = match &org {
        Some(id) => {
            any_org(&store, id).await?;
            vec![id.clone()]
        }
        None => {
            let mut ids = store
                .tenants
                .list_org_ids()
                .await
                .context("cannot list organizations")?;
            ids.sort();
            ids.dedup();
            ids
        }
    };
    let s3 = S3Target::parse(&args.out).transpose()?;
    let to_stdout = args.out == "-";
    // An S3 export is written to a temporary file first (see `export_s3`), deleted on drop.
    let mut staging = None;
    let mut out: Box<dyn Write> = if s3.is_some() {
        let file = tempfile::NamedTempFile::new()
            .context("cannot create a temporary file for the upload")?;
        let writer = file
            .reopen()
            .context("cannot open the temporary file for the upload")?;
        staging = Some(file);
        Box::new(BufWriter::new(writer))
    } else if to_stdout {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        let path = PathBuf::from(&args.out);
        Box::new(BufWriter::new(File::create(&path).with_context(|| {
            format!("--out: cannot create {}", path.display())
        })?))
    };
    let bar = (!common.json && std::io::stderr().is_terminal()).then(progress_bar);
    let kind = if args.ledger { "ledger" } else { "counters" };
    let rows = write_export(
        &store,
        &orgs,
        period,
        meter.as_ref(),
        args.ledger,
        args.format,
        &mut out,
        bar.as_ref(),
    )
    .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let rows = rows?;
    out.flush().context("--out: cannot write")?;
    drop(out);
    let written_to = match (&s3, &staging) {
        (Some(target), Some(file)) => {
            let key = target.key(&object_name(
                kind,
                period,
                org.as_ref(),
                meter.as_ref(),
                args.format,
            ));
            crate::export_s3::upload(common, target, &key, file.path()).await?;
            target.url(&key)
        }
        _ => args.out.clone(),
    };
    let summary = ExportSummary {
        kind,
        period,
        format: args.format,
        orgs: orgs.len(),
        rows,
        out: written_to,
    };
    if to_stdout {
        // Stdout holds the data; the summary goes to stderr, and only for people.
        if !common.json {
            eprintln!("{}", human(&summary));
        }
        return Ok(());
    }
    print(common.json, &summary, human)
}

/// The S3 object's name: `<kind>-<period>[-<org>][-<meter>].<format>`, so exports of
/// different months, orgs and meters under one prefix never overwrite each other.
fn object_name(
    kind: &str,
    period: Month,
    org: Option<&OrgId>,
    meter: Option<&MeterName>,
    format: Format,
) -> String {
    let mut name = format!("{kind}-{period}");
    if let Some(org) = org {
        name.push_str(&format!("-{org}"));
    }
    if let Some(meter) = meter {
        name.push_str(&format!("-{meter}"));
    }
    let ext = format
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    format!("{name}.{ext}")
}

fn human(s: &ExportSummary) -> String {
    format!(
        "exported {} {} rows of {} for {} organization(s) to {}",
        s.rows, s.kind, s.period, s.orgs, s.out
    )
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("exporting {spinner} {pos} rows ({per_sec}) {msg} {elapsed}")
    {
        bar.set_style(style);
    }
    bar
}

/// Where `write_export` puts rows: CSV records, or a Parquet file of the same rows.
enum Rows<'a> {
    Csv(&'a mut dyn Write),
    // Boxed: the writer's state is some hundreds of bytes, built once per export.
    Parquet(Box<ParquetStream<'a>>),
}

impl<'a> Rows<'a> {
    /// Starts the export under `columns` (the CSV header row; in Parquet, the schema
    /// `name`'s columns).
    fn start(
        format: Format,
        name: &str,
        columns: &[&str],
        out: &'a mut dyn Write,
    ) -> anyhow::Result<Self> {
        Ok(match format {
            Format::Csv => {
                let mut rows = Rows::Csv(out);
                rows.push(columns)?;
                rows
            }
            Format::Parquet => Rows::Parquet(Box::new(ParquetStream::new(
                name, columns, GROUP_ROWS, out,
            )?)),
        })
    }

    fn push<S: AsRef<str>>(&mut self, row: &[S]) -> anyhow::Result<()> {
        match self {
            Rows::Csv(out) => out
                .write_all(csv_record(row).as_bytes())
                .context("--out: cannot write"),
            Rows::Parquet(p) => p.push(row),
        }
    }

    /// Writes what a format writes last (Parquet's last row group and footer).
    fn finish(self) -> anyhow::Result<()> {
        match self {
            Rows::Csv(_) => Ok(()),
            Rows::Parquet(p) => p.finish(),
        }
    }
}

/// Writes the header and every row in `format`; answers how many rows.
#[allow(clippy::too_many_arguments)]
async fn write_export(
    store: &Stores,
    orgs: &[OrgId],
    period: Month,
    meter: Option<&MeterName>,
    ledger: bool,
    format: Format,
    out: &mut dyn Write,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<u64> {
    let (name, columns): (_, &[&str]) = if ledger {
        ("tally_ledger", &LEDGER_COLUMNS)
    } else {
        ("tally_counters", &COUNTER_COLUMNS)
    };
    let mut sink = Rows::start(format, name, columns, out)?;
    let mut rows = 0u64;
    for org in orgs {
        if let Some(bar) = bar {
            bar.set_message(org.to_string());
        }
        if ledger {
            let mut cursor = None;
            loop {
                let page = store
                    .usage
                    .ledger_page(&LedgerPageQuery::new(org, period, cursor, PAGE))
                    .await
                    .with_context(|| format!("cannot read the ledger of {org}"))?;
                for e in &page.events {
                    if meter.is_some_and(|m| *m != e.meter) {
                        continue;
                    }
                    sink.push(&ledger_row(e))?;
                    rows += 1;
                }
                if let Some(bar) = bar {
                    bar.set_position(rows);
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        } else {
            let counters = store
                .usage
                .stored_counters(org, period)
                .await
                .with_context(|| format!("cannot read the counters of {org}"))?;
            for (key, value) in &counters {
                if meter.is_some_and(|m| *m != key.meter) {
                    continue;
                }
                sink.push(&counter_row(key, *value))?;
                rows += 1;
            }
            if let Some(bar) = bar {
                bar.set_position(rows);
            }
        }
    }
    sink.finish()?;
    Ok(rows)
}

/// `tally verify-report` flags.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The organization whose bill is checked (org_…).
    #[arg(long)]
    org: String,
    /// The report's month, YYYY-MM.
    #[arg(long)]
    period: String,
    /// The line's meter.
    #[arg(long)]
    meter: String,
    /// The stored report to check against, as JSON (`tally report show --json` prints it
    /// under `report`, or the bare report); the store's copy by default.
    #[arg(long)]
    report: Option<PathBuf>,
    /// A ledger export of the line, CSV or Parquet: `tally export --ledger --org O --period P
    /// --meter M [--format parquet]`.
    file: PathBuf,
}

/// One compared field.
#[derive(Debug, Serialize)]
struct Compared {
    /// What the report line says; `None`: not recorded (a report stored before it was).
    recorded: Option<String>,
    /// What the export gives.
    recomputed: String,
    /// `match`, `mismatch` or `not recorded`.
    result: &'static str,
}

impl Compared {
    fn of(recorded: Option<String>, recomputed: String) -> Self {
        let result = match &recorded {
            None => "not recorded",
            Some(r) if *r == recomputed => "match",
            Some(_) => "mismatch",
        };
        Compared {
            recorded,
            recomputed,
            result,
        }
    }
}

/// What `tally verify-report` prints.
#[derive(Debug, Serialize)]
struct Verdict {
    org_id: OrgId,
    period: Month,
    meter: MeterName,
    quantity: Compared,
    event_count: Compared,
    digest: Compared,
    /// Whether nothing recorded differs from the export.
    matches: bool,
}

/// Runs `tally verify-report`; `Ok(false)` when the export does not match the line (the
/// caller exits [`EXIT_MISMATCH`]).
pub async fn verify_report(common: &Common, args: VerifyArgs) -> anyhow::Result<bool> {
    let org = org_id(&args.org)?;
    let period = Month::parse(&args.period).context("--period")?;
    let meter = MeterName::parse(&args.meter).context("--meter")?;
    let report = match &args.report {
        Some(path) => read_report(path)?,
        None => {
            let store = open_store(common).await?;
            any_org(&store, &org).await?;
            let stored = store
                .reports
                .get_report(&org, period)
                .await
                .context("cannot read the stored report")?;
            let Some(stored) = stored else {
                bail!("{org} has no stored report for {period} (see tally report list)");
            };
            serde_json::from_str(&stored.body)
                .with_context(|| format!("the stored report of {org} {period}"))?
        }
    };
    if report.org_id != org || report.period != period {
        bail!(
            "--report is the report of {} {}, not of {org} {period}",
            report.org_id,
            report.period
        );
    }
    let Some(line) = report.lines.iter().find(|l| l.meter == meter) else {
        bail!("the report of {org} {period} has no line for {meter}");
    };
    let tally = tally_file(&args.file, &org, period, &meter)?;
    let recomputed = tally
        .quantity()
        .with_context(|| format!("{}: cannot recompute the quantity", args.file.display()))?;
    let verdict = Verdict {
        quantity: Compared::of(
            Some(line.quantity.normalize().to_string()),
            recomputed.normalize().to_string(),
        ),
        event_count: Compared::of(
            line.event_count.map(|c| c.to_string()),
            tally.event_count().to_string(),
        ),
        digest: Compared::of(line.digest.clone(), tally.digest()),
        matches: false,
        org_id: org,
        period,
        meter,
    };
    let matches = [&verdict.quantity, &verdict.event_count, &verdict.digest]
        .iter()
        .all(|c| c.result != "mismatch");
    let verdict = Verdict { matches, ..verdict };
    print(common.json, &verdict, |v| {
        let row = |name: &str, c: &Compared| {
            vec![
                name.to_owned(),
                c.recorded.clone().unwrap_or_else(|| "-".to_owned()),
                c.recomputed.clone(),
                c.result.to_owned(),
            ]
        };
        let rows = vec![
            row("quantity", &v.quantity),
            row("events", &v.event_count),
            row("digest", &v.digest),
        ];
        format!(
            "line {} of {} {}\n{}\n{}",
            v.meter,
            v.org_id,
            v.period,
            table(&["FIELD", "RECORDED", "RECOMPUTED", "RESULT"], &rows, ""),
            if v.matches {
                "the export matches the line"
            } else {
                "the export does NOT match the line"
            }
        )
    })?;
    if !matches {
        eprintln!(
            "tally: line {} of {} {} does not match {}",
            verdict.meter,
            verdict.org_id,
            verdict.period,
            args.file.display()
        );
    }
    Ok(matches)
}

/// The report in `path`: bare, or under `report` as `tally report show --json` prints it.
fn read_report(path: &PathBuf) -> anyhow::Result<UsageReport> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--report: cannot read {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("--report: {}", path.display()))?;
    let inner = match value.get("report") {
        Some(r) => r.clone(),
        None => value,
    };
    serde_json::from_value(inner).with_context(|| format!("--report: {}", path.display()))
}

/// Tallies the ledger export at `path`, CSV or Parquet, refusing a row that cannot belong to
/// the line (another org, meter or month, or an event id seen before) with its row number.
fn tally_file(
    path: &PathBuf,
    org: &OrgId,
    period: Month,
    meter: &MeterName,
) -> anyhow::Result<LineTally> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let name = path.display();
    let mut file = std::io::BufReader::new(file);
    let mut tally = LineTally::new();
    // The ledger holds each event once; a repeated id is an edited export.
    let mut ids = HashSet::new();
    let mut add = |row: usize, fields: &[&str]| -> anyhow::Result<()> {
        let e = ledger_event(fields).with_context(|| format!("{name}: row {row}"))?;
        if e.org_id != *org || e.meter != *meter || Month::of(e.timestamp) != period {
            bail!(
                "{name}: row {row} is an entry of {} {} {}, not of the line {org} {period} {meter}",
                e.org_id,
                Month::of(e.timestamp),
                e.meter
            );
        }
        if !ids.insert(e.id.clone()) {
            bail!("{name}: row {row} repeats event {}", e.id);
        }
        tally.add(&e);
        Ok(())
    };
    // A Parquet export begins with its magic (and has no header row: its row 1 is the first
    // entry).
    let parquet = file
        .fill_buf()
        .with_context(|| format!("cannot read {name}"))?
        .starts_with(b"PAR1");
    if parquet {
        // The file may come from anyone (a customer's copy of an export), and the parquet
        // crate can panic on a corrupt one instead of returning an error: a panic is turned
        // into the same refusal, never a crash.
        let file = file.into_inner();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_rows(file, &LEDGER_COLUMNS, &mut add)
        }))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the Parquet reader failed on it")))
        .with_context(|| format!("{name}: not a readable Parquet ledger export"))?;
        return Ok(tally);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(file);
    let header = reader
        .headers()
        .with_context(|| format!("{name}: cannot read the header"))?;
    if header.iter().ne(LEDGER_COLUMNS) {
        bail!(
            "{name}: the header is not a ledger export's ({})",
            LEDGER_COLUMNS.join(",")
        );
    }
    for (i, record) in reader.records().enumerate() {
        // Row 1 is the header.
        let row = i + 2;
        let record = record.with_context(|| format!("{name}: row {row}"))?;
        let fields: Vec<&str> = record.iter().collect();
        add(row, &fields)?;
    }
    Ok(tally)
}
