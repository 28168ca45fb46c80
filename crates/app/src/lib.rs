//! The application: what caselog does, with no transport in it. The write path (`ingest`:
//! deciding an append against the case's history, with its cache of recently written cases),
//! the projector that keeps the case-facts projection current, the rebuild, the audit writer and
//! the read model that answers metrics and worklists (`read_model`, `as_of` included, and its
//! snapshots).
//!
//! The gRPC crate (`caselog-server`) and the command line call it; it knows PostgreSQL only
//! through `caselog-store`. **Architecture invariant:** no tonic, prost or generated protobuf
//! types here; only this crate and `caselog-store` depend on sqlx.

mod as_of;
pub mod audit;
pub mod cache;
pub mod error;
mod history;
pub mod ingest;
pub mod projector;
pub mod read_model;
pub mod rebuild;
mod snapshot;
pub mod stored_facts;

pub use error::Error;
pub use read_model::ReadModel;
