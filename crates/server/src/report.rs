//! `MetricsService.RenderReport`: the board report, from two questions to the read model (the
//! national figures of every period of the window, and the report period by service area),
//! checked exactly as the same QueryMetrics requests would be.

use crate::error::Error;
use crate::metrics::{Metrics, as_of_instant, may_ask, period_violation, queries_of};
use caselog_api::v1 as pb;
use caselog_domain::access::MetricsAccess;
use caselog_domain::reference::service_areas;
use caselog_domain::{FieldViolation, Position, Principal};
use caselog_report::{BOARD_MEASURES, Inputs, Report, metrics_of};
use pb::period_spec::Kind;

/// Trend windows when the request leaves `periods` at 0, periods in a year, and the option of
/// `caselog units` that names such a period, by period kind.
fn window_of(kind: &Kind) -> Option<(u32, usize, &'static str)> {
    match kind {
        Kind::Month(_) => Some((24, 12, "month")),
        Kind::FinancialQuarter(_) => Some((8, 4, "financial-quarter")),
        Kind::CalendarQuarter(_) => Some((8, 4, "calendar-quarter")),
        Kind::FinancialYear(_) => Some((5, 1, "financial-year")),
        Kind::Custom(_) => None,
    }
}

impl Metrics {
    pub(crate) async fn report(
        &self,
        principal: &Principal,
        access: &MetricsAccess,
        request: pb::RenderReportRequest,
    ) -> Result<pb::RenderReportResponse, Error> {
        let mut violations = Vec::new();
        let kind = request.period.as_ref().and_then(|p| p.kind.as_ref());
        let window = match kind {
            Some(kind @ Kind::Custom(_)) => {
                violations.push(FieldViolation::new(
                    "period",
                    "a report is for a month, a financial or calendar quarter, or a financial year, not a custom range",
                ));
                window_of(kind)
            }
            Some(kind) => window_of(kind),
            None => {
                violations.push(period_violation(request.period.as_ref()));
                None
            }
        };
        if request.periods == 1 || request.periods > 60 {
            violations.push(FieldViolation::new(
                "periods",
                "the trend holds 2-60 periods (0: 24 months, 8 quarters or 5 years)",
            ));
        }
        let format = pb::ReportFormat::try_from(request.format).unwrap_or(pb::ReportFormat::Unspecified);
        if format == pb::ReportFormat::Unspecified {
            violations.push(FieldViolation::new("format", "a format is required: HTML, CSV or JSON"));
        }
        let Some((default_periods, periods_per_year, period_option)) = window.filter(|_| violations.is_empty()) else {
            return Err(Error::invalid(violations));
        };
        let metric_ids: Vec<String> = metrics_of(&BOARD_MEASURES).iter().map(|m| m.id().to_owned()).collect();
        let national = pb::QueryMetricsRequest {
            metric_ids,
            period: request.period.clone(),
            periods: if request.periods == 0 {
                default_periods
            } else {
                request.periods
            },
            as_of: request.as_of,
            min_position: request.min_position,
            suppress_small_numbers: access.suppression_forced,
            twenty_six_week_limit_days: request.twenty_six_week_limit_days,
            count_virtual_visits: request.count_virtual_visits,
            ..Default::default()
        };
        // The breakdown as a reporting client gets it: suppressed, whoever asks; a practice
        // client's limited to its own areas, as its own QueryMetrics would have to be.
        let by_area = pb::QueryMetricsRequest {
            periods: 1,
            group_by: vec![pb::Dimension::ServiceArea as i32],
            filters: access
                .service_areas
                .iter()
                .map(|areas| pb::DimensionFilter {
                    dimension: pb::Dimension::ServiceArea as i32,
                    values: areas.clone(),
                })
                .collect(),
            suppress_small_numbers: true,
            ..national.clone()
        };
        let national_queries = queries_of(&national)?;
        let by_area_queries = queries_of(&by_area)?;
        may_ask(principal, access, &national_queries[0])?;
        may_ask(principal, access, &by_area_queries[0])?;
        let as_of = request.as_of.as_ref().map(as_of_instant).transpose()?;
        let min_position = Position::saturating_from(request.min_position);
        let (position, window_results) = self
            .read_model
            .metrics_series(national_queries, as_of, min_position)
            .await?;
        let (_, area_results) = self
            .read_model
            .metrics_series(by_area_queries, as_of, min_position)
            .await?;
        let areas: Vec<(String, String)> = service_areas()
            .iter()
            .filter(|area| {
                access
                    .service_areas
                    .as_ref()
                    .is_none_or(|allowed| allowed.contains(&area.code))
            })
            .map(|area| (area.code.clone(), area.name.clone()))
            .collect();
        // How a reader who may see units asks for those behind a service area's figure.
        let drill_down = format!("caselog units {{metric}} --{period_option} \"{{period}}\" --service-area {{area}}");
        let report = Report::assemble(&Inputs {
            measures: &BOARD_MEASURES,
            window: &window_results,
            by_service_area: &area_results,
            service_areas: &areas,
            periods_per_year,
            targets: &self.targets,
            as_of: as_of.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            position: position.get(),
            drill_down: Some(&drill_down),
        })
        .map_err(|err| Error::internal(err.to_string()))?;
        let (content, content_type, extension) = match format {
            pb::ReportFormat::Csv => (report.to_csv(), "text/csv; charset=utf-8", "csv"),
            pb::ReportFormat::Json => (report.to_json(), "application/json", "json"),
            _ => (
                report.to_html().map_err(|err| Error::internal(err.to_string()))?,
                "text/html; charset=utf-8",
                "html",
            ),
        };
        Ok(pb::RenderReportResponse {
            content: content.into_bytes(),
            content_type: content_type.to_owned(),
            file_name: format!("caselog-report-{}.{extension}", report.period.short.replace(' ', "-")),
            position: position.get(),
        })
    }
}
