//! Audits an RPC: records its outcome (the status code and reason it answers with) through the
//! application's audit writer. A read whose record cannot be written is not served:
//! special-category data is never read unrecorded.

use crate::error::Error;
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
    match record(log, principal, action, target, detail, outcome).await {
        Ok(()) => result,
        Err(unrecorded) => match result {
            Ok(_) => Err(unrecorded.into()),
            Err(original) => Err(original),
        },
    }
}
