//! [`OverrideStore`] in memory: each org's price overrides under the store's one lock, so a
//! put is first-write-wins and an end is conditional, as the other stores' writes.

use async_trait::async_trait;
use tally_core::OrgId;
use tally_core::overrides::{MAX_OVERRIDES_PER_ORG, PriceOverride};
use tally_core::ports::{
    EndOutcome, OverrideEnd, OverrideStore, StoreError, check_stored_override, sort_overrides,
    too_many_overrides,
};

use super::MemoryStore;

#[async_trait]
impl OverrideStore for MemoryStore {
    async fn put_override(&self, o: &PriceOverride) -> Result<bool, StoreError> {
        check_stored_override(o)?;
        let mut st = self.lock();
        let list = st.overrides.entry(o.org_id.clone()).or_default();
        if list.iter().any(|x| x.id == o.id) {
            return Ok(false);
        }
        if list.len() >= MAX_OVERRIDES_PER_ORG {
            return Err(too_many_overrides(&o.org_id));
        }
        list.push(o.clone());
        sort_overrides(list);
        Ok(true)
    }

    async fn list_overrides(&self, org: &OrgId) -> Result<Vec<PriceOverride>, StoreError> {
        Ok(self.lock().overrides.get(org).cloned().unwrap_or_default())
    }

    async fn end_override(&self, req: &OverrideEnd<'_>) -> Result<EndOutcome, StoreError> {
        let (org, id, end) = (req.org, req.id, req.end);
        let mut st = self.lock();
        let Some(o) = st
            .overrides
            .get_mut(org)
            .and_then(|l| l.iter_mut().find(|o| &o.id == id))
        else {
            return Ok(EndOutcome::NotFound);
        };
        if o.end.is_some_and(|e| e <= end) {
            return Ok(EndOutcome::AlreadyEnded(o.clone()));
        }
        let mut ended = o.clone();
        ended.end = Some(end);
        check_stored_override(&ended)?;
        *o = ended.clone();
        Ok(EndOutcome::Ended(ended))
    }
}
