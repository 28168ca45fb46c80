//! Conversion between the wire types of `caselog.v1` and the domain. Input conversion collects
//! every malformed field (unspecified enums, bad dates, bad UUIDs, missing messages) so that one
//! INVALID_ARGUMENT names them all.

use caselog_api::v1 as pb;
use caselog_domain::event::{
    self as ev, AllocationRole, ApplicationType, BirthMonth, CaseOutcome, HearingType, LawType, ReportType, SeenMode,
    VoidReason,
};
use caselog_domain::{EventId, FieldViolation, Metadata, NewEvent, Payload};
use chrono::NaiveDate;

/// Collects the violations found while reading one message.
#[derive(Debug, Default)]
struct Reader {
    violations: Vec<FieldViolation>,
}

impl Reader {
    fn bad(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations.push(FieldViolation::new(field, description));
    }

    fn date(&mut self, field: &str, text: &str) -> Option<NaiveDate> {
        if text.is_empty() {
            self.bad(field, "a date \"YYYY-MM-DD\" is required");
            return None;
        }
        let parsed = caselog_domain::dates::parse_date(text);
        if parsed.is_none() {
            self.bad(field, format!("{text:?} is not a date \"YYYY-MM-DD\""));
        }
        parsed
    }

    fn optional_date(&mut self, field: &str, text: &str) -> Option<Option<NaiveDate>> {
        if text.is_empty() {
            Some(None)
        } else {
            self.date(field, text).map(Some)
        }
    }

    fn event_id(&mut self, field: &str, text: &str) -> Option<EventId> {
        let parsed = text.parse::<EventId>().ok();
        if parsed.is_none() {
            self.bad(
                field,
                format!("{text:?} is not a UUID (e.g. \"6f1c2a0e-8a51-4f7e-9a0b-2f4c1d9e7b10\")"),
            );
        }
        parsed
    }

    fn birth_month(&mut self, field: &str, text: &str) -> Option<BirthMonth> {
        let parsed = BirthMonth::parse(text);
        if parsed.is_none() {
            self.bad(field, format!("{text:?} is not a birth month \"YYYY-MM\""));
        }
        parsed
    }

    /// Reads an enum field: unknown numbers and the UNSPECIFIED zero value are both violations.
    fn enumeration<P, D>(&mut self, field: &str, raw: i32, to_domain: fn(P) -> Option<D>) -> Option<D>
    where
        P: TryFrom<i32>,
    {
        let value = P::try_from(raw).ok().and_then(to_domain);
        if value.is_none() {
            self.bad(field, format!("a value other than UNSPECIFIED is required (got {raw})"));
        }
        value
    }
}

/// Reads one event of an append request. Violation paths are relative to the event.
pub fn new_event(event: pb::NewEvent) -> Result<NewEvent, Vec<FieldViolation>> {
    let mut r = Reader::default();
    let event_id = r.event_id("event_id", &event.event_id);
    let occurred_on = r.date("occurred_on", &event.occurred_on);
    let payload = match event.payload.and_then(|p| p.kind) {
        Some(kind) => payload(&mut r, kind),
        None => {
            r.bad(
                "payload",
                "one of the thirteen event payloads is required (e.g. payload.case_issued)",
            );
            None
        }
    };
    let metadata = event.metadata.map(metadata).unwrap_or_default();
    match (event_id, occurred_on, payload) {
        (Some(event_id), Some(occurred_on), Some(payload)) if r.violations.is_empty() => Ok(NewEvent {
            event_id,
            occurred_on,
            payload,
            metadata,
        }),
        _ => Err(r.violations),
    }
}

fn metadata(m: pb::EventMetadata) -> Metadata {
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Metadata {
        correlation_id: non_empty(m.correlation_id),
        causation_id: non_empty(m.causation_id),
    }
}

fn payload(r: &mut Reader, kind: pb::event_payload::Kind) -> Option<Payload> {
    use pb::event_payload::Kind;
    Some(match kind {
        Kind::CaseIssued(m) => {
            let p = "payload.case_issued";
            let law_type = r.enumeration(&format!("{p}.law_type"), m.law_type, law_type_in);
            let mut application_types = Vec::new();
            for (i, raw) in m.application_types.iter().enumerate() {
                if let Some(t) = r.enumeration(&format!("{p}.application_types[{i}]"), *raw, application_type_in) {
                    application_types.push(t);
                }
            }
            let mut children = Vec::new();
            for (i, c) in m.children.into_iter().enumerate() {
                if let Some(bm) = r.birth_month(&format!("{p}.children[{i}].birth_month"), &c.birth_month) {
                    children.push(ev::Child {
                        child_id: c.child_id,
                        birth_month: bm,
                    });
                }
            }
            let received_on = r.optional_date(&format!("{p}.received_on"), &m.received_on)?;
            Payload::CaseIssued(Box::new(ev::CaseIssued {
                law_type: law_type?,
                application_types,
                court_code: m.court_code,
                service_area: m.service_area,
                local_authority_code: (!m.local_authority_code.is_empty()).then_some(m.local_authority_code),
                children,
                received_on,
            }))
        }
        Kind::ChildJoined(m) => {
            let birth_month = r.birth_month("payload.child_joined.birth_month", &m.birth_month)?;
            Payload::ChildJoined(ev::Child {
                child_id: m.child_id,
                birth_month,
            })
        }
        Kind::CaseAllocated(m) => Payload::CaseAllocated(ev::CaseAllocated {
            role: r.enumeration("payload.case_allocated.role", m.role, allocation_role_in)?,
            practitioner_id: m.practitioner_id,
        }),
        Kind::ChildSeen(m) => Payload::ChildSeen(ev::ChildSeen {
            mode: r.enumeration("payload.child_seen.mode", m.mode, seen_mode_in)?,
            child_id: m.child_id,
        }),
        Kind::LetterSent(m) => Payload::LetterSent(ev::LetterSent {
            child_id: m.child_id,
            personalised: m.personalised,
        }),
        Kind::EngagementRecordCompleted(m) => Payload::EngagementRecordCompleted(ev::ChildRef { child_id: m.child_id }),
        Kind::RecommendationShared(m) => Payload::RecommendationShared(ev::ChildRef { child_id: m.child_id }),
        Kind::ReportOrdered(m) => {
            let report_type = r.enumeration("payload.report_ordered.report_type", m.report_type, report_type_in);
            let due_on = r.date("payload.report_ordered.due_on", &m.due_on);
            Payload::ReportOrdered(ev::ReportOrdered {
                report_id: m.report_id,
                report_type: report_type?,
                due_on: due_on?,
            })
        }
        Kind::FilingDateExtended(m) => Payload::FilingDateExtended(ev::FilingDateExtended {
            due_on: r.date("payload.filing_date_extended.due_on", &m.due_on)?,
            report_id: m.report_id,
        }),
        Kind::ReportFiled(m) => Payload::ReportFiled(ev::ReportFiled {
            report_type: r.enumeration("payload.report_filed.report_type", m.report_type, report_type_in)?,
            report_id: m.report_id,
        }),
        Kind::HearingListed(m) => {
            let hearing_type = r.enumeration("payload.hearing_listed.hearing_type", m.hearing_type, hearing_type_in);
            let listed_for = r.date("payload.hearing_listed.listed_for", &m.listed_for);
            Payload::HearingListed(ev::HearingListed {
                hearing_type: hearing_type?,
                listed_for: listed_for?,
            })
        }
        Kind::CaseClosed(m) => Payload::CaseClosed(ev::CaseClosed {
            outcome: r.enumeration("payload.case_closed.outcome", m.outcome, outcome_in)?,
        }),
        Kind::EventVoided(m) => {
            let voided_event_id = r.event_id("payload.event_voided.voided_event_id", &m.voided_event_id);
            let reason = r.enumeration("payload.event_voided.reason", m.reason, void_reason_in);
            Payload::EventVoided(ev::EventVoided {
                voided_event_id: voided_event_id?,
                reason: reason?,
            })
        }
    })
}

/// Writes a domain event as the wire type (the inverse of [`new_event`]).
pub fn new_event_out(event: &NewEvent) -> pb::NewEvent {
    pb::NewEvent {
        event_id: event.event_id.to_string(),
        occurred_on: event.occurred_on.to_string(),
        payload: Some(payload_out(&event.payload)),
        metadata: metadata_out(&event.metadata),
    }
}

pub(crate) fn metadata_out(m: &Metadata) -> Option<pb::EventMetadata> {
    (!m.is_empty()).then(|| pb::EventMetadata {
        correlation_id: m.correlation_id.clone().unwrap_or_default(),
        causation_id: m.causation_id.clone().unwrap_or_default(),
    })
}

pub(crate) fn child_out(c: &ev::Child) -> pb::Child {
    pb::Child {
        child_id: c.child_id.clone(),
        birth_month: c.birth_month.to_string(),
    }
}

pub(crate) fn payload_out(payload: &Payload) -> pb::EventPayload {
    use pb::event_payload::Kind;
    let kind = match payload {
        Payload::CaseIssued(m) => Kind::CaseIssued(pb::CaseIssued {
            law_type: law_type_out(m.law_type) as i32,
            application_types: m
                .application_types
                .iter()
                .map(|t| application_type_out(*t) as i32)
                .collect(),
            court_code: m.court_code.clone(),
            service_area: m.service_area.clone(),
            local_authority_code: m.local_authority_code.clone().unwrap_or_default(),
            children: m.children.iter().map(child_out).collect(),
            received_on: m.received_on.map(|d| d.to_string()).unwrap_or_default(),
        }),
        Payload::ChildJoined(c) => Kind::ChildJoined(pb::ChildJoined {
            child_id: c.child_id.clone(),
            birth_month: c.birth_month.to_string(),
        }),
        Payload::CaseAllocated(m) => Kind::CaseAllocated(pb::CaseAllocated {
            practitioner_id: m.practitioner_id.clone(),
            role: allocation_role_out(m.role) as i32,
        }),
        Payload::ChildSeen(m) => Kind::ChildSeen(pb::ChildSeen {
            child_id: m.child_id.clone(),
            mode: seen_mode_out(m.mode) as i32,
        }),
        Payload::LetterSent(m) => Kind::LetterSent(pb::LetterSent {
            child_id: m.child_id.clone(),
            personalised: m.personalised,
        }),
        Payload::EngagementRecordCompleted(m) => Kind::EngagementRecordCompleted(pb::EngagementRecordCompleted {
            child_id: m.child_id.clone(),
        }),
        Payload::RecommendationShared(m) => Kind::RecommendationShared(pb::RecommendationShared {
            child_id: m.child_id.clone(),
        }),
        Payload::ReportOrdered(m) => Kind::ReportOrdered(pb::ReportOrdered {
            report_id: m.report_id.clone(),
            report_type: report_type_out(m.report_type) as i32,
            due_on: m.due_on.to_string(),
        }),
        Payload::FilingDateExtended(m) => Kind::FilingDateExtended(pb::FilingDateExtended {
            report_id: m.report_id.clone(),
            due_on: m.due_on.to_string(),
        }),
        Payload::ReportFiled(m) => Kind::ReportFiled(pb::ReportFiled {
            report_id: m.report_id.clone(),
            report_type: report_type_out(m.report_type) as i32,
        }),
        Payload::HearingListed(m) => Kind::HearingListed(pb::HearingListed {
            hearing_type: hearing_type_out(m.hearing_type) as i32,
            listed_for: m.listed_for.to_string(),
        }),
        Payload::CaseClosed(m) => Kind::CaseClosed(pb::CaseClosed {
            outcome: outcome_out(m.outcome) as i32,
        }),
        Payload::EventVoided(m) => Kind::EventVoided(pb::EventVoided {
            voided_event_id: m.voided_event_id.to_string(),
            reason: void_reason_out(m.reason) as i32,
        }),
    };
    pb::EventPayload { kind: Some(kind) }
}

/// Declares the two-way mapping between a domain enum and its wire enum, the wire's
/// UNSPECIFIED value mapping to nothing.
macro_rules! enum_mapping {
    ($in_fn:ident, $out_fn:ident, $domain:ty, $wire:ty, $unspecified:ident, { $($d:ident => $w:ident),+ $(,)? }) => {
        pub(crate) fn $in_fn(value: $wire) -> Option<$domain> {
            match value {
                <$wire>::$unspecified => None,
                $(<$wire>::$w => Some(<$domain>::$d),)+
            }
        }
        pub(crate) fn $out_fn(value: $domain) -> $wire {
            match value {
                $(<$domain>::$d => <$wire>::$w,)+
            }
        }
    };
}

enum_mapping!(law_type_in, law_type_out, LawType, pb::LawType, Unspecified, { Public => Public, Private => Private });
enum_mapping!(application_type_in, application_type_out, ApplicationType, pb::ApplicationType, Unspecified, {
    S31Care => S31Care,
    S31Supervision => S31Supervision,
    S8ChildArrangements => S8ChildArrangements,
    S8ProhibitedSteps => S8ProhibitedSteps,
    S8SpecificIssue => S8SpecificIssue,
    SpecialGuardianship => SpecialGuardianship,
    EmergencyProtection => EmergencyProtection,
    Other => Other,
});
enum_mapping!(allocation_role_in, allocation_role_out, AllocationRole, pb::AllocationRole, Unspecified, {
    Lead => Lead, Guardian => Guardian, Duty => Duty, Hub => Hub,
});
enum_mapping!(seen_mode_in, seen_mode_out, SeenMode, pb::SeenMode, Unspecified, { InPerson => InPerson, Virtual => Virtual });
enum_mapping!(report_type_in, report_type_out, ReportType, pb::ReportType, Unspecified, {
    SafeguardingLetter => SafeguardingLetter,
    Section7 => Section7,
    Section7Addendum => Section7Addendum,
    Rule16_4Analysis => Rule164Analysis,
    InitialAnalysis => InitialAnalysis,
    FinalAnalysis => FinalAnalysis,
    ChildImpactReport => ChildImpactReport,
});
enum_mapping!(hearing_type_in, hearing_type_out, HearingType, pb::HearingType, Unspecified, {
    Fhdra => Fhdra, Cmh => Cmh, Irh => Irh, Final => Final, Other => Other,
});
enum_mapping!(outcome_in, outcome_out, CaseOutcome, pb::CaseOutcome, Unspecified, {
    FinalOrder => FinalOrder, Withdrawn => Withdrawn, Refused => Refused, Transferred => Transferred, Other => Other,
});
enum_mapping!(void_reason_in, void_reason_out, VoidReason, pb::VoidReason, Unspecified, {
    WrongCase => WrongCase, WrongChild => WrongChild, WrongDate => WrongDate, Duplicate => Duplicate, EnteredInError => EnteredInError,
});
