//! The case-facts projection's history, for `as_of` answers: per case and UTC day of recording,
//! the facts after the last event recorded that day (see migration 0007). Written with the
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
    /// [`utc_day`] of the events' recording instants.
    pub day: i32,
    /// The first and last recording instants of the case's events that day.
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// The facts after the last of them, encoded by the caller; `None`: the case had none.
    pub facts: Option<Vec<u8>>,
}

/// Days since 1970-01-01 in UTC.
pub fn utc_day(at: DateTime<Utc>) -> i32 {
    // Within i32 for every instant PostgreSQL's timestamptz can hold.
    at.timestamp().div_euclid(86_400) as i32
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

/// Writes `rows`. With `merge`, a row for a (case, day) already stored is widened to the new
/// instants and takes the new facts (which come later in the log); without, the table must
/// have no such row (a rebuild's first load, before its key exists).
pub(crate) async fn write_history(
    executor: impl PgExecutor<'_>,
    table: HistoryTable,
    rows: &[FactsHistoryRow],
    merge: bool,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let table = table.name();
    let on_conflict = if merge {
        format!(
            "ON CONFLICT (case_id, day) DO UPDATE SET first_at = LEAST({table}.first_at, EXCLUDED.first_at),
                 last_at = GREATEST({table}.last_at, EXCLUDED.last_at), facts = EXCLUDED.facts"
        )
    } else {
        String::new()
    };
    let ids: Vec<&str> = rows.iter().map(|r| r.case_id.as_str()).collect();
    let days: Vec<i32> = rows.iter().map(|r| r.day).collect();
    let firsts: Vec<DateTime<Utc>> = rows.iter().map(|r| r.first_at).collect();
    let lasts: Vec<DateTime<Utc>> = rows.iter().map(|r| r.last_at).collect();
    let facts: Vec<Option<&[u8]>> = rows.iter().map(|r| r.facts.as_deref()).collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (case_id, day, first_at, last_at, facts)
         SELECT * FROM UNNEST($1::text[], $2::integer[], $3::timestamptz[], $4::timestamptz[], $5::bytea[])
         {on_conflict}"
    )))
    .bind(&ids)
    .bind(&days)
    .bind(&firsts)
    .bind(&lasts)
    .bind(&facts)
    .execute(executor)
    .await?;
    Ok(())
}

impl EventLog {
    /// For each of `case_ids` with an event recorded at or before `at`, the history row of the
    /// last day it had events recorded by then: its facts at `at` when that row's `last_at` is
    /// at or before `at` too. `None` when the history cannot answer: it does not reach back to
    /// the log's start (a rebuild fills it), or an event recorded by `at` is not projected yet.
    /// `at` must be settled (no append recorded by then still uncommitted).
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
            "SELECT c.case_id, h.day, h.first_at, h.last_at, h.facts
               FROM UNNEST($1::text[]) AS c(case_id)
               CROSS JOIN LATERAL (
                    SELECT day, first_at, last_at, facts FROM case_facts_history h
                     WHERE h.case_id = c.case_id AND h.day <= $3 AND h.first_at <= $2
                     ORDER BY h.day DESC LIMIT 1) h",
        )
        .bind(case_ids)
        .bind(at)
        .bind(utc_day(at))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::utc_day;
    use chrono::{TimeZone, Utc};

    #[test]
    fn utc_days_start_at_midnight_utc() {
        assert_eq!(utc_day(Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap()), 0);
        assert_eq!(utc_day(Utc.with_ymd_and_hms(1970, 1, 1, 23, 59, 59).unwrap()), 0);
        assert_eq!(utc_day(Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap()), -1);
        assert_eq!(utc_day(Utc.with_ymd_and_hms(2026, 12, 4, 0, 0, 0).unwrap()), 20_791);
    }
}
