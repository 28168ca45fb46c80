//! Snapshots of a server's read model: its in-memory copy of the case-facts projection, written
//! as opaque binary parts so that a restarting server reads them instead of parsing every
//! case's JSON. A snapshot is written whole in one transaction by one process at a time; the
//! store does not know what the parts hold, only their order.

use crate::error::stored_position;
use crate::{Error, EventLog, locks};
use caselog_domain::Position;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::{Postgres, Transaction};
use tracing::instrument;

/// What describes a stored snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHead {
    /// The case-facts projection's generation it was taken from.
    pub generation: i64,
    /// Every case-facts row written at or below this checkpoint is reflected in it; the rows
    /// written after it are applied on top when it is loaded.
    pub position: Position,
    /// The encoding of its parts.
    pub format: i32,
    pub parts: i32,
    pub cases: i64,
    pub bytes: i64,
    pub taken_at: DateTime<Utc>,
}

type HeadRow = (i64, i64, i32, i32, i64, i64, DateTime<Utc>);

fn head_of(row: HeadRow) -> Result<SnapshotHead, Error> {
    let (generation, position, format, parts, cases, bytes, taken_at) = row;
    Ok(SnapshotHead {
        generation,
        position: stored_position(position)?,
        format,
        parts,
        cases,
        bytes,
        taken_at,
    })
}

const HEAD_COLUMNS: &str = "generation, position, format, parts, cases, bytes, taken_at";

/// A reader of a snapshot's parts, fed one at a time in order.
pub trait SnapshotSink {
    type Error;
    /// Called once, before the parts of the snapshot `head` describes.
    fn begin(&mut self, head: &SnapshotHead);
    fn part(&mut self, data: &[u8]) -> Result<(), Self::Error>;
}

/// A snapshot being written: parts go into one open transaction, which `finish` commits with
/// the head (and removes every older snapshot). Dropped unfinished, it leaves nothing.
#[derive(Debug)]
pub struct SnapshotWriter {
    tx: Transaction<'static, Postgres>,
    generation: i64,
    position: Position,
    parts: i32,
    bytes: i64,
}

impl SnapshotWriter {
    #[instrument(skip(self, data), fields(bytes = data.len()), err(level = "debug"))]
    pub async fn part(&mut self, data: &[u8]) -> Result<(), Error> {
        sqlx::query("INSERT INTO read_model_snapshot_parts (generation, position, part, data) VALUES ($1, $2, $3, $4)")
            .bind(self.generation)
            .bind(i64::from(self.position))
            .bind(self.parts)
            .bind(data)
            .execute(&mut *self.tx)
            .await?;
        self.parts += 1;
        self.bytes += data.len() as i64;
        Ok(())
    }

    /// Commits the snapshot of `cases` cases in `format`, and removes the ones it supersedes:
    /// older ones of its generation and every one of an earlier generation (a writer still
    /// holding a copy from before a rebuild must not remove the rebuilt projection's).
    #[instrument(skip(self), fields(parts = self.parts, bytes = self.bytes), err(level = "debug"))]
    pub async fn finish(mut self, format: i32, cases: i64) -> Result<SnapshotHead, Error> {
        let (generation, position) = (self.generation, i64::from(self.position));
        let row: HeadRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO read_model_snapshots (generation, position, format, parts, cases, bytes)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {HEAD_COLUMNS}"
        )))
        .bind(generation)
        .bind(position)
        .bind(format)
        .bind(self.parts)
        .bind(cases)
        .bind(self.bytes)
        .fetch_one(&mut *self.tx)
        .await?;
        for table in ["read_model_snapshot_parts", "read_model_snapshots"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE generation < $1 OR (generation = $1 AND position < $2)"
            )))
            .bind(generation)
            .bind(position)
            .execute(&mut *self.tx)
            .await?;
        }
        self.tx.commit().await?;
        head_of(row)
    }
}

impl EventLog {
    /// The newest snapshot of `generation`, if any.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn latest_snapshot(&self, generation: i64) -> Result<Option<SnapshotHead>, Error> {
        sqlx::query_as::<_, HeadRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {HEAD_COLUMNS} FROM read_model_snapshots WHERE generation = $1 ORDER BY position DESC LIMIT 1"
        )))
        .bind(generation)
        .fetch_optional(&self.pool)
        .await?
        .map(head_of)
        .transpose()
    }

    /// Feeds `sink` the parts of the newest snapshot of `generation` written in `format`, read
    /// in one snapshot of the database, and returns its head; `None` (and no parts) when there
    /// is none. The outer error is the store's, the inner the sink's.
    #[instrument(skip(self, sink), err(level = "debug"))]
    pub async fn read_snapshot<S: SnapshotSink>(
        &self,
        generation: i64,
        format: i32,
        sink: &mut S,
    ) -> Result<Result<Option<SnapshotHead>, S::Error>, Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let head = sqlx::query_as::<_, HeadRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {HEAD_COLUMNS} FROM read_model_snapshots WHERE generation = $1 AND format = $2
              ORDER BY position DESC LIMIT 1"
        )))
        .bind(generation)
        .bind(format)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(head) = head.map(head_of).transpose()? else {
            return Ok(Ok(None));
        };
        sink.begin(&head);
        let mut parts = sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT data FROM read_model_snapshot_parts WHERE generation = $1 AND position = $2 ORDER BY part",
        )
        .bind(head.generation)
        .bind(i64::from(head.position))
        .fetch(&mut *tx);
        while let Some(data) = parts.try_next().await? {
            if let Err(refused) = sink.part(&data) {
                return Ok(Err(refused));
            }
        }
        drop(parts);
        tx.commit().await?;
        Ok(Ok(Some(head)))
    }

    /// Starts writing a snapshot of `generation` at `position`; `None` when another process is
    /// writing one or one at or beyond `position` exists already.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn begin_snapshot(&self, generation: i64, position: Position) -> Result<Option<SnapshotWriter>, Error> {
        let mut tx = self.pool.begin().await?;
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(locks::SNAPSHOT.0)
            .bind(locks::SNAPSHOT.1)
            .fetch_one(&mut *tx)
            .await?;
        if !won {
            return Ok(None);
        }
        let newer: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM read_model_snapshots WHERE generation = $1 AND position >= $2)",
        )
        .bind(generation)
        .bind(i64::from(position))
        .fetch_one(&mut *tx)
        .await?;
        if newer {
            return Ok(None);
        }
        Ok(Some(SnapshotWriter {
            tx,
            generation,
            position,
            parts: 0,
            bytes: 0,
        }))
    }
}
