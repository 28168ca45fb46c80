//! `MetricsService.ListMetricUnits`: the cases, children, reports or practitioners behind one
//! figure, for those who may see them (the caller's scope is decided and audited in
//! `metrics.rs`).

use crate::error::Error;
use crate::metrics::{
    MAX_PAGE_SIZE, Metrics, as_of_instant, next_page_token, page_offset, page_size, query_of, result_out,
};
use caselog_api::v1 as pb;
use caselog_domain::{FieldViolation, Position};
use caselog_projections::MetricId;

impl Metrics {
    /// The units of the figure `request` names, in the group of `service_area` (`None`:
    /// national).
    pub(crate) async fn units(
        &self,
        request: pb::ListMetricUnitsRequest,
        service_area: Option<String>,
    ) -> Result<pb::ListMetricUnitsResponse, Error> {
        let mut violations = Vec::new();
        let figures = MetricId::parse(&request.metric_id);
        match figures.as_slice() {
            [_] => {}
            [] => violations.push(FieldViolation::new(
                "metric_id",
                format!("{:?} is not a figure of the catalogue (e.g. \"T4\")", request.metric_id),
            )),
            several => violations.push(FieldViolation::new(
                "metric_id",
                format!(
                    "{:?} has {} figures: name one, e.g. {:?}",
                    request.metric_id,
                    several.len(),
                    several[0].id()
                ),
            )),
        }
        if request
            .filters
            .iter()
            .any(|f| f.dimension == pb::Dimension::ServiceArea as i32)
        {
            violations.push(FieldViolation::new(
                "filters",
                "the service area of the group goes in service_area, not in filters",
            ));
        }
        if let Some(area) = &service_area
            && caselog_domain::reference::service_areas()
                .iter()
                .all(|a| &a.code != area)
        {
            violations.push(FieldViolation::new(
                "service_area",
                "a Cafcass service area code is required, e.g. \"A5\"",
            ));
        }
        if request.page_size > MAX_PAGE_SIZE {
            violations.push(FieldViolation::new(
                "page_size",
                format!("page_size is at most {MAX_PAGE_SIZE}"),
            ));
        }
        let offset = page_offset(&request.page_token, &mut violations);
        let mut filters = request.filters.clone();
        filters.extend(service_area.map(|area| pb::DimensionFilter {
            dimension: pb::Dimension::ServiceArea as i32,
            values: vec![area],
        }));
        let as_query = pb::QueryMetricsRequest {
            metric_ids: vec![request.metric_id.clone()],
            period: request.period.clone(),
            snapshot_date: request.snapshot_date.clone(),
            filters,
            as_of: request.as_of,
            min_position: request.min_position,
            twenty_six_week_limit_days: request.twenty_six_week_limit_days,
            count_virtual_visits: request.count_virtual_visits,
            ..Default::default()
        };
        let query = match query_of(&as_query) {
            Ok(query) if violations.is_empty() => query,
            Ok(_) => return Err(Error::invalid(violations)),
            Err(Error::App(caselog_app::Error::Invalid { violations: more, .. })) => {
                violations.extend(more);
                return Err(Error::invalid(violations));
            }
            Err(other) => return Err(other),
        };
        let Some(offset) = offset else {
            return Err(Error::invalid(violations));
        };
        let as_of = request.as_of.as_ref().map(as_of_instant).transpose()?;
        let (position, units, figure) = self
            .read_model
            .units(query, as_of, Position::saturating_from(request.min_position))
            .await?;
        let page: Vec<pb::MetricUnit> = units
            .iter()
            .skip(offset)
            .take(page_size(request.page_size))
            .map(|unit| pb::MetricUnit {
                case_id: unit.case_id.as_deref().unwrap_or_default().to_owned(),
                child_id: unit.child_id.as_deref().unwrap_or_default().to_owned(),
                report_id: unit.report_id.as_deref().unwrap_or_default().to_owned(),
                practitioner_id: unit.practitioner_id.as_deref().unwrap_or_default().to_owned(),
                numerator: unit.numerator,
                denominator: unit.denominator,
                dates: unit
                    .dates
                    .iter()
                    .map(|(name, date)| pb::UnitDate {
                        name: (*name).to_owned(),
                        date: date.to_string(),
                    })
                    .collect(),
            })
            .collect();
        Ok(pb::ListMetricUnitsResponse {
            figure: Some(result_out(figure, &self.targets)),
            next_page_token: next_page_token(offset + page.len(), units.len()),
            total_units: u32::try_from(units.len()).unwrap_or(u32::MAX),
            units: page,
            position: position.get(),
        })
    }
}
