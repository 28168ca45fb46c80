//! The case-facts projection's history, which lets `as_of` take a case's facts at an instant
//! from one stored row instead of folding its events again. For each UTC day on which a case's
//! events were recorded there is one row: the facts after the last of them, and that day's first
//! and last recording instants (see `caselog_store::history` and migration 0007).
//!
//! Why a day and not every append: a row per append would store the facts once per event (about
//! the log's own size again); a row per day stores them once per case and day, and leaves only
//! the cases with events on both sides of an instant within its own day to be folded.

use crate::error::Error;
use crate::snapshot::FORMAT;
use caselog_domain::CaseHistory;
use caselog_projections::{CaseFacts, facts_of};
use caselog_store::{FactsHistoryRow, utc_day};
use chrono::{DateTime, Utc};

/// The day rows that the last `recorded.len()` events of `history` (their recording instants,
/// in version order) write, given `facts_now`, the facts after all of them.
pub(crate) fn day_rows(
    case_id: &str,
    history: &CaseHistory,
    recorded: &[DateTime<Utc>],
    facts_now: Option<&CaseFacts>,
) -> Result<Vec<FactsHistoryRow>, Error> {
    let total = history.events().len();
    let start = total.checked_sub(recorded.len()).ok_or_else(|| {
        Error::Internal(format!(
            "case {case_id}: {} recording instants for {total} events",
            recorded.len()
        ))
    })?;
    // (day, first, last, events up to and including the day's last). Recording instants follow
    // versions (a version is written after the previous one committed), so a day's events are
    // consecutive; a clock stepped back would break that, and the day then ends at its latest
    // event rather than writing one (case, day) twice.
    let mut days: Vec<(i32, DateTime<Utc>, DateTime<Utc>, usize)> = Vec::new();
    for (i, &at) in recorded.iter().enumerate() {
        let day = utc_day(at);
        match days.iter_mut().rev().find(|(d, ..)| *d == day) {
            Some((_, first, last, end)) => {
                *first = (*first).min(at);
                *last = (*last).max(at);
                *end = start + i + 1;
            }
            None => days.push((day, at, at, start + i + 1)),
        }
    }
    days.sort_by_key(|&(.., end)| std::cmp::Reverse(end));
    let mut prefix: Option<CaseHistory> = None;
    let mut rows = Vec::with_capacity(days.len());
    for (day, first_at, last_at, end) in days {
        let facts = if end == total {
            facts_now.map(encode).transpose()?
        } else {
            // Longest prefix first, so one copy of the history serves every earlier day.
            let prefix = prefix.get_or_insert_with(|| history.clone());
            prefix.truncate(end);
            facts_of(case_id, prefix).as_ref().map(encode).transpose()?
        };
        rows.push(FactsHistoryRow {
            case_id: case_id.to_owned(),
            day,
            first_at,
            last_at,
            facts,
        });
    }
    Ok(rows)
}

/// The facts as a history row holds them: the encoding's format, then the encoding (the
/// snapshot's, so the two change together).
pub(crate) fn encode(facts: &CaseFacts) -> Result<Vec<u8>, Error> {
    let format = u8::try_from(FORMAT).map_err(|_| Error::Internal(format!("format {FORMAT} does not fit a byte")))?;
    let mut out = vec![format];
    postcard::to_io(facts, &mut out)
        .map_err(|e| Error::Internal(format!("encoding the history of {}: {e}", facts.case_id)))?;
    Ok(out)
}

/// The facts a history row holds, or `None` if they were written in another format (an
/// earlier build's: the case is then folded from the log).
pub(crate) fn decode(data: &[u8]) -> Option<CaseFacts> {
    match data.split_first() {
        Some((&format, encoded)) if i32::from(format) == FORMAT => postcard::from_bytes(encoded).ok(),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use caselog_domain::{EventId, EventType, HistoryEvent, Payload};
    use chrono::TimeZone;

    const ISSUED: &str = r#"{"law_type":"public","application_types":["s31_care"],"court_code":"LS","service_area":"A5","local_authority_code":"E08000035","children":[{"child_id":"c1","birth_month":"2024-11"}]}"#;

    fn history(visits: usize) -> CaseHistory {
        let event = |event_type, data: &str, day| HistoryEvent {
            event_id: EventId::from(uuid::Uuid::new_v4()),
            occurred_on: chrono::NaiveDate::from_ymd_opt(2025, 4, day).unwrap(),
            payload: Payload::from_data_text(event_type, data).unwrap(),
        };
        let mut events = vec![event(EventType::CaseIssued, ISSUED, 1)];
        for visit in 0..visits {
            events.push(event(
                EventType::ChildSeen,
                r#"{"child_id":"c1","mode":"in_person"}"#,
                2 + visit as u32,
            ));
        }
        CaseHistory::new(events)
    }

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 5, day, hour, 0, 0).unwrap()
    }

    fn facts_after(events: usize) -> CaseFacts {
        let mut whole = history(3);
        whole.truncate(events);
        facts_of("K1", &whole).unwrap()
    }

    #[test]
    fn each_day_holds_the_facts_after_its_last_event() {
        let whole = history(3);
        let now = facts_of("K1", &whole);
        // Two events on 1 May (10:00, 11:00), one on 2 May, one on 4 May.
        let recorded = [at(1, 10), at(1, 11), at(2, 9), at(4, 23)];
        let mut rows = day_rows("K1", &whole, &recorded, now.as_ref()).unwrap();
        rows.sort_by_key(|r| r.day);
        let days: Vec<(i32, DateTime<Utc>, DateTime<Utc>)> =
            rows.iter().map(|r| (r.day, r.first_at, r.last_at)).collect();
        assert_eq!(
            days,
            vec![
                (utc_day(at(1, 0)), at(1, 10), at(1, 11)),
                (utc_day(at(2, 0)), at(2, 9), at(2, 9)),
                (utc_day(at(4, 0)), at(4, 23), at(4, 23)),
            ]
        );
        let decoded: Vec<CaseFacts> = rows
            .iter()
            .map(|r| decode(r.facts.as_deref().unwrap()).unwrap())
            .collect();
        assert_eq!(decoded, vec![facts_after(2), facts_after(3), facts_after(4)]);
    }

    #[test]
    fn only_the_newest_events_write_rows_and_a_day_is_written_once() {
        let whole = history(3);
        let now = facts_of("K1", &whole);
        // The last two events: the second recorded before the first (a clock stepped back),
        // both on 3 May. One row, its facts after both.
        let rows = day_rows("K1", &whole, &[at(3, 12), at(3, 8)], now.as_ref()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].first_at, rows[0].last_at), (at(3, 8), at(3, 12)));
        assert_eq!(decode(rows[0].facts.as_deref().unwrap()), now);
        assert!(day_rows("K1", &whole, &[at(1, 1); 5], now.as_ref()).is_err());
    }

    #[test]
    fn facts_of_another_format_are_not_read() {
        let mut encoded = encode(&facts_after(1)).unwrap();
        assert_eq!(decode(&encoded), Some(facts_after(1)));
        encoded[0] = encoded[0].wrapping_add(1);
        assert_eq!(decode(&encoded), None);
        assert_eq!(decode(&[]), None);
    }
}
