//! The storage conformance suite against the in-memory backend: every storage test on a
//! fresh `MemoryStore`, whose handles are clones sharing its state. Plus the fault switch
//! tests rely on.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use tally_store::MemoryStore;
use tally_tests::conformance::storage::StoreFactory;

/// One store; every `open` is a new handle (a clone) onto it, like a new process opening
/// the same database.
#[derive(Default)]
struct MemoryFactory {
    store: MemoryStore,
}

#[async_trait]
impl StoreFactory for MemoryFactory {
    type Store = MemoryStore;

    async fn open(&self) -> MemoryStore {
        self.store.clone()
    }
}

tally_tests::store_conformance!(MemoryFactory::default());

/// `fail(Op::FindApiKey, ..)` makes `find_api_key` fail on every handle, with the chosen error,
/// until it is cleared; nothing else fails meanwhile.
#[tokio::test]
async fn lookups_are_counted_and_fail_on_demand() {
    use chrono::Utc;
    use tally_core::plan::PlanId;
    use tally_core::ports::{ApiKeyStore, StoreError};
    use tally_core::tenant::KeyScope;
    use tally_store::memory::{Fault, Op};
    use tally_tests::conformance::fixtures::{api_key, create_owned_org};

    let store = MemoryStore::new();
    let now = Utc::now();
    let org = create_owned_org(
        &store,
        (1, 2),
        "ada@example.com",
        "Acme",
        PlanId::Starter,
        now,
    )
    .await;
    let key = api_key(&org.id, "tk_test_secret", &[KeyScope::EventsWrite], now);
    store.create_api_key(&key).await.unwrap();

    let other = store.clone();
    other.fail(Op::FindApiKey, Some(Fault::Unavailable));
    assert!(matches!(
        store.find_api_key(&key.hash).await,
        Err(StoreError::Unavailable(_))
    ));
    store.fail(Op::FindApiKey, Some(Fault::Corrupt));
    assert!(matches!(
        other.find_api_key(&key.hash).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(
        store.list_api_keys(&org.id).await.unwrap(),
        vec![key.clone()]
    );
    store.fail(Op::FindApiKey, None);
    assert_eq!(other.find_api_key(&key.hash).await.unwrap(), Some(key));
    // Every call was counted, failed ones included, on whichever handle made it.
    assert_eq!(store.calls(Op::FindApiKey), 3);
    assert_eq!(other.calls(Op::GetOrg), 0);
}

/// The shared-limit allowances ([`tally_core::ports::AllowanceStore`]) on handles of one
/// memory store.
mod allowance {
    use std::sync::Arc;

    use tally_core::ports::AllowanceStore;
    use tally_store::MemoryStore;
    use tally_tests::conformance::allowance;

    #[tokio::test]
    async fn grants_stop_at_the_cap() {
        allowance::grants_stop_at_the_cap(&MemoryStore::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_takes_never_pass_the_cap() {
        let store = MemoryStore::new();
        let handles = (0..8)
            .map(|_| Arc::new(store.clone()) as Arc<dyn AllowanceStore>)
            .collect();
        allowance::racing_takes_never_pass_the_cap(handles).await;
    }

    #[tokio::test]
    async fn bad_requests_are_refused() {
        allowance::bad_requests_are_refused(&MemoryStore::new()).await;
    }
}
