//! `caselog-bench suite`: every figure of the workload issue, each next to the raw PostgreSQL
//! figure for the same schema and data, measured in the same run on the same machine.
//!
//! The service under test is the real `caselog` binary, started as a child process (so its peak
//! memory is its own), and the rebuild is `caselog rebuild`, also a child process.

use crate::cpu::{Meter, Spent};
use crate::{Authed, DevTokenFile, authed};
use crate::{hearings, issue, percentile, print_machine, request, sorted};
use anyhow::{Context, bail};
use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_api::v1::metrics_service_client::MetricsServiceClient;
use caselog_cli::generate::{GenerateOptions, compare_with_reference, load};
use caselog_projections::MetricId;
use caselog_store::EventLog;
use caselog_workload::WorkloadSettings;
use chrono::Datelike;
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;

#[derive(Debug, Clone)]
pub struct SuiteOptions {
    pub database_url: String,
    /// Years of national workload to generate and load first (0: use what the database holds).
    pub load_years: u32,
    pub seed: u64,
    /// The `caselog` binary to start.
    pub caselog: PathBuf,
    /// Seconds per throughput measurement.
    pub seconds: u64,
    /// 1,000-event requests per side of the batch ingest comparison.
    pub batches: usize,
    /// Queries in the latency measurement.
    pub queries: usize,
    /// Open cases given one more event after an instant, for the straddle measurement.
    pub straddlers: usize,
    /// Client counts for single-event appends.
    pub clients: Vec<usize>,
    /// Cases each single-event client appends to in turn.
    pub cases_per_client: usize,
    /// Events per second offered while measuring projection lag.
    pub keep_up_rate: u64,
    /// Which measurements to run: replay, query, straddle, batch, single, keep-up, restart
    /// (all when empty).
    pub only: Vec<String>,
    /// Extra arguments for the `caselog serve` child.
    pub serve_args: Vec<String>,
    /// After loading, spread the events' recording instants over the days they happened.
    pub recorded_day_by_day: bool,
    /// Measure postgres-es beside the single-event appends (a build with the `peer` feature;
    /// `main` refuses the option without it).
    #[cfg_attr(not(feature = "peer"), allow(dead_code))]
    pub peer: bool,
}

impl SuiteOptions {
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

pub async fn run(pool: &PgPool, options: &SuiteOptions) -> anyhow::Result<()> {
    print_machine(pool).await?;
    if options.load_years > 0 {
        load_workload(pool, options).await?;
    }
    setup_plain_table(pool).await?;
    if options.runs("replay") {
        replay(pool, options).await?;
    }
    let service = Service::start(options).await?;
    let result = async {
        let head = EventLog::new(pool.clone()).horizon().await?.safe;
        let waited = wait_for_projection(&service.channel, head).await?;
        println!(
            "\n(the service's projection reached position {head} {:.1} s after it started)",
            waited.as_secs_f64()
        );
        let snapshot_after = snapshot_after_events(&options.serve_args)?;
        if options.runs("restart") && snapshot_after > 0 {
            let waited = wait_for_snapshot(pool, head, snapshot_after).await?;
            println!(
                "(the service's read-model snapshot covered position {head} {:.1} s later)",
                waited.as_secs_f64()
            );
        }
        if options.runs("query") {
            query_latency(pool, &service.channel, options.queries).await?;
        }
        if options.runs("straddle") {
            straddling_as_of(pool, &service.channel, options.straddlers).await?;
        }
        // Each write measurement starts on a quiet machine (see `quiet_down`).
        if options.runs("batch") {
            quiet_down(pool, &service.channel, options).await?;
            batch_ingest(pool, &service.channel, options, service.meter()).await?;
        }
        if options.runs("single") {
            for &clients in &options.clients {
                quiet_down(pool, &service.channel, options).await?;
                single_appends(pool, &service.endpoint, clients, options, service.meter()).await?;
            }
        }
        if options.runs("keep-up") {
            quiet_down(pool, &service.channel, options).await?;
            let duration = Duration::from_secs(options.seconds);
            projection_keep_up(pool, &service.channel, options.keep_up_rate, duration).await?;
        }
        anyhow::Ok(())
    }
    .await;
    let peak = service.stop().await;
    println!(
        "\n== service: peak resident memory of `caselog serve` over the run: {}",
        peak.map_or("unknown".into(), mib)
    );
    result?;
    if options.runs("restart") {
        restart(pool, options).await?;
    }
    Ok(())
}

/// `as_of` at an instant after which `straddlers` open cases each got one more event: every one
/// of them has events on both sides of the instant and is folded again, as the open cases of a
/// log recorded day by day are at any past instant (the bulk load writes each case whole, so
/// the query measurement's instants have almost none).
async fn straddling_as_of(pool: &PgPool, channel: &Authed, straddlers: usize) -> anyhow::Result<()> {
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT case_id FROM events e
          WHERE version = 1 AND NOT EXISTS (SELECT 1 FROM events c WHERE c.case_id = e.case_id AND c.event_type = 'case_closed')
          ORDER BY case_id LIMIT $1",
    )
    .bind(i64::try_from(straddlers)?)
    .fetch_all(pool)
    .await?;
    println!(
        "\n== straddle: as_of at an instant after which {} open cases each got one more event",
        open.len()
    );
    let instant: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let today = caselog_domain::england::date_in_england(chrono::Utc::now());
    let listed_for = (today + chrono::Days::new(28)).to_string();
    let next = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(open);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (mut client, next, open) = (CaseEventServiceClient::new(channel.clone()), next.clone(), open.clone());
        let (today, listed_for) = (today.to_string(), listed_for.clone());
        tasks.spawn(async move {
            let mut refused = Vec::new();
            while let Some(case_id) = open.get(next.fetch_add(1, Ordering::Relaxed)) {
                let kind = pb::event_payload::Kind::HearingListed(pb::HearingListed {
                    hearing_type: pb::HearingType::Cmh as i32,
                    listed_for: listed_for.clone(),
                });
                if let Err(status) = client.append_events(request(case_id, &today, kind)).await {
                    refused.push(status);
                }
            }
            refused
        });
    }
    let mut refused = Vec::new();
    while let Some(done) = tasks.join_next().await {
        refused.extend(done?);
    }
    if let Some(first) = refused.first() {
        println!(
            "{} of the appends were refused (first: {:?} {})",
            refused.len(),
            first.code(),
            first.message()
        );
    }
    let straddling: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT case_id FROM events GROUP BY case_id
                                HAVING min(recorded_at) <= $1 AND max(recorded_at) > $1) AS s",
    )
    .bind(instant)
    .fetch_one(pool)
    .await?;
    let head = EventLog::new(pool.clone()).horizon().await?.safe;
    wait_for_projection(channel, head).await?;
    let mut metrics = MetricsServiceClient::new(channel.clone());
    let query = year_query(latest_complete_financial_year(), head.get());
    let seconds = seconds_as_of(&mut metrics, &query, [instant; 5]).await?;
    println!(
        "{straddling} cases with events on both sides of the instant; as_of there before it settled, 5 queries: p50 {:.2} s, max {:.2} s",
        percentile(&seconds, 0.5),
        seconds.last().copied().unwrap_or(f64::NAN)
    );
    // Once settled (the service is started with a short settling time, and every append above
    // has been acknowledged), an instant is answered from the projection's history. Five
    // instants a millisecond apart, so that each answer is the first at its instant.
    let settled_at = instant + chrono::Duration::from_std(SERVICE_SETTLED_AFTER)? + chrono::Duration::seconds(1);
    if let Ok(wait) = (settled_at - chrono::Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
    let instants: Vec<_> = (0..5)
        .map(|earlier| instant - chrono::Duration::milliseconds(earlier))
        .collect();
    let seconds = seconds_as_of(&mut metrics, &query, instants).await?;
    println!(
        "as_of once settled, the first question at each of 5 instants: p50 {:.2} s, max {:.2} s (goal: at most 1 s)",
        percentile(&seconds, 0.5),
        seconds.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// The seconds each `query` as of each of `instants` took, sorted.
async fn seconds_as_of(
    metrics: &mut MetricsServiceClient<Authed>,
    query: &pb::QueryMetricsRequest,
    instants: impl IntoIterator<Item = chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<Vec<f64>> {
    let mut seconds = Vec::new();
    for at in instants {
        let mut as_of = query.clone();
        as_of.as_of = Some(prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: at.timestamp_subsec_nanos() as i32,
        });
        let started = Instant::now();
        metrics.query_metrics(as_of).await?;
        seconds.push(started.elapsed().as_secs_f64());
    }
    Ok(sorted(seconds))
}

/// How long after an instant the suite's service treats it as settled (its default is five
/// minutes; the straddle measurement waits this long rather than that).
const SERVICE_SETTLED_AFTER: Duration = Duration::from_secs(15);

/// Waits until the service has written a read-model snapshot less than one snapshot interval
/// (`behind` events) behind `head`, as it does once it has loaded its copy and whenever the
/// projection has moved on by that many events since the last.
async fn wait_for_snapshot(pool: &PgPool, head: caselog_domain::Position, behind: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if snapshot_covers(pool, head, behind).await? {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("no read-model snapshot near position {head} within ten minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A new `caselog serve` on the same database: how long from its start until it answers the
/// query of the latency measurement, loading its read model from the newest snapshot and the
/// rows written after it; and its peak memory meanwhile.
async fn restart(pool: &PgPool, options: &SuiteOptions) -> anyhow::Result<()> {
    println!("\n== restart: a new `caselog serve` until its first QueryMetrics answer");
    let snapshot: Option<(i64, i64, i32, i64)> =
        sqlx::query_as("SELECT position, cases, parts, bytes FROM read_model_snapshots ORDER BY taken_at DESC LIMIT 1")
            .fetch_optional(pool)
            .await?;
    let stored: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('read_model_snapshot_parts')")
        .fetch_one(pool)
        .await?;
    let checkpoint = EventLog::new(pool.clone())
        .checkpoint(caselog_store::projection::CASE_FACTS)
        .await?;
    match snapshot {
        Some((position, cases, parts, bytes)) => println!(
            "newest read-model snapshot: position {position} (projection checkpoint {checkpoint}), {cases} cases, \
             {:.1} MiB in {parts} parts ({:.1} MiB stored with its indexes)",
            bytes as f64 / 1048576.0,
            stored as f64 / 1048576.0
        ),
        None => println!("no read-model snapshot: the new service reads every case's row"),
    }
    let started = Instant::now();
    let service = Service::start(options).await?;
    let mut metrics = MetricsServiceClient::new(service.channel.clone());
    let request = year_query(latest_complete_financial_year(), 0);
    let answered = loop {
        match metrics.query_metrics(request.clone()).await {
            Ok(_) => break started.elapsed(),
            Err(status)
                if status.code() == tonic::Code::Unavailable && started.elapsed() < Duration::from_secs(600) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => bail!("the restarted service did not answer: {status}"),
        }
    };
    let peak = service.stop().await;
    println!(
        "first answer {:.2} s after the process was started (goal: at most 2 s); peak resident {}",
        answered.as_secs_f64(),
        peak.map_or("unknown".into(), mib)
    );
    Ok(())
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

async fn load_workload(pool: &PgPool, options: &SuiteOptions) -> anyhow::Result<()> {
    let until = caselog_domain::england::date_in_england(chrono::Utc::now());
    let first_day = until
        .checked_sub_months(chrono::Months::new(12 * options.load_years))
        .context("--load-years reaches outside the calendar")?;
    let generate = GenerateOptions {
        workload: WorkloadSettings {
            seed: options.seed,
            first_day,
            last_day: until,
            cases_per_working_day: 220.0,
        },
        resend_rate: 0.0,
        order: caselog_cli::generate::LineOrder::Case,
    };
    println!(
        "\n== load: {} years of national workload (seed {}), generated and loaded with COPY",
        options.load_years, options.seed
    );
    let started = Instant::now();
    let generated = load(&generate, &EventLog::new(pool.clone()), "workload-generator").await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "loaded {} cases, {} events in {seconds:.1} s ({:.0} events/s)",
        generated.cases,
        generated.events,
        generated.events as f64 / seconds
    );
    for line in compare_with_reference(&generated.facts, until) {
        println!("{line}");
    }
    if options.recorded_day_by_day {
        record_day_by_day(pool).await?;
    }
    Ok(())
}

/// Moves the loaded events' recording instants to the day after each happened (08:00-18:00
/// UTC), each case's kept in version order, as a log recorded day by day has them: `as_of` at
/// any past instant then finds the cases open then with events on both sides of it. The bulk
/// load records every case whole at once, which no real log does. The append-only trigger is
/// set aside for the one statement: a benchmark database only, before anything is projected.
async fn record_day_by_day(pool: &PgPool) -> anyhow::Result<()> {
    let projected: i64 =
        sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = 'case_facts'")
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(
        projected == 0,
        "--recorded-day-by-day needs a database nothing was projected in"
    );
    let started = Instant::now();
    let mut connection = pool.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *connection)
        .await?;
    let mut tx = sqlx::Connection::begin(&mut *connection).await?;
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only_rows")
        .execute(&mut *tx)
        .await?;
    let moved = sqlx::query(
        "UPDATE events e SET recorded_at = r.at
           FROM (SELECT position, max(at) OVER (PARTITION BY case_id ORDER BY version) AS at
                   FROM (SELECT position, case_id, version,
                                LEAST((occurred_on + 1)::timestamp AT TIME ZONE 'UTC' + interval '8 hours'
                                        + (position % 36000) * interval '1 second',
                                      now() - interval '1 hour') AS at
                           FROM events) AS spread) AS r
          WHERE e.position = r.position",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_append_only_rows")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    // The update left a dead copy of every row; rewriting the table in position order leaves
    // it as a log appended in order would be, so later runs do not measure a bloated table.
    sqlx::query("CLUSTER events USING events_pkey")
        .execute(&mut *connection)
        .await?;
    sqlx::query("ANALYZE events").execute(&mut *connection).await?;
    println!(
        "recording instants of {moved} events moved to the day after each happened, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The raw side's table: the `events` schema with its indexes and, so that index maintenance
/// costs the same, a copy of its rows (made once per database; both tables then grow alike).
async fn setup_plain_table(pool: &PgPool) -> anyhow::Result<()> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('bench_events_plain') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        let started = Instant::now();
        let mut connection = pool.acquire().await?;
        sqlx::query("SET statement_timeout = 0")
            .execute(&mut *connection)
            .await?;
        for statement in [
            "CREATE TABLE bench_events_plain (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)",
            "INSERT INTO bench_events_plain SELECT * FROM events",
            "CREATE SEQUENCE IF NOT EXISTS bench_plain_position",
            "SELECT setval('bench_plain_position', (SELECT coalesce(max(position), 0) + 1 FROM bench_events_plain))",
            "ANALYZE bench_events_plain",
        ] {
            sqlx::query(statement).execute(&mut *connection).await?;
        }
        sqlx::query("SET statement_timeout = DEFAULT")
            .execute(&mut *connection)
            .await?;
        println!(
            "\n(raw side: bench_events_plain created as a copy of the events log in {:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Full replay (`caselog rebuild`) against `COPY (SELECT ... ORDER BY position) TO STDOUT`.
async fn replay(pool: &PgPool, options: &SuiteOptions) -> anyhow::Result<()> {
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    println!("\n== replay: {events} events");
    let mut connection = pool.acquire().await?;
    let started = Instant::now();
    let mut stream = connection
        .copy_out_raw(
            "COPY (SELECT position, event_id, case_id, version, event_type, occurred_on, data, metadata, source, recorded_at
                     FROM events ORDER BY position) TO STDOUT",
        )
        .await?;
    let mut bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len();
    }
    let raw_seconds = started.elapsed().as_secs_f64();
    drop(stream);
    let raw_rate = events as f64 / raw_seconds;
    println!(
        "raw PostgreSQL COPY (SELECT ... ORDER BY position) TO STDOUT: {raw_seconds:.1} s, {raw_rate:.0} events/s ({} MiB)",
        bytes / (1 << 20)
    );
    let (summary, peak) = run_child(&options.caselog, &["rebuild"], &options.database_url).await?;
    let rate = summary
        .lines()
        .find_map(|l| l.split("s, ").nth(1)?.strip_suffix(" events/s)")?.parse::<f64>().ok())
        .context("no rate in the rebuild summary")?;
    for line in summary.lines() {
        println!("caselog rebuild: {line}");
    }
    println!(
        "caselog rebuild peak resident memory: {}",
        peak.map_or("unknown".into(), mib)
    );
    println!(
        "ratio rebuild/raw: {:.2} (rebuild loading rate {rate:.0} vs raw {raw_rate:.0} events/s; goal: at least 0.8)",
        rate / raw_rate
    );
    Ok(())
}

/// Runs `caselog <args>` to completion: its standard output and its sampled peak memory.
async fn run_child(caselog: &PathBuf, args: &[&str], database_url: &str) -> anyhow::Result<(String, Option<u64>)> {
    let mut child = tokio::process::Command::new(caselog)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", caselog.display()))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().context("no stdout")?;
    let sampler = tokio::spawn(sample_peak(pid));
    let mut output = String::new();
    stdout.read_to_string(&mut output).await?;
    let status = child.wait().await?;
    let peak = sampler.await.ok().flatten();
    if !status.success() {
        bail!("caselog {} failed ({status}): {output}", args.join(" "));
    }
    Ok((output, peak))
}

/// The largest resident set of process `pid`, sampled every 50 ms until it exits.
async fn sample_peak(pid: Option<u32>) -> Option<u64> {
    let pid = pid?;
    let mut peak = None;
    loop {
        match resident_kib(pid, "VmHWM:") {
            Some(kib) => peak = Some(peak.unwrap_or(0).max(kib)),
            None => return peak,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn resident_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The `caselog serve` child's pool size.
const SERVICE_CONNECTIONS: u32 = 32;

/// `caselog serve` as a child process on a free loopback port.
struct Service {
    child: tokio::process::Child,
    channel: Authed,
    /// Where the service listens, for clients that want connections of their own.
    endpoint: Endpoint,
    _dev_tokens: DevTokenFile,
}

impl Service {
    async fn start(options: &SuiteOptions) -> anyhow::Result<Service> {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let dev_tokens = DevTokenFile::write()?;
        let child = tokio::process::Command::new(&options.caselog)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--db-max-connections",
                &SERVICE_CONNECTIONS.to_string(),
                "--as-of-settled-after-secs",
                &SERVICE_SETTLED_AFTER.as_secs().to_string(),
                "--allow-dev-tokens",
                "--dev-tokens",
            ])
            .arg(&dev_tokens.path)
            .args(&options.serve_args)
            .env("DATABASE_URL", &options.database_url)
            .env("RUST_LOG", "warn")
            // As the container image runs it (deploy/Dockerfile), unless set here already.
            .env(
                "MALLOC_ARENA_MAX",
                std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", options.caselog.display()))?;
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?;
        for _ in 0..100 {
            if let Ok(channel) = endpoint.connect().await {
                return Ok(Service {
                    child,
                    channel: authed(channel),
                    endpoint,
                    _dev_tokens: dev_tokens,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("caselog serve did not start listening on port {port}")
    }

    /// Measures processor time with this service as the service side.
    fn meter(&self) -> Meter {
        Meter::new(self.child.id())
    }

    /// Stops the service; returns its peak resident memory.
    async fn stop(mut self) -> Option<u64> {
        let peak = self.child.id().and_then(|pid| resident_kib(pid, "VmHWM:"));
        let _ = self.child.kill().await;
        peak
    }
}

fn year_query(start_year: i32, min_position: u64) -> pb::QueryMetricsRequest {
    pb::QueryMetricsRequest {
        metric_ids: MetricId::ALL.iter().map(|m| m.id().to_owned()).collect(),
        period: Some(pb::PeriodSpec {
            kind: Some(pb::period_spec::Kind::FinancialYear(format!(
                "{start_year}-{:02}",
                (start_year + 1) % 100
            ))),
        }),
        group_by: vec![pb::Dimension::ServiceArea as i32],
        min_position,
        ..Default::default()
    }
}

fn latest_complete_financial_year() -> i32 {
    let today = caselog_domain::england::date_in_england(chrono::Utc::now());
    if today.month() >= 4 {
        today.year() - 1
    } else {
        today.year() - 2
    }
}

/// Waits until the background work the previous measurement left behind is done, so that it
/// lands in neither side's rounds of the next: the projection's catching up, a read-model
/// snapshot that has come due (writing one of ten national years reads the log's recording
/// spans for seconds and writes over a hundred MiB), and PostgreSQL's writing of the pages the
/// measurement dirtied (a `CHECKPOINT`, as before a pgbench run). The sides alternate rounds,
/// so such work lands in one of them by chance and moves the ratio from run to run.
async fn quiet_down(pool: &PgPool, channel: &Authed, options: &SuiteOptions) -> anyhow::Result<()> {
    settle(pool, channel).await?;
    wait_for_due_snapshot(pool, options).await?;
    match checkpoint(pool).await {
        Ok(took) => println!("(CHECKPOINT before the measurement: {:.1} s)", took.as_secs_f64()),
        // Needs a superuser or pg_checkpoint; without it the measurement runs as before.
        Err(err) => println!("(no CHECKPOINT before the measurement: {err})"),
    }
    Ok(())
}

/// Writes out the pages PostgreSQL holds dirty now, rather than in a checkpoint spread over
/// whatever runs next; how long that took.
async fn checkpoint(pool: &PgPool) -> Result<Duration, sqlx::Error> {
    let started = Instant::now();
    sqlx::query("CHECKPOINT").execute(pool).await?;
    Ok(started.elapsed())
}

/// Whether a read-model snapshot of the projection's generation lies less than `behind` events
/// before `head`: the service's next is not due yet.
async fn snapshot_covers(pool: &PgPool, head: caselog_domain::Position, behind: u64) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM read_model_snapshots s JOIN projection_checkpoints c
                          ON c.projection = 'case_facts' AND c.generation = s.generation
                         WHERE s.position + $2 > $1)",
    )
    .bind(i64::from(head))
    .bind(i64::try_from(behind)?)
    .fetch_one(pool)
    .await?)
}

/// Waits, when the projection has moved on by a snapshot interval since the service's newest
/// read-model snapshot, until the service has written the next (it looks once a minute).
async fn wait_for_due_snapshot(pool: &PgPool, options: &SuiteOptions) -> anyhow::Result<()> {
    let after_events = snapshot_after_events(&options.serve_args)?;
    let head = EventLog::new(pool.clone()).horizon().await?.safe;
    // A service writes none of an empty projection.
    if after_events == 0 || head.get() == 0 || snapshot_covers(pool, head, after_events).await? {
        return Ok(());
    }
    let waited = wait_for_snapshot(pool, head, after_events).await?;
    println!(
        "(a read-model snapshot had come due; the service wrote it {:.1} s later)",
        waited.as_secs_f64()
    );
    Ok(())
}

/// The service's `--snapshot-after-events`, as given to it in `--serve-arg`s, in the
/// environment it inherits, or by default.
fn snapshot_after_events(serve_args: &[String]) -> anyhow::Result<u64> {
    snapshot_interval_given(serve_args, std::env::var("CASELOG_SNAPSHOT_AFTER_EVENTS").ok())
}

/// The snapshot interval a service started with `serve_args` and `in_environment` (its
/// `CASELOG_SNAPSHOT_AFTER_EVENTS`) runs with: the flag wins over the environment.
fn snapshot_interval_given(serve_args: &[String], in_environment: Option<String>) -> anyhow::Result<u64> {
    const FLAG: &str = "--snapshot-after-events";
    let mut value = in_environment;
    let mut args = serve_args.iter();
    while let Some(arg) = args.next() {
        if arg == FLAG {
            value = args.next().cloned();
        } else if let Some(given) = arg.strip_prefix(FLAG).and_then(|rest| rest.strip_prefix('=')) {
            value = Some(given.to_owned());
        }
    }
    match value {
        None => Ok(caselog_app::read_model::SnapshotPolicy::default().after_events),
        Some(text) => text
            .parse()
            .with_context(|| format!("{FLAG} {text:?} for the service is not a count of events")),
    }
}

/// Waits until the service's projection has applied every event appended so far.
async fn settle(pool: &PgPool, channel: &Authed) -> anyhow::Result<()> {
    let head = EventLog::new(pool.clone()).horizon().await?.safe;
    let waited = wait_for_projection(channel, head).await?;
    println!(
        "(the projection applied the measurement's last events {:.1} s after it ended)",
        waited.as_secs_f64()
    );
    Ok(())
}

async fn wait_for_projection(channel: &Authed, head: caselog_domain::Position) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut metrics = MetricsServiceClient::new(channel.clone());
    let query = pb::QueryMetricsRequest {
        metric_ids: vec!["S1".into()],
        period: Some(pb::PeriodSpec {
            kind: Some(pb::period_spec::Kind::Month("2025-01".into())),
        }),
        min_position: head.get(),
        ..Default::default()
    };
    loop {
        match metrics.query_metrics(query.clone()).await {
            Ok(_) => return Ok(started.elapsed()),
            Err(status) if status.code() == tonic::Code::Unavailable => {}
            Err(status) => bail!("waiting for the projection: {status}"),
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the projection did not reach position {head} within an hour");
        }
    }
}

/// Every metric of one financial year grouped by service area, against a grouped count over the
/// same projection table in SQL (by the case id's first two characters, the court in generated
/// ids: the table stores the facts encoded, so SQL cannot group by a fact).
async fn query_latency(pool: &PgPool, channel: &Authed, queries: usize) -> anyhow::Result<()> {
    let year = latest_complete_financial_year();
    let request = year_query(year, 0);
    println!(
        "\n== query: all {} metrics of financial year {year}-{:02} grouped by service area, {queries} sequential queries",
        MetricId::ALL.len(),
        (year + 1) % 100
    );
    let mut metrics = MetricsServiceClient::new(channel.clone());
    let first = Instant::now();
    let response = metrics.query_metrics(request.clone()).await?.into_inner();
    println!(
        "first query (loads the projection into the service's memory): {:.0} ms, {} result sets",
        first.elapsed().as_secs_f64() * 1000.0,
        response.results.len()
    );
    let mut ours = Vec::with_capacity(queries);
    for _ in 0..queries {
        let started = Instant::now();
        metrics.query_metrics(request.clone()).await?;
        ours.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    // What reporting and practice clients get: the same figures read from suppressed tables
    // (law type x service area with totals; four counts and the table's suppression).
    let suppressed_request = pb::QueryMetricsRequest {
        suppress_small_numbers: true,
        ..request.clone()
    };
    let mut suppressed = Vec::with_capacity(queries);
    for _ in 0..queries {
        let started = Instant::now();
        metrics.query_metrics(suppressed_request.clone()).await?;
        suppressed.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut raw = Vec::with_capacity(queries);
    for _ in 0..queries {
        let started = Instant::now();
        let _: Vec<(Option<String>, i64)> =
            sqlx::query_as("SELECT left(case_id, 2), count(*) FROM case_facts GROUP BY 1")
                .fetch_all(pool)
                .await?;
        raw.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (ours, suppressed, raw) = (sorted(ours), sorted(suppressed), sorted(raw));
    // as_of folds again only the cases with events on both sides of the instant: measured at
    // the instants 20 events spread evenly over the log were recorded, and at the time of the
    // run. The first also reads each case's recording span from the log, once per process.
    let instants: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "WITH bounds AS (SELECT min(position) AS first, max(position) AS last FROM events)
         SELECT (SELECT recorded_at FROM events WHERE position >= first + (last - first) * i / 20
                  ORDER BY position LIMIT 1)
           FROM bounds, generate_series(1, 20) AS i
          WHERE first IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    // How many cases straddle each instant (events recorded on both sides): what as_of takes
    // again, from the projection's history or by folding.
    let spans: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (extract(epoch FROM min(recorded_at)) * 1e6)::int8, (extract(epoch FROM max(recorded_at)) * 1e6)::int8
           FROM events GROUP BY case_id",
    )
    .fetch_all(pool)
    .await?;
    let mut straddling: Vec<f64> = instants
        .iter()
        .map(|at| {
            let at = at.timestamp_micros();
            spans.iter().filter(|&&(first, last)| first <= at && at < last).count() as f64
        })
        .collect();
    straddling.sort_by(f64::total_cmp);
    drop(spans);
    let spread = instants.into_iter();
    let mut as_of_seconds = Vec::new();
    let mut worst = (0.0, chrono::Utc::now());
    for (i, at) in std::iter::once(chrono::Utc::now()).chain(spread).enumerate() {
        let mut as_of = request.clone();
        as_of.as_of = Some(prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: at.timestamp_subsec_nanos() as i32,
        });
        let started = Instant::now();
        if let Err(status) = metrics.query_metrics(as_of).await {
            bail!("as_of {at}: {:?} {}", status.code(), status.message());
        }
        let seconds = started.elapsed().as_secs_f64();
        if i == 0 {
            println!("first as_of query (at the time of the run; reads every case's recording span): {seconds:.2} s");
        } else {
            as_of_seconds.push(seconds);
            if seconds > worst.0 {
                worst = (seconds, at);
            }
        }
    }
    let as_of_seconds = sorted(as_of_seconds);
    println!(
        "as_of at {} instants spread over the log: p50 {:.2} s, p99 {:.2} s (slowest at {}; goal: p99 at most 1 s)",
        as_of_seconds.len(),
        percentile(&as_of_seconds, 0.5),
        percentile(&as_of_seconds, 0.99),
        worst.1.format("%Y-%m-%d %H:%M:%S")
    );
    println!(
        "  cases straddling those instants: min {:.0}, median {:.0}, max {:.0}",
        straddling.first().copied().unwrap_or(0.0),
        percentile(&straddling, 0.5),
        straddling.last().copied().unwrap_or(0.0)
    );
    let (history_rows, history_bytes, log_bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM case_facts_history), pg_total_relation_size('case_facts_history'),
                pg_total_relation_size('events')",
    )
    .fetch_one(pool)
    .await?;
    println!(
        "  the projection's history for as_of: {history_rows} rows, {} (the log: {})",
        mib(history_bytes as u64 / 1024),
        mib(log_bytes as u64 / 1024)
    );
    println!(
        "raw PostgreSQL (one grouped count over case_facts): p50 {:.1} ms, p99 {:.1} ms",
        percentile(&raw, 0.5),
        percentile(&raw, 0.99)
    );
    println!(
        "caselog QueryMetrics over gRPC:                      p50 {:.1} ms, p99 {:.1} ms (goal: p99 under 100 ms)",
        percentile(&ours, 0.5),
        percentile(&ours, 0.99)
    );
    println!(
        "caselog QueryMetrics, small-number suppression:     p50 {:.1} ms, p99 {:.1} ms (reporting and practice clients)",
        percentile(&suppressed, 0.5),
        percentile(&suppressed, 0.99)
    );
    Ok(())
}

/// 1,000-event AppendEvents requests (a new case each) from 4 clients, against `COPY FROM` of
/// the same rows, 1,000 per COPY, from 4 connections, into an identical table. The sides run in
/// rounds, in the order raw, caselog, caselog, raw, raw, caselog, caselog, raw: a side that runs
/// right after the other finds the other's index pages in the cache instead of its own, so each
/// side runs half its rounds after the other and half after itself. Each caselog round is
/// followed by waiting for the projection and for any read-model snapshot the round brought due,
/// so neither runs inside the next round; and each round starts after a `CHECKPOINT`, so none
/// writes out dirty pages the round before it left.
async fn batch_ingest(pool: &PgPool, channel: &Authed, options: &SuiteOptions, meter: Meter) -> anyhow::Result<()> {
    let batches = options.batches;
    const PER_BATCH: usize = 1000;
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 4;
    println!(
        "\n== batch ingest: {batches} requests of {PER_BATCH} events from {CLIENTS} clients, each side in {ROUNDS} rounds, each after a CHECKPOINT where the role may run one"
    );
    let run = uuid::Uuid::new_v4().simple().to_string();
    let requests: Vec<pb::AppendEventsRequest> = (0..batches)
        .map(|b| {
            let case_id = format!("BATCH-{}-{b}", &run[..8]);
            let mut request = issue(&case_id);
            request.events.extend(hearings(&case_id, PER_BATCH - 1).events);
            request
        })
        .collect();
    // The same rows as COPY text, positions from the plain table's sequence range.
    let first: i64 = sqlx::query_scalar("SELECT nextval('bench_plain_position')")
        .fetch_one(pool)
        .await?;
    sqlx::query("SELECT setval('bench_plain_position', $1)")
        .bind(first + (batches * PER_BATCH) as i64)
        .execute(pool)
        .await?;
    let copies: Vec<Vec<u8>> = requests
        .iter()
        .enumerate()
        .map(|(b, request)| copy_rows(request, first + (b * PER_BATCH) as i64 + 1))
        .collect();
    let per_round = batches.div_ceil(ROUNDS).max(1);
    let (copies, requests) = (Arc::new(copies), Arc::new(requests));

    let (mut raw_spent, mut ours_spent) = (Spent::default(), Spent::default());
    let (mut raw_time, mut ours_time) = (Duration::ZERO, Duration::ZERO);
    let mut lag = Duration::ZERO;
    let mut checkpointed = true;
    for round in 0..ROUNDS {
        let range = (round * per_round).min(batches)..((round + 1) * per_round).min(batches);
        let raw_first = round % 2 == 0;
        for raw_turn in [raw_first, !raw_first] {
            // Every round starts with no dirty pages: the previous round's (or the snapshot's)
            // would otherwise be written out by whichever side runs next.
            checkpointed &= checkpoint(pool).await.is_ok();
            let before = meter.sample();
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for c in 0..CLIENTS {
                let range = range.clone();
                if raw_turn {
                    let (pool, copies) = (pool.clone(), copies.clone());
                    tasks.spawn(async move {
                        let mut connection = pool.acquire().await?;
                        for rows in copies[range].iter().skip(c).step_by(CLIENTS) {
                            let mut copy = connection
                                .copy_in_raw(
                                    "COPY bench_events_plain (position, event_id, case_id, version, event_type, occurred_on, data, metadata, source) FROM STDIN",
                                )
                                .await?;
                            copy.send(rows.as_slice()).await?;
                            copy.finish().await?;
                        }
                        anyhow::Ok(())
                    });
                } else {
                    let (mut client, requests) = (CaseEventServiceClient::new(channel.clone()), requests.clone());
                    tasks.spawn(async move {
                        for request in requests[range].iter().skip(c).step_by(CLIENTS) {
                            client.append_events(request.clone()).await?;
                        }
                        anyhow::Ok(())
                    });
                }
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            let elapsed = started.elapsed();
            let events = range.len() * PER_BATCH;
            let rate = events as f64 / elapsed.as_secs_f64();
            if raw_turn {
                raw_spent.add(before, meter.sample());
                raw_time += elapsed;
                println!("  round {}: raw      {rate:>9.0} events/s", round + 1);
            } else {
                ours_spent.add(before, meter.sample());
                ours_time += elapsed;
                println!("  round {}: caselog  {rate:>9.0} events/s", round + 1);
                let head = EventLog::new(pool.clone()).horizon().await?.safe;
                lag = lag.max(wait_for_projection(channel, head).await?);
                // The snapshot a round's events bring due is the service's work, as the
                // projection is: written here rather than inside the next round, on either side.
                wait_for_due_snapshot(pool, options).await?;
            }
        }
    }
    let events = (batches * PER_BATCH) as u64;
    let raw_rate = events as f64 / raw_time.as_secs_f64();
    let rate = events as f64 / ours_time.as_secs_f64();
    println!("raw PostgreSQL COPY FROM (identical table and indexes): {raw_rate:>9.0} events/s");
    println!("  {}", raw_spent.per_event(events));
    println!("caselog AppendEvents over gRPC (validated, idempotent):   {rate:>9.0} events/s");
    println!("  {}", ours_spent.per_event(events));
    println!("ratio caselog/raw: {:.2} (goal: at least 0.75)", rate / raw_rate);
    if !checkpointed {
        println!("(some rounds ran without a CHECKPOINT before them: the role may not run one)");
    }
    println!(
        "(the projection applied each round's last events at most {:.1} s after it ended)",
        lag.as_secs_f64()
    );
    Ok(())
}

fn copy_rows(request: &pb::AppendEventsRequest, first_position: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(request.events.len() * 200);
    for (i, event) in request.events.iter().enumerate() {
        let (event_type, data) = match event.payload.as_ref().and_then(|p| p.kind.as_ref()) {
            Some(pb::event_payload::Kind::CaseIssued(_)) => (
                "case_issued",
                r#"{"law_type": "private", "application_types": ["s8_child_arrangements"], "court_code": "LS", "service_area": "A5", "local_authority_code": null, "children": [{"child_id": "c-1", "birth_month": "2018-05"}], "received_on": null}"#,
            ),
            _ => (
                "hearing_listed",
                r#"{"hearing_type": "cmh", "listed_for": "2025-07-01"}"#,
            ),
        };
        out.extend_from_slice(
            format!(
                "{}\t{}\t{}\t{}\t{event_type}\t{}\t{data}\t{{}}\tbench\n",
                first_position + i as i64,
                event.event_id,
                request.case_id,
                i + 1,
                event.occurred_on
            )
            .as_bytes(),
        );
    }
    out
}

/// Single-event AppendEvents from `clients` concurrent clients (each its own cases, and its own
/// connection, as separate court and local-authority systems have), against single-row INSERT
/// transactions at the same concurrency (what pgbench would run; each on its own connection)
/// and, with `--peer`, against postgres-es commands. The sides run in alternating rounds: on a
/// shared machine the capacity drifts over tens of seconds, and alternating spreads the drift
/// over every side.
async fn single_appends(
    pool: &PgPool,
    endpoint: &Endpoint,
    clients: usize,
    options: &SuiteOptions,
    meter: Meter,
) -> anyhow::Result<()> {
    const ROUNDS: u32 = 3;
    let duration = Duration::from_secs(options.seconds);
    let cases = options.cases_per_client;
    println!(
        "\n== single-event appends: {clients} concurrent clients, {} s each side in {ROUNDS} alternating rounds",
        duration.as_secs()
    );
    let run = uuid::Uuid::new_v4().simple().to_string();
    // Requests sent so far by each client, carried across rounds so that cases keep rotating.
    let counters = || -> Vec<Arc<AtomicUsize>> { (0..clients).map(|_| Arc::default()).collect() };
    let (raw_sent, ours_sent) = (counters(), counters());
    let mut channels = Vec::with_capacity(clients);
    for _ in 0..clients {
        channels.push(authed(endpoint.connect().await?));
    }
    #[cfg(feature = "peer")]
    let mut peer_spent = Spent::default();
    #[cfg(feature = "peer")]
    let (peer, peer_sent, mut peer_timed) = (
        if options.peer && peer_fits(pool, clients).await? {
            Some(crate::peer::Peer::connect(&options.database_url, clients as u32).await?)
        } else {
            None
        },
        counters(),
        Timed::default(),
    );
    let (mut raw, mut ours) = (Timed::default(), Timed::default());
    let (mut raw_spent, mut ours_spent) = (Spent::default(), Spent::default());
    for _ in 0..ROUNDS {
        let before = meter.sample();
        let round = timed_loop(clients, duration / ROUNDS, |c| {
            let pool = pool.clone();
            let prefix = format!("RAW-{}-{c}", &run[..8]);
            let sent = raw_sent[c].clone();
            move || {
                let pool = pool.clone();
                let (case_id, earlier) = rotation(&prefix, sent.fetch_add(1, Ordering::Relaxed), cases);
                let version = earlier as i32 + 1;
                async move {
                    sqlx::query(
                        "INSERT INTO bench_events_plain (position, event_id, case_id, version, event_type, occurred_on, data, metadata, source)
                         VALUES (nextval('bench_plain_position'), $1, $2, $3, 'hearing_listed', '2025-05-01',
                                 '{\"hearing_type\": \"cmh\", \"listed_for\": \"2025-07-01\"}', '{}', 'bench')",
                    )
                    .bind(uuid::Uuid::new_v4())
                    .bind(case_id)
                    .bind(version)
                    .execute(&pool)
                    .await?;
                    anyhow::Ok(())
                }
            }
        })
        .await?;
        raw_spent.add(before, meter.sample());
        raw.add(round);
        let before = meter.sample();
        let round = timed_loop(clients, duration / ROUNDS, |c| {
            let client = CaseEventServiceClient::new(channels[c].clone());
            let prefix = format!("ONE-{}-{c}", &run[..8]);
            let sent = ours_sent[c].clone();
            move || {
                let mut client = client.clone();
                let request = rotating_request(&prefix, sent.fetch_add(1, Ordering::Relaxed), 1, cases);
                async move {
                    client.append_events(request).await?;
                    anyhow::Ok(())
                }
            }
        })
        .await?;
        ours_spent.add(before, meter.sample());
        ours.add(round);
        #[cfg(feature = "peer")]
        if let Some(peer) = &peer {
            let before = meter.sample();
            let round = timed_loop(clients, duration / ROUNDS, |c| {
                let peer = peer.clone();
                let prefix = format!("PEER-{}-{c}", &run[..8]);
                let sent = peer_sent[c].clone();
                move || {
                    let peer = peer.clone();
                    let (case_id, earlier) = rotation(&prefix, sent.fetch_add(1, Ordering::Relaxed), cases);
                    async move { peer.append(&case_id, earlier == 0).await }
                }
            })
            .await?;
            peer_spent.add(before, meter.sample());
            peer_timed.add(round);
        }
    }
    let (raw_events, ours_events) = (raw.latencies.len() as u64, ours.latencies.len() as u64);
    let raw = Side::of("raw PostgreSQL single-row INSERT transactions", raw);
    let ours = Side::of("caselog AppendEvents, one event each", ours);
    raw.print();
    println!("  {}", raw_spent.per_event(raw_events));
    ours.print();
    println!("  {}", ours_spent.per_event(ours_events));
    println!(
        "ratio caselog/raw: {:.2}{}; p99 caselog/raw: {:.2} (goal: at most 2)",
        ours.rate / raw.rate,
        if clients >= 16 {
            " (goal: at least 1.0)"
        } else {
            " (goal: at least 0.6)"
        },
        ours.p99 / raw.p99
    );
    #[cfg(feature = "peer")]
    if let Some(peer) = peer {
        peer.close().await;
        let peer_events = peer_timed.latencies.len() as u64;
        let peer = Side::of("cqrs-es + postgres-es 0.5 commands", peer_timed);
        peer.print();
        println!("  {}", peer_spent.per_event(peer_events));
        println!(
            "ratio caselog/postgres-es: {:.2}{}; postgres-es/raw: {:.2}",
            ours.rate / peer.rate,
            if clients == 16 { " (goal: at least 2.5)" } else { "" },
            peer.rate / raw.rate
        );
    }
    Ok(())
}

/// Whether the peer's `clients` connections fit beside the service's and the benchmark's own
/// pools under the server's `max_connections` (PostgreSQL's default of 100 holds them at 16
/// clients, not at 32); if not, says so.
#[cfg(feature = "peer")]
async fn peer_fits(pool: &PgPool, clients: usize) -> anyhow::Result<bool> {
    let limit: String = sqlx::query_scalar("SHOW max_connections").fetch_one(pool).await?;
    let limit: u64 = limit.parse().context("max_connections")?;
    let needed = u64::from(SERVICE_CONNECTIONS) + u64::from(crate::BENCH_CONNECTIONS) + clients as u64;
    if needed > limit {
        println!(
            "(postgres-es not measured at {clients} clients: its connections, the service's and the benchmark's would be {needed}, above the server's max_connections of {limit})"
        );
    }
    Ok(needed <= limit)
}

/// One side of the single-event measurement, summarised.
struct Side {
    name: &'static str,
    rate: f64,
    p50: f64,
    p99: f64,
}

impl Side {
    fn of(name: &'static str, timed: Timed) -> Side {
        let rate = timed.rate();
        let latencies = sorted(timed.latencies);
        Side {
            name,
            rate,
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
        }
    }

    fn print(&self) {
        println!(
            "{:<47} {:>7.0} events/s, p50 {:.1} ms, p99 {:.1} ms",
            format!("{}:", self.name),
            self.rate,
            self.p50,
            self.p99
        );
    }
}

/// Each client spreads its appends over this many cases of its own (a case's history stays the
/// size of a real one: appending to one case forever would measure ever longer histories). The
/// keep-up measurement's; single-event appends take `--cases-per-client`, 100 unless told.
const CASES_PER_CLIENT: usize = 100;

/// The `n`th request of a client: the first to each of its cases issues it, later ones list a
/// hearing (`batch` events per request).
fn rotating_request(prefix: &str, n: usize, batch: usize, cases: usize) -> pb::AppendEventsRequest {
    match rotation(prefix, n, cases) {
        (case_id, 0) => issue(&case_id),
        (case_id, _) => hearings(&case_id, batch),
    }
}

/// The case a client's `n`th request goes to, and how many of its requests went there before.
fn rotation(prefix: &str, n: usize, cases: usize) -> (String, usize) {
    (format!("{prefix}-{}", n % cases), n / cases)
}

/// Operations timed over some seconds: their latencies in milliseconds, unsorted.
#[derive(Default)]
struct Timed {
    seconds: f64,
    latencies: Vec<f64>,
}

impl Timed {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds.max(1e-9)
    }

    fn add(&mut self, other: Timed) {
        self.seconds += other.seconds;
        self.latencies.extend(other.latencies);
    }
}

/// Runs `clients` loops of the operation each makes, for `duration`.
async fn timed_loop<M, O, F>(clients: usize, duration: Duration, mut make: M) -> anyhow::Result<Timed>
where
    M: FnMut(usize) -> O,
    O: FnMut() -> F + Send + 'static,
    F: Future<Output = anyhow::Result<()>> + Send,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let mut operation = make(c);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < duration {
                let one = Instant::now();
                operation().await?;
                latencies.push(one.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done??);
    }
    Ok(Timed {
        seconds: started.elapsed().as_secs_f64(),
        latencies,
    })
}

/// Offers `rate` events/s (10-event requests from 16 clients) and samples, every 100 ms, how far
/// behind the log the projection's checkpoint is, in time: the age of the oldest event the
/// projection has not applied.
async fn projection_keep_up(pool: &PgPool, channel: &Authed, rate: u64, duration: Duration) -> anyhow::Result<()> {
    const CLIENTS: u64 = 16;
    const BATCH: u64 = 10;
    println!(
        "\n== projection keep-up: {rate} events/s offered ({BATCH} per request, {CLIENTS} clients) for {} s",
        duration.as_secs()
    );
    let log = EventLog::new(pool.clone());
    let run = uuid::Uuid::new_v4().simple().to_string();
    let prefix = |c: u64| format!("KEEP-{}-{c}", &run[..8]);
    // Each client's cases are issued first, unpaced and unmeasured: the paced load is hearings.
    let mut issuing = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (mut client, prefix) = (CaseEventServiceClient::new(channel.clone()), prefix(c));
        issuing.spawn(async move {
            for n in 0..CASES_PER_CLIENT {
                client
                    .append_events(rotating_request(&prefix, n, 1, CASES_PER_CLIENT))
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = issuing.join_next().await {
        done??;
    }
    let writing = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (log, pool, writing) = (log.clone(), pool.clone(), writing.clone());
        tokio::spawn(async move {
            let mut lags = Vec::new();
            while writing.load(Ordering::Relaxed) {
                let checkpoint = log.checkpoint(caselog_store::projection::CASE_FACTS).await?;
                let oldest: Option<chrono::DateTime<chrono::Utc>> =
                    sqlx::query_scalar("SELECT min(recorded_at) FROM events WHERE position > $1")
                        .bind(i64::from(checkpoint))
                        .fetch_one(&pool)
                        .await?;
                let lag = oldest.map_or(0.0, |t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64);
                lags.push(lag);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(lags)
        })
    };
    let per_client = Duration::from_secs_f64((CLIENTS * BATCH) as f64 / rate as f64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (mut client, prefix) = (CaseEventServiceClient::new(channel.clone()), prefix(c));
        tasks.spawn(async move {
            let mut ticker = tokio::time::interval(per_client);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let (mut requests, mut sent) = (CASES_PER_CLIENT, 0u64);
            while started.elapsed() < duration {
                ticker.tick().await;
                let request = rotating_request(&prefix, requests, BATCH as usize, CASES_PER_CLIENT);
                sent += request.events.len() as u64;
                client.append_events(request).await?;
                requests += 1;
            }
            anyhow::Ok(sent)
        });
    }
    let mut sent = 0;
    while let Some(done) = tasks.join_next().await {
        sent += done??;
    }
    let achieved = sent as f64 / started.elapsed().as_secs_f64();
    writing.store(false, Ordering::Relaxed);
    let lags = sorted(sampler.await??);
    println!("appended {sent} events at {achieved:.0} events/s");
    println!(
        "projection lag (age of the oldest unapplied event), {} samples: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (goal: under 1 s)",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(given: &[&str]) -> Vec<String> {
        given.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn the_service_snapshot_interval_is_read_from_its_arguments_then_its_environment() {
        let default = caselog_app::read_model::SnapshotPolicy::default().after_events;
        let given = |serve_args: &[&str], env: Option<&str>| {
            snapshot_interval_given(&args(serve_args), env.map(str::to_owned)).ok()
        };
        assert_eq!(given(&[], None), Some(default));
        assert_eq!(given(&["--case-cache-mib", "64"], None), Some(default));
        assert_eq!(given(&["--snapshot-after-events", "0"], None), Some(0));
        assert_eq!(given(&["--snapshot-after-events=5000"], None), Some(5000));
        assert_eq!(given(&[], Some("300")), Some(300));
        assert_eq!(given(&["--snapshot-after-events", "7"], Some("300")), Some(7));
        assert_eq!(given(&["--snapshot-after-events", "many"], None), None);
        assert_eq!(given(&[], Some("")), None);
    }
}
