//! Prometheus scraping of the process's OpenTelemetry metrics: a reader on the meter provider
//! that collects at each scrape (cumulative, so counters and histograms only grow), rendered in
//! the Prometheus text exposition format, and served at `GET /metrics` on the plain-text health
//! port (`caselog serve --health-listen`).
//!
//! Names follow the OpenTelemetry-to-Prometheus convention: dots become underscores, a unit of
//! seconds or bytes is appended (`_seconds`, `_bytes`), monotonic sums end in `_total`, and
//! attributes become labels with dots turned to underscores (`rpc.method` → `rpc_method`).

use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};
use std::fmt::Write as _;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The reader shared between the meter provider (which owns a clone) and the scrape endpoint.
#[derive(Debug, Clone)]
pub struct Scrape {
    reader: Arc<ManualReader>,
}

impl Default for Scrape {
    fn default() -> Scrape {
        Scrape {
            reader: Arc::new(
                ManualReader::builder()
                    .with_temporality(Temporality::Cumulative)
                    .build(),
            ),
        }
    }
}

impl MetricReader for Scrape {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.reader.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.reader.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.reader.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.reader.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.reader.temporality(kind)
    }
}

impl Scrape {
    /// Every metric now, in the Prometheus text format (empty when collection fails, e.g.
    /// after shutdown).
    pub fn render(&self) -> String {
        let mut metrics = ResourceMetrics::default();
        if self.reader.collect(&mut metrics).is_err() {
            return String::new();
        }
        let mut out = String::new();
        for scope in metrics.scope_metrics() {
            for metric in scope.metrics() {
                write_metric(&mut out, metric);
            }
        }
        out
    }
}

/// A Prometheus metric or label name: letters, digits and underscores, not starting with a digit.
fn sanitized(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn base_name(metric: &Metric) -> String {
    let name = sanitized(metric.name());
    let suffix = match metric.unit() {
        "s" => "_seconds",
        "ms" => "_milliseconds",
        "By" => "_bytes",
        _ => "",
    };
    if suffix.is_empty() || name.ends_with(suffix) {
        name
    } else {
        name + suffix
    }
}

fn escaped(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `{a="1",b="2"}` from attributes (and `extra`, e.g. a bucket's `le`), or nothing.
fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>, extra: Option<(&str, String)>) -> String {
    let mut pairs: Vec<String> = attributes
        .map(|kv| {
            let value = match &kv.value {
                Value::String(s) => s.as_str().to_owned(),
                other => other.to_string(),
            };
            format!("{}=\"{}\"", sanitized(kv.key.as_str()), escaped(&value))
        })
        .collect();
    pairs.sort();
    if let Some((key, value)) = extra {
        pairs.push(format!("{key}=\"{value}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn number(x: f64) -> String {
    if x.is_infinite() {
        if x > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{x}")
    }
}

fn write_metric(out: &mut String, metric: &Metric) {
    match metric.data() {
        AggregatedMetrics::F64(data) => write_data(out, metric, data, |x| x),
        AggregatedMetrics::U64(data) => write_data(out, metric, data, |x| x as f64),
        AggregatedMetrics::I64(data) => write_data(out, metric, data, |x| x as f64),
    }
}

/// One series of single-valued points (a gauge, or a sum as counter or gauge).
fn write_points<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    points: impl Iterator<Item = (impl Iterator<Item = &'a KeyValue>, f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (attributes, value) in points {
        let _ = writeln!(out, "{name}{} {}", labels(attributes, None), number(value));
    }
}

fn write_data<T: Copy>(out: &mut String, metric: &Metric, data: &MetricData<T>, as_f64: fn(T) -> f64) {
    let base = base_name(metric);
    let help = escaped(metric.description());
    // Writing into a String cannot fail.
    match data {
        MetricData::Gauge(gauge) => {
            let points = gauge.data_points().map(|p| (p.attributes(), as_f64(p.value())));
            write_points(out, &base, "gauge", &help, points);
        }
        MetricData::Sum(sum) => {
            let points = sum.data_points().map(|p| (p.attributes(), as_f64(p.value())));
            if sum.is_monotonic() {
                write_points(out, &format!("{base}_total"), "counter", &help, points);
            } else {
                write_points(out, &base, "gauge", &help, points);
            }
        }
        MetricData::Histogram(histogram) => {
            let _ = writeln!(out, "# HELP {base} {help}\n# TYPE {base} histogram");
            for point in histogram.data_points() {
                let mut cumulative = 0;
                let bounds: Vec<f64> = point.bounds().collect();
                for (i, count) in point.bucket_counts().enumerate() {
                    cumulative += count;
                    let le = bounds.get(i).copied().unwrap_or(f64::INFINITY);
                    let _ = writeln!(
                        out,
                        "{base}_bucket{} {cumulative}",
                        labels(point.attributes(), Some(("le", number(le))))
                    );
                }
                let own = labels(point.attributes(), None);
                let _ = writeln!(out, "{base}_sum{own} {}", number(as_f64(point.sum())));
                let _ = writeln!(out, "{base}_count{own} {}", point.count());
            }
        }
        MetricData::ExponentialHistogram(_) => {
            // Not used by caselog's instruments; Prometheus's text format has no equivalent.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    #[test]
    fn counters_gauges_and_histograms_are_exposed_as_prometheus_reads_them() {
        let scrape = Scrape::default();
        let provider = SdkMeterProvider::builder().with_reader(scrape.clone()).build();
        let meter = provider.meter("test");
        let calls = meter
            .u64_counter("caselog.test.calls")
            .with_description("calls \"seen\"")
            .build();
        calls.add(2, &[KeyValue::new("rpc.method", "GetCase")]);
        calls.add(3, &[KeyValue::new("rpc.method", "GetCase")]);
        let duration = meter
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_boundaries(vec![0.01, 0.1])
            .build();
        for seconds in [0.005, 0.05, 0.5] {
            duration.record(seconds, &[KeyValue::new("rpc.grpc.status_code", 0_i64)]);
        }
        let _gauge = meter
            .u64_observable_gauge("caselog.test.cases")
            .with_callback(|observer| observer.observe(7, &[]))
            .build();
        let text = scrape.render();
        assert!(text.contains("# TYPE caselog_test_calls_total counter"), "{text}");
        assert!(
            text.contains("caselog_test_calls_total{rpc_method=\"GetCase\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("# HELP caselog_test_calls_total calls \\\"seen\\\""),
            "{text}"
        );
        assert!(
            text.contains("# TYPE rpc_server_call_duration_seconds histogram"),
            "{text}"
        );
        for (le, count) in [("0.01", 1), ("0.1", 2), ("+Inf", 3)] {
            let line =
                format!("rpc_server_call_duration_seconds_bucket{{rpc_grpc_status_code=\"0\",le=\"{le}\"}} {count}");
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(
            text.contains("rpc_server_call_duration_seconds_count{rpc_grpc_status_code=\"0\"} 3"),
            "{text}"
        );
        assert!(text.contains("caselog_test_cases 7"), "{text}");
    }
}
