//! `caselog.v1.MetricsService`: the metric catalogue over the case-facts projection, or over the
//! log cut at an instant (`as_of`).

use crate::error::Error;
use crate::projector::fold_cases;
use caselog_api::v1 as pb;
use caselog_api::v1::metrics_service_server::MetricsService;
use caselog_calendar::WorkingCalendar;
use caselog_domain::FieldViolation;
use caselog_projections::metrics::{MetricsError, Settings};
use caselog_projections::{CaseFacts, Dimension, MetricId, MetricsQuery, Period};
use caselog_store::EventLog;
use caselog_store::projection::CASE_FACTS;
use chrono::NaiveDate;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// The longest a query waits for the projections to reach `min_position`.
const MAX_CATCH_UP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Metrics {
    log: EventLog,
}

impl Metrics {
    pub fn new(log: EventLog) -> Metrics {
        Metrics { log }
    }
}

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn query_metrics(
        &self,
        request: Request<pb::QueryMetricsRequest>,
    ) -> Result<Response<pb::QueryMetricsResponse>, Status> {
        Ok(Response::new(self.answer(request.into_inner()).await?))
    }
}

impl Metrics {
    async fn answer(&self, request: pb::QueryMetricsRequest) -> Result<pb::QueryMetricsResponse, Error> {
        let query = query_of(&request)?;
        let (position, cases) = match request.as_of {
            Some(as_of) => {
                let at =
                    chrono::DateTime::from_timestamp(as_of.seconds, as_of.nanos.max(0) as u32).ok_or_else(|| {
                        Error::invalid(vec![FieldViolation::new("as_of", "as_of is not a valid instant")])
                    })?;
                (0, fold_cases(&self.log.read_recorded_by(at).await?)?)
            }
            None => {
                self.wait_for(request.min_position).await?;
                let (position, rows) = self.log.load_case_facts().await?;
                let cases = rows
                    .into_iter()
                    .map(serde_json::from_value::<CaseFacts>)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Error::Internal(format!("unreadable case facts: {e}")))?;
                (position, cases)
            }
        };
        let results = caselog_projections::compute(&query, &cases, WorkingCalendar::england_and_wales())
            .map_err(|MetricsError::Calendar(out)| Error::OutsideCalendar(out.to_string()))?;
        Ok(pb::QueryMetricsResponse {
            results: results.into_iter().map(result_out).collect(),
            position: position as u64,
        })
    }

    async fn wait_for(&self, min_position: u64) -> Result<(), Error> {
        let wanted = i64::try_from(min_position).unwrap_or(i64::MAX);
        let started = Instant::now();
        loop {
            let checkpoint = self.log.checkpoint(CASE_FACTS).await?;
            if checkpoint >= wanted {
                return Ok(());
            }
            if started.elapsed() >= MAX_CATCH_UP_WAIT {
                return Err(Error::ProjectionBehind { checkpoint, wanted });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn dimension_in(raw: i32) -> Option<Dimension> {
    Some(match pb::Dimension::try_from(raw).ok()? {
        pb::Dimension::Unspecified => return None,
        pb::Dimension::LawType => Dimension::LawType,
        pb::Dimension::ApplicationType => Dimension::ApplicationType,
        pb::Dimension::ServiceArea => Dimension::ServiceArea,
        pb::Dimension::Court => Dimension::Court,
        pb::Dimension::LocalAuthority => Dimension::LocalAuthority,
        pb::Dimension::AgeBand => Dimension::AgeBand,
        pb::Dimension::ReportType => Dimension::ReportType,
    })
}

fn dimension_out(d: Dimension) -> pb::Dimension {
    match d {
        Dimension::LawType => pb::Dimension::LawType,
        Dimension::ApplicationType => pb::Dimension::ApplicationType,
        Dimension::ServiceArea => pb::Dimension::ServiceArea,
        Dimension::Court => pb::Dimension::Court,
        Dimension::LocalAuthority => pb::Dimension::LocalAuthority,
        Dimension::AgeBand => pb::Dimension::AgeBand,
        Dimension::ReportType => pb::Dimension::ReportType,
    }
}

fn date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// "2024-25" → 2024, checking that the second year follows the first.
fn financial_year(text: &str) -> Option<i32> {
    let (first, second) = text.split_once('-')?;
    let first: i32 = first.parse().ok()?;
    let second: i32 = second.parse().ok()?;
    (first.to_string().len() == 4 && second == (first + 1) % 100).then_some(first)
}

fn period_of(spec: Option<&pb::PeriodSpec>) -> Option<Period> {
    use pb::period_spec::Kind;
    match spec?.kind.as_ref()? {
        Kind::Month(m) => {
            let (y, m) = m.split_once('-')?;
            Period::month(y.parse().ok()?, m.parse().ok()?)
        }
        Kind::FinancialYear(fy) => Period::financial_year(financial_year(fy)?),
        Kind::FinancialQuarter(fq) => {
            let (fy, q) = fq.split_once(" Q")?;
            Period::financial_quarter(financial_year(fy)?, q.parse().ok()?)
        }
        Kind::CalendarQuarter(cq) => {
            let (y, q) = cq.split_once(" Q")?;
            Period::calendar_quarter(y.parse().ok()?, q.parse().ok()?)
        }
        Kind::Custom(range) => Period::custom(date(&range.first)?, date(&range.last)?),
    }
}

fn query_of(request: &pb::QueryMetricsRequest) -> Result<MetricsQuery, Error> {
    let mut violations = Vec::new();
    let mut metrics = Vec::new();
    if request.metric_ids.is_empty() {
        violations.push(FieldViolation::new(
            "metric_ids",
            "at least one metric id is required (e.g. \"T1\", \"S2\")",
        ));
    }
    for (i, id) in request.metric_ids.iter().enumerate() {
        let found = MetricId::parse(id);
        if found.is_empty() {
            violations.push(FieldViolation::new(
                format!("metric_ids[{i}]"),
                format!("{id:?} is not a metric of the catalogue"),
            ));
        }
        for m in found {
            if !metrics.contains(&m) {
                metrics.push(m);
            }
        }
    }
    let period = period_of(request.period.as_ref());
    if period.is_none() {
        violations.push(FieldViolation::new(
            "period",
            "a period is required: month \"2025-03\", financial_quarter \"2024-25 Q3\", financial_year \"2024-25\", calendar_quarter \"2024 Q4\" or a custom first..last range",
        ));
    }
    let snapshot = if request.snapshot_date.is_empty() {
        None
    } else {
        let parsed = date(&request.snapshot_date);
        if parsed.is_none() {
            violations.push(FieldViolation::new("snapshot_date", "not a date \"YYYY-MM-DD\""));
        }
        parsed
    };
    let mut group_by = Vec::new();
    for (i, raw) in request.group_by.iter().enumerate() {
        match dimension_in(*raw) {
            Some(d) if !group_by.contains(&d) => group_by.push(d),
            Some(_) => {}
            None => violations.push(FieldViolation::new(
                format!("group_by[{i}]"),
                "a dimension other than UNSPECIFIED is required",
            )),
        }
    }
    let mut filters = Vec::new();
    for (i, filter) in request.filters.iter().enumerate() {
        match dimension_in(filter.dimension) {
            Some(d) if !filter.values.is_empty() => filters.push((d, filter.values.clone())),
            Some(_) => violations.push(FieldViolation::new(
                format!("filters[{i}].values"),
                "at least one value is required",
            )),
            None => violations.push(FieldViolation::new(
                format!("filters[{i}].dimension"),
                "a dimension other than UNSPECIFIED is required",
            )),
        }
    }
    let limit = match request.twenty_six_week_limit_days {
        0 => 181,
        days @ (181 | 182) => i64::from(days),
        _ => {
            violations.push(FieldViolation::new(
                "twenty_six_week_limit_days",
                "the 26-week limit is 181 (default) or 182 days after issue",
            ));
            181
        }
    };
    match period {
        Some(period) if violations.is_empty() => Ok(MetricsQuery {
            metrics,
            period,
            snapshot,
            group_by,
            filters,
            suppress_small_numbers: request.suppress_small_numbers,
            settings: Settings {
                twenty_six_week_limit_days: limit,
                virtual_visits_count: request.count_virtual_visits,
            },
        }),
        _ => Err(Error::invalid(violations)),
    }
}

fn result_out(result: caselog_projections::MetricResult) -> pb::MetricResult {
    pb::MetricResult {
        metric_id: result.metric.id().to_owned(),
        unit: result.unit.to_owned(),
        value_unit: result.value_unit.to_owned(),
        definition: result.definition,
        period_label: result.period.label.clone(),
        period_first: result.period.first.to_string(),
        period_last: result.period.last.to_string(),
        snapshot_date: result.snapshot.map(|d| d.to_string()).unwrap_or_default(),
        rows: result
            .rows
            .into_iter()
            .map(|row| pb::MetricRow {
                group: row
                    .group
                    .into_iter()
                    .map(|(d, value)| pb::GroupValue {
                        dimension: dimension_out(d) as i32,
                        value,
                    })
                    .collect(),
                numerator: row.numerator,
                denominator: row.denominator,
                value: row.value,
                display: match (row.suppressed, row.value) {
                    (true, _) => "suppressed".to_owned(),
                    (false, Some(v)) => format!("{v:.1}"),
                    (false, None) => String::new(),
                },
                suppressed: row.suppressed,
            })
            .collect(),
    }
}
