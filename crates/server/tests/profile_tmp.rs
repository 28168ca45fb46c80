#![allow(clippy::unwrap_used)]
use caselog_projections::metrics::Settings;
use caselog_projections::{Dimension, MetricId, MetricsQuery, Period, compute};
use caselog_server::generate::{GenerateOptions, write_ndjson};
use caselog_workload::WorkloadSettings;
use chrono::NaiveDate;

#[test]
fn profile_compute() {
    let options = GenerateOptions {
        workload: WorkloadSettings {
            seed: 1,
            first_day: NaiveDate::from_ymd_opt(2025, 11, 24).unwrap(),
            last_day: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
            cases_per_working_day: 220.0,
        },
        resend_rate: 0.0,
    };
    let generated = write_ndjson(&options, &mut std::io::sink()).unwrap();
    let query = MetricsQuery {
        metrics: MetricId::ALL.to_vec(),
        period: Period::financial_year(2025).unwrap(),
        snapshot: None,
        group_by: vec![Dimension::ServiceArea],
        filters: vec![],
        suppress_small_numbers: false,
        settings: Settings::default(),
    };
    let cal = caselog_calendar::WorkingCalendar::england_and_wales();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        for _ in 0..10 {
            compute(&query, &generated.facts, cal).unwrap();
        }
        eprintln!("compute: {:.1} ms per query over {} cases", t.elapsed().as_secs_f64() * 100.0, generated.facts.len());
    }
}
