//! [`Hooked`]: a [`UsageStore`] that sends its batches through a [`BatchHook`] and every
//! other call straight to the store it wraps.
//!
//! The stores that inject faults, slowness or short reports around a real one (the chaos
//! harness, the Lambda deadline tests, the import retry tests) differ only in what
//! `apply_batch` does; with the forwarding written here once, each of them is just its
//! hook, and a method added to the port is forwarded in one place rather than in each.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::counter::OwnedCounterKey;
use tally_core::event::Event;
use tally_core::ids::OrgId;
use tally_core::period::Month;
use tally_core::ports::{
    ApplyReport, CounterQuery, CounterValue, LedgerPage, LedgerPageQuery, ReadingStore, StoreError,
    UsageStore,
};

/// What a [`Hooked`] store does with a batch instead of handing it to the store it wraps.
#[async_trait]
pub trait BatchHook: Send + Sync {
    /// Answers [`UsageStore::apply_batch`] for `events`, calling `store` (the wrapped one)
    /// for whatever part it lets through.
    async fn apply_batch(
        &self,
        store: &dyn UsageStore,
        events: &[Event],
    ) -> Result<ApplyReport, StoreError>;
}

/// A [`UsageStore`] whose `apply_batch` is its hook's and whose every other method is the
/// wrapped store's.
pub struct Hooked<H> {
    inner: Arc<dyn UsageStore>,
    hook: H,
}

impl<H: BatchHook> Hooked<H> {
    /// Wraps `inner`, sending its batches through `hook`.
    pub fn new(inner: Arc<dyn UsageStore>, hook: H) -> Self {
        Hooked { inner, hook }
    }

    /// The hook, for what it recorded.
    pub fn hook(&self) -> &H {
        &self.hook
    }
}

impl<H> std::fmt::Debug for Hooked<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooked").finish_non_exhaustive()
    }
}

#[async_trait]
impl<H: BatchHook> UsageStore for Hooked<H> {
    fn readings(&self) -> Option<&dyn ReadingStore> {
        self.inner.readings()
    }

    fn ledger_retention(&self) -> Option<chrono::Duration> {
        self.inner.ledger_retention()
    }

    async fn apply_batch(&self, events: &[Event]) -> Result<ApplyReport, StoreError> {
        self.hook.apply_batch(self.inner.as_ref(), events).await
    }

    async fn release_writers(&self) -> Result<(), StoreError> {
        self.inner.release_writers().await
    }

    async fn counter_series(&self, query: &CounterQuery) -> Result<Vec<CounterValue>, StoreError> {
        self.inner.counter_series(query).await
    }

    async fn ledger_page(&self, q: &LedgerPageQuery<'_>) -> Result<LedgerPage, StoreError> {
        self.inner.ledger_page(q).await
    }

    async fn stored_counters(
        &self,
        org: &OrgId,
        month: Month,
    ) -> Result<Vec<(OwnedCounterKey, Decimal)>, StoreError> {
        self.inner.stored_counters(org, month).await
    }

    async fn is_period_closed(&self, month: Month) -> Result<bool, StoreError> {
        self.inner.is_period_closed(month).await
    }

    async fn close_period(&self, month: Month, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.inner.close_period(month, at).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use std::sync::Mutex;

    /// Refuses every batch and counts the calls.
    #[derive(Default)]
    struct Refuse(Mutex<usize>);

    #[async_trait]
    impl BatchHook for Refuse {
        async fn apply_batch(
            &self,
            _: &dyn UsageStore,
            _: &[Event],
        ) -> Result<ApplyReport, StoreError> {
            *self.0.lock().unwrap() += 1;
            Err(StoreError::Unavailable("refused".into()))
        }
    }

    #[tokio::test]
    async fn batches_go_to_the_hook_and_the_rest_to_the_store() {
        let inner = Arc::new(MemoryStore::default());
        let store = Hooked::new(inner.clone(), Refuse::default());
        let month = Month::parse("2026-11").unwrap();
        inner.close_period(month, month.start()).await.unwrap();
        assert!(store.apply_batch(&[]).await.is_err());
        assert_eq!(*store.hook().0.lock().unwrap(), 1);
        assert!(store.is_period_closed(month).await.unwrap());
        assert_eq!(store.ledger_retention(), inner.ledger_retention());
    }
}
