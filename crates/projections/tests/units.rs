//! Drill-down: the units `units_of` lists for a figure add up to the figure `compute` gives,
//! for every figure of the catalogue, random national workloads, periods and groups; and each
//! unit carries the dates its rule used.

#![allow(clippy::unwrap_used)]

mod common;

use caselog_calendar::WorkingCalendar;
use caselog_projections::metrics::Settings;
use caselog_projections::{CaseFacts, Dimension, MetricId, MetricsQuery, Period, compute, units_of};
use chrono::NaiveDate;
use proptest::prelude::*;

fn folded(seed: u64, days: u64) -> Vec<CaseFacts> {
    let first_day = NaiveDate::from_ymd_opt(2023, 1, 2).unwrap();
    common::folded_workload(seed, first_day, first_day + chrono::Days::new(days), 4.0)
}

fn query(metric: MetricId, period: Period, filters: Vec<(Dimension, Vec<String>)>) -> MetricsQuery {
    MetricsQuery {
        metrics: vec![metric],
        period,
        snapshot: None,
        group_by: Vec::new(),
        filters,
        suppress_small_numbers: false,
        settings: Settings::default(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn the_units_of_a_figure_add_up_to_it(
        seed in 0u64..10_000,
        days in 200u64..700,
        month in 0u32..24,
        quarter in any::<bool>(),
        area in proptest::option::of(proptest::sample::select(vec!["A1", "A3", "A5", "A9", "A13"])),
        public in proptest::option::of(any::<bool>()),
    ) {
        let cases = folded(seed, days);
        let calendar = WorkingCalendar::england_and_wales();
        let period = if quarter {
            Period::financial_quarter(2023, 1 + month % 4).unwrap()
        } else {
            Period::month(2023 + (month / 12) as i32, 1 + month % 12).unwrap()
        };
        let mut filters = Vec::new();
        if let Some(area) = area {
            filters.push((Dimension::ServiceArea, vec![area.to_owned()]));
        }
        if let Some(public) = public {
            filters.push((Dimension::LawType, vec![if public { "public" } else { "private" }.to_owned()]));
        }
        for metric in MetricId::ALL {
            let asked = query(metric, period.clone(), filters.clone());
            let (units, figure) = units_of(&asked, &cases, calendar).unwrap();
            let computed = compute(&asked, &cases, calendar).unwrap();
            prop_assert_eq!(&figure, &computed[0], "{}", metric.id());
            // T6-T8 are split by report type: the units are those of every row.
            let numerator: f64 = figure.rows.iter().map(|r| r.numerator).sum();
            let denominator: f64 = figure.rows.iter().map(|r| r.denominator).sum();
            let listed: f64 = units.iter().map(|u| u.numerator).sum();
            prop_assert!((listed - numerator).abs() < 1e-6 * numerator.abs().max(1.0),
                "{}: units add up to {listed}, the figure's numerator is {numerator}", metric.id());
            if metric != MetricId::D2 {
                let listed: f64 = units.iter().map(|u| u.denominator).sum();
                prop_assert_eq!(listed, denominator, "{}", metric.id());
            }
            for unit in &units {
                let is_practitioner = metric.id().starts_with("W1");
                prop_assert_eq!(unit.practitioner_id.is_some(), is_practitioner);
                prop_assert_eq!(unit.case_id.is_some(), !is_practitioner);
                prop_assert_eq!(unit.child_id.is_some(), metric.unit() == "child", "{}", metric.id());
                prop_assert_eq!(unit.report_id.is_some(), metric.unit() == "report", "{}", metric.id());
                prop_assert!(is_practitioner || !unit.dates.is_empty(), "{} lists no dates", metric.id());
            }
        }
    }
}

#[test]
fn a_child_seen_on_time_is_listed_with_its_deadline_and_visit() {
    let cases = folded(7, 400);
    let calendar = WorkingCalendar::england_and_wales();
    let period = Period::financial_year(2023).unwrap();
    let (units, figure) = units_of(&query(MetricId::T4, period, Vec::new()), &cases, calendar).unwrap();
    assert!(figure.rows[0].denominator > 50.0, "{figure:?}");
    for unit in &units {
        let date = |name: &str| unit.dates.iter().find(|(n, _)| *n == name).map(|(_, d)| *d);
        let allocated = date("first_lead_allocation").unwrap();
        let deadline = date("deadline").unwrap();
        assert_eq!(deadline, calendar.add_working_days(allocated, 15).unwrap());
        let met = unit.numerator == 1.0;
        assert_eq!(met, date("first_seen").is_some_and(|seen| seen <= deadline), "{unit:?}");
    }
}

#[test]
fn units_are_listed_for_one_ungrouped_figure_only() {
    let calendar = WorkingCalendar::england_and_wales();
    let period = Period::month(2024, 1).unwrap();
    let mut two = query(MetricId::T4, period.clone(), Vec::new());
    two.metrics.push(MetricId::T5);
    assert!(units_of(&two, &[], calendar).is_err());
    let mut grouped = query(MetricId::T4, period, Vec::new());
    grouped.group_by.push(Dimension::ServiceArea);
    assert!(units_of(&grouped, &[], calendar).is_err());
}
