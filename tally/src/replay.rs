//! `tally replay`: after a fix, move dead letters back onto the main queue so the
//! aggregator applies them again; with `--dry-run`, list them and move nothing.
//!
//! Thin on purpose: it validates the selection into a [`ReplayRequest`], opens only the
//! queue ([`backend::open_dead_letters`]: the local queue or SQS) and prints the adapter's
//! [`ReplayReport`]. Why a replay is safe (the ledger counts every event once, a letter
//! leaves the dead-letter store only after its copy is durable) is in
//! `tally_store::replay`.

use clap::Args;
use tally_store::replay::{
    DEFAULT_REPLAY_LIMIT, LetterStatus, ReplayReport, ReplayRequest, ReplayedLetter,
};

use crate::backend;
use crate::output::print;
use crate::settings::Common;

/// Flags of `tally replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Only the dead letter with this id, as `--dry-run` lists it (repeatable, at most 100).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// Only dead letters whose reason contains this text (ignoring case). Letters SQS's
    /// redrive policy moved have no reason and never match.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// List what would be replayed (id, reason, events, when dead-lettered); move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Most dead letters taken in one run, oldest first (1 to 1000).
    #[arg(long, default_value_t = DEFAULT_REPLAY_LIMIT)]
    pub limit: usize,
}

/// Runs `tally replay`. `Ok(false)` when some selected letter could not be replayed (or
/// removed after its replay), or an `--id` was not found: the caller exits non-zero. A dry
/// run only lists, and is `Ok(true)` whenever it could.
pub async fn replay(common: &Common, args: ReplayArgs) -> anyhow::Result<bool> {
    let request = ReplayRequest::new(args.ids, args.reason, args.limit, args.dry_run)?;
    let queue = backend::open_dead_letters(common).await?;
    let report = queue.replay_dead_letters(&request).await?;
    print(common.json, &report, human)?;
    Ok(report.dry_run || report.is_complete())
}

fn line(l: &ReplayedLetter) -> String {
    let at = l
        .dead_lettered_at
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".to_owned());
    let reason = l
        .reason
        .as_deref()
        .unwrap_or("(no reason: moved by the redrive policy)");
    let mut out = format!("{}  {}  {} events  {}", l.id, at, l.events, reason);
    if let Some(p) = &l.problem {
        out.push_str(&format!("\n    {}: {p}", status_word(l.status)));
    }
    out
}

fn status_word(s: LetterStatus) -> &'static str {
    match s {
        LetterStatus::WouldReplay => "would replay",
        LetterStatus::Replayed => "replayed",
        LetterStatus::ReplayedNotRemoved => "replayed, not removed",
        LetterStatus::Left => "left",
    }
}

fn human(r: &ReplayReport) -> String {
    let mut out = Vec::new();
    if r.dry_run {
        out.extend(r.letters.iter().map(line));
        out.push(format!(
            "would replay {} dead letters ({} events); {} would be left",
            r.republished(),
            r.events_republished(),
            r.not_done().count()
        ));
    } else {
        let left: Vec<String> = r.not_done().map(line).collect();
        out.push(format!(
            "replayed {} dead letters ({} events); {} left{}",
            r.republished(),
            r.events_republished(),
            left.len(),
            if left.is_empty() { "" } else { ":" }
        ));
        out.extend(left);
    }
    if !r.missing_ids.is_empty() {
        out.push(format!(
            "not found (or reason not matching): {}",
            r.missing_ids.join(", ")
        ));
    }
    if r.limit_reached {
        out.push("the --limit was reached: more dead letters may match".to_owned());
    }
    out.join("\n")
}
