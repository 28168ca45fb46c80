//! Many clients appending to few cases at once: exactly one append wins each version, nothing is
//! duplicated, and versions stay contiguous.

use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_domain::Version;
use caselog_tests::*;
use sqlx::PgPool;
use std::collections::HashSet;
use tonic::Code;

const WRITERS: usize = 16;

/// Appends, sending the request again while the service answers ABORTED: it gives up after many
/// lost races on one case, and a client retries.
async fn append_retrying_lost_races(
    client: &mut CaseEventServiceClient<AuthChannel>,
    request: pb::AppendEventsRequest,
    who: &str,
) {
    loop {
        match client.append_events(request.clone()).await {
            Ok(_) => return,
            Err(status) if status.code() == Code::Aborted => continue,
            Err(status) => panic!("{who}: {status:?}"),
        }
    }
}
const APPENDS_PER_WRITER: usize = 200;
const CASES: usize = 5;

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn sixteen_writers_over_five_cases_leave_contiguous_versions(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    for c in 0..CASES {
        client
            .append_events(append(
                &format!("CC{c}"),
                vec![event("2025-04-17", issued_public(&["c1"]))],
            ))
            .await
            .unwrap();
    }
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let mut client = server.client();
        writers.spawn(async move {
            let mut sent = Vec::new();
            for i in 0..APPENDS_PER_WRITER {
                let case_id = format!("CC{}", (w * 7 + i) % CASES);
                let e = event("2025-05-01", hearing("2025-06-01"));
                sent.push(e.event_id.clone());
                append_retrying_lost_races(&mut client, append(&case_id, vec![e.clone()]), &format!("writer {w}"))
                    .await;
            }
            sent
        });
    }
    let mut acknowledged = HashSet::new();
    while let Some(sent) = writers.join_next().await {
        acknowledged.extend(sent.unwrap());
    }
    assert_eq!(acknowledged.len(), WRITERS * APPENDS_PER_WRITER);

    let rows: Vec<(String, i32, i64, uuid::Uuid)> =
        sqlx::query_as("SELECT case_id, version, position, event_id FROM events ORDER BY case_id, version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows.len(),
        CASES + WRITERS * APPENDS_PER_WRITER,
        "nothing lost, nothing duplicated"
    );
    for c in 0..CASES {
        let versions: Vec<i32> = rows.iter().filter(|r| r.0 == format!("CC{c}")).map(|r| r.1).collect();
        assert_eq!(
            versions,
            (1..=versions.len() as i32).collect::<Vec<_>>(),
            "case CC{c} versions are contiguous"
        );
    }
    let positions: HashSet<i64> = rows.iter().map(|r| r.2).collect();
    assert_eq!(positions.len(), rows.len());
    let stored_ids: HashSet<String> = rows.iter().map(|r| r.3.to_string()).collect();
    assert!(acknowledged.is_subset(&stored_ids));
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn with_an_expected_version_exactly_one_concurrent_append_wins(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    server.issue_case("LS1").await;
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let mut client = server.client();
        racers.spawn(async move {
            let mut request = append("LS1", vec![event("2025-05-01", seen("c1"))]);
            request.expected_version = Some(1);
            client.append_events(request).await
        });
    }
    let (mut won, mut aborted) = (0, 0);
    while let Some(result) = racers.join_next().await {
        match result.unwrap() {
            Ok(response) => {
                assert_eq!(response.into_inner().version, 2);
                won += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                assert_eq!(reason(&status), "VERSION_CONFLICT");
                aborted += 1;
            }
        }
    }
    assert_eq!((won, aborted), (1, 11));
    assert_eq!(event_count(&pool).await, 2);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn concurrent_resends_of_one_event_record_it_once(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    server.issue_case("LS1").await;
    let visit = event("2025-05-01", seen("c1"));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = server.client();
        let visit = visit.clone();
        senders.spawn(async move {
            client
                .append_events(append("LS1", vec![visit]))
                .await
                .map(|r| r.into_inner())
        });
    }
    let mut positions = HashSet::new();
    while let Some(result) = senders.join_next().await {
        let response: pb::AppendEventsResponse = result.unwrap().unwrap();
        positions.insert(response.events[0].position);
    }
    assert_eq!(positions.len(), 1, "every sender is told the one position");
    assert_eq!(event_count(&pool).await, 2);
}

/// Each server caches the cases it wrote. A case written meanwhile through another server makes
/// that copy stale: the stale server must neither refuse what the log allows nor accept what it
/// refuses, and versions stay contiguous.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_server_whose_cached_case_is_stale_decides_on_the_log(pool: PgPool) {
    let first = TestServer::start(pool.clone()).await;
    let second = TestServer::start(pool.clone()).await;
    first.issue_case("STALE1").await;
    first
        .client()
        .append_events(append("STALE1", vec![event("2025-04-20", seen("c1"))]))
        .await
        .unwrap();
    // The second server adds a child the first has not seen.
    second
        .client()
        .append_events(append("STALE1", vec![event("2025-04-21", joined("c2"))]))
        .await
        .unwrap();
    // Allowed by the log, refused by the first server's stale copy: accepted.
    let appended = first
        .client()
        .append_events(append("STALE1", vec![event("2025-04-22", seen("c2"))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(appended.version, 4);
    // The second server closes the case; the first's copy still has it open.
    second
        .client()
        .append_events(append(
            "STALE1",
            vec![event("2025-04-23", closed(pb::CaseOutcome::Withdrawn))],
        ))
        .await
        .unwrap();
    let refused = first
        .client()
        .append_events(append("STALE1", vec![event("2025-04-25", seen("c1"))]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(reason(&refused), "CASE_CLOSED");
    // A stale expected version is judged against the log, not the copy.
    let mut request = append("STALE1", vec![event("2025-04-22", seen("c1"))]);
    request.expected_version = Some(4);
    let conflict = first.client().append_events(request).await.unwrap_err();
    assert_eq!(conflict.code(), Code::Aborted);
    assert_eq!(error_metadata(&conflict, "actual_version").as_deref(), Some("5"));
    let versions: Vec<i32> = sqlx::query_scalar("SELECT version FROM events WHERE case_id = 'STALE1' ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
}

/// Appends written together share a statement, yet each keeps its own outcome: one that claims
/// a version already taken fails alone, and the others are recorded with contiguous versions.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn grouped_appends_keep_their_own_outcomes(pool: PgPool) {
    use caselog_store::{EventLog, GroupAppender, GroupSettings, NewRow};
    let log = EventLog::new(pool.clone());
    let appender = GroupAppender::start(log.clone(), GroupSettings::default());
    let row = || NewRow {
        event_id: uuid::Uuid::new_v4().into(),
        event_type: "hearing_listed".into(),
        occurred_on: chrono::NaiveDate::from_ymd_opt(2025, 5, 1).unwrap(),
        data: serde_json::json!({"hearing_type": "cmh", "listed_for": "2025-06-02"}).to_string(),
        metadata: "{}".to_owned(),
    };
    log.append("TAKEN", Version::ZERO, "test", vec![row()]).await.unwrap();
    let version = |n: u64| Version::try_from(n).unwrap();
    for round in 0..20 {
        let mut appends = tokio::task::JoinSet::new();
        for case in 0..24 {
            let appender = appender.clone();
            let rows = vec![row(), row()];
            appends.spawn(async move {
                let case_id = format!("G{case}");
                (
                    case_id.clone(),
                    appender.append(&case_id, version(round * 2), "test", rows).await,
                )
            });
        }
        let taken = appender.clone();
        let stale = row();
        let conflicting = tokio::spawn(async move { taken.append("TAKEN", Version::ZERO, "test", vec![stale]).await });
        while let Some(done) = appends.join_next().await {
            let (case_id, result) = done.unwrap();
            let appended = result.unwrap_or_else(|e| panic!("{case_id} in round {round}: {e}"));
            let versions: Vec<u64> = appended.iter().map(|a| a.version.get()).collect();
            assert_eq!(versions, [round * 2 + 1, round * 2 + 2], "{case_id}");
            assert!(appended[0].position < appended[1].position);
        }
        let refused = conflicting.await.unwrap().unwrap_err();
        assert!(
            matches!(refused, caselog_store::Error::VersionConflict { .. }),
            "{refused}"
        );
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 1 + 20 * 24 * 2);
}

/// Large batches are written with `COPY`; racing ones from servers that share no cache still
/// leave every case's versions contiguous and each batch whole.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn racing_large_batches_from_separate_servers_stay_whole(pool: PgPool) {
    const SERVERS: usize = 4;
    const BATCHES_PER_SERVER: usize = 6;
    const EVENTS_PER_BATCH: usize = 80;
    let servers = start_servers(SERVERS, &pool).await;
    servers[0]
        .client()
        .append_events(append("BIG", vec![event("2025-04-17", issued_public(&["c1"]))]))
        .await
        .unwrap();
    let mut writers = tokio::task::JoinSet::new();
    for (s, server) in servers.iter().enumerate() {
        let mut client = server.client();
        writers.spawn(async move {
            let mut batches = Vec::new();
            for _ in 0..BATCHES_PER_SERVER {
                let batch: Vec<pb::NewEvent> = (0..EVENTS_PER_BATCH)
                    .map(|_| event("2025-05-01", hearing("2025-06-01")))
                    .collect();
                append_retrying_lost_races(&mut client, append("BIG", batch.clone()), &format!("server {s}")).await;
                batches.push(batch.into_iter().map(|e| e.event_id).collect::<Vec<_>>());
            }
            batches
        });
    }
    let mut batches = Vec::new();
    while let Some(done) = writers.join_next().await {
        batches.extend(done.unwrap());
    }
    let rows: Vec<(i32, uuid::Uuid)> =
        sqlx::query_as("SELECT version, event_id FROM events WHERE case_id = 'BIG' ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1 + SERVERS * BATCHES_PER_SERVER * EVENTS_PER_BATCH);
    let versions: Vec<i32> = rows.iter().map(|r| r.0).collect();
    assert_eq!(versions, (1..=rows.len() as i32).collect::<Vec<_>>());
    // Each batch occupies consecutive versions, in the order it was sent.
    let ids: Vec<String> = rows.iter().map(|r| r.1.to_string()).collect();
    for batch in &batches {
        let start = ids.iter().position(|id| *id == batch[0]).unwrap();
        assert_eq!(&ids[start..start + batch.len()], batch.as_slice());
    }
}

async fn start_servers(count: usize, pool: &PgPool) -> Vec<TestServer> {
    let mut servers = Vec::with_capacity(count);
    for _ in 0..count {
        servers.push(TestServer::start(pool.clone()).await);
    }
    servers
}

/// Grouped single-event appends through two servers on one database, while a resender sends
/// acknowledged requests again and a hasty client abandons requests (reply lost, outcome unknown)
/// and sends them again until answered: every request is recorded exactly once, each case's
/// versions stay contiguous, a resend is answered with the original position and version, and
/// the feed delivers every event once, in position order.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn grouped_appends_resends_and_a_second_server_keep_every_invariant(pool: PgPool) {
    use caselog_domain::Position;
    use caselog_store::{EventLog, FeedFilter};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    const GROUPED_CASES: usize = 6;
    const WRITERS_PER_SERVER: usize = 8;
    const APPENDS_EACH: usize = 40;
    let servers = [
        TestServer::start(pool.clone()).await,
        TestServer::start(pool.clone()).await,
    ];
    for c in 0..GROUPED_CASES {
        servers[c % 2]
            .client()
            .append_events(append(
                &format!("GC{c}"),
                vec![event("2025-04-17", issued_public(&["c1"]))],
            ))
            .await
            .unwrap();
    }
    type Answered = Vec<(pb::AppendEventsRequest, pb::AppendedEvent)>;
    let answered: Arc<Mutex<Answered>> = Arc::default();
    let abandoned = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Abandoned (or hasty and answered) requests that the resend found already recorded.
    let written_unanswered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (s, server) in servers.iter().enumerate() {
        for w in 0..WRITERS_PER_SERVER {
            let mut client = server.client();
            let mut other = servers[1 - s].client();
            let answered = answered.clone();
            let abandoned = abandoned.clone();
            let written_unanswered = written_unanswered.clone();
            tasks.spawn(async move {
                for i in 0..APPENDS_EACH {
                    let case_id = format!("GC{}", (w * 5 + i + s) % GROUPED_CASES);
                    let request = append(&case_id, vec![event("2025-05-01", hearing("2025-06-01"))]);
                    // Every third request is abandoned after a moment, as by a client whose
                    // deadline passed: it may or may not have been written. Then it is sent again,
                    // to either server, until answered.
                    if i % 3 == 0 {
                        let hasty = tokio::time::timeout(
                            Duration::from_micros(200 + 1500 * (i as u64 % 7)),
                            client.append_events(request.clone()),
                        )
                        .await;
                        if hasty.is_err() {
                            abandoned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    let target = if i % 2 == 0 { &mut client } else { &mut other };
                    let response = loop {
                        match target.append_events(request.clone()).await {
                            Ok(response) => break response.into_inner(),
                            Err(status) if status.code() == Code::Aborted => continue,
                            Err(status) => panic!("writer {s}/{w}: {status:?}"),
                        }
                    };
                    assert_eq!(response.events.len(), 1);
                    if i % 3 == 0 && response.events[0].already_present {
                        written_unanswered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    answered.lock().unwrap().push((request, response.events[0].clone()));
                }
            });
        }
        // The resender: acknowledged requests again, to this server, while the writers run.
        let mut client = server.client();
        let answered = answered.clone();
        tasks.spawn(async move {
            for round in 0..60 {
                let picked = {
                    let answered = answered.lock().unwrap();
                    (!answered.is_empty()).then(|| answered[(round * 37 + s) % answered.len()].clone())
                };
                if let Some((request, first)) = picked {
                    let again = client.append_events(request).await.unwrap().into_inner();
                    let again = &again.events[0];
                    assert!(again.already_present, "a resend is acknowledged, not appended");
                    assert_eq!((again.position, again.version), (first.position, first.version));
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }

    let answered = answered.lock().unwrap().clone();
    let sent = 2 * WRITERS_PER_SERVER * APPENDS_EACH;
    assert_eq!(answered.len(), sent);
    let rows: Vec<(String, i32, i64, uuid::Uuid)> =
        sqlx::query_as("SELECT case_id, version, position, event_id FROM events ORDER BY case_id, version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), GROUPED_CASES + sent, "each request recorded exactly once");
    let stored: HashMap<String, (i64, i32)> = rows.iter().map(|r| (r.3.to_string(), (r.2, r.1))).collect();
    for (request, outcome) in &answered {
        let id = &request.events[0].event_id;
        assert_eq!(
            stored.get(id),
            Some(&(outcome.position as i64, outcome.version as i32)),
            "the answer names where event {id} is"
        );
    }
    for c in 0..GROUPED_CASES {
        let versions: Vec<i32> = rows.iter().filter(|r| r.0 == format!("GC{c}")).map(|r| r.1).collect();
        assert_eq!(versions, (1..=versions.len() as i32).collect::<Vec<_>>(), "GC{c}");
    }
    // The feed, page by page from the start: every event once, positions rising.
    let log = EventLog::new(pool.clone());
    let (mut after, mut delivered) = (Position::ZERO, Vec::new());
    loop {
        let page = log.read_all(after, 100, &FeedFilter::default()).await.unwrap();
        delivered.extend(page.events.iter().map(|e| e.position));
        if page.next_after == after {
            break;
        }
        after = page.next_after;
    }
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "positions rise");
    assert_eq!(delivered.len(), rows.len(), "the feed delivers every event once");
    let abandoned = abandoned.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{abandoned} requests abandoned before an answer and sent again; {} hasty requests were found recorded when sent again",
        written_unanswered.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(abandoned > 0, "the test abandons requests");
}
