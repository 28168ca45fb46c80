//! Authentication, authorisation and the audit trail, over a real TLS connection with generated
//! certificates and signed tokens: one test per denial and per allowed path.

use caselog_api::v1 as pb;
use caselog_api::v1::admin_service_client::AdminServiceClient;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_api::v1::event_feed_service_client::EventFeedServiceClient;
use caselog_api::v1::metrics_service_client::MetricsServiceClient;
use caselog_tests::*;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tonic::Code;

/// A TLS server, and a case LS1 recorded by the harness: public law at Leeds (LS), service area
/// A5, local authority E08000035, one child c1.
async fn server_with_case(pool: PgPool, pki: &Pki) -> TestServer {
    let server = TestServer::start_tls(pool, pki, 64).await;
    server.issue_case("LS1").await;
    server
}

fn events_as(server: &TestServer, token: &str) -> CaseEventServiceClient<AuthChannel> {
    CaseEventServiceClient::new(server.channel_with(token))
}

fn jwt(grant: &str) -> String {
    TokenSpec::new(grant).sign()
}

fn assert_denied(status: &tonic::Status, code: Code, expected_reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(status), expected_reason, "{status:?}");
}

async fn get_case_as(server: &TestServer, token: &str, case_id: &str) -> Result<pb::Case, tonic::Status> {
    events_as(server, token)
        .get_case(pb::GetCaseRequest {
            case_id: case_id.into(),
        })
        .await
        .map(|r| r.into_inner().case.unwrap())
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn no_credentials_is_unauthenticated_but_health_answers(pool: PgPool) {
    let pki = Pki::new();
    let server = TestServer::start_tls(pool.clone(), &pki, 64).await;
    let status = CaseEventServiceClient::new(server.anonymous.clone())
        .append_events(append("LS1", vec![event("2025-04-17", issued_public(&["c1"]))]))
        .await
        .unwrap_err();
    assert_denied(&status, Code::Unauthenticated, "UNAUTHENTICATED");
    assert!(status.message().contains("no credentials"), "{}", status.message());
    assert_eq!(event_count(&pool).await, 0);
    let health = tonic_health::pb::health_client::HealthClient::new(server.anonymous.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await;
    assert!(health.is_ok(), "health needs no credentials: {health:?}");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_client_certificate_identifies_the_court_and_is_recorded_as_source(pool: PgPool) {
    let pki = Pki::new();
    let server = TestServer::start_tls(pool, &pki, 64).await;
    let channel = pki
        .channel(server.addr, Some(pki.client_identity("court:LS")))
        .await
        .unwrap();
    let mut court = CaseEventServiceClient::new(channel);
    court
        .append_events(append("LS1", vec![event("2025-04-17", issued_public(&["c1"]))]))
        .await
        .unwrap();
    let denied = court
        .append_events(append("LS1", vec![event("2025-05-01", seen("c1"))]))
        .await
        .unwrap_err();
    assert_denied(&denied, Code::PermissionDenied, "EVENT_TYPE_NOT_PERMITTED");
    let recorded = server
        .client()
        .list_case_events(pb::ListCaseEventsRequest {
            case_id: "LS1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recorded.events.len(), 1);
    assert_eq!(recorded.events[0].source, "court:LS");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_certificate_from_an_untrusted_authority_gets_no_connection(pool: PgPool) {
    let pki = Pki::new();
    let server = TestServer::start_tls(pool.clone(), &pki, 64).await;
    let rogue = Pki::new().client_identity("court:LS");
    let outcome = match pki.channel(server.addr, Some(rogue)).await {
        Err(_) => None,
        Ok(channel) => CaseEventServiceClient::new(channel)
            .append_events(append("LS1", vec![event("2025-04-17", issued_public(&["c1"]))]))
            .await
            .err(),
    };
    if let Some(status) = &outcome {
        assert_ne!(status.code(), Code::Ok);
    }
    assert_eq!(
        event_count(&pool).await,
        0,
        "nothing written over an untrusted certificate"
    );
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_signed_token_identifies_the_caller(pool: PgPool) {
    let pki = Pki::new();
    let server = server_with_case(pool, &pki).await;
    server
        .append_as(
            &jwt("court:LS"),
            "LS1",
            vec![event("2025-05-01", hearing("2025-06-02"))],
        )
        .await
        .unwrap();
    server
        .append_as(&jwt("practice:A5"), "LS1", vec![event("2025-05-01", seen("c1"))])
        .await
        .unwrap();
    server
        .append_as(
            &jwt("local_authority:E08000035"),
            "LS2",
            vec![event("2025-04-17", issued_public(&["c1"]))],
        )
        .await
        .unwrap();
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn expired_wrong_audience_wrong_issuer_and_unknown_keys_are_unauthenticated(pool: PgPool) {
    let pki = Pki::new();
    let server = server_with_case(pool.clone(), &pki).await;
    let before = event_count(&pool).await;
    let expired = TokenSpec {
        expires_in: -600,
        ..TokenSpec::new("court:LS")
    };
    let wrong_audience = TokenSpec {
        audience: "another-service".into(),
        ..TokenSpec::new("court:LS")
    };
    let wrong_issuer = TokenSpec {
        issuer: "https://someone-else.test".into(),
        ..TokenSpec::new("court:LS")
    };
    let unknown_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cases = [
        (expired.sign(), "expired"),
        (wrong_audience.sign(), "audience"),
        (wrong_issuer.sign(), "issuer"),
        (TokenSpec::new("court:LS").sign_with(&unknown_key), "signature"),
        ("not-a-token-at-all".to_owned(), "not a well-formed JWT"),
    ];
    for (token, says) in cases {
        let status = server
            .append_as(&token, "LS1", vec![event("2025-05-01", hearing("2025-06-02"))])
            .await
            .unwrap_err();
        assert_denied(&status, Code::Unauthenticated, "UNAUTHENTICATED");
        assert!(status.message().contains(says), "{says}: {}", status.message());
    }
    assert_eq!(event_count(&pool).await, before);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_role_appends_only_the_event_types_it_sends(pool: PgPool) {
    let pki = Pki::new();
    let server = server_with_case(pool.clone(), &pki).await;
    let before = event_count(&pool).await;
    let denied = server
        .append_as(
            &jwt("court:LS"),
            "LS1",
            vec![
                event("2025-05-01", hearing("2025-06-02")),
                event("2025-05-01", seen("c1")),
            ],
        )
        .await
        .unwrap_err();
    assert_denied(&denied, Code::PermissionDenied, "EVENT_TYPE_NOT_PERMITTED");
    assert_eq!(error_metadata(&denied, "event_index").as_deref(), Some("1"));
    for reader in ["reporting", "admin"] {
        let denied = server
            .append_as(&jwt(reader), "LS1", vec![event("2025-05-01", hearing("2025-06-02"))])
            .await
            .unwrap_err();
        assert_denied(&denied, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    }
    assert_eq!(event_count(&pool).await, before, "a refused batch writes nothing");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn another_court_is_refused_exactly_as_for_a_case_that_does_not_exist(pool: PgPool) {
    let pki = Pki::new();
    let server = server_with_case(pool.clone(), &pki).await;
    let other_court = jwt("court:MA");
    let elsewhere = server
        .append_as(&other_court, "LS1", vec![event("2025-05-01", hearing("2025-06-02"))])
        .await
        .unwrap_err();
    let nowhere = server
        .append_as(
            &other_court,
            "NO-SUCH",
            vec![event("2025-05-01", hearing("2025-06-02"))],
        )
        .await
        .unwrap_err();
    assert_denied(&elsewhere, Code::PermissionDenied, "NOT_A_PARTY");
    assert_eq!(
        (elsewhere.code(), elsewhere.message(), elsewhere.details()),
        (nowhere.code(), nowhere.message(), nowhere.details()),
        "the refusal, details included, must not tell whether the case exists"
    );
    // Issuing a case at another court is refused too.
    let status = server
        .append_as(&other_court, "LS9", vec![event("2025-04-17", issued_public(&["c1"]))])
        .await
        .unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "NOT_A_PARTY");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_local_authority_writes_only_its_own_public_law_cases(pool: PgPool) {
    let pki = Pki::new();
    let server = server_with_case(pool.clone(), &pki).await;
    let other = jwt("local_authority:E09000001");
    let status = server
        .append_as(&other, "LS1", vec![event("2025-05-01", hearing("2025-06-02"))])
        .await
        .unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "NOT_A_PARTY");
    let status = server
        .append_as(&other, "LS3", vec![event("2025-04-17", issued_public(&["c1"]))])
        .await
        .unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "NOT_A_PARTY");
    let own = jwt("local_authority:E08000035");
    server
        .append_as(&own, "LS1", vec![event("2025-05-01", hearing("2025-06-02"))])
        .await
        .unwrap();
    let private = server
        .append_as(&own, "MA1", vec![event("2025-04-17", issued_private(&["c1"]))])
        .await
        .unwrap_err();
    assert_denied(&private, Code::PermissionDenied, "NOT_A_PARTY");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_practice_system_writes_and_reads_only_its_service_area(pool: PgPool) {
    let pki = Pki::new();
    let server = server_with_case(pool.clone(), &pki).await;
    let other_area = jwt("practice:A3");
    let status = server
        .append_as(&other_area, "LS1", vec![event("2025-05-01", seen("c1"))])
        .await
        .unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "NOT_A_PARTY");
    let elsewhere = get_case_as(&server, &other_area, "LS1").await.unwrap_err();
    let nowhere = get_case_as(&server, &other_area, "NO-SUCH").await.unwrap_err();
    assert_denied(&elsewhere, Code::PermissionDenied, "NOT_A_PARTY");
    assert_eq!(
        (elsewhere.code(), elsewhere.message(), elsewhere.details()),
        (nowhere.code(), nowhere.message(), nowhere.details())
    );
    let own = jwt("practice:A5");
    server
        .append_as(&own, "LS1", vec![event("2025-05-01", seen("c1"))])
        .await
        .unwrap();
    assert_eq!(get_case_as(&server, &own, "LS1").await.unwrap().case_id, "LS1");
    // An administrator may learn that a case does not exist.
    let missing = get_case_as(&server, HARNESS_TOKEN, "NO-SUCH").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_payload_cannot_claim_another_source(pool: PgPool) {
    let pki = Pki::new();
    let server = server_with_case(pool.clone(), &pki).await;
    let before = event_count(&pool).await;
    let mut request = tonic::Request::new(append("LS1", vec![event("2025-05-01", hearing("2025-06-02"))]));
    request
        .metadata_mut()
        .insert(caselog_server::SOURCE_HEADER, "court:MA".parse().unwrap());
    let status = events_as(&server, &jwt("court:LS"))
        .append_events(request)
        .await
        .unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "SOURCE_MISMATCH");
    assert_eq!(event_count(&pool).await, before);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn reporting_clients_get_no_child_level_data(pool: PgPool) {
    let pki = Pki::new();
    let server = server_with_case(pool, &pki).await;
    let reporting = jwt("reporting");
    let status = get_case_as(&server, &reporting, "LS1").await.unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    let status = events_as(&server, &reporting)
        .list_case_events(pb::ListCaseEventsRequest {
            case_id: "LS1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    let status = MetricsServiceClient::new(server.channel_with(&reporting))
        .list_worklist(pb::ListWorklistRequest {
            kind: pb::WorklistKind::ChildrenNotSeen as i32,
            service_area: "A5".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    let status = EventFeedServiceClient::new(server.channel_with(&reporting))
        .read_all(pb::ReadAllRequest::default())
        .await
        .unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    let status = AdminServiceClient::new(server.channel_with(&reporting))
        .rebuild_projections(pb::RebuildProjectionsRequest { verify_only: true })
        .await
        .unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    let status = AdminServiceClient::new(server.channel_with(&reporting))
        .list_audit_records(pb::ListAuditRecordsRequest::default())
        .await
        .unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn worklists_are_for_practice_clients_of_the_same_service_area(pool: PgPool) {
    let pki = Pki::new();
    let server = server_with_case(pool, &pki).await;
    let mut practice = MetricsServiceClient::new(server.channel_with(&jwt("practice:A5")));
    let request = |area: &str| pb::ListWorklistRequest {
        kind: pb::WorklistKind::CasesOpenOver52Weeks as i32,
        service_area: area.into(),
        ..Default::default()
    };
    practice.list_worklist(request("A5")).await.unwrap();
    practice.list_worklist(request("")).await.unwrap();
    let status = practice.list_worklist(request("A3")).await.unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "SERVICE_AREA_NOT_PERMITTED");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn suppression_is_always_on_for_reporting_clients(pool: PgPool) {
    let pki = Pki::new();
    let server = TestServer::start_tls(pool, &pki, 64).await;
    let mut last = 0;
    for (case, closed_after) in [("IN1", 100), ("IN2", 120)] {
        let events = vec![
            event("2024-07-01", issued_public(&["c1"])),
            event(
                &(chrono::NaiveDate::from_ymd_opt(2024, 7, 1).unwrap() + chrono::Duration::days(closed_after))
                    .to_string(),
                closed(pb::CaseOutcome::FinalOrder),
            ),
        ];
        let response = server
            .client()
            .append_events(append(case, events))
            .await
            .unwrap()
            .into_inner();
        last = response.events.last().unwrap().position;
    }
    let query = pb::QueryMetricsRequest {
        metric_ids: vec!["T2".into()],
        period: Some(pb::PeriodSpec {
            kind: Some(pb::period_spec::Kind::FinancialQuarter("2024-25 Q3".into())),
        }),
        group_by: vec![pb::Dimension::Court as i32],
        suppress_small_numbers: false,
        min_position: last,
        ..Default::default()
    };
    let row = |response: pb::QueryMetricsResponse| response.results[0].rows[0].clone();
    let admin = MetricsServiceClient::new(server.channel.clone())
        .query_metrics(query.clone())
        .await
        .unwrap()
        .into_inner();
    let admin_row = row(admin);
    assert!(!admin_row.suppressed);
    assert_eq!(admin_row.denominator, 2.0);
    let reporting = MetricsServiceClient::new(server.channel_with(&jwt("reporting")))
        .query_metrics(query)
        .await
        .unwrap()
        .into_inner();
    let reporting_row = row(reporting);
    assert!(reporting_row.suppressed, "{reporting_row:?}");
    assert_eq!(reporting_row.display, "suppressed");
    assert_eq!(reporting_row.denominator, 0.0);
    // Writers do not read metrics at all.
    let status = MetricsServiceClient::new(server.channel_with(&jwt("court:LS")))
        .query_metrics(pb::QueryMetricsRequest::default())
        .await
        .unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn every_child_level_read_and_refusal_is_audited(pool: PgPool) {
    let pki = Pki::new();
    let server = server_with_case(pool.clone(), &pki).await;
    let practice = jwt("practice:A5");
    get_case_as(&server, &practice, "LS1").await.unwrap();
    events_as(&server, &practice)
        .list_case_events(pb::ListCaseEventsRequest {
            case_id: "LS1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    get_case_as(&server, &jwt("practice:A3"), "LS1").await.unwrap_err();
    MetricsServiceClient::new(server.channel_with(&practice))
        .list_worklist(pb::ListWorklistRequest {
            kind: pb::WorklistKind::ChildrenNotSeen as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    EventFeedServiceClient::new(server.channel.clone())
        .read_all(pb::ReadAllRequest::default())
        .await
        .unwrap();
    let records = audit_records(&server).await;
    let summary: Vec<(&str, &str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r.actor.as_str(),
                r.action.as_str(),
                r.target.as_str(),
                r.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("practice:A5", "caselog.v1.CaseEventService/GetCase", "LS1", "OK"),
            ("practice:A5", "caselog.v1.CaseEventService/ListCaseEvents", "LS1", "OK"),
            (
                "practice:A3",
                "caselog.v1.CaseEventService/GetCase",
                "LS1",
                "PermissionDenied NOT_A_PARTY"
            ),
            (
                "practice:A5",
                "caselog.v1.MetricsService/ListWorklist",
                "service_area:A5",
                "OK"
            ),
            (
                "test-harness",
                "caselog.v1.EventFeedService/ReadAll",
                "positions after 0",
                "OK"
            ),
        ]
    );
    assert!(records.iter().all(|r| r.recorded_at.is_some()));
    assert_eq!(records[0].grants, "practice:A5");
    // Reading the trail is an administrative action, recorded too.
    let again = audit_records(&server).await;
    let last = again.last().unwrap();
    assert_eq!(
        (last.actor.as_str(), last.action.as_str()),
        ("test-harness", "caselog.v1.AdminService/ListAuditRecords")
    );
    // The trail cannot be changed, even by the owner of the table.
    let refused = sqlx::query("UPDATE audit_records SET outcome = 'OK'")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_rebuild_is_for_administrators_and_is_audited(pool: PgPool) {
    let pki = Pki::new();
    let server = server_with_case(pool, &pki).await;
    let status = AdminServiceClient::new(server.channel_with(&jwt("practice:A5")))
        .rebuild_projections(pb::RebuildProjectionsRequest { verify_only: true })
        .await
        .unwrap_err();
    assert_denied(&status, Code::PermissionDenied, "ROLE_NOT_PERMITTED");
    let mut stream = AdminServiceClient::new(server.channel_with(&jwt("admin")))
        .rebuild_projections(pb::RebuildProjectionsRequest { verify_only: true })
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    // The record is written as the rebuild ends, just after its last message.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let records = audit_records(&server).await;
        let rebuilds: Vec<_> = records
            .iter()
            .filter(|r| r.action == "caselog.v1.AdminService/RebuildProjections")
            .map(|r| {
                (
                    r.actor.clone(),
                    r.outcome.split(' ').next().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        if rebuilds.len() == 2 {
            assert_eq!(
                rebuilds,
                [
                    ("practice:A5".to_owned(), "PermissionDenied".to_owned()),
                    ("admin".to_owned(), "OK".to_owned())
                ]
            );
            break;
        }
        assert!(Instant::now() < deadline, "rebuild records: {rebuilds:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_client_over_its_concurrency_limit_is_refused_at_once(pool: PgPool) {
    let pki = Pki::new();
    let server = TestServer::start_tls(pool, &pki, 1).await;
    let token = jwt("reporting");
    // Waits for a position the projections will not reach (up to 5 s), holding the one permit.
    let mut waiting = MetricsServiceClient::new(server.channel_with(&token));
    let slow = tokio::spawn(async move {
        waiting
            .query_metrics(pb::QueryMetricsRequest {
                metric_ids: vec!["S1".into()],
                period: Some(pb::PeriodSpec {
                    kind: Some(pb::period_spec::Kind::FinancialYear("2024-25".into())),
                }),
                min_position: 1_000_000_000,
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let status = MetricsServiceClient::new(server.channel_with(&token))
        .query_metrics(pb::QueryMetricsRequest::default())
        .await
        .unwrap_err();
    assert_denied(&status, Code::ResourceExhausted, "TOO_MANY_CONCURRENT_REQUESTS");
    assert!(started.elapsed() < Duration::from_secs(1), "refused, not queued");
    // Another organisation is not held back.
    let other = get_case_as(&server, &jwt("admin"), "NO-SUCH").await.unwrap_err();
    assert_eq!(other.code(), Code::NotFound);
    let slow = slow.await.unwrap().unwrap_err();
    assert_eq!(reason(&slow), "PROJECTION_BEHIND");
}

#[test]
fn development_tokens_are_refused_unless_switched_on() {
    let path = std::env::temp_dir().join(format!("caselog-dev-tokens-{}.json", std::process::id()));
    std::fs::write(
        &path,
        r#"{"tokens":[{"token":"a-long-enough-dev-token","organisation":"court:LS","grants":["court:LS"]}]}"#,
    )
    .unwrap();
    let refused = caselog_server::auth::DevTokens::load(&path, false).unwrap_err();
    assert!(refused.to_string().contains("--allow-dev-tokens"), "{refused}");
    assert!(caselog_server::auth::DevTokens::load(&path, true).is_ok());
    std::fs::remove_file(&path).unwrap();
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn probes_get_plain_text_health_and_nothing_else(pool: PgPool) {
    let pki = Pki::new();
    let health_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health_addr = health_listener.local_addr().unwrap();
    let _server = TestServer::start_tls_with(pool, &pki, 64, Some(health_listener)).await;
    let plain = connect(health_addr).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = tonic_health::pb::health_client::HealthClient::new(plain.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: "liveness".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "liveness never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = CaseEventServiceClient::new(with_token(plain, HARNESS_TOKEN))
        .get_case(pb::GetCaseRequest { case_id: "LS1".into() })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unimplemented,
        "only health is served in plain text"
    );
}

/// A key rotation (`caselog serve` does this on SIGHUP): from the moment the keys are replaced,
/// tokens signed with the new key are accepted and those of the removed key refused, with no
/// restart and no connection dropped.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn replaced_jwt_keys_take_effect_without_a_restart(pool: PgPool) {
    use caselog_tests::security::{JWT_AUDIENCE, JWT_ISSUER, JWT_KID, authenticator};
    let authenticator = authenticator(false, 64);
    let server = TestServer::start_authenticating(
        caselog_store::EventLog::new(pool),
        caselog_server::ServerLimits::default(),
        authenticator.clone(),
    )
    .await;
    let new_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let signed_with_new = TokenSpec::new("court:LS").sign_with(&new_key);
    let signed_with_old = jwt("court:LS");
    let ask = |token: String| {
        let mut client = events_as(&server, &token);
        async move {
            client
                .get_case(pb::GetCaseRequest {
                    case_id: "LS25C00404".into(),
                })
                .await
                .unwrap_err()
                .code()
        }
    };
    assert_eq!(ask(signed_with_new.clone()).await, Code::Unauthenticated);
    // Authenticated: a court is then refused reading cases, which is not UNAUTHENTICATED.
    assert_eq!(ask(signed_with_old.clone()).await, Code::PermissionDenied);

    let rotated = caselog_server::auth::JwtSettings::from_pems(
        JWT_ISSUER.to_owned(),
        JWT_AUDIENCE.to_owned(),
        &[(JWT_KID.to_owned(), new_key.public_key_pem().into_bytes())],
    )
    .unwrap();
    authenticator.replace_jwt(rotated).unwrap();
    assert_eq!(ask(signed_with_new).await, Code::PermissionDenied);
    assert_eq!(ask(signed_with_old).await, Code::Unauthenticated);
}

/// A certificate renewal or a new client CA while serving (`caselog serve` does this on
/// SIGHUP): new connections get the new certificate and are verified against the new CA,
/// connections already open keep theirs, and files that cannot serve are refused with the ones
/// in use kept.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn replaced_certificates_serve_new_connections_and_open_ones_keep_theirs(pool: PgPool) {
    let (old, new) = (Pki::new(), Pki::new());
    let tls = old.server_tls();
    let server = TestServer::start_tls_serving(pool, &old, tls.clone(), 64, None).await;
    // An administrator asks for a case that does not exist: NOT_FOUND once authenticated.
    async fn ask(channel: Result<tonic::transport::Channel, tonic::transport::Error>) -> Result<Code, String> {
        let channel = channel.map_err(|e| format!("connect: {e:?}"))?;
        let status = CaseEventServiceClient::new(channel)
            .get_case(pb::GetCaseRequest {
                case_id: "LS25C00404".into(),
            })
            .await
            .unwrap_err();
        Ok(status.code())
    }
    let open = old.channel(server.addr, Some(old.client_identity("admin"))).await;
    let open = open.unwrap();
    assert_eq!(ask(Ok(open.clone())).await, Ok(Code::NotFound));

    let (new_ca, new_cert, new_key) = new.pems();
    tls.replace(new_cert.as_bytes(), new_key.as_bytes(), Some(new_ca.as_bytes()))
        .unwrap();
    assert_eq!(
        ask(Ok(open.clone())).await,
        Ok(Code::NotFound),
        "an open connection keeps its certificate"
    );
    assert_eq!(
        ask(new.channel(server.addr, Some(new.client_identity("admin"))).await).await,
        Ok(Code::NotFound),
        "a new connection gets the new certificate and its client certificate is verified against the new CA"
    );
    let old_trust = ask(old.channel(server.addr, Some(old.client_identity("admin"))).await).await;
    assert!(
        !matches!(old_trust, Ok(Code::NotFound)),
        "the old certificate is still served: {old_trust:?}"
    );
    let old_client = ask(new.channel(server.addr, Some(old.client_identity("admin"))).await).await;
    assert!(
        !matches!(old_client, Ok(Code::NotFound)),
        "a client certificate of the old CA was accepted: {old_client:?}"
    );

    // A key that is not the certificate's, or a client CA dropped while serving: refused, and
    // the new certificate goes on serving.
    let (old_ca, _, old_key) = old.pems();
    assert!(
        tls.replace(new_cert.as_bytes(), old_key.as_bytes(), Some(new_ca.as_bytes()))
            .is_err()
    );
    assert!(tls.replace(new_cert.as_bytes(), new_key.as_bytes(), None).is_err());
    assert!(
        tls.replace(b"not a certificate", new_key.as_bytes(), Some(old_ca.as_bytes()))
            .is_err()
    );
    assert_eq!(
        ask(new.channel(server.addr, Some(new.client_identity("admin"))).await).await,
        Ok(Code::NotFound)
    );
}
