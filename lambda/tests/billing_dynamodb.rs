//! The billing run's catch-up of missed months on DynamoDB, as on SQLite and in memory in
//! `handlers.rs`. Needs `TALLY_TEST_AWS_ENDPOINT` (the test command starts the emulator).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use tally_tests::aws;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_after_two_missed_month_ends_bills_both_months_oldest_first_on_dynamodb() {
    let store = aws::fresh_dynamo_store(&aws::sdk_config().await, "tally-billing-catch-up").await;
    common::missed_month_ends(&store).await;
}
