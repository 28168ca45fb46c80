//! Demand (D1, D2): the cases and children received in the period, and cases per working day.

use super::{Caseloads, Collector, Counting, Kind, MetricId, MetricsError, MetricsQuery, Spec, Unit};
use caselog_calendar::WorkingCalendar;

pub(super) const D1_CASES: Spec = Spec {
    id: "D1.cases",
    unit: "case",
    kind: Kind::Count,
    stock: false,
    days_per_unit: 1.0,
    definition: |_| "cases whose received_on (else issue date) is in the period".into(),
};
pub(super) const D1_CHILDREN: Spec = Spec {
    id: "D1.children",
    unit: "child",
    kind: Kind::Count,
    stock: false,
    days_per_unit: 1.0,
    definition: |_| "children named in case_issued of cases received in the period".into(),
};
pub(super) const D2: Spec = Spec {
    id: "D2",
    unit: "case",
    kind: Kind::Mean("cases per working day"),
    stock: false,
    days_per_unit: 1.0,
    definition: |_| "D1 cases / working days in the period".into(),
};

/// Adds `case`, and the children named at its issue, when it was received in the period.
pub(super) fn count<'a>(
    c: &mut Collector<'a>,
    cx: &mut Counting<'_, 'a>,
    _caseloads: &mut Caseloads<'a>,
) -> Result<(), MetricsError> {
    let (query, case, case_keys) = cx.unit();
    if !query.period.contains(case.received()) {
        return Ok(());
    }
    let dates = |u: Unit| u.date("received", case.received());
    c.add_case(MetricId::D1Cases, case_keys, (query, case), 1.0, 0.0, dates);
    // D2's numerator; its denominator, the working days of the period, is set by `finish`.
    c.add_case(MetricId::D2, case_keys, (query, case), 1.0, 0.0, dates);
    if c.wants(MetricId::D1Children) {
        for child in case.children.iter().filter(|ch| ch.joined_on.is_none()) {
            let k = c.child_keys(case_keys, (query, case), child, case.received());
            c.add(MetricId::D1Children, &k, 1.0, 0.0, || dates(Unit::child(case, child)));
        }
    }
    Ok(())
}

/// D2 per working day: every group's denominator is the period's working days.
pub(super) fn finish(
    c: &mut Collector<'_>,
    query: &MetricsQuery,
    calendar: &WorkingCalendar,
) -> Result<(), MetricsError> {
    if c.wants(MetricId::D2) {
        let working_days = calendar.working_days_in(query.period.first, query.period.last)? as f64;
        for acc in c.acc[MetricId::D2 as usize].iter_mut().flatten() {
            acc.denominator = working_days;
        }
    }
    Ok(())
}
