//! `caselog.v1.CaseEventService`: converts requests to domain calls and results to responses.

use crate::audit;
use crate::auth::caller;
use crate::convert;
use crate::error::{AppError, Error};
use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_server::CaseEventService;
use caselog_app::ingest::{self, CaseCache, WritePath, history_of, payload_of};
use caselog_domain::england::date_in_england;
use caselog_domain::{CaseHistory, CaseId, EventId, FieldViolation, Metadata, Principal, Version};
use caselog_store::{CaseReader, EventLog, GroupAppender, GroupSettings, GroupStats, ReadGroupSettings, StoredEvent};
use chrono::Utc;
use futures_util::StreamExt;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Optional metadata header naming the sending organisation. The source recorded is always the
/// authenticated organisation; a request naming another one is refused (SOURCE_MISMATCH).
pub const SOURCE_HEADER: &str = "x-caselog-source";
const GET_CASE: &str = "caselog.v1.CaseEventService/GetCase";
const LIST_CASE_EVENTS: &str = "caselog.v1.CaseEventService/ListCaseEvents";
/// The cases of one `AppendEventsToCases` request decided at the same time: an organisation's
/// limit of requests in flight bounds its appends in flight, as with `AppendEvents`, within
/// this factor (an import's requests carry about 30 cases).
const CASES_AT_ONCE: usize = 64;
const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 1000;

#[derive(Debug, Clone)]
pub struct CaseEvents {
    log: EventLog,
    write_path: WritePath,
    /// Events per acknowledged batch, alone or in `AppendEventsToCases`
    /// (`caselog_append_batch_events`).
    batch_events: opentelemetry::metrics::Histogram<u64>,
}

impl CaseEvents {
    pub fn new(log: EventLog) -> CaseEvents {
        CaseEvents::with_settings(log, ingest::DEFAULT_CASE_CACHE_BYTES, GroupSettings::default())
    }

    /// Keeps recently written cases in at most `case_cache_bytes` of memory (see
    /// `ingest::CaseCache`), and writes concurrent appends together (see
    /// `caselog_store::combine`). Needs a Tokio runtime.
    pub fn with_settings(log: EventLog, case_cache_bytes: usize, group_appends: GroupSettings) -> CaseEvents {
        CaseEvents {
            write_path: WritePath {
                reader: CaseReader::start(log.clone(), ReadGroupSettings::default()),
                appender: GroupAppender::start(log.clone(), group_appends),
                log: log.clone(),
                cache: Arc::new(CaseCache::new(case_cache_bytes)),
            },
            batch_events: append_batch_events(),
            log,
        }
    }
}

impl CaseEvents {
    /// Registers OpenTelemetry counters of what the group appender has written
    /// (`caselog.append.statements`, `.appends`, `.events`, `.written_by_caller`: appends per
    /// statement is the size of a commit group) and of the write cache (`caselog.write_cache.*`),
    /// and keeps them registered until aborted.
    pub async fn publish_append_metrics(self) {
        let meter = opentelemetry::global::meter("caselog");
        // The callbacks outlive this task (the meter provider keeps them): they read the
        // counters alone, so that a stopped server's pool is not kept open.
        let stats = std::sync::Arc::new(self.write_path.appender.stats_reader());
        type Read = Box<dyn Fn() -> u64 + Send + Sync>;
        let counter = |name: &'static str, description: &'static str, read: Read| {
            meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |observer| observer.observe(read(), &[]))
                .build()
        };
        let of_stats = |read: fn(&GroupStats) -> u64| -> Read {
            let stats = stats.clone();
            Box::new(move || read(&stats()))
        };
        let of_lookups = |read: fn((u64, u64)) -> u64| -> Read {
            let cache = self.write_path.cache.clone();
            Box::new(move || read(cache.lookups()))
        };
        let _counters = [
            counter(
                "caselog.append.statements",
                "append statements written, each one transaction and one commit",
                of_stats(|s| s.statements),
            ),
            counter(
                "caselog.append.appends",
                "appends those statements carried",
                of_stats(|s| s.appends),
            ),
            counter(
                "caselog.append.events",
                "events those statements carried",
                of_stats(|s| s.events),
            ),
            counter(
                "caselog.append.written_by_caller",
                "appends written at once by their own request, the appender being idle",
                of_stats(|s| s.written_by_caller),
            ),
            counter(
                "caselog.write_cache.found",
                "appends that found their case in the cache of recently written cases",
                of_lookups(|(found, _)| found),
            ),
            counter(
                "caselog.write_cache.read",
                "appends that read their case from the log (raise --case-cache-mib when these are many)",
                of_lookups(|(_, read)| read),
            ),
        ];
        let cache_gauge = |name: &'static str, description: &'static str, read: fn((usize, usize)) -> usize| {
            let cache = self.write_path.cache.clone();
            meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |observer| observer.observe(read(cache.usage()) as u64, &[]))
                .build()
        };
        let _cache_gauges = [
            cache_gauge(
                "caselog.write_cache.bytes",
                "estimated memory held by the cache of recently written cases (at most --case-cache-mib)",
                |(_, bytes)| bytes,
            ),
            cache_gauge(
                "caselog.write_cache.cases",
                "cases held by the cache of recently written cases",
                |(cases, _)| cases,
            ),
        ];
        std::future::pending::<()>().await;
    }
}

/// Events per acknowledged batch (an `AppendEvents` request or a batch of `AppendEventsToCases`):
/// one-event appends (each system sending as it records) against batches (imports, backfills).
/// From the meter provider of the moment (a service is made once per server).
fn append_batch_events() -> opentelemetry::metrics::Histogram<u64> {
    opentelemetry::global::meter("caselog")
        .u64_histogram("caselog.append.batch_events")
        .with_description("Events per acknowledged batch of AppendEvents or AppendEventsToCases")
        .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0])
        .build()
}

/// The authenticated writer, after checking that a source the request names is its own.
fn writer_of<T>(request: &Request<T>) -> Result<std::sync::Arc<Principal>, Error> {
    let principal = caller(request)?;
    let claimed = request
        .metadata()
        .get(SOURCE_HEADER)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    principal.check_claimed_source(claimed)?;
    Ok(principal)
}

/// Reads a case for `principal`, who may read timelines. Whether the caller may see this case is
/// decided before whether it exists is told: a practice client gets the same refusal for a case elsewhere as for none.
async fn load_case(
    log: &EventLog,
    principal: &Principal,
    case_id: &CaseId,
) -> Result<(Vec<caselog_store::StoredEvent>, CaseHistory), Error> {
    let case_id = case_id.as_str();
    // The parties are decided on the case's first event alone, so that a refusal takes the same
    // time whatever the size of the case, or whether it exists.
    let head = history_of(&log.read_case_head(case_id).await?)?;
    principal.may_read_case(head.view())?;
    let stored = log.read_case(case_id).await?;
    let history = history_of(&stored)?;
    if stored.is_empty() {
        return Err(AppError::NotFound(format!("no case {case_id:?} is recorded")).into());
    }
    Ok((stored, history))
}

#[tonic::async_trait]
impl CaseEventService for CaseEvents {
    async fn append_events(
        &self,
        request: Request<pb::AppendEventsRequest>,
    ) -> Result<Response<pb::AppendEventsResponse>, Status> {
        let principal = writer_of(&request)?;
        let today = date_in_england(Utc::now());
        Ok(Response::new(
            self.append_batch(&principal, request.into_inner(), today).await?,
        ))
    }

    async fn append_events_to_cases(
        &self,
        request: Request<pb::AppendEventsToCasesRequest>,
    ) -> Result<Response<pb::AppendEventsToCasesResponse>, Status> {
        let principal = writer_of(&request)?;
        let batches = request.into_inner().batches;
        let events: usize = batches.iter().map(|b| b.events.len()).sum();
        // Every batch holds an event, so batches are bounded by events too: a request of many
        // empty batches is refused whole, not answered with a refusal for each.
        if batches.is_empty() || batches.len() > ingest::MAX_BATCH || events > ingest::MAX_BATCH {
            return Err(Error::invalid(vec![FieldViolation::new(
                "batches",
                format!(
                    "a request holds 1 to {0} batches and at most {0} events in all (got {1} batches, {events} events)",
                    ingest::MAX_BATCH,
                    batches.len()
                ),
            )])
            .into());
        }
        let today = date_in_england(Utc::now());
        let count = batches.len();
        // A case's batches one after another, in request order; different cases side by side,
        // so that their reads and writes share statements (see caselog_store::combine).
        let mut by_case: Vec<Vec<(usize, pb::AppendEventsRequest)>> = Vec::new();
        let mut slot_of_case: HashMap<String, usize> = HashMap::new();
        for (index, batch) in batches.into_iter().enumerate() {
            let slot = *slot_of_case.entry(batch.case_id.clone()).or_insert_with(|| {
                by_case.push(Vec::new());
                by_case.len() - 1
            });
            by_case[slot].push((index, batch));
        }
        let principal = &principal;
        let decided: Vec<_> = futures_util::stream::iter(by_case)
            .map(|batches| async move {
                let mut outcomes = Vec::with_capacity(batches.len());
                for (index, batch) in batches {
                    outcomes.push((index, self.append_batch(principal, batch, today).await));
                }
                outcomes
            })
            .buffer_unordered(CASES_AT_ONCE)
            .collect()
            .await;
        let mut outcomes = vec![pb::BatchOutcome::default(); count];
        for (index, result) in decided.into_iter().flatten() {
            outcomes[index].outcome = Some(match result {
                Ok(appended) => pb::batch_outcome::Outcome::Appended(appended),
                Err(error) => pb::batch_outcome::Outcome::Refused(error.into_refusal()),
            });
        }
        Ok(Response::new(pb::AppendEventsToCasesResponse { outcomes }))
    }

    async fn get_case(&self, request: Request<pb::GetCaseRequest>) -> Result<Response<pb::GetCaseResponse>, Status> {
        let principal = caller(&request)?;
        let case_id = request.into_inner().case_id;
        let result = self.get_case_for(&principal, case_id.clone()).await;
        let case = audit::recorded(&self.log, &principal, GET_CASE, &case_id, json!({}), result).await?;
        Ok(Response::new(pb::GetCaseResponse { case: Some(case) }))
    }

    async fn list_case_events(
        &self,
        request: Request<pb::ListCaseEventsRequest>,
    ) -> Result<Response<pb::ListCaseEventsResponse>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        let case_id = request.case_id.clone();
        let detail = json!({"page_token": request.page_token, "page_size": request.page_size});
        let result = self.list_case_events_for(&principal, request).await;
        let response = audit::recorded(&self.log, &principal, LIST_CASE_EVENTS, &case_id, detail, result).await?;
        Ok(Response::new(response))
    }
}

impl CaseEvents {
    /// One case's batch, decided and written as `AppendEvents` does it.
    async fn append_batch(
        &self,
        principal: &Principal,
        request: pb::AppendEventsRequest,
        today: chrono::NaiveDate,
    ) -> Result<pb::AppendEventsResponse, Error> {
        let (case_id, mut violations) = match CaseId::parse(&request.case_id) {
            Ok(case_id) => (Some(case_id), Vec::new()),
            Err(violations) => (None, violations),
        };
        let mut events = Vec::with_capacity(request.events.len());
        for (index, event) in request.events.into_iter().enumerate() {
            match convert::new_event(event) {
                Ok(event) => events.push(event),
                Err(bad) => violations.extend(bad.into_iter().map(|v| v.at(index))),
            }
        }
        let expected_version = match request.expected_version.map(Version::try_from).transpose() {
            Ok(expected) => expected,
            Err(_) => {
                violations.push(FieldViolation::new(
                    "expected_version",
                    format!(
                        "expected_version is at most {}, the largest version a case can have",
                        Version::MAX
                    ),
                ));
                None
            }
        };
        let Some(case_id) = case_id.filter(|_| violations.is_empty()) else {
            return Err(Error::invalid(violations));
        };
        let appended = ingest::append(&self.write_path, &case_id, &events, expected_version, principal, today).await?;
        self.batch_events.record(events.len() as u64, &[]);
        Ok(pb::AppendEventsResponse {
            version: appended.version.get(),
            events: appended
                .events
                .into_iter()
                .map(|e| pb::AppendedEvent {
                    event_id: e.event_id.to_string(),
                    position: e.position.get(),
                    version: e.version.get(),
                    already_present: e.already_present,
                })
                .collect(),
        })
    }

    async fn get_case_for(&self, principal: &Principal, case_id: String) -> Result<pb::Case, Error> {
        principal.may_read_timelines()?;
        let (_, history) = load_case(&self.log, principal, &CaseId::parse(&case_id).map_err(Error::invalid)?).await?;
        let view = history
            .view()
            .ok_or_else(|| Error::internal(format!("case {case_id} has events but no case_issued")))?;
        let allocation = |a: &caselog_domain::case::Allocation| pb::Allocation {
            practitioner_id: a.practitioner_id.clone(),
            role: convert::allocation_role_out(a.role) as i32,
            allocated_on: a.allocated_on.to_string(),
        };
        let case = pb::Case {
            case_id,
            law_type: convert::law_type_out(view.issue.law_type) as i32,
            application_types: view
                .issue
                .application_types
                .iter()
                .map(|t| convert::application_type_out(*t) as i32)
                .collect(),
            court_code: view.issue.court_code.clone(),
            service_area: view.issue.service_area.clone(),
            local_authority_code: view.issue.local_authority_code.clone().unwrap_or_default(),
            children: view.children.iter().map(convert::child_out).collect(),
            current_lead_allocation: view.current_lead_allocation.as_ref().map(allocation),
            first_lead_allocation: view.first_lead_allocation.as_ref().map(allocation),
            open: view.is_open(),
            issued_on: view.issued_on.to_string(),
            received_on: view.issue.received_on.map(|d| d.to_string()).unwrap_or_default(),
            closed_on: view.closure.map(|c| c.closed_on.to_string()).unwrap_or_default(),
            outcome: view
                .closure
                .map_or(pb::CaseOutcome::Unspecified, |c| convert::outcome_out(c.outcome)) as i32,
            version: history.version().get(),
        };
        Ok(case)
    }

    async fn list_case_events_for(
        &self,
        principal: &Principal,
        request: pb::ListCaseEventsRequest,
    ) -> Result<pb::ListCaseEventsResponse, Error> {
        principal.may_read_timelines()?;
        let (case_id, mut violations) = match CaseId::parse(&request.case_id) {
            Ok(case_id) => (Some(case_id), Vec::new()),
            Err(violations) => (None, violations),
        };
        if request.page_size > MAX_PAGE_SIZE {
            violations.push(FieldViolation::new(
                "page_size",
                format!("page_size is at most {MAX_PAGE_SIZE}"),
            ));
        }
        let after_version = match decode_page_token(&request.page_token) {
            Some(v) => v,
            None => {
                violations.push(FieldViolation::new(
                    "page_token",
                    "not a page token from a previous response; send it unchanged",
                ));
                Version::ZERO
            }
        };
        let Some(case_id) = case_id.filter(|_| violations.is_empty()) else {
            return Err(Error::invalid(violations));
        };
        let page_size = if request.page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            request.page_size
        };
        // Voids can come after the page, so voided flags need the whole case; a case has tens of events.
        let (stored, history) = load_case(&self.log, principal, &case_id).await?;
        let voided_by = history.voided_by();
        let page: Vec<_> = stored
            .iter()
            .filter(|e| e.version > after_version)
            .take(page_size as usize)
            .collect();
        let more = page
            .last()
            .is_some_and(|last| stored.last().is_some_and(|end| end.version > last.version));
        let events = page
            .iter()
            .map(|stored| recorded_event(stored, voided_by.get(&stored.event_id)))
            .collect::<Result<Vec<_>, Error>>()?;
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => encode_page_token(last.version),
            _ => String::new(),
        };
        Ok(pb::ListCaseEventsResponse {
            events,
            next_page_token,
        })
    }
}

/// A stored event as sent to clients; `voided_by` is the void of this event, if known.
pub(crate) fn recorded_event(stored: &StoredEvent, voided_by: Option<&EventId>) -> Result<pb::RecordedEvent, Error> {
    let metadata: Metadata = serde_json::from_value(stored.metadata.clone()).unwrap_or_default();
    Ok(pb::RecordedEvent {
        event_id: stored.event_id.to_string(),
        case_id: stored.case_id.clone(),
        version: stored.version.get(),
        position: stored.position.get(),
        occurred_on: stored.occurred_on.to_string(),
        recorded_at: Some(prost_types::Timestamp {
            seconds: stored.recorded_at.timestamp(),
            nanos: stored.recorded_at.timestamp_subsec_nanos() as i32,
        }),
        source: stored.source.clone(),
        payload: Some(convert::payload_out(&payload_of(stored)?)),
        metadata: convert::metadata_out(&metadata),
        voided: voided_by.is_some(),
        voided_by: voided_by.map(|id| id.to_string()).unwrap_or_default(),
    })
}

const PAGE_TOKEN_PREFIX: &str = "v1.after.";

fn encode_page_token(after_version: Version) -> String {
    format!("{PAGE_TOKEN_PREFIX}{after_version}")
}

fn decode_page_token(token: &str) -> Option<Version> {
    if token.is_empty() {
        return Some(Version::ZERO);
    }
    let after: u64 = token.strip_prefix(PAGE_TOKEN_PREFIX)?.parse().ok()?;
    Version::try_from(after).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_names_a_version_a_case_can_have() {
        let four = Version::ZERO.after(4).ok();
        assert_eq!(decode_page_token(&encode_page_token(Version::MAX)), Some(Version::MAX));
        assert_eq!(decode_page_token("v1.after.4"), four);
        assert_eq!(decode_page_token(""), Some(Version::ZERO));
        for forged in [
            "v1.after.2147483648",
            "v1.after.-1",
            "v1.after.x",
            "after.4",
            "v1.after.",
        ] {
            assert_eq!(decode_page_token(forged), None, "{forged}");
        }
    }
}
