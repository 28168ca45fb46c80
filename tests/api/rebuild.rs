//! Rebuilding the projections: equal to the incremental projection, deterministic, verifiable,
//! safe beside concurrent appends and when interrupted.

use caselog_api::v1 as pb;
use caselog_api::v1::admin_service_client::AdminServiceClient;
use caselog_api::v1::metrics_service_client::MetricsServiceClient;
use caselog_app::rebuild::{Outcome, Progress, RebuildOptions, rebuild};
use caselog_cli::generate::{GenerateOptions, load};
use caselog_store::EventLog;
use caselog_tests::AuthChannel;
use caselog_tests::*;
use caselog_workload::WorkloadSettings;
use chrono::NaiveDate;
use sqlx::PgPool;
use std::time::Duration;
use tonic::Code;

/// Loads about `days` working days of national-shaped history ending 30 September 2025.
async fn load_history(pool: &PgPool, seed: u64, days: u64, cases_per_day: f64) {
    let last_day = NaiveDate::from_ymd_opt(2025, 9, 30).unwrap();
    let options = GenerateOptions {
        workload: WorkloadSettings {
            seed,
            first_day: last_day - chrono::Days::new(days),
            last_day,
            cases_per_working_day: cases_per_day,
        },
        resend_rate: 0.0,
        order: caselog_cli::generate::LineOrder::Case,
    };
    load(&options, &EventLog::new(pool.clone()), "test-loader")
        .await
        .unwrap();
}

/// Waits until the live projection has applied everything in the log; returns that position.
async fn caught_up(server: &TestServer, pool: &PgPool) -> u64 {
    let head = EventLog::new(pool.clone()).horizon().await.unwrap().safe.get();
    let mut metrics = MetricsServiceClient::new(server.channel.clone());
    for _ in 0..100 {
        match metrics.query_metrics(national_query(head)).await {
            Ok(_) => return head,
            Err(status) if reason(&status) == "PROJECTION_BEHIND" => continue,
            Err(status) => panic!("query failed: {status:?}"),
        }
    }
    panic!("the projection did not reach {head}");
}

fn national_query(min_position: u64) -> pb::QueryMetricsRequest {
    pb::QueryMetricsRequest {
        metric_ids: vec!["T2".into(), "T4".into(), "S1".into(), "D1".into(), "E1".into()],
        period: Some(pb::PeriodSpec {
            kind: Some(pb::period_spec::Kind::FinancialYear("2025-26".into())),
        }),
        group_by: vec![pb::Dimension::LawType as i32],
        min_position,
        ..Default::default()
    }
}

async fn figures(server: &TestServer, min_position: u64) -> Vec<(String, f64, f64)> {
    let response = MetricsServiceClient::new(server.channel.clone())
        .query_metrics(national_query(min_position))
        .await
        .unwrap()
        .into_inner();
    response
        .results
        .iter()
        .flat_map(|r| {
            r.rows
                .iter()
                .map(|row| (r.metric_id.clone(), row.numerator, row.denominator))
        })
        .collect()
}

/// Runs a rebuild over gRPC to the end: the summary and how many progress messages came first.
async fn rebuild_over_grpc(
    channel: AuthChannel,
    verify_only: bool,
) -> Result<(pb::RebuildSummary, usize), tonic::Status> {
    let mut stream = AdminServiceClient::new(channel)
        .rebuild_projections(pb::RebuildProjectionsRequest { verify_only })
        .await?
        .into_inner();
    let mut progress = 0;
    while let Some(update) = stream.message().await? {
        match update.update {
            Some(pb::rebuild_projections_response::Update::Progress(p)) => {
                assert!(p.events_processed <= p.events_total, "{p:?}");
                progress += 1;
            }
            Some(pb::rebuild_projections_response::Update::Summary(summary)) => return Ok((summary, progress)),
            None => panic!("an empty update"),
        }
    }
    panic!("the stream ended without a summary")
}

async fn rows_in(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_rebuild_equals_the_incremental_projection_and_repeats_exactly(pool: PgPool) {
    load_history(&pool, 11, 90, 12.0).await;
    let server = TestServer::start(pool.clone()).await;
    let head = caught_up(&server, &pool).await;
    let before = figures(&server, head).await;

    let (verified, _) = rebuild_over_grpc(server.channel.clone(), true).await.unwrap();
    let report = verified.verify.clone().unwrap();
    assert!(report.identical, "{report:?}");
    assert_eq!(report.live_digest, verified.digest);
    assert!(!verified.switched);
    assert_eq!(verified.position, head);
    assert_eq!(
        rows_in(&pool, "pg_tables WHERE tablename = 'case_facts_rebuild'").await,
        0
    );

    let (first, _) = rebuild_over_grpc(server.channel.clone(), false).await.unwrap();
    let (second, _) = rebuild_over_grpc(server.channel.clone(), false).await.unwrap();
    assert!(first.switched && second.switched);
    assert_eq!(second.generation, first.generation + 1);
    assert_eq!(first.digest, verified.digest, "a rebuild equals the incremental state");
    assert_eq!(second.digest, first.digest, "two rebuilds of one log are identical");
    let cases: i64 = sqlx::query_scalar("SELECT count(DISTINCT case_id) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(first.cases as i64, cases);
    assert_eq!(rows_in(&pool, "case_facts").await, cases);
    assert_eq!(
        figures(&server, head).await,
        before,
        "queries answer the same after the switch"
    );

    // The switched-in table goes on being projected incrementally.
    let appended = server.issue_case("AFTER-REBUILD").await.events[0].position;
    let after = figures(&server, appended).await;
    assert_ne!(after, before);
    let (again, _) = rebuild_over_grpc(server.channel.clone(), true).await.unwrap();
    assert!(again.verify.unwrap().identical);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn verify_reports_a_corrupted_projection_row_and_changes_nothing(pool: PgPool) {
    load_history(&pool, 12, 60, 12.0).await;
    let server = TestServer::start(pool.clone()).await;
    let head = caught_up(&server, &pool).await;
    let rows = stored_facts(&pool).await;
    let (victim, mut corrupted) = rows
        .iter()
        .find(|(_, f)| f["law_type"] == "public" && f["closed_on"].is_null())
        .cloned()
        .unwrap();
    corrupted["closed_on"] = "2025-06-02".into();
    overwrite_stored_facts(&pool, &victim, corrupted).await;
    // Another case's row as written before migration 0010: its JSON alone. The same facts, so
    // not a difference.
    let (as_json, facts) = rows.iter().find(|(case_id, _)| *case_id != victim).unwrap();
    sqlx::query("UPDATE case_facts SET facts = $2::jsonb, stored = NULL WHERE case_id = $1")
        .bind(as_json)
        .bind(facts.to_string())
        .execute(&pool)
        .await
        .unwrap();

    let (summary, _) = rebuild_over_grpc(server.channel.clone(), true).await.unwrap();
    let report = summary.verify.unwrap();
    assert!(!report.identical);
    assert_ne!(report.live_digest, summary.digest);
    assert_eq!(report.differing_cases, 1);
    assert_eq!(report.case_examples[0].case_id, victim);
    assert_eq!(report.case_examples[0].differs_in, vec!["closed_on".to_owned()]);
    assert!(
        report.metrics.iter().any(|m| m.metric.starts_with("S1")),
        "a case closed in error leaves the open stock: {:?}",
        report.metrics
    );
    // Verifying switched nothing: the corrupted row is still live until a rebuild replaces it.
    let live = stored_facts(&pool).await;
    let closed = &live.iter().find(|(case_id, _)| *case_id == victim).unwrap().1["closed_on"];
    assert_eq!(closed, "2025-06-02");

    rebuild_over_grpc(server.channel.clone(), false).await.unwrap();
    let (after, _) = rebuild_over_grpc(server.channel.clone(), true).await.unwrap();
    assert!(after.verify.unwrap().identical);
    assert!(figures(&server, head).await.iter().all(|(_, n, d)| n <= d || *d == 0.0));
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_rebuild_racing_appends_loses_and_doubles_nothing(pool: PgPool) {
    load_history(&pool, 13, 120, 15.0).await;
    let server = TestServer::start(pool.clone()).await;
    caught_up(&server, &pool).await;

    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut client = server.client();
            tokio::spawn(async move {
                for i in 0..25 {
                    let events = vec![
                        event("2025-04-17", issued_public(&["c1"])),
                        event("2025-04-22", allocated("fca-1", pb::AllocationRole::Guardian)),
                        event("2025-04-24", seen("c1")),
                    ];
                    client
                        .append_events(append(&format!("RACE-{w}-{i}"), events))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // Small pages keep the rebuild running while the writers append.
    let log = EventLog::new(pool.clone());
    let (progress, _) = tokio::sync::watch::channel(None);
    let options = RebuildOptions {
        verify_only: false,
        page_events: 300,
    };
    let summary = rebuild(&log, &options, &progress).await.unwrap();
    assert!(matches!(summary.outcome, Outcome::Switched { .. }));
    for writer in writers {
        writer.await.unwrap();
    }

    caught_up(&server, &pool).await;
    let (verified, _) = rebuild_over_grpc(server.channel.clone(), true).await.unwrap();
    assert!(verified.verify.unwrap().identical);
    let (cases, facts): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(DISTINCT case_id) FROM events), (SELECT count(*) FROM case_facts)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(facts, cases);
    let raced = stored_facts(&pool)
        .await
        .iter()
        .filter(|(case_id, f)| {
            case_id.starts_with("RACE-") && f["children"][0]["seen_in_person"].as_array().map(Vec::len) == Some(1)
        })
        .count();
    assert_eq!(raced, 100, "every raced case is there once, with its visit once");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_interrupted_rebuild_leaves_the_live_projection_answering(pool: PgPool) {
    load_history(&pool, 14, 90, 15.0).await;
    let server = TestServer::start(pool.clone()).await;
    let head = caught_up(&server, &pool).await;
    let before = figures(&server, head).await;

    // The rebuild's session is killed while it loads (as when its process dies).
    let log = EventLog::new(pool.clone());
    let (progress, mut seen) = tokio::sync::watch::channel::<Option<Progress>>(None);
    let options = RebuildOptions {
        verify_only: false,
        page_events: 100,
    };
    let killer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            seen.wait_for(|p| p.as_ref().is_some_and(|p| p.events_processed > 0))
                .await
                .unwrap();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_locks
                  WHERE locktype = 'advisory' AND classid = x'63617365'::int::oid AND objid = 2
                    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .execute(&pool)
            .await
            .unwrap();
        })
    };
    assert!(rebuild(&log, &options, &progress).await.is_err());
    killer.await.unwrap();
    assert_eq!(figures(&server, head).await, before);

    // A caller that goes away abandons the rebuild too.
    let mut stream = AdminServiceClient::new(server.channel.clone())
        .rebuild_projections(pb::RebuildProjectionsRequest { verify_only: false })
        .await
        .unwrap()
        .into_inner();
    let _ = stream.message().await;
    drop(stream);
    assert_eq!(figures(&server, head).await, before);

    // And it can simply be run again (once the abandoned one has let go of its lock).
    let mut outcome = rebuild_over_grpc(server.channel.clone(), false).await;
    for _ in 0..50 {
        match &outcome {
            Err(status) if reason(status) == "REBUILD_IN_PROGRESS" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                outcome = rebuild_over_grpc(server.channel.clone(), false).await;
            }
            _ => break,
        }
    }
    assert!(outcome.unwrap().0.switched);
    assert_eq!(figures(&server, head).await, before);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn only_one_rebuild_runs_at_a_time(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let held = EventLog::new(pool.clone()).try_lock_rebuild().await.unwrap();
    assert!(held.is_some());
    let status = rebuild_over_grpc(server.channel.clone(), false).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "REBUILD_IN_PROGRESS");
    drop(held);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn loading_cases_that_are_already_recorded_fails_and_writes_nothing(pool: PgPool) {
    load_history(&pool, 15, 30, 10.0).await;
    let before: (i64, i64) = sqlx::query_as("SELECT count(*), max(position) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let last_day = NaiveDate::from_ymd_opt(2025, 9, 30).unwrap();
    let again = GenerateOptions {
        workload: WorkloadSettings {
            seed: 15,
            first_day: last_day - chrono::Days::new(30),
            last_day,
            cases_per_working_day: 10.0,
        },
        resend_rate: 0.0,
        order: caselog_cli::generate::LineOrder::Case,
    };
    let err = load(&again, &EventLog::new(pool.clone()), "test-loader")
        .await
        .unwrap_err();
    assert!(err.detail().contains("already"), "{}", err.detail());
    let after: (i64, i64) = sqlx::query_as("SELECT count(*), max(position) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(after.0, before.0, "nothing was written");
}

/// When a rebuild is switched in, a read model that holds the previous projection goes on
/// answering from it (the rebuilt one is loaded beside it, here held back by a lock on its
/// table) and then answers from the rebuilt one, with the same figures. The recording spans
/// it held are arranged by the rebuilt copy: an `as_of` after the switch finds every case
/// whole, as before it, and folds none.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_read_model_answers_through_a_rebuild_switch_without_a_pause(pool: PgPool) {
    load_history(&pool, 17, 60, 10.0).await;
    let log = EventLog::new(pool.clone());
    while caselog_app::projector::apply_next_page(&log, 5_000)
        .await
        .map(|a| a.from != a.to)
        .unwrap()
    {}
    let head = log.head_position().await.unwrap();
    let query = every_metric_by_law_type(2025);
    let model = caselog_app::ReadModel::new(log.clone());
    let before = model.metrics(query.clone(), None, head).await.unwrap();
    let held_generation = model.stats().await.generation;
    let loaded: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT max(recorded_at) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let as_of_before = model.metrics(query.clone(), Some(loaded), head).await.unwrap().1;
    assert_eq!(as_of_before, before.1, "every case was recorded by then");
    let folded_before = model.stats().await.as_of_folded_cases;

    let (progress, _) = tokio::sync::watch::channel(None);
    let options = RebuildOptions {
        verify_only: false,
        page_events: 5_000,
    };
    let summary = rebuild(&log, &options, &progress).await.unwrap();
    assert!(matches!(summary.outcome, Outcome::Switched { .. }));

    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE case_facts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    for _ in 0..3 {
        let during = tokio::time::timeout(Duration::from_secs(2), model.metrics(query.clone(), None, head))
            .await
            .expect("answered from the held copy, not after loading the rebuilt one")
            .unwrap();
        assert_eq!(during, before);
        assert_eq!(model.stats().await.generation, held_generation);
    }
    blocker.rollback().await.unwrap();

    let mut switched = false;
    for _ in 0..200 {
        if model.stats().await.generation != held_generation {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(switched, "the rebuilt projection was never switched in");
    assert_eq!(model.metrics(query.clone(), None, head).await.unwrap(), before);
    assert_eq!(model.metrics(query, Some(loaded), head).await.unwrap().1, as_of_before);
    assert_eq!(
        model.stats().await.as_of_folded_cases,
        folded_before,
        "the spans came through the switch"
    );
}
