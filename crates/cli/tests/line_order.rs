//! `caselog generate --order recorded` interleaves cases day by day and keeps each case's own
//! lines in the order the case-by-case file has them.

#![allow(clippy::unwrap_used)]

use caselog_cli::generate::{GenerateOptions, LineOrder, write_ndjson};
use caselog_workload::WorkloadSettings;
use chrono::NaiveDate;
use std::collections::BTreeMap;

fn lines(order: LineOrder) -> Vec<String> {
    let options = GenerateOptions {
        workload: WorkloadSettings {
            seed: 3,
            first_day: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
            last_day: NaiveDate::from_ymd_opt(2024, 6, 30).unwrap(),
            cases_per_working_day: 3.0,
        },
        resend_rate: 0.01,
        order,
    };
    let mut out = Vec::new();
    write_ndjson(&options, &mut out).unwrap();
    String::from_utf8(out).unwrap().lines().map(str::to_owned).collect()
}

fn case_of(line: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    value["case_id"].as_str().unwrap().to_owned()
}

fn by_case(lines: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut cases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        cases.entry(case_of(line)).or_default().push(line.clone());
    }
    cases
}

#[test]
fn recording_order_interleaves_cases_and_keeps_each_cases_order() {
    let grouped = lines(LineOrder::Case);
    let recorded = lines(LineOrder::Recorded);
    assert_eq!(grouped.len(), recorded.len());
    assert_eq!(by_case(&grouped), by_case(&recorded), "each case's lines, in its order");
    // A case-by-case file changes case once per case; a recording-order one far more often.
    let switches = |lines: &[String]| lines.windows(2).filter(|w| case_of(&w[0]) != case_of(&w[1])).count();
    let cases = by_case(&grouped).len();
    assert_eq!(switches(&grouped), cases - 1);
    assert!(
        switches(&recorded) > 3 * cases,
        "{} switches for {cases} cases",
        switches(&recorded)
    );
    // A case is issued the day it is recorded, so issues come in the generator's case order.
    let issued: Vec<String> = recorded
        .iter()
        .filter(|l| l.contains("\"case_issued\""))
        .map(|l| case_of(l))
        .collect();
    assert!(issued.len() >= cases);
    let mut sorted = issued.clone();
    sorted.sort_by_key(|c| c[5..].to_owned());
    assert_eq!(issued, sorted, "cases are issued in the order they were generated");
}
