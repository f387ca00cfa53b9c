//! The SQLite store's counters: hour and day cells for `sum`, `count`, `max` and `latest`
//! meters, explicit counters and markers for `unique_count`.
//!
//! A batch writes, per project and meter, one row for each hour it touches and one for each
//! day; month and org-wide values, and the hours and days of an org, are derived when read
//! ([`crate::derive`], shared with the DynamoDB store). Writing the six counters of every
//! event (org-wide and per project × hour, day, month) instead cost ~5.4 upserts per
//! distinct project-hour when 1,000 orgs with two projects each are evenly active (a batch of
//! 1,000 events then touches ~787 project-hours and ~632 orgs: ~4,257 upserts, against
//! ~1,574 now), and apply ran 24–55 % slower. Why not the hour alone, as on DynamoDB, where a
//! day item holds its 24 hours: a row holds one value here, and deriving a month from 720
//! hour rows per project made an org-wide month total of five projects take ~4 ms instead of
//! ~20 µs; with day rows it reads 30 rows per project, ~0.1 ms (`examples/read_latency.rs`,
//! `examples/apply_throughput.rs`; figures in `bench/RESULTS.md`).
//!
//! `unique_count` values cannot be derived (distinct values do not add up across hours or
//! projects), so those meters keep all six counters in `unique_counters`, with one row per
//! value seen in `unique_markers`.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use rust_decimal::Decimal;
use tally_core::counter::{CounterKey, OwnedCounterKey};
use tally_core::event::Event;
use tally_core::fold::{self, Delta};
use tally_core::headroom::TotalKey;
use tally_core::ids::{MeterName, OrgId, ProjectId};
use tally_core::period::{Granularity, Month};
use tally_core::ports::{CounterValue, StoreError};

use super::{
    bucket_start, ceil_secs, corrupt, db, decode_event, gran_code, gran_of, parse_decimal,
    parse_id, parse_opt_ts, scope_text, ts_text,
};
use crate::derive::{self, StoredCell};

/// Schema 7: cells, keyed (org, meter, span, start, project) so that both a project's series
/// and an org-wide one (every project) are one range of the key; and `unique_count`'s
/// explicit counters under a new name. Schema 6's `counters` table is dropped rather than
/// kept for them: a process of an older build still running on the file would otherwise go
/// on writing six counters per event there, which the new reads would take for explicit
/// counters. With the table gone its writes fail, loudly, and its batches stay queued.
pub(super) const SCHEMA_V7: &str = r#"
CREATE TABLE IF NOT EXISTS cells (
    org         TEXT NOT NULL,
    meter       TEXT NOT NULL,
    span        INTEGER NOT NULL,       -- 1 hour, 2 day
    start       INTEGER NOT NULL,       -- hour or day start, Unix seconds
    project     TEXT NOT NULL,
    kind        INTEGER NOT NULL,       -- 0 add (sum, count), 1 max, 2 latest
    value       TEXT NOT NULL,          -- exact decimal
    latest_at   TEXT,                   -- `latest`: the reading's time
    PRIMARY KEY (org, meter, span, start, project)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS unique_counters (
    org         TEXT NOT NULL,
    project     TEXT NOT NULL,          -- '' for the org-wide counter
    meter       TEXT NOT NULL,
    granularity INTEGER NOT NULL,       -- 1 hour, 2 day, 3 month
    start       INTEGER NOT NULL,       -- bucket start, Unix seconds
    value       TEXT NOT NULL,          -- exact decimal
    latest_at   TEXT,
    PRIMARY KEY (org, project, meter, granularity, start)
) WITHOUT ROWID;
DROP TABLE IF EXISTS counters;
"#;

/// `span` of an hour cell (as `granularity` codes [`Granularity::Hour`] in
/// `unique_counters`).
const HOUR: i64 = 1;
/// `span` of a day cell.
const DAY: i64 = 2;

const KIND_ADD: i64 = 0;
const KIND_MAX: i64 = 1;
const KIND_LATEST: i64 = 2;

/// The last second a bucket may start at: 9999-12-31T23:59:59Z. Beyond it the bucket
/// arithmetic leaves chrono's range, and no event is that late.
const LAST_SECOND: i64 = 253_402_300_799;

/// Ledger events replayed per step when schema 7 rebuilds the counters.
const REBUILD_CHUNK: i64 = 5_000;

/// Writes what new events add to the counters: hour and day cells for `sum`, `count`,
/// `max` and `latest`, the six explicit counters and their markers for `unique_count`.
pub(super) fn apply<'a>(
    conn: &Connection,
    events: impl IntoIterator<Item = &'a Event>,
) -> Result<(), StoreError> {
    let (unique, cells): (Vec<_>, Vec<_>) = fold::fold_cells(events)
        .into_iter()
        .partition(|(_, delta)| matches!(delta, Delta::Unique(_)));
    // Prepared once per batch: looking a cached statement up hashes its SQL, twice per cell.
    let mut get = conn
        .prepare_cached(
            "SELECT kind, value, latest_at FROM cells
             WHERE org = ?1 AND meter = ?2 AND span = ?3 AND start = ?4 AND project = ?5",
        )
        .map_err(db)?;
    let mut put = conn
        .prepare_cached(
            "INSERT INTO cells (org, meter, span, start, project, kind, value, latest_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (org, meter, span, start, project)
             DO UPDATE SET kind = excluded.kind, value = excluded.value,
                           latest_at = excluded.latest_at",
        )
        .map_err(db)?;
    for (span, cells) in [(HOUR, &cells), (DAY, &fold::day_cells(&cells))] {
        for (cell, delta) in cells {
            let (org, meter, project) = (
                cell.org.as_str(),
                cell.meter.as_str(),
                cell.project.as_str(),
            );
            let key = params![org, meter, span, cell.hour, project];
            let current = get
                .query_row(key, |r| <(i64, String, Option<String>)>::try_from(r))
                .optional()
                .map_err(db)?;
            let merged = match current {
                Some((kind, value, at)) => {
                    let stored = cell_delta(kind, &value, at)?;
                    let mut merged = stored.clone();
                    merged.merge(delta);
                    if merged == stored {
                        continue;
                    }
                    merged
                }
                None => delta.clone(),
            };
            let (kind, value, at) = match merged {
                Delta::Add(v) => (KIND_ADD, v, None),
                Delta::Max(v) => (KIND_MAX, v, None),
                Delta::Latest { at, value } => (KIND_LATEST, value, Some(at)),
                // The partition above sends `unique_count` elsewhere, and merging two deltas
                // that are not `Unique` keeps one of their kinds; refuse rather than drop
                // should that change.
                Delta::Unique(_) => {
                    return Err(corrupt(format!(
                        "a unique_count delta reached the cell of {org}/{project}/{meter}"
                    )));
                }
            };
            put.execute(params![
                org,
                meter,
                span,
                cell.hour,
                project,
                kind,
                value.to_string(),
                at.map(ts_text)
            ])
            .map_err(db)?;
        }
    }
    apply_explicit(conn, &fold::spread(unique))
}

/// Applies deltas to explicit counters (only `unique_count` meters have them): markers first,
/// and the counter moves by the number of values that were new.
fn apply_explicit(conn: &Connection, deltas: &[(CounterKey<'_>, Delta)]) -> Result<(), StoreError> {
    let mut get = conn
        .prepare_cached(
            "SELECT value, latest_at FROM unique_counters
             WHERE org = ?1 AND project = ?2 AND meter = ?3 AND granularity = ?4 AND start = ?5",
        )
        .map_err(db)?;
    let mut put = conn
        .prepare_cached(
            "INSERT INTO unique_counters (org, project, meter, granularity, start, value, latest_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (org, project, meter, granularity, start)
             DO UPDATE SET value = excluded.value, latest_at = excluded.latest_at",
        )
        .map_err(db)?;
    let mut mark = conn
        .prepare_cached(
            "INSERT INTO unique_markers (org, project, meter, granularity, start, value)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )
        .map_err(db)?;
    for (key, delta) in deltas {
        let org = key.org.as_str();
        let project = scope_text(&key.scope);
        let meter = key.meter.as_str();
        let gran = gran_code(key.granularity);
        let start = key.start.timestamp();
        let mut new_unique = 0u64;
        if let Delta::Unique(values) = delta {
            for v in values {
                new_unique += mark
                    .execute(params![org, project, meter, gran, start, v])
                    .map_err(db)? as u64;
            }
            if new_unique == 0 {
                continue;
            }
        }
        let current = get
            .query_row(params![org, project, meter, gran, start], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .optional()
            .map_err(db)?;
        let (cur, cur_at) = match current {
            Some((v, at)) => (Some(parse_decimal(&v)?), parse_opt_ts(at)?),
            None => (None, None),
        };
        let (value, at) = fold::apply_delta(cur, cur_at, delta, new_unique);
        if cur == Some(value) && cur_at == at {
            continue;
        }
        put.execute(params![
            org,
            project,
            meter,
            gran,
            start,
            value.to_string(),
            at.map(ts_text)
        ])
        .map_err(db)?;
    }
    Ok(())
}

/// Month totals of adding meters as this process last committed them, so the
/// `counter_overflow` check costs no read in steady state. Valid only while no other
/// connection wrote the file: SQLite's `PRAGMA data_version` changes exactly then (and not
/// on this connection's own commits), and the whole map is forgotten. Filled from
/// [`month_total`] inside the batch's write transaction and updated only after its commit,
/// so a rolled-back batch leaves it true.
#[derive(Debug, Default)]
pub(super) struct Totals {
    version: Option<i64>,
    known: HashMap<TotalKey, Decimal>,
}

impl Totals {
    /// Entries kept before the map is forgotten wholesale (it only saves reads).
    const CAPACITY: usize = 100_000;

    /// Forgets everything if another connection committed since the last look. Called
    /// inside the write transaction, so nobody else commits until it ends.
    pub(super) fn check_version(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let v: i64 = conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(db)?;
        if self.version != Some(v) {
            self.known.clear();
            self.version = Some(v);
        }
        Ok(())
    }

    /// The month total of `key` as stored now.
    pub(super) fn get(&mut self, conn: &Connection, key: &TotalKey) -> Result<Decimal, StoreError> {
        if let Some(t) = self.known.get(key) {
            return Ok(*t);
        }
        month_total(conn, key)
    }

    /// Records the totals after a committed batch: `before` plus what it added.
    pub(super) fn committed(
        &mut self,
        before: HashMap<TotalKey, Decimal>,
        growth: &HashMap<TotalKey, Decimal>,
    ) {
        if self.known.len() + before.len() > Self::CAPACITY {
            self.known.clear();
        }
        for (key, total) in before {
            let after = growth.get(&key).map_or(total, |g| total.saturating_add(*g));
            self.known.insert(key, after);
        }
    }
}

/// The stored month total of an adding meter: its day cells over the month, every project
/// and every series of the meter (`meter{dim=value}`, as [`series`] reads a bare
/// meter), read inside the batch's write transaction so the check against
/// [`tally_core::headroom::COUNTER_LIMIT`] and the write are one step. One range read of
/// the primary key per (org, meter, month) an adding batch touches (two for a meter with
/// series).
pub(super) fn month_total(conn: &Connection, key: &TotalKey) -> Result<Decimal, StoreError> {
    let mut read = conn
        .prepare_cached(
            "SELECT value FROM cells
             WHERE org = ?1 AND span = ?3 AND start >= ?4 AND start < ?5 AND kind = ?6
               AND (meter = ?2 OR (meter >= ?2 || '{' AND meter < ?2 || '|'))",
        )
        .map_err(db)?;
    let rows = read
        .query_map(
            params![
                key.org.as_str(),
                key.meter.as_str(),
                DAY,
                key.month.start().timestamp(),
                key.month.end().timestamp(),
                KIND_ADD
            ],
            |r| r.get::<_, String>(0),
        )
        .map_err(db)?;
    let mut total = Decimal::ZERO;
    for v in rows {
        // Past `Decimal`'s range the total is over the limit anyway.
        total = total.saturating_add(parse_decimal(&v.map_err(db)?)?);
    }
    Ok(total)
}

/// A stored cell's delta. Nothing read is trusted: a bad kind, value or time is `Corrupt`.
fn cell_delta(kind: i64, value: &str, at: Option<String>) -> Result<Delta, StoreError> {
    let v = parse_decimal(value)?;
    match (kind, parse_opt_ts(at)?) {
        (KIND_ADD, _) => Ok(Delta::Add(v)),
        (KIND_MAX, _) => Ok(Delta::Max(v)),
        (KIND_LATEST, Some(at)) => Ok(Delta::Latest { at, value: v }),
        (KIND_LATEST, None) => Err(corrupt("`latest` cell without a reading time")),
        (other, _) => Err(corrupt(format!("cell kind {other}"))),
    }
}

/// Cells of an org, of one span and with starts in `[from, to)`, as stored cells (ids
/// parsed: for `derive_counters`).
fn read_cells(
    conn: &Connection,
    org: &OrgId,
    span: i64,
    from: i64,
    to: i64,
) -> Result<Vec<StoredCell>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT project, meter, start, kind, value, latest_at FROM cells
             WHERE org = ?1 AND span = ?2 AND start >= ?3 AND start < ?4",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![org.as_str(), span, from, to], |r| {
            <(String, String, i64, i64, String, Option<String>)>::try_from(r)
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (project, meter, start, kind, value, at) = row.map_err(db)?;
        out.push(StoredCell {
            project: parse_id(&project, ProjectId::parse)?,
            meter: parse_id(&meter, MeterName::parse_key)?,
            hours: vec![(start, cell_delta(kind, &value, at)?)],
        });
    }
    Ok(out)
}

/// One series' buckets with starts in `[from, to)`: derived from the meter's cells (of one
/// project, or of all of them when `project` is `""`) — hour cells for an hourly series,
/// day cells otherwise — and from explicit counters where the meter has them.
pub(super) fn series(
    conn: &Connection,
    org: &str,
    project: &str,
    meter: &str,
    granularity: Granularity,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<CounterValue>, StoreError> {
    let (from, to) = (ceil_secs(from), ceil_secs(to).min(LAST_SECOND + 1));
    // Cells and explicit counters from one snapshot, whatever commits in between.
    let _snapshot = conn.unchecked_transaction().map_err(db)?;
    let mut buckets: BTreeMap<i64, Decimal> = BTreeMap::new();
    if from < to {
        // A cell inside a bucket starts at or after the bucket, so no cell before `from`
        // counts; the last bucket starting before `to` ends where cells stop counting.
        let cells_to = DateTime::from_timestamp(to - 1, 0)
            .map(|last| granularity.next(granularity.truncate(last)).timestamp())
            .unwrap_or(to);
        let span = if granularity == Granularity::Hour {
            HOUR
        } else {
            DAY
        };
        let mut stmt = conn
            .prepare_cached(
                "SELECT start, kind, value, latest_at FROM cells
                 WHERE org = ?1 AND span = ?3 AND start >= ?4 AND start < ?5
                   AND (?6 = '' OR project = ?6)
                   AND (meter = ?2 OR (meter >= ?2 || '{' AND meter < ?2 || '|'))",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![org, meter, span, from, cells_to, project], |r| {
                <(i64, i64, String, Option<String>)>::try_from(r)
            })
            .map_err(db)?;
        let mut cells = Vec::new();
        for row in rows {
            let (start, kind, value, at) = row.map_err(db)?;
            cells.push((start, cell_delta(kind, &value, at)?));
        }
        for (start, delta) in derive::derive_series(cells, granularity, from, to) {
            buckets.insert(start, derive::value_of(&delta));
        }
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT start, value FROM unique_counters
             WHERE org = ?1 AND project = ?2 AND meter = ?3 AND granularity = ?4
               AND start >= ?5 AND start < ?6",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(
            params![org, project, meter, gran_code(granularity), from, to],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )
        .map_err(db)?;
    for row in rows {
        let (start, value) = row.map_err(db)?;
        buckets.insert(start, parse_decimal(&value)?);
    }
    buckets
        .into_iter()
        .map(|(start, value)| {
            Ok(CounterValue {
                start: bucket_start(start)?,
                value,
            })
        })
        .collect()
}

/// Every counter of an org's month, explicit or derived, in key order: hours from hour
/// cells, days and the month from day cells, so `reconcile` checks both kinds of row.
pub(super) fn stored(
    conn: &Connection,
    org: &OrgId,
    month: Month,
) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError> {
    let (from, to) = (month.start().timestamp(), month.end().timestamp());
    // Hour rows, day rows and explicit counters from one snapshot: a batch committing
    // between the queries would otherwise look like drift to `reconcile`.
    let _snapshot = conn.unchecked_transaction().map_err(db)?;
    let mut out: BTreeMap<OwnedCounterKey, Decimal> = BTreeMap::new();
    let mut stmt = conn
        .prepare_cached(
            "SELECT project, meter, granularity, start, value FROM unique_counters
             WHERE org = ?1 AND start >= ?2 AND start < ?3",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![org.as_str(), from, to], |r| {
            <(String, String, i64, i64, String)>::try_from(r)
        })
        .map_err(db)?;
    for row in rows {
        let (project, meter, gran, start, value) = row.map_err(db)?;
        let project = if project.is_empty() {
            None
        } else {
            Some(parse_id(&project, ProjectId::parse)?)
        };
        out.insert(
            OwnedCounterKey {
                org: org.clone(),
                project,
                meter: parse_id(&meter, MeterName::parse_key)?,
                granularity: gran_of(gran)?,
                start: bucket_start(start)?,
            },
            parse_decimal(&value)?,
        );
    }
    for (span, keep) in [
        (HOUR, &[Granularity::Hour][..]),
        (DAY, &[Granularity::Day, Granularity::Month][..]),
    ] {
        let cells = read_cells(conn, org, span, from, to)?;
        for (key, value) in derive::derive_counters(org, &cells) {
            if keep.contains(&key.granularity) {
                out.entry(key).or_insert(value);
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// Rebuilds every counter from the ledger, for the move to schema 7: the ledger holds each
/// applied event once, and an explicit counter does not say whether its meter adds up or
/// keeps the maximum, so replaying is the one exact conversion. It runs inside the
/// migration's transaction, so a crash or a bad ledger row leaves the old schema in place;
/// it holds the write lock meanwhile (~40k events/s), so other processes opening the file
/// wait and may time out. Reads every ledger table in arrival order (a file before schema
/// 15 has the one).
pub(super) fn rebuild_from_ledger(conn: &Connection) -> Result<u64, StoreError> {
    conn.execute_batch(
        "DELETE FROM cells; DELETE FROM unique_counters; DELETE FROM unique_markers;",
    )
    .map_err(db)?;
    let mut replayed = 0u64;
    for part in super::ledger::parts(conn)? {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT seq, org, event_id, body FROM {} WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                part.name
            ))
            .map_err(db)?;
        let mut after = 0i64;
        loop {
            let rows = stmt
                .query_map(params![after, REBUILD_CHUNK], |r| {
                    <(i64, String, String, String)>::try_from(r)
                })
                .map_err(db)?;
            let mut events = Vec::new();
            for row in rows {
                let (seq, org, id, body) = row.map_err(db)?;
                after = seq;
                let event = parse_id(&org, OrgId::parse)
                    .and_then(|org| decode_event(&org, &id, &body))
                    .map_err(|e| corrupt(format!("replaying {} row {seq}: {e}", part.name)))?;
                events.push(event);
            }
            if events.is_empty() {
                break;
            }
            replayed += events.len() as u64;
            apply(conn, &events)?;
        }
    }
    Ok(replayed)
}
