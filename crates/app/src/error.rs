//! What can go wrong in the application: refusals a caller can act on, and failures of the
//! store. `caselog-server` turns each into a gRPC status (its `error.rs`); the command line
//! prints [`Error::detail`].

use caselog_domain::{BatchRejection, Denial, EventId, FieldViolation, Position, Rejection, Rule, Version};

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
    VersionConflict { expected: Version, actual: Version },
    #[error("event {event_id} is already recorded with different content; a new event needs a new event_id")]
    EventIdReused { event_id: EventId, event_index: usize },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}; ask about dates the working-day calendar covers")]
    OutsideCalendar(String),
    #[error("the projections have applied position {checkpoint}, not yet {wanted}; retry shortly")]
    ProjectionBehind { checkpoint: Position, wanted: Position },
    #[error("{what}; retry shortly")]
    Busy { what: String },
    #[error("another rebuild of the projections is running; wait for it to finish")]
    RebuildInProgress,
    #[error("permission denied: {0}")]
    Denied(#[from] Denial),
    #[error("permission denied: {0}")]
    NotDisclosable(caselog_projections::disclosure::Refusal),
    #[error("the audit trail could not record this access, so it was not served; retry later")]
    AuditUnavailable,
    #[error("the appends to this case kept conflicting; retry later")]
    Contention,
    #[error("the event store is unavailable; retry later")]
    Unavailable(#[source] caselog_store::Error),
    /// A store failure that is not an outage (a corrupt row, a statement PostgreSQL refused):
    /// a fault of the service, kept with its source so that the log shows the whole chain.
    #[error("internal error")]
    Store(#[source] caselog_store::Error),
    #[error("internal error")]
    Internal(String),
}

impl Error {
    /// The message with internal detail, for operators (logs, the command line); never sent to
    /// a client.
    pub fn detail(&self) -> String {
        match self {
            Error::Internal(detail) => format!("internal error: {detail}"),
            Error::Unavailable(_) | Error::Store(_) => chain(self),
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
            other => Error::Store(other),
        }
    }
}

impl From<caselog_projections::metrics::MetricsError> for Error {
    fn from(err: caselog_projections::metrics::MetricsError) -> Error {
        use caselog_projections::metrics::MetricsError;
        match err {
            MetricsError::Calendar(out) => Error::OutsideCalendar(out.to_string()),
            MetricsError::NotDisclosable(refusal) => Error::NotDisclosable(refusal),
            MetricsError::NotOneFigure => Error::invalid(vec![FieldViolation::new(
                "metric_id",
                "units are listed for one figure id (e.g. \"T4\", \"S2.cases_over_52_weeks\"), not grouped",
            )]),
        }
    }
}

/// At most this many field violations are described in a refusal (message and `BadRequest`):
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

/// How many violations are left out of a refusal, if any.
pub fn more_than_sent(violations: &[FieldViolation]) -> Option<usize> {
    violations.len().checked_sub(MAX_VIOLATIONS_SENT).filter(|n| *n > 0)
}

/// An error and every source under it, outermost first: what an operator needs in a log line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("statement refused")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_log_line_keeps_every_source() {
        let err = Outer(std::io::Error::other("connection reset"));
        assert_eq!(chain(&err), "statement refused: connection reset");
        let store = Error::from(caselog_store::Error::AppenderStopped);
        assert!(matches!(store, Error::Store(_)));
        assert_eq!(store.detail(), "internal error: the group appender has stopped");
    }
}
