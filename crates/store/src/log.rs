//! Appending to and reading from the `events` table.

use crate::Error;
use crate::error::{batch_versions, stored_position, stored_version};
use crate::feed::{FeedSignal, ProjectedRow, SharedSignal};
use crate::recent::{RECENT_ROWS_BUDGET_BYTES, RecentRows};
use caselog_domain::{EventId, Position, Version};
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use tracing::instrument;
use uuid::Uuid;

/// An event row to append. The store adds the position, version and `recorded_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRow {
    pub event_id: EventId,
    pub event_type: String,
    pub occurred_on: NaiveDate,
    /// The `data` object as JSON text.
    pub data: String,
    /// The `metadata` object as JSON text.
    pub metadata: String,
}

/// A row for [`EventLog::load_new_cases`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoadRow {
    pub case_id: String,
    pub version: Version,
    pub source: String,
    pub row: NewRow,
}

/// Where an appended row landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedRow {
    pub position: Position,
    pub version: Version,
    pub recorded_at: DateTime<Utc>,
}

impl AppendedRow {
    /// From the `(position, version, recorded_at)` an append statement returns.
    pub(crate) fn stored((position, version, recorded_at): (i64, i32, DateTime<Utc>)) -> Result<AppendedRow, Error> {
        Ok(AppendedRow {
            position: stored_position(position)?,
            version: stored_version(version)?,
            recorded_at,
        })
    }
}

/// A row of the log.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredEvent {
    #[sqlx(try_from = "i64")]
    pub position: Position,
    #[sqlx(try_from = "Uuid")]
    pub event_id: EventId,
    pub case_id: String,
    #[sqlx(try_from = "i32")]
    pub version: Version,
    pub event_type: String,
    pub occurred_on: NaiveDate,
    pub data: serde_json::Value,
    pub metadata: serde_json::Value,
    pub source: String,
    pub recorded_at: DateTime<Utc>,
}

/// What folding a case needs of an event row: `data` stays JSON text, so a replay parses it once,
/// straight into the payload.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ReplayRow {
    pub case_id: String,
    #[sqlx(try_from = "Uuid")]
    pub event_id: EventId,
    #[sqlx(try_from = "i32")]
    pub version: Version,
    pub event_type: String,
    pub occurred_on: NaiveDate,
    pub data: String,
    pub recorded_at: DateTime<Utc>,
}

/// Appends of at least this many rows are written with `COPY`, whose multi-row insert outruns a
/// row-at-a-time `INSERT … SELECT` by far once a batch pays for the extra round trip that reads
/// the positions back.
const COPY_FROM_ROWS: usize = 64;

/// One `events` row in `COPY` text format. The database gives each row its position and
/// `recorded_at` (the columns' defaults), in the order of the rows.
fn push_copy_row(buffer: &mut Vec<u8>, case_id: &str, version: Version, source: &str, row: &NewRow) {
    use crate::copy_text::copy_text_field;
    use std::io::Write as _;
    // The uuid, numbers and the date need no escaping: written straight into the buffer, the
    // uuid and the date without the formatting machinery (a batch writes a thousand of each).
    let mut uuid_text = [0; uuid::fmt::Hyphenated::LENGTH];
    buffer.extend_from_slice(
        uuid::Uuid::from(row.event_id)
            .hyphenated()
            .encode_lower(&mut uuid_text)
            .as_bytes(),
    );
    buffer.push(b'\t');
    copy_text_field(buffer, case_id);
    let _ = write!(buffer, "\t{version}\t");
    copy_text_field(buffer, &row.event_type);
    buffer.push(b'\t');
    match caselog_domain::dates::write_date(row.occurred_on, &mut [0; 10]) {
        Some(date) => buffer.extend_from_slice(date.as_bytes()),
        None => {
            let _ = write!(buffer, "{}", row.occurred_on);
        }
    }
    buffer.push(b'\t');
    for field in [row.data.as_str(), &row.metadata, source] {
        copy_text_field(buffer, field);
        buffer.push(b'\t');
    }
    // The last field ends the line instead.
    buffer.pop();
    buffer.push(b'\n');
}

/// Writes `COPY` text rows into `events` on `connection`: one statement, so all or none.
async fn copy_in(connection: &mut PgConnection, buffer: Vec<u8>) -> Result<(), sqlx::Error> {
    crate::copy_text::copy_in(
        connection,
        "COPY events (event_id, case_id, version, event_type, occurred_on, data, metadata, source) FROM STDIN",
        buffer,
    )
    .await
}

pub(crate) const REPLAY_COLUMNS: &str =
    "case_id, event_id, version, event_type, occurred_on, data::text AS data, recorded_at";

pub(crate) const COLUMNS: &str =
    "position, event_id, case_id, version, event_type, occurred_on, data, metadata, source, recorded_at";

/// The event log. Cheap to clone: it is a handle on the connection pool.
#[derive(Debug, Clone)]
pub struct EventLog {
    pub(crate) pool: PgPool,
    /// Where audit records are written: the same pool, or one reserved for them.
    pub(crate) audit_pool: PgPool,
    /// Where reporting reads go (see [`EventLog::reporting`]): the same pool, or one on a
    /// read-only replica.
    reporting_pool: PgPool,
    pub(crate) signal: SharedSignal,
    /// Rows this process committed, held for its projection leader (see `recent.rs`).
    pub(crate) recent: Arc<RecentRows>,
}

impl EventLog {
    pub fn new(pool: PgPool) -> EventLog {
        EventLog {
            audit_pool: pool.clone(),
            reporting_pool: pool.clone(),
            pool,
            signal: Arc::new(FeedSignal::new()),
            recent: Arc::new(RecentRows::new(RECENT_ROWS_BUDGET_BYTES)),
        }
    }

    /// Sends reporting reads ([`EventLog::reporting`]) through `pool`, typically connected to a
    /// streaming replica, so that the read model's loads and `as_of` folds do not load the
    /// primary.
    pub fn with_reporting_pool(mut self, pool: PgPool) -> EventLog {
        self.reporting_pool = pool;
        self
    }

    /// The log as the reporting pool sees it: a prefix of this log (a replica replays commits in
    /// order), possibly behind it. Only for reads: a replica refuses writes, and it cannot
    /// `LISTEN`, so wake-ups from it never come.
    pub fn reporting(&self) -> EventLog {
        EventLog {
            pool: self.reporting_pool.clone(),
            audit_pool: self.audit_pool.clone(),
            reporting_pool: self.reporting_pool.clone(),
            signal: self.signal.clone(),
            recent: self.recent.clone(),
        }
    }

    /// Writes audit records through `pool` instead: connections kept for them, so that when
    /// reads have taken every other connection, a read that got one is recorded at once rather
    /// than waiting a second time behind the others.
    pub fn with_audit_pool(mut self, pool: PgPool) -> EventLog {
        self.audit_pool = pool;
        self
    }

    /// Appends `rows` to a case as versions `after_version + 1 ..`, all or none: in one statement
    /// (from 64 rows a `COPY`).
    /// Fails with `VersionConflict` when another append took one of those versions first, and with
    /// `DuplicateEventId` when one of the ids is already recorded.
    #[instrument(skip(self, rows), fields(rows = rows.len()), err(level = "debug"))]
    pub async fn append(
        &self,
        case_id: &str,
        after_version: Version,
        source: &str,
        rows: Vec<NewRow>,
    ) -> Result<Vec<AppendedRow>, Error> {
        let mut connection = self.pool.acquire().await?;
        self.append_on(&mut connection, case_id, after_version, source, rows)
            .await
    }

    /// [`EventLog::append`] on a connection the caller already holds, so that it can decide,
    /// once it has one, whether the append is still wanted.
    pub(crate) async fn append_on(
        &self,
        connection: &mut PgConnection,
        case_id: &str,
        after_version: Version,
        source: &str,
        rows: Vec<NewRow>,
    ) -> Result<Vec<AppendedRow>, Error> {
        let _published_or_failed = self.recent.expect_rows();
        if rows.len() >= COPY_FROM_ROWS {
            return self
                .append_by_copy(connection, case_id, after_version, source, rows)
                .await;
        }
        let (first_version, _) = batch_versions(after_version, rows.len())?;
        let event_ids: Vec<Uuid> = rows.iter().map(|r| Uuid::from(r.event_id)).collect();
        let types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
        let occurred: Vec<NaiveDate> = rows.iter().map(|r| r.occurred_on).collect();
        let data: Vec<&str> = rows.iter().map(|r| r.data.as_str()).collect();
        let metadata: Vec<&str> = rows.iter().map(|r| r.metadata.as_str()).collect();
        let inserted: Vec<(i64, i32, DateTime<Utc>)> = sqlx::query_as(
            "INSERT INTO events (event_id, case_id, version, event_type, occurred_on, data, metadata, source)
             SELECT r.event_id, $1, $2 + r.n::integer - 1, r.event_type, r.occurred_on, r.data::jsonb, r.metadata::jsonb, $3
               FROM UNNEST($4::uuid[], $5::text[], $6::date[], $7::text[], $8::text[])
                      WITH ORDINALITY AS r(event_id, event_type, occurred_on, data, metadata, n)
              ORDER BY r.n
             RETURNING position, version, recorded_at",
        )
        .bind(case_id)
        .bind(i32::from(first_version))
        .bind(source)
        .bind(&event_ids)
        .bind(&types)
        .bind(&occurred)
        .bind(&data)
        .bind(&metadata)
        .fetch_all(&mut *connection)
        .await
        .map_err(|e| Error::from_sqlx(e, case_id, first_version))?;
        let appended = inserted
            .into_iter()
            .map(AppendedRow::stored)
            .collect::<Result<Vec<_>, Error>>()
            .map(|mut appended| {
                appended.sort_by_key(|row| row.version);
                appended
            });
        if let Ok(appended) = &appended {
            self.publish(case_id, rows, appended);
        }
        // Committed whether or not its answer could be read.
        self.signal.appended();
        appended
    }

    /// [`EventLog::append`] for a large batch: the rows written with one `COPY` (one statement,
    /// so all or none), then where they landed read back, from rows that never change.
    async fn append_by_copy(
        &self,
        connection: &mut PgConnection,
        case_id: &str,
        after_version: Version,
        source: &str,
        rows: Vec<NewRow>,
    ) -> Result<Vec<AppendedRow>, Error> {
        let (first_version, _) = batch_versions(after_version, rows.len())?;
        let mut buffer = Vec::with_capacity(rows.len() * 400);
        for (i, row) in rows.iter().enumerate() {
            push_copy_row(&mut buffer, case_id, after_version.after(i + 1)?, source, row);
        }
        copy_in(connection, buffer)
            .await
            .map_err(|e| Error::from_sqlx(e, case_id, first_version))?;
        let landed = self.read_back(connection, case_id, after_version, rows.len()).await;
        if let Ok(landed) = &landed {
            self.publish(case_id, rows, landed);
        }
        // Committed whether or not where it landed could be read.
        self.signal.appended();
        landed
    }

    /// Where the `count` rows appended to a case after `after_version` landed, read back.
    /// One row, not a row per event (reading a thousand rows took about a tenth of this
    /// process's processor during a bulk load), and nothing for the database to sort (sorting
    /// two arrays by version doubled the statement's time: 0.83 against 0.36 ms for a thousand
    /// events; docs/benchmarks.md):
    /// - a `COPY` gives its rows positions in the order it reads them, which is version order,
    ///   so the positions sorted here are in version order;
    /// - every row of one transaction is recorded at the same instant (`now()`), so one instant
    ///   serves them all, and two different ones mean these are not the rows of one append.
    async fn read_back(
        &self,
        connection: &mut PgConnection,
        case_id: &str,
        after_version: Version,
        count: usize,
    ) -> Result<Vec<AppendedRow>, Error> {
        let (first_version, _) = batch_versions(after_version, count)?;
        let (mut positions, first_recorded, last_recorded): (Vec<i64>, Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
            sqlx::query_as(
                "SELECT coalesce(array_agg(position), '{}'), min(recorded_at), max(recorded_at)
                   FROM events WHERE case_id = $1 AND version BETWEEN $2 AND $3",
            )
            .bind(case_id)
            .bind(i32::from(first_version))
            .bind(i32::from(after_version.after(count)?))
            .fetch_one(&mut *connection)
            .await?;
        let recorded_at = match (first_recorded, last_recorded) {
            (Some(first), Some(last)) if first == last && positions.len() == count => first,
            _ => {
                return Err(Error::Database(sqlx::Error::Protocol(format!(
                    "case {case_id}: {} of {count} copied events read back, recorded from {first_recorded:?} to \
                     {last_recorded:?}",
                    positions.len(),
                ))));
            }
        };
        positions.sort_unstable();
        // `(case_id, version)` is unique, so `count` rows in the range are each version once.
        positions
            .into_iter()
            .enumerate()
            .map(|(i, position)| {
                Ok(AppendedRow {
                    position: stored_position(position)?,
                    version: after_version.after(i + 1)?,
                    recorded_at,
                })
            })
            .collect()
    }

    /// Hands the committed `rows` of one append, landed as `appended` (in the same order), to
    /// this process's projection leader, if it leads. The rows are moved, not copied: copying a
    /// batch's thousand took about 5% of the service's processor during batch ingest.
    pub(crate) fn publish(&self, case_id: &str, rows: Vec<NewRow>, appended: &[AppendedRow]) {
        self.recent.publish(|| {
            rows.into_iter()
                .zip(appended)
                .map(|(row, landed)| ProjectedRow {
                    position: landed.position,
                    event: ReplayRow {
                        case_id: case_id.to_owned(),
                        event_id: row.event_id,
                        version: landed.version,
                        event_type: row.event_type,
                        occurred_on: row.occurred_on,
                        data: row.data,
                        recorded_at: landed.recorded_at,
                    },
                })
                .collect()
        });
    }

    /// Appends whole new cases with one `COPY`: the bulk path for loading a generated or
    /// migrated history. The database gives the rows their positions in the order of `rows`,
    /// as for any append (so the feed never skips them); each case's versions are given by the
    /// caller, from 1. Writes nothing when a case or an event id is already recorded.
    #[instrument(skip(self, rows), fields(rows = rows.len()), err(level = "debug"))]
    pub async fn load_new_cases(&self, rows: &[LoadRow]) -> Result<(), Error> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        batch_versions(Version::ZERO, rows.len())?;
        let mut buffer = Vec::with_capacity(rows.len() * 400);
        for row in rows {
            push_copy_row(&mut buffer, &row.case_id, row.version, &row.source, &row.row);
        }
        let mut connection = self.pool.acquire().await?;
        copy_in(&mut connection, buffer)
            .await
            .map_err(|e| Error::from_sqlx(e, &first.case_id, first.version))?;
        self.signal.appended();
        Ok(())
    }

    /// Refreshes the planner's statistics of the log, after a bulk load.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn analyze_events(&self) -> Result<(), Error> {
        sqlx::query("ANALYZE events").execute(&self.pool).await?;
        Ok(())
    }

    /// Every event of a case, in version order.
    /// The first event of a case (its `case_issued`), if it is recorded: who may see a case is
    /// decided on this one indexed row, in the same time whatever the case's size.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn read_case_head(&self, case_id: &str) -> Result<Vec<StoredEvent>, Error> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM events WHERE case_id = $1 AND version = 1"
        )))
        .bind(case_id)
        .fetch_all(&self.pool)
        .await?)
    }

    #[instrument(skip(self), err(level = "debug"))]
    pub async fn read_case(&self, case_id: &str) -> Result<Vec<StoredEvent>, Error> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM events WHERE case_id = $1 ORDER BY version"
        )))
        .bind(case_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every event of a case in version order, and, in one round trip, the events of other cases
    /// whose ids are among `event_ids` (in any order).
    #[instrument(skip(self, event_ids), fields(ids = event_ids.len()), err(level = "debug"))]
    pub async fn read_case_and_events(
        &self,
        case_id: &str,
        event_ids: &[EventId],
    ) -> Result<(Vec<StoredEvent>, Vec<StoredEvent>), Error> {
        let event_ids: Vec<Uuid> = event_ids.iter().copied().map(Uuid::from).collect();
        let rows: Vec<StoredEvent> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM events WHERE case_id = $1
             UNION ALL
             SELECT {COLUMNS} FROM events WHERE event_id = ANY($2) AND case_id <> $1"
        )))
        .bind(case_id)
        .bind(&event_ids)
        .fetch_all(&self.pool)
        .await?;
        let (mut case, others): (Vec<_>, Vec<_>) = rows.into_iter().partition(|e| e.case_id == case_id);
        case.sort_by_key(|e| e.version);
        Ok((case, others))
    }

    /// Checks that the database answers. No span: health checks it every few seconds, and its
    /// caller logs a failure.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
