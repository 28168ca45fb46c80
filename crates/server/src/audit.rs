//! Writes the audit trail: one record per read of child-level data and per administrative
//! action, after the action, with its outcome. A read whose record cannot be written is not
//! served: special-category data is never read unrecorded.

use crate::error::Error;
use caselog_domain::Principal;
use caselog_store::{AuditEntry, EventLog};
use tracing::error;

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
    match record(log, principal, action, target, detail, outcome).await {
        Ok(()) => result,
        Err(unrecorded) => match result {
            Ok(_) => Err(unrecorded),
            Err(original) => Err(original),
        },
    }
}

/// The outcome of a successful action.
pub const OK: &str = "OK";

/// Records an action whose outcome is not a plain result (a stream that ended or was abandoned).
pub async fn record(
    log: &EventLog,
    principal: &Principal,
    action: &str,
    target: &str,
    detail: serde_json::Value,
    outcome: String,
) -> Result<(), Error> {
    let entry = AuditEntry {
        actor: principal.organisation.clone(),
        grants: grants_text(principal),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome,
        detail,
    };
    log.record_audit(&entry).await.map(|_| ()).map_err(|err| {
        error!(error = %err, action, target, "audit record not written");
        Error::AuditUnavailable
    })
}

pub fn grants_text(principal: &Principal) -> String {
    principal
        .grants
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
