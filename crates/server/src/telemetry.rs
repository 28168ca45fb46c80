//! Logs, traces and metrics. Logs go to stderr (text, or JSON with `--log-format json`; level from
//! `RUST_LOG`, else the caller's default: `info` for the service, `warn` for a command-line tool).
//! Metrics can always be scraped (`crate::prometheus`, served on the plain-text health port).
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans (one per RPC and per store call) and metrics
//! are also exported over OTLP/gRPC; the standard `OTEL_*` variables configure the exporter.

use crate::prometheus::Scrape;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes exported telemetry when dropped.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    scrape: Scrape,
}

impl Telemetry {
    /// The process's metrics, for a Prometheus scrape.
    pub fn scrape(&self) -> Scrape {
        self.scrape.clone()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take() {
            let _ = provider.shutdown();
        }
        if let Some(provider) = self.meter_provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs logging at `default_level` unless `RUST_LOG` says otherwise, and OTLP export when
/// configured. Call once, inside the Tokio runtime.
pub fn init(json: bool, default_level: &str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour only for a person at a terminal, and never when NO_COLOR is set (no-color.org):
    // escape codes in a redirected log are noise to every tool that reads it.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let fmt = if json {
        fmt.json().with_current_span(true).boxed()
    } else {
        fmt.boxed()
    };
    let mut telemetry = Telemetry::default();
    let resource = Resource::builder().with_service_name("caselog").build();
    let mut meters = SdkMeterProvider::builder()
        .with_reader(telemetry.scrape.clone())
        .with_resource(resource.clone());
    let otel = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let spans = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource)
            .build();
        // OTEL_METRICS_EXPORTER=none (the standard variable) keeps metrics off OTLP where
        // Prometheus scrapes /metrics, so that they are not collected twice.
        if std::env::var("OTEL_METRICS_EXPORTER").as_deref() != Ok("none") {
            let metrics = opentelemetry_otlp::MetricExporter::builder().with_tonic().build()?;
            meters = meters.with_reader(PeriodicReader::builder(metrics).build());
        }
        let layer = tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer("caselog"));
        telemetry.tracer_provider = Some(tracer_provider);
        Some(layer)
    } else {
        None
    };
    // Callers' W3C `traceparent` (and `tracestate`) make each RPC's span a child of theirs.
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let meter_provider = meters.build();
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    telemetry.meter_provider = Some(meter_provider);
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).init();
    Ok(telemetry)
}

/// A gauge: its name, its description, and how to read it from the latest sample.
pub(crate) type GaugeSpec<T> = (&'static str, &'static str, fn(&T) -> u64);

/// Registers u64 gauges that report the latest `T` a sampling task stored in `latest` (exported
/// when OTLP export is configured); they stay registered while the returned value is kept.
pub(crate) fn sampled_gauges<T: Send + Sync + 'static>(
    latest: &std::sync::Arc<std::sync::Mutex<T>>,
    specs: &[GaugeSpec<T>],
) -> Vec<opentelemetry::metrics::ObservableGauge<u64>> {
    let meter = opentelemetry::global::meter("caselog");
    specs
        .iter()
        .map(|&(name, description, read)| {
            let latest = latest.clone();
            meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |observer| {
                    if let Ok(sample) = latest.lock() {
                        observer.observe(read(&sample), &[]);
                    }
                })
                .build()
        })
        .collect()
}

/// The span of one RPC: named by its method, with the OpenTelemetry RPC attributes
/// (`rpc.grpc.status_code` is recorded when the response head is known), a child of the caller's
/// span when the request carries W3C trace context (`traceparent`), and its trace id as a field
/// (`trace_id`) for the logs. The application's and the store's spans, made inside it, join the
/// same trace.
pub fn rpc_span(request: &http::Request<()>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("unknown", "unknown"));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        caller = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    // Without an OpenTelemetry layer (no tracer configured) there is nothing to join, and no
    // trace id to log.
    if span.set_parent(parent).is_ok() {
        use opentelemetry::trace::TraceContextExt as _;
        let trace_id = span.context().span().span_context().trace_id();
        if trace_id != opentelemetry::trace::TraceId::INVALID {
            // Every log line inside the call (JSON logs carry the current span) names the trace.
            span.record("trace_id", tracing::field::display(trace_id));
        }
    }
    span
}

/// Reads trace context from HTTP/2 headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Publishes when the certificates in `pem` stop being valid, as the gauge
/// `caselog.tls.certificate.expiry` (Unix seconds of the earliest `notAfter`, labelled
/// `certificate`), so that an alert can fire before a certificate the service presents or trusts
/// runs out. Called again for the same `certificate` (a reload), it replaces the value. Fails,
/// publishing nothing, when `pem` holds no readable certificate.
pub fn publish_certificate_expiry(certificate: &'static str, pem: &[u8]) -> anyhow::Result<i64> {
    let mut earliest: Option<i64> = None;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| anyhow::anyhow!("the {certificate} certificate is not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let parsed = block
            .parse_x509()
            .map_err(|e| anyhow::anyhow!("the {certificate} certificate cannot be read: {e}"))?;
        let not_after = parsed.validity().not_after.timestamp();
        earliest = Some(earliest.map_or(not_after, |held| held.min(not_after)));
    }
    let not_after = earliest.ok_or_else(|| anyhow::anyhow!("the {certificate} PEM holds no certificate"))?;
    certificate_expiries()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(certificate, not_after);
    Ok(not_after)
}

/// The expiry of each published certificate, read by one gauge registered at first use (the
/// meter provider keeps its callback for the life of the process).
fn certificate_expiries() -> &'static std::sync::Mutex<std::collections::BTreeMap<&'static str, i64>> {
    static EXPIRIES: std::sync::OnceLock<std::sync::Mutex<std::collections::BTreeMap<&'static str, i64>>> =
        std::sync::OnceLock::new();
    EXPIRIES.get_or_init(|| {
        let _gauge = opentelemetry::global::meter("caselog")
            .i64_observable_gauge("caselog.tls.certificate.expiry")
            .with_description("When the certificate stops being valid (Unix seconds of its notAfter)")
            .with_unit("s")
            .with_callback(|observer| {
                let held = certificate_expiries()
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                for (certificate, not_after) in held {
                    observer.observe(not_after, &[opentelemetry::KeyValue::new("certificate", certificate)]);
                }
            })
            .build();
        std::sync::Mutex::default()
    })
}
