//! Why an event is refused: malformed input (field violations) or a lifecycle rule.

use std::fmt;

/// One bad field, named by its path within the event (e.g. `payload.child_seen.child_id`), and
/// the index of that event in its batch when the violation is about one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub event_index: Option<usize>,
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> FieldViolation {
        FieldViolation {
            event_index: None,
            field: field.into(),
            description: description.into(),
        }
    }

    /// The same violation, about the event at `index` of its batch.
    pub fn at(mut self, index: usize) -> FieldViolation {
        self.event_index = Some(index);
        self
    }

    /// The full path in an append request, e.g. `events[3].payload.child_seen.child_id`.
    pub fn path(&self) -> String {
        match self.event_index {
            Some(i) => format!("events[{i}].{}", self.field),
            None => self.field.clone(),
        }
    }
}

/// The lifecycle rules (docs/events.md), each with a stable machine-readable reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The first event recorded for a case is `case_issued`.
    CaseNotIssued,
    /// `case_issued` is recorded once.
    CaseAlreadyIssued,
    /// No event occurs before the case's issue date.
    OccurredBeforeIssue,
    /// Nothing but `event_voided` occurs after the closure date.
    CaseClosed,
    /// A case is closed once (void the closure to reopen it).
    CaseAlreadyClosed,
    /// A closure cannot be dated before events that already occurred.
    EventsAfterClosure,
    /// A child joins a case once.
    ChildAlreadyInCase,
    /// A report id is ordered once; later dates come by `filing_date_extended`.
    ReportAlreadyOrdered,
    /// Only a safeguarding letter may be filed, or any report extended, without an order.
    ReportNotOrdered,
    /// A report is filed once.
    ReportAlreadyFiled,
    /// A report is filed with the type it was ordered as.
    ReportTypeMismatch,
    /// A report is extended or filed on or after the day it was ordered.
    ReportEventBeforeOrder,
    /// An extension moves the due date later.
    ExtensionNotLater,
    /// Only an event of the same case can be voided.
    VoidedEventNotInCase,
    /// An event can be voided once.
    EventAlreadyVoided,
    /// `case_issued` cannot be voided: close the case with outcome `other`.
    CaseIssuedNotVoidable,
    /// A void cannot itself be voided.
    VoidNotVoidable,
    /// Voiding would leave other events about a child or report that no longer exists.
    VoidLeavesDependents,
}

impl Rule {
    /// Every rule, for documentation and checks.
    pub const ALL: [Rule; 18] = [
        Rule::CaseNotIssued,
        Rule::CaseAlreadyIssued,
        Rule::OccurredBeforeIssue,
        Rule::CaseClosed,
        Rule::CaseAlreadyClosed,
        Rule::EventsAfterClosure,
        Rule::ChildAlreadyInCase,
        Rule::ReportAlreadyOrdered,
        Rule::ReportNotOrdered,
        Rule::ReportAlreadyFiled,
        Rule::ReportTypeMismatch,
        Rule::ReportEventBeforeOrder,
        Rule::ExtensionNotLater,
        Rule::VoidedEventNotInCase,
        Rule::EventAlreadyVoided,
        Rule::CaseIssuedNotVoidable,
        Rule::VoidNotVoidable,
        Rule::VoidLeavesDependents,
    ];

    /// The `ErrorInfo.reason` for this rule.
    pub fn reason(self) -> &'static str {
        match self {
            Rule::CaseNotIssued => "CASE_NOT_ISSUED",
            Rule::CaseAlreadyIssued => "CASE_ALREADY_ISSUED",
            Rule::OccurredBeforeIssue => "OCCURRED_BEFORE_ISSUE",
            Rule::CaseClosed => "CASE_CLOSED",
            Rule::CaseAlreadyClosed => "CASE_ALREADY_CLOSED",
            Rule::EventsAfterClosure => "EVENTS_AFTER_CLOSURE",
            Rule::ChildAlreadyInCase => "CHILD_ALREADY_IN_CASE",
            Rule::ReportAlreadyOrdered => "REPORT_ALREADY_ORDERED",
            Rule::ReportNotOrdered => "REPORT_NOT_ORDERED",
            Rule::ReportAlreadyFiled => "REPORT_ALREADY_FILED",
            Rule::ReportTypeMismatch => "REPORT_TYPE_MISMATCH",
            Rule::ReportEventBeforeOrder => "REPORT_EVENT_BEFORE_ORDER",
            Rule::ExtensionNotLater => "EXTENSION_NOT_LATER",
            Rule::VoidedEventNotInCase => "VOIDED_EVENT_NOT_IN_CASE",
            Rule::EventAlreadyVoided => "EVENT_ALREADY_VOIDED",
            Rule::CaseIssuedNotVoidable => "CASE_ISSUED_NOT_VOIDABLE",
            Rule::VoidNotVoidable => "VOID_NOT_VOIDABLE",
            Rule::VoidLeavesDependents => "VOID_LEAVES_DEPENDENTS",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// Why one event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("invalid event: {}", describe(.0))]
    Invalid(Vec<FieldViolation>),
    #[error("{message}")]
    Rule { rule: Rule, message: String },
}

impl Rejection {
    pub fn rule(rule: Rule, message: impl Into<String>) -> Rejection {
        Rejection::Rule {
            rule,
            message: message.into(),
        }
    }

    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Rejection {
        Rejection::Invalid(vec![FieldViolation::new(field, description)])
    }
}

/// Why a batch was refused: the first refused event (by index) and why. For malformed input the
/// violations of every event of the batch are collected, each with its event's index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {index} of the batch: {rejection}")]
pub struct BatchRejection {
    pub index: usize,
    pub rejection: Rejection,
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.path(), v.description))
        .collect::<Vec<_>>()
        .join("; ")
}
