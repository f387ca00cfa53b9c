//! `tally import FILE`: backfill and migration of usage from a file of events.
//!
//! The file is NDJSON: one event per line in the shape `POST /v1/events` takes (`id`,
//! `project_id`, `meter`, `quantity`, `timestamp`, `properties`), for the org named by
//! `--org` (`-` reads stdin). Or CSV (`--format csv`, the default for a `.csv` name): a
//! header line, then one event per line, each rewritten into that JSON through the
//! `--columns` mapping ([`crate::import_csv`]); errors then name the column. Blank lines
//! are skipped; line numbers count every line from 1 (the header included).
//!
//! Each line goes through ingest's own checks: [`Event::validate`] (fields, id, meter of the
//! catalogue version in force in the event's own month, as month close prices that month,
//! see [`crate::import_months`]; quantity and properties bounds, repeated keys, a timestamp
//! at most five minutes ahead) and then [`tally_ingest::placement`] with ingest's cached
//! [`Lookups`] (a live project of the org: `unknown_project`, `project_archived`; a month
//! still open: `period_closed`). What passes is applied straight to the store in batches of
//! [`BATCH`] through [`UsageStore::apply_batch`], the aggregator's exactly-once ledger:
//! an id already counted is a `duplicate` and changes nothing, so running an interrupted
//! import again resumes it, and running a finished one again reports every line
//! `duplicate` (while the ledger still holds the ids: 45 days after they were written on
//! SQLite, the TTL on DynamoDB). The server need not run. Events the store reports
//! `Failed` are retried up to [`APPLY_ATTEMPTS`] times in all, then rejected as
//! `apply_failed` (run the import again); an event that would take its org's month total
//! past 10^19 is rejected as `counter_overflow`.
//!
//! With `--into-closed`, events of months that are closed (billed, or out of ingest's open
//! window) are applied too, and the summary counts them: billing reports them as
//! adjustments on the next report. Without it they are rejected as `period_closed`.
//! Hard plan limits are not applied: an import records usage that already happened.
//!
//! Bounds: a line is at most [`MAX_LINE_BYTES`] (a longer one is rejected as
//! `line_too_long` and skipped), a file at most [`MAX_LINES`] lines (the import stops with an
//! error at the next one: split the file). The summary prints `accepted`, `duplicate`,
//! `rejected` and the first [`SHOWN_REJECTIONS`] rejections (line, code, field);
//! `--rejected FILE` writes every rejected line as NDJSON (line number, id, error and the
//! line's text), in line order except that the few refused when applied (`counter_overflow`,
//! `apply_failed`) come up to one batch late: a batch is applied while the next is read. The exit status is [`EXIT_REJECTED`] when any line was rejected. On a
//! terminal (stderr, without `--json`) a progress bar shows bytes read, the rate and the ETA.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tally_core::event::{ErrorCode, EventError};
use tally_core::period::{Month, open_for_events};
use tally_core::ports::{ApplyOutcome, Clock, StoreError, UsageStore};
use tally_core::{Event, OrgId};
use tally_ingest::CacheConfig;
use tally_ingest::body::BodyFormat;
use tally_ingest::lookups::{Lookups, ProjectState};
use tally_ingest::{Rejection, placement};

use crate::backend;
use crate::import_csv::{CsvLayout, parse_columns};
use crate::import_months::MonthMeters;
use crate::output::{print, table_of};
use crate::settings::Common;

/// Longest line, in bytes (without its line break): far above what an event can be
/// (properties are at most 4 KiB).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most lines of one file; split larger files (a rerun of each is harmless).
pub const MAX_LINES: u64 = 10_000_000;
/// Events applied per [`UsageStore::apply_batch`] call, like a full `POST /v1/events`.
pub const BATCH: usize = 1_000;
/// Calls to the store for an event it reports `Failed` (the first included).
pub const APPLY_ATTEMPTS: u32 = 5;
/// Rejections listed in the summary (all of them go to `--rejected`).
pub const SHOWN_REJECTIONS: usize = 20;
/// Exit status when at least one line was rejected.
pub const EXIT_REJECTED: u8 = 5;

/// Code of a line longer than [`MAX_LINE_BYTES`].
pub const LINE_TOO_LONG: &str = "line_too_long";
/// Code of an event the store did not apply after [`APPLY_ATTEMPTS`] calls.
pub const APPLY_FAILED: &str = "apply_failed";
/// Code of an event that would overflow its org's month counter.
pub const COUNTER_OVERFLOW: &str = "counter_overflow";

/// `tally import` flags.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file of events: NDJSON (one `POST /v1/events` event object per line) or CSV (see
    /// `--format`); `-` for stdin.
    file: PathBuf,
    /// The organization the events are for (org_…).
    #[arg(long)]
    org: String,
    /// Write every rejected line here as NDJSON: line number, id, error, text (replaced if
    /// it exists).
    #[arg(long, value_name = "FILE")]
    rejected: Option<PathBuf>,
    /// Apply events of closed months too: they become adjustments on the next report.
    #[arg(long)]
    into_closed: bool,
    /// The file's format; by default csv for a name ending in .csv, else ndjson.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// For CSV: which column holds which event field, as FIELD=COLUMN pairs separated by
    /// commas (e.g. id=event_id,quantity=qty,properties.region=region); unmapped fields are
    /// read from the column named like them.
    #[arg(long, value_delimiter = ',', value_name = "FIELD=COLUMN")]
    columns: Vec<String>,
}

/// What the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON event object per line.
    Ndjson,
    /// A header line, then one event per line (see `--columns`).
    Csv,
}

/// One rejected line.
#[derive(Debug, Clone, Serialize)]
pub struct LineRejection {
    /// Line number, from 1.
    pub line: u64,
    /// The event's id when one could be read.
    pub id: Option<String>,
    /// Machine-readable reason, as `POST /v1/events` names it.
    pub code: String,
    /// The offending field, when one field is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// What `tally import` prints.
#[derive(Debug, Default, Serialize)]
pub struct ImportSummary {
    /// The org imported into.
    pub org_id: String,
    /// Events read (non-blank lines).
    pub events: u64,
    /// Newly counted.
    pub accepted: u64,
    /// Already counted (by an earlier run, ingest, or an earlier line): not counted again.
    pub duplicate: u64,
    /// Of the duplicates, those whose contents differ from the copy counted (the first copy
    /// stays counted).
    pub duplicate_conflicts: u64,
    /// Refused.
    pub rejected: u64,
    /// Of the accepted, those in closed months (`--into-closed`): adjustments on the next
    /// report.
    pub into_closed: u64,
    /// The first rejections, in line order.
    pub rejections: Vec<LineRejection>,
    /// Where every rejected line was written (`--rejected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_file: Option<String>,
}

/// What `--rejected` holds per line.
#[derive(Serialize)]
struct RejectedLine<'a> {
    #[serde(flatten)]
    rejection: &'a LineRejection,
    /// The line as read (absent when it was too long or not UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

/// Runs `tally import`; `Ok(false)` when some line was rejected (the caller exits
/// [`EXIT_REJECTED`]).
pub async fn import(common: &Common, args: ImportArgs) -> anyhow::Result<bool> {
    let org = OrgId::parse(&args.org).context("--org")?;
    let format = args.format.unwrap_or_else(|| {
        let csv = args
            .file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        if csv { Format::Csv } else { Format::Ndjson }
    });
    let columns = parse_columns(&args.columns)?;
    if format == Format::Ndjson && !columns.is_empty() {
        bail!("--columns is for CSV files (--format csv)");
    }
    let fallback = common.load_catalogue()?;
    let clock = crate::clock::from_env()?;
    let (input, size): (Box<dyn Read>, Option<u64>) = if args.file.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let stores = backend::open_store(common).await?;
    let lookups = Lookups::new(
        stores.tenants.clone(),
        stores.tenants.clone(),
        stores.usage.clone(),
        clock.clone(),
        &CacheConfig::default(),
    );
    if lookups
        .org_plan(&org)
        .await
        .context("cannot read the organization")?
        .is_none()
    {
        bail!("--org: there is no organization {org} (or it was deleted)");
    }
    if let Some(path) = &args.rejected
        && let (Ok(a), Ok(b)) = (path.canonicalize(), args.file.canonicalize())
        && a == b
    {
        bail!("--rejected must not be the file imported");
    }
    let rejected_out = match &args.rejected {
        Some(path) => Some(BufWriter::new(File::create(path).with_context(|| {
            format!("--rejected: cannot create {}", path.display())
        })?)),
        None => None,
    };
    let bar = (!common.json && std::io::stderr().is_terminal()).then(|| progress_bar(size));
    let mut run = Run {
        org: org.clone(),
        meters: MonthMeters::new(stores.catalogues.clone(), fallback),
        // The series bound of dimensioned meters holds for imported events as for posted
        // ones.
        series: tally_ingest::series::SeriesGuard::new(
            Some(stores.series.clone()),
            clock.clone(),
            10_000,
        ),
        clock,
        usage: stores.usage.clone(),
        lookups,
        into_closed: args.into_closed,
        format,
        columns,
        csv: None,
        rejected_out,
        pending: Vec::with_capacity(BATCH),
        in_flight: None,
        summary: ImportSummary {
            org_id: org.to_string(),
            rejected_file: args.rejected.as_ref().map(|p| p.display().to_string()),
            ..ImportSummary::default()
        },
    };
    let read = run.read_all(BufReader::new(input), bar.as_ref()).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if let Some(out) = run.rejected_out.as_mut() {
        out.flush().context("--rejected: cannot write")?;
    }
    read?;
    print(common.json, &run.summary, human)?;
    Ok(run.summary.rejected == 0)
}

fn progress_bar(size: Option<u64>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
    let template = if size.is_some() {
        "importing [{bar:30}] {percent}% {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}) {msg} ETA {eta}"
    } else {
        "importing {spinner} {binary_bytes} ({binary_bytes_per_sec}) {msg} {elapsed}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// An event that passed the checks, waiting for its batch.
struct Pending {
    line: u64,
    event: Event,
    closed: bool,
}

struct Run {
    org: OrgId,
    /// The meters of each event's month.
    meters: MonthMeters,
    series: tally_ingest::series::SeriesGuard,
    clock: Arc<dyn Clock>,
    usage: Arc<dyn UsageStore>,
    lookups: Lookups,
    into_closed: bool,
    format: Format,
    /// `--columns`, until the header is read.
    columns: Vec<(String, String)>,
    /// The CSV layout, once the header line is read.
    csv: Option<CsvLayout>,
    rejected_out: Option<BufWriter<File>>,
    pending: Vec<Pending>,
    /// The batch being applied: its events and outcomes.
    in_flight: Option<tokio::task::JoinHandle<(Vec<Pending>, Applied)>>,
    summary: ImportSummary,
}

/// What [`apply_with_retries`] answers.
type Applied = Result<(Vec<Option<ApplyOutcome>>, Vec<bool>), StoreError>;

/// One line as read.
enum Line {
    /// The line (without its line break).
    Text(Vec<u8>),
    /// Longer than [`MAX_LINE_BYTES`]; skipped.
    TooLong,
}

/// Reads the next line, never holding more than [`MAX_LINE_BYTES`] + 1 bytes of it;
/// `None` at the end. `consumed` is increased by the bytes read.
fn next_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    consumed: &mut u64,
) -> std::io::Result<Option<Line>> {
    buf.clear();
    let n = reader
        .by_ref()
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buf)?;
    *consumed += n as u64;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > MAX_LINE_BYTES {
        // The rest of the line, up to and including its break, is skipped unread.
        let mut rest = 0u64;
        loop {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            let (used, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            reader.consume(used);
            rest += used as u64;
            if done {
                break;
            }
        }
        *consumed += rest;
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(Line::Text(std::mem::take(buf))))
}

impl Run {
    async fn read_all(
        &mut self,
        mut reader: impl BufRead,
        bar: Option<&ProgressBar>,
    ) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        let mut consumed = 0u64;
        let mut number = 0u64;
        while let Some(line) = next_line(&mut reader, &mut buf, &mut consumed)
            .with_context(|| format!("cannot read line {}", number + 1))?
        {
            number += 1;
            if number > MAX_LINES {
                self.apply_pending().await?;
                self.settle_in_flight().await?;
                bail!(
                    "the file has more than {MAX_LINES} lines; the first {MAX_LINES} were \
                     imported: split the rest into another file"
                );
            }
            match line {
                Line::TooLong => {
                    self.summary.events += 1;
                    let e = EventError::new(
                        ErrorCode::MalformedEvent,
                        "",
                        format!("the line is longer than {MAX_LINE_BYTES} bytes"),
                    );
                    let mut r = rejection(number, None, e);
                    r.code = LINE_TOO_LONG.to_owned();
                    self.reject(r, None)?;
                }
                Line::Text(bytes) => {
                    if bytes.iter().all(u8::is_ascii_whitespace) {
                        buf = bytes;
                        continue;
                    }
                    if self.format == Format::Csv && self.csv.is_none() {
                        let header = std::str::from_utf8(&bytes)
                            .map_err(|_| anyhow::anyhow!("the CSV header line is not UTF-8"))?;
                        self.csv = Some(CsvLayout::new(header, &self.columns)?);
                        buf = bytes;
                        continue;
                    }
                    self.summary.events += 1;
                    self.check_line(number, &bytes).await?;
                    buf = bytes;
                }
            }
            if self.pending.len() >= BATCH {
                self.apply_pending().await?;
            }
            if let Some(bar) = bar
                && number.is_multiple_of(1_000)
            {
                bar.set_position(consumed);
                let secs = bar.elapsed().as_secs_f64().max(0.001);
                bar.set_message(format!(
                    "{} events ({:.0}/s): {} accepted, {} duplicate, {} rejected",
                    self.summary.events,
                    self.summary.events as f64 / secs,
                    self.summary.accepted,
                    self.summary.duplicate,
                    self.summary.rejected
                ));
            }
        }
        self.apply_pending().await?;
        self.settle_in_flight().await
    }

    /// Validates one non-blank line: rejected, or queued for the next batch.
    async fn check_line(&mut self, number: u64, bytes: &[u8]) -> anyhow::Result<()> {
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let e = EventError::new(
                    ErrorCode::MalformedEvent,
                    "",
                    format!(
                        "the line must be UTF-8 JSON; invalid UTF-8 at byte {}",
                        e.valid_up_to()
                    ),
                );
                return self.reject(rejection(number, None, e), None);
            }
        };
        let json: Cow<'_, str> = match &self.csv {
            None => Cow::Borrowed(text),
            Some(layout) => match layout.to_json(text) {
                Ok(json) => Cow::Owned(json),
                Err(e) => {
                    let r = self.rejection(number, None, e);
                    return self.reject(r, Some(text));
                }
            },
        };
        let now = self.clock.now();
        let (meters, checked) = self.meters.validate(&self.org, &json, now).await?;
        let event = match checked {
            Ok(event) => event,
            Err(e) => {
                let r = self.rejection(number, Event::id_hint(&json), e);
                return self.reject(r, Some(text));
            }
        };
        let project = self
            .lookups
            .project_in_org(&self.org, &event.project_id)
            .await
            .context("cannot read a project")?;
        let month = Month::of(event.timestamp);
        let month_closed = if project == ProjectState::Active && open_for_events(month, now) {
            Some(
                self.lookups
                    .period_closed(month)
                    .await
                    .context("cannot read whether a month is closed")?,
            )
        } else {
            None
        };
        let closed = match placement(&event, Some(project), month_closed, now) {
            Ok(()) => false,
            Err(e) if e.code == ErrorCode::PeriodClosed && self.into_closed => true,
            Err(e) => {
                let id = Some(event.id.as_str().to_owned());
                let r = self.rejection(number, id, e);
                return self.reject(r, Some(text));
            }
        };
        let refused = self
            .series
            .check(&meters, None, std::slice::from_ref(&event))
            .await
            .context("cannot register a series")?;
        if let Some(e) = refused.into_iter().flatten().next() {
            let id = Some(event.id.as_str().to_owned());
            let r = self.rejection(number, id, e);
            return self.reject(r, Some(text));
        }
        self.pending.push(Pending {
            line: number,
            event,
            closed,
        });
        Ok(())
    }

    /// Starts applying the pending events through the ledger (retrying what the store
    /// reports `Failed`), once the batch before them is settled: batches are applied one
    /// at a time, in file order, while the next one is read and validated.
    async fn apply_pending(&mut self) -> anyhow::Result<()> {
        self.settle_in_flight().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let usage = self.usage.clone();
        self.in_flight = Some(tokio::spawn(async move {
            let events: Vec<Event> = batch.iter().map(|p| p.event.clone()).collect();
            let settled = apply_with_retries(usage.as_ref(), &events, RETRY_PAUSE).await;
            (batch, settled)
        }));
        Ok(())
    }

    /// Waits for the batch being applied, if any, and counts its outcomes. A store error on
    /// every attempt stops the import (a rerun resumes it).
    async fn settle_in_flight(&mut self) -> anyhow::Result<()> {
        let Some(task) = self.in_flight.take() else {
            return Ok(());
        };
        let (batch, settled) = task.await.context("the task applying a batch failed")?;
        let (outcomes, conflicts) = match settled {
            Ok(settled) => settled,
            Err(e) => {
                let first = batch.first().map_or(0, |p| p.line);
                return Err(anyhow::Error::new(e).context(format!(
                    "the store refused the batch starting at line {first} {APPLY_ATTEMPTS} \
                     times; the lines before it are imported: run the same import again to \
                     resume"
                )));
            }
        };
        for ((p, outcome), conflict) in batch.into_iter().zip(outcomes).zip(conflicts) {
            let id = Some(p.event.id.as_str().to_owned());
            let (code, field, message) = match outcome {
                Some(ApplyOutcome::Applied) => {
                    self.summary.accepted += 1;
                    self.summary.into_closed += u64::from(p.closed);
                    continue;
                }
                Some(ApplyOutcome::Duplicate) => {
                    self.summary.duplicate += 1;
                    self.summary.duplicate_conflicts += u64::from(conflict);
                    continue;
                }
                Some(ApplyOutcome::Overflow) => (
                    COUNTER_OVERFLOW,
                    Some("quantity"),
                    format!(
                        "this event would take the organization's {} total of {} past \
                         10^19; it is not counted",
                        Month::of(p.event.timestamp),
                        p.event.meter
                    ),
                ),
                Some(ApplyOutcome::Failed(why)) => (
                    APPLY_FAILED,
                    None,
                    format!(
                        "the store did not apply it in {APPLY_ATTEMPTS} attempts ({why}); run \
                         the import again"
                    ),
                ),
                None => (
                    APPLY_FAILED,
                    None,
                    format!(
                        "the store did not report on it in {APPLY_ATTEMPTS} attempts; run the \
                         import again"
                    ),
                ),
            };
            let r = LineRejection {
                line: p.line,
                id,
                code: code.to_owned(),
                field: field.map(str::to_owned),
                message,
            };
            self.reject(r, None)?;
        }
        Ok(())
    }

    /// [`rejection`], naming the CSV column rather than the field for a CSV file.
    fn rejection(&self, line: u64, id: Option<String>, e: EventError) -> LineRejection {
        let mut r = rejection(line, id, e);
        if let (Some(layout), Some(field)) = (&self.csv, &r.field) {
            r.field = Some(layout.column_of(field));
        }
        r
    }

    fn reject(&mut self, r: LineRejection, text: Option<&str>) -> anyhow::Result<()> {
        self.summary.rejected += 1;
        if let Some(out) = self.rejected_out.as_mut() {
            let entry = RejectedLine {
                rejection: &r,
                text,
            };
            serde_json::to_writer(&mut *out, &entry).context("--rejected: cannot write")?;
            out.write_all(b"\n").context("--rejected: cannot write")?;
        }
        // The first by line number: a batch's apply-time rejections come after the next
        // batch's validation ones.
        let shown = &mut self.summary.rejections;
        if shown.len() < SHOWN_REJECTIONS || shown.last().is_some_and(|l| l.line > r.line) {
            let at = shown.partition_point(|l| l.line <= r.line);
            shown.insert(at, r);
            shown.truncate(SHOWN_REJECTIONS);
        }
        Ok(())
    }
}

/// First pause before calling the store again; doubled at each attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Applies `events` through the ledger, calling the store again (after `pause`, doubled each
/// time) for the events it reports `Failed` or leaves out, [`APPLY_ATTEMPTS`] calls in all.
/// Per event: its last outcome (`None` if never reported) and whether it was reported a
/// conflicting duplicate. An error when the last call failed as a whole.
async fn apply_with_retries(usage: &dyn UsageStore, events: &[Event], pause: Duration) -> Applied {
    let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; events.len()];
    let mut conflicts = vec![false; events.len()];
    let mut todo: Vec<usize> = (0..events.len()).collect();
    let mut last_error = None;
    for attempt in 0..APPLY_ATTEMPTS {
        if todo.is_empty() {
            break;
        }
        if attempt > 0 {
            tokio::time::sleep(pause * (1 << (attempt - 1))).await;
        }
        let subset: Vec<Event>;
        let call = if todo.len() == events.len() {
            events
        } else {
            subset = todo
                .iter()
                .filter_map(|i| events.get(*i).cloned())
                .collect();
            &subset
        };
        // The readings of the events the ledger counted, after the apply, as the aggregator
        // writes them; a failure there tries the call again (then all identical duplicates,
        // which write them).
        let applied = match tally_core::ports::check_keeps_readings(usage, call) {
            Ok(()) => usage.apply_batch(call).await,
            Err(e) => Err(e),
        };
        let applied = match applied {
            Ok(report) => tally_core::ports::put_counted_readings(usage, call, &report)
                .await
                .map(|()| report),
            Err(e) => Err(e),
        };
        let report = match applied {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(error = %e, attempt, "the store did not take a batch");
                last_error = Some(e);
                continue;
            }
        };
        last_error = None;
        for j in report.conflicts {
            if let Some(c) = todo.get(j).and_then(|i| conflicts.get_mut(*i)) {
                *c = true;
            }
        }
        let mut again = Vec::new();
        let mut reported = vec![false; todo.len()];
        for (j, outcome) in report.outcomes.into_iter().enumerate() {
            let Some(&i) = todo.get(j) else { continue };
            if let Some(r) = reported.get_mut(j) {
                *r = true;
            }
            if matches!(outcome, ApplyOutcome::Failed(_)) {
                again.push(i);
            }
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(outcome);
            }
        }
        // An event the report left out is tried again too.
        again.extend(
            todo.iter()
                .zip(&reported)
                .filter(|(_, r)| !**r)
                .map(|(i, _)| *i),
        );
        again.sort_unstable();
        todo = again;
    }
    match last_error {
        Some(e) => Err(e),
        None => Ok((outcomes, conflicts)),
    }
}

/// A line's rejection as `POST /v1/events` would word it (same code, field and message).
fn rejection(line: u64, id: Option<String>, e: EventError) -> LineRejection {
    let r = Rejection::of(0, id, BodyFormat::Native, e);
    LineRejection {
        line,
        id: r.id,
        code: r.error.code,
        field: r.error.field,
        message: r.error.message,
    }
}

fn human(s: &ImportSummary) -> String {
    let mut out = vec![format!(
        "imported into {}: {} events, {} accepted, {} duplicate, {} rejected",
        s.org_id, s.events, s.accepted, s.duplicate, s.rejected
    )];
    if s.into_closed > 0 {
        out.push(format!(
            "{} of the accepted are in closed months: adjustments on the next report",
            s.into_closed
        ));
    }
    if s.duplicate_conflicts > 0 {
        out.push(format!(
            "{} duplicates differ from the copy counted first (duplicate_conflict); the first \
             copy stays counted",
            s.duplicate_conflicts
        ));
    }
    if !s.rejections.is_empty() {
        out.push(table_of(
            &["LINE", "CODE", "FIELD", "MESSAGE"],
            &s.rejections,
            "",
            rejection_row,
        ));
        if s.rejected > s.rejections.len() as u64 {
            out.push(format!(
                "... and {} more",
                s.rejected - s.rejections.len() as u64
            ));
        }
    }
    if let Some(path) = &s.rejected_file {
        out.push(format!("rejected lines written to {path}"));
    }
    out.join("\n")
}

/// A row of the rejected lines `tally import` lists.
fn rejection_row(r: &LineRejection) -> Vec<String> {
    vec![
        r.line.to_string(),
        r.code.clone(),
        r.field.clone().unwrap_or_else(|| "-".to_owned()),
        r.message.clone(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    use tally_core::ports::ApplyReport;
    use tally_core::{Aggregation, EventId, MeterName, ProjectId, Quantity};
    use tally_store::MemoryStore;
    use tally_store::hooked::{BatchHook, Hooked};

    /// A hook that fails whole calls, fails given ids once each, and leaves the last
    /// outcome out of a report, as told; the rest goes to the wrapped memory store
    /// ([`Flaky::store`]).
    #[derive(Default)]
    struct Flaky {
        whole_failures: Mutex<u32>,
        fail_once: Mutex<HashSet<String>>,
        fail_always: HashSet<String>,
        short_reports: Mutex<u32>,
        calls: Mutex<Vec<usize>>,
    }

    impl Flaky {
        fn store(self) -> Hooked<Flaky> {
            Hooked::new(Arc::new(MemoryStore::default()), self)
        }
    }

    #[async_trait::async_trait]
    impl BatchHook for Flaky {
        async fn apply_batch(
            &self,
            store: &dyn UsageStore,
            events: &[Event],
        ) -> Result<ApplyReport, StoreError> {
            self.calls.lock().unwrap().push(events.len());
            {
                let mut whole = self.whole_failures.lock().unwrap();
                if *whole > 0 {
                    *whole -= 1;
                    return Err(StoreError::Unavailable("flaky".into()));
                }
            }
            let mut outcomes = vec![None; events.len()];
            let mut pass = Vec::new();
            for (i, e) in events.iter().enumerate() {
                let id = e.id.as_str();
                if self.fail_always.contains(id) || self.fail_once.lock().unwrap().remove(id) {
                    outcomes[i] = Some(ApplyOutcome::Failed("flaky".into()));
                } else {
                    pass.push(i);
                }
            }
            let sub: Vec<Event> = pass.iter().map(|i| events[*i].clone()).collect();
            let report = store.apply_batch(&sub).await?;
            for (j, o) in report.outcomes.into_iter().enumerate() {
                outcomes[pass[j]] = Some(o);
            }
            let mut outcomes: Vec<ApplyOutcome> =
                outcomes.into_iter().map(Option::unwrap).collect();
            let mut short = self.short_reports.lock().unwrap();
            if *short > 0 && !outcomes.is_empty() {
                *short -= 1;
                outcomes.pop();
            }
            Ok(ApplyReport::of(outcomes))
        }
    }

    fn events(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| Event {
                org_id: OrgId::parse("org_import").unwrap(),
                id: EventId::parse(&format!("e{i}")).unwrap(),
                project_id: ProjectId::parse("prj_import").unwrap(),
                meter: MeterName::parse("compute_minutes").unwrap(),
                aggregation: Aggregation::Sum,
                quantity: Quantity::ONE,
                timestamp: "2026-03-02T00:00:00Z".parse().unwrap(),
                properties: serde_json::Map::new(),
            })
            .collect()
    }

    const NO_PAUSE: Duration = Duration::ZERO;

    #[tokio::test]
    async fn failed_and_unreported_events_are_retried_until_applied_once() {
        let store = Flaky {
            whole_failures: Mutex::new(1),
            fail_once: Mutex::new(["e1", "e3"].map(str::to_owned).into()),
            short_reports: Mutex::new(1),
            ..Flaky::default()
        }
        .store();
        let evs = events(5);
        let (outcomes, conflicts) = apply_with_retries(&store, &evs, NO_PAUSE).await.unwrap();
        // e4 was applied by the call whose report left it out: asked again, the ledger
        // says it is counted already.
        let mut want = vec![Some(ApplyOutcome::Applied); 4];
        want.push(Some(ApplyOutcome::Duplicate));
        assert_eq!(outcomes, want);
        assert_eq!(conflicts, vec![false; 5]);
        // A whole failure; all five (e1, e3 failed, e4 left out); then those three.
        assert_eq!(*store.hook().calls.lock().unwrap(), vec![5, 5, 3]);
        // Each counted once: a second pass finds them all in the ledger.
        let (again, _) = apply_with_retries(&store, &evs, NO_PAUSE).await.unwrap();
        assert_eq!(again, vec![Some(ApplyOutcome::Duplicate); 5]);
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let store = Flaky {
            fail_always: ["e0"].map(str::to_owned).into(),
            ..Flaky::default()
        }
        .store();
        let (outcomes, _) = apply_with_retries(&store, &events(2), NO_PAUSE)
            .await
            .unwrap();
        assert!(matches!(outcomes[0], Some(ApplyOutcome::Failed(_))));
        assert_eq!(outcomes[1], Some(ApplyOutcome::Applied));
        assert_eq!(
            store.hook().calls.lock().unwrap().len(),
            APPLY_ATTEMPTS as usize
        );

        let down = Flaky {
            whole_failures: Mutex::new(APPLY_ATTEMPTS),
            ..Flaky::default()
        }
        .store();
        assert!(
            apply_with_retries(&down, &events(2), NO_PAUSE)
                .await
                .is_err()
        );
        assert_eq!(
            down.hook().calls.lock().unwrap().len(),
            APPLY_ATTEMPTS as usize
        );
    }

    fn lines(input: &[u8]) -> Vec<Option<Vec<u8>>> {
        let mut reader = BufReader::with_capacity(16, input);
        let (mut buf, mut consumed) = (Vec::new(), 0);
        let mut out = Vec::new();
        while let Some(l) = next_line(&mut reader, &mut buf, &mut consumed).unwrap() {
            out.push(match l {
                Line::Text(t) => Some(t),
                Line::TooLong => None,
            });
        }
        assert_eq!(consumed, input.len() as u64);
        out
    }

    #[test]
    fn lines_are_split_bounded_and_too_long_ones_skipped_whole() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let exact = vec![b'y'; MAX_LINE_BYTES];
        let mut input = b"a\r\n\n".to_vec();
        input.extend(&long);
        input.extend(b"\nb\n");
        input.extend(&exact);
        input.extend(b"\nlast");
        assert_eq!(
            lines(&input),
            vec![
                Some(b"a".to_vec()),
                Some(Vec::new()),
                None,
                Some(b"b".to_vec()),
                Some(exact),
                Some(b"last".to_vec()),
            ]
        );
        // A too-long last line without a break.
        assert_eq!(lines(&long), vec![None]);
    }
}
