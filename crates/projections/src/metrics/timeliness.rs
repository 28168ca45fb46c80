//! Timeliness (T1-T8): how long proceedings, allocations and reports take, each figure counted
//! in the period of the event that stops its clock.

use super::{
    Caseloads, Collector, Counting, Kind, MetricId, MetricsError, Spec, Unit, flag, is_s8, is_s31, seen_dates,
    within_limit,
};
use crate::facts::{CaseFacts, ReportFacts};
use caselog_domain::event::{LawType, ReportType};
use chrono::NaiveDate;

pub(super) const T1: Spec = Spec {
    id: "T1",
    unit: "application",
    kind: Kind::Mean("weeks"),
    stock: false,
    days_per_unit: 7.0,
    definition: |_| {
        "mean days(issued, closed)/7 of cases with an s31 application closed in the period (a case counts once)".into()
    },
};
pub(super) const T2: Spec = Spec {
    id: "T2",
    unit: "application",
    kind: Kind::Share,
    stock: false,
    days_per_unit: 1.0,
    definition: |s| {
        format!(
            "share of cases with an s31 application closed in the period with closed <= issued + {} days",
            s.twenty_six_week_limit_days
        )
    },
};
pub(super) const T3: Spec = Spec {
    id: "T3",
    unit: "case",
    kind: Kind::Share,
    stock: false,
    days_per_unit: 1.0,
    definition: |s| {
        format!(
            "share of private-law cases with an s8 application closed in the period with closed <= issued + {} days",
            s.twenty_six_week_limit_days
        )
    },
};
pub(super) const T4: Spec = Spec {
    id: "T4",
    unit: "child",
    kind: Kind::Share,
    stock: false,
    days_per_unit: 1.0,
    definition: |s| {
        format!(
            "public-law children whose first lead allocation is in the period and whose deadline add_working_days(first lead allocation, 15) is on or before the period end, plus those seen by then; share seen {} on or before the deadline and the period end; children are those in the case at the deadline",
            s.seen_as()
        )
    },
};
pub(super) const T5: Spec = Spec {
    id: "T5",
    unit: "case",
    kind: Kind::Share,
    stock: false,
    days_per_unit: 1.0,
    definition: |_| {
        "cases issued in the period with a first lead allocation; share with wd(received_on or issue date, first lead allocation) <= 2".into()
    },
};
pub(super) const T5_MEAN_WORKING_DAYS: Spec = Spec {
    id: "T5.mean_working_days",
    unit: "case",
    kind: Kind::Mean("working days"),
    stock: false,
    days_per_unit: 1.0,
    definition: |_| {
        "cases issued in the period with a first lead allocation; mean wd(received_on or issue date, first lead allocation)".into()
    },
};
pub(super) const T6: Spec = Spec {
    id: "T6",
    unit: "report",
    kind: Kind::Mean("working weeks"),
    stock: false,
    days_per_unit: 5.0,
    definition: |_| {
        "reports filed in the period, by type; mean wd(start, filed)/5; start: safeguarding letter = received_on (else issue date), final analysis = first lead allocation (product convention; else as other types), other types = report_ordered date, else issue date".into()
    },
};
pub(super) const T7: Spec = Spec {
    id: "T7",
    unit: "report",
    kind: Kind::Share,
    stock: false,
    days_per_unit: 1.0,
    definition: |_| {
        "section 7 reports filed in the period; share with a filing_date_extended on or before the filing date".into()
    },
};
pub(super) const T8: Spec = Spec {
    id: "T8",
    unit: "report",
    kind: Kind::Share,
    stock: false,
    days_per_unit: 1.0,
    definition: |_| {
        "reports with a due date filed in the period; share filed after the latest due date agreed (report_ordered or filing_date_extended) on or before the filing date".into()
    },
};

/// Adds `case`'s units to T1-T8.
pub(super) fn count<'a>(
    c: &mut Collector<'a>,
    cx: &mut Counting<'_, 'a>,
    _caseloads: &mut Caseloads<'a>,
) -> Result<(), MetricsError> {
    let calendar = cx.calendar;
    let (query, case, case_keys) = cx.unit();
    let period = &query.period;
    let settings = &query.settings;
    if let Some(closed) = case.closed_on.filter(|d| period.contains(*d)) {
        if case.has_application(is_s31) {
            c.add_case(
                MetricId::T1,
                case_keys,
                (query, case),
                (closed - case.issued_on).num_days() as f64,
                1.0,
                |u| u.date("issued", case.issued_on).date("closed", closed),
            );
            c.add_case(
                MetricId::T2,
                case_keys,
                (query, case),
                flag(within_limit(case, closed, settings)),
                1.0,
                |u| u.date("issued", case.issued_on).date("closed", closed),
            );
        }
        if case.law_type == LawType::Private && case.has_application(is_s8) {
            c.add_case(
                MetricId::T3,
                case_keys,
                (query, case),
                flag(within_limit(case, closed, settings)),
                1.0,
                |u| u.date("issued", case.issued_on).date("closed", closed),
            );
        }
    }
    if let Some(first_lead) = case.first_lead_allocation().filter(|d| period.contains(*d))
        && case.law_type == LawType::Public
        && c.wants(MetricId::T4)
    {
        let deadline = calendar.add_working_days(first_lead, 15)?;
        for child in case.children_on(deadline) {
            let seen_in_time = seen_dates(child, settings).any(|d| d <= deadline && d <= period.last);
            if deadline <= period.last || seen_in_time {
                let k = c.child_keys(case_keys, (query, case), child, first_lead);
                c.add(MetricId::T4, &k, flag(seen_in_time), 1.0, || {
                    Unit::child(case, child)
                        .date("first_lead_allocation", first_lead)
                        .date("deadline", deadline)
                        .date_if("first_seen", seen_dates(child, settings).min())
                });
            }
        }
    }
    if period.contains(case.issued_on)
        && let Some(first_lead) = case.first_lead_allocation()
        && (c.wants(MetricId::T5) || c.wants(MetricId::T5MeanWorkingDays))
    {
        let days = calendar.working_days_between(case.received(), first_lead)?;
        let dates = |u: Unit| {
            u.date("received", case.received())
                .date("first_lead_allocation", first_lead)
        };
        c.add_case(MetricId::T5, case_keys, (query, case), flag(days <= 2), 1.0, dates);
        c.add_case(
            MetricId::T5MeanWorkingDays,
            case_keys,
            (query, case),
            days as f64,
            1.0,
            dates,
        );
    }
    for report in &case.reports {
        let Some(filed) = report.filed_on.filter(|d| period.contains(*d)) else {
            continue;
        };
        if !(c.wants(MetricId::T6) || c.wants(MetricId::T7) || c.wants(MetricId::T8)) {
            break;
        }
        let k = c.keys(query, case, None, Some(report.report_type));
        if c.wants(MetricId::T6) {
            let start = report_start(case, report);
            c.add(
                MetricId::T6,
                &k,
                calendar.working_days_between(start, filed)? as f64,
                1.0,
                || Unit::report(case, report).date("start", start).date("filed", filed),
            );
        }
        if report.report_type == ReportType::Section7 {
            c.add(
                MetricId::T7,
                &k,
                flag(report.extensions.iter().any(|d| *d <= filed)),
                1.0,
                || {
                    Unit::report(case, report)
                        .date_if("first_extension", report.extensions.iter().min().copied())
                        .date("filed", filed)
                },
            );
        }
        if let Some((_, due)) = report.due_dates.iter().rev().find(|(agreed, _)| *agreed <= filed) {
            c.add(MetricId::T8, &k, flag(filed > *due), 1.0, || {
                Unit::report(case, report).date("due", *due).date("filed", filed)
            });
        }
    }
    Ok(())
}

/// The start of a report's working-week clock (T6).
fn report_start(case: &CaseFacts, report: &ReportFacts) -> NaiveDate {
    match report.report_type {
        ReportType::SafeguardingLetter => case.received(),
        ReportType::FinalAnalysis => case
            .first_lead_allocation()
            .or(report.ordered_on)
            .unwrap_or(case.issued_on),
        _ => report.ordered_on.unwrap_or(case.issued_on),
    }
}
