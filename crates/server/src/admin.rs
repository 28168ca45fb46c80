//! `caselog.v1.AdminService`: rebuilding and verifying the projections, with streamed progress.

use crate::audit;
use crate::auth::caller;
use crate::error::{Error, to_status};
use caselog_api::v1 as pb;
use caselog_api::v1::admin_service_server::AdminService;
use caselog_app::rebuild::{Outcome, Phase, Progress, RebuildOptions, Summary, rebuild};
use caselog_domain::FieldViolation;
use caselog_store::{AuditQuery, EventLog};
use serde_json::json;
use std::pin::pin;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};

/// How often a rebuild stream reports progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
const REBUILD: &str = "caselog.v1.AdminService/RebuildProjections";
const LIST_AUDIT_RECORDS: &str = "caselog.v1.AdminService/ListAuditRecords";
const PROJECTIONS: &str = "projections";
const ABANDONED_BY_CALLER: &str = "Cancelled (the caller went away; rebuild abandoned)";
const DEFAULT_AUDIT_PAGE: u32 = 100;
const MAX_AUDIT_PAGE: u32 = 1000;

#[derive(Debug, Clone)]
pub struct Admin {
    log: EventLog,
    draining: watch::Receiver<bool>,
}

impl Admin {
    pub fn new(log: EventLog, draining: watch::Receiver<bool>) -> Admin {
        Admin { log, draining }
    }
}

type Updates = Result<pb::RebuildProjectionsResponse, Status>;

#[tonic::async_trait]
impl AdminService for Admin {
    type RebuildProjectionsStream = ReceiverStream<Updates>;

    async fn rebuild_projections(
        &self,
        request: Request<pb::RebuildProjectionsRequest>,
    ) -> Result<Response<Self::RebuildProjectionsStream>, Status> {
        let principal = caller(&request)?;
        let options = RebuildOptions {
            verify_only: request.into_inner().verify_only,
            ..RebuildOptions::default()
        };
        let detail = json!({"verify_only": options.verify_only});
        if let Err(denial) = principal.require_admin("rebuild the projections") {
            let refused = Error::from(denial);
            audit::counting_failure(audit::record(
                &self.log,
                &principal,
                REBUILD,
                PROJECTIONS,
                detail,
                refused.outcome(),
            ))
            .await
            .map_err(Error::from)?;
            return Err(refused.into());
        }
        let (updates, receiver) = mpsc::channel(4);
        let log = self.log.clone();
        let draining = self.draining.clone();
        let run = async move {
            let outcome = stream_rebuild(log.clone(), options, updates, draining).await;
            // The caller may be gone; the record is for the trail, not for it.
            let _ =
                audit::counting_failure(audit::record(&log, &principal, REBUILD, PROJECTIONS, detail, outcome)).await;
        };
        tokio::spawn(run.instrument(info_span!("rebuild_stream")));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn list_audit_records(
        &self,
        request: Request<pb::ListAuditRecordsRequest>,
    ) -> Result<Response<pb::ListAuditRecordsResponse>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        let detail = json!({"after_id": request.after_id, "up_to_id": request.up_to_id, "limit": request.limit, "actor": request.actor, "target": request.target});
        let result = match principal.require_admin("read the audit trail") {
            Ok(()) => self.audit_page(request).await,
            Err(denial) => Err(denial.into()),
        };
        let page = audit::recorded(&self.log, &principal, LIST_AUDIT_RECORDS, "audit trail", detail, result).await?;
        Ok(Response::new(page))
    }
}

impl Admin {
    async fn audit_page(&self, request: pb::ListAuditRecordsRequest) -> Result<pb::ListAuditRecordsResponse, Error> {
        if request.limit > MAX_AUDIT_PAGE {
            return Err(Error::invalid(vec![FieldViolation::new(
                "limit",
                format!("limit is at most {MAX_AUDIT_PAGE}"),
            )]));
        }
        let up_to_id = match request.up_to_id {
            0 => self.log.last_audit_id().await?,
            pinned => i64::try_from(pinned).unwrap_or(i64::MAX),
        };
        let query = AuditQuery {
            up_to_id,
            after_id: i64::try_from(request.after_id).unwrap_or(i64::MAX),
            limit: i64::from(if request.limit == 0 {
                DEFAULT_AUDIT_PAGE
            } else {
                request.limit
            }),
            actor: Some(request.actor).filter(|a| !a.is_empty()),
            target: Some(request.target).filter(|t| !t.is_empty()),
        };
        let records = self.log.read_audit(&query).await?;
        let next_after_id = records.last().map_or(request.after_id, |r| r.id as u64);
        Ok(pb::ListAuditRecordsResponse {
            up_to_id: up_to_id as u64,
            records: records
                .into_iter()
                .map(|r| pb::AuditRecord {
                    id: r.id as u64,
                    recorded_at: Some(prost_types::Timestamp {
                        seconds: r.recorded_at.timestamp(),
                        nanos: r.recorded_at.timestamp_subsec_nanos() as i32,
                    }),
                    actor: r.entry.actor,
                    grants: r.entry.grants,
                    action: r.entry.action,
                    target: r.entry.target,
                    outcome: r.entry.outcome,
                    detail_json: r.entry.detail.to_string(),
                })
                .collect(),
            next_after_id,
        })
    }
}

/// Runs the rebuild while the caller listens; dropping it (caller gone, server draining) abandons
/// the rebuild, which leaves the live projections untouched. Returns the outcome for the audit
/// trail.
async fn stream_rebuild(
    log: EventLog,
    options: RebuildOptions,
    updates: mpsc::Sender<Updates>,
    mut draining: watch::Receiver<bool>,
) -> String {
    let (progress, mut progress_seen) = watch::channel(None);
    let mut run = pin!(rebuild(&log, &options, &progress));
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    loop {
        tokio::select! {
            result = &mut run => {
                let (last, outcome) = match result {
                    Ok(summary) => (
                        Ok(pb::RebuildProjectionsResponse {
                            update: Some(pb::rebuild_projections_response::Update::Summary(summary_out(&summary))),
                        }),
                        format!("{} {}", audit::OK, summary.describe().join("; ")),
                    ),
                    Err(err) => {
                        let err = Error::from(err);
                        let outcome = err.outcome();
                        (Err(to_status(err)), outcome)
                    }
                };
                let _ = updates.send(last).await;
                return outcome;
            }
            _ = ticker.tick() => {
                let current = progress_seen.borrow_and_update().clone();
                if let Some(current) = current {
                    let update = pb::RebuildProjectionsResponse {
                        update: Some(pb::rebuild_projections_response::Update::Progress(progress_out(&current))),
                    };
                    if updates.send(Ok(update)).await.is_err() {
                        return ABANDONED_BY_CALLER.to_owned();
                    }
                }
            }
            () = updates.closed() => return ABANDONED_BY_CALLER.to_owned(),
            true = async { draining.wait_for(|d| *d).await.is_ok() } => {
                let abandoned = Error::RebuildAbandoned;
                let outcome = format!("{} (abandoned)", abandoned.outcome());
                let _ = updates.send(Err(to_status(abandoned))).await;
                return outcome;
            }
        }
    }
}

fn duration_out(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn progress_out(p: &Progress) -> pb::RebuildProgress {
    pb::RebuildProgress {
        phase: match p.phase {
            Phase::Loading => pb::RebuildPhase::Loading,
            Phase::Indexing => pb::RebuildPhase::Indexing,
            Phase::CatchingUp => pb::RebuildPhase::CatchingUp,
            Phase::Finishing => pb::RebuildPhase::Finishing,
        } as i32,
        events_processed: p.events_processed,
        events_total: p.events_total,
        cases: p.cases,
        position: p.position.get(),
        events_per_second: p.events_per_second(),
        elapsed: Some(duration_out(p.elapsed)),
        estimated_time_left: p.time_left().map(duration_out),
    }
}

fn summary_out(s: &Summary) -> pb::RebuildSummary {
    let (switched, generation, verify) = match &s.outcome {
        Outcome::Switched { generation } => (true, *generation as u64, None),
        Outcome::Verified(report) => (
            false,
            0,
            Some(pb::VerifyReport {
                identical: report.identical(),
                live_digest: report.live_digest.clone(),
                differing_cases: report.differing_cases as u64,
                case_examples: report
                    .case_examples
                    .iter()
                    .map(|c| pb::CaseDifference {
                        case_id: c.case_id.clone(),
                        differs_in: c.differs_in.clone(),
                    })
                    .collect(),
                metrics: report
                    .metrics
                    .iter()
                    .map(|m| pb::MetricDifference {
                        metric: m.metric.clone(),
                        period: m.period.clone(),
                        live: m.live.clone(),
                        rebuilt: m.rebuilt.clone(),
                    })
                    .collect(),
                worklists: report
                    .worklists
                    .iter()
                    .map(|w| pb::WorklistDifference {
                        kind: w.kind.clone(),
                        service_area: w.service_area.clone(),
                        live_items: w.live_items as u64,
                        rebuilt_items: w.rebuilt_items as u64,
                        examples: w.examples.clone(),
                    })
                    .collect(),
            }),
        ),
    };
    pb::RebuildSummary {
        events: s.events,
        cases: s.cases,
        position: s.position.get(),
        digest: s.digest.clone(),
        elapsed: Some(duration_out(s.elapsed)),
        events_per_second: s.load_rate(),
        switched,
        generation,
        verify,
    }
}
