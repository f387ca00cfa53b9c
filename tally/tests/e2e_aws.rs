//! The foundation's end-to-end scenario on the AWS backends, against the emulator the test
//! command starts: `tally init` creates a fresh table and queue or stream, then `tally serve
//! --store dynamodb:… --queue sqs:…` (or `kinesis:…`) must give exact totals for 1,000 events
//! of which 100 are resends, at every granularity, org-wide and per project.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_and_sqs_count_resends_once() {
    resend_scenario(&Env::aws("sqs"), "acme-sqs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_and_kinesis_count_resends_once() {
    resend_scenario(&Env::aws("kinesis"), "acme-kinesis").await;
}
