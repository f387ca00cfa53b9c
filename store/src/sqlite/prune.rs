//! Pruning the ledger: [`SqliteStore::prune_ledger`] drops each sealed ledger table whose
//! newest row is past [`LEDGER_RETENTION`] (one `DROP TABLE`), and deletes the hot and
//! legacy tables' rows past it in spans of [`PRUNE_BATCH_ROWS`], oldest first (see
//! "Retention" in the adapter's module doc for why forgetting them is safe).

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use tally_core::period::{LEDGER_RETENTION, Month};
use tally_core::ports::StoreError;

use std::sync::Arc;

use super::{
    Inner, PRUNE_BATCH_ROWS, SqliteStore, db, execute, exists, immediate, ledger, month_key,
};
use crate::secs::secs_ts;

/// What [`SqliteStore::prune_ledger`] did (or, dry, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    /// Ledger rows deleted (dry: that would be).
    pub deleted: u64,
    /// Write transactions it took (dry: read passes).
    pub batches: u64,
    /// Rows written before this instant (less a second) went; later ones stay.
    pub cutoff: DateTime<Utc>,
    /// Whether nothing was deleted because it was asked not to.
    pub dry_run: bool,
}

impl SqliteStore {
    /// Deletes the ledger rows written more than [`LEDGER_RETENTION`] before `now` (see
    /// "Retention" in the module doc), [`PRUNE_BATCH_ROWS`] rows per write transaction;
    /// `dry_run` only counts them. Counters are not touched. `now` comes from the clock the
    /// store writes with ([`SqliteStore::with_clock`]).
    pub async fn prune_ledger(
        &self,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<PruneReport, StoreError> {
        let cutoff = now - LEDGER_RETENTION;
        // Rows without a write time: those of months reconcile already refuses at `now`.
        let last_old_month = month_key(Month::of(
            now + tally_core::event::MAX_FUTURE_SKEW - LEDGER_RETENTION,
        ));
        let bound = PruneBound {
            before: cutoff.timestamp(),
            last_old_month,
        };
        let mut report = PruneReport {
            deleted: 0,
            batches: 0,
            cutoff: secs_ts(bound.before),
            dry_run,
        };
        let tables = self.read(ledger::parts).await?;
        // Sealed tables wholly past the retention go whole, one `DROP TABLE` each.
        for p in tables.iter().filter(|p| p.is_sealed()) {
            if p.newest_written.is_none_or(|w| w >= bound.before) {
                continue;
            }
            let (part, name) = (p.part, p.name.clone());
            let rows = if dry_run {
                self.read(move |conn| count_rows(conn, &name)).await?
            } else {
                let inner = Arc::clone(&self.inner);
                self.write(move |conn| {
                    let tx = immediate(conn)?;
                    let rows = drop_part(&tx, part, &name)?;
                    tx.commit().map_err(db)?;
                    // This connection's own change: `data_version` does not show it.
                    forget_tables(&inner)?;
                    Ok(rows)
                })
                .await?
            };
            report.batches += 1;
            report.deleted += rows;
        }
        // The hot table and a legacy one lose rows span by span.
        for p in tables.iter().filter(|p| !p.is_sealed()) {
            let mut after = 0i64;
            loop {
                let table = p.name.clone();
                let step = if dry_run {
                    self.read(move |conn| prune_step(conn, &table, after, bound, false))
                        .await?
                } else {
                    self.write(move |conn| {
                        let tx = immediate(conn)?;
                        let step = prune_step(&tx, &table, after, bound, true)?;
                        tx.commit().map_err(db)?;
                        Ok(step)
                    })
                    .await?
                };
                report.batches += 1;
                report.deleted += step.deleted;
                match step.next {
                    Some(next) => after = next,
                    None => break,
                }
            }
            if p.is_legacy() && !dry_run {
                // Emptied: no longer probed for every key.
                let (part, name) = (p.part, p.name.clone());
                let inner = Arc::clone(&self.inner);
                self.write(move |conn| {
                    let tx = immediate(conn)?;
                    // `EXISTS`, not `count(*)`: a legacy table may hold millions of rows.
                    let sql = format!("SELECT 1 FROM {name} LIMIT 1");
                    if !exists(&tx, &sql, [])? {
                        drop_part(&tx, part, &name)?;
                    }
                    tx.commit().map_err(db)?;
                    forget_tables(&inner)
                })
                .await?;
            }
        }
        Ok(report)
    }
}

/// Which ledger rows may go: written before `before` (Unix seconds), or, without a write
/// time, of a month up to `last_old_month` (yyyymm).
#[derive(Debug, Clone, Copy)]
struct PruneBound {
    before: i64,
    last_old_month: i64,
}

/// How many rows ledger table `name` holds.
fn count_rows(conn: &Connection, name: &str) -> Result<u64, StoreError> {
    conn.query_row(&format!("SELECT count(*) FROM {name}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as u64)
    .map_err(db)
}

/// Drops ledger table `name` (part `part`) with its filter and its place in the list,
/// inside `tx`; returns how many rows it held (none when it was already gone).
fn drop_part(tx: &Connection, part: i64, name: &str) -> Result<u64, StoreError> {
    if execute(
        tx,
        "DELETE FROM ledger_parts WHERE part = ?1 AND state != 0",
        params![part],
    )? == 0
    {
        return Ok(0);
    }
    let rows = count_rows(tx, name)?;
    execute(
        tx,
        "DELETE FROM ledger_filters WHERE part = ?1",
        params![part],
    )?;
    tx.execute_batch(&format!("DROP TABLE {name}"))
        .map_err(db)?;
    Ok(rows)
}

/// Makes the writer's view of the ledger tables read them again.
fn forget_tables(inner: &Inner) -> Result<(), StoreError> {
    inner
        .ledger
        .lock()
        .map_err(|_| StoreError::Unavailable("ledger tables lock poisoned".into()))?
        .forget();
    Ok(())
}

/// One span of [`SqliteStore::prune_ledger`].
struct PruneStep {
    /// Rows deleted (or, dry, that would be).
    deleted: u64,
    /// Where the next span starts (after this `seq`); `None`: done.
    next: Option<i64>,
}

const PRUNABLE: &str = "(written < ?3 OR (written IS NULL AND month <= ?4))";

/// Looks at the [`PRUNE_BATCH_ROWS`] rows of ledger table `table` after `seq` `after` and
/// deletes (when `delete`) or counts those past `bound`. The prefix ends at a span holding
/// a row written since `bound.before`: rows are appended in write order, so the rest is
/// newer still.
fn prune_step(
    conn: &Connection,
    table: &str,
    after: i64,
    bound: PruneBound,
    delete: bool,
) -> Result<PruneStep, StoreError> {
    let span: (Option<i64>, i64, bool) = conn
        .prepare_cached(&format!(
            "SELECT max(seq), count(*), coalesce(max(written >= ?3), 0) FROM (
                 SELECT seq, written FROM {table} WHERE seq > ?1 ORDER BY seq LIMIT ?2)"
        ))
        .and_then(|mut s| {
            s.query_row(params![after, PRUNE_BATCH_ROWS as i64, bound.before], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
        })
        .map_err(db)?;
    let (Some(last), rows, newer) = span else {
        return Ok(PruneStep {
            deleted: 0,
            next: None,
        });
    };
    let range = params![after, last, bound.before, bound.last_old_month];
    let deleted = if delete {
        execute(
            conn,
            &format!("DELETE FROM {table} WHERE seq > ?1 AND seq <= ?2 AND {PRUNABLE}"),
            range,
        )? as u64
    } else {
        conn.prepare_cached(&format!(
            "SELECT count(*) FROM {table} WHERE seq > ?1 AND seq <= ?2 AND {PRUNABLE}"
        ))
        .and_then(|mut s| s.query_row(range, |r| r.get::<_, i64>(0)))
        .map_err(db)? as u64
    };
    let full = rows as usize == PRUNE_BATCH_ROWS;
    Ok(PruneStep {
        deleted,
        next: (full && !newer).then_some(last),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tally_core::event::Event;
    use tally_core::ids::OrgId;
    use tally_core::ports::{FixedClock, LedgerPageQuery, UsageStore};

    use super::super::fixtures::{at, event, ledger_rows, temp_db};
    use super::*;

    /// Rows written 45 days ago and more go, in spans of `PRUNE_BATCH_ROWS`; rows written
    /// since stay and still catch resends; counters are untouched; a dry run deletes nothing.
    #[tokio::test]
    async fn pruning_deletes_ledger_rows_past_the_retention_only() {
        let (_dir, path) = temp_db();
        let clock = Arc::new(FixedClock::at(at("2026-10-02T00:00:00Z")));
        let s = SqliteStore::open(&path).unwrap().with_clock(clock.clone());
        let org = OrgId::parse("org_a").unwrap();
        let october = Month::parse("2026-10").unwrap();
        let november = Month::parse("2026-11").unwrap();
        // More than two spans of old rows, so pruning takes several transactions.
        let old: Vec<Event> = (0..2 * PRUNE_BATCH_ROWS + 7)
            .map(|i| event(&org, &format!("old-{i}"), "2026-10-01T12:00:00Z"))
            .collect();
        for chunk in old.chunks(5_000) {
            assert_eq!(s.apply_batch(chunk).await.unwrap().applied(), chunk.len());
        }
        clock.set(at("2026-11-10T00:00:00Z"));
        let new = [
            event(&org, "new-1", "2026-11-10T00:00:00Z"),
            event(&org, "new-2", "2026-11-10T00:00:00Z"),
        ];
        s.apply_batch(&new).await.unwrap();
        let counters = (
            s.stored_counters(&org, october).await.unwrap(),
            s.stored_counters(&org, november).await.unwrap(),
        );
        let total = old.len() as i64 + 2;
        assert_eq!(ledger_rows(&path), total);

        // One second short of 45 days after the old rows were written: nothing goes.
        let written = at("2026-10-02T00:00:00Z");
        let early = s
            .prune_ledger(written + LEDGER_RETENTION, false)
            .await
            .unwrap();
        assert_eq!(early.deleted, 0, "{early:?}");
        assert_eq!(ledger_rows(&path), total);

        let now = written + LEDGER_RETENTION + chrono::Duration::seconds(1);
        let dry = s.prune_ledger(now, true).await.unwrap();
        assert_eq!(dry.deleted, old.len() as u64, "{dry:?}");
        assert!(dry.dry_run);
        assert_eq!(ledger_rows(&path), total, "a dry run deletes nothing");

        let done = s.prune_ledger(now, false).await.unwrap();
        assert_eq!(done.deleted, old.len() as u64, "{done:?}");
        assert!(done.batches >= 3, "{done:?}");
        assert_eq!(ledger_rows(&path), 2);
        assert!(
            s.ledger_page(&LedgerPageQuery::new(&org, october, None, 10))
                .await
                .unwrap()
                .events
                .is_empty()
        );
        assert_eq!(
            s.ledger_page(&LedgerPageQuery::new(&org, november, None, 10))
                .await
                .unwrap()
                .events,
            new.to_vec()
        );
        assert_eq!(
            (
                s.stored_counters(&org, october).await.unwrap(),
                s.stored_counters(&org, november).await.unwrap(),
            ),
            counters,
            "counters are never pruned"
        );
        // The kept rows still say "already counted".
        assert_eq!(s.apply_batch(&new).await.unwrap().duplicates(), 2);
        // Nothing is left to prune: one look at the table.
        let again = s.prune_ledger(now, false).await.unwrap();
        assert_eq!((again.deleted, again.batches), (0, 1), "{again:?}");
    }

    /// Rows written before schema 9 carry no write time: they go when reconcile refuses their
    /// month (its start less the 5-minute skew plus 45 days), not before.
    #[tokio::test]
    async fn rows_without_a_write_time_go_with_their_month() {
        let (_dir, path) = temp_db();
        let s = SqliteStore::open(&path).unwrap();
        let org = OrgId::parse("org_a").unwrap();
        s.apply_batch(&[
            event(&org, "sep", "2026-09-30T23:00:00Z"),
            event(&org, "oct", "2026-10-01T00:00:00Z"),
        ])
        .await
        .unwrap();
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE ledger SET written = NULL", [])
            .unwrap();
        let october_goes = Month::parse("2026-10").unwrap().start()
            - tally_core::event::MAX_FUTURE_SKEW
            + LEDGER_RETENTION;
        let before = october_goes - chrono::Duration::seconds(1);
        assert_eq!(s.prune_ledger(before, false).await.unwrap().deleted, 1);
        assert_eq!(ledger_rows(&path), 1, "September went, October stays");
        assert_eq!(
            s.prune_ledger(october_goes, false).await.unwrap().deleted,
            1
        );
        assert_eq!(ledger_rows(&path), 0);
    }
}
