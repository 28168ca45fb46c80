//! Who may append and read what: the role and party rules, and that a refusal for a case the
//! caller may not see is the same whether or not the case is recorded.

#![allow(clippy::unwrap_used)]

use caselog_domain::event::*;
use caselog_domain::{CaseHistory, Denial, Grant, HistoryEvent, Metadata, NewEvent, Payload, Principal};
use chrono::NaiveDate;
use proptest::prelude::*;
use uuid::Uuid;

fn ev(payload: Payload) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4().into(),
        occurred_on: NaiveDate::from_ymd_opt(2025, 5, 1).unwrap(),
        payload,
        metadata: Metadata::default(),
    }
}

fn issue(law_type: LawType, court: &str, area: &str, authority: Option<&str>) -> NewEvent {
    ev(Payload::CaseIssued(Box::new(CaseIssued {
        law_type,
        application_types: vec![ApplicationType::S31Care],
        court_code: court.into(),
        service_area: area.into(),
        local_authority_code: authority.map(str::to_owned),
        children: vec![Child {
            child_id: "c1".into(),
            birth_month: BirthMonth { year: 2019, month: 6 },
        }],
        received_on: None,
    })))
}

fn public_case() -> NewEvent {
    issue(LawType::Public, "LS", "A5", Some("E08000035"))
}

fn seen() -> NewEvent {
    ev(Payload::ChildSeen(ChildSeen {
        child_id: "c1".into(),
        mode: SeenMode::InPerson,
    }))
}

fn hearing() -> NewEvent {
    ev(Payload::HearingListed(HearingListed {
        hearing_type: HearingType::Cmh,
        listed_for: NaiveDate::from_ymd_opt(2025, 6, 1).unwrap(),
    }))
}

fn void(of: &NewEvent) -> NewEvent {
    ev(Payload::EventVoided(EventVoided {
        voided_event_id: of.event_id,
        reason: VoidReason::EnteredInError,
    }))
}

fn history(events: &[&NewEvent]) -> CaseHistory {
    CaseHistory::new(events.iter().map(|e| HistoryEvent::from(*e)).collect())
}

fn principal(grant: &str) -> Principal {
    Principal {
        organisation: grant.to_owned(),
        grants: vec![Grant::parse(grant).unwrap()],
    }
}

fn reason(result: Result<(), Denial>) -> &'static str {
    result.err().map_or("ALLOWED", |d| d.reason())
}

#[test]
fn grants_parse_and_print_back() {
    for text in [
        "court:LS",
        "local_authority:E08000035",
        "practice:A5",
        "reporting",
        "admin",
        "migration",
    ] {
        assert_eq!(Grant::parse(text).unwrap().to_string(), text);
    }
    for bad in ["court", "court:", "judge:LS", "practice:A 5", "admin:x", ""] {
        assert!(Grant::parse(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn a_court_issues_cases_at_its_own_court_only() {
    let empty = history(&[]);
    assert_eq!(
        reason(principal("court:LS").may_append(&empty, &[public_case()])),
        "ALLOWED"
    );
    assert_eq!(
        reason(principal("court:MA").may_append(&empty, &[public_case()])),
        "NOT_A_PARTY"
    );
}

#[test]
fn a_court_lists_hearings_but_does_not_record_visits() {
    let issued = public_case();
    let case = history(&[&issued]);
    assert_eq!(reason(principal("court:LS").may_append(&case, &[hearing()])), "ALLOWED");
    let denial = principal("court:LS")
        .may_append(&case, &[hearing(), seen()])
        .unwrap_err();
    assert_eq!(denial.reason(), "EVENT_TYPE_NOT_PERMITTED");
    assert_eq!(denial.event_index(), Some(1));
}

#[test]
fn a_local_authority_writes_only_public_law_cases_naming_it() {
    let empty = history(&[]);
    let la = principal("local_authority:E08000035");
    assert_eq!(reason(la.may_append(&empty, &[public_case()])), "ALLOWED");
    let other = issue(LawType::Public, "LS", "A5", Some("E09000001"));
    assert_eq!(reason(la.may_append(&empty, &[other])), "NOT_A_PARTY");
    let private = issue(LawType::Private, "LS", "A5", None);
    assert_eq!(reason(la.may_append(&empty, &[private])), "NOT_A_PARTY");
    let issued = public_case();
    assert_eq!(
        reason(la.may_append(&history(&[&issued]), &[seen()])),
        "EVENT_TYPE_NOT_PERMITTED"
    );
}

#[test]
fn a_practice_system_writes_in_its_service_area_only() {
    let issued = public_case();
    let case = history(&[&issued]);
    assert_eq!(reason(principal("practice:A5").may_append(&case, &[seen()])), "ALLOWED");
    assert_eq!(
        reason(principal("practice:A3").may_append(&case, &[seen()])),
        "NOT_A_PARTY"
    );
}

#[test]
fn readers_do_not_write() {
    let issued = public_case();
    let case = history(&[&issued]);
    for grant in ["reporting", "admin"] {
        assert_eq!(
            reason(principal(grant).may_append(&case, &[hearing()])),
            "ROLE_NOT_PERMITTED"
        );
    }
}

#[test]
fn a_writer_corrects_only_what_its_role_records() {
    let issued = public_case();
    let visit = seen();
    let case = history(&[&issued, &visit]);
    assert_eq!(
        reason(principal("practice:A5").may_append(&case, &[void(&visit)])),
        "ALLOWED"
    );
    assert_eq!(
        reason(principal("court:LS").may_append(&case, &[void(&visit)])),
        "NOT_A_PARTY"
    );
}

#[test]
fn timelines_and_worklists_are_for_the_same_service_area() {
    let issued = public_case();
    let view = history(&[&issued]).view().cloned().unwrap();
    assert_eq!(reason(principal("practice:A5").may_read_case(Some(&view))), "ALLOWED");
    assert_eq!(reason(principal("admin").may_read_case(None)), "ALLOWED");
    assert_eq!(
        reason(principal("reporting").may_read_case(Some(&view))),
        "ROLE_NOT_PERMITTED"
    );
    assert_eq!(
        principal("practice:A5").worklist_scope(None).unwrap().as_deref(),
        Some("A5")
    );
    assert_eq!(
        principal("practice:A5")
            .worklist_scope(Some("A3"))
            .unwrap_err()
            .reason(),
        "SERVICE_AREA_NOT_PERMITTED"
    );
    assert_eq!(
        principal("reporting").worklist_scope(None).unwrap_err().reason(),
        "ROLE_NOT_PERMITTED"
    );
    // The units behind a figure are child-level: the same scope, and never for reporting.
    assert_eq!(
        principal("practice:A5").units_scope(None).unwrap().as_deref(),
        Some("A5")
    );
    assert_eq!(principal("admin").units_scope(None).unwrap(), None);
    assert_eq!(
        principal("practice:A5").units_scope(Some("A3")).unwrap_err().reason(),
        "SERVICE_AREA_NOT_PERMITTED"
    );
    assert_eq!(
        principal("reporting").units_scope(Some("A5")).unwrap_err().reason(),
        "ROLE_NOT_PERMITTED"
    );
    assert!(principal("reporting").metrics_access().unwrap().suppression_forced);
    assert!(!principal("admin").metrics_access().unwrap().suppression_forced);
    assert!(principal("court:LS").metrics_access().is_err());
}

const AREAS: &[&str] = &["A1", "A3", "A5", "B2"];
const COURTS: &[&str] = &["LS", "MA", "BH"];

proptest! {
    /// A caller that is not a party learns nothing: the refusal for another area's case is the
    /// refusal for a case that does not exist.
    #[test]
    fn refusals_do_not_reveal_existence(case_area in 0..AREAS.len(), caller_area in 0..AREAS.len()) {
        let issued = issue(LawType::Private, "LS", AREAS[case_area], None);
        let view = history(&[&issued]).view().cloned().unwrap();
        let caller = principal(&format!("practice:{}", AREAS[caller_area]));
        let recorded = caller.may_read_case(Some(&view));
        if case_area == caller_area {
            prop_assert!(recorded.is_ok());
        } else {
            prop_assert_eq!(recorded, caller.may_read_case(None));
        }
        let appended = caller.may_append(&history(&[&issued]), &[seen()]);
        if case_area != caller_area {
            prop_assert_eq!(appended, caller.may_append(&history(&[]), &[seen()]));
        }
    }

    /// A court may append to a case exactly when the case is at its court.
    #[test]
    fn a_court_is_a_party_exactly_at_its_court(case_court in 0..COURTS.len(), caller_court in 0..COURTS.len()) {
        let issued = issue(LawType::Private, COURTS[case_court], "A5", None);
        let case = history(&[&issued]);
        let result = principal(&format!("court:{}", COURTS[caller_court])).may_append(&case, &[hearing()]);
        prop_assert_eq!(result.is_ok(), case_court == caller_court);
    }
}
