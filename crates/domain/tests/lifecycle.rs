//! The case lifecycle, given/when/then, and properties of every history it accepts.

#![allow(clippy::unwrap_used)]

use caselog_domain::event::*;
use caselog_domain::{CaseHistory, HistoryEvent, Metadata, NewEvent, Payload, Rejection, Rule};
use chrono::{Duration, NaiveDate};
use proptest::prelude::*;
use std::collections::HashSet;
use uuid::Uuid;

fn day(n: i64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 4, 1).unwrap() + Duration::days(n)
}

const TODAY: i64 = 400;

fn ev(on: i64, payload: Payload) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4().into(),
        occurred_on: day(on),
        payload,
        metadata: Metadata::default(),
    }
}

fn issued(on: i64, law_type: LawType) -> NewEvent {
    ev(
        on,
        Payload::CaseIssued(Box::new(CaseIssued {
            law_type,
            application_types: vec![ApplicationType::S31Care],
            court_code: "LS".into(),
            service_area: "A5".into(),
            local_authority_code: (law_type == LawType::Public).then(|| "E08000035".into()),
            children: vec![Child {
                child_id: "c1".into(),
                birth_month: BirthMonth { year: 2019, month: 6 },
            }],
            received_on: None,
        })),
    )
}

fn seen(on: i64, child: &str) -> NewEvent {
    ev(
        on,
        Payload::ChildSeen(ChildSeen {
            child_id: child.into(),
            mode: SeenMode::InPerson,
        }),
    )
}

fn closed(on: i64) -> NewEvent {
    ev(
        on,
        Payload::CaseClosed(CaseClosed {
            outcome: CaseOutcome::FinalOrder,
        }),
    )
}

fn void(on: i64, target: &NewEvent) -> NewEvent {
    ev(
        on,
        Payload::EventVoided(EventVoided {
            voided_event_id: target.event_id,
            reason: VoidReason::EnteredInError,
        }),
    )
}

struct Given(CaseHistory);

fn given(events: Vec<NewEvent>) -> Given {
    Given(
        CaseHistory::default()
            .decide(&events, day(TODAY))
            .expect("the given history is valid"),
    )
}

impl Given {
    fn when(&self, event: NewEvent) -> Result<CaseHistory, Rejection> {
        self.0.decide(&[event], day(TODAY)).map_err(|r| r.rejection)
    }
}

fn rule_of(result: Result<CaseHistory, Rejection>) -> Option<Rule> {
    match result {
        Err(Rejection::Rule { rule, .. }) => Some(rule),
        _ => None,
    }
}

#[test]
fn a_case_begins_with_case_issued() {
    assert_eq!(rule_of(given(vec![]).when(seen(1, "c1"))), Some(Rule::CaseNotIssued));
    assert!(given(vec![]).when(issued(0, LawType::Private)).is_ok());
}

#[test]
fn closure_fences_later_events_but_not_late_recording() {
    let case = given(vec![issued(0, LawType::Public), closed(100)]);
    assert_eq!(rule_of(case.when(seen(101, "c1"))), Some(Rule::CaseClosed));
    assert!(
        case.when(seen(100, "c1")).is_ok(),
        "an event on the closure date is inside the case"
    );
    assert!(case.when(seen(50, "c1")).is_ok(), "late recording of an earlier visit");
}

#[test]
fn voiding_the_closure_reopens_the_case() {
    let close = closed(100);
    let case = given(vec![issued(0, LawType::Public), close.clone()]);
    let reopened = case.when(void(120, &close)).unwrap();
    assert!(reopened.view().unwrap().is_open());
    assert!(Given(reopened).when(seen(130, "c1")).is_ok());
}

#[test]
fn a_voided_filing_can_be_filed_again() {
    let letter = ev(
        5,
        Payload::ReportFiled(ReportFiled {
            report_id: "r1".into(),
            report_type: ReportType::SafeguardingLetter,
        }),
    );
    let case = given(vec![issued(0, LawType::Private), letter.clone()]);
    assert_eq!(
        rule_of(case.when(letter.clone_with_new_id())),
        Some(Rule::ReportAlreadyFiled)
    );
    let after_void = Given(case.when(void(6, &letter)).unwrap());
    assert!(after_void.when(letter.clone_with_new_id()).is_ok());
}

#[test]
fn unknown_children_are_field_violations() {
    let case = given(vec![issued(0, LawType::Public)]);
    let Err(Rejection::Invalid(violations)) = case.when(seen(1, "c9")) else {
        panic!("expected a field violation")
    };
    assert_eq!(violations[0].path(), "events[0].payload.child_seen.child_id");
}

#[test]
fn a_batch_sees_its_own_earlier_events() {
    let join = ev(
        3,
        Payload::ChildJoined(Child {
            child_id: "c2".into(),
            birth_month: BirthMonth { year: 2024, month: 1 },
        }),
    );
    let history = CaseHistory::default()
        .decide(&[issued(0, LawType::Public), join, seen(4, "c2")], day(TODAY))
        .unwrap();
    assert_eq!(history.version().get(), 3);
}

#[test]
fn the_first_refused_event_of_a_batch_is_named() {
    let err = CaseHistory::default()
        .decide(
            &[issued(0, LawType::Public), seen(1, "c1"), closed(2), seen(3, "c1")],
            day(TODAY),
        )
        .unwrap_err();
    assert_eq!(err.index, 3);
    assert!(matches!(
        err.rejection,
        Rejection::Rule {
            rule: Rule::CaseClosed,
            ..
        }
    ));
}

#[test]
fn lead_allocations_ignore_duty_and_hub() {
    let alloc = |on, role, who: &str| {
        ev(
            on,
            Payload::CaseAllocated(CaseAllocated {
                practitioner_id: who.into(),
                role,
            }),
        )
    };
    let case = given(vec![
        issued(0, LawType::Public),
        alloc(1, AllocationRole::Hub, "hub"),
        alloc(2, AllocationRole::Duty, "duty"),
        alloc(9, AllocationRole::Lead, "second"),
        alloc(5, AllocationRole::Guardian, "first"),
    ]);
    let view = case.0.view().unwrap();
    assert_eq!(view.first_lead_allocation.as_ref().unwrap().practitioner_id, "first");
    assert_eq!(view.current_lead_allocation.as_ref().unwrap().practitioner_id, "second");
}

trait CloneWithNewId {
    fn clone_with_new_id(&self) -> NewEvent;
}

impl CloneWithNewId for NewEvent {
    fn clone_with_new_id(&self) -> NewEvent {
        NewEvent {
            event_id: Uuid::new_v4().into(),
            ..self.clone()
        }
    }
}

/// Candidate events drawn from a small alphabet, so that rules are often hit both ways.
fn candidate() -> impl Strategy<Value = (u8, i64, u8, u8)> {
    (0u8..12, 0i64..200, 0u8..3, 0u8..3)
}

fn build(kind: u8, on: i64, child: u8, report: u8, accepted: &[NewEvent]) -> NewEvent {
    let child_id = format!("c{child}");
    let report_id = format!("r{report}");
    let payload = match kind {
        0 => return issued(on, LawType::Public),
        1 => Payload::ChildJoined(Child {
            child_id,
            birth_month: BirthMonth { year: 2020, month: 1 },
        }),
        2 => Payload::CaseAllocated(CaseAllocated {
            practitioner_id: "p".into(),
            role: AllocationRole::Guardian,
        }),
        3 => Payload::ChildSeen(ChildSeen {
            child_id,
            mode: SeenMode::InPerson,
        }),
        4 => Payload::LetterSent(LetterSent {
            child_id,
            personalised: true,
        }),
        5 => Payload::ReportOrdered(ReportOrdered {
            report_id,
            report_type: ReportType::Section7,
            due_on: day(on + 60),
        }),
        6 => Payload::FilingDateExtended(FilingDateExtended {
            report_id,
            due_on: day(on + 30 * i64::from(child + 1)),
        }),
        7 => Payload::ReportFiled(ReportFiled {
            report_id,
            report_type: if child == 0 {
                ReportType::SafeguardingLetter
            } else {
                ReportType::Section7
            },
        }),
        8 => Payload::HearingListed(HearingListed {
            hearing_type: HearingType::Irh,
            listed_for: day(on + 10),
        }),
        9 => Payload::CaseClosed(CaseClosed {
            outcome: CaseOutcome::Withdrawn,
        }),
        _ => match accepted.get(usize::from(child) * 7 % accepted.len().max(1)) {
            Some(target) => Payload::EventVoided(EventVoided {
                voided_event_id: target.event_id,
                reason: VoidReason::WrongDate,
            }),
            None => Payload::CaseClosed(CaseClosed {
                outcome: CaseOutcome::Other,
            }),
        },
    };
    ev(on, payload)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever is offered, in whatever order, every history the lifecycle accepts keeps the
    /// brief's invariants, and offering the accepted events again as one batch is accepted too.
    #[test]
    fn accepted_histories_keep_the_invariants(candidates in prop::collection::vec(candidate(), 1..40)) {
        let mut history = CaseHistory::default();
        let mut accepted: Vec<NewEvent> = Vec::new();
        for (kind, on, child, report) in candidates {
            let event = build(kind, on, child, report, &accepted);
            let before = history.clone();
            match history.decide(std::slice::from_ref(&event), day(TODAY)) {
                Ok(next) => {
                    prop_assert_eq!(next.version().get(), before.version().get() + 1);
                    history = next;
                    accepted.push(event);
                }
                Err(_) => prop_assert_eq!(&history, &before),
            }
            check_invariants(&history)?;
        }
        let replayed = CaseHistory::default().decide(&accepted, day(TODAY));
        prop_assert!(replayed.is_ok(), "{:?}", replayed.err());
        prop_assert_eq!(replayed.unwrap(), history);
    }

    /// Accepting a batch in place (the write path's cached cases) gives what deciding it gives,
    /// and a refused batch leaves the history exactly as it was, however far into it the
    /// refusal comes. The view and the weight the history keeps up to date meanwhile (voids,
    /// refusals and all) are those of its events taken afresh: the rules see the case as it is,
    /// and the caches weigh it as it is.
    #[test]
    fn accepting_in_place_agrees_with_deciding_and_with_the_events_afresh(
        batches in prop::collection::vec(prop::collection::vec(candidate(), 1..6), 1..10)
    ) {
        let mut in_place = CaseHistory::default();
        let mut accepted: Vec<NewEvent> = Vec::new();
        for candidates in batches {
            let batch: Vec<NewEvent> = candidates
                .into_iter()
                .map(|(kind, on, child, report)| build(kind, on, child, report, &accepted))
                .collect();
            let before = in_place.clone();
            let decided = before.decide(&batch, day(TODAY));
            let outcome = in_place.accept(&batch, day(TODAY));
            prop_assert_eq!(outcome.is_ok(), decided.is_ok());
            match decided {
                Ok(next) => {
                    prop_assert_eq!(&in_place, &next);
                    accepted.extend(batch);
                }
                Err(_) => prop_assert_eq!(&in_place, &before),
            }
            let afresh = CaseHistory::new(in_place.events().to_vec());
            prop_assert_eq!(in_place.view(), afresh.view());
            // Both views are folded now; the weights differ only by the kept history's spare
            // capacity, whole events' places (`afresh` has none).
            let spare = in_place.memory_bytes() as i64 - afresh.memory_bytes() as i64;
            let place = std::mem::size_of::<HistoryEvent>() as i64;
            prop_assert!(spare >= 0 && spare % place == 0, "weights differ by {} bytes", spare);
        }
    }
}

fn check_invariants(history: &CaseHistory) -> Result<(), TestCaseError> {
    let Some(view) = history.view() else {
        prop_assert_eq!(history.version().get(), 0, "only an empty history has no case");
        return Ok(());
    };
    let voided = history.voided_by();
    let live: Vec<_> = history
        .events()
        .iter()
        .filter(|e| !voided.contains_key(&e.event_id))
        .collect();
    let issues = live
        .iter()
        .filter(|e| matches!(e.payload, Payload::CaseIssued(_)))
        .count();
    prop_assert_eq!(issues, 1);
    prop_assert!(matches!(history.events()[0].payload, Payload::CaseIssued(_)));
    let children: HashSet<&str> = view.children.iter().map(|c| c.child_id.as_str()).collect();
    for e in &live {
        prop_assert!(e.occurred_on >= view.issued_on);
        if let Some(child) = e.payload.child_id() {
            prop_assert!(children.contains(child), "child {} is in the case", child);
        }
        if let (Some(closure), false) = (view.closure, matches!(e.payload, Payload::EventVoided(_))) {
            prop_assert!(e.occurred_on <= closure.closed_on);
        }
    }
    let closures = live
        .iter()
        .filter(|e| matches!(e.payload, Payload::CaseClosed(_)))
        .count();
    prop_assert!(closures <= 1);
    for (id, report) in &view.reports {
        let filings = live
            .iter()
            .filter(|e| matches!(&e.payload, Payload::ReportFiled(f) if &f.report_id == id))
            .count();
        prop_assert!(filings <= 1, "report {} filed {} times", id, filings);
        if let (Some((ordered, _)), Some((filed, _))) = (report.ordered, report.filed) {
            prop_assert_eq!(ordered, filed);
        }
    }
    for void_target in voided.keys() {
        let target = history.events().iter().find(|e| e.event_id == *void_target);
        prop_assert!(target.is_some_and(|t| !matches!(t.payload, Payload::CaseIssued(_) | Payload::EventVoided(_))));
    }
    Ok(())
}
