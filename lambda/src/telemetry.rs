//! Logs and metrics of a Lambda function.
//!
//! Logs are one JSON object per line on stdout (CloudWatch Logs keeps each line as one
//! event), through `tracing-subscriber`'s JSON formatter. Every line carries the fields of
//! the spans it happened in: the runtime's invocation span (`requestId`, the Lambda request
//! id) and, on the HTTP functions, the request span of `tally_http::trace`
//! (`request_id`, `org` once known). The filter is [`crate::env::LOG`], `info` by default.
//!
//! Metrics from the `metrics` crate go to [`crate::emf`]'s recorder; [`Telemetry::flush`]
//! prints them as embedded-metric-format lines, once per invocation.

use std::sync::Arc;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::emf::EmfRecorder;
use crate::env::{self, Env, EnvError};

/// The JSON log subscriber writing to `writer`: one object per event, its fields at the top
/// level, with `spans` listing every enclosing span and its fields.
pub fn json_subscriber<W>(filter: EnvFilter, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_span_list(true)
        .flatten_event(true)
        .with_target(true)
        .with_ansi(false)
        .with_writer(writer)
        .finish()
}

/// The process's metrics recorder, for flushing after each invocation.
#[derive(Debug, Clone)]
pub struct Telemetry {
    recorder: Arc<EmfRecorder>,
}

impl Telemetry {
    /// Installs the JSON log subscriber and the EMF recorder for `function` (the value of
    /// the metrics' `function` dimension). Installing twice keeps the first ones.
    pub fn init(env: &Env, function: &'static str) -> Result<Telemetry, EnvError> {
        let filter = env.optional(env::LOG)?.unwrap_or_else(|| "info".to_owned());
        let filter = EnvFilter::try_new(&filter).map_err(|e| {
            EnvError::invalid(env::LOG, &filter, format!("not a tracing filter: {e}"))
        })?;
        let _ = tracing::subscriber::set_global_default(json_subscriber(filter, std::io::stdout));
        let recorder = Arc::new(EmfRecorder::new(crate::emf::NAMESPACE, function));
        // A second install (tests) fails and leaves the first recorder in place; this
        // handle then flushes an empty registry, which prints nothing.
        let _ = metrics::set_global_recorder(crate::emf::Global(recorder.clone()));
        Ok(Telemetry { recorder })
    }

    /// Prints what was recorded since the last flush as EMF lines on stdout.
    pub fn flush(&self) {
        let now = chrono::Utc::now().timestamp_millis();
        for line in self.recorder.drain_lines(now) {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write;
    use std::sync::Mutex;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn log_lines_are_json_with_the_lambda_and_request_ids_and_the_org() {
        let buf = Buf::default();
        let subscriber = json_subscriber(EnvFilter::new("info"), buf.clone());
        tracing::subscriber::with_default(subscriber, || {
            // What lambda_runtime and tally_http::trace open around a request.
            let invoke = tracing::info_span!("Lambda runtime invoke", requestId = "lambda-1");
            let _i = invoke.enter();
            let request = tracing::info_span!(
                "http_request",
                request_id = "req_1",
                org = tracing::field::Empty
            );
            let _r = request.enter();
            request.record("org", "org_acme");
            tracing::info!(status = 202, "request finished");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["message"], "request finished");
        assert_eq!(line["status"], 202);
        assert_eq!(line["level"], "INFO");
        let spans = line["spans"].as_array().unwrap();
        assert_eq!(spans[0]["requestId"], "lambda-1");
        assert_eq!(spans[1]["request_id"], "req_1");
        assert_eq!(spans[1]["org"], "org_acme");
    }
}
