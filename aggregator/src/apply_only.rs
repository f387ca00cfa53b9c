//! The unit tests' store double: [`ApplyOnly`] wraps a test's [`Apply`] (what applying a
//! batch does: scripted, slow, counted) into a whole [`UsageStore`]. The aggregator calls
//! nothing but `apply_batch`, so the other methods answer "nothing stored" once, here,
//! rather than in every test module.

use std::ops::Deref;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::counter::OwnedCounterKey;
use tally_core::ports::{
    ApplyReport, CounterQuery, CounterValue, LedgerPage, LedgerPageQuery, ReadingStore, StoreError,
    UsageStore,
};
use tally_core::{Event, Month, OrgId};

/// What a test store does when the aggregator applies a batch.
#[async_trait]
pub(crate) trait Apply: Send + Sync {
    /// [`UsageStore::apply_batch`].
    async fn apply(&self, events: &[Event]) -> Result<ApplyReport, StoreError>;
    /// [`UsageStore::release_writers`]; nothing by default.
    async fn release(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A [`UsageStore`] that applies with `A` and stores nothing else; derefs to `A` so a test
/// reads what its double recorded.
pub(crate) struct ApplyOnly<A>(pub A);

impl<A> Deref for ApplyOnly<A> {
    type Target = A;

    fn deref(&self) -> &A {
        &self.0
    }
}

#[async_trait]
impl<A: Apply> UsageStore for ApplyOnly<A> {
    fn readings(&self) -> Option<&dyn ReadingStore> {
        None
    }

    fn ledger_retention(&self) -> Option<chrono::Duration> {
        None
    }
    async fn apply_batch(&self, events: &[Event]) -> Result<ApplyReport, StoreError> {
        self.0.apply(events).await
    }
    async fn release_writers(&self) -> Result<(), StoreError> {
        self.0.release().await
    }
    async fn counter_series(&self, _: &CounterQuery) -> Result<Vec<CounterValue>, StoreError> {
        Ok(Vec::new())
    }
    async fn ledger_page(&self, _: &LedgerPageQuery<'_>) -> Result<LedgerPage, StoreError> {
        Ok(LedgerPage::default())
    }
    async fn stored_counters(
        &self,
        _: &OrgId,
        _: Month,
    ) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError> {
        Ok(Vec::new())
    }
    async fn is_period_closed(&self, _: Month) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn close_period(&self, _: Month, _: DateTime<Utc>) -> Result<(), StoreError> {
        Ok(())
    }
}
