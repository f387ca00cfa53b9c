//! Printing results: JSON on stdout with `--json`, a short human text otherwise, and the
//! aligned tables the listing commands print for people.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// A bar on stderr counting `len` orgs, or `None` when it must stay quiet: in `--json` mode
/// or when stderr is not a terminal (a pipe, a log file, a test), so scripts see clean output.
pub fn orgs_bar(json: bool, message: String, len: u64) -> Option<ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} orgs {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    Some(bar)
}

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

/// `rows` under `headers`, each column as wide as its widest cell, columns two spaces apart
/// and no trailing spaces; `empty` instead when there are no rows, so an empty listing says
/// so rather than printing a lone header.
pub fn table(headers: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return empty.to_owned();
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            out.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.trim_end().to_owned()
    };
    let mut out = vec![line(&mut headers.iter().copied())];
    out.extend(rows.iter().map(|r| line(&mut r.iter().map(String::as_str))));
    out.join("\n")
}

/// [`table`] of a listing: one row per item of `items`, its cells as `row` writes them, so a
/// command says only its columns and not how a table is gathered.
pub fn table_of<T>(
    headers: &[&str],
    items: impl IntoIterator<Item = T>,
    empty: &str,
    row: impl FnMut(T) -> Vec<String>,
) -> String {
    let rows: Vec<Vec<String>> = items.into_iter().map(row).collect();
    table(headers, &rows, empty)
}

/// The columns a priced usage line opens with, in `tally report show` and `tally invoice
/// upcoming` alike, so that the closed month and the month so far read the same.
const USAGE_COLUMNS: [&str; 4] = ["METER", "QUANTITY", "INCLUDED", "BILLABLE"];

/// The headers of a table of priced usage lines: `METER`, `QUANTITY`, `INCLUDED`,
/// `BILLABLE`, then `rest`.
pub fn usage_headers<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    [USAGE_COLUMNS.as_slice(), rest].concat()
}

/// A row under [`usage_headers`]: the line's meter, quantity, included and billable
/// quantities, then `rest`.
pub fn usage_row(
    [meter, quantity, included, billable]: [&dyn std::fmt::Display; 4],
    rest: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let mut row: Vec<String> = [meter, quantity, included, billable]
        .iter()
        .map(|c| c.to_string())
        .collect();
    row.extend(rest);
    row
}

/// An optional time as a table shows it: RFC 3339 to the second, or `-`.
pub fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_say_when_empty() {
        let rows = vec![
            vec![
                "org_a".to_owned(),
                "Acme Corporation".to_owned(),
                "pro".to_owned(),
            ],
            vec!["org_bb".to_owned(), "B".to_owned(), "free".to_owned()],
        ];
        assert_eq!(
            table(&["ID", "NAME", "PLAN"], &rows, "none"),
            "ID      NAME              PLAN\n\
             org_a   Acme Corporation  pro\n\
             org_bb  B                 free"
        );
        assert_eq!(table(&["ID"], &[], "no orgs"), "no orgs");
    }
}
