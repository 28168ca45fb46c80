//! `caselog.v1.EventFeedService`: the global feed over gRPC. Each subscriber reads the log
//! itself (catch-up and live are the same loop), so a slow subscriber costs a bounded buffer and
//! never memory that grows with the log.

use crate::audit;
use crate::auth::caller;
use crate::error::Error;
use crate::service::recorded_event;
use caselog_api::v1 as pb;
use caselog_api::v1::event_feed_service_server::EventFeedService;
use caselog_domain::{CaseId, EventType, FieldViolation, Position};
use caselog_store::{EventLog, FeedFilter};
use serde_json::json;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::{debug, info, instrument};

/// How subscriptions behave.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// Messages buffered per subscriber before the reader waits for the client.
    pub subscriber_buffer: usize,
    /// A subscriber that accepts nothing for this long is ended (and may resume).
    pub slow_subscriber_timeout: Duration,
    /// Events read from the log per query.
    pub page_size: u32,
    /// Re-check interval while an append is in flight below the allocated position (a rollback
    /// announces nothing).
    pub in_flight_poll: Duration,
    /// Safety re-check when no wake-up arrives (a lost NOTIFY connection).
    pub idle_poll: Duration,
}

impl Default for FeedSettings {
    fn default() -> FeedSettings {
        FeedSettings {
            subscriber_buffer: 256,
            slow_subscriber_timeout: Duration::from_secs(30),
            page_size: 500,
            in_flight_poll: Duration::from_millis(10),
            idle_poll: Duration::from_secs(1),
        }
    }
}

const READ_ALL: &str = "caselog.v1.EventFeedService/ReadAll";
const SUBSCRIBE_EVENTS: &str = "caselog.v1.EventFeedService/SubscribeEvents";
const MAX_READ_LIMIT: u32 = 1000;
const DEFAULT_READ_LIMIT: u32 = 100;

#[derive(Debug, Clone)]
pub struct EventFeed {
    log: EventLog,
    settings: FeedSettings,
    subscribers: Arc<Subscribers>,
    /// Becomes true when the server drains: subscriptions never end by themselves.
    shutdown: watch::Receiver<bool>,
}

/// The cursor of every live subscriber, for status and lag.
#[derive(Debug, Default)]
struct Subscribers {
    next_id: AtomicU64,
    cursors: Mutex<HashMap<u64, Position>>,
}

/// Removes a subscriber from the registry when its stream ends, however it ends.
struct Registration {
    id: u64,
    subscribers: Arc<Subscribers>,
}

impl Registration {
    fn update(&self, cursor: Position) {
        if let Ok(mut cursors) = self.subscribers.cursors.lock() {
            cursors.insert(self.id, cursor);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut cursors) = self.subscribers.cursors.lock() {
            cursors.remove(&self.id);
        }
    }
}

impl EventFeed {
    pub fn new(log: EventLog, settings: FeedSettings, shutdown: watch::Receiver<bool>) -> EventFeed {
        EventFeed {
            log,
            settings,
            subscribers: Arc::default(),
            shutdown,
        }
    }

    fn register(&self, cursor: Position) -> Registration {
        let id = self.subscribers.next_id.fetch_add(1, Ordering::Relaxed);
        let registration = Registration {
            id,
            subscribers: self.subscribers.clone(),
        };
        registration.update(cursor);
        registration
    }
}

fn filter_of(filter: Option<pb::FeedFilter>) -> Result<FeedFilter, Error> {
    let filter = filter.unwrap_or_default();
    let mut violations = Vec::new();
    for (i, name) in filter.event_types.iter().enumerate() {
        if EventType::parse(name).is_none() {
            violations.push(FieldViolation::new(
                format!("filter.event_types[{i}]"),
                format!("{name:?} is not an event type (e.g. \"child_seen\")"),
            ));
        }
    }
    for (i, case_id) in filter.case_ids.iter().enumerate() {
        if let Err(bad) = CaseId::parse(case_id) {
            violations.extend(bad.into_iter().map(|mut v| {
                v.field = format!("filter.case_ids[{i}]");
                v
            }));
        }
    }
    if violations.is_empty() {
        Ok(FeedFilter {
            event_types: filter.event_types,
            case_ids: filter.case_ids,
        })
    } else {
        Err(Error::invalid(violations))
    }
}

fn position_of(from: u64) -> Result<Position, Error> {
    Position::try_from(from).map_err(|_| {
        Error::invalid(vec![FieldViolation::new(
            "from_position",
            "from_position is beyond any position",
        )])
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EventFeedService for EventFeed {
    async fn read_all(&self, request: Request<pb::ReadAllRequest>) -> Result<Response<pb::ReadAllResponse>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        let target = format!("positions after {}", request.from_position);
        let detail = json!({"limit": request.limit});
        let result = match principal.require_admin("read the global feed") {
            Ok(()) => self.read_page(request).await,
            Err(denial) => Err(denial.into()),
        };
        let page = audit::recorded(&self.log, &principal, READ_ALL, &target, detail, result).await?;
        Ok(Response::new(page))
    }

    type SubscribeEventsStream = EventStream;

    async fn subscribe_events(
        &self,
        request: Request<pb::SubscribeEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        let target = format!("positions after {}", request.from_position);
        let result = match principal.require_admin("subscribe to the global feed") {
            Ok(()) => self.subscribe(request),
            Err(denial) => Err(denial.into()),
        };
        let stream = audit::recorded(&self.log, &principal, SUBSCRIBE_EVENTS, &target, json!({}), result).await?;
        Ok(Response::new(stream))
    }

    async fn get_feed_status(
        &self,
        request: Request<pb::GetFeedStatusRequest>,
    ) -> Result<Response<pb::GetFeedStatusResponse>, Status> {
        caller(&request)?
            .require_admin("read the feed's status")
            .map_err(Error::from)?;
        Ok(Response::new(self.status().await?))
    }
}

impl EventFeed {
    async fn read_page(&self, request: pb::ReadAllRequest) -> Result<pb::ReadAllResponse, Error> {
        let filter = filter_of(request.filter)?;
        let after = position_of(request.from_position)?;
        if request.limit > MAX_READ_LIMIT {
            return Err(Error::invalid(vec![FieldViolation::new(
                "limit",
                format!("limit is at most {MAX_READ_LIMIT}"),
            )]));
        }
        let limit = if request.limit == 0 {
            DEFAULT_READ_LIMIT
        } else {
            request.limit
        };
        let page = self.log.read_all(after, limit, &filter).await.map_err(Error::from)?;
        let events = page
            .events
            .iter()
            .map(|e| recorded_event(e, None))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(pb::ReadAllResponse {
            events,
            next_from_position: page.next_after.get(),
            safe_position: page.horizon.safe.get(),
        })
    }

    fn subscribe(&self, request: pb::SubscribeEventsRequest) -> Result<EventStream, Error> {
        let filter = filter_of(request.filter)?;
        let from = position_of(request.from_position)?;
        let (events_tx, events_rx) = mpsc::channel(self.settings.subscriber_buffer.max(1));
        let (end_tx, end_rx) = mpsc::channel(1);
        let registration = self.register(from);
        let pump = Pump {
            log: self.log.clone(),
            settings: self.settings.clone(),
            filter,
            registration,
            events: events_tx,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(async move {
            if let Err(status) = pump.run(from).await {
                let _ = end_tx.send(status).await;
            }
        });
        let stream = ReceiverStream::new(events_rx)
            .map(Ok)
            .chain(ReceiverStream::new(end_rx).map(Err));
        Ok(Box::pin(stream))
    }

    /// The feed's lag, open transactions and subscribers, now.
    pub async fn status(&self) -> Result<pb::GetFeedStatusResponse, Error> {
        let horizon = self.log.horizon().await?;
        let head = self.log.head_position().await?;
        let oldest = self.log.oldest_open_transaction().await?;
        let (subscribers, slowest) = match self.subscribers.cursors.lock() {
            Ok(cursors) => (cursors.len(), cursors.values().min().copied()),
            Err(_) => (0, None),
        };
        Ok(pb::GetFeedStatusResponse {
            head_position: head.get(),
            allocated_position: horizon.allocated.get(),
            safe_position: horizon.safe.get(),
            safe_position_lag: horizon.allocated.since(horizon.safe),
            oldest_open_transaction_ms: oldest.map_or(0, |d| d.as_millis() as u64),
            subscribers: subscribers as u32,
            max_subscriber_lag: slowest.map_or(0, |cursor| horizon.safe.since(cursor)),
        })
    }

    /// Samples [`EventFeed::status`] every `interval` into OpenTelemetry gauges
    /// (`caselog.feed.*`), exported when OTLP export is configured. Runs until aborted.
    pub async fn publish_metrics(self, interval: Duration) {
        let latest = Arc::new(Mutex::new(pb::GetFeedStatusResponse::default()));
        let _gauges = crate::telemetry::sampled_gauges(
            &latest,
            &[
                ("caselog.feed.head_position", "highest committed position", |s| {
                    s.head_position
                }),
                (
                    "caselog.feed.safe_position",
                    "position below which every append has finished",
                    |s| s.safe_position,
                ),
                (
                    "caselog.feed.safe_position_lag",
                    "positions held back by appends in flight",
                    |s| s.safe_position_lag,
                ),
                (
                    "caselog.feed.oldest_open_transaction_ms",
                    "age of the oldest open writing transaction",
                    |s| s.oldest_open_transaction_ms,
                ),
                ("caselog.feed.subscribers", "live subscribers of this process", |s| {
                    u64::from(s.subscribers)
                }),
                (
                    "caselog.feed.max_subscriber_lag",
                    "safe position minus the slowest subscriber's",
                    |s| s.max_subscriber_lag,
                ),
            ],
        );
        loop {
            match self.status().await {
                Ok(status) => {
                    debug!(
                        safe_position_lag = status.safe_position_lag,
                        oldest_open_transaction_ms = status.oldest_open_transaction_ms,
                        subscribers = status.subscribers,
                        max_subscriber_lag = status.max_subscriber_lag,
                        "feed status"
                    );
                    if let Ok(mut latest) = latest.lock() {
                        *latest = status;
                    }
                }
                Err(err) => debug!(error = %err, "feed status unavailable"),
            }
            tokio::time::sleep(interval).await;
        }
    }
}

/// Reads the feed for one subscriber and pushes it into the subscriber's bounded buffer.
struct Pump {
    log: EventLog,
    settings: FeedSettings,
    filter: FeedFilter,
    registration: Registration,
    events: mpsc::Sender<pb::SubscribeEventsResponse>,
    shutdown: watch::Receiver<bool>,
}

impl Pump {
    /// Ends with `Ok` when the client goes away, with the status to send otherwise.
    #[instrument(skip(self), fields(subscriber = self.registration.id))]
    async fn run(mut self, from: Position) -> Result<(), Status> {
        let mut wakeups = self.log.feed_wakeups();
        let mut cursor = from;
        let mut last_sent = from;
        let mut caught_up = false;
        debug!("subscriber started");
        loop {
            wakeups.borrow_and_update();
            let page = self
                .log
                .read_all(cursor, self.settings.page_size, &self.filter)
                .await
                .map_err(Error::from)?;
            for stored in &page.events {
                let event = recorded_event(stored, None)?;
                self.send(pb::subscribe_events_response::Message::Event(event), stored.position)
                    .await?;
                cursor = stored.position;
                last_sent = cursor;
                self.registration.update(cursor);
            }
            cursor = cursor.max(page.next_after);
            self.registration.update(cursor);
            if page.full {
                continue;
            }
            if cursor > last_sent || !caught_up {
                let checkpoint = pb::Checkpoint {
                    position: cursor.get(),
                    caught_up: true,
                };
                self.send(pb::subscribe_events_response::Message::Checkpoint(checkpoint), cursor)
                    .await?;
                last_sent = cursor;
                caught_up = true;
            }
            let recheck = if page.horizon.append_in_flight() {
                self.settings.in_flight_poll
            } else {
                self.settings.idle_poll
            };
            tokio::select! {
                _ = wakeups.changed() => {}
                () = tokio::time::sleep(recheck) => {}
                () = self.events.closed() => {
                    debug!("subscriber went away");
                    return Ok(());
                }
                _ = self.shutdown.wait_for(|draining| *draining) => {
                    return Err(Error::ShuttingDown { resume_from: cursor }.into());
                }
            }
        }
    }

    async fn send(&self, message: pb::subscribe_events_response::Message, position: Position) -> Result<(), Status> {
        let response = pb::SubscribeEventsResponse { message: Some(message) };
        match tokio::time::timeout(self.settings.slow_subscriber_timeout, self.events.send(response)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_closed)) => Err(Status::cancelled("subscriber went away")),
            Err(_elapsed) => {
                let resume_from = self.last_delivered(position);
                info!(%resume_from, "ending a subscriber that does not keep up");
                Err(Error::SubscriberTooSlow { resume_from }.into())
            }
        }
    }

    /// The position the client has certainly been sent, from which it can resume.
    fn last_delivered(&self, undelivered: Position) -> Position {
        self.registration
            .subscribers
            .cursors
            .lock()
            .ok()
            .and_then(|c| c.get(&self.registration.id).copied())
            .unwrap_or(undelivered)
            .min(undelivered)
    }
}
