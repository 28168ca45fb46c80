//! The global feed never skips or repeats: an append held invisible holds readers back, rolled
//! back appends do not stall them, live subscribers see exactly what committed, in order.

use caselog_api::v1 as pb;
use caselog_api::v1::event_feed_service_client::EventFeedServiceClient;
use caselog_domain::Position;
use caselog_server::{FeedSettings, ServerLimits};
use caselog_store::{EventLog, FeedFilter};
use caselog_tests::*;
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tonic::Code;

/// What a subscriber has received so far.
#[derive(Debug, Default)]
struct Received {
    positions: Vec<u64>,
    event_ids: Vec<String>,
    checkpoint: u64,
    ended: Option<tonic::Status>,
}

fn subscribe(server: &TestServer, from: u64, filter: Option<pb::FeedFilter>) -> (Arc<Mutex<Received>>, JoinHandle<()>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let sink = received.clone();
    let mut client = EventFeedServiceClient::new(server.channel.clone());
    let handle = tokio::spawn(async move {
        let mut stream = client
            .subscribe_events(pb::SubscribeEventsRequest {
                from_position: from,
                filter,
            })
            .await
            .unwrap()
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    let mut r = sink.lock().unwrap();
                    match message.message.unwrap() {
                        pb::subscribe_events_response::Message::Event(e) => {
                            r.positions.push(e.position);
                            r.event_ids.push(e.event_id);
                        }
                        pb::subscribe_events_response::Message::Checkpoint(c) => r.checkpoint = c.position,
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    sink.lock().unwrap().ended = Some(status);
                    return;
                }
            }
        }
    });
    (received, handle)
}

/// Waits until the subscriber has been told about everything up to `position`.
async fn wait_until_reached(received: &Arc<Mutex<Received>>, position: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let r = received.lock().unwrap();
            if r.checkpoint >= position || r.positions.last().is_some_and(|p| *p >= position) {
                return;
            }
            assert!(r.ended.is_none(), "subscription ended: {:?}", r.ended);
        }
        assert!(
            Instant::now() < deadline,
            "subscriber never reached position {position}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn committed(pool: &PgPool) -> Vec<(i64, String)> {
    sqlx::query_as::<_, (i64, uuid::Uuid)>("SELECT position, event_id FROM events ORDER BY position")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(p, id)| (p, id.to_string()))
        .collect()
}

fn assert_exactly(received: &Received, expected: &[(i64, String)]) {
    let positions: Vec<u64> = expected.iter().map(|(p, _)| *p as u64).collect();
    assert_eq!(
        received.positions, positions,
        "every committed event once, in position order"
    );
    let ids: Vec<String> = expected.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(received.event_ids, ids);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_append_held_invisible_holds_readers_back_and_is_then_delivered_once(pool: PgPool) {
    // A test-only trigger makes appends to case HELD1 wait on an advisory lock (two-int4 keys,
    // outside the feed's int8 key space) after their positions are allocated.
    sqlx::query(
        "CREATE FUNCTION test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.case_id = 'HELD1' THEN PERFORM pg_advisory_xact_lock_shared(4242, 1); END IF; RETURN NEW; END $$",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("CREATE TRIGGER test_hold BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION test_hold()")
        .execute(&pool)
        .await
        .unwrap();
    let mut gate = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(4242, 1)")
        .execute(&mut *gate)
        .await
        .unwrap();

    let server = TestServer::start(pool.clone()).await;
    let log = EventLog::new(pool.clone());
    server.issue_case("OPEN1").await;
    let (received, _subscriber) = subscribe(&server, 0, None);

    let mut held_client = server.client();
    let held = tokio::spawn(async move {
        held_client
            .append_events(append("HELD1", vec![event("2025-04-17", issued_public(&["c1"]))]))
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.horizon().await.unwrap().append_in_flight() {
        assert!(Instant::now() < deadline, "the held append never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held_floor = log.horizon().await.unwrap().safe;

    // Later appends commit while the held one is invisible.
    for day in 1..=20 {
        let request = append(
            "OPEN1",
            vec![event(&format!("2025-05-{day:02}"), hearing("2025-07-01"))],
        );
        server.client().append_events(request).await.unwrap();
    }
    let page = log
        .read_all(Position::ZERO, 1000, &FeedFilter::default())
        .await
        .unwrap();
    assert!(
        page.events.iter().all(|e| e.position <= held_floor),
        "the reader stops below the held append"
    );
    assert_eq!(page.next_after, held_floor);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        received
            .lock()
            .unwrap()
            .positions
            .iter()
            .all(|p| *p <= held_floor.get()),
        "the subscriber stops below the held append"
    );

    sqlx::query("SELECT pg_advisory_unlock(4242, 1)")
        .execute(&mut *gate)
        .await
        .unwrap();
    held.await.unwrap().unwrap();
    let all = committed(&pool).await;
    assert_eq!(all.len(), 22);
    wait_until_reached(&received, all.last().unwrap().0 as u64).await;
    assert_exactly(&received.lock().unwrap(), &all);
    let page = log
        .read_all(Position::ZERO, 1000, &FeedFilter::default())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 22);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn rolled_back_appends_leave_gaps_but_never_stall_readers(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let log = EventLog::new(pool.clone());
    let (received, _subscriber) = subscribe(&server, 0, None);
    server.issue_case("OPEN1").await;
    for round in 0..10 {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO events (event_id, case_id, version, event_type, occurred_on, data, source)
             SELECT gen_random_uuid(), 'DOOMED', v, 'hearing_listed', '2025-05-01', '{}', 'court:LS'
               FROM generate_series(1, 3) AS v",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        if round % 2 == 0 {
            // An append that commits while the doomed one is still open.
            let request = append("OPEN1", vec![event("2025-05-01", hearing("2025-07-01"))]);
            server.client().append_events(request).await.unwrap();
        }
        tx.rollback().await.unwrap();
    }
    let horizon = log.horizon().await.unwrap();
    assert!(!horizon.append_in_flight());
    let all = committed(&pool).await;
    assert_eq!(all.len(), 6);
    assert!(
        horizon.allocated.get() > all.last().unwrap().0 as u64,
        "rolled-back positions are gaps at the end"
    );
    // The subscriber gets past the trailing gap without any further append.
    wait_until_reached(&received, horizon.allocated.get()).await;
    assert_exactly(&received.lock().unwrap(), &all);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn live_subscribers_receive_exactly_what_sixteen_writers_committed(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let subscribers: Vec<_> = (0..3).map(|_| subscribe(&server, 0, None)).collect();
    let until = Instant::now() + Duration::from_secs(3);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..16 {
        let mut client = server.client();
        writers.spawn(async move {
            let case_id = format!("W{w}");
            client
                .append_events(append(&case_id, vec![event("2025-04-17", issued_public(&["c1"]))]))
                .await
                .unwrap();
            let mut appended = 1;
            while Instant::now() < until {
                let batch = (0..1 + appended % 3)
                    .map(|_| event("2025-05-01", hearing("2025-07-01")))
                    .collect();
                client.append_events(append(&case_id, batch)).await.unwrap();
                appended += 1;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let all = committed(&pool).await;
    assert!(
        all.len() > 100,
        "writers appended for three seconds ({} events)",
        all.len()
    );
    let last = all.last().unwrap().0 as u64;
    for (received, _) in &subscribers {
        wait_until_reached(received, last).await;
        assert_exactly(&received.lock().unwrap(), &all);
    }
    let status = EventFeedServiceClient::new(server.channel.clone())
        .get_feed_status(pb::GetFeedStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.subscribers, 3);
    assert_eq!(status.head_position, last);
    assert_eq!(status.safe_position_lag, 0);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_subscriber_resumed_from_its_last_position_misses_nothing(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut events = vec![event("2025-04-17", issued_public(&["c1"]))];
    events.extend((0..99).map(|_| event("2025-05-01", hearing("2025-07-01"))));
    server.client().append_events(append("OPEN1", events)).await.unwrap();

    let mut client = EventFeedServiceClient::new(server.channel.clone());
    let mut stream = client
        .subscribe_events(pb::SubscribeEventsRequest {
            from_position: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut positions = Vec::new();
    while positions.len() < 37 {
        if let Some(pb::subscribe_events_response::Message::Event(e)) = stream.message().await.unwrap().unwrap().message
        {
            positions.push(e.position);
        }
    }
    drop(stream); // killed mid-stream

    let more: Vec<_> = (0..50).map(|_| event("2025-05-02", hearing("2025-07-01"))).collect();
    server.client().append_events(append("OPEN1", more)).await.unwrap();
    let (received, _subscriber) = subscribe(&server, *positions.last().unwrap(), None);
    let all = committed(&pool).await;
    wait_until_reached(&received, all.last().unwrap().0 as u64).await;
    positions.extend(received.lock().unwrap().positions.iter().copied());
    assert_eq!(positions, all.iter().map(|(p, _)| *p as u64).collect::<Vec<_>>());
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn read_all_pages_and_filters(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut case_events = server.client();
    for case in ["A1", "B1"] {
        let mut events = vec![event("2025-04-17", issued_public(&["c1"]))];
        events.extend((0..10).map(|_| event("2025-05-01", seen("c1"))));
        case_events.append_events(append(case, events)).await.unwrap();
    }
    let mut feed = EventFeedServiceClient::new(server.channel.clone());
    let (mut from, mut read) = (0, Vec::new());
    loop {
        let page = feed
            .read_all(pb::ReadAllRequest {
                from_position: from,
                limit: 4,
                filter: None,
            })
            .await
            .unwrap()
            .into_inner();
        read.extend(page.events.iter().map(|e| e.position));
        if page.events.is_empty() {
            break;
        }
        from = page.next_from_position;
    }
    assert_eq!(
        read,
        committed(&pool)
            .await
            .iter()
            .map(|(p, _)| *p as u64)
            .collect::<Vec<_>>()
    );

    let filter = pb::FeedFilter {
        event_types: vec!["case_issued".into()],
        case_ids: vec!["B1".into()],
    };
    let page = feed
        .read_all(pb::ReadAllRequest {
            from_position: 0,
            limit: 0,
            filter: Some(filter),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].case_id, "B1");
    assert_eq!(
        page.next_from_position, page.safe_position,
        "a short page moves the cursor to the safe position"
    );

    let bad = pb::FeedFilter {
        event_types: vec!["case_reopened".into()],
        case_ids: vec!["no spaces".into()],
    };
    let status = feed
        .read_all(pb::ReadAllRequest {
            from_position: 0,
            limit: 0,
            filter: Some(bad),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["filter.event_types[0]", "filter.case_ids[0]"]);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_subscriber_that_does_not_keep_up_is_told_where_to_resume(pool: PgPool) {
    let feed = FeedSettings {
        subscriber_buffer: 2,
        slow_subscriber_timeout: Duration::from_millis(200),
        ..FeedSettings::default()
    };
    let server = TestServer::start_with(
        pool.clone(),
        ServerLimits {
            feed,
            ..ServerLimits::default()
        },
    )
    .await;
    for case in 0..4 {
        let mut events = vec![event("2025-04-17", issued_public(&["c1"]))];
        events.extend((0..999).map(|_| event("2025-05-01", hearing("2025-07-01"))));
        server
            .client()
            .append_events(append(&format!("BIG{case}"), events))
            .await
            .unwrap();
    }
    // Small HTTP/2 windows, so that a client that does not read pushes back on the server soon.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut client = EventFeedServiceClient::new(caselog_tests::with_token(channel, caselog_tests::HARNESS_TOKEN));
    let mut stream = client
        .subscribe_events(pb::SubscribeEventsRequest {
            from_position: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(2)).await; // not reading
    let mut last = 0;
    let reading = async {
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    if let Some(pb::subscribe_events_response::Message::Event(e)) = m.message {
                        last = e.position;
                    }
                }
                Ok(None) => panic!("the stream ended without saying why"),
                Err(status) => break status,
            }
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .expect("the slow subscriber was never ended");
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(reason(&status), "SUBSCRIBER_TOO_SLOW");
    let resume_from: u64 = error_metadata(&status, "resume_from").unwrap().parse().unwrap();
    assert!(
        resume_from >= last,
        "resume_from {resume_from} is not behind what was received ({last})"
    );
    assert!(last < 4000, "the subscriber was ended before the end of the log");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn shutting_down_ends_subscriptions_with_a_resume_position(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    server.issue_case("OPEN1").await;
    let (received, subscriber) = subscribe(&server, 0, None);
    wait_until_reached(&received, 1).await;
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("shutdown drains");
    subscriber.await.unwrap();
    let ended = received.lock().unwrap().ended.clone().expect("told why");
    assert_eq!(ended.code(), Code::Unavailable);
    assert_eq!(reason(&ended), "SERVER_SHUTTING_DOWN");
}
