//! [`SeriesRegistry`] in memory: each (org, meter, month)'s series under the store's one
//! lock, so the bound check and the insert are one step, as the other stores' conditional
//! writes are.

use async_trait::async_trait;
use tally_core::ports::{Registration, SeriesRegistry, StoreError, check_registration};
use tally_core::{MeterName, Month, OrgId};

use super::MemoryStore;

#[async_trait]
impl SeriesRegistry for MemoryStore {
    async fn register_series(
        &self,
        org: &OrgId,
        month: Month,
        series: &MeterName,
        bound: u32,
    ) -> Result<Registration, StoreError> {
        check_registration(series, bound)?;
        let meter = MeterName::parse(series.base())
            .map_err(|e| StoreError::Corrupt(format!("series {series}: {e}")))?;
        let mut st = self.lock();
        let set = st.series.entry((org.clone(), meter, month)).or_default();
        if set.contains(series) {
            return Ok(Registration::Known);
        }
        if set.len() >= bound as usize {
            return Ok(Registration::Full);
        }
        set.insert(series.clone());
        Ok(Registration::New)
    }

    async fn list_series(
        &self,
        org: &OrgId,
        meter: &MeterName,
        month: Month,
    ) -> Result<Vec<MeterName>, StoreError> {
        Ok(self
            .lock()
            .series
            .get(&(org.clone(), meter.clone(), month))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }
}
