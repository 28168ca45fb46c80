//! `caselog.v1.MetricsService`: the metric catalogue over the case-facts projection, or over the
//! log cut at an instant (`as_of`).

use crate::audit;
use crate::auth::caller;
use crate::error::{AppError, Error};
use caselog_api::v1 as pb;
use caselog_api::v1::metrics_service_server::MetricsService;
use caselog_app::ReadModel;
use caselog_app::read_model::ReadModelStats;
use caselog_domain::england::date_in_england;
use caselog_domain::{FieldViolation, Position};
use caselog_projections::metrics::{Settings, report_type_named};
use caselog_projections::targets::{self, Better, Targets};
use caselog_projections::{Dimension, MetricId, MetricsQuery, Period, WorklistKind, disclosure};
use caselog_store::EventLog;
use chrono::{Datelike, NaiveDate};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing::debug;

const LIST_WORKLIST: &str = "caselog.v1.MetricsService/ListWorklist";
const LIST_METRIC_UNITS: &str = "caselog.v1.MetricsService/ListMetricUnits";
const DEFAULT_WITHIN_WORKING_DAYS: u32 = 5;
const DEFAULT_PAGE_SIZE: u32 = 100;
pub(crate) const MAX_PAGE_SIZE: u32 = 1000;

/// `MetricsService`: requests checked and converted, access decided, answers from the read model.
#[derive(Debug, Clone)]
pub struct Metrics {
    log: EventLog,
    pub(crate) read_model: ReadModel,
    pub(crate) targets: Arc<Targets>,
}

impl Metrics {
    pub fn new(log: EventLog, targets: Arc<Targets>, as_of_settled_after: Duration) -> Metrics {
        Metrics {
            read_model: ReadModel::new(log.clone()).with_settled_after(as_of_settled_after),
            log,
            targets,
        }
    }

    /// The read model this service answers from (shared, not copied).
    pub fn read_model(&self) -> ReadModel {
        self.read_model.clone()
    }

    /// Loads the read model, retrying every `retry` while the database cannot answer; then
    /// says so on `loaded` (health reports the server ready only after it).
    pub async fn load_read_model(self, retry: Duration, loaded: tokio::sync::watch::Sender<bool>) {
        loop {
            match self.read_model.load().await {
                Ok(()) => {
                    let _ = loaded.send(true);
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err.detail(), "loading the read model failed; retrying");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    /// Samples the read model's size and load times, and this process's resident memory, every
    /// `interval` into OpenTelemetry gauges (`caselog.read_model.*`,
    /// `caselog.process.resident_bytes`), exported when OTLP export is configured. Runs until
    /// aborted.
    pub async fn publish_read_model_metrics(self, interval: Duration) {
        let latest = Arc::new(Mutex::new((ReadModelStats::default(), 0_u64)));
        let millis = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
        let _gauges = crate::telemetry::sampled_gauges(
            &latest,
            &[
                (
                    "caselog.read_model.cases",
                    "cases held in memory for metric queries",
                    |s| s.0.cases,
                ),
                (
                    "caselog.read_model.position",
                    "checkpoint the in-memory case facts reflect",
                    |s| s.0.position.get(),
                ),
                (
                    "caselog.read_model.full_load_ms",
                    "duration of the last load of every case's facts (first query, or after a rebuild)",
                    |s| s.0.last_full_load.map_or(0, |d| d.as_millis() as u64),
                ),
                (
                    "caselog.read_model.refresh_ms",
                    "duration of the last refresh of the in-memory case facts",
                    |s| s.0.last_refresh.map_or(0, |d| d.as_millis() as u64),
                ),
                (
                    "caselog.read_model.loaded_snapshot_position",
                    "position of the snapshot the last full load started from (0: loaded from every case's row)",
                    |s| s.0.loaded_snapshot.map_or(0, |p| p.get()),
                ),
                (
                    "caselog.read_model.as_of_history_cases",
                    "cases whose facts at an as_of instant came from the projection's history, since start",
                    |s| s.0.as_of_history_cases,
                ),
                (
                    "caselog.read_model.as_of_folded_cases",
                    "cases folded again from the log for as_of answers, since start",
                    |s| s.0.as_of_folded_cases,
                ),
                (
                    "caselog.process.resident_bytes",
                    "resident memory of this process (Linux; 0 elsewhere)",
                    |s| s.1,
                ),
            ],
        );
        loop {
            let stats = self.read_model.stats().await;
            let resident = resident_bytes().unwrap_or(0);
            debug!(
                cases = stats.cases,
                full_load_ms = millis(stats.last_full_load),
                resident_bytes = resident,
                "read model"
            );
            if let Ok(mut sample) = latest.lock() {
                *sample = (stats, resident);
            }
            tokio::time::sleep(interval).await;
        }
    }
}

/// This process's resident set (`VmRSS` of `/proc/self/status`, in KiB there).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn query_metrics(
        &self,
        request: Request<pb::QueryMetricsRequest>,
    ) -> Result<Response<pb::QueryMetricsResponse>, Status> {
        let principal = caller(&request)?;
        let access = principal.metrics_access().map_err(Error::from)?;
        let mut request = request.into_inner();
        // Reporting and practice clients see aggregates only with small numbers suppressed.
        request.suppress_small_numbers |= access.suppression_forced;
        let queries = queries_of(&request)?;
        // Every query of a series differs only in its period: what it may see is decided once.
        may_ask(&principal, &access, &queries[0])?;
        Ok(Response::new(self.answer(queries, &request).await?))
    }

    async fn list_metric_units(
        &self,
        request: Request<pb::ListMetricUnitsRequest>,
    ) -> Result<Response<pb::ListMetricUnitsResponse>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        let requested = request.service_area.clone();
        let detail = json!({
            "metric_id": request.metric_id,
            "period": period_of(request.period.as_ref()).map(|p| p.label),
            "as_of": request.as_of.as_ref().map(|t| t.seconds),
            "page_token": request.page_token,
        });
        let (target, result) = match principal.units_scope(Some(requested.as_str()).filter(|a| !a.is_empty())) {
            Ok(scope) => (
                scope
                    .as_deref()
                    .map_or_else(|| "national".to_owned(), |a| format!("service_area:{a}")),
                self.units(request, scope).await,
            ),
            Err(denial) => (format!("service_area:{requested}"), Err(denial.into())),
        };
        let response = audit::recorded(&self.log, &principal, LIST_METRIC_UNITS, &target, detail, result).await?;
        Ok(Response::new(response))
    }

    async fn render_report(
        &self,
        request: Request<pb::RenderReportRequest>,
    ) -> Result<Response<pb::RenderReportResponse>, Status> {
        let principal = caller(&request)?;
        let access = principal.metrics_access().map_err(Error::from)?;
        Ok(Response::new(
            self.report(&principal, &access, request.into_inner()).await?,
        ))
    }

    async fn list_worklist(
        &self,
        request: Request<pb::ListWorklistRequest>,
    ) -> Result<Response<pb::ListWorklistResponse>, Status> {
        let principal = caller(&request)?;
        let mut request = request.into_inner();
        let requested = request.service_area.clone();
        let detail = json!({"kind": request.kind, "as_at": request.as_at, "page_token": request.page_token});
        let (target, result) = match principal.worklist_scope(Some(requested.as_str()).filter(|a| !a.is_empty())) {
            Ok(scope) => {
                request.service_area = scope.unwrap_or_default();
                (
                    format!("service_area:{}", request.service_area),
                    self.worklist(request).await,
                )
            }
            Err(denial) => (format!("service_area:{requested}"), Err(denial.into())),
        };
        let response = audit::recorded(&self.log, &principal, LIST_WORKLIST, &target, detail, result).await?;
        Ok(Response::new(response))
    }
}

/// Whether `principal` (with `access`) may have `query` answered: a suppressed query must be
/// read from a disclosure table, and figures below national level only for permitted areas.
pub(crate) fn may_ask(
    principal: &caselog_domain::Principal,
    access: &caselog_domain::access::MetricsAccess,
    query: &MetricsQuery,
) -> Result<(), Error> {
    if query.suppress_small_numbers {
        disclosure::table_of(query).map_err(|refusal| Error::from(AppError::NotDisclosable(refusal)))?;
    }
    let filtered_areas = query
        .filters
        .iter()
        .find(|(d, _)| *d == Dimension::ServiceArea)
        .map(|(_, areas)| areas.as_slice());
    access
        .may_see(
            &principal.organisation,
            !disclosure::involved(query).is_empty(),
            filtered_areas,
        )
        .map_err(Error::from)?;
    Ok(())
}

/// The instant of an `as_of`: a valid timestamp between 1970 and the end of 9999 (the log holds
/// nothing outside; anything else is a mistake the caller can correct).
pub(crate) fn as_of_instant(as_of: &prost_types::Timestamp) -> Result<chrono::DateTime<chrono::Utc>, Error> {
    const LAST_SECOND: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let nanos = u32::try_from(as_of.nanos).ok().filter(|n| *n < 1_000_000_000);
    match nanos {
        Some(nanos) if (0..=LAST_SECOND).contains(&as_of.seconds) => {
            chrono::DateTime::from_timestamp(as_of.seconds, nanos).ok_or_else(as_of_invalid)
        }
        _ => Err(as_of_invalid()),
    }
}

fn as_of_invalid() -> Error {
    Error::invalid(vec![FieldViolation::new(
        "as_of",
        "as_of must be an instant from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z with nanos in 0..1e9",
    )])
}

impl Metrics {
    async fn answer(
        &self,
        queries: Vec<MetricsQuery>,
        request: &pb::QueryMetricsRequest,
    ) -> Result<pb::QueryMetricsResponse, Error> {
        let as_of = request.as_of.as_ref().map(as_of_instant).transpose()?;
        let (position, results) = self
            .read_model
            .metrics_series(queries, as_of, Position::saturating_from(request.min_position))
            .await?;
        Ok(pb::QueryMetricsResponse {
            results: results.into_iter().map(|r| result_out(r, &self.targets)).collect(),
            position: position.get(),
        })
    }

    async fn worklist(&self, request: pb::ListWorklistRequest) -> Result<pb::ListWorklistResponse, Error> {
        let mut violations = Vec::new();
        let kind = match pb::WorklistKind::try_from(request.kind).unwrap_or(pb::WorklistKind::Unspecified) {
            pb::WorklistKind::Unspecified => {
                violations.push(FieldViolation::new(
                    "kind",
                    "a worklist kind other than UNSPECIFIED is required",
                ));
                None
            }
            pb::WorklistKind::ChildrenNotSeen => Some(WorklistKind::ChildrenNotSeen),
            pb::WorklistKind::ReportsDue => Some(WorklistKind::ReportsDue),
            pb::WorklistKind::ReportsOverdue => Some(WorklistKind::ReportsOverdue),
            pb::WorklistKind::CasesOpenOver52Weeks => Some(WorklistKind::CasesOpenOver52Weeks),
            pb::WorklistKind::CasesOpenOver100Weeks => Some(WorklistKind::CasesOpenOver100Weeks),
        };
        if caselog_domain::reference::service_areas()
            .iter()
            .all(|a| a.code != request.service_area)
        {
            violations.push(FieldViolation::new(
                "service_area",
                "a Cafcass service area code is required, e.g. \"A5\"",
            ));
        }
        let as_at = if request.as_at.is_empty() {
            Some(date_in_england(chrono::Utc::now()))
        } else {
            let parsed = date(&request.as_at);
            if parsed.is_none() {
                violations.push(FieldViolation::new("as_at", "not a date \"YYYY-MM-DD\""));
            }
            parsed
        };
        if request.page_size > MAX_PAGE_SIZE {
            violations.push(FieldViolation::new(
                "page_size",
                format!("page_size is at most {MAX_PAGE_SIZE}"),
            ));
        }
        let offset = page_offset(&request.page_token, &mut violations);
        let (Some(kind), Some(as_at), Some(offset), true) = (kind, as_at, offset, violations.is_empty()) else {
            return Err(Error::invalid(violations));
        };
        let within = if request.within_working_days == 0 {
            DEFAULT_WITHIN_WORKING_DAYS
        } else {
            request.within_working_days
        };
        let page_size = page_size(request.page_size);
        let (position, items) = self
            .read_model
            .worklist(
                kind,
                &request.service_area,
                as_at,
                within,
                Position::saturating_from(request.min_position),
            )
            .await?;
        let page: Vec<pb::WorklistItem> = items
            .iter()
            .skip(offset)
            .take(page_size)
            .map(|item| pb::WorklistItem {
                case_id: item.case_id.clone(),
                child_id: item.child_id.clone().unwrap_or_default(),
                report_id: item.report_id.clone().unwrap_or_default(),
                report_type: item.report_type.unwrap_or_default().to_owned(),
                date: item.date.to_string(),
                working_days_left: item.working_days_left,
                weeks_open: item.weeks_open,
                practitioner_id: item.practitioner_id.clone().unwrap_or_default(),
            })
            .collect();
        Ok(pb::ListWorklistResponse {
            next_page_token: next_page_token(offset + page.len(), items.len()),
            items: page,
            position: position.get(),
        })
    }
}

/// Where a page starts: the offset in a token this service gave (`v1.offset.N`), 0 for none.
pub(crate) fn page_offset(token: &str, violations: &mut Vec<FieldViolation>) -> Option<usize> {
    let offset = match token {
        "" => Some(0),
        token => token.strip_prefix("v1.offset.").and_then(|n| n.parse::<usize>().ok()),
    };
    if offset.is_none() {
        violations.push(FieldViolation::new(
            "page_token",
            "not a page token from a previous response; send it unchanged",
        ));
    }
    offset
}

/// A page size as asked (checked by the caller against `MAX_PAGE_SIZE`), the default for 0.
pub(crate) fn page_size(asked: u32) -> usize {
    (if asked == 0 { DEFAULT_PAGE_SIZE } else { asked }) as usize
}

/// The token of the page after one ending at `next` of `total` items ("" after the last).
pub(crate) fn next_page_token(next: usize, total: usize) -> String {
    if next < total {
        format!("v1.offset.{next}")
    } else {
        String::new()
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
    caselog_domain::dates::parse_date(text)
}

/// "2024-25" → 2024, checking that the second year follows the first.
fn financial_year(text: &str) -> Option<i32> {
    let (first, second) = text.split_once('-')?;
    let first: i32 = first.parse().ok()?;
    let second: i32 = second.parse().ok()?;
    (first.to_string().len() == 4 && second == (first + 1) % 100).then_some(first)
}

/// Why a period was not understood, naming the value sent.
pub(crate) fn period_violation(spec: Option<&pb::PeriodSpec>) -> FieldViolation {
    use pb::period_spec::Kind;
    let (field, value, expected) = match spec.and_then(|s| s.kind.as_ref()) {
        None => {
            return FieldViolation::new(
                "period",
                "a period is required: month \"2025-03\", financial_quarter \"2024-25 Q3\", financial_year \"2024-25\", calendar_quarter \"2024 Q4\" or a custom first..last range",
            );
        }
        Some(Kind::Month(m)) => (
            "period.month",
            m.clone(),
            "a month \"YYYY-MM\" (01-12), e.g. \"2025-03\"",
        ),
        Some(Kind::FinancialYear(fy)) => (
            "period.financial_year",
            fy.clone(),
            "a financial year \"YYYY-YY\" whose second year follows the first, e.g. \"2024-25\"",
        ),
        Some(Kind::FinancialQuarter(fq)) => (
            "period.financial_quarter",
            fq.clone(),
            "a financial quarter \"YYYY-YY Qn\" with n 1-4, e.g. \"2024-25 Q3\"",
        ),
        Some(Kind::CalendarQuarter(cq)) => (
            "period.calendar_quarter",
            cq.clone(),
            "a calendar quarter \"YYYY Qn\" with n 1-4, e.g. \"2024 Q4\"",
        ),
        Some(Kind::Custom(range)) => (
            "period.custom",
            format!("{}..{}", range.first, range.last),
            "two dates \"YYYY-MM-DD\", first on or before last",
        ),
    };
    let shown: String = value.chars().take(40).collect();
    FieldViolation::new(field, format!("{shown:?} is not {expected}"))
}

pub(crate) fn period_of(spec: Option<&pb::PeriodSpec>) -> Option<Period> {
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

/// The most periods one series may ask for (five years of months).
const MAX_SERIES_PERIODS: u32 = 60;

/// `count` consecutive periods of `spec`'s kind ending with it, oldest first; `None` for a spec
/// that does not parse, or a series reaching outside the calendar.
fn series_of(spec: Option<&pb::PeriodSpec>, count: u32) -> Option<Vec<Period>> {
    use pb::period_spec::Kind;
    let last = period_of(spec)?;
    if count <= 1 {
        return Some(vec![last]);
    }
    // Each kind stepped back in its own unit: months, quarters (three months), or years.
    let step_months = match spec?.kind.as_ref()? {
        Kind::Month(_) => 1,
        Kind::FinancialQuarter(_) | Kind::CalendarQuarter(_) => 3,
        Kind::FinancialYear(_) => 12,
        Kind::Custom(_) => return None,
    };
    let kind = spec?.kind.as_ref()?;
    (0..count)
        .rev()
        .map(|back| {
            let first = last.first.checked_sub_months(chrono::Months::new(step_months * back))?;
            let (year, month) = (first.year(), first.month());
            match kind {
                Kind::Month(_) => Period::month(year, month),
                Kind::FinancialQuarter(_) => {
                    // April-June is Q1 of the financial year starting that April.
                    let start_year = if month >= 4 { year } else { year - 1 };
                    Period::financial_quarter(start_year, (month + 8) % 12 / 3 + 1)
                }
                Kind::CalendarQuarter(_) => Period::calendar_quarter(year, (month - 1) / 3 + 1),
                Kind::FinancialYear(_) => Period::financial_year(year),
                Kind::Custom(_) => None,
            }
        })
        .collect()
}

/// The queries a request asks: one per period of its series (one for a single period).
pub(crate) fn queries_of(request: &pb::QueryMetricsRequest) -> Result<Vec<MetricsQuery>, Error> {
    let mut violations = Vec::new();
    let custom = matches!(
        request.period.as_ref().and_then(|p| p.kind.as_ref()),
        Some(pb::period_spec::Kind::Custom(_))
    );
    if request.periods > MAX_SERIES_PERIODS {
        violations.push(FieldViolation::new(
            "periods",
            format!("a series holds at most {MAX_SERIES_PERIODS} periods"),
        ));
    } else if request.periods > 1 && custom {
        violations.push(FieldViolation::new(
            "periods",
            "a custom date range has no preceding periods: ask for periods 1, or use months, quarters or years",
        ));
    }
    if request.periods > 1 && !request.snapshot_date.is_empty() {
        violations.push(FieldViolation::new(
            "snapshot_date",
            "a series takes each period's last day as the snapshot: leave snapshot_date empty",
        ));
    }
    let base = query_of(request);
    let base = match (base, violations.is_empty()) {
        (Ok(base), true) => base,
        (Ok(_), false) => return Err(Error::invalid(violations)),
        (
            Err(Error::App(AppError::Invalid {
                violations: mut more, ..
            })),
            _,
        ) => {
            more.extend(violations);
            return Err(Error::invalid(more));
        }
        (Err(other), _) => return Err(other),
    };
    let Some(periods) = series_of(request.period.as_ref(), request.periods) else {
        return Err(Error::invalid(vec![FieldViolation::new(
            "periods",
            "the series reaches outside the calendar",
        )]));
    };
    Ok(periods
        .into_iter()
        .map(|period| MetricsQuery { period, ..base.clone() })
        .collect())
}

pub(crate) fn query_of(request: &pb::QueryMetricsRequest) -> Result<MetricsQuery, Error> {
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
        violations.push(period_violation(request.period.as_ref()));
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

pub(crate) fn result_out(result: caselog_projections::MetricResult, targets: &Targets) -> pb::MetricResult {
    let metric = result.metric;
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
            .map(|row| {
                let report_type = row.group.get(&Dimension::ReportType).and_then(|t| report_type_named(t));
                let target = targets.of(metric, report_type);
                let status = target.zip(row.value).map(|(t, v)| t.status(v));
                pb::MetricRow {
                    display: row.display(),
                    target: target.map(target_out),
                    status: status.map_or(pb::TargetStatus::Unspecified, status_out) as i32,
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
                    suppressed: row.suppressed,
                }
            })
            .collect(),
    }
}

fn target_out(target: &caselog_projections::targets::Target) -> pb::MetricTarget {
    pb::MetricTarget {
        value: target.value,
        near: target.near,
        higher_is_better: target.better == Better::Higher,
        rule: target.rule(),
        source: target.source.clone(),
    }
}

fn status_out(status: targets::Status) -> pb::TargetStatus {
    match status {
        targets::Status::OnTrack => pb::TargetStatus::OnTrack,
        targets::Status::Near => pb::TargetStatus::Near,
        targets::Status::OffTrack => pb::TargetStatus::OffTrack,
    }
}
