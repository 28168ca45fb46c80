//! The happy path: append, read the case back, page through its events.

use caselog_api::v1 as pb;
use caselog_tests::*;
use sqlx::PgPool;

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn append_returns_versions_and_increasing_positions(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let mut client = server.client();
    let batch = vec![
        event("2025-04-17", issued_public(&["c1", "c2"])),
        event("2025-04-22", allocated("fca-0412", pb::AllocationRole::Guardian)),
    ];
    let first = client
        .append_events(append("LS25C00123", batch))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.version, 2);
    assert_eq!(first.events.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    assert!(first.events.iter().all(|e| !e.already_present));
    assert!(first.events[0].position < first.events[1].position);

    let second = client
        .append_events(append("LS25C00123", vec![event("2025-05-09", seen("c1"))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.version, 3);
    assert!(second.events[0].position > first.events[1].position);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn get_case_shows_the_case_as_it_stands(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let mut client = server.client();
    let duty = event("2025-04-18", allocated("fca-0001", pb::AllocationRole::Duty));
    let guardian = event("2025-04-22", allocated("fca-0412", pb::AllocationRole::Guardian));
    let replacement = event("2025-06-02", allocated("fca-0777", pb::AllocationRole::Guardian));
    let close = event("2025-10-01", closed(pb::CaseOutcome::FinalOrder));
    let events = vec![
        event("2025-04-17", issued_public(&["c1"])),
        duty,
        replacement,
        guardian, // recorded late: occurred before the replacement
        event("2025-05-01", joined("c2")),
        close.clone(),
    ];
    client.append_events(append("LS25C00123", events)).await.unwrap();

    let case = client
        .get_case(pb::GetCaseRequest {
            case_id: "LS25C00123".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .case
        .unwrap();
    assert_eq!(case.law_type, pb::LawType::Public as i32);
    assert_eq!(case.court_code, "LS");
    assert_eq!(case.local_authority_code, "E08000035");
    assert_eq!(
        case.children.iter().map(|c| c.child_id.as_str()).collect::<Vec<_>>(),
        ["c1", "c2"]
    );
    assert_eq!(
        case.first_lead_allocation.unwrap().practitioner_id,
        "fca-0412",
        "duty cover is not a lead allocation"
    );
    assert_eq!(case.current_lead_allocation.unwrap().practitioner_id, "fca-0777");
    assert!(!case.open);
    assert_eq!(case.issued_on, "2025-04-17");
    assert_eq!(case.closed_on, "2025-10-01");
    assert_eq!(case.outcome, pb::CaseOutcome::FinalOrder as i32);
    assert_eq!(case.version, 6);

    // Voiding the closure reopens the case.
    client
        .append_events(append(
            "LS25C00123",
            vec![event("2025-10-02", voided(&close, pb::VoidReason::EnteredInError))],
        ))
        .await
        .unwrap();
    let case = client
        .get_case(pb::GetCaseRequest {
            case_id: "LS25C00123".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .case
        .unwrap();
    assert!(case.open);
    assert_eq!(case.closed_on, "");
    assert_eq!(case.version, 7);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn unknown_case_is_not_found(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let status = server
        .client()
        .get_case(pb::GetCaseRequest {
            case_id: "NOPE1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = server
        .client()
        .list_case_events(pb::ListCaseEventsRequest {
            case_id: "NOPE1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn list_case_events_pages_in_version_order_with_void_flags(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let mut client = server.client();
    let mistake = event("2025-05-02", seen("c1"));
    let mut events = vec![event("2025-04-17", issued_public(&["c1"])), mistake.clone()];
    for day in 10..=20 {
        events.push(event(&format!("2025-05-{day}"), hearing("2025-07-01")));
    }
    let void = event("2025-06-01", voided(&mistake, pb::VoidReason::WrongDate));
    events.push(void.clone());
    let mut request = append("LS25C00123", events);
    request.events[1].metadata = Some(pb::EventMetadata {
        correlation_id: "visit-1".into(),
        causation_id: String::new(),
    });
    client.append_events(request).await.unwrap();

    let mut seen_versions = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_case_events(pb::ListCaseEventsRequest {
                case_id: "LS25C00123".into(),
                page_size: 5,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        for e in &page.events {
            seen_versions.push(e.version);
            assert!(e.recorded_at.is_some());
            assert_eq!(e.source, "test-harness");
            if e.event_id == mistake.event_id {
                assert!(e.voided);
                assert_eq!(e.voided_by, void.event_id);
                assert_eq!(e.metadata.as_ref().unwrap().correlation_id, "visit-1");
            } else {
                assert!(!e.voided);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen_versions, (1..=14).collect::<Vec<u64>>());
    assert_eq!(pages, 3);

    let status = client
        .list_case_events(pb::ListCaseEventsRequest {
            case_id: "LS25C00123".into(),
            page_size: 5,
            page_token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["page_token"]);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn the_authenticated_organisation_is_recorded_as_the_source(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let mut court = caselog_api::v1::case_event_service_client::CaseEventServiceClient::new(
        server.channel_with(&caselog_tests::dev_token("court:LS")),
    );
    let mut request = tonic::Request::new(append("LS25C00123", vec![event("2025-04-17", issued_public(&["c1"]))]));
    request
        .metadata_mut()
        .insert(caselog_server::SOURCE_HEADER, "court:LS".parse().unwrap());
    court.append_events(request).await.unwrap();
    let mut client = server.client();
    let page = client
        .list_case_events(pb::ListCaseEventsRequest {
            case_id: "LS25C00123".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events[0].source, "court:LS");
}
