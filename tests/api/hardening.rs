//! Credentials and limits an outside attacker probes: token validity windows and lifetimes,
//! certificates with more than one identity, and streams held open against the per-client
//! limits.

use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_api::v1::event_feed_service_client::EventFeedServiceClient;
use caselog_tests::*;
use sqlx::PgPool;
use std::time::Duration;
use tonic::Code;

async fn get_case(channel: AuthChannel) -> Result<(), tonic::Status> {
    CaseEventServiceClient::new(channel)
        .get_case(pb::GetCaseRequest { case_id: "LS1".into() })
        .await
        .map(|_| ())
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn tokens_not_yet_valid_or_too_long_lived_are_refused(pool: PgPool) {
    let pki = Pki::new();
    let server = TestServer::start_tls(pool, &pki, 64).await;
    server.issue_case("LS1").await;
    let token = |f: &dyn Fn(&mut TokenSpec)| {
        let mut spec = TokenSpec::new("admin");
        f(&mut spec);
        server.channel_with(&spec.sign())
    };
    let not_yet = get_case(token(&|t| t.not_before_in = Some(600))).await.unwrap_err();
    assert_eq!(not_yet.code(), Code::Unauthenticated, "{not_yet:?}");
    assert!(not_yet.message().contains("not valid yet"), "{not_yet:?}");
    // Within the clock leeway a token is accepted.
    get_case(token(&|t| t.not_before_in = Some(10))).await.unwrap();
    // Two days from issue to expiry: longer than the one-day default.
    let long = get_case(token(&|t| t.expires_in = 2 * 86_400)).await.unwrap_err();
    assert_eq!(long.code(), Code::Unauthenticated, "{long:?}");
    assert!(long.message().contains("at most 86400 s"), "{long:?}");
    // Backdating iat does not stretch a long-lived token past the bound either.
    let backdated = get_case(token(&|t| {
        t.issued_in = -86_000;
        t.expires_in = 3_600;
    }))
    .await
    .unwrap_err();
    assert_eq!(backdated.code(), Code::Unauthenticated, "{backdated:?}");
    get_case(token(&|t| t.expires_in = 86_400)).await.unwrap();
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_certificate_with_two_common_names_is_refused(pool: PgPool) {
    let pki = Pki::new();
    let server = TestServer::start_tls(pool, &pki, 64).await;
    server.issue_case("LS1").await;
    let two = pki
        .channel(server.addr, Some(pki.client_identity_named(&["practice:A5", "admin"])))
        .await
        .unwrap();
    let status = CaseEventServiceClient::new(two)
        .get_case(pb::GetCaseRequest { case_id: "LS1".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("more than one common name"), "{status:?}");
    let other_alternative = pki
        .channel(
            server.addr,
            Some(pki.client_identity_with(&["admin"], &["practice-a5.example"])),
        )
        .await
        .unwrap();
    let status = CaseEventServiceClient::new(other_alternative)
        .get_case(pb::GetCaseRequest { case_id: "LS1".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("subject alternative names"), "{status:?}");
    let one = pki
        .channel(server.addr, Some(pki.client_identity_named(&["admin"])))
        .await
        .unwrap();
    CaseEventServiceClient::new(one)
        .get_case(pb::GetCaseRequest { case_id: "LS1".into() })
        .await
        .unwrap();
}

async fn subscribe(channel: AuthChannel) -> Result<tonic::Streaming<pb::SubscribeEventsResponse>, tonic::Status> {
    EventFeedServiceClient::new(channel)
        .subscribe_events(pb::SubscribeEventsRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn open_streams_count_against_the_limits_until_they_end(pool: PgPool) {
    let pki = Pki::new();
    let server = TestServer::start_tls(pool.clone(), &pki, 3).await;
    server.issue_case("LS1").await;
    let admin = server.channel_with(&TokenSpec::new("admin").sign());
    let first = subscribe(admin.clone()).await.unwrap();
    let second = subscribe(admin.clone()).await.unwrap();
    get_case(admin.clone()).await.unwrap();
    let _third = subscribe(admin.clone()).await.unwrap();
    // Three streams are open: the organisation's limit of three is reached.
    let status = get_case(admin.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "TOO_MANY_CONCURRENT_REQUESTS");
    drop(first);
    drop(second);
    let mut freed = false;
    for _ in 0..50 {
        if get_case(admin.clone()).await.is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "a stream's permit is returned when the client drops it");

    // Subscriptions have their own bound (8 by default) below the request limit.
    let roomy = TestServer::start_tls(pool, &pki, 64).await;
    let admin = roomy.channel_with(&TokenSpec::new("admin").sign());
    let mut open = Vec::new();
    for _ in 0..caselog_server::auth::DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT {
        open.push(subscribe(admin.clone()).await.unwrap());
    }
    let status = subscribe(admin.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "TOO_MANY_SUBSCRIPTIONS");
    get_case(admin).await.unwrap();
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn every_request_is_audited_in_bounded_space_whatever_its_bytes(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    server.issue_case("LS1").await;
    let practice = server.channel_with(&dev_token("practice:A5"));
    let huge = format!("LS{}", "9".repeat(200_000));
    for case_id in ["LS\0NUL".to_owned(), huge.clone()] {
        let status = CaseEventServiceClient::new(practice.clone())
            .get_case(pb::GetCaseRequest { case_id })
            .await
            .unwrap_err();
        assert_ne!(status.code(), Code::Ok);
        assert_ne!(reason(&status), "AUDIT_UNAVAILABLE", "{status:?}");
    }
    let records = caselog_api::v1::admin_service_client::AdminServiceClient::new(server.channel.clone())
        .list_audit_records(pb::ListAuditRecordsRequest {
            actor: "practice:A5".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(records.len(), 2, "both refusals are in the trail: {records:?}");
    for record in &records {
        assert!(!record.target.contains('\0'));
        assert!(record.target.len() < 256, "{} bytes recorded", record.target.len());
    }
    assert!(
        records
            .iter()
            .any(|r| r.target.contains("sha256:") && r.target.contains("200002 bytes")),
        "{records:?}"
    );
    let stored: i64 =
        sqlx::query_scalar("SELECT max(octet_length(target) + octet_length(detail::text))::int8 FROM audit_records")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(stored < 1024, "{stored} bytes in one record");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn paging_the_audit_trail_until_empty_ends(pool: PgPool) {
    let server = TestServer::start(pool).await;
    server.issue_case("LS1").await;
    for _ in 0..3 {
        get_case(server.channel.clone()).await.unwrap();
    }
    let mut admin = caselog_api::v1::admin_service_client::AdminServiceClient::new(server.channel.clone());
    let (mut after_id, mut up_to_id, mut seen) = (0, 0, Vec::new());
    for page in 0.. {
        assert!(page < 20, "paging never ended: {seen:?}");
        let response = admin
            .list_audit_records(pb::ListAuditRecordsRequest {
                after_id,
                up_to_id,
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if response.records.is_empty() {
            break;
        }
        seen.extend(response.records.iter().map(|r| r.action.clone()));
        after_id = response.next_after_id;
        up_to_id = response.up_to_id;
    }
    assert_eq!(seen.len(), 3, "the three reads before the first page: {seen:?}");
}

fn issued_at(court: &str) -> caselog_api::v1::event_payload::Kind {
    caselog_api::v1::event_payload::Kind::CaseIssued(pb::CaseIssued {
        law_type: pb::LawType::Public as i32,
        application_types: vec![pb::ApplicationType::S31Care as i32],
        court_code: court.into(),
        service_area: "A5".into(),
        local_authority_code: "E08000035".into(),
        children: vec![child("c1", "2019-06")],
        received_on: String::new(),
    })
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn issuing_is_scoped_to_the_courts_numbering_and_tells_no_one_what_exists(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let (leeds, manchester) = (dev_token("court:LS"), dev_token("court:MA"));
    server
        .append_as(&leeds, "LS25C00002", vec![event("2025-04-17", issued_at("LS"))])
        .await
        .unwrap();
    // Manchester cannot tell a Leeds id in use from one that is not, whatever it sends.
    for kind in [issued_at("MA"), issued_at("LS"), hearing("2025-06-01")] {
        let used = server
            .append_as(&manchester, "LS25C00002", vec![event("2025-04-18", kind.clone())])
            .await
            .unwrap_err();
        let unused = server
            .append_as(&manchester, "LS25C00001", vec![event("2025-04-18", kind)])
            .await
            .unwrap_err();
        assert_eq!(used.code(), Code::PermissionDenied, "{used:?}");
        assert_eq!(reason(&used), "NOT_A_PARTY");
        assert_eq!(
            (used.code(), used.message(), used.details()),
            (unused.code(), unused.message(), unused.details())
        );
    }
    // Nor can it issue into its own numbering a case at another court, or a local authority
    // issue an id of one court at another.
    let status = server
        .append_as(&manchester, "MA25C00001", vec![event("2025-04-17", issued_at("LS"))])
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "OUTSIDE_COURT_NUMBERING", "{status:?}");
    let status = server
        .append_as(
            &dev_token("local_authority:E08000035"),
            "LS25C00003",
            vec![event("2025-04-17", issued_at("MA"))],
        )
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "OUTSIDE_COURT_NUMBERING", "{status:?}");
    // Leeds still issues its own numbers, and the local authority issues at the right court.
    server
        .append_as(&leeds, "LS25C00001", vec![event("2025-04-17", issued_at("LS"))])
        .await
        .unwrap();
    server
        .append_as(
            &dev_token("local_authority:E08000035"),
            "MA25C00009",
            vec![event("2025-04-17", issued_at("MA"))],
        )
        .await
        .unwrap();
    assert_eq!(event_count(&pool).await, 3);
}

async fn median_refusal(server: &TestServer, case_id: &str) -> Duration {
    let practice = server.channel_with(&dev_token("practice:A3"));
    let mut times = Vec::new();
    for _ in 0..15 {
        let started = std::time::Instant::now();
        let status = CaseEventServiceClient::new(practice.clone())
            .get_case(pb::GetCaseRequest {
                case_id: case_id.into(),
            })
            .await
            .unwrap_err();
        times.push(started.elapsed());
        assert_eq!(reason(&status), "NOT_A_PARTY");
    }
    times.sort();
    times[times.len() / 2]
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn refusing_a_case_takes_no_longer_for_a_large_one(pool: PgPool) {
    let server = TestServer::start(pool).await;
    server.issue_case("LS25C00001").await;
    for _ in 0..4 {
        let visits = (0..1000).map(|_| event("2025-05-01", seen("c1"))).collect();
        server
            .client()
            .append_events(append("LS25C00001", visits))
            .await
            .unwrap();
    }
    // Warm both paths, then compare: reading and folding 4,001 events would take many times
    // longer than the one row the party check needs.
    median_refusal(&server, "LS25C09999").await;
    let missing = median_refusal(&server, "LS25C09999").await;
    let large = median_refusal(&server, "LS25C00001").await;
    assert!(
        large < missing * 3 + Duration::from_millis(3),
        "refusing a 4,001-event case took {large:?}, a missing one {missing:?}"
    );
}

/// With every ordinary connection taken, a child-level read waits for one once, fails with
/// UNAVAILABLE, and its refusal is still recorded straight away through the connections kept
/// for audit records (not after a second wait behind the reads).
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn under_connection_exhaustion_a_read_fails_after_one_wait_and_is_still_recorded(pool: PgPool) {
    use caselog_store::EventLog;
    use sqlx::postgres::PgPoolOptions;
    let options = pool.connect_options().as_ref().clone();
    let wait = Duration::from_secs(1);
    let ordinary = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(wait)
        .connect_lazy_with(options.clone());
    let reserved = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(wait)
        .connect_lazy_with(options);
    let log = EventLog::new(ordinary.clone()).with_audit_pool(reserved);
    let server = TestServer::start_on(log, caselog_server::ServerLimits::default()).await;
    server.issue_case("LS1").await;

    // The server keeps one for the feed's LISTEN; take every other one, until a wait for
    // another times out.
    let mut taken = Vec::new();
    while let Ok(connection) = ordinary.acquire().await {
        taken.push(connection);
        assert!(taken.len() <= 4);
    }
    let started = std::time::Instant::now();
    let status = server
        .client()
        .get_case(pb::GetCaseRequest { case_id: "LS1".into() })
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        took < wait * 3 / 2,
        "the read waited {took:?}: more than one wait of {wait:?}"
    );
    drop(taken);
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM audit_records WHERE action LIKE '%/GetCase' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0], "Unavailable STORE_UNAVAILABLE");
}
