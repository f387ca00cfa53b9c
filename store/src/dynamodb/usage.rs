//! The read side of [`UsageStore`](tally_core::ports::UsageStore) on DynamoDB, and closed
//! periods. `apply_batch` lives in [`super::apply`].

use async_trait::async_trait;
use std::collections::BTreeMap;
use tally_core::ports::{
    ApplyReport, CounterQuery, CounterValue, LedgerPage, LedgerPageQuery, ReadingStore, StoreError,
    UsageStore,
};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::counter::OwnedCounterKey;
use tally_core::dimension::is_series_of;
use tally_core::event::Event;
use tally_core::ids::OrgId;
use tally_core::period::Month;

use super::codec::{corrupt, get_decimal, get_s, item, s, ts_text};
use super::keys::{self, LEDGER_SHARDS, PERIOD_SK, PK, SK};
use super::{DynamoStore, QuerySpec, cells};
use crate::secs::{ceil_secs, secs_ts};

/// Most ledger events one `ledger_page` call returns (as on SQLite).
pub const MAX_LEDGER_PAGE: usize = 10_000;

/// The earliest and latest months counters can be in (event years are 2000 and later).
fn month_bounds() -> (Month, Month) {
    let first = Month::new(2000, 1).unwrap_or_else(|| Month::of(DateTime::<Utc>::UNIX_EPOCH));
    let last = Month::new(9999, 12).unwrap_or(first);
    (first, last)
}

#[async_trait]
impl UsageStore for DynamoStore {
    /// Ledger items carry a TTL of their write time plus [`super::apply::LEDGER_TTL_DAYS`].
    fn readings(&self) -> Option<&dyn ReadingStore> {
        Some(self)
    }

    fn ledger_retention(&self) -> Option<chrono::Duration> {
        Some(tally_core::period::LEDGER_RETENTION)
    }

    /// The algorithm of the [module doc](super), in `apply.rs`.
    async fn apply_batch(&self, events: &[Event]) -> Result<ApplyReport, StoreError> {
        super::apply::apply_batch(self, events).await
    }

    /// The idle writer slots, released ([`DynamoStore::release_writer_slots`]).
    async fn release_writers(&self) -> Result<(), StoreError> {
        self.release_writer_slots().await.map(|_| ())
    }

    /// Per month partition the range touches: one `BETWEEN` query on the explicit series
    /// (`unique_count` counters) and one `begins_with` query on the day cells of the meter (of
    /// the project, or of every project for an org-wide series), whose hours are merged into
    /// the series' buckets. Months come in order, so buckets do.
    async fn counter_series(&self, q: &CounterQuery) -> Result<Vec<CounterValue>, StoreError> {
        let (lo, hi) = month_bounds();
        let from = ceil_secs(q.from).max(lo.start().timestamp());
        // Inclusive last second a bucket may start at.
        let to = ceil_secs(q.to)
            .saturating_sub(1)
            .min(hi.end().timestamp() - 1);
        if from > to {
            return Ok(Vec::new());
        }
        let prefix = keys::series_prefix(q.project.as_ref(), &q.meter, q.granularity);
        // A bare meter's total takes in its series (`DAY#meter{dim=value}#...`): its own
        // cells (of the project, or of every project) and its series' cells are two
        // queries, so neither another meter sharing the name's start (`api_calls_v2`) nor,
        // for one project, the other projects' plain cells are read; the series' cells of
        // other projects are dropped here.
        let cell_prefixes = match (&q.project, q.meter.is_series()) {
            (Some(p), true) => vec![cells::series_prefix(&q.meter, p)],
            (None, true) => vec![cells::meter_prefix(&q.meter)],
            (Some(p), false) => vec![
                cells::series_prefix(&q.meter, p),
                format!("{}{}{{", cells::CELL_PREFIX, q.meter),
            ],
            (None, false) => vec![
                cells::meter_prefix(&q.meter),
                format!("{}{}{{", cells::CELL_PREFIX, q.meter),
            ],
        };
        let (first, last) = (Month::of(secs_ts(from)), Month::of(secs_ts(to)));
        let mut buckets: BTreeMap<i64, Decimal> = BTreeMap::new();
        let mut month = first;
        while month <= last {
            let pk = keys::counter_pk(&q.org, month);
            let mut cell_items = Vec::new();
            for prefix in &cell_prefixes {
                cell_items.extend(self.query_prefix(&pk, prefix).await?);
            }
            let stored = cell_items
                .iter()
                .map(cells::read_cell)
                .collect::<Result<Vec<_>, _>>()?;
            let stored = stored.into_iter().filter(|c| {
                is_series_of(c.meter.as_str(), q.meter.as_str())
                    && q.project.as_ref().is_none_or(|p| *p == c.project)
            });
            for (start, delta) in
                cells::derive_series(stored.flat_map(|c| c.hours), q.granularity, from, to + 1)
            {
                buckets.insert(start, cells::value_of(&delta));
            }
            let items = self
                .query_all(&QuerySpec {
                    index: None,
                    key_condition: "#pk = :pk AND #sk BETWEEN :from AND :to",
                    filter: None,
                    names: &[],
                    values: vec![
                        (":pk", s(&pk)),
                        (":from", s(format!("{prefix}{}", keys::start_text(from)))),
                        (":to", s(format!("{prefix}{}", keys::start_text(to)))),
                    ],
                })
                .await?;
            for it in &items {
                let key = keys::parse_counter_sk(&q.org, get_s(it, SK)?)?;
                buckets.insert(key.start.timestamp(), get_decimal(it, "v")?);
            }
            month = month.next();
        }
        Ok(buckets
            .into_iter()
            .map(|(start, value)| CounterValue {
                start: secs_ts(start),
                value,
            })
            .collect())
    }

    /// Reads the org's 16 ledger shards in turn with a filter on `month`, until `limit` events
    /// are found; the cursor says where it stopped.
    async fn ledger_page(&self, q: &LedgerPageQuery<'_>) -> Result<LedgerPage, StoreError> {
        let (org, month, cursor, limit) = (q.org, q.month, &q.cursor, q.limit);
        let (mut shard, mut after) = match cursor.as_deref() {
            Some(c) => decode_cursor(c)?,
            None => (0, None),
        };
        let limit = limit.clamp(1, MAX_LEDGER_PAGE);
        let mut events: Vec<Event> = Vec::with_capacity(limit.min(1000));
        while shard < LEDGER_SHARDS {
            if events.len() == limit {
                return Ok(LedgerPage {
                    events,
                    next: Some(encode_cursor(shard, after.as_deref())),
                });
            }
            let pk = keys::ledger_pk(org, shard);
            let start = after
                .as_ref()
                .map(|id| item([(PK, s(&pk)), (SK, s(format!("{}{id}", keys::EVENT_PREFIX)))]));
            let want = i32::try_from(limit - events.len()).unwrap_or(i32::MAX);
            let (items, next) = self
                .query_page(
                    &QuerySpec {
                        index: None,
                        key_condition: "#pk = :pk",
                        filter: Some("#month = :month"),
                        names: &[("#month", "month")],
                        values: vec![(":pk", s(&pk)), (":month", s(month.to_string()))],
                    },
                    Some(want),
                    start,
                )
                .await?;
            for it in &items {
                let id = keys::parse_ledger_sk(get_s(it, SK)?)?;
                events.push(super::codec::decode_event(org, id, get_s(it, "body")?)?);
            }
            match next {
                Some(key) if !key.is_empty() => {
                    let sk = get_s(&key, SK)?;
                    after = Some(keys::parse_ledger_sk(sk)?.as_str().to_owned());
                }
                _ => {
                    shard += 1;
                    after = None;
                }
            }
        }
        Ok(LedgerPage { events, next: None })
    }

    /// One paged query of the org's month partition of counters: explicit counters as they
    /// are, day cells spread to the six counters they add up to.
    async fn stored_counters(
        &self,
        org: &OrgId,
        month: Month,
    ) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError> {
        let items = self
            .query_partition(None, keys::counter_pk(org, month))
            .await?;
        let mut stored = Vec::new();
        let mut out: BTreeMap<OwnedCounterKey, Decimal> = BTreeMap::new();
        for it in &items {
            let sk = get_s(it, SK)?;
            if sk.starts_with(cells::CELL_PREFIX) {
                stored.push(cells::read_cell(it)?);
            } else {
                out.insert(keys::parse_counter_sk(org, sk)?, get_decimal(it, "v")?);
            }
        }
        for (key, value) in cells::derive_counters(org, &stored) {
            out.entry(key).or_insert(value);
        }
        Ok(out.into_iter().collect())
    }

    /// Whether the period item exists.
    async fn is_period_closed(&self, month: Month) -> Result<bool, StoreError> {
        Ok(self.get(keys::period_pk(month), PERIOD_SK).await?.is_some())
    }

    /// Puts the period item unless it exists (the first `closed_at` stays).
    async fn close_period(&self, month: Month, at: DateTime<Utc>) -> Result<(), StoreError> {
        let record = item([
            (PK, s(keys::period_pk(month))),
            (SK, s(PERIOD_SK)),
            ("closed_at", s(ts_text(at))),
        ]);
        // `false` (already closed) is fine: closing is idempotent.
        self.put_if_absent(record).await.map(|_| ())
    }
}

/// The position of a ledger page: a shard and the last event id read in it (`None`: the
/// shard's start). Opaque to callers: hex of `<shard>:<event id>`.
fn encode_cursor(shard: u8, after: Option<&str>) -> String {
    hex::encode(format!("{shard}:{}", after.unwrap_or_default()))
}

fn decode_cursor(c: &str) -> Result<(u8, Option<String>), StoreError> {
    let bad = || corrupt(format!("ledger cursor {c:?} was not issued by this store"));
    let text = hex::decode(c)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let (shard, after) = text.split_once(':').ok_or_else(bad)?;
    let shard: u8 = shard.parse().map_err(|_| bad())?;
    if shard >= LEDGER_SHARDS {
        return Err(bad());
    }
    Ok((shard, (!after.is_empty()).then(|| after.to_owned())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let c = encode_cursor(3, Some("evt:1"));
        assert_eq!(decode_cursor(&c).unwrap(), (3, Some("evt:1".into())));
        assert_eq!(decode_cursor(&encode_cursor(0, None)).unwrap(), (0, None));
        for bad in ["zz", &hex::encode("16:x"), &hex::encode("x"), ""] {
            assert!(
                matches!(decode_cursor(bad), Err(StoreError::Corrupt(_))),
                "{bad}"
            );
        }
    }
}
