//! The `tally` command line: flags, subcommands and the dispatch to the command modules.
//!
//! Settings are read from flags, then `TALLY_*` environment variables, then defaults
//! (clap does that through each flag's `env`). [`main`] builds the async runtime, runs the
//! command and turns its outcome into the exit status and a one-line reason on stderr.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::settings::Common;
use crate::{
    aggregate, alerts, backend, bill, catalogue, commands, export, import, invoices, people, prune,
    records, replay, serve,
};

/// Tally meters the usage of a multi-tenant SaaS and bills it: the server, the workers and
/// the operator's commands.
#[derive(Debug, Parser)]
#[command(name = "tally", version)]
pub struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process: ingest and usage APIs, aggregator, billing scheduler.
    Serve(serve::ServeArgs),
    /// Check a catalogue file, publish it as a new version, list and show versions.
    #[command(subcommand)]
    Catalogue(catalogue::CatalogueCommand),
    /// Manage organizations.
    #[command(subcommand)]
    Org(commands::OrgCommand),
    /// Manage projects.
    #[command(subcommand)]
    Project(commands::ProjectCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(commands::KeyCommand),
    /// See and change an organization's members; a user joins only by an invitation.
    #[command(subcommand)]
    Member(people::MemberCommand),
    /// See, send and revoke an organization's invitations.
    #[command(subcommand)]
    Invitation(people::InvitationCommand),
    /// Read an organization's audit trail, newest first, with the API's filters.
    Audit(records::AuditArgs),
    /// Read an organization's usage of one meter as a series, as GET /v1/usage answers.
    Usage(records::UsageArgs),
    /// Read the usage reports month close stored, with their lines and Stripe invoices.
    #[command(subcommand)]
    Report(records::ReportCommand),
    /// An organization's upcoming invoice (the month so far, priced as month close would,
    /// and projected) and its closed months with their Stripe invoices.
    #[command(subcommand)]
    Invoice(invoices::InvoiceCommand),
    /// Print a shell completion script for bash, zsh or fish on stdout.
    Completions(CompletionsArgs),
    /// Mint JWTs for users (local use and tests).
    #[command(subcommand)]
    Token(commands::TokenCommand),
    /// Run the aggregator alone: drain --queue into --store until SIGINT/SIGTERM.
    Aggregate(aggregate::AggregateArgs),
    /// Recompute counters from the event ledger and report any drift (exit 3 on drift).
    Reconcile(commands::ReconcileArgs),
    /// Delete SQLite ledger rows written more than 45 days ago (counters stay); tally serve
    /// and tally aggregate do it hourly. Nothing to do on DynamoDB (TTL).
    PruneLedger(prune::PruneArgs),
    /// Close an ended month and store each organization's usage report (idempotent).
    Bill(bill::BillArgs),
    /// Plan-limit alerts (80 % and 100 % of an allowance) to TALLY_ALERT_WEBHOOK_URL.
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// After a fix, move dead letters back onto the queue so the aggregator applies them
    /// again (local queue or SQS); --dry-run lists them. Exits 4 if some are left.
    Replay(replay::ReplayArgs),
    /// Backfill usage from an NDJSON or CSV file of events, checked as POST /v1/events checks them
    /// and counted once (a rerun is harmless). Exits 5 if some line was rejected.
    Import(import::ImportArgs),
    /// Export usage counters (or with --ledger the ledger's entries) of a month, for one
    /// organization or all, as CSV to a file or stdout.
    Export(export::ExportArgs),
    /// Check a report line against a ledger export of it: recompute its quantity, event
    /// count and digest. Exits 6 if they do not match.
    VerifyReport(export::VerifyArgs),
    /// Create the DynamoDB table, the SQS queues or the Kinesis stream named by --store and
    /// --queue (idempotent; nothing to do for the embedded default).
    Init(backend::InitArgs),
}

/// `tally completions` flags.
#[derive(Debug, clap::Args)]
struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// The shells `tally completions` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Shell {
    /// Bash: `source <(tally completions bash)`.
    Bash,
    /// Zsh: write it to a file named `_tally` on `$fpath`.
    Zsh,
    /// Fish: write it to `~/.config/fish/completions/tally.fish`.
    Fish,
}

/// Writes the completion script for `shell` to stdout.
fn completions(args: CompletionsArgs) {
    use clap::CommandFactory;
    use clap_complete::{Shell as S, generate};
    let shell = match args.shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
    };
    generate(shell, &mut Cli::command(), "tally", &mut std::io::stdout());
}

/// Exit status for `reconcile` when it found drift.
const EXIT_DRIFT: u8 = 3;
/// Exit status for `replay` when some selected dead letter could not be replayed (or
/// removed after its replay), or an `--id` was not found.
const EXIT_REPLAY_INCOMPLETE: u8 = 4;

/// Runs a parsed command line to its exit status: logging to stderr (`TALLY_LOG`), a
/// multi-threaded runtime, the command, and on failure one line on stderr with the error
/// and its causes.
pub fn main(cli: Cli) -> ExitCode {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tally: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes, outermost first.
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("tally: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let common = &cli.common;
    // Every command but `reconcile`, `replay` and `import` exits 0 once it has done its work.
    let done = match cli.command {
        Command::Serve(args) => serve::serve(common, args).await,
        Command::Catalogue(cmd) => {
            let valid = catalogue::catalogue(common, cmd).await?;
            return Ok(if valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(catalogue::EXIT_INVALID)
            });
        }
        Command::Org(cmd) => commands::org(common, cmd).await,
        Command::Project(cmd) => commands::project(common, cmd).await,
        Command::Key(cmd) => commands::key(common, cmd).await,
        Command::Token(cmd) => commands::token(common, cmd).await,
        Command::Member(cmd) => people::member(common, cmd).await,
        Command::Invitation(cmd) => people::invitation(common, cmd).await,
        Command::Audit(args) => records::audit(common, args).await,
        Command::Usage(args) => records::usage(common, args).await,
        Command::Report(cmd) => records::report(common, cmd).await,
        Command::Invoice(cmd) => invoices::invoice(common, cmd).await,
        Command::Completions(args) => {
            completions(args);
            Ok(())
        }
        Command::Init(args) => backend::init(common, args).await,
        Command::Bill(args) => bill::bill(common, args).await,
        Command::Alerts(cmd) => alerts::alerts(common, cmd).await,
        Command::Aggregate(args) => aggregate::aggregate(common, args).await,
        Command::Replay(args) => {
            let complete = replay::replay(common, args).await?;
            return Ok(unless(complete, EXIT_REPLAY_INCOMPLETE));
        }
        Command::Import(args) => {
            let clean = import::import(common, args).await?;
            return Ok(unless(clean, import::EXIT_REJECTED));
        }
        Command::Export(args) => export::export(common, args).await,
        Command::VerifyReport(args) => {
            let matches = export::verify_report(common, args).await?;
            return Ok(unless(matches, export::EXIT_MISMATCH));
        }
        Command::PruneLedger(args) => prune::prune_ledger(common, args).await,
        Command::Reconcile(args) => {
            let drift = commands::reconcile(common, args).await?;
            return Ok(unless(!drift, EXIT_DRIFT));
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// Success when `ok`, else the command's own exit status `code` (a finding, not a failure
/// to run: scripts tell the two apart).
fn unless(ok: bool, code: u8) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(code)
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr so stdout stays machine-readable for --json.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
