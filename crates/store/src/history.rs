//! The case-facts projection's history, for `as_of` answers: per case and recording instant (one
//! append), the facts after the events recorded then (see migration 0007). Written with the
//! projection (in its checkpoint's transaction, or by a rebuild beside the new table); the store
//! sees the facts as opaque bytes.

use crate::error::stored_position;
use crate::projection::CASE_FACTS;
use crate::{Error, EventLog};
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use tracing::instrument;

/// One row of the history.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FactsHistoryRow {
    pub case_id: String,
    /// When events of the case were recorded (their append's `now()`).
    pub recorded_at: DateTime<Utc>,
    /// The facts after them, encoded by the caller; `None`: the case had none.
    pub facts: Option<Vec<u8>>,
}

/// Which history table a statement writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HistoryTable {
    Live,
    Rebuild,
}

impl HistoryTable {
    fn name(self) -> &'static str {
        match self {
            HistoryTable::Live => "case_facts_history",
            HistoryTable::Rebuild => "case_facts_history_rebuild",
        }
    }
}

/// Writes `rows`. With `merge`, a row for a (case, instant) already stored takes the new facts
/// (an append's events split over two projector pages: the second page's come later); without,
/// the table must have no such row (a rebuild's first load, before its key exists).
pub(crate) async fn write_history(
    executor: impl PgExecutor<'_>,
    table: HistoryTable,
    rows: &[FactsHistoryRow],
    merge: bool,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let (ids, instants, facts) = history_columns(rows);
    sqlx::query(sqlx::AssertSqlSafe(write_history_statement(
        table,
        ["$1", "$2", "$3"],
        "",
        merge,
    )))
    .bind(&ids)
    .bind(&instants)
    .bind(&facts)
    .execute(executor)
    .await?;
    Ok(())
}

/// The columns of history rows as the history's insert binds them: case ids, instants, facts.
pub(crate) type HistoryColumns<'a> = (Vec<&'a str>, Vec<DateTime<Utc>>, Vec<Option<&'a [u8]>>);

/// The case ids, instants and facts of `rows`, as the history's insert binds them.
pub(crate) fn history_columns(rows: &[FactsHistoryRow]) -> HistoryColumns<'_> {
    (
        rows.iter().map(|r| r.case_id.as_str()).collect(),
        rows.iter().map(|r| r.recorded_at).collect(),
        rows.iter().map(|r| r.facts.as_deref()).collect(),
    )
}

/// The statement behind [`write_history`], its parameters (case ids, instants, facts) named by
/// `parameters`, its rows kept only where `condition` holds (e.g. `WHERE …`, or "").
pub(crate) fn write_history_statement(
    table: HistoryTable,
    parameters: [&str; 3],
    condition: &str,
    merge: bool,
) -> String {
    let [ids, instants, facts] = parameters;
    let on_conflict = if merge {
        "ON CONFLICT (case_id, recorded_at) DO UPDATE SET facts = EXCLUDED.facts"
    } else {
        ""
    };
    format!(
        "INSERT INTO {} (case_id, recorded_at, facts)
         SELECT * FROM UNNEST({ids}::text[], {instants}::timestamptz[], {facts}::bytea[]) {condition}
         {on_conflict}",
        table.name()
    )
}

impl EventLog {
    /// For each of `case_ids` with an event recorded at or before `at`, the last history row
    /// recorded by then: its facts at `at`. `None` when the history cannot answer: it does not
    /// reach back to the log's start (a rebuild fills it), or an event recorded by `at` is not
    /// projected yet. `at` must be settled (no append recorded by then still uncommitted).
    #[instrument(skip(self, case_ids), fields(cases = case_ids.len()), err(level = "debug"))]
    pub async fn facts_history_at(
        &self,
        case_ids: &[String],
        at: DateTime<Utc>,
    ) -> Result<Option<Vec<FactsHistoryRow>>, Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        crate::plan_for_parameters(&mut tx).await?;
        let (position, complete): (i64, bool) =
            sqlx::query_as("SELECT position, history_complete FROM projection_checkpoints WHERE projection = $1")
                .bind(CASE_FACTS)
                .fetch_one(&mut *tx)
                .await?;
        stored_position(position)?;
        if !complete {
            return Ok(None);
        }
        // The events beyond the checkpoint are the projector's lag: a short range of the key.
        let unprojected: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE position > $1 AND recorded_at <= $2)")
                .bind(position)
                .bind(at)
                .fetch_one(&mut *tx)
                .await?;
        if unprojected {
            return Ok(None);
        }
        let rows: Vec<FactsHistoryRow> = sqlx::query_as(
            "SELECT c.case_id, h.recorded_at, h.facts
               FROM UNNEST($1::text[]) AS c(case_id)
               CROSS JOIN LATERAL (
                    SELECT recorded_at, facts FROM case_facts_history h
                     WHERE h.case_id = c.case_id AND h.recorded_at <= $2
                     ORDER BY h.recorded_at DESC LIMIT 1) h",
        )
        .bind(case_ids)
        .bind(at)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(rows))
    }
}
