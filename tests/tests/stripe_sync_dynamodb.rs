//! The Stripe sync's chaos test with the DynamoDB sync ledger (fewer orgs than on SQLite:
//! every ledger write is a round trip to the emulator). Needs `TALLY_TEST_AWS_ENDPOINT`
//! (the test command starts the emulator).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tally_store::dynamodb::sdk::Client;
use tally_store::dynamodb::{DynamoStore, create_table};
use tally_tests::aws;
use tally_tests::stripe_sync::chaos;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_twenty_orgs_each_get_exactly_one_invoice_equal_to_the_report_on_dynamodb() {
    let config = aws::sdk_config().await;
    let client = Client::new(&config);
    let table = aws::fresh_name("tally-stripe-chaos");
    create_table(&client, &table).await.unwrap();
    chaos(Arc::new(DynamoStore::new(client, table)), 20, 11).await;
}
