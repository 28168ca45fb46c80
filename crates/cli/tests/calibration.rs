//! The generated workload lands near the published reference figures of the metric catalogue
//! (`docs/metrics.md`), at a tenth of the national volume.

#![allow(clippy::unwrap_used)]

use caselog_calendar::WorkingCalendar;
use caselog_cli::generate::{GenerateOptions, write_ndjson};
use caselog_projections::metrics::Settings;
use caselog_projections::{CaseFacts, Dimension, MetricId, MetricsQuery, Period, compute};
use caselog_workload::WorkloadSettings;
use chrono::NaiveDate;

/// A tenth of England's 220 new cases a working day; stocks and volumes are scaled back up.
const SCALE: f64 = 10.0;

fn generated_facts() -> Vec<CaseFacts> {
    let options = GenerateOptions {
        workload: WorkloadSettings {
            seed: 7,
            // Six years before the snapshot, so the long-running tail is in the stock.
            first_day: NaiveDate::from_ymd_opt(2019, 4, 1).unwrap(),
            last_day: NaiveDate::from_ymd_opt(2025, 9, 30).unwrap(),
            cases_per_working_day: 22.0,
        },
        resend_rate: 0.0,
        order: caselog_cli::generate::LineOrder::Case,
    };
    write_ndjson(&options, &mut std::io::sink()).unwrap().facts
}

fn values(facts: &[CaseFacts], metric: MetricId, period: &Period, by_law_type: bool) -> Vec<(String, f64)> {
    let query = MetricsQuery {
        metrics: vec![metric],
        period: period.clone(),
        snapshot: Some(NaiveDate::from_ymd_opt(2025, 3, 31).unwrap()),
        group_by: if by_law_type { vec![Dimension::LawType] } else { vec![] },
        filters: vec![],
        suppress_small_numbers: false,
        settings: Settings::default(),
    };
    compute(&query, facts, WorkingCalendar::england_and_wales())
        .unwrap()
        .into_iter()
        .flat_map(|result| result.rows)
        .map(|row| {
            let group = row.group.get(&Dimension::LawType).cloned().unwrap_or_default();
            (group, row.value.unwrap())
        })
        .collect()
}

fn assert_near(what: &str, actual: f64, reference: f64, tolerance: f64) {
    assert!(
        (actual - reference).abs() <= tolerance,
        "{what}: generated {actual:.1}, reference {reference}, tolerance {tolerance}"
    );
}

#[test]
fn generated_metrics_sit_near_the_reference_figures() {
    let facts = generated_facts();
    let year = Period::financial_year(2024).unwrap();
    let q3 = Period::financial_quarter(2024, 3).unwrap();
    let one = |metric, period: &Period| values(&facts, metric, period, false)[0].1;

    assert_near("T1 mean weeks (s31)", one(MetricId::T1, &q3), 39.0, 3.0);
    assert_near("T2 % within 26 weeks (s31)", one(MetricId::T2, &q3), 34.6, 4.0);
    assert_near("T3 % within 26 weeks (s8)", one(MetricId::T3, &q3), 58.9, 3.0);
    assert_near("E1 % seen in person", one(MetricId::E1, &year), 93.0, 2.0);
    assert_near("E2 % engagement record", one(MetricId::E2, &year), 97.0, 2.0);
    assert_near("T7 % section 7 extended", one(MetricId::T7, &year), 29.8, 4.0);
    for (law_type, value) in values(&facts, MetricId::E3, &year, true) {
        let reference = if law_type == "public" { 62.0 } else { 80.0 };
        assert_near(&format!("E3 % personalised letter ({law_type})"), value, reference, 4.0);
    }
    assert_near("D1 cases", one(MetricId::D1Cases, &year) * SCALE, 55_377.0, 3_000.0);
    assert_near(
        "D1 children",
        one(MetricId::D1Children, &year) * SCALE,
        85_272.0,
        5_000.0,
    );
    // A steady state cannot meet T1, T3 and both stocks at once (Little's law): the open stock
    // runs up to a tenth above its reference while the long-running stock meets its own.
    assert_near(
        "S1 open cases",
        one(MetricId::S1Cases, &year) * SCALE,
        27_529.0,
        3_500.0,
    );
    assert_near(
        "S2 children over 52 weeks",
        one(MetricId::S2ChildrenOver52, &year) * SCALE,
        8_143.0,
        1_000.0,
    );
    assert_near(
        "S2 children over 100 weeks",
        one(MetricId::S2ChildrenOver100, &year) * SCALE,
        2_195.0,
        500.0,
    );
}
