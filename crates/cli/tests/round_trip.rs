//! The whole round trip with the `caselog` binary, as a user at a shell would do it: the sample
//! in `examples/` is imported into a running service, its metrics are read, the log is exported,
//! the export is imported into a second, empty service, and both give the same metrics, the
//! same projection digest, and the same export.
//!
//! Needs `DATABASE_URL` (a role that may create databases); creates and drops its own two.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MIGRATION_TOKEN: &str = "dev-migration-000000000000000";
const ADMIN_TOKEN: &str = "dev-admin-0000000000000000000";
const PRACTICE_A5_TOKEN: &str = "dev-practice-A5-0000000000000";
const METRICS: &str = "T1,T2,T3,T4,T5,T6,T7,T8,E1,E2,E3,E4,S1,S2,D1,D2,W1";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn caselog(database_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_caselog"));
    command.env("DATABASE_URL", database_url).env("NO_COLOR", "1");
    command
}

fn succeed(command: &mut Command) -> String {
    let output: Output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A database of the test's own on `DATABASE_URL`'s server, dropped at the end.
struct FreshDatabase {
    url: String,
    base: String,
    name: String,
}

impl FreshDatabase {
    fn create() -> FreshDatabase {
        let base =
            std::env::var("DATABASE_URL").expect("DATABASE_URL names a PostgreSQL this test may create databases in");
        let name = format!("caselog_round_trip_{}", uuid::Uuid::new_v4().simple());
        FreshDatabase {
            url: with_database(&base, &name),
            base,
            name,
        }
    }

    /// Runs `statements` on the server as `DATABASE_URL`'s role, in this database.
    fn execute(&self, statements: &[String]) {
        let url = self.url.clone();
        let statements = statements.to_vec();
        run_async(async move {
            use sqlx::Connection;
            let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
            for statement in statements {
                sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&mut connection)
                    .await
                    .unwrap();
            }
        });
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        run_async(async move {
            use sqlx::Connection;
            if let Ok(mut connection) = sqlx::PgConnection::connect(&base).await {
                // The name is this test's own (a UUID), never input.
                let statement = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&mut connection)
                    .await;
            }
        });
    }
}

fn run_async(work: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(work);
}

/// A `caselog serve` on a fresh database of its own, stopped and dropped at the end.
struct Service {
    database: FreshDatabase,
    address: String,
    process: Child,
    last_position: u64,
}

impl Service {
    fn start() -> Service {
        let database = FreshDatabase::create();
        let database_url = database.url.clone();
        succeed(caselog(&database_url).arg("migrate"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tokens = repository().join("deploy/dev-tokens.json");
        let process = caselog(&database_url)
            .args(["serve", "--allow-dev-tokens", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--dev-tokens")
            .arg(tokens)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "caselog serve did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Service {
            database,
            address: format!("http://127.0.0.1:{port}"),
            process,
            last_position: 0,
        }
    }

    /// A client command of `caselog` against this service.
    fn client(&self, subcommand: &str, token: &str) -> Command {
        let mut command = caselog(&self.database.url);
        command
            .arg(subcommand)
            .args(["--server", &self.address, "--token", token]);
        if subcommand == "metrics" {
            command.args(["--min-position", &self.last_position.to_string()]);
        }
        command
    }

    /// Imports `file` and remembers the last position appended, so that metrics wait for it.
    fn import(&mut self, file: &Path) -> String {
        let summary = succeed(self.client("import", MIGRATION_TOKEN).arg(file));
        if let Some(position) = summary.lines().find_map(|l| l.strip_prefix("last position ")) {
            self.last_position = position.split_whitespace().next().unwrap().parse().unwrap();
        }
        summary
    }

    fn export(&self, file: &Path) {
        succeed(self.client("export", ADMIN_TOKEN).arg("--out").arg(file));
    }

    fn metrics(&self) -> serde_json::Value {
        let text = succeed(self.client("metrics", ADMIN_TOKEN).args([
            METRICS,
            "--financial-year",
            "2025-26",
            "--group-by",
            "law_type",
            "--format",
            "json",
        ]));
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        answer["results"].clone()
    }

    /// The digest of the projection state, as `caselog rebuild --verify` computes it.
    fn projection_digest(&self) -> String {
        let summary = succeed(caselog(&self.database.url).args(["rebuild", "--verify"]));
        summary
            .lines()
            .find_map(|line| line.strip_prefix("digest "))
            .unwrap_or_else(|| panic!("no digest in:\n{summary}"))
            .to_owned()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Stopped before its database is dropped (the field, after this).
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// `base` with its database name replaced by `name` (and no query string).
fn with_database(base: &str, name: &str) -> String {
    let without_query = base.split('?').next().unwrap_or(base);
    let (server, _) = without_query
        .rsplit_once('/')
        .expect("DATABASE_URL ends in /<database>");
    format!("{server}/{name}")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_examples_survive_export_and_import_into_an_empty_service() {
    let sample = repository().join("examples/cases.ndjson");
    let work = std::env::temp_dir().join(format!("caselog-round-trip-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&work).unwrap();

    let mut first = Service::start();
    let imported = first.import(&sample);
    assert!(
        imported.contains("appended 37, already present 0, rejected 0"),
        "{imported}"
    );
    let again = first.import(&sample);
    assert!(again.contains("appended 0, already present 37, rejected 0"), "{again}");
    let exported = work.join("export.ndjson");
    first.export(&exported);
    let events = lines(&exported);
    assert_eq!(events.len(), 37, "every event, the voiding one included");
    for line in &events {
        assert!(
            caselog_domain::interchange::parse_line(line).is_ok(),
            "not the interchange format: {line}"
        );
    }

    let mut second = Service::start();
    let reimported = second.import(&exported);
    assert!(
        reimported.contains("appended 37, already present 0, rejected 0"),
        "{reimported}"
    );
    let first_metrics = first.metrics();
    assert_eq!(
        first_metrics,
        second.metrics(),
        "the same figures from the exported log"
    );
    // The sample is built to give these (docs/metrics.md works them by hand).
    let e4 = first_metrics
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric_id"] == "E4")
        .unwrap();
    let public = e4["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["group"]["law_type"] == "public")
        .unwrap();
    assert_eq!(
        (public["numerator"].as_f64(), public["denominator"].as_f64()),
        (Some(2.0), Some(3.0))
    );
    assert_eq!(first.projection_digest(), second.projection_digest());

    // The second export has the same events; positions differ (import sends cases concurrently),
    // so compare as sets, and each case's events in the same order.
    let second_export = work.join("export-2.ndjson");
    second.export(&second_export);
    let per_case = |lines: Vec<String>| {
        let mut cases: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for line in lines {
            let case = caselog_domain::interchange::parse_line(&line).unwrap().case_id;
            cases.entry(case).or_default().push(line);
        }
        cases
    };
    assert_eq!(per_case(events), per_case(lines(&second_export)));

    // One case, by a practice client of its area; and the feed followed to its end.
    let one_case = work.join("case.ndjson");
    succeed(
        second
            .client("export", PRACTICE_A5_TOKEN)
            .args(["--case", "LS25P00456", "--out"])
            .arg(&one_case),
    );
    assert_eq!(lines(&one_case).len(), 14);
    let tailed = succeed(second.client("tail", ADMIN_TOKEN).args([
        "--from-position",
        "0",
        "--until-caught-up",
        "--format",
        "ndjson",
        "--type",
        "event_voided",
    ]));
    assert_eq!(tailed.lines().count(), 1, "{tailed}");
    let timeline = succeed(second.client("case", PRACTICE_A5_TOKEN).arg("LS25P00456"));
    assert!(timeline.contains("VOIDED by"), "{timeline}");
    assert!(timeline.contains("private law"), "{timeline}");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn metrics_come_as_a_table_or_csv_and_bad_arguments_are_named() {
    let mut service = Service::start();
    service.import(&repository().join("examples/cases.ndjson"));
    let table = succeed(
        service
            .client("metrics", ADMIN_TOKEN)
            .args(["T4,S1", "--month", "2025-05"]),
    );
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("metric") && header.contains("value"), "{table}");
    assert!(table.contains("T4: "), "the definition follows the table:\n{table}");
    let csv = succeed(service.client("metrics", ADMIN_TOKEN).args([
        "D1",
        "--calendar-quarter",
        "2025 Q2",
        "--group-by",
        "court",
        "--format",
        "csv",
    ]));
    let rows: Vec<&str> = csv.lines().collect();
    assert!(
        rows[0].starts_with("metric,period_first,period_last,snapshot_date,court,"),
        "{csv}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("D1.cases,2025-04-01,2025-06-30,,LS,")),
        "{csv}"
    );

    let refused = service
        .client("metrics", ADMIN_TOKEN)
        .args(["T4", "--month", "2025-13"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("2025-13"), "{message}");
    let unknown = service
        .client("metrics", ADMIN_TOKEN)
        .args(["T4", "--month", "2025-05", "--group-by", "postcode"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown dimension \"postcode\""));
}

#[test]
fn command_line_tools_show_their_result_and_log_only_warnings_unless_asked() {
    let mut service = Service::start();
    service.import(&repository().join("examples/cases.ndjson"));
    let quiet = caselog(&service.database.url)
        .args(["rebuild", "--verify"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(quiet.status.success());
    let stdout = String::from_utf8_lossy(&quiet.stdout);
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(stdout.contains("digest "), "the result is shown: {stdout}");
    assert!(!stderr.contains(" INFO "), "info lines without -v:\n{stderr}");
    assert!(!stderr.contains('\r'), "a redrawn bar in a redirected log:\n{stderr:?}");
    let verbose = caselog(&service.database.url)
        .args(["rebuild", "--verify", "-v"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    assert!(stderr.contains(" INFO "), "-v shows info lines:\n{stderr}");
}

/// `caselog migrate --check`, as a release's pods run it before serving (as the service role):
/// 1 naming the missing migrations, changing nothing; 0 once `caselog migrate` has run.
#[test]
fn pods_can_check_as_the_service_role_that_their_migrations_are_applied() {
    let database = FreshDatabase::create();
    let check = |url: &str| {
        let output = caselog(url).args(["migrate", "--check"]).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // `caselog migrate` would create the database; the check must find it bare.
    run_async({
        let (base, name) = (database.base.clone(), database.name.clone());
        async move {
            use sqlx::Connection;
            let mut connection = sqlx::PgConnection::connect(&base).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&mut connection)
                .await
                .unwrap();
        }
    });
    let (code, said) = check(&database.url);
    assert_eq!(code, Some(1), "{said}");
    let every_version: Vec<String> = caselog_store::MIGRATOR
        .iter()
        .map(|migration| migration.version.to_string())
        .collect();
    assert!(every_version.len() >= 7);
    assert!(
        said.contains(&format!(
            "migrations {} of this release are not applied",
            every_version.join(", ")
        )),
        "{said}"
    );
    let (code, _) = check(&database.url);
    assert_eq!(code, Some(1), "the check applied something");

    let role = format!("caselog_check_{}", uuid::Uuid::new_v4().simple());
    database.execute(&[format!("CREATE ROLE {role} LOGIN PASSWORD 'check-test'")]);
    succeed(caselog(&database.url).args(["migrate", "--service-role", &role]));
    let after_scheme = database.url.split_once("://").unwrap().1;
    let host_and_database = after_scheme.rsplit_once('@').map_or(after_scheme, |(_, rest)| rest);
    let as_role = format!("postgres://{role}:check-test@{host_and_database}");
    let (code, said) = check(&as_role);
    assert_eq!(code, Some(0), "{said}");
    database.execute(&[format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")]);
}
