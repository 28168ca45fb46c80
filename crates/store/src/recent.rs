//! The rows this process committed lately, held for its projection leader, which would
//! otherwise read each of them back from PostgreSQL moments after writing it. During a bulk load
//! that read-back was a quarter of the service's processor and a part of PostgreSQL's
//! (docs/benchmarks.md, "The projection reads its own appends from memory").
//!
//! A page is served from here only when the held rows cover every position after the reader's
//! cursor without a gap. A position is taken by at most one row, ever, so a committed row held
//! for each position up to `to` means no other row can appear at or below `to`: the question
//! the feed's horizon answers for a read from the log is answered already. Anything else (a
//! rolled-back append, another process's append, a row whose append has not published it yet,
//! a row refused for lack of room) leaves a gap. A gap that the horizon shows still in flight
//! ends the page here: the log could not read past it either. So does a gap while an append of
//! this process has not published its rows yet (it may have committed them a moment ago).
//! Concurrent `COPY`s interleave their positions, so during a bulk load nearly every run stops
//! at such a gap, and reading those pages from the log again took about 6% of this process's
//! processor (docs/benchmarks.md). Any other gap sends the reader to the log, which
//! is always right.
//!
//! Rows are held only while this process leads the projections ([`crate::projection::Leadership`]
//! enables and disables it): a follower would hold rows nobody takes.

use crate::feed::ProjectedRow;
use caselog_domain::Position;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The most memory the held rows may take (about 65,000 events of a bulk load). A projection
/// that falls this far behind reads from the log, as it would anyway.
pub(crate) const RECENT_ROWS_BUDGET_BYTES: usize = 16 << 20;

#[derive(Debug)]
pub(crate) struct RecentRows {
    enabled: AtomicBool,
    /// Appends of this process between the start of their statement and their publishing.
    on_the_way: AtomicUsize,
    held: Mutex<Held>,
    budget_bytes: usize,
}

#[derive(Debug, Default)]
struct Held {
    rows: BTreeMap<Position, ProjectedRow>,
    bytes: usize,
}

impl RecentRows {
    pub(crate) fn new(budget_bytes: usize) -> RecentRows {
        RecentRows {
            enabled: AtomicBool::new(false),
            on_the_way: AtomicUsize::new(0),
            held: Mutex::new(Held::default()),
            budget_bytes,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // A panic while holding the lock leaves whole rows or none: the map stays usable.
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts holding rows (empty: what was committed before is read from the log).
    pub(crate) fn enable(&self) {
        let mut held = self.held();
        *held = Held::default();
        self.enabled.store(true, Ordering::Release);
    }

    /// Stops holding rows and forgets those held.
    pub(crate) fn disable(&self) {
        self.enabled.store(false, Ordering::Release);
        *self.held() = Held::default();
    }

    /// Holds committed rows. `rows` is called only while rows are wanted, so a follower builds
    /// none. Rows that do not fit are left out (a gap the reader fills from the log).
    pub(crate) fn publish(&self, rows: impl FnOnce() -> Vec<ProjectedRow>) {
        if !self.enabled.load(Ordering::Acquire) {
            return;
        }
        let rows = rows();
        let mut held = self.held();
        for row in rows {
            let weight = weight_of(&row);
            if held.bytes + weight > self.budget_bytes {
                break;
            }
            held.bytes += weight;
            if let Some(replaced) = held.rows.insert(row.position, row) {
                held.bytes -= weight_of(&replaced);
            }
        }
    }

    /// Counts an append of this process from before its statement until the returned guard is
    /// dropped, after the append has published its rows or failed.
    pub(crate) fn expect_rows(&self) -> RowsOnTheWay<'_> {
        self.on_the_way.fetch_add(1, Ordering::AcqRel);
        RowsOnTheWay(&self.on_the_way)
    }

    /// Whether an append of this process may yet publish rows: a gap in the held rows may be
    /// its, committed a moment before its rows are published here.
    pub(crate) fn rows_on_the_way(&self) -> bool {
        self.on_the_way.load(Ordering::Acquire) > 0
    }

    /// Takes the held rows after `after`, in position order, while every next position is held,
    /// up to `limit`. A run that stops short of `limit` at a gap, with rows held beyond it, is
    /// taken only when `take_short_run` says so; otherwise the gap is offered instead, for the
    /// reader to decide with the horizon (see [`crate::EventLog::read_all_projected`]). Rows at or
    /// below `after` are forgotten (the reader has passed them). A row is handed out once.
    pub(crate) fn take_after(&self, after: Position, limit: usize, take_short_run: bool) -> Offer {
        if !self.enabled.load(Ordering::Acquire) || limit == 0 {
            return Offer::Nothing;
        }
        let mut held = self.held();
        let Held { rows, bytes } = &mut *held;
        let kept = rows.split_off(&after.saturating_add(1));
        for passed in std::mem::replace(rows, kept).into_values() {
            *bytes -= weight_of(&passed);
        }
        let run = rows
            .keys()
            .take(limit)
            .zip(1u64..)
            .take_while(|(position, offset)| **position == after.saturating_add(*offset))
            .count();
        if run == 0 {
            return Offer::Nothing;
        }
        if run < limit && run < rows.len() && !take_short_run {
            return Offer::StopsShortAt(after.saturating_add(run as u64 + 1));
        }
        let mut page = Vec::with_capacity(run);
        while page.len() < run {
            let Some((_, row)) = rows.pop_first() else {
                break;
            };
            *bytes -= weight_of(&row);
            page.push(row);
        }
        Offer::Page(page)
    }
}

/// An append counted by [`RecentRows::expect_rows`] until dropped.
pub(crate) struct RowsOnTheWay<'a>(&'a AtomicUsize);

impl Drop for RowsOnTheWay<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the held rows offer a reader at its cursor.
#[derive(Debug, PartialEq)]
pub(crate) enum Offer {
    /// The unbroken run of held rows right after the cursor, taken.
    Page(Vec<ProjectedRow>),
    /// The run right after the cursor stops short of the limit at this position, which is not
    /// held, while rows beyond it are. Nothing was taken.
    StopsShortAt(Position),
    /// The position right after the cursor is not held (or rows are not being held).
    Nothing,
}

/// What a held row costs: its strings and the map's share.
fn weight_of(row: &ProjectedRow) -> usize {
    std::mem::size_of::<ProjectedRow>()
        + 32
        + row.event.case_id.len()
        + row.event.event_type.len()
        + row.event.data.len()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ReplayRow;
    use caselog_domain::{EventId, Version};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn row(position: u64) -> ProjectedRow {
        ProjectedRow {
            position: Position::saturating_from(position),
            event: ReplayRow {
                case_id: format!("C-{}", position % 7),
                event_id: EventId::from(uuid::Uuid::from_u128(u128::from(position))),
                version: Version::ZERO.after(1).unwrap(),
                event_type: "hearing_listed".into(),
                occurred_on: chrono::NaiveDate::from_ymd_opt(2025, 5, 1).unwrap(),
                data: r#"{"hearing_type":"cmh","listed_for":"2025-07-01"}"#.into(),
                recorded_at: chrono::DateTime::UNIX_EPOCH,
            },
        }
    }

    fn positions(page: &[ProjectedRow]) -> Vec<u64> {
        page.iter().map(|r| r.position.get()).collect()
    }

    fn still_held(recent: &RecentRows) -> Vec<u64> {
        recent.held().rows.keys().map(|p| p.get()).collect()
    }

    fn page(offer: Offer) -> Vec<u64> {
        match offer {
            Offer::Page(rows) => positions(&rows),
            other => panic!("expected a page, got {other:?}"),
        }
    }

    #[test]
    fn a_follower_holds_nothing_and_a_gap_sends_the_reader_to_the_log() {
        let recent = RecentRows::new(RECENT_ROWS_BUDGET_BYTES);
        recent.publish(|| vec![row(1)]);
        assert_eq!(
            recent.take_after(Position::ZERO, 10, true),
            Offer::Nothing,
            "not enabled"
        );
        recent.enable();
        recent.publish(|| vec![row(2), row(3), row(5)]);
        assert_eq!(
            recent.take_after(Position::ZERO, 10, true),
            Offer::Nothing,
            "position 1 is not held"
        );
        assert_eq!(
            recent.take_after(Position::saturating_from(1), 10, false),
            Offer::StopsShortAt(Position::saturating_from(4)),
            "2 and 3, then a gap at 4 with 5 beyond it: the reader decides"
        );
        assert_eq!(still_held(&recent), [2, 3, 5], "nothing taken");
        assert_eq!(
            page(recent.take_after(Position::saturating_from(1), 2, false)),
            [2, 3],
            "a full page"
        );
        assert_eq!(still_held(&recent), [5]);
        recent.publish(|| vec![row(6), row(8)]);
        assert_eq!(
            page(recent.take_after(Position::saturating_from(4), 10, true)),
            [5, 6],
            "the run before the gap at 7, taken when the reader says so"
        );
        assert_eq!(still_held(&recent), [8]);
        assert_eq!(
            page(recent.take_after(Position::saturating_from(7), 10, false)),
            [8],
            "a run to the last held row is a page"
        );
        recent.disable();
        recent.publish(|| vec![row(9)]);
        assert_eq!(
            recent.take_after(Position::saturating_from(8), 10, true),
            Offer::Nothing
        );
    }

    #[test]
    fn rows_are_on_the_way_while_any_append_holds_its_guard() {
        let recent = RecentRows::new(RECENT_ROWS_BUDGET_BYTES);
        assert!(!recent.rows_on_the_way());
        let first = recent.expect_rows();
        let second = recent.expect_rows();
        drop(first);
        assert!(recent.rows_on_the_way(), "the second append is still on its way");
        drop(second);
        assert!(!recent.rows_on_the_way());
    }

    #[test]
    fn rows_beyond_the_budget_are_left_out_and_taken_rows_free_it() {
        let one = weight_of(&row(1));
        let recent = RecentRows::new(3 * one);
        recent.enable();
        recent.publish(|| (1..=5).map(row).collect());
        assert_eq!(page(recent.take_after(Position::ZERO, 10, false)), [1, 2, 3]);
        assert_eq!(still_held(&recent), Vec::<u64>::new());
        assert_eq!(recent.held().bytes, 0);
        recent.publish(|| (4..=5).map(row).collect());
        assert_eq!(page(recent.take_after(Position::saturating_from(3), 10, false)), [4, 5]);
    }

    proptest! {
        /// Whatever was published, in whatever order, a page is exactly the run of held
        /// positions right after the cursor (up to the limit); a run that stops short of the
        /// limit at a gap, with rows beyond it, is offered as that gap unless the short run is
        /// wanted; and what is left is what was held beyond the page.
        #[test]
        fn a_page_is_the_unbroken_run_after_the_cursor(
            published in proptest::collection::vec(proptest::collection::vec(1u64..60, 0..12), 0..6),
            cursor in 0u64..40,
            limit in 1usize..30,
            take_short_run: bool,
        ) {
            let recent = RecentRows::new(RECENT_ROWS_BUDGET_BYTES);
            recent.enable();
            let mut held = BTreeSet::new();
            for batch in &published {
                recent.publish(|| batch.iter().copied().map(row).collect());
                held.extend(batch.iter().copied());
            }
            let mut run = Vec::new();
            while run.len() < limit && held.contains(&(cursor + 1 + run.len() as u64)) {
                run.push(cursor + 1 + run.len() as u64);
            }
            let beyond = held.iter().filter(|p| **p > cursor).count() > run.len();
            let gap = cursor + 1 + run.len() as u64;
            let offer = recent.take_after(Position::saturating_from(cursor), limit, take_short_run);
            let taken = match offer {
                Offer::Nothing => {
                    prop_assert!(run.is_empty());
                    Vec::new()
                }
                Offer::StopsShortAt(at) => {
                    prop_assert!(!run.is_empty() && run.len() < limit && beyond && !take_short_run);
                    prop_assert_eq!(at.get(), gap);
                    Vec::new()
                }
                Offer::Page(rows) => {
                    prop_assert!(!run.is_empty() && (run.len() == limit || !beyond || take_short_run));
                    prop_assert_eq!(positions(&rows), run.clone());
                    run.clone()
                }
            };
            let left: Vec<u64> = held.iter().copied().filter(|p| *p > cursor && !taken.contains(p)).collect();
            prop_assert_eq!(still_held(&recent), left);
            let bytes: usize = recent.held().rows.values().map(weight_of).sum();
            prop_assert_eq!(recent.held().bytes, bytes);
        }
    }
}
