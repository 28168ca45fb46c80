//! The read model: this process's copy of the case-facts projection, kept current with the rows
//! the projector writes, and the figures and worklists counted from it. `as_of` answers fold
//! the log as it was recorded at an instant, refolding only the cases written since.

use crate::as_of::{AtInstant, RecordedSpans};
use crate::error::Error;
use crate::projector::fold_cases;
use caselog_calendar::WorkingCalendar;
use caselog_domain::Position;
use caselog_projections::metrics::{MetricsError, compute_parallel};
use caselog_projections::{CaseFacts, MetricResult, MetricsQuery, Reach, SharedCodes, WorklistItem, WorklistKind};
use caselog_store::EventLog;
use caselog_store::projection::FactsSink;
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

/// Cases read and folded together by an `as_of` answer: bounds the events it holds at once.
const AS_OF_FOLD_CASES: usize = 2_000;

/// The longest a query waits for the projections to reach `min_position`.
const MAX_CATCH_UP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ReadModel {
    log: EventLog,
    cache: Arc<RwLock<FactsCache>>,
    /// One `as_of` fold at a time per process: each holds the facts of the cases it refolds.
    as_of_folds: Arc<tokio::sync::Semaphore>,
    recorded_spans: Arc<tokio::sync::Mutex<RecordedSpans>>,
}

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
    index: HashMap<Arc<str>, u32>,
    codes: SharedCodes,
    /// How long the last load of the whole projection took (the first query's, or after a
    /// rebuild), and the last refresh of any size.
    last_full_load: Option<Duration>,
    last_refresh: Option<Duration>,
}

/// What an operator sees of the read model (`caselog.read_model.*` gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadModelStats {
    /// Cases held in memory.
    pub cases: u64,
    /// The checkpoint the copy reflects (zero before the first query loads it).
    pub position: Position,
    pub last_full_load: Option<Duration>,
    pub last_refresh: Option<Duration>,
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
            // The position no longer describes what is held until the load completes.
            self.position = None;
            self.clear();
        }
    }

    fn row(&mut self, facts: &str) -> Result<(), Error> {
        let facts: CaseFacts =
            serde_json::from_str(facts).map_err(|e| Error::Internal(format!("unreadable case facts: {e}")))?;
        self.upsert(facts)
    }
}

impl ReadModel {
    pub fn new(log: EventLog) -> ReadModel {
        ReadModel {
            log,
            cache: Arc::new(RwLock::new(FactsCache::default())),
            as_of_folds: Arc::new(tokio::sync::Semaphore::new(1)),
            recorded_spans: Arc::default(),
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
        let calendar = WorkingCalendar::england_and_wales();
        match as_of {
            Some(at) => {
                let _fold = self.as_of_folds.try_acquire().map_err(|_| Error::Busy {
                    what: "an as_of query is already being answered by this server".into(),
                })?;
                Ok((Position::ZERO, self.answer_as_of(query, at, calendar).await?))
            }
            None => {
                let facts = self.current_facts(min_position).await?;
                let position = facts.position();
                let results = counted(move || {
                    let counting: Vec<&CaseFacts> = facts.counting_in(&query).collect();
                    compute_parallel(&query, &counting, calendar, counting_threads())
                })
                .await?;
                Ok((position, results))
            }
        }
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
        }
        let mut cache = self.cache.clone().write_owned().await;
        let refreshing = Instant::now();
        let generation = cache.generation;
        let since = cache.position;
        let version = self.log.case_facts_since(generation, since, &mut *cache).await??;
        cache.generation = version.generation;
        cache.position = Some(version.position);
        cache.last_refresh = Some(refreshing.elapsed());
        if version.replaced {
            cache.last_full_load = cache.last_refresh;
        }
        Ok(cache.downgrade())
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
            cases: cache.cases.len() as u64,
            position: cache.position(),
            last_full_load: cache.last_full_load,
            last_refresh: cache.last_refresh,
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
        let facts = self.current_facts(Position::ZERO).await?;
        let copy_at = facts.position();
        let instant = at.timestamp_micros();
        let mut spans = self.recorded_spans.lock().await;
        spans
            .advance(&self.log, copy_at, |id| {
                facts.index.get_key_value(id).map(|(held, _)| held.clone())
            })
            .await?;
        // Events the copy has not applied (appended since it was read): fold their cases again.
        let beyond_copy: HashSet<String> = self.log.cases_after(copy_at).await?.into_iter().collect();
        let mut whole = Vec::new();
        let mut refold: Vec<String> = beyond_copy.iter().cloned().collect();
        for (i, (case, reach)) in facts.cases.iter().zip(&facts.reaches).enumerate() {
            if beyond_copy.contains(&*case.case_id) {
                continue;
            }
            match spans.get(&case.case_id).map(|span| span.at(instant)) {
                Some(AtInstant::NotYet) => {}
                Some(AtInstant::Whole) => {
                    if query.may_count(reach) {
                        whole.push(i);
                    }
                }
                // Partly recorded by then, or never seen by the spans: fold to be sure.
                Some(AtInstant::Partial) | None => refold.push(case.case_id.to_string()),
            }
        }
        // Cases with events but no facts now (no `case_issued`, or it was voided since) may have
        // had facts then.
        refold.extend(
            spans
                .iter()
                .filter(|(id, span)| {
                    span.at(instant) != AtInstant::NotYet
                        && !facts.index.contains_key(*id)
                        && !beyond_copy.contains(*id)
                })
                .map(|(id, _)| id.to_owned()),
        );
        drop(spans);
        let mut refolded = Vec::new();
        for cases in refold.chunks(AS_OF_FOLD_CASES) {
            refolded.extend(fold_cases(&self.log.read_cases_recorded_by(cases, at).await?)?);
        }
        counted(move || {
            let cases: Vec<&CaseFacts> = whole.iter().map(|&i| &facts.cases[i]).chain(&refolded).collect();
            compute_parallel(&query, &cases, calendar, counting_threads())
        })
        .await
    }

    /// Waits until the projection has applied `min_position`; returns its generation and
    /// checkpoint then.
    async fn wait_for(&self, wanted: Position) -> Result<(i64, Position), Error> {
        let started = Instant::now();
        loop {
            let (generation, checkpoint) = self.log.case_facts_version().await?;
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
async fn counted<F>(count: F) -> Result<Vec<caselog_projections::MetricResult>, Error>
where
    F: FnOnce() -> Result<Vec<caselog_projections::MetricResult>, MetricsError> + Send + 'static,
{
    tokio::task::spawn_blocking(count)
        .await
        .map_err(|e| Error::Internal(format!("metrics count stopped: {e}")))?
        .map_err(Error::from)
}

fn counting_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
