//! Storage for rebuilding the case-facts projection beside the live one.
//!
//! A rebuild writes every row into `case_facts_rebuild` (bulk `COPY`, indexes built afterwards),
//! catches it up with the events appended meanwhile, and then, in one transaction that holds the
//! live checkpoint row, catches up the last few events, drops the live table, renames the new
//! one into its place and moves the checkpoint and generation. Readers answer from the live
//! table until that commit, and from the new one after it. An interrupted rebuild leaves only
//! `case_facts_rebuild`, which the next rebuild drops.

use crate::copy_binary::{BinaryCopyWriter, ReplayRowReader};
use crate::copy_text::copy_in;
use crate::error::stored_position;
use crate::history::{FactsHistoryRow, HistoryTable, write_history};
use crate::log::{REPLAY_COLUMNS, ReplayRow};
use crate::projection::{CASE_FACTS, FactsRow, stored_facts_of};
use crate::{Error, EventLog, locks};
use caselog_domain::Position;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sqlx::{Connection, PgConnection, PgExecutor, Postgres, Transaction};
use tracing::instrument;

/// `rows` in `COPY`'s binary format: the facts are bytes, which the text format would double.
fn binary_copy_of(rows: &[FactsHistoryRow]) -> Vec<u8> {
    let mut writer = BinaryCopyWriter::with_capacity(
        rows.iter()
            .map(|r| r.case_id.len() + 32 + r.facts.as_ref().map_or(0, Vec::len))
            .sum::<usize>(),
    );
    for row in rows {
        writer.start_row(3);
        writer.bytes(row.case_id.as_bytes());
        writer.timestamp(row.recorded_at);
        match &row.facts {
            Some(facts) => writer.bytes(facts),
            None => writer.null(),
        }
    }
    writer.finish()
}

/// History rows per statement: bounds the arrays bound to one `UNNEST`.
const HISTORY_ROWS_PER_STATEMENT: usize = 10_000;

/// Which events a case-ordered read includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Events at or below a position that is safe to read (see the feed's horizon).
    Position(Position),
    /// Events recorded at or before an instant.
    RecordedBy(DateTime<Utc>),
}

/// One of the two case-facts tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactsTable {
    Live,
    Rebuild,
}

impl FactsTable {
    fn name(self) -> &'static str {
        match self {
            FactsTable::Live => "case_facts",
            FactsTable::Rebuild => "case_facts_rebuild",
        }
    }
}

/// A case whose stored facts differ in their bytes between the live and the rebuilt table
/// (`None`: no row there). Rows written by different builds may differ in bytes and not in
/// meaning: the reader decides.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FactsDifference {
    pub case_id: String,
    pub live: Option<Vec<u8>>,
    pub rebuilt: Option<Vec<u8>>,
}

impl EventLog {
    /// Every event cut at `cut`, ordered by case then version, handed to `deliver` in pages of
    /// whole cases of about `page_events` events (a case with more makes its page longer).
    /// Stops early, without error, when `deliver` returns false.
    ///
    /// One binary `COPY` streams the whole log: PostgreSQL goes on producing rows while the
    /// caller works on a page (the socket's buffers hold it back when the caller falls behind),
    /// and reading costs far less than query rows would. The statement's snapshot lasts as
    /// long as the read, as a page-by-page read's would not; the log is only ever appended to.
    #[instrument(skip(self, deliver), err(level = "debug"))]
    pub async fn read_cases_in_order<Delivered: Future<Output = bool>>(
        &self,
        cut: Cut,
        page_events: usize,
        mut deliver: impl FnMut(Vec<ReplayRow>) -> Delivered,
    ) -> Result<(), Error> {
        // `COPY` takes no parameters: the bound is written into the statement (a number, or an
        // instant in RFC 3339, neither of which can carry a quote).
        let cut_condition = match cut {
            Cut::Position(p) => format!("position <= {}", i64::from(p)),
            Cut::RecordedBy(t) => format!(
                "recorded_at <= '{}'::timestamptz",
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ),
        };
        // A connection of its own, closed afterwards: the settings below stay with it, and a
        // read stopped halfway leaves no `COPY` on a pooled connection.
        let mut connection = self.pool.acquire().await?.detach();
        // Walk the (case_id, version) index whatever the statistics say (a sort of the whole
        // log would wait for all of it), for as long as the log takes to read.
        sqlx::query("SELECT set_config('enable_sort', 'off', false), set_config('statement_timeout', '0', false)")
            .execute(&mut connection)
            .await?;
        let statement = format!(
            "COPY (SELECT {REPLAY_COLUMNS} FROM events WHERE {cut_condition} ORDER BY case_id, version)
               TO STDOUT (FORMAT binary)"
        );
        let mut stream = connection.copy_out_raw(&statement).await?;
        let mut reader = ReplayRowReader::default();
        let mut page: Vec<ReplayRow> = Vec::with_capacity(page_events + 1);
        while let Some(chunk) = stream.next().await {
            reader.push(&chunk?);
            while let Some(row) = reader.next_row()? {
                if page.len() >= page_events && page.last().is_some_and(|last| last.case_id != row.case_id) {
                    let full = std::mem::replace(&mut page, Vec::with_capacity(page_events + 1));
                    if !deliver(full).await {
                        return Ok(());
                    }
                }
                page.push(row);
            }
        }
        drop(stream);
        reader.finish()?;
        if !page.is_empty() {
            deliver(page).await;
        }
        connection.close().await?;
        Ok(())
    }

    /// How many events have a position at or below `up_to`.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn count_events_up_to(&self, up_to: Position) -> Result<i64, Error> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM events WHERE position <= $1")
            .bind(i64::from(up_to))
            .fetch_one(&self.pool)
            .await?)
    }

    /// Takes the rebuild lock, unless another session holds it.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn try_lock_rebuild(&self) -> Result<Option<RebuildSession>, Error> {
        let mut connection = self.pool.acquire().await?;
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(locks::REBUILD.0)
            .bind(locks::REBUILD.1)
            .fetch_one(&mut *connection)
            .await?;
        if !won {
            return Ok(None);
        }
        let mut connection = connection.detach();
        // Building indexes over a national table can take longer than a request may.
        sqlx::query("SET statement_timeout = 0")
            .execute(&mut connection)
            .await?;
        Ok(Some(RebuildSession { connection }))
    }
}

/// The session that holds the rebuild lock and writes the rebuilt table. Dropping it (or the
/// process dying) releases the lock.
#[derive(Debug)]
pub struct RebuildSession {
    connection: PgConnection,
}

impl RebuildSession {
    /// Starts an empty rebuilt table, dropping what an interrupted rebuild left.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn create_table(&mut self) -> Result<(), Error> {
        // The table is the schema owner's (the service role creates none): see migration 0005.
        sqlx::query("SELECT caselog_rebuild_create()")
            .execute(&mut self.connection)
            .await?;
        Ok(())
    }

    /// Appends rows to the rebuilt table in one `COPY`: their stored facts only, since a rebuilt
    /// table is read by this release alone (see migration 0010).
    #[instrument(skip(self, rows), fields(rows = rows.len()), err(level = "debug"))]
    pub async fn copy_rows(&mut self, rows: &[FactsRow], position: Position) -> Result<(), Error> {
        let mut writer =
            BinaryCopyWriter::with_capacity(rows.iter().map(|r| r.case_id.len() + r.stored.len() + 26).sum());
        let position = i64::from(position).to_be_bytes();
        for row in rows {
            writer.start_row(3);
            writer.bytes(row.case_id.as_bytes());
            writer.bytes(&row.stored);
            writer.bytes(&position);
        }
        copy_in(
            &mut self.connection,
            "COPY case_facts_rebuild (case_id, stored, as_of_position) FROM STDIN (FORMAT binary)",
            writer.finish(),
        )
        .await?;
        Ok(())
    }

    /// Appends history rows to the rebuilt history (each (case, instant) once: a case is folded
    /// whole, in one page).
    #[instrument(skip(self, rows), fields(rows = rows.len()), err(level = "debug"))]
    pub async fn copy_history(&mut self, rows: &[FactsHistoryRow]) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        copy_in(
            &mut self.connection,
            "COPY case_facts_history_rebuild (case_id, recorded_at, facts) FROM STDIN WITH (FORMAT binary)",
            binary_copy_of(rows),
        )
        .await?;
        Ok(())
    }

    /// Builds the rebuilt table's indexes (after the bulk load: cheaper than maintaining them).
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn index_table(&mut self) -> Result<(), Error> {
        // Also analyzes it: without statistics the planner scans the whole table to find the few
        // rows a reader asks for; autovacuum would get there, but only later.
        sqlx::query("SELECT caselog_rebuild_index()")
            .execute(&mut self.connection)
            .await?;
        Ok(())
    }

    /// Every event of each case that has an event in (`after`, `up_to`], up to `up_to`, ordered
    /// by case then version: what catching up from `after` to `up_to` must refold.
    pub async fn changed_cases(&mut self, after: Position, up_to: Position) -> Result<Vec<ReplayRow>, Error> {
        changed_cases(&mut self.connection, after, up_to).await
    }

    /// Writes catch-up rows into the rebuilt table and its history.
    pub async fn upsert_rows(
        &mut self,
        rows: &[FactsRow],
        history: &[FactsHistoryRow],
        position: Position,
    ) -> Result<(), Error> {
        upsert_rebuilt(&mut self.connection, rows, history, position).await
    }

    /// The feed's safe position now.
    pub async fn safe_position(&mut self) -> Result<Position, Error> {
        safe_position(&mut self.connection).await
    }

    /// Opens the finishing transaction: it holds the live checkpoint row (the live projector
    /// waits) until it switches or is dropped. `exclusive` locks the row for update (to switch);
    /// otherwise for share (to compare).
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn finish(&mut self, exclusive: bool) -> Result<Finish<'_>, Error> {
        let mut tx = sqlx::Connection::begin(&mut self.connection).await?;
        sqlx::query("SET LOCAL lock_timeout = '10s'").execute(&mut *tx).await?;
        let (live_position, generation): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT position, generation FROM projection_checkpoints WHERE projection = $1 FOR {}",
            if exclusive { "UPDATE" } else { "SHARE" }
        )))
        .bind(CASE_FACTS)
        .fetch_one(&mut *tx)
        .await?;
        Ok(Finish {
            tx,
            live_position: stored_position(live_position)?,
            generation,
        })
    }

    /// Releases the rebuild lock and closes the session (dropping it does the same, but the
    /// lock then outlives the call until the server notices the closed connection).
    pub async fn close(mut self) -> Result<(), Error> {
        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(locks::REBUILD.0)
            .bind(locks::REBUILD.1)
            .execute(&mut self.connection)
            .await?;
        sqlx::Connection::close(self.connection).await?;
        Ok(())
    }

    /// Drops the rebuilt table (after a verification).
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn drop_table(&mut self) -> Result<(), Error> {
        sqlx::query("SELECT caselog_rebuild_drop()")
            .execute(&mut self.connection)
            .await?;
        Ok(())
    }
}

/// The transaction that ends a rebuild, holding the live checkpoint row.
#[derive(Debug)]
pub struct Finish<'a> {
    tx: Transaction<'a, Postgres>,
    /// The live projection's checkpoint, which cannot move while this transaction is open.
    pub live_position: Position,
    pub generation: i64,
}

impl Finish<'_> {
    pub async fn safe_position(&mut self) -> Result<Position, Error> {
        safe_position(&mut *self.tx).await
    }

    pub async fn changed_cases(&mut self, after: Position, up_to: Position) -> Result<Vec<ReplayRow>, Error> {
        changed_cases(&mut *self.tx, after, up_to).await
    }

    pub async fn upsert_rows(
        &mut self,
        rows: &[FactsRow],
        history: &[FactsHistoryRow],
        position: Position,
    ) -> Result<(), Error> {
        upsert_rebuilt(&mut self.tx, rows, history, position).await
    }

    /// Every row's stored facts in `table`, ordered by case id.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn rows(&mut self, table: FactsTable) -> Result<Vec<Vec<u8>>, Error> {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM {} ORDER BY case_id",
            stored_facts_of(table.name()),
            table.name()
        )))
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// The cases whose stored facts differ in their bytes between the two tables, ordered by
    /// case id.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn differences(&mut self) -> Result<Vec<FactsDifference>, Error> {
        let (live, rebuilt) = (stored_facts_of("l"), stored_facts_of("r"));
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT case_id, {live} AS live, {rebuilt} AS rebuilt
               FROM case_facts l FULL JOIN case_facts_rebuild r USING (case_id)
              WHERE {live} IS DISTINCT FROM {rebuilt}
              ORDER BY case_id"
        )))
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// Ends the transaction without switching (undoing what it wrote).
    pub async fn release(self) -> Result<(), Error> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// Puts the rebuilt table in the live one's place at `position` and commits; returns the new
    /// generation.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn switch(mut self, position: Position) -> Result<i64, Error> {
        sqlx::query("SELECT caselog_rebuild_switch()")
            .execute(&mut *self.tx)
            .await?;
        let generation: i64 = sqlx::query_scalar(
            "UPDATE projection_checkpoints
                SET position = $1, generation = generation + 1, history_complete = true, updated_at = now()
              WHERE projection = $2 RETURNING generation",
        )
        .bind(i64::from(position))
        .bind(CASE_FACTS)
        .fetch_one(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(generation)
    }
}

async fn safe_position(executor: impl PgExecutor<'_>) -> Result<Position, Error> {
    stored_position(
        sqlx::query_scalar("SELECT safe FROM caselog_feed_horizon()")
            .fetch_one(executor)
            .await?,
    )
}

async fn changed_cases(
    executor: impl PgExecutor<'_>,
    after: Position,
    up_to: Position,
) -> Result<Vec<ReplayRow>, Error> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {REPLAY_COLUMNS} FROM events
          WHERE case_id IN (SELECT case_id FROM events WHERE position > $1 AND position <= $2)
            AND position <= $2
          ORDER BY case_id, version"
    )))
    .bind(i64::from(after))
    .bind(i64::from(up_to))
    .fetch_all(executor)
    .await?)
}

async fn upsert_rebuilt(
    connection: &mut PgConnection,
    rows: &[FactsRow],
    history: &[FactsHistoryRow],
    position: Position,
) -> Result<(), Error> {
    for chunk in history.chunks(HISTORY_ROWS_PER_STATEMENT) {
        write_history(&mut *connection, HistoryTable::Rebuild, chunk, true).await?;
    }
    upsert_facts(connection, FactsTable::Rebuild, rows, position).await
}

/// Writes each case's facts into `table` at `position`, replacing its row if it has one.
pub(crate) async fn upsert_facts<'c>(
    executor: impl PgExecutor<'c>,
    table: FactsTable,
    rows: &[FactsRow],
    position: Position,
) -> Result<(), Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let (ids, stored) = facts_columns(rows);
    sqlx::query(sqlx::AssertSqlSafe(upsert_facts_statement(
        table,
        ["$1", "$2", "$3"],
        "",
    )))
    .bind(&ids)
    .bind(&stored)
    .bind(i64::from(position))
    .execute(executor)
    .await?;
    Ok(())
}

/// The case ids and stored facts of `rows`, as the upsert binds them.
pub(crate) fn facts_columns(rows: &[FactsRow]) -> (Vec<&str>, Vec<&[u8]>) {
    (
        rows.iter().map(|r| r.case_id.as_str()).collect(),
        rows.iter().map(|r| r.stored.as_slice()).collect(),
    )
}

/// The statement behind [`upsert_facts`], its parameters (case ids, stored facts, position)
/// named by `parameters`, its rows kept only where `condition` holds (e.g. `WHERE …`, or "").
pub(crate) fn upsert_facts_statement(table: FactsTable, parameters: [&str; 3], condition: &str) -> String {
    let [ids, stored, position] = parameters;
    // `facts` = NULL, not left as it was: JSON from before migration 0011 would no longer match
    // `stored`, and stale facts must not be readable anywhere.
    format!(
        "INSERT INTO {} (case_id, facts, stored, as_of_position)
         SELECT id, NULL, s, {position} FROM UNNEST({ids}::text[], {stored}::bytea[]) AS r(id, s) {condition}
         ON CONFLICT (case_id) DO UPDATE
            SET facts = NULL, stored = EXCLUDED.stored, as_of_position = EXCLUDED.as_of_position",
        table.name()
    )
}
