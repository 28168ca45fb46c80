//! The caselog domain: case events, the case lifecycle (fold and decide), input validation and
//! the reference data they need (service areas, the civil date in England).
//!
//! This crate does no I/O, is not async and knows nothing of PostgreSQL or gRPC: callers hand it
//! the case's recorded history and "today", and it answers with a decision.

pub mod access;
pub mod case;
pub mod dates;
pub mod england;
pub mod event;
mod ids;
pub mod interchange;
pub mod reference;
pub mod rules;
mod validate;

pub use access::{Denial, Grant, MetricsAccess, Principal};
pub use case::{CaseHistory, CaseView, HistoryEvent};
pub use event::{ALLOCATION_OVERHEAD, EventType, Metadata, NewEvent, Payload};
pub use ids::{CaseId, EventId, OutOfRange, Position, Version};
pub use rules::{BatchRejection, FieldViolation, Rejection, Rule};
pub use validate::validate_event;
