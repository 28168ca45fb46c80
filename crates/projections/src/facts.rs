//! Case facts: what the metrics need to know of one case, folded from its events that are not
//! voided. A pure function of the case's event set, so late, out-of-order, resent and voided
//! events give the same facts as an orderly history.

use caselog_domain::event::{ApplicationType, BirthMonth, LawType, ReportType, SeenMode};
use caselog_domain::{CaseHistory, Payload};
use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

/// A case's facts as the read model holds them, hundreds of thousands at once: codes shared by
/// many cases (courts, service areas, local authorities, practitioners, application-type sets)
/// point at one copy (see [`SharedCodes`]), and every list is an exact-size boxed slice. The
/// JSON form is the same as plain strings and arrays, so stored rows read either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseFacts {
    pub case_id: Arc<str>,
    pub law_type: LawType,
    pub application_types: Arc<[ApplicationType]>,
    pub court_code: Arc<str>,
    pub service_area: Arc<str>,
    pub local_authority_code: Option<Arc<str>>,
    pub issued_on: NaiveDate,
    pub received_on: Option<NaiveDate>,
    pub closed_on: Option<NaiveDate>,
    /// Lead and guardian allocations, sorted by date (then recording order).
    pub lead_allocations: Box<[(NaiveDate, Arc<str>)]>,
    pub children: Box<[ChildFacts]>,
    pub reports: Box<[ReportFacts]>,
}

/// A child's facts, with every dated record in one exact-size list (a child has four or five,
/// and one allocation for them all instead of one per kind is most of what the packing saves).
/// Serialised as [`ChildRecords`] in human-readable formats (the stored JSON), and as held, with
/// dates as day numbers, in compact ones (read-model snapshots), where decoding is most of a
/// server's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildFacts {
    pub child_id: Box<str>,
    pub birth_month: BirthMonth,
    /// `None` for children named at issue; the `child_joined` date otherwise.
    pub joined_on: Option<NaiveDate>,
    /// The records of each [`Kind`] in turn, each kind sorted.
    dates: Box<[NaiveDate]>,
    /// Where each kind's records end in `dates`.
    ends: [u32; RECORD_KINDS],
}

/// The kinds of dated record a child has, in the order [`ChildFacts`] packs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SeenInPerson,
    SeenVirtually,
    Engagement,
    Letter,
    PersonalisedLetter,
    RecommendationShared,
}

const RECORD_KINDS: usize = 6;

/// A child's facts as plain lists: how they are stored (JSON) and folded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRecords {
    pub child_id: String,
    pub birth_month: BirthMonth,
    pub joined_on: Option<NaiveDate>,
    pub seen_in_person: Vec<NaiveDate>,
    pub seen_virtually: Vec<NaiveDate>,
    pub engagement_records: Vec<NaiveDate>,
    /// Dates of letters of introduction, with whether each was personalised.
    pub letters: Vec<(NaiveDate, bool)>,
    pub recommendations_shared: Vec<NaiveDate>,
}

impl ChildFacts {
    fn records(&self, kind: Kind) -> &[NaiveDate] {
        let index = kind as usize;
        let start = if index == 0 { 0 } else { self.ends[index - 1] as usize };
        &self.dates[start..self.ends[index] as usize]
    }

    pub fn seen_in_person(&self) -> &[NaiveDate] {
        self.records(Kind::SeenInPerson)
    }

    pub fn seen_virtually(&self) -> &[NaiveDate] {
        self.records(Kind::SeenVirtually)
    }

    pub fn engagement_records(&self) -> &[NaiveDate] {
        self.records(Kind::Engagement)
    }

    pub fn recommendations_shared(&self) -> &[NaiveDate] {
        self.records(Kind::RecommendationShared)
    }

    pub fn has_personalised_letter(&self) -> bool {
        !self.records(Kind::PersonalisedLetter).is_empty()
    }

    /// Letters of introduction, with whether each was personalised, sorted as (date, flag).
    pub fn letters(&self) -> Vec<(NaiveDate, bool)> {
        let plain = self.records(Kind::Letter).iter().map(|d| (*d, false));
        let personalised = self.records(Kind::PersonalisedLetter).iter().map(|d| (*d, true));
        let mut letters: Vec<(NaiveDate, bool)> = plain.chain(personalised).collect();
        letters.sort();
        letters
    }

    /// The plain lists these were packed from.
    pub fn to_records(&self) -> ChildRecords {
        ChildRecords {
            child_id: self.child_id.to_string(),
            birth_month: self.birth_month,
            joined_on: self.joined_on,
            seen_in_person: self.seen_in_person().to_vec(),
            seen_virtually: self.seen_virtually().to_vec(),
            engagement_records: self.engagement_records().to_vec(),
            letters: self.letters(),
            recommendations_shared: self.recommendations_shared().to_vec(),
        }
    }
}

impl From<ChildRecords> for ChildFacts {
    /// Sorts each kind (stable, as the fold leaves same-day records in recording order).
    fn from(records: ChildRecords) -> ChildFacts {
        let (personalised, plain): (Vec<_>, Vec<_>) = records.letters.iter().partition(|(_, p)| *p);
        let kinds: [Vec<NaiveDate>; RECORD_KINDS] = [
            records.seen_in_person,
            records.seen_virtually,
            records.engagement_records,
            plain.into_iter().map(|(d, _)| d).collect(),
            personalised.into_iter().map(|(d, _)| d).collect(),
            records.recommendations_shared,
        ];
        let mut dates = Vec::with_capacity(kinds.iter().map(Vec::len).sum());
        let mut ends = [0; RECORD_KINDS];
        for (kind, mut list) in kinds.into_iter().enumerate() {
            list.sort();
            dates.extend(list);
            // A child's records are events of one case, whose versions fit in an i32.
            ends[kind] = u32::try_from(dates.len()).unwrap_or(u32::MAX);
        }
        ChildFacts {
            child_id: records.child_id.into_boxed_str(),
            birth_month: records.birth_month,
            joined_on: records.joined_on,
            dates: dates.into_boxed_slice(),
            ends,
        }
    }
}

impl Serialize for ChildFacts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return self.to_records().serialize(serializer);
        }
        PackedChild {
            child_id: self.child_id.clone(),
            birth_month: self.birth_month,
            joined_on: self.joined_on.map(day_number),
            dates: self.dates.iter().copied().map(day_number).collect(),
            ends: self.ends,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ChildFacts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ChildFacts, D::Error> {
        use serde::de::Error;
        if deserializer.is_human_readable() {
            return ChildRecords::deserialize(deserializer).map(ChildFacts::from);
        }
        let packed = PackedChild::deserialize(deserializer)?;
        let date = |n: i32| {
            NaiveDate::from_num_days_from_ce_opt(n).ok_or_else(|| D::Error::custom(format!("day {n} is not a date")))
        };
        let dates = packed
            .dates
            .iter()
            .map(|&n| date(n))
            .collect::<Result<Box<[NaiveDate]>, _>>()?;
        // `records` slices by these: they must rise to the end of the list.
        let rising = packed.ends.windows(2).all(|pair| pair[0] <= pair[1]);
        if !rising || packed.ends[RECORD_KINDS - 1] as usize != dates.len() {
            return Err(D::Error::custom("a child's record ends do not fit its dates"));
        }
        Ok(ChildFacts {
            child_id: packed.child_id,
            birth_month: packed.birth_month,
            joined_on: packed.joined_on.map(date).transpose()?,
            dates,
            ends: packed.ends,
        })
    }
}

/// [`ChildFacts`] in compact formats: as held, dates as days from the common era.
#[derive(Serialize, Deserialize)]
struct PackedChild {
    child_id: Box<str>,
    birth_month: BirthMonth,
    joined_on: Option<i32>,
    dates: Box<[i32]>,
    ends: [u32; RECORD_KINDS],
}

fn day_number(date: NaiveDate) -> i32 {
    date.num_days_from_ce()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportFacts {
    pub report_id: Box<str>,
    pub report_type: ReportType,
    pub ordered_on: Option<NaiveDate>,
    /// Agreed due dates: (the day it was agreed, the due date), from the order and each extension.
    pub due_dates: Box<[(NaiveDate, NaiveDate)]>,
    /// Days on which an extension was agreed.
    pub extensions: Box<[NaiveDate]>,
    pub filed_on: Option<NaiveDate>,
}

/// One copy of each code and application-type set seen, so that the facts of many cases share
/// them instead of each holding its own (the read model's memory is mostly these).
#[derive(Debug, Default)]
pub struct SharedCodes {
    codes: HashSet<Arc<str>, foldhash::fast::RandomState>,
    application_sets: HashSet<Arc<[ApplicationType]>, foldhash::fast::RandomState>,
}

impl SharedCodes {
    fn code(&mut self, code: &mut Arc<str>) {
        match self.codes.get(code) {
            Some(shared) => *code = shared.clone(),
            None => {
                self.codes.insert(code.clone());
            }
        }
    }

    /// Distinct codes and application-type sets held.
    pub fn len(&self) -> usize {
        self.codes.len() + self.application_sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CaseFacts {
    /// Points the case's codes at `shared`'s copies, adding those it has not seen.
    pub fn share_codes(&mut self, shared: &mut SharedCodes) {
        shared.code(&mut self.court_code);
        shared.code(&mut self.service_area);
        if let Some(code) = &mut self.local_authority_code {
            shared.code(code);
        }
        for (_, practitioner) in &mut self.lead_allocations {
            shared.code(practitioner);
        }
        match shared.application_sets.get(&self.application_types) {
            Some(set) => self.application_types = set.clone(),
            None => {
                shared.application_sets.insert(self.application_types.clone());
            }
        }
    }
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
            .map(|(_, who)| &**who)
    }

    pub fn has_application(&self, wanted: impl Fn(ApplicationType) -> bool) -> bool {
        self.application_types.iter().any(|t| wanted(*t))
    }
}

/// The facts of a case, or `None` when it has no `case_issued`.
pub fn facts_of(case_id: &str, history: &CaseHistory) -> Option<CaseFacts> {
    let view = history.view()?;
    let voided = history.voided_by();
    let mut lead_allocations: Vec<(NaiveDate, Arc<str>)> = Vec::new();
    let mut children: Vec<ChildRecords> = view
        .issue
        .children
        .iter()
        .map(|c| ChildRecords::new(&c.child_id, c.birth_month, None))
        .collect();
    let mut reports: Vec<ReportDraft> = Vec::new();
    let child = |children: &mut Vec<ChildRecords>, id: &str| children.iter_mut().position(|c| c.child_id == id);
    let live = history.events().iter().filter(|e| !voided.contains_key(&e.event_id));
    for event in live {
        let on = event.occurred_on;
        match &event.payload {
            Payload::ChildJoined(c) => children.push(ChildRecords::new(&c.child_id, c.birth_month, Some(on))),
            Payload::CaseAllocated(a) if a.role.is_lead() => {
                lead_allocations.push((on, a.practitioner_id.as_str().into()))
            }
            Payload::ChildSeen(s) => {
                if let Some(i) = child(&mut children, &s.child_id) {
                    match s.mode {
                        SeenMode::InPerson => children[i].seen_in_person.push(on),
                        SeenMode::Virtual => children[i].seen_virtually.push(on),
                    }
                }
            }
            Payload::LetterSent(l) => {
                if let Some(i) = child(&mut children, &l.child_id) {
                    children[i].letters.push((on, l.personalised));
                }
            }
            Payload::EngagementRecordCompleted(c) => {
                if let Some(i) = child(&mut children, &c.child_id) {
                    children[i].engagement_records.push(on);
                }
            }
            Payload::RecommendationShared(c) => {
                if let Some(i) = child(&mut children, &c.child_id) {
                    children[i].recommendations_shared.push(on);
                }
            }
            Payload::ReportOrdered(r) => {
                let report = ReportDraft::find_or_add(&mut reports, &r.report_id, r.report_type);
                report.report_type = r.report_type;
                report.ordered_on = Some(on);
                report.due_dates.push((on, r.due_on));
            }
            Payload::FilingDateExtended(x) => {
                if let Some(report) = reports.iter_mut().find(|r| r.report_id == x.report_id) {
                    report.due_dates.push((on, x.due_on));
                    report.extensions.push(on);
                }
            }
            Payload::ReportFiled(f) => {
                ReportDraft::find_or_add(&mut reports, &f.report_id, f.report_type).filed_on = Some(on)
            }
            _ => {}
        }
    }
    // Stable sorts keep recording order among events of the same day.
    lead_allocations.sort_by_key(|(on, _)| *on);
    reports.sort_by(|a, b| a.report_id.cmp(&b.report_id));
    Some(CaseFacts {
        case_id: case_id.into(),
        law_type: view.issue.law_type,
        application_types: view.issue.application_types.as_slice().into(),
        court_code: view.issue.court_code.as_str().into(),
        service_area: view.issue.service_area.as_str().into(),
        local_authority_code: view.issue.local_authority_code.as_deref().map(Arc::from),
        issued_on: view.issued_on,
        received_on: view.issue.received_on,
        closed_on: view.closure.map(|c| c.closed_on),
        lead_allocations: lead_allocations.into(),
        children: children.into_iter().map(ChildFacts::from).collect(),
        reports: reports.into_iter().map(ReportDraft::finish).collect(),
    })
}

impl ChildRecords {
    fn new(child_id: &str, birth_month: BirthMonth, joined_on: Option<NaiveDate>) -> ChildRecords {
        ChildRecords {
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

/// A report's facts while its events are folded.
struct ReportDraft {
    report_id: String,
    report_type: ReportType,
    ordered_on: Option<NaiveDate>,
    due_dates: Vec<(NaiveDate, NaiveDate)>,
    extensions: Vec<NaiveDate>,
    filed_on: Option<NaiveDate>,
}

impl ReportDraft {
    fn find_or_add<'a>(
        reports: &'a mut Vec<ReportDraft>,
        report_id: &str,
        report_type: ReportType,
    ) -> &'a mut ReportDraft {
        let index = match reports.iter().position(|r| r.report_id == report_id) {
            Some(i) => i,
            None => {
                reports.push(ReportDraft {
                    report_id: report_id.to_owned(),
                    report_type,
                    ordered_on: None,
                    due_dates: Vec::new(),
                    extensions: Vec::new(),
                    filed_on: None,
                });
                reports.len() - 1
            }
        };
        &mut reports[index]
    }

    fn finish(mut self) -> ReportFacts {
        self.due_dates.sort_by_key(|(agreed, _)| *agreed);
        self.extensions.sort();
        ReportFacts {
            report_id: self.report_id.into_boxed_str(),
            report_type: self.report_type,
            ordered_on: self.ordered_on,
            due_dates: self.due_dates.into(),
            extensions: self.extensions.into(),
            filed_on: self.filed_on,
        }
    }
}
