//! The caselog gRPC service: the `caselog.v1` services over the application (`caselog-app`),
//! authentication and per-client limits, health, reflection and telemetry. Errors become
//! `tonic::Status` in `error.rs` only. **Architecture invariant:** no SQL here; everything that
//! reads or writes the database goes through `caselog-app` (or `caselog-store`'s types).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod convert;
pub mod deadline;
pub mod error;
pub mod feed;
pub mod metrics;
pub mod prometheus;
mod report;
mod rpc_metrics;
pub mod service;
pub mod telemetry;
pub mod tls;
mod units;

use caselog_app::projector;

use auth::{AuthLayer, Authenticator};
use caselog_api::v1::admin_service_server::AdminServiceServer;
use caselog_api::v1::case_event_service_server::CaseEventServiceServer;
use caselog_api::v1::event_feed_service_server::EventFeedServiceServer;
use caselog_api::v1::metrics_service_server::MetricsServiceServer;
use caselog_store::EventLog;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

pub use feed::{EventFeed, FeedSettings};
pub use service::{CaseEvents, SOURCE_HEADER};

/// The health service name of liveness probes: SERVING while the process answers.
const LIVENESS: &str = "liveness";

/// The services whose health follows the database ("" is the server as a whole). "" and the
/// metrics service also wait for the read model's first load, so that a replica takes no
/// traffic (readiness probes ask for "") before it can answer a query quickly.
const DATABASE_BACKED: [&str; 5] = [
    "",
    "caselog.v1.CaseEventService",
    "caselog.v1.EventFeedService",
    "caselog.v1.MetricsService",
    "caselog.v1.AdminService",
];

/// The Prometheus text exposition format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a shutdown waits for calls and streams before closing their connections.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Limits the server applies to every connection and request.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Requests running longer are cancelled with DEADLINE_EXCEEDED (a client deadline that is
    /// shorter wins).
    pub request_timeout: Duration,
    /// Largest accepted request message; a full 1,000-event batch is well under 2 MiB.
    pub max_request_bytes: usize,
    /// Concurrent requests per HTTP/2 connection.
    pub concurrency_per_connection: usize,
    /// How often health checks the database.
    pub health_interval: Duration,
    /// The most memory, in bytes, recently written cases may take so that the next append to
    /// one needs no read.
    pub case_cache_bytes: usize,
    /// When the read model is written as a snapshot for servers that start later.
    pub snapshots: caselog_app::read_model::SnapshotPolicy,
    /// How concurrent appends are grouped into shared statements.
    pub group_appends: caselog_store::GroupSettings,
    pub feed: FeedSettings,
    pub projector: projector::ProjectorSettings,
    /// After the shutdown signal, how long in-flight calls and open streams have before the
    /// remaining connections are closed.
    pub shutdown_grace: Duration,
    /// The targets figures are measured against (QueryMetrics rows, reports): the catalogue's
    /// unless `caselog serve --targets` names a file.
    pub targets: Arc<caselog_projections::targets::Targets>,
    /// How long ago an `as_of` instant must be to count as settled (see
    /// [`caselog_app::read_model::SETTLED_AFTER`]).
    pub as_of_settled_after: Duration,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            request_timeout: Duration::from_secs(30),
            max_request_bytes: 8 * 1024 * 1024,
            concurrency_per_connection: 64,
            health_interval: Duration::from_secs(2),
            case_cache_bytes: caselog_app::ingest::DEFAULT_CASE_CACHE_BYTES,
            snapshots: caselog_app::read_model::SnapshotPolicy::default(),
            group_appends: caselog_store::GroupSettings::default(),
            feed: FeedSettings::default(),
            projector: projector::ProjectorSettings::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            targets: Arc::new(caselog_projections::targets::Targets::catalogue()),
            as_of_settled_after: caselog_app::read_model::SETTLED_AFTER,
        }
    }
}

/// How the server knows its callers: the authenticator every request passes, and TLS (with
/// client certificates when the authenticator accepts them).
#[derive(Debug)]
pub struct Security {
    pub authenticator: Arc<Authenticator>,
    /// TLS on the gRPC port (replaceable while serving); plain HTTP/2 without.
    pub tls: Option<Arc<tls::ServerTls>>,
    /// Serves gRPC health alone, in plain text and without credentials, for probes that cannot
    /// do mutual TLS.
    pub plaintext_health: Option<TcpListener>,
    /// Served as `GET /metrics` (Prometheus text format) on the plain-text health listener.
    pub scrape: Option<prometheus::Scrape>,
}

/// Serves gRPC on `listener` until `shutdown` completes, then drains in-flight requests.
/// The listener is passed in so that tests can bind port 0.
pub async fn run(
    listener: TcpListener,
    log: EventLog,
    limits: ServerLimits,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // Exported from the start, at zero: an alert on its increase then works from the first failure.
    audit::count_audit_write_failure(0);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // tonic-health starts "" as SERVING; nothing is served until the database has answered.
    for service in DATABASE_BACKED {
        health_reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    // For liveness probes: the process answers, whatever the database does.
    health_reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(caselog_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // So that generic clients can decode the `ErrorInfo` and `BadRequest` of every error.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(caselog_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let signalling_task = tokio::spawn(log.clone().run_feed_signalling());
    let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
    let (loaded_tx, loaded_rx) = tokio::sync::watch::channel(false);
    let mut loaded = loaded_rx.clone();
    let health_task = tokio::spawn(watch_database(
        log.clone(),
        health_reporter,
        limits.health_interval,
        (loaded_rx, draining_rx.clone()),
    ));
    let event_feed = EventFeed::new(log.clone(), limits.feed.clone(), draining_rx.clone());
    let metrics_task = tokio::spawn(event_feed.clone().publish_metrics(Duration::from_secs(10)));
    let feed = EventFeedServiceServer::new(event_feed);
    let projector_task = tokio::spawn(projector::run(log.clone(), limits.projector.clone()));
    let metrics_service = metrics::Metrics::new(log.clone(), limits.targets.clone(), limits.as_of_settled_after);
    let load_task = tokio::spawn(
        metrics_service
            .clone()
            .load_read_model(limits.health_interval.max(Duration::from_secs(1)), loaded_tx),
    );
    let read_model_task = tokio::spawn(
        metrics_service
            .clone()
            .publish_read_model_metrics(Duration::from_secs(10)),
    );
    let snapshot_task = tokio::spawn({
        let read_model = metrics_service.read_model();
        async move {
            if loaded.wait_for(|done| *done).await.is_ok() {
                read_model.keep_snapshots(limits.snapshots).await;
            }
        }
    });
    let metrics = MetricsServiceServer::new(metrics_service).max_decoding_message_size(limits.max_request_bytes);
    let admin = AdminServiceServer::new(admin::Admin::new(log.clone(), draining_rx.clone()))
        .max_decoding_message_size(limits.max_request_bytes);
    let feed = feed.max_decoding_message_size(limits.max_request_bytes);
    let shutdown = async move {
        shutdown.await;
        let _ = draining_tx.send(true);
    };
    let scrape = security.scrape;
    let health_only_task = security.plaintext_health.map(|listener| {
        let mut draining = draining_rx.clone();
        let mut routes = tonic::service::Routes::new(health_service.clone());
        if let Some(scrape) = scrape {
            let metrics = axum::routing::get(move || {
                let text = scrape.render();
                async move { ([(http::header::CONTENT_TYPE, PROMETHEUS_TEXT)], text) }
            });
            routes = routes.into_axum_router().route("/metrics", metrics).into();
        }
        tokio::spawn(async move {
            info!(address = ?listener.local_addr().ok(), "serving plain-text gRPC health and GET /metrics");
            let stopped = async move {
                let _ = draining.wait_for(|d| *d).await;
            };
            // HTTP/1.1 as well, for Prometheus; gRPC health stays HTTP/2.
            if let Err(err) = Server::builder()
                .accept_http1(true)
                .add_routes(routes)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped)
                .await
            {
                warn!(error = %err, "plain-text health server failed");
            }
        })
    });
    let case_events = CaseEvents::with_settings(log, limits.case_cache_bytes, limits.group_appends);
    let append_metrics_task = tokio::spawn(case_events.clone().publish_append_metrics());
    let case_events = CaseEventServiceServer::new(case_events).max_decoding_message_size(limits.max_request_bytes);
    info!(address = %listener.local_addr()?, "serving gRPC");
    // Small request/response exchanges must not wait on Nagle's algorithm (40 ms stalls);
    // tonic sets TCP_NODELAY only on listeners it binds itself.
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        if let Ok(stream) = &stream {
            let _ = stream.set_nodelay(true);
        }
        stream
    });
    // No `timeout` here: `DeadlineLayer` enforces it, answering DEADLINE_EXCEEDED.
    let router = Server::builder()
        .concurrency_limit_per_connection(limits.concurrency_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .trace_fn(telemetry::rpc_span)
        .layer(rpc_metrics::RpcMetricsLayer::default())
        .layer(deadline::DeadlineLayer::new(limits.request_timeout))
        .layer(AuthLayer::new(security.authenticator))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(case_events)
        .add_service(feed)
        .add_service(metrics)
        .add_service(admin);
    let serving: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match security.tls {
            Some(tls) => Box::pin(router.serve_with_incoming_shutdown(tls::incoming(tls, incoming), shutdown)),
            None => Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown)),
        };
    // tonic waits for every connection to end, and a client's stream (a health Watch, say) may
    // never end: after the grace period the connections left are closed.
    let grace = limits.shutdown_grace;
    let mut draining = draining_rx.clone();
    let grace_over = async move {
        let _ = draining.wait_for(|d| *d).await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        result = serving => result,
        () = grace_over => {
            warn!(grace_secs = grace.as_secs_f64(), "calls or streams still open after the grace period; closing their connections");
            Ok(())
        }
    };
    health_task.abort();
    load_task.abort();
    signalling_task.abort();
    metrics_task.abort();
    read_model_task.abort();
    append_metrics_task.abort();
    snapshot_task.abort();
    projector_task.abort();
    if let Some(task) = health_only_task {
        task.abort();
    }
    info!("server stopped");
    Ok(result?)
}

/// Reports NOT_SERVING while the database does not answer, SERVING once it does, and
/// NOT_SERVING for good from the moment the server starts draining, so that load balancers
/// stop sending calls at once (`liveness` stays SERVING: the process is alive until it exits).
async fn watch_database(
    log: EventLog,
    reporter: HealthReporter,
    interval: Duration,
    (loaded, mut draining): (tokio::sync::watch::Receiver<bool>, tokio::sync::watch::Receiver<bool>),
) {
    let checking = async {
        database_health(&log, &reporter, interval, loaded).await;
    };
    tokio::select! {
        () = checking => {}
        _ = draining.wait_for(|d| *d) => {}
    }
    for service in DATABASE_BACKED {
        reporter.set_service_status(service, ServingStatus::NotServing).await;
    }
    // Watchers have been told. Their streams are then ended, with OK after that last status, so
    // that an open Watch neither waits for the grace period nor ends with a broken connection.
    tokio::time::sleep(WATCHERS_TOLD_WITHIN).await;
    let mut reporter = reporter;
    for service in DATABASE_BACKED.iter().chain(&[LIVENESS]) {
        reporter.clear_service_status(service).await;
    }
}

/// How long health watchers have to receive NOT_SERVING before their streams end on shutdown
/// (a Check then answers NOT_FOUND).
const WATCHERS_TOLD_WITHIN: Duration = Duration::from_millis(500);

async fn database_health(
    log: &EventLog,
    reporter: &HealthReporter,
    interval: Duration,
    mut loaded: tokio::sync::watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        let database = match tokio::time::timeout(interval.max(Duration::from_secs(1)), log.ping()).await {
            Ok(Ok(())) => ServingStatus::Serving,
            Ok(Err(err)) => {
                warn!(error = %caselog_app::error::chain(&err), "database unreachable; health is NOT_SERVING");
                ServingStatus::NotServing
            }
            Err(_) => ServingStatus::NotServing,
        };
        let ready = if *loaded.borrow_and_update() {
            database
        } else {
            ServingStatus::NotServing
        };
        if last != Some((database, ready)) {
            for service in DATABASE_BACKED {
                let waits_for_read_model = service.is_empty() || service == "caselog.v1.MetricsService";
                let status = if waits_for_read_model { ready } else { database };
                reporter.set_service_status(service, status).await;
            }
            last = Some((database, ready));
        }
        // The load finishing is worth telling at once (a loader gone without loading is not).
        let loading = !*loaded.borrow() && loaded.has_changed().is_ok();
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = loaded.changed(), if loading => {}
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    info!("shutdown requested; draining in-flight requests");
}
