//! The read model holds case facts as they come back from their stored JSON, with codes shared
//! between cases (`SharedCodes`): that form counts exactly as the facts straight from the fold,
//! and writes back the same JSON, for random national workloads and questions. Its snapshots'
//! compact encoding (postcard) gives back the same facts.

#![allow(clippy::unwrap_used)]

mod common;

use caselog_calendar::WorkingCalendar;
use caselog_projections::metrics::Settings;
use caselog_projections::{CaseFacts, Dimension, MetricId, MetricsQuery, Period, SharedCodes, compute};
use chrono::{Datelike, NaiveDate};
use proptest::prelude::*;

fn folded(seed: u64, first_day: NaiveDate, days: u64) -> Vec<CaseFacts> {
    common::folded_workload(seed, first_day, first_day + chrono::Days::new(days), 3.0)
}

/// What the read model does with each stored row.
fn as_held(facts: &[CaseFacts], shared: &mut SharedCodes) -> Vec<CaseFacts> {
    facts
        .iter()
        .map(|f| {
            let mut held: CaseFacts = serde_json::from_str(&serde_json::to_string(f).unwrap()).unwrap();
            held.share_codes(shared);
            held
        })
        .collect()
}

const DIMENSIONS: [Dimension; 4] = [
    Dimension::LawType,
    Dimension::ServiceArea,
    Dimension::Court,
    Dimension::LocalAuthority,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn facts_as_held_count_as_folded(
        seed in 0u64..1_000,
        start_offset in 0u64..700,
        days in 60u64..500,
        month in 0u32..30,
        grouping in proptest::sample::subsequence(DIMENSIONS.to_vec(), 0..=2),
        suppress in any::<bool>(),
    ) {
        let first_day = NaiveDate::from_ymd_opt(2021, 1, 4).unwrap() + chrono::Days::new(start_offset);
        let straight = folded(seed, first_day, days);
        let mut shared = SharedCodes::default();
        let held = as_held(&straight, &mut shared);
        prop_assert_eq!(&held, &straight);
        prop_assert!(straight.is_empty() || shared.len() < straight.len() * 3, "codes are shared, not copied");
        for (a, b) in held.iter().zip(&straight) {
            prop_assert_eq!(serde_json::to_string(a).unwrap(), serde_json::to_string(b).unwrap());
        }
        let from_snapshot: Vec<CaseFacts> = postcard::from_bytes(&postcard::to_stdvec(&held).unwrap()).unwrap();
        prop_assert_eq!(&from_snapshot, &straight);
        let month_start = first_day + chrono::Months::new(month % 18);
        for period in [
            Period::month(month_start.year_ce().1 as i32, month_start.month0() + 1).unwrap(),
            Period::financial_year(first_day.year_ce().1 as i32).unwrap(),
        ] {
            let query = MetricsQuery {
                metrics: MetricId::ALL.to_vec(),
                period,
                snapshot: None,
                group_by: grouping.clone(),
                filters: vec![],
                suppress_small_numbers: suppress,
                settings: Settings::default(),
            };
            let calendar = WorkingCalendar::england_and_wales();
            // A refused question (suppression refuses some cross-classifications) is refused alike.
            prop_assert_eq!(compute(&query, &held, calendar), compute(&query, &straight, calendar));
        }
    }
}

/// A snapshot whose child records claim more dates than it holds is refused, not sliced.
#[test]
fn a_compact_child_whose_record_ends_overrun_its_dates_is_refused() {
    use caselog_projections::facts::ChildFacts;
    let packed = |ends: [u32; 6]| {
        postcard::to_stdvec(&("c1", "2019-06", None::<i32>, vec![738_000_i32, 738_001], ends)).unwrap()
    };
    let fits: ChildFacts = postcard::from_bytes(&packed([1, 1, 2, 2, 2, 2])).unwrap();
    assert_eq!(fits.seen_in_person().len(), 1);
    assert_eq!(fits.engagement_records().len(), 1);
    for overrun in [[0, 0, 0, 0, 0, 5], [2, 1, 2, 2, 2, 2], [0, 0, 0, 0, 0, 1]] {
        assert!(
            postcard::from_bytes::<ChildFacts>(&packed(overrun)).is_err(),
            "{overrun:?}"
        );
    }
}
