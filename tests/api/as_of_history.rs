//! `as_of` answered from the case-facts projection's history (one row per case and recording
//! instant): equal to a fold of the log cut at the instant, at instants between, on and around
//! recordings and midnights; the same history whether the projector wrote it step by step or a
//! rebuild wrote it at once; and not used where it does not reach back to the log's start or the
//! projection has not reached the instant.
//!
//! A test cannot wait for days to pass, so the events' recording instants are spread over weeks
//! after loading (the log's append-only trigger set aside in this test's own database), each
//! case's still following its versions, as appends make them.

use caselog_app::ReadModel;
use caselog_app::projector::{apply_next_page, facts_at};
use caselog_app::rebuild::{RebuildOptions, rebuild};
use caselog_projections::{MetricResult, MetricsQuery};
use caselog_store::EventLog;
use caselog_store::rebuild::Cut;
use caselog_tests::*;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

type HistoryRows = Vec<(String, DateTime<Utc>, Option<Vec<u8>>)>;

/// Recording instants about 17 minutes apart in the order the events happened (so cases
/// interleave and many have events on several days, some on both sides of a midnight), each
/// case's made non-decreasing along its versions; several events of a case may share one.
async fn spread_recording_over_weeks(pool: &PgPool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only_rows")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE events e SET recorded_at = r.at
           FROM (SELECT position, max(at) OVER (PARTITION BY case_id ORDER BY version) AS at
                   FROM (SELECT position, case_id, version,
                                timestamptz '2025-06-01 09:00:00+00'
                                  + (row_number() OVER (ORDER BY occurred_on, position)) * interval '17 minutes'
                                  + (position % 5) * interval '3 minutes' AS at
                           FROM events) ranked) r
          WHERE e.position = r.position",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_append_only_rows")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn project_everything(log: &EventLog) {
    while apply_next_page(log, 500).await.map(|a| a.from != a.to).unwrap() {}
}

async fn folded_figures(log: &EventLog, query: &MetricsQuery, at: DateTime<Utc>) -> Vec<MetricResult> {
    let cases = facts_at(log, Cut::RecordedBy(at)).await.unwrap();
    caselog_projections::compute(query, &cases, caselog_calendar::WorkingCalendar::england_and_wales()).unwrap()
}

/// Instants to ask at: spread evenly over the recordings and beyond both ends, exactly on some
/// recordings and a microsecond either side, and on midnights.
async fn instants(pool: &PgPool) -> Vec<DateTime<Utc>> {
    let (first, last): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT min(recorded_at), max(recorded_at) FROM events")
            .fetch_one(pool)
            .await
            .unwrap();
    let span = last - first;
    let mut out: Vec<DateTime<Utc>> = (0..=12)
        .map(|i| first - chrono::Duration::hours(1) + span * i / 11)
        .collect();
    let on_recordings: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT DISTINCT recorded_at FROM events WHERE position % 97 = 0 ORDER BY recorded_at LIMIT 6",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for at in on_recordings {
        out.extend([
            at - chrono::Duration::microseconds(1),
            at,
            at + chrono::Duration::microseconds(1),
        ]);
    }
    let midnight = |days: i64| {
        (first + chrono::Duration::days(days))
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
    };
    out.extend([
        midnight(3),
        midnight(9) - chrono::Duration::microseconds(1),
        midnight(20),
    ]);
    out
}

async fn history_rows(pool: &PgPool) -> HistoryRows {
    sqlx::query_as("SELECT case_id, recorded_at, facts FROM case_facts_history ORDER BY case_id, recorded_at")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn as_of_from_the_history_equals_a_fold_of_the_log_at_every_instant(pool: PgPool) {
    load_history(&pool, 11, NaiveDate::from_ymd_opt(2025, 9, 30).unwrap(), 150).await;
    spread_recording_over_weeks(&pool).await;
    let log = EventLog::new(pool.clone());
    project_everything(&log).await;
    let appends_per_case: f64 =
        sqlx::query_scalar("SELECT count(*)::float8 / count(DISTINCT case_id) FROM case_facts_history")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        appends_per_case > 2.0,
        "cases recorded in {appends_per_case} appends on average"
    );

    let read_model = ReadModel::new(log.clone()).with_settled_after(std::time::Duration::ZERO);
    let queries = [every_metric_by_law_type(2024), every_metric_by_law_type(2025)];
    for at in instants(&pool).await {
        for query in &queries {
            let (_, answered) = read_model
                .metrics(query.clone(), Some(at), caselog_domain::Position::ZERO)
                .await
                .unwrap();
            assert_eq!(answered, folded_figures(&log, query, at).await, "as_of {at}");
        }
    }
    let stats = read_model.stats().await;
    assert!(
        stats.as_of_history_cases > 10 * stats.as_of_folded_cases.max(1),
        "{} cases from the history, {} folded",
        stats.as_of_history_cases,
        stats.as_of_folded_cases
    );
}

/// The history is a function of the log: a rebuild writes the rows the projector wrote step by
/// step, byte for byte. A history that does not reach back to the log's start is not used (the
/// answers are folded, and still equal), until a rebuild completes it.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_rebuild_writes_the_history_the_projector_wrote_and_completes_it(pool: PgPool) {
    load_history(&pool, 12, NaiveDate::from_ymd_opt(2025, 9, 30).unwrap(), 90).await;
    spread_recording_over_weeks(&pool).await;
    let log = EventLog::new(pool.clone());
    project_everything(&log).await;
    let projected = history_rows(&pool).await;
    assert!(!projected.is_empty());

    // As a database migrated with events already in it starts.
    sqlx::query("UPDATE projection_checkpoints SET history_complete = false")
        .execute(&pool)
        .await
        .unwrap();
    let query = every_metric_by_law_type(2025);
    let at = instants(&pool).await[6];
    let read_model = ReadModel::new(log.clone()).with_settled_after(std::time::Duration::ZERO);
    let (_, answered) = read_model
        .metrics(query.clone(), Some(at), caselog_domain::Position::ZERO)
        .await
        .unwrap();
    assert_eq!(answered, folded_figures(&log, &query, at).await);
    let stats = read_model.stats().await;
    assert_eq!(stats.as_of_history_cases, 0);
    assert!(stats.as_of_folded_cases > 0);

    let (progress, _) = tokio::sync::watch::channel(None);
    rebuild(&log, &RebuildOptions::default(), &progress).await.unwrap();
    assert_eq!(history_rows(&pool).await, projected);
    let complete: bool = sqlx::query_scalar("SELECT history_complete FROM projection_checkpoints")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(complete);
    let later = ReadModel::new(log.clone()).with_settled_after(std::time::Duration::ZERO);
    let (_, answered) = later
        .metrics(query.clone(), Some(at), caselog_domain::Position::ZERO)
        .await
        .unwrap();
    assert_eq!(answered, folded_figures(&log, &query, at).await);
    assert!(later.stats().await.as_of_history_cases > 0);
}

/// An instant the projector has not reached yet is not answered from the history (it would
/// miss the events recorded by then but not projected): the answer is folded.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_instant_beyond_the_projection_is_folded(pool: PgPool) {
    load_history(&pool, 13, NaiveDate::from_ymd_opt(2025, 9, 30).unwrap(), 60).await;
    spread_recording_over_weeks(&pool).await;
    let log = EventLog::new(pool.clone());
    // Project the first part only.
    apply_next_page(&log, 200).await.unwrap();
    let at: DateTime<Utc> = sqlx::query_scalar("SELECT max(recorded_at) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let query = every_metric_by_law_type(2025);
    let read_model = ReadModel::new(log.clone()).with_settled_after(std::time::Duration::ZERO);
    let (_, answered) = read_model
        .metrics(
            query.clone(),
            Some(at - chrono::Duration::hours(30)),
            caselog_domain::Position::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(
        answered,
        folded_figures(&log, &query, at - chrono::Duration::hours(30)).await
    );
    assert_eq!(read_model.stats().await.as_of_history_cases, 0);
}
