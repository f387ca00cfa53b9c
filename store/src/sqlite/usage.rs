//! The [`UsageStore`] port on SQLite: applying a batch to the ledger and the counters in
//! one transaction, reading counters and ledger pages, and closing periods. The counters'
//! cells live in `counters.rs`; why the ledger is laid out as it is, in the adapter's
//! module doc.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use rust_decimal::Decimal;
use tally_core::counter::OwnedCounterKey;
use tally_core::event::Event;
use tally_core::fold;
use tally_core::headroom;
use tally_core::ids::{EventId, OrgId};
use tally_core::period::{LEDGER_RETENTION, Month};
use tally_core::ports::{
    ApplyOutcome, ApplyReport, CounterQuery, CounterValue, LedgerPage, LedgerPageQuery,
    ReadingStore, StoreError, UsageStore,
};

use super::{SqliteStore, corrupt, counters, db, immediate, ledger, month_key, parse_id, ts_text};

/// Most ledger events one [`UsageStore::ledger_page`] call returns.
pub const MAX_LEDGER_PAGE: usize = 10_000;

fn encode_body(e: &Event) -> Result<String, StoreError> {
    crate::ledger_body::encode(e)
}

pub(super) fn decode_event(org: &OrgId, id: &str, body: &str) -> Result<Event, StoreError> {
    crate::ledger_body::decode(org, parse_id(id, EventId::parse)?, body, "ledger row")
}

/// Opaque ledger cursor: the hex of the last event id returned.
fn encode_cursor(id: &str) -> String {
    hex::encode(id.as_bytes())
}

/// Most ledger tables one `ledger_page` statement reads (one `UNION ALL` arm each): SQLite
/// refuses a compound SELECT of more than 500 terms, and a long-retained busy org seals
/// more tables than that; the statements' rows are merged in Rust.
pub(super) const LEDGER_ARMS_PER_QUERY: usize = 200;

fn decode_cursor(c: &str) -> Result<String, StoreError> {
    hex::decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| corrupt(format!("ledger cursor {c:?} was not issued by this store")))
}

/// Applies one batch in one transaction; see [`UsageStore::apply_batch`].
fn apply_batch_tx(
    conn: &mut Connection,
    events: &[Event],
    written: i64,
    totals: &mut counters::Totals,
    parts: &mut ledger::Ledger,
) -> Result<ApplyReport, StoreError> {
    // First occurrence of each (org, id) in the batch, by position.
    let kept = fold::dedupe_in_batch(events);
    let mut first = vec![false; events.len()];
    let mut k = kept.iter().peekable();
    for (i, e) in events.iter().enumerate() {
        if k.next_if(|r| std::ptr::eq(**r, e)).is_some() {
            first[i] = true;
        }
    }
    // Insert in index order so neighbouring keys share index pages while they are hot.
    let mut order: Vec<usize> = (0..events.len()).filter(|&i| first[i]).collect();
    order.sort_unstable_by(|&a, &b| {
        (&events[a].org_id, &events[a].id).cmp(&(&events[b].org_id, &events[b].id))
    });
    let bodies = order
        .iter()
        .map(|&i| encode_body(&events[i]))
        .collect::<Result<Vec<_>, _>>()?;

    let tx = immediate(conn)?;
    parts.sync(&tx)?;
    let mut new = vec![false; events.len()];
    // Keys already in a sealed table, and which: a repeat's body is read from there.
    let mut holders: HashMap<(&OrgId, &EventId), String> = HashMap::new();
    {
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO ledger (org, event_id, month, body, written)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (org, event_id) DO NOTHING",
            )
            .map_err(db)?;
        for (&i, body) in order.iter().zip(&bodies) {
            let e = &events[i];
            if let Some(t) = parts.holder(&tx, e.org_id.as_str(), e.id.as_str())? {
                holders.insert((&e.org_id, &e.id), t.to_owned());
                continue;
            }
            let changed = ins
                .execute(params![
                    e.org_id.as_str(),
                    e.id.as_str(),
                    month_key(Month::of(e.timestamp)),
                    body,
                    written
                ])
                .map_err(db)?;
            new[i] = changed == 1;
        }
    }
    // Events that would take a month total past the limit are refused, in batch order,
    // and leave the ledger again (`counter_overflow`; see `tally_core::headroom`).
    let fresh = || (0..events.len()).filter(|&i| new[i]);
    totals.check_version(&tx)?;
    let mut before = HashMap::new();
    for key in headroom::needs(fresh().map(|i| &events[i])).into_keys() {
        let total = totals.get(&tx, &key)?;
        before.insert(key, total);
    }
    let admission = headroom::admit(fresh().map(|i| (i, &events[i])), |key| {
        headroom::room_under_limit(before.get(key).copied().unwrap_or(headroom::COUNTER_LIMIT))
    });
    let mut refused = vec![false; events.len()];
    if !admission.refused.is_empty() {
        let mut forget = tx
            .prepare_cached("DELETE FROM ledger WHERE org = ?1 AND event_id = ?2")
            .map_err(db)?;
        for &i in &admission.refused {
            forget
                .execute(params![events[i].org_id.as_str(), events[i].id.as_str()])
                .map_err(db)?;
            new[i] = false;
            refused[i] = true;
        }
        // A repeat of a refused first copy was not counted either.
        let ids: HashSet<(&OrgId, &EventId)> = admission
            .refused
            .iter()
            .map(|&i| (&events[i].org_id, &events[i].id))
            .collect();
        for (i, e) in events.iter().enumerate() {
            if ids.contains(&(&e.org_id, &e.id)) {
                refused[i] = true;
            }
        }
    }
    counters::apply(
        &tx,
        events.iter().zip(&new).filter_map(|(e, n)| n.then_some(e)),
    )?;
    let compared: Vec<bool> = new.iter().zip(&refused).map(|(n, r)| *n || *r).collect();
    let conflicts = conflicting_repeats(&tx, events, &compared, &holders)?;
    let sealed = parts.seal_if_full(&tx)?;
    tx.commit().map_err(db)?;
    totals.committed(before, &admission.growth);
    if let Some(s) = sealed {
        parts.sealed_committed(s);
    }
    Ok(ApplyReport {
        conflicts,
        outcomes: new
            .into_iter()
            .zip(refused)
            .map(|(n, r)| match (n, r) {
                (_, true) => ApplyOutcome::Overflow,
                (true, false) => ApplyOutcome::Applied,
                (false, false) => ApplyOutcome::Duplicate,
            })
            .collect(),
    })
}

/// The repeats (`skip[i]` false: neither new nor refused) whose contents differ from the copy the ledger counted: read
/// back inside the batch's transaction, so a first copy earlier in the same batch is seen
/// too. One indexed read per distinct repeated id, from the sealed table `holders` names
/// or else the hot one; a batch without repeats reads nothing.
/// Only a report: a stored body that does not decode is logged and left uncompared, never
/// a reason to fail (and forever retry) the batch.
fn conflicting_repeats(
    tx: &rusqlite::Transaction<'_>,
    events: &[Event],
    skip: &[bool],
    holders: &HashMap<(&OrgId, &EventId), String>,
) -> Result<Vec<usize>, StoreError> {
    let mut conflicts = Vec::new();
    if skip.iter().all(|n| *n) {
        return Ok(conflicts);
    }
    let mut counted: HashMap<(&OrgId, &EventId), Option<Event>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if skip[i] {
            continue;
        }
        let copy = match counted.entry((&e.org_id, &e.id)) {
            std::collections::hash_map::Entry::Occupied(c) => c.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let table = holders
                    .get(&(&e.org_id, &e.id))
                    .map_or(ledger::HOT, String::as_str);
                let body: String = tx
                    .prepare_cached(&format!(
                        "SELECT body FROM {table} WHERE org = ?1 AND event_id = ?2"
                    ))
                    .and_then(|mut s| {
                        s.query_row(params![e.org_id.as_str(), e.id.as_str()], |r| r.get(0))
                    })
                    .map_err(db)?;
                let copy = decode_event(&e.org_id, e.id.as_str(), &body)
                    .inspect_err(|err| {
                        tracing::warn!(error = %err, "cannot compare a resend with its ledger row");
                    })
                    .ok();
                slot.insert(copy)
            }
        };
        if copy.as_ref().is_some_and(|c| c != e) {
            conflicts.push(i);
        }
    }
    Ok(conflicts)
}

#[async_trait]
impl UsageStore for SqliteStore {
    /// Rows are kept [`LEDGER_RETENTION`] after they are written, then pruned
    /// ([`SqliteStore::prune_ledger`]), as on DynamoDB.
    fn readings(&self) -> Option<&dyn ReadingStore> {
        Some(self)
    }

    fn ledger_retention(&self) -> Option<chrono::Duration> {
        Some(LEDGER_RETENTION)
    }

    async fn apply_batch(&self, events: &[Event]) -> Result<ApplyReport, StoreError> {
        if events.is_empty() {
            return Ok(ApplyReport::default());
        }
        let events = events.to_vec();
        let written = self.clock.now().timestamp();
        let inner = Arc::clone(&self.inner);
        self.write(move |conn| {
            let mut totals = inner
                .totals
                .lock()
                .map_err(|_| StoreError::Unavailable("month totals lock poisoned".into()))?;
            let mut parts = inner
                .ledger
                .lock()
                .map_err(|_| StoreError::Unavailable("ledger tables lock poisoned".into()))?;
            apply_batch_tx(conn, &events, written, &mut totals, &mut parts)
        })
        .await
    }

    async fn counter_series(&self, q: &CounterQuery) -> Result<Vec<CounterValue>, StoreError> {
        let q = q.clone();
        self.read(move |conn| {
            counters::series(
                conn,
                q.org.as_str(),
                q.project.as_ref().map(|p| p.as_str()).unwrap_or_default(),
                q.meter.as_str(),
                q.granularity,
                q.from,
                q.to,
            )
        })
        .await
    }

    async fn ledger_page(&self, q: &LedgerPageQuery<'_>) -> Result<LedgerPage, StoreError> {
        let (org, month, cursor, limit) = (q.org, q.month, &q.cursor, q.limit);
        let after = cursor.as_deref().map(decode_cursor).transpose()?;
        let limit = limit.clamp(1, MAX_LEDGER_PAGE);
        let org = org.clone();
        self.read(move |conn| {
            // One read transaction: the table list and the rows of one snapshot, so a seal
            // committed meanwhile (a rename) cannot hide rows from the page.
            let snapshot = conn.unchecked_transaction().map_err(db)?;
            // Every table, each read through its (org, event_id) index; SQLite merges the
            // ordered arms of one statement, and statements of at most
            // `LEDGER_ARMS_PER_QUERY` arms (SQLite refuses a compound SELECT of more than
            // 500) are merged here. Event ids are unique across the tables (a table takes
            // an id only when no other holds it) and SQLite's BINARY order is byte order,
            // as `String`'s is. Fetch one more than asked to learn whether another page
            // exists.
            let parts = ledger::parts(&snapshot)?;
            let mut rows: Vec<(String, String)> = Vec::new();
            for group in parts.chunks(LEDGER_ARMS_PER_QUERY) {
                let arms: Vec<String> = group
                    .iter()
                    .map(|p| {
                        format!(
                            "SELECT event_id, body FROM {}
                             WHERE org = ?1 AND event_id > ?2 AND month = ?3",
                            p.name
                        )
                    })
                    .collect();
                let sql = format!("{} ORDER BY 1 LIMIT ?4", arms.join(" UNION ALL "));
                let mut stmt = snapshot.prepare_cached(&sql).map_err(db)?;
                let found = stmt
                    .query_map(
                        params![
                            org.as_str(),
                            after.as_deref().unwrap_or_default(),
                            month_key(month),
                            (limit + 1) as i64
                        ],
                        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                    )
                    .map_err(db)?;
                for row in found {
                    rows.push(row.map_err(db)?);
                }
            }
            if parts.len() > LEDGER_ARMS_PER_QUERY {
                rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            }
            let mut events = Vec::with_capacity(limit);
            let mut more = false;
            for (id, body) in rows {
                if events.len() == limit {
                    more = true;
                    break;
                }
                events.push(decode_event(&org, &id, &body)?);
            }
            let next = if more {
                events.last().map(|e: &Event| encode_cursor(e.id.as_str()))
            } else {
                None
            };
            Ok(LedgerPage { events, next })
        })
        .await
    }

    async fn stored_counters(
        &self,
        org: &OrgId,
        month: Month,
    ) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError> {
        let org = org.clone();
        self.read(move |conn| counters::stored(conn, &org, month))
            .await
    }

    async fn is_period_closed(&self, month: Month) -> Result<bool, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached("SELECT 1 FROM closed_periods WHERE month = ?1")
                .and_then(|mut s| s.exists(params![month_key(month)]))
                .map_err(db)
        })
        .await
    }

    async fn close_period(&self, month: Month, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO closed_periods (month, closed_at) VALUES (?1, ?2)
                 ON CONFLICT (month) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![month_key(month), ts_text(at)]))
            .map_err(db)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use serde_json::Value;

    use super::super::fixtures::{event, first_ledger_page, temp_db};
    use super::*;

    #[tokio::test]
    async fn ledger_rows_are_compact_and_survive_reopen() {
        let (_dir, path) = temp_db();
        let org = OrgId::parse("org_a").unwrap();
        let mut e = event(&org, "e1", "2026-11-26T10:00:00.123456789Z");
        e.properties.insert("route".into(), Value::from("/x"));
        {
            let s = SqliteStore::open(&path).unwrap();
            assert_eq!(s.apply_batch(&[e.clone()]).await.unwrap().applied(), 1);
        }
        let s = SqliteStore::open(&path).unwrap();
        let page = first_ledger_page(&s, &org, Month::of(e.timestamp), 10).await;
        assert_eq!(page.events, vec![e.clone()]);
        assert_eq!(s.apply_batch(&[e]).await.unwrap().duplicates(), 1);
        let c = Connection::open(&path).unwrap();
        let body: String = c
            .query_row("SELECT body FROM ledger", [], |r| r.get(0))
            .unwrap();
        assert!(!body.contains("org_a") && !body.contains("e1"), "{body}");
        assert!(body.len() < 160, "{body}");
    }

    #[tokio::test]
    async fn an_applied_batch_survives_a_handle_that_never_closed() {
        let (_dir, path) = temp_db();
        let org = OrgId::parse("org_a").unwrap();
        let e = event(&org, "e1", "2026-11-26T10:00:00Z");
        let s = SqliteStore::open(&path).unwrap();
        s.apply_batch(std::slice::from_ref(&e)).await.unwrap();
        std::mem::forget(s);
        let s = SqliteStore::open(&path).unwrap();
        let month = Month::of(e.timestamp);
        assert_eq!(s.stored_counters(&org, month).await.unwrap().len(), 6);
        assert_eq!(s.apply_batch(&[e]).await.unwrap().duplicates(), 1);
    }

    #[tokio::test]
    async fn bad_rows_and_cursors_are_reported_not_panicked() {
        let (_dir, path) = temp_db();
        let s = SqliteStore::open(&path).unwrap();
        let org = OrgId::parse("org_a").unwrap();
        let e = event(&org, "e1", "2026-11-26T10:00:00Z");
        s.apply_batch(std::slice::from_ref(&e)).await.unwrap();
        let month = Month::of(e.timestamp);
        assert!(matches!(
            s.ledger_page(&LedgerPageQuery::new(&org, month, Some("zz".into()), 10))
                .await,
            Err(StoreError::Corrupt(_))
        ));
        let c = Connection::open(&path).unwrap();
        c.execute("UPDATE ledger SET body = 'nope'", []).unwrap();
        c.execute("UPDATE cells SET value = 'x'", []).unwrap();
        assert!(matches!(
            s.ledger_page(&LedgerPageQuery::new(&org, month, None, 10))
                .await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            s.stored_counters(&org, month).await,
            Err(StoreError::Corrupt(_))
        ));
    }
}
