//! `caselog import`: thousands of events of realistic cases, every line accounted for, and a
//! second import that writes nothing.

use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_server::CaseEventService;
use caselog_cli::import::{ImportOptions, ImportProgress, LineOutcome, import, import_text};
use caselog_domain::event::*;
use caselog_domain::interchange::to_line;
use caselog_domain::{Metadata, NewEvent, Payload};
use caselog_tests::*;
use chrono::{Duration, NaiveDate};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use uuid::Uuid;

fn new_event(occurred_on: NaiveDate, payload: Payload) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4().into(),
        occurred_on,
        payload,
        metadata: Metadata::default(),
    }
}

/// `cases` cases of 8 to 12 events each, alternating public and private law.
fn ndjson(cases: usize) -> String {
    let mut lines = Vec::new();
    let start = NaiveDate::from_ymd_opt(2024, 4, 1).unwrap();
    for i in 0..cases {
        let case_id = format!("IM{i:05}");
        let issued_on = start + Duration::days((i % 300) as i64);
        let public = i % 3 == 0;
        let children: Vec<Child> = (0..1 + i % 3)
            .map(|c| Child {
                child_id: format!("{case_id}-{c}"),
                birth_month: BirthMonth {
                    year: 2015 + (c as i32),
                    month: 3,
                },
            })
            .collect();
        let mut events = vec![new_event(
            issued_on,
            Payload::CaseIssued(Box::new(CaseIssued {
                law_type: if public { LawType::Public } else { LawType::Private },
                application_types: vec![if public {
                    ApplicationType::S31Care
                } else {
                    ApplicationType::S8ChildArrangements
                }],
                court_code: "LS".into(),
                service_area: "A5".into(),
                local_authority_code: public.then(|| "E08000035".into()),
                children: children.clone(),
                received_on: None,
            })),
        )];
        let role = if public {
            AllocationRole::Guardian
        } else {
            AllocationRole::Lead
        };
        events.push(new_event(
            issued_on + Duration::days(2),
            Payload::CaseAllocated(CaseAllocated {
                practitioner_id: format!("fca-{}", i % 40),
                role,
            }),
        ));
        for (c, child) in children.iter().enumerate() {
            events.push(new_event(
                issued_on + Duration::days(10 + c as i64),
                Payload::ChildSeen(ChildSeen {
                    child_id: child.child_id.clone(),
                    mode: SeenMode::InPerson,
                }),
            ));
        }
        let report_type = if public {
            ReportType::FinalAnalysis
        } else {
            ReportType::Section7
        };
        events.push(new_event(
            issued_on + Duration::days(20),
            Payload::ReportOrdered(ReportOrdered {
                report_id: format!("{case_id}-r"),
                report_type,
                due_on: issued_on + Duration::days(90),
            }),
        ));
        events.push(new_event(
            issued_on + Duration::days(30),
            Payload::HearingListed(HearingListed {
                hearing_type: HearingType::Irh,
                listed_for: issued_on + Duration::days(100),
            }),
        ));
        events.push(new_event(
            issued_on + Duration::days(85),
            Payload::ReportFiled(ReportFiled {
                report_id: format!("{case_id}-r"),
                report_type,
            }),
        ));
        events.push(new_event(
            issued_on + Duration::days(86),
            Payload::RecommendationShared(ChildRef {
                child_id: children[0].child_id.clone(),
            }),
        ));
        events.push(new_event(
            issued_on + Duration::days(150 + (i % 90) as i64),
            Payload::CaseClosed(CaseClosed {
                outcome: CaseOutcome::FinalOrder,
            }),
        ));
        lines.extend(events.iter().map(|e| to_line(&case_id, e)));
    }
    lines.join("\n") + "\n"
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn importing_a_file_twice_writes_it_once(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let text = ndjson(300);
    let total = text.lines().count();
    assert!(total > 2500, "a few thousand events ({total})");

    let first = import_text(&text, server.anonymous.clone(), &harness_import())
        .await
        .unwrap();
    assert_eq!(
        (first.appended(), first.already_present(), first.rejected()),
        (total, 0, 0),
        "{:?}",
        first.rejections().next()
    );
    assert_eq!(event_count(&pool).await, total as i64);

    let options = ImportOptions {
        batch_size: 3,
        ..harness_import()
    };
    let second = import_text(&text, server.anonymous.clone(), &options).await.unwrap();
    assert_eq!(
        (second.appended(), second.already_present(), second.rejected()),
        (0, total, 0)
    );
    assert_eq!(event_count(&pool).await, total as i64);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_rejected_line_does_not_stop_the_lines_around_it(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut lines: Vec<String> = ndjson(2).lines().map(str::to_owned).collect();
    let good = lines.len();
    // Line 3 becomes a visit to a child who is not in the case; line 6 is not JSON.
    let bad_visit = new_event(
        NaiveDate::from_ymd_opt(2024, 4, 20).unwrap(),
        Payload::ChildSeen(ChildSeen {
            child_id: "stranger".into(),
            mode: SeenMode::Virtual,
        }),
    );
    lines.insert(2, to_line("IM00000", &bad_visit));
    lines.insert(5, "{not json".into());
    let text = lines.join("\n");

    let report = import_text(&text, server.anonymous.clone(), &harness_import())
        .await
        .unwrap();
    assert_eq!(report.appended(), good);
    assert_eq!(report.rejected(), 2);
    let Some(LineOutcome::Rejected(why)) = report.outcome(3) else {
        panic!("line 3: {:?}", report.outcome(3))
    };
    assert!(why.contains("stranger") && why.contains("child_id"), "{why}");
    assert!(matches!(report.outcome(6), Some(LineOutcome::Rejected(why)) if why.contains("not a valid event line")));

    // All or nothing: the whole case with the bad line is refused, the other case is recorded.
    let fresh = TestServer::start(pool.clone()).await;
    let mut relabelled = text.replace("IM0000", "AN0000");
    relabelled = relabelled
        .lines()
        .map(|l| match l.find("\"event_id\":\"") {
            Some(at) => format!("{}{}{}", &l[..at + 12], Uuid::new_v4(), &l[at + 12 + 36..]),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let options = ImportOptions {
        all_or_nothing: true,
        ..harness_import()
    };
    let report = import_text(&relabelled, fresh.anonymous.clone(), &options)
        .await
        .unwrap();
    let case0_lines = relabelled.lines().filter(|l| l.contains("AN00000")).count();
    assert_eq!(
        report.rejected(),
        case0_lines + 1,
        "case AN00000 whole, and the non-JSON line"
    );
    let case1_lines = relabelled.lines().filter(|l| l.contains("AN00001")).count();
    assert_eq!(report.appended(), case1_lines);
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_line_repeated_in_the_file_is_already_present_and_a_reused_id_is_rejected(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut lines: Vec<String> = ndjson(2).lines().map(str::to_owned).collect();
    let total = lines.len();
    let repeated = lines[1].clone();
    lines.insert(3, repeated.clone()); // line 4 repeats line 2 within the same case
    let reused = repeated.replace("\"practitioner_id\":\"fca-0\"", "\"practitioner_id\":\"fca-99\"");
    assert_ne!(reused, repeated);
    lines.push(reused); // the same event id with other content
    let report = import_text(&lines.join("\n"), server.anonymous.clone(), &harness_import())
        .await
        .unwrap();
    assert_eq!(report.appended(), total);
    assert_eq!(report.outcome(4), Some(LineOutcome::AlreadyPresent));
    let Some(LineOutcome::Rejected(why)) = report.outcome(lines.len()) else {
        panic!("{:?}", report.outcome(lines.len()))
    };
    assert!(why.contains("used on line 2 with different content"), "{why}");
    assert_eq!(event_count(&pool).await, total as i64);
}

/// Lines of `cases` cases dealt out one event of each case at a time, as a file in recording
/// order spreads each case through it; each case's own events stay in their order.
fn interleaved(cases: usize) -> Vec<String> {
    let text = ndjson(cases);
    let mut by_case: Vec<Vec<String>> = vec![Vec::new(); cases];
    for line in text.lines() {
        let at = line.find("\"case_id\":\"IM").expect("a case id") + 13;
        let case: usize = line[at..at + 5].parse().unwrap();
        by_case[case].push(line.to_owned());
    }
    let longest = by_case.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| by_case.iter().filter_map(move |lines| lines.get(i).cloned()))
        .collect()
}

/// A file whose cases are spread through it goes through a window of a few lines in small
/// requests, several in flight, yet every case is recorded in its file order, the progress
/// accounts for every line, and a second pass (whole-file window) writes nothing.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn a_file_in_recording_order_streams_through_a_small_window_keeping_each_cases_order(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let lines = interleaved(40);
    let total = lines.len();
    let mut text = lines.join("\n");
    text.push('\n');
    let options = ImportOptions {
        window: 100,
        batch_size: 2,
        concurrency: 8,
        ..harness_import()
    };
    let mut last_seen = ImportProgress::default();
    let reader = std::io::Cursor::new(text.clone().into_bytes());
    let report = import(
        reader,
        Some(text.len() as u64),
        server.anonymous.clone(),
        &options,
        |p| last_seen = *p,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.appended(), report.rejected()),
        (total, 0),
        "{:?}",
        report.rejections().next()
    );
    assert_eq!(
        (last_seen.lines_settled, last_seen.appended, last_seen.bytes_read),
        (total, total, text.len() as u64)
    );

    let recorded: Vec<(String, String)> =
        sqlx::query_as("SELECT case_id, event_id::text FROM events ORDER BY case_id, version")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut in_file: Vec<(String, String)> = lines
        .iter()
        .map(|line| {
            let parsed = caselog_domain::interchange::parse_line(line).unwrap();
            (parsed.case_id, parsed.event.event_id.to_string())
        })
        .collect();
    in_file.sort_by(|a, b| a.0.cmp(&b.0)); // stable: each case's lines keep their file order
    assert_eq!(recorded, in_file);

    let again = import_text(&text, server.anonymous.clone(), &harness_import())
        .await
        .unwrap();
    assert_eq!((again.appended(), again.already_present()), (0, total));
    assert_eq!(event_count(&pool).await, total as i64);
}

/// All or nothing sends a case once the window moves past it: a line of that case further on
/// cannot join it and is rejected with the reason, and the other lines are unaffected.
#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn all_or_nothing_rejects_a_line_of_a_case_already_sent_and_says_why(pool: PgPool) {
    let server = TestServer::start(pool.clone()).await;
    let mut lines: Vec<String> = ndjson(3).lines().map(str::to_owned).collect();
    let straggler = lines.remove(1); // case IM00000's allocation, moved to the end
    lines.push(straggler);
    let options = ImportOptions {
        all_or_nothing: true,
        window: 12, // a whole case of these, not two
        ..harness_import()
    };
    let report = import_text(&lines.join("\n"), server.anonymous.clone(), &options)
        .await
        .unwrap();
    let Some(LineOutcome::Rejected(why)) = report.outcome(lines.len()) else {
        panic!("{:?}", report.outcome(lines.len()))
    };
    assert!(
        why.contains("IM00000") && why.contains("already sent whole") && why.contains("window (12 lines)"),
        "{why}"
    );
    assert_eq!((report.appended(), report.rejected()), (lines.len() - 1, 1));
}

/// Import options of the test harness, which may migrate any history.
fn harness_import() -> ImportOptions {
    ImportOptions {
        token: Some(caselog_tests::HARNESS_TOKEN.to_owned()),
        ..ImportOptions::default()
    }
}

/// The service, counting the append requests it gets; optionally as a service from before
/// `AppendEventsToCases`, which answers it UNIMPLEMENTED.
struct Counting {
    inner: caselog_server::CaseEvents,
    many_cases: bool,
    one_case_requests: Arc<AtomicUsize>,
    many_case_requests: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl CaseEventService for Counting {
    async fn append_events(
        &self,
        request: tonic::Request<pb::AppendEventsRequest>,
    ) -> Result<tonic::Response<pb::AppendEventsResponse>, tonic::Status> {
        self.one_case_requests.fetch_add(1, Ordering::Relaxed);
        self.inner.append_events(request).await
    }
    async fn append_events_to_cases(
        &self,
        request: tonic::Request<pb::AppendEventsToCasesRequest>,
    ) -> Result<tonic::Response<pb::AppendEventsToCasesResponse>, tonic::Status> {
        if !self.many_cases {
            return Err(tonic::Status::unimplemented("Method not found"));
        }
        self.many_case_requests.fetch_add(1, Ordering::Relaxed);
        self.inner.append_events_to_cases(request).await
    }
    async fn get_case(
        &self,
        request: tonic::Request<pb::GetCaseRequest>,
    ) -> Result<tonic::Response<pb::GetCaseResponse>, tonic::Status> {
        self.inner.get_case(request).await
    }
    async fn list_case_events(
        &self,
        request: tonic::Request<pb::ListCaseEventsRequest>,
    ) -> Result<tonic::Response<pb::ListCaseEventsResponse>, tonic::Status> {
        self.inner.list_case_events(request).await
    }
}

/// Imports 100 cases into a counting service: (one-case requests, many-case requests).
async fn import_counted(pool: &PgPool, many_cases: bool) -> (usize, usize) {
    let (one_case_requests, many_case_requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (server, addr) = serve_case_events(Counting {
        inner: caselog_server::CaseEvents::new(caselog_store::EventLog::new(pool.clone())),
        many_cases,
        one_case_requests: one_case_requests.clone(),
        many_case_requests: many_case_requests.clone(),
    })
    .await;
    let text = ndjson(100);
    let total = text.lines().count();
    let report = import_text(&text, connect(addr).await, &harness_import())
        .await
        .unwrap();
    assert_eq!(
        (report.appended(), report.rejected()),
        (total, 0),
        "{:?}",
        report.rejections().next()
    );
    assert_eq!(event_count(pool).await, total as i64);
    server.abort();
    (
        one_case_requests.load(Ordering::Relaxed),
        many_case_requests.load(Ordering::Relaxed),
    )
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_import_sends_many_cases_in_a_request(pool: PgPool) {
    let (one_case, many_case) = import_counted(&pool, true).await;
    assert_eq!(one_case, 0);
    assert!(
        (1..50).contains(&many_case),
        "100 cases of about 1,000 events went in {many_case} requests"
    );
}

#[sqlx::test(migrator = "caselog_store::MIGRATOR")]
async fn an_import_into_a_service_without_many_case_requests_sends_each_case_alone(pool: PgPool) {
    let (one_case, many_case) = import_counted(&pool, false).await;
    assert_eq!(many_case, 0);
    assert!(one_case >= 100, "{one_case} requests for 100 cases");
}
