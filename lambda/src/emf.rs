//! [`EmfRecorder`]: a `metrics` recorder that turns what was recorded into CloudWatch
//! embedded metric format (EMF) log lines, so metrics on Lambda need no agent and no API
//! call: CloudWatch Logs extracts them from the function's log stream.
//!
//! Counters print what was added since the last drain (and are then reset), gauges their
//! current value, histograms every value recorded since the last drain (EMF takes an array,
//! at most [`MAX_VALUES`] per line; values past that before the next drain are dropped). Each distinct set of labels is one line whose
//! dimensions are `function` plus the labels; at most [`MAX_METRICS_PER_LINE`] metrics
//! share a line, as EMF allows.
//!
//! Written by hand because the recorder is ~150 lines, and the crates that do this pull
//! in a registry and quantile sketches the Lambda binaries do not need.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use serde_json::{Map, Value, json};

/// The CloudWatch namespace Tally's metrics are published under.
pub const NAMESPACE: &str = "Tally";
/// Most values of one histogram in one line (EMF's limit).
pub const MAX_VALUES: usize = 100;
/// Most metrics in one line (EMF's limit).
pub const MAX_METRICS_PER_LINE: usize = 100;
/// Most series (name and labels) kept; later new ones are not recorded, so a label with
/// unbounded values cannot grow the registry without end.
const MAX_SERIES: usize = 1_000;

#[derive(Debug, Default)]
struct Samples(Mutex<Vec<f64>>);

impl Samples {
    fn lock(&self) -> MutexGuard<'_, Vec<f64>> {
        // A panic while holding the lock leaves a vector of floats: still usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        let mut v = self.lock();
        if v.len() < MAX_VALUES {
            v.push(value);
        }
    }
}

#[derive(Debug, Clone)]
enum Handle {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicU64>),
    Histogram(Arc<Samples>),
}

/// The registry behind the global recorder; see the module doc.
#[derive(Debug)]
pub struct EmfRecorder {
    namespace: &'static str,
    function: &'static str,
    series: Mutex<BTreeMap<Key, Handle>>,
    units: Mutex<BTreeMap<String, Unit>>,
}

/// The recorder installed globally: a shared handle on an [`EmfRecorder`].
#[derive(Debug, Clone)]
pub struct Global(pub Arc<EmfRecorder>);

impl EmfRecorder {
    /// An empty registry for `function` (the `function` dimension) in `namespace`.
    pub fn new(namespace: &'static str, function: &'static str) -> Self {
        EmfRecorder {
            namespace,
            function,
            series: Mutex::new(BTreeMap::new()),
            units: Mutex::new(BTreeMap::new()),
        }
    }

    fn series(&self) -> MutexGuard<'_, BTreeMap<Key, Handle>> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, key: &Key, make: impl FnOnce() -> Handle) -> Option<Handle> {
        let mut series = self.series();
        if let Some(h) = series.get(key) {
            return Some(h.clone());
        }
        if series.len() >= MAX_SERIES {
            return None;
        }
        let h = make();
        series.insert(key.clone(), h.clone());
        Some(h)
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>) {
        if let Some(unit) = unit {
            self.units
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.as_str().to_owned(), unit);
        }
    }

    /// The EMF lines for everything recorded since the last call (at time `now_ms`, Unix
    /// milliseconds), resetting counters and histograms. Nothing recorded: no lines.
    pub fn drain_lines(&self, now_ms: i64) -> Vec<String> {
        let units = self.units.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Labels (sorted) -> metric name -> value.
        let mut groups: BTreeMap<Vec<(String, String)>, BTreeMap<String, Value>> = BTreeMap::new();
        for (key, handle) in self.series().iter() {
            let value = match handle {
                Handle::Counter(c) => match c.swap(0, Ordering::Relaxed) {
                    0 => continue,
                    n => json!(n),
                },
                Handle::Gauge(g) => json!(f64::from_bits(g.load(Ordering::Relaxed))),
                Handle::Histogram(h) => {
                    let values = std::mem::take(&mut *h.lock());
                    if values.is_empty() {
                        continue;
                    }
                    json!(values)
                }
            };
            let mut labels: Vec<(String, String)> = key
                .labels()
                .filter(|l| l.key() != "function")
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            groups
                .entry(labels)
                .or_default()
                .insert(key.name().to_owned(), value);
        }
        let mut lines = Vec::new();
        for (labels, metrics) in groups {
            let metrics: Vec<(String, Value)> = metrics.into_iter().collect();
            for chunk in metrics.chunks(MAX_METRICS_PER_LINE) {
                let mut dims = vec![Value::from("function")];
                dims.extend(labels.iter().map(|(k, _)| Value::from(k.as_str())));
                let defs: Vec<Value> = chunk
                    .iter()
                    .map(|(name, _)| {
                        json!({"Name": name, "Unit": units.get(name).map_or("None", unit_name)})
                    })
                    .collect();
                let mut line = Map::new();
                line.insert(
                    "_aws".into(),
                    json!({
                        "Timestamp": now_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": self.namespace,
                            "Dimensions": [dims],
                            "Metrics": defs,
                        }],
                    }),
                );
                line.insert("function".into(), Value::from(self.function));
                for (k, v) in &labels {
                    line.insert(k.clone(), Value::from(v.as_str()));
                }
                for (name, value) in chunk {
                    line.insert(name.clone(), value.clone());
                }
                lines.push(Value::Object(line).to_string());
            }
        }
        lines
    }
}

/// CloudWatch's name for a `metrics` unit.
fn unit_name(unit: &Unit) -> &'static str {
    match unit {
        Unit::Count => "Count",
        Unit::Percent => "Percent",
        Unit::Seconds => "Seconds",
        Unit::Milliseconds => "Milliseconds",
        Unit::Microseconds => "Microseconds",
        Unit::Bytes => "Bytes",
        Unit::Kibibytes => "Kilobytes",
        Unit::Mebibytes => "Megabytes",
        Unit::Gibibytes => "Gigabytes",
        Unit::Tebibytes => "Terabytes",
        Unit::BitsPerSecond => "Bits/Second",
        Unit::CountPerSecond => "Count/Second",
        _ => "None",
    }
}

impl Recorder for Global {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.0.describe(key, unit);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.0.describe(key, unit);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.0.describe(key, unit);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        match self
            .0
            .handle(key, || Handle::Counter(Arc::new(AtomicU64::new(0))))
        {
            Some(Handle::Counter(c)) => Counter::from_arc(c),
            _ => Counter::noop(),
        }
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        match self.0.handle(key, || {
            Handle::Gauge(Arc::new(AtomicU64::new(0f64.to_bits())))
        }) {
            Some(Handle::Gauge(g)) => Gauge::from_arc(g),
            _ => Gauge::noop(),
        }
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match self
            .0
            .handle(key, || Handle::Histogram(Arc::new(Samples::default())))
        {
            Some(Handle::Histogram(h)) => Histogram::from_arc(h),
            _ => Histogram::noop(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn drains_counters_gauges_and_histograms_as_emf() {
        let rec = Arc::new(EmfRecorder::new(NAMESPACE, "aggregator"));
        let global = Global(rec.clone());
        metrics::with_local_recorder(&global, || {
            metrics::describe_histogram!("batch_seconds", Unit::Seconds, "time per batch");
            metrics::counter!("events_total", "outcome" => "applied").increment(3);
            metrics::counter!("events_total", "outcome" => "applied").increment(2);
            metrics::counter!("events_total", "outcome" => "duplicate").increment(1);
            metrics::gauge!("queue_depth").set(7.0);
            metrics::histogram!("batch_seconds").record(0.5);
            metrics::histogram!("batch_seconds").record(1.5);
        });
        let lines: Vec<Value> = rec
            .drain_lines(1_700_000_000_000)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        // No labels: the gauge and the histogram share a line.
        let plain = &lines[0];
        assert_eq!(plain["function"], "aggregator");
        assert_eq!(plain["queue_depth"], 7.0);
        assert_eq!(plain["batch_seconds"], json!([0.5, 1.5]));
        let directive = &plain["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "Tally");
        assert_eq!(directive["Dimensions"], json!([["function"]]));
        assert_eq!(
            directive["Metrics"],
            json!([{"Name": "batch_seconds", "Unit": "Seconds"}, {"Name": "queue_depth", "Unit": "None"}])
        );
        assert_eq!(plain["_aws"]["Timestamp"], 1_700_000_000_000i64);
        let applied = lines.iter().find(|l| l["outcome"] == "applied").unwrap();
        assert_eq!(applied["events_total"], 5);
        assert_eq!(
            applied["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["function", "outcome"]])
        );
        // Counters and histograms reset; the gauge keeps its value.
        let again: Vec<Value> = rec
            .drain_lines(1)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0]["queue_depth"], 7.0);
        assert!(again[0].get("batch_seconds").is_none());
    }
}
