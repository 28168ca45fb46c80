//! What the projection tests share: case facts folded from a generated national workload.

use caselog_calendar::WorkingCalendar;
use caselog_domain::{CaseHistory, HistoryEvent};
use caselog_projections::{CaseFacts, facts_of};
use caselog_workload::{WorkloadSettings, generate};
use chrono::NaiveDate;

/// The facts of every case the generator issues from `first_day` to `last_day` at
/// `cases_per_working_day`, folded as the projector folds them.
pub fn folded_workload(
    seed: u64,
    first_day: NaiveDate,
    last_day: NaiveDate,
    cases_per_working_day: f64,
) -> Vec<CaseFacts> {
    let settings = WorkloadSettings {
        seed,
        first_day,
        last_day,
        cases_per_working_day,
    };
    let mut facts = Vec::new();
    generate(&settings, WorkingCalendar::england_and_wales(), |case| {
        let history = CaseHistory::new(case.iter().map(|e| HistoryEvent::from(&e.event)).collect());
        facts.extend(facts_of(&case[0].case_id, &history));
    });
    facts
}
