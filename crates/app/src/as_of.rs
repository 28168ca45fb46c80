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
/// which extends it as it refreshes), arranged by the copy: `by_case[i]` is the span of the
/// copy's `i`th case (`None`: not known yet, and the case is folded to be sure), and the few
/// cases with events but no facts (no `case_issued`, or it was voided) are kept by id. An
/// `as_of` walks the spans in sequence beside the cases, and no second map of half a million
/// ids is held.
#[derive(Debug, Default, Clone)]
pub(crate) struct RecordedSpans {
    position: Position,
    by_case: Vec<Option<Span>>,
    without_facts: HashMap<Arc<str>, Span, foldhash::quality::RandomState>,
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
    /// `spans`, covering the log up to `position`, arranged for a copy of `cases` cases in
    /// which `place` finds a case's index.
    pub fn arranged<Id: AsRef<str> + Into<Arc<str>>>(
        spans: impl IntoIterator<Item = (Id, Span)>,
        position: Position,
        cases: usize,
        place: impl Fn(&str) -> Option<usize>,
    ) -> RecordedSpans {
        let mut arranged = RecordedSpans {
            position,
            by_case: vec![None; cases],
            without_facts: HashMap::default(),
        };
        for (case_id, span) in spans {
            arranged.widen(case_id, span, &place);
        }
        arranged
    }

    fn widen<Id: AsRef<str> + Into<Arc<str>>>(
        &mut self,
        case_id: Id,
        span: Span,
        place: impl Fn(&str) -> Option<usize>,
    ) {
        match place(case_id.as_ref()) {
            Some(i) => {
                if self.by_case.len() <= i {
                    self.by_case.resize(i + 1, None);
                }
                let known = &mut self.by_case[i];
                match known {
                    Some(known) => known.widen(span),
                    None => *known = Some(span),
                }
            }
            None => match self.without_facts.get_mut(case_id.as_ref()) {
                Some(known) => known.widen(span),
                None => {
                    self.without_facts.insert(case_id.into(), span);
                }
            },
        }
    }

    /// The position the spans cover.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Widens the spans with `read`, which covers the log from `self.position()` to `up_to`
    /// (a case new to the spans has all its events there).
    pub fn merge(&mut self, read: ReadSpans, up_to: Position, place: impl Fn(&str) -> Option<usize>) {
        for (case_id, span) in read {
            self.widen(case_id, span, &place);
        }
        self.position = self.position.max(up_to);
    }

    /// The copy took in a case it did not hold, as its last: its span, if it had events
    /// without facts, goes with it, and the id held here is returned to be shared.
    pub fn case_added(&mut self, case_id: &str) -> Option<Arc<str>> {
        match self.without_facts.remove_entry(case_id) {
            Some((held, span)) => {
                self.by_case.push(Some(span));
                Some(held)
            }
            None => {
                self.by_case.push(None);
                None
            }
        }
    }

    /// Marks spans loaded from a snapshot as covering the log up to `position`.
    pub fn covering(mut self, position: Position) -> RecordedSpans {
        self.position = position;
        self
    }

    /// The spans of the copy's cases, in its order.
    pub fn by_case(&self) -> &[Option<Span>] {
        &self.by_case
    }

    /// The cases with events but no facts, with their spans.
    pub fn without_facts(&self) -> impl Iterator<Item = (&Arc<str>, Span)> {
        self.without_facts.iter().map(|(id, span)| (id, *span))
    }

    /// Every case with its span, given the copy's case ids in its order.
    pub fn to_vec<'a>(&self, case_ids: impl Iterator<Item = &'a Arc<str>>) -> Vec<(Arc<str>, Span)> {
        case_ids
            .zip(&self.by_case)
            .filter_map(|(id, span)| span.map(|span| (id, span)))
            .chain(self.without_facts())
            .map(|(id, span)| (id.clone(), span))
            .collect()
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

    /// Spans arranged by a copy's order, merged, and taken along by a case the copy adds, are
    /// the spans of the same events kept by id.
    #[test]
    fn arranged_spans_follow_the_copy() {
        let order = ["A", "B"];
        let place = |id: &str| order.iter().position(|o| *o == id);
        let span = |first, last| Span { first, last };
        let mut spans = RecordedSpans::arranged(
            vec![("A", span(1, 5)), ("C", span(2, 3)), ("A", span(0, 2))],
            Position::ZERO,
            2,
            place,
        );
        assert_eq!(spans.by_case(), &[Some(span(0, 5)), None]);
        spans.merge(
            vec![("B".into(), span(6, 7)), ("C".into(), span(8, 9))],
            Position::ZERO,
            place,
        );
        assert_eq!(spans.by_case(), &[Some(span(0, 5)), Some(span(6, 7))]);
        let held = spans.case_added("C");
        assert_eq!(held.as_deref(), Some("C"));
        assert_eq!(spans.by_case()[2], Some(span(2, 9)));
        assert_eq!(spans.without_facts().count(), 0);
        assert_eq!(spans.case_added("D"), None);
        assert_eq!(spans.by_case()[3], None);
        let ids: Vec<Arc<str>> = ["A", "B", "C", "D"].into_iter().map(Arc::from).collect();
        let mut listed = spans.to_vec(ids.iter());
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            listed,
            vec![
                ("A".into(), span(0, 5)),
                ("B".into(), span(6, 7)),
                ("C".into(), span(2, 9))
            ]
        );
    }
}
