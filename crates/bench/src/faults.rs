//! The fault campaign as a program: writers that keep a ledger of every answer they got, faults
//! injected while they write (the server and PostgreSQL killed and restarted, a rebuild and a
//! projection catch-up killed half-way, the connection pool exhausted, SIGTERM with streams
//! open), and a checker that holds the log to the ledger at the end. Everything runs on
//! 127.0.0.1, against a PostgreSQL instance of its own (`initdb` into a temporary directory,
//! another port) when `initdb` is on the PATH, and stops by itself.
//!
//! What the checker demands:
//! - every acknowledged event is in the log exactly once, at the acknowledged position and
//!   version;
//! - no event whose append was answered with a "not written" code (README: "Was an append
//!   written?") is in the log;
//! - each case's versions run 1, 2, 3… without a gap;
//! - the feed (`ReadAll`, paged) returns exactly the table's rows in position order;
//! - `caselog rebuild --verify` finds the live projection equal to a rebuild from the log.

use crate::{Authed, DevTokenFile, authed, hearings, issue};
use anyhow::{Context, bail};
use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_api::v1::event_feed_service_client::EventFeedServiceClient;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Endpoint;

pub struct FaultOptions {
    pub caselog: PathBuf,
    /// The short version (about a minute): fewer kills, shorter outages.
    pub short: bool,
    pub writers: usize,
    /// Used when no `initdb` is found (the PostgreSQL kill is then skipped): a database the
    /// campaign may fill, created fresh under this server.
    pub fallback_database_url: String,
}

/// Codes after which nothing of the request was written (README: "Was an append written?").
const NOT_WRITTEN: [Code; 8] = [
    Code::InvalidArgument,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::AlreadyExists,
    Code::NotFound,
    Code::PermissionDenied,
    Code::Unauthenticated,
    Code::ResourceExhausted,
];

/// The grace period the campaign's servers get on SIGTERM.
const GRACE_SECS: u64 = 2;

pub async fn run(options: &FaultOptions) -> anyhow::Result<()> {
    let mut postgres = Postgres::create().await?;
    let database_url = match &postgres {
        Some(pg) => pg.url(),
        None => {
            let url = fresh_database(&options.fallback_database_url).await?;
            println!(
                "no initdb on the PATH: using {}; the PostgreSQL kill is skipped",
                redact(&url)
            );
            url
        }
    };
    run_caselog(&options.caselog, &["migrate"], &database_url).await?;
    let mut table = Vec::new();
    let ledger = Arc::new(Ledger::default());
    // Restarted on the same port, so that the writers' channel reconnects to it.
    let port = free_port()?;
    let mut service = Service::start_on(port, &options.caselog, &database_url, &[]).await?;
    let writing = Writers::start(service.channel.clone(), options.writers, ledger.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let kills = if options.short { 2 } else { 5 };
    let started = Instant::now();
    let before = ledger.acknowledged();
    let mut recoveries = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        service.kill().await;
        let killed = Instant::now();
        service = Service::start_on(port, &options.caselog, &database_url, &[]).await?;
        recoveries.push(next_acknowledgement(&ledger, killed).await);
    }
    table.push(Row::new(
        "SIGKILL the server, restart it",
        format!("{kills} times under {} writers", options.writers),
        started,
        format!(
            "{} acknowledged meanwhile; writes acknowledged again {} after each kill",
            ledger.acknowledged() - before,
            describe_recoveries(&recoveries)
        ),
    ));

    match postgres.as_mut() {
        Some(pg) => {
            let outages: &[u64] = if options.short { &[3] } else { &[5, 12, 20] };
            let started = Instant::now();
            let before = ledger.acknowledged();
            let mut recoveries = Vec::new();
            for outage in outages {
                pg.kill();
                tokio::time::sleep(Duration::from_secs(*outage)).await;
                let restarted = Instant::now();
                pg.start().await?;
                recoveries.push(next_acknowledgement(&ledger, restarted).await);
            }
            table.push(Row::new(
                "SIGKILL PostgreSQL's postmaster, restart it",
                format!("outages of {outages:?} s under {} writers", options.writers),
                started,
                format!(
                    "{} acknowledged meanwhile; writes acknowledged again {} after each restart",
                    ledger.acknowledged() - before,
                    describe_recoveries(&recoveries)
                ),
            ));
        }
        None => table.push(Row::skipped("SIGKILL PostgreSQL's postmaster", "no initdb on the PATH")),
    }

    // A burst the projection has to catch up with, and the server killed while it does.
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    service.kill().await;
    service = Service::start_on(port, &options.caselog, &database_url, &[]).await?;
    table.push(Row::new(
        "SIGKILL the server during projection catch-up",
        "after 2 s of writes, then restart".into(),
        started,
        "checked by rebuild --verify at the end".into(),
    ));
    table.push(projector_failover(&options.caselog, &database_url, port, &mut service).await?);

    let started = Instant::now();
    let mut rebuild = caselog_child(&options.caselog, &["rebuild"], &database_url)?;
    tokio::time::sleep(Duration::from_millis(if options.short { 400 } else { 1500 })).await;
    let _ = rebuild.kill().await;
    table.push(Row::new(
        "SIGKILL caselog rebuild",
        "part-way through".into(),
        started,
        "the next rebuild (--verify, at the end) starts afresh".into(),
    ));

    let stalled = if options.short {
        Row::skipped(
            "a subscriber that stops reading",
            "full run only: the server waits 30 s for it",
        )
    } else {
        stalled_subscriber(&service).await?
    };
    table.push(stalled);

    writing.stop().await;
    service.kill().await;

    table.push(connection_exhaustion(&options.caselog, &database_url).await?);
    table.push(sigterm_with_open_streams(&options.caselog, &database_url).await?);

    let service = Service::start(&options.caselog, &database_url, &[]).await?;
    let verdict = check(&ledger, &service.channel, &database_url, &options.caselog).await;
    service.stop().await;
    print_table(&table, &ledger, &verdict);
    if let Some(pg) = postgres.as_mut() {
        pg.kill();
    }
    let failed: Vec<&str> = table
        .iter()
        .filter(|row| row.passed == Some(false))
        .map(|row| row.fault.as_str())
        .collect();
    match verdict {
        Err(err) => bail!("the checker found a fault: {err:#}"),
        Ok(_) if !failed.is_empty() => bail!("fault rows failed: {}", failed.join("; ")),
        Ok(_) => Ok(()),
    }
}

/// How long after `since` the writers got their next acknowledgement (`None`: not within 60 s).
async fn next_acknowledgement(ledger: &Ledger, since: Instant) -> Option<Duration> {
    let count = ledger.acknowledged();
    while since.elapsed() < Duration::from_secs(60) {
        if ledger.acknowledged() > count {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn describe_recoveries(recoveries: &[Option<Duration>]) -> String {
    recoveries
        .iter()
        .map(|r| r.map_or("never (60 s)".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the writers were told.
#[derive(Default)]
struct Ledger {
    /// event id → (case, position, version), as acknowledged.
    acknowledged: Mutex<HashMap<String, (String, u64, u64)>>,
    /// Event ids whose append was answered with a "not written" code.
    not_written: Mutex<HashSet<String>>,
    /// Answers that left the outcome unknown (the request was resent with the same ids).
    unknown: AtomicU64,
    /// Requests still unresolved when the writers stopped (their events may or may not exist).
    unresolved: AtomicU64,
}

impl Ledger {
    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().map(|a| a.len()).unwrap_or(0)
    }
}

struct Writers {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Writers {
    fn start(channel: Authed, writers: usize, ledger: Arc<Ledger>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..writers {
            let (channel, ledger, stop) = (channel.clone(), ledger.clone(), stop.clone());
            tasks.spawn(async move {
                let mut client = CaseEventServiceClient::new(channel);
                let case_id = format!("FAULT-{w}-{}", uuid::Uuid::new_v4().simple());
                let mut issued = false;
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let request = if issued {
                        n += 1;
                        hearings(&case_id, 1 + n % 3)
                    } else {
                        issue(&case_id)
                    };
                    match write_until_known(&mut client, request, &ledger, &stop).await {
                        Some(true) => issued = true,
                        Some(false) => tokio::time::sleep(Duration::from_millis(50)).await,
                        None => {
                            ledger.unresolved.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        Writers { stop, tasks }
    }

    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Sends `request` (with a 1 s deadline) until the answer says whether it was written: resent
/// unchanged, as the README asks, after every unknown outcome. `Some(true)`: acknowledged;
/// `Some(false)`: not written; `None`: still unknown when told to stop.
async fn write_until_known(
    client: &mut CaseEventServiceClient<Authed>,
    request: pb::AppendEventsRequest,
    ledger: &Ledger,
    stop: &AtomicBool,
) -> Option<bool> {
    loop {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(Duration::from_secs(1));
        match client.append_events(call).await {
            Ok(response) => {
                if let Ok(mut acknowledged) = ledger.acknowledged.lock() {
                    for event in response.into_inner().events {
                        acknowledged.insert(event.event_id, (request.case_id.clone(), event.position, event.version));
                    }
                }
                return Some(true);
            }
            Err(status) if NOT_WRITTEN.contains(&status.code()) => {
                if let Ok(mut not_written) = ledger.not_written.lock() {
                    not_written.extend(request.events.iter().map(|e| e.event_id.clone()));
                }
                return Some(false);
            }
            Err(_) => {
                ledger.unknown.fetch_add(1, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A subscriber that stops reading while events keep coming is ended by the server, with a
/// position to resume from, and the writers do not notice.
async fn stalled_subscriber(service: &Service) -> anyhow::Result<Row> {
    let started = Instant::now();
    // A connection of its own with small HTTP/2 windows, so that not reading pushes back on the
    // server soon (the default windows hold megabytes).
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", service.port))?
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await?;
    let mut feed = EventFeedServiceClient::new(authed(channel));
    let mut stream = feed
        .subscribe_events(pb::SubscribeEventsRequest {
            from_position: 0,
            filter: None,
        })
        .await?
        .into_inner();
    tokio::time::sleep(Duration::from_secs(40)).await;
    // What it was sent before the server gave up on it, then how it ended.
    let draining = async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return "ended without a status".to_owned(),
                Err(status) => return format!("{:?}: {}", status.code(), status.message()),
            }
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(20), draining)
        .await
        .unwrap_or_else(|_| "still streaming 60 s later".to_owned());
    let ok = ended.starts_with("Aborted");
    Ok(Row {
        fault: "a subscriber that stops reading".into(),
        how: "no reads for 40 s under writes".into(),
        seconds: started.elapsed().as_secs_f64(),
        seen: ended,
        passed: Some(ok),
    })
}

/// 64 clients against a server with 3 connections: answers are OK, UNAVAILABLE, a passed
/// deadline or a limit's refusal, never INTERNAL.
async fn connection_exhaustion(caselog: &Path, database_url: &str) -> anyhow::Result<Row> {
    let started = Instant::now();
    // The per-client limit raised above the 64 clients (they share one identity), so that what
    // runs out is the database connections.
    let service = Service::start(
        caselog,
        database_url,
        &["--db-max-connections", "3", "--max-concurrent-per-client", "256"],
    )
    .await?;
    let codes = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..64 {
        let (channel, codes) = (service.channel.clone(), codes.clone());
        clients.spawn(async move {
            let mut client = CaseEventServiceClient::new(channel);
            let case_id = format!("EXHAUST-{c}");
            let until = Instant::now() + Duration::from_secs(4);
            let mut first = true;
            while Instant::now() < until {
                let outcome = if first {
                    client.append_events(issue(&case_id)).await.map(|_| ())
                } else {
                    client
                        .get_case(pb::GetCaseRequest {
                            case_id: case_id.clone(),
                        })
                        .await
                        .map(|_| ())
                };
                first = first && outcome.is_err();
                let code = outcome.err().map_or(Code::Ok, |s| s.code());
                if let Ok(mut codes) = codes.lock() {
                    *codes.entry(format!("{code:?}")).or_default() += 1;
                }
            }
        });
    }
    while clients.join_next().await.is_some() {}
    service.stop().await;
    let codes = codes.lock().map(|c| c.clone()).unwrap_or_default();
    let allowed = ["Ok", "Unavailable", "DeadlineExceeded", "NotFound", "ResourceExhausted"];
    let passed = codes.keys().all(|code| allowed.contains(&code.as_str()));
    Ok(Row {
        fault: "connection exhaustion".into(),
        how: "64 clients, --db-max-connections 3, 4 s".into(),
        seconds: started.elapsed().as_secs_f64(),
        seen: codes
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        passed: Some(passed),
    })
}

/// SIGTERM with a health Watch and a subscription open: health turns NOT_SERVING, the streams
/// end with a status, and the process exits within the grace period (plus a margin).
async fn sigterm_with_open_streams(caselog: &Path, database_url: &str) -> anyhow::Result<Row> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let started = Instant::now();
    let mut service = Service::start(caselog, database_url, &[]).await?;
    let mut health = HealthClient::new(service.channel.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await?
        .into_inner();
    let mut feed = EventFeedServiceClient::new(service.channel.clone())
        .subscribe_events(pb::SubscribeEventsRequest::default())
        .await?
        .into_inner();
    let watching = tokio::spawn(async move {
        let mut statuses = Vec::new();
        loop {
            match health.message().await {
                Ok(Some(answer)) => statuses.push(answer.status),
                Ok(None) => return (statuses, "cleanly (OK)".to_owned()),
                Err(status) => return (statuses, format!("{:?}", status.code())),
            }
        }
    });
    let subscribed = tokio::spawn(async move {
        loop {
            match feed.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return "ended without a status".to_owned(),
                Err(status) => return format!("{:?}", status.code()),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    signal(service.pid(), "TERM");
    let exited = tokio::time::timeout(Duration::from_secs(GRACE_SECS + 8), service.child.wait()).await;
    let took = signalled.elapsed();
    let (statuses, health_end) = watching.await.unwrap_or_default();
    let subscription_end = subscribed.await.unwrap_or_default();
    let not_serving = pb_not_serving();
    let passed = exited.is_ok() && took <= Duration::from_secs(GRACE_SECS + 3) && statuses.contains(&not_serving);
    if exited.is_err() {
        service.kill().await;
    }
    Ok(Row {
        fault: "SIGTERM with streams open".into(),
        how: format!("health Watch and a subscription open, --shutdown-grace-secs {GRACE_SECS}"),
        seconds: started.elapsed().as_secs_f64(),
        seen: format!(
            "exited after {:.1} s; health said {}; Watch ended {health_end}, subscription ended {subscription_end}",
            took.as_secs_f64(),
            if statuses.contains(&not_serving) {
                "NOT_SERVING"
            } else {
                "no NOT_SERVING"
            }
        ),
        passed: Some(passed),
    })
}

fn pb_not_serving() -> i32 {
    tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
}

/// What the checker found, or the first fault.
struct Verdict {
    rows: usize,
    cases: usize,
}

async fn check(ledger: &Ledger, channel: &Authed, database_url: &str, caselog: &Path) -> anyhow::Result<Verdict> {
    let pool = sqlx::PgPool::connect(database_url).await?;
    let rows: Vec<(String, String, i64, i32)> =
        sqlx::query_as("SELECT event_id::text, case_id, position, version FROM events ORDER BY position")
            .fetch_all(&pool)
            .await?;
    pool.close().await;
    let by_id: HashMap<&str, (&str, u64, u64)> = rows
        .iter()
        .map(|(id, case, position, version)| (id.as_str(), (case.as_str(), *position as u64, *version as u64)))
        .collect();
    if by_id.len() != rows.len() {
        bail!("an event id is in the log twice");
    }
    let acknowledged = ledger.acknowledged.lock().map(|a| a.clone()).unwrap_or_default();
    for (id, (case, position, version)) in &acknowledged {
        match by_id.get(id.as_str()) {
            Some(found) if *found == (case.as_str(), *position, *version) => {}
            Some(found) => bail!("event {id} was acknowledged at {case}/{position}/{version} but is at {found:?}"),
            None => bail!("acknowledged event {id} is not in the log"),
        }
    }
    let not_written = ledger.not_written.lock().map(|n| n.clone()).unwrap_or_default();
    if let Some(id) = not_written.iter().find(|id| by_id.contains_key(id.as_str())) {
        bail!("event {id} is in the log although its append was answered as not written");
    }
    let mut versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (_, case, _, version) in &rows {
        versions.entry(case).or_default().push(*version as u64);
    }
    for (case, mut list) in versions.clone() {
        list.sort_unstable();
        if list.iter().zip(1..).any(|(v, expected)| *v != expected) {
            bail!("case {case} has versions {list:?}");
        }
    }
    let mut feed = EventFeedServiceClient::new(channel.clone());
    let mut from = 0;
    let mut fed = Vec::new();
    loop {
        let page = feed
            .read_all(pb::ReadAllRequest {
                from_position: from,
                limit: 1000,
                filter: None,
            })
            .await?
            .into_inner();
        if page.events.is_empty() {
            break;
        }
        fed.extend(page.events.iter().map(|e| (e.event_id.clone(), e.position)));
        from = page.next_from_position;
    }
    let table: Vec<(String, u64)> = rows.iter().map(|(id, _, p, _)| (id.clone(), *p as u64)).collect();
    if fed != table {
        bail!(
            "the feed returned {} events, the table holds {}, or their order differs",
            fed.len(),
            table.len()
        );
    }
    run_caselog(caselog, &["rebuild", "--verify"], database_url)
        .await
        .context("rebuild --verify after the campaign")?;
    Ok(Verdict {
        rows: rows.len(),
        cases: versions.len(),
    })
}

struct Row {
    fault: String,
    how: String,
    seconds: f64,
    seen: String,
    passed: Option<bool>,
}

impl Row {
    fn new(fault: &str, how: String, started: Instant, seen: String) -> Row {
        Row {
            fault: fault.into(),
            how,
            seconds: started.elapsed().as_secs_f64(),
            seen,
            passed: None,
        }
    }

    fn skipped(fault: &str, why: &str) -> Row {
        Row {
            fault: fault.into(),
            how: format!("skipped: {why}"),
            seconds: 0.0,
            seen: String::new(),
            passed: None,
        }
    }
}

fn print_table(rows: &[Row], ledger: &Ledger, verdict: &anyhow::Result<Verdict>) {
    println!("\n| fault | how | s | seen | result |");
    println!("|---|---|---|---|---|");
    for row in rows {
        let result = match row.passed {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "see checker",
        };
        println!(
            "| {} | {} | {:.1} | {} | {result} |",
            row.fault, row.how, row.seconds, row.seen
        );
    }
    let checker = match verdict {
        Ok(v) => format!(
            "every acknowledged event once at its position and version; no event answered as not written in the log; versions contiguous; feed = table; rebuild --verify equal ({} events, {} cases)",
            v.rows, v.cases
        ),
        Err(err) => format!("{err:#}"),
    };
    println!(
        "| checker | {} acknowledged, {} not written, {} unknown answers resent, {} unresolved at the end | | {checker} | {} |",
        ledger.acknowledged(),
        ledger.not_written.lock().map(|n| n.len()).unwrap_or(0),
        ledger.unknown.load(Ordering::Relaxed),
        ledger.unresolved.load(Ordering::Relaxed),
        if verdict.is_ok() { "pass" } else { "FAIL" }
    );
    let failed = rows.iter().filter(|r| r.passed == Some(false)).count();
    if failed > 0 {
        println!("\n{failed} fault row(s) failed");
    }
}

/// A `caselog serve` child on a port of its own.
struct Service {
    child: tokio::process::Child,
    port: u16,
    channel: Authed,
    _tokens: DevTokenFile,
}

impl Service {
    async fn start(caselog: &Path, database_url: &str, extra: &[&str]) -> anyhow::Result<Service> {
        Service::start_on(free_port()?, caselog, database_url, extra).await
    }

    async fn start_on(port: u16, caselog: &Path, database_url: &str, extra: &[&str]) -> anyhow::Result<Service> {
        let tokens = DevTokenFile::write()?;
        let child = tokio::process::Command::new(caselog)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--allow-dev-tokens",
                "--dev-tokens",
            ])
            .arg(&tokens.path)
            .args(["--shutdown-grace-secs", &GRACE_SECS.to_string()])
            .args(extra)
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", caselog.display()))?;
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?;
        for _ in 0..200 {
            if let Ok(channel) = endpoint.connect().await {
                return Ok(Service {
                    child,
                    port,
                    channel: authed(channel),
                    _tokens: tokens,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("caselog serve did not start listening on port {port}")
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    async fn stop(mut self) {
        signal(self.pid(), "TERM");
        if tokio::time::timeout(Duration::from_secs(GRACE_SECS + 5), self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }
}

/// A PostgreSQL instance of the campaign's own, in a temporary directory, on a free port.
struct Postgres {
    /// Where `initdb` and `postgres` are.
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Run as the `postgres` user (PostgreSQL refuses to run as root).
    as_postgres: bool,
}

impl Postgres {
    /// `None` when `initdb` is not on the PATH.
    async fn create() -> anyhow::Result<Option<Postgres>> {
        let Some(bin) = postgres_binaries() else {
            return Ok(None);
        };
        let dir = std::env::temp_dir().join(format!("caselog-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_postgres {
            let status = std::process::Command::new("chown")
                .args(["postgres"])
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("chown postgres {}", dir.display());
            }
        }
        let pg = Postgres {
            bin,
            dir,
            port: free_port()?,
            as_postgres,
        };
        let output = pg
            .command("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(&pg.dir)
            .output()?;
        if !output.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        pg.start().await?;
        Ok(Some(pg))
    }

    fn command(&self, program: &str) -> std::process::Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable", self.port)
    }

    /// Starts the postmaster and waits until it answers (retrying while a killed one's
    /// backends are still leaving).
    async fn start(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let _ = self
                .command("postgres")
                .arg("-D")
                .arg(&self.dir)
                .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-k"])
                .arg(&self.dir)
                .args(["-c", "max_connections=100", "-c", "fsync=on"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            for _ in 0..50 {
                if sqlx::PgPool::connect(&self.url()).await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL in {} did not start", self.dir.display());
            }
        }
    }

    /// SIGKILLs the postmaster (its backends notice and exit).
    fn kill(&self) {
        if let Ok(pidfile) = std::fs::read_to_string(self.dir.join("postmaster.pid"))
            && let Some(pid) = pidfile.lines().next().and_then(|l| l.trim().parse::<u32>().ok())
        {
            signal(pid, "KILL");
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
        std::thread::sleep(Duration::from_millis(500));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory holding `initdb` and `postgres`: on the PATH, or where Debian installs them.
fn postgres_binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|versions| versions.filter_map(|v| v.ok()).map(|v| v.path().join("bin")).collect())
        .unwrap_or_default();
    debian.sort();
    debian.reverse();
    on_path
        .into_iter()
        .chain(debian)
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn caselog_child(caselog: &Path, args: &[&str], database_url: &str) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(caselog)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", caselog.display()))
}

async fn run_caselog(caselog: &Path, args: &[&str], database_url: &str) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(caselog)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "error")
        .output()
        .await
        .with_context(|| format!("starting {}", caselog.display()))?;
    if !output.status.success() {
        bail!(
            "caselog {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A database of its own under the server of `url`.
async fn fresh_database(url: &str) -> anyhow::Result<String> {
    let name = format!("caselog_faults_{}", std::process::id());
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    let fresh = format!("{base}/{name}");
    caselog_store::create_database_if_missing(&fresh).await?;
    Ok(fresh)
}

fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((_, host)) => format!("postgres://…@{host}"),
        None => url.to_owned(),
    }
}

/// Two servers on one database, the projection leader SIGKILLed under writes: the follower
/// takes the leadership lock and the projection reaches the log's head again. (Exactly-once
/// steps are the checker's `rebuild --verify`: a step applied twice or lost would differ.)
async fn projector_failover(
    caselog: &Path,
    database_url: &str,
    port: u16,
    leader: &mut Service,
) -> anyhow::Result<Row> {
    let started = Instant::now();
    let follower = Service::start(caselog, database_url, &[]).await?;
    let pool = sqlx::PgPool::connect(database_url).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = projection_leader(&pool).await?;
    leader.kill().await;
    let killed = Instant::now();
    let mut takeover = None;
    while killed.elapsed() < Duration::from_secs(30) {
        let now = projection_leader(&pool).await?;
        if now.is_some() && now != before {
            takeover = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only now does the writers' server come back (as a follower), so that the takeover above
    // was the other server's.
    *leader = Service::start_on(port, caselog, database_url, &[]).await?;
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(&pool)
        .await?;
    let mut caught_up = None;
    while takeover.is_some() && killed.elapsed() < Duration::from_secs(60) {
        let checkpoint: i64 =
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = 'case_facts'")
                .fetch_one(&pool)
                .await?;
        if checkpoint >= head {
            caught_up = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.close().await;
    follower.stop().await;
    let seconds = |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
    Ok(Row {
        fault: "SIGKILL the projection leader of two servers".into(),
        how: "a second server on the database, the first (the leader) killed under writes".into(),
        seconds: started.elapsed().as_secs_f64(),
        seen: format!(
            "the other server took the leadership {} after the kill; projection at the log's head {} after it",
            seconds(takeover),
            seconds(caught_up)
        ),
        passed: Some(takeover.is_some() && caught_up.is_some()),
    })
}

/// The backend holding the projection leadership lock (`locks::PROJECTOR` of the store: classid "case", objid 1).
async fn projection_leader(pool: &sqlx::PgPool) -> anyhow::Result<Option<i32>> {
    Ok(sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
            AND classid = 1667330917 AND objid = 1 AND objsubid = 2
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_optional(pool)
    .await?)
}
