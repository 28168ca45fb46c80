//! The event log on its own, against a real PostgreSQL (a fresh database per test): versions
//! and positions, all-or-nothing batches by statement and by COPY, the append-only guard and the
//! feed's horizon.

#![allow(clippy::unwrap_used)]

use caselog_domain::{Position, Version};
use caselog_store::{Error, EventLog, FeedFilter, NewRow};
use chrono::NaiveDate;
use sqlx::PgPool;
use uuid::Uuid;

fn rows(n: usize) -> Vec<NewRow> {
    (0..n)
        .map(|i| NewRow {
            event_id: Uuid::new_v4().into(),
            event_type: "hearing_listed".into(),
            occurred_on: NaiveDate::from_ymd_opt(2025, 4, 17).unwrap(),
            data: serde_json::json!({"hearing_type": "cmh", "listed_for": "2025-05-20", "n": i}).to_string(),
            metadata: "{}".to_owned(),
        })
        .collect()
}

fn v(n: u64) -> Version {
    Version::try_from(n).unwrap()
}

/// A group appender that writes one group at a time and waits long for a stuck one.
fn one_group_at_a_time(pool: &PgPool) -> caselog_store::GroupAppender {
    caselog_store::GroupAppender::start(
        EventLog::new(pool.clone()),
        caselog_store::GroupSettings {
            max_in_flight: 1,
            max_wait: std::time::Duration::from_secs(30),
            ..caselog_store::GroupSettings::default()
        },
    )
}

/// A transaction that holds every insert into the log until it commits.
async fn blocking_inserts(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    blocker
}

async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn appends_take_the_next_versions_and_increasing_positions(pool: PgPool) {
    let log = EventLog::new(pool);
    let first = log.append("LS1", v(0), "court:LS", rows(3)).await.unwrap();
    let other = log.append("LS2", v(0), "court:LS", rows(2)).await.unwrap();
    let second = log.append("LS1", v(3), "court:LS", rows(1)).await.unwrap();
    let versions: Vec<u64> = first.iter().chain(&second).map(|r| r.version.get()).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    let positions: Vec<Position> = first.iter().chain(&other).chain(&second).map(|r| r.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let case = log.read_case("LS1").await.unwrap();
    assert_eq!(case.iter().map(|e| e.version.get()).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(case.iter().all(|e| e.source == "court:LS"));
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_taken_version_or_a_recorded_id_refuses_the_whole_batch(pool: PgPool) {
    let log = EventLog::new(pool.clone());
    let recorded = rows(2);
    log.append("LS1", v(0), "court:LS", recorded.clone()).await.unwrap();
    let stale = log.append("LS1", v(1), "court:LS", rows(2)).await;
    assert!(matches!(stale, Err(Error::VersionConflict { .. })), "{stale:?}");
    let mut reused = rows(2);
    reused[1].event_id = recorded[0].event_id;
    let duplicate = log.append("LS1", v(2), "court:LS", reused.clone()).await;
    assert!(matches!(duplicate, Err(Error::DuplicateEventId)), "{duplicate:?}");
    assert_eq!(count(&pool).await, 2, "nothing of a refused batch is written");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_large_batch_is_copied_whole_or_not_at_all(pool: PgPool) {
    let log = EventLog::new(pool.clone());
    let batch = rows(100);
    let appended = log.append("LS1", v(0), "court:LS", batch.clone()).await.unwrap();
    assert_eq!(
        appended.iter().map(|r| r.version.get()).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );
    assert!(appended.windows(2).all(|w| w[0].position < w[1].position));
    let mut reused = rows(100);
    reused[99].event_id = batch[0].event_id;
    assert!(log.append("LS1", v(100), "court:LS", reused.clone()).await.is_err());
    assert!(log.append("LS1", v(50), "court:LS", rows(100)).await.is_err());
    assert_eq!(count(&pool).await, 100);
    assert_eq!(log.read_case("LS1").await.unwrap().len(), 100);
}

/// A batch written by `COPY` (text format, escaped by the service) and one by a statement store
/// the same values: ids, dates
/// far from today, text with the bytes the text format escapes, JSON with escapes and non-ASCII
/// characters. Both batches are read back whole and compared field by field.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_copied_batch_stores_exactly_what_a_statement_stores(pool: PgPool) {
    let log = EventLog::new(pool.clone());
    let awkward = |n: usize| -> Vec<NewRow> {
        let dates = [
            (2000, 1, 1),
            (1999, 12, 31),
            (1970, 1, 1),
            (2026, 3, 31),
            (2399, 12, 31),
            (1, 1, 1),
        ];
        (0..n)
            .map(|i| {
                let (y, m, d) = dates[i % dates.len()];
                NewRow {
                    event_id: Uuid::new_v4().into(),
                    event_type: format!("type\\with\ttab {i}"),
                    occurred_on: NaiveDate::from_ymd_opt(y, m, d).unwrap(),
                    data: serde_json::json!({
                        "note": format!("line\nbreak\ttab \\ back \"quote\" é ✓ \u{1}{i}"),
                        "n": i,
                        "nested": {"list": [1, 2.5, null, true]},
                    })
                    .to_string(),
                    metadata: serde_json::json!({"trace": "a\tb", "i": i}).to_string(),
                }
            })
            .collect()
    };
    let case = "LS\tcase\\é";
    let copied = awkward(70);
    log.append(case, v(0), "court:LS", copied.clone()).await.unwrap();
    let inserted = awkward(5);
    log.append(case, v(70), "court:LS", inserted.clone()).await.unwrap();
    let stored = log.read_case(case).await.unwrap();
    assert_eq!(stored.len(), 75);
    for (row, event) in copied.iter().chain(&inserted).zip(&stored) {
        assert_eq!(event.event_id, row.event_id);
        assert_eq!(event.case_id, case);
        assert_eq!(event.event_type, row.event_type);
        assert_eq!(event.occurred_on, row.occurred_on);
        assert_eq!(
            event.data,
            serde_json::from_str::<serde_json::Value>(&row.data).unwrap()
        );
        assert_eq!(
            event.metadata,
            serde_json::from_str::<serde_json::Value>(&row.metadata).unwrap()
        );
        assert_eq!(event.source, "court:LS");
    }
    assert_eq!(
        stored.iter().map(|e| e.version.get()).collect::<Vec<_>>(),
        (1..=75).collect::<Vec<_>>()
    );
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn the_log_refuses_updates_and_deletes(pool: PgPool) {
    let log = EventLog::new(pool.clone());
    log.append("LS1", v(0), "court:LS", rows(1)).await.unwrap();
    for statement in [
        "UPDATE events SET source = 'someone else'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(statement).execute(&pool).await.unwrap_err();
        assert_eq!(
            err.as_database_error().unwrap().code().as_deref(),
            Some("CL001"),
            "{statement}"
        );
    }
    assert_eq!(count(&pool).await, 1);
}

/// A restore (`pg_restore`, `psql` on a dump) writes with an empty `search_path`: the promise
/// taken before the rows must not depend on it.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn rows_are_written_whatever_the_search_path(pool: PgPool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('search_path', '', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO public.events (event_id, case_id, version, event_type, occurred_on, data, source)
         VALUES (gen_random_uuid(), 'LS1', 1, 'case_issued', '2025-04-17', '{}', 'court:LS') RETURNING position",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(position, 1);
    assert_eq!(count(&pool).await, 1);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_open_append_holds_the_safe_position_back_until_it_ends(pool: PgPool) {
    let log = EventLog::new(pool.clone());
    log.append("LS1", v(0), "court:LS", rows(1)).await.unwrap();
    let before = log.horizon().await.unwrap();
    assert_eq!(before.safe, before.allocated);

    // A writer that has promised positions but not committed, as an append in flight.
    let mut open = pool.begin().await.unwrap();
    let promised: i64 = sqlx::query_scalar(
        "INSERT INTO events (event_id, case_id, version, event_type, occurred_on, data, source)
         VALUES (gen_random_uuid(), 'LS9', 1, 'case_issued', '2025-04-17', '{}', 'court:LS') RETURNING position",
    )
    .fetch_one(&mut *open)
    .await
    .unwrap();
    log.append("LS2", v(0), "court:LS", rows(1)).await.unwrap();
    let during = log.horizon().await.unwrap();
    assert!(
        i64::from(during.safe) < promised,
        "{during:?} passes the open promise {promised:?}"
    );
    let page = log.read_all(Position::ZERO, 100, &FeedFilter::default()).await.unwrap();
    assert!(page.events.iter().all(|e| e.position <= during.safe));
    assert_eq!(page.events.len(), 1, "the later commit waits behind the open append");

    open.rollback().await.unwrap();
    let after = log.horizon().await.unwrap();
    assert_eq!(after.safe, after.allocated);
    let page = log.read_all(Position::ZERO, 100, &FeedFilter::default()).await.unwrap();
    assert_eq!(page.events.len(), 2, "a rolled-back promise leaves only a gap");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_version_beyond_the_rows_range_is_an_error_not_a_wrap(pool: PgPool) {
    let log = EventLog::new(pool.clone());
    let near_the_end = v(u64::from(Version::MAX) - 1);
    for batch in [rows(2), rows(100)] {
        let refused = log.append("LS1", near_the_end, "court:LS", batch.clone()).await;
        assert!(matches!(refused, Err(Error::VersionOutOfRange { .. })), "{refused:?}");
    }
    assert_eq!(count(&pool).await, 0);
}

/// An append whose caller gave up while it waited behind a stuck group is withdrawn: it is never
/// written later, when the database moves again.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_append_whose_caller_gave_up_before_its_statement_is_never_written(pool: PgPool) {
    use std::time::Duration;
    let appender = one_group_at_a_time(&pool);
    let blocker = blocking_inserts(&pool).await;
    let first = tokio::spawn({
        let appender = appender.clone();
        async move { appender.append("LS1", v(0), "court:LS", rows(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        appender.append("LS2", v(0), "court:LS", rows(1)),
    )
    .await;
    assert!(gave_up.is_err(), "the second append waits behind the first");
    blocker.commit().await.unwrap();
    first.await.unwrap().unwrap();
    // The grouping task has moved past the abandoned append once a later one is written.
    appender.append("LS3", v(0), "court:LS", rows(1)).await.unwrap();
    let abandoned: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE case_id = 'LS2'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(abandoned, 0, "an append its caller was told had failed was written");
    assert_eq!(count(&pool).await, 2);
}

/// The same when the wait is for a connection (the pool exhausted, or the database restarting):
/// the group looks at who still waits only once it holds a connection, so an append whose
/// caller gave up meanwhile is never sent.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_append_whose_caller_gave_up_waiting_for_a_connection_is_never_written(pool: PgPool) {
    use caselog_store::{GroupAppender, GroupSettings};
    use sqlx::postgres::PgPoolOptions;
    use std::time::Duration;
    let one_connection = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let log = EventLog::new(one_connection.clone());
    let appender = GroupAppender::start(log.clone(), GroupSettings::default());
    let held = one_connection.acquire().await.unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        appender.append("LS1", v(0), "court:LS", rows(1)),
    )
    .await;
    assert!(gave_up.is_err(), "the append waits for the only connection");
    drop(held);
    appender.append("LS2", v(0), "court:LS", rows(1)).await.unwrap();
    let abandoned: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE case_id = 'LS1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(abandoned, 0, "an append its caller was told had failed was written");
    assert_eq!(count(&pool).await, 1);
}

/// Appends that arrive while a statement is being written share the next one, and the counters
/// say so: the first append alone (written by its caller, the appender being idle), then the
/// five that waited behind it in one statement.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn appends_waiting_behind_a_statement_are_written_together_and_counted(pool: PgPool) {
    use caselog_store::GroupStats;
    use std::time::Duration;
    let appender = one_group_at_a_time(&pool);
    let blocker = blocking_inserts(&pool).await;
    let mut appends = tokio::task::JoinSet::new();
    for case in 0..6 {
        let appender = appender.clone();
        appends.spawn(async move { appender.append(&format!("LS{case}"), v(0), "court:LS", rows(1)).await });
        // The first is written (and stuck) alone before the others arrive.
        let pause = if case == 0 { 300 } else { 20 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    blocker.commit().await.unwrap();
    while let Some(appended) = appends.join_next().await {
        appended.unwrap().unwrap();
    }
    assert_eq!(count(&pool).await, 6);
    assert_eq!(
        appender.stats(),
        GroupStats {
            statements: 2,
            appends: 6,
            events: 6,
            written_by_caller: 1,
        }
    );
}

/// An append written by its own caller (the appender idle) whose caller gives up while its
/// statement waits frees its slot: the next append is again written at once by its caller,
/// instead of queueing behind a slot nobody holds (with this appender, for 30 s).
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_lone_append_given_up_mid_statement_frees_its_slot(pool: PgPool) {
    use std::time::Duration;
    let appender = one_group_at_a_time(&pool);
    let blocker = blocking_inserts(&pool).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        appender.append("LS1", v(0), "court:LS", rows(1)),
    )
    .await;
    assert!(gave_up.is_err(), "the append waits behind the lock");
    blocker.rollback().await.unwrap();
    let next = tokio::time::timeout(
        Duration::from_secs(5),
        appender.append("LS2", v(0), "court:LS", rows(1)),
    )
    .await
    .expect("the slot of the append given up was freed");
    assert_eq!(next.unwrap().len(), 1);
    // The statement given up may still have committed once the lock went (its connection was
    // dropped, not its statement): the caller was told nothing, and resends.
    assert_eq!(appender.stats().written_by_caller, 1);
    let ls2: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE case_id = 'LS2'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ls2, 1);
}

/// A `COPY` ends without waiting for the server's delayed acknowledgement. sqlx 0.9.0 opened its
/// TCP connections without TCP_NODELAY, so the kernel held back each `COPY`'s closing message
/// until the server acknowledged the data before it: about 40 ms per `COPY`, which more than
/// halved the rebuild's loading rate and slowed every batch append (docs/benchmarks.md). Twenty
/// one-row `COPY`s take a few milliseconds each here; stalled, they take 40 ms or more each.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_copy_does_not_wait_for_a_delayed_acknowledgement(pool: PgPool) {
    const COPIES: u32 = 20;
    let log = EventLog::new(pool);
    let mut session = log.try_lock_rebuild().await.unwrap().unwrap();
    session.create_table().await.unwrap();
    let started = std::time::Instant::now();
    for i in 0..COPIES {
        let row = caselog_store::FactsHistoryRow {
            case_id: format!("LS25C{i:05}"),
            recorded_at: chrono::Utc::now(),
            facts: Some(vec![1, 2, 3]),
        };
        session.copy_history(&[row]).await.unwrap();
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_millis(15) * COPIES,
        "{COPIES} one-row COPYs took {elapsed:?}: is TCP_NODELAY off again?"
    );
    session.drop_table().await.unwrap();
}

/// A page is read in spans of positions (so a reader far behind never makes PostgreSQL sort its
/// whole backlog): a gap wider than the page and a filter that matches one event in many must
/// still give full pages, in order, with nothing skipped.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn pages_fill_across_gaps_and_sparse_filters(pool: PgPool) {
    let log = EventLog::new(pool.clone());
    log.append("LS1", v(0), "court:LS", rows(3)).await.unwrap();
    // Positions handed out and never used, as rolled-back appends leave them.
    sqlx::query("SELECT nextval('caselog_event_position') FROM generate_series(1, 50)")
        .execute(&pool)
        .await
        .unwrap();
    for case in 0..40 {
        log.append(&format!("LS{}", case + 2), v(0), "court:LS", rows(1))
            .await
            .unwrap();
    }
    log.append("LS1", v(3), "court:LS", rows(2)).await.unwrap();

    let page = log.read_all(Position::ZERO, 5, &FeedFilter::default()).await.unwrap();
    assert_eq!(page.events.len(), 5, "the gap does not cut the page short");
    assert!(page.full);
    let versions: Vec<(String, u64)> = page
        .events
        .iter()
        .map(|e| (e.case_id.clone(), e.version.get()))
        .collect();
    assert_eq!(
        &versions[..3],
        &[("LS1".into(), 1), ("LS1".into(), 2), ("LS1".into(), 3)]
    );

    let one_case = FeedFilter {
        case_ids: vec!["LS1".into()],
        ..FeedFilter::default()
    };
    let first = log.read_all(Position::ZERO, 4, &one_case).await.unwrap();
    assert_eq!(first.events.len(), 4, "the spans widen until the page is full");
    assert!(first.full);
    let rest = log.read_all(first.next_after, 4, &one_case).await.unwrap();
    assert_eq!(rest.events.len(), 1);
    assert!(!rest.full);
    assert_eq!(
        rest.next_after, rest.horizon.safe,
        "a short page scanned up to the horizon"
    );
    let versions: Vec<u64> = first
        .events
        .iter()
        .chain(&rest.events)
        .map(|e| e.version.get())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);

    // Read through in small pages: every event once, in position order.
    let (mut after, mut seen) = (Position::ZERO, Vec::new());
    loop {
        let page = log.read_all(after, 3, &FeedFilter::default()).await.unwrap();
        seen.extend(page.events.iter().map(|e| e.position));
        after = page.next_after;
        if !page.full {
            break;
        }
    }
    assert_eq!(seen.len(), 45);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

/// Reads of cases arriving together are made in one statement, and each reader gets exactly its
/// case, in version order, however many others read the same case or a case with no events.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn concurrent_case_reads_share_a_statement_and_each_gets_its_case(pool: PgPool) {
    use caselog_store::{CaseReader, ReadGroupSettings};
    let log = EventLog::new(pool.clone());
    for case in 0..20 {
        let case_id = format!("LS{case}");
        log.append(&case_id, v(0), "court:LS", rows(case % 4 + 1))
            .await
            .unwrap();
        if case % 3 == 0 {
            log.append(&case_id, v((case % 4 + 1) as u64), "court:LS", rows(2))
                .await
                .unwrap();
        }
    }
    let reader = CaseReader::start(
        log.clone(),
        ReadGroupSettings {
            max_in_flight: 1,
            ..ReadGroupSettings::default()
        },
    );
    // Every case twice, and cases never written.
    let wanted: Vec<String> = (0..20).chain(0..20).chain(100..110).map(|c| format!("LS{c}")).collect();
    let answers = futures_util::future::join_all(wanted.iter().map(|case_id| reader.read_case(case_id))).await;
    for (case_id, answer) in wanted.iter().zip(answers) {
        let read = answer.unwrap();
        let alone = log.read_case(case_id).await.unwrap();
        assert_eq!(read, alone, "{case_id}");
        assert!(read.iter().all(|e| &e.case_id == case_id));
        assert!(read.windows(2).all(|w| w[0].version < w[1].version));
    }
    assert!(
        reader.statements() < wanted.len() as u64 / 2,
        "{} statements for {} reads",
        reader.statements(),
        wanted.len()
    );
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn case_ordered_pages_hold_whole_cases_and_respect_the_cut(pool: PgPool) {
    use caselog_store::rebuild::Cut;
    let log = EventLog::new(pool.clone());
    // Case ids that need escaping in a statement or in COPY's text format, and a case longer
    // than a page.
    let cases = ["a'quote", "b\\slash", "c\ttab", "d-long", "e"];
    for (i, case_id) in cases.iter().enumerate() {
        let n = if *case_id == "d-long" { 70 } else { i + 1 };
        log.append(case_id, v(0), "court:LS", rows(n)).await.unwrap();
    }
    let before_last: Position = sqlx::query_scalar::<_, i64>("SELECT max(position) FROM events WHERE case_id <> 'e'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .try_into()
        .unwrap();
    let late = log.append("a'quote", v(1), "court:LS", rows(2)).await.unwrap();
    let cut_instant = late[0].recorded_at - chrono::TimeDelta::microseconds(1);

    for (cut, expected) in [
        (
            Cut::Position(late[1].position),
            vec![("a'quote", 3), ("b\\slash", 2), ("c\ttab", 3), ("d-long", 70), ("e", 5)],
        ),
        (
            Cut::Position(before_last),
            vec![("a'quote", 1), ("b\\slash", 2), ("c\ttab", 3), ("d-long", 70)],
        ),
        (
            Cut::RecordedBy(cut_instant),
            vec![("a'quote", 1), ("b\\slash", 2), ("c\ttab", 3), ("d-long", 70), ("e", 5)],
        ),
    ] {
        let mut pages: Vec<Vec<caselog_store::ReplayRow>> = Vec::new();
        log.read_cases_in_order(cut, 4, |page| {
            pages.push(page);
            std::future::ready(true)
        })
        .await
        .unwrap();
        let mut seen: Vec<(String, u64)> = Vec::new();
        for page in &pages {
            // Whole cases of at least the page size, but for the last page.
            assert!(
                page.len() >= 4 || std::ptr::eq(page, pages.last().unwrap()),
                "{} events",
                page.len()
            );
            for case in page.chunk_by(|a, b| a.case_id == b.case_id) {
                assert!(
                    seen.last().is_none_or(|(id, _)| id.as_str() < case[0].case_id.as_str()),
                    "case {} split across pages or out of order",
                    case[0].case_id
                );
                let versions: Vec<u64> = case.iter().map(|e| e.version.get()).collect();
                for event in case {
                    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                    assert_eq!(data["hearing_type"], "cmh");
                    assert_eq!(event.occurred_on, NaiveDate::from_ymd_opt(2025, 4, 17).unwrap());
                }
                assert_eq!(
                    versions,
                    (1..=case.len() as u64).collect::<Vec<_>>(),
                    "{}",
                    case[0].case_id
                );
                seen.push((case[0].case_id.clone(), case.len() as u64));
            }
        }
        let expected: Vec<(String, u64)> = expected.into_iter().map(|(c, n)| (c.to_owned(), n)).collect();
        assert_eq!(seen, expected, "{cut:?}");
    }
    // A reader that stops after the first page gets one page, and the log is left as it was.
    let mut delivered = 0;
    log.read_cases_in_order(Cut::Position(late[1].position), 4, |_| {
        delivered += 1;
        std::future::ready(false)
    })
    .await
    .unwrap();
    assert_eq!(delivered, 1);
    assert_eq!(count(&pool).await, 83);
}

/// Collects the facts rows a reader is given.
#[derive(Default)]
struct CollectedFacts(Vec<Vec<u8>>);

impl caselog_store::projection::FactsSink for CollectedFacts {
    type Error = std::convert::Infallible;
    fn begin(&mut self, _replaced: bool) {}
    fn row(&mut self, facts: &[u8]) -> Result<(), Self::Error> {
        self.0.push(facts.to_vec());
        Ok(())
    }
}

/// The facts-row statement of the release that brought migration 0010 (verbatim): the JSON and
/// the encoding together. Its pods run beside this release's during a rollout.
const PREVIOUS_RELEASE_FACTS: &str = "INSERT INTO case_facts (case_id, facts, stored, as_of_position)
         SELECT id, f::jsonb, s, $4 FROM UNNEST($1::text[], $2::text[], $3::bytea[]) AS r(id, f, s)
         ON CONFLICT (case_id) DO UPDATE
            SET facts = EXCLUDED.facts, stored = EXCLUDED.stored, as_of_position = EXCLUDED.as_of_position";

async fn facts_columns(pool: &PgPool, case_id: &str) -> (Option<String>, Option<Vec<u8>>) {
    sqlx::query_as("SELECT facts::text, stored FROM case_facts WHERE case_id = $1")
        .bind(case_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn facts_read(log: &EventLog) -> Vec<Vec<u8>> {
    let mut read = CollectedFacts::default();
    log.case_facts_since(0, None, &mut read).await.unwrap().unwrap();
    read.0.sort();
    read.0
}

/// This release writes no JSON; the previous release writes it beside the encoding. Either may
/// lead the projections during a rollout, so each writes over the other's rows, and a step that
/// leaves a case's encoding as it was (its facts unchanged) clears the JSON without emptying
/// what is stored (0010's trigger took that for a writer of JSON alone, leaving a row the
/// table's constraint refuses: the projector would have stopped).
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn this_release_and_the_previous_one_write_over_each_others_facts(pool: PgPool) {
    use caselog_store::projection::FactsRow;
    let log = EventLog::new(pool.clone());
    let previous_release_writes = |json: &'static str, stored: Vec<u8>, position: i64| {
        sqlx::query(PREVIOUS_RELEASE_FACTS)
            .bind(vec!["K1"])
            .bind(vec![json])
            .bind(vec![stored])
            .bind(position)
            .execute(&pool)
    };
    previous_release_writes(r#"{"case_id": "K1", "n": 1}"#, vec![1, 2, 3], 1)
        .await
        .unwrap();
    let at = |p: i64| Position::try_from(p).unwrap();
    let this_release = |stored: Vec<u8>| {
        [FactsRow {
            case_id: "K1".into(),
            stored,
        }]
    };
    assert!(
        log.save_case_facts(&this_release(vec![1, 2, 3]), &[], Position::ZERO, at(2))
            .await
            .unwrap()
    );
    assert_eq!(
        facts_columns(&pool, "K1").await,
        (None, Some(vec![1, 2, 3])),
        "the same encoding, no JSON"
    );
    previous_release_writes(r#"{"case_id": "K1", "n": 3}"#, vec![1, 4], 3)
        .await
        .unwrap();
    assert_eq!(
        facts_read(&log).await,
        vec![vec![1, 4]],
        "the previous release's encoding is read"
    );
    assert!(
        log.save_case_facts(&this_release(vec![1, 5]), &[], at(2), at(4))
            .await
            .unwrap()
    );
    assert_eq!(
        facts_columns(&pool, "K1").await,
        (None, Some(vec![1, 5])),
        "its JSON is not left stale"
    );
    assert_eq!(facts_read(&log).await, vec![vec![1, 5]]);
}

/// A step writes its facts and history rows only when it moves the checkpoint from where it
/// read it: a step whose checkpoint another leader moved meanwhile writes nothing at all.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_step_from_a_moved_checkpoint_writes_nothing(pool: PgPool) {
    use caselog_store::FactsHistoryRow;
    use caselog_store::projection::FactsRow;
    let log = EventLog::new(pool.clone());
    let at = |p: i64| Position::try_from(p).unwrap();
    let step = |stored: Vec<u8>, second: u32| {
        (
            vec![FactsRow {
                case_id: "K1".into(),
                stored: stored.clone(),
            }],
            vec![FactsHistoryRow {
                case_id: "K1".into(),
                recorded_at: chrono::DateTime::from_timestamp(1_750_000_000 + i64::from(second), 0).unwrap(),
                facts: Some(stored),
            }],
        )
    };
    let (facts, history) = step(vec![1, 2], 1);
    assert!(
        log.save_case_facts(&facts, &history, Position::ZERO, at(2))
            .await
            .unwrap()
    );
    let (facts, history) = step(vec![1, 9], 2);
    assert!(
        !log.save_case_facts(&facts, &history, Position::ZERO, at(5))
            .await
            .unwrap(),
        "the checkpoint is no longer at 0"
    );
    assert_eq!(facts_columns(&pool, "K1").await, (None, Some(vec![1, 2])));
    let history_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM case_facts_history")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(history_rows, 1);
    assert_eq!(
        log.checkpoint(caselog_store::projection::CASE_FACTS).await.unwrap(),
        at(2)
    );
    assert!(log.save_case_facts(&facts, &history, at(2), at(5)).await.unwrap());
    assert_eq!(facts_columns(&pool, "K1").await, (None, Some(vec![1, 9])));
}

/// A release before migration 0010 wrote the JSON alone: the encoding beside it would be stale,
/// so it is emptied and the JSON read instead; writing the same JSON again keeps it.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_writer_of_json_alone_empties_the_stored_facts(pool: PgPool) {
    let log = EventLog::new(pool.clone());
    for (case_id, json, stored) in [
        ("K1", r#"{"case_id": "K1", "n": 1}"#, vec![1_u8, 2, 3]),
        ("K2", r#"{"case_id": "K2"}"#, vec![1, 9]),
    ] {
        sqlx::query(PREVIOUS_RELEASE_FACTS)
            .bind(vec![case_id])
            .bind(vec![json])
            .bind(vec![stored])
            .bind(1_i64)
            .execute(&pool)
            .await
            .unwrap();
    }
    // The step of a release before 0010 for K1 (its statement, verbatim).
    sqlx::query(
        "INSERT INTO case_facts (case_id, facts, as_of_position)
         SELECT id, f::jsonb, $3 FROM UNNEST($1::text[], $2::text[]) AS r(id, f)
         ON CONFLICT (case_id) DO UPDATE SET facts = EXCLUDED.facts, as_of_position = EXCLUDED.as_of_position",
    )
    .bind(vec!["K1"])
    .bind(vec![r#"{"case_id": "K1", "n": 2}"#])
    .bind(2_i64)
    .execute(&pool)
    .await
    .unwrap();
    // K1's stored facts would be stale: they are gone, and its JSON is read instead.
    assert_eq!(
        facts_read(&log).await,
        vec![vec![1, 9], br#"{"n": 2, "case_id": "K1"}"#.to_vec()]
    );
    sqlx::query("UPDATE case_facts SET facts = facts, as_of_position = 3 WHERE case_id = 'K2'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(facts_columns(&pool, "K2").await.1, Some(vec![1, 9]));
}

/// The group writer keeps its connection between groups (no pool round trip after each
/// statement), and a kept connection the server has ended is replaced: an append that comes
/// after a second of quiet finds it dead before writing and takes another, and one that comes
/// at once fails as it would have on a pooled connection, telling its caller the store is
/// unavailable, after which the next append writes on a new connection.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_kept_append_connection_that_dies_is_replaced(pool: PgPool) {
    use caselog_store::{GroupAppender, GroupSettings};
    use std::time::Duration;
    let appender = GroupAppender::start(EventLog::new(pool.clone()), GroupSettings::default());
    let writer = || async {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND query LIKE 'INSERT INTO events%' AND pid <> pg_backend_pid()",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pids
    };
    appender.append("LS1", v(0), "court:LS", rows(1)).await.unwrap();
    appender.append("LS1", v(1), "court:LS", rows(1)).await.unwrap();
    let first = writer().await;
    assert_eq!(first.len(), 1, "both appends went through one kept connection");

    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(first[0])
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    appender.append("LS1", v(2), "court:LS", rows(1)).await.unwrap();
    let second = writer().await;
    assert_eq!(second.len(), 1);
    assert_ne!(second, first, "the dead connection was replaced");

    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(second[0])
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let at_once = appender.append("LS1", v(3), "court:LS", rows(1)).await;
    assert!(
        matches!(at_once, Err(Error::Unavailable(_))),
        "an append on the dead connection says the store is unavailable: {at_once:?}"
    );
    appender.append("LS1", v(3), "court:LS", rows(1)).await.unwrap();
    assert_eq!(count(&pool).await, 4);
}

/// Appends are announced (NOTIFY) only while a process other than this one listens: alone on
/// its database, a process would only wake its own LISTEN session. A session that LISTENs but
/// is not named as caselog's listener hears nothing; once named so, it hears the next append
/// after the process has looked again (at most a second later).
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn appends_are_announced_only_while_another_process_listens(pool: PgPool) {
    use sqlx::postgres::PgListener;
    use std::time::Duration;
    let log = EventLog::new(pool.clone());
    let signalling = tokio::spawn(log.clone().run_feed_signalling());
    let listeners = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'caselog feed listener'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        n
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while listeners().await < 1 {
        assert!(std::time::Instant::now() < deadline, "the process never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut outsider = PgListener::connect_with(&pool).await.unwrap();
    outsider.listen("caselog_events").await.unwrap();

    log.append("LS1", v(0), "court:LS", rows(1)).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_millis(1500), outsider.recv()).await;
    assert!(
        heard.is_err(),
        "an append was announced with no other process listening"
    );

    sqlx::query("SET application_name = 'caselog feed listener'")
        .execute(&mut outsider)
        .await
        .unwrap();
    assert_eq!(listeners().await, 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    log.append("LS1", v(1), "court:LS", rows(1)).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), outsider.recv()).await;
    assert!(
        heard.is_ok_and(|n| n.is_ok()),
        "another process listens, and the append was not announced"
    );
    signalling.abort();
}

/// The projection leader reads its own appends from memory, as the log holds them: every append
/// path (a statement, a `COPY`, a group) hands its rows over once committed; a gap (here a
/// refused append's positions) sends the read to the log, which fills it; a follower reads the
/// log. A page from memory carries the data text as sent (compact), one from the log as
/// PostgreSQL prints jsonb (a space after each colon): the same object either way.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn the_projection_leader_reads_its_own_appends_from_memory_as_the_log_holds_them(pool: PgPool) {
    use caselog_store::{FeedPage, ProjectedRow};
    let log = EventLog::new(pool.clone());
    let follower = EventLog::new(pool.clone());
    let before = log.horizon().await.unwrap().safe;
    let leadership = log.try_lead_projections().await.unwrap().unwrap();
    let appender = caselog_store::GroupAppender::start(log.clone(), caselog_store::GroupSettings::default());
    log.append("ONE", v(0), "court:LS", rows(1)).await.unwrap();
    log.append("COPIED", v(0), "court:LS", rows(100)).await.unwrap();
    let mut grouped = tokio::task::JoinSet::new();
    for case in 0..8 {
        let appender = appender.clone();
        grouped.spawn(async move { appender.append(&format!("G{case}"), v(0), "court:LS", rows(2)).await });
    }
    while let Some(appended) = grouped.join_next().await {
        appended.unwrap().unwrap();
    }
    let total = 1 + 100 + 16;
    let as_values = |page: &FeedPage<ProjectedRow>| -> Vec<(Position, String, u64, serde_json::Value)> {
        page.events
            .iter()
            .map(|r| {
                (
                    r.position,
                    r.event.case_id.clone(),
                    r.event.version.get(),
                    serde_json::from_str(&r.event.data).unwrap(),
                )
            })
            .collect()
    };
    let from_log = follower.read_all_projected(before, 1000).await.unwrap();
    let from_memory = log.read_all_projected(before, 1000).await.unwrap();
    assert_eq!(from_memory.events.len(), total);
    assert!(
        from_memory.events.iter().all(|r| !r.event.data.contains(": ")),
        "sent text"
    );
    assert!(
        from_log.events.iter().all(|r| r.event.data.contains(": ")),
        "jsonb's text"
    );
    assert_eq!(as_values(&from_memory), as_values(&from_log));
    let strip = |page: &FeedPage<ProjectedRow>| -> Vec<ProjectedRow> {
        page.events
            .iter()
            .cloned()
            .map(|mut r| {
                r.event.data.clear();
                r
            })
            .collect()
    };
    assert_eq!(
        strip(&from_memory),
        strip(&from_log),
        "ids, types, dates, recording instants"
    );
    assert_eq!(from_memory.next_after, from_log.next_after);
    assert!(!from_memory.full);

    // A refused append takes positions and leaves no rows: the read after it goes to the log.
    let reused = rows(1);
    log.append("GAP", v(0), "court:LS", reused.clone()).await.unwrap();
    let mut clash = rows(2);
    clash[1].event_id = reused[0].event_id;
    let refused = log.append("GAP2", v(0), "court:LS", clash.clone()).await;
    assert!(matches!(refused, Err(Error::DuplicateEventId)), "{refused:?}");
    log.append("AFTER", v(0), "court:LS", rows(3)).await.unwrap();
    let at = from_memory.next_after;
    let page = log.read_all_projected(at, 1000).await.unwrap();
    assert_eq!(
        page.events.iter().map(|r| r.event.case_id.as_str()).collect::<Vec<_>>(),
        ["GAP", "AFTER", "AFTER", "AFTER"],
        "one read from the log across the gap"
    );
    assert!(
        page.events.iter().all(|r| r.event.data.contains(": ")),
        "read from the log"
    );
    assert_eq!(
        as_values(&page),
        as_values(&follower.read_all_projected(at, 1000).await.unwrap())
    );
    // Past the gap, the leader's own appends come from memory again.
    log.append("RESUMED", v(0), "court:LS", rows(2)).await.unwrap();
    let rest = log.read_all_projected(page.next_after, 1000).await.unwrap();
    assert_eq!(rest.events.len(), 2);
    assert!(rest.events.iter().all(|r| !r.event.data.contains(": ")), "from memory");

    // A process that no longer leads holds nothing.
    drop(leadership);
    let after = rest.next_after;
    log.append("LATE", v(0), "court:LS", rows(1)).await.unwrap();
    let late = log.read_all_projected(after, 1000).await.unwrap();
    assert_eq!(late.events.len(), 1);
    assert!(late.events[0].event.data.contains(": "), "read from the log");
}

/// A gap that an append in flight may yet fill ends a page from memory: the log could read no
/// further, and concurrent `COPY`s interleave their positions, so a bulk load meets such gaps
/// all the time. Once that append has committed, the read goes to the log across the gap.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_page_from_memory_stops_at_an_append_in_flight(pool: PgPool) {
    let log = EventLog::new(pool.clone());
    let before = log.horizon().await.unwrap().safe;
    let _leadership = log.try_lead_projections().await.unwrap().unwrap();
    log.append("FIRST", v(0), "court:LS", rows(2)).await.unwrap();
    // Another process's append, in flight: its position taken, its row not committed.
    let mut other = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (event_id, case_id, version, event_type, occurred_on, data, metadata, source)
         VALUES ($1, 'OTHER', 1, 'hearing_listed', '2025-04-17', '{\"hearing_type\": \"cmh\"}', '{}', 'court:LS')",
    )
    .bind(Uuid::new_v4())
    .execute(&mut *other)
    .await
    .unwrap();
    log.append("SECOND", v(0), "court:LS", rows(3)).await.unwrap();
    let cases = |page: &caselog_store::FeedPage<caselog_store::ProjectedRow>| -> Vec<String> {
        page.events.iter().map(|r| r.event.case_id.clone()).collect()
    };

    let page = log.read_all_projected(before, 1000).await.unwrap();
    assert_eq!(cases(&page), ["FIRST", "FIRST"], "up to the gap");
    assert!(
        page.events.iter().all(|r| !r.event.data.contains(": ")),
        "from memory, though rows are held beyond the gap"
    );
    assert!(!page.full);
    let waiting = log.read_all_projected(page.next_after, 1000).await.unwrap();
    assert_eq!(
        cases(&waiting),
        Vec::<String>::new(),
        "nothing to read past the gap yet"
    );
    assert_eq!(waiting.next_after, page.next_after);

    other.commit().await.unwrap();
    let rest = log.read_all_projected(page.next_after, 1000).await.unwrap();
    assert_eq!(cases(&rest), ["OTHER", "SECOND", "SECOND", "SECOND"], "across the gap");
    assert!(rest.events.iter().all(|r| r.event.data.contains(": ")), "from the log");
}
