//! `AppendEventsToCases`: batches to many cases in one request, each decided as `AppendEvents`
//! decides it alone, all or nothing per batch, answered in request order.

use caselog_api::v1 as pb;
use caselog_api::v1::batch_outcome::Outcome;
use caselog_tests::*;
use sqlx::PgPool;
use tonic::Code;

fn many(batches: Vec<pb::AppendEventsRequest>) -> pb::AppendEventsToCasesRequest {
    pb::AppendEventsToCasesRequest { batches }
}

/// The outcome as `AppendEvents` would have answered it.
fn as_answer(outcome: &pb::BatchOutcome) -> Result<pb::AppendEventsResponse, tonic::Status> {
    match outcome.outcome.clone().expect("every batch has an outcome") {
        Outcome::Appended(appended) => Ok(appended),
        Outcome::Refused(refused) => Err(tonic::Status::with_details(
            Code::from_i32(refused.code),
            refused.message,
            refused.details.into(),
        )),
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn each_batch_is_all_or_nothing_and_a_cases_batches_keep_request_order(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let mut bad_date = event("2025-05-01", seen("c1"));
    bad_date.occurred_on = "2025-02-30".into();
    let request = many(vec![
        append(
            "LS1",
            vec![
                event("2025-04-17", issued_public(&["c1"])),
                event("2025-05-01", seen("c1")),
            ],
        ),
        // One malformed event refuses its whole batch, the case_issued with it.
        append("LS2", vec![event("2025-04-17", issued_public(&["c1"])), bad_date]),
        // A lifecycle rule: nothing before the case is issued.
        append("LS3", vec![event("2025-05-01", hearing("2025-06-01"))]),
        // After LS1's first batch, whatever the order the cases were written in.
        append("LS1", vec![event("2025-05-02", hearing("2025-06-02"))]),
    ]);
    let outcomes = client
        .append_events_to_cases(request)
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert_eq!(outcomes.len(), 4);

    let first = as_answer(&outcomes[0]).unwrap();
    assert_eq!(first.version, 2);
    assert_eq!(first.events.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    let malformed = as_answer(&outcomes[1]).unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&malformed), ["events[1].occurred_on"]);
    let unissued = as_answer(&outcomes[2]).unwrap_err();
    assert_eq!(unissued.code(), Code::FailedPrecondition);
    assert_eq!(reason(&unissued), "CASE_NOT_ISSUED");
    let later = as_answer(&outcomes[3]).unwrap();
    assert_eq!(later.version, 3);
    assert!(later.events[0].position > first.events[1].position);

    let cases: Vec<(String, i64)> =
        sqlx::query_as("SELECT case_id, count(*) FROM events GROUP BY case_id ORDER BY case_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(cases, [("LS1".to_owned(), 3)], "the refused batches wrote nothing");

    // A refusal carries what AppendEvents says for the same batch alone.
    let alone = client
        .append_events(append("LS3", vec![event("2025-05-01", hearing("2025-06-01"))]))
        .await
        .unwrap_err();
    assert_eq!(
        (alone.code(), reason(&alone), alone.message()),
        (unissued.code(), reason(&unissued), unissued.message())
    );
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_resent_request_is_acknowledged_with_the_original_positions(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let request = new_cases(20);
    let first = client
        .append_events_to_cases(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = client.append_events_to_cases(request).await.unwrap().into_inner();
    assert_eq!(event_count(&pool).await, 40);
    for (a, b) in first.outcomes.iter().zip(&again.outcomes) {
        let (a, b) = (as_answer(a).unwrap(), as_answer(b).unwrap());
        assert!(a.events.iter().all(|e| !e.already_present));
        assert!(b.events.iter().all(|e| e.already_present));
        let places =
            |r: &pb::AppendEventsResponse| r.events.iter().map(|e| (e.position, e.version)).collect::<Vec<_>>();
        assert_eq!(places(&a), places(&b));
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn each_batch_is_authorised_on_its_own(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut court =
        pb::case_event_service_client::CaseEventServiceClient::new(server.channel_with(&dev_token("court:LS")));
    let outcomes = court
        .append_events_to_cases(many(vec![
            append("LS1", vec![event("2025-04-17", issued_public(&["c1"]))]),
            // Another court's numbering.
            append("MA1", vec![event("2025-04-17", issued_public(&["c1"]))]),
        ]))
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert!(as_answer(&outcomes[0]).is_ok());
    let elsewhere = as_answer(&outcomes[1]).unwrap_err();
    assert_eq!(elsewhere.code(), Code::PermissionDenied);
    assert_eq!(reason(&elsewhere), "NOT_A_PARTY");

    let mut reporting =
        pb::case_event_service_client::CaseEventServiceClient::new(server.channel_with(&dev_token("reporting")));
    let outcomes = reporting
        .append_events_to_cases(many(vec![append(
            "LS2",
            vec![event("2025-04-17", issued_public(&["c1"]))],
        )]))
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert_eq!(as_answer(&outcomes[0]).unwrap_err().code(), Code::PermissionDenied);

    let anonymous = pb::case_event_service_client::CaseEventServiceClient::new(server.anonymous.clone())
        .append_events_to_cases(many(vec![append(
            "LS3",
            vec![event("2025-04-17", issued_public(&["c1"]))],
        )]))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert_eq!(event_count(&pool).await, 1);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_empty_or_oversized_request_is_refused_whole(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let empty = client.append_events_to_cases(many(vec![])).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&empty), ["batches"]);

    let half = |case_id: &str| {
        let mut events = vec![event("2025-04-17", issued_public(&["c1"]))];
        events.extend((1..600).map(|_| event("2025-05-01", hearing("2025-06-02"))));
        append(case_id, events)
    };
    let oversized = client
        .append_events_to_cases(many(vec![half("LS1"), half("LS2")]))
        .await
        .unwrap_err();
    assert_eq!(oversized.code(), Code::InvalidArgument);
    assert!(oversized.message().contains("1000 events"), "{}", oversized.message());

    // Batches without events would each earn a refusal: refused whole instead.
    let empties = client
        .append_events_to_cases(many((0..1001).map(|c| append(&format!("LS{c}"), vec![])).collect()))
        .await
        .unwrap_err();
    assert_eq!(empties.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&empties), ["batches"]);
    assert_eq!(event_count(&pool).await, 0);
}
