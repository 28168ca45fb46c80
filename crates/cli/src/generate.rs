//! `caselog generate`: writes a synthetic national workload as NDJSON (the interchange format),
//! and prints how its metrics compare with the published reference figures.

use caselog_app::Error;
use caselog_app::ingest::row_of;
use caselog_calendar::WorkingCalendar;
use caselog_domain::england::date_in_england;
use caselog_domain::interchange::to_line;
use caselog_domain::{CaseHistory, HistoryEvent};
use caselog_domain::{NewEvent, Version};
use caselog_projections::metrics::Settings;
use caselog_projections::{CaseFacts, Dimension, MetricId, MetricsQuery, Period, facts_of};
use caselog_store::{EventLog, LoadRow};
use caselog_workload::{Rng, WorkloadSettings, generate};
use chrono::{Datelike, NaiveDate};
use std::io::Write;
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub workload: WorkloadSettings,
    /// Share of lines written twice (a sender's retry).
    pub resend_rate: f64,
    /// How the lines of different cases follow each other.
    pub order: LineOrder,
}

/// The order of an NDJSON workload's lines. Each case's own lines are in its recording order
/// either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LineOrder {
    /// One case after another, each whole: what an export grouped by case looks like.
    #[default]
    Case,
    /// Day by day as the events were recorded, cases interleaved: what a court or local
    /// authority backfilling its history sends. Within a day, cases follow in issue order.
    Recorded,
}

/// Lines waiting for their recording day, earliest first: (day, case serial, line within the
/// case) orders them, and keeps each case's lines in its own order since a case's recording days
/// never decrease.
#[derive(Default)]
struct RecordingOrder {
    waiting: std::collections::BinaryHeap<std::cmp::Reverse<(NaiveDate, u64, u32, String)>>,
}

impl RecordingOrder {
    fn hold(&mut self, day: NaiveDate, case: u64, index: u32, line: String) {
        self.waiting.push(std::cmp::Reverse((day, case, index, line)));
    }

    /// Writes every held line recorded before `day` (all of them with `None`).
    fn release_before(&mut self, day: Option<NaiveDate>, out: &mut impl Write) -> std::io::Result<()> {
        while let Some(std::cmp::Reverse((held_day, ..))) = self.waiting.peek() {
            if day.is_some_and(|day| *held_day >= day) {
                break;
            }
            if let Some(std::cmp::Reverse((.., line))) = self.waiting.pop() {
                writeln!(out, "{line}")?;
            }
        }
        Ok(())
    }
}

/// What was written.
#[derive(Debug, Default)]
pub struct Generated {
    pub cases: u64,
    pub events: u64,
    pub lines: u64,
    pub facts: Vec<CaseFacts>,
}

/// Writes the workload to `out` in `options.order`, each case's lines in its recording order.
/// In recording order, the lines of cases still running are held until their day comes: about
/// a year's lines of the cases open at any moment.
pub fn write_ndjson(options: &GenerateOptions, out: &mut impl Write) -> std::io::Result<Generated> {
    let calendar = WorkingCalendar::england_and_wales();
    let mut noise = Rng::new(options.workload.seed ^ 0x5EED);
    let mut generated = Generated::default();
    let mut failure = None;
    let mut recording = RecordingOrder::default();
    generate(&options.workload, calendar, |case| {
        if failure.is_some() {
            return;
        }
        generated.cases += 1;
        let mut history = Vec::with_capacity(case.len());
        if options.order == LineOrder::Recorded {
            // Cases come in issue order, and no later case records anything before its issue.
            let issued = case.first().map(|e| e.recorded_on);
            if let Err(err) = recording.release_before(issued, out) {
                failure = Some(err);
                return;
            }
        }
        let mut index = 0u32;
        for event in &case {
            let line = to_line(&event.case_id, &event.event);
            let copies = if noise.chance(options.resend_rate) { 2 } else { 1 };
            for _ in 0..copies {
                match options.order {
                    LineOrder::Case => {
                        if let Err(err) = writeln!(out, "{line}") {
                            failure = Some(err);
                            return;
                        }
                    }
                    LineOrder::Recorded => recording.hold(event.recorded_on, generated.cases, index, line.clone()),
                }
                index += 1;
                generated.lines += 1;
            }
            generated.events += 1;
            history.push(HistoryEvent::from(&event.event));
        }
        if let (Some(first), Some(facts)) = (
            case.first(),
            case.first()
                .and_then(|e| facts_of(&e.case_id, &CaseHistory::new(history))),
        ) {
            debug_assert_eq!(first.case_id, *facts.case_id);
            generated.facts.push(facts);
        }
    });
    match failure {
        Some(err) => Err(err),
        None => {
            recording.release_before(None, out)?;
            Ok(generated)
        }
    }
}

/// Events per load transaction.
const LOAD_CHUNK_EVENTS: usize = 20_000;

/// Generates the workload and loads it straight into the log (bulk `COPY`, positions allocated as
/// for any append), each case checked by the domain rules first. Resends are not simulated: they
/// belong to a sender, and `import` exercises them. The database must not hold these cases yet.
pub async fn load(options: &GenerateOptions, log: &EventLog, source: &str) -> Result<Generated, Error> {
    let (chunks, mut received) = mpsc::channel::<Vec<LoadRow>>(2);
    let workload = options.workload.clone();
    let source = source.to_owned();
    let producer = tokio::task::spawn_blocking(move || -> Result<Generated, Error> {
        let calendar = WorkingCalendar::england_and_wales();
        let today = date_in_england(chrono::Utc::now()).max(workload.last_day);
        let mut generated = Generated::default();
        let mut chunk = Vec::with_capacity(LOAD_CHUNK_EVENTS + 256);
        let mut failure = None;
        generate(&workload, calendar, |case| {
            if failure.is_some() {
                return;
            }
            let Some(case_id) = case.first().map(|e| e.case_id.clone()) else {
                return;
            };
            let events: Vec<NewEvent> = case.into_iter().map(|e| e.event).collect();
            let history = match CaseHistory::default().decide(&events, today) {
                Ok(history) => history,
                Err(rejection) => {
                    failure = Some(Error::Internal(format!(
                        "generated case {case_id} breaks a rule at event {}: {:?}",
                        rejection.index, rejection.rejection
                    )));
                    return;
                }
            };
            generated.cases += 1;
            generated.events += events.len() as u64;
            generated.lines += events.len() as u64;
            if let Some(facts) = facts_of(&case_id, &history) {
                generated.facts.push(facts);
            }
            for (i, event) in events.iter().enumerate() {
                let Ok(version) = Version::ZERO.after(i + 1) else {
                    failure = Some(Error::Internal(format!(
                        "generated case {case_id} has more events than a case can hold"
                    )));
                    return;
                };
                chunk.push(LoadRow {
                    case_id: case_id.clone(),
                    version,
                    source: source.clone(),
                    row: row_of(event),
                });
            }
            if chunk.len() >= LOAD_CHUNK_EVENTS {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(LOAD_CHUNK_EVENTS + 256));
                if chunks.blocking_send(full).is_err() {
                    failure = Some(Error::Internal("the loader stopped".into()));
                }
            }
        });
        if let Some(err) = failure {
            return Err(err);
        }
        if !chunk.is_empty() {
            chunks
                .blocking_send(chunk)
                .map_err(|_| Error::Internal("the loader stopped".into()))?;
        }
        Ok(generated)
    });
    while let Some(chunk) = received.recv().await {
        log.load_new_cases(&chunk).await?;
    }
    log.analyze_events().await?;
    producer
        .await
        .map_err(|e| Error::Internal(format!("the generator failed: {e}")))?
}

/// The catalogue figures of the generated data next to the published reference figures.
pub fn compare_with_reference(facts: &[CaseFacts], last_day: NaiveDate) -> Vec<String> {
    let calendar = WorkingCalendar::england_and_wales();
    // The latest complete financial year, its Q3, and the 31 March that ends it.
    let fy_start = if last_day.month() >= 4 {
        last_day.year() - 1
    } else {
        last_day.year() - 2
    };
    let (Some(year), Some(q3)) = (Period::financial_year(fy_start), Period::financial_quarter(fy_start, 3)) else {
        return vec!["no complete financial year in the generated window".into()];
    };
    // The catalogue gives E3 and E4 per law type.
    let query = |metric: MetricId, period: &Period| MetricsQuery {
        metrics: vec![metric],
        period: period.clone(),
        snapshot: Some(year.last),
        group_by: if matches!(metric, MetricId::E3 | MetricId::E4) {
            vec![Dimension::LawType]
        } else {
            vec![]
        },
        filters: vec![],
        suppress_small_numbers: false,
        settings: Settings::default(),
    };
    let rows = [
        (MetricId::T1, &q3, "39 weeks"),
        (MetricId::T2, &q3, "34.6%"),
        (MetricId::T3, &q3, "58.9%"),
        (MetricId::T4, &year, "every child (policy)"),
        (MetricId::T5, &year, "70% (historic target)"),
        (
            MetricId::T6,
            &year,
            "public 9.2, safeguarding 4.1, s7 14.6 working weeks",
        ),
        (MetricId::T7, &year, "29.8%"),
        (MetricId::E1, &year, "93%"),
        (MetricId::E2, &year, "97%"),
        (MetricId::E3, &year, "62% public, 80% private"),
        (MetricId::E4, &year, "75.3% public, 73.2% private"),
        (MetricId::S1Cases, &year, "27,529 cases"),
        (MetricId::S1Children, &year, "44,216 children"),
        (MetricId::S2ChildrenOver52, &year, "8,143 children"),
        (MetricId::S2ChildrenOver100, &year, "2,195 children"),
        (MetricId::D1Cases, &year, "55,377 cases"),
        (MetricId::D1Children, &year, "85,272 children"),
        (MetricId::W1Mean, &year, "18.2 (long-term teams)"),
    ];
    let mut lines = vec![format!(
        "{:<28} {:>14}   {}",
        "metric (period)", "generated", "reference"
    )];
    for (metric, period, reference) in rows {
        let text = match caselog_projections::compute(&query(metric, period), facts, calendar) {
            Ok(results) => results
                .into_iter()
                .flat_map(|r| r.rows.into_iter().map(move |row| (r.value_unit, row)))
                .map(|(unit, row)| {
                    let value = match row.value {
                        Some(v) if unit == "percent" => format!("{v:.1}%"),
                        Some(v) => format!("{v:.1}"),
                        None => "-".into(),
                    };
                    match row.group.get(&Dimension::LawType) {
                        Some(law_type) => format!("{value} {law_type}"),
                        None => value,
                    }
                })
                .collect::<Vec<_>>()
                .join(" / "),
            Err(err) => err.to_string(),
        };
        let label = format!(
            "{} ({})",
            metric.id(),
            if std::ptr::eq(period, &q3) { "FY Q3" } else { "FY" }
        );
        lines.push(format!("{label:<28} {text:>14}   {reference}"));
    }
    lines.push(format!("period: {} ; snapshot {}", year.label, year.last));
    lines
}
