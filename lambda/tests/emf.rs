//! The Lambda functions' metrics as CloudWatch embedded-metric-format lines, through the
//! recorder `Telemetry::init` installs. A test binary of its own, since the recorder is the
//! process's global one.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use metrics::Unit;
use serde_json::{Value, json};
use tally_lambda::env::{AGGREGATOR, Env};
use tally_lambda::telemetry::Telemetry;

fn flush(telemetry: &Telemetry) -> Vec<Value> {
    let mut out = Vec::new();
    telemetry.flush_to(&mut out);
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn drains_counters_gauges_and_histograms_as_emf() {
    let telemetry = Telemetry::init(&Env::new(AGGREGATOR), "aggregator").unwrap();
    let before = chrono::Utc::now().timestamp_millis();
    metrics::describe_histogram!("batch_seconds", Unit::Seconds, "time per batch");
    metrics::counter!("events_total", "outcome" => "applied").increment(3);
    metrics::counter!("events_total", "outcome" => "applied").increment(2);
    metrics::counter!("events_total", "outcome" => "duplicate").increment(1);
    metrics::gauge!("queue_depth").set(7.0);
    metrics::histogram!("batch_seconds").record(0.5);
    metrics::histogram!("batch_seconds").record(1.5);
    let lines = flush(&telemetry);
    let after = chrono::Utc::now().timestamp_millis();
    assert_eq!(lines.len(), 3, "{lines:?}");
    // No labels: the gauge and the histogram share a line.
    let plain = &lines[0];
    assert_eq!(plain["function"], "aggregator");
    assert_eq!(plain["queue_depth"], 7.0);
    assert_eq!(plain["batch_seconds"], json!([0.5, 1.5]));
    let directive = &plain["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "Tally");
    assert_eq!(directive["Dimensions"], json!([["function"]]));
    // A metric without a unit has none in the line, which EMF reads as "None".
    assert_eq!(
        directive["Metrics"],
        json!([{"Name": "batch_seconds", "Unit": "Seconds"}, {"Name": "queue_depth"}])
    );
    let at = plain["_aws"]["Timestamp"].as_i64().unwrap();
    assert!(
        (before..=after).contains(&at),
        "{at} not in {before}..={after}"
    );
    let applied = lines.iter().find(|l| l["outcome"] == "applied").unwrap();
    assert_eq!(applied["events_total"], 5);
    assert_eq!(
        applied["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["function", "outcome"]])
    );
    // Counters and histograms reset; the gauge keeps its value.
    let again = flush(&telemetry);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["queue_depth"], 7.0);
    assert!(again[0].get("batch_seconds").is_none());
    // A second install keeps the first recorder; its handle prints nothing.
    let second = Telemetry::init(&Env::new(AGGREGATOR), "aggregator").unwrap();
    metrics::counter!("events_total", "outcome" => "applied").increment(1);
    assert!(flush(&second).is_empty());
    let lines = flush(&telemetry);
    let applied = lines.iter().find(|l| l["outcome"] == "applied").unwrap();
    assert_eq!(applied["events_total"], 1);
}
