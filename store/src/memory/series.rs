//! [`SeriesRegistry`] in memory: each (org, meter, month)'s series under the store's one
//! lock, so the bound check and the insert are one step, as the other stores' conditional
//! writes are.

use async_trait::async_trait;
use tally_core::MeterName;
use tally_core::ports::{
    MeterMonth, NewSeries, Registration, SeriesRegistry, StoreError, check_registration,
};

use super::MemoryStore;

#[async_trait]
impl SeriesRegistry for MemoryStore {
    async fn register_series(&self, req: &NewSeries<'_>) -> Result<Registration, StoreError> {
        let (org, month, series, bound) = (req.org, req.month, req.series, req.bound);
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

    async fn list_series(&self, of: &MeterMonth<'_>) -> Result<Vec<MeterName>, StoreError> {
        let MeterMonth { org, meter, month } = *of;
        Ok(self
            .lock()
            .series
            .get(&(org.clone(), meter.clone(), month))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }
}
