//! Printing results: JSON on stdout with `--json`, a short human text otherwise.

use serde::Serialize;

/// Prints `value` as JSON when `json` is set, else the human text `human` builds.
pub fn print<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", human(value));
    }
    Ok(())
}
