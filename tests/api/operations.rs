//! Operating the service: health follows the database, reflection describes every method, the
//! log refuses updates and deletes, oversized requests are refused.

use caselog_api::v1 as pb;
use caselog_server::ServerLimits;
use caselog_tests::*;
use sqlx::PgPool;
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// Polls health until it reports `wanted` (true) or 10 seconds pass (false).
async fn health_becomes(server: &TestServer, service: &str, wanted: ServingStatus) -> bool {
    let mut client = HealthClient::new(server.anonymous.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let status = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status());
        if status.ok() == Some(wanted) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn health_is_serving_with_a_database(pool: PgPool) {
    let server = TestServer::start(pool).await;
    assert!(health_becomes(&server, "", ServingStatus::Serving).await);
    for service in [
        "caselog.v1.CaseEventService",
        "caselog.v1.EventFeedService",
        "caselog.v1.MetricsService",
        "caselog.v1.AdminService",
    ] {
        assert!(
            health_becomes(&server, service, ServingStatus::Serving).await,
            "{service}"
        );
    }
    assert!(health_becomes(&server, "liveness", ServingStatus::Serving).await);
}

/// A replica reports itself ready ("", what readiness probes ask) and its metrics service
/// SERVING only once its read model is in memory; appends are served before that.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_server_is_ready_for_queries_only_once_its_read_model_is_loaded(pool: PgPool) {
    // The projection table out of reach: the read model cannot load.
    sqlx::query("ALTER TABLE case_facts RENAME TO case_facts_elsewhere")
        .execute(&pool)
        .await
        .unwrap();
    let server = TestServer::start(pool.clone()).await;
    assert!(health_becomes(&server, "caselog.v1.CaseEventService", ServingStatus::Serving).await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut health = HealthClient::new(server.anonymous.clone());
    for service in ["", "caselog.v1.MetricsService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(
            status,
            ServingStatus::NotServing,
            "{service:?} before the read model loaded"
        );
    }
    sqlx::query("ALTER TABLE case_facts_elsewhere RENAME TO case_facts")
        .execute(&pool)
        .await
        .unwrap();
    assert!(health_becomes(&server, "", ServingStatus::Serving).await);
    assert!(health_becomes(&server, "caselog.v1.MetricsService", ServingStatus::Serving).await);
}

#[tokio::test]
async fn health_is_not_serving_while_the_database_is_unreachable() {
    // Nothing listens on port 1 of loopback.
    let settings = caselog_store::ConnectSettings {
        acquire_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let pool = caselog_store::connect("postgres://caselog@127.0.0.1:1/nowhere", &settings).unwrap();
    let server = TestServer::start_with(
        pool,
        ServerLimits {
            health_interval: Duration::from_millis(100),
            ..Default::default()
        },
    )
    .await;
    assert!(health_becomes(&server, "", ServingStatus::NotServing).await);
    assert!(
        health_becomes(&server, "liveness", ServingStatus::Serving).await,
        "the process itself is alive"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        health_becomes(&server, "", ServingStatus::NotServing).await,
        "and stays NOT_SERVING"
    );
    let status = server
        .client()
        .append_events(append("LS1", vec![event("2025-04-17", issued_public(&["c1"]))]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(reason(&status), "STORE_UNAVAILABLE");
    assert!(
        !status.message().contains("127.0.0.1"),
        "no internal detail on the wire: {status:?}"
    );
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn reflection_lists_and_describes_the_services(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let mut client = ServerReflectionClient::new(server.channel.clone());
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "caselog.v1.CaseEventService".into(),
            )),
        },
    ];
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let listed = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("{listed:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"caselog.v1.CaseEventService".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
    let described = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = described.message_response else {
        panic!("{described:?}")
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// Error details arrive as `google.protobuf.Any`: a generic client can show them only if
/// reflection describes their types.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn reflection_describes_the_error_detail_types(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let mut client = ServerReflectionClient::new(server.channel.clone());
    for symbol in ["google.rpc.ErrorInfo", "google.rpc.BadRequest"] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let answer = responses.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else {
            panic!("{symbol}: {answer:?}")
        };
        let described = files.file_descriptor_proto.iter().any(|encoded| {
            let file = <prost_types::FileDescriptorProto as prost::Message>::decode(encoded.as_slice()).unwrap();
            file.package() == "google.rpc"
                && file
                    .message_type
                    .iter()
                    .any(|m| Some(m.name()) == symbol.strip_prefix("google.rpc."))
        });
        assert!(described, "{symbol} is not described");
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn the_log_refuses_updates_deletes_and_truncation(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    server.issue_case("LS1").await;
    for statement in [
        "UPDATE events SET occurred_on = occurred_on + 1",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(statement).execute(&pool).await.expect_err(statement);
        let db = err.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some("CL001"), "{statement}: {db}");
        assert!(db.message().contains("append-only"));
    }
    assert_eq!(event_count(&pool).await, 1);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn oversized_requests_are_refused_before_anything_is_written(pool: PgPool) {
    let limits = ServerLimits {
        max_request_bytes: 64 * 1024,
        ..Default::default()
    };
    let server = TestServer::start_with(pool.clone(), limits).await;
    let mut events = vec![event("2025-04-17", issued_public(&["c1"]))];
    events.extend((0..999).map(|_| event("2025-05-01", hearing("2025-06-01"))));
    let status = server.client().append_events(append("LS1", events)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert_eq!(event_count(&pool).await, 0);
    let _ = pb::AppendEventsResponse::default();
}

/// A query that waits for a position the projections will not reach in time.
fn waiting_query() -> pb::QueryMetricsRequest {
    pb::QueryMetricsRequest {
        metric_ids: vec!["S1".into()],
        period: Some(pb::PeriodSpec {
            kind: Some(pb::period_spec::Kind::Month("2025-03".into())),
        }),
        min_position: 1_000_000_000,
        ..Default::default()
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_call_past_the_server_timeout_ends_with_deadline_exceeded(pool: PgPool) {
    let limits = ServerLimits {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let server = TestServer::start_with(pool, limits).await;
    let mut metrics = pb::metrics_service_client::MetricsServiceClient::new(server.channel.clone());
    let started = std::time::Instant::now();
    let status = metrics.query_metrics(waiting_query()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("server's request timeout"), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at the deadline, not after the wait"
    );
}

/// A health Watch and a subscription left open by their clients: shutdown still reports
/// NOT_SERVING at once, ends the subscription with a status saying where to resume, and
/// finishes within the grace period.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn shutdown_says_not_serving_at_once_and_finishes_within_the_grace_period(pool: PgPool) {
    let limits = ServerLimits {
        health_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        ..Default::default()
    };
    let server = TestServer::start_with(pool, limits).await;
    assert!(health_becomes(&server, "", ServingStatus::Serving).await);
    let mut health = HealthClient::new(server.anonymous.clone());
    let mut watch = health
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    let mut feed = pb::event_feed_service_client::EventFeedServiceClient::new(server.channel.clone());
    let mut subscription = feed
        .subscribe_events(pb::SubscribeEventsRequest {
            from_position: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();

    let started = std::time::Instant::now();
    let stopping = tokio::spawn(server.stop());
    let update = tokio::time::timeout(Duration::from_secs(1), watch.message())
        .await
        .expect("health told its watchers at once");
    assert_eq!(update.unwrap().unwrap().status(), ServingStatus::NotServing);
    let watch_end = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("the Watch stream ends soon after NOT_SERVING");
    assert!(
        matches!(watch_end, Ok(None)),
        "the Watch ends cleanly (OK), not with a broken connection: {watch_end:?}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match subscription.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the subscription was ended");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "SERVER_SHUTTING_DOWN");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown finished within the grace period")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "with every stream ended, shutdown does not wait out the 5 s grace: {:?}",
        started.elapsed()
    );
}
