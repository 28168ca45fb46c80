//! The NDJSON interchange format: one JSON object per line,
//! `{"event_id", "case_id", "type", "occurred_on", "data", "metadata"?}`.

use crate::event::{EventType, Metadata, NewEvent, Payload};
use crate::ids::EventId;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// One line of the interchange format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterchangeEvent {
    pub case_id: String,
    pub event: NewEvent,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    event_id: EventId,
    case_id: String,
    #[serde(rename = "type")]
    event_type: String,
    occurred_on: NaiveDate,
    data: serde_json::Value,
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    metadata: Metadata,
}

/// Why a line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not a valid event line: {0}")]
    Malformed(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("data does not fit {event_type}: {message}")]
    BadData { event_type: EventType, message: String },
}

/// Parses one line.
pub fn parse_line(line: &str) -> Result<InterchangeEvent, LineError> {
    let raw: Line = serde_json::from_str(line).map_err(|e| LineError::Malformed(e.to_string()))?;
    let event_type = EventType::parse(&raw.event_type).ok_or(LineError::UnknownType(raw.event_type))?;
    let payload = Payload::from_data(event_type, &raw.data).map_err(|e| LineError::BadData {
        event_type,
        message: e.to_string(),
    })?;
    Ok(InterchangeEvent {
        case_id: raw.case_id,
        event: NewEvent {
            event_id: raw.event_id,
            occurred_on: raw.occurred_on,
            payload,
            metadata: raw.metadata,
        },
    })
}

/// Writes one event as a line (without the trailing newline).
pub fn to_line(case_id: &str, event: &NewEvent) -> String {
    let line = Line {
        event_id: event.event_id,
        case_id: case_id.to_owned(),
        event_type: event.payload.event_type().as_str().to_owned(),
        occurred_on: event.occurred_on,
        data: event.payload.data(),
        metadata: event.metadata.clone(),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIEF_EXAMPLE: &str = r#"{"event_id":"6f1c2a0e-8a51-4f7e-9a0b-2f4c1d9e7b10","case_id":"LS25C00123","type":"case_issued","occurred_on":"2025-04-17","data":{"law_type":"public","application_types":["s31_care"],"court_code":"LS","service_area":"A5","local_authority_code":"E08000035","children":[{"child_id":"LS25C00123-1","birth_month":"2024-11"},{"child_id":"LS25C00123-2","birth_month":"2019-06"}]}}
{"event_id":"0b5e7f7c-3d0a-4a57-8f3e-59a0d1c2e4f6","case_id":"LS25C00123","type":"case_allocated","occurred_on":"2025-04-22","data":{"practitioner_id":"fca-0412","role":"guardian"}}
{"event_id":"c3a9d5e1-7b2f-4c6e-9d8a-1e0f2b3c4d5e","case_id":"LS25C00123","type":"child_seen","occurred_on":"2025-05-09","data":{"child_id":"LS25C00123-1","mode":"in_person"},"metadata":{"correlation_id":"visit-88812"}}"#;

    #[test]
    fn the_brief_example_parses_and_writes_back_identically() {
        for line in BRIEF_EXAMPLE.lines() {
            let parsed = parse_line(line).expect("brief example parses");
            let written = to_line(&parsed.case_id, &parsed.event);
            let a: serde_json::Value = serde_json::from_str(line).expect("json");
            let b: serde_json::Value = serde_json::from_str(&written).expect("json");
            assert_eq!(a, b);
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(matches!(parse_line("{"), Err(LineError::Malformed(_))));
        let unknown = r#"{"event_id":"6f1c2a0e-8a51-4f7e-9a0b-2f4c1d9e7b10","case_id":"X","type":"case_reopened","occurred_on":"2025-04-17","data":{}}"#;
        assert_eq!(parse_line(unknown), Err(LineError::UnknownType("case_reopened".into())));
        let bad_enum = r#"{"event_id":"6f1c2a0e-8a51-4f7e-9a0b-2f4c1d9e7b10","case_id":"X","type":"child_seen","occurred_on":"2025-04-17","data":{"child_id":"c","mode":"telepathy"}}"#;
        assert!(matches!(parse_line(bad_enum), Err(LineError::BadData { .. })));
    }
}
