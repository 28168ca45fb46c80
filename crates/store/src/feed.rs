//! The global feed: every event in position order, read so that a tailing reader never skips
//! an event that commits late and never stalls on one that rolled back (see
//! `caselog_feed_horizon()` in the migrations and the invariants in ARCHITECTURE.md).
//!
//! Wake-ups: an append in this process bumps a local counter at once; other processes hear of it
//! through PostgreSQL NOTIFY on [`FEED_CHANNEL`], sent by a coalescing notifier (one NOTIFY in
//! flight at a time, so busy writers do not all queue on PostgreSQL's notification lock).

use crate::error::stored_position;
use crate::log::{COLUMNS, ReplayRow, StoredEvent};
use crate::recent::Offer;
use crate::{Error, EventLog};
use caselog_domain::Position;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tracing::{debug, instrument, warn};

/// The NOTIFY channel on which appends are announced.
pub const FEED_CHANNEL: &str = "caselog_events";

/// The most positions one statement of a feed read scans (a filtered read that finds little
/// doubles its span up to this).
const MAX_SCAN_SPAN: u64 = 1 << 20;

/// The events of the cases named in `$5`, as a feed read's source.
const NAMED_CASES: &str = "(SELECT e.* FROM (SELECT DISTINCT unnest($5::text[])) AS wanted(id)
      CROSS JOIN LATERAL (SELECT * FROM events WHERE case_id = wanted.id OFFSET 0) AS e) AS picked";

/// The shortest interval between two NOTIFYs from one process.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

/// Which events a reader wants; empty lists mean all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedFilter {
    pub event_types: Vec<String>,
    pub case_ids: Vec<String>,
}

/// The feed's horizon at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// The highest position handed out (possibly not committed yet).
    pub allocated: Position,
    /// Every append at or below this position has finished.
    pub safe: Position,
}

impl Horizon {
    /// Whether an append is still open below the allocated position.
    pub fn append_in_flight(&self) -> bool {
        self.allocated > self.safe
    }
}

/// A page of the feed: whole stored events, or [`ProjectedRow`]s.
#[derive(Debug, Clone)]
pub struct FeedPage<E = StoredEvent> {
    pub events: Vec<E>,
    /// Where the next read starts (exclusive): the last event's position when the page is full,
    /// otherwise the safe position (everything up to it has been scanned).
    pub next_after: Position,
    /// The horizon the page was read under. For a page served from memory
    /// ([`EventLog::read_all_projected`]) both positions are the page's last: no horizon was
    /// read, and none was needed.
    pub horizon: Horizon,
    /// Whether the page stopped at `limit` (more may be readable at once).
    pub full: bool,
}

/// What the projections read of an event from the feed: its position and what a replay reads.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProjectedRow {
    #[sqlx(try_from = "i64")]
    pub position: Position,
    #[sqlx(flatten)]
    pub event: ReplayRow,
}

const PROJECTED_COLUMNS: &str =
    "position, case_id, event_id, version, event_type, occurred_on, data::text AS data, recorded_at";

/// A row a feed page can hold.
trait FeedRow: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin {
    fn position(&self) -> Position;
}

impl FeedRow for StoredEvent {
    fn position(&self) -> Position {
        self.position
    }
}

impl FeedRow for ProjectedRow {
    fn position(&self) -> Position {
        self.position
    }
}

/// A page of rows held in memory, taken after `after` with `limit`.
fn page_from_memory(held: Vec<ProjectedRow>, after: Position, limit: u32) -> FeedPage<ProjectedRow> {
    tracing::Span::current().record("from_memory", true);
    let full = held.len() >= limit as usize;
    let last = held.last().map_or(after, |row| row.position);
    // No other row can appear at or below `last` (each position held is a committed row of
    // ours), which is all a horizon would have told.
    FeedPage {
        events: held,
        next_after: last,
        horizon: Horizon {
            allocated: last,
            safe: last,
        },
        full,
    }
}

/// Wakes feed readers when something may have been appended.
#[derive(Debug)]
pub(crate) struct FeedSignal {
    appended: watch::Sender<u64>,
    notify_others: Notify,
    /// The backend of this process's LISTEN session (0 while it has none).
    listener_pid: AtomicI32,
}

impl FeedSignal {
    pub(crate) fn new() -> FeedSignal {
        FeedSignal {
            appended: watch::Sender::new(0),
            notify_others: Notify::new(),
            listener_pid: AtomicI32::new(0),
        }
    }

    fn bump(&self) {
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Called after every committed append in this process.
    pub(crate) fn appended(&self) {
        self.bump();
        // Stores at most one permit: appends during an in-flight NOTIFY cost one more, not one each.
        self.notify_others.notify_one();
    }
}

impl EventLog {
    /// The feed's horizon now.
    #[instrument(skip(self), err(level = "debug"))]
    pub async fn horizon(&self) -> Result<Horizon, Error> {
        self.horizon_untraced().await
    }

    /// [`EventLog::horizon`] without a span, for loops that poll it while nothing happens (a
    /// span a second of an idle service is noise in every trace store).
    pub async fn horizon_untraced(&self) -> Result<Horizon, Error> {
        let (allocated, safe): (i64, i64) = sqlx::query_as("SELECT allocated, safe FROM caselog_feed_horizon()")
            .fetch_one(&self.pool)
            .await?;
        Ok(Horizon {
            allocated: stored_position(allocated)?,
            safe: stored_position(safe)?,
        })
    }

    /// Up to `limit` events with a position above `after` that are safe to read, in position order.
    #[instrument(skip(self, filter), err(level = "debug"))]
    pub async fn read_all(&self, after: Position, limit: u32, filter: &FeedFilter) -> Result<FeedPage, Error> {
        self.read_page(COLUMNS, after, limit, filter).await
    }

    /// [`EventLog::read_all`] of what the projections fold, unfiltered: `data` as JSON text,
    /// parsed once into the payload, and no metadata or source.
    ///
    /// While this process leads the projections, a page made only of its own appends comes from
    /// memory (see `recent.rs`), handed out once; its `data` is the text as sent, not as
    /// PostgreSQL prints it back (the same JSON object). That page is every position after
    /// `after` held, up to `limit` or up to the last held, or up to a gap that an append of ours
    /// or one in flight may yet fill. Otherwise, and across any other gap, from the log.
    #[instrument(skip(self), fields(from_memory), err(level = "debug"))]
    pub async fn read_all_projected(&self, after: Position, limit: u32) -> Result<FeedPage<ProjectedRow>, Error> {
        let gap = match self.recent.take_after(after, limit as usize, false) {
            Offer::Page(held) => return Ok(page_from_memory(held, after, limit)),
            Offer::StopsShortAt(gap) => gap,
            Offer::Nothing => {
                return self
                    .read_page(PROJECTED_COLUMNS, after, limit, &FeedFilter::default())
                    .await;
            }
        };
        // Everything before the gap is held. The gap may yet be filled here: by an append of
        // ours that has committed and not published yet, or by one still in flight (concurrent
        // `COPY`s interleave their positions), which the horizon shows above its safe position,
        // the furthest the log would read. Either way the log would serve only rows held here:
        // take them. Otherwise the gap is another process's row or one that will never come:
        // read the log across it.
        let horizon = if self.recent.rows_on_the_way() {
            None
        } else {
            Some(self.horizon().await?)
        };
        if horizon.is_none_or(|horizon| horizon.safe < gap)
            && let Offer::Page(held) = self.recent.take_after(after, limit as usize, true)
        {
            return Ok(page_from_memory(held, after, limit));
        }
        let horizon = match horizon {
            Some(horizon) => horizon,
            None => self.horizon().await?,
        };
        self.read_page_under(horizon, PROJECTED_COLUMNS, after, limit, &FeedFilter::default())
            .await
    }

    async fn read_page<E: FeedRow>(
        &self,
        columns: &str,
        after: Position,
        limit: u32,
        filter: &FeedFilter,
    ) -> Result<FeedPage<E>, Error> {
        // Two statements on purpose: the rows must be read with a snapshot taken after the horizon.
        // Every scan below starts after it, so each sees every append at or below `safe`.
        let horizon = self.horizon().await?;
        self.read_page_under(horizon, columns, after, limit, filter).await
    }

    /// A page read under `horizon`, read before the rows.
    async fn read_page_under<E: FeedRow>(
        &self,
        horizon: Horizon,
        columns: &str,
        after: Position,
        limit: u32,
        filter: &FeedFilter,
    ) -> Result<FeedPage<E>, Error> {
        let types = (!filter.event_types.is_empty()).then_some(&filter.event_types);
        let cases = (!filter.case_ids.is_empty()).then_some(&filter.case_ids);
        let wanted = limit as usize;
        let events: Vec<E> = if let Some(cases) = cases {
            // Each named case looked up through `(case_id, version)`, the position range and the
            // types applied after the lookup (see `cases_cut_by` in `projection.rs` for why): a
            // reader following a few cases never scans the log.
            self.read_range(columns, NAMED_CASES, (after, horizon.safe), types, wanted, Some(cases))
                .await?
        } else {
            self.read_spans(columns, after, horizon.safe, limit, types).await?
        };
        let full = events.len() >= wanted;
        let next_after = match events.last() {
            Some(last) if full => last.position(),
            _ => horizon.safe.max(after),
        };
        Ok(FeedPage {
            events,
            next_after,
            horizon,
            full,
        })
    }

    /// A page of every case's events read in spans of positions, never "everything up to the
    /// horizon, sorted, first `limit`": a reader far behind (the projector during an import, a
    /// new subscriber) made PostgreSQL fetch and sort its whole backlog for every page, since
    /// without fresh statistics it plans a bitmap scan and a sort. Positions are unique, so a
    /// span of `limit` positions holds at most a page; spans double while a type filter (or a
    /// gap) leaves the page short, so a sparse filter costs a few statements a page, not one a
    /// span.
    async fn read_spans<E: FeedRow>(
        &self,
        columns: &str,
        after: Position,
        safe: Position,
        limit: u32,
        types: Option<&Vec<String>>,
    ) -> Result<Vec<E>, Error> {
        let wanted = limit as usize;
        let mut events: Vec<E> = Vec::new();
        let mut scanned_to = after;
        let mut span = u64::from(limit).max(1);
        while events.len() < wanted && scanned_to < safe {
            let upper = scanned_to.saturating_add(span).min(safe);
            let rows: Vec<E> = self
                .read_range(
                    columns,
                    "events",
                    (scanned_to, upper),
                    types,
                    wanted - events.len(),
                    None,
                )
                .await?;
            events.extend(rows);
            scanned_to = upper;
            span = span.saturating_mul(2).min(MAX_SCAN_SPAN);
        }
        Ok(events)
    }

    /// The events of `source` in the position range `(after, upper]` (of the types in `types`,
    /// all when `None`), the first `limit` in position order. `source` may name the cases in `$5`.
    async fn read_range<E: FeedRow>(
        &self,
        columns: &str,
        source: &str,
        (after, upper): (Position, Position),
        types: Option<&Vec<String>>,
        limit: usize,
        cases: Option<&Vec<String>>,
    ) -> Result<Vec<E>, Error> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM {source}
              WHERE position > $1 AND position <= $2
                AND ($3::text[] IS NULL OR event_type = ANY($3))
              ORDER BY position LIMIT $4"
        )))
        .bind(i64::from(after))
        .bind(i64::from(upper))
        .bind(types)
        .bind(limit as i64)
        .bind(cases)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The highest committed position (0 for an empty log).
    pub async fn head_position(&self) -> Result<Position, Error> {
        stored_position(
            sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Age of the oldest open transaction that has written something, in this database.
    pub async fn oldest_open_transaction(&self) -> Result<Option<Duration>, Error> {
        let seconds: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - min(xact_start))::float8 FROM pg_stat_activity
              WHERE datname = current_database() AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }

    /// A receiver that changes whenever something may have been appended.
    pub fn feed_wakeups(&self) -> watch::Receiver<u64> {
        self.signal.appended.subscribe()
    }

    /// Runs until the process ends: LISTENs for appends made by other processes and wakes this
    /// process's readers, and announces this process's appends with a coalesced NOTIFY.
    pub async fn run_feed_signalling(self) {
        let notifier = {
            let log = self.clone();
            async move {
                let mut others = OtherListeners::default();
                loop {
                    log.signal.notify_others.notified().await;
                    if !others.present(&log).await {
                        // Nobody to tell until the next look: appends meanwhile need not wake
                        // this task one by one (at one client, a wake-up of two per append).
                        others.wait_until_recheck().await;
                        continue;
                    }
                    if let Err(err) = sqlx::query("SELECT pg_notify($1, '')")
                        .bind(FEED_CHANNEL)
                        .execute(&log.pool)
                        .await
                    {
                        debug!(error = %err, "feed NOTIFY failed; readers elsewhere fall back to polling");
                    }
                    // At most one NOTIFY per interval: under load each costs a transaction and
                    // wakes every listener, while one wake-up serves all appends before it.
                    tokio::time::sleep(NOTIFY_INTERVAL).await;
                }
            }
        };
        tokio::join!(notifier, self.listen());
    }

    async fn listen(&self) {
        loop {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut listener) => match start_listening(&mut listener).await {
                    Ok(pid) => {
                        self.signal.listener_pid.store(pid, Ordering::Relaxed);
                        // Anything appended while we were not listening is picked up by this wake-up.
                        self.signal.bump();
                        // `try_recv`, not `recv`: `recv` would reconnect by itself, without the
                        // session's name that tells other processes someone listens here.
                        while let Ok(Some(_)) = listener.try_recv().await {
                            self.signal.bump();
                        }
                        self.signal.listener_pid.store(0, Ordering::Relaxed);
                        // A session still open goes back to the pool: it must not pass for a
                        // listener there (other processes would notify for it).
                        let _ = sqlx::query("RESET application_name").execute(&mut listener).await;
                        warn!("feed LISTEN connection lost; reconnecting");
                    }
                    Err(err) => warn!(error = %err, "feed LISTEN failed"),
                },
                Err(err) => debug!(error = %err, "feed LISTEN cannot connect"),
            }
            self.signal.bump();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Names the session (so that other processes can see that this one listens), LISTENs, and
/// returns the session's backend pid.
async fn start_listening(listener: &mut PgListener) -> Result<i32, sqlx::Error> {
    sqlx::query("SELECT set_config('application_name', $1, false)")
        .bind(LISTENER_NAME)
        .execute(&mut *listener)
        .await?;
    listener.listen(FEED_CHANNEL).await?;
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *listener)
        .await
}

/// The `application_name` of every process's LISTEN session.
const LISTENER_NAME: &str = "caselog feed listener";

/// How long an answer to "does another process listen?" is used before asking again. A process
/// that starts listening is sent NOTIFYs within this long; until then its readers poll, as they
/// do whenever a NOTIFY is missed.
const OTHER_LISTENERS_RECHECK: Duration = Duration::from_secs(1);

/// Whether any other process LISTENs for appends, asked at most once per
/// [`OTHER_LISTENERS_RECHECK`]. A process alone on its database then sends no NOTIFY at all:
/// each one is a transaction and a round trip, and wakes this process's own LISTEN session and
/// the process after it, for nothing (about a third of a single-event append's round trips at one
/// client, docs/benchmarks.md).
#[derive(Default)]
struct OtherListeners {
    answer: bool,
    asked_at: Option<std::time::Instant>,
}

impl OtherListeners {
    async fn present(&mut self, log: &EventLog) -> bool {
        if self.asked_at.is_some_and(|at| at.elapsed() < OTHER_LISTENERS_RECHECK) {
            return self.answer;
        }
        let own = log.signal.listener_pid.load(Ordering::Relaxed);
        self.answer = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_stat_activity
                             WHERE datname = current_database() AND application_name = $1 AND pid <> $2)",
        )
        .bind(LISTENER_NAME)
        .bind(own)
        .fetch_one(&log.pool)
        .await
        // Unsure: notify, as before.
        .unwrap_or(true);
        self.asked_at = Some(std::time::Instant::now());
        self.answer
    }

    /// Until the answer is due to be asked again.
    async fn wait_until_recheck(&self) {
        if let Some(at) = self.asked_at {
            tokio::time::sleep_until((at + OTHER_LISTENERS_RECHECK).into()).await;
        }
    }
}

/// Keeps the signal shared between clones of one log.
pub(crate) type SharedSignal = Arc<FeedSignal>;
