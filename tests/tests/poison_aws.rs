//! Poison records on the AWS queues: a record that decodes but fails validation after the
//! fact goes through [`tally_aggregator::process_batch`] to the queue's dead-letter store
//! with the reason (SQS: the dead-letter queue with the reason attribute; Kinesis: the
//! dead-letter item), is deleted from (or checkpointed past on) the main queue, and the
//! good records beside it are applied and acknowledged.
//!
//! Needs `TALLY_TEST_AWS_ENDPOINT`; without it the tests fail and say how to run them.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tally_aggregator::{AggregatorConfig, process_batch};
use tally_core::event::Event;
use tally_core::meter::Aggregation;
use tally_core::ports::{EventQueue, UsageStore};
use tally_store::dynamodb::DynamoStore;
use tally_store::kinesis::KinesisConfig;
use tally_store::sqs::{self, SqsConfig, SqsQueue};
use tally_tests::aws;
use tally_tests::conformance::fixtures::{event, fresh_org, fresh_project};

fn events() -> (Vec<Event>, Event) {
    let (org, bad_org, project) = (fresh_org(), fresh_org(), fresh_project());
    let good = vec![
        event(
            &org,
            &project,
            "g1",
            "api_calls",
            "2",
            "2026-10-03T10:00:00Z",
        ),
        event(
            &org,
            &project,
            "g2",
            "api_calls",
            "3",
            "2026-10-03T11:00:00Z",
        ),
    ];
    let mut bad = event(
        &bad_org,
        &project,
        "p1",
        "active_users",
        "1",
        "2026-10-03T10:00:00Z",
    );
    bad.aggregation = Aggregation::UniqueCount {
        property: "user".into(),
    };
    (good, bad)
}

async fn drain(queue: &dyn EventQueue, store: &dyn UsageStore) -> (usize, usize) {
    let cfg = AggregatorConfig {
        max_events: 100,
        max_wait: Duration::from_millis(50),
        ..AggregatorConfig::default()
    };
    let (mut acked, mut poisoned) = (0, 0);
    for _ in 0..20 {
        let s = process_batch(queue, store, None, &cfg, Duration::from_millis(500))
            .await
            .unwrap();
        acked += s.acked;
        poisoned += s.poisoned;
        if acked >= 1 && poisoned >= 1 {
            break;
        }
    }
    (acked, poisoned)
}

async fn store(config: &aws_config::SdkConfig) -> DynamoStore {
    aws::fresh_dynamo_store(config, "tally-poison").await
}

#[tokio::test]
async fn sqs_poison_goes_to_the_dead_letter_queue_with_its_reason() {
    let config = aws::sdk_config().await;
    let usage = store(&config).await;
    let client = aws_sdk_sqs::Client::new(&config);
    let (url, _) = sqs::create_queues(&client, &aws::fresh_name("tally-poison"))
        .await
        .unwrap();
    let queue = SqsQueue::with_config(
        client,
        url,
        SqsConfig {
            visibility_timeout: Duration::from_secs(5),
            ..SqsConfig::default()
        },
    );
    let (good, bad) = events();
    queue.publish(&good).await.unwrap();
    queue.publish(std::slice::from_ref(&bad)).await.unwrap();
    let (acked, poisoned) = drain(&queue, &usage).await;
    assert_eq!((acked, poisoned), (1, 1));
    assert_eq!(queue.depth().await.unwrap(), 0);
    let dead = queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = dead[0].reason.clone().unwrap();
    assert!(
        reason.contains("properties.user, which is missing"),
        "{reason}"
    );
    assert!(dead[0].body.contains("p1"), "{}", dead[0].body);
}

#[tokio::test]
async fn kinesis_poison_becomes_a_dead_letter_item_and_the_checkpoint_passes_it() {
    let config = aws::sdk_config().await;
    let usage = store(&config).await;
    let kinesis = KinesisConfig {
        poll_interval: Duration::from_millis(50),
        ..KinesisConfig::default()
    };
    let queue = aws::fresh_kinesis_queue(&config, "tally-poison", "poison", kinesis).await;
    let (good, bad) = events();
    queue.publish(std::slice::from_ref(&bad)).await.unwrap();
    queue.publish(&good).await.unwrap();
    let (acked, poisoned) = drain(&queue, &usage).await;
    assert_eq!((acked, poisoned), (1, 1));
    let dead = queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].reason.contains("properties.user, which is missing"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].partition_key, bad.org_id.as_str());
    assert_eq!(queue.depth().await.unwrap(), 0);
}
