//! The service's errors, and the one place where they become `tonic::Status`.
//!
//! Every status carries an `ErrorInfo` (reason, domain, metadata); malformed input also carries a
//! `BadRequest` naming every bad field. Internal detail (SQL, driver errors) goes to the log,
//! never onto the wire.

use caselog_app::error::{MAX_VIOLATIONS_SENT, chain, more_than_sent};
use caselog_domain::{Denial, FieldViolation, Position};
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use caselog_app::Error as AppError;

const ERROR_DOMAIN: &str = "caselog.v1";

/// An application error, or a refusal that belongs to the transport: who is calling, how many
/// requests they have open, a stream that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("this client already has {limit} requests in flight; retry when one has finished")]
    TooManyConcurrentRequests { limit: usize },
    #[error("this client already holds {limit} subscriptions; end one before opening another")]
    TooManySubscriptions { limit: usize },
    #[error("the subscriber did not keep up; subscribe again from position {resume_from}")]
    SubscriberTooSlow { resume_from: Position },
    #[error("the server is shutting down; subscribe again from position {resume_from}")]
    ShuttingDown { resume_from: Position },
    #[error(
        "the server is shutting down; the rebuild was abandoned and the live projections are unchanged; run it again"
    )]
    RebuildAbandoned,
    #[error("the call did not finish within {whose} ({millis} ms); what it had not yet done was not done")]
    DeadlineExceeded { whose: &'static str, millis: u128 },
}

impl Error {
    pub fn invalid(violations: Vec<FieldViolation>) -> Error {
        Error::App(AppError::invalid(violations))
    }

    pub fn internal(detail: impl Into<String>) -> Error {
        Error::App(AppError::Internal(detail.into()))
    }

    /// A batch of `AppendEventsToCases` refused: the status `AppendEvents` would have returned,
    /// as the response carries it.
    pub fn into_refusal(self) -> caselog_api::v1::BatchRefusal {
        let status = Status::from(self);
        caselog_api::v1::BatchRefusal {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details: status.details().to_vec(),
        }
    }
}

impl From<Denial> for Error {
    fn from(denial: Denial) -> Error {
        Error::App(AppError::Denied(denial))
    }
}

impl From<caselog_store::Error> for Error {
    fn from(err: caselog_store::Error) -> Error {
        Error::App(err.into())
    }
}

impl From<caselog_projections::metrics::MetricsError> for Error {
    fn from(err: caselog_projections::metrics::MetricsError) -> Error {
        Error::App(err.into())
    }
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
        Error::App(AppError::Internal(detail)) => tracing::error!(%detail, "internal error"),
        Error::App(store @ AppError::Store(_)) => tracing::error!(error = %chain(store), "internal error"),
        Error::App(outage @ AppError::Unavailable(_)) => tracing::warn!(error = %chain(outage), "store unavailable"),
        _ => {}
    }
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    if let Error::App(AppError::Invalid { violations, .. }) = &err {
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

/// What the audit trail records of an application error: code and reason, as a client is sent
/// them.
pub fn outcome_of(err: &AppError) -> String {
    let (code, reason) = classify_app(err, &mut HashMap::new());
    format!("{code:?} {reason}")
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
            Error::App(app) => classify_app(app, metadata),
            Error::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
            Error::TooManyConcurrentRequests { limit } => {
                metadata.insert("limit".to_owned(), limit.to_string());
                (Code::ResourceExhausted, "TOO_MANY_CONCURRENT_REQUESTS")
            }
            Error::TooManySubscriptions { limit } => {
                metadata.insert("limit".to_owned(), limit.to_string());
                (Code::ResourceExhausted, "TOO_MANY_SUBSCRIPTIONS")
            }
            Error::ShuttingDown { resume_from } => {
                metadata.insert("resume_from".to_owned(), resume_from.to_string());
                (Code::Unavailable, "SERVER_SHUTTING_DOWN")
            }
            Error::RebuildAbandoned => (Code::Unavailable, "SERVER_SHUTTING_DOWN"),
            Error::DeadlineExceeded { .. } => (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
            Error::SubscriberTooSlow { resume_from } => {
                metadata.insert("resume_from".to_owned(), resume_from.to_string());
                (Code::Aborted, "SUBSCRIBER_TOO_SLOW")
            }
        }
    }
}

fn classify_app(err: &AppError, metadata: &mut HashMap<String, String>) -> (Code, &'static str) {
    match err {
        AppError::Invalid { event_index, .. } => {
            if let Some(i) = event_index {
                metadata.insert("event_index".to_owned(), i.to_string());
            }
            (Code::InvalidArgument, "INVALID_ARGUMENT")
        }
        AppError::Rejected { rule, event_index, .. } => {
            metadata.insert("event_index".to_owned(), event_index.to_string());
            (Code::FailedPrecondition, rule.reason())
        }
        AppError::VersionConflict { expected, actual } => {
            metadata.insert("expected_version".to_owned(), expected.to_string());
            metadata.insert("actual_version".to_owned(), actual.to_string());
            (Code::Aborted, "VERSION_CONFLICT")
        }
        AppError::EventIdReused { event_id, event_index } => {
            metadata.insert("event_id".to_owned(), event_id.to_string());
            metadata.insert("event_index".to_owned(), event_index.to_string());
            (Code::AlreadyExists, "EVENT_ID_REUSED")
        }
        AppError::NotFound(_) => (Code::NotFound, "NOT_FOUND"),
        AppError::Contention => (Code::Aborted, "CONTENTION"),
        AppError::Denied(denial) => {
            if let Some(i) = denial.event_index() {
                metadata.insert("event_index".to_owned(), i.to_string());
            }
            (Code::PermissionDenied, denial.reason())
        }
        AppError::NotDisclosable(_) => (Code::PermissionDenied, "NOT_DISCLOSABLE"),
        AppError::AuditUnavailable => (Code::Unavailable, "AUDIT_UNAVAILABLE"),
        AppError::RebuildInProgress => (Code::FailedPrecondition, "REBUILD_IN_PROGRESS"),
        AppError::Busy { .. } => (Code::ResourceExhausted, "BUSY"),
        AppError::OutsideCalendar(_) => (Code::FailedPrecondition, "OUTSIDE_CALENDAR"),
        AppError::ProjectionBehind { checkpoint, wanted } => {
            metadata.insert("checkpoint".to_owned(), checkpoint.to_string());
            metadata.insert("min_position".to_owned(), wanted.to_string());
            (Code::Unavailable, "PROJECTION_BEHIND")
        }
        AppError::Unavailable(_) => (Code::Unavailable, "STORE_UNAVAILABLE"),
        AppError::Internal(_) | AppError::Store(_) => (Code::Internal, "INTERNAL"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use caselog_domain::{Rule, Version};
    use caselog_projections::disclosure::Refusal;

    /// One error of every kind. The match below has no wildcard, so a new variant does not
    /// compile until it is added here too.
    fn one_of_each() -> Vec<Error> {
        let organisation = || "court:LS".to_owned();
        let mut errors: Vec<Error> = vec![
            Error::invalid(vec![FieldViolation::new("case_id", "required")]),
            AppError::VersionConflict {
                expected: Version::ZERO,
                actual: Version::MAX,
            }
            .into(),
            AppError::EventIdReused {
                event_id: uuid::Uuid::nil().into(),
                event_index: 0,
            }
            .into(),
            AppError::NotFound("no case".into()).into(),
            AppError::OutsideCalendar("2040".into()).into(),
            AppError::ProjectionBehind {
                checkpoint: Position::ZERO,
                wanted: Position::MAX,
            }
            .into(),
            AppError::Busy { what: "as_of".into() }.into(),
            AppError::RebuildInProgress.into(),
            AppError::NotDisclosable(Refusal::OverlappingDimension).into(),
            AppError::AuditUnavailable.into(),
            AppError::Contention.into(),
            AppError::Unavailable(caselog_store::Error::AppenderStopped).into(),
            AppError::Internal("bug".into()).into(),
            AppError::Store(caselog_store::Error::DuplicateEventId).into(),
            Error::Unauthenticated("no token".into()),
            Error::TooManyConcurrentRequests { limit: 1 },
            Error::TooManySubscriptions { limit: 1 },
            Error::SubscriberTooSlow {
                resume_from: Position::ZERO,
            },
            Error::ShuttingDown {
                resume_from: Position::ZERO,
            },
            Error::RebuildAbandoned,
            Error::DeadlineExceeded {
                whose: "the server's request timeout",
                millis: 1,
            },
            Denial::RoleNotPermitted {
                organisation: organisation(),
                action: "read",
                allowed: "admin",
            }
            .into(),
            Denial::EventTypeNotPermitted {
                organisation: organisation(),
                event_type: "case_allocated",
                event_index: 0,
                sends: String::new(),
            }
            .into(),
            Denial::NotAParty {
                organisation: organisation(),
            }
            .into(),
            Denial::ServiceAreaNotPermitted {
                organisation: organisation(),
                requested: "A1".into(),
                allowed: "A5".into(),
                what: "metrics",
            }
            .into(),
            Denial::SourceMismatch {
                organisation: organisation(),
                claimed: "x".into(),
            }
            .into(),
            Denial::OutsideCourtNumbering {
                organisation: organisation(),
                court: "LS".into(),
                scope: "MN".into(),
                event_index: 0,
            }
            .into(),
        ];
        errors.extend(Rule::ALL.map(|rule| {
            Error::from(AppError::Rejected {
                rule,
                message: String::new(),
                event_index: 0,
            })
        }));
        for err in &errors {
            match err {
                Error::App(app) => match app {
                    AppError::Invalid { .. }
                    | AppError::Rejected { .. }
                    | AppError::VersionConflict { .. }
                    | AppError::EventIdReused { .. }
                    | AppError::NotFound(_)
                    | AppError::OutsideCalendar(_)
                    | AppError::ProjectionBehind { .. }
                    | AppError::Busy { .. }
                    | AppError::RebuildInProgress
                    | AppError::Denied(_)
                    | AppError::NotDisclosable(_)
                    | AppError::AuditUnavailable
                    | AppError::Contention
                    | AppError::Unavailable(_)
                    | AppError::Store(_)
                    | AppError::Internal(_) => {}
                },
                Error::Unauthenticated(_)
                | Error::TooManyConcurrentRequests { .. }
                | Error::TooManySubscriptions { .. }
                | Error::SubscriberTooSlow { .. }
                | Error::ShuttingDown { .. }
                | Error::RebuildAbandoned
                | Error::DeadlineExceeded { .. } => {}
            }
            if let Error::App(AppError::Denied(denial)) = err {
                match denial {
                    Denial::RoleNotPermitted { .. }
                    | Denial::EventTypeNotPermitted { .. }
                    | Denial::NotAParty { .. }
                    | Denial::ServiceAreaNotPermitted { .. }
                    | Denial::SourceMismatch { .. }
                    | Denial::OutsideCourtNumbering { .. } => {}
                }
            }
        }
        errors
    }

    #[test]
    fn every_reason_is_upper_snake_means_one_thing_and_is_documented() {
        let readme = include_str!("../../../README.md");
        let errors_table = &readme[readme.find("### Errors").unwrap()..];
        let errors_table = &errors_table[..errors_table.find("\n\n#").unwrap_or(errors_table.len())];
        let rules_table = include_str!("../../../docs/events.md");
        let rule_reasons: Vec<&str> = Rule::ALL.iter().map(|r| r.reason()).collect();
        let mut codes: HashMap<&str, Code> = HashMap::new();
        for err in one_of_each() {
            let (code, reason) = err.classify(&mut HashMap::new());
            assert!(
                !reason.is_empty()
                    && reason
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                "{reason} is not UPPER_SNAKE"
            );
            let earlier = *codes.entry(reason).or_insert(code);
            assert_eq!(earlier, code, "{reason} is sent with two codes");
            let documented = if rule_reasons.contains(&reason) {
                rules_table.contains(&format!("`{reason}`"))
            } else {
                errors_table.contains(&format!("`{reason}`"))
            };
            assert!(
                documented,
                "{reason} is not in the README's error table (or docs/events.md for rules)"
            );
        }
        assert_eq!(codes.len(), 25 + Rule::ALL.len(), "{:?}", codes.keys());
    }
}
