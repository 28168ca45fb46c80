//! `caselog-bench`: each benchmark prints what it measured next to the raw PostgreSQL figure it is
//! compared with, measured on the same machine in the same run.
//!
//! `feed`: (1) single-event appends from 16 concurrent writers through the event log with the
//! feed machinery (position promises) against the same statement into an identical table that
//! takes positions from a plain sequence; (2) delivery latency to a live gRPC subscriber while
//! writers append at a steady rate through the gRPC service.

mod cpu;
mod faults;
#[cfg(feature = "peer")]
mod peer;
mod suite;

use anyhow::{Context, bail};
use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_api::v1::event_feed_service_client::EventFeedServiceClient;
use caselog_domain::Version;
use caselog_store::{ConnectSettings, EventLog, NewRow};
use clap::{Parser, Subcommand};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

#[derive(Parser, Debug)]
#[command(name = "caselog-bench")]
struct Cli {
    /// A database the benchmark may fill (created and migrated if missing).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Every figure of the workload issue against raw PostgreSQL: replay, query latency, batch
    /// and single-event ingest, projection keep-up, service memory. Each write measurement
    /// starts once the service's projection has caught up and any read-model snapshot come due
    /// is written, after a CHECKPOINT (as a superuser), and within the batch measurement a
    /// snapshot a caselog round brings due is written before the next round.
    Suite {
        /// Years of national workload to generate and load first (0: use what the database holds).
        #[arg(long, default_value_t = 0)]
        load_years: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The caselog binary (default: next to this one).
        #[arg(long)]
        caselog: Option<std::path::PathBuf>,
        /// Seconds per throughput measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// 1,000-event requests per side of the batch ingest comparison.
        #[arg(long, default_value_t = 200)]
        batches: usize,
        /// Queries in the latency measurement.
        #[arg(long, default_value_t = 100)]
        queries: usize,
        /// Open cases given one more event after an instant, so that an `as_of` at that instant
        /// must fold them again (the straddle measurement).
        #[arg(long, default_value_t = 30_000)]
        straddlers: usize,
        /// Client counts for single-event appends.
        #[arg(long, value_delimiter = ',', default_value = "1,16,32")]
        clients: Vec<usize>,
        /// Cases each single-event client appends to in turn: fewer cases make longer ones
        /// (16 clients at 9,000 events/s for 12 s leave cases of about 70 events at 100).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        cases_per_client: u32,
        /// Events per second offered while measuring projection lag.
        #[arg(long, default_value_t = 2000)]
        keep_up_rate: u64,
        /// Run only these measurements (replay, query, straddle, batch, single, keep-up, restart).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// An argument passed on to the `caselog serve` child, to measure a setting
        /// (e.g. `--serve-arg=--append-groups-in-flight=2`); repeatable.
        #[arg(long, allow_hyphen_values = true)]
        serve_arg: Vec<String>,
        /// With --load-years: move each loaded event's recording instant to the day after it
        /// happened, as a log recorded day by day has them (the bulk load records every case
        /// whole at once), so that `as_of` at a past instant meets the cases open then.
        #[arg(long, requires = "load_years")]
        recorded_day_by_day: bool,
        /// Adds cqrs-es with postgres-es 0.5 as a third side of the single-event measurement, on
        /// its documented schema in the same database. Needs a build with the `peer` feature:
        /// `cargo build --release -p caselog-bench --features peer`.
        #[arg(long)]
        peer: bool,
    },
    /// The fault campaign: writers keep a ledger while the server and PostgreSQL are killed,
    /// a rebuild and a projection catch-up are killed, connections run out and SIGTERM meets
    /// open streams; then the log is checked against the ledger. Prints a table.
    Faults {
        /// The short version (about a minute, as CI runs it).
        #[arg(long)]
        short: bool,
        /// Concurrent writers.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// The caselog binary (default: next to this one).
        #[arg(long)]
        caselog: Option<std::path::PathBuf>,
    },
    /// The cost of the never-skipping feed on appends, and commit-to-delivery latency.
    Feed {
        /// Concurrent writers for the append comparison.
        #[arg(long, default_value_t = 16)]
        writers: usize,
        /// Seconds per append measurement (each side runs twice, alternating).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Events per second for the latency measurement.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// gRPC writers sharing that rate.
        #[arg(long, default_value_t = 32)]
        latency_writers: u64,
        /// Events per AppendEvents request in the latency measurement.
        #[arg(long, default_value_t = 1)]
        batch: u64,
        /// Seconds of the latency measurement.
        #[arg(long, default_value_t = 15)]
        latency_seconds: u64,
    },
}

/// The benchmark's own pool (the raw side's connections among them).
const BENCH_CONNECTIONS: u32 = 40;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    caselog_store::create_database_if_missing(&cli.database_url).await?;
    let settings = ConnectSettings {
        max_connections: BENCH_CONNECTIONS,
        // The raw side reads and copies the whole log; the service's 30 s guard is not for it.
        statement_timeout: std::time::Duration::from_secs(3600),
        ..ConnectSettings::default()
    };
    let pool = caselog_store::connect(&cli.database_url, &settings)?;
    caselog_store::MIGRATOR
        .run(&pool)
        .await
        .context("migrating the benchmark database")?;
    match cli.bench {
        Bench::Suite {
            load_years,
            seed,
            caselog,
            seconds,
            batches,
            queries,
            straddlers,
            clients,
            cases_per_client,
            keep_up_rate,
            only,
            serve_arg,
            recorded_day_by_day,
            peer,
        } => {
            if peer && !cfg!(feature = "peer") {
                bail!(
                    "--peer needs a caselog-bench built with the peer feature: cargo build --release -p caselog-bench --features peer"
                );
            }
            let caselog = caselog_binary(caselog)?;
            let options = suite::SuiteOptions {
                database_url: cli.database_url.clone(),
                load_years,
                seed,
                caselog,
                seconds,
                batches,
                queries,
                straddlers,
                clients,
                cases_per_client: cases_per_client as usize,
                keep_up_rate,
                only,
                serve_args: serve_arg,
                recorded_day_by_day,
                peer,
            };
            suite::run(&pool, &options).await?;
        }
        Bench::Faults {
            short,
            writers,
            caselog,
        } => {
            let options = faults::FaultOptions {
                caselog: caselog_binary(caselog)?,
                short,
                writers,
                fallback_database_url: cli.database_url.clone(),
            };
            faults::run(&options).await?;
        }
        Bench::Feed {
            writers,
            seconds,
            rate,
            latency_writers,
            batch,
            latency_seconds,
        } => {
            print_machine(&pool).await?;
            append_cost(&pool, writers, Duration::from_secs(seconds)).await?;
            let load = Load {
                rate,
                writers: latency_writers,
                batch: batch.max(1),
            };
            delivery_latency(&pool, load, Duration::from_secs(latency_seconds)).await?;
        }
    }
    Ok(())
}

async fn print_machine(pool: &PgPool) -> anyhow::Result<()> {
    let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(pool).await?;
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(pool).await?;
    let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(pool).await?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("unknown".to_owned(), |kb| {
            format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0)
        });
    println!(
        "machine: {cores} cores, {memory} memory; PostgreSQL {version} (fsync={fsync}, synchronous_commit={sync})"
    );
    Ok(())
}

const PLAIN_TABLE_SETUP: [&str; 3] = [
    "DROP TABLE IF EXISTS bench_events_plain",
    "CREATE TABLE bench_events_plain (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)",
    "CREATE SEQUENCE IF NOT EXISTS bench_plain_position",
];

/// The store's append statement, minus the feed: positions from a plain sequence, no promise.
const PLAIN_APPEND: &str = "INSERT INTO bench_events_plain (position, event_id, case_id, version, event_type, occurred_on, data, metadata, source)
     SELECT nextval('bench_plain_position'), r.event_id, $1, $2 + r.n::integer - 1, r.event_type, r.occurred_on, r.data, r.metadata, $3
       FROM UNNEST($4::uuid[], $5::text[], $6::date[], $7::jsonb[], $8::jsonb[])
              WITH ORDINALITY AS r(event_id, event_type, occurred_on, data, metadata, n)
     RETURNING position, version, recorded_at";

fn bench_row() -> NewRow {
    NewRow {
        event_id: uuid::Uuid::new_v4().into(),
        event_type: "hearing_listed".into(),
        occurred_on: chrono::NaiveDate::from_ymd_opt(2025, 5, 1).unwrap_or_default(),
        data: serde_json::json!({"hearing_type": "cmh", "listed_for": "2025-07-01"}).to_string(),
        metadata: "{}".to_owned(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Feed,
    Plain,
}

/// Appends/s from `writers` tasks, each appending single events to its own case for `duration`.
async fn run_appends(pool: &PgPool, side: Side, writers: usize, duration: Duration, run: usize) -> anyhow::Result<f64> {
    let log = EventLog::new(pool.clone());
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let (log, pool, count) = (log.clone(), pool.clone(), count.clone());
        let case_id = format!("BENCH-{}-{run}-{w}-{}", side as u8, uuid::Uuid::new_v4().simple());
        tasks.spawn(async move {
            let mut version = Version::ZERO;
            while start.elapsed() < duration {
                let row = bench_row();
                match side {
                    Side::Feed => {
                        log.append(&case_id, version, "bench", vec![row]).await?;
                    }
                    Side::Plain => {
                        sqlx::query(PLAIN_APPEND)
                            .bind(&case_id)
                            .bind(i32::from(version.after(1)?))
                            .bind("bench")
                            .bind(vec![uuid::Uuid::from(row.event_id)])
                            .bind(vec![row.event_type])
                            .bind(vec![row.occurred_on])
                            .bind(vec![row.data])
                            .bind(vec![row.metadata])
                            .fetch_all(&pool)
                            .await?;
                    }
                }
                version = version.after(1)?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

async fn append_cost(pool: &PgPool, writers: usize, duration: Duration) -> anyhow::Result<()> {
    for statement in PLAIN_TABLE_SETUP {
        sqlx::query(statement).execute(pool).await?;
    }
    println!(
        "\n== feed: single-event appends, {writers} concurrent writers, {} s per run",
        duration.as_secs()
    );
    let (mut feed, mut plain) = (Vec::new(), Vec::new());
    for run in 0..2 {
        plain.push(run_appends(pool, Side::Plain, writers, duration, run).await?);
        feed.push(run_appends(pool, Side::Feed, writers, duration, run).await?);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (feed, plain) = (mean(&feed), mean(&plain));
    println!("raw PostgreSQL (same INSERT, plain sequence):   {plain:>9.0} appends/s");
    println!("caselog event log (with feed position promises): {feed:>9.0} appends/s");
    println!(
        "ratio caselog/raw: {:.2} (feed cost {:.1}%; goal: cost at most 20%)",
        feed / plain,
        (1.0 - feed / plain) * 100.0
    );
    Ok(())
}

/// The offered load of the latency measurement.
#[derive(Debug, Clone, Copy)]
struct Load {
    rate: u64,
    writers: u64,
    batch: u64,
}

async fn delivery_latency(pool: &PgPool, load: Load, duration: Duration) -> anyhow::Result<()> {
    let Load { rate, writers, batch } = load;
    println!(
        "\n== feed: commit-to-delivery latency, {rate} events/s ({batch} per request, {writers} writers) for {} s, one live gRPC subscriber",
        duration.as_secs()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let log = EventLog::new(pool.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let security = caselog_server::Security {
        authenticator: bench_authenticator()?,
        tls: None,
        plaintext_health: None,
        scrape: None,
    };
    let server = tokio::spawn(caselog_server::run(
        listener,
        log.clone(),
        caselog_server::ServerLimits::default(),
        security,
        async {
            let _ = stop_rx.await;
        },
    ));
    let channel = authed(Endpoint::from_shared(format!("http://{addr}"))?.connect().await?);
    let head = log.horizon().await?.safe;

    let mut feed = EventFeedServiceClient::new(channel.clone());
    let mut stream = feed
        .subscribe_events(pb::SubscribeEventsRequest {
            from_position: head.get(),
            filter: None,
        })
        .await?
        .into_inner();
    let writing = Arc::new(AtomicBool::new(true));
    let subscriber = {
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut latencies_ms = Vec::new();
            let mut idle_since_writers_stopped = None::<Instant>;
            loop {
                let next = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
                match next {
                    Ok(Ok(Some(pb::SubscribeEventsResponse {
                        message: Some(pb::subscribe_events_response::Message::Event(e)),
                    }))) => {
                        let now = chrono::Utc::now();
                        if let Some(at) = e.recorded_at {
                            let recorded = chrono::DateTime::from_timestamp(at.seconds, at.nanos as u32).unwrap_or(now);
                            latencies_ms.push((now - recorded).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                        }
                    }
                    Ok(Ok(Some(_))) => {}
                    Ok(_) => break,
                    Err(_) if !writing.load(Ordering::Relaxed) => {
                        if idle_since_writers_stopped.get_or_insert_with(Instant::now).elapsed()
                            > Duration::from_secs(1)
                        {
                            break;
                        }
                    }
                    Err(_) => {}
                }
            }
            latencies_ms
        })
    };

    // Each writer paces its share of the rate over 50 cases of its own.
    let per_writer = Duration::from_secs_f64((writers * batch) as f64 / rate as f64);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let mut client = CaseEventServiceClient::new(channel.clone());
        let run = uuid::Uuid::new_v4().simple().to_string();
        tasks.spawn(async move {
            let cases: Vec<String> = (0..50).map(|c| format!("LAT{}-{w}-{c}", &run[..8])).collect();
            for case_id in &cases {
                client.append_events(issue(case_id)).await?;
            }
            let mut ticker = tokio::time::interval(per_writer);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut i = 0usize;
            while start.elapsed() < duration {
                ticker.tick().await;
                client
                    .append_events(hearings(&cases[i % cases.len()], batch as usize))
                    .await?;
                i += batch as usize;
            }
            anyhow::Ok(i)
        });
    }
    let mut appended = 0;
    while let Some(done) = tasks.join_next().await {
        appended += done??;
    }
    let achieved = appended as f64 / start.elapsed().as_secs_f64();
    writing.store(false, Ordering::Relaxed);
    let latencies = subscriber.await?;
    let _ = stop_tx.send(());
    let _ = server.await;
    let latencies = sorted(latencies);
    let pct = |p: f64| percentile(&latencies, p);
    println!(
        "appended {appended} events at {achieved:.0} events/s through gRPC; delivered {}",
        latencies.len()
    );
    println!(
        "recorded_at (append statement start, just before commit) to subscriber receipt: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

fn issue(case_id: &str) -> pb::AppendEventsRequest {
    let kind = pb::event_payload::Kind::CaseIssued(pb::CaseIssued {
        law_type: pb::LawType::Private as i32,
        application_types: vec![pb::ApplicationType::S8ChildArrangements as i32],
        court_code: "LS".into(),
        service_area: "A5".into(),
        local_authority_code: String::new(),
        children: vec![pb::Child {
            child_id: format!("{case_id}-1"),
            birth_month: "2018-05".into(),
        }],
        received_on: String::new(),
    });
    request(case_id, "2025-04-17", kind)
}

/// `count` hearing listings for one case, each with its own event id.
fn hearings(case_id: &str, count: usize) -> pb::AppendEventsRequest {
    let kind = pb::event_payload::Kind::HearingListed(pb::HearingListed {
        hearing_type: pb::HearingType::Cmh as i32,
        listed_for: "2025-07-01".into(),
    });
    let mut request = request(case_id, "2025-05-01", kind);
    let one = request.events[0].clone();
    request.events = (0..count)
        .map(|_| pb::NewEvent {
            event_id: uuid::Uuid::new_v4().to_string(),
            ..one.clone()
        })
        .collect();
    request
}

/// The caselog binary: as given, or next to this one.
fn caselog_binary(given: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    Ok(match given {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("caselog"),
    })
}

/// The value at quantile `p` of ascending `sorted_ms` (NaN when empty).
fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    sorted_ms
        .get(((sorted_ms.len() as f64 * p) as usize).min(sorted_ms.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn sorted(mut ms: Vec<f64>) -> Vec<f64> {
    ms.sort_by(|a, b| a.total_cmp(b));
    ms
}

pub(crate) fn request(case_id: &str, occurred_on: &str, kind: pb::event_payload::Kind) -> pb::AppendEventsRequest {
    pb::AppendEventsRequest {
        case_id: case_id.into(),
        events: vec![pb::NewEvent {
            event_id: uuid::Uuid::new_v4().to_string(),
            occurred_on: occurred_on.into(),
            payload: Some(pb::EventPayload { kind: Some(kind) }),
            metadata: None,
        }],
        expected_version: None,
    }
}

/// The development token of the servers the bench starts (migration and administrator grants):
/// the bench measures the service, not an identity provider.
const BENCH_TOKEN: &str = "caselog-bench-dev-token-migration-admin";
const BENCH_ORGANISATION: &str = "caselog-bench";

fn bench_authenticator() -> anyhow::Result<Arc<caselog_server::auth::Authenticator>> {
    use caselog_domain::{Grant, Principal};
    let principal = Principal {
        organisation: BENCH_ORGANISATION.to_owned(),
        grants: vec![Grant::Migration, Grant::Administrator],
    };
    let settings = caselog_server::auth::AuthSettings {
        dev_tokens: Some(caselog_server::auth::DevTokens::from_entries([(
            BENCH_TOKEN.to_owned(),
            principal,
        )])),
        max_concurrent_per_client: 256,
        ..Default::default()
    };
    Ok(Arc::new(caselog_server::auth::Authenticator::new(settings)?))
}

/// The bench's development token file for a `caselog serve` child; removed when dropped.
struct DevTokenFile {
    path: std::path::PathBuf,
}

impl DevTokenFile {
    fn write() -> anyhow::Result<DevTokenFile> {
        let path = std::env::temp_dir().join(format!("caselog-bench-tokens-{}.json", std::process::id()));
        let body = serde_json::json!({"tokens": [{
            "token": BENCH_TOKEN,
            "organisation": BENCH_ORGANISATION,
            "grants": ["migration", "admin"],
        }]});
        std::fs::write(&path, body.to_string())?;
        Ok(DevTokenFile { path })
    }
}

impl Drop for DevTokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

type Authed = caselog_server::auth::WithToken;

fn authed(channel: tonic::transport::Channel) -> Authed {
    let token =
        caselog_server::auth::BearerToken::new(Some(BENCH_TOKEN)).expect("the bench token is a valid header value");
    Authed::new(channel, token)
}
