//! The write path: load a case's history, acknowledge events already recorded, decide the rest
//! against the lifecycle rules, append them, and retry when a concurrent append won the race.
//! Transport-agnostic: the gRPC service converts requests to calls here.

use crate::cache::WeightedCache;
use crate::error::Error;
use caselog_domain::{
    ALLOCATION_OVERHEAD, CaseHistory, CaseId, EventId, EventType, FieldViolation, HistoryEvent, Metadata, NewEvent,
    Payload, Position, Principal, Version,
};
use caselog_store::{CaseReader, EventLog, GroupAppender, NewRow, StoredEvent};
use chrono::NaiveDate;
use serde::Deserialize as _;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tracing::{debug, instrument};
use uuid::Uuid;

/// The most events one append may carry.
pub const MAX_BATCH: usize = 1000;
/// Cases with more events than this are not kept in the write cache.
const MAX_CACHED_CASE_EVENTS: usize = 1000;
/// 16 MiB: about 4,000 cases of 25 events (an event weighs about 140 bytes: its history
/// event with its strings, about 95, its record, 24, and the vectors' spare room; the case's
/// boxed issue about 200 more, and its view, kept for the next append, about 480). Sized so
/// that a server holding ten national years stays within 512 MiB (docs/benchmarks.md); a
/// write-heavy server, or one whose cases run to hundreds of events, may give it more.
pub const DEFAULT_CASE_CACHE_BYTES: usize = 16 << 20;
/// How often an append without an expected version is re-decided after losing a race.
const MAX_ATTEMPTS: u32 = 20;

/// The outcome for one event of an append, in request order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventOutcome {
    pub event_id: EventId,
    pub position: Position,
    pub version: Version,
    pub already_present: bool,
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub version: Version,
    pub events: Vec<EventOutcome>,
}

/// A case as recorded: its events (for resend checks) and its history (for the rules).
#[derive(Debug, Clone)]
struct CaseState {
    recorded: Vec<RecordedEvent>,
    /// The sum of the records' [`RecordedEvent::heap_bytes`], kept as they are added, so that
    /// weighing a case for the cache does not go over all its events.
    recorded_bytes: usize,
    history: CaseHistory,
}

impl CaseState {
    fn read(stored: &[StoredEvent]) -> Result<CaseState, Error> {
        // A record's version is its place in the case: the log's versions are contiguous.
        if let Some((index, e)) = stored
            .iter()
            .enumerate()
            .find(|(index, e)| Version::ZERO.after(index + 1).ok() != Some(e.version))
        {
            return Err(Error::Internal(format!(
                "case {} holds version {} at place {}: its versions are not contiguous",
                e.case_id,
                e.version,
                index + 1
            )));
        }
        let history = history_of(stored)?;
        let mut state = CaseState {
            recorded: Vec::with_capacity(stored.len()),
            recorded_bytes: 0,
            history,
        };
        state.record(stored.iter().map(RecordedEvent::of));
        Ok(state)
    }

    /// Adds the records of events the history already holds.
    fn record(&mut self, records: impl IntoIterator<Item = RecordedEvent>) {
        for record in records {
            self.recorded_bytes += record.heap_bytes();
            self.recorded.push(record);
        }
    }

    /// About what the state takes in memory.
    fn memory_bytes(&self) -> usize {
        self.history.memory_bytes()
            + self.recorded.capacity() * std::mem::size_of::<RecordedEvent>()
            + self.recorded_bytes
    }
}

/// What deciding a resend needs of a recorded event beside its history event (the same index
/// in the case's history, which also holds its id; its version is that index + 1): its position
/// and its metadata. The payload and date are compared on the history event, which the rules
/// keep anyway. Kept to 24 bytes: every event of every cached case has one, and the cases a busy
/// server writes to must fit the cache's budget (at 80 bytes, 32 clients' cases did not).
#[derive(Debug, Clone)]
struct RecordedEvent {
    position: Position,
    metadata: RecordedMetadata,
}

/// An event's stored metadata, boxed when it holds anything: most events carry none.
#[derive(Debug, Clone, PartialEq)]
enum RecordedMetadata {
    Empty,
    Held(Box<Metadata>),
    /// Not the service's (written by other means): no resend can match it.
    Foreign,
}

impl RecordedMetadata {
    fn of(metadata: Metadata) -> RecordedMetadata {
        if metadata.is_empty() {
            RecordedMetadata::Empty
        } else {
            RecordedMetadata::Held(Box::new(metadata))
        }
    }

    fn matches(&self, metadata: &Metadata) -> bool {
        match self {
            RecordedMetadata::Empty => metadata.is_empty(),
            RecordedMetadata::Held(held) => **held == *metadata,
            RecordedMetadata::Foreign => false,
        }
    }
}

impl RecordedEvent {
    fn of(stored: &StoredEvent) -> RecordedEvent {
        RecordedEvent {
            position: stored.position,
            metadata: Metadata::deserialize(&stored.metadata).map_or(RecordedMetadata::Foreign, RecordedMetadata::of),
        }
    }

    /// Whether `event` is this event, recorded as `history_event`, sent again (a resend).
    fn same_content(&self, history_event: &HistoryEvent, event: &NewEvent) -> bool {
        history_event.occurred_on == event.occurred_on
            && history_event.payload == event.payload
            && self.metadata.matches(&event.metadata)
    }

    fn heap_bytes(&self) -> usize {
        let RecordedMetadata::Held(metadata) = &self.metadata else {
            return 0;
        };
        std::mem::size_of::<Metadata>()
            + ALLOCATION_OVERHEAD
            + [&metadata.correlation_id, &metadata.causation_id]
                .into_iter()
                .flatten()
                .map(|text| text.len() + ALLOCATION_OVERHEAD)
                .sum::<usize>()
    }
}

/// Recently written cases, so that the next append to one needs no read: one round trip instead
/// of two. Safe across processes because the log is append-only: a cached case is a prefix of
/// the recorded one, and an append decided against it commits only if the prefix is whole, since
/// it claims the next version and `UNIQUE (case_id, version)` refuses it otherwise. A refused
/// claim, a rule refusal (a later event might change it) or an expected version that differs
/// send the append down the read path, which is always authoritative.
///
/// An append takes its case out of the cache and puts the case as it then stands back, so that
/// the case is extended in place rather than copied: a concurrent append to the same case finds
/// it missing and reads it, which is always correct.
#[derive(Debug)]
pub struct CaseCache {
    cases: Mutex<WeightedCache<CaseState>>,
    /// Appends that found their case here, and those that read it from the log: how an operator
    /// sees whether `--case-cache-mib` holds the cases being written.
    found: AtomicU64,
    read: AtomicU64,
}

impl CaseCache {
    /// Holds cases taking at most `budget_bytes` of memory together (0 turns caching off).
    pub fn new(budget_bytes: usize) -> CaseCache {
        CaseCache {
            cases: Mutex::new(WeightedCache::new(budget_bytes, CaseState::memory_bytes)),
            found: AtomicU64::new(0),
            read: AtomicU64::new(0),
        }
    }

    /// Appends that found their case held, and appends that read it from the log, so far.
    pub fn lookups(&self) -> (u64, u64) {
        (self.found.load(Ordering::Relaxed), self.read.load(Ordering::Relaxed))
    }

    /// The cases held and what they weigh, in bytes (an estimate; see `CaseState::memory_bytes`).
    pub fn usage(&self) -> (usize, usize) {
        let cases = self.lock();
        (cases.len(), cases.weight())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WeightedCache<CaseState>> {
        self.cases.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self, case_id: &str) -> Option<CaseState> {
        let held = self.lock().take(case_id);
        let counter = if held.is_some() { &self.found } else { &self.read };
        counter.fetch_add(1, Ordering::Relaxed);
        held
    }

    /// Puts a case back: `was_held` when it was taken out of the cache for this append, so that
    /// it stays; otherwise it was read from the log and is offered (`WeightedCache::offer`: a
    /// full cache holds it only when it comes again soon).
    fn put(&self, case_id: &str, state: CaseState, was_held: bool) {
        // An outsized case, such as a migration's, is read again when next appended to rather
        // than pushing dozens of ordinary ones out.
        if state.recorded.len() > MAX_CACHED_CASE_EVENTS {
            return;
        }
        let mut cases = self.lock();
        if was_held {
            cases.put(case_id.to_owned(), state);
        } else {
            cases.offer(case_id.to_owned(), state);
        }
    }
}

/// The write path's parts: the log, the grouped reader of cases not cached, the group appender
/// (writes) and the case cache.
#[derive(Debug, Clone)]
pub struct WritePath {
    pub log: EventLog,
    pub reader: CaseReader,
    pub appender: GroupAppender,
    pub cache: Arc<CaseCache>,
}

/// Appends `events` to a case for `writer`, all or none; the writer is recorded as their source.
/// `today` is the civil date in England.
#[instrument(skip(path, events, writer), fields(events = events.len(), source = %writer.organisation))]
pub async fn append(
    path: &WritePath,
    case_id: &CaseId,
    events: &[NewEvent],
    expected_version: Option<Version>,
    writer: &Principal,
    today: NaiveDate,
) -> Result<Appended, Error> {
    let WritePath { log, reader, cache, .. } = path;
    let case_id = case_id.as_str();
    if events.is_empty() || events.len() > MAX_BATCH {
        return Err(Error::invalid(vec![FieldViolation::new(
            "events",
            format!("a batch holds 1 to {MAX_BATCH} events (got {})", events.len()),
        )]));
    }
    writer.may_address(case_id, events)?;
    let request = AppendRequest {
        path,
        case_id,
        events,
        expected_version,
        writer,
        today,
    };
    let held = cache.take(case_id);
    let was_held = held.is_some();
    if let Some(cached) = held {
        match request.attempt(cached, &HashSet::new(), Authority::Cached).await? {
            Attempt::Done(appended, state) => {
                cache.put(case_id, state, was_held);
                return Ok(appended);
            }
            Attempt::Undecided => debug!(case_id, "cached case is behind the log; reading it"),
        }
    }
    let ids: Vec<EventId> = events.iter().map(|e| e.event_id).collect();
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            // Spread the retries of writers that collided on one case.
            let jitter = u64::from(Uuid::new_v4().as_bytes()[0]) % (2 * u64::from(attempt.min(10)));
            tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
        }
        // The first read skips the batch's ids in other cases: a new id is the rule, and the
        // unique event id refuses the append otherwise, which sends it round again to read them.
        let (stored, elsewhere) = if attempt == 0 {
            (reader.read_case(case_id).await?, Vec::new())
        } else {
            log.read_case_and_events(case_id, &ids).await?
        };
        let state = CaseState::read(&stored)?;
        let elsewhere: HashSet<EventId> = elsewhere.iter().map(|e| e.event_id).collect();
        match request.attempt(state, &elsewhere, Authority::Recorded).await? {
            Attempt::Done(appended, state) => {
                cache.put(case_id, state, was_held);
                return Ok(appended);
            }
            Attempt::Undecided => debug!(case_id, "lost a race with a concurrent append; deciding again"),
        }
    }
    Err(Error::Contention)
}

/// Whether a case state is the recorded case (read just now) or a cached prefix of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Authority {
    Recorded,
    Cached,
}

enum Attempt {
    /// Appended, or every event was already recorded; with the case as it now stands.
    Done(Appended, CaseState),
    /// The case moved on meanwhile (or, when cached, may have): read it and decide again.
    Undecided,
}

struct AppendRequest<'a> {
    path: &'a WritePath,
    case_id: &'a str,
    events: &'a [NewEvent],
    expected_version: Option<Version>,
    writer: &'a Principal,
    today: NaiveDate,
}

impl AppendRequest<'_> {
    /// Decides the batch against `state` and appends what is new. `elsewhere` holds the batch's
    /// event ids recorded in other cases (read with the case; unknown for a cached case, where
    /// the unique event id refuses the append instead).
    async fn attempt(
        &self,
        mut state: CaseState,
        elsewhere: &HashSet<EventId>,
        authority: Authority,
    ) -> Result<Attempt, Error> {
        let AppendRequest {
            path: WritePath { log, appender, .. },
            case_id,
            events,
            expected_version,
            writer,
            today,
        } = *self;
        // Before anything tells whether the case or its events exist. The parties of a case never
        // change, so a cached case answers this as well as a read one.
        writer.may_append(&state.history, events)?;
        let wanted: HashSet<EventId> = events.iter().map(|e| e.event_id).collect();
        let found: HashMap<EventId, (&RecordedEvent, &HistoryEvent, Version)> = state
            .recorded
            .iter()
            .zip(state.history.events())
            .zip(1..)
            .filter(|((_, history_event), _)| wanted.contains(&history_event.event_id))
            .map(|((e, history_event), place)| {
                let version = Version::ZERO.after(place).unwrap_or(Version::MAX);
                (history_event.event_id, (e, history_event, version))
            })
            .collect();
        let mut new_indices = Vec::new();
        for (index, event) in events.iter().enumerate() {
            match found.get(&event.event_id) {
                Some((existing, history_event, _)) if existing.same_content(history_event, event) => {}
                _ if elsewhere.contains(&event.event_id) => {
                    return Err(Error::EventIdReused {
                        event_id: event.event_id,
                        event_index: index,
                    });
                }
                Some(_) => {
                    return Err(Error::EventIdReused {
                        event_id: event.event_id,
                        event_index: index,
                    });
                }
                None => new_indices.push(index),
            }
        }
        let recorded: HashMap<EventId, (Position, Version)> = found
            .into_iter()
            .map(|(id, (e, _, version))| (id, (e.position, version)))
            .collect();
        let version_before = state.history.version();
        if new_indices.is_empty() {
            debug!(case_id, "every event already recorded");
            let result = outcomes(events, &recorded, version_before, &HashMap::new());
            return Ok(Attempt::Done(result, state));
        }
        if let Some(expected) = expected_version
            && expected != version_before
        {
            return match authority {
                Authority::Recorded => Err(Error::VersionConflict {
                    expected,
                    actual: version_before,
                }),
                Authority::Cached => Ok(Attempt::Undecided),
            };
        }
        let batch: Vec<NewEvent> = new_indices.iter().map(|&i| events[i].clone()).collect();
        // From here on `state` holds the batch; it is kept only if the append commits.
        if let Err(rejection) = state.history.accept(&batch, today) {
            return match authority {
                Authority::Cached => Ok(Attempt::Undecided),
                Authority::Recorded => Err(Error::from_rejection(rejection, &new_indices)),
            };
        }
        let source = writer.organisation.as_str();
        let rows: Vec<NewRow> = batch.iter().map(row_of).collect();
        match appender.append(case_id, version_before, source, rows).await {
            Ok(appended) => {
                let version = appended.last().map_or(version_before, |a| a.version);
                let fresh: HashMap<EventId, (Position, Version)> = batch
                    .iter()
                    .zip(&appended)
                    .map(|(e, a)| (e.event_id, (a.position, a.version)))
                    .collect();
                let result = outcomes(events, &recorded, version, &fresh);
                state.record(batch.into_iter().zip(&appended).map(|(event, at)| RecordedEvent {
                    position: at.position,
                    metadata: RecordedMetadata::of(event.metadata),
                }));
                Ok(Attempt::Done(result, state))
            }
            Err(caselog_store::Error::VersionConflict { .. })
                if expected_version.is_some() && authority == Authority::Recorded =>
            {
                let actual = log.read_case(case_id).await?.len();
                Err(Error::VersionConflict {
                    expected: expected_version.unwrap_or_default(),
                    actual: Version::try_from(actual).unwrap_or(Version::MAX),
                })
            }
            Err(caselog_store::Error::VersionConflict { .. } | caselog_store::Error::DuplicateEventId) => {
                Ok(Attempt::Undecided)
            }
            Err(other) => Err(other.into()),
        }
    }
}

fn outcomes(
    events: &[NewEvent],
    recorded: &HashMap<EventId, (Position, Version)>,
    version: Version,
    fresh: &HashMap<EventId, (Position, Version)>,
) -> Appended {
    let events = events
        .iter()
        .map(|e| match recorded.get(&e.event_id) {
            Some(&(position, version)) => EventOutcome {
                event_id: e.event_id,
                position,
                version,
                already_present: true,
            },
            None => {
                let (position, version) = fresh.get(&e.event_id).copied().unwrap_or_default();
                EventOutcome {
                    event_id: e.event_id,
                    position,
                    version,
                    already_present: false,
                }
            }
        })
        .collect();
    Appended { version, events }
}

/// The row that records `event`: its data and metadata as JSON text.
pub fn row_of(event: &NewEvent) -> NewRow {
    NewRow {
        event_id: event.event_id,
        event_type: event.payload.event_type().as_str().to_owned(),
        occurred_on: event.occurred_on,
        data: event.payload.data_text(),
        // Two optional strings always serialise.
        metadata: serde_json::to_string(&event.metadata).unwrap_or_else(|_| "{}".to_owned()),
    }
}

/// Reads the payload of a stored row.
pub fn payload_of(stored: &StoredEvent) -> Result<Payload, Error> {
    let event_type = EventType::parse(&stored.event_type).ok_or_else(|| {
        Error::Internal(format!(
            "event {} has unknown type {:?}",
            stored.event_id, stored.event_type
        ))
    })?;
    Payload::from_data(event_type, &stored.data)
        .map_err(|e| Error::Internal(format!("event {} has unreadable data: {e}", stored.event_id)))
}

/// The lifecycle history of a case from its stored rows (in version order).
pub fn history_of(stored: &[StoredEvent]) -> Result<CaseHistory, Error> {
    stored
        .iter()
        .map(|e| {
            Ok(HistoryEvent {
                event_id: e.event_id,
                occurred_on: e.occurred_on,
                payload: payload_of(e)?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()
        .map(CaseHistory::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_of(events: usize) -> CaseState {
        let records = (0..events)
            .map(|i| RecordedEvent {
                position: Position::try_from(i as u64 + 1).unwrap_or_default(),
                metadata: RecordedMetadata::of(Metadata {
                    correlation_id: Some(format!("c-{i}")),
                    causation_id: None,
                }),
            })
            .collect::<Vec<_>>();
        let mut state = CaseState {
            recorded: Vec::new(),
            recorded_bytes: 0,
            history: CaseHistory::default(),
        };
        state.record(records);
        state
    }

    #[test]
    fn an_outsized_case_is_not_cached_and_the_budget_holds() {
        let thirty = state_of(30).memory_bytes();
        // Two cases of thirty events fit, not three.
        let cache = CaseCache::new(2 * thirty + thirty / 2);
        cache.put("BIG", state_of(MAX_CACHED_CASE_EVENTS + 1), false);
        assert!(cache.take("BIG").is_none());
        cache.put("A", state_of(30), true);
        cache.put("B", state_of(30), true);
        cache.put("C", state_of(30), true);
        assert_eq!(cache.lock().len(), 2);
        assert!(cache.lock().weight() <= 2 * thirty + thirty / 2);
        let c = cache.take("C").map(|s| s.recorded.len());
        assert_eq!(c, Some(30), "the newest case is kept");
        assert!(cache.take("C").is_none(), "taking removes it");
        // Small cases: many more of them fit than of the large ones.
        for i in 0..20 {
            cache.put(&format!("S{i}"), state_of(3), false);
        }
        assert!(cache.lock().len() > 2, "the bound is memory, not cases");
    }

    #[test]
    fn a_record_stays_small() {
        // The cache's budget per event (DEFAULT_CASE_CACHE_BYTES) counts on it.
        assert!(std::mem::size_of::<RecordedEvent>() <= 24);
        let held = std::mem::size_of::<Metadata>() + ALLOCATION_OVERHEAD;
        assert_eq!(
            state_of(3).recorded[0].heap_bytes(),
            held + "c-0".len() + ALLOCATION_OVERHEAD
        );
        let empty = RecordedEvent {
            position: Position::ZERO,
            metadata: RecordedMetadata::of(Metadata::default()),
        };
        assert_eq!(empty.heap_bytes(), 0, "empty metadata is not boxed");
    }

    #[test]
    fn a_resend_is_recognised_from_the_record_and_its_history_event() {
        let event = NewEvent {
            event_id: Uuid::new_v4().into(),
            occurred_on: NaiveDate::from_ymd_opt(2025, 5, 1).unwrap_or_default(),
            payload: Payload::CaseAllocated(caselog_domain::event::CaseAllocated {
                practitioner_id: "P-1".into(),
                role: caselog_domain::event::AllocationRole::Lead,
            }),
            metadata: caselog_domain::Metadata::default(),
        };
        let row = row_of(&event);
        let stored = StoredEvent {
            position: Position::try_from(7u64).unwrap_or_default(),
            event_id: event.event_id,
            case_id: "LS1".into(),
            version: Version::ZERO.after(1).unwrap_or_default(),
            event_type: row.event_type,
            occurred_on: row.occurred_on,
            data: serde_json::from_str(&row.data).unwrap_or_default(),
            metadata: serde_json::from_str(&row.metadata).unwrap_or_default(),
            source: "court:LS".into(),
            recorded_at: chrono::DateTime::UNIX_EPOCH,
        };
        let state = CaseState::read(std::slice::from_ref(&stored)).unwrap_or_else(|e| panic!("{e}"));
        let (recorded, history_event) = (&state.recorded[0], &state.history.events()[0]);
        assert!(recorded.same_content(history_event, &event));
        let mut changed = event.clone();
        changed.payload = Payload::CaseAllocated(caselog_domain::event::CaseAllocated {
            practitioner_id: "P-2".into(),
            role: caselog_domain::event::AllocationRole::Lead,
        });
        assert!(!recorded.same_content(history_event, &changed));
        let mut later = event.clone();
        later.occurred_on = NaiveDate::from_ymd_opt(2025, 5, 2).unwrap_or_default();
        assert!(!recorded.same_content(history_event, &later));
        let mut correlated = event.clone();
        correlated.metadata.correlation_id = Some("c-1".into());
        assert!(!recorded.same_content(history_event, &correlated));
        // Metadata the service did not write matches no resend.
        let foreign = RecordedEvent::of(&StoredEvent {
            metadata: serde_json::json!({"correlation_id": 7}),
            ..stored.clone()
        });
        assert!(!foreign.same_content(history_event, &event));
        // Metadata held (boxed) matches a resend with the same, and only that.
        let held = RecordedEvent::of(&StoredEvent {
            metadata: serde_json::json!({"correlation_id": "c-1"}),
            ..stored.clone()
        });
        assert!(held.same_content(history_event, &correlated));
        assert!(!held.same_content(history_event, &event));
        let mut caused = correlated.clone();
        caused.metadata.causation_id = Some("e-1".into());
        assert!(!held.same_content(history_event, &caused));
    }

    #[test]
    fn a_case_whose_versions_are_not_its_places_is_refused() {
        let event = |version: u64| StoredEvent {
            position: Position::try_from(version).unwrap_or_default(),
            event_id: Uuid::new_v4().into(),
            case_id: "LS1".into(),
            version: Version::ZERO.after(version as usize).unwrap_or_default(),
            event_type: "hearing_listed".into(),
            occurred_on: NaiveDate::from_ymd_opt(2025, 5, 1).unwrap_or_default(),
            data: serde_json::json!({"hearing_type": "fhdra", "listed_for": "2025-06-01"}),
            metadata: serde_json::json!({}),
            source: "court:LS".into(),
            recorded_at: chrono::DateTime::UNIX_EPOCH,
        };
        // Versions are read as places (a record keeps no version of its own), so a gap must
        // not pass unnoticed.
        assert!(CaseState::read(&[event(1), event(2)]).is_ok());
        let gap = CaseState::read(&[event(1), event(3)]).map(|_| ());
        assert!(
            matches!(&gap, Err(Error::Internal(detail)) if detail.contains("not contiguous")),
            "{gap:?}"
        );
        assert!(CaseState::read(&[event(2)]).is_err());
    }
}
