//! Series: one `QueryMetrics` over consecutive periods answers exactly what a query per period
//! would, suppression included, and refuses series it cannot define with field violations.

use caselog_api::v1 as pb;
use caselog_api::v1::metrics_service_client::MetricsServiceClient;
use caselog_tests::*;
use caselog_workload::Rng;
use chrono::NaiveDate;
use pb::period_spec::Kind;
use sqlx::PgPool;
use tonic::Code;

/// Two years of national-shaped history ending 30 September 2025, and the position it ends at.
async fn load_two_years(pool: &PgPool, seed: u64) -> u64 {
    load_history(pool, seed, NaiveDate::from_ymd_opt(2025, 9, 30).unwrap(), 730).await
}

fn request(kind: Kind, periods: u32, min_position: u64, suppress: bool) -> pb::QueryMetricsRequest {
    pb::QueryMetricsRequest {
        metric_ids: vec![
            "T1".into(),
            "T2".into(),
            "T4".into(),
            "S1".into(),
            "E1".into(),
            "D1".into(),
        ],
        period: Some(pb::PeriodSpec { kind: Some(kind) }),
        group_by: vec![pb::Dimension::LawType as i32],
        min_position,
        suppress_small_numbers: suppress,
        periods,
        ..Default::default()
    }
}

async fn ask(
    metrics: &mut MetricsServiceClient<AuthChannel>,
    request: pb::QueryMetricsRequest,
) -> pb::QueryMetricsResponse {
    for _ in 0..200 {
        match metrics.query_metrics(request.clone()).await {
            Ok(response) => return response.into_inner(),
            Err(status) if reason(&status) == "PROJECTION_BEHIND" => continue,
            Err(status) => panic!("query failed: {status:?}"),
        }
    }
    panic!("the projection did not catch up");
}

/// The period `back` steps before the one named by (`kind`, `year`, `index`), as its spec.
fn period_back(kind: u64, year: i32, index: u32, back: u32) -> Kind {
    match kind {
        0 => {
            let months = year * 12 + index as i32 - 1 - back as i32;
            Kind::Month(format!("{:04}-{:02}", months.div_euclid(12), months.rem_euclid(12) + 1))
        }
        1 => {
            let quarters = year * 4 + index as i32 - 1 - back as i32;
            let start = quarters.div_euclid(4);
            Kind::FinancialQuarter(format!(
                "{start}-{:02} Q{}",
                (start + 1) % 100,
                quarters.rem_euclid(4) + 1
            ))
        }
        2 => {
            let quarters = year * 4 + index as i32 - 1 - back as i32;
            Kind::CalendarQuarter(format!("{} Q{}", quarters.div_euclid(4), quarters.rem_euclid(4) + 1))
        }
        _ => {
            let start = year - back as i32;
            Kind::FinancialYear(format!("{start}-{:02}", (start + 1) % 100))
        }
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_series_equals_a_query_per_period_for_random_windows(pool: PgPool) {
    let head = load_two_years(&pool, 11).await;
    let server = TestServer::start(pool.clone()).await;
    let mut metrics = MetricsServiceClient::new(server.channel.clone());
    let mut rng = Rng::new(5);
    for window in 0..10 {
        let kind = rng.next_u64() % 4;
        let (year, index) = match kind {
            0 => (2024 + rng.between(0, 1) as i32, rng.between(1, 12) as u32),
            1 | 2 => (2024, rng.between(1, 4) as u32),
            _ => (2025, 1),
        };
        let count = match kind {
            3 => rng.between(1, 3) as u32,
            _ => rng.between(1, 8) as u32,
        };
        let suppress = window % 2 == 1;
        let series = ask(
            &mut metrics,
            request(period_back(kind, year, index, 0), count, head, suppress),
        )
        .await;
        let mut singles = Vec::new();
        for back in (0..count).rev() {
            let single = ask(
                &mut metrics,
                request(period_back(kind, year, index, back), 1, head, suppress),
            )
            .await;
            singles.extend(single.results);
        }
        assert_eq!(
            series.results, singles,
            "window {window}: kind {kind}, {count} periods ending {year}/{index}, suppressed {suppress}"
        );
        // S1 gives two figures: eight results a period.
        let per_period = series.results.len() / count as usize;
        assert_eq!(per_period, 8, "window {window}");
        let labels: Vec<&str> = series
            .results
            .iter()
            .step_by(per_period)
            .map(|r| r.period_label.as_str())
            .collect();
        let mut firsts: Vec<&str> = series
            .results
            .iter()
            .step_by(per_period)
            .map(|r| r.period_first.as_str())
            .collect();
        assert_eq!(labels.len(), count as usize);
        let ascending = firsts.clone();
        firsts.sort();
        firsts.dedup();
        assert_eq!(firsts, ascending, "oldest period first, each once: {labels:?}");
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_as_of_series_equals_as_of_queries_per_period(pool: PgPool) {
    let head = load_two_years(&pool, 12).await;
    let server = TestServer::start(pool.clone()).await;
    let mut metrics = MetricsServiceClient::new(server.channel.clone());
    ask(&mut metrics, request(Kind::Month("2025-09".into()), 1, head, false)).await;
    let now = chrono::Utc::now();
    let at = prost_types::Timestamp {
        seconds: now.timestamp(),
        nanos: 0,
    };
    let as_of = |kind: Kind, periods: u32| pb::QueryMetricsRequest {
        as_of: Some(at),
        ..request(kind, periods, 0, false)
    };
    let series = ask(&mut metrics, as_of(Kind::FinancialQuarter("2025-26 Q2".into()), 3)).await;
    let mut singles = Vec::new();
    for quarter in ["2024-25 Q4", "2025-26 Q1", "2025-26 Q2"] {
        singles.extend(
            ask(&mut metrics, as_of(Kind::FinancialQuarter(quarter.into()), 1))
                .await
                .results,
        );
    }
    assert_eq!(series.results, singles);
    assert_eq!(series.results[0].period_label, "financial quarter 2024-25 Q4");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn series_it_cannot_define_are_refused_naming_the_field(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let mut metrics = MetricsServiceClient::new(server.channel.clone());
    let custom = Kind::Custom(pb::DateRange {
        first: "2025-01-01".into(),
        last: "2025-01-31".into(),
    });
    let mut with_snapshot = request(Kind::Month("2025-01".into()), 3, 0, false);
    with_snapshot.snapshot_date = "2025-01-31".into();
    let mut also_bad_metric = request(Kind::Month("2025-01".into()), 61, 0, false);
    also_bad_metric.metric_ids.push("T99".into());
    for (bad, fields) in [
        (request(Kind::Month("2025-01".into()), 61, 0, false), vec!["periods"]),
        (request(custom, 2, 0, false), vec!["periods"]),
        (with_snapshot, vec!["snapshot_date"]),
        (also_bad_metric, vec!["metric_ids[6]", "periods"]),
    ] {
        let status = metrics.query_metrics(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_fields(&status), fields, "{status:?}");
    }
    // A series of one is the period alone.
    let one = metrics
        .query_metrics(request(Kind::Month("2025-01".into()), 1, 0, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.results.len(), 8);
    assert!(one.results.iter().all(|r| r.period_label == "month 2025-01"));
}
