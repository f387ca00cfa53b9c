//! The `tally` binary: parses the command line and runs it with the library
//! ([`tally::cli::main`]), where configuration, wiring and every command live.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tally::cli::main(tally::cli::Cli::parse())
}
