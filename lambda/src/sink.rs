//! [`SqsSink`]: where the aggregator Lambda sets poison records aside, an SQS queue (the
//! template's dead-letter queue), so a record that can never be applied neither blocks its
//! batch nor is lost.
//!
//! Messages carry the record as received and the reason in the same attributes the SQS
//! adapter uses for its own dead letters ([`tally_store::sqs::REASON_ATTRIBUTE`] and
//! [`tally_store::sqs::SOURCE_ID_ATTRIBUTE`]), so one reader handles both. SQS bodies must be
//! text: a record that is not UTF-8 (only possible on Kinesis) is sent as hex with the
//! attribute [`ENCODING_ATTRIBUTE`] = `hex`.

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageAttributeValue;
use tally_core::sinks::PoisonSink;
use tally_store::aws::truncate_utf8;
use tally_store::sqs::{REASON_ATTRIBUTE, SOURCE_ID_ATTRIBUTE};

/// Message attribute saying how the body is encoded when it is not the record's own text.
pub const ENCODING_ATTRIBUTE: &str = "tally_body_encoding";

/// SQS refuses message bodies over 256 KiB; hex doubles a record, so a long reason is cut.
const MAX_REASON_BYTES: usize = 1024;

/// A [`PoisonSink`] sending each poison record to one SQS queue.
#[derive(Debug, Clone)]
pub struct SqsSink {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsSink {
    /// A sink writing to `queue_url`.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsSink {
            client,
            queue_url: queue_url.into(),
        }
    }
}

fn attribute(value: &str) -> Result<MessageAttributeValue, String> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| format!("building message attribute: {e}"))
}

#[async_trait]
impl PoisonSink for SqsSink {
    async fn dead_letter(&self, id: &str, body: &[u8], reason: &str) -> Result<(), String> {
        let (text, hex) = match std::str::from_utf8(body) {
            Ok(t) if !t.is_empty() => (t.to_owned(), false),
            Ok(_) => ("(empty body)".to_owned(), false),
            Err(_) => (hex::encode(body), true),
        };
        let mut send = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(text)
            .message_attributes(
                REASON_ATTRIBUTE,
                attribute(truncate_utf8(reason, MAX_REASON_BYTES))?,
            );
        if !id.is_empty() {
            send = send.message_attributes(SOURCE_ID_ATTRIBUTE, attribute(id)?);
        }
        if hex {
            send = send.message_attributes(ENCODING_ATTRIBUTE, attribute("hex")?);
        }
        send.send().await.map_err(|e| {
            format!(
                "SendMessage to {}: {}",
                self.queue_url,
                aws_sdk_sqs::error::DisplayErrorContext(e)
            )
        })?;
        metrics::counter!("tally_lambda_dead_lettered_total").increment(1);
        Ok(())
    }
}
