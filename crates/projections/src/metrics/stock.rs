//! Stock (S1, S2): the cases and children open at a snapshot, and those open over 52 and over
//! 100 weeks.

use super::{Caseloads, Collector, Counting, Kind, MetricId, MetricsError, Spec, Unit, flag};

const fn count_of(id: &'static str, unit: &'static str, definition: fn(&super::Settings) -> String) -> Spec {
    Spec {
        id,
        unit,
        kind: Kind::Count,
        stock: true,
        days_per_unit: 1.0,
        definition,
    }
}

pub(super) const S1_CASES: Spec = count_of("S1.cases", "case", |_| {
    "cases open at the snapshot (issued on or before it, not closed on or before it)".into()
});
pub(super) const S1_CHILDREN: Spec = count_of("S1.children", "child", |_| {
    "children in cases open at the snapshot, in the case on the snapshot date".into()
});
pub(super) const S2_CASES_OVER_52: Spec = count_of("S2.cases_over_52_weeks", "case", |_| {
    "open cases with days(issued, snapshot)/7 > 52".into()
});
pub(super) const S2_CHILDREN_OVER_52: Spec = count_of("S2.children_over_52_weeks", "child", |_| {
    "children of open cases with days(issued, snapshot)/7 > 52".into()
});
pub(super) const S2_CASES_OVER_100: Spec = count_of("S2.cases_over_100_weeks", "case", |_| {
    "open cases with days(issued, snapshot)/7 > 100".into()
});
pub(super) const S2_CHILDREN_OVER_100: Spec = count_of("S2.children_over_100_weeks", "child", |_| {
    "children of open cases with days(issued, snapshot)/7 > 100".into()
});

/// Adds `case`, and its children on the snapshot date, when it is open then.
pub(super) fn count<'a>(
    c: &mut Collector<'a>,
    cx: &mut Counting<'_, 'a>,
    _caseloads: &mut Caseloads<'a>,
) -> Result<(), MetricsError> {
    let (query, case, case_keys) = cx.unit();
    let snapshot = query.snapshot_date();
    if !case.open_on(snapshot) {
        return Ok(());
    }
    let weeks = (snapshot - case.issued_on).num_days() as f64 / 7.0;
    let dates = |u: Unit| u.date("issued", case.issued_on).date("snapshot", snapshot);
    c.add_case(MetricId::S1Cases, case_keys, (query, case), 1.0, 0.0, dates);
    c.add_case(
        MetricId::S2CasesOver52,
        case_keys,
        (query, case),
        flag(weeks > 52.0),
        0.0,
        dates,
    );
    c.add_case(
        MetricId::S2CasesOver100,
        case_keys,
        (query, case),
        flag(weeks > 100.0),
        0.0,
        dates,
    );
    if c.wants(MetricId::S1Children) || c.wants(MetricId::S2ChildrenOver52) || c.wants(MetricId::S2ChildrenOver100) {
        for child in case.children_on(snapshot) {
            let k = c.child_keys(case_keys, (query, case), child, snapshot);
            let unit = || dates(Unit::child(case, child));
            c.add(MetricId::S1Children, &k, 1.0, 0.0, unit);
            c.add(MetricId::S2ChildrenOver52, &k, flag(weeks > 52.0), 0.0, unit);
            c.add(MetricId::S2ChildrenOver100, &k, flag(weeks > 100.0), 0.0, unit);
        }
    }
    Ok(())
}
