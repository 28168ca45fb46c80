//! Test kit: a real caselog server on 127.0.0.1:0 over a real PostgreSQL database (one per test,
//! from `#[sqlx::test]`), a real tonic client, and builders for wire events.

#![allow(clippy::unwrap_used)]

pub mod cluster;
pub mod security;

use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_api::v1::event_payload::Kind;
use caselog_server::{Security, ServerLimits};
use caselog_store::EventLog;
pub use security::{AuthChannel, HARNESS_TOKEN, Pki, TokenSpec, dev_token, with_token};
use sqlx::PgPool;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;
use uuid::Uuid;

/// A running server; shut down when dropped.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    /// Carries the harness token (migration and administrator grants).
    pub channel: AuthChannel,
    /// Carries no credentials.
    pub anonymous: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(pool: PgPool) -> TestServer {
        TestServer::start_with(
            pool,
            ServerLimits {
                health_interval: Duration::from_millis(200),
                ..ServerLimits::default()
            },
        )
        .await
    }

    pub async fn start_with(pool: PgPool, limits: ServerLimits) -> TestServer {
        TestServer::start_on(EventLog::new(pool), limits).await
    }

    /// A server on `log` as given (its pools, say).
    pub async fn start_on(log: EventLog, limits: ServerLimits) -> TestServer {
        TestServer::start_authenticating(log, limits, security::authenticator(false, 64)).await
    }

    /// A server on `log` whose callers `authenticator` knows (kept by the caller, to change it).
    pub async fn start_authenticating(
        log: EventLog,
        limits: ServerLimits,
        authenticator: std::sync::Arc<caselog_server::auth::Authenticator>,
    ) -> TestServer {
        let security = Security {
            authenticator,
            tls: None,
            plaintext_health: None,
            scrape: None,
        };
        let (addr, shutdown, handle) = TestServer::spawn(log, limits, security).await;
        let anonymous = connect(addr).await;
        TestServer::new(addr, anonymous, shutdown, handle)
    }

    fn new(addr: SocketAddr, anonymous: Channel, shutdown: oneshot::Sender<()>, handle: JoinHandle<()>) -> TestServer {
        TestServer {
            addr,
            channel: with_token(anonymous.clone(), HARNESS_TOKEN),
            anonymous,
            shutdown: Some(shutdown),
            handle: Some(handle),
        }
    }

    /// A plain server whose process-wide meter provider is scraped, serving gRPC health and
    /// `GET /metrics` in plain text on the returned address.
    pub async fn start_scraped(pool: PgPool) -> (TestServer, SocketAddr) {
        TestServer::start_scraped_on(EventLog::new(pool)).await
    }

    /// As [`TestServer::start_scraped`], on `log` as given (its pools, say).
    pub async fn start_scraped_on(log: EventLog) -> (TestServer, SocketAddr) {
        static SCRAPE: std::sync::OnceLock<caselog_server::prometheus::Scrape> = std::sync::OnceLock::new();
        let scrape = SCRAPE
            .get_or_init(|| {
                let scrape = caselog_server::prometheus::Scrape::default();
                let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                    .with_reader(scrape.clone())
                    .build();
                opentelemetry::global::set_meter_provider(provider);
                scrape
            })
            .clone();
        let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = health.local_addr().unwrap();
        let security = Security {
            authenticator: security::authenticator(false, 64),
            tls: None,
            plaintext_health: Some(health),
            scrape: Some(scrape),
        };
        let limits = ServerLimits {
            health_interval: Duration::from_millis(200),
            ..ServerLimits::default()
        };
        let (addr, shutdown, handle) = TestServer::spawn(log, limits, security).await;
        let anonymous = connect(addr).await;
        (TestServer::new(addr, anonymous, shutdown, handle), metrics_addr)
    }

    /// A server on TLS with client certificates from `pki`; `channel` is a TLS channel without a
    /// client certificate carrying the harness token.
    pub async fn start_tls(pool: PgPool, pki: &Pki, max_concurrent_per_client: usize) -> TestServer {
        TestServer::start_tls_with(pool, pki, max_concurrent_per_client, None).await
    }

    /// As `start_tls`, also serving plain-text health on `health`.
    pub async fn start_tls_with(
        pool: PgPool,
        pki: &Pki,
        max_concurrent_per_client: usize,
        health: Option<tokio::net::TcpListener>,
    ) -> TestServer {
        TestServer::start_tls_serving(pool, pki, pki.server_tls(), max_concurrent_per_client, health).await
    }

    /// As `start_tls_with`, serving `tls` (which the caller keeps, to replace its certificates);
    /// `anonymous` trusts `pki`'s CA.
    pub async fn start_tls_serving(
        pool: PgPool,
        pki: &Pki,
        tls: std::sync::Arc<caselog_server::tls::ServerTls>,
        max_concurrent_per_client: usize,
        health: Option<tokio::net::TcpListener>,
    ) -> TestServer {
        let security = Security {
            authenticator: security::authenticator(true, max_concurrent_per_client),
            tls: Some(tls),
            plaintext_health: health,
            scrape: None,
        };
        let (addr, shutdown, handle) = TestServer::spawn(EventLog::new(pool), ServerLimits::default(), security).await;
        let mut anonymous = None;
        for _ in 0..50 {
            if let Ok(channel) = pki.channel(addr, None).await {
                anonymous = Some(channel);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let anonymous = anonymous.expect("the TLS server accepts connections");
        TestServer::new(addr, anonymous, shutdown, handle)
    }

    async fn spawn(
        log: EventLog,
        limits: ServerLimits,
        security: Security,
    ) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            caselog_server::run(listener, log, limits, security, shutdown)
                .await
                .unwrap();
        });
        (addr, tx, handle)
    }

    pub fn client(&self) -> CaseEventServiceClient<AuthChannel> {
        CaseEventServiceClient::new(self.channel.clone())
    }

    /// A channel carrying `token`.
    pub fn channel_with(&self, token: &str) -> AuthChannel {
        with_token(self.anonymous.clone(), token)
    }

    /// Appends `events` to `case_id` as the caller of `token`.
    pub async fn append_as(&self, token: &str, case_id: &str, events: Vec<pb::NewEvent>) -> Result<(), tonic::Status> {
        CaseEventServiceClient::new(self.channel_with(token))
            .append_events(append(case_id, events))
            .await
            .map(|_| ())
    }

    /// Issues a public-law case with one child "c1" on 17 April 2025.
    pub async fn issue_case(&self, case_id: &str) -> pb::AppendEventsResponse {
        self.client()
            .append_events(append(case_id, vec![event("2025-04-17", issued_public(&["c1"]))]))
            .await
            .unwrap()
            .into_inner()
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves `service` as the `CaseEventService` on 127.0.0.1, behind the harness's
/// authentication: for tests that put a wrapper in front of the real service.
pub async fn serve_case_events<S>(service: S) -> (JoinHandle<Result<(), tonic::transport::Error>>, SocketAddr)
where
    S: caselog_api::v1::case_event_service_server::CaseEventService,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(caselog_server::auth::AuthLayer::new(security::authenticator(false, 64)))
            .add_service(caselog_api::v1::case_event_service_server::CaseEventServiceServer::new(
                service,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (server, addr)
}

/// `count` new cases "LS0", "LS1", …, each issued with child "c1", who is then seen.
pub fn new_cases(count: usize) -> pb::AppendEventsToCasesRequest {
    pb::AppendEventsToCasesRequest {
        batches: (0..count)
            .map(|c| {
                append(
                    &format!("LS{c}"),
                    vec![
                        event("2025-04-17", issued_public(&["c1"])),
                        event("2025-05-01", seen("c1")),
                    ],
                )
            })
            .collect(),
    }
}

/// A channel to `addr`, retried briefly while the server starts.
pub async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    for _ in 0..50 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server at {addr} did not accept connections");
}

/// A new event with a fresh id.
pub fn event(occurred_on: &str, kind: Kind) -> pb::NewEvent {
    pb::NewEvent {
        event_id: Uuid::new_v4().to_string(),
        occurred_on: occurred_on.to_owned(),
        payload: Some(pb::EventPayload { kind: Some(kind) }),
        metadata: None,
    }
}

pub fn child(child_id: &str, birth_month: &str) -> pb::Child {
    pb::Child {
        child_id: child_id.to_owned(),
        birth_month: birth_month.to_owned(),
    }
}

/// A public-law s31 care case at Leeds (service area A5) naming the given children.
pub fn issued_public(children: &[&str]) -> Kind {
    Kind::CaseIssued(pb::CaseIssued {
        law_type: pb::LawType::Public as i32,
        application_types: vec![pb::ApplicationType::S31Care as i32],
        court_code: "LS".into(),
        service_area: "A5".into(),
        local_authority_code: "E08000035".into(),
        children: children.iter().map(|c| child(c, "2019-06")).collect(),
        received_on: String::new(),
    })
}

/// A private-law child arrangements case.
pub fn issued_private(children: &[&str]) -> Kind {
    Kind::CaseIssued(pb::CaseIssued {
        law_type: pb::LawType::Private as i32,
        application_types: vec![pb::ApplicationType::S8ChildArrangements as i32],
        court_code: "MA".into(),
        service_area: "A3".into(),
        local_authority_code: String::new(),
        children: children.iter().map(|c| child(c, "2016-02")).collect(),
        received_on: String::new(),
    })
}

pub fn allocated(practitioner_id: &str, role: pb::AllocationRole) -> Kind {
    Kind::CaseAllocated(pb::CaseAllocated {
        practitioner_id: practitioner_id.into(),
        role: role as i32,
    })
}

pub fn seen(child_id: &str) -> Kind {
    Kind::ChildSeen(pb::ChildSeen {
        child_id: child_id.into(),
        mode: pb::SeenMode::InPerson as i32,
    })
}

pub fn joined(child_id: &str) -> Kind {
    Kind::ChildJoined(pb::ChildJoined {
        child_id: child_id.into(),
        birth_month: "2023-01".into(),
    })
}

pub fn hearing(listed_for: &str) -> Kind {
    Kind::HearingListed(pb::HearingListed {
        hearing_type: pb::HearingType::Cmh as i32,
        listed_for: listed_for.into(),
    })
}

pub fn ordered(report_id: &str, report_type: pb::ReportType, due_on: &str) -> Kind {
    Kind::ReportOrdered(pb::ReportOrdered {
        report_id: report_id.into(),
        report_type: report_type as i32,
        due_on: due_on.into(),
    })
}

pub fn extended(report_id: &str, due_on: &str) -> Kind {
    Kind::FilingDateExtended(pb::FilingDateExtended {
        report_id: report_id.into(),
        due_on: due_on.into(),
    })
}

pub fn filed(report_id: &str, report_type: pb::ReportType) -> Kind {
    Kind::ReportFiled(pb::ReportFiled {
        report_id: report_id.into(),
        report_type: report_type as i32,
    })
}

pub fn closed(outcome: pb::CaseOutcome) -> Kind {
    Kind::CaseClosed(pb::CaseClosed {
        outcome: outcome as i32,
    })
}

pub fn voided(event: &pb::NewEvent, reason: pb::VoidReason) -> Kind {
    Kind::EventVoided(pb::EventVoided {
        voided_event_id: event.event_id.clone(),
        reason: reason as i32,
    })
}

pub fn append(case_id: &str, events: Vec<pb::NewEvent>) -> pb::AppendEventsRequest {
    pb::AppendEventsRequest {
        case_id: case_id.into(),
        events,
        expected_version: None,
    }
}

/// `ErrorInfo.reason` of a status (empty when absent).
pub fn reason(status: &tonic::Status) -> String {
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

/// `ErrorInfo.metadata[key]` of a status.
pub fn error_metadata(status: &tonic::Status, key: &str) -> Option<String> {
    status
        .get_details_error_info()
        .and_then(|i| i.metadata.get(key).cloned())
}

/// The fields named by the status's `BadRequest`.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Rows in the events table.
pub async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every metric of the financial year starting in April `year`, grouped by law type, unsuppressed
/// (what the read model is asked directly, with no gRPC between).
pub fn every_metric_by_law_type(year: i32) -> caselog_projections::MetricsQuery {
    use caselog_projections::{Dimension, MetricId, MetricsQuery, Period};
    MetricsQuery {
        metrics: MetricId::ALL.to_vec(),
        period: Period::financial_year(year).expect("a financial year"),
        snapshot: None,
        group_by: vec![Dimension::LawType],
        filters: Vec::new(),
        suppress_small_numbers: false,
        settings: Default::default(),
    }
}

/// National-shaped history from the generator (three cases a working day) ending on
/// `last_day` and `days` long, loaded straight into the log; the position it ends at.
pub async fn load_history(pool: &PgPool, seed: u64, last_day: chrono::NaiveDate, days: u64) -> u64 {
    use caselog_cli::generate::{GenerateOptions, LineOrder, load};
    let options = GenerateOptions {
        workload: caselog_workload::WorkloadSettings {
            seed,
            first_day: last_day - chrono::Days::new(days),
            last_day,
            cases_per_working_day: 3.0,
        },
        resend_rate: 0.0,
        order: LineOrder::Case,
    };
    let log = EventLog::new(pool.clone());
    load(&options, &log, "test-loader").await.unwrap();
    log.horizon().await.unwrap().safe.get()
}

/// The audit trail as an administrator reads it (the first 1,000 records).
pub async fn audit_records(server: &TestServer) -> Vec<pb::AuditRecord> {
    caselog_api::v1::admin_service_client::AdminServiceClient::new(server.channel.clone())
        .list_audit_records(pb::ListAuditRecordsRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records
}

/// A plain HTTP/1.1 GET on loopback: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the HTTP response ends within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // Bodies may come chunked: keep the chunks' contents.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || after.len() < size {
                break;
            }
            out.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

/// Every row of `case_facts`: the case id and its facts as JSON (decoded from the stored form,
/// or the JSON column where a row has none).
pub async fn stored_facts(pool: &PgPool) -> Vec<(String, serde_json::Value)> {
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT case_id, coalesce(stored, convert_to(facts::text, 'UTF8')) FROM case_facts ORDER BY case_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(case_id, stored)| {
            let facts = caselog_app::stored_facts::decode_row(&stored).unwrap();
            (case_id, serde_json::to_value(facts).unwrap())
        })
        .collect()
}

/// Overwrites a case's `case_facts` row with `facts` (JSON), stored as the service stores them
/// (the JSON column, empty since migration 0011, left as it was).
pub async fn overwrite_stored_facts(pool: &PgPool, case_id: &str, facts: serde_json::Value) {
    let facts = serde_json::from_value(facts).unwrap();
    sqlx::query("UPDATE case_facts SET stored = $1 WHERE case_id = $2")
        .bind(caselog_app::stored_facts::encode(&facts).unwrap())
        .bind(case_id)
        .execute(pool)
        .await
        .unwrap();
}
