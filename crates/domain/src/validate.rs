//! Checks of one event on its own (no case history): identifier formats, required fields and
//! dates against today in England. Paths follow the gRPC request (`payload.case_issued.court_code`).

use crate::event::{CaseIssued, Child, LawType, Metadata, NewEvent, Payload};
use crate::ids::check_id;
use crate::reference::service_area_valid_on;
use crate::rules::FieldViolation;
use chrono::NaiveDate;
use std::collections::HashSet;

const ID_MAX: usize = 64;
const METADATA_MAX: usize = 100;

/// Checks one event on its own. `today` is the civil date in England now.
pub fn validate_event(event: &NewEvent, today: NaiveDate) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    if event.event_id.is_nil() {
        out.push(FieldViolation::new(
            "event_id",
            "event_id must be a non-nil UUID chosen by the sender",
        ));
    }
    if event.occurred_on > today {
        out.push(FieldViolation::new(
            "occurred_on",
            format!(
                "occurred_on {} is after today in England ({today}); events are recorded once they have happened",
                event.occurred_on
            ),
        ));
    }
    validate_metadata(&mut out, &event.metadata);
    validate_payload(&mut out, event, today);
    out
}

fn validate_metadata(out: &mut Vec<FieldViolation>, metadata: &Metadata) {
    for (field, value) in [
        ("metadata.correlation_id", &metadata.correlation_id),
        ("metadata.causation_id", &metadata.causation_id),
    ] {
        if let Some(v) = value
            && (v.is_empty() || v.len() > METADATA_MAX || !v.chars().all(|c| c.is_ascii_graphic()))
        {
            out.push(FieldViolation::new(
                field,
                format!("must be 1-{METADATA_MAX} printable ASCII characters without spaces"),
            ));
        }
    }
}

fn validate_payload(out: &mut Vec<FieldViolation>, event: &NewEvent, today: NaiveDate) {
    let name = event.payload.event_type().as_str();
    let path = |field: &str| format!("payload.{name}.{field}");
    match &event.payload {
        Payload::CaseIssued(issued) => validate_issue(out, issued, event.occurred_on, today),
        Payload::ChildJoined(child) => validate_child(out, &path(""), child, event.occurred_on),
        Payload::CaseAllocated(a) => check_id(
            out,
            &path("practitioner_id"),
            &a.practitioner_id,
            ID_MAX,
            "practitioner_id",
        ),
        Payload::ChildSeen(_)
        | Payload::LetterSent(_)
        | Payload::EngagementRecordCompleted(_)
        | Payload::RecommendationShared(_) => {
            let child_id = event.payload.child_id().unwrap_or_default();
            check_id(out, &path("child_id"), child_id, ID_MAX, "child_id");
        }
        Payload::ReportOrdered(r) => {
            check_id(out, &path("report_id"), &r.report_id, ID_MAX, "report_id");
            if r.due_on < event.occurred_on {
                out.push(FieldViolation::new(
                    path("due_on"),
                    format!(
                        "due_on {} is before the order was made ({})",
                        r.due_on, event.occurred_on
                    ),
                ));
            }
        }
        Payload::FilingDateExtended(r) => {
            check_id(out, &path("report_id"), &r.report_id, ID_MAX, "report_id");
        }
        Payload::ReportFiled(r) => check_id(out, &path("report_id"), &r.report_id, ID_MAX, "report_id"),
        Payload::HearingListed(h) => {
            if h.listed_for < event.occurred_on {
                out.push(FieldViolation::new(
                    path("listed_for"),
                    format!(
                        "listed_for {} is before the day it was listed ({})",
                        h.listed_for, event.occurred_on
                    ),
                ));
            }
        }
        Payload::CaseClosed(_) => {}
        Payload::EventVoided(v) => {
            if v.voided_event_id.is_nil() {
                out.push(FieldViolation::new(
                    path("voided_event_id"),
                    "voided_event_id must be a non-nil UUID",
                ));
            } else if v.voided_event_id == event.event_id {
                out.push(FieldViolation::new(
                    path("voided_event_id"),
                    "an event cannot void itself",
                ));
            }
        }
    }
}

fn validate_issue(out: &mut Vec<FieldViolation>, issued: &CaseIssued, issued_on: NaiveDate, today: NaiveDate) {
    let path = |field: &str| format!("payload.case_issued.{field}");
    if issued.application_types.is_empty() {
        out.push(FieldViolation::new(
            path("application_types"),
            "at least one application type is required",
        ));
    }
    let distinct: HashSet<_> = issued.application_types.iter().collect();
    if distinct.len() != issued.application_types.len() {
        out.push(FieldViolation::new(
            path("application_types"),
            "an application type is listed twice",
        ));
    }
    let court_ok = !issued.court_code.is_empty()
        && issued.court_code.len() <= 10
        && issued
            .court_code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if !court_ok {
        out.push(FieldViolation::new(
            path("court_code"),
            "court_code must be 1-10 upper-case letters or digits, e.g. \"LS\"",
        ));
    }
    if service_area_valid_on(&issued.service_area, issued_on).is_none() {
        out.push(FieldViolation::new(
            path("service_area"),
            format!(
                "service_area {:?} is not a Cafcass service area valid on {issued_on} (e.g. \"A5\")",
                issued.service_area
            ),
        ));
    }
    match (&issued.law_type, &issued.local_authority_code) {
        (LawType::Public, None) => out.push(FieldViolation::new(
            path("local_authority_code"),
            "local_authority_code is required for public law",
        )),
        (_, Some(code)) if !is_local_authority_code(code) => out.push(FieldViolation::new(
            path("local_authority_code"),
            "local_authority_code must be an ONS code: E or W followed by 8 digits, e.g. \"E08000035\"",
        )),
        _ => {}
    }
    if issued.children.is_empty() {
        out.push(FieldViolation::new(path("children"), "at least one child is required"));
    }
    let mut seen = HashSet::new();
    for (i, child) in issued.children.iter().enumerate() {
        let child_path = path(&format!("children[{i}]"));
        validate_child(out, &child_path, child, issued_on);
        if !seen.insert(child.child_id.as_str()) {
            out.push(FieldViolation::new(
                format!("{child_path}.child_id"),
                "child_id is listed twice",
            ));
        }
    }
    if let Some(received_on) = issued.received_on {
        if received_on < issued_on {
            out.push(FieldViolation::new(
                path("received_on"),
                format!("received_on {received_on} is before the issue date {issued_on}; it must be on or after it"),
            ));
        } else if received_on > today {
            out.push(FieldViolation::new(
                path("received_on"),
                format!("received_on {received_on} is after today in England ({today})"),
            ));
        }
    }
}

fn validate_child(out: &mut Vec<FieldViolation>, prefix: &str, child: &Child, on: NaiveDate) {
    let field = |f: &str| {
        if prefix.ends_with('.') {
            format!("{prefix}{f}")
        } else {
            format!("{prefix}.{f}")
        }
    };
    check_id(out, &field("child_id"), &child.child_id, ID_MAX, "child_id");
    // Proceedings can concern an unborn child, so allow a birth month up to ten months ahead.
    let latest = on.checked_add_months(chrono::Months::new(10)).unwrap_or(on);
    if child.birth_month.first_day().is_none_or(|d| d > latest) {
        out.push(FieldViolation::new(
            field("birth_month"),
            format!("birth_month {} is implausibly far after {on}", child.birth_month),
        ));
    }
}

fn is_local_authority_code(code: &str) -> bool {
    code.len() == 9 && matches!(code.as_bytes()[0], b'E' | b'W') && code[1..].chars().all(|c| c.is_ascii_digit())
}
