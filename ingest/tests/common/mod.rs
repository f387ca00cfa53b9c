//! What the ingest router tests share: reading a `POST /v1/events` answer's rejections.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use serde_json::Value;

/// (index, code, field) of each rejection in a `POST /v1/events` answer, in its order.
pub fn rejections(answer: &Value) -> Vec<(u64, &str, &str)> {
    answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["error"]["code"].as_str().unwrap(),
                r["error"]["field"].as_str().unwrap(),
            )
        })
        .collect()
}
