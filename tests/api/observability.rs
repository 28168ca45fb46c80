//! Metrics for operators: `GET /metrics` on the plain-text health port in the Prometheus text
//! format, with rate, errors and duration per RPC (OpenTelemetry RPC conventions) and the
//! service's own gauges and counters; and a real Prometheus (Debian's package) scraping it.

use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_tests::*;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::Code;

/// A little traffic: two appends, a refused one, two unauthenticated calls (no credentials, a
/// token nobody issued) and an unknown method.
async fn small_load(server: &TestServer) {
    let mut client = server.client();
    client
        .append_events(append("LS25C00001", vec![event("2025-04-17", issued_public(&["c1"]))]))
        .await
        .unwrap();
    client
        .append_events(append("LS25C00002", vec![event("2025-04-17", issued_public(&["c1"]))]))
        .await
        .unwrap();
    let refused = client
        .append_events(append("LS25C00003", vec![event("not-a-date", issued_public(&["c1"]))]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let anonymous = CaseEventServiceClient::new(server.anonymous.clone())
        .get_case(pb::GetCaseRequest {
            case_id: "LS25C00001".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let forged = CaseEventServiceClient::new(server.channel_with("not-a-token-anyone-issued"))
        .get_case(pb::GetCaseRequest {
            case_id: "LS25C00001".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);
    // A made-up path: counted, but under "unknown", whatever its name.
    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    grpc.ready().await.unwrap();
    let made_up: Result<tonic::Response<pb::GetCaseResponse>, _> = grpc
        .unary(
            tonic::Request::new(pb::GetCaseRequest::default()),
            http::uri::PathAndQuery::from_static("/caselog.v1.CaseEventService/NoSuchMethod12345"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_eq!(made_up.unwrap_err().code(), Code::Unimplemented);
}

/// The value of the sample whose line starts with `series` (name and labels exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn red_series(method: &str, status: i32) -> String {
    let service = "caselog.v1.CaseEventService";
    format!(
        "rpc_server_call_duration_seconds_count{{rpc_grpc_status_code=\"{status}\",rpc_method=\"{method}\",rpc_service=\"{service}\",rpc_system=\"grpc\"}}"
    )
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn rate_errors_and_duration_of_every_rpc_are_scraped(pool: PgPool) {
    let (server, metrics) = TestServer::start_scraped(pool).await;
    let (_, before) = http_get(metrics, "/metrics").await;
    small_load(&server).await;
    let (status, text) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE rpc_server_call_duration_seconds histogram"),
        "{text}"
    );
    let grew = |series: &str, by: f64| {
        let was = sample(&before, series).unwrap_or(0.0);
        let now = sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(now - was >= by, "{series}: {was} -> {now}");
    };
    grew(&red_series("AppendEvents", 0), 2.0);
    grew(&red_series("AppendEvents", Code::InvalidArgument as i32), 1.0);
    grew(&red_series("GetCase", Code::Unauthenticated as i32), 2.0);
    // Authentication failures by reason, and the sizes of acknowledged append batches.
    grew("caselog_auth_failures_total{reason=\"no_credentials\"}", 1.0);
    grew("caselog_auth_failures_total{reason=\"malformed_token\"}", 1.0);
    grew("caselog_append_batch_events_count", 2.0);
    grew("caselog_append_batch_events_bucket{le=\"1\"}", 2.0);
    grew(
        "rpc_server_call_duration_seconds_count{rpc_grpc_status_code=\"12\",rpc_method=\"unknown\",rpc_service=\"unknown\",rpc_system=\"grpc\"}",
        1.0,
    );
    assert!(!text.contains("NoSuchMethod12345"), "a made-up method became a label");
    // The service's own instruments are there too, e.g. the group appender's counters.
    assert!(
        sample(&text, "caselog_append_events_total").unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    // The write path's cache holds the case it appended to, and says what it weighs.
    assert!(
        sample(&text, "caselog_write_cache_cases").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "caselog_write_cache_bytes").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    // Both appends were to new cases: each read its case, none found it in the cache.
    grew("caselog_write_cache_read_total", 2.0);
    assert_eq!(
        sample(&text, "caselog_write_cache_found_total"),
        sample(&before, "caselog_write_cache_found_total").or(Some(0.0)),
        "{text}"
    );
    // Health still answers gRPC on the same port.
    let mut health = tonic_health::pb::health_client::HealthClient::new(connect(metrics).await);
    let live = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        live.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // Only /metrics serves them (other paths get gRPC's UNIMPLEMENTED).
    let (_, elsewhere) = http_get(metrics, "/nothing-here").await;
    assert!(!elsewhere.contains("rpc_server_call_duration"), "{elsewhere}");
}

/// Prometheus from the distribution (scripts/ensure-test-tools.sh installs it), or `PROMETHEUS`.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn audit_records_that_cannot_be_written_are_counted(pool: PgPool) {
    // Audit records go through their own pool; closed, no record can be written.
    let audit_pool = sqlx::postgres::PgPoolOptions::new().connect_lazy_with(pool.connect_options().as_ref().clone());
    audit_pool.close().await;
    let log = caselog_store::EventLog::new(pool).with_audit_pool(audit_pool);
    let (server, metrics) = TestServer::start_scraped_on(log).await;
    server.issue_case("LS25C00001").await;
    let (_, before) = http_get(metrics, "/metrics").await;
    let unrecorded = server
        .client()
        .get_case(pb::GetCaseRequest {
            case_id: "LS25C00001".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unrecorded.code(), Code::Unavailable, "{unrecorded:?}");
    let (_, after) = http_get(metrics, "/metrics").await;
    let failures = |text: &str| sample(text, "caselog_audit_write_failures_total").unwrap_or(0.0);
    assert!(failures(&after) - failures(&before) >= 1.0, "{after}");
}

fn prometheus_binary() -> std::path::PathBuf {
    [
        std::env::var("PROMETHEUS").unwrap_or_default(),
        "/usr/bin/prometheus".into(),
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.is_file())
    .expect("no Prometheus: run scripts/ensure-test-tools.sh (scripts/test.sh does), or set PROMETHEUS")
}

/// Stops the Prometheus process however the test ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_real_prometheus_scrapes_the_service(pool: PgPool) {
    let (server, metrics) = TestServer::start_scraped(pool).await;
    small_load(&server).await;
    let dir = std::env::temp_dir().join(format!("caselog-prometheus-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let web: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: caselog\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let _prometheus = Running(
        std::process::Command::new(prometheus_binary())
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Prometheus scrapes every second; its query API answers once a scrape has landed.
    let query = "/api/v1/query?query=sum%20by%20(rpc_method,rpc_grpc_status_code)%20(rpc_server_call_duration_seconds_count%7Brpc_service%3D%22caselog.v1.CaseEventService%22%7D)";
    let started = Instant::now();
    let answer = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Prometheus did not scrape caselog within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        if tokio::net::TcpStream::connect(web).await.is_err() {
            continue;
        }
        let (status, body) = http_get(web, query).await;
        if status == 200 && body.contains("AppendEvents") {
            break body;
        }
    };
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let results = answer["data"]["result"].as_array().unwrap();
    let count = |method: &str, code: &str| {
        results
            .iter()
            .find(|r| r["metric"]["rpc_method"] == method && r["metric"]["rpc_grpc_status_code"] == code)
            .and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok())
    };
    // At least this test's calls (other tests in the same process may add theirs: the meter
    // provider is the process's), and never more than the service itself reports now.
    let (_, direct) = http_get(metrics, "/metrics").await;
    for (method, code, at_least) in [
        ("AppendEvents", "0", 2.0),
        ("AppendEvents", "3", 1.0),
        ("GetCase", "16", 1.0),
    ] {
        let scraped = count(method, code).unwrap_or_else(|| panic!("no {method} {code} in {answer}"));
        let code: i32 = code.parse().unwrap();
        let now = sample(&direct, &red_series(method, code)).unwrap();
        assert!(
            at_least <= scraped && scraped <= now,
            "{method} {code}: {scraped} scraped, {now} now"
        );
    }
    // The target is up, as Prometheus sees it.
    let (_, up) = http_get(web, "/api/v1/query?query=up%7Bjob%3D%22caselog%22%7D").await;
    assert!(up.contains("\"1\""), "{up}");
    drop(_prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The series names an expression file mentions (`caselog_…` and `rpc_…`).
fn series_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("caselog_") || word.starts_with("rpc_server_"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn the_alerting_rules_and_config_are_valid_fire_on_their_conditions_and_name_real_series(pool: PgPool) {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/alerts.yaml");
    let rule_tests = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/alerts.test.yaml");
    let compose_config = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/prometheus.yml");
    let promtool = prometheus_binary().with_file_name("promtool");
    for args in [
        vec!["check", "rules", rules],
        vec!["test", "rules", rule_tests],
        vec!["check", "config", compose_config],
    ] {
        let run = std::process::Command::new(&promtool).args(&args).output().unwrap();
        assert!(
            run.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    // Every series a rule reads is one the service exposes (the certificate's when it serves TLS).
    let (server, metrics) = TestServer::start_scraped(pool).await;
    let mut certificate = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    certificate.not_after = rcgen::date_time_ymd(2031, 1, 2);
    let pem = certificate
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    let not_after = caselog_server::telemetry::publish_certificate_expiry("server", pem.as_bytes()).unwrap();
    assert_eq!(not_after, 1_925_078_400, "2031-01-02T00:00:00Z");
    small_load(&server).await;
    let (_, text) = http_get(metrics, "/metrics").await;
    assert_eq!(
        sample(&text, "caselog_tls_certificate_expiry_seconds{certificate=\"server\"}"),
        Some(1_925_078_400.0),
        "{text}"
    );
    // Exported before any failure (zero in a process where none happened).
    assert!(sample(&text, "caselog_audit_write_failures_total").is_some(), "{text}");
    let exposed: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let dashboard = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/dashboards/caselog.json");
    let dashboard_text = std::fs::read_to_string(dashboard).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    assert!(parsed["panels"].as_array().is_some_and(|panels| panels.len() >= 10));
    let mut named = series_names(&std::fs::read_to_string(rules).unwrap());
    assert!(named.len() >= 5, "{named:?}");
    // The dashboard's panels read exposed series too.
    named.extend(series_names(&dashboard_text));
    for name in named {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            exposed.contains(&base),
            "the rules or the dashboard read {name}, which /metrics does not expose"
        );
    }
}

/// Spans as the SDK finishes them.
#[derive(Debug, Clone, Default)]
struct CollectedSpans(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

impl opentelemetry_sdk::trace::SpanExporter for CollectedSpans {
    async fn export(&self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

fn attribute(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_callers_trace_context_makes_each_rpc_and_its_work_part_of_its_trace(pool: PgPool) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let collected = CollectedSpans::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(collected.clone())
        .build();
    // JSON log lines, as `caselog serve --log-format json` writes them, each call's span
    // closing as one line.
    let logs = LogLines::default();
    let json_logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(logs.clone());
    // This test's thread only (the test runtime runs the server's tasks on it too).
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(json_logs),
    );
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let server = TestServer::start(pool).await;
    // Tests of this binary run on threads of one process and share tracing's per-callsite cache
    // of interest. A callsite first met on another test's thread, which has no subscriber, is
    // cached as of no interest for every thread (a CI run once lost every span of the append that
    // way). So the calls' callsites are met here first, the cache is rebuilt with this
    // subscriber, and only then are the measured calls made.
    server.issue_case("LS25C00002").await;
    let _ = server
        .client()
        .get_case(pb::GetCaseRequest {
            case_id: "LS25C09998".into(),
        })
        .await;
    tracing::callsite::rebuild_interest_cache();
    // The warm-up's spans end as their responses finish; let them, then forget them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = provider.force_flush();
    collected.0.lock().unwrap().clear();
    logs.0.lock().unwrap().clear();

    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut traced = tonic::Request::new(append("LS25C00001", vec![event("2025-04-17", issued_public(&["c1"]))]));
    traced.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    server.client().append_events(traced).await.unwrap();
    let untraced = server
        .client()
        .get_case(pb::GetCaseRequest {
            case_id: "LS25C09999".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(untraced.code(), Code::NotFound);
    let _ = provider.force_flush();

    let spans = collected.0.lock().unwrap().clone();
    let rpc = spans
        .iter()
        .find(|s| {
            s.name == "caselog.v1.CaseEventService/AppendEvents" && s.span_context.trace_id().to_string() == trace_id
        })
        .unwrap_or_else(|| {
            panic!(
                "no AppendEvents span in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(rpc.span_context.trace_id().to_string(), trace_id);
    assert_eq!(rpc.parent_span_id.to_string(), caller_span);
    assert!(rpc.parent_span_is_remote);
    assert_eq!(rpc.span_kind, opentelemetry::trace::SpanKind::Server);
    assert_eq!(attribute(rpc, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(rpc, "rpc.service").as_deref(),
        Some("caselog.v1.CaseEventService")
    );
    assert_eq!(attribute(rpc, "rpc.method").as_deref(), Some("AppendEvents"));
    assert_eq!(attribute(rpc, "rpc.grpc.status_code").as_deref(), Some("0"));
    // The application's and the store's spans of that call are in the caller's trace.
    let inside: Vec<&str> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == rpc.span_context.trace_id() && s.name != rpc.name)
        .map(|s| s.name.as_ref())
        .collect();
    assert!(inside.contains(&"append"), "spans in the caller's trace: {inside:?}");
    // A call without trace context starts a trace of its own, and says how it ended.
    let get_case = spans
        .iter()
        .find(|s| s.name == "caselog.v1.CaseEventService/GetCase")
        .unwrap();
    assert_ne!(get_case.span_context.trace_id(), rpc.span_context.trace_id());
    assert_eq!(attribute(get_case, "rpc.grpc.status_code").as_deref(), Some("5"));
    // The logs name the trace, so a log line leads to its trace and back.
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let traced_lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|line| line.contains("AppendEvents"))
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        traced_lines.iter().any(|line| line["span"]["trace_id"] == trace_id),
        "no log line of the append names its trace: {text}"
    );
}

/// Log output kept in memory.
#[derive(Debug, Clone, Default)]
struct LogLines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogLines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogLines {
    type Writer = LogLines;

    fn make_writer(&'a self) -> LogLines {
        self.clone()
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_idle_service_traces_nothing(pool: PgPool) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let collected = CollectedSpans::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(collected.clone())
        .build();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test"))),
    );
    let server = TestServer::start(pool).await;
    // One append, projected; then quiet.
    server.issue_case("LS25C00001").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = provider.force_flush();
    let settled = collected.0.lock().unwrap().len();
    assert!(
        collected
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.name == "apply_next_page_with"),
        "the append was projected under a span"
    );
    // Health checks every 200 ms here, the projector rechecks every second: none of it traced.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _ = provider.force_flush();
    let spans = collected.0.lock().unwrap();
    let idle: Vec<&str> = spans[settled..].iter().map(|s| s.name.as_ref()).collect();
    assert!(idle.is_empty(), "spans of an idle service over 4 s: {idle:?}");
}
