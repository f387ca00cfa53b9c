//! [`AllowanceStore`] in memory: what was taken of each (scope, window), under the store's
//! one lock, so a take is atomic as DynamoDB's conditional `UpdateItem` is. Windows whose
//! `expires_at` passed are forgotten when the map grows past [`MAX_WINDOWS`].

use async_trait::async_trait;
use rust_decimal::Decimal;
use tally_core::ports::{
    AllowanceRequest, AllowanceStore, Grant, StoreError, check_allowance_request,
};

use super::MemoryStore;

/// Windows kept before the expired ones are swept out.
const MAX_WINDOWS: usize = 10_000;

#[async_trait]
impl AllowanceStore for MemoryStore {
    async fn take_allowance(&self, req: &AllowanceRequest<'_>) -> Result<Grant, StoreError> {
        let (window, cap, want, now) = (req.window, req.cap, req.want, req.now);
        check_allowance_request(window, cap, want)?;
        let mut st = self.lock();
        if st.allowances.len() >= MAX_WINDOWS {
            st.allowances.retain(|_, (_, expires)| *expires > now);
        }
        let slot = st
            .allowances
            .entry((window.scope.clone(), window.window.clone()))
            .or_insert((Decimal::ZERO, window.expires_at));
        let granted = want.min(cap - slot.0).max(Decimal::ZERO);
        slot.0 += granted;
        slot.1 = slot.1.max(window.expires_at);
        Ok(Grant { granted, writes: 1 })
    }
}
