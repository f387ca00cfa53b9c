//! [`ReadingStore`] in memory: the hour cells of time-weighted meters by (org, meter,
//! project, hour start), under the store's one lock.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tally_core::period::Granularity;
use tally_core::ports::{MonthReadingsQuery, Reading, ReadingStore, StoreError, check_readings};
use tally_core::time_weighted::HourReadings;
use tally_core::{MeterName, OrgId, ProjectId};

use super::MemoryStore;

/// Hour cells by (org, meter, project, hour start in Unix seconds).
pub(super) type ReadingCells = BTreeMap<(OrgId, MeterName, ProjectId, i64), HourReadings>;

#[async_trait]
impl ReadingStore for MemoryStore {
    async fn put_readings(&self, readings: &[Reading]) -> Result<(), StoreError> {
        check_readings(readings)?;
        let mut st = self.lock();
        for r in readings {
            let hour = Granularity::Hour.truncate(r.at).timestamp();
            st.readings
                .entry((r.org.clone(), r.meter.clone(), r.project.clone(), hour))
                .or_insert_with(|| HourReadings::new(r.at))
                .insert(r.at, r.value)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        }
        Ok(())
    }

    async fn month_readings(
        &self,
        q: &MonthReadingsQuery<'_>,
    ) -> Result<Vec<(ProjectId, HourReadings)>, StoreError> {
        let (org, meter, month, project) = (q.org, q.meter, q.month, q.project);
        let (start, end) = (month.start().timestamp(), month.end().timestamp());
        Ok(self
            .lock()
            .readings
            .iter()
            .filter(|((o, m, p, hour), _)| {
                o == org
                    && m == meter
                    && project.is_none_or(|want| want == p)
                    && (start..end).contains(hour)
            })
            .map(|((_, _, p, _), cell)| (p.clone(), cell.clone()))
            .collect())
    }
}
