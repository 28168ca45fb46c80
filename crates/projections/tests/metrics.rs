//! Hand-worked scenarios for the metric catalogue, each figure computed by hand from
//! `docs/metrics.md` and the England and Wales calendar.

#![allow(clippy::unwrap_used)]

use caselog_calendar::WorkingCalendar;
use caselog_domain::event::*;
use caselog_domain::{CaseHistory, Metadata, NewEvent, Payload};
use caselog_projections::metrics::Settings;
use caselog_projections::{CaseFacts, Dimension, MetricId, MetricsQuery, Period, facts_of};
use chrono::{Duration, NaiveDate};
use uuid::Uuid;

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn ev(on: &str, payload: Payload) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4().into(),
        occurred_on: d(on),
        payload,
        metadata: Metadata::default(),
    }
}

fn issue(on: &str, law: LawType, apps: &[ApplicationType], children: &[&str]) -> NewEvent {
    ev(
        on,
        Payload::CaseIssued(Box::new(CaseIssued {
            law_type: law,
            application_types: apps.to_vec(),
            court_code: "LS".into(),
            service_area: "A5".into(),
            local_authority_code: (law == LawType::Public).then(|| "E08000035".into()),
            children: children
                .iter()
                .map(|c| Child {
                    child_id: (*c).into(),
                    birth_month: BirthMonth { year: 2019, month: 6 },
                })
                .collect(),
            received_on: None,
        })),
    )
}

fn public(on: &str, children: &[&str]) -> NewEvent {
    issue(on, LawType::Public, &[ApplicationType::S31Care], children)
}

fn alloc(on: &str, role: AllocationRole) -> NewEvent {
    ev(
        on,
        Payload::CaseAllocated(CaseAllocated {
            practitioner_id: "fca-1".into(),
            role,
        }),
    )
}

fn seen(on: &str, child: &str) -> NewEvent {
    ev(
        on,
        Payload::ChildSeen(ChildSeen {
            child_id: child.into(),
            mode: SeenMode::InPerson,
        }),
    )
}

fn close(on: &str) -> NewEvent {
    ev(
        on,
        Payload::CaseClosed(CaseClosed {
            outcome: CaseOutcome::FinalOrder,
        }),
    )
}

/// Facts of a case recorded in the given order (which need not be date order).
fn facts(case_id: &str, events: &[NewEvent]) -> CaseFacts {
    let history = CaseHistory::default().decide(events, d("2030-01-01")).unwrap();
    facts_of(case_id, &history).unwrap()
}

fn query(metrics: &[MetricId], period: Period) -> MetricsQuery {
    MetricsQuery {
        metrics: metrics.to_vec(),
        period,
        snapshot: None,
        group_by: vec![],
        filters: vec![],
        suppress_small_numbers: false,
        settings: Settings::default(),
    }
}

/// (numerator, denominator) of the single national row of `metric`.
fn figure(q: &MetricsQuery, cases: &[CaseFacts], metric: MetricId) -> (f64, f64) {
    let results = caselog_projections::compute(q, cases, WorkingCalendar::england_and_wales()).unwrap();
    let result = results.into_iter().find(|r| r.metric == metric).unwrap();
    assert_eq!(result.rows.len(), 1, "{:?}", result.rows);
    (result.rows[0].numerator, result.rows[0].denominator)
}

fn q2_2025() -> Period {
    Period::financial_quarter(2025, 1).unwrap() // April to June 2025
}

#[test]
fn t4_deadline_crosses_easter_and_the_early_may_bank_holiday() {
    // First lead allocation Thu 17 April 2025: 15 working days later is Tue 13 May 2025
    // (Good Friday 18/4, Easter Monday 21/4, early May 5/5 are not working days).
    let cases = vec![
        facts(
            "A",
            &[
                public("2025-04-10", &["a1"]),
                alloc("2025-04-17", AllocationRole::Guardian),
                seen("2025-05-13", "a1"),
            ],
        ),
        facts(
            "B",
            &[
                public("2025-04-10", &["b1"]),
                alloc("2025-04-17", AllocationRole::Guardian),
                seen("2025-05-14", "b1"),
            ],
        ),
    ];
    assert_eq!(
        figure(&query(&[MetricId::T4], q2_2025()), &cases, MetricId::T4),
        (1.0, 2.0)
    );
}

#[test]
fn t4_three_children_seen_on_different_days_and_allocation_first_to_duty() {
    // Duty cover on 1 April does not start the clock; the guardian on Tue 6 May 2025 does:
    // deadline = 15 working days later = Wed 28 May 2025 (spring bank holiday Mon 26 May).
    let case = facts(
        "C",
        &[
            public("2025-04-01", &["c1", "c2", "c3"]),
            alloc("2025-04-01", AllocationRole::Duty),
            alloc("2025-05-06", AllocationRole::Guardian),
            seen("2025-05-07", "c1"),
            seen("2025-05-28", "c2"),
            seen("2025-05-29", "c3"),
        ],
    );
    assert_eq!(
        figure(
            &query(&[MetricId::T4], q2_2025()),
            std::slice::from_ref(&case),
            MetricId::T4
        ),
        (2.0, 3.0)
    );
    // In a period ending before the deadline, only children already seen in time count.
    let may_first_half = Period::custom(d("2025-05-01"), d("2025-05-20")).unwrap();
    assert_eq!(
        figure(&query(&[MetricId::T4], may_first_half), &[case], MetricId::T4),
        (1.0, 1.0)
    );
}

#[test]
fn t2_a_case_closed_on_day_181_is_inside_and_on_day_182_outside() {
    let issued = "2024-07-01";
    let day = |n: i64| (d(issued) + Duration::days(n)).to_string();
    let cases = vec![
        facts("IN", &[public(issued, &["x"]), close(&day(181))]),
        facts("OUT", &[public(issued, &["y"]), close(&day(182))]),
    ];
    let period = Period::custom(d("2024-12-01"), d("2025-01-31")).unwrap();
    assert_eq!(
        figure(&query(&[MetricId::T2], period.clone()), &cases, MetricId::T2),
        (1.0, 2.0)
    );
    let (weeks, count) = figure(&query(&[MetricId::T1], period.clone()), &cases, MetricId::T1);
    assert_eq!(count, 2.0);
    assert!((weeks / count - (181.0 + 182.0) / 2.0 / 7.0).abs() < 1e-9);
    // Configured to the statute's outer reading (182 days), both are inside.
    let mut q = query(&[MetricId::T2], period);
    q.settings.twenty_six_week_limit_days = 182;
    assert_eq!(figure(&q, &cases, MetricId::T2), (2.0, 2.0));
}

#[test]
fn t7_and_t8_a_report_extended_twice() {
    let report = |payload| ev("2025-05-01", payload);
    let case = facts(
        "S7",
        &[
            issue(
                "2025-03-03",
                LawType::Private,
                &[ApplicationType::S8ChildArrangements],
                &["k"],
            ),
            report(Payload::ReportOrdered(ReportOrdered {
                report_id: "r".into(),
                report_type: ReportType::Section7,
                due_on: d("2025-06-02"),
            })),
            ev(
                "2025-05-20",
                Payload::FilingDateExtended(FilingDateExtended {
                    report_id: "r".into(),
                    due_on: d("2025-06-16"),
                }),
            ),
            ev(
                "2025-06-10",
                Payload::FilingDateExtended(FilingDateExtended {
                    report_id: "r".into(),
                    due_on: d("2025-06-23"),
                }),
            ),
            ev(
                "2025-06-20",
                Payload::ReportFiled(ReportFiled {
                    report_id: "r".into(),
                    report_type: ReportType::Section7,
                }),
            ),
        ],
    );
    let q = query(&[MetricId::T6, MetricId::T7, MetricId::T8], q2_2025());
    assert_eq!(figure(&q, std::slice::from_ref(&case), MetricId::T7), (1.0, 1.0));
    // Filed 20 June, before the latest agreed date (23 June): not late.
    assert_eq!(figure(&q, std::slice::from_ref(&case), MetricId::T8), (0.0, 1.0));
    // wd(1 May, 20 June 2025) = 34 (5 May and 26 May are bank holidays): 6.8 working weeks.
    let (weeks, n) = figure(&q, &[case], MetricId::T6);
    assert_eq!(n, 1.0);
    assert!((weeks - 6.8).abs() < 1e-9, "{weeks}");
}

#[test]
fn e1_a_voided_visit_does_not_count_and_a_late_recorded_one_does() {
    let mistaken = seen("2025-05-02", "v1");
    let voided = ev(
        "2025-05-03",
        Payload::EventVoided(EventVoided {
            voided_event_id: mistaken.event_id,
            reason: VoidReason::WrongChild,
        }),
    );
    let cases = vec![
        facts(
            "V",
            &[
                public("2025-04-01", &["v1"]),
                alloc("2025-04-02", AllocationRole::Guardian),
                mistaken,
                voided,
                close("2025-06-30"),
            ],
        ),
        // The visit on 10 May is recorded after the closure, two weeks late: still counts.
        facts(
            "L",
            &[
                public("2025-04-01", &["l1"]),
                alloc("2025-04-02", AllocationRole::Guardian),
                close("2025-06-30"),
                seen("2025-05-10", "l1"),
            ],
        ),
    ];
    assert_eq!(
        figure(&query(&[MetricId::E1], q2_2025()), &cases, MetricId::E1),
        (1.0, 2.0)
    );
}

#[test]
fn arrival_order_does_not_change_the_facts() {
    let events = [
        public("2025-04-01", &["o1"]),
        alloc("2025-04-20", AllocationRole::Lead),
        seen("2025-04-25", "o1"),
        alloc("2025-04-10", AllocationRole::Guardian),
        close("2025-06-01"),
    ];
    let in_order = [
        events[0].clone(),
        events[3].clone(),
        events[1].clone(),
        events[2].clone(),
        events[4].clone(),
    ];
    let mut a = facts("O", &events);
    let b = facts("O", &in_order);
    assert_eq!(a.first_lead_allocation(), Some(d("2025-04-10")));
    a.lead_allocations.sort();
    assert_eq!(a.lead_allocations, {
        let mut l = b.lead_allocations.clone();
        l.sort();
        l
    });
    assert_eq!(a.children, b.children);
}

#[test]
fn stock_demand_and_caseload_at_a_snapshot() {
    let old = facts(
        "OLD",
        &[
            public("2024-01-01", &["o1", "o2"]),
            alloc("2024-01-02", AllocationRole::Guardian),
        ],
    );
    let new = facts(
        "NEW",
        &[
            issue(
                "2025-03-03",
                LawType::Private,
                &[ApplicationType::S8ChildArrangements],
                &["n1"],
            ),
            alloc("2025-03-04", AllocationRole::Lead),
        ],
    );
    let closed = facts("SHUT", &[public("2024-06-03", &["s1"]), close("2025-03-31")]);
    let cases = vec![old, new, closed];
    let mut q = query(
        &[
            MetricId::S1Cases,
            MetricId::S1Children,
            MetricId::S2CasesOver52,
            MetricId::S2ChildrenOver52,
            MetricId::S2CasesOver100,
            MetricId::W1Mean,
            MetricId::D1Cases,
            MetricId::D2,
        ],
        Period::month(2025, 3).unwrap(),
    );
    q.snapshot = Some(d("2025-03-31"));
    assert_eq!(
        figure(&q, &cases, MetricId::S1Cases).0,
        2.0,
        "closed on the snapshot date is not open"
    );
    assert_eq!(figure(&q, &cases, MetricId::S1Children).0, 3.0);
    // OLD: 455 days = 65 weeks open.
    assert_eq!(figure(&q, &cases, MetricId::S2CasesOver52).0, 1.0);
    assert_eq!(figure(&q, &cases, MetricId::S2ChildrenOver52).0, 2.0);
    assert_eq!(figure(&q, &cases, MetricId::S2CasesOver100).0, 0.0);
    assert_eq!(
        figure(&q, &cases, MetricId::W1Mean),
        (2.0, 1.0),
        "one practitioner (fca-1) holds both open cases"
    );
    assert_eq!(figure(&q, &cases, MetricId::D1Cases).0, 1.0);
    // March 2025 had 21 working days.
    assert_eq!(figure(&q, &cases, MetricId::D2), (1.0, 21.0));
}

#[test]
fn small_numbers_are_suppressed_below_national_level_with_a_secondary_cell() {
    let mut cases = Vec::new();
    for (i, area) in [
        "A1", "A1", "A2", "A2", "A2", "A2", "A2", "A3", "A3", "A3", "A3", "A3", "A3",
    ]
    .iter()
    .enumerate()
    {
        let mut f = facts(&format!("C{i}"), &[public("2025-04-01", &["c"])]);
        f.service_area = (*area).into();
        cases.push(f);
    }
    let mut q = query(&[MetricId::S1Cases], q2_2025());
    q.group_by = vec![Dimension::ServiceArea];
    q.suppress_small_numbers = true;
    let result = caselog_projections::compute(&q, &cases, WorkingCalendar::england_and_wales())
        .unwrap()
        .remove(0);
    let by_area: Vec<(String, bool, Option<f64>)> = result
        .rows
        .iter()
        .filter(|r| r.suppressed || r.value != Some(0.0))
        .map(|r| (r.group[&Dimension::ServiceArea].clone(), r.suppressed, r.value))
        .collect();
    assert_eq!(
        by_area,
        [
            ("A1".into(), true, None),
            ("A2".into(), true, None),
            ("A3".into(), false, Some(6.0))
        ],
        "A1 (2) is suppressed, and A2 (5) with it so that A1 cannot be derived from the total; \
         every other area is a shown zero"
    );
    assert_eq!(result.rows.len(), 18, "a row for every service area");
    // Nationally nothing is suppressed.
    q.group_by.clear();
    assert_eq!(figure(&q, &cases, MetricId::S1Cases).0, 13.0);
}

#[test]
fn periods_are_the_catalogue_periods() {
    let p = Period::financial_quarter(2024, 3).unwrap();
    assert_eq!(
        (p.first, p.last, p.label.as_str()),
        (d("2024-10-01"), d("2024-12-31"), "financial quarter 2024-25 Q3")
    );
    let p = Period::financial_quarter(2024, 4).unwrap();
    assert_eq!((p.first, p.last), (d("2025-01-01"), d("2025-03-31")));
    let p = Period::calendar_quarter(2024, 1).unwrap();
    assert_eq!((p.first, p.last), (d("2024-01-01"), d("2024-03-31")));
    let p = Period::financial_year(2024).unwrap();
    assert_eq!(
        (p.first, p.last, p.label.as_str()),
        (d("2024-04-01"), d("2025-03-31"), "financial year 2024-25")
    );
    assert!(Period::calendar_quarter(2024, 5).is_none());
    assert_eq!(Period::month(2024, 2).unwrap().last, d("2024-02-29"));
}
