//! The board report (RenderReport) and the drill-down (ListMetricUnits): the report holds exactly
//! the figures QueryMetrics gives the same caller, its service-area breakdown exactly what a
//! reporting client gets, an as-of report is the report of that instant, and the units behind a
//! figure add up to it, for those who may see them, every listing audited. The HTML report is
//! loaded in a real headless Chromium with no network requests.

use caselog_api::v1 as pb;
use caselog_api::v1::metrics_service_client::MetricsServiceClient;
use caselog_store::EventLog;
use caselog_tests::*;
use chrono::NaiveDate;
use pb::period_spec::Kind;
use serde_json::Value;
use sqlx::PgPool;
use tonic::Code;

/// Two years of national-shaped history ending 30 September 2025, and the position it ends at.
async fn load_two_years(pool: &PgPool) -> u64 {
    load_history(pool, 23, NaiveDate::from_ymd_opt(2025, 9, 30).unwrap(), 730).await
}

fn quarter(label: &str) -> Option<pb::PeriodSpec> {
    Some(pb::PeriodSpec {
        kind: Some(Kind::FinancialQuarter(label.into())),
    })
}

fn report_request(format: pb::ReportFormat, min_position: u64) -> pb::RenderReportRequest {
    pb::RenderReportRequest {
        period: quarter("2025-26 Q2"),
        format: format as i32,
        min_position,
        ..Default::default()
    }
}

/// Retries while the projection has not reached the position asked for.
macro_rules! answered {
    ($call:expr) => {{
        let mut answer = None;
        for _ in 0..200 {
            match $call.await {
                Ok(response) => {
                    answer = Some(response.into_inner());
                    break;
                }
                Err(status) if reason(&status) == "PROJECTION_BEHIND" => continue,
                Err(status) => panic!("call failed: {status:?}"),
            }
        }
        answer.expect("the projection did not catch up")
    }};
}

async fn json_report(metrics: &mut MetricsServiceClient<AuthChannel>, request: pb::RenderReportRequest) -> Value {
    let response = answered!(metrics.render_report(request.clone()));
    assert_eq!(response.content_type, "application/json");
    serde_json::from_slice(&response.content).unwrap()
}

/// The row of `result` for a report measure: the one of its report type (T6-T8), or the national.
fn row_for<'a>(result: &'a pb::MetricResult, report_type: &Value, area: Option<&str>) -> Option<&'a pb::MetricRow> {
    result.rows.iter().find(|row| {
        let value_of = |dimension: pb::Dimension| {
            row.group
                .iter()
                .find(|g| g.dimension == dimension as i32)
                .map(|g| g.value.as_str())
        };
        value_of(pb::Dimension::ReportType) == report_type.as_str() && value_of(pb::Dimension::ServiceArea) == area
    })
}

fn assert_same_figure(figure: &Value, row: Option<&pb::MetricRow>, what: &str) {
    match row {
        Some(row) => {
            // JSON numbers are read back to within the last digit (serde_json's parser is not
            // exact to the bit); the figures are the same ones.
            let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-12 * a.abs().max(1.0),
                (a, b) => a == b,
            };
            assert!(
                close(figure["numerator"].as_f64(), Some(row.numerator)),
                "{what}: {figure} {row:?}"
            );
            assert!(
                close(figure["denominator"].as_f64(), Some(row.denominator)),
                "{what}: {figure} {row:?}"
            );
            assert!(close(figure["value"].as_f64(), row.value), "{what}: {figure} {row:?}");
            assert_eq!(figure["suppressed"].as_bool(), Some(row.suppressed), "{what}");
            assert_eq!(figure["display"].as_str(), Some(row.display.as_str()), "{what}");
        }
        None => {
            assert_eq!(figure["denominator"].as_f64(), Some(0.0), "{what}: no row, yet counted");
            assert!(figure["value"].is_null(), "{what}");
        }
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn the_report_holds_the_figures_the_api_gives_and_suppresses_as_for_reporting(pool: PgPool) {
    let head = load_two_years(&pool).await;
    let server = TestServer::start(pool.clone()).await;
    for caller in ["reporting", "admin"] {
        let mut metrics = MetricsServiceClient::new(server.channel_with(&dev_token(caller)));
        let report = json_report(&mut metrics, report_request(pb::ReportFormat::Json, head)).await;
        let measures = report["measures"].as_array().unwrap();
        assert_eq!(measures.len(), 27);
        assert_eq!(report["window"].as_array().unwrap().len(), 8, "8 quarters by default");
        assert_eq!(report["period"]["label"], "financial quarter 2025-26 Q2");
        assert_eq!(report["same_period_last_year"], "financial quarter 2024-25 Q2");
        let mut metric_ids: Vec<String> = Vec::new();
        for m in measures {
            let id = m["metric_id"].as_str().unwrap().to_owned();
            if !metric_ids.contains(&id) {
                metric_ids.push(id);
            }
        }
        // The same questions, asked as this caller would ask QueryMetrics.
        let series = answered!(metrics.query_metrics(pb::QueryMetricsRequest {
            metric_ids: metric_ids.clone(),
            period: quarter("2025-26 Q2"),
            periods: 8,
            min_position: head,
            ..Default::default()
        }));
        let by_area = answered!(metrics.query_metrics(pb::QueryMetricsRequest {
            metric_ids: metric_ids.clone(),
            period: quarter("2025-26 Q2"),
            group_by: vec![pb::Dimension::ServiceArea as i32],
            suppress_small_numbers: true,
            min_position: head,
            ..Default::default()
        }));
        let reporting_by_area = answered!(
            MetricsServiceClient::new(server.channel_with(&dev_token("reporting"))).query_metrics(
                pb::QueryMetricsRequest {
                    metric_ids: metric_ids.clone(),
                    period: quarter("2025-26 Q2"),
                    group_by: vec![pb::Dimension::ServiceArea as i32],
                    min_position: head,
                    ..Default::default()
                }
            )
        );
        assert_eq!(
            by_area.results, reporting_by_area.results,
            "the breakdown is what reporting gets"
        );
        let mut suppressed_cells = 0;
        for m in measures {
            let key = m["key"].as_str().unwrap();
            let slot = metric_ids
                .iter()
                .position(|id| id == m["metric_id"].as_str().unwrap())
                .unwrap();
            for (period, figure) in m["trend"].as_array().unwrap().iter().enumerate() {
                let result = &series.results[period * metric_ids.len() + slot];
                assert_same_figure(
                    figure,
                    row_for(result, &m["report_type"], None),
                    &format!("{key} trend {period}"),
                );
            }
            assert_same_figure(
                &m["current"],
                row_for(&series.results[7 * metric_ids.len() + slot], &m["report_type"], None),
                key,
            );
            let areas = m["by_service_area"].as_array().unwrap();
            assert_eq!(areas.len(), 18, "every service area");
            for area in areas {
                let code = area["service_area"].as_str().unwrap();
                let row = row_for(&by_area.results[slot], &m["report_type"], Some(code));
                assert_same_figure(&area["figure"], row, &format!("{key} {code}"));
                suppressed_cells += usize::from(area["figure"]["suppressed"] == true);
            }
            // The change is the difference of the figures; the status follows the stated rule.
            let value = |f: &Value| f["value"].as_f64();
            if let (Some(now), Some(before)) = (value(&m["current"]), value(&m["previous"])) {
                let change = m["change_from_previous"].as_f64().unwrap();
                assert!((change - (now - before)).abs() < 1e-9, "{key}");
            }
            match (m["target"].as_object(), value(&m["current"])) {
                (Some(target), Some(now)) => {
                    let higher = target["better"] == "higher";
                    let reaches = |t: &Value| {
                        let t = t.as_f64().unwrap();
                        if higher { now >= t } else { now <= t }
                    };
                    let expected = if reaches(&target["value"]) {
                        "on_track"
                    } else if reaches(&target["near"]) {
                        "near"
                    } else {
                        "off_track"
                    };
                    assert_eq!(m["status"], expected, "{key}");
                }
                _ => assert!(m["status"].is_null(), "{key}: a status without a target or a figure"),
            }
        }
        assert!(
            suppressed_cells > 0,
            "a year of three cases a day has small cells to suppress"
        );
    }
    // The catalogue's targets ride on QueryMetrics rows too.
    let mut metrics = MetricsServiceClient::new(server.channel.clone());
    let t5 = answered!(metrics.query_metrics(pb::QueryMetricsRequest {
        metric_ids: vec!["T5".into()],
        period: quarter("2025-26 Q2"),
        min_position: head,
        ..Default::default()
    }));
    let row = &t5.results[0].rows[0];
    let target = row.target.as_ref().unwrap();
    assert_eq!((target.value, target.near, target.higher_is_better), (70.0, 65.0, true));
    let expected = match row.value.unwrap() {
        v if v >= 70.0 => pb::TargetStatus::OnTrack,
        v if v >= 65.0 => pb::TargetStatus::Near,
        _ => pb::TargetStatus::OffTrack,
    };
    assert_eq!(row.status, expected as i32);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn reports_refuse_what_they_cannot_draw(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let mut metrics = MetricsServiceClient::new(server.channel.clone());
    let custom = pb::RenderReportRequest {
        period: Some(pb::PeriodSpec {
            kind: Some(Kind::Custom(pb::DateRange {
                first: "2025-01-01".into(),
                last: "2025-02-01".into(),
            })),
        }),
        periods: 1,
        ..Default::default()
    };
    let status = metrics.render_report(custom).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["period", "periods", "format"]);
    let writer = MetricsServiceClient::new(server.channel_with(&dev_token("court:LS")))
        .render_report(report_request(pb::ReportFormat::Html, 0))
        .await
        .unwrap_err();
    assert_eq!(writer.code(), Code::PermissionDenied);
}

fn without_run_details(mut report: Value) -> Value {
    for key in ["generated_at", "position", "as_of"] {
        report[key] = Value::Null;
    }
    report
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_report_as_of_an_instant_is_the_report_of_that_instant(pool: PgPool) {
    let head = load_two_years(&pool).await;
    let server = TestServer::start(pool.clone()).await;
    let mut metrics = MetricsServiceClient::new(server.channel.clone());
    let request = |as_of: Option<prost_types::Timestamp>, min_position: u64| pb::RenderReportRequest {
        period: quarter("2025-26 Q1"),
        periods: 5,
        format: pb::ReportFormat::Json as i32,
        as_of,
        min_position,
        ..Default::default()
    };
    let then = json_report(&mut metrics, request(None, head)).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let instant = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // Cases issued in the quarter, recorded after the instant.
    for n in 0..3 {
        server.issue_case(&format!("LS25C9990{n}")).await;
    }
    let later_head = EventLog::new(pool.clone()).horizon().await.unwrap().safe.get();
    let now = json_report(&mut metrics, request(None, later_head)).await;
    let d1 = |report: &Value| {
        report["measures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["key"] == "D1.cases")
            .unwrap()["current"]["numerator"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(d1(&now), d1(&then) + 3.0);
    let as_of = prost_types::Timestamp {
        seconds: instant.timestamp(),
        nanos: instant.timestamp_subsec_nanos() as i32,
    };
    let reproduced = json_report(&mut metrics, request(Some(as_of), 0)).await;
    assert!(reproduced["as_of"].is_string());
    assert_eq!(without_run_details(reproduced), without_run_details(then));
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn the_units_behind_a_figure_add_up_to_it_for_those_who_may_see_them(pool: PgPool) {
    let head = load_two_years(&pool).await;
    let server = TestServer::start(pool.clone()).await;
    let year = || {
        Some(pb::PeriodSpec {
            kind: Some(Kind::FinancialYear("2024-25".into())),
        })
    };
    let units_request = |metric: &str, area: &str, page_size: u32, page_token: String| pb::ListMetricUnitsRequest {
        metric_id: metric.into(),
        period: year(),
        service_area: area.into(),
        min_position: head,
        page_size,
        page_token,
        ..Default::default()
    };
    for (caller, area) in [("admin", "A5"), ("practice:A5", "")] {
        let mut metrics = MetricsServiceClient::new(server.channel_with(&dev_token(caller)));
        for metric in ["T1", "T4", "T6", "E1", "S2.children_over_52_weeks", "W1.mean"] {
            let figure = answered!(metrics.query_metrics(pb::QueryMetricsRequest {
                metric_ids: vec![metric.into()],
                period: year(),
                filters: vec![pb::DimensionFilter {
                    dimension: pb::Dimension::ServiceArea as i32,
                    values: vec!["A5".into()],
                }],
                min_position: head,
                ..Default::default()
            }));
            // Pages of 7 until the last.
            let mut units = Vec::new();
            let mut token = String::new();
            let mut total = None;
            loop {
                let page = answered!(metrics.list_metric_units(units_request(metric, area, 7, token.clone())));
                assert!(page.units.len() <= 7);
                total = total.or(Some(page.total_units));
                units.extend(page.units);
                if page.next_page_token.is_empty() {
                    if caller == "admin" {
                        // The units' own figure is never suppressed; an administrator's
                        // QueryMetrics is not either.
                        assert_eq!(page.figure.as_ref().unwrap().rows, figure.results[0].rows, "{metric}");
                    }
                    break;
                }
                token = page.next_page_token;
            }
            assert_eq!(units.len() as u32, total.unwrap(), "{metric}");
            let numerator: f64 = units.iter().map(|u| u.numerator).sum();
            let denominator: f64 = units.iter().map(|u| u.denominator).sum();
            let rows = &figure.results[0].rows;
            if rows.iter().any(|r| r.suppressed) {
                // A practice client's figure is suppressed when small; its units are not.
                assert_eq!(caller, "practice:A5");
                continue;
            }
            let expected_numerator: f64 = rows.iter().map(|r| r.numerator).sum();
            let expected_denominator: f64 = rows.iter().map(|r| r.denominator).sum();
            assert!(
                (numerator - expected_numerator).abs() < 1e-6 * expected_numerator.max(1.0),
                "{caller} {metric}: {numerator} vs {expected_numerator}"
            );
            assert_eq!(denominator, expected_denominator, "{caller} {metric}");
            assert!(!units.is_empty(), "{metric}: an empty population proves nothing");
            let mut ids: Vec<_> = units
                .iter()
                .map(|u| {
                    (
                        u.case_id.clone(),
                        u.child_id.clone(),
                        u.report_id.clone(),
                        u.practitioner_id.clone(),
                    )
                })
                .collect();
            let sorted = ids.clone();
            ids.sort();
            ids.dedup();
            assert_eq!(ids, sorted, "{metric}: units listed once each, in order");
        }
    }
    // Reporting clients never see units; practice clients only their own area's; one figure id.
    let denied = MetricsServiceClient::new(server.channel_with(&dev_token("reporting")))
        .list_metric_units(units_request("T4", "A5", 10, String::new()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let other_area = MetricsServiceClient::new(server.channel_with(&dev_token("practice:A5")))
        .list_metric_units(units_request("T4", "A3", 10, String::new()))
        .await
        .unwrap_err();
    assert_eq!(other_area.code(), Code::PermissionDenied);
    let several = MetricsServiceClient::new(server.channel.clone())
        .list_metric_units(units_request("S2", "A5", 10, String::new()))
        .await
        .unwrap_err();
    assert_eq!(several.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&several), ["metric_id"]);
    // Every listing, allowed or refused, is in the audit trail.
    let records = audit_records(&server).await;
    let listings: Vec<&pb::AuditRecord> = records
        .iter()
        .filter(|r| r.action == "caselog.v1.MetricsService/ListMetricUnits")
        .collect();
    let by = |organisation: &str, outcome: &str| {
        listings
            .iter()
            .filter(|r| r.actor == organisation && r.outcome.starts_with(outcome) && r.target == "service_area:A5")
            .count()
    };
    assert!(by("admin", "OK") >= 6, "{listings:?}");
    assert!(by("practice:A5", "OK") >= 6, "{listings:?}");
    assert_eq!(by("reporting", "PermissionDenied"), 1, "{listings:?}");
}

/// Chromium from the distribution (scripts/ensure-test-tools.sh installs it): `CHROMIUM` or the
/// usual paths.
fn chromium() -> std::path::PathBuf {
    let candidates = [
        std::env::var("CHROMIUM").unwrap_or_default(),
        "/usr/bin/chromium".into(),
        "/usr/bin/chromium-browser".into(),
    ];
    candidates
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .expect("no Chromium: run scripts/ensure-test-tools.sh (scripts/test.sh does), or set CHROMIUM")
}

/// Runs headless Chromium on `page` with a fresh profile, logging every network event.
fn run_chromium(dir: &std::path::Path, page: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let profile = dir.join(format!("profile-{}", extra.len()));
    std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

/// The URLs (other than files) that pages asked for, from a Chromium network log: requests
/// started with an initiator, which the browser's own background requests lack ("not an origin").
fn page_requests(net_log: &std::path::Path) -> Vec<String> {
    let log: Value = serde_json::from_str(&std::fs::read_to_string(net_log).unwrap()).unwrap();
    let start_job = &log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"];
    assert!(start_job.is_number(), "not a Chromium network log");
    let mut urls: Vec<String> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| &e["type"] == start_job)
        .filter(|e| e["params"]["initiator"] != "not an origin")
        .filter_map(|e| e["params"]["url"].as_str())
        .filter(|url| !url.starts_with("file:") && !url.starts_with("data:"))
        .map(str::to_owned)
        .collect();
    urls.dedup();
    urls
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn the_html_report_renders_offline_in_a_real_browser(pool: PgPool) {
    let head = load_two_years(&pool).await;
    let server = TestServer::start(pool.clone()).await;
    let mut metrics = MetricsServiceClient::new(server.channel_with(&dev_token("reporting")));
    let response = answered!(metrics.render_report(report_request(pb::ReportFormat::Html, head)));
    assert_eq!(response.content_type, "text/html; charset=utf-8");
    assert_eq!(response.file_name, "caselog-report-2025-26-Q2.html");
    let dir = std::env::temp_dir().join(format!("caselog-report-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join(&response.file_name);
    std::fs::write(&page, &response.content).unwrap();

    let net_log = dir.join("net-log.json");
    let dumped = run_chromium(
        &dir,
        &page,
        &[&format!("--log-net-log={}", net_log.display()), "--dump-dom"],
    );
    assert!(dumped.status.success(), "{}", String::from_utf8_lossy(&dumped.stderr));
    let dom = String::from_utf8(dumped.stdout).unwrap();
    // What the browser built: one headline row per measure, and every chart with its points.
    assert_eq!(dom.matches("<tr class=\"measure\">").count(), 27);
    let trends: Vec<&str> = dom.split("<figure class=\"trend\">").skip(1).collect();
    assert_eq!(trends.len(), 27);
    for (i, trend) in trends.iter().enumerate() {
        let chart = &trend[..trend.find("</figure>").unwrap()];
        assert!(
            chart.contains("<svg") && chart.contains("<circle"),
            "trend chart {i} has no points"
        );
    }
    let bars = dom.matches("<figure class=\"breakdown\">").count();
    assert_eq!(bars, 27);
    assert!(!dom.contains("<script"), "the report runs no scripts");
    // Nothing left the machine, or tried to. The log also holds the browser's own background
    // requests (updates, accounts), which have no initiating page; a page's requests have one.
    assert_eq!(
        page_requests(&net_log),
        Vec::<String>::new(),
        "the report made network requests"
    );
    // The check sees a page's request when there is one.
    let canary = dir.join("canary.html");
    std::fs::write(
        &canary,
        "<html><body><img src=\"http://example.invalid/chart.png\"></body></html>",
    )
    .unwrap();
    let canary_log = dir.join("canary-net-log.json");
    run_chromium(
        &dir,
        &canary,
        &[&format!("--log-net-log={}", canary_log.display()), "--dump-dom"],
    );
    assert_eq!(page_requests(&canary_log), ["http://example.invalid/chart.png"]);

    let screenshot = dir.join("report.png");
    let shot = run_chromium(
        &dir,
        &page,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,2400",
            "--hide-scrollbars",
        ],
    );
    assert!(shot.status.success(), "{}", String::from_utf8_lossy(&shot.stderr));
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 50_000,
        "screenshot of {} bytes",
        png.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
