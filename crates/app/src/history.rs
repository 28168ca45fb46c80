//! The case-facts projection's history, which lets `as_of` take a case's facts at an instant
//! from one stored row instead of folding its events again. An append whose events change the
//! case's facts writes one row: the facts after them, at the append's instant (see
//! `caselog_store::history` and migration 0007). An append that leaves them as they were (a
//! hearing listed, say: no metric reads hearings) writes none, nor does the projector rewrite
//! the case's `case_facts` row for it. The facts at any instant are those of the last row
//! recorded by then, exactly: a case's recording instants follow its versions, so the row
//! before an unwritten one holds the same facts.

use crate::error::Error;
use crate::stored_facts::encode;
use caselog_domain::CaseHistory;
use caselog_projections::{CaseFacts, facts_of};
use caselog_store::FactsHistoryRow;
use chrono::{DateTime, Utc};

/// What the newest events of a case write.
#[derive(Debug)]
pub(crate) struct Recorded {
    /// One row for each of their appends that changed the facts, oldest first.
    pub rows: Vec<FactsHistoryRow>,
    /// The facts after all of them, encoded for `case_facts`; `None` when the case has none, or
    /// when they are those it had before these events (its row holds them already).
    pub changed_facts: Option<Vec<u8>>,
}

/// What the last `recorded.len()` events of `history` (their recording instants, in version
/// order) write, given `facts_now`, the facts after all of them.
pub(crate) fn recorded_rows(
    case_id: &str,
    history: &CaseHistory,
    recorded: &[DateTime<Utc>],
    facts_now: Option<&CaseFacts>,
) -> Result<Recorded, Error> {
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
    let now = facts_now.map(encode).transpose()?;
    // Longest prefix first, so one copy of the history serves every earlier append and, last,
    // the case as it stood before these events.
    let mut prefix: Option<CaseHistory> = None;
    let mut facts_at = |end: usize| -> Result<Option<Vec<u8>>, Error> {
        if end == total {
            return Ok(now.clone());
        }
        let prefix = prefix.get_or_insert_with(|| history.clone());
        prefix.truncate(end);
        facts_of(case_id, prefix).as_ref().map(encode).transpose()
    };
    let mut rows = Vec::with_capacity(appends.len());
    for (recorded_at, end) in appends {
        rows.push(FactsHistoryRow {
            case_id: case_id.to_owned(),
            recorded_at,
            facts: facts_at(end)?,
        });
    }
    // What the case's previous append left: `None` for a case these events begin.
    let before = if start > 0 { Some(facts_at(start)?) } else { None };
    rows.reverse();
    // Rows are left out only where instants follow versions, as `as_of` takes them to.
    if rows.windows(2).all(|pair| pair[0].recorded_at < pair[1].recorded_at) {
        let changed: Vec<bool> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let previous = if i == 0 {
                    before.as_ref()
                } else {
                    Some(&rows[i - 1].facts)
                };
                previous != Some(&row.facts)
            })
            .collect();
        let mut changed = changed.into_iter();
        rows.retain(|_| changed.next().unwrap_or(true));
    }
    let changed_facts = match before {
        Some(before) if before == now => None,
        _ => now,
    };
    Ok(Recorded { rows, changed_facts })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stored_facts::decode;
    use caselog_domain::{EventId, EventType, HistoryEvent, Payload};
    use chrono::TimeZone;

    const ISSUED: &str = r#"{"law_type":"public","application_types":["s31_care"],"court_code":"LS","service_area":"A5","local_authority_code":"E08000035","children":[{"child_id":"c1","birth_month":"2024-11"}]}"#;

    const SEEN: &str = r#"{"child_id":"c1","mode":"in_person"}"#;
    const HEARING: &str = r#"{"hearing_type":"cmh","listed_for":"2025-07-01"}"#;

    fn event(event_type: EventType, data: &str, day: u32) -> HistoryEvent {
        HistoryEvent {
            event_id: EventId::from(uuid::Uuid::new_v4()),
            occurred_on: chrono::NaiveDate::from_ymd_opt(2025, 4, day).unwrap(),
            payload: Payload::from_data_text(event_type, data).unwrap(),
        }
    }

    fn history(visits: usize) -> CaseHistory {
        let mut events = vec![event(EventType::CaseIssued, ISSUED, 1)];
        for visit in 0..visits {
            events.push(event(EventType::ChildSeen, SEEN, 2 + visit as u32));
        }
        CaseHistory::new(events)
    }

    /// An issued case, then a visit (`true`) or a hearing listed (`false`) on each next day.
    fn visits_and_hearings(kinds: &[bool]) -> CaseHistory {
        let mut events = vec![event(EventType::CaseIssued, ISSUED, 1)];
        for (i, &visit) in kinds.iter().enumerate() {
            let day = 2 + i as u32;
            events.push(match visit {
                true => event(EventType::ChildSeen, SEEN, day),
                false => event(EventType::HearingListed, HEARING, day),
            });
        }
        CaseHistory::new(events)
    }

    /// The facts at `instant` as `as_of` reads them: those of the last row recorded by then.
    fn facts_at(rows: &[FactsHistoryRow], instant: DateTime<Utc>) -> Option<Option<CaseFacts>> {
        rows.iter()
            .filter(|row| row.recorded_at <= instant)
            .max_by_key(|row| row.recorded_at)
            .map(|row| row.facts.as_deref().and_then(decode))
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
        let mut rows = recorded_rows("K1", &whole, &recorded, now.as_ref()).unwrap().rows;
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
        let rows = recorded_rows("K1", &whole, &[at(3, 12), at(3, 13), at(3, 12)], now.as_ref())
            .unwrap()
            .rows;
        let mut held: Vec<(DateTime<Utc>, Option<CaseFacts>)> = rows
            .iter()
            .map(|r| (r.recorded_at, decode(r.facts.as_deref().unwrap())))
            .collect();
        held.sort_by_key(|(at, _)| *at);
        assert_eq!(held, vec![(at(3, 12), now.clone()), (at(3, 13), Some(facts_after(3)))]);
        assert!(recorded_rows("K1", &whole, &[at(1, 1); 5], now.as_ref()).is_err());
    }

    #[test]
    fn an_append_that_leaves_the_facts_as_they_were_writes_nothing() {
        // Issue, visit, hearing, visit, hearing: recorded in one step, one append each.
        let whole = visits_and_hearings(&[true, false, true, false]);
        let now = facts_of("K1", &whole);
        let recorded = [at(1, 9), at(2, 9), at(3, 9), at(4, 9), at(5, 9)];
        let written = recorded_rows("K1", &whole, &recorded, now.as_ref()).unwrap();
        let instants: Vec<DateTime<Utc>> = written.rows.iter().map(|r| r.recorded_at).collect();
        assert_eq!(instants, vec![at(1, 9), at(2, 9), at(4, 9)]);
        assert!(
            written.changed_facts.is_some(),
            "a case these events begin has its row written"
        );

        // A later step holding only the last hearing: no history row, no facts row.
        let written = recorded_rows("K1", &whole, &[at(5, 9)], now.as_ref()).unwrap();
        assert!(written.rows.is_empty());
        assert_eq!(written.changed_facts, None);
        // A later step holding the last visit and hearing: the visit's row, and the facts.
        let written = recorded_rows("K1", &whole, &[at(4, 9), at(5, 9)], now.as_ref()).unwrap();
        let instants: Vec<DateTime<Utc>> = written.rows.iter().map(|r| r.recorded_at).collect();
        assert_eq!(instants, vec![at(4, 9)]);
        assert_eq!(written.changed_facts, Some(encode(now.as_ref().unwrap()).unwrap()));
        // Instants that do not follow versions (a clock stepped back): every row is kept.
        let written = recorded_rows("K1", &whole, &[at(4, 9), at(4, 8)], now.as_ref()).unwrap();
        assert_eq!(written.rows.len(), 2);
    }

    proptest::proptest! {
        /// However a case's appends fall into projector steps, the rows the steps write are the
        /// rows one fold of the whole case writes (a rebuild's), and the last row recorded by
        /// any instant holds the facts of the events recorded by then.
        #[test]
        fn steps_write_what_a_rebuild_writes_and_every_instant_reads_its_facts(
            kinds in proptest::collection::vec(proptest::bool::ANY, 0..12),
            step_ends in proptest::collection::vec(proptest::bool::ANY, 12),
        ) {
            let whole = visits_and_hearings(&kinds);
            let total = whole.events().len();
            // One append per event, an hour apart.
            let recorded: Vec<DateTime<Utc>> = (0..total).map(|i| at(1, 0) + chrono::Duration::hours(i as i64)).collect();
            let rebuilt = recorded_rows("K1", &whole, &recorded, facts_of("K1", &whole).as_ref()).unwrap().rows;

            let mut stepped = Vec::new();
            let mut written_facts = None;
            let mut step_start = 0;
            for end in 1..=total {
                if end < total && !step_ends[end - 1] {
                    continue;
                }
                let mut so_far = whole.clone();
                so_far.truncate(end);
                let now = facts_of("K1", &so_far);
                let step = recorded_rows("K1", &so_far, &recorded[step_start..end], now.as_ref()).unwrap();
                stepped.extend(step.rows);
                if let Some(stored) = step.changed_facts {
                    written_facts = Some(stored);
                }
                // The facts row, written or left, holds the facts after the step.
                proptest::prop_assert_eq!(written_facts.as_deref().and_then(decode), now);
                step_start = end;
            }
            proptest::prop_assert_eq!(&stepped, &rebuilt);
            for (i, &instant) in recorded.iter().enumerate() {
                let mut by_then = whole.clone();
                by_then.truncate(i + 1);
                proptest::prop_assert_eq!(facts_at(&stepped, instant), Some(facts_of("K1", &by_then)));
            }
        }
    }
}
