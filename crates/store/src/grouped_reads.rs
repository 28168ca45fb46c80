//! Grouped case reads: the write path reads a case it does not hold before deciding an append.
//! Reads that arrive while others are being made go to the database together, as one statement,
//! so that many appends to cases the service has not seen lately (an import, a national day's
//! traffic spread over tens of thousands of open cases) spend one round trip and one statement
//! on their reads instead of one each. A lone read is made at once, as before.

use crate::log::{COLUMNS, StoredEvent};
use crate::{Error, EventLog};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, instrument};

/// How reads are grouped.
#[derive(Debug, Clone, Copy)]
pub struct ReadGroupSettings {
    /// Grouped reads made at the same time (each holds a connection while it runs).
    pub max_in_flight: usize,
    /// Cases in one grouped read.
    pub max_cases: usize,
    /// How long the next group waits for a free slot before it is read anyway: a read that is
    /// stuck (behind a migration's lock, say) delays the others by this much, never more.
    pub max_wait: std::time::Duration,
}

impl Default for ReadGroupSettings {
    fn default() -> ReadGroupSettings {
        ReadGroupSettings {
            max_in_flight: 2,
            max_cases: 256,
            max_wait: std::time::Duration::from_millis(20),
        }
    }
}

struct PendingRead {
    case_id: String,
    reply: oneshot::Sender<Result<Vec<StoredEvent>, Error>>,
}

/// Reads whole cases like [`EventLog::read_case`], grouping concurrent reads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CaseReader {
    sender: mpsc::Sender<PendingRead>,
    statements: Arc<AtomicU64>,
}

impl CaseReader {
    /// Starts the grouping task on the current Tokio runtime; it ends when every clone is dropped.
    pub fn start(log: EventLog, settings: ReadGroupSettings) -> CaseReader {
        let (sender, receiver) = mpsc::channel(4096);
        let statements = Arc::new(AtomicU64::new(0));
        tokio::spawn(group_reads(log, receiver, settings, statements.clone()));
        CaseReader { sender, statements }
    }

    /// Statements the reader has made so far (each read one or more cases).
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Every event of a case, in version order, read with a snapshot taken after this call began.
    pub async fn read_case(&self, case_id: &str) -> Result<Vec<StoredEvent>, Error> {
        let (reply, answer) = oneshot::channel();
        let pending = PendingRead {
            case_id: case_id.to_owned(),
            reply,
        };
        self.sender.send(pending).await.map_err(|_| Error::ReaderStopped)?;
        answer.await.map_err(|_| Error::ReaderStopped)?
    }
}

async fn group_reads(
    log: EventLog,
    mut receiver: mpsc::Receiver<PendingRead>,
    settings: ReadGroupSettings,
    statements: Arc<AtomicU64>,
) {
    let in_flight = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
    loop {
        // A read is taken only once a slot is free (or after max_wait without one): reads
        // arriving meanwhile wait in the channel and go together in the next statement.
        let permit = tokio::time::timeout(settings.max_wait, in_flight.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok);
        let Some(first) = receiver.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < settings.max_cases.max(1) {
            let Ok(pending) = receiver.try_recv() else { break };
            batch.push(pending);
        }
        batch.retain(|pending| !pending.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let log = log.clone();
        statements.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            read_group(&log, batch).await;
            drop(permit);
        });
    }
}

async fn read_group(log: &EventLog, batch: Vec<PendingRead>) {
    let case_ids: Vec<&str> = batch.iter().map(|pending| pending.case_id.as_str()).collect();
    match log.read_cases(&case_ids).await {
        Ok(mut by_case) => {
            let mut readers: HashMap<String, usize> = HashMap::new();
            for pending in &batch {
                *readers.entry(pending.case_id.clone()).or_default() += 1;
            }
            for pending in batch {
                let left = readers.get_mut(&pending.case_id).map_or(0, |n| {
                    *n -= 1;
                    *n
                });
                // The last reader of a case takes its rows; another reading the same case gets a copy.
                let rows = if left == 0 {
                    by_case.remove(&pending.case_id).unwrap_or_default()
                } else {
                    by_case.get(&pending.case_id).cloned().unwrap_or_default()
                };
                let _ = pending.reply.send(Ok(rows));
            }
        }
        Err(err) => {
            debug!(error = %err, cases = batch.len(), "grouped case read failed");
            // sqlx errors cannot be cloned: each reader gets the same failure, by message.
            let message = err.to_string();
            for pending in batch {
                let _ = pending.reply.send(Err(match &err {
                    Error::Unavailable(_) => {
                        Error::Unavailable(sqlx::Error::Io(std::io::Error::other(message.clone())))
                    }
                    _ => Error::Database(sqlx::Error::Protocol(message.clone())),
                }));
            }
        }
    }
}

impl EventLog {
    /// Every event of each of `case_ids`, by case, in version order (a case with no events is
    /// absent). Each case is looked up on its own through `(case_id, version)`, whatever the
    /// planner's statistics (see `cases_cut_by` in `projection.rs`).
    #[instrument(skip(self, case_ids), fields(cases = case_ids.len()), err(level = "debug"))]
    pub async fn read_cases(&self, case_ids: &[&str]) -> Result<HashMap<String, Vec<StoredEvent>>, Error> {
        let rows: Vec<StoredEvent> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT e.* FROM (SELECT DISTINCT unnest($1::text[])) AS wanted(id)
              CROSS JOIN LATERAL (SELECT {COLUMNS} FROM events WHERE case_id = wanted.id ORDER BY version OFFSET 0) AS e"
        )))
        .bind(case_ids)
        .fetch_all(&self.pool)
        .await?;
        let mut by_case: HashMap<String, Vec<StoredEvent>> = HashMap::new();
        for row in rows {
            by_case.entry(row.case_id.clone()).or_default().push(row);
        }
        // Each case's rows come in version order from its lookup; sorting what is sorted is a
        // single pass, and it does not rest on how the rows of the lookups are concatenated.
        for rows in by_case.values_mut() {
            rows.sort_by_key(|row| row.version);
        }
        Ok(by_case)
    }
}
