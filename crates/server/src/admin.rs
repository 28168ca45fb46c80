//! `caselog.v1.AdminService`: rebuilding and verifying the projections, with streamed progress.

use crate::error::to_status;
use crate::rebuild::{Outcome, Phase, Progress, RebuildOptions, Summary, rebuild};
use caselog_api::v1 as pb;
use caselog_api::v1::admin_service_server::AdminService;
use caselog_store::EventLog;
use std::pin::pin;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};

/// How often a rebuild stream reports progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

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
        let options = RebuildOptions {
            verify_only: request.into_inner().verify_only,
            ..RebuildOptions::default()
        };
        let (updates, receiver) = mpsc::channel(4);
        let log = self.log.clone();
        let draining = self.draining.clone();
        tokio::spawn(stream_rebuild(log, options, updates, draining).instrument(info_span!("rebuild_stream")));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// Runs the rebuild while the caller listens; dropping it (caller gone, server draining) abandons
/// the rebuild, which leaves the live projections untouched.
async fn stream_rebuild(
    log: EventLog,
    options: RebuildOptions,
    updates: mpsc::Sender<Updates>,
    mut draining: watch::Receiver<bool>,
) {
    let (progress, mut progress_seen) = watch::channel(None);
    let mut run = pin!(rebuild(&log, &options, &progress));
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    loop {
        tokio::select! {
            result = &mut run => {
                let last = match result {
                    Ok(summary) => Ok(pb::RebuildProjectionsResponse {
                        update: Some(pb::rebuild_projections_response::Update::Summary(summary_out(&summary))),
                    }),
                    Err(err) => Err(to_status(err)),
                };
                let _ = updates.send(last).await;
                return;
            }
            _ = ticker.tick() => {
                let current = progress_seen.borrow_and_update().clone();
                if let Some(current) = current {
                    let update = pb::RebuildProjectionsResponse {
                        update: Some(pb::rebuild_projections_response::Update::Progress(progress_out(&current))),
                    };
                    if updates.send(Ok(update)).await.is_err() {
                        return;
                    }
                }
            }
            () = updates.closed() => return,
            true = async { draining.wait_for(|d| *d).await.is_ok() } => {
                let _ = updates
                    .send(Err(Status::unavailable(
                        "the server is shutting down; the rebuild was abandoned and the live projections are unchanged; run it again",
                    )))
                    .await;
                return;
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
        position: p.position.max(0) as u64,
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
        position: s.position.max(0) as u64,
        digest: s.digest.clone(),
        elapsed: Some(duration_out(s.elapsed)),
        events_per_second: s.load_rate(),
        switched,
        generation,
        verify,
    }
}
