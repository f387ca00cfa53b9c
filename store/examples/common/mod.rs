//! What the store's measuring examples share: reading their positional arguments and
//! making the scratch folder they write to, so each example states only what it measures.

use std::path::PathBuf;

/// Positional argument `i` as a number, `default` when it is missing or not a number.
pub fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// A fresh folder `tally-<name>-<pid>` in the system's temporary folder.
pub fn scratch_dir(name: &str) -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tally-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
