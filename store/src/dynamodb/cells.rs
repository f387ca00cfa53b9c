//! Day cells: how the DynamoDB store keeps `sum`, `count`, `max` and `latest` counters.
//!
//! Writing the six counters of every event (org-wide and per project × hour, day, month)
//! costs six writes per event when a batch does not collapse them, and on a Zipf workload
//! most events do not share counters with their batch. So the store writes one item per
//! (project, meter, day), holding one attribute per hour (`h00`–`h23`, plus `a00`–`a23`,
//! the reading's time, for `latest`), and derives the rest when it reads: a day is its
//! item's hours, a month its days' items, org-wide the union over projects. One event is
//! one attribute update of one item; a month of one project and meter is 31 small items.
//! `unique_count` cannot be derived this way (distinct values do not add up across hours or
//! projects), so it keeps explicit counters and markers (see the [module doc](super)).
//!
//! Derivation is shared with the SQLite store, which keeps one row per hour cell
//! ([`crate::derive`]).

use chrono::{DateTime, Utc};
use tally_core::fold::Delta;
use tally_core::ids::{MeterName, ProjectId};
use tally_core::ports::StoreError;

pub use crate::derive::{StoredCell, derive_counters, derive_series, value_of};

use super::codec::{Item, corrupt, get_decimal, get_s};
use super::keys::{SK, start_text};

/// Sort key prefix of day cells in an org's month partition of counters.
pub const CELL_PREFIX: &str = "DAY#";
/// Attribute naming the cell's aggregation kind ([`CellKind::as_str`]).
pub const KIND: &str = "k";

/// How a cell's hours combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    /// `sum` and `count`: hours add up.
    Add,
    /// `max`: the largest hour wins.
    Max,
    /// `latest`: the latest reading wins (ties on time go to the larger value).
    Latest,
}

impl CellKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CellKind::Add => "add",
            CellKind::Max => "max",
            CellKind::Latest => "latest",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "add" => Some(CellKind::Add),
            "max" => Some(CellKind::Max),
            "latest" => Some(CellKind::Latest),
            _ => None,
        }
    }
}

/// The hour attribute of hour `h` (0–23) of a day: `h05`.
pub fn hour_attr(h: u32) -> String {
    format!("h{h:02}")
}

/// The reading-time attribute of hour `h` of a `latest` cell: `a05`.
pub fn at_attr(h: u32) -> String {
    format!("a{h:02}")
}

/// `DAY#<meter>#`: every cell of a meter in a month partition (all projects).
pub fn meter_prefix(meter: &MeterName) -> String {
    format!("{CELL_PREFIX}{meter}#")
}

/// `DAY#<meter>#<project>#`: the cells of one project's meter.
pub fn series_prefix(meter: &MeterName, project: &ProjectId) -> String {
    format!("{CELL_PREFIX}{meter}#{project}#")
}

/// `DAY#<meter>#<project>#<day start, 12 digits>`.
pub fn cell_sk(meter: &MeterName, project: &ProjectId, day: i64) -> String {
    format!("{}{}", series_prefix(meter, project), start_text(day))
}

/// The day a cell of hour `hour` (Unix seconds) lives in, and the hour's index in it.
pub fn day_and_hour(hour: i64) -> (i64, u32) {
    let day = hour - hour.rem_euclid(86_400);
    (day, ((hour - day) / 3600) as u32)
}

/// Parses a cell item. Nothing in it is trusted: a bad key or attribute is `Corrupt`.
pub fn read_cell(item: &Item) -> Result<StoredCell, StoreError> {
    let sk = get_s(item, SK)?;
    let bad = |why: &str| corrupt(format!("cell sort key {sk:?}: {why}"));
    let rest = sk
        .strip_prefix(CELL_PREFIX)
        .ok_or_else(|| bad("no DAY# prefix"))?;
    let mut parts = rest.split('#');
    let (Some(meter), Some(project), Some(day), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("expected 3 parts"));
    };
    let meter = MeterName::parse_key(meter).map_err(|e| bad(&e.to_string()))?;
    let project = ProjectId::parse(project).map_err(|e| bad(&e.to_string()))?;
    let day: i64 = day.parse().map_err(|_| bad("day start"))?;
    let kind = CellKind::parse(get_s(item, KIND)?)
        .ok_or_else(|| corrupt(format!("cell {sk:?}: unknown kind")))?;
    let mut hours = Vec::new();
    for h in 0..24u32 {
        let name = hour_attr(h);
        if !item.contains_key(&name) {
            continue;
        }
        let v = get_decimal(item, &name)?;
        let delta = match kind {
            CellKind::Add => Delta::Add(v),
            CellKind::Max => Delta::Max(v),
            CellKind::Latest => {
                let at = get_decimal(item, &at_attr(h))?;
                let nanos = i64::try_from(at.mantissa())
                    .ok()
                    .filter(|_| at.scale() == 0)
                    .ok_or_else(|| corrupt(format!("cell {sk:?}: bad reading time")))?;
                Delta::Latest {
                    at: DateTime::<Utc>::from_timestamp_nanos(nanos),
                    value: v,
                }
            }
        };
        hours.push((day + i64::from(h) * 3600, delta));
    }
    Ok(StoredCell {
        project,
        meter,
        hours,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::codec::{item, n, s};
    use super::*;
    use crate::test_fixtures::{DAY, api_calls, prj_b, two_hour_cell};

    /// Derivation from the parsed hours is tested in [`crate::derive`].
    #[test]
    fn cells_round_trip() {
        let (p, m, day) = (prj_b(), api_calls(), DAY);
        assert_eq!(day_and_hour(day + 5 * 3600), (day, 5));
        let it = item([
            (SK, s(cell_sk(&m, &p, day))),
            (KIND, s("add")),
            ("h05", n(3)),
            ("h07", n("1.5")),
        ]);
        assert_eq!(read_cell(&it).unwrap(), two_hour_cell());
    }

    #[test]
    fn bad_cells_are_corrupt_not_panics() {
        let bad = item([(SK, s("DAY#api_calls#prj_b")), (KIND, s("add"))]);
        assert!(matches!(read_cell(&bad), Err(StoreError::Corrupt(_))));
        let unknown = item([
            (SK, s("DAY#api_calls#prj_b#000000000000")),
            (KIND, s("median")),
        ]);
        assert!(matches!(read_cell(&unknown), Err(StoreError::Corrupt(_))));
    }
}
