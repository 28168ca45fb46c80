//! The metrics API end to end: figures from the projections, read-your-writes, as-of
//! reproduction, exactly-once projection across a crash, and leadership across two servers.

use caselog_api::v1 as pb;
use caselog_api::v1::metrics_service_client::MetricsServiceClient;
use caselog_app::projector::{HistoryCache, apply_next_page, apply_next_page_with, facts_at};
use caselog_store::EventLog;
use caselog_store::rebuild::Cut;
use caselog_tests::*;
use chrono::{Duration, NaiveDate};
use sqlx::PgPool;
use tonic::Code;

fn day(from: &str, n: i64) -> String {
    (NaiveDate::parse_from_str(from, "%Y-%m-%d").unwrap() + Duration::days(n)).to_string()
}

fn t2_query(min_position: u64) -> pb::QueryMetricsRequest {
    pb::QueryMetricsRequest {
        metric_ids: vec!["T2".into(), "S1".into()],
        period: Some(pb::PeriodSpec {
            kind: Some(pb::period_spec::Kind::FinancialQuarter("2024-25 Q3".into())),
        }),
        min_position,
        ..Default::default()
    }
}

fn figure(response: &pb::QueryMetricsResponse, metric: &str) -> (f64, f64, String) {
    let result = response.results.iter().find(|r| r.metric_id == metric).unwrap();
    let row = &result.rows[0];
    (row.numerator, row.denominator, row.display.clone())
}

/// Two s31 cases issued 1 July 2024, one closed on day 181 and one on day 182 (in Oct-Dec 2024).
async fn record_t2_cases(server: &TestServer) -> u64 {
    let mut client = server.client();
    let mut last = 0;
    for (case, closed_after) in [("IN1", 181), ("OUT1", 182)] {
        let events = vec![
            event("2024-07-01", issued_public(&["c1"])),
            event(&day("2024-07-01", closed_after), closed(pb::CaseOutcome::FinalOrder)),
        ];
        let response = client.append_events(append(case, events)).await.unwrap().into_inner();
        last = response.events.last().unwrap().position;
    }
    last
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn figures_follow_the_catalogue_and_state_their_definition(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let last = record_t2_cases(&server).await;
    let mut metrics = MetricsServiceClient::new(server.channel.clone());
    let response = metrics.query_metrics(t2_query(last)).await.unwrap().into_inner();
    assert!(response.position >= last);
    assert_eq!(figure(&response, "T2"), (1.0, 2.0, "50.0".into()));
    let t2 = response.results.iter().find(|r| r.metric_id == "T2").unwrap();
    assert!(t2.definition.contains("issued + 181 days"), "{}", t2.definition);
    assert_eq!(t2.period_label, "financial quarter 2024-25 Q3");
    assert_eq!(
        (t2.period_first.as_str(), t2.period_last.as_str()),
        ("2024-10-01", "2024-12-31")
    );
    // S1 at the period end (31 Dec 2024): both closed by then.
    assert_eq!(figure(&response, "S1.cases").0, 0.0);

    let mut outer = t2_query(last);
    outer.twenty_six_week_limit_days = 182;
    assert_eq!(
        figure(&metrics.query_metrics(outer).await.unwrap().into_inner(), "T2").2,
        "100.0"
    );
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_earlier_report_is_reproduced_with_as_of(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let last = record_t2_cases(&server).await;
    let published_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(&pool).await.unwrap();
    let mut metrics = MetricsServiceClient::new(server.channel.clone());
    let before = metrics.query_metrics(t2_query(last)).await.unwrap().into_inner();

    // Late news: the OUT1 closure was entered in error (void), and a third case closed in time.
    let mut client = server.client();
    let page = client
        .list_case_events(pb::ListCaseEventsRequest {
            case_id: "OUT1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let closure = page.events.iter().find(|e| e.version == 2).unwrap();
    let void = pb::NewEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_on: "2025-01-15".into(),
        payload: Some(pb::EventPayload {
            kind: Some(pb::event_payload::Kind::EventVoided(pb::EventVoided {
                voided_event_id: closure.event_id.clone(),
                reason: pb::VoidReason::EnteredInError as i32,
            })),
        }),
        metadata: None,
    };
    let late = client
        .append_events(append("OUT1", vec![void]))
        .await
        .unwrap()
        .into_inner();
    let now = metrics
        .query_metrics(t2_query(late.events[0].position))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(figure(&now, "T2"), (1.0, 1.0, "100.0".into()));

    let mut as_of = t2_query(0);
    as_of.as_of = Some(prost_types_timestamp(published_at));
    let reproduced = metrics.query_metrics(as_of).await.unwrap().into_inner();
    assert_eq!(figure(&reproduced, "T2"), figure(&before, "T2"));
    assert_eq!(
        reproduced.position, 0,
        "an as-of answer is not tied to a projection position"
    );
}

fn prost_types_timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn bad_queries_name_their_fields_and_a_lagging_projection_says_so(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let mut metrics = MetricsServiceClient::new(server.channel.clone());
    let bad = pb::QueryMetricsRequest {
        metric_ids: vec!["T99".into()],
        period: Some(pb::PeriodSpec {
            kind: Some(pb::period_spec::Kind::FinancialYear("2024-26".into())),
        }),
        group_by: vec![pb::Dimension::Unspecified as i32],
        twenty_six_week_limit_days: 190,
        ..Default::default()
    };
    let status = metrics.query_metrics(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        bad_fields(&status),
        [
            "metric_ids[0]",
            "period.financial_year",
            "group_by[0]",
            "twenty_six_week_limit_days"
        ]
    );

    let status = metrics.query_metrics(t2_query(1_000_000)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "PROJECTION_BEHIND");
}

async fn projected_facts(pool: &PgPool) -> Vec<serde_json::Value> {
    stored_facts(pool).await.into_iter().map(|(_, facts)| facts).collect()
}

async fn rebuilt_facts(pool: &PgPool) -> Vec<serde_json::Value> {
    facts_at(&EventLog::new(pool.clone()), Cut::RecordedBy(chrono::Utc::now()))
        .await
        .unwrap()
        .into_iter()
        .map(|f| serde_json::to_value(f).unwrap())
        .collect()
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_projection_interrupted_anywhere_ends_where_a_clean_rebuild_does(pool: PgPool) {
    let log = EventLog::new(pool.clone());
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    for c in 0..30 {
        let mut events = vec![event("2025-04-01", issued_public(&["c1", "c2"]))];
        events.push(event("2025-04-03", allocated("fca-1", pb::AllocationRole::Guardian)));
        events.push(event("2025-04-10", seen("c1")));
        client.append_events(append(&format!("K{c}"), events)).await.unwrap();
    }
    server.stop().await;
    // Start the projection over, then drive it in steps of a few events, cancelling steps at
    // arbitrary points as a process killed at any moment would (a dropped future rolls back).
    sqlx::query("UPDATE projection_checkpoints SET position = 0")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM case_facts").execute(&pool).await.unwrap();
    let (mut completed, mut cancelled) = (0, 0);
    // The leader's cache of histories, kept across steps as the projector keeps it: pages of 7
    // split cases, so cached histories are extended page by page.
    let mut histories = HistoryCache::new(1000);
    for attempt in 0u64.. {
        // Budgets vary, and grow so that a loaded machine still finishes; a cancelled step may
        // or may not have committed, which is the point.
        let budget = std::time::Duration::from_micros(200 + (attempt * 7919) % 3000 + attempt * 20);
        match tokio::time::timeout(budget, apply_next_page_with(&log, 7, &mut histories, None)).await {
            Ok(applied) => {
                let applied = applied.unwrap();
                completed += 1;
                if applied.from == applied.to {
                    break;
                }
            }
            Err(_) => cancelled += 1,
        }
        assert!(attempt < 10_000, "the projection never finished");
    }
    assert!(
        completed > 0 && cancelled > 0,
        "completed {completed}, cancelled {cancelled}"
    );
    assert_eq!(projected_facts(&pool).await, rebuilt_facts(&pool).await);
    // Applying again changes nothing.
    let again = apply_next_page(&log, 7).await.unwrap();
    assert_eq!(again.from, again.to);
}

async fn leaders(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND classid = x'63617365'::int::oid AND objid = 1 AND objsubid = 2
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Appends a third public-law case, closed within 26 weeks, through `server`, and returns T2
/// as the server answers once its projection has reached that append.
async fn t2_after_a_third_case(server: &TestServer) -> (f64, f64, String) {
    let more = vec![
        event("2024-07-01", issued_public(&["c1"])),
        event("2024-11-01", closed(pb::CaseOutcome::FinalOrder)),
    ];
    let response = server
        .client()
        .append_events(append("NEW1", more))
        .await
        .unwrap()
        .into_inner();
    t2_at(server, response.events.last().unwrap().position).await
}

/// T2 as `server` answers once its projection has reached `position`.
async fn t2_at(server: &TestServer, position: u64) -> (f64, f64, String) {
    let answer = MetricsServiceClient::new(server.channel.clone())
        .query_metrics(t2_query(position))
        .await
        .unwrap();
    figure(&answer.into_inner(), "T2")
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn one_of_two_servers_leads_and_the_other_takes_over(pool: PgPool) {
    let first = TestServer::start(pool.clone()).await;
    let last = record_t2_cases(&first).await;
    // Alone, the first server leads: its answer reflects the appends.
    assert_eq!(t2_at(&first, last).await.1, 2.0);

    let second = TestServer::start(pool.clone()).await;
    assert_eq!(t2_at(&second, last).await.1, 2.0, "a follower answers too");
    assert_eq!(leaders(&pool).await, 1, "exactly one projector leads");

    first.stop().await; // the leader goes away
    assert_eq!(
        t2_after_a_third_case(&second).await,
        (2.0, 3.0, "66.7".into()),
        "the follower took over"
    );
    assert_eq!(leaders(&pool).await, 1);
}

/// The projector writes its steps on its leadership session. When that session ends under it
/// (the database ends the backend), the next step fails, the server leads again on a new
/// session, and appends made meanwhile are projected.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_leader_whose_session_ends_leads_again_and_projects(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let last = record_t2_cases(&server).await;
    assert_eq!(t2_at(&server, last).await.1, 2.0);
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND classid = x'63617365'::int::oid AND objid = 1 AND objsubid = 2
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ended, 1, "the leader's session was found and ended");
    assert_eq!(t2_after_a_third_case(&server).await, (2.0, 3.0, "66.7".into()));
    assert_eq!(leaders(&pool).await, 1, "led again, once");
}

fn worklist(
    kind: pb::WorklistKind,
    as_at: &str,
    page_size: u32,
    page_token: String,
    min_position: u64,
) -> pb::ListWorklistRequest {
    pb::ListWorklistRequest {
        kind: kind as i32,
        service_area: "A5".into(),
        as_at: as_at.into(),
        within_working_days: 5,
        page_size,
        page_token,
        min_position,
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn worklists_list_what_is_near_or_past_most_urgent_first(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let mut client = server.client();
    // Guardian allocated Thu 17 April 2025: the deadline to see the children is Tue 13 May.
    let events = vec![
        event("2025-04-10", issued_public(&["c1", "c2", "c3", "c4"])),
        event("2025-04-17", allocated("fca-9", pb::AllocationRole::Guardian)),
        event("2025-04-22", seen("c1")),
        event("2025-04-25", ordered("r1", pb::ReportType::FinalAnalysis, "2025-05-20")),
    ];
    client.append_events(append("WL1", events)).await.unwrap();
    let old = vec![event("2024-01-02", issued_public(&["o1"]))];
    let last = client
        .append_events(append("WL2", old))
        .await
        .unwrap()
        .into_inner()
        .events[0]
        .position;
    let mut metrics = MetricsServiceClient::new(server.channel.clone());

    // Fri 9 May: two working days left (12th, 13th); c1 was seen.
    let first = metrics
        .list_worklist(worklist(
            pb::WorklistKind::ChildrenNotSeen,
            "2025-05-09",
            2,
            String::new(),
            last,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.items.iter().map(|i| i.child_id.as_str()).collect::<Vec<_>>(),
        ["c2", "c3"]
    );
    assert!(
        first
            .items
            .iter()
            .all(|i| i.date == "2025-05-13" && i.working_days_left == 2 && i.practitioner_id == "fca-9")
    );
    let second = metrics
        .list_worklist(worklist(
            pb::WorklistKind::ChildrenNotSeen,
            "2025-05-09",
            2,
            first.next_page_token,
            last,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        second.items.iter().map(|i| i.child_id.as_str()).collect::<Vec<_>>(),
        ["c4"]
    );
    assert!(second.next_page_token.is_empty());
    // Thu 1 May: seven working days left (5 May is a bank holiday), beyond the horizon of 5.
    let early = metrics
        .list_worklist(worklist(
            pb::WorklistKind::ChildrenNotSeen,
            "2025-05-01",
            0,
            String::new(),
            0,
        ))
        .await
        .unwrap();
    assert!(early.into_inner().items.is_empty());

    let due = metrics
        .list_worklist(worklist(
            pb::WorklistKind::ReportsDue,
            "2025-05-14",
            0,
            String::new(),
            0,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        due.items
            .iter()
            .map(|i| (i.report_id.as_str(), i.working_days_left))
            .collect::<Vec<_>>(),
        [("r1", 4)]
    );
    let overdue = metrics
        .list_worklist(worklist(
            pb::WorklistKind::ReportsOverdue,
            "2025-05-21",
            0,
            String::new(),
            0,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        overdue
            .items
            .iter()
            .map(|i| (i.report_id.as_str(), i.working_days_left))
            .collect::<Vec<_>>(),
        [("r1", -1)]
    );
    let long = metrics
        .list_worklist(worklist(
            pb::WorklistKind::CasesOpenOver52Weeks,
            "2025-05-09",
            0,
            String::new(),
            0,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        long.items
            .iter()
            .map(|i| (i.case_id.as_str(), i.weeks_open))
            .collect::<Vec<_>>(),
        [("WL2", 70)]
    );

    let mut bad = worklist(pb::WorklistKind::Unspecified, "09/05/2025", 0, "x".into(), 0);
    bad.service_area = "Z1".into();
    let status = metrics.list_worklist(bad).await.unwrap_err();
    assert_eq!(bad_fields(&status), ["kind", "service_area", "as_at", "page_token"]);
}

/// What operators see of the read model (exported as `caselog.read_model.*`): nothing before a
/// query, then every case, the checkpoint, and how long the load took.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn the_read_model_reports_its_size_and_load_time(pool: PgPool) {
    use caselog_app::ReadModel;
    use caselog_projections::WorklistKind;
    let server = TestServer::start(pool.clone()).await;
    for case in ["LS1", "LS2", "LS3"] {
        server.issue_case(case).await;
    }
    server.stop().await;
    let log = EventLog::new(pool);
    loop {
        let applied = apply_next_page(&log, 100).await.unwrap();
        if applied.from == applied.to {
            break;
        }
    }
    let read_model = ReadModel::new(log.clone());
    assert_eq!(read_model.stats().await.cases, 0, "nothing is loaded before a query");
    let head = log.head_position().await.unwrap();
    read_model
        .worklist(
            WorklistKind::CasesOpenOver52Weeks,
            "A5",
            NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(),
            5,
            head,
        )
        .await
        .unwrap();
    let stats = read_model.stats().await;
    assert_eq!(stats.cases, 3);
    assert_eq!(stats.position, head);
    assert!(
        stats.last_full_load.is_some() && stats.last_refresh.is_some(),
        "{stats:?}"
    );
}

/// The figures of `query` from a straightforward fold of the log cut at `at`: every case read
/// and folded again, nothing taken from the projection.
async fn folded_figures(
    pool: &PgPool,
    query: &caselog_projections::MetricsQuery,
    at: chrono::DateTime<chrono::Utc>,
) -> Vec<caselog_projections::MetricResult> {
    let cases = facts_at(&EventLog::new(pool.clone()), Cut::RecordedBy(at))
        .await
        .unwrap();
    caselog_projections::compute(query, &cases, caselog_calendar::WorkingCalendar::england_and_wales()).unwrap()
}

/// Round `round` of six cases recorded in rounds, so that at each instant between rounds some
/// cases are whole, some half recorded, some not begun; case AS5's visit (round 1) is voided in
/// round 4.
async fn append_round(
    client: &mut caselog_api::v1::case_event_service_client::CaseEventServiceClient<AuthChannel>,
    round: usize,
    voided_visit: &mut Option<pb::NewEvent>,
) {
    for case in 0..6usize {
        let id = format!("AS{case}");
        let begins = if case == 5 { 0 } else { case.min(4) };
        let start = day("2024-05-01", 7 * case as i64);
        let on = |n: i64| day(&start, n);
        let events = match round.cmp(&begins) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Equal => {
                let issue = event(
                    &start,
                    if case % 2 == 0 {
                        issued_public(&["a", "b"])
                    } else {
                        issued_private(&["a"])
                    },
                );
                vec![issue, event(&on(2), allocated("fca-1", pb::AllocationRole::Lead))]
            }
            std::cmp::Ordering::Greater => match round - begins {
                1 => {
                    let visit = event(&on(9 + case as i64), seen("a"));
                    if case == 5 {
                        *voided_visit = Some(visit.clone());
                    }
                    vec![visit]
                }
                2 => vec![event(&on(20), ordered("R1", pb::ReportType::Section7, &on(80)))],
                3 if case == 5 => vec![event(
                    &on(30),
                    voided(voided_visit.as_ref().unwrap(), pb::VoidReason::EnteredInError),
                )],
                3 => vec![event(&on(70), filed("R1", pb::ReportType::Section7))],
                4 => vec![event(&on(150 + 10 * case as i64), closed(pb::CaseOutcome::FinalOrder))],
                _ => continue,
            },
        };
        client.append_events(append(&id, events)).await.unwrap();
    }
}

async fn database_now(pool: &PgPool) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT now()").fetch_one(pool).await.unwrap()
}

/// Applies every event to the case-facts projection.
async fn project_everything(log: &EventLog) {
    while apply_next_page(log, 1_000).await.map(|a| a.from != a.to).unwrap() {}
}

/// The cases of [`append_round`]. The last round is appended just before the questions (the
/// read model's copy may not have it). Each `as_of` answer equals a fold of the log cut at its
/// instant.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn as_of_at_any_instant_equals_a_fold_of_the_log_as_recorded_then(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let mut instants = Vec::new();
    let mut voided_visit = None;
    for round in 0..6 {
        append_round(&mut client, round, &mut voided_visit).await;
        instants.push(database_now(&pool).await);
    }
    let read_model = caselog_app::ReadModel::new(EventLog::new(pool.clone()));
    let query = every_metric_by_law_type(2024);
    let before_any = instants[0] - chrono::Duration::seconds(1);
    for at in std::iter::once(before_any).chain(instants) {
        let expected = folded_figures(&pool, &query, at).await;
        let (_, answered) = read_model
            .metrics(query.clone(), Some(at), caselog_domain::Position::ZERO)
            .await
            .unwrap();
        assert_eq!(answered, expected, "as_of {at}");
    }
}

/// A read model asked between appends: each question after a round is answered by a copy that
/// has taken in the new cases and widened the spans of the old ones since the last question
/// (no fresh read of the spans), and every answer at every instant so far equals a fold of the
/// log cut there.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn as_of_answers_equal_a_fold_while_the_log_grows_between_questions(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let read_model = caselog_app::ReadModel::new(EventLog::new(pool.clone()));
    let query = every_metric_by_law_type(2024);
    let (mut instants, mut voided_visit) = (Vec::new(), None);
    for round in 0..6 {
        append_round(&mut client, round, &mut voided_visit).await;
        instants.push(database_now(&pool).await);
        let head: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
        let head = caselog_domain::Position::try_from(u64::try_from(head).unwrap()).unwrap();
        // A question now waits for the projection to reach the round, and refreshes the copy.
        let (position, _) = read_model.metrics(query.clone(), None, head).await.unwrap();
        assert!(position >= head, "the copy took in round {round}");
        for &at in &instants {
            let (_, answered) = read_model.metrics(query.clone(), Some(at), head).await.unwrap();
            assert_eq!(
                answered,
                folded_figures(&pool, &query, at).await,
                "round {round}, as_of {at}"
            );
        }
    }
    assert_eq!(read_model.stats().await.cases, 6);
}

/// At a settled instant (long enough ago that nothing recorded by then can still commit; here
/// the read model is told any instant is), each straddling case is taken again once (from the
/// history or folded): the second question at that instant takes none, asking about another
/// instant takes them again, and every answer still equals a fold of the log cut there, also
/// after the log has moved on.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn as_of_at_a_settled_instant_folds_each_straddling_case_once(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut client = server.client();
    let (mut instants, mut voided_visit) = (Vec::new(), None);
    for round in 0..4 {
        append_round(&mut client, round, &mut voided_visit).await;
        instants.push(database_now(&pool).await);
    }
    let read_model =
        caselog_app::ReadModel::new(EventLog::new(pool.clone())).with_settled_after(std::time::Duration::ZERO);
    let query = every_metric_by_law_type(2024);
    let other_query = every_metric_by_law_type(2025);
    let ask = |query: &caselog_projections::MetricsQuery, at| {
        let (read_model, query) = (read_model.clone(), query.clone());
        async move {
            read_model
                .metrics(query, Some(at), caselog_domain::Position::ZERO)
                .await
                .unwrap()
                .1
        }
    };
    // Cases taken again at an instant: from the projection's history, or folded from the log.
    let folded = || async {
        let stats = read_model.stats().await;
        stats.as_of_folded_cases + stats.as_of_history_cases
    };
    let at = instants[1];
    let first = ask(&query, at).await;
    assert_eq!(first, folded_figures(&pool, &query, at).await);
    let after_first = folded().await;
    assert!(after_first > 0, "cases straddle {at}");
    // Another question at the same instant: nothing folded again.
    assert_eq!(
        ask(&other_query, at).await,
        folded_figures(&pool, &other_query, at).await
    );
    assert_eq!(folded().await, after_first);
    // The log moves on: cases whole at the instant before are now partial there and folded, the
    // ones kept are not, and the answer is still the fold of the log cut there.
    for round in 4..6 {
        append_round(&mut client, round, &mut voided_visit).await;
    }
    assert_eq!(ask(&query, at).await, folded_figures(&pool, &query, at).await);
    let after_more = folded().await;
    assert!(
        after_more - after_first < after_first,
        "{after_first} then {after_more}"
    );
    // Another instant is folded afresh.
    let elsewhere = ask(&query, instants[2]).await;
    assert_eq!(elsewhere, folded_figures(&pool, &query, instants[2]).await);
    assert!(folded().await > after_more);
}

/// A read model that starts after a snapshot was written loads it and the rows written after it:
/// its figures now, and as of every instant (its recording spans came in the snapshot too),
/// equal a fold of the log. A snapshot that cannot be read is passed over for the rows.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_read_model_loaded_from_a_snapshot_and_the_rows_after_it_answers_as_a_fold(pool: PgPool) {
    use caselog_app::ReadModel;
    // The server writes no snapshot of its own, so that the ones here are the test's.
    let limits = caselog_server::ServerLimits {
        snapshots: caselog_app::read_model::SnapshotPolicy {
            after_events: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let server = TestServer::start_with(pool.clone(), limits).await;
    let mut client = server.client();
    let log = EventLog::new(pool.clone());
    let (mut instants, mut voided_visit) = (Vec::new(), None);
    for round in 0..3 {
        append_round(&mut client, round, &mut voided_visit).await;
        instants.push(database_now(&pool).await);
    }
    project_everything(&log).await;
    let first = ReadModel::new(log.clone());
    let snapshot = first.write_snapshot().await.unwrap().expect("no snapshot existed");
    assert_eq!(
        (snapshot.cases, snapshot.position),
        (4, log.head_position().await.unwrap())
    );
    assert_eq!(first.write_snapshot().await.unwrap(), None, "one as recent exists");

    for round in 3..6 {
        append_round(&mut client, round, &mut voided_visit).await;
        instants.push(database_now(&pool).await);
    }
    project_everything(&log).await;
    let head = log.head_position().await.unwrap();
    let query = every_metric_by_law_type(2024);
    let expected_now = folded_figures(&pool, &query, database_now(&pool).await).await;

    let second = ReadModel::new(log.clone());
    second.load().await.unwrap();
    let stats = second.stats().await;
    assert_eq!(
        (stats.cases, stats.position, stats.loaded_snapshot),
        (6, head, Some(snapshot.position))
    );
    let (_, now) = second.metrics(query.clone(), None, head).await.unwrap();
    assert_eq!(now, expected_now, "snapshot and the rows after it");
    for &at in &instants {
        let (_, answered) = second.metrics(query.clone(), Some(at), head).await.unwrap();
        assert_eq!(answered, folded_figures(&pool, &query, at).await, "as_of {at}");
    }

    // A newer snapshot replaces the older one, even while a rebuild holds its lock.
    let mut rebuilding = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(x'63617365'::int, 2)")
        .execute(&mut *rebuilding)
        .await
        .unwrap();
    let rewritten = second
        .write_snapshot()
        .await
        .unwrap()
        .expect("the copy is past the snapshot");
    sqlx::query("SELECT pg_advisory_unlock(x'63617365'::int, 2)")
        .execute(&mut *rebuilding)
        .await
        .unwrap();
    assert_eq!(rewritten.position, head);
    let kept: Vec<i64> = sqlx::query_scalar("SELECT position FROM read_model_snapshots")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(kept, [i64::from(head)]);

    // A snapshot whose first part is not of this format's encoding.
    sqlx::query("UPDATE read_model_snapshot_parts SET data = '\\xffffff' WHERE part = 0")
        .execute(&pool)
        .await
        .unwrap();
    let third = ReadModel::new(log.clone());
    let (_, now) = third.metrics(query.clone(), None, head).await.unwrap();
    assert_eq!(now, expected_now, "from every case's row");
    let stats = third.stats().await;
    assert_eq!((stats.cases, stats.loaded_snapshot), (6, None));
}
