//! Runs the case-facts projection from the global feed. One process at a time leads (a
//! PostgreSQL advisory lock); another takes over when it dies. Each page of the feed becomes one
//! transaction: the touched cases' facts, refolded from their events up to the new checkpoint,
//! and the checkpoint itself.

use crate::cache::WeightedCache;
use crate::error::Error;
use crate::history::recorded_rows;
use caselog_domain::{CaseHistory, EventType, HistoryEvent, Payload, Position, Version};
use caselog_projections::{CaseFacts, facts_of};
use caselog_store::projection::{CASE_FACTS, FactsRow, Leadership};
use caselog_store::rebuild::Cut;
use caselog_store::{EventLog, FactsHistoryRow, ReplayRow};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// Maps keyed by case id in a projector step, which looks up every event of a page twice:
/// with foldhash, not the standard SipHash (about 3% of the service's processor during batch
/// ingest). Seeded per map, as the standard one is, since case ids come from callers.
type ByCase<K, V> = HashMap<K, V, foldhash::quality::RandomState>;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, instrument, warn};

/// 16 MiB: about 5,900 cases of 25 events (an event weighs about 95 bytes: 64 held, the rest
/// its strings; the case's boxed issue about 200 more, and the case's view, which the
/// history keeps once folded, about 480).
pub const DEFAULT_HISTORY_CACHE_BYTES: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    /// Feed events per transaction while the projection keeps up.
    pub page_size: u32,
    /// Feed events per transaction while it catches up: a full page whose cases were all at
    /// hand (new in the page, or held from earlier steps) doubles the next page, up to this; a
    /// short page, or one that read cases back from the log, returns to `page_size`. Each step
    /// costs a horizon, a checkpoint and a commit whatever its size: with 4,000 a freshly
    /// loaded year was projected in three quarters of the time (docs/benchmarks.md). Steps that
    /// keep reading cases back (an import in recording order) stay at `page_size` after the
    /// first, and so within the memory they took before.
    pub max_page_size: u32,
    /// How often a follower tries to become leader.
    pub leadership_retry: Duration,
    /// Re-check interval when no wake-up comes.
    pub idle_poll: Duration,
    /// How long to gather appends after a wake-up before projecting them, while they come
    /// seldom: an append is in the projection about this long after it commits.
    pub gather: Duration,
    /// How long to gather instead while appends stream in (the last step applied at least
    /// `busy_rate` events a second since the step before it began): one transaction then
    /// covers many appends, and queries see an append up to this long after it commits. Each
    /// step costs the appends committing beside it (a commit, the step's statement and fold on
    /// the same cores): at one client, stepping every 20 ms put the slowest hundredth of
    /// appends at 1.5-1.9 ms, every 500 ms at 1.2-1.4 ms, and 16 clients appended 0.95-0.98
    /// of raw's rate against 1.21-1.25 (docs/benchmarks.md).
    pub busy_gather: Duration,
    /// Events a second at and above which appends are taken to stream in.
    pub busy_rate: u32,
    /// The most memory, in bytes, the case histories the leader keeps between steps may take
    /// (a touched case held there is not read again; 0: none are kept), and a quarter as much
    /// again for cases of the last step that did not fit ([`HistoryCache`]).
    pub history_cache_bytes: usize,
}

impl Default for ProjectorSettings {
    fn default() -> ProjectorSettings {
        ProjectorSettings {
            page_size: 1000,
            max_page_size: 4000,
            leadership_retry: Duration::from_secs(2),
            idle_poll: Duration::from_secs(1),
            gather: Duration::from_millis(20),
            busy_gather: Duration::from_millis(500),
            busy_rate: 50,
            history_cache_bytes: DEFAULT_HISTORY_CACHE_BYTES,
        }
    }
}

/// Runs until aborted: follows, leads when it can, projects while it leads.
pub async fn run(log: EventLog, settings: ProjectorSettings) {
    loop {
        match log.try_lead_projections().await {
            Ok(Some(mut leadership)) => {
                info!("leading the projections");
                let mut wakeups = log.feed_wakeups();
                let mut histories = HistoryCache::new(settings.history_cache_bytes);
                let mut page_size = settings.page_size;
                let mut gather = settings.gather;
                let mut cycle_began = tokio::time::Instant::now();
                loop {
                    wakeups.borrow_and_update();
                    let step = apply_next_page_with(&log, page_size, &mut histories, Some(&mut leadership)).await;
                    let stepped = step.is_ok();
                    page_size = next_page_size(&settings, page_size, step.as_ref().ok());
                    // A step that found nothing new (a wake-up from another process, say) leaves
                    // the pace as it was.
                    if let Ok(applied) = &step
                        && applied.events > 0
                    {
                        gather = gather_after(&settings, applied.events, cycle_began.elapsed());
                        cycle_began = tokio::time::Instant::now();
                    }
                    match step {
                        Ok(Applied { full: true, .. }) => continue,
                        Ok(Applied { in_flight, to, .. }) => {
                            // Until the log moves past `to`, a recheck reads the horizon alone (no
                            // span: an idle service traces nothing), soon while an append below it
                            // is in flight, else every idle_poll.
                            let mut in_flight = in_flight;
                            loop {
                                let recheck = if in_flight {
                                    Duration::from_millis(10)
                                } else {
                                    settings.idle_poll
                                };
                                tokio::select! {
                                    _ = wakeups.changed() => {
                                        tokio::time::sleep(gather).await;
                                        break;
                                    }
                                    () = tokio::time::sleep(recheck) => {}
                                }
                                match log.horizon_untraced().await {
                                    Ok(horizon) if horizon.safe <= to => {
                                        in_flight = horizon.append_in_flight();
                                        if !leadership.still_held().await {
                                            break;
                                        }
                                    }
                                    _ => break,
                                }
                            }
                        }
                        Err(err) => {
                            warn!(error = %err.detail(), "projection step failed; retrying");
                            tokio::time::sleep(settings.leadership_retry).await;
                        }
                    }
                    // A step that succeeded ran on the leader's session: it still holds the lock.
                    if !stepped && !leadership.still_held().await {
                        warn!("lost the projection leadership session");
                        break;
                    }
                }
            }
            Ok(None) => debug!("another process leads the projections"),
            Err(err) => debug!(error = %crate::error::chain(&err), "cannot try for projection leadership"),
        }
        tokio::time::sleep(settings.leadership_retry).await;
    }
}

/// The page size of the step after one that used `page_size` and ended as `applied` (`None`:
/// it failed). See [`ProjectorSettings::max_page_size`].
fn next_page_size(settings: &ProjectorSettings, page_size: u32, applied: Option<&Applied>) -> u32 {
    match applied {
        Some(Applied {
            full: true,
            cases_read: 0,
            ..
        }) => page_size
            .saturating_mul(2)
            .min(settings.max_page_size)
            .max(settings.page_size),
        _ => settings.page_size,
    }
}

/// How long to gather after the next wake-up, after a step that applied `events` over `cycle`
/// (the time since the step before it began, waiting and gathering included).
fn gather_after(settings: &ProjectorSettings, events: usize, cycle: Duration) -> Duration {
    if events > 0 && events as f64 >= f64::from(settings.busy_rate) * cycle.as_secs_f64() {
        settings.busy_gather
    } else {
        settings.gather
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub from: Position,
    pub to: Position,
    /// Events in the page.
    pub events: usize,
    /// The page was full: more may be waiting.
    pub full: bool,
    /// An append was in flight below the allocated position.
    pub in_flight: bool,
    /// Cases the step read back from the log (neither new in the page nor held from earlier
    /// steps).
    pub cases_read: usize,
}

/// The histories of recently projected cases, complete up to `position`: a step that starts at
/// that checkpoint extends them with its page instead of reading the cases again. Valid only
/// between successful steps of one leader; anything else empties it.
#[derive(Debug)]
pub struct HistoryCache {
    position: Option<Position>,
    cases: WeightedCache<CaseHistory>,
    /// The cases the step under way took out: put back after it, where the others, read from
    /// the log or new, are offered (`WeightedCache::offer`).
    taken: std::collections::HashSet<String, foldhash::quality::RandomState>,
    /// Cases of the last step that `cases` turned away, kept for the next step only, those last
    /// in the page first, within a quarter of the budget. A page of a bulk load ends inside the
    /// appends still arriving, and their cases, new to a cache full of the load's finished
    /// cases, were turned away and read back whole by the next step (a fifth of the events of
    /// a batch ingest read twice; docs/benchmarks.md).
    carried: ByCase<String, CaseHistory>,
    carry_budget: usize,
}

impl HistoryCache {
    /// Holds histories taking at most `budget_bytes` of memory together, and a quarter as much
    /// again for the last step's cases carried to the next.
    pub fn new(budget_bytes: usize) -> HistoryCache {
        HistoryCache {
            position: None,
            cases: WeightedCache::new(budget_bytes, CaseHistory::memory_bytes),
            taken: Default::default(),
            carried: Default::default(),
            carry_budget: budget_bytes / 4,
        }
    }

    /// Takes out the histories of `case_ids` held or carried, if they are valid at checkpoint
    /// `from` (otherwise forgets them all). The cache stays invalid until `keep` puts histories
    /// back after a successful step; carried cases the step does not touch are forgotten.
    fn take_at(&mut self, from: Position, case_ids: &[String]) -> ByCase<String, CaseHistory> {
        self.taken.clear();
        let mut carried = std::mem::take(&mut self.carried);
        if self.position.take() != Some(from) {
            self.cases.clear();
            return ByCase::default();
        }
        let mut taken = ByCase::default();
        for case_id in case_ids {
            if let Some(history) = self.cases.take(case_id) {
                self.taken.insert(case_id.clone());
                taken.insert(case_id.clone(), history);
            } else if let Some((case_id, history)) = carried.remove_entry(case_id) {
                taken.insert(case_id, history);
            }
        }
        taken
    }

    /// Puts back the step's histories, which are complete up to `position`; `latest_last` lists
    /// the step's cases by their last event in the page.
    fn keep(&mut self, position: Position, mut cases: ByCase<String, CaseHistory>, latest_last: &[String]) {
        // Any case may be left out: a miss costs one read.
        let mut turned_away = Vec::new();
        for case_id in latest_last {
            let Some((case_id, history)) = cases.remove_entry(case_id) else {
                continue;
            };
            if self.taken.remove(&case_id) {
                self.cases.put(case_id, history);
            } else if let Some(refused) = self.cases.offer(case_id, history) {
                turned_away.push(refused);
            }
        }
        let mut carried_bytes = 0;
        for (case_id, history) in turned_away.into_iter().rev() {
            carried_bytes += history.memory_bytes();
            if carried_bytes > self.carry_budget {
                break;
            }
            self.carried.insert(case_id, history);
        }
        self.taken.clear();
        self.position = Some(position);
    }
}

/// Applies the next page of the feed to the case-facts projection, in one transaction with the
/// checkpoint, reading every touched case from the log.
pub async fn apply_next_page(log: &EventLog, page_size: u32) -> Result<Applied, Error> {
    apply_next_page_with(log, page_size, &mut HistoryCache::new(0), None).await
}

/// As `apply_next_page`, extending the histories of cached cases with the page's events and
/// reading only the others; with `leadership`, the checkpoint is read and the step written on
/// the leader's session instead of pooled connections.
#[instrument(skip(log, histories, leadership), err(level = "debug"))]
pub async fn apply_next_page_with(
    log: &EventLog,
    page_size: u32,
    histories: &mut HistoryCache,
    mut leadership: Option<&mut Leadership>,
) -> Result<Applied, Error> {
    let from = match leadership.as_deref_mut() {
        Some(leadership) => leadership.case_facts_checkpoint().await?,
        None => log.checkpoint(CASE_FACTS).await?,
    };
    let page = log.read_all_projected(from, page_size).await?;
    let to = page.next_after;
    let applied = Applied {
        from,
        to,
        events: page.events.len(),
        full: page.full,
        in_flight: page.horizon.append_in_flight(),
        cases_read: 0,
    };
    if to == from {
        return Ok(applied);
    }
    let mut touched: Vec<String> = Vec::new();
    let mut issued_here: Vec<String> = Vec::new();
    // Each touched case's recording instants in the page, and where its last event is.
    let mut recorded: ByCase<&str, (usize, Vec<DateTime<Utc>>)> = ByCase::default();
    let events = || page.events.iter().map(|row| &row.event);
    for (at, event) in events().enumerate() {
        let (last, instants) = recorded.entry(event.case_id.as_str()).or_default();
        *last = at;
        if instants.is_empty() {
            touched.push(event.case_id.clone());
            if Version::ZERO.after(1).is_ok_and(|first| first == event.version) {
                issued_here.push(event.case_id.clone());
            }
        }
        instants.push(event.recorded_at);
    }
    // Within a case, positions follow versions (a version is claimed only after the previous
    // one committed), so the page extends each cached history in order; a gap means the copy
    // is not whole, and the case is read instead.
    let mut cached = histories.take_at(from, &touched);
    // A case whose first event in the page is its first version is whole in the page: its
    // history starts empty here instead of being read back (an import or a batch of new cases
    // would otherwise read every event twice).
    for case_id in issued_here {
        cached.entry(case_id).or_default();
    }
    for event in events() {
        if let Some(history) = cached.get_mut(&event.case_id) {
            if history.version().after(1).is_ok_and(|next| next == event.version) {
                history.push(history_event(event)?);
            } else {
                cached.remove(&event.case_id);
            }
        }
    }
    let mut missing: Vec<String> = touched.iter().filter(|c| !cached.contains_key(*c)).cloned().collect();
    missing.sort();
    let applied = Applied {
        cases_read: missing.len(),
        ..applied
    };
    if !missing.is_empty() {
        let rows = log.read_cases_up_to(&missing, to).await?;
        for events in rows.chunk_by(|a, b| a.case_id == b.case_id) {
            cached.insert(events[0].case_id.clone(), replayed_history(events)?);
        }
    }
    let mut latest_last = touched.clone();
    latest_last.sort_by_key(|case_id| recorded.get(case_id.as_str()).map(|(last, _)| *last));
    // The page's events of a case are the last of its history: within a case, positions follow
    // versions.
    let instants: Vec<Vec<DateTime<Utc>>> = touched
        .iter()
        .map(|case_id| recorded.remove(case_id.as_str()).unwrap_or_default().1)
        .collect();
    // Folding, encoding and the JSON take milliseconds for a page of hundreds of cases: on the
    // blocking pool, so that the async workers go on answering appends meanwhile (one client's
    // slowest hundredth of appends: 1.1-1.2 ms against 1.4 ms on a worker, docs/benchmarks.md).
    let step = tokio::task::spawn_blocking(move || rows_of_step(cached, &touched, &instants))
        .await
        .map_err(|e| Error::Internal(format!("projection step: {e}")))??;
    let saved = match leadership {
        Some(leadership) => leadership.save_case_facts(&step.facts, &step.history, from, to).await?,
        None => log.save_case_facts(&step.facts, &step.history, from, to).await?,
    };
    if saved {
        histories.keep(to, step.histories, &latest_last);
    } else {
        debug!(%from, "checkpoint moved by another process; skipping");
    }
    Ok(applied)
}

/// What a step writes, and the histories it extended.
struct StepRows {
    histories: ByCase<String, CaseHistory>,
    facts: Vec<FactsRow>,
    history: Vec<FactsHistoryRow>,
}

/// The case-facts rows of `touched` (those with a case) and the history rows of their events
/// recorded at `instants` (aligned with `touched`), from the histories in `cached`.
fn rows_of_step(
    cached: ByCase<String, CaseHistory>,
    touched: &[String],
    instants: &[Vec<DateTime<Utc>>],
) -> Result<StepRows, Error> {
    let mut facts_rows = Vec::with_capacity(touched.len());
    let mut history_rows = Vec::with_capacity(touched.len());
    for (case_id, instants) in touched.iter().zip(instants) {
        let Some(history) = cached.get(case_id) else {
            continue;
        };
        let recorded = recorded_rows(case_id, history, instants, facts_of(case_id, history).as_ref())?;
        history_rows.extend(recorded.rows);
        if let Some(stored) = recorded.changed_facts {
            facts_rows.push(FactsRow {
                case_id: case_id.clone(),
                stored,
            });
        }
    }
    Ok(StepRows {
        histories: cached,
        facts: facts_rows,
        history: history_rows,
    })
}

/// Folds rows ordered by case then version into the facts of each case.
pub fn fold_cases(rows: &[ReplayRow]) -> Result<Vec<CaseFacts>, Error> {
    let mut out = Vec::new();
    for events in rows.chunk_by(|a, b| a.case_id == b.case_id) {
        if let Some(facts) = facts_of(&events[0].case_id, &replayed_history(events)?) {
            out.push(facts);
        }
    }
    Ok(out)
}

/// As [`fold_cases`] for whole cases, with the history rows of every append of them.
pub(crate) fn fold_cases_with_history(rows: &[ReplayRow]) -> Result<(Vec<CaseFacts>, Vec<FactsHistoryRow>), Error> {
    let mut out = Vec::new();
    let mut history_rows = Vec::new();
    for events in rows.chunk_by(|a, b| a.case_id == b.case_id) {
        let case_id = &events[0].case_id;
        let history = replayed_history(events)?;
        let facts = facts_of(case_id, &history);
        let instants: Vec<DateTime<Utc>> = events.iter().map(|e| e.recorded_at).collect();
        history_rows.extend(recorded_rows(case_id, &history, &instants, facts.as_ref())?.rows);
        out.extend(facts);
    }
    Ok((out, history_rows))
}

/// The facts of every case, from the log cut at `cut`, read a page of cases at a time.
pub async fn facts_at(log: &EventLog, cut: Cut) -> Result<Vec<CaseFacts>, Error> {
    let mut facts = Vec::new();
    let mut pages = read_pages(log.clone(), cut, FOLD_PAGE_EVENTS);
    while let Some(page) = pages.recv().await {
        facts.extend(fold_cases(&page?)?);
    }
    Ok(facts)
}

/// Reads the log cut at `cut`, case by case (each case whole), on a task of its own that stays
/// up to two pages ahead of the reader. Dropping the receiver stops it.
pub(crate) fn read_pages(log: EventLog, cut: Cut, page_events: usize) -> mpsc::Receiver<Result<Vec<ReplayRow>, Error>> {
    let (sender, receiver) = mpsc::channel(2);
    tokio::spawn(async move {
        let read = log
            .read_cases_in_order(cut, page_events, |page| {
                let sender = sender.clone();
                async move { sender.send(Ok(page)).await.is_ok() }
            })
            .await;
        if let Err(err) = read {
            let _ = sender.send(Err(err.into())).await;
        }
    });
    receiver
}

/// Events read per page when folding the whole log.
const FOLD_PAGE_EVENTS: usize = 20_000;

fn replayed_history(rows: &[ReplayRow]) -> Result<CaseHistory, Error> {
    rows.iter()
        .map(history_event)
        .collect::<Result<Vec<_>, Error>>()
        .map(CaseHistory::new)
}

/// A history event from a row's type and `data` text.
fn history_event(row: &ReplayRow) -> Result<HistoryEvent, Error> {
    let unreadable = |detail: String| Error::Internal(format!("event {}: {detail}", row.event_id));
    let event_type =
        EventType::parse(&row.event_type).ok_or_else(|| unreadable(format!("unknown type {:?}", row.event_type)))?;
    Ok(HistoryEvent {
        event_id: row.event_id,
        occurred_on: row.occurred_on,
        payload: Payload::from_data_text(event_type, &row.data)
            .map_err(|e| unreadable(format!("unreadable data: {e}")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn step(full: bool, cases_read: usize) -> Applied {
        Applied {
            from: Position::ZERO,
            to: Position::ZERO.saturating_add(10),
            events: 10,
            full,
            in_flight: false,
            cases_read,
        }
    }

    fn cases(ids: &[&str]) -> (ByCase<String, CaseHistory>, Vec<String>) {
        let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        let histories = ids.iter().map(|id| (id.clone(), CaseHistory::default())).collect();
        (histories, ids)
    }

    fn taken(histories: &mut HistoryCache, from: u64, ids: &[&str]) -> Vec<String> {
        let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        let mut taken: Vec<String> = histories
            .take_at(Position::ZERO.saturating_add(from), &ids)
            .into_keys()
            .collect();
        taken.sort();
        taken
    }

    #[test]
    fn the_last_cases_of_a_page_are_carried_to_the_next_step_when_the_cache_turns_them_away() {
        let weight = CaseHistory::default().memory_bytes();
        let mut histories = HistoryCache::new(8 * weight);
        let at = |position: u64| Position::ZERO.saturating_add(position);
        // A cache full of cases put a moment ago (a bulk load's finished cases).
        let (finished, order) = cases(&["f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8"]);
        histories.keep(at(1), finished, &order);
        assert!(taken(&mut histories, 1, &[]).is_empty());
        // Three new cases, n3's last event last in the page: all turned away, the last two
        // carried (a quarter of the budget holds two).
        let (new, order) = cases(&["n1", "n2", "n3"]);
        histories.keep(at(2), new, &order);
        assert_eq!(taken(&mut histories, 2, &["n1", "n2", "n3", "f8"]), ["f8", "n2", "n3"]);
        let (step, order) = cases(&["f8"]);
        histories.keep(at(3), step, &order);
        // A carried case the next step does not touch is forgotten.
        assert!(taken(&mut histories, 3, &[]).is_empty());
        let (new, order) = cases(&["m1"]);
        histories.keep(at(4), new, &order);
        assert_eq!(taken(&mut histories, 4, &["f7"]), ["f7"]);
        let (step, order) = cases(&["f7"]);
        histories.keep(at(5), step, &order);
        assert_eq!(taken(&mut histories, 5, &["m1", "f6"]), ["f6"]);
        // Carried cases are valid only at the checkpoint they are complete up to.
        let (new, order) = cases(&["m2"]);
        histories.keep(at(6), new, &order);
        assert!(taken(&mut histories, 7, &["m2", "f5"]).is_empty());
    }

    #[test]
    fn pages_grow_behind_new_cases_and_shrink_when_caught_up_or_reading_back() {
        let settings = ProjectorSettings::default();
        let base = settings.page_size;
        let grown = next_page_size(&settings, base, Some(&step(true, 0)));
        assert_eq!(grown, 2 * base);
        let mut size = base;
        for _ in 0..10 {
            size = next_page_size(&settings, size, Some(&step(true, 0)));
        }
        assert_eq!(size, settings.max_page_size);
        assert_eq!(next_page_size(&settings, size, Some(&step(true, 1))), base);
        assert_eq!(next_page_size(&settings, size, Some(&step(false, 0))), base);
        assert_eq!(next_page_size(&settings, size, None), base);
    }

    #[test]
    fn a_stream_of_appends_is_gathered_longer_and_a_trickle_briefly() {
        let settings = ProjectorSettings::default();
        let ms = Duration::from_millis;
        // One client at 1,800 appends a second: 40 events since the step before began 25 ms ago.
        assert_eq!(gather_after(&settings, 40, ms(25)), settings.busy_gather);
        // The same pace once gathering longer: 900 events over 510 ms.
        assert_eq!(gather_after(&settings, 900, ms(510)), settings.busy_gather);
        // One append after a quiet second, and a few over a busy step's half second.
        assert_eq!(gather_after(&settings, 1, ms(1000)), settings.gather);
        assert_eq!(gather_after(&settings, 20, ms(510)), settings.gather);
        // Exactly the rate counts as a stream; nothing applied never does.
        assert_eq!(gather_after(&settings, 50, ms(1000)), settings.busy_gather);
        assert_eq!(gather_after(&settings, 0, Duration::ZERO), settings.gather);
    }

    proptest! {
        #[test]
        fn a_page_stays_between_the_base_and_the_largest(
            page_size in 1u32..10_000,
            max_page_size in 0u32..20_000,
            steps in proptest::collection::vec((any::<bool>(), 0usize..3, any::<bool>()), 0..40),
        ) {
            let settings = ProjectorSettings { page_size, max_page_size, ..ProjectorSettings::default() };
            let mut size = settings.page_size;
            for (full, cases_read, failed) in steps {
                let applied = step(full, cases_read);
                size = next_page_size(&settings, size, (!failed).then_some(&applied));
                prop_assert!(size >= page_size && size <= page_size.max(max_page_size));
                if failed || !full || cases_read > 0 {
                    prop_assert_eq!(size, page_size);
                }
            }
        }

        #[test]
        fn more_events_over_the_same_time_never_gather_for_less(
            // Around the default's 50 events a second, where the pace changes.
            events in 0usize..400,
            more in 0usize..400,
            cycle_ms in 0u64..8_000,
        ) {
            let settings = ProjectorSettings::default();
            let cycle = Duration::from_millis(cycle_ms);
            let fewer = gather_after(&settings, events, cycle);
            let gathered = gather_after(&settings, events + more, cycle);
            prop_assert!(gathered >= fewer);
            prop_assert!(gathered == settings.gather || gathered == settings.busy_gather);
        }
    }
}
