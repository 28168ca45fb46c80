//! Case facts: what the metrics need to know of one case, folded from its events that are not
//! voided. A pure function of the case's event set, so late, out-of-order, resent and voided
//! events give the same facts as an orderly history.

use caselog_domain::event::{ApplicationType, BirthMonth, LawType, ReportType, SeenMode};
use caselog_domain::{CaseHistory, Payload};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseFacts {
    pub case_id: String,
    pub law_type: LawType,
    pub application_types: Vec<ApplicationType>,
    pub court_code: String,
    pub service_area: String,
    pub local_authority_code: Option<String>,
    pub issued_on: NaiveDate,
    pub received_on: Option<NaiveDate>,
    pub closed_on: Option<NaiveDate>,
    /// Lead and guardian allocations, sorted by date (then recording order).
    pub lead_allocations: Vec<(NaiveDate, String)>,
    pub children: Vec<ChildFacts>,
    pub reports: Vec<ReportFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildFacts {
    pub child_id: String,
    pub birth_month: BirthMonth,
    /// `None` for children named at issue; the `child_joined` date otherwise.
    pub joined_on: Option<NaiveDate>,
    pub seen_in_person: Vec<NaiveDate>,
    pub seen_virtually: Vec<NaiveDate>,
    pub engagement_records: Vec<NaiveDate>,
    /// Dates of letters of introduction, with whether each was personalised.
    pub letters: Vec<(NaiveDate, bool)>,
    pub recommendations_shared: Vec<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportFacts {
    pub report_id: String,
    pub report_type: ReportType,
    pub ordered_on: Option<NaiveDate>,
    /// Agreed due dates: (the day it was agreed, the due date), from the order and each extension.
    pub due_dates: Vec<(NaiveDate, NaiveDate)>,
    /// Days on which an extension was agreed.
    pub extensions: Vec<NaiveDate>,
    pub filed_on: Option<NaiveDate>,
}

/// The dates at which a case can count in any metric, in 16 bytes: a query over ten years
/// skips the cases outside its period from a compact array instead of visiting each case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// The earliest and latest of the dates a metric anchors on: issue, receipt, first lead
    /// allocation, report filings and closure.
    pub first: NaiveDate,
    pub last: NaiveDate,
    pub issued_on: NaiveDate,
    pub closed_on: Option<NaiveDate>,
}

impl Reach {
    /// Open at the end of `day` (as [`CaseFacts::open_on`]).
    pub fn open_on(&self, day: NaiveDate) -> bool {
        self.issued_on <= day && self.closed_on.is_none_or(|closed| closed > day)
    }
}

impl CaseFacts {
    pub fn reach(&self) -> Reach {
        let anchors = [
            Some(self.issued_on),
            Some(self.received()),
            self.closed_on,
            self.first_lead_allocation(),
        ]
        .into_iter()
        .flatten()
        .chain(self.reports.iter().filter_map(|r| r.filed_on));
        let (first, last) = anchors.fold((self.issued_on, self.issued_on), |(lo, hi), d| (lo.min(d), hi.max(d)));
        Reach {
            first,
            last,
            issued_on: self.issued_on,
            closed_on: self.closed_on,
        }
    }
}

impl CaseFacts {
    /// The first lead allocation: the earliest with role lead or guardian.
    pub fn first_lead_allocation(&self) -> Option<NaiveDate> {
        self.lead_allocations.first().map(|(on, _)| *on)
    }

    /// The day the case was received: `received_on`, else the issue date.
    pub fn received(&self) -> NaiveDate {
        self.received_on.unwrap_or(self.issued_on)
    }

    /// Open at the end of `day`: issued on or before it and not closed on or before it.
    pub fn open_on(&self, day: NaiveDate) -> bool {
        self.issued_on <= day && self.closed_on.is_none_or(|closed| closed > day)
    }

    /// Children in the case on `day` (named at issue, or joined on or before it).
    pub fn children_on(&self, day: NaiveDate) -> impl Iterator<Item = &ChildFacts> {
        self.children
            .iter()
            .filter(move |c| c.joined_on.is_none_or(|joined| joined <= day))
    }

    /// The practitioner of the latest lead or guardian allocation on or before `day`.
    pub fn lead_practitioner_on(&self, day: NaiveDate) -> Option<&str> {
        self.lead_allocations
            .iter()
            .rev()
            .find(|(on, _)| *on <= day)
            .map(|(_, who)| who.as_str())
    }

    pub fn has_application(&self, wanted: impl Fn(ApplicationType) -> bool) -> bool {
        self.application_types.iter().any(|t| wanted(*t))
    }
}

/// The facts of a case, or `None` when it has no `case_issued`.
pub fn facts_of(case_id: &str, history: &CaseHistory) -> Option<CaseFacts> {
    let view = history.view()?;
    let voided = history.voided_by();
    let mut facts = CaseFacts {
        case_id: case_id.to_owned(),
        law_type: view.issue.law_type,
        application_types: view.issue.application_types.clone(),
        court_code: view.issue.court_code.clone(),
        service_area: view.issue.service_area.clone(),
        local_authority_code: view.issue.local_authority_code.clone(),
        issued_on: view.issued_on,
        received_on: view.issue.received_on,
        closed_on: view.closure.map(|c| c.closed_on),
        lead_allocations: Vec::new(),
        children: view
            .issue
            .children
            .iter()
            .map(|c| ChildFacts::new(&c.child_id, c.birth_month, None))
            .collect(),
        reports: Vec::new(),
    };
    let live = history.events().iter().filter(|e| !voided.contains_key(&e.event_id));
    for event in live {
        let on = event.occurred_on;
        match &event.payload {
            Payload::ChildJoined(c) => facts
                .children
                .push(ChildFacts::new(&c.child_id, c.birth_month, Some(on))),
            Payload::CaseAllocated(a) if a.role.is_lead() => {
                facts.lead_allocations.push((on, a.practitioner_id.clone()))
            }
            Payload::ChildSeen(s) => {
                if let Some(child) = facts.child_mut(&s.child_id) {
                    match s.mode {
                        SeenMode::InPerson => child.seen_in_person.push(on),
                        SeenMode::Virtual => child.seen_virtually.push(on),
                    }
                }
            }
            Payload::LetterSent(l) => {
                if let Some(child) = facts.child_mut(&l.child_id) {
                    child.letters.push((on, l.personalised));
                }
            }
            Payload::EngagementRecordCompleted(c) => {
                if let Some(child) = facts.child_mut(&c.child_id) {
                    child.engagement_records.push(on);
                }
            }
            Payload::RecommendationShared(c) => {
                if let Some(child) = facts.child_mut(&c.child_id) {
                    child.recommendations_shared.push(on);
                }
            }
            Payload::ReportOrdered(r) => {
                let report = facts.report_mut(&r.report_id, r.report_type);
                report.report_type = r.report_type;
                report.ordered_on = Some(on);
                report.due_dates.push((on, r.due_on));
            }
            Payload::FilingDateExtended(x) => {
                if let Some(report) = facts.reports.iter_mut().find(|r| r.report_id == x.report_id) {
                    report.due_dates.push((on, x.due_on));
                    report.extensions.push(on);
                }
            }
            Payload::ReportFiled(f) => facts.report_mut(&f.report_id, f.report_type).filed_on = Some(on),
            _ => {}
        }
    }
    // Stable sorts keep recording order among events of the same day.
    facts.lead_allocations.sort_by_key(|(on, _)| *on);
    for child in &mut facts.children {
        child.seen_in_person.sort();
        child.seen_virtually.sort();
        child.engagement_records.sort();
        child.letters.sort();
        child.recommendations_shared.sort();
    }
    for report in &mut facts.reports {
        report.due_dates.sort_by_key(|(agreed, _)| *agreed);
        report.extensions.sort();
    }
    facts.reports.sort_by(|a, b| a.report_id.cmp(&b.report_id));
    Some(facts)
}

impl ChildFacts {
    fn new(child_id: &str, birth_month: BirthMonth, joined_on: Option<NaiveDate>) -> ChildFacts {
        ChildFacts {
            child_id: child_id.to_owned(),
            birth_month,
            joined_on,
            seen_in_person: Vec::new(),
            seen_virtually: Vec::new(),
            engagement_records: Vec::new(),
            letters: Vec::new(),
            recommendations_shared: Vec::new(),
        }
    }
}

impl CaseFacts {
    fn child_mut(&mut self, child_id: &str) -> Option<&mut ChildFacts> {
        self.children.iter_mut().find(|c| c.child_id == child_id)
    }

    fn report_mut(&mut self, report_id: &str, report_type: ReportType) -> &mut ReportFacts {
        let index = match self.reports.iter().position(|r| r.report_id == report_id) {
            Some(i) => i,
            None => {
                self.reports.push(ReportFacts {
                    report_id: report_id.to_owned(),
                    report_type,
                    ordered_on: None,
                    due_dates: Vec::new(),
                    extensions: Vec::new(),
                    filed_on: None,
                });
                self.reports.len() - 1
            }
        };
        &mut self.reports[index]
    }
}
