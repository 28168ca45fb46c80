//! Reporting reads through a streaming replica (`caselog serve --read-database-url`): the read
//! model answers with the replica's state, `min_position` waits for the replica to reach it,
//! and everything that writes (appends, snapshots) stays on the primary.
//!
//! The test makes its own primary and a hot standby of it with `pg_basebackup` on loopback
//! ports (see `caselog_tests::cluster`), and pauses the standby's replay to tell them apart.

use caselog_api::v1 as pb;
use caselog_api::v1::metrics_service_client::MetricsServiceClient;
use caselog_domain::Position;
use caselog_server::ServerLimits;
use caselog_store::{ConnectSettings, EventLog};
use caselog_tests::cluster::{LocalCluster, REPLICATING_HBA};
use caselog_tests::*;
use std::time::{Duration, Instant};
use tonic::Code;

fn d1_query(min_position: u64) -> pb::QueryMetricsRequest {
    pb::QueryMetricsRequest {
        metric_ids: vec!["D1".into()],
        period: Some(pb::PeriodSpec {
            kind: Some(pb::period_spec::Kind::FinancialYear("2025-26".into())),
        }),
        min_position,
        ..Default::default()
    }
}

fn issued(response: &pb::QueryMetricsResponse) -> f64 {
    response.results[0].rows[0].numerator
}

async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < Duration::from_secs(30), "waited 30 s for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reporting_reads_follow_a_streaming_replica_and_honour_min_position() {
    let mut primary = LocalCluster::init("primary", REPLICATING_HBA);
    primary.start("-c wal_level=replica -c max_wal_senders=4");
    let settings = ConnectSettings::default();
    let primary_pool = caselog_store::connect(&primary.url("127.0.0.1", ""), &settings).unwrap();
    caselog_store::MIGRATOR.run(&primary_pool).await.unwrap();
    let mut replica = LocalCluster::replica_of(&primary, "replica");
    replica.start("-c hot_standby=on -c hot_standby_feedback=on");
    let replica_pool = caselog_store::connect(&replica.url("127.0.0.1", ""), &settings).unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&replica_pool)
        .await
        .unwrap();
    assert!(in_recovery, "the replica is a hot standby");

    let primary_log = EventLog::new(primary_pool.clone());
    let limits = ServerLimits {
        health_interval: Duration::from_millis(200),
        snapshots: caselog_app::read_model::SnapshotPolicy {
            check_every: Duration::from_millis(200),
            after_events: 1,
        },
        ..ServerLimits::default()
    };
    let server = TestServer::start_on(primary_log.clone().with_reporting_pool(replica_pool.clone()), limits).await;
    let mut metrics = MetricsServiceClient::new(server.channel.clone());

    // Read-your-writes through the replica: the first case, at its position.
    let first = server.issue_case("LS25C00001").await.events[0].position;
    let answer = metrics.query_metrics(d1_query(first)).await.unwrap().into_inner();
    assert!(answer.position >= first);
    assert_eq!(issued(&answer), 1.0);

    // Snapshots are written, and only the primary can take them.
    eventually("a read-model snapshot on the primary", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM read_model_snapshots")
            .fetch_one(&primary_pool)
            .await
            .unwrap()
            > 0
    })
    .await;

    // The replica stops replaying; the primary goes on, and its projection applies a second case.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica_pool)
        .await
        .unwrap();
    eventually("the replica's replay to pause", || async {
        sqlx::query_scalar::<_, String>("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(&replica_pool)
            .await
            .unwrap()
            == "paused"
    })
    .await;
    let second = server.issue_case("LS25C00002").await.events[0].position;
    eventually("the primary's projection to apply the second case", || async {
        primary_log.case_facts_version().await.unwrap().1 >= Position::try_from(second).unwrap()
    })
    .await;

    // Without min_position the answer is the replica's: the first case only, at its position.
    let behind = metrics.query_metrics(d1_query(0)).await.unwrap().into_inner();
    assert_eq!(issued(&behind), 1.0, "answered from the paused replica");
    assert!(behind.position < second, "{} < {second}", behind.position);
    // With it, the query waits for the replica, then says how far it got.
    let refused = metrics.query_metrics(d1_query(second)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(reason(&refused), "PROJECTION_BEHIND");

    // A query waiting when replay resumes is answered once the replica has the second case.
    let waiting = tokio::spawn({
        let mut metrics = metrics.clone();
        async move { metrics.query_metrics(d1_query(second)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica_pool)
        .await
        .unwrap();
    let caught_up = waiting.await.unwrap().unwrap().into_inner();
    assert!(caught_up.position >= second);
    assert_eq!(issued(&caught_up), 2.0);

    // as_of is folded from the replica's log, and agrees with the primary's answer.
    let as_of = pb::QueryMetricsRequest {
        as_of: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp(),
            nanos: 0,
        }),
        ..d1_query(second)
    };
    let reproduced = metrics.query_metrics(as_of).await.unwrap().into_inner();
    assert_eq!(issued(&reproduced), 2.0);
    server.stop().await;
}
