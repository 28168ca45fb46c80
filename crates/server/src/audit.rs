//! Audits an RPC: records its outcome (the status code and reason it answers with) through the
//! application's audit writer. A read whose record cannot be written is not served:
//! special-category data is never read unrecorded.

use crate::error::{AppError, Error};
pub use caselog_app::audit::{OK, record};
use caselog_domain::Principal;
use caselog_store::EventLog;

/// Records `action` on `target` by `principal` with the outcome of `result`, and passes the
/// result on. `detail` holds counts and parameters, never child-level content.
pub async fn recorded<T>(
    log: &EventLog,
    principal: &Principal,
    action: &str,
    target: &str,
    detail: serde_json::Value,
    result: Result<T, Error>,
) -> Result<T, Error> {
    let outcome = match &result {
        Ok(_) => OK.to_owned(),
        Err(err) => err.outcome(),
    };
    let writing = counting_failure(record(log, principal, action, target, detail, outcome));
    // A call that failed because the store is unavailable has already waited for it once: its
    // record is tried through the audit connections, but the caller is not kept waiting for
    // them as long again. (`record` logs a record it could not write.)
    let written = if matches!(result, Err(Error::App(AppError::Unavailable(_)))) {
        tokio::time::timeout(OUTAGE_RECORD_WAIT, writing)
            .await
            .unwrap_or_else(|_| {
                count_audit_write_failure(1);
                tracing::error!(
                    action,
                    target,
                    "audit record of a call that found the store unavailable not written in time"
                );
                Err(AppError::AuditUnavailable)
            })
    } else {
        writing.await
    };
    match written {
        Ok(()) => result,
        Err(unrecorded) => match result {
            Ok(_) => Err(unrecorded.into()),
            Err(original) => Err(original),
        },
    }
}

/// Waits for an audit record being written (see [`caselog_app::audit::record`]), counting it
/// when it could not be (`caselog_audit_write_failures_total`: each is a call refused or
/// unrecorded).
pub async fn counting_failure(writing: impl Future<Output = Result<(), AppError>>) -> Result<(), AppError> {
    let written = writing.await;
    if written.is_err() {
        count_audit_write_failure(1);
    }
    written
}

/// Counts an audit record that could not be written. Failures are rare, so the instrument is
/// looked up each time (the meter provider keeps one count per name), from whichever provider
/// is current.
pub(crate) fn count_audit_write_failure(failures: u64) {
    opentelemetry::global::meter("caselog")
        .u64_counter("caselog.audit.write_failures")
        .with_description(
            "Audit records that could not be written (the read was refused, or a refusal went unrecorded)",
        )
        .build()
        .add(failures, &[]);
}

/// How long the record of a call that found the store unavailable may take.
const OUTAGE_RECORD_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
