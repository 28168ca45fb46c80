//! Statistical disclosure through `QueryMetrics`: a reporting or practice client never learns a
//! count of 1-4 below national level, whether it asks with a filter, groups, or subtracts.

use caselog_api::v1 as pb;
use caselog_api::v1::event_payload::Kind;
use caselog_api::v1::metrics_service_client::MetricsServiceClient;
use caselog_tests::*;
use sqlx::PgPool;
use tonic::Code;

fn issued_in(area: &str, court: &str) -> Kind {
    Kind::CaseIssued(pb::CaseIssued {
        law_type: pb::LawType::Public as i32,
        application_types: vec![pb::ApplicationType::S31Care as i32],
        court_code: court.into(),
        service_area: area.into(),
        local_authority_code: "E08000035".into(),
        children: vec![child("c1", "2019-06")],
        received_on: String::new(),
    })
}

/// Open cases: A5 12 (at LS), A3 2 (at MA), A1 7 (at NE); 21 nationally. Returns the last position.
async fn open_cases(server: &TestServer) -> u64 {
    let mut last = 0;
    for (area, court, n) in [("A5", "LS", 12), ("A3", "MA", 2), ("A1", "NE", 7)] {
        for i in 0..n {
            let response = server
                .client()
                .append_events(append(
                    &format!("{court}25C{i:05}"),
                    vec![event("2025-04-17", issued_in(area, court))],
                ))
                .await
                .unwrap()
                .into_inner();
            last = response.events[0].position;
        }
    }
    last
}

fn query(
    min_position: u64,
    group_by: &[pb::Dimension],
    filters: &[(pb::Dimension, &[&str])],
) -> pb::QueryMetricsRequest {
    pb::QueryMetricsRequest {
        metric_ids: vec!["S1.cases".into()],
        period: Some(pb::PeriodSpec {
            kind: Some(pb::period_spec::Kind::Month("2025-05".into())),
        }),
        group_by: group_by.iter().map(|d| *d as i32).collect(),
        filters: filters
            .iter()
            .map(|(d, values)| pb::DimensionFilter {
                dimension: *d as i32,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            })
            .collect(),
        min_position,
        ..Default::default()
    }
}

async fn rows(
    server: &TestServer,
    token: &str,
    request: pb::QueryMetricsRequest,
) -> Result<Vec<pb::MetricRow>, tonic::Status> {
    MetricsServiceClient::new(server.channel_with(token))
        .query_metrics(request)
        .await
        .map(|r| r.into_inner().results.remove(0).rows)
}

/// The shown count of the only row, or None when suppressed.
fn single(rows: &[pb::MetricRow]) -> Option<f64> {
    assert_eq!(rows.len(), 1, "{rows:?}");
    (!rows[0].suppressed).then_some(rows[0].numerator)
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_filter_without_grouping_is_below_national_level(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let last = open_cases(&server).await;
    let reporting = dev_token("reporting");
    let area = |a: &'static [&'static str]| query(last, &[], &[(pb::Dimension::ServiceArea, a)]);
    // Nationally the figure is published.
    assert_eq!(
        single(&rows(&server, &reporting, query(last, &[], &[])).await.unwrap()),
        Some(21.0)
    );
    // A3 holds 2 cases: hidden, however it is asked.
    assert_eq!(single(&rows(&server, &reporting, area(&["A3"])).await.unwrap()), None);
    let by_law = rows(
        &server,
        &reporting,
        query(
            last,
            &[pb::Dimension::LawType],
            &[(pb::Dimension::ServiceArea, &["A3"])],
        ),
    )
    .await
    .unwrap();
    assert!(by_law.iter().all(|r| r.suppressed || r.numerator == 0.0), "{by_law:?}");
    let court = rows(
        &server,
        &reporting,
        query(last, &[], &[(pb::Dimension::Court, &["MA"])]),
    )
    .await
    .unwrap();
    assert_eq!(single(&court), None);
    // An administrator sees exact figures.
    let admin = rows(&server, &dev_token("admin"), area(&["A3"])).await.unwrap();
    assert_eq!(single(&admin), Some(2.0));
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn subtraction_does_not_recover_a_hidden_cell(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let last = open_cases(&server).await;
    let reporting = dev_token("reporting");
    let national = single(&rows(&server, &reporting, query(last, &[], &[])).await.unwrap()).unwrap();
    // National minus the rest: the areas shown must not add up to national minus A3.
    let by_area = rows(&server, &reporting, query(last, &[pb::Dimension::ServiceArea], &[]))
        .await
        .unwrap();
    assert_eq!(by_area.len(), 18, "a row for every service area, zero or not");
    let hidden: Vec<&pb::MetricRow> = by_area.iter().filter(|r| r.suppressed).collect();
    assert!(hidden.len() >= 2, "A3 and a complementary cell are hidden: {by_area:?}");
    let shown: f64 = by_area.iter().filter(|r| !r.suppressed).map(|r| r.numerator).sum();
    assert_ne!(national - shown, 2.0, "national minus the shown areas gives A3 away");
    // Complementary filters: {A1, A3} minus {A1}.
    let among = |a: &'static [&'static str]| query(last, &[], &[(pb::Dimension::ServiceArea, a)]);
    let both = single(&rows(&server, &reporting, among(&["A1", "A3"])).await.unwrap());
    let alone = single(&rows(&server, &reporting, among(&["A1"])).await.unwrap());
    assert!(
        both.is_none() || alone.is_none(),
        "{{A1, A3}} = {both:?} and {{A1}} = {alone:?} would give A3 by subtraction"
    );
    // The same cell asked through another grouping is hidden too.
    let by_law = rows(
        &server,
        &reporting,
        query(
            last,
            &[pb::Dimension::ServiceArea, pb::Dimension::LawType],
            &[(pb::Dimension::ServiceArea, &["A3"])],
        ),
    )
    .await
    .unwrap();
    assert!(by_law.iter().all(|r| r.suppressed || r.numerator == 0.0), "{by_law:?}");
    // Two dimensions besides law type are not a table a suppressed caller may read.
    let status = rows(
        &server,
        &reporting,
        query(last, &[pb::Dimension::ServiceArea], &[(pb::Dimension::Court, &["MA"])]),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "NOT_DISCLOSABLE");
    assert!(status.message().contains("service_area, court"), "{status:?}");
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn practice_clients_see_their_own_area_below_national_level(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let last = open_cases(&server).await;
    let practice = dev_token("practice:A5");
    let own = rows(
        &server,
        &practice,
        query(last, &[], &[(pb::Dimension::ServiceArea, &["A5"])]),
    )
    .await
    .unwrap();
    assert_eq!(single(&own), Some(12.0));
    assert_eq!(
        single(&rows(&server, &practice, query(last, &[], &[])).await.unwrap()),
        Some(21.0)
    );
    for request in [
        query(last, &[], &[(pb::Dimension::ServiceArea, &["A1"])]),
        query(last, &[], &[(pb::Dimension::ServiceArea, &["A5", "A1"])]),
        query(last, &[pb::Dimension::ServiceArea], &[]),
        query(last, &[], &[(pb::Dimension::Court, &["NE"])]),
    ] {
        let status = rows(&server, &practice, request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{request:?}: {status:?}");
        assert_eq!(reason(&status), "SERVICE_AREA_NOT_PERMITTED");
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_as_of_outside_the_representable_range_names_the_field(pool: PgPool) {
    let server = TestServer::start(pool).await;
    for (seconds, nanos) in [(i64::MAX, 0), (-62_135_596_801, 0), (0, -1), (0, 1_000_000_000)] {
        let mut request = query(0, &[], &[]);
        request.as_of = Some(prost_types::Timestamp { seconds, nanos });
        let status = rows(&server, &dev_token("admin"), request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{seconds}.{nanos}: {status:?}");
        assert_eq!(bad_fields(&status), ["as_of"]);
    }
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_batch_with_many_invalid_events_gets_a_bounded_error(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let events: Vec<pb::NewEvent> = (0..400).map(|_| event("not-a-date", seen("c1"))).collect();
    let status = server
        .client()
        .append_events(append("LS25C00001", events))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields = bad_fields(&status);
    assert_eq!(
        fields.len(),
        51,
        "the first 50 violations and a line saying how many more"
    );
    assert!(status.message().len() < 8 * 1024, "{} bytes", status.message().len());
    assert!(status.message().ends_with("more"), "{}", status.message());
    assert_eq!(event_count(&pool).await, 0);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_period_that_is_not_understood_is_named_with_its_value(pool: PgPool) {
    let server = TestServer::start(pool).await;
    for (kind, field, value) in [
        (
            pb::period_spec::Kind::Month("2025-13".into()),
            "period.month",
            "2025-13",
        ),
        (
            pb::period_spec::Kind::FinancialYear("2024-26".into()),
            "period.financial_year",
            "2024-26",
        ),
        (
            pb::period_spec::Kind::CalendarQuarter("2024 Q5".into()),
            "period.calendar_quarter",
            "2024 Q5",
        ),
    ] {
        let mut request = query(0, &[], &[]);
        request.period = Some(pb::PeriodSpec { kind: Some(kind) });
        let status = rows(&server, &dev_token("admin"), request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_fields(&status), [field]);
        assert!(status.message().contains(value), "{status:?}");
    }
}
