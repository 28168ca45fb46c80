//! `caselog import`: thousands of events of realistic cases, every line accounted for, and a
//! second import that writes nothing.

use caselog_cli::import::{ImportOptions, LineOutcome, import};
use caselog_domain::event::*;
use caselog_domain::interchange::to_line;
use caselog_domain::{Metadata, NewEvent, Payload};
use caselog_tests::*;
use chrono::{Duration, NaiveDate};
use sqlx::PgPool;
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
            Payload::CaseIssued(CaseIssued {
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
            }),
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

    let first = import(&text, server.anonymous.clone(), &harness_import())
        .await
        .unwrap();
    assert_eq!(
        (first.appended(), first.already_present(), first.rejected()),
        (total, 0, 0),
        "{:?}",
        first.lines.values().find(|o| matches!(o, LineOutcome::Rejected(_)))
    );
    assert_eq!(event_count(&pool).await, total as i64);

    let options = ImportOptions {
        batch_size: 3,
        ..harness_import()
    };
    let second = import(&text, server.anonymous.clone(), &options).await.unwrap();
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

    let report = import(&text, server.anonymous.clone(), &harness_import())
        .await
        .unwrap();
    assert_eq!(report.appended(), good);
    assert_eq!(report.rejected(), 2);
    let LineOutcome::Rejected(why) = &report.lines[&3] else {
        panic!("line 3: {:?}", report.lines[&3])
    };
    assert!(why.contains("stranger") && why.contains("child_id"), "{why}");
    assert!(matches!(&report.lines[&6], LineOutcome::Rejected(why) if why.contains("not a valid event line")));

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
    let report = import(&relabelled, fresh.anonymous.clone(), &options).await.unwrap();
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
    let report = import(&lines.join("\n"), server.anonymous.clone(), &harness_import())
        .await
        .unwrap();
    assert_eq!(report.appended(), total);
    assert_eq!(report.lines[&4], LineOutcome::AlreadyPresent);
    let LineOutcome::Rejected(why) = &report.lines[&lines.len()] else {
        panic!("{:?}", report.lines[&lines.len()])
    };
    assert!(why.contains("used on line 2 with different content"), "{why}");
    assert_eq!(event_count(&pool).await, total as i64);
}

/// Import options of the test harness, which may migrate any history.
fn harness_import() -> ImportOptions {
    ImportOptions {
        token: Some(caselog_tests::HARNESS_TOKEN.to_owned()),
        ..ImportOptions::default()
    }
}
