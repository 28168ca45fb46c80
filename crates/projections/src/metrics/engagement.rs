//! Engagement (E1-E4): whether each child was seen, had an engagement record, was sent a
//! personalised letter and had the recommendation explained to them.

use super::{Caseloads, Collector, Counting, Kind, MetricId, MetricsError, Spec, Unit, flag, seen_dates};
use caselog_domain::event::ReportType;
use chrono::NaiveDate;

pub(super) const E1: Spec = Spec {
    id: "E1",
    unit: "child",
    kind: Kind::Share,
    stock: false,
    days_per_unit: 1.0,
    definition: |s| {
        format!(
            "children in cases closed in the period; share seen {} between the first lead allocation and the closure (inclusive)",
            s.seen_as()
        )
    },
};
pub(super) const E2: Spec = Spec {
    id: "E2",
    unit: "child",
    kind: Kind::Share,
    stock: false,
    days_per_unit: 1.0,
    definition: |_| {
        "children in cases closed in the period; share with engagement_record_completed on or before the closure".into()
    },
};
pub(super) const E3: Spec = Spec {
    id: "E3",
    unit: "child",
    kind: Kind::Share,
    stock: false,
    days_per_unit: 1.0,
    definition: |_| {
        "children of cases whose first lead allocation is in the period (including children who joined later); share sent a personalised letter at any time".into()
    },
};
pub(super) const E4: Spec = Spec {
    id: "E4",
    unit: "child",
    kind: Kind::Share,
    stock: false,
    days_per_unit: 1.0,
    definition: |_| {
        "children in cases with a section7, rule16_4_analysis or final_analysis report filed in the period; share with recommendation_shared on or before the latest such filing in the period; children are those in the case on that filing date".into()
    },
};

/// Adds `case`'s children to E1-E4.
pub(super) fn count<'a>(
    c: &mut Collector<'a>,
    cx: &mut Counting<'_, 'a>,
    _caseloads: &mut Caseloads<'a>,
) -> Result<(), MetricsError> {
    let (query, case, case_keys) = cx.unit();
    let period = &query.period;
    let settings = &query.settings;
    if let Some(closed) = case.closed_on.filter(|d| period.contains(*d))
        && (c.wants(MetricId::E1) || c.wants(MetricId::E2))
    {
        let first_lead = case.first_lead_allocation();
        for child in case.children_on(closed) {
            let k = c.child_keys(case_keys, (query, case), child, closed);
            let seen = first_lead.is_some_and(|from| seen_dates(child, settings).any(|d| from <= d && d <= closed));
            c.add(MetricId::E1, &k, flag(seen), 1.0, || {
                Unit::child(case, child)
                    .date_if("first_lead_allocation", first_lead)
                    .date_if(
                        "first_seen",
                        seen_dates(child, settings)
                            .filter(|d| first_lead.is_some_and(|f| f <= *d))
                            .min(),
                    )
                    .date("closed", closed)
            });
            c.add(
                MetricId::E2,
                &k,
                flag(child.engagement_records().iter().any(|d| *d <= closed)),
                1.0,
                || {
                    Unit::child(case, child)
                        .date_if("engagement_record", child.engagement_records().iter().min().copied())
                        .date("closed", closed)
                },
            );
        }
    }
    if let Some(first_lead) = case.first_lead_allocation().filter(|d| period.contains(*d))
        && c.wants(MetricId::E3)
    {
        for child in &case.children {
            let k = c.child_keys(case_keys, (query, case), child, first_lead);
            c.add(MetricId::E3, &k, flag(child.has_personalised_letter()), 1.0, || {
                Unit::child(case, child)
                    .date("first_lead_allocation", first_lead)
                    .date_if(
                        "personalised_letter",
                        child.letters().into_iter().filter(|(_, p)| *p).map(|(d, _)| d).min(),
                    )
            });
        }
    }
    if c.wants(MetricId::E4) {
        let latest_recommendation_filing: Option<NaiveDate> = case
            .reports
            .iter()
            .filter(|r| {
                matches!(
                    r.report_type,
                    ReportType::Section7 | ReportType::Rule16_4Analysis | ReportType::FinalAnalysis
                )
            })
            .filter_map(|r| r.filed_on.filter(|d| period.contains(*d)))
            .max();
        if let Some(filed) = latest_recommendation_filing {
            for child in case.children_on(filed) {
                let k = c.child_keys(case_keys, (query, case), child, filed);
                c.add(
                    MetricId::E4,
                    &k,
                    flag(child.recommendations_shared().iter().any(|d| *d <= filed)),
                    1.0,
                    || {
                        Unit::child(case, child)
                            .date_if(
                                "recommendation_shared",
                                child.recommendations_shared().iter().min().copied(),
                            )
                            .date("report_filed", filed)
                    },
                );
            }
        }
    }
    Ok(())
}
