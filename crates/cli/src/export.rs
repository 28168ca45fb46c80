//! Getting events back out of a running service over gRPC: `caselog export` writes the log, or
//! part of it, in the interchange format that `caselog import` reads; `caselog tail` follows the
//! feed as it grows.
//!
//! Export reads page by page and writes as it goes, so its memory does not grow with the log.
//! A whole-log export stops at the feed's safe position when it starts: it is a snapshot of
//! everything committed by then, in position order, which keeps each case's events in the order
//! they were recorded, so importing it into an empty database gives the same projections.

use crate::import::describe;
use anyhow::Context;
use caselog_api::v1 as pb;
use caselog_api::v1::case_event_service_client::CaseEventServiceClient;
use caselog_api::v1::event_feed_service_client::EventFeedServiceClient;
use caselog_domain::interchange::to_line;
use caselog_server::auth::{BearerToken, WithToken};
use caselog_server::convert::new_event;
use chrono::{DateTime, Utc};
use std::io::Write;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Events asked for per page.
const PAGE: u32 = 1_000;
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Which events an export writes.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// One case's events (read as its timeline, which practice clients may read too).
    pub case_id: Option<String>,
    /// Events after this position (exclusive; 0 from the start).
    pub after_position: u64,
    /// Only events recorded at or after this instant.
    pub recorded_from: Option<DateTime<Utc>>,
    /// Only events recorded before this instant.
    pub recorded_before: Option<DateTime<Utc>>,
}

impl Selection {
    fn wants(&self, event: &pb::RecordedEvent) -> bool {
        let recorded = event.recorded_at.as_ref().and_then(timestamp);
        let after_start = match (self.recorded_from, recorded) {
            (Some(from), Some(at)) => at >= from,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let before_end = match (self.recorded_before, recorded) {
            (Some(before), Some(at)) => at < before,
            (Some(_), None) => false,
            (None, _) => true,
        };
        event.position > self.after_position && after_start && before_end
    }
}

/// How far an export has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportProgress {
    pub events_written: u64,
    /// The last position read.
    pub position: u64,
    /// Where this export ends (the safe position when it started; 0 for a case).
    pub end_position: u64,
}

/// How an export or a tail writes each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// The interchange format (`caselog import` reads it).
    Ndjson,
    /// One readable line: position, recording time, case, version, date, type, data.
    Text,
}

impl LineFormat {
    pub fn write(self, event: &pb::RecordedEvent, out: &mut impl Write) -> anyhow::Result<()> {
        let line = match self {
            LineFormat::Ndjson => interchange_line(event)?,
            LineFormat::Text => readable_line(event)?,
        };
        writeln!(out, "{line}")?;
        Ok(())
    }
}

/// Writes the selected events to `out` and reports progress after every page.
pub async fn export(
    channel: Channel,
    token: Option<&str>,
    selection: &Selection,
    format: LineFormat,
    out: &mut impl Write,
    mut progress: impl FnMut(ExportProgress),
) -> anyhow::Result<ExportProgress> {
    let bearer = BearerToken::new(token).context("the token is not a valid header value")?;
    let mut done = ExportProgress::default();
    if let Some(case_id) = &selection.case_id {
        let mut client =
            CaseEventServiceClient::with_interceptor(channel, bearer).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut page_token = String::new();
        loop {
            let page = client
                .list_case_events(pb::ListCaseEventsRequest {
                    case_id: case_id.clone(),
                    page_size: PAGE,
                    page_token: page_token.clone(),
                })
                .await
                .map_err(|status| anyhow::anyhow!(describe(&status)))?
                .into_inner();
            for event in page.events.iter().filter(|e| selection.wants(e)) {
                format.write(event, out)?;
                done.events_written += 1;
                done.position = done.position.max(event.position);
            }
            progress(done);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
    } else {
        let mut client = feed_client(channel, bearer);
        let status = client
            .get_feed_status(pb::GetFeedStatusRequest {})
            .await
            .map_err(|status| anyhow::anyhow!(describe(&status)))?
            .into_inner();
        done.end_position = status.safe_position;
        done.position = selection.after_position;
        while done.position < done.end_position {
            let page = client
                .read_all(pb::ReadAllRequest {
                    from_position: done.position,
                    limit: PAGE,
                    filter: None,
                })
                .await
                .map_err(|status| anyhow::anyhow!(describe(&status)))?
                .into_inner();
            for event in page.events.iter().filter(|e| e.position <= done.end_position) {
                if selection.wants(event) {
                    format.write(event, out)?;
                    done.events_written += 1;
                }
            }
            // The feed never goes backwards; a page that does not advance means nothing more is
            // readable below the end (the end was the safe position, so this does not happen).
            if page.next_from_position <= done.position {
                break;
            }
            done.position = page.next_from_position.min(done.end_position);
            progress(done);
        }
    }
    out.flush()?;
    Ok(done)
}

/// What a tail does.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// Start after this position; `None`: after the feed's safe position now (new events only).
    pub after_position: Option<u64>,
    pub event_types: Vec<String>,
    pub case_ids: Vec<String>,
    /// Stop once the feed is caught up, instead of waiting for new events.
    pub until_caught_up: bool,
}

/// Follows the feed, writing each event as it commits; returns the last position seen.
pub async fn tail(
    channel: Channel,
    token: Option<&str>,
    options: &TailOptions,
    format: LineFormat,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let bearer = BearerToken::new(token).context("the token is not a valid header value")?;
    let mut client = feed_client(channel, bearer);
    let from_position = match options.after_position {
        Some(position) => position,
        None => {
            client
                .get_feed_status(pb::GetFeedStatusRequest {})
                .await
                .map_err(|status| anyhow::anyhow!(describe(&status)))?
                .into_inner()
                .safe_position
        }
    };
    let mut stream = client
        .subscribe_events(pb::SubscribeEventsRequest {
            from_position,
            filter: Some(pb::FeedFilter {
                event_types: options.event_types.clone(),
                case_ids: options.case_ids.clone(),
            }),
        })
        .await
        .map_err(|status| anyhow::anyhow!(describe(&status)))?
        .into_inner();
    let mut position = from_position;
    while let Some(message) = stream.next().await {
        let message = message.map_err(|status| anyhow::anyhow!(describe(&status)))?;
        match message.message {
            Some(pb::subscribe_events_response::Message::Event(event)) => {
                position = event.position;
                format.write(&event, out)?;
                // Whoever reads a tail reads it as it happens, not when a buffer fills.
                out.flush()?;
            }
            Some(pb::subscribe_events_response::Message::Checkpoint(checkpoint)) => {
                position = position.max(checkpoint.position);
                if checkpoint.caught_up && options.until_caught_up {
                    break;
                }
            }
            None => {}
        }
    }
    Ok(position)
}

fn feed_client(channel: Channel, bearer: BearerToken) -> EventFeedServiceClient<WithToken> {
    EventFeedServiceClient::with_interceptor(channel, bearer).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// The event as a line of the interchange format.
pub fn interchange_line(event: &pb::RecordedEvent) -> anyhow::Result<String> {
    let decoded = new_event(pb::NewEvent {
        event_id: event.event_id.clone(),
        occurred_on: event.occurred_on.clone(),
        payload: event.payload.clone(),
        metadata: event.metadata.clone(),
    })
    .map_err(|violations| {
        let fields: Vec<String> = violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect();
        anyhow::anyhow!(
            "event {} at position {} cannot be written as interchange: {}",
            event.event_id,
            event.position,
            fields.join("; ")
        )
    })?;
    Ok(to_line(&event.case_id, &decoded))
}

/// The event as one readable line.
pub fn readable_line(event: &pb::RecordedEvent) -> anyhow::Result<String> {
    let decoded = serde_json::from_str::<serde_json::Value>(&interchange_line(event)?)?;
    let recorded = event
        .recorded_at
        .as_ref()
        .and_then(timestamp)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut line = format!(
        "{:>9} {recorded} {} v{:<3} {} {:<27} {}",
        event.position,
        event.case_id,
        event.version,
        event.occurred_on,
        decoded["type"].as_str().unwrap_or_default(),
        decoded["data"],
    );
    if !event.source.is_empty() {
        line.push_str(&format!(" [{}]", event.source));
    }
    if event.voided {
        line.push_str(&format!(" VOIDED by {}", event.voided_by));
    }
    Ok(line)
}

pub(crate) fn timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}
