//! The service's database role: everything the service does works under it, and it cannot
//! change or remove a row of the log or of the audit trail.

use caselog_api::v1 as pb;
use caselog_api::v1::admin_service_client::AdminServiceClient;
use caselog_api::v1::metrics_service_client::MetricsServiceClient;
use caselog_tests::*;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// A login role for this test only, dropped with everything it owns when the test ends.
struct ServiceRole {
    name: String,
    owner: PgPool,
}

impl ServiceRole {
    async fn create(owner: &PgPool) -> ServiceRole {
        let name = format!("caselog_service_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {name} LOGIN PASSWORD 'service-test'"
        )))
        .execute(owner)
        .await
        .unwrap();
        ServiceRole {
            name,
            owner: owner.clone(),
        }
    }

    async fn pool(&self) -> PgPool {
        let options = self
            .owner
            .connect_options()
            .as_ref()
            .clone()
            .username(&self.name)
            .password("service-test");
        PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .unwrap()
    }

    async fn drop_role(self) {
        for statement in [
            format!("DROP OWNED BY {}", self.name),
            format!("DROP ROLE {}", self.name),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&self.owner)
                .await
                .unwrap();
        }
    }
}

fn sql_state(err: &sqlx::Error) -> String {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
        .unwrap_or_default()
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn the_service_role_serves_everything_but_cannot_change_the_log_or_the_trail(pool: PgPool) {
    let role = ServiceRole::create(&pool).await;
    caselog_store::grant_service_role(&pool, &role.name).await.unwrap();
    let service_pool = role.pool().await;
    let server = TestServer::start(service_pool.clone()).await;

    // Appends, reads (audited), projections and a rebuild, all as the service role.
    let appended = server.issue_case("LS1").await;
    let mut client = server.client();
    client
        .get_case(pb::GetCaseRequest { case_id: "LS1".into() })
        .await
        .unwrap();
    MetricsServiceClient::new(server.channel.clone())
        .query_metrics(pb::QueryMetricsRequest {
            metric_ids: vec!["S1".into()],
            period: Some(pb::PeriodSpec {
                kind: Some(pb::period_spec::Kind::FinancialYear("2025-26".into())),
            }),
            min_position: appended.events[0].position,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut rebuild = AdminServiceClient::new(server.channel.clone())
        .rebuild_projections(pb::RebuildProjectionsRequest { verify_only: false })
        .await
        .unwrap()
        .into_inner();
    let mut summary = None;
    while let Some(message) = rebuild.message().await.unwrap() {
        if let Some(pb::rebuild_projections_response::Update::Summary(s)) = message.update {
            summary = Some(s);
        }
    }
    assert_eq!(summary.unwrap().cases, 1);

    // A snapshot of the read model, written and loaded as the role.
    let log = caselog_store::EventLog::new(service_pool.clone());
    caselog_app::ReadModel::new(log.clone()).write_snapshot().await.unwrap();
    let restarted = caselog_app::ReadModel::new(log);
    restarted.load().await.unwrap();
    assert!(restarted.stats().await.loaded_snapshot.is_some());

    // What the role must not do.
    for statement in [
        "UPDATE events SET source = 'forged'",
        "DELETE FROM events",
        "TRUNCATE events",
        "UPDATE audit_records SET outcome = 'OK'",
        "DELETE FROM audit_records",
        "TRUNCATE audit_records",
        "DROP TABLE events",
    ] {
        let err = sqlx::query(statement).execute(&service_pool).await.unwrap_err();
        assert!(
            sql_state(&err) == "42501",
            "{statement}: expected insufficient_privilege (42501), got {err}"
        );
    }
    let err = sqlx::query("CREATE TABLE squatter (x int)")
        .execute(&service_pool)
        .await
        .unwrap_err();
    assert_eq!(sql_state(&err), "42501", "the role creates no tables: {err}");

    // The role cannot choose a row's position or recorded_at (the database's defaults hand them
    // out), and a source must be an organisation name.
    let insert = |columns: &str, values: &str| {
        format!(
            "INSERT INTO events (event_id, case_id, version, event_type, occurred_on, data, source{columns})
             VALUES (gen_random_uuid(), 'LS9', 1, 'case_issued', '2025-04-17', '{{}}', {values})"
        )
    };
    for (statement, refusal) in [
        (insert(", position", "'court:LS', 0"), "42501"),
        (
            insert(", position", "'court:LS', caselog_last_allocated_position() + 5"),
            "42501",
        ),
        (insert(", recorded_at", "'court:LS', '2020-01-01T00:00:00Z'"), "42501"),
        (insert("", "'forged source!'"), "23514"),
        (insert("", "repeat('a', 65)"), "23514"),
        (insert("", "''"), "23514"),
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&service_pool)
            .await
            .unwrap_err();
        assert_eq!(sql_state(&err), refusal, "{statement}: {err}");
    }
    // What the role may write, it writes at a position and an instant the database chose.
    let mut tx = service_pool.begin().await.unwrap();
    let (position, recorded_at, now): (i64, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH inserted AS ({} RETURNING position, recorded_at) SELECT position, recorded_at, now() FROM inserted",
            insert("", "'court:LS'")
        )))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(recorded_at, now);
    assert!(position > appended.events[0].position as i64);
    tx.rollback().await.unwrap();
    assert_eq!(event_count(&pool).await, 1);
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_records")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(audited, 2, "the case read and the rebuild");

    server.stop().await;
    service_pool.close().await;
    role.drop_role().await;
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_role_name_that_is_not_plain_is_refused(pool: PgPool) {
    let err = caselog_store::grant_service_role(&pool, "caselog; DROP TABLE events")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("role name"), "{err}");
}

/// A database whose service role was granted by an earlier release (`INSERT` on the whole log),
/// upgraded through migration 0009: the role keeps appending, now only at positions and instants
/// the database chooses, above the events written before.
#[sqlx::test(migrations = false)]
async fn an_upgraded_service_role_loses_the_columns_the_database_now_chooses(pool: PgPool) {
    caselog_store::MIGRATOR.run_to(8, &pool).await.unwrap();
    let role = ServiceRole::create(&pool).await;
    for statement in [
        format!("GRANT USAGE ON SCHEMA public TO {}", role.name),
        format!("GRANT SELECT, INSERT ON events, audit_records TO {}", role.name),
        format!(
            "GRANT USAGE, SELECT ON SEQUENCE caselog_event_position TO {}",
            role.name
        ),
        format!("INSERT INTO caselog_service_roles (role_name) VALUES ('{}')", role.name),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .unwrap();
    }
    let service_pool = role.pool().await;
    // An append as the earlier release wrote it: positions from the promise function.
    let mut tx = service_pool.begin().await.unwrap();
    let before: i64 = sqlx::query_scalar(
        "INSERT INTO events (position, event_id, case_id, version, event_type, occurred_on, data, source)
         VALUES ((caselog_allocate_positions(1))[1], gen_random_uuid(), 'LS1', 1, 'case_issued', '2025-04-17', '{}', 'court:LS')
         RETURNING position",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    caselog_store::MIGRATOR.run(&pool).await.unwrap();

    let named = sqlx::query(
        "INSERT INTO events (position, event_id, case_id, version, event_type, occurred_on, data, source)
         VALUES (caselog_last_allocated_position() + 1, gen_random_uuid(), 'LS2', 1, 'case_issued', '2025-04-17', '{}', 'court:LS')",
    )
    .execute(&service_pool)
    .await
    .unwrap_err();
    assert_eq!(sql_state(&named), "42501", "{named}");
    let after: i64 = sqlx::query_scalar(
        "INSERT INTO events (event_id, case_id, version, event_type, occurred_on, data, source)
         VALUES (gen_random_uuid(), 'LS2', 1, 'case_issued', '2025-04-17', '{}', 'court:LS') RETURNING position",
    )
    .fetch_one(&service_pool)
    .await
    .unwrap();
    assert!(after > before, "{after} after {before}");
    assert_eq!(event_count(&pool).await, 2);

    service_pool.close().await;
    role.drop_role().await;
}
