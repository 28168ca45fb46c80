//! The append-only event log on PostgreSQL.
//!
//! The store knows rows, per-case versions and global positions; it does not know what a case
//! is or which events are allowed (that is `caselog-domain`). Every append is one SQL statement,
//! so it is atomic without an explicit transaction, and its commit time is its `recorded_at`.

pub mod audit;
pub mod combine;
mod copy_binary;
mod copy_text;
mod error;
pub mod feed;
pub mod grouped_reads;
pub mod history;
mod locks;
mod log;
pub mod projection;
pub mod rebuild;
mod recent;
pub mod snapshot;

pub use audit::{AuditEntry, AuditQuery, AuditRecord, grant_service_role};
pub use combine::{GroupAppender, GroupSettings, GroupStats};
pub use error::Error;
pub use feed::{FeedFilter, FeedPage, Horizon, ProjectedRow};
pub use grouped_reads::{CaseReader, ReadGroupSettings};
pub use history::FactsHistoryRow;
pub use log::{AppendedRow, EventLog, LoadRow, NewRow, ReplayRow, StoredEvent};
pub use snapshot::{SnapshotHead, SnapshotSink, SnapshotWriter};
/// The connection pool `connect` returns.
pub use sqlx::PgPool;

/// Plans this transaction's statements for their actual parameters. A statement prepared on a
/// pooled connection gets a generic plan after five runs, and for `position > $1` (the tail of
/// the log, a few rows) a generic plan expects a third of the table and scans all of it.
pub(crate) async fn plan_for_parameters(tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(tx)
        .await
        .map(|_| ())
}

/// The workspace migrations (`migrations/`), embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The versions of [`MIGRATOR`] not yet applied to the database behind `pool` (all of them when
/// it has never been migrated), in order. Reads only `_sqlx_migrations`, so the service role can
/// ask (`caselog migrate --check`): a new release's pods wait for its migration job this way.
pub async fn pending_migrations(pool: &PgPool) -> Result<Vec<i64>, Error> {
    let applied: Vec<i64> = match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
    {
        Ok(applied) => applied,
        // undefined_table: never migrated.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(MIGRATOR
        .iter()
        .filter(|migration| migration.migration_type.is_up_migration())
        .map(|migration| migration.version)
        .filter(|version| !applied.contains(version))
        .collect())
}

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

/// How the service connects to PostgreSQL.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    pub max_connections: u32,
    /// How long a request waits for a free connection before the store reports itself unavailable.
    pub acquire_timeout: Duration,
    /// Ends any statement that runs longer, so a stuck query cannot hold a connection forever.
    pub statement_timeout: Duration,
    /// Ends a session idle inside a transaction: an open append holds back the global feed's
    /// safe position, so it must not be left open.
    pub idle_in_transaction_timeout: Duration,
}

impl Default for ConnectSettings {
    fn default() -> ConnectSettings {
        ConnectSettings {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(10),
        }
    }
}

/// A pooled connection idle this long is checked before it is used again.
pub(crate) const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Opens a connection pool (lazily: an unreachable database is reported per call, not here).
pub fn connect(database_url: &str, settings: &ConnectSettings) -> Result<PgPool, Error> {
    let options = PgConnectOptions::from_str(database_url)
        .map_err(Error::Database)?
        .application_name("caselog")
        .options([
            (
                "statement_timeout",
                format!("{}", settings.statement_timeout.as_millis()),
            ),
            (
                "idle_in_transaction_session_timeout",
                format!("{}", settings.idle_in_transaction_timeout.as_millis()),
            ),
            ("timezone", "UTC".to_owned()),
            // The service's statements are short lookups and appends. When the planner lacks
            // statistics (a freshly loaded log) it overestimates their cost, and JIT compiling
            // then took 90-120 ms of a statement that runs in 3 (docs/benchmarks.md).
            ("jit", "off".to_owned()),
        ]);
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        // sqlx pings every connection it hands out by default: one more round trip on every
        // statement, a fifth of a grouped append's time under load (measured). A connection used
        // within the last second is handed out as it is; one idle longer (which a restart of the
        // database or a dropped socket may have broken) is pinged first, and replaced if dead.
        .test_before_acquire(false)
        .before_acquire(|connection, metadata| {
            Box::pin(async move {
                if metadata.idle_for >= PING_AFTER_IDLE {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// Creates the database named in `database_url` when it does not exist yet.
pub async fn create_database_if_missing(database_url: &str) -> Result<(), Error> {
    use sqlx::migrate::MigrateDatabase;
    if !sqlx::Postgres::database_exists(database_url).await? {
        sqlx::Postgres::create_database(database_url).await?;
    }
    Ok(())
}
