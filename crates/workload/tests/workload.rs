//! The generator is deterministic and produces only histories the lifecycle accepts.

#![allow(clippy::unwrap_used)]

use caselog_calendar::WorkingCalendar;
use caselog_domain::CaseHistory;
use caselog_domain::interchange::to_line;
use caselog_workload::{WorkloadSettings, generate};
use chrono::NaiveDate;

fn settings(seed: u64) -> WorkloadSettings {
    WorkloadSettings {
        seed,
        first_day: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
        last_day: NaiveDate::from_ymd_opt(2025, 6, 30).unwrap(),
        cases_per_working_day: 5.0,
    }
}

fn lines(seed: u64) -> Vec<String> {
    let mut out = Vec::new();
    generate(&settings(seed), WorkingCalendar::england_and_wales(), |case| {
        out.extend(case.iter().map(|e| to_line(&e.case_id, &e.event)));
    });
    out
}

#[test]
fn the_same_seed_gives_the_same_output() {
    let a = lines(42);
    assert!(a.len() > 10_000, "{} lines", a.len());
    assert_eq!(a, lines(42));
    assert_ne!(a, lines(43));
}

#[test]
fn every_generated_case_is_accepted_in_its_recording_order() {
    let last_day = settings(1).last_day;
    let (mut cases, mut late) = (0, 0);
    generate(&settings(1), WorkingCalendar::england_and_wales(), |case| {
        cases += 1;
        let events: Vec<_> = case.iter().map(|e| e.event.clone()).collect();
        CaseHistory::default()
            .decide(&events, last_day)
            .unwrap_or_else(|e| panic!("{}: {e}", case[0].case_id));
        assert!(case.windows(2).all(|w| w[0].recorded_on <= w[1].recorded_on));
        late += case
            .windows(2)
            .filter(|w| w[1].event.occurred_on < w[0].event.occurred_on)
            .count();
    });
    assert!(cases > 1000);
    assert!(late > 0, "some events are recorded out of date order, as in real feeds");
}
