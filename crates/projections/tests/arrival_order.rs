//! Whatever order a case's events arrive in (within what the lifecycle accepts), its facts, and
//! so every metric, are the same; and facts from the history cut at any point equal facts from a
//! replay of just that prefix.

#![allow(clippy::unwrap_used)]

use caselog_domain::event::*;
use caselog_domain::{CaseHistory, Metadata, NewEvent, Payload};
use caselog_projections::facts_of;
use chrono::{Duration, NaiveDate};
use proptest::prelude::*;
use uuid::Uuid;

fn day(n: i64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 4, 1).unwrap() + Duration::days(n)
}

/// An event and the indices of the events that must be recorded before it.
struct Planned {
    event: NewEvent,
    after: Vec<usize>,
}

fn plan(seed: &[u8]) -> Vec<Planned> {
    let mut bytes = seed.iter().copied().cycle();
    let mut next = move |n: u8| bytes.next().unwrap_or(0) % n.max(1);
    let mut out: Vec<Planned> = Vec::new();
    let push = |out: &mut Vec<Planned>, on: i64, payload: Payload, after: Vec<usize>| {
        out.push(Planned {
            event: NewEvent {
                event_id: Uuid::new_v4().into(),
                occurred_on: day(on),
                payload,
                metadata: Metadata::default(),
            },
            after,
        });
        out.len() - 1
    };
    let children: Vec<String> = (0..1 + next(3)).map(|c| format!("c{c}")).collect();
    let issue = push(
        &mut out,
        0,
        Payload::CaseIssued(Box::new(CaseIssued {
            law_type: LawType::Public,
            application_types: vec![ApplicationType::S31Care],
            court_code: "LS".into(),
            service_area: "A5".into(),
            local_authority_code: Some("E08000035".into()),
            children: children
                .iter()
                .map(|c| Child {
                    child_id: c.clone(),
                    birth_month: BirthMonth { year: 2018, month: 1 },
                })
                .collect(),
            received_on: None,
        })),
        vec![],
    );
    let joined = push(
        &mut out,
        5,
        Payload::ChildJoined(Child {
            child_id: "late".into(),
            birth_month: BirthMonth { year: 2024, month: 1 },
        }),
        vec![issue],
    );
    // Lead allocations on distinct days: on one day, the later-recorded allocation is current.
    for (i, role) in [AllocationRole::Duty, AllocationRole::Guardian, AllocationRole::Lead]
        .into_iter()
        .enumerate()
    {
        push(
            &mut out,
            1 + 10 * i as i64 + i64::from(next(9)),
            Payload::CaseAllocated(CaseAllocated {
                practitioner_id: format!("p{i}"),
                role,
            }),
            vec![issue],
        );
    }
    let mut visits = Vec::new();
    for child in children.iter().chain(std::iter::once(&"late".to_owned())) {
        let deps = if child == "late" {
            vec![issue, joined]
        } else {
            vec![issue]
        };
        for _ in 0..next(3) {
            let on = 6 + i64::from(next(60));
            let mode = if next(4) == 0 {
                SeenMode::Virtual
            } else {
                SeenMode::InPerson
            };
            visits.push(push(
                &mut out,
                on,
                Payload::ChildSeen(ChildSeen {
                    child_id: child.clone(),
                    mode,
                }),
                deps.clone(),
            ));
        }
        push(
            &mut out,
            6 + i64::from(next(60)),
            Payload::LetterSent(LetterSent {
                child_id: child.clone(),
                personalised: next(2) == 0,
            }),
            deps.clone(),
        );
        push(
            &mut out,
            70 + i64::from(next(20)),
            Payload::RecommendationShared(ChildRef {
                child_id: child.clone(),
            }),
            deps,
        );
    }
    let order = push(
        &mut out,
        20,
        Payload::ReportOrdered(ReportOrdered {
            report_id: "r".into(),
            report_type: ReportType::FinalAnalysis,
            due_on: day(80),
        }),
        vec![issue],
    );
    let mut last = order;
    for k in 0..next(3) {
        let ext = Payload::FilingDateExtended(FilingDateExtended {
            report_id: "r".into(),
            due_on: day(90 + 10 * i64::from(k)),
        });
        last = push(&mut out, 40 + i64::from(k), ext, vec![issue, last]);
    }
    let filed = push(
        &mut out,
        85,
        Payload::ReportFiled(ReportFiled {
            report_id: "r".into(),
            report_type: ReportType::FinalAnalysis,
        }),
        vec![issue, last],
    );
    if let Some(visit) = visits.get(usize::from(next(4))) {
        let void = Payload::EventVoided(EventVoided {
            voided_event_id: out[*visit].event.event_id,
            reason: VoidReason::WrongDate,
        });
        push(&mut out, 100, void, vec![issue, *visit]);
    }
    if next(2) == 0 {
        push(
            &mut out,
            120,
            Payload::CaseClosed(CaseClosed {
                outcome: CaseOutcome::FinalOrder,
            }),
            vec![issue, filed],
        );
    }
    out
}

/// A recording order: a random topological order of the plan's dependencies.
fn arrival(plan: &[Planned], keys: &[u32]) -> Vec<NewEvent> {
    let mut done = vec![false; plan.len()];
    let mut order = Vec::with_capacity(plan.len());
    while order.len() < plan.len() {
        let ready = (0..plan.len()).filter(|i| !done[*i] && plan[*i].after.iter().all(|d| done[*d]));
        let pick = ready
            .min_by_key(|i| keys[*i % keys.len()].wrapping_mul(*i as u32 + 1))
            .unwrap();
        done[pick] = true;
        order.push(plan[pick].event.clone());
    }
    order
}

fn record(events: &[NewEvent]) -> CaseHistory {
    CaseHistory::default().decide(events, day(1000)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn facts_do_not_depend_on_arrival_order(seed in prop::collection::vec(any::<u8>(), 32), a in prop::collection::vec(any::<u32>(), 40), b in prop::collection::vec(any::<u32>(), 40)) {
        let plan = plan(&seed);
        let first = record(&arrival(&plan, &a));
        let second = record(&arrival(&plan, &b));
        prop_assert_eq!(facts_of("K", &first), facts_of("K", &second));
    }

    #[test]
    fn a_prefix_of_the_log_gives_the_facts_of_a_replay_of_that_prefix(seed in prop::collection::vec(any::<u8>(), 32), keys in prop::collection::vec(any::<u32>(), 40), cut in 1usize..40) {
        let events = arrival(&plan(&seed), &keys);
        let cut = cut.min(events.len());
        let full = record(&events);
        let prefix = CaseHistory::new(full.events()[..cut].to_vec());
        prop_assert_eq!(facts_of("K", &prefix), facts_of("K", &record(&events[..cut])));
    }
}
