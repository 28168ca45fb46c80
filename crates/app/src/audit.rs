//! Writes the audit trail: one record per read of child-level data and per administrative
//! action, after the action, with its outcome. A read whose record cannot be written is not
//! served: special-category data is never read unrecorded.

use crate::error::Error;
use caselog_domain::Principal;
use caselog_store::{AuditEntry, EventLog};
use tracing::error;

/// The outcome of a successful action.
pub const OK: &str = "OK";

/// Records `action` on `target` by `principal` with its `outcome` (e.g. [`OK`], or a refusal's
/// code and reason). `detail` holds counts and parameters, never child-level content.
pub async fn record(
    log: &EventLog,
    principal: &Principal,
    action: &str,
    target: &str,
    detail: serde_json::Value,
    outcome: String,
) -> Result<(), Error> {
    let entry = AuditEntry {
        actor: bounded(&principal.organisation),
        grants: bounded(&grants_text(principal)),
        action: action.to_owned(),
        target: bounded(target),
        outcome,
        detail: bounded_json(detail),
    };
    log.record_audit(&entry).await.map(|_| ()).map_err(|err| {
        error!(error = %crate::error::chain(&err), action, target, "audit record not written");
        Error::AuditUnavailable
    })
}

/// The longest request string recorded as it is.
const MAX_RECORDED_CHARS: usize = 128;
/// How much of a longer (or unprintable) string is kept, before its digest.
const RECORDED_PREFIX_CHARS: usize = 64;

/// A request string as the permanent trail records it: as sent when short and printable, else
/// a printable prefix and the SHA-256 of the whole, so that any caller's bytes are recorded
/// (PostgreSQL refuses NUL in text) and no caller can write megabytes into a table that is
/// never cleaned.
pub fn bounded(text: &str) -> String {
    let printable = |c: char| !c.is_control();
    if text.chars().count() <= MAX_RECORDED_CHARS && text.chars().all(printable) {
        return text.to_owned();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let prefix: String = text
        .chars()
        .take(RECORDED_PREFIX_CHARS)
        .map(|c| if printable(c) { c } else { '\u{FFFD}' })
        .collect();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}...[{} bytes, sha256:{hex}]", text.len())
}

/// `detail` with every string in it (keys too) [`bounded`].
fn bounded_json(detail: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match detail {
        Value::String(text) => Value::String(bounded(&text)),
        Value::Array(items) => Value::Array(items.into_iter().map(bounded_json).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, value)| (bounded(&key), bounded_json(value)))
                .collect(),
        ),
        other => other,
    }
}

pub fn grants_text(principal: &Principal) -> String {
    principal
        .grants
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
