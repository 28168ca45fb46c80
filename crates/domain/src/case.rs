//! The case lifecycle: a case is its recorded history; its current state is a fold over the
//! events not voided; `decide` checks a batch of new events against that state, one event at a
//! time, so later events of a batch see the earlier ones.

use crate::event::{
    ALLOCATION_OVERHEAD, AllocationRole, CaseIssued, CaseOutcome, Child, NewEvent, Payload, ReportType, children_bytes,
    text_bytes,
};
use crate::ids::{EventId, Version};
use crate::rules::{BatchRejection, FieldViolation, Rejection, Rule};
use crate::validate::validate_event;
use chrono::NaiveDate;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

/// One recorded event of a case, as the lifecycle needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    pub event_id: EventId,
    pub occurred_on: NaiveDate,
    pub payload: Payload,
}

impl From<&NewEvent> for HistoryEvent {
    fn from(event: &NewEvent) -> HistoryEvent {
        HistoryEvent {
            event_id: event.event_id,
            occurred_on: event.occurred_on,
            payload: event.payload.clone(),
        }
    }
}

impl HistoryEvent {
    /// About what the event takes in memory (see [`Payload::heap_bytes`]).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<HistoryEvent>() + self.payload.heap_bytes()
    }
}

/// Every event recorded for one case, in version order (the event at index `i` has version `i + 1`).
///
/// The history keeps what every append asks of it up to date as events are pushed, rather than
/// going over all its events each time: its [`CaseView`] (folded once, when first asked for) and
/// what its events weigh. An append to a case of `n` events then costs the same whatever `n` is.
#[derive(Debug, Clone, Default)]
pub struct CaseHistory {
    events: Vec<HistoryEvent>,
    /// The sum of the events' [`HistoryEvent::memory_bytes`].
    events_bytes: usize,
    /// The fold of `events` (`None` inside: no `case_issued`), once asked for. Boxed, so
    /// that a history not asked for it stays small.
    view: OnceLock<Option<Box<CaseView>>>,
}

/// Two histories are equal when their events are; the rest is derived from them.
impl PartialEq for CaseHistory {
    fn eq(&self, other: &CaseHistory) -> bool {
        self.events == other.events
    }
}

impl Eq for CaseHistory {}

/// An allocation of the case to a practitioner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub practitioner_id: String,
    pub role: AllocationRole,
    pub allocated_on: NaiveDate,
}

/// The closure of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closure {
    pub closed_on: NaiveDate,
    pub outcome: CaseOutcome,
}

/// What is known of one report id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportState {
    /// Type and date of the order, if one was recorded.
    pub ordered: Option<(ReportType, NaiveDate)>,
    /// The latest agreed filing date.
    pub due_on: Option<NaiveDate>,
    /// Type and date of the filing, if filed.
    pub filed: Option<(ReportType, NaiveDate)>,
}

/// The state of an issued case: a fold over its events that are not voided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseView {
    pub issued_on: NaiveDate,
    pub issue: CaseIssued,
    /// Children named at issue, then those who joined, in the order they were recorded.
    pub children: Vec<Child>,
    /// The earliest lead or guardian allocation (by occurred date, then version).
    pub first_lead_allocation: Option<Allocation>,
    /// The latest lead or guardian allocation (by occurred date, then version).
    pub current_lead_allocation: Option<Allocation>,
    pub closure: Option<Closure>,
    pub reports: BTreeMap<String, ReportState>,
    /// The latest `occurred_on` of any event that is not a void.
    pub latest_occurred_on: NaiveDate,
}

impl CaseView {
    pub fn has_child(&self, child_id: &str) -> bool {
        self.children.iter().any(|c| c.child_id == child_id)
    }

    pub fn is_open(&self) -> bool {
        self.closure.is_none()
    }

    /// About what the view takes in memory.
    fn memory_bytes(&self) -> usize {
        let allocation = |a: &Option<Allocation>| a.as_ref().map_or(0, |a| text_bytes(&a.practitioner_id));
        // A B-tree entry: its key, its value and a share of its node.
        let report = |id: &String| {
            std::mem::size_of::<String>() + std::mem::size_of::<ReportState>() + ALLOCATION_OVERHEAD + text_bytes(id)
        };
        std::mem::size_of::<CaseView>()
            + self.issue.heap_bytes()
            + children_bytes(&self.children)
            + allocation(&self.first_lead_allocation)
            + allocation(&self.current_lead_allocation)
            + self.reports.keys().map(report).sum::<usize>()
    }
}

impl CaseHistory {
    /// A history from events in version order.
    pub fn new(events: Vec<HistoryEvent>) -> CaseHistory {
        CaseHistory {
            events_bytes: events.iter().map(HistoryEvent::memory_bytes).sum(),
            events,
            view: OnceLock::new(),
        }
    }

    pub fn events(&self) -> &[HistoryEvent] {
        &self.events
    }

    /// About what the history takes in memory, its events' vector and its view included.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<CaseHistory>()
            + self.events.capacity().saturating_sub(self.events.len()) * std::mem::size_of::<HistoryEvent>()
            + self.events_bytes
            + self
                .view
                .get()
                .and_then(Option::as_deref)
                .map_or(0, |view| view.memory_bytes() + ALLOCATION_OVERHEAD)
    }

    /// Keeps the first `len` events: the history as it stood at version `len`.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.events.len() {
            return;
        }
        // Only the events dropped are weighed: a projection takes each earlier recording
        // instant's prefix of a case in turn, longest first.
        self.events_bytes -= self.events[len..].iter().map(HistoryEvent::memory_bytes).sum::<usize>();
        self.events.truncate(len);
        self.view = OnceLock::new();
    }

    /// Records the next event (version `self.version() + 1`).
    pub fn push(&mut self, event: HistoryEvent) {
        self.events_bytes += event.memory_bytes();
        match self.view.get_mut() {
            Some(Some(view)) if !matches!(event.payload, Payload::EventVoided(_)) => {
                view.latest_occurred_on = view.latest_occurred_on.max(event.occurred_on);
                apply(view, &event);
            }
            // A void changes the past, and an issue may begin the case: folded again when asked.
            Some(_) => self.view = OnceLock::new(),
            None => {}
        }
        self.events.push(event);
    }

    /// The case's version: the number of events recorded for it. A history is built from the
    /// log, whose versions are at most [`Version::MAX`], so this saturates only on a history no
    /// log could hold.
    pub fn version(&self) -> Version {
        Version::try_from(self.events.len()).unwrap_or(Version::MAX)
    }

    /// For each voided event, the id of the `event_voided` that voids it.
    pub fn voided_by(&self) -> HashMap<EventId, EventId> {
        self.events
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::EventVoided(v) => Some((v.voided_event_id, e.event_id)),
                _ => None,
            })
            .collect()
    }

    /// The case as it stands, or `None` when no `case_issued` is recorded.
    pub fn view(&self) -> Option<&CaseView> {
        self.view.get_or_init(|| self.fold().map(Box::new)).as_deref()
    }

    /// The view from the events, one by one.
    fn fold(&self) -> Option<CaseView> {
        let voided = self.voided_by();
        let mut live = self
            .events
            .iter()
            .filter(|e| !voided.contains_key(&e.event_id) && !matches!(e.payload, Payload::EventVoided(_)));
        let first = live.next()?;
        let Payload::CaseIssued(issue) = &first.payload else {
            return None;
        };
        let mut view = CaseView {
            issued_on: first.occurred_on,
            children: issue.children.clone(),
            issue: (**issue).clone(),
            first_lead_allocation: None,
            current_lead_allocation: None,
            closure: None,
            reports: BTreeMap::new(),
            latest_occurred_on: first.occurred_on,
        };
        for event in live {
            view.latest_occurred_on = view.latest_occurred_on.max(event.occurred_on);
            apply(&mut view, event);
        }
        Some(view)
    }

    /// Checks `batch` against the lifecycle rules and returns the history with it appended.
    /// `today` is the civil date in England now. Nothing is partially accepted: the first refused
    /// event refuses the batch.
    pub fn decide(&self, batch: &[NewEvent], today: NaiveDate) -> Result<CaseHistory, BatchRejection> {
        let mut next = self.clone();
        next.accept(batch, today)?;
        Ok(next)
    }

    /// [`CaseHistory::decide`] in place, for a caller that owns the history: no copy of it is
    /// made. A refused batch leaves the history as it was.
    pub fn accept(&mut self, batch: &[NewEvent], today: NaiveDate) -> Result<(), BatchRejection> {
        let before = self.events.len();
        let accepted = self.push_checked(batch, today);
        if accepted.is_err() {
            self.truncate(before);
        }
        accepted
    }

    /// Each event is checked against the view as the events before it left it (`push` keeps the
    /// view up to date; refolding it for each event of a 1,000-event batch was quadratic).
    fn push_checked(&mut self, batch: &[NewEvent], today: NaiveDate) -> Result<(), BatchRejection> {
        check_batch_shape(batch, today)?;
        for (index, event) in batch.iter().enumerate() {
            self.check(self.view(), event).map_err(|rejection| BatchRejection {
                index,
                rejection: at_index(rejection, index),
            })?;
            self.push(HistoryEvent::from(event));
        }
        Ok(())
    }

    /// Checks one event against the history and its current `view`.
    fn check(&self, view: Option<&CaseView>, event: &NewEvent) -> Result<(), Rejection> {
        let Some(view) = view else {
            return match event.payload {
                Payload::CaseIssued(_) if self.events.is_empty() => Ok(()),
                Payload::CaseIssued(_) => Err(Rejection::rule(Rule::CaseAlreadyIssued, "the case is already issued")),
                _ => Err(Rejection::rule(
                    Rule::CaseNotIssued,
                    format!(
                        "no case_issued is recorded for this case; send case_issued before {}",
                        event.payload.event_type()
                    ),
                )),
            };
        };
        if let Payload::CaseIssued(_) = event.payload {
            return Err(Rejection::rule(
                Rule::CaseAlreadyIssued,
                format!(
                    "the case was already issued on {}; case_issued is recorded once",
                    view.issued_on
                ),
            ));
        }
        if event.occurred_on < view.issued_on {
            return Err(Rejection::rule(
                Rule::OccurredBeforeIssue,
                format!(
                    "occurred_on {} is before the case was issued on {}",
                    event.occurred_on, view.issued_on
                ),
            ));
        }
        let is_void = matches!(event.payload, Payload::EventVoided(_));
        if let Some(closure) = view.closure
            && !is_void
            && event.occurred_on > closure.closed_on
        {
            return Err(Rejection::rule(
                Rule::CaseClosed,
                format!(
                    "the case was closed on {}; only events that occurred on or before that date, or event_voided, may be recorded (occurred_on is {})",
                    closure.closed_on, event.occurred_on
                ),
            ));
        }
        if let Some(child_id) = event.payload.child_id()
            && !matches!(event.payload, Payload::ChildJoined(_))
            && !view.has_child(child_id)
        {
            let field = format!("payload.{}.child_id", event.payload.event_type());
            return Err(Rejection::field(
                field,
                format!("child {child_id:?} is not in this case; name the child at issue or record child_joined first"),
            ));
        }
        match &event.payload {
            Payload::ChildJoined(child) if view.has_child(&child.child_id) => Err(Rejection::rule(
                Rule::ChildAlreadyInCase,
                format!("child {:?} is already in this case", child.child_id),
            )),
            Payload::ReportOrdered(order) => check_order(view, &order.report_id),
            Payload::FilingDateExtended(ext) => check_extension(view, &ext.report_id, ext.due_on, event.occurred_on),
            Payload::ReportFiled(filed) => check_filing(view, &filed.report_id, filed.report_type, event.occurred_on),
            Payload::CaseClosed(_) => check_closure(view, event.occurred_on),
            Payload::EventVoided(void) => self.check_void(void.voided_event_id),
            _ => Ok(()),
        }
    }

    fn check_void(&self, target_id: EventId) -> Result<(), Rejection> {
        let Some(target) = self.events.iter().find(|e| e.event_id == target_id) else {
            return Err(Rejection::rule(
                Rule::VoidedEventNotInCase,
                format!("event {target_id} is not recorded for this case; an event is voided from its own case"),
            ));
        };
        let voided = self.voided_by();
        if let Some(by) = voided.get(&target_id) {
            return Err(Rejection::rule(
                Rule::EventAlreadyVoided,
                format!("event {target_id} was already voided by {by}"),
            ));
        }
        let dependents = |matches: &dyn Fn(&Payload) -> bool| {
            self.events
                .iter()
                .any(|e| e.event_id != target_id && !voided.contains_key(&e.event_id) && matches(&e.payload))
        };
        match &target.payload {
            Payload::CaseIssued(_) => Err(Rejection::rule(
                Rule::CaseIssuedNotVoidable,
                "case_issued cannot be voided; close a wrongly issued case with outcome other",
            )),
            Payload::EventVoided(_) => Err(Rejection::rule(
                Rule::VoidNotVoidable,
                "an event_voided cannot itself be voided",
            )),
            Payload::ChildJoined(child) if dependents(&|p: &Payload| p.child_id() == Some(child.child_id.as_str())) => {
                Err(Rejection::rule(
                    Rule::VoidLeavesDependents,
                    format!(
                        "other events are about child {:?}; void them before the child_joined",
                        child.child_id
                    ),
                ))
            }
            Payload::ReportOrdered(order)
                if dependents(&|p: &Payload| p.report_id() == Some(order.report_id.as_str())) =>
            {
                Err(Rejection::rule(
                    Rule::VoidLeavesDependents,
                    format!(
                        "report {:?} has later events; void them before the report_ordered",
                        order.report_id
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

fn check_batch_shape(batch: &[NewEvent], today: NaiveDate) -> Result<(), BatchRejection> {
    let mut first_bad = None;
    let mut violations = Vec::new();
    let mut ids = HashSet::new();
    for (index, event) in batch.iter().enumerate() {
        let mut own = validate_event(event, today);
        if !ids.insert(event.event_id) {
            own.push(FieldViolation::new("event_id", "event_id appears twice in the batch"));
        }
        if !own.is_empty() {
            first_bad.get_or_insert(index);
            violations.extend(own.into_iter().map(|v| v.at(index)));
        }
    }
    match first_bad {
        None => Ok(()),
        Some(index) => Err(BatchRejection {
            index,
            rejection: Rejection::Invalid(violations),
        }),
    }
}

fn at_index(rejection: Rejection, index: usize) -> Rejection {
    match rejection {
        Rejection::Invalid(violations) => Rejection::Invalid(violations.into_iter().map(|v| v.at(index)).collect()),
        rule => rule,
    }
}

fn check_order(view: &CaseView, report_id: &str) -> Result<(), Rejection> {
    match view.reports.get(report_id) {
        Some(report) if report.filed.is_some() => Err(Rejection::rule(
            Rule::ReportAlreadyFiled,
            format!("report {report_id:?} is already filed; order a new report under a new report_id"),
        )),
        Some(report) if report.ordered.is_some() => Err(Rejection::rule(
            Rule::ReportAlreadyOrdered,
            format!("report {report_id:?} is already ordered; record filing_date_extended to move its due date"),
        )),
        _ => Ok(()),
    }
}

fn check_extension(view: &CaseView, report_id: &str, due_on: NaiveDate, on: NaiveDate) -> Result<(), Rejection> {
    let Some(report) = view.reports.get(report_id).filter(|r| r.ordered.is_some()) else {
        return Err(Rejection::rule(
            Rule::ReportNotOrdered,
            format!("report {report_id:?} has no report_ordered in this case; only an ordered report can be extended"),
        ));
    };
    if report.filed.is_some() {
        return Err(Rejection::rule(
            Rule::ReportAlreadyFiled,
            format!("report {report_id:?} is already filed"),
        ));
    }
    if let Some((_, ordered_on)) = report.ordered
        && on < ordered_on
    {
        return Err(Rejection::rule(
            Rule::ReportEventBeforeOrder,
            format!("report {report_id:?} was ordered on {ordered_on}; the extension cannot occur before that ({on})"),
        ));
    }
    match report.due_on {
        Some(current) if due_on <= current => Err(Rejection::rule(
            Rule::ExtensionNotLater,
            format!(
                "report {report_id:?} is due on {current}; an extension must move the due date later (got {due_on})"
            ),
        )),
        _ => Ok(()),
    }
}

fn check_filing(view: &CaseView, report_id: &str, report_type: ReportType, on: NaiveDate) -> Result<(), Rejection> {
    let report = view.reports.get(report_id).cloned().unwrap_or_default();
    if let Some((_, filed_on)) = report.filed {
        return Err(Rejection::rule(
            Rule::ReportAlreadyFiled,
            format!("report {report_id:?} was already filed on {filed_on}; a report is filed once"),
        ));
    }
    match report.ordered {
        Some((ordered_type, _)) if ordered_type != report_type => Err(Rejection::rule(
            Rule::ReportTypeMismatch,
            format!(
                "report {report_id:?} was ordered as {ordered_type:?}; it must be filed with that type, not {report_type:?}"
            ),
        )),
        Some((_, ordered_on)) if on < ordered_on => Err(Rejection::rule(
            Rule::ReportEventBeforeOrder,
            format!("report {report_id:?} was ordered on {ordered_on}; it cannot be filed before that ({on})"),
        )),
        None if report_type != ReportType::SafeguardingLetter => Err(Rejection::rule(
            Rule::ReportNotOrdered,
            format!(
                "report {report_id:?} was never ordered; only a safeguarding letter may be filed without a report_ordered"
            ),
        )),
        _ => Ok(()),
    }
}

fn check_closure(view: &CaseView, closed_on: NaiveDate) -> Result<(), Rejection> {
    if let Some(closure) = view.closure {
        return Err(Rejection::rule(
            Rule::CaseAlreadyClosed,
            format!(
                "the case was already closed on {}; void that case_closed to change it",
                closure.closed_on
            ),
        ));
    }
    if view.latest_occurred_on > closed_on {
        return Err(Rejection::rule(
            Rule::EventsAfterClosure,
            format!(
                "an event of this case occurred on {}, after the proposed closure date {closed_on}",
                view.latest_occurred_on
            ),
        ));
    }
    Ok(())
}

fn apply(view: &mut CaseView, event: &HistoryEvent) {
    match &event.payload {
        Payload::ChildJoined(child) => view.children.push(child.clone()),
        Payload::CaseAllocated(a) if a.role.is_lead() => {
            let allocation = Allocation {
                practitioner_id: a.practitioner_id.clone(),
                role: a.role,
                allocated_on: event.occurred_on,
            };
            // Events are folded in version order, so on equal dates the later-recorded one is current.
            if view
                .first_lead_allocation
                .as_ref()
                .is_none_or(|f| event.occurred_on < f.allocated_on)
            {
                view.first_lead_allocation = Some(allocation.clone());
            }
            if view
                .current_lead_allocation
                .as_ref()
                .is_none_or(|c| event.occurred_on >= c.allocated_on)
            {
                view.current_lead_allocation = Some(allocation);
            }
        }
        Payload::ReportOrdered(order) => {
            let report = view.reports.entry(order.report_id.clone()).or_default();
            report.ordered = Some((order.report_type, event.occurred_on));
            report.due_on = Some(order.due_on);
        }
        Payload::FilingDateExtended(ext) => {
            let report = view.reports.entry(ext.report_id.clone()).or_default();
            report.due_on = Some(report.due_on.map_or(ext.due_on, |d| d.max(ext.due_on)));
        }
        Payload::ReportFiled(filed) => {
            view.reports.entry(filed.report_id.clone()).or_default().filed =
                Some((filed.report_type, event.occurred_on));
        }
        Payload::CaseClosed(closed) => {
            view.closure = Some(Closure {
                closed_on: event.occurred_on,
                outcome: closed.outcome,
            });
        }
        _ => {}
    }
}
