//! Logs and metrics of a Lambda function.
//!
//! Logs are one JSON object per line on stdout (CloudWatch Logs keeps each line as one
//! event), through `tracing-subscriber`'s JSON formatter. Every line carries the fields of
//! the spans it happened in: the runtime's invocation span (`requestId`, the Lambda request
//! id) and, on the HTTP functions, the request span of `tally_http::trace`
//! (`request_id`, `org` once known). The filter is [`crate::env::LOG`], `info` by default.
//!
//! Metrics from the `metrics` crate go to `metrics_cloudwatch_embedded`'s recorder, so on
//! Lambda they need no agent and no API call: [`Telemetry::flush`] prints them once per
//! invocation as CloudWatch embedded metric format (EMF) lines, which CloudWatch Logs turns
//! into metrics in the [`NAMESPACE`] namespace. Each distinct set of labels is one line
//! whose dimensions are `function` (the function's short name) plus the labels. Counters
//! print what was added since the last flush (nothing when that is 0), gauges their current
//! value, histograms every value recorded since the last flush (EMF takes at most 100 per
//! line; the recorder logs an error for each value past that and drops it).

use std::io::Write;

use metrics_cloudwatch_embedded::{Builder, Collector};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::env::{self, Env, EnvError};

/// The CloudWatch namespace Tally's metrics are published under.
pub const NAMESPACE: &str = "Tally";

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
#[derive(Clone)]
pub struct Telemetry {
    /// `None` when another recorder was installed first (a second `init`).
    collector: Option<&'static Collector>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("recording", &self.collector.is_some())
            .finish()
    }
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
        // A second install (tests) fails and leaves the first recorder in place; this
        // handle then has nothing to flush and prints nothing.
        let collector = Builder::new()
            .cloudwatch_namespace(NAMESPACE)
            .with_dimension("function", function)
            .init()
            .ok();
        Ok(Telemetry { collector })
    }

    /// Prints what was recorded since the last flush as EMF lines on stdout.
    pub fn flush(&self) {
        self.flush_to(std::io::stdout().lock());
    }

    /// Writes what was recorded since the last flush as EMF lines to `out`. A failed write
    /// is logged: metrics are not worth failing an invocation for.
    pub fn flush_to(&self, out: impl Write) {
        if let Some(collector) = self.collector
            && let Err(e) = collector.flush(out)
        {
            tracing::warn!(error = %e, "cannot write EMF metrics");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write;
    use std::sync::{Arc, Mutex};

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
