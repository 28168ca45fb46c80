//! Operational worklists: child-, report- and case-level rows for practice teams, computed from
//! the same case facts as the metrics.

use crate::facts::CaseFacts;
use crate::metrics::{MetricsError, report_type_name};
use caselog_calendar::WorkingCalendar;
use caselog_domain::event::LawType;
use chrono::NaiveDate;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorklistKind {
    /// Children in open public-law cases not yet seen in person whose 15-working-day deadline is
    /// within `within` working days or past.
    ChildrenNotSeen,
    /// Reports not filed whose latest agreed due date is today or within `within` working days.
    ReportsDue,
    /// Reports not filed whose latest agreed due date has passed.
    ReportsOverdue,
    CasesOpenOver52Weeks,
    CasesOpenOver100Weeks,
}

impl WorklistKind {
    pub const ALL: [WorklistKind; 5] = [
        WorklistKind::ChildrenNotSeen,
        WorklistKind::ReportsDue,
        WorklistKind::ReportsOverdue,
        WorklistKind::CasesOpenOver52Weeks,
        WorklistKind::CasesOpenOver100Weeks,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorklistItem {
    pub case_id: String,
    pub child_id: Option<String>,
    pub report_id: Option<String>,
    pub report_type: Option<&'static str>,
    /// The deadline or due date (the issue date for long-running cases).
    pub date: NaiveDate,
    /// Working days from `as_at` to `date`: negative when past.
    pub working_days_left: i64,
    pub weeks_open: i64,
    pub practitioner_id: Option<String>,
}

/// The worklist of `kind` for the cases of `service_area` at the end of `as_at`, most urgent first.
pub fn worklist<'a>(
    kind: WorklistKind,
    service_area: &str,
    cases: impl IntoIterator<Item = &'a CaseFacts>,
    as_at: NaiveDate,
    within: u32,
    calendar: &WorkingCalendar,
) -> Result<Vec<WorklistItem>, MetricsError> {
    let mut items = Vec::new();
    for case in cases
        .into_iter()
        .filter(|c| *c.service_area == *service_area && c.open_on(as_at))
    {
        let weeks_open = (as_at - case.issued_on).num_days() / 7;
        let item = |date: NaiveDate,
                    child_id: Option<String>,
                    report: Option<(&str, &'static str)>|
         -> Result<WorklistItem, MetricsError> {
            Ok(WorklistItem {
                case_id: case.case_id.to_string(),
                child_id,
                report_id: report.map(|(id, _)| id.to_owned()),
                report_type: report.map(|(_, t)| t),
                date,
                working_days_left: calendar.working_days_between(as_at, date)?,
                weeks_open,
                practitioner_id: case.lead_practitioner_on(as_at).map(str::to_owned),
            })
        };
        match kind {
            WorklistKind::ChildrenNotSeen => {
                let Some(first_lead) = case.first_lead_allocation().filter(|d| *d <= as_at) else {
                    continue;
                };
                if case.law_type != LawType::Public {
                    continue;
                }
                let deadline = calendar.add_working_days(first_lead, 15)?;
                for child in case.children_on(as_at) {
                    if child.seen_in_person().iter().any(|d| *d <= as_at) {
                        continue;
                    }
                    let candidate = item(deadline, Some(child.child_id.to_string()), None)?;
                    if candidate.working_days_left <= i64::from(within) {
                        items.push(candidate);
                    }
                }
            }
            WorklistKind::ReportsDue | WorklistKind::ReportsOverdue => {
                for report in &case.reports {
                    if report.filed_on.is_some_and(|d| d <= as_at) {
                        continue;
                    }
                    let Some((_, due)) = report.due_dates.iter().rev().find(|(agreed, _)| *agreed <= as_at) else {
                        continue;
                    };
                    let candidate = item(
                        *due,
                        None,
                        Some((&report.report_id, report_type_name(report.report_type))),
                    )?;
                    let wanted = match kind {
                        WorklistKind::ReportsOverdue => *due < as_at,
                        _ => *due >= as_at && candidate.working_days_left <= i64::from(within),
                    };
                    if wanted {
                        items.push(candidate);
                    }
                }
            }
            WorklistKind::CasesOpenOver52Weeks | WorklistKind::CasesOpenOver100Weeks => {
                let weeks = if kind == WorklistKind::CasesOpenOver52Weeks {
                    52.0
                } else {
                    100.0
                };
                if (as_at - case.issued_on).num_days() as f64 / 7.0 > weeks {
                    items.push(item(case.issued_on, None, None)?);
                }
            }
        }
    }
    items.sort_by(|a, b| {
        (a.date, &a.case_id, &a.child_id, &a.report_id).cmp(&(b.date, &b.case_id, &b.child_id, &b.report_id))
    });
    Ok(items)
}
