//! Each Lambda function started as Lambda starts it. The five binaries of the test build
//! run against a local Lambda Runtime API (`common::runtime_api`), each with exactly the
//! environment `template.yaml` gives its function in a stack whose table, queues, stream
//! and secrets are created on the emulator (`common::deploy`; the template's `!Ref`,
//! `!GetAtt`, `!Sub` and `!If` evaluated by `common::template`). Each gets one real event
//! and is checked by its answer and its effect:
//!
//! - ingest: an API Gateway HTTP API (payload 2.0) `POST /v1/events` with an API key of the
//!   store; `202`, the events on the queue (or the stream), and a log line for the request
//!   carrying the Lambda request id and API Gateway's;
//! - the aggregator: the SQS batch (or Kinesis batch) of exactly what ingest put there;
//!   `{"batchItemFailures":[]}` and the month's counter in DynamoDB equal to the events'
//!   sum, unchanged when the batch is delivered again;
//! - the management API: `GET /v1/usage` with a JWT signed with the stack's JWT secret,
//!   answering that same sum; a token of another secret is refused;
//! - the Stripe webhook: an `invoice.paid` signed with the Stripe secret's signing secret is
//!   recorded in the sync ledger; a badly signed one is refused and recorded nowhere;
//! - billing: the monthly EventBridge schedule event closes an ended month and stores its
//!   report (kept small and separate: the billing function's shape is changing);
//! - alerts: the alert schedule's event (the template's `Input`) delivers a signed alert to
//!   the configured webhook for an org past 80 % of an allowance.
//!
//! And a function started without a variable the template gives it does not start, saying
//! which. Needs `TALLY_TEST_AWS_ENDPOINT` (the test command starts the emulator); without
//! it the tests fail and say how to run them.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use aws_lambda_events::encodings::Base64Data;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Value, json};
use tally_core::ids::{MeterName, OrgId, ProjectId};
use tally_core::period::{Granularity, Month};
use tally_core::plan::PlanId;
use tally_core::ports::{
    ApiKeyStore, CounterQuery, ProjectStore, ReportStore, StepKey, SyncLedger, UsageStore,
};
use tally_core::tenant::{KeyScope, Org, Project};
use tally_store::dynamodb::DynamoStore;
use tally_tests::conformance::fixtures::{
    api_key, create_owned_org, dec, event, fresh_project, random_hex,
};

use common::deploy::{ACCOUNT, Deployed, REGION, deploy};
use common::runtime_api::Outcome;
use common::template::{get, str_of, template};

/// The meter the tests send: a sum.
const METER: &str = "compute_minutes";

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The stack's DynamoDB store, as the tests read and seed it.
fn store(d: &Deployed<'_>) -> DynamoStore {
    DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&d.sdk),
        d.physical("Table").to_owned(),
    )
}

/// An org on `plan` created at `at`, with a project and an API key that may send events
/// and read usage.
struct Tenant {
    org: Org,
    project: ProjectId,
    key: String,
}

async fn tenant(store: &DynamoStore, plan: PlanId, at: DateTime<Utc>) -> Tenant {
    let org = create_owned_org(store, (1, 2), "ada@example.com", "Acme", plan, at).await;
    let project = fresh_project();
    store
        .create_project(&Project {
            id: project.clone(),
            org_id: org.id.clone(),
            name: "Web".into(),
            slug: "web".into(),
            created_at: at,
            archived_at: None,
        })
        .await
        .unwrap();
    // A live key: a test key's events count under the org's test twin.
    let key = format!("tk_live_{}{}", random_hex(), random_hex());
    store
        .create_api_key(&api_key(&org.id, &key, &KeyScope::ALL, at))
        .await
        .unwrap();
    Tenant { org, project, key }
}

/// An API Gateway HTTP API (payload format 2.0) request to the function `function`, on the
/// route its template events declare.
fn http_event(
    d: &Deployed<'_>,
    function: &str,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Value {
    let events = get(
        d.stack.template,
        &["Resources", function, "Properties", "Events"],
    );
    let (route_path, route_method) = events
        .as_mapping()
        .unwrap()
        .values()
        .find(|e| str_of(get(e, &["Type"])) == Some("HttpApi"))
        .map(|e| {
            (
                str_of(get(e, &["Properties", "Path"])).unwrap().to_owned(),
                str_of(get(e, &["Properties", "Method"]))
                    .unwrap()
                    .to_owned(),
            )
        })
        .unwrap_or_else(|| panic!("{function} has no HttpApi event"));
    let route_key = format!("{} {route_path}", route_method.to_uppercase());
    let now = Utc::now();
    let mut headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_lowercase(), json!(v)))
        .collect();
    headers.insert(
        "host".into(),
        json!("abc123.execute-api.us-east-1.amazonaws.com"),
    );
    headers.insert("x-forwarded-for".into(), json!("203.0.113.7"));
    headers.insert("x-forwarded-proto".into(), json!("https"));
    if let Some(b) = body {
        headers.insert("content-length".into(), json!(b.len().to_string()));
    }
    let query_parameters: serde_json::Map<String, Value> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), json!(v)))
        .collect();
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "curl/8.5.0",
            },
            "requestId": format!("{}=", &random_hex()[..15]),
            "routeKey": route_key,
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
            "timeEpoch": now.timestamp_millis(),
        },
        "isBase64Encoded": false,
    });
    if !query_parameters.is_empty() {
        event["queryStringParameters"] = Value::Object(query_parameters);
    }
    if let Some(proxy) = route_path.strip_suffix("/{proxy+}") {
        let rest = path.strip_prefix(proxy).unwrap().trim_start_matches('/');
        event["pathParameters"] = json!({"proxy": rest});
    }
    if let Some(b) = body {
        event["body"] = json!(b);
    }
    event
}

/// The status and JSON body of an HTTP function's answer.
fn http_answer(outcome: Outcome) -> (u64, Value) {
    let r = outcome.unwrap_or_else(|e| panic!("the function failed the invocation: {e}"));
    let status = r["statusCode"].as_u64().unwrap_or_else(|| panic!("{r}"));
    let body = r["body"].as_str().unwrap_or("").to_owned();
    let bytes = if r["isBase64Encoded"] == json!(true) {
        serde_json::from_value::<Base64Data>(json!(body)).unwrap().0
    } else {
        body.into_bytes()
    };
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

/// The org's total of [`METER`] this month, from the counters in DynamoDB.
async fn month_total(store: &DynamoStore, org: &OrgId) -> Vec<String> {
    let month = Month::of(Utc::now());
    store
        .counter_series(&CounterQuery {
            org: org.clone(),
            project: None,
            meter: MeterName::parse(METER).unwrap(),
            granularity: Granularity::Month,
            from: month.start(),
            to: month.end(),
        })
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.value.normalize().to_string())
        .collect()
}

/// Every message on the queue now, received as the SQS event source receives them.
async fn drain_queue(d: &Deployed<'_>, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let sqs = aws_sdk_sqs::Client::new(&d.sdk);
    let mut all = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

/// The SQS event Lambda's event source mapping makes of `messages`.
fn sqs_event(queue_arn: &str, messages: &[aws_sdk_sqs::types::Message]) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, Value> = m
                .attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.as_str().to_owned(), json!(v)))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "messageId": m.message_id().unwrap(),
                "receiptHandle": m.receipt_handle().unwrap(),
                "body": m.body().unwrap(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body().unwrap_or(""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            })
        })
        .collect();
    json!({ "Records": records })
}

/// The Kinesis event Lambda's event source mapping makes of every record on the stream.
async fn kinesis_event(d: &Deployed<'_>, stream: &str, stream_arn: &str) -> Value {
    let kinesis = aws_sdk_kinesis::Client::new(&d.sdk);
    let shards = kinesis
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap()
        .shards
        .unwrap_or_default();
    let mut records = Vec::new();
    for shard in shards {
        let mut iterator = kinesis
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator;
        while let Some(it) = iterator {
            let out = kinesis
                .get_records()
                .shard_iterator(it)
                .send()
                .await
                .unwrap();
            if out.records().is_empty() {
                break;
            }
            for r in out.records() {
                let mut data = Base64Data::default();
                data.0 = r.data().as_ref().to_vec();
                let arrival = r
                    .approximate_arrival_timestamp()
                    .map(|t| t.as_secs_f64())
                    .unwrap_or(0.0);
                records.push(json!({
                    "kinesis": {
                        "kinesisSchemaVersion": "1.0",
                        "partitionKey": r.partition_key(),
                        "sequenceNumber": r.sequence_number(),
                        "data": data,
                        "approximateArrivalTimestamp": arrival,
                    },
                    "eventSource": "aws:kinesis",
                    "eventVersion": "1.0",
                    "eventID": format!("{}:{}", shard.shard_id(), r.sequence_number()),
                    "eventName": "aws:kinesis:record",
                    "invokeIdentityArn": format!("arn:aws:iam::{ACCOUNT}:role/aggregator"),
                    "awsRegion": REGION,
                    "eventSourceARN": stream_arn,
                }));
            }
            iterator = out.next_shard_iterator;
        }
    }
    json!({ "Records": records })
}

/// What a client sends: three events of [`METER`] now, in one request body.
struct Sent {
    body: String,
    ids: Vec<String>,
    /// Their sum, as the counters print it.
    total: String,
}

fn events_body(project: &ProjectId) -> Sent {
    let now = rfc3339(Utc::now());
    let quantities = ["1.5", "2", "40"];
    let ids: Vec<String> = quantities
        .iter()
        .map(|_| format!("evt_{}", random_hex()))
        .collect();
    let events: Vec<Value> = quantities
        .iter()
        .zip(&ids)
        .map(|(q, id)| {
            json!({
                "id": id,
                "project_id": project.as_str(),
                "meter": METER,
                "quantity": q,
                "timestamp": now,
            })
        })
        .collect();
    let total = quantities
        .iter()
        .fold(dec("0"), |sum, q| sum + dec(q))
        .normalize()
        .to_string();
    Sent {
        body: json!({ "events": events }).to_string(),
        ids,
        total,
    }
}

/// Ingest answers `202` to a real request and puts the events on the transport; the
/// aggregator applies the batch Lambda would build of them, answers no failures, and the
/// counter is the events' sum, also when the batch comes again. Returns the stack, the
/// tenant and the sum, for what follows.
async fn ingest_then_aggregate<'t>(
    t: &'t serde_norway::Value,
    transport: &str,
) -> (Deployed<'t>, Tenant, String) {
    let d = deploy(t, &[("Transport", transport)]).await;
    let store = store(&d);
    let tenant = tenant(&store, PlanId::Starter, Utc::now() - TimeDelta::days(40)).await;

    let mut ingest = d.start("IngestFunction").await;
    let sent = events_body(&tenant.project);
    let auth = format!("Bearer {}", tenant.key);
    let request = http_event(
        &d,
        "IngestFunction",
        "POST",
        "/v1/events",
        "",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Some(&sent.body),
    );
    let (status, answer) = http_answer(ingest.invoke(request.clone()).await);
    assert_eq!(status, 202, "{answer}\n{}", ingest.output());
    assert_eq!(answer["accepted"], json!(sent.ids.len()), "{answer}");
    assert_eq!(answer["rejected"], json!([]), "{answer}");
    // Its log line for the request carries the Lambda request id (the runtime's span) and
    // API Gateway's (the request span), as README's logs section promises.
    let lambda_request_id = ingest.last_request_id.clone();
    let log = ingest.stop();
    let finished = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "request finished")
        .unwrap_or_else(|| panic!("no request log line:\n{log}"));
    let span = |field: &str| -> Vec<Value> {
        finished["spans"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s.get(field).cloned())
            .collect()
    };
    assert_eq!(span("requestId"), [json!(lambda_request_id)], "{finished}");
    assert_eq!(
        span("request_id"),
        [request["requestContext"]["requestId"].clone()],
        "{finished}"
    );
    assert!(
        month_total(&store, &tenant.org.id).await.is_empty(),
        "counted before aggregation"
    );

    let batch = match transport {
        "sqs" => {
            let messages = drain_queue(&d, d.physical("EventsQueue")).await;
            assert!(!messages.is_empty(), "ingest put nothing on the queue");
            let bodies: String = messages.iter().filter_map(|m| m.body()).collect();
            for id in &sent.ids {
                assert!(
                    bodies.contains(id.as_str()),
                    "{id} is not on the queue: {bodies}"
                );
            }
            sqs_event(&d.stack.attributes["EventsQueue.Arn"], &messages)
        }
        _ => {
            let batch = kinesis_event(
                &d,
                d.physical("EventsStream"),
                &d.stack.attributes["EventsStream.Arn"],
            )
            .await;
            assert!(
                !batch["Records"].as_array().unwrap().is_empty(),
                "ingest put nothing on the stream"
            );
            batch
        }
    };
    let mut aggregator = d.start("AggregatorFunction").await;
    let answer = aggregator.invoke(batch.clone()).await;
    assert_eq!(
        answer,
        Ok(json!({"batchItemFailures": []})),
        "{}",
        aggregator.output()
    );
    assert_eq!(
        month_total(&store, &tenant.org.id).await,
        [sent.total.as_str()],
        "{batch}\n{}",
        aggregator.output()
    );
    // Delivered again (at least once): nothing is counted twice.
    let answer = aggregator.invoke(batch).await;
    assert_eq!(answer, Ok(json!({"batchItemFailures": []})));
    assert_eq!(
        month_total(&store, &tenant.org.id).await,
        [sent.total.as_str()]
    );
    // A batch of the other source fails the invocation (Lambda retries it), through the
    // Runtime API's error route.
    let other = match transport {
        "sqs" => json!({"Records": [{"eventSource": "aws:kinesis",
            "kinesis": {"partitionKey": "k", "data": "e30=", "sequenceNumber": "1"}}]}),
        _ => json!({"Records": [{"eventSource": "aws:sqs", "messageId": "m1", "body": "{}"}]}),
    };
    let failed = aggregator.invoke(other).await.unwrap_err();
    assert!(failed.to_string().contains("eventSource"), "{failed}");
    aggregator.stop();
    (d, tenant, sent.total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_ingest_the_aggregator_and_the_api_as_lambda_runs_them() {
    let t = template();
    let (d, tenant, total) = ingest_then_aggregate(&t, "sqs").await;

    // The management API, with a JWT signed with the stack's generated secret (read from
    // Secrets Manager by ARN), answers the usage the aggregator counted.
    let mut api = d.start("ApiFunction").await;
    let jwt = |secret: &str| {
        tally_api::jwt::JwtConfig::hs256(secret.as_bytes())
            .unwrap()
            .mint(&tenant.org.owner_id, Utc::now(), TimeDelta::hours(1))
            .unwrap()
    };
    let query = format!(
        "meter={METER}&org_id={}&granularity=month",
        tenant.org.id.as_str()
    );
    let get_usage = |token: String| {
        let auth = format!("Bearer {token}");
        http_event(
            &d,
            "ApiFunction",
            "GET",
            "/v1/usage",
            &query,
            &[("authorization", &auth)],
            None,
        )
    };
    let (status, usage) = http_answer(
        api.invoke(get_usage(jwt(&d.secret_values["JwtSecret"])))
            .await,
    );
    assert_eq!(status, 200, "{usage}\n{}", api.output());
    let values: Vec<&str> = usage["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, [total.as_str()], "{usage}");
    let (status, refused) = http_answer(api.invoke(get_usage(jwt(&"x".repeat(64)))).await);
    assert_eq!(status, 401, "{refused}");
    api.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_ingest_and_the_aggregator_as_lambda_runs_them() {
    let t = template();
    ingest_then_aggregate(&t, "kinesis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stripe_webhook_records_a_signed_event_and_refuses_a_badly_signed_one() {
    let t = template();
    let sdk = tally_tests::aws::sdk_config().await;
    let whsec = format!("whsec_{}", random_hex());
    // The operator's secret, named by the StripeSecretName parameter.
    let stripe_secret = aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name(tally_tests::aws::fresh_name("tally-rt-stripe"))
        .secret_string(
            json!({"secret_key": "sk_test_unused", "webhook_signing_secret": whsec}).to_string(),
        )
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let d = deploy(&t, &[("StripeSecretName", &stripe_secret)]).await;
    let store = store(&d);
    let org = tally_tests::conformance::fixtures::fresh_org();
    let period = Month::of(Utc::now()).prev();
    let webhook = |kind: &str, invoice: &str, secret: &str| {
        let body = json!({
            "id": format!("evt_{}", random_hex()),
            "object": "event",
            "type": kind,
            "data": {"object": {
                "id": invoice,
                "object": "invoice",
                "metadata": {"tally_invoice": format!("{}:{period}", org.as_str())},
            }},
        })
        .to_string();
        let signature =
            tally_billing::webhook::sign(secret, Utc::now().timestamp(), body.as_bytes());
        http_event(
            &d,
            "StripeWebhookFunction",
            "POST",
            tally_billing::webhook::WEBHOOK_PATH,
            "",
            &[
                ("content-type", "application/json"),
                ("stripe-signature", &signature),
            ],
            Some(&body),
        )
    };
    let mut hook = d.start("StripeWebhookFunction").await;
    let (status, answer) = http_answer(
        hook.invoke(webhook("invoice.paid", "in_paid", &whsec))
            .await,
    );
    assert_eq!(status, 200, "{answer}\n{}", hook.output());
    assert_eq!(answer["recorded"]["invoice"], "in_paid", "{answer}");
    assert_eq!(
        store
            .get_step(&StepKey::new(&org, period, "webhook:invoice.paid"))
            .await
            .unwrap()
            .as_deref(),
        Some("in_paid")
    );
    let forged = webhook(
        "invoice.payment_failed",
        "in_forged",
        "whsec_not_the_secret",
    );
    let (status, answer) = http_answer(hook.invoke(forged).await);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "bad_signature", "{answer}");
    assert_eq!(
        store
            .get_step(&StepKey::new(
                &org,
                period,
                "webhook:invoice.payment_failed"
            ))
            .await
            .unwrap(),
        None
    );
    hook.stop();
}

/// The monthly schedule's event (no `Input`: EventBridge's scheduled-event envelope) closes
/// a month that has ended and enqueues one (org, period) work item per org on the billing
/// queue, billing nothing itself; the same function, invoked with the SQS batch the queue's
/// event source mapping makes of those items, stores the org's report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monthly_billing_schedule_closes_an_ended_month() {
    let t = template();
    let d = deploy(&t, &[]).await;
    let store = store(&d);
    // Two months back: ended, and past any grace period, whenever the test runs.
    let month = Month::of(Utc::now()).prev().prev();
    let tenant = tenant(&store, PlanId::Starter, month.start()).await;
    let used = event(
        &tenant.org.id,
        &tenant.project,
        "evt_billing_1",
        METER,
        "7",
        &rfc3339(month.start() + TimeDelta::days(3)),
    );
    store.apply_batch(&[used]).await.unwrap();

    let mut billing = d.start("BillingFunction").await;
    let scheduled = json!({
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": rfc3339(Utc::now()),
        "region": REGION,
        "resources": [format!("arn:aws:events:{REGION}:{ACCOUNT}:rule/{}-Monthly", d.stack.pseudo["AWS::StackName"])],
        "detail": {},
    });
    let answer = billing.invoke(scheduled).await;
    let answer = answer.unwrap_or_else(|e| panic!("{e}\n{}", billing.output()));
    let months = answer["months"].as_array().unwrap();
    assert!(
        months.contains(&json!([month.to_string(), 1])),
        "one item enqueued for {month}: {answer}"
    );
    assert!(store.is_period_closed(month).await.unwrap());
    assert!(
        store
            .get_report(&tenant.org.id, month)
            .await
            .unwrap()
            .is_none(),
        "the schedule only enqueues"
    );
    // One item per month the schedule closed (the month after it has ended too).
    let items = drain_queue(&d, d.physical("BillingQueue")).await;
    assert_eq!(
        items.len(),
        months.len(),
        "one work item per org and month: {answer}"
    );
    assert!(
        items
            .iter()
            .filter_map(|m| m.body())
            .any(|b| b.contains(tenant.org.id.as_str()) && b.contains(&month.to_string())),
        "no item for {month}"
    );
    let answer = billing
        .invoke(sqs_event(&d.stack.attributes["BillingQueue.Arn"], &items))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", billing.output()));
    assert_eq!(
        answer,
        json!({"batchItemFailures": []}),
        "{}",
        billing.output()
    );
    billing.stop();
    let report = store
        .get_report(&tenant.org.id, month)
        .await
        .unwrap()
        .unwrap();
    let report: Value = serde_json::from_str(&report.body).unwrap();
    let line = report["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["meter"] == METER)
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(line["quantity"], "7", "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_schedule_sends_a_signed_alert_past_80_percent() {
    // The parameter takes https:// URLs; the sender also takes http:// for a loopback
    // receiver like this one.
    let (url, received) = common::alert_receiver("/hooks/tally").await;
    let t = template();
    let d = deploy(&t, &[("AlertWebhookUrl", &url)]).await;
    let store = store(&d);
    let tenant = tenant(&store, PlanId::Starter, Utc::now() - TimeDelta::days(40)).await;
    // 850 of the Starter plan's 1,000 included compute minutes.
    let used = event(
        &tenant.org.id,
        &tenant.project,
        "evt_alerts_1",
        METER,
        "850",
        &rfc3339(Utc::now()),
    );
    store.apply_batch(&[used]).await.unwrap();

    // With an `Input`, EventBridge delivers it as the event.
    let input = str_of(get(
        &t,
        &[
            "Resources",
            "BillingFunction",
            "Properties",
            "Events",
            "Alerts",
            "Properties",
            "Input",
        ],
    ))
    .unwrap();
    let mut billing = d.start("BillingFunction").await;
    let answer = billing.invoke(serde_json::from_str(input).unwrap()).await;
    assert_eq!(
        answer,
        Ok(json!({"enabled": true, "orgs": 1, "claimed": 1, "delivered": 1, "problems": []})),
        "{}",
        billing.output()
    );
    billing.stop();
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let (signature, body) = &got[0];
    tally_core::signature::verify(
        &d.secret_values["AlertWebhookSecret"],
        signature,
        body,
        Utc::now(),
        300,
    )
    .unwrap();
    let alert: Value = serde_json::from_slice(body).unwrap();
    assert!(
        alert.to_string().contains(tenant.org.id.as_str()),
        "{alert}"
    );
    assert!(alert.to_string().contains(METER), "{alert}");
}

/// The harness catches a template that stops giving a function what it reads: without
/// its queue's URL, ingest does not start, and says which variable is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_without_a_variable_the_template_gives_it_does_not_start() {
    let t = template();
    let d = deploy(&t, &[]).await;
    let mut env = d.environment("IngestFunction");
    assert!(env.remove("TALLY_QUEUE_URL").is_some(), "{env:?}");
    let mut ingest = d.start_with("IngestFunction", env).await;
    let (status, output) = ingest.exit().await;
    assert!(!status.success(), "{output}");
    assert!(output.contains("TALLY_QUEUE_URL"), "{output}");
}
