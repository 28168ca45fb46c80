//! What an `as_of` answer must fold again. The facts of a case at an instant are the fold of its
//! events recorded by then, so a case whose events were all recorded by the instant has today's
//! facts, and a case whose first event was recorded after it did not exist; only the cases with
//! events on both sides are folded again from the log. Each case's first and last recording
//! instants are held here, read once from the log and then only for the events added since.

use caselog_domain::Position;
use caselog_store::EventLog;
use std::collections::HashMap;
use std::sync::Arc;

/// The first and last recording instants of a case's events, in microseconds since the epoch
/// (what PostgreSQL stores, so comparisons here agree with `recorded_at <= $1` there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Every case's [`Span`] over the log up to a position.
#[derive(Debug, Default)]
pub(crate) struct RecordedSpans {
    /// The position the spans cover; `None` before the first read.
    position: Option<Position>,
    spans: HashMap<Arc<str>, Span>,
}

impl RecordedSpans {
    /// Extends the spans to cover the log up to `up_to`: the whole log the first time, then only
    /// the events added since. Every event at or below `up_to` must be committed (a projection's
    /// checkpoint is). `held_id` gives the read model's copy of a case id, to share it.
    pub async fn advance(
        &mut self,
        log: &EventLog,
        up_to: Position,
        held_id: impl Fn(&str) -> Option<Arc<str>>,
    ) -> Result<(), caselog_store::Error> {
        if self.position.is_some_and(|at| at >= up_to) {
            return Ok(());
        }
        let spans = &mut self.spans;
        log.recorded_spans(self.position, up_to, |case_id, first, last| {
            let span = Span { first, last };
            match spans.get_mut(case_id.as_str()) {
                Some(known) => known.widen(span),
                None => {
                    spans.insert(held_id(&case_id).unwrap_or_else(|| case_id.into()), span);
                }
            }
        })
        .await?;
        self.position = Some(up_to);
        Ok(())
    }

    pub fn get(&self, case_id: &str) -> Option<Span> {
        self.spans.get(case_id).copied()
    }

    /// Every case with its span.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Span)> {
        self.spans.iter().map(|(id, span)| (&**id, *span))
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
