//! Tests of the partitioned ledger: sealing, the filters' faults, the seal's atomicity, the
//! upgrade of a schema 13 file, pruning by table, and a second process's seal. Tables are
//! sealed at 10 rows here so a few events cross several seals.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::Connection;
use rust_decimal::Decimal;
use tally_core::event::{Event, Quantity};
use tally_core::ids::OrgId;
use tally_core::period::{Granularity, LEDGER_RETENTION, Month};
use tally_core::ports::{FixedClock, LedgerPageQuery, UsageStore};

use super::super::fixtures::{at, event, first_ledger_page, ledger_rows, temp_db};
use super::super::{SqliteConfig, SqliteStore};
use super::*;

const NOV: &str = "2026-11-26T10:00:00Z";

/// The store at `path` sealing its ledger tables at 10 entries.
fn small(path: &Path) -> SqliteStore {
    parts_of(path, 10)
}

/// The store at `path` sealing its ledger tables at `rows` entries.
fn parts_of(path: &Path, rows: usize) -> SqliteStore {
    SqliteStore::open_with(
        path,
        SqliteConfig {
            ledger_part_rows: rows,
            ..SqliteConfig::default()
        },
    )
    .unwrap()
}

fn org() -> OrgId {
    OrgId::parse("org_a").unwrap()
}

fn events(range: std::ops::Range<usize>) -> Vec<Event> {
    range
        .map(|i| event(&org(), &format!("e{i:03}"), NOV))
        .collect()
}

/// A store of 10-row tables on a fresh file, and the 10 events it applied: they fill the
/// first table, which the batch sealed (`ledger_00001`).
async fn one_full_table() -> (tempfile::TempDir, PathBuf, SqliteStore, Vec<Event>) {
    let (dir, path) = temp_db();
    let s = small(&path);
    let first = events(0..10);
    s.apply_batch(&first).await.unwrap();
    (dir, path, s, first)
}

/// `(seq, event_id)` of every row of ledger table `table`, in `seq` order.
fn seqs_and_ids(c: &Connection, table: &str) -> Vec<(i64, String)> {
    c.prepare(&format!("SELECT seq, event_id FROM {table} ORDER BY seq"))
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The month total of `api_calls` for org_a (2.5 per event).
async fn month_total(s: &SqliteStore) -> Decimal {
    s.stored_counters(&org(), Month::parse("2026-11").unwrap())
        .await
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.granularity == Granularity::Month && k.project.is_none())
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// (name, state) of every ledger table, in arrival order.
fn tables(path: &Path) -> Vec<(String, i64)> {
    let c = Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT name, state FROM ledger_parts ORDER BY part")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Asserts the ledger's tables, in arrival order, as `(name, state)`.
#[track_caller]
fn assert_tables(path: &Path, want: &[(&str, i64)]) {
    let want: Vec<(String, i64)> = want.iter().map(|&(n, s)| (n.to_owned(), s)).collect();
    assert_eq!(tables(path), want);
}

fn filter_row(path: &Path, part: i64) -> Option<(i64, Vec<u8>)> {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT checksum, bits FROM ledger_filters WHERE part = ?1",
            [part],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .unwrap()
}

/// 25 events in batches of 5 with tables of 10: the batch that brings the hot table to 10
/// rows seals it (after batches 2 and 4), so 10 + 10 rows are sealed and 5 are hot.
#[tokio::test]
async fn full_tables_are_sealed_behind_filters_and_every_resend_stays_a_duplicate() {
    let (_dir, path) = temp_db();
    let s = small(&path);
    let all = events(0..25);
    for chunk in all.chunks(5) {
        assert_eq!(s.apply_batch(chunk).await.unwrap().applied(), 5);
    }
    assert_tables(
        &path,
        &[("ledger_00001", 1), ("ledger_00002", 1), ("ledger", 0)],
    );
    assert!(filter_row(&path, 1).is_some() && filter_row(&path, 2).is_some());
    assert_eq!(ledger_rows(&path), 25);
    // 25 × 2.5
    assert_eq!(month_total(&s).await, Decimal::new(625, 1));
    assert_eq!(s.apply_batch(&all).await.unwrap().duplicates(), 25);
    // A resend from the oldest sealed table with other contents is reported, read from there.
    let mut changed = all[3].clone();
    changed.quantity = Quantity::new(Decimal::from(7)).unwrap();
    let report = s.apply_batch(&[changed]).await.unwrap();
    assert_eq!(
        (report.duplicates(), report.conflicts.clone()),
        (1, vec![0])
    );
    assert_eq!(month_total(&s).await, Decimal::new(625, 1));
    // A page reads every table in event id order, across pages of 7.
    let month = Month::parse("2026-11").unwrap();
    let mut read = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .ledger_page(&LedgerPageQuery::new(&org(), month, cursor, 7))
            .await
            .unwrap();
        read.extend(page.events);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(read, all);
    // Reopened: the filters come from the file, none rebuilt, and still exact.
    drop(s);
    let s = small(&path);
    assert_eq!(s.apply_batch(&all).await.unwrap().duplicates(), 25);
    assert_eq!(s.inner.ledger.lock().unwrap().rebuilt, 0);
    assert_eq!(month_total(&s).await, Decimal::new(625, 1));
}

/// The probe path is what keeps a sealed table's keys exact: a filter that says "no" for a
/// key its table holds (planted here: all zeros, with a matching checksum, so it is
/// trusted) lets that key's resend be counted a second time.
#[tokio::test]
async fn a_filter_saying_no_for_a_present_key_lets_the_resend_count_twice() {
    let (_dir, path, s, first) = one_full_table().await;
    assert_eq!(tables(&path)[0], ("ledger_00001".into(), 1));
    // With the true filter the resend is a duplicate.
    assert_eq!(s.apply_batch(&first[..1]).await.unwrap().duplicates(), 1);
    drop(s);
    let empty = PartFilter::with_capacity(10);
    let c = Connection::open(&path).unwrap();
    save_filter(&c, 1, 10, &empty).unwrap();
    drop(c);
    let s = small(&path);
    assert_eq!(s.apply_batch(&first[..1]).await.unwrap().applied(), 1);
    // 10 × 2.5, then the same event once more: 27.5.
    assert_eq!(month_total(&s).await, Decimal::new(275, 1));
}

/// A torn filter row (one flipped byte) fails its checksum: the store rebuilds it from its
/// table, writes it back, and every resend is still a duplicate.
#[tokio::test]
async fn a_torn_filter_is_rebuilt_from_its_table_and_stays_exact() {
    let (_dir, path, s, first) = one_full_table().await;
    drop(s);
    let (checksum, bits) = filter_row(&path, 1).unwrap();
    let mut torn = bits.clone();
    torn[17] ^= 0x10;
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE ledger_filters SET bits = ?1 WHERE part = 1",
            [&torn],
        )
        .unwrap();
    let s = small(&path);
    assert_eq!(s.apply_batch(&first).await.unwrap().duplicates(), 10);
    assert_eq!(s.inner.ledger.lock().unwrap().rebuilt, 1);
    assert_eq!(filter_row(&path, 1), Some((checksum, bits)), "written back");
    assert_eq!(month_total(&s).await, Decimal::from(25));
}

/// A seal fails after renaming the full table and writing its filter, before the commit (as
/// a crash there would): the whole batch, seal included, is rolled back, and the retry
/// seals and counts once. Then a handle that never closes (a killed process) after a seal:
/// the reopened store still refuses every sealed id.
#[tokio::test]
async fn a_seal_cut_short_keeps_neither_the_seal_nor_the_batch() {
    let (_dir, path) = temp_db();
    let s = small(&path);
    let first = events(0..10);
    s.inner.ledger.lock().unwrap().fail_seal = true;
    assert!(s.apply_batch(&first).await.is_err());
    assert_tables(&path, &[("ledger", 0)]);
    assert_eq!(filter_row(&path, 1), None);
    assert_eq!(ledger_rows(&path), 0);
    assert_eq!(month_total(&s).await, Decimal::ZERO);
    s.inner.ledger.lock().unwrap().fail_seal = false;
    assert_eq!(s.apply_batch(&first).await.unwrap().applied(), 10);
    assert_eq!(tables(&path)[0], ("ledger_00001".into(), 1));
    assert_eq!(s.apply_batch(&first).await.unwrap().duplicates(), 10);
    std::mem::forget(s);
    let s = small(&path);
    assert_eq!(s.apply_batch(&first).await.unwrap().duplicates(), 10);
    assert_eq!(month_total(&s).await, Decimal::from(25));
}

/// A file written at schema 13 (one `ledger` table, no partitions) opens at 15 with its
/// ledger kept, unrewritten, as the legacy table: its ids are still refused, new rows go to
/// a fresh hot table, pages read both, and pruning empties and then drops it.
#[tokio::test]
async fn a_schema_13_file_upgrades_and_still_refuses_its_old_ids() {
    let (_dir, path) = temp_db();
    let clock = Arc::new(FixedClock::at(at("2026-11-26T11:00:00Z")));
    let old = events(0..5);
    {
        let s = SqliteStore::open(&path).unwrap().with_clock(clock.clone());
        s.apply_batch(&old).await.unwrap();
    }
    // What a schema 13 file holds: schema 14's and 15's additions undone.
    let c = Connection::open(&path).unwrap();
    c.execute_batch(
        "DROP TABLE ledger_parts; DROP TABLE ledger_filters; DROP TABLE tws_readings; \
         PRAGMA user_version = 13;",
    )
    .unwrap();
    let rows_before = seqs_and_ids(&c, "ledger");
    drop(c);
    let s = small(&path).with_clock(clock.clone());
    let c = Connection::open(&path).unwrap();
    let v: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 15);
    assert_tables(&path, &[("ledger_00000", 2), ("ledger", 0)]);
    let kept = seqs_and_ids(&c, "ledger_00000");
    assert_eq!(kept, rows_before, "the legacy rows are kept as they were");
    assert_eq!(s.apply_batch(&old).await.unwrap().duplicates(), 5);
    // 15 new rows: the hot table (part 1) fills and is sealed; the legacy table stays.
    let new = events(5..20);
    assert_eq!(s.apply_batch(&new).await.unwrap().applied(), 15);
    assert_tables(
        &path,
        &[("ledger_00000", 2), ("ledger_00001", 1), ("ledger", 0)],
    );
    let all = events(0..20);
    assert_eq!(s.apply_batch(&all).await.unwrap().duplicates(), 20);
    let page = first_ledger_page(&s, &org(), Month::parse("2026-11").unwrap(), 100).await;
    assert_eq!(page.events, all);
    // 46 days on, everything is past the retention: the legacy rows are deleted and its
    // table dropped, the sealed one dropped whole, the hot table's rows deleted.
    let done = s
        .prune_ledger(
            at("2026-11-26T11:00:00Z") + LEDGER_RETENTION + chrono::Duration::days(1),
            false,
        )
        .await
        .unwrap();
    assert_eq!(done.deleted, 20, "{done:?}");
    assert_tables(&path, &[("ledger", 0)]);
    assert_eq!(ledger_rows(&path), 0);
    // The writer forgot the dropped tables: the next batch does not probe them.
    assert_eq!(s.apply_batch(&events(20..21)).await.unwrap().applied(), 1);
}

/// Pruning drops a sealed table once its newest row is past the retention, and not before;
/// the hot table's rows go span by span as before.
#[tokio::test]
async fn pruning_drops_a_sealed_table_only_when_its_newest_row_is_past_the_retention() {
    let (_dir, path) = temp_db();
    let written = at("2026-11-26T11:00:00Z");
    let clock = Arc::new(FixedClock::at(written));
    let s = small(&path).with_clock(clock.clone());
    s.apply_batch(&events(0..10)).await.unwrap();
    clock.set(written + chrono::Duration::days(10));
    let later = events(10..13);
    s.apply_batch(&later).await.unwrap();
    let edge = s
        .prune_ledger(written + LEDGER_RETENTION, false)
        .await
        .unwrap();
    assert_eq!(edge.deleted, 0, "{edge:?}");
    // One second past the sealed table's newest row's retention: it may go.
    let past = written + LEDGER_RETENTION + chrono::Duration::seconds(1);
    let dry = s.prune_ledger(past, true).await.unwrap();
    assert_eq!(dry.deleted, 10, "{dry:?}");
    assert_eq!(ledger_rows(&path), 13, "a dry run drops nothing");
    let done = s.prune_ledger(past, false).await.unwrap();
    assert_eq!(done.deleted, 10, "{done:?}");
    assert_tables(&path, &[("ledger", 0)]);
    assert_eq!(filter_row(&path, 1), None);
    assert_eq!(s.apply_batch(&later).await.unwrap().duplicates(), 3);
}

/// Another process (here another handle on the file) seals a table: this writer sees the
/// file changed (`data_version`), loads the new table's filter and refuses its ids.
#[tokio::test]
async fn a_seal_by_another_process_is_seen_before_the_next_batch() {
    let (_dir, path) = temp_db();
    let a = small(&path);
    let b = small(&path);
    let first = events(0..10);
    // b reads the tables once (none sealed yet).
    b.apply_batch(&events(100..101)).await.unwrap();
    a.apply_batch(&first).await.unwrap();
    assert_eq!(tables(&path)[0], ("ledger_00001".into(), 1));
    assert_eq!(b.apply_batch(&first).await.unwrap().duplicates(), 10);
    // 11 events × 2.5
    assert_eq!(month_total(&b).await, Decimal::new(275, 1));
}

/// The move to schema 7 replays the ledger into the counters; with sealed tables it reads
/// every table, in arrival order (a replay of the hot table alone would give 5 × 2.5).
#[tokio::test]
async fn the_schema_7_replay_reads_every_ledger_table() {
    let (_dir, path) = temp_db();
    let s = small(&path);
    for chunk in events(0..25).chunks(5) {
        s.apply_batch(chunk).await.unwrap();
    }
    assert_eq!(tables(&path).len(), 3);
    drop(s);
    Connection::open(&path)
        .unwrap()
        .execute_batch("DELETE FROM cells; DELETE FROM unique_counters; PRAGMA user_version = 6;")
        .unwrap();
    let s = small(&path);
    // 25 × 2.5
    assert_eq!(month_total(&s).await, Decimal::new(625, 1));
}

/// More sealed tables than one statement may read (`LEDGER_ARMS_PER_QUERY`; SQLite refuses
/// a compound SELECT of more than 500 terms): pages still hold every event once, in id order.
#[tokio::test]
async fn ledger_pages_read_more_tables_than_one_statement_may_name() {
    let (_dir, path) = temp_db();
    let s = parts_of(&path, 1).with_clock(Arc::new(FixedClock::at(at(NOV))));
    let n = 2 * crate::sqlite::usage::LEDGER_ARMS_PER_QUERY + 50;
    let all = events(0..n);
    for e in &all {
        s.apply_batch(std::slice::from_ref(e)).await.unwrap();
    }
    assert!(tables(&path).len() > 2 * crate::sqlite::usage::LEDGER_ARMS_PER_QUERY);
    let month = Month::parse("2026-11").unwrap();
    let (mut seen, mut cursor, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = s
            .ledger_page(&LedgerPageQuery::new(&org(), month, cursor, 100))
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.events.iter().map(|e| e.id.as_str().to_owned()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut want: Vec<String> = all.iter().map(|e| e.id.as_str().to_owned()).collect();
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(pages, n.div_ceil(100));
}
