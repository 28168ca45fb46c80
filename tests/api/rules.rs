//! Every lifecycle rule and every kind of malformed input, through the real server: the right
//! code, the right reason or fields, and nothing written.

use caselog_api::v1 as pb;
use caselog_api::v1::event_payload::Kind;
use caselog_tests::*;
use sqlx::PgPool;
use tonic::Code;

struct Scenario {
    name: &'static str,
    history: Vec<pb::NewEvent>,
    offending: Vec<pb::NewEvent>,
    code: Code,
    reason: &'static str,
}

fn issue() -> pb::NewEvent {
    event("2025-04-17", issued_public(&["c1", "c2"]))
}

fn order() -> pb::NewEvent {
    event("2025-05-01", ordered("r1", pb::ReportType::FinalAnalysis, "2025-07-01"))
}

/// Every scenario has events of its own: event ids are unique across the whole log.
fn scenarios() -> Vec<Scenario> {
    let seen_c1 = event("2025-05-01", seen("c1"));
    let void_of_seen = event("2025-05-03", voided(&seen_c1, pb::VoidReason::Duplicate));
    let seen_c1_b = event("2025-05-01", seen("c1"));
    let void_of_seen_b = event("2025-05-03", voided(&seen_c1_b, pb::VoidReason::Duplicate));
    let joined_c3 = event("2025-05-01", joined("c3"));
    let issued = issue();
    vec![
        Scenario {
            name: "first event is not case_issued",
            history: vec![],
            offending: vec![event("2025-05-01", hearing("2025-06-01"))],
            code: Code::FailedPrecondition,
            reason: "CASE_NOT_ISSUED",
        },
        Scenario {
            name: "case issued twice",
            history: vec![issue()],
            offending: vec![issue()],
            code: Code::FailedPrecondition,
            reason: "CASE_ALREADY_ISSUED",
        },
        Scenario {
            name: "event before the issue date",
            history: vec![issue()],
            offending: vec![event("2025-04-16", seen("c1"))],
            code: Code::FailedPrecondition,
            reason: "OCCURRED_BEFORE_ISSUE",
        },
        Scenario {
            name: "event after closure",
            history: vec![issue(), event("2025-09-01", closed(pb::CaseOutcome::FinalOrder))],
            offending: vec![event("2025-09-02", seen("c1"))],
            code: Code::FailedPrecondition,
            reason: "CASE_CLOSED",
        },
        Scenario {
            name: "closed twice",
            history: vec![issue(), event("2025-09-01", closed(pb::CaseOutcome::FinalOrder))],
            offending: vec![event("2025-09-01", closed(pb::CaseOutcome::Withdrawn))],
            code: Code::FailedPrecondition,
            reason: "CASE_ALREADY_CLOSED",
        },
        Scenario {
            name: "closure dated before an event that occurred",
            history: vec![issue(), event("2025-09-10", seen("c1"))],
            offending: vec![event("2025-09-01", closed(pb::CaseOutcome::FinalOrder))],
            code: Code::FailedPrecondition,
            reason: "EVENTS_AFTER_CLOSURE",
        },
        Scenario {
            name: "child joins twice",
            history: vec![issue()],
            offending: vec![event("2025-05-01", joined("c2"))],
            code: Code::FailedPrecondition,
            reason: "CHILD_ALREADY_IN_CASE",
        },
        Scenario {
            name: "report ordered twice",
            history: vec![issue(), order()],
            offending: vec![event(
                "2025-05-02",
                ordered("r1", pb::ReportType::FinalAnalysis, "2025-08-01"),
            )],
            code: Code::FailedPrecondition,
            reason: "REPORT_ALREADY_ORDERED",
        },
        Scenario {
            name: "section 7 filed without an order",
            history: vec![issue()],
            offending: vec![event("2025-05-01", filed("r9", pb::ReportType::Section7))],
            code: Code::FailedPrecondition,
            reason: "REPORT_NOT_ORDERED",
        },
        Scenario {
            name: "extension of a report never ordered",
            history: vec![issue()],
            offending: vec![event("2025-05-01", extended("r9", "2025-08-01"))],
            code: Code::FailedPrecondition,
            reason: "REPORT_NOT_ORDERED",
        },
        Scenario {
            name: "report filed twice",
            history: vec![
                issue(),
                order(),
                event("2025-06-20", filed("r1", pb::ReportType::FinalAnalysis)),
            ],
            offending: vec![event("2025-06-21", filed("r1", pb::ReportType::FinalAnalysis))],
            code: Code::FailedPrecondition,
            reason: "REPORT_ALREADY_FILED",
        },
        Scenario {
            name: "report filed as another type",
            history: vec![issue(), order()],
            offending: vec![event("2025-06-20", filed("r1", pb::ReportType::Section7))],
            code: Code::FailedPrecondition,
            reason: "REPORT_TYPE_MISMATCH",
        },
        Scenario {
            name: "report filed before it was ordered",
            history: vec![issue(), order()],
            offending: vec![event("2025-04-30", filed("r1", pb::ReportType::FinalAnalysis))],
            code: Code::FailedPrecondition,
            reason: "REPORT_EVENT_BEFORE_ORDER",
        },
        Scenario {
            name: "extension that does not move the due date later",
            history: vec![issue(), order(), event("2025-06-01", extended("r1", "2025-08-01"))],
            offending: vec![event("2025-06-02", extended("r1", "2025-07-15"))],
            code: Code::FailedPrecondition,
            reason: "EXTENSION_NOT_LATER",
        },
        Scenario {
            name: "void of an event of another case",
            history: vec![issue()],
            offending: vec![event(
                "2025-05-01",
                voided(&event("2025-05-01", seen("c1")), pb::VoidReason::WrongCase),
            )],
            code: Code::FailedPrecondition,
            reason: "VOIDED_EVENT_NOT_IN_CASE",
        },
        Scenario {
            name: "event voided twice",
            history: vec![issue(), seen_c1.clone(), void_of_seen],
            offending: vec![event("2025-05-04", voided(&seen_c1, pb::VoidReason::Duplicate))],
            code: Code::FailedPrecondition,
            reason: "EVENT_ALREADY_VOIDED",
        },
        Scenario {
            name: "case_issued voided",
            history: vec![issued.clone()],
            offending: vec![event("2025-05-04", voided(&issued, pb::VoidReason::EnteredInError))],
            code: Code::FailedPrecondition,
            reason: "CASE_ISSUED_NOT_VOIDABLE",
        },
        Scenario {
            name: "a void voided",
            history: vec![issue(), seen_c1_b, void_of_seen_b.clone()],
            offending: vec![event(
                "2025-05-04",
                voided(&void_of_seen_b, pb::VoidReason::EnteredInError),
            )],
            code: Code::FailedPrecondition,
            reason: "VOID_NOT_VOIDABLE",
        },
        Scenario {
            name: "void of a child_joined the child's visit depends on",
            history: vec![issue(), joined_c3.clone(), event("2025-05-02", seen("c3"))],
            offending: vec![event("2025-05-04", voided(&joined_c3, pb::VoidReason::WrongChild))],
            code: Code::FailedPrecondition,
            reason: "VOID_LEAVES_DEPENDENTS",
        },
        Scenario {
            name: "unknown child",
            history: vec![issue()],
            offending: vec![event("2025-05-01", seen("c9"))],
            code: Code::InvalidArgument,
            reason: "INVALID_ARGUMENT",
        },
        Scenario {
            name: "date in the future in England",
            history: vec![issue()],
            offending: vec![event("2099-01-01", seen("c1"))],
            code: Code::InvalidArgument,
            reason: "INVALID_ARGUMENT",
        },
    ]
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn every_rule_is_refused_with_its_reason_and_writes_nothing(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    for (i, scenario) in scenarios().into_iter().enumerate() {
        let case_id = format!("RULE{i}");
        if !scenario.history.is_empty() {
            client
                .append_events(append(&case_id, scenario.history))
                .await
                .unwrap_or_else(|s| panic!("{}: setup: {s:?}", scenario.name));
        }
        let before = event_count(&pool).await;
        // The offending event comes after a valid one in the same batch: the batch is all or none.
        let mut batch = vec![];
        let leading_valid = client
            .get_case(pb::GetCaseRequest {
                case_id: case_id.clone(),
            })
            .await
            .is_ok();
        if leading_valid {
            batch.push(event("2025-04-17", hearing("2025-12-01")));
        }
        batch.extend(scenario.offending);
        let status = client
            .append_events(append(&case_id, batch))
            .await
            .expect_err(scenario.name);
        assert_eq!(status.code(), scenario.code, "{}: {status:?}", scenario.name);
        assert_eq!(reason(&status), scenario.reason, "{}: {status:?}", scenario.name);
        let expected_index = if leading_valid { "1" } else { "0" };
        assert_eq!(
            error_metadata(&status, "event_index").as_deref(),
            Some(expected_index),
            "{}",
            scenario.name
        );
        assert!(!status.message().is_empty());
        assert_eq!(
            event_count(&pool).await,
            before,
            "{}: a refused batch wrote something",
            scenario.name
        );
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn malformed_input_names_every_bad_field(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let mut no_payload = event("2025-04-17", issued_public(&["c1"]));
    no_payload.payload = None;
    let mut bad_id = event("2025-04-17", issued_public(&["c1"]));
    bad_id.event_id = "not-a-uuid".into();
    let unspecified = event(
        "2025-04-17",
        Kind::CaseIssued(pb::CaseIssued {
            law_type: pb::LawType::Unspecified as i32,
            application_types: vec![pb::ApplicationType::Unspecified as i32],
            court_code: "LS".into(),
            service_area: "A5".into(),
            local_authority_code: String::new(),
            children: vec![child("c1", "2019-13")],
            received_on: "17/04/2025".into(),
        }),
    );
    let status = client
        .append_events(append(
            "BAD CASE ID!",
            vec![no_payload, bad_id, unspecified, event("2025-02-30", seen("c1"))],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason(&status), "INVALID_ARGUMENT");
    let fields = bad_fields(&status);
    for expected in [
        "events[0].payload",
        "events[1].event_id",
        "events[2].payload.case_issued.law_type",
        "events[2].payload.case_issued.application_types[0]",
        "events[2].payload.case_issued.children[0].birth_month",
        "events[2].payload.case_issued.received_on",
        "events[3].occurred_on",
    ] {
        assert!(fields.iter().any(|f| f == expected), "missing {expected} in {fields:?}");
    }
    assert_eq!(event_count(&pool).await, 0);

    // Conversion passes but the domain's own checks fail: the case id, and a public-law case
    // without a local authority or children, at an unknown service area.
    let bad_issue = event(
        "2025-04-17",
        Kind::CaseIssued(pb::CaseIssued {
            law_type: pb::LawType::Public as i32,
            application_types: vec![pb::ApplicationType::S31Care as i32],
            court_code: "LS".into(),
            service_area: "Z9".into(),
            local_authority_code: String::new(),
            children: vec![],
            received_on: "2025-04-01".into(),
        }),
    );
    let status = client
        .append_events(append("BAD CASE ID!", vec![bad_issue.clone()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["case_id"]);
    let status = client
        .append_events(append("GOOD1", vec![bad_issue]))
        .await
        .unwrap_err();
    let fields = bad_fields(&status);
    for expected in [
        "events[0].payload.case_issued.service_area",
        "events[0].payload.case_issued.local_authority_code",
        "events[0].payload.case_issued.children",
        "events[0].payload.case_issued.received_on",
    ] {
        assert!(fields.iter().any(|f| f == expected), "missing {expected} in {fields:?}");
    }

    let status = client.append_events(append("GOOD1", vec![])).await.unwrap_err();
    assert_eq!(bad_fields(&status), ["events"]);
    assert_eq!(event_count(&pool).await, 0);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_stale_expected_version_is_aborted(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let mut request = append("LS1", vec![issue()]);
    request.expected_version = Some(0);
    client.append_events(request).await.unwrap();

    let mut stale = append("LS1", vec![event("2025-05-01", seen("c1"))]);
    stale.expected_version = Some(0);
    let status = client.append_events(stale).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(reason(&status), "VERSION_CONFLICT");
    assert_eq!(error_metadata(&status, "actual_version").as_deref(), Some("1"));

    let mut current = append("LS1", vec![event("2025-05-01", seen("c1"))]);
    current.expected_version = Some(1);
    assert_eq!(client.append_events(current).await.unwrap().into_inner().version, 2);
}

/// A version no case can reach (past 2^31 - 1, what a stored row holds) is a mistake in the
/// request, not a conflict: it is refused before anything is read, naming the field.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_expected_version_beyond_any_case_is_invalid(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    for beyond in [u64::from(u32::MAX), 1 << 31, u64::MAX] {
        let mut request = append("LS1", vec![issue()]);
        request.expected_version = Some(beyond);
        let status = client.append_events(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{beyond}");
        assert_eq!(bad_fields(&status), ["expected_version"]);
    }
    let mut largest = append("LS1", vec![issue()]);
    largest.expected_version = Some((1 << 31) - 1);
    let status = client.append_events(largest).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Aborted,
        "the largest version is a version: a conflict"
    );
    assert_eq!(event_count(&pool).await, 0);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn late_and_out_of_order_events_are_accepted(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let mut client = server.client();
    client
        .append_events(append(
            "LS1",
            vec![issue(), event("2025-09-01", closed(pb::CaseOutcome::FinalOrder))],
        ))
        .await
        .unwrap();
    // A visit in May recorded after the September closure: late recording is normal.
    let late = client
        .append_events(append("LS1", vec![event("2025-05-01", seen("c1"))]))
        .await
        .unwrap();
    assert_eq!(late.into_inner().version, 3);
}
