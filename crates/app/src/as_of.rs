//! What an `as_of` answer must fold again. The facts of a case at an instant are the fold of its
//! events recorded by then, so a case whose events were all recorded by the instant has today's
//! facts, and a case whose first event was recorded after it did not exist; only the cases with
//! events on both sides are folded again from the log. Each case's first and last recording
//! instants are held here, read once from the log (or a snapshot) and then only for the events
//! added since.

use caselog_domain::Position;
use caselog_store::EventLog;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// The first and last recording instants of a case's events, in microseconds since the epoch
/// (what PostgreSQL stores, so comparisons here agree with `recorded_at <= $1` there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Span {
    pub first: i64,
    pub last: i64,
}

/// Where a case stands at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtInstant {
    /// Nothing of it was recorded yet.
    NotYet,
    /// Everything of it was recorded by then: its facts then are its facts now.
    Whole,
    /// Some of it was recorded after: fold its events recorded by then.
    Partial,
}

impl Span {
    pub fn at(self, instant_micros: i64) -> AtInstant {
        if self.first > instant_micros {
            AtInstant::NotYet
        } else if self.last <= instant_micros {
            AtInstant::Whole
        } else {
            AtInstant::Partial
        }
    }

    fn widen(&mut self, other: Span) {
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

/// Every case's [`Span`] over the log up to a position (at or beyond the read model's copy,
/// which extends it as it refreshes).
#[derive(Debug, Default, Clone)]
pub(crate) struct RecordedSpans {
    position: Position,
    /// Keyed by case id with a seeded fast hash: ten years are half a million inserts.
    spans: HashMap<Arc<str>, Span, foldhash::quality::RandomState>,
}

/// Spans read from the log, not yet merged into [`RecordedSpans`].
pub(crate) type ReadSpans = Vec<(String, Span)>;

/// The spans of the cases with events above `after` (`None`: from the start) and at or below
/// `up_to`, over those events only. Every event at or below `up_to` must be committed (a
/// projection's checkpoint is).
pub(crate) async fn read_spans(
    log: &EventLog,
    after: Option<Position>,
    up_to: Position,
) -> Result<ReadSpans, caselog_store::Error> {
    let mut read = Vec::new();
    log.recorded_spans(after, up_to, |case_id, first, last| {
        read.push((case_id, Span { first, last }));
    })
    .await?;
    Ok(read)
}

impl RecordedSpans {
    /// The position the spans cover.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Widens the spans with `read`, which covers the log from `self.position()` (or from the
    /// start, for new spans) to `up_to`. `held_id` gives the read model's copy of a case id,
    /// to share it.
    pub fn merge(&mut self, read: ReadSpans, up_to: Position, held_id: impl Fn(&str) -> Option<Arc<str>>) {
        for (case_id, span) in read {
            self.insert(case_id, span, &held_id);
        }
        self.position = self.position.max(up_to);
    }

    pub fn insert(&mut self, case_id: String, span: Span, held_id: impl Fn(&str) -> Option<Arc<str>>) {
        match self.spans.get_mut(case_id.as_str()) {
            Some(known) => known.widen(span),
            None => {
                self.spans
                    .insert(held_id(&case_id).unwrap_or_else(|| case_id.into()), span);
            }
        }
    }

    /// Marks spans loaded from a snapshot as covering the log up to `position`.
    pub fn covering(mut self, position: Position) -> RecordedSpans {
        self.position = position;
        self
    }

    pub fn reserve(&mut self, cases: usize) {
        self.spans.reserve(cases);
    }

    /// The copy of `case_id` held here, to share it.
    pub fn held_id(&self, case_id: &str) -> Option<Arc<str>> {
        self.spans.get_key_value(case_id).map(|(held, _)| held.clone())
    }

    /// Every case with its span, ids shared.
    pub fn to_vec(&self) -> Vec<(Arc<str>, Span)> {
        self.spans.iter().map(|(id, span)| (id.clone(), *span)).collect()
    }

    pub fn get(&self, case_id: &str) -> Option<Span> {
        self.spans.get(case_id).copied()
    }

    /// Every case's id, shared.
    pub fn shared_ids(&self) -> impl Iterator<Item = &Arc<str>> {
        self.spans.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_is_whole_from_its_last_recording_and_absent_before_its_first() {
        let span = Span { first: 10, last: 20 };
        assert_eq!(span.at(9), AtInstant::NotYet);
        assert_eq!(span.at(10), AtInstant::Partial);
        assert_eq!(span.at(19), AtInstant::Partial);
        assert_eq!(span.at(20), AtInstant::Whole);
        let single = Span { first: 10, last: 10 };
        assert_eq!(single.at(9), AtInstant::NotYet);
        assert_eq!(single.at(10), AtInstant::Whole);
    }
}
