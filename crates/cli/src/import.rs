//! `caselog import`: a gRPC client that pushes an NDJSON file to a running service and accounts
//! for every line: appended, already present, or rejected with the reason.
//!
//! The file is streamed through a window of at most `window` lines held in memory, so a file of
//! any size imports in bounded memory. Lines of one case are kept in file order and sent together,
//! up to `batch_size` per request, while they are in the window: a file grouped by case goes out
//! in full batches, and a file in recording order (each case's lines spread through it) in
//! batches of the lines that lie near each other. When the window is full, the cases whose oldest
//! held lines are earliest are sent, as many as may be in flight. One request per case is in
//! flight at a time, so a case's lines are recorded in file order; batches for different cases
//! are in flight together (`concurrency` cases), and travel together in `AppendEventsToCases`
//! requests of up to 1,000 events (`requests` of them in flight), each batch all or nothing.
//!
//! A batch refused because of one event (ErrorInfo `event_index`) is re-sent without that event,
//! so a bad line never stops the lines around it, unless `all_or_nothing` asks for each case to
//! be recorded whole or not at all.

use anyhow::Context;
use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_app::ingest::MAX_BATCH;
use caselog_domain::EventId;
use caselog_domain::interchange::parse_line;
use caselog_server::auth::{BearerToken, WithToken};
use caselog_server::convert::new_event_out;
use prost::Message as _;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Events of one case per batch (at most 1,000).
    pub batch_size: usize,
    /// Cases with a batch in flight at the same time.
    pub concurrency: usize,
    /// `AppendEventsToCases` requests in flight at the same time: the cases' batches travel
    /// together in these, up to 1,000 events each.
    pub requests: usize,
    /// Bearer token sent with every request (none: the connection's client certificate alone).
    pub token: Option<String>,
    /// Record each case whole or not at all (one batch per case).
    pub all_or_nothing: bool,
    /// Lines held in memory at most: read but not yet answered.
    pub window: usize,
}

/// The default `window`: about 85 MB of held events (each about 140 bytes, encoded).
pub const DEFAULT_WINDOW: usize = 600_000;
/// The default `concurrency`: enough cases in flight to fill `DEFAULT_REQUESTS` requests of
/// 1,000 events with the tens of events a case has nearby in a file in recording order.
pub const DEFAULT_CONCURRENCY: usize = 256;
/// The default `requests`: well below the service's default limit per organisation (64), so that
/// the organisation's other traffic is not refused while it imports.
pub const DEFAULT_REQUESTS: usize = 4;

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions {
            batch_size: 500,
            concurrency: DEFAULT_CONCURRENCY,
            requests: DEFAULT_REQUESTS,
            token: None,
            all_or_nothing: false,
            window: DEFAULT_WINDOW,
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

/// One byte per line read: what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Blank,
    Appended,
    AlreadyPresent,
    Rejected,
}

/// Per-line outcomes of an import, by 1-based line number (blank lines have none). One byte per
/// line and the text of each rejection are kept, so its size follows the file's line count, not
/// its bytes.
#[derive(Debug, Default)]
pub struct ImportReport {
    settled: Vec<Option<Settled>>,
    reasons: BTreeMap<usize, String>,
    appended: usize,
    already_present: usize,
    /// The highest position of an event this import appended (0 when none): a QueryMetrics
    /// with this `min_position` sees all of them.
    pub last_position: u64,
}

impl ImportReport {
    pub fn appended(&self) -> usize {
        self.appended
    }
    pub fn already_present(&self) -> usize {
        self.already_present
    }
    pub fn rejected(&self) -> usize {
        self.reasons.len()
    }
    /// Lines with an outcome (every line that is not blank).
    pub fn settled(&self) -> usize {
        self.appended + self.already_present + self.reasons.len()
    }
    /// What became of line `line_no` (None for a blank line or one beyond the file).
    pub fn outcome(&self, line_no: usize) -> Option<LineOutcome> {
        match self.settled.get(line_no.checked_sub(1)?).copied().flatten()? {
            Settled::Blank => None,
            Settled::Appended => Some(LineOutcome::Appended),
            Settled::AlreadyPresent => Some(LineOutcome::AlreadyPresent),
            Settled::Rejected => Some(LineOutcome::Rejected(self.reasons[&line_no].clone())),
        }
    }
    /// Every rejected line with its reason, in line order.
    pub fn rejections(&self) -> impl Iterator<Item = (usize, &str)> {
        self.reasons.iter().map(|(n, why)| (*n, why.as_str()))
    }

    fn settle(&mut self, line_no: usize, outcome: LineOutcome) {
        let index = line_no - 1;
        if self.settled.len() <= index {
            self.settled.resize(index + 1, None);
        }
        self.settled[index] = Some(match outcome {
            LineOutcome::Appended => {
                self.appended += 1;
                Settled::Appended
            }
            LineOutcome::AlreadyPresent => {
                self.already_present += 1;
                Settled::AlreadyPresent
            }
            LineOutcome::Rejected(reason) => {
                self.reasons.insert(line_no, reason);
                Settled::Rejected
            }
        });
    }

    fn blank(&mut self, line_no: usize) {
        if self.settled.len() < line_no {
            self.settled.resize(line_no, None);
        }
        self.settled[line_no - 1] = Some(Settled::Blank);
    }
}

/// Where an import has got to, for a progress display.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportProgress {
    pub bytes_read: u64,
    /// The file's size, when known.
    pub bytes_total: Option<u64>,
    pub lines_settled: usize,
    pub appended: usize,
    pub already_present: usize,
    pub rejected: usize,
    pub elapsed: Duration,
    /// Cases with a batch sent and not yet answered.
    pub in_flight: usize,
}

impl ImportProgress {
    /// Lines answered per second since the start.
    pub fn lines_per_second(&self) -> f64 {
        self.lines_settled as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }
}

/// How often the progress callback is called at most (and once more at the end).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// A line held for sending: its number, its event id, and the event as the wire carries it,
/// encoded. Encoded, a line takes about a third of the memory of the decoded message (whose
/// every string is an allocation of its own), so the same memory holds three times the lines,
/// and a file in recording order goes out in larger requests.
struct Held {
    line_no: usize,
    event_id: EventId,
    encoded: Box<[u8]>,
}

impl Held {
    fn new(line_no: usize, event_id: EventId, event: &pb::NewEvent) -> Held {
        Held {
            line_no,
            event_id,
            encoded: event.encode_to_vec().into_boxed_slice(),
        }
    }

    fn event(&self) -> anyhow::Result<pb::NewEvent> {
        pb::NewEvent::decode(&*self.encoded).context("a held line no longer decodes (a fault of caselog import)")
    }
}

/// One line as the reader thread hands it over.
enum ReadLine {
    Blank,
    Event { case_id: String, held: Box<Held> },
    Bad(String),
}

/// Lines the reader thread parses before handing them over together.
const READ_CHUNK: usize = 512;

/// Imports NDJSON `text` into the service behind `channel` (for tests and small inputs).
pub async fn import_text(text: &str, channel: Channel, options: &ImportOptions) -> anyhow::Result<ImportReport> {
    let reader = std::io::Cursor::new(text.as_bytes().to_vec());
    import(reader, None, channel, options, |_| {}).await
}

/// Imports the NDJSON read from `reader` into the service behind `channel`, calling `progress`
/// now and then. `bytes_total` (the file's size, when known) is passed through to `progress`.
pub async fn import(
    reader: impl BufRead + Send + 'static,
    bytes_total: Option<u64>,
    channel: Channel,
    options: &ImportOptions,
    mut progress: impl FnMut(&ImportProgress),
) -> anyhow::Result<ImportReport> {
    let bearer = BearerToken::new(options.token.as_deref()).context("the token is not a valid header value")?;
    let client = CaseEventServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024);
    let client = Bundler::start(client, options.requests.max(1));
    let (chunks, mut read) = mpsc::channel::<(u64, Vec<(usize, ReadLine)>)>(4);
    let reader = tokio::task::spawn_blocking(move || read_lines(reader, &chunks));
    let mut window = Window::new(options);
    let started = Instant::now();
    let mut shown = started;
    let mut bytes_read = 0;
    let mut in_flight: JoinSet<Answered> = JoinSet::new();
    let mut reading = true;
    // Lines handed over but not yet taken into the window (a chunk can be larger than its room).
    let mut backlog: VecDeque<(usize, ReadLine)> = VecDeque::new();
    loop {
        while window.held < window.limit {
            let Some((line_no, line)) = backlog.pop_front() else {
                break;
            };
            window.take(line_no, line);
        }
        // A full window sends the cases holding its oldest lines, as many as may be in flight:
        // in a file in recording order few cases ever fill a batch, and sending one case per
        // answer would leave one request in flight. All or nothing sends one case at a time, so
        // that no case is sent whole before the window has moved past it.
        let may_send = if window.all_or_nothing { 1 } else { window.concurrency };
        while window.held >= window.limit && window.ready.len() + in_flight.len() < may_send && window.send_oldest() {}
        while in_flight.len() < window.concurrency {
            let Some(batch) = window.next_batch() else { break };
            let client = client.clone();
            let all_or_nothing = window.all_or_nothing;
            in_flight.spawn(async move { batch.send(client, all_or_nothing).await });
        }
        if shown.elapsed() >= PROGRESS_EVERY {
            shown = Instant::now();
            progress(&window.progress(bytes_read, bytes_total, started, in_flight.len()));
        }
        if !reading && window.held == 0 && in_flight.is_empty() {
            break;
        }
        // Read while there is room; otherwise wait for an answer to make some.
        let room = window.held < window.limit && backlog.is_empty();
        if in_flight.is_empty() && !(reading && room) {
            anyhow::bail!(
                "the import stalled with {} lines unsent (a fault of caselog import)",
                window.held
            );
        }
        tokio::select! {
            chunk = read.recv(), if reading && room => match chunk {
                Some((bytes, lines)) => {
                    bytes_read = bytes;
                    backlog.extend(lines);
                }
                None => {
                    reading = false;
                    window.flush_all();
                }
            },
            Some(answered) = in_flight.join_next(), if !in_flight.is_empty() => {
                window.settle(answered?);
            }
        }
    }
    reader.await.context("the file reader stopped")??;
    progress(&window.progress(bytes_read, bytes_total, started, 0));
    Ok(window.report)
}

/// Reads, parses and converts lines on a blocking thread, handing them over in chunks with the
/// bytes read so far. Stops early when the importer has gone away.
fn read_lines(mut reader: impl BufRead, chunks: &mpsc::Sender<(u64, Vec<(usize, ReadLine)>)>) -> anyhow::Result<()> {
    let (mut bytes, mut line_no, mut raw) = (0u64, 0usize, Vec::new());
    let mut chunk = Vec::with_capacity(READ_CHUNK);
    loop {
        raw.clear();
        let read = reader.read_until(b'\n', &mut raw).context("reading the file")?;
        if read == 0 {
            break;
        }
        bytes += read as u64;
        line_no += 1;
        let line = match std::str::from_utf8(&raw) {
            Ok(text) if text.trim().is_empty() => ReadLine::Blank,
            Ok(text) => match parse_line(text.trim_end_matches(['\n', '\r'])) {
                Ok(parsed) => ReadLine::Event {
                    case_id: parsed.case_id,
                    held: Box::new(Held::new(line_no, parsed.event.event_id, &new_event_out(&parsed.event))),
                },
                Err(err) => ReadLine::Bad(err.to_string()),
            },
            Err(err) => ReadLine::Bad(format!("the line is not UTF-8 text ({err})")),
        };
        chunk.push((line_no, line));
        if chunk.len() == READ_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(READ_CHUNK));
            if chunks.blocking_send((bytes, full)).is_err() {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        let _ = chunks.blocking_send((bytes, chunk));
    }
    Ok(())
}

/// A case's lines held in the window.
#[derive(Default)]
struct CaseLines {
    held: VecDeque<Held>,
    /// A request for this case is in flight; the next waits for its answer.
    in_flight: bool,
    /// Send every held line, not only full batches (the window filled, or the file ended).
    flush: bool,
    /// In the ready queue already.
    ready: bool,
}

/// The lines read and not yet answered, by case.
struct Window {
    cases: HashMap<String, CaseLines>,
    /// Cases with held lines not in flight, by their oldest held line: which to send when full.
    oldest: BTreeMap<usize, String>,
    /// Cases with a batch to send, in the order they became ready.
    ready: VecDeque<String>,
    /// Lines repeating an earlier held line of their case (same id, same content), by that line:
    /// they take its outcome.
    repeats: HashMap<usize, Vec<usize>>,
    /// All or nothing: the cases already sent, whose later lines cannot join them.
    sent_whole: HashSet<String>,
    held: usize,
    limit: usize,
    batch_size: usize,
    concurrency: usize,
    all_or_nothing: bool,
    report: ImportReport,
}

impl Window {
    fn new(options: &ImportOptions) -> Window {
        Window {
            cases: HashMap::new(),
            oldest: BTreeMap::new(),
            ready: VecDeque::new(),
            repeats: HashMap::new(),
            sent_whole: HashSet::new(),
            held: 0,
            limit: options.window.max(1),
            batch_size: if options.all_or_nothing {
                MAX_BATCH
            } else {
                options.batch_size.clamp(1, MAX_BATCH)
            },
            concurrency: options.concurrency.max(1),
            all_or_nothing: options.all_or_nothing,
            report: ImportReport::default(),
        }
    }

    fn take(&mut self, line_no: usize, line: ReadLine) {
        let (case_id, held) = match line {
            ReadLine::Blank => return self.report.blank(line_no),
            ReadLine::Bad(reason) => return self.report.settle(line_no, LineOutcome::Rejected(reason)),
            ReadLine::Event { case_id, held } => (case_id, *held),
        };
        if self.sent_whole.contains(&case_id) {
            let reason = format!(
                "case {case_id} was already sent whole (all or nothing) before this line was read: \
                 a case's lines must lie within the window ({} lines) of each other",
                self.limit
            );
            return self.report.settle(line_no, LineOutcome::Rejected(reason));
        }
        let case = self.cases.entry(case_id.clone()).or_default();
        // A sender's retry repeats a line: it is the same event if the content is the same. One
        // request cannot hold an id twice, and a reused id with other content is refused here.
        if let Some(first) = case.held.iter().find(|h| h.event_id == held.event_id) {
            if first.encoded == held.encoded {
                self.repeats.entry(first.line_no).or_default().push(line_no);
                self.held += 1;
            } else {
                let reason = format!(
                    "event_id {} is used on line {} with different content; a new event needs a new event_id",
                    held.event_id, first.line_no
                );
                self.report.settle(line_no, LineOutcome::Rejected(reason));
            }
            return;
        }
        if case.held.is_empty() && !case.in_flight {
            self.oldest.insert(line_no, case_id.clone());
        }
        case.held.push_back(held);
        self.held += 1;
        let sendable = !case.in_flight && !case.ready && !self.all_or_nothing && case.held.len() >= self.batch_size;
        if sendable {
            case.ready = true;
            self.ready.push_back(case_id);
        }
    }

    /// The window is full: makes the case holding the oldest line not yet sent ready; false
    /// when every held line is in a ready case or behind a request in flight.
    fn send_oldest(&mut self) -> bool {
        match self.oldest.pop_first() {
            Some((_, case_id)) => {
                self.mark_flush(case_id);
                true
            }
            None => false,
        }
    }

    /// The file has ended: send everything held, including what gathers behind a request in
    /// flight.
    fn flush_all(&mut self) {
        self.oldest.clear();
        let cases: Vec<String> = self.cases.keys().cloned().collect();
        for case_id in cases {
            self.mark_flush(case_id);
        }
    }

    fn mark_flush(&mut self, case_id: String) {
        let Some(case) = self.cases.get_mut(&case_id) else {
            return;
        };
        case.flush = true;
        if !case.in_flight && !case.ready && !case.held.is_empty() {
            case.ready = true;
            self.ready.push_back(case_id);
        }
    }

    /// The next request to send, if any case is ready.
    fn next_batch(&mut self) -> Option<Batch> {
        let case_id = self.ready.pop_front()?;
        let case = self.cases.get_mut(&case_id)?;
        case.ready = false;
        if let Some(front) = case.held.front() {
            self.oldest.remove(&front.line_no);
        }
        let take = if self.all_or_nothing {
            case.held.len()
        } else {
            case.held.len().min(self.batch_size)
        };
        let lines: Vec<Held> = case.held.drain(..take).collect();
        case.in_flight = true;
        if case.held.is_empty() {
            // Lines that arrive from now on gather again until full or oldest.
            case.flush = false;
        }
        if self.all_or_nothing {
            self.sent_whole.insert(case_id.clone());
        }
        Some(Batch { case_id, lines })
    }

    fn settle(&mut self, answered: Answered) {
        for (line_no, outcome) in answered.outcomes {
            self.held -= 1;
            for repeat in self.repeats.remove(&line_no).unwrap_or_default() {
                self.held -= 1;
                let outcome = match &outcome {
                    LineOutcome::Rejected(_) => {
                        LineOutcome::Rejected(format!("repeats line {line_no}, which was rejected"))
                    }
                    _ => LineOutcome::AlreadyPresent,
                };
                self.report.settle(repeat, outcome);
            }
            self.report.settle(line_no, outcome);
        }
        self.report.last_position = self.report.last_position.max(answered.last_position);
        let case_id = answered.case_id;
        let Some(case) = self.cases.get_mut(&case_id) else {
            return;
        };
        case.in_flight = false;
        match case.held.front() {
            None => {
                self.cases.remove(&case_id);
            }
            Some(front) => {
                let front = front.line_no;
                let full = !self.all_or_nothing && case.held.len() >= self.batch_size;
                if case.flush || full {
                    case.ready = true;
                    self.ready.push_back(case_id);
                } else {
                    self.oldest.insert(front, case_id);
                }
            }
        }
    }

    fn progress(
        &self,
        bytes_read: u64,
        bytes_total: Option<u64>,
        started: Instant,
        in_flight: usize,
    ) -> ImportProgress {
        ImportProgress {
            in_flight,
            bytes_read,
            bytes_total,
            lines_settled: self.report.settled(),
            appended: self.report.appended(),
            already_present: self.report.already_present(),
            rejected: self.report.rejected(),
            elapsed: started.elapsed(),
        }
    }
}

/// One request's lines, all of one case.
struct Batch {
    case_id: String,
    lines: Vec<Held>,
}

/// The outcome of every line of a batch, and the highest position appended.
struct Answered {
    case_id: String,
    outcomes: Vec<(usize, LineOutcome)>,
    last_position: u64,
}

const TRANSIENT_RETRIES: u32 = 5;

impl Batch {
    /// Sends the batch until every line in it has an outcome.
    async fn send(mut self, client: Bundler, all_or_nothing: bool) -> Answered {
        let mut outcomes = Vec::with_capacity(self.lines.len());
        let mut last_position = 0;
        if all_or_nothing && self.lines.len() > MAX_BATCH {
            let reason = format!(
                "case {} has {} events, more than one all-or-nothing batch ({MAX_BATCH})",
                self.case_id,
                self.lines.len()
            );
            let outcomes = self
                .lines
                .iter()
                .map(|h| (h.line_no, LineOutcome::Rejected(reason.clone())))
                .collect();
            return Answered {
                case_id: self.case_id,
                outcomes,
                last_position,
            };
        }
        let mut transient_failures = 0;
        while !self.lines.is_empty() {
            let events = match self.lines.iter().map(Held::event).collect::<anyhow::Result<Vec<_>>>() {
                Ok(events) => events,
                Err(err) => {
                    let reason = format!("{err:#}");
                    outcomes.extend(
                        self.lines
                            .drain(..)
                            .map(|h| (h.line_no, LineOutcome::Rejected(reason.clone()))),
                    );
                    break;
                }
            };
            let request = pb::AppendEventsRequest {
                case_id: self.case_id.clone(),
                events,
                expected_version: None,
            };
            let status = match client.append(request).await {
                Ok(response) => {
                    for (held, appended) in self.lines.iter().zip(response.events) {
                        let outcome = if appended.already_present {
                            LineOutcome::AlreadyPresent
                        } else {
                            last_position = last_position.max(appended.position);
                            LineOutcome::Appended
                        };
                        outcomes.push((held.line_no, outcome));
                    }
                    break;
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
                .filter(|i| *i < self.lines.len());
            match culprit {
                Some(index) if !all_or_nothing && !retryable => {
                    let held = self.lines.remove(index);
                    outcomes.push((held.line_no, LineOutcome::Rejected(reason)));
                }
                _ => {
                    let whole = if all_or_nothing {
                        format!("case {} not imported (all or nothing): {reason}", self.case_id)
                    } else {
                        reason
                    };
                    outcomes.extend(
                        self.lines
                            .drain(..)
                            .map(|h| (h.line_no, LineOutcome::Rejected(whole.clone()))),
                    );
                }
            }
        }
        Answered {
            case_id: self.case_id,
            outcomes,
            last_position,
        }
    }
}

/// Gathers the batches that cases hand over at the same time into `AppendEventsToCases`
/// requests of up to 1,000 events, at most `requests` of them in flight: in a file in recording
/// order a case has tens of events nearby, and a request for each would spend the service's
/// time on requests rather than events. A batch handed over while every request is in flight
/// waits for the next, which then carries every batch waiting. A service older than
/// `AppendEventsToCases` gets each batch in an `AppendEvents` request of its own instead.
#[derive(Clone)]
struct Bundler {
    sender: mpsc::Sender<Bundled>,
}

struct Bundled {
    request: pb::AppendEventsRequest,
    reply: oneshot::Sender<Result<pb::AppendEventsResponse, tonic::Status>>,
}

impl Bundler {
    fn start(client: CaseEventServiceClient<WithToken>, requests: usize) -> Bundler {
        let (sender, receiver) = mpsc::channel(1024);
        tokio::spawn(bundle(client, receiver, requests));
        Bundler { sender }
    }

    /// What `AppendEvents` would answer for this batch alone.
    async fn append(&self, request: pb::AppendEventsRequest) -> Result<pb::AppendEventsResponse, tonic::Status> {
        let (reply, answer) = oneshot::channel();
        let stopped = || tonic::Status::internal("the import's request task stopped (a fault of caselog import)");
        self.sender
            .send(Bundled { request, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn bundle(client: CaseEventServiceClient<WithToken>, mut receiver: mpsc::Receiver<Bundled>, requests: usize) {
    let in_flight = Arc::new(Semaphore::new(requests));
    let service = Arc::new(ServiceSupport::default());
    let mut next: Option<Bundled> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match next.take() {
            Some(first) => first,
            None => match receiver.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut events = first.request.events.len();
        let mut bundled = vec![first];
        while let Ok(more) = receiver.try_recv() {
            if events + more.request.events.len() > MAX_BATCH {
                next = Some(more);
                break;
            }
            events += more.request.events.len();
            bundled.push(more);
        }
        let (mut client, service) = (client.clone(), service.clone());
        tokio::spawn(async move {
            send_bundle(&mut client, &service, bundled).await;
            drop(permit);
        });
    }
}

/// Whether the service takes `AppendEventsToCases`: a service older than the RPC answers
/// UNIMPLEMENTED, and the import then sends each batch with `AppendEvents`.
#[derive(Default)]
struct ServiceSupport(AtomicU8);

impl ServiceSupport {
    const UNKNOWN: u8 = 0;
    const MANY_CASES: u8 = 1;
    const ONE_CASE: u8 = 2;

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, support: u8) {
        self.0.store(support, Ordering::Relaxed);
    }
}

/// Sends the batches in one request and hands each its outcome; a request that fails as a whole
/// fails each batch with its status (each is then retried or reported on its own).
async fn send_bundle(client: &mut CaseEventServiceClient<WithToken>, service: &ServiceSupport, bundled: Vec<Bundled>) {
    if service.get() == ServiceSupport::ONE_CASE {
        return send_one_by_one(client, bundled).await;
    }
    // Kept until the service is known to take many cases, to resend them one by one if not.
    let unsure = (service.get() == ServiceSupport::UNKNOWN)
        .then(|| bundled.iter().map(|b| b.request.clone()).collect::<Vec<_>>());
    let (requests, replies): (Vec<_>, Vec<_>) = bundled.into_iter().map(|b| (b.request, b.reply)).unzip();
    let count = requests.len();
    let request = pb::AppendEventsToCasesRequest { batches: requests };
    let answer = client.append_events_to_cases(request).await;
    match (&answer, unsure) {
        (Err(status), Some(requests)) if status.code() == Code::Unimplemented => {
            service.set(ServiceSupport::ONE_CASE);
            let bundled = requests
                .into_iter()
                .zip(replies)
                .map(|(request, reply)| Bundled { request, reply })
                .collect();
            return send_one_by_one(client, bundled).await;
        }
        (Ok(_), _) => service.set(ServiceSupport::MANY_CASES),
        _ => {}
    }
    match answer {
        Ok(response) => {
            let outcomes = response.into_inner().outcomes;
            if outcomes.len() != count {
                let status = tonic::Status::internal(format!(
                    "the service answered {} outcomes for {count} batches",
                    outcomes.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(status.clone()));
                }
                return;
            }
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(match outcome.outcome {
                    Some(pb::batch_outcome::Outcome::Appended(appended)) => Ok(appended),
                    Some(pb::batch_outcome::Outcome::Refused(refused)) => Err(tonic::Status::with_details(
                        Code::from_i32(refused.code),
                        refused.message,
                        refused.details.into(),
                    )),
                    None => Err(tonic::Status::internal("the service answered a batch with no outcome")),
                });
            }
        }
        Err(status) => {
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}

/// Each batch in an `AppendEvents` request of its own, one after another.
async fn send_one_by_one(client: &mut CaseEventServiceClient<WithToken>, bundled: Vec<Bundled>) {
    for Bundled { request, reply } in bundled {
        let _ = reply.send(client.append_events(request).await.map(tonic::Response::into_inner));
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
