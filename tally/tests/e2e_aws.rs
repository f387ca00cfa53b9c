//! The foundation's end-to-end scenario on the AWS backends, against the emulator the test
//! command starts: `tally init` creates a fresh table and queue or stream, then the app in
//! process on `--store dynamodb:… --queue sqs:…` (or `kinesis:…`) must give exact totals for
//! 1,000 events of which 100 are resends, at every granularity, org-wide and per project;
//! and `tally bill` bills a month once on DynamoDB, leaving test-mode usage out.

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

/// `tally bill` on DynamoDB (with SQS): the period closes, the report is stored once and a
/// rerun prints it unchanged, and ingest then refuses the month. Time is pinned with the
/// hidden `TALLY_NOW` (see `e2e_bill.rs`, which covers the rest on the embedded default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_bills_a_month_once() {
    let env = Env::aws("sqs");
    let tenant = make_tenant(&env, "acme-bill");
    let now = [("TALLY_NOW", "2026-03-01T02:00:00Z")];
    // What `tally serve --no-billing-scheduler` gives with that TALLY_NOW.
    let serve = || {
        spawn_app_with(&env, |app| {
            app.settings.billing_scheduler = false;
            app.clock = clock_at(now[0].1);
        })
    };
    let server = serve().await;
    let client = reqwest::Client::new();
    let one_event = |id: &str, minutes: &str, at: &str| {
        vec![compute_minutes(id, &tenant.projects[0], minutes, at)]
    };
    let feb_1 = one_event("feb-1", "10250", "2026-02-14T12:00:00Z");
    post_accepted(&client, &server, &tenant.key, feb_1).await;
    // Test mode on DynamoDB: the same id with a test key is another event, kept apart.
    let test_key = create_key(&env, &tenant.org, "sandbox", true);
    let test_feb = one_event("feb-1", "50", "2026-02-14T12:00:00Z");
    post_accepted(&client, &server, &test_key, test_feb).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let feb = "meter=compute_minutes&granularity=month&from=2026-02-01&to=2026-03-01";
    for (key, want) in [(&tenant.key, "10250"), (&test_key, "50")] {
        while usage(&client, &server, key, feb).await
            != [("2026-02-01T00:00:00Z".to_owned(), want.to_owned())]
        {
            assert!(
                std::time::Instant::now() < deadline,
                "February never reached {want}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    server.stop().await.unwrap();

    let refused = env.cli_raw_env(&["bill", "--period", "2026-03"], &now);
    assert!(!refused.status.success());
    let first = env.cli_env(&["bill", "--period", "2026-02"], &now);
    assert_eq!(first["stored_now"], 1);
    let report = &first["reports"][0];
    assert_eq!(report["org_id"], tenant.org);
    // Pro: 250 minutes over the 10,000 included at $0.10, 20 % off = $20.00, + $99.00; the
    // 50 test-mode minutes are not billed.
    assert_eq!(report["total"], "119.00");
    let again = env.cli_env(&["bill", "--period", "2026-02"], &now);
    assert_eq!(again["stored_now"], 0);
    assert_eq!(again["reports"], first["reports"]);

    let server = serve().await;
    let feb_late = one_event("feb-late", "1", "2026-02-20T00:00:00Z");
    let (_, body) = post_events(&client, &server, &tenant.key, feb_late)
        .await
        .unwrap();
    assert_eq!(
        body["rejected"][0]["error"]["code"], "period_closed",
        "{body}"
    );
    server.stop().await.unwrap();
}

/// `tally replay` on SQS: a message the aggregator set aside goes to the dead-letter queue
/// with its reason; `--dry-run` lists it, `tally replay` sends it back, and the app counts
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_dead_letters_are_listed_and_replayed_by_the_cli() {
    use tally_core::ports::EventQueue;

    let env = Env::aws("sqs");
    let tenant = make_tenant(&env, "acme-replay");
    let url = env.queue.as_deref().unwrap().strip_prefix("sqs:").unwrap();
    let config = tally_store::aws::sdk_config(env.aws_endpoint.as_deref()).await;
    let queue = tally_store::sqs::SqsQueue::new(aws_sdk_sqs::Client::new(&config), url);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let event: tally_core::event::Event = serde_json::from_value(serde_json::json!({
        "org_id": tenant.org, "id": "dlq-1", "project_id": tenant.projects[0],
        "meter": "compute_minutes", "aggregation": {"kind": "sum"}, "quantity": "2.5",
        "timestamp": now,
    }))
    .unwrap();
    queue.publish(std::slice::from_ref(&event)).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let delivery = loop {
        let got = queue
            .receive(10, std::time::Duration::from_secs(1))
            .await
            .unwrap();
        if let Some(d) = got.into_iter().next() {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "never received");
    };
    queue
        .dead_letter(&delivery, "store unavailable")
        .await
        .unwrap();

    let listed = env.cli(&["replay", "--dry-run"]);
    assert_eq!(listed["letters"][0]["status"], "would_replay", "{listed}");
    assert_eq!(listed["letters"][0]["reason"], "store unavailable");
    assert_eq!(listed["letters"][0]["events"], 1);
    let done = env.cli(&["replay", "--reason", "unavailable"]);
    assert_eq!(done["letters"][0]["status"], "replayed", "{done}");
    assert!(
        env.cli(&["replay", "--dry-run"])["letters"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let server = spawn_app_in(&env).await;
    let month = tally_core::Month::of(chrono::Utc::now()).to_string();
    wait_for_month(&reqwest::Client::new(), &server, &tenant.key, &month, "2.5").await;
    server.stop().await.unwrap();
}
