//! [`ReadingStore`](tally_core::ports::ReadingStore) on DynamoDB: one item per hour cell
//! of a time-weighted meter, `ORG#<org>#TWS#<YYYY-MM>` / `TWS#<meter>#<project>#<hour
//! start>`, holding one number attribute per second of the hour that has a reading
//! (`s0000`…`s3599`, the offset in the hour).
//!
//! A reading is one `UpdateItem` `SET #s = :v` on condition `attribute_not_exists(#s) OR
//! #s < :v`: commutative and idempotent (the larger value of a second stays), so readings
//! are written outside the batch transactions and a replay writes nothing new; a failed
//! condition means the second already holds as much, which is success. The per-second
//! attributes are top-level rather than entries of one map because `SET r.#s` fails on an
//! item that does not exist yet, and a cell's first reading must create it. A full cell
//! (3,600 readings of at most 20 digits) is about 90 KB, inside the 400 KB item bound.

use std::sync::Arc;

use aws_sdk_dynamodb::types::ReturnValue;
use chrono::DateTime;
use rust_decimal::Decimal;
use tally_core::period::Granularity;
use tally_core::ports::{MonthReadingsQuery, Reading, ReadingStore, StoreError, check_readings};
use tally_core::time_weighted::HourReadings;
use tally_core::{MeterName, Month, OrgId, ProjectId};
use tokio::sync::Semaphore;

use super::DynamoStore;
use super::codec::{corrupt, get_s, n, parse_decimal, send_retrying, unless_condition_failed};
use super::keys::{SK, start_text};

/// Reading writes of one call in flight at once.
const WRITE_CONCURRENCY: usize = 16;

/// `ORG#<org>#TWS#<YYYY-MM>`: the hour cells of time-weighted meters in `month`.
pub(super) fn tws_pk(org: &OrgId, month: Month) -> String {
    format!("ORG#{org}#TWS#{month}")
}

/// `TWS#<meter>#`: what every cell of one meter shares (meter names hold no `#`, so
/// `api_calls` never matches `api_calls_v2`'s cells).
fn meter_prefix(meter: &MeterName) -> String {
    format!("TWS#{meter}#")
}

/// `TWS#<meter>#<project>#<hour start, 12 digits of Unix seconds>`.
pub(super) fn tws_sk(meter: &MeterName, project: &ProjectId, hour: i64) -> String {
    format!("{}{project}#{}", meter_prefix(meter), start_text(hour))
}

/// `s<offset in the hour, 4 digits>`: the attribute of one second's reading.
pub(super) fn second_attr(offset: i64) -> String {
    format!("s{offset:04}")
}

/// One conditional write of a reading's second: the larger value stays.
async fn put_one(
    store: &DynamoStore,
    pk: String,
    sk: String,
    attr: String,
    value: Decimal,
) -> Result<(), StoreError> {
    let sent = send_retrying(&store.retry, || {
        store
            .update_item_at(&pk, &sk)
            .update_expression("SET #s = :v")
            .condition_expression("attribute_not_exists(#s) OR #s < :v")
            .expression_attribute_names("#s", &attr)
            .expression_attribute_values(":v", n(value))
            .return_values(ReturnValue::None)
            .send()
    })
    .await;
    // A failed condition: the second already holds this value or a larger one.
    unless_condition_failed("UpdateItem (tws reading)", sent).map(|_| ())
}

#[async_trait::async_trait]
impl ReadingStore for DynamoStore {
    async fn put_readings(&self, readings: &[Reading]) -> Result<(), StoreError> {
        check_readings(readings)?;
        // One write per (cell, second), with the batch's own ties settled first.
        let mut writes: std::collections::BTreeMap<(String, String, String), Decimal> =
            std::collections::BTreeMap::new();
        for r in readings {
            let hour = Granularity::Hour.truncate(r.at).timestamp();
            let second = r.at.timestamp();
            let key = (
                tws_pk(&r.org, Month::of(r.at)),
                tws_sk(&r.meter, &r.project, hour),
                second_attr(second - hour),
            );
            let v = writes.entry(key).or_insert(r.value);
            *v = (*v).max(r.value);
        }
        let permits = Arc::new(Semaphore::new(WRITE_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for ((pk, sk, attr), value) in writes {
            let (store, permits) = (self.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                put_one(&store, pk, sk, attr, value).await
            });
        }
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let done = joined
                .map_err(|e| StoreError::Unavailable(format!("a reading write task failed: {e}")))
                .and_then(|r| r);
            if let Err(e) = done {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn month_readings(
        &self,
        q: &MonthReadingsQuery<'_>,
    ) -> Result<Vec<(ProjectId, HourReadings)>, StoreError> {
        let (org, meter, month, project) = (q.org, q.meter, q.month, q.project);
        let prefix = match project {
            Some(p) => format!("{}{p}#", meter_prefix(meter)),
            None => meter_prefix(meter),
        };
        let items = self.query_prefix(tws_pk(org, month), prefix).await?;
        let mut cells = Vec::with_capacity(items.len());
        for item in &items {
            let sk = get_s(item, SK)?;
            let (project, hour) = sk
                .strip_prefix(&meter_prefix(meter))
                .and_then(|rest| rest.rsplit_once('#'))
                .ok_or_else(|| corrupt(format!("tws sort key {sk:?}")))?;
            let project = ProjectId::parse(project)
                .map_err(|e| corrupt(format!("tws sort key {sk:?}: {e}")))?;
            let hour = hour
                .parse::<i64>()
                .ok()
                .and_then(|h| DateTime::from_timestamp(h, 0))
                .ok_or_else(|| corrupt(format!("tws sort key {sk:?}")))?;
            let mut cell = HourReadings::new(hour);
            for (name, value) in item {
                let Some(offset) = name.strip_prefix('s').and_then(|o| o.parse::<i64>().ok())
                else {
                    continue;
                };
                let value = match value {
                    aws_sdk_dynamodb::types::AttributeValue::N(text) => {
                        parse_decimal(text).map_err(|e| corrupt(format!("{sk} {name}: {e}")))?
                    }
                    _ => return Err(corrupt(format!("{sk} {name} is not a number"))),
                };
                let at = hour + chrono::Duration::seconds(offset);
                cell.insert(at, value)
                    .map_err(|e| corrupt(format!("{sk}: {e}")))?;
            }
            cells.push((project, cell));
        }
        // The sort key orders by project, then hour (fixed-width digits).
        Ok(cells)
    }
}
