//! The Stripe sync's chaos test with the DynamoDB sync ledger (fewer orgs than on SQLite:
//! every ledger write is a round trip to the emulator). Needs `TALLY_TEST_AWS_ENDPOINT`
//! (the test command starts the emulator).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tally_tests::aws;
use tally_tests::stripe_sync::chaos;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_twenty_orgs_each_get_exactly_one_invoice_equal_to_the_report_on_dynamodb() {
    let store = aws::fresh_dynamo_store(&aws::sdk_config().await, "tally-stripe-chaos").await;
    chaos(Arc::new(store), 20, 11).await;
}
