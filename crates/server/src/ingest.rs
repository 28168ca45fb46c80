//! The write path: load a case's history, acknowledge events already recorded, decide the rest
//! against the lifecycle rules, append them, and retry when a concurrent append won the race.
//! Transport-agnostic: the gRPC service converts requests to calls here.

use crate::error::Error;
use caselog_domain::{CaseHistory, EventType, FieldViolation, HistoryEvent, NewEvent, Payload, Principal};
use caselog_store::{EventLog, NewRow, StoredEvent};
use chrono::NaiveDate;
use std::collections::HashMap;
use tracing::{debug, instrument};
use uuid::Uuid;

/// The most events one append may carry.
pub const MAX_BATCH: usize = 1000;
/// How often an append without an expected version is re-decided after losing a race.
const MAX_ATTEMPTS: u32 = 20;

/// The outcome for one event of an append, in request order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventOutcome {
    pub event_id: Uuid,
    pub position: i64,
    pub version: i64,
    pub already_present: bool,
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub version: i64,
    pub events: Vec<EventOutcome>,
}

/// Appends `events` to a case for `writer`, all or none; the writer is recorded as their source.
/// `today` is the civil date in England.
#[instrument(skip(log, events, writer), fields(events = events.len(), source = %writer.organisation))]
pub async fn append(
    log: &EventLog,
    case_id: &str,
    events: &[NewEvent],
    expected_version: Option<u64>,
    writer: &Principal,
    today: NaiveDate,
) -> Result<Appended, Error> {
    let source = writer.organisation.as_str();
    let mut violations = caselog_domain::validate_case_id(case_id);
    if events.is_empty() || events.len() > MAX_BATCH {
        violations.push(FieldViolation::new(
            "events",
            format!("a batch holds 1 to {MAX_BATCH} events (got {})", events.len()),
        ));
    }
    if !violations.is_empty() {
        return Err(Error::invalid(violations));
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            // Spread the retries of writers that collided on one case.
            let jitter = u64::from(Uuid::new_v4().as_bytes()[0]) % (2 * u64::from(attempt.min(10)));
            tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
        }
        let (stored, elsewhere) = log.read_case_and_events(case_id, &ids).await?;
        let history = history_of(&stored)?;
        // Before anything tells whether the case or its events exist.
        writer.may_append(&history, events)?;
        let recorded: HashMap<Uuid, &StoredEvent> = stored.iter().chain(&elsewhere).map(|e| (e.event_id, e)).collect();

        let mut new_indices = Vec::new();
        for (index, event) in events.iter().enumerate() {
            match recorded.get(&event.event_id) {
                Some(existing) if same_content(existing, case_id, event) => {}
                Some(_) => {
                    return Err(Error::EventIdReused {
                        event_id: event.event_id.to_string(),
                        event_index: index,
                    });
                }
                None => new_indices.push(index),
            }
        }
        if new_indices.is_empty() {
            debug!(case_id, "every event already recorded");
            return Ok(outcomes(events, &recorded, history.version() as i64, &[]));
        }
        if let Some(expected) = expected_version
            && expected != history.version()
        {
            return Err(Error::VersionConflict {
                expected,
                actual: history.version(),
            });
        }
        let batch: Vec<NewEvent> = new_indices.iter().map(|&i| events[i].clone()).collect();
        history
            .decide(&batch, today)
            .map_err(|r| Error::from_rejection(r, &new_indices))?;
        let rows: Vec<NewRow> = batch.iter().map(row_of).collect();
        match log.append(case_id, history.version() as i64, source, &rows).await {
            Ok(appended) => {
                let version = appended.last().map_or(history.version() as i64, |a| a.version);
                let fresh: Vec<(Uuid, i64, i64)> = batch
                    .iter()
                    .zip(&appended)
                    .map(|(e, a)| (e.event_id, a.position, a.version))
                    .collect();
                return Ok(outcomes(events, &recorded, version, &fresh));
            }
            Err(caselog_store::Error::VersionConflict { .. }) if expected_version.is_some() => {
                let actual = log.read_case(case_id).await?.len() as u64;
                return Err(Error::VersionConflict {
                    expected: expected_version.unwrap_or_default(),
                    actual,
                });
            }
            Err(caselog_store::Error::VersionConflict { .. } | caselog_store::Error::DuplicateEventId) => {
                debug!(case_id, "lost a race with a concurrent append; deciding again");
            }
            Err(other) => return Err(other.into()),
        }
    }
    Err(Error::Contention)
}

fn outcomes(
    events: &[NewEvent],
    recorded: &HashMap<Uuid, &StoredEvent>,
    version: i64,
    fresh: &[(Uuid, i64, i64)],
) -> Appended {
    let events = events
        .iter()
        .map(|e| match recorded.get(&e.event_id) {
            Some(stored) => EventOutcome {
                event_id: e.event_id,
                position: stored.position,
                version: i64::from(stored.version),
                already_present: true,
            },
            None => {
                let (_, position, version) = fresh
                    .iter()
                    .find(|(id, ..)| *id == e.event_id)
                    .copied()
                    .unwrap_or_default();
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

/// Whether a stored event is the same event as `event` sent for `case_id` (a resend).
fn same_content(stored: &StoredEvent, case_id: &str, event: &NewEvent) -> bool {
    stored.case_id == case_id
        && stored.event_type == event.payload.event_type().as_str()
        && stored.occurred_on == event.occurred_on
        && stored.data == event.payload.data()
        && stored.metadata == metadata_json(event)
}

fn metadata_json(event: &NewEvent) -> serde_json::Value {
    serde_json::to_value(&event.metadata).unwrap_or_else(|_| serde_json::json!({}))
}

pub(crate) fn row_of(event: &NewEvent) -> NewRow {
    NewRow {
        event_id: event.event_id,
        event_type: event.payload.event_type().as_str().to_owned(),
        occurred_on: event.occurred_on,
        data: event.payload.data(),
        metadata: metadata_json(event),
    }
}

/// Reads the payload of a stored row.
pub(crate) fn payload_of(stored: &StoredEvent) -> Result<Payload, Error> {
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
pub(crate) fn history_of(stored: &[StoredEvent]) -> Result<CaseHistory, Error> {
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
