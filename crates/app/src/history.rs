//! The case-facts projection's history, which lets `as_of` take a case's facts at an instant
//! from one stored row instead of folding its events again. For each instant at which events of a
//! case were recorded (one append) there is one row: the facts after them (see
//! `caselog_store::history` and migration 0007). The facts at any instant are those of the last
//! row recorded by then, exactly: a case's recording instants follow its versions.

use crate::error::Error;
use crate::stored_facts::encode;
use caselog_domain::CaseHistory;
use caselog_projections::{CaseFacts, facts_of};
use caselog_store::FactsHistoryRow;
use chrono::{DateTime, Utc};

/// The history rows that the last `recorded.len()` events of `history` (their recording
/// instants, in version order) write, given `facts_now`, the facts after all of them.
pub(crate) fn recorded_rows(
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
    // (instant, events up to and including its last). An append's events are consecutive
    // versions with one instant; a clock stepped back could repeat an earlier instant after a
    // later one, and that instant then ends at its latest event rather than being written twice.
    let mut appends: Vec<(DateTime<Utc>, usize)> = Vec::new();
    for (i, &at) in recorded.iter().enumerate() {
        match appends.iter_mut().rev().find(|(instant, _)| *instant == at) {
            Some((_, end)) => *end = start + i + 1,
            None => appends.push((at, start + i + 1)),
        }
    }
    appends.sort_by_key(|&(_, end)| std::cmp::Reverse(end));
    let mut prefix: Option<CaseHistory> = None;
    let mut rows = Vec::with_capacity(appends.len());
    for (recorded_at, end) in appends {
        let facts = if end == total {
            facts_now.map(encode).transpose()?
        } else {
            // Longest prefix first, so one copy of the history serves every earlier append.
            let prefix = prefix.get_or_insert_with(|| history.clone());
            prefix.truncate(end);
            facts_of(case_id, prefix).as_ref().map(encode).transpose()?
        };
        rows.push(FactsHistoryRow {
            case_id: case_id.to_owned(),
            recorded_at,
            facts,
        });
    }
    Ok(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stored_facts::decode;
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
    fn each_append_holds_the_facts_after_its_events() {
        let whole = history(3);
        let now = facts_of("K1", &whole);
        // The first two events appended together at 10:00 on 1 May, then one each.
        let recorded = [at(1, 10), at(1, 10), at(2, 9), at(4, 23)];
        let mut rows = recorded_rows("K1", &whole, &recorded, now.as_ref()).unwrap();
        rows.sort_by_key(|r| r.recorded_at);
        let instants: Vec<DateTime<Utc>> = rows.iter().map(|r| r.recorded_at).collect();
        assert_eq!(instants, vec![at(1, 10), at(2, 9), at(4, 23)]);
        let decoded: Vec<CaseFacts> = rows
            .iter()
            .map(|r| decode(r.facts.as_deref().unwrap()).unwrap())
            .collect();
        assert_eq!(decoded, vec![facts_after(2), facts_after(3), facts_after(4)]);
    }

    #[test]
    fn only_the_newest_events_write_rows_and_an_instant_is_written_once() {
        let whole = history(3);
        let now = facts_of("K1", &whole);
        // The last three events: the third recorded at the first's instant after the second's
        // (a clock stepped back). Two rows; the repeated instant holds the facts after all.
        let rows = recorded_rows("K1", &whole, &[at(3, 12), at(3, 13), at(3, 12)], now.as_ref()).unwrap();
        let mut held: Vec<(DateTime<Utc>, Option<CaseFacts>)> = rows
            .iter()
            .map(|r| (r.recorded_at, decode(r.facts.as_deref().unwrap())))
            .collect();
        held.sort_by_key(|(at, _)| *at);
        assert_eq!(held, vec![(at(3, 12), now.clone()), (at(3, 13), Some(facts_after(3)))]);
        assert!(recorded_rows("K1", &whole, &[at(1, 1); 5], now.as_ref()).is_err());
    }
}
