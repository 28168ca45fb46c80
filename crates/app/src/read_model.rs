//! The read model: this process's copy of the case-facts projection, kept current with the rows
//! the projector writes, and the figures and worklists counted from it. `as_of` answers fold
//! the log as it was recorded at an instant, refolding only the cases written since. A server
//! loads its copy from the newest snapshot and the rows written after it, and writes snapshots
//! as the projection moves on (see [`ReadModel::write_snapshot`]).

use crate::as_of::{AtInstant, ReadSpans, RecordedSpans, Span, read_spans};
use crate::error::Error;
use crate::projector::fold_cases;
use crate::snapshot::{self, Part};
use crate::stored_facts;
use caselog_calendar::WorkingCalendar;
use caselog_domain::Position;
use caselog_projections::metrics::{MetricsError, compute_parallel};
use caselog_projections::{
    CaseFacts, MetricResult, MetricsQuery, Reach, SharedCodes, Unit, WorklistItem, WorklistKind, units_of,
};
use caselog_store::projection::FactsSink;
use caselog_store::{EventLog, SnapshotHead, SnapshotSink};
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

/// Cases read and folded together by an `as_of` answer: bounds the events it holds at once.
const AS_OF_FOLD_CASES: usize = 2_000;
/// An instant at least this far in the past is settled: every append recorded by then has
/// committed or rolled back (appends are single statements or short transactions, ended by the
/// statement and idle-in-transaction timeouts long before), so a fold of the events recorded by
/// then can never change and may be kept.
pub const SETTLED_AFTER: Duration = Duration::from_secs(300);
/// The most cases whose folds at one settled instant are kept (about the open cases at any
/// instant of a national log is 30,000; each is about a kilobyte).
const SETTLED_FOLDS_KEPT: usize = 100_000;

/// The longest a query waits for the projections to reach `min_position`.
const MAX_CATCH_UP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ReadModel {
    /// Where snapshots are written (the primary).
    log: EventLog,
    /// Where everything is read: the log's reporting pool, the primary or a replica. Every read
    /// goes there, snapshots included, so that the copy only ever holds one database's state.
    reads: EventLog,
    cache: Arc<RwLock<FactsCache>>,
    /// One `as_of` fold at a time per process: each holds the facts of the cases it refolds.
    as_of_folds: Arc<tokio::sync::Semaphore>,
    /// The folds of the last settled instant asked about, so that the questions of a board pack
    /// at one instant fold each straddling case once.
    settled_folds: Arc<std::sync::Mutex<Option<SettledFolds>>>,
    /// How long before now an instant is settled ([`SETTLED_AFTER`]; tests shorten it).
    settled_after: Duration,
    /// Cases folded again for `as_of` answers since start.
    as_of_folded: Arc<std::sync::atomic::AtomicU64>,
    /// Cases whose facts at an `as_of` instant came from the projection's history.
    as_of_from_history: Arc<std::sync::atomic::AtomicU64>,
    /// Held while the spans of the whole log are read, so that it happens once.
    reading_spans: Arc<tokio::sync::Mutex<()>>,
    /// Held while a rebuilt projection is loaded beside the copy (one load at a time).
    switching: Arc<tokio::sync::Mutex<()>>,
}

/// Where a case stands in a copy whose index is `index`, for placing its span.
fn place_in(index: &HashMap<Arc<str>, u32, foldhash::quality::RandomState>) -> impl Fn(&str) -> Option<usize> + '_ {
    |id| index.get(id).map(|&i| i as usize)
}

/// Spans listed by case id, with the position they cover: how they pass from one copy to the
/// next, whose order differs.
type SpansById = (Position, Vec<(Arc<str>, Span)>);

/// This process's copy of the case-facts projection, refreshed with the rows written since the
/// position it reflects (so a query reads only what changed).
#[derive(Debug, Default)]
struct FactsCache {
    generation: i64,
    /// The checkpoint the copy reflects; `None` before the first refresh.
    position: Option<Position>,
    /// Contiguous, with `reaches[i]` the reach of `cases[i]`, so a query scans 16 bytes per case
    /// to find the few it needs.
    cases: Vec<CaseFacts>,
    reaches: Vec<Reach>,
    /// Keyed by the case's own id (one allocation for both).
    index: HashMap<Arc<str>, u32, foldhash::quality::RandomState>,
    codes: SharedCodes,
    /// Each case's recording span, for `as_of`: `None` until an `as_of` or a snapshot needs them
    /// (or a snapshot brought them); once present, extended at every refresh to cover at least
    /// `position`.
    spans: Option<RecordedSpans>,
    /// Spans set aside while the copy is replaced (they describe the log, not the projection),
    /// to be arranged by the new copy once it is loaded.
    pending_spans: Option<SpansById>,
    /// How long the last load of the whole projection took (the first query's, or after a
    /// rebuild), and the last refresh of any size.
    last_full_load: Option<Duration>,
    last_refresh: Option<Duration>,
    /// The position of the snapshot the last full load started from (`None`: from the rows).
    loaded_snapshot: Option<Position>,
}

/// When a server writes a snapshot of its read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// How often a server checks whether one is due.
    pub check_every: Duration,
    /// A snapshot is due when none exists for the projection's generation, or the newest is this
    /// many events behind the server's copy; 0 writes none.
    pub after_events: u64,
}

impl Default for SnapshotPolicy {
    /// A check a minute, and a snapshot every 100,000 events (about five weeks of national
    /// traffic, or a minute of a bulk import's catch-up).
    fn default() -> SnapshotPolicy {
        SnapshotPolicy {
            check_every: Duration::from_secs(60),
            after_events: 100_000,
        }
    }
}

/// What an operator sees of the read model (`caselog.read_model.*` gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadModelStats {
    /// The projection's generation the copy is of (a rebuild switched in makes the next).
    pub generation: i64,
    /// Cases held in memory.
    pub cases: u64,
    /// The checkpoint the copy reflects (zero before the first query loads it).
    pub position: Position,
    pub last_full_load: Option<Duration>,
    pub last_refresh: Option<Duration>,
    /// The position of the snapshot the last full load started from (`None`: every case's row
    /// was read).
    pub loaded_snapshot: Option<Position>,
    /// Cases folded again from the log for `as_of` answers since start (a case kept from an
    /// earlier answer at the same settled instant is not folded again).
    pub as_of_folded_cases: u64,
    /// Cases whose facts at an `as_of` instant were read from the projection's history since
    /// start (see [`crate::history`]).
    pub as_of_history_cases: u64,
}

/// The facts at one settled instant of the cases folded for it: `None` for a case that had no
/// facts then.
#[derive(Debug)]
struct SettledFolds {
    at: DateTime<Utc>,
    /// Shared with the answers that found them: ten years straddle an instant with 30,000 cases.
    facts: HashMap<Arc<str>, Option<Arc<CaseFacts>>>,
}

impl FactsCache {
    fn position(&self) -> Position {
        self.position.unwrap_or_default()
    }

    fn clear(&mut self) {
        self.cases.clear();
        self.reaches.clear();
        self.index.clear();
        self.codes = SharedCodes::default();
        self.spans = None;
    }

    /// The spans as a list by case id, to be arranged again by another copy.
    fn spans_by_id(&self) -> Option<SpansById> {
        let spans = self.spans.as_ref()?;
        Some((
            spans.position(),
            spans.to_vec(self.cases.iter().map(|case| &case.case_id)),
        ))
    }

    /// Sets the spans aside while the copy is replaced.
    fn set_spans_aside(&mut self) {
        if let Some(by_id) = self.spans_by_id() {
            self.pending_spans = Some(by_id);
        }
        self.spans = None;
    }

    /// Arranges the spans set aside by the copy now loaded.
    fn arrange_pending_spans(&mut self) {
        if let Some((position, by_id)) = self.pending_spans.take() {
            self.spans = Some(RecordedSpans::arranged(
                by_id,
                position,
                self.cases.len(),
                place_in(&self.index),
            ));
        }
    }

    /// Widens the spans with `read` (see [`RecordedSpans::merge`]).
    fn merge_spans(&mut self, read: ReadSpans, up_to: Position) {
        let FactsCache { spans, index, .. } = self;
        if let Some(spans) = spans {
            spans.merge(read, up_to, place_in(index));
        }
    }

    fn upsert(&mut self, mut facts: CaseFacts) -> Result<(), Error> {
        facts.share_codes(&mut self.codes);
        let reach = facts.reach();
        match self.index.get(&facts.case_id) {
            Some(&i) => {
                facts.case_id = self.cases[i as usize].case_id.clone();
                self.cases[i as usize] = facts;
                self.reaches[i as usize] = reach;
            }
            None => {
                if let Some(held) = self.spans.as_mut().and_then(|spans| spans.case_added(&facts.case_id)) {
                    facts.case_id = held;
                }
                let i = u32::try_from(self.cases.len())
                    .map_err(|_| Error::Internal("the read model holds 2^32 cases; no more fit".into()))?;
                self.index.insert(facts.case_id.clone(), i);
                self.cases.push(facts);
                self.reaches.push(reach);
            }
        }
        Ok(())
    }

    /// The cases that can count in `query` (see [`MetricsQuery::may_count`]).
    fn counting_in<'a>(&'a self, query: &'a MetricsQuery) -> impl Iterator<Item = &'a CaseFacts> + 'a {
        self.reaches
            .iter()
            .zip(&self.cases)
            .filter(|(reach, _)| query.may_count(reach))
            .map(|(_, case)| case)
    }
}

impl FactsSink for FactsCache {
    type Error = Error;

    fn begin(&mut self, replaced: bool) {
        if replaced {
            // The position no longer describes what is held until the load completes. The spans
            // describe the log, not the projection, and survive a rebuild.
            self.position = None;
            self.set_spans_aside();
            self.clear();
        }
    }

    fn row(&mut self, facts: &[u8]) -> Result<(), Error> {
        self.upsert(stored_facts::decode_row(facts)?)
    }
}

/// Threads decoding a snapshot's parts while the copy applies those already decoded: decoding
/// and applying are each about half of a load, and parts are independent.
const SNAPSHOT_DECODERS: usize = 2;

/// Loads a snapshot's parts into an empty copy. Parts go to decoder threads as they arrive and
/// are applied as they come back (cases in any order: each is one case's facts); the spans
/// are arranged last, once every case is placed. `finish` waits for the rest.
struct SnapshotLoader<'a> {
    cache: &'a mut FactsCache,
    to_decode: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    decoded: std::sync::mpsc::Receiver<Result<Part, Error>>,
    decoders: Vec<std::thread::JoinHandle<()>>,
    spans_decoded: Vec<Vec<(String, Span)>>,
}

impl<'a> SnapshotLoader<'a> {
    fn new(cache: &'a mut FactsCache) -> Result<SnapshotLoader<'a>, Error> {
        let (to_decode, parts) = std::sync::mpsc::sync_channel::<Vec<u8>>(SNAPSHOT_DECODERS * 2);
        let (send_decoded, decoded) = std::sync::mpsc::channel();
        let parts = Arc::new(std::sync::Mutex::new(parts));
        let decoders = (0..SNAPSHOT_DECODERS)
            .map(|_| {
                let (parts, send_decoded) = (parts.clone(), send_decoded.clone());
                std::thread::Builder::new()
                    .name("snapshot-decoder".into())
                    .spawn(move || {
                        loop {
                            let next = parts
                                .lock()
                                .map_err(|_| ())
                                .and_then(|parts| parts.recv().map_err(|_| ()));
                            let Ok(data) = next else { return };
                            if send_decoded.send(snapshot::decode(&data)).is_err() {
                                return;
                            }
                        }
                    })
                    .map_err(|e| Error::Internal(format!("starting a snapshot decoder: {e}")))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(SnapshotLoader {
            cache,
            to_decode: Some(to_decode),
            decoded,
            decoders,
            spans_decoded: Vec::new(),
        })
    }

    fn apply(&mut self, part: Result<Part, Error>) -> Result<(), Error> {
        match part? {
            Part::Cases(cases) => cases.into_iter().try_for_each(|facts| self.cache.upsert(facts)),
            Part::Spans(spans) => {
                self.spans_decoded.push(spans);
                Ok(())
            }
        }
    }

    /// Waits for the parts still being decoded, applies them and then the spans.
    fn finish(mut self) -> Result<RecordedSpans, Error> {
        drop(self.to_decode.take());
        while let Ok(part) = self.decoded.recv() {
            self.apply(part)?;
        }
        Ok(RecordedSpans::arranged(
            std::mem::take(&mut self.spans_decoded).into_iter().flatten(),
            Position::ZERO,
            self.cache.cases.len(),
            place_in(&self.cache.index),
        ))
    }
}

impl Drop for SnapshotLoader<'_> {
    fn drop(&mut self) {
        // Closing the queue ends the decoders once they finish the part in hand.
        drop(self.to_decode.take());
        for decoder in self.decoders.drain(..) {
            let _ = decoder.join();
        }
    }
}

impl SnapshotSink for SnapshotLoader<'_> {
    type Error = Error;

    fn begin(&mut self, head: &SnapshotHead) {
        // A head is a hint for sizing, not trusted: a damaged one must not abort on reserving.
        const MOST_CASES_RESERVED: usize = 10_000_000;
        let cases = usize::try_from(head.cases).unwrap_or(0).min(MOST_CASES_RESERVED);
        self.cache.cases.reserve(cases);
        self.cache.reaches.reserve(cases);
        self.cache.index.reserve(cases);
    }

    fn part(&mut self, data: &[u8]) -> Result<(), Error> {
        let queue = self
            .to_decode
            .as_ref()
            .ok_or_else(|| Error::Internal("snapshot parts after the end".into()))?;
        queue
            .send(data.to_vec())
            .map_err(|_| Error::Internal("the snapshot decoders stopped".into()))?;
        while let Ok(part) = self.decoded.try_recv() {
            self.apply(part)?;
        }
        Ok(())
    }
}

impl ReadModel {
    /// A read model that reads through `log.reporting()` (a replica, when one is configured)
    /// and writes its snapshots through `log`.
    pub fn new(log: EventLog) -> ReadModel {
        ReadModel {
            reads: log.reporting(),
            log,
            cache: Arc::new(RwLock::new(FactsCache::default())),
            as_of_folds: Arc::new(tokio::sync::Semaphore::new(1)),
            settled_folds: Arc::default(),
            settled_after: SETTLED_AFTER,
            as_of_folded: Arc::default(),
            as_of_from_history: Arc::default(),
            reading_spans: Arc::default(),
            switching: Arc::default(),
        }
    }

    /// The figures of `query`: from the projection once it has applied `min_position`, with
    /// the position it reflects; or, with `as_of`, from the log as it was recorded then (and
    /// position 0).
    pub async fn metrics(
        &self,
        query: MetricsQuery,
        as_of: Option<DateTime<Utc>>,
        min_position: Position,
    ) -> Result<(Position, Vec<MetricResult>), Error> {
        self.metrics_series(vec![query], as_of, min_position).await
    }

    /// [`ReadModel::metrics`] for each of `queries` (a series: the same question over several
    /// periods), from one copy of the projection: every period's figures reflect the same
    /// position. With `as_of`, each is answered from the log cut at that instant.
    pub async fn metrics_series(
        &self,
        queries: Vec<MetricsQuery>,
        as_of: Option<DateTime<Utc>>,
        min_position: Position,
    ) -> Result<(Position, Vec<MetricResult>), Error> {
        let calendar = WorkingCalendar::england_and_wales();
        match as_of {
            Some(at) => {
                let _fold = self.as_of_permit()?;
                let mut results = Vec::new();
                for query in queries {
                    results.extend(self.answer_as_of(query, at, calendar).await?);
                }
                Ok((Position::ZERO, results))
            }
            None => {
                let facts = self.current_facts(min_position).await?;
                let position = facts.position();
                let results = counted(move || {
                    let mut results = Vec::new();
                    for query in &queries {
                        let counting: Vec<&CaseFacts> = facts.counting_in(query).collect();
                        results.extend(compute_parallel(query, &counting, calendar, counting_threads())?);
                    }
                    Ok(results)
                })
                .await?;
                Ok((position, results))
            }
        }
    }

    /// The units behind the figure of `query` (one metric, not grouped; see
    /// [`caselog_projections::units_of`]), with the figure and the position it reflects. With
    /// `as_of`, from the log cut at that instant (position 0).
    pub async fn units(
        &self,
        query: MetricsQuery,
        as_of: Option<DateTime<Utc>>,
        min_position: Position,
    ) -> Result<(Position, Vec<Unit>, MetricResult), Error> {
        let calendar = WorkingCalendar::england_and_wales();
        match as_of {
            Some(at) => {
                let _fold = self.as_of_permit()?;
                let (units, figure) = self
                    .over_cases_as_of(query, at, move |query, cases| {
                        units_of(query, cases.iter().copied(), calendar)
                    })
                    .await?;
                Ok((Position::ZERO, units, figure))
            }
            None => {
                let facts = self.current_facts(min_position).await?;
                let position = facts.position();
                let (units, figure) = counted(move || units_of(&query, facts.counting_in(&query), calendar)).await?;
                Ok((position, units, figure))
            }
        }
    }

    /// The one as_of fold this process runs at a time (each can hold much of the log's cases).
    fn as_of_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        self.as_of_folds.try_acquire().map_err(|_| Error::Busy {
            what: "an as_of query is already being answered by this server".into(),
        })
    }

    /// A worklist of `service_area` as at `as_at`, once the projection has applied
    /// `min_position`, with the position it reflects.
    pub async fn worklist(
        &self,
        kind: WorklistKind,
        service_area: &str,
        as_at: NaiveDate,
        within_working_days: u32,
        min_position: Position,
    ) -> Result<(Position, Vec<WorklistItem>), Error> {
        let facts = self.current_facts(min_position).await?;
        let calendar = WorkingCalendar::england_and_wales();
        let items =
            caselog_projections::worklist(kind, service_area, &facts.cases, as_at, within_working_days, calendar)?;
        Ok((facts.position(), items))
    }

    /// The projection as of its latest checkpoint, after waiting for `min_position`; an owned
    /// guard, so that counting can run off the async workers.
    async fn current_facts(&self, min_position: Position) -> Result<OwnedRwLockReadGuard<FactsCache>, Error> {
        let (generation, position) = self.wait_for(min_position).await?;
        // Concurrent queries share the copy while it is current; only a refresh is exclusive.
        {
            let cache = self.cache.clone().read_owned().await;
            if cache.generation == generation && cache.position.is_some_and(|at| at >= position) {
                return Ok(cache);
            }
            // A rebuild was switched in: the new projection is loaded beside this copy, which
            // answers meanwhile whoever it satisfies (its facts at its position are what the
            // new projection's are there, both folds of the same log).
            if cache.generation != generation && cache.position.is_some_and(|at| at >= min_position) {
                self.switch_in_background(generation);
                return Ok(cache);
            }
        }
        // Whoever the old copy cannot satisfy waits for the switch rather than load a third copy.
        let _switched = self.switching.lock().await;
        let mut cache = self.cache.clone().write_owned().await;
        let refreshing = Instant::now();
        let from_snapshot = match cache.position {
            None => self.load_snapshot(&mut cache, generation).await,
            Some(_) => None,
        };
        let since = cache.position;
        let version = self
            .reads
            .case_facts_since(cache.generation, since, &mut *cache)
            .await??;
        cache.arrange_pending_spans();
        cache.generation = version.generation;
        cache.position = Some(version.position);
        self.extend_spans(&mut cache, version.position).await;
        cache.last_refresh = Some(refreshing.elapsed());
        if version.replaced || from_snapshot.is_some() {
            cache.last_full_load = cache.last_refresh;
            cache.loaded_snapshot = from_snapshot.map(|head| head.position);
            tracing::info!(
                cases = cache.cases.len(),
                position = %version.position,
                snapshot_position = from_snapshot.map(|head| head.position.to_string()),
                millis = refreshing.elapsed().as_millis() as u64,
                "read model loaded"
            );
        }
        Ok(cache.downgrade())
    }

    /// Starts loading `generation` beside the copy held, unless a load is under way, and swaps
    /// it in when complete.
    fn switch_in_background(&self, generation: i64) {
        let Ok(switching) = self.switching.clone().try_lock_owned() else {
            return;
        };
        let model = self.clone();
        tokio::spawn(async move {
            if let Err(err) = model.switch_to(generation).await {
                tracing::warn!(error = %err.detail(), "loading the rebuilt projection failed; the next query tries again");
            }
            drop(switching);
        });
    }

    async fn switch_to(&self, generation: i64) -> Result<(), Error> {
        let loading = Instant::now();
        let mut fresh = FactsCache {
            // Arranged by the new copy once it is loaded.
            pending_spans: self.cache.read().await.spans_by_id(),
            ..FactsCache::default()
        };
        let from_snapshot = self.load_snapshot(&mut fresh, generation).await;
        let version = self
            .reads
            .case_facts_since(fresh.generation, fresh.position, &mut fresh)
            .await??;
        fresh.arrange_pending_spans();
        fresh.generation = version.generation;
        fresh.position = Some(version.position);
        fresh.last_full_load = Some(loading.elapsed());
        fresh.last_refresh = fresh.last_full_load;
        fresh.loaded_snapshot = from_snapshot.map(|head| head.position);
        let mut cache = self.cache.write().await;
        if cache.generation == fresh.generation {
            return Ok(());
        }
        *cache = fresh;
        self.extend_spans(&mut cache, version.position).await;
        tracing::info!(
            cases = cache.cases.len(),
            generation = version.generation,
            position = %version.position,
            millis = loading.elapsed().as_millis() as u64,
            "rebuilt projection switched in"
        );
        Ok(())
    }

    /// Loads the newest snapshot of `generation` into an empty copy, with its spans; returns its
    /// head, or `None` (leaving the copy empty) when there is none or it cannot be read, and
    /// the copy must be loaded from the projection's rows.
    async fn load_snapshot(&self, cache: &mut FactsCache, generation: i64) -> Option<SnapshotHead> {
        // The spans describe the log, whichever projection is loaded: set aside, to be arranged
        // by the new copy, unless the snapshot brings its own.
        cache.set_spans_aside();
        let head = self.read_snapshot_into(cache, generation).await;
        if head.is_some() {
            cache.pending_spans = None;
        }
        head
    }

    async fn read_snapshot_into(&self, cache: &mut FactsCache, generation: i64) -> Option<SnapshotHead> {
        cache.clear();
        let read = match SnapshotLoader::new(&mut *cache) {
            Ok(mut loader) => match self
                .reads
                .read_snapshot(generation, snapshot::FORMAT, &mut loader)
                .await
            {
                Ok(Ok(Some(head))) => Ok(loader.finish().map(|spans| Some((head, spans)))),
                Ok(Ok(None)) => Ok(Ok(None)),
                Ok(Err(refused)) => Ok(Err(refused)),
                Err(err) => Err(err),
            },
            Err(err) => Ok(Err(err)),
        };
        match read {
            Ok(Ok(Some((head, spans)))) => {
                cache.generation = head.generation;
                cache.position = Some(head.position);
                cache.spans = Some(spans.covering(head.position));
                Some(head)
            }
            Ok(Ok(None)) => None,
            Ok(Err(unreadable)) => {
                tracing::warn!(error = %unreadable.detail(), "the read-model snapshot cannot be read; loading the projection instead");
                cache.clear();
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, "reading the read-model snapshot failed; loading the projection instead");
                cache.clear();
                None
            }
        }
    }

    /// Extends the spans, if held, to cover the log up to `position`; forgets them if that fails
    /// (they are read again when next needed).
    async fn extend_spans(&self, cache: &mut FactsCache, position: Position) {
        let Some(covered) = cache.spans.as_ref().map(RecordedSpans::position) else {
            return;
        };
        if covered >= position {
            return;
        }
        match read_spans(&self.reads, Some(covered), position).await {
            Ok(read) => cache.merge_spans(read, position),
            Err(err) => {
                tracing::warn!(error = %err, "extending the recording spans failed; they will be read again");
                cache.spans = None;
            }
        }
    }

    /// Reads every case's recording span from the log, once, without holding the copy while
    /// the log is read (ten years take seconds): queries go on meanwhile.
    async fn ensure_spans(&self) -> Result<(), Error> {
        let _reading = self.reading_spans.lock().await;
        let up_to = {
            let cache = self.cache.read().await;
            match (&cache.spans, cache.position) {
                (Some(_), _) | (None, None) => return Ok(()),
                (None, Some(position)) => position,
            }
        };
        let read = read_spans(&self.reads, None, up_to).await?;
        let mut cache = self.cache.write().await;
        if cache.spans.is_some() || cache.position.is_none() {
            return Ok(());
        }
        cache.spans = Some(RecordedSpans::arranged(
            read,
            up_to,
            cache.cases.len(),
            place_in(&cache.index),
        ));
        // The copy may have moved on while the log was read.
        let position = cache.position();
        self.extend_spans(&mut cache, position).await;
        Ok(())
    }

    /// Writes a snapshot of this copy (with its spans) for servers that start later, unless
    /// another process is writing one or one as recent exists. Each part is encoded under a
    /// brief read lock, so queries and refreshes go on meanwhile; the parts may then hold
    /// facts newer than the snapshot's position, which is harmless: a loader applies every row
    /// written after that position on top.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn write_snapshot(&self) -> Result<Option<SnapshotHead>, Error> {
        self.current_facts(Position::ZERO).await.map(drop)?;
        self.ensure_spans().await?;
        let (generation, position, spans) = {
            let cache = self.cache.read().await;
            match (cache.position, &cache.spans) {
                (Some(position), Some(spans)) => (
                    cache.generation,
                    position,
                    spans.to_vec(cache.cases.iter().map(|case| &case.case_id)),
                ),
                _ => return Ok(None),
            }
        };
        let Some(mut writer) = self.log.begin_snapshot(generation, position).await? else {
            return Ok(None);
        };
        let mut written = 0;
        loop {
            let part = {
                let cache = self.cache.read().await;
                if cache.generation != generation || cache.position.is_none() {
                    // A rebuild was switched in: this copy is of the old projection.
                    return Ok(None);
                }
                if written >= cache.cases.len() {
                    break;
                }
                let end = cache.cases.len().min(written + snapshot::CASES_PER_PART);
                let part = snapshot::encode_cases(&cache.cases[written..end])?;
                written = end;
                part
            };
            writer.part(&part).await?;
        }
        for chunk in spans.chunks(snapshot::SPANS_PER_PART) {
            writer.part(&snapshot::encode_spans(chunk)?).await?;
        }
        Ok(Some(writer.finish(snapshot::FORMAT, written as i64).await?))
    }

    /// Refreshes the copy, then writes a snapshot of it when it holds cases and none of the
    /// projection's generation exists or the newest is `after_events` or more events behind.
    pub async fn snapshot_if_due(&self, after_events: u64) -> Result<Option<SnapshotHead>, Error> {
        // Refreshed first, so that a server nobody queries still snapshots what the projector
        // wrote (and answers its next query from a current copy).
        let (generation, position) = {
            let facts = self.current_facts(Position::ZERO).await?;
            if facts.cases.is_empty() {
                return Ok(None);
            }
            (facts.generation, facts.position())
        };
        let latest = self.log.latest_snapshot(generation).await?;
        if latest.is_some_and(|head| position.since(head.position) < after_events) {
            return Ok(None);
        }
        self.write_snapshot().await
    }

    /// Checks whether a snapshot is due (see [`ReadModel::snapshot_if_due`]) once the copy is
    /// loaded, then every `check_every`, and writes it. Runs until aborted; returns at once when
    /// the policy writes none.
    pub async fn keep_snapshots(self, policy: SnapshotPolicy) {
        if policy.after_events == 0 {
            return;
        }
        loop {
            match self.snapshot_if_due(policy.after_events).await {
                Ok(Some(head)) => tracing::info!(
                    position = %head.position,
                    cases = head.cases,
                    parts = head.parts,
                    bytes = head.bytes,
                    "read-model snapshot written"
                ),
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err.detail(), "writing a read-model snapshot failed"),
            }
            tokio::time::sleep(policy.check_every).await;
        }
    }

    /// Loads the projection into memory (or refreshes it): what a server does before it reports
    /// ready, so that its first query does not pay for the load.
    pub async fn load(&self) -> Result<(), Error> {
        self.current_facts(Position::ZERO).await.map(drop)
    }

    /// The size of the in-memory copy and how long loading it took.
    pub async fn stats(&self) -> ReadModelStats {
        let cache = self.cache.read().await;
        ReadModelStats {
            generation: cache.generation,
            cases: cache.cases.len() as u64,
            position: cache.position(),
            last_full_load: cache.last_full_load,
            last_refresh: cache.last_refresh,
            loaded_snapshot: cache.loaded_snapshot,
            as_of_folded_cases: self.as_of_folded.load(std::sync::atomic::Ordering::Relaxed),
            as_of_history_cases: self.as_of_from_history.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The figures from the log as it was recorded at `at`: the cases whose events were all
    /// recorded by `at` count with the facts held here, those whose first event came later are
    /// left out, and only the cases with events on both sides of `at`, or with events beyond
    /// this copy, are folded again from their events recorded by `at` (see [`crate::as_of`]).
    async fn answer_as_of(
        &self,
        query: MetricsQuery,
        at: DateTime<Utc>,
        calendar: &'static WorkingCalendar,
    ) -> Result<Vec<MetricResult>, Error> {
        self.over_cases_as_of(query, at, move |query, cases| {
            compute_parallel(query, cases, calendar, counting_threads())
        })
        .await
    }

    /// `answer` over the facts `query` may count as they stood at `at` (on the blocking pool).
    async fn over_cases_as_of<T: Send + 'static>(
        &self,
        query: MetricsQuery,
        at: DateTime<Utc>,
        answer: impl FnOnce(&MetricsQuery, &[&CaseFacts]) -> Result<T, MetricsError> + Send + 'static,
    ) -> Result<T, Error> {
        let mut facts = self.current_facts(Position::ZERO).await?;
        if facts.spans.is_none() {
            drop(facts);
            self.ensure_spans().await?;
            facts = self.current_facts(Position::ZERO).await?;
        }
        let copy_at = facts.position();
        let instant = at.timestamp_micros();
        // Events the copy has not applied (appended since it was read): fold their cases again.
        let beyond_copy: HashSet<String> = self.reads.cases_after(copy_at).await?.into_iter().collect();
        let spans = facts
            .spans
            .as_ref()
            .ok_or_else(|| Error::Internal("the recording spans could not be read; ask again".into()))?;
        let mut whole = Vec::new();
        let mut refold: Vec<String> = beyond_copy.iter().cloned().collect();
        for (i, ((case, reach), span)) in facts.cases.iter().zip(&facts.reaches).zip(spans.by_case()).enumerate() {
            if !beyond_copy.is_empty() && beyond_copy.contains(&*case.case_id) {
                continue;
            }
            match span.map(|span| span.at(instant)) {
                Some(AtInstant::NotYet) => {}
                Some(AtInstant::Whole) => {
                    if query.may_count(reach) {
                        whole.push(i);
                    }
                }
                // Partly recorded by then, or not yet known to the spans: fold to be sure.
                Some(AtInstant::Partial) | None => refold.push(case.case_id.to_string()),
            }
        }
        // Cases with events but no facts now (no `case_issued`, or it was voided since) may have
        // had facts then.
        refold.extend(
            spans
                .without_facts()
                .filter(|(id, span)| span.at(instant) != AtInstant::NotYet && !beyond_copy.contains(&***id))
                .map(|(id, _)| id.to_string()),
        );
        let refolded = self.facts_recorded_by(refold, at).await?;
        counted(move || {
            let cases: Vec<&CaseFacts> = whole
                .iter()
                .map(|&i| &facts.cases[i])
                .chain(refolded.iter().map(|facts| &**facts))
                .collect();
            answer(&query, &cases)
        })
        .await
    }

    /// Instants at least `settled_after` before now count as settled (see [`SETTLED_AFTER`]).
    pub fn with_settled_after(mut self, settled_after: Duration) -> ReadModel {
        self.settled_after = settled_after;
        self
    }

    /// The facts at `at` of those of `cases` that had any then. At a settled instant, cases
    /// found for an earlier answer at the same instant are taken from then, and the others read
    /// from the projection's history (or folded, where it cannot say) and kept (the last instant
    /// only, up to [`SETTLED_FOLDS_KEPT`] cases).
    async fn facts_recorded_by(&self, cases: Vec<String>, at: DateTime<Utc>) -> Result<Vec<Arc<CaseFacts>>, Error> {
        let settled = chrono::Duration::from_std(self.settled_after)
            .ok()
            .and_then(|after| Utc::now().checked_sub_signed(after))
            .is_some_and(|settled_by| at <= settled_by);
        if !settled {
            return Ok(self
                .refold_recorded_by(cases, at)
                .await?
                .into_iter()
                .map(Arc::new)
                .collect());
        }
        let mut found = Vec::new();
        let missing: Vec<String> = {
            let mut kept = self
                .settled_folds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if kept.as_ref().is_some_and(|kept| kept.at != at) {
                // Another instant's folds go now, not once this one's are made: two instants'
                // worth would be held at once.
                *kept = None;
            }
            match kept.as_ref() {
                Some(kept) => cases
                    .into_iter()
                    .filter(|case| match kept.facts.get(case.as_str()) {
                        Some(facts) => {
                            found.extend(facts.clone());
                            false
                        }
                        None => true,
                    })
                    .collect(),
                None => cases,
            }
        };
        let folded: Vec<Arc<CaseFacts>> = self
            .history_or_refold(missing.clone(), at)
            .await?
            .into_iter()
            .map(Arc::new)
            .collect();
        {
            let mut kept = self
                .settled_folds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if kept.as_ref().is_none_or(|kept| kept.at != at) {
                *kept = Some(SettledFolds {
                    at,
                    facts: HashMap::new(),
                });
            }
            if let Some(kept) = kept.as_mut() {
                let mut by_case: HashMap<&str, &Arc<CaseFacts>> = folded.iter().map(|f| (&*f.case_id, f)).collect();
                for case in &missing {
                    if kept.facts.len() >= SETTLED_FOLDS_KEPT {
                        break;
                    }
                    let facts = by_case.remove(case.as_str()).cloned();
                    kept.facts.insert(Arc::from(case.as_str()), facts);
                }
            }
        }
        found.extend(folded);
        Ok(found)
    }

    /// The facts at the settled instant `at` of those of `cases` that had any then: from the
    /// projection's history, or folded from the log where it cannot say (every case when it
    /// does not reach `at`, a row of another encoding).
    async fn history_or_refold(&self, cases: Vec<String>, at: DateTime<Utc>) -> Result<Vec<CaseFacts>, Error> {
        let Some(rows) = self.reads.facts_history_at(&cases, at).await? else {
            return self.refold_recorded_by(cases, at).await;
        };
        // A case without a row had nothing recorded by then.
        let (found, refold) = tokio::task::spawn_blocking(move || {
            let mut found = Vec::with_capacity(rows.len());
            let mut refold = Vec::new();
            for row in rows {
                match row.facts.as_deref().map(stored_facts::decode) {
                    None => {}
                    Some(Some(facts)) => found.push(facts),
                    Some(None) => refold.push(row.case_id),
                }
            }
            (found, refold)
        })
        .await
        .map_err(|e| Error::Internal(format!("as_of history read stopped: {e}")))?;
        self.as_of_from_history
            .fetch_add(found.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let mut facts = found;
        facts.extend(self.refold_recorded_by(refold, at).await?);
        Ok(facts)
    }

    /// The facts of `cases` from their events recorded by `at`: a reader task stays a chunk
    /// ahead while the previous chunk is folded on the blocking pool, so the database and the
    /// fold work at once.
    async fn refold_recorded_by(&self, cases: Vec<String>, at: DateTime<Utc>) -> Result<Vec<CaseFacts>, Error> {
        self.as_of_folded
            .fetch_add(cases.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let (sender, mut chunks) = tokio::sync::mpsc::channel(1);
        let log = self.reads.clone();
        let reader = tokio::spawn(async move {
            for chunk in cases.chunks(AS_OF_FOLD_CASES) {
                let read = log.read_cases_recorded_by(chunk, at).await;
                if sender.send(read).await.is_err() {
                    return;
                }
            }
        });
        let mut refolded = Vec::new();
        while let Some(rows) = chunks.recv().await {
            let rows = rows?;
            let folded = tokio::task::spawn_blocking(move || fold_cases(&rows))
                .await
                .map_err(|e| Error::Internal(format!("as_of fold stopped: {e}")))??;
            refolded.extend(folded);
        }
        reader
            .await
            .map_err(|e| Error::Internal(format!("as_of reader stopped: {e}")))?;
        Ok(refolded)
    }

    /// Waits until the projection has applied `min_position`; returns its generation and
    /// checkpoint then.
    async fn wait_for(&self, wanted: Position) -> Result<(i64, Position), Error> {
        let started = Instant::now();
        loop {
            let (generation, checkpoint) = self.reads.case_facts_version().await?;
            if checkpoint >= wanted {
                return Ok((generation, checkpoint));
            }
            if started.elapsed() >= MAX_CATCH_UP_WAIT {
                return Err(Error::ProjectionBehind { checkpoint, wanted });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs a count on the blocking pool: a query counts for tens of milliseconds on every core, and
/// the async workers must stay free for appends meanwhile.
async fn counted<T, F>(count: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, MetricsError> + Send + 'static,
{
    tokio::task::spawn_blocking(count)
        .await
        .map_err(|e| Error::Internal(format!("metrics count stopped: {e}")))?
        .map_err(Error::from)
}

fn counting_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
