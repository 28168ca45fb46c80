//! The `caselog` command: `serve`, `migrate`, `rebuild` and `generate` work on the database;
//! `import`, `export`, `tail`, `case` and `metrics` are clients of a running service.

use anyhow::Context;
use caselog_app::rebuild::{Outcome, Phase, Progress, RebuildOptions, rebuild};
#[cfg(feature = "generator")]
use caselog_cli::generate::{GenerateOptions, LineOrder, compare_with_reference, load, write_ndjson};
use caselog_cli::import::{ImportOptions, import};
use caselog_domain::{Grant, Principal};
use caselog_server::auth::{AuthSettings, Authenticator, DevTokens, JwtSettings};
use caselog_server::{Security, ServerLimits, shutdown_signal, telemetry};
use caselog_store::{ConnectSettings, EventLog};
#[cfg(feature = "generator")]
use caselog_workload::WorkloadSettings;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// glibc's allocator spent a third of the service's processor time during an import
/// (docs/benchmarks.md, "Requests that carry many cases"): every request, event and row is many
/// short-lived allocations, across threads. Its arenas are not committed eagerly
/// (`.cargo/config.toml`), so it holds about what glibc held.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Parser, Debug)]
#[command(
    name = "caselog",
    version,
    about = "Event-sourced case lifecycle service for family-court advisory work"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "CASELOG_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    /// More log lines: -v for info, -vv for debug. `serve` logs at info already; the other
    /// commands show their progress and result, and only warnings and errors from the log.
    /// RUST_LOG, when set, decides instead.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// The log level when RUST_LOG does not set one.
    fn default_log_level(&self) -> &'static str {
        let serving = matches!(self.command, Command::Serve(_));
        match (serving, self.verbose) {
            (true, 0) | (false, 1) => "info",
            (false, 0) => "warn",
            _ => "debug",
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gRPC service.
    Serve(ServeArgs),
    /// Apply the database migrations and exit (run as the schema's owner).
    Migrate(MigrateArgs),
    /// Push an NDJSON file of events to a running service.
    Import(ImportArgs),
    /// Write the log (all of it, one case, a time range, or from a position) as NDJSON that
    /// `caselog import` reads back.
    Export(ExportArgs),
    /// Follow the log as events are recorded, as NDJSON or one readable line per event.
    Tail(TailArgs),
    /// Show a case and its timeline.
    Case(CaseArgs),
    /// Ask for metrics (QueryMetrics) and print them as a table, CSV or JSON.
    Metrics(MetricsArgs),
    /// Write the board performance report for a period (RenderReport): one self-contained HTML
    /// file with targets, trends and service areas, or the same figures as CSV or JSON.
    Report(ReportArgs),
    /// List the cases, children, reports or practitioners behind a figure (ListMetricUnits;
    /// administrators and practice clients of the service area; audited).
    Units(UnitsArgs),
    /// Write a synthetic national workload as NDJSON, and compare its metrics with the reference figures.
    #[cfg(feature = "generator")]
    Generate(GenerateArgs),
    /// Rebuild the projections from the log beside the live ones and switch them in (or, with
    /// --verify, compare and discard). Needs no running service; safe to run beside one.
    Rebuild(RebuildArgs),
    /// Ask a server's plain-text health port (--health-listen) whether it serves: exits 0 when
    /// SERVING, 1 otherwise. For container health checks; needs no credentials.
    Health(HealthArgs),
}

#[derive(Args, Debug)]
struct HealthArgs {
    /// The server's plain-text health address.
    #[arg(long, env = "CASELOG_HEALTH_ADDRESS", default_value = "http://127.0.0.1:8081")]
    server: String,
    /// The service to ask about: "" (ready: database answering, read model loaded), "liveness"
    /// (the process answers), or a gRPC service name such as caselog.v1.CaseEventService.
    #[arg(long, default_value = "")]
    service: String,
    /// Seconds before the answer counts as "not serving".
    #[arg(long, default_value_t = 3)]
    timeout_secs: u64,
}

#[derive(Args, Debug)]
struct RebuildArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Compare with the live projections instead of switching; exit status 3 when they differ.
    #[arg(long)]
    verify: bool,
    /// Events read from the log per page.
    #[arg(long, default_value_t = 20_000)]
    page_events: usize,
}

#[cfg(feature = "generator")]
#[derive(Args, Debug)]
struct GenerateArgs {
    /// Years of history, ending on --until.
    #[arg(long, default_value_t = 1)]
    years: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Last day of the window (default: today in England).
    #[arg(long)]
    until: Option<chrono::NaiveDate>,
    /// New cases per working day.
    #[arg(long, default_value_t = 220.0)]
    cases_per_day: f64,
    /// Share of lines written twice, as a retrying sender would.
    #[arg(long, default_value_t = 0.002)]
    resend_rate: f64,
    /// Order of the lines: `case` (each case whole, one after another) or `recorded` (day by
    /// day as recorded, cases interleaved, as a backfilling sender would send them). Holds the
    /// lines of running cases in memory until their day: about a year of lines.
    #[arg(long, value_enum, default_value_t = LineOrder::Case, conflicts_with = "load")]
    order: LineOrder,
    /// Output file (standard output when absent).
    #[arg(long, conflicts_with = "load")]
    out: Option<PathBuf>,
    /// Load straight into the database instead of writing NDJSON (bulk COPY; the database must
    /// not hold these cases yet).
    #[arg(long, requires = "database_url")]
    load: bool,
    /// PostgreSQL connection URL, for --load.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Source organisation recorded with loaded events.
    #[arg(long, default_value = "workload-generator")]
    source: String,
}

#[derive(Args, Debug)]
struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// After migrating, grant this existing database role what the service needs and no more:
    /// it can read and append events and audit records but never change or delete them.
    #[arg(long, env = "CASELOG_SERVICE_ROLE", conflicts_with = "check")]
    service_role: Option<String>,
    /// Change nothing: exit 0 when every migration of this release is applied, 1 when some are
    /// not. Needs only SELECT on `_sqlx_migrations` (the service role has it), so a release's
    /// pods can wait in an init container for the migration job instead of racing to migrate.
    #[arg(long)]
    check: bool,
    /// With --check: keep asking, every 2 s, for up to this many seconds.
    #[arg(long, requires = "check", default_value_t = 0)]
    wait_secs: u64,
}

#[derive(Args, Debug, Clone)]
struct DatabaseArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

#[derive(Args, Debug, Clone)]
struct ServeArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Address to listen on.
    #[arg(long, env = "CASELOG_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// PostgreSQL connection URL for reporting reads: the read model (QueryMetrics, worklists,
    /// reports, drill-down) and `as_of` folds read through it, typically a streaming replica
    /// (a CloudNativePG `-ro` service). Answers then reflect the replica: a prefix of the log,
    /// possibly behind the primary; `min_position` waits for the replica to reach it. Appends,
    /// the feed, audit records and snapshots stay on --database-url.
    #[arg(long, env = "CASELOG_READ_DATABASE_URL", hide_env_values = true)]
    read_database_url: Option<String>,
    /// Apply migrations before serving.
    #[arg(long, env = "CASELOG_MIGRATE", default_value_t = false)]
    migrate: bool,
    /// Largest pool of database connections.
    #[arg(long, env = "CASELOG_DB_MAX_CONNECTIONS", default_value_t = 16)]
    db_max_connections: u32,
    /// Further connections kept for audit records, so that a read which got a connection is
    /// recorded at once even when reads have taken all the others.
    #[arg(long, env = "CASELOG_DB_AUDIT_CONNECTIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    db_audit_connections: u32,
    /// Seconds a request may run before DEADLINE_EXCEEDED.
    #[arg(long, env = "CASELOG_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    request_timeout_secs: u64,
    /// On SIGTERM or Ctrl-C: seconds in-flight calls and open streams have before their
    /// connections are closed (a second signal exits at once).
    #[arg(long, env = "CASELOG_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Largest request message, in bytes.
    #[arg(long, env = "CASELOG_MAX_REQUEST_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_request_bytes: usize,
    /// MiB of memory for recently written cases, so that the next append to one needs no read
    /// (0: read every time). The projector keeps the cases it last projected in as much again,
    /// and a quarter as much more for cases of its last step that did not fit.
    #[arg(long, env = "CASELOG_CASE_CACHE_MIB", default_value_t = caselog_app::ingest::DEFAULT_CASE_CACHE_BYTES >> 20)]
    case_cache_mib: usize,
    /// Events the projection moves on by before a server writes a new snapshot of its read model
    /// (0: never write one). A restarting server loads the newest snapshot and the rows written
    /// after it, instead of every case's JSON.
    #[arg(long, env = "CASELOG_SNAPSHOT_AFTER_EVENTS", default_value_t = caselog_app::read_model::SnapshotPolicy::default().after_events)]
    snapshot_after_events: u64,
    /// Seconds after which an `as_of` instant is settled: every append recorded by then has
    /// committed or rolled back, so its answers come from the projection's history and are kept
    /// for the next question at that instant. Keep it well above the database's statement and
    /// idle-in-transaction timeouts (30 s and 10 s): an append still open at a settled instant
    /// would be missing from answers given before it committed.
    #[arg(long, env = "CASELOG_AS_OF_SETTLED_AFTER_SECS", default_value_t = caselog_app::read_model::SETTLED_AFTER.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    as_of_settled_after_secs: u64,
    /// Milliseconds the projector gathers appends before a step while they stream in (50 events
    /// a second or more): queries then see an append up to about this long after it commits
    /// (about 20 ms when appends come seldom). Fewer steps leave more of the machine to the
    /// appends: at one client the slowest hundredth of appends took 1.5-1.9 ms with steps
    /// every 20 ms, 1.2-1.4 ms with this default. At most 2,000: a query that names a
    /// `min_position` waits 5 s at most for the projection.
    #[arg(long, env = "CASELOG_PROJECTION_BUSY_GATHER_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=2_000))]
    projection_busy_gather_ms: u64,
    /// Grouped append statements written at the same time (concurrent appends to different
    /// cases share one statement and one commit).
    #[arg(long, env = "CASELOG_APPEND_GROUPS_IN_FLIGHT", default_value_t = 1)]
    append_groups_in_flight: usize,
    /// Requests one organisation may have in flight; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "CASELOG_MAX_CONCURRENT_PER_CLIENT", default_value_t = caselog_server::auth::DEFAULT_MAX_CONCURRENT_PER_CLIENT)]
    max_concurrent_per_client: usize,
    /// Open SubscribeEvents streams one organisation may hold; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "CASELOG_MAX_SUBSCRIPTIONS_PER_CLIENT", default_value_t = caselog_server::auth::DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT)]
    max_subscriptions_per_client: usize,
    /// Server certificate (PEM); with --tls-key, serve TLS. Read again on SIGHUP, with the key
    /// and the client CA: new connections get the new ones.
    #[arg(long, env = "CASELOG_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "CASELOG_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates authenticate callers (mutual TLS); the certificate's
    /// subject common name is the caller's grant, e.g. "court:LS".
    #[arg(long, env = "CASELOG_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Issuer (`iss`) of accepted JWT bearer tokens.
    #[arg(long, env = "CASELOG_JWT_ISSUER", requires_all = ["jwt_audience", "jwt_key"])]
    jwt_issuer: Option<String>,
    /// Audience (`aud`) accepted JWT bearer tokens must name.
    #[arg(long, env = "CASELOG_JWT_AUDIENCE", requires = "jwt_issuer")]
    jwt_audience: Option<String>,
    /// Public key (PEM, ECDSA P-256 or Ed25519) verifying JWTs; repeat for several. The file
    /// stem is the key id (`kid`); a directory stands for its `*.pem` files. Read again on
    /// SIGHUP (key rotation without a restart).
    #[arg(long, env = "CASELOG_JWT_KEYS", value_delimiter = ',', requires = "jwt_issuer")]
    jwt_key: Vec<PathBuf>,
    /// The longest lifetime (`exp - iat`, seconds) of an accepted JWT.
    #[arg(long, env = "CASELOG_JWT_MAX_LIFETIME", default_value_t = caselog_server::auth::DEFAULT_MAX_TOKEN_LIFETIME_SECONDS)]
    jwt_max_lifetime: u64,
    /// Static bearer tokens (JSON) for local development; refused without --allow-dev-tokens.
    #[arg(long, env = "CASELOG_DEV_TOKENS")]
    dev_tokens: Option<PathBuf>,
    /// Allow --dev-tokens. Never in production: static tokens do not expire.
    #[arg(long, env = "CASELOG_ALLOW_DEV_TOKENS", default_value_t = false)]
    allow_dev_tokens: bool,
    /// Also serve gRPC health in plain text here (for probes that cannot do mutual TLS), and
    /// the process's metrics for Prometheus at `GET /metrics` (HTTP/1.1, no credentials: bind it
    /// where only probes and monitoring reach).
    #[arg(long, env = "CASELOG_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// Targets the figures are measured against, as JSON: {"targets": [{"metric": "T5",
    /// "value": 70, "near": 65, "better": "higher", "source": "..."}]} (docs/metrics.md).
    /// Replaces the catalogue's targets; checked at start, and the server refuses to start on a
    /// file it cannot use.
    #[arg(long, env = "CASELOG_TARGETS")]
    targets: Option<PathBuf>,
}

impl ServeArgs {
    /// The server's certificate chain, key and client CA as the files say now (None without
    /// --tls-cert).
    #[allow(clippy::type_complexity)]
    fn tls_files(&self) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>, Option<Vec<u8>>)>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let ca_pem = self.tls_client_ca.as_ref().map(read).transpose()?;
        Ok(Some((cert_pem, key_pem, ca_pem)))
    }

    /// The JWT keys as the files say now (None without --jwt-issuer).
    fn jwt_settings(&self) -> Option<anyhow::Result<JwtSettings>> {
        let (Some(issuer), Some(audience)) = (&self.jwt_issuer, &self.jwt_audience) else {
            return None;
        };
        Some(
            JwtSettings::load(issuer.clone(), audience.clone(), &self.jwt_key).map(|keys| JwtSettings {
                max_lifetime_seconds: self.jwt_max_lifetime,
                ..keys
            }),
        )
    }

    fn security(&self) -> anyhow::Result<Security> {
        let tls = match self.tls_files()? {
            Some((cert, key, client_ca)) => {
                let tls = caselog_server::tls::ServerTls::from_pem(&cert, &key, client_ca.as_deref())
                    .context("the TLS certificate, key or client CA")?;
                publish_tls_expiry(&cert, client_ca.as_deref())?;
                Some(Arc::new(tls))
            }
            None => None,
        };
        let jwt = self.jwt_settings().transpose()?;
        let dev_tokens = match &self.dev_tokens {
            Some(path) => Some(DevTokens::load(path, self.allow_dev_tokens)?),
            None => None,
        };
        if dev_tokens.is_some() {
            tracing::warn!("static development tokens are accepted: never do this in production");
        }
        let authenticator = Authenticator::new(AuthSettings {
            jwt,
            client_certificates: self.tls_client_ca.is_some(),
            dev_tokens,
            max_concurrent_per_client: self.max_concurrent_per_client,
            max_subscriptions_per_client: self.max_subscriptions_per_client,
        })?;
        Ok(Security {
            authenticator: Arc::new(authenticator),
            tls,
            plaintext_health: None,
            scrape: None,
        })
    }
}

/// How a client command reaches the service.
#[derive(Args, Debug)]
struct ClientArgs {
    /// URL of the caselog service (https:// for TLS).
    #[arg(long, env = "CASELOG_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Bearer token (a JWT, or a development token).
    #[arg(long, env = "CASELOG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA (PEM) that signed the server's certificate.
    #[arg(long, env = "CASELOG_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "CASELOG_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "CASELOG_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

impl ClientArgs {
    async fn connect(&self) -> anyhow::Result<tonic::transport::Channel> {
        let mut endpoint = Endpoint::from_shared(self.server.clone())?;
        if self.server.starts_with("https://") || self.ca_cert.is_some() || self.client_cert.is_some() {
            let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca_cert {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.server))
    }
}

#[derive(Args, Debug)]
struct ImportArgs {
    /// NDJSON file, one event per line ("-" for standard input).
    file: PathBuf,
    #[command(flatten)]
    client: ClientArgs,
    /// Events of one case per batch (1-1000).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Cases with a batch in flight at once. Their batches travel together, up to 1,000
    /// events in a request (AppendEventsToCases), at most --requests requests at once.
    #[arg(long, default_value_t = caselog_cli::import::DEFAULT_CONCURRENCY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    concurrency: usize,
    /// Requests in flight at once. The service refuses an organisation more than its
    /// --max-concurrent-per-client (64 by default) at once; the default leaves room for the
    /// organisation's other traffic.
    #[arg(long, default_value_t = caselog_cli::import::DEFAULT_REQUESTS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    requests: usize,
    /// Record each case whole or not at all. A case is sent once its lines are read, so its
    /// lines must lie within --window lines of its first; a line further on is rejected.
    #[arg(long)]
    all_or_nothing: bool,
    /// Lines held in memory at most (read, not yet answered; about 140 bytes each). The file is
    /// streamed through this window: a case's lines that lie within it of each other are sent
    /// together, in file order; lines further apart go in later requests, still in file order.
    /// A file in recording order imports faster with a larger window.
    #[arg(long, default_value_t = caselog_cli::import::DEFAULT_WINDOW, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    window: usize,
}

#[derive(Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Output file (standard output when absent).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only this case's events (read as its timeline, which a practice client may read too;
    /// the whole log needs the admin grant).
    #[arg(long)]
    case: Option<String>,
    /// Only events after this position (exclusive: the last position you already have).
    #[arg(long, default_value_t = 0)]
    from_position: u64,
    /// Only events recorded at or after this instant (RFC 3339, e.g. 2025-04-01T00:00:00Z).
    #[arg(long)]
    recorded_from: Option<chrono::DateTime<chrono::Utc>>,
    /// Only events recorded before this instant (RFC 3339).
    #[arg(long)]
    recorded_before: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Args, Debug)]
struct TailArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Start after this position (0: the whole log); by default only events recorded from now.
    #[arg(long)]
    from_position: Option<u64>,
    /// Only these event types (repeatable), e.g. case_issued.
    #[arg(long = "type")]
    event_types: Vec<String>,
    /// Only these cases (repeatable).
    #[arg(long = "case")]
    case_ids: Vec<String>,
    /// text: one readable line per event; ndjson: the interchange format.
    #[arg(long, value_enum, default_value = "text")]
    format: TailFormat,
    /// Stop once every event recorded so far has been written, instead of waiting for more.
    #[arg(long)]
    until_caught_up: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TailFormat {
    Text,
    Ndjson,
}

#[derive(Args, Debug)]
struct CaseArgs {
    /// The case id, e.g. LS25C00123.
    case_id: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// How figures are counted, shared by `metrics`, `report` and `units`.
#[derive(Args, Debug)]
struct CountingArgs {
    /// Answer from the log as it was recorded at this instant (RFC 3339): a figure, report or
    /// listing as it could have been produced then.
    #[arg(long)]
    as_of: Option<chrono::DateTime<chrono::Utc>>,
    /// The 26-week limit's last day is issue + this many days: 181 or 182.
    #[arg(long)]
    twenty_six_week_limit_days: Option<u32>,
    /// Count virtual visits as seen for T4 and E1.
    #[arg(long)]
    count_virtual_visits: bool,
    /// Wait (up to 5 s) until the figures include this position, e.g. the last position an
    /// import printed.
    #[arg(long, default_value_t = 0)]
    min_position: u64,
}

impl CountingArgs {
    fn as_of(&self) -> Option<prost_types::Timestamp> {
        self.as_of.map(|t| prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        })
    }

    fn twenty_six_week_limit_days(&self) -> u32 {
        self.twenty_six_week_limit_days.unwrap_or(0)
    }
}

/// A month, quarter or financial year.
#[derive(Args, Debug)]
struct PeriodArgs {
    /// A month, e.g. 2025-03.
    #[arg(long)]
    month: Option<String>,
    /// A financial quarter, e.g. "2024-25 Q3" (Q1 is April to June).
    #[arg(long)]
    financial_quarter: Option<String>,
    /// A financial year, e.g. 2024-25.
    #[arg(long)]
    financial_year: Option<String>,
    /// A calendar quarter, e.g. "2024 Q4".
    #[arg(long)]
    calendar_quarter: Option<String>,
}

impl PeriodArgs {
    fn kind(&self) -> Option<caselog_api::v1::period_spec::Kind> {
        use caselog_api::v1::period_spec::Kind;
        if let Some(month) = &self.month {
            Some(Kind::Month(month.clone()))
        } else if let Some(quarter) = &self.financial_quarter {
            Some(Kind::FinancialQuarter(quarter.clone()))
        } else if let Some(year) = &self.financial_year {
            Some(Kind::FinancialYear(year.clone()))
        } else {
            self.calendar_quarter.clone().map(Kind::CalendarQuarter)
        }
    }

    fn spec(&self) -> Option<caselog_api::v1::PeriodSpec> {
        Some(caselog_api::v1::PeriodSpec { kind: self.kind() })
    }
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("period").required(true).args(["month", "financial_quarter", "financial_year", "calendar_quarter"]))]
struct ReportArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    period: PeriodArgs,
    /// Periods in each trend, ending with the report's (0: 24 months, 8 quarters or 5 years;
    /// else 2-60).
    #[arg(long, default_value_t = 0)]
    periods: u32,
    #[arg(long, value_enum, default_value = "html")]
    format: ReportFormat,
    /// Where to write the report ("-": standard output). Default: the name the service
    /// suggests, e.g. caselog-report-2024-25-Q3.html, in the current directory.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    counting: CountingArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    Html,
    Csv,
    Json,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("period").required(true).args(["month", "financial_quarter", "financial_year", "calendar_quarter"]))]
struct UnitsArgs {
    /// One figure id, e.g. T4, T6, S2.cases_over_52_weeks.
    metric_id: String,
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    period: PeriodArgs,
    /// The group's service area, e.g. A5 (a practice client's own by default; administrators:
    /// national when absent).
    #[arg(long)]
    service_area: Option<String>,
    /// Further conditions, dimension=value[,value...] (repeatable), e.g. law_type=public or
    /// report_type=section7.
    #[arg(long)]
    filter: Vec<String>,
    /// The day stock figures are counted on (default: the period's last day).
    #[arg(long)]
    snapshot_date: Option<String>,
    #[command(flatten)]
    counting: CountingArgs,
    #[arg(long, value_enum, default_value = "table")]
    format: caselog_cli::show::MetricsFormat,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("period").required(true).args(["month", "financial_quarter", "financial_year", "calendar_quarter", "from"]))]
struct MetricsArgs {
    /// Catalogue ids (T1 ... W1; S2 for all of S2's figures), comma-separated or repeated.
    #[arg(required = true, value_delimiter = ',')]
    metric_ids: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    period: PeriodArgs,
    /// First day of a custom period (YYYY-MM-DD), with --to.
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// Last day of a custom period, inclusive.
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// The day stock metrics (S1, S2, W1) are counted on (default: the period's last day).
    #[arg(long)]
    snapshot_date: Option<String>,
    /// A series: this many consecutive periods ending with the one given (months, quarters or
    /// years; at most 60), oldest first. Stock metrics are counted on each period's last day.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=60), conflicts_with_all = ["snapshot_date", "from"])]
    periods: u32,
    /// Group rows by these dimensions: law_type, application_type, service_area, court,
    /// local_authority, age_band, report_type.
    #[arg(long, value_delimiter = ',')]
    group_by: Vec<String>,
    /// Keep only rows where dimension=value[,value...] (repeatable), e.g. law_type=public.
    #[arg(long)]
    filter: Vec<String>,

    /// Hide counts of 1-4 below national level (reporting and practice clients always get this).
    #[arg(long)]
    suppress_small_numbers: bool,
    #[command(flatten)]
    counting: CountingArgs,
    #[arg(long, value_enum, default_value = "table")]
    format: caselog_cli::show::MetricsFormat,
}

impl MetricsArgs {
    fn request(&self) -> anyhow::Result<caselog_api::v1::QueryMetricsRequest> {
        use caselog_api::v1 as pb;
        use pb::period_spec::Kind;
        let kind = self.period.kind().unwrap_or_else(|| {
            Kind::Custom(pb::DateRange {
                first: self.from.clone().unwrap_or_default(),
                last: self.to.clone().unwrap_or_default(),
            })
        });
        let group_by = self
            .group_by
            .iter()
            .map(|name| caselog_cli::show::dimension(name).map(|d| d as i32))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let filters = self
            .filter
            .iter()
            .map(|f| caselog_cli::show::filter(f))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(pb::QueryMetricsRequest {
            metric_ids: self.metric_ids.clone(),
            period: Some(pb::PeriodSpec { kind: Some(kind) }),
            snapshot_date: self.snapshot_date.clone().unwrap_or_default(),
            group_by,
            filters,
            as_of: self.counting.as_of(),
            min_position: self.counting.min_position,
            suppress_small_numbers: self.suppress_small_numbers,
            twenty_six_week_limit_days: self.counting.twenty_six_week_limit_days(),
            count_virtual_visits: self.counting.count_virtual_visits,
            periods: self.periods,
        })
    }
}

/// Standard output, or a file, buffered.
fn output(path: Option<&PathBuf>) -> anyhow::Result<Box<dyn std::io::Write>> {
    Ok(match path {
        Some(path) => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    })
}

async fn export_command(args: ExportArgs) -> anyhow::Result<ExitCode> {
    use caselog_cli::export::{ExportProgress, LineFormat, Selection, export};
    let channel = args.client.connect().await?;
    let selection = Selection {
        case_id: args.case.clone(),
        after_position: args.from_position,
        recorded_from: args.recorded_from,
        recorded_before: args.recorded_before,
    };
    let mut out = output(args.out.as_ref())?;
    // Drawn only on a terminal: a redirected stderr gets the final line alone.
    let bar = ProgressBar::hidden().with_style(bar_style("exported {msg} events [{bar:30}] position {pos}/{len}"));
    let show = |p: ExportProgress| {
        bar.set_message(p.events_written.to_string());
        bar.set_length(p.end_position);
        bar.set_position(p.position);
        if bar.is_hidden() {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    };
    let done = export(
        channel,
        args.client.token.as_deref(),
        &selection,
        LineFormat::Ndjson,
        &mut out,
        show,
    )
    .await?;
    bar.finish_and_clear();
    eprintln!(
        "exported {} events{}",
        done.events_written,
        if args.case.is_some() {
            String::new()
        } else {
            format!(" (positions {} to {})", args.from_position, done.end_position)
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn tail_command(args: TailArgs) -> anyhow::Result<ExitCode> {
    use caselog_cli::export::{LineFormat, TailOptions, tail};
    let channel = args.client.connect().await?;
    let options = TailOptions {
        after_position: args.from_position,
        event_types: args.event_types,
        case_ids: args.case_ids,
        until_caught_up: args.until_caught_up,
    };
    let format = match args.format {
        TailFormat::Text => LineFormat::Text,
        TailFormat::Ndjson => LineFormat::Ndjson,
    };
    let last = tail(
        channel,
        args.client.token.as_deref(),
        &options,
        format,
        &mut std::io::stdout().lock(),
    )
    .await?;
    eprintln!("caught up at position {last} (resume with --from-position {last})");
    Ok(ExitCode::SUCCESS)
}

async fn case_command(args: CaseArgs) -> anyhow::Result<ExitCode> {
    let channel = args.client.connect().await?;
    let mut out = output(None)?;
    caselog_cli::show::show_case(channel, args.client.token.as_deref(), &args.case_id, &mut out).await?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

async fn metrics_command(args: MetricsArgs) -> anyhow::Result<ExitCode> {
    let request = args.request()?;
    let channel = args.client.connect().await?;
    let mut out = output(None)?;
    caselog_cli::show::query_metrics(channel, args.client.token.as_deref(), request, args.format, &mut out).await?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

async fn report_command(args: ReportArgs) -> anyhow::Result<ExitCode> {
    use caselog_api::v1 as pb;
    let request = pb::RenderReportRequest {
        period: args.period.spec(),
        periods: args.periods,
        format: match args.format {
            ReportFormat::Html => pb::ReportFormat::Html,
            ReportFormat::Csv => pb::ReportFormat::Csv,
            ReportFormat::Json => pb::ReportFormat::Json,
        } as i32,
        as_of: args.counting.as_of(),
        min_position: args.counting.min_position,
        twenty_six_week_limit_days: args.counting.twenty_six_week_limit_days(),
        count_virtual_visits: args.counting.count_virtual_visits,
    };
    let channel = args.client.connect().await?;
    let report = caselog_cli::show::render_report(channel, args.client.token.as_deref(), request).await?;
    let path = args.out.unwrap_or_else(|| PathBuf::from(&report.file_name));
    if path.as_os_str() == "-" {
        let mut out = output(None)?;
        out.write_all(&report.content)?;
        out.flush()?;
    } else {
        std::fs::write(&path, &report.content).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote {} ({} bytes, {}; figures at position {})",
            path.display(),
            report.content.len(),
            report.content_type,
            report.position
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn units_command(args: UnitsArgs) -> anyhow::Result<ExitCode> {
    use caselog_api::v1 as pb;
    let filters = args
        .filter
        .iter()
        .map(|f| caselog_cli::show::filter(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let request = pb::ListMetricUnitsRequest {
        metric_id: args.metric_id.clone(),
        period: args.period.spec(),
        snapshot_date: args.snapshot_date.clone().unwrap_or_default(),
        service_area: args.service_area.clone().unwrap_or_default(),
        filters,
        as_of: args.counting.as_of(),
        min_position: args.counting.min_position,
        twenty_six_week_limit_days: args.counting.twenty_six_week_limit_days(),
        count_virtual_visits: args.counting.count_virtual_visits,
        page_size: 1000,
        page_token: String::new(),
    };
    let channel = args.client.connect().await?;
    let mut out = output(None)?;
    caselog_cli::show::list_units(channel, args.client.token.as_deref(), request, args.format, &mut out).await?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for the process, chosen before any TLS configuration is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let telemetry = match telemetry::init(cli.log_format == LogFormat::Json, cli.default_log_level()) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("caselog: cannot set up telemetry: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli.command, telemetry.scrape()).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("caselog: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, scrape: caselog_server::prometheus::Scrape) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve_command(args, scrape).await,
        Command::Migrate(args) => migrate_command(args).await,
        Command::Rebuild(args) => rebuild_command(args).await,
        #[cfg(feature = "generator")]
        Command::Generate(args) => generate_command(args).await,
        Command::Import(args) => import_command(args).await,
        Command::Export(args) => export_command(args).await,
        Command::Tail(args) => tail_command(args).await,
        Command::Case(args) => case_command(args).await,
        Command::Metrics(args) => metrics_command(args).await,
        Command::Report(args) => report_command(args).await,
        Command::Units(args) => units_command(args).await,
        Command::Health(args) => health_command(args).await,
    }
}

async fn health_command(args: HealthArgs) -> anyhow::Result<ExitCode> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let timeout = Duration::from_secs(args.timeout_secs);
    let asked = async {
        let channel = tonic::transport::Endpoint::from_shared(args.server.clone())
            .with_context(|| format!("{} is not a server address", args.server))?
            .connect_timeout(timeout)
            .connect()
            .await
            .with_context(|| format!("connecting to {}", args.server))?;
        let answer = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|status| anyhow::anyhow!("{}: {}", status.code(), status.message()))?;
        anyhow::Ok(answer.into_inner().status())
    };
    let status = match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(status)) => status,
        Ok(Err(err)) => {
            println!("NOT_SERVING ({err:#})");
            return Ok(ExitCode::FAILURE);
        }
        Err(_) => {
            println!("NOT_SERVING (no answer within {} s)", args.timeout_secs);
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("{}", status.as_str_name());
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Creates the database when missing, applies the migrations and returns a pool (as the
/// schema's owner).
async fn migrated_pool(database_url: &str) -> anyhow::Result<caselog_store::PgPool> {
    caselog_store::create_database_if_missing(database_url).await?;
    let pool = caselog_store::connect(database_url, &ConnectSettings::default())?;
    caselog_store::MIGRATOR
        .run(&pool)
        .await
        .context("applying migrations")?;
    Ok(pool)
}

async fn migrate_command(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let database_url = &args.database.database_url;
    if args.check {
        return check_migrations(database_url, Duration::from_secs(args.wait_secs)).await;
    }
    let pool = migrated_pool(database_url).await?;
    println!("migrations applied");
    if let Some(role) = &args.service_role {
        caselog_store::grant_service_role(&pool, role)
            .await
            .with_context(|| format!("granting the service role {role}"))?;
        println!(
            "granted {role}: read and append events and audit records; read and write the projection rows; rebuild through the owner's functions"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// On each SIGHUP, reads the JWT keys (--jwt-key files and directories) and the TLS certificate,
/// key and client CA again, and uses them from then on: keys and certificates are rotated
/// without a restart (connections already open keep theirs). What cannot be read is logged and
/// what is in use kept.
async fn reload_on_hangup(
    args: ServeArgs,
    authenticator: Arc<caselog_server::auth::Authenticator>,
    tls: Option<Arc<caselog_server::tls::ServerTls>>,
) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::warn!(error = %err, "SIGHUP cannot be caught: keys and certificates are read at start only");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        if let Some(jwt) = args.jwt_settings() {
            let reloaded = jwt.and_then(|jwt| {
                let key_ids: Vec<String> = jwt.keys.iter().map(|(kid, _, _)| kid.clone()).collect();
                authenticator.replace_jwt(jwt).map(|()| key_ids)
            });
            match reloaded {
                Ok(key_ids) => tracing::info!(keys = ?key_ids, "SIGHUP: JWT keys reloaded"),
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "SIGHUP: JWT keys not reloaded; the keys in use are kept")
                }
            }
        }
        if let Some(tls) = &tls {
            let reloaded = args.tls_files().and_then(|files| {
                let (cert, key, client_ca) = files.context("--tls-cert is no longer set")?;
                tls.replace(&cert, &key, client_ca.as_deref())?;
                publish_tls_expiry(&cert, client_ca.as_deref())
            });
            match reloaded {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate, key and client CA reloaded"),
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "SIGHUP: TLS files not reloaded; the ones in use are kept")
                }
            }
        }
    }
}

/// Publishes when the served certificate and the client CA expire (after they are in use).
fn publish_tls_expiry(cert: &[u8], client_ca: Option<&[u8]>) -> anyhow::Result<()> {
    caselog_server::telemetry::publish_certificate_expiry("server", cert)?;
    if let Some(client_ca) = client_ca {
        caselog_server::telemetry::publish_certificate_expiry("client_ca", client_ca)?;
    }
    Ok(())
}

/// `caselog migrate --check`: whether this release's migrations are all applied, waiting up to
/// `wait` for them (a database that does not answer yet counts as not migrated meanwhile).
async fn check_migrations(database_url: &str, wait: Duration) -> anyhow::Result<ExitCode> {
    let pool = caselog_store::connect(
        database_url,
        &ConnectSettings {
            max_connections: 1,
            ..ConnectSettings::default()
        },
    )?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        let pending = caselog_store::pending_migrations(&pool).await;
        match &pending {
            Ok(pending) if pending.is_empty() => {
                println!("every migration of this release is applied");
                return Ok(ExitCode::SUCCESS);
            }
            _ if std::time::Instant::now() < deadline => {}
            Ok(pending) => {
                let versions: Vec<String> = pending.iter().map(i64::to_string).collect();
                eprintln!(
                    "caselog: migrations {} of this release are not applied: run `caselog migrate` as the schema owner",
                    versions.join(", ")
                );
                return Ok(ExitCode::FAILURE);
            }
            Err(err) => {
                let hint = if err.to_string().contains("permission denied") {
                    " (grant it with `caselog migrate --service-role <this role>` as the schema owner)"
                } else {
                    ""
                };
                return Err(anyhow::anyhow!("reading the applied migrations: {err}{hint}"));
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn serve_command(args: ServeArgs, scrape: caselog_server::prometheus::Scrape) -> anyhow::Result<ExitCode> {
    let settings = ConnectSettings {
        max_connections: args.db_max_connections,
        ..ConnectSettings::default()
    };
    let pool = caselog_store::connect(&args.database.database_url, &settings)?;
    let audit_pool = caselog_store::connect(
        &args.database.database_url,
        &ConnectSettings {
            max_connections: args.db_audit_connections,
            ..settings.clone()
        },
    )?;
    if args.migrate {
        caselog_store::MIGRATOR
            .run(&pool)
            .await
            .context("applying migrations")?;
    }
    let mut security = args.security()?;
    if args.jwt_issuer.is_some() || security.tls.is_some() {
        tokio::spawn(reload_on_hangup(
            args.clone(),
            security.authenticator.clone(),
            security.tls.clone(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    if let Some(address) = args.health_listen {
        let health = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        security.plaintext_health = Some(health);
        security.scrape = Some(scrape);
    }
    let limits = ServerLimits {
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        max_request_bytes: args.max_request_bytes,
        case_cache_bytes: args.case_cache_mib.saturating_mul(1 << 20),
        projector: caselog_app::projector::ProjectorSettings {
            history_cache_bytes: args.case_cache_mib.saturating_mul(1 << 20),
            busy_gather: Duration::from_millis(args.projection_busy_gather_ms),
            ..Default::default()
        },
        as_of_settled_after: Duration::from_secs(args.as_of_settled_after_secs),
        snapshots: caselog_app::read_model::SnapshotPolicy {
            after_events: args.snapshot_after_events,
            ..Default::default()
        },
        group_appends: caselog_store::GroupSettings {
            max_in_flight: args.append_groups_in_flight,
            ..caselog_store::GroupSettings::default()
        },
        targets: Arc::new(match &args.targets {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                caselog_projections::targets::Targets::from_json(&text)
                    .with_context(|| format!("the targets in {}", path.display()))?
            }
            None => caselog_projections::targets::Targets::catalogue(),
        }),
        ..ServerLimits::default()
    };
    // The first signal drains; a second one, for an operator who will not wait, exits at once.
    let (first_signal, drain) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = first_signal.send(());
        shutdown_signal().await;
        eprintln!("caselog: second signal: exiting without waiting for the drain");
        std::process::exit(130);
    });
    let drained = async move {
        let _ = drain.await;
    };
    let mut log = EventLog::new(pool).with_audit_pool(audit_pool);
    if let Some(read_url) = &args.read_database_url {
        log = log.with_reporting_pool(caselog_store::connect(read_url, &settings)?);
    }
    caselog_server::run(listener, log, limits, security, drained).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "generator")]
async fn generate_command(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let until = args
        .until
        .unwrap_or_else(|| caselog_domain::england::date_in_england(chrono::Utc::now()));
    let first_day = until
        .checked_sub_months(chrono::Months::new(12 * args.years))
        .context("--years reaches before the calendar")?
        .succ_opt()
        .unwrap_or(until);
    let options = GenerateOptions {
        workload: WorkloadSettings {
            seed: args.seed,
            first_day,
            last_day: until,
            cases_per_working_day: args.cases_per_day,
        },
        resend_rate: args.resend_rate,
        order: args.order,
    };
    let started = std::time::Instant::now();
    let generated = match (&args.out, &args.database_url) {
        (_, Some(database_url)) if args.load => {
            let pool = migrated_pool(database_url).await?;
            load(&options, &EventLog::new(pool), &args.source)
                .await
                .map_err(|e| anyhow::anyhow!(e.detail()))?
        }
        (Some(path), _) => {
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let generated = write_ndjson(&options, &mut out)?;
            std::io::Write::flush(&mut out)?;
            generated
        }
        _ => write_ndjson(&options, &mut std::io::BufWriter::new(std::io::stdout().lock()))?,
    };
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} {} cases, {} events, {} lines ({first_day} to {until}) in {seconds:.1} s ({:.0} events/s)",
        if args.load { "generated and loaded" } else { "generated" },
        generated.cases,
        generated.events,
        generated.lines,
        generated.events as f64 / seconds.max(1e-3)
    );
    for line in compare_with_reference(&generated.facts, until) {
        eprintln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn rebuild_command(args: RebuildArgs) -> anyhow::Result<ExitCode> {
    // No migrations here: this runs as the service role, which may not change the schema
    // (`caselog migrate` does, as the owner).
    let pool = caselog_store::connect(&args.database.database_url, &ConnectSettings::default())?;
    let log = EventLog::new(pool);
    let options = RebuildOptions {
        verify_only: args.verify,
        page_events: args.page_events,
    };
    let (progress, mut seen) = tokio::sync::watch::channel::<Option<Progress>>(None);
    // The bar is drawn only on a terminal; a redirected log gets one line per phase instead.
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let watcher = tokio::spawn(async move {
        // Hidden until it first holds a whole state, so that no half-set bar is drawn.
        let bar = ProgressBar::hidden().with_style(bar_style(
            "{prefix:>11} [{bar:30}] {percent:>3}% {pos}/{len} events, {msg}, about {eta} left",
        ));
        let mut last_phase = None;
        while seen.changed().await.is_ok() {
            let Some(current) = seen.borrow_and_update().clone() else {
                continue;
            };
            bar.set_prefix(phase_name(current.phase));
            bar.set_message(format!(
                "{} cases, {:.0} events/s",
                current.cases,
                current.events_per_second()
            ));
            bar.set_length(current.events_total);
            bar.set_position(current.events_processed);
            if bar.is_hidden() {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
            if !on_terminal && last_phase != Some(current.phase) {
                last_phase = Some(current.phase);
                eprintln!(
                    "{}: {}/{} events, {} cases",
                    phase_name(current.phase),
                    current.events_processed,
                    current.events_total,
                    current.cases
                );
            }
        }
        bar.finish_and_clear();
    });
    let result = rebuild(&log, &options, &progress).await;
    drop(progress);
    let _ = watcher.await;
    // An administrative action like the RPC, recorded with the operating-system user.
    let operator = Principal {
        organisation: format!(
            "operator:{}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into())
        ),
        grants: vec![Grant::Administrator],
    };
    let outcome = match &result {
        Ok(summary) => format!("OK {}", summary.describe().join("; ")),
        Err(err) => caselog_server::error::outcome_of(err),
    };
    let detail = serde_json::json!({"verify_only": args.verify, "via": "caselog rebuild"});
    if let Err(err) =
        caselog_server::audit::record(&log, &operator, "caselog rebuild", "projections", detail, outcome).await
    {
        eprintln!("caselog: warning: the audit record of this rebuild was not written: {err}");
    }
    let summary = result.map_err(|e| anyhow::anyhow!(e.detail()))?;
    for line in summary.describe() {
        println!("{line}");
    }
    Ok(match summary.outcome {
        Outcome::Verified(report) if !report.identical() => ExitCode::from(3),
        _ => ExitCode::SUCCESS,
    })
}

async fn import_command(args: ImportArgs) -> anyhow::Result<ExitCode> {
    use caselog_cli::import::ImportProgress;
    let (reader, bytes_total): (Box<dyn std::io::BufRead + Send>, Option<u64>) = if args.file.as_os_str() == "-" {
        (
            Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin())),
            None,
        )
    } else {
        let file = std::fs::File::open(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(std::io::BufReader::with_capacity(1 << 20, file)), size)
    };
    let channel = args.client.connect().await?;
    let options = ImportOptions {
        batch_size: args.batch_size,
        concurrency: args.concurrency,
        requests: args.requests,
        token: args.client.token.clone(),
        all_or_nothing: args.all_or_nothing,
        window: args.window,
    };
    // A bar on a terminal; otherwise a plain line every ten seconds.
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = ProgressBar::hidden().with_style(bar_style("import [{bar:30}] {percent:>3}% {msg}, about {eta} left"));
    let mut last_line = std::time::Instant::now();
    let show = |p: &ImportProgress| {
        let summary = format!(
            "{} lines ({} appended, {} already present, {} rejected), {:.0} events/s, {} cases in flight",
            p.lines_settled,
            p.appended,
            p.already_present,
            p.rejected,
            p.lines_per_second(),
            p.in_flight
        );
        if on_terminal {
            bar.set_length(p.bytes_total.unwrap_or(0).max(p.bytes_read));
            bar.set_position(p.bytes_read);
            bar.set_message(summary);
            if bar.is_hidden() {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
        } else if last_line.elapsed() >= std::time::Duration::from_secs(10) {
            last_line = std::time::Instant::now();
            let read = match p.bytes_total {
                Some(total) if total > 0 => format!("{:.1}% read", 100.0 * p.bytes_read as f64 / total as f64),
                _ => format!("{} MB read", p.bytes_read >> 20),
            };
            eprintln!("import: {read}, {summary}");
        }
    };
    let report = import(reader, bytes_total, channel, &options, show).await?;
    bar.finish_and_clear();
    for (line, reason) in report.rejections() {
        println!("line {line}: rejected: {reason}");
    }
    println!(
        "appended {}, already present {}, rejected {}",
        report.appended(),
        report.already_present(),
        report.rejected()
    );
    if report.last_position > 0 {
        println!(
            "last position {} (caselog metrics --min-position {} waits until the metrics include it)",
            report.last_position, report.last_position
        );
    }
    Ok(if report.rejected() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// A progress bar's look; indicatif draws it only when stderr is a terminal.
fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>.")
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Loading => "loading",
        Phase::Indexing => "indexing",
        Phase::CatchingUp => "catching up",
        Phase::Finishing => "finishing",
    }
}
