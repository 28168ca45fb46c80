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
