//! `caselog import`: a gRPC client that pushes an NDJSON file to a running service, case by case,
//! and accounts for every line: appended, already present, or rejected with the reason.
//!
//! Lines of one case are sent in file order, in batches; cases are sent concurrently. A batch
//! refused because of one event (ErrorInfo `event_index`) is re-sent without that event, so a
//! bad line never stops the lines around it, unless `all_or_nothing` asks for each case to be
//! recorded whole or not at all.

use anyhow::Context;
use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_app::ingest::MAX_BATCH;
use caselog_domain::interchange::parse_line;
use caselog_domain::{EventId, NewEvent};
use caselog_server::auth::{BearerToken, WithToken};
use caselog_server::convert::new_event_out;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Events per AppendEvents call (at most 1,000).
    pub batch_size: usize,
    /// Cases sent at the same time.
    pub concurrency: usize,
    /// Bearer token sent with every request (none: the connection's client certificate alone).
    pub token: Option<String>,
    /// Record each case whole or not at all (one batch per case).
    pub all_or_nothing: bool,
}

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions {
            batch_size: 500,
            concurrency: 8,
            token: None,
            all_or_nothing: false,
        }
    }
}

/// What happened to one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineOutcome {
    Appended,
    AlreadyPresent,
    Rejected(String),
}

/// Per-line outcomes of an import, keyed by 1-based line number (blank lines are skipped).
#[derive(Debug, Default)]
pub struct ImportReport {
    pub lines: BTreeMap<usize, LineOutcome>,
    /// The highest position of an event this import appended (0 when none): a QueryMetrics
    /// with this `min_position` sees all of them.
    pub last_position: u64,
}

impl ImportReport {
    pub fn count(&self, wanted: fn(&LineOutcome) -> bool) -> usize {
        self.lines.values().filter(|o| wanted(o)).count()
    }
    pub fn appended(&self) -> usize {
        self.count(|o| matches!(o, LineOutcome::Appended))
    }
    pub fn already_present(&self) -> usize {
        self.count(|o| matches!(o, LineOutcome::AlreadyPresent))
    }
    pub fn rejected(&self) -> usize {
        self.count(|o| matches!(o, LineOutcome::Rejected(_)))
    }
}

type Line = (usize, NewEvent);

/// Imports NDJSON `text` into the service behind `channel`.
pub async fn import(text: &str, channel: Channel, options: &ImportOptions) -> anyhow::Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut cases: BTreeMap<String, Vec<Line>> = BTreeMap::new();
    let mut first_seen: Vec<String> = Vec::new();
    let mut seen_ids: HashMap<EventId, (usize, String, NewEvent)> = HashMap::new();
    let mut duplicates: Vec<(usize, usize)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        match parse_line(raw) {
            Ok(parsed) => {
                // A line repeated in the file (a sender's retry) is the same event: it is already
                // present once the first copy is; the same id with other content is refused here,
                // since one batch cannot hold both.
                match seen_ids.get(&parsed.event.event_id) {
                    Some((first, case_id, event)) if *case_id == parsed.case_id && *event == parsed.event => {
                        duplicates.push((line_no, *first));
                        continue;
                    }
                    Some((first, _, _)) => {
                        let reason = format!(
                            "event_id {} is used on line {first} with different content; a new event needs a new event_id",
                            parsed.event.event_id
                        );
                        report.lines.insert(line_no, LineOutcome::Rejected(reason));
                        continue;
                    }
                    None => {
                        seen_ids.insert(
                            parsed.event.event_id,
                            (line_no, parsed.case_id.clone(), parsed.event.clone()),
                        );
                    }
                }
                let lines = cases.entry(parsed.case_id.clone()).or_default();
                if lines.is_empty() {
                    first_seen.push(parsed.case_id);
                }
                lines.push((line_no, parsed.event));
            }
            Err(err) => {
                report.lines.insert(line_no, LineOutcome::Rejected(err.to_string()));
            }
        }
    }
    let bearer = BearerToken::new(options.token.as_deref()).context("the token is not a valid header value")?;
    let batch_size = if options.all_or_nothing {
        MAX_BATCH
    } else {
        options.batch_size.clamp(1, MAX_BATCH)
    };
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for case_id in first_seen {
        let lines = cases.remove(&case_id).unwrap_or_default();
        let client = CaseEventServiceClient::with_interceptor(channel.clone(), bearer.clone())
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024);
        let permits = permits.clone();
        let all_or_nothing = options.all_or_nothing;
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let sender = CaseSender {
                client,
                case_id,
                all_or_nothing,
                last_position: 0,
            };
            sender.send_case(lines, batch_size).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (outcomes, last_position) = joined?;
        report.lines.extend(outcomes);
        report.last_position = report.last_position.max(last_position);
    }
    for (line_no, first) in duplicates {
        let outcome = match report.lines.get(&first) {
            Some(LineOutcome::Rejected(_)) => {
                LineOutcome::Rejected(format!("repeats line {first}, which was rejected"))
            }
            _ => LineOutcome::AlreadyPresent,
        };
        report.lines.insert(line_no, outcome);
    }
    Ok(report)
}

struct CaseSender {
    client: CaseEventServiceClient<WithToken>,
    case_id: String,
    all_or_nothing: bool,
    last_position: u64,
}

const TRANSIENT_RETRIES: u32 = 5;

impl CaseSender {
    /// The outcome of every line, and the highest position appended.
    async fn send_case(mut self, lines: Vec<Line>, batch_size: usize) -> (Vec<(usize, LineOutcome)>, u64) {
        let mut outcomes = Vec::with_capacity(lines.len());
        if self.all_or_nothing && lines.len() > MAX_BATCH {
            let reason = format!(
                "case {} has {} events, more than one all-or-nothing batch ({MAX_BATCH})",
                self.case_id,
                lines.len()
            );
            let outcomes = lines
                .into_iter()
                .map(|(n, _)| (n, LineOutcome::Rejected(reason.clone())))
                .collect();
            return (outcomes, 0);
        }
        let mut remaining = lines.into_iter().peekable();
        while remaining.peek().is_some() {
            let mut batch: Vec<Line> = remaining.by_ref().take(batch_size).collect();
            self.send_batch(&mut batch, &mut outcomes).await;
        }
        (outcomes, self.last_position)
    }

    /// Sends `batch` until every line in it has an outcome.
    async fn send_batch(&mut self, batch: &mut Vec<Line>, outcomes: &mut Vec<(usize, LineOutcome)>) {
        let mut transient_failures = 0;
        while !batch.is_empty() {
            let request = tonic::Request::new(pb::AppendEventsRequest {
                case_id: self.case_id.clone(),
                events: batch.iter().map(|(_, e)| new_event_out(e)).collect(),
                expected_version: None,
            });
            let status = match self.client.append_events(request).await {
                Ok(response) => {
                    for ((line_no, _), appended) in batch.iter().zip(response.into_inner().events) {
                        let outcome = if appended.already_present {
                            LineOutcome::AlreadyPresent
                        } else {
                            self.last_position = self.last_position.max(appended.position);
                            LineOutcome::Appended
                        };
                        outcomes.push((*line_no, outcome));
                    }
                    return;
                }
                Err(status) => status,
            };
            let reason = describe(&status);
            let retryable = matches!(
                status.code(),
                Code::Unavailable | Code::Aborted | Code::DeadlineExceeded | Code::ResourceExhausted
            );
            if retryable && transient_failures < TRANSIENT_RETRIES {
                transient_failures += 1;
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(transient_failures))).await;
                continue;
            }
            let culprit = status
                .get_details_error_info()
                .and_then(|info| info.metadata.get("event_index").and_then(|i| i.parse::<usize>().ok()))
                .filter(|i| *i < batch.len());
            match culprit {
                Some(index) if !self.all_or_nothing && !retryable => {
                    let (line_no, _) = batch.remove(index);
                    outcomes.push((line_no, LineOutcome::Rejected(reason)));
                }
                _ => {
                    let whole = if self.all_or_nothing {
                        format!("case {} not imported (all or nothing): {reason}", self.case_id)
                    } else {
                        reason
                    };
                    outcomes.extend(batch.drain(..).map(|(n, _)| (n, LineOutcome::Rejected(whole.clone()))));
                }
            }
        }
    }
}

/// A one-line account of a refusal: code, reason and message, and the bad fields.
pub fn describe(status: &tonic::Status) -> String {
    let reason = status.get_details_error_info().map(|i| i.reason).unwrap_or_default();
    let mut text = format!("{:?} {reason}: {}", status.code(), status.message());
    if let Some(bad) = status.get_details_bad_request() {
        let fields: Vec<String> = bad.field_violations.iter().map(|v| v.field.clone()).collect();
        if !fields.is_empty() {
            text.push_str(&format!(" [fields: {}]", fields.join(", ")));
        }
    }
    text
}
