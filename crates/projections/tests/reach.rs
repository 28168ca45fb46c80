//! Leaving out the cases a query cannot count (by their reach), or counting them in several
//! shares on several threads, changes no figure.

#![allow(clippy::unwrap_used)]

mod common;

use caselog_calendar::WorkingCalendar;
use caselog_projections::metrics::Settings;
use caselog_projections::metrics::compute_parallel;
use caselog_projections::{CaseFacts, Dimension, MetricId, MetricsQuery, Period, compute};
use chrono::NaiveDate;

fn national_history() -> Vec<CaseFacts> {
    common::folded_workload(
        9,
        NaiveDate::from_ymd_opt(2021, 1, 4).unwrap(),
        NaiveDate::from_ymd_opt(2025, 6, 30).unwrap(),
        6.0,
    )
}

#[test]
fn cases_out_of_reach_of_a_query_do_not_change_its_figures() {
    let cases = national_history();
    assert!(cases.len() > 5_000);
    let calendar = WorkingCalendar::england_and_wales();
    let mut periods: Vec<(Period, Option<NaiveDate>)> = (2020..=2025)
        .map(|year| (Period::financial_year(year).unwrap(), None))
        .collect();
    periods.push((Period::month(2023, 2).unwrap(), None));
    periods.push((Period::financial_quarter(2022, 3).unwrap(), None));
    periods.push((
        Period::financial_year(2022).unwrap(),
        NaiveDate::from_ymd_opt(2024, 9, 30),
    ));
    for (period, snapshot) in periods {
        for group_by in [vec![], vec![Dimension::ServiceArea, Dimension::LawType]] {
            let query = MetricsQuery {
                metrics: MetricId::ALL.to_vec(),
                period: period.clone(),
                snapshot,
                group_by,
                filters: vec![],
                suppress_small_numbers: false,
                settings: Settings::default(),
            };
            let all = compute(&query, &cases, calendar).unwrap();
            let reachable: Vec<&CaseFacts> = cases.iter().filter(|c| query.may_count(&c.reach())).collect();
            assert!(reachable.len() < cases.len(), "{}: nothing was left out", period.label);
            let parallel = compute_parallel(&query, &reachable, calendar, 3).unwrap();
            let pruned = compute(&query, reachable, calendar).unwrap();
            assert_eq!(all, pruned, "{} snapshot {snapshot:?}", period.label);
            assert_eq!(all, parallel, "counted in three shares: {}", period.label);
        }
    }
}

/// A suppressed answer counts its table's cells once and rolls the totals up from them: every
/// figure it shows, of every metric (W1's caseloads and T6's working weeks included), is the
/// figure a direct count gives.
#[test]
fn suppressed_tables_show_the_figures_of_a_direct_count() {
    let cases = national_history();
    let calendar = WorkingCalendar::england_and_wales();
    let references: Vec<&CaseFacts> = cases.iter().collect();
    for (group_by, filters) in [
        (vec![Dimension::ServiceArea], vec![]),
        (vec![Dimension::LawType], vec![]),
        (
            vec![],
            vec![(Dimension::AgeBand, vec!["5_9".to_owned(), "10_15".to_owned()])],
        ),
        (
            vec![Dimension::Court],
            vec![(Dimension::LawType, vec!["public".to_owned()])],
        ),
    ] {
        let query = MetricsQuery {
            metrics: MetricId::ALL.to_vec(),
            period: Period::financial_year(2023).unwrap(),
            snapshot: None,
            group_by,
            filters,
            suppress_small_numbers: true,
            settings: Settings::default(),
        };
        let direct = MetricsQuery {
            suppress_small_numbers: false,
            ..query.clone()
        };
        let suppressed = compute_parallel(&query, &references, calendar, 2).unwrap();
        let counted = compute(&direct, &cases, calendar).unwrap();
        let mut shown = 0;
        for (s, d) in suppressed.iter().zip(&counted) {
            for row in s.rows.iter().filter(|r| !r.suppressed) {
                let same = d.rows.iter().find(|r| r.group == row.group);
                let (numerator, denominator) = same.map_or((0.0, 0.0), |r| (r.numerator, r.denominator));
                assert_eq!(
                    (row.numerator, row.denominator),
                    (numerator, denominator),
                    "{:?} {:?}",
                    s.metric,
                    row.group
                );
                shown += 1;
            }
        }
        assert!(shown >= 20, "{query:?}: only {shown} figures shown");
    }
}
