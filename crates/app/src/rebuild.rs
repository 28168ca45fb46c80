//! Rebuilds the case-facts projection from the whole log beside the live table, then switches it
//! in atomically, or (to verify) compares it with the live one and discards it.
//!
//! The log is read case by case (each case whole, in version order, so memory holds one page of
//! events and the digests of the facts, never the history), folded on a blocking thread while
//! the previous page is written with `COPY`. Events appended meanwhile are caught up in steps,
//! and the last few inside the transaction that switches (see `caselog_store::rebuild`).

use crate::error::Error;
use crate::projector::{fold_cases, fold_cases_with_history, read_pages};
use crate::stored_facts;
use caselog_calendar::WorkingCalendar;
use caselog_domain::Position;
use caselog_domain::england::date_in_england;
use caselog_projections::metrics::Settings;
use caselog_projections::{CaseFacts, MetricId, MetricsQuery, Period, WorklistItem, WorklistKind, compute, worklist};
use caselog_store::projection::FactsRow;
use caselog_store::rebuild::{Cut, FactsDifference, FactsTable, RebuildSession};
use caselog_store::{EventLog, FactsHistoryRow, ReplayRow};
use chrono::{Datelike, NaiveDate};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, instrument, warn};

/// The catch-up loop stops and switches once fewer positions than this remain.
const SWITCH_WITHIN: u64 = 5_000;
/// Positions refolded per catch-up step.
const CATCH_UP_STEP: u64 = 50_000;
/// How long a verification waits for the live projection to reach the rebuilt position.
const VERIFY_WAIT: Duration = Duration::from_secs(60);
const EXAMPLES: usize = 5;

#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Compare with the live projection and discard, instead of switching.
    pub verify_only: bool,
    /// Events read from the log per page.
    pub page_events: usize,
}

impl Default for RebuildOptions {
    fn default() -> RebuildOptions {
        RebuildOptions {
            verify_only: false,
            page_events: 20_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the log up to the position the rebuild started at, and writing the new table.
    Loading,
    Indexing,
    /// Applying the events appended since the rebuild started.
    CatchingUp,
    /// Switching the new table in, or comparing it with the live one.
    Finishing,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    pub events_processed: u64,
    /// The events at or below the position the rebuild started at.
    pub events_total: u64,
    pub cases: u64,
    /// The position the new table reflects.
    pub position: Position,
    pub elapsed: Duration,
}

impl Progress {
    pub fn events_per_second(&self) -> f64 {
        self.events_processed as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// An estimate of the loading time left, from the rate so far.
    pub fn time_left(&self) -> Option<Duration> {
        let rate = self.events_per_second();
        (self.phase == Phase::Loading && self.events_processed > 0 && rate > 0.0)
            .then(|| Duration::from_secs_f64(self.events_total.saturating_sub(self.events_processed) as f64 / rate))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Events read while loading.
    pub events: u64,
    pub cases: u64,
    /// The position the rebuilt projection reflects.
    pub position: Position,
    /// SHA-256 over every case's facts in case-id order: equal for equal projection states.
    pub digest: String,
    /// Time spent reading, folding and writing the log up to the starting position.
    pub load_time: Duration,
    pub elapsed: Duration,
    pub outcome: Outcome,
}

impl Summary {
    /// Events loaded per second of the loading phase.
    pub fn load_rate(&self) -> f64 {
        self.events as f64 / self.load_time.as_secs_f64().max(1e-3)
    }

    /// The summary as lines for a person.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "rebuilt {} cases from {} events up to position {} in {:.1} s (loading {:.1} s, {:.0} events/s)",
                self.cases,
                self.events,
                self.position,
                self.elapsed.as_secs_f64(),
                self.load_time.as_secs_f64(),
                self.load_rate()
            ),
            format!("digest {}", self.digest),
        ];
        match &self.outcome {
            Outcome::Switched { generation } => lines.push(format!(
                "switched: the rebuilt projection is live (generation {generation})"
            )),
            Outcome::Verified(report) => {
                lines.push(format!("live digest {}", report.live_digest));
                if report.identical() {
                    lines.push("verified: the live projection equals the rebuilt one".to_owned());
                } else {
                    lines.push(format!(
                        "DIFFERENT: {} cases differ, {} metric figures, {} worklists",
                        report.differing_cases,
                        report.metrics.len(),
                        report.worklists.len()
                    ));
                    for case in &report.case_examples {
                        lines.push(format!("  case {}: {}", case.case_id, case.differs_in.join(", ")));
                    }
                    for metric in &report.metrics {
                        lines.push(format!(
                            "  metric {} {}: live {} | rebuilt {}",
                            metric.metric, metric.period, metric.live, metric.rebuilt
                        ));
                    }
                    for list in &report.worklists {
                        lines.push(format!(
                            "  worklist {} {}: live {} items, rebuilt {}",
                            list.kind, list.service_area, list.live_items, list.rebuilt_items
                        ));
                        for example in &list.examples {
                            lines.push(format!("    {example}"));
                        }
                    }
                }
            }
        }
        lines
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The rebuilt table is live.
    Switched { generation: i64 },
    /// Compared with the live projection at the same position, then discarded.
    Verified(VerifyReport),
}

#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    pub live_digest: String,
    pub differing_cases: usize,
    pub case_examples: Vec<CaseDifference>,
    pub metrics: Vec<MetricDifference>,
    pub worklists: Vec<WorklistDifference>,
}

impl VerifyReport {
    pub fn identical(&self) -> bool {
        self.differing_cases == 0 && self.metrics.is_empty() && self.worklists.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CaseDifference {
    pub case_id: String,
    /// The top-level facts that differ, or where the case is missing.
    pub differs_in: Vec<String>,
}

/// A metric figure that differs, computed nationally for one financial year.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDifference {
    pub metric: String,
    pub period: String,
    pub live: String,
    pub rebuilt: String,
}

/// A worklist (for one service area, as at today) whose items differ.
#[derive(Debug, Clone, PartialEq)]
pub struct WorklistDifference {
    pub kind: String,
    pub service_area: String,
    pub live_items: usize,
    pub rebuilt_items: usize,
    pub examples: Vec<String>,
}

/// The facts row of one case, and its digest.
struct Row {
    case_id: String,
    stored: Vec<u8>,
    digest: [u8; 32],
}

/// Runs a rebuild, publishing progress on `progress`.
#[instrument(skip(log, progress), err)]
pub async fn rebuild(
    log: &EventLog,
    options: &RebuildOptions,
    progress: &watch::Sender<Option<Progress>>,
) -> Result<Summary, Error> {
    let started = Instant::now();
    let mut session = log.try_lock_rebuild().await?.ok_or(Error::RebuildInProgress)?;
    let result = rebuild_holding(log, options, progress, &mut session, started).await;
    // Let go of the lock before answering, so that a rebuild asked for next is not refused
    // while the dropped session's connection is still being torn down.
    if let Err(err) = session.close().await {
        warn!(error = %crate::error::chain(&err), "closing the rebuild session");
    }
    result
}

async fn rebuild_holding(
    log: &EventLog,
    options: &RebuildOptions,
    progress: &watch::Sender<Option<Progress>>,
    session: &mut RebuildSession,
    started: Instant,
) -> Result<Summary, Error> {
    session.create_table().await?;
    let start_at = log.horizon().await?.safe;
    let events_total = log.count_events_up_to(start_at).await? as u64;
    let mut state = Progress {
        phase: Phase::Loading,
        events_processed: 0,
        events_total,
        cases: 0,
        position: start_at,
        elapsed: Duration::ZERO,
    };
    progress.send_replace(Some(state.clone()));
    info!(
        %start_at,
        events_total,
        verify_only = options.verify_only,
        "rebuild started"
    );

    let mut digests: BTreeMap<String, [u8; 32]> = BTreeMap::new();
    let mut pages = read_pages(log.clone(), Cut::Position(start_at), options.page_events);
    // A verification compares the facts only: it writes no history.
    let with_history = !options.verify_only;
    let mut unwritten = Folded::default();
    while let Some(page) = pages.recv().await {
        let page = page?;
        let events = page.len() as u64;
        let folding = tokio::task::spawn_blocking(move || rows_of(&page, with_history));
        // Writing the previous page overlaps folding this one.
        write_loaded(session, &unwritten, start_at).await?;
        unwritten = remember(folding.await.map_err(join_error)??, &mut digests);
        state.events_processed += events;
        state.cases = digests.len() as u64;
        state.elapsed = started.elapsed();
        progress.send_replace(Some(state.clone()));
    }
    write_loaded(session, &unwritten, start_at).await?;
    let load_time = started.elapsed();

    state.phase = Phase::Indexing;
    progress.send_replace(Some(state.clone()));
    session.index_table().await?;

    state.phase = Phase::CatchingUp;
    let mut at = start_at;
    loop {
        let mut target = session.safe_position().await?;
        if options.verify_only {
            target = target.min(log.checkpoint(caselog_store::projection::CASE_FACTS).await?);
        }
        if target.since(at) < SWITCH_WITHIN {
            break;
        }
        let to = target.min(at.saturating_add(CATCH_UP_STEP));
        let folded = refold(session.changed_cases(at, to).await?, with_history, &mut digests).await?;
        session.upsert_rows(&folded.rows, &folded.history, to).await?;
        at = to;
        state.position = at;
        state.cases = digests.len() as u64;
        state.elapsed = started.elapsed();
        progress.send_replace(Some(state.clone()));
    }

    state.phase = Phase::Finishing;
    progress.send_replace(Some(state.clone()));
    let outcome = if options.verify_only {
        let wait_until = Instant::now() + VERIFY_WAIT;
        let (report, position) = loop {
            let mut finish = session.finish(false).await?;
            if finish.live_position < at {
                finish.release().await?;
                if Instant::now() > wait_until {
                    return Err(Error::Internal(format!(
                        "the live projection did not reach position {at} within {VERIFY_WAIT:?}; is a server projecting?"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let live_at = finish.live_position;
            if live_at > at {
                let folded = refold(finish.changed_cases(at, live_at).await?, with_history, &mut digests).await?;
                finish.upsert_rows(&folded.rows, &folded.history, live_at).await?;
            }
            let differences = finish.differences().await?;
            let live = finish.rows(FactsTable::Live).await?;
            let rebuilt = finish.rows(FactsTable::Rebuild).await?;
            finish.release().await?;
            let report = tokio::task::spawn_blocking(move || compare(&differences, &live, &rebuilt))
                .await
                .map_err(join_error)??;
            break (report, live_at);
        };
        session.drop_table().await?;
        at = position;
        Outcome::Verified(report)
    } else {
        let mut finish = session.finish(true).await?;
        let safe = finish.safe_position().await?;
        if safe > at {
            let folded = refold(finish.changed_cases(at, safe).await?, with_history, &mut digests).await?;
            finish.upsert_rows(&folded.rows, &folded.history, safe).await?;
            at = safe;
        }
        Outcome::Switched {
            generation: finish.switch(at).await?,
        }
    };
    let summary = Summary {
        events: state.events_processed,
        cases: digests.len() as u64,
        position: at,
        digest: digest_of(&digests),
        load_time,
        elapsed: started.elapsed(),
        outcome,
    };
    info!(
        events = summary.events,
        cases = summary.cases,
        position = %summary.position,
        digest = %summary.digest,
        seconds = summary.elapsed.as_secs_f64(),
        "rebuild finished"
    );
    Ok(summary)
}

/// Folded cases: their facts rows and their history rows.
#[derive(Default)]
struct Folded {
    rows: Vec<FactsRow>,
    history: Vec<FactsHistoryRow>,
}

async fn write_loaded(session: &mut RebuildSession, folded: &Folded, position: Position) -> Result<(), Error> {
    if !folded.rows.is_empty() {
        session.copy_rows(&folded.rows, position).await?;
    }
    session.copy_history(&folded.history).await?;
    Ok(())
}

fn rows_of(events: &[ReplayRow], with_history: bool) -> Result<(Vec<Row>, Vec<FactsHistoryRow>), Error> {
    let (facts, history) = if with_history {
        fold_cases_with_history(events)?
    } else {
        (fold_cases(events)?, Vec::new())
    };
    Ok((facts.iter().map(row_of).collect::<Result<_, _>>()?, history))
}

fn row_of(facts: &CaseFacts) -> Result<Row, Error> {
    let stored = stored_facts::encode(facts)?;
    Ok(Row {
        case_id: facts.case_id.to_string(),
        digest: Sha256::digest(&stored).into(),
        stored,
    })
}

fn remember((rows, history): (Vec<Row>, Vec<FactsHistoryRow>), digests: &mut BTreeMap<String, [u8; 32]>) -> Folded {
    let rows = rows
        .into_iter()
        .map(|row| {
            digests.insert(row.case_id.clone(), row.digest);
            FactsRow {
                case_id: row.case_id,
                stored: row.stored,
            }
        })
        .collect();
    Folded { rows, history }
}

async fn refold(
    events: Vec<ReplayRow>,
    with_history: bool,
    digests: &mut BTreeMap<String, [u8; 32]>,
) -> Result<Folded, Error> {
    let folded = tokio::task::spawn_blocking(move || rows_of(&events, with_history))
        .await
        .map_err(join_error)??;
    Ok(remember(folded, digests))
}

fn join_error(err: tokio::task::JoinError) -> Error {
    Error::Internal(format!("rebuild worker failed: {err}"))
}

/// SHA-256 over (case id, NUL, SHA-256 of the case's facts) for every case in case-id order.
fn digest_of(digests: &BTreeMap<String, [u8; 32]>) -> String {
    let mut hasher = Sha256::new();
    for (case_id, digest) in digests {
        hasher.update(case_id.as_bytes());
        hasher.update([0]);
        hasher.update(digest);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_all(rows: &[Vec<u8>]) -> Result<Vec<CaseFacts>, Error> {
    rows.iter().map(|row| stored_facts::decode_row(row)).collect()
}

/// A case whose facts differ in meaning: `None` where a table has no row.
struct Differing {
    case_id: String,
    live: Option<CaseFacts>,
    rebuilt: Option<CaseFacts>,
}

/// The verification report: differing rows, then the metrics and worklists computed from each side.
fn compare(differences: &[FactsDifference], live: &[Vec<u8>], rebuilt: &[Vec<u8>]) -> Result<VerifyReport, Error> {
    let live = decode_all(live)?;
    let rebuilt = decode_all(rebuilt)?;
    let mut live_digests = BTreeMap::new();
    for facts in &live {
        let row = row_of(facts)?;
        live_digests.insert(row.case_id, row.digest);
    }
    // Rows that differ in bytes may not differ in meaning: a live row written before the
    // facts were stored encoded holds them as JSON.
    let decode_side = |side: &Option<Vec<u8>>| side.as_deref().map(stored_facts::decode_row).transpose();
    let mut differing = Vec::new();
    for difference in differences {
        let (live, rebuilt) = (decode_side(&difference.live)?, decode_side(&difference.rebuilt)?);
        if live != rebuilt {
            differing.push(Differing {
                case_id: difference.case_id.clone(),
                live,
                rebuilt,
            });
        }
    }
    Ok(VerifyReport {
        live_digest: digest_of(&live_digests),
        differing_cases: differing.len(),
        case_examples: differing.iter().take(EXAMPLES).map(case_difference).collect(),
        metrics: metric_differences(&live, &rebuilt),
        worklists: worklist_differences(&live, &rebuilt),
    })
}

fn case_difference(difference: &Differing) -> CaseDifference {
    let as_object = |facts: &CaseFacts| match serde_json::to_value(facts) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    let differs_in = match (&difference.live, &difference.rebuilt) {
        (None, _) => vec!["missing from the live projection".to_owned()],
        (_, None) => vec!["missing from the rebuilt projection".to_owned()],
        (Some(live), Some(rebuilt)) => {
            let (live, rebuilt) = (as_object(live), as_object(rebuilt));
            let keys: BTreeSet<&String> = live.keys().chain(rebuilt.keys()).collect();
            keys.into_iter()
                .filter(|k| live.get(*k) != rebuilt.get(*k))
                .cloned()
                .collect()
        }
    };
    CaseDifference {
        case_id: difference.case_id.clone(),
        differs_in,
    }
}

/// Every metric, nationally, for every financial year from the earliest issue to today (as far as
/// the calendar reaches).
fn metric_differences(live: &[CaseFacts], rebuilt: &[CaseFacts]) -> Vec<MetricDifference> {
    let calendar = WorkingCalendar::england_and_wales();
    let (_, calendar_last) = calendar.range();
    let Some(first) = live.iter().chain(rebuilt).map(|c| c.issued_on).min() else {
        return Vec::new();
    };
    let last = date_in_england(chrono::Utc::now()).min(calendar_last);
    let mut out = Vec::new();
    for year in financial_year_of(first)..=financial_year_of(last) {
        let Some(period) = Period::financial_year(year) else {
            continue;
        };
        let query = MetricsQuery {
            metrics: MetricId::ALL.to_vec(),
            period: period.clone(),
            snapshot: None,
            group_by: Vec::new(),
            filters: Vec::new(),
            suppress_small_numbers: false,
            settings: Settings::default(),
        };
        match (compute(&query, live, calendar), compute(&query, rebuilt, calendar)) {
            (Ok(a), Ok(b)) => {
                for (a, b) in a.iter().zip(&b) {
                    if a.rows != b.rows {
                        out.push(MetricDifference {
                            metric: a.metric.id().to_owned(),
                            period: period.label.clone(),
                            live: figures(&a.rows),
                            rebuilt: figures(&b.rows),
                        });
                    }
                }
            }
            (Err(_), Err(_)) => {}
            (a, b) => out.push(MetricDifference {
                metric: "all".to_owned(),
                period: period.label.clone(),
                live: a.map_or_else(|e| e.to_string(), |_| "computed".to_owned()),
                rebuilt: b.map_or_else(|e| e.to_string(), |_| "computed".to_owned()),
            }),
        }
    }
    out
}

fn financial_year_of(day: NaiveDate) -> i32 {
    if day.month() >= 4 { day.year() } else { day.year() - 1 }
}

fn figures(rows: &[caselog_projections::Row]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "{}/{} = {}",
                r.numerator,
                r.denominator,
                r.value.map_or("-".to_owned(), |v| format!("{v:.4}"))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every worklist of every service area as at today (default window).
fn worklist_differences(live: &[CaseFacts], rebuilt: &[CaseFacts]) -> Vec<WorklistDifference> {
    let calendar = WorkingCalendar::england_and_wales();
    let as_at = date_in_england(chrono::Utc::now()).min(calendar.range().1);
    let key = |item: &WorklistItem| {
        format!(
            "case {} {}{}due {}",
            item.case_id,
            item.child_id
                .as_deref()
                .map(|c| format!("child {c} "))
                .unwrap_or_default(),
            item.report_id
                .as_deref()
                .map(|r| format!("report {r} "))
                .unwrap_or_default(),
            item.date
        )
    };
    let mut out = Vec::new();
    for kind in WorklistKind::ALL {
        for area in caselog_domain::reference::service_areas() {
            let items = |cases: &[CaseFacts]| -> BTreeSet<String> {
                worklist(kind, &area.code, cases, as_at, 5, calendar)
                    .map(|items| items.iter().map(key).collect())
                    .unwrap_or_default()
            };
            let (a, b) = (items(live), items(rebuilt));
            if a != b {
                let examples = a
                    .symmetric_difference(&b)
                    .take(EXAMPLES)
                    .map(|k| format!("{k}: only in the {}", if a.contains(k) { "live" } else { "rebuilt" }))
                    .collect();
                out.push(WorklistDifference {
                    kind: format!("{kind:?}"),
                    service_area: area.code.clone(),
                    live_items: a.len(),
                    rebuilt_items: b.len(),
                    examples,
                });
            }
        }
    }
    out
}
