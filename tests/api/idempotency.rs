//! A retried request never duplicates an event, including when the first attempt committed but
//! its reply was lost.

use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_api::v1::case_event_service_server::CaseEventService;
use caselog_server::CaseEvents;
use caselog_store::EventLog;
use caselog_tests::*;
use sqlx::PgPool;
use tonic::{Code, Request, Response, Status};

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn resending_a_batch_returns_the_original_positions_and_writes_nothing(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let batch = vec![
        event("2025-04-17", issued_public(&["c1"])),
        event("2025-05-01", seen("c1")),
    ];
    let first = client
        .append_events(append("LS1", batch.clone()))
        .await
        .unwrap()
        .into_inner();
    let count = event_count(&pool).await;

    let mut resend = append("LS1", batch);
    resend.expected_version = Some(0); // stale by now, but nothing new is asked for
    let second = client.append_events(resend).await.unwrap().into_inner();
    assert_eq!(event_count(&pool).await, count);
    assert_eq!(second.version, first.version);
    for (a, b) in first.events.iter().zip(&second.events) {
        assert_eq!((a.position, a.version), (b.position, b.version));
        assert!(!a.already_present);
        assert!(b.already_present);
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_batch_mixing_recorded_and_new_events_appends_only_the_new(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let issue = event("2025-04-17", issued_public(&["c1"]));
    client.append_events(append("LS1", vec![issue.clone()])).await.unwrap();
    let response = client
        .append_events(append("LS1", vec![issue, event("2025-05-01", seen("c1"))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.version, 2);
    assert!(response.events[0].already_present);
    assert!(!response.events[1].already_present);
    assert_eq!(response.events[1].version, 2);
    assert_eq!(event_count(&pool).await, 2);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn the_same_event_id_with_other_content_is_already_exists(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let visit = event("2025-05-01", seen("c1"));
    client
        .append_events(append(
            "LS1",
            vec![event("2025-04-17", issued_public(&["c1"])), visit.clone()],
        ))
        .await
        .unwrap();
    client
        .append_events(append("LS2", vec![event("2025-04-17", issued_public(&["c1"]))]))
        .await
        .unwrap();

    let mut other_date = visit.clone();
    other_date.occurred_on = "2025-05-02".into();
    let status = client.append_events(append("LS1", vec![other_date])).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(reason(&status), "EVENT_ID_REUSED");
    assert_eq!(error_metadata(&status, "event_id"), Some(visit.event_id.clone()));

    let status = client.append_events(append("LS2", vec![visit])).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::AlreadyExists,
        "same id and payload sent to another case"
    );
    assert_eq!(event_count(&pool).await, 3);
}

/// Commits like the real service, then loses the reply, as a dropped connection would.
struct LosesReplies(CaseEvents);

#[tonic::async_trait]
impl CaseEventService for LosesReplies {
    async fn append_events(
        &self,
        request: Request<pb::AppendEventsRequest>,
    ) -> Result<Response<pb::AppendEventsResponse>, Status> {
        self.0.append_events(request).await?;
        Err(Status::unavailable("connection reset after commit"))
    }
    async fn append_events_to_cases(
        &self,
        request: Request<pb::AppendEventsToCasesRequest>,
    ) -> Result<Response<pb::AppendEventsToCasesResponse>, Status> {
        self.0.append_events_to_cases(request).await?;
        Err(Status::unavailable("connection reset after commit"))
    }
    async fn get_case(&self, request: Request<pb::GetCaseRequest>) -> Result<Response<pb::GetCaseResponse>, Status> {
        self.0.get_case(request).await
    }
    async fn list_case_events(
        &self,
        request: Request<pb::ListCaseEventsRequest>,
    ) -> Result<Response<pb::ListCaseEventsResponse>, Status> {
        self.0.list_case_events(request).await
    }
}

/// A server that commits and then loses every append's reply, and a client of it.
async fn lossy_server(
    pool: &PgPool,
) -> (
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    CaseEventServiceClient<caselog_tests::AuthChannel>,
) {
    let (server, addr) = serve_case_events(LosesReplies(CaseEvents::new(EventLog::new(pool.clone())))).await;
    let client = CaseEventServiceClient::new(caselog_tests::with_token(
        connect(addr).await,
        caselog_tests::HARNESS_TOKEN,
    ));
    (server, client)
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_retry_of_many_cases_after_a_lost_reply_is_acknowledged_with_the_original_positions(pool: PgPool) {
    let (lossy_server, mut lossy_client) = lossy_server(&pool).await;
    let request = new_cases(10);
    let lost = lossy_client.append_events_to_cases(request.clone()).await.unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable);
    assert_eq!(event_count(&pool).await, 20, "the first attempt committed");
    lossy_server.abort();

    let server = TestServer::start(pool.clone()).await;
    let retry = server
        .client()
        .append_events_to_cases(request)
        .await
        .unwrap()
        .into_inner();
    let mut acknowledged = Vec::new();
    for outcome in retry.outcomes {
        let Some(pb::batch_outcome::Outcome::Appended(appended)) = outcome.outcome else {
            panic!("a resent batch was refused: {outcome:?}");
        };
        assert!(appended.events.iter().all(|e| e.already_present));
        acknowledged.extend(appended.events.iter().map(|e| e.position as i64));
    }
    acknowledged.sort_unstable();
    let stored: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY position")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(acknowledged, stored);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_retry_after_a_lost_reply_is_acknowledged_with_the_original_positions(pool: PgPool) {
    let (lossy_server, mut lossy_client) = lossy_server(&pool).await;
    let batch = vec![
        event("2025-04-17", issued_public(&["c1"])),
        event("2025-05-01", seen("c1")),
    ];
    let lost = lossy_client
        .append_events(append("LS1", batch.clone()))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable);
    assert_eq!(event_count(&pool).await, 2, "the first attempt committed");
    lossy_server.abort();

    // The client retries against a healthy server: acknowledged, nothing written twice.
    let server = TestServer::start(pool.clone()).await;
    let retry = server
        .client()
        .append_events(append("LS1", batch))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.events.iter().all(|e| e.already_present));
    let stored: Vec<(i64, i32)> = sqlx::query_as("SELECT position, version FROM events ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    let acknowledged: Vec<(i64, i32)> = retry
        .events
        .iter()
        .map(|e| (e.position as i64, e.version as i32))
        .collect();
    assert_eq!(acknowledged, stored);
    assert_eq!(event_count(&pool).await, 2);
}

/// A batch large enough to be written with `COPY`: the case issued, then hearings.
fn large_batch(events: usize) -> Vec<pb::NewEvent> {
    let mut batch = vec![event("2025-04-17", issued_public(&["c1"]))];
    batch.extend((1..events).map(|_| event("2025-05-01", hearing("2025-06-02"))));
    batch
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_large_batch_is_appended_whole_and_its_resend_writes_nothing(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let batch = large_batch(300);
    let first = client
        .append_events(append("LS1", batch.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.version, 300);
    let versions: Vec<u64> = first.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=300).collect::<Vec<u64>>());
    assert!(first.events.windows(2).all(|w| w[0].position < w[1].position));
    let stored: Vec<(i64, i32)> = sqlx::query_as("SELECT position, version FROM events ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    let answered: Vec<(i64, i32)> = first
        .events
        .iter()
        .map(|e| (e.position as i64, e.version as i32))
        .collect();
    assert_eq!(stored, answered, "the reply names the positions the log holds");

    // From another server, whose cache does not hold the case: the read path decides.
    let other = TestServer::start(pool.clone()).await;
    let second = other
        .client()
        .append_events(append("LS1", batch))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(event_count(&pool).await, 300);
    assert!(second.events.iter().all(|e| e.already_present));
    assert_eq!(second.events[299].position, first.events[299].position);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_large_batch_reusing_an_id_of_another_case_writes_nothing(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let elsewhere = event("2025-04-17", issued_public(&["c1"]));
    client
        .append_events(append("LS2", vec![elsewhere.clone()]))
        .await
        .unwrap();
    let mut batch = large_batch(200);
    batch[150].event_id = elsewhere.event_id.clone();

    // A fresh server: the case is new to it and the id is found only by the unique index.
    let other = TestServer::start(pool.clone()).await;
    let status = other.client().append_events(append("LS1", batch)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(reason(&status), "EVENT_ID_REUSED");
    assert_eq!(error_metadata(&status, "event_index").as_deref(), Some("150"));
    assert_eq!(event_count(&pool).await, 1, "nothing of the batch is written");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_large_batch_with_a_stale_expected_version_is_aborted(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    client.append_events(append("LS1", large_batch(100))).await.unwrap();
    let more: Vec<pb::NewEvent> = (0..100).map(|_| event("2025-05-02", hearing("2025-06-03"))).collect();
    let mut request = append("LS1", more);
    request.expected_version = Some(99);
    let status = client.append_events(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(event_count(&pool).await, 100);
}
