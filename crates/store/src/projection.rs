//! Storage for projections: checkpoints and the case-facts rows, written together in one
//! transaction so that a crash at any instant leaves a state a clean rebuild would reach. The
//! store sees facts as opaque JSON.

use crate::error::stored_position;
use crate::history::{FactsHistoryRow, HistoryTable, history_columns, write_history_statement};
use crate::log::{REPLAY_COLUMNS, ReplayRow};
use crate::rebuild::{FactsTable, facts_columns, upsert_facts_statement};
use crate::{Error, EventLog, locks};
use caselog_domain::Position;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::PgConnection;
use tracing::instrument;

/// The name of the case-facts projection's checkpoint.
pub const CASE_FACTS: &str = "case_facts";

/// Where a reader of the case-facts projection stands after taking what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactsVersion {
    pub generation: i64,
    /// The checkpoint the rows reflect.
    pub position: Position,
    /// A rebuild replaced the table (or the reader had no copy): the rows were all of it.
    pub replaced: bool,
}

/// A case's row of the case-facts projection, as the projector writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct FactsRow {
    pub case_id: String,
    /// The facts as the application stores them (the `stored` column). The JSON column
    /// (`facts`) is written empty: nothing of this release or the previous one needs it
    /// (migration 0011).
    pub stored: Vec<u8>,
}

/// A case's stored facts as a statement reads them from the facts table (or alias) `table`:
/// `stored`, or for a row last written before migration 0010, the JSON in `facts` as UTF-8
/// bytes.
pub(crate) fn stored_facts_of(table: &str) -> String {
    format!("coalesce({table}.stored, convert_to({table}.facts::text, 'UTF8'))")
}

/// A reader's copy of the case-facts projection, fed one row at a time so that loading ten
/// years never holds the table's text in memory at once.
pub trait FactsSink {
    type Error;
    /// Called once before any row: `replaced` means the rows that follow are the whole table.
    fn begin(&mut self, replaced: bool);
    /// The facts of one case, as stored (the store does not read them).
    fn row(&mut self, facts: &[u8]) -> Result<(), Self::Error>;
}

/// Proof of projection leadership: the session holding the advisory lock. Dropping it (or the
/// process dying) releases leadership.
#[derive(Debug)]
pub struct Leadership {
    connection: PgConnection,
    /// Held while leading: [`EventLog::read_all_projected`] serves this process's own appends
    /// from it.
    recent: std::sync::Arc<crate::recent::RecentRows>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.recent.disable();
    }
}

impl Leadership {
    /// Whether the leader's session still answers (and so still holds the lock).
    pub async fn still_held(&mut self) -> bool {
        sqlx::query("SELECT 1").execute(&mut self.connection).await.is_ok()
    }

    /// [`EventLog::checkpoint`] of the case-facts projection, read on the leader's session.
    /// The leader's statements go there rather than through the pool: a pooled connection costs
    /// a ping on every return, and a statement that succeeds on this session shows that it
    /// still holds the lock.
    pub async fn case_facts_checkpoint(&mut self) -> Result<Position, Error> {
        checkpoint_on(&mut self.connection, CASE_FACTS).await
    }

    /// [`EventLog::save_case_facts`] on the leader's session.
    pub async fn save_case_facts(
        &mut self,
        rows: &[FactsRow],
        history: &[FactsHistoryRow],
        from: Position,
        to: Position,
    ) -> Result<bool, Error> {
        save_case_facts_on(&mut self.connection, rows, history, from, to).await
    }
}

async fn checkpoint_on(executor: impl sqlx::PgExecutor<'_>, projection: &str) -> Result<Position, Error> {
    stored_position(
        sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = $1")
            .bind(projection)
            .fetch_optional(executor)
            .await?
            .unwrap_or(0),
    )
}

#[instrument(name = "save_case_facts", skip(connection, rows, history), fields(rows = rows.len(), history = history.len()), err(level = "debug"))]
async fn save_case_facts_on(
    connection: &mut PgConnection,
    rows: &[FactsRow],
    history: &[FactsHistoryRow],
    from: Position,
    to: Position,
) -> Result<bool, Error> {
    // One statement, so one round trip and its own transaction: the rows are written only
    // where the checkpoint moved (data-modifying parts of a statement see one another's
    // returned rows, and commit or fail together). Its text never changes: built once.
    static STATEMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let only_if_moved = "WHERE EXISTS (SELECT FROM moved)";
        format!(
            "WITH moved AS (
                  UPDATE projection_checkpoints SET position = $1, updated_at = now()
                   WHERE projection = $2 AND position = $3 RETURNING 1),
                  facts AS ({}),
                  history AS ({})
             SELECT count(*) FROM moved",
            upsert_facts_statement(FactsTable::Live, ["$4", "$5", "$1"], only_if_moved),
            write_history_statement(HistoryTable::Live, ["$6", "$7", "$8"], only_if_moved, true),
        )
    });
    let (ids, stored) = facts_columns(rows);
    let (history_ids, instants, history_facts) = history_columns(history);
    let moved: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(STATEMENT.as_str()))
        .bind(i64::from(to))
        .bind(CASE_FACTS)
        .bind(i64::from(from))
        .bind(&ids)
        .bind(&stored)
        .bind(&history_ids)
        .bind(&instants)
        .bind(&history_facts)
        .fetch_one(connection)
        .await?;
    Ok(moved == 1)
}

impl EventLog {
    /// Becomes the projection leader if no other session is. Its span is at debug level: a
    /// follower asks every few seconds.
    #[instrument(level = "debug", skip(self), err(level = "debug"))]
    pub async fn try_lead_projections(&self) -> Result<Option<Leadership>, Error> {
        let mut connection = self.pool.acquire().await?;
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(locks::PROJECTOR.0)
            .bind(locks::PROJECTOR.1)
            .fetch_one(&mut *connection)
            .await?;
        // A session that lost keeps no lock and goes back to the pool; one that won leaves the
        // pool, so that its lock ends with it and never with a pooled connection.
        Ok(won.then(|| {
            self.recent.enable();
            Leadership {
                connection: connection.detach(),
                recent: self.recent.clone(),
            }
        }))
    }

    /// The position up to which `projection` has applied every event.
    pub async fn checkpoint(&self, projection: &str) -> Result<Position, Error> {
        checkpoint_on(&self.pool, projection).await
    }

    /// Every event of `case_ids` at or below `up_to`, ordered by case then version.
    #[instrument(skip(self, case_ids), fields(cases = case_ids.len()), err(level = "debug"))]
    pub async fn read_cases_up_to(&self, case_ids: &[String], up_to: Position) -> Result<Vec<ReplayRow>, Error> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(cases_cut_by("position")))
            .bind(case_ids)
            .bind(i64::from(up_to))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Every event of `case_ids` recorded at or before `at`, ordered by case then version (a
    /// prefix of each case: a version is written only after the previous one committed).
    #[instrument(skip(self, case_ids), fields(cases = case_ids.len()), err(level = "debug"))]
    pub async fn read_cases_recorded_by(
        &self,
        case_ids: &[String],
        at: DateTime<Utc>,
    ) -> Result<Vec<ReplayRow>, Error> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(cases_cut_by("recorded_at")))
            .bind(case_ids)
            .bind(at)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Each case's first and last recording instants, in microseconds since the epoch, over the
    /// events above `after` (`None`: from the start) and at or below `up_to`; streamed to
    /// `each` (case id, first, last) so that ten years of cases never sit in one result.
    #[instrument(skip(self, each), err(level = "debug"))]
    pub async fn recorded_spans(
        &self,
        after: Option<Position>,
        up_to: Position,
        mut each: impl FnMut(String, i64, i64),
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        crate::plan_for_parameters(&mut tx).await?;
        let mut rows = sqlx::query_as::<_, (String, DateTime<Utc>, DateTime<Utc>)>(
            "SELECT case_id, min(recorded_at), max(recorded_at) FROM events
              WHERE position > $1 AND position <= $2 GROUP BY case_id",
        )
        .bind(after.map_or(-1, i64::from))
        .bind(i64::from(up_to))
        .fetch(&mut *tx);
        while let Some((case_id, first, last)) = rows.try_next().await? {
            each(case_id, first.timestamp_micros(), last.timestamp_micros());
        }
        drop(rows);
        tx.commit().await?;
        Ok(())
    }

    /// The cases with an event above `position` (a range of the log's primary key).
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn cases_after(&self, position: Position) -> Result<Vec<String>, Error> {
        let mut tx = self.pool.begin().await?;
        crate::plan_for_parameters(&mut tx).await?;
        let cases = sqlx::query_scalar("SELECT DISTINCT case_id FROM events WHERE position > $1")
            .bind(i64::from(position))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(cases)
    }

    /// Writes case-facts rows (case id, stored facts) and their history rows and moves the
    /// checkpoint from `from` to `to`, in one transaction. Returns false (writing nothing) when
    /// the checkpoint is no longer at `from`.
    pub async fn save_case_facts(
        &self,
        rows: &[FactsRow],
        history: &[FactsHistoryRow],
        from: Position,
        to: Position,
    ) -> Result<bool, Error> {
        let mut connection = self.pool.acquire().await?;
        save_case_facts_on(&mut connection, rows, history, from, to).await
    }

    /// The case-facts projection's generation and checkpoint.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn case_facts_version(&self) -> Result<(i64, Position), Error> {
        let (generation, position): (i64, i64) =
            sqlx::query_as("SELECT generation, position FROM projection_checkpoints WHERE projection = $1")
                .bind(CASE_FACTS)
                .fetch_one(&self.pool)
                .await?;
        Ok((generation, stored_position(position)?))
    }

    /// Feeds `sink` what changed in the case-facts projection since a reader's copy was at
    /// `since` of `generation`, read in one snapshot: the rows written after `since`, or every
    /// row when the reader has no copy (`None`) or a rebuild has replaced the table since
    /// (another generation). The outer error is the store's, the inner the sink's.
    #[instrument(skip(self, sink), err(level = "debug"))]
    pub async fn case_facts_since<S: FactsSink>(
        &self,
        generation: i64,
        since: Option<Position>,
        sink: &mut S,
    ) -> Result<Result<FactsVersion, S::Error>, Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        crate::plan_for_parameters(&mut tx).await?;
        let (position, current): (i64, i64) =
            sqlx::query_as("SELECT position, generation FROM projection_checkpoints WHERE projection = $1")
                .bind(CASE_FACTS)
                .fetch_one(&mut *tx)
                .await?;
        let version = FactsVersion {
            generation: current,
            position: stored_position(position)?,
            replaced: current != generation || since.is_none(),
        };
        sink.begin(version.replaced);
        // Streamed: a reader decodes each row straight into its own types.
        let statement = format!(
            "SELECT {} FROM case_facts WHERE as_of_position > $1",
            stored_facts_of("case_facts")
        );
        let mut rows = sqlx::query_scalar::<_, Vec<u8>>(sqlx::AssertSqlSafe(statement))
            .bind(since.filter(|_| !version.replaced).map_or(i64::MIN, i64::from))
            .fetch(&mut *tx);
        while let Some(facts) = rows.try_next().await? {
            if let Err(refused) = sink.row(&facts) {
                return Ok(Err(refused));
            }
        }
        drop(rows);
        tx.commit().await?;
        Ok(Ok(version))
    }
}

/// The statement behind [`EventLog::read_cases_up_to`] and [`EventLog::read_cases_recorded_by`]:
/// every event of the cases in `$1` whose `cut_column` is at most `$2`, by case then version.
///
/// Each case is looked up on its own through `(case_id, version)`. The plain form, `case_id =
/// ANY($1) AND position <= $2`, is planned as a scan of the whole log whenever the planner lacks
/// statistics (a freshly loaded log, autovacuum behind): it guesses that hundreds of case ids
/// select most rows, or ANDs in the position index, which matches nearly every row. `OFFSET 0`
/// keeps the per-case lookup from being merged back into such a plan, and the cut, applied
/// outside it, from being used as an index condition.
fn cases_cut_by(cut_column: &str) -> String {
    format!(
        "SELECT e.case_id, e.event_id, e.version, e.event_type, e.occurred_on, e.data, e.recorded_at
           FROM (SELECT DISTINCT unnest($1::text[])) AS wanted(id)
          CROSS JOIN LATERAL (SELECT position, {REPLAY_COLUMNS} FROM events WHERE case_id = wanted.id OFFSET 0) AS e
          WHERE e.{cut_column} <= $2
          ORDER BY e.case_id, e.version"
    )
}
