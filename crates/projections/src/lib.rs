//! Projections: case facts folded from the log (`facts`), and the metric catalogue computed over
//! them (`metrics`). Pure and synchronous: the store feeds facts in, the server asks questions.

pub mod disclosure;
pub mod facts;
pub mod metrics;
pub mod targets;
pub mod worklists;

pub use facts::{CaseFacts, Reach, SharedCodes, facts_of};
pub use metrics::{Dimension, MetricId, MetricResult, MetricsQuery, Period, Row, Unit, compute, units_of};
pub use worklists::{WorklistItem, WorklistKind, worklist};
