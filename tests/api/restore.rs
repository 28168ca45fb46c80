//! Point-in-time restore, as docs/operations.md tells an operator to do it: a base backup and
//! the archived WAL bring the database back to an instant; the log is then exactly what had
//! committed by that instant, every event at the position the feed gave it, the projections
//! consistent with it; and after the position sequence is moved past the old head (the one
//! manual step), new events get positions no feed consumer has seen, and a consumer resuming
//! from the old head misses nothing.
//!
//! The test makes its own primary (with `archive_command`), a base backup of it, and a restored
//! cluster with `recovery_target_time`, on loopback ports (see `caselog_tests::cluster`).

use caselog_api::v1 as pb;
use caselog_api::v1::event_feed_service_client::EventFeedServiceClient;
use caselog_api::v1::metrics_service_client::MetricsServiceClient;
use caselog_store::{ConnectSettings, EventLog};
use caselog_tests::cluster::{LocalCluster, REPLICATING_HBA};
use caselog_tests::*;
use std::time::{Duration, Instant};

async fn every_event(server: &TestServer, from: u64) -> Vec<(String, u64)> {
    let page = EventFeedServiceClient::new(server.channel.clone())
        .read_all(pb::ReadAllRequest {
            from_position: from,
            limit: 1000,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    page.events.into_iter().map(|e| (e.case_id, e.position)).collect()
}

async fn cases_issued(server: &TestServer, min_position: u64) -> f64 {
    let response = MetricsServiceClient::new(server.channel.clone())
        .query_metrics(pb::QueryMetricsRequest {
            metric_ids: vec!["D1".into()],
            period: Some(pb::PeriodSpec {
                kind: Some(pb::period_spec::Kind::FinancialYear("2025-26".into())),
            }),
            min_position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    response.results[0].rows[0].numerator
}

#[tokio::test]
async fn a_point_in_time_restore_keeps_feed_positions_and_new_events_never_reuse_one() {
    let mut primary = LocalCluster::init("pitr-primary", REPLICATING_HBA);
    let archive = primary.make_dir("archive");
    primary.start(&format!(
        "-c wal_level=replica -c max_wal_senders=4 -c archive_mode=on -c archive_command='cp %p {}/%f'",
        archive.display()
    ));
    let settings = ConnectSettings::default();
    let primary_pool = caselog_store::connect(&primary.url("127.0.0.1", ""), &settings).unwrap();
    caselog_store::MIGRATOR.run(&primary_pool).await.unwrap();
    let server = TestServer::start_on(
        EventLog::new(primary_pool.clone()),
        caselog_server::ServerLimits::default(),
    )
    .await;
    server.issue_case("LS25C00001").await;
    server.issue_case("LS25C00002").await;
    let backup = LocalCluster::backup_of(&primary, "pitr-backup");

    // After the backup: one case before the instant to restore to, one after it.
    let kept = server.issue_case("LS25C00003").await.events[0].position;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let instant: String =
        sqlx::query_scalar("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
            .fetch_one(&primary_pool)
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lost = server.issue_case("LS25C00004").await.events[0].position;
    let before = every_event(&server, 0).await;
    assert_eq!(cases_issued(&server, lost).await, 4.0);
    server.stop().await;
    // Everything up to the lost case is archived.
    let segment: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(&primary_pool)
        .await
        .unwrap();
    let started = Instant::now();
    while !archive.join(&segment).exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "WAL segment {segment} never archived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The primary stays up (its directory holds the archive); nothing writes to it any more.
    primary_pool.close().await;

    // The restore: the backup, the archive, the instant.
    let mut restored = backup;
    restored.write_data_file("recovery.signal", "");
    restored.start(&format!(
        "-c restore_command='cp {}/%f %p' -c recovery_target_time='{instant}' -c recovery_target_action=promote",
        archive.display()
    ));
    let restored_pool = caselog_store::connect(&restored.url("127.0.0.1", ""), &settings).unwrap();
    let started = Instant::now();
    loop {
        let in_recovery: Result<bool, _> = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&restored_pool)
            .await;
        if in_recovery.as_ref().is_ok_and(|recovering| !recovering) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the restore never finished: {in_recovery:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = TestServer::start_on(
        EventLog::new(restored_pool.clone()),
        caselog_server::ServerLimits::default(),
    )
    .await;

    // The log as it was at the instant: the same events at the same positions, no more.
    let after = every_event(&server, 0).await;
    let expected: Vec<(String, u64)> = before.iter().filter(|(_, p)| *p <= kept).cloned().collect();
    assert_eq!(after, expected);
    assert!(!after.iter().any(|(case, _)| case == "LS25C00004"));
    // The projections are what they were then (restored with the log, in the same database).
    assert_eq!(cases_issued(&server, kept).await, 3.0);

    // The manual step: positions move past the old head, so no event gets a position a
    // consumer may already have seen (the lost case's).
    sqlx::query("SELECT setval('caselog_event_position', $1)")
        .bind(i64::try_from(lost).unwrap() + 1_000)
        .execute(&restored_pool)
        .await
        .unwrap();
    let new = server.issue_case("LS25C00005").await.events[0].position;
    assert!(new > lost + 1_000, "{new} after the old head {lost}");
    // A consumer that had read up to the lost case resumes and gets the new event.
    let resumed = every_event(&server, lost).await;
    assert_eq!(resumed, vec![("LS25C00005".to_owned(), new)]);
    assert_eq!(cases_issued(&server, new).await, 4.0);
    server.stop().await;
}
