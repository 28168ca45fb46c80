//! The service's errors, and the one place where they become `tonic::Status`.
//!
//! Every status carries an `ErrorInfo` (reason, domain, metadata); malformed input also carries a
//! `BadRequest` naming every bad field. Internal detail (SQL, driver errors) goes to the log,
//! never onto the wire.

use caselog_domain::{BatchRejection, Denial, FieldViolation, Rejection, Rule};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

const ERROR_DOMAIN: &str = "caselog.v1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {}", describe(.violations))]
    Invalid {
        violations: Vec<FieldViolation>,
        event_index: Option<usize>,
    },
    #[error("{message}")]
    Rejected {
        rule: Rule,
        message: String,
        event_index: usize,
    },
    #[error("the case is at version {actual}, not the expected version {expected}; read the case and retry")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("event {event_id} is already recorded with different content; a new event needs a new event_id")]
    EventIdReused { event_id: String, event_index: usize },
    #[error("{0}")]
    NotFound(String),
    #[error("the subscriber did not keep up; subscribe again from position {resume_from}")]
    SubscriberTooSlow { resume_from: i64 },
    #[error("the server is shutting down; subscribe again from position {resume_from}")]
    ShuttingDown { resume_from: i64 },
    #[error("{0}; ask about dates the working-day calendar covers")]
    OutsideCalendar(String),
    #[error("the projections have applied position {checkpoint}, not yet {wanted}; retry shortly")]
    ProjectionBehind { checkpoint: i64, wanted: i64 },
    #[error("{what}; retry shortly")]
    Busy { what: String },
    #[error("another rebuild of the projections is running; wait for it to finish")]
    RebuildInProgress,
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    Denied(#[from] Denial),
    #[error("permission denied: {0}")]
    NotDisclosable(caselog_projections::disclosure::Refusal),
    #[error("this client already has {limit} requests in flight; retry when one has finished")]
    TooManyConcurrentRequests { limit: usize },
    #[error("this client already holds {limit} subscriptions; end one before opening another")]
    TooManySubscriptions { limit: usize },
    #[error("the audit trail could not record this access, so it was not served; retry later")]
    AuditUnavailable,
    #[error("the appends to this case kept conflicting; retry later")]
    Contention,
    #[error("the event store is unavailable; retry later")]
    Unavailable(#[source] caselog_store::Error),
    #[error("internal error")]
    Internal(String),
}

impl Error {
    /// The message with internal detail, for operators (logs, the command line); never sent to
    /// a client.
    pub fn detail(&self) -> String {
        match self {
            Error::Internal(detail) => format!("internal error: {detail}"),
            Error::Unavailable(source) => format!("{self}: {source}"),
            other => other.to_string(),
        }
    }

    pub fn invalid(violations: Vec<FieldViolation>) -> Error {
        let event_index = violations.iter().find_map(|v| v.event_index);
        Error::Invalid {
            violations,
            event_index,
        }
    }

    /// The refusal of a batch whose event `i` is `original_indices[i]` of the request.
    pub fn from_rejection(rejection: BatchRejection, original_indices: &[usize]) -> Error {
        let original = |i: usize| original_indices.get(i).copied().unwrap_or(i);
        match rejection.rejection {
            Rejection::Invalid(violations) => Error::invalid(
                violations
                    .into_iter()
                    .map(|v| match v.event_index {
                        Some(i) => v.at(original(i)),
                        None => v,
                    })
                    .collect(),
            ),
            Rejection::Rule { rule, message } => Error::Rejected {
                rule,
                message,
                event_index: original(rejection.index),
            },
        }
    }
}

impl From<caselog_store::Error> for Error {
    fn from(err: caselog_store::Error) -> Error {
        match err {
            caselog_store::Error::Unavailable(_) => Error::Unavailable(err),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// At most this many field violations are described in a status (message and `BadRequest`):
/// a batch with hundreds of bad events would otherwise exceed the trailer size common clients
/// accept (16 KiB), and the client would see a transport error instead of the reasons.
pub const MAX_VIOLATIONS_SENT: usize = 50;

fn describe(violations: &[FieldViolation]) -> String {
    let mut text = violations
        .iter()
        .take(MAX_VIOLATIONS_SENT)
        .map(|v| format!("{}: {}", v.path(), v.description))
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(more) = more_than_sent(violations) {
        text.push_str(&format!("; and {more} more"));
    }
    text
}

fn more_than_sent(violations: &[FieldViolation]) -> Option<usize> {
    violations.len().checked_sub(MAX_VIOLATIONS_SENT).filter(|n| *n > 0)
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        to_status(err)
    }
}

/// Maps an error to the status sent to the client.
pub fn to_status(err: Error) -> Status {
    let mut metadata = HashMap::new();
    let (code, reason) = err.classify(&mut metadata);
    match &err {
        Error::Internal(detail) => tracing::error!(%detail, "internal error"),
        Error::Unavailable(source) => tracing::warn!(error = %source, "store unavailable"),
        _ => {}
    }
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    if let Error::Invalid { violations, .. } = &err {
        for v in violations.iter().take(MAX_VIOLATIONS_SENT) {
            details.add_bad_request_violation(v.path(), v.description.clone());
        }
        if let Some(more) = more_than_sent(violations) {
            details.add_bad_request_violation(
                "",
                format!("{more} more violations not listed; correct these and send again"),
            );
        }
    }
    Status::with_error_details(code, err.to_string(), details)
}

impl Error {
    /// What the audit trail records of a refused or failed request: code and reason, as sent.
    pub fn outcome(&self) -> String {
        let (code, reason) = self.classify(&mut HashMap::new());
        format!("{code:?} {reason}")
    }

    /// The status code and `ErrorInfo` reason, adding the `ErrorInfo` metadata to `metadata`.
    fn classify(&self, metadata: &mut HashMap<String, String>) -> (Code, &'static str) {
        match self {
            Error::Invalid { event_index, .. } => {
                if let Some(i) = event_index {
                    metadata.insert("event_index".to_owned(), i.to_string());
                }
                (Code::InvalidArgument, "INVALID_ARGUMENT")
            }
            Error::Rejected { rule, event_index, .. } => {
                metadata.insert("event_index".to_owned(), event_index.to_string());
                (Code::FailedPrecondition, rule.reason())
            }
            Error::VersionConflict { expected, actual } => {
                metadata.insert("expected_version".to_owned(), expected.to_string());
                metadata.insert("actual_version".to_owned(), actual.to_string());
                (Code::Aborted, "VERSION_CONFLICT")
            }
            Error::EventIdReused { event_id, event_index } => {
                metadata.insert("event_id".to_owned(), event_id.clone());
                metadata.insert("event_index".to_owned(), event_index.to_string());
                (Code::AlreadyExists, "EVENT_ID_REUSED")
            }
            Error::NotFound(_) => (Code::NotFound, "NOT_FOUND"),
            Error::Contention => (Code::Aborted, "CONTENTION"),
            Error::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
            Error::Denied(denial) => {
                if let Some(i) = denial.event_index() {
                    metadata.insert("event_index".to_owned(), i.to_string());
                }
                (Code::PermissionDenied, denial.reason())
            }
            Error::NotDisclosable(_) => (Code::PermissionDenied, "NOT_DISCLOSABLE"),
            Error::TooManyConcurrentRequests { limit } => {
                metadata.insert("limit".to_owned(), limit.to_string());
                (Code::ResourceExhausted, "TOO_MANY_CONCURRENT_REQUESTS")
            }
            Error::TooManySubscriptions { limit } => {
                metadata.insert("limit".to_owned(), limit.to_string());
                (Code::ResourceExhausted, "TOO_MANY_SUBSCRIPTIONS")
            }
            Error::AuditUnavailable => (Code::Unavailable, "AUDIT_UNAVAILABLE"),
            Error::RebuildInProgress => (Code::FailedPrecondition, "REBUILD_IN_PROGRESS"),
            Error::Busy { .. } => (Code::ResourceExhausted, "BUSY"),
            Error::OutsideCalendar(_) => (Code::FailedPrecondition, "OUTSIDE_CALENDAR"),
            Error::ProjectionBehind { checkpoint, wanted } => {
                metadata.insert("checkpoint".to_owned(), checkpoint.to_string());
                metadata.insert("min_position".to_owned(), wanted.to_string());
                (Code::Unavailable, "PROJECTION_BEHIND")
            }
            Error::ShuttingDown { resume_from } => {
                metadata.insert("resume_from".to_owned(), resume_from.to_string());
                (Code::Unavailable, "SERVER_SHUTTING_DOWN")
            }
            Error::SubscriberTooSlow { resume_from } => {
                metadata.insert("resume_from".to_owned(), resume_from.to_string());
                (Code::Aborted, "SUBSCRIBER_TOO_SLOW")
            }
            Error::Unavailable(_) => (Code::Unavailable, "STORE_UNAVAILABLE"),
            Error::Internal(_) => (Code::Internal, "INTERNAL"),
        }
    }
}
