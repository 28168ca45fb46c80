//! Black-box tests of the gRPC API: a real server on 127.0.0.1:0, a real client, a fresh
//! PostgreSQL database per test.

#![allow(clippy::unwrap_used)]

mod as_of_history;
mod auth;
mod concurrency;
mod database_tls;
mod deploy;
mod disclosure;
mod feed;
mod hardening;
mod idempotency;
mod import;
mod least_privilege;
mod many_cases;
mod metrics;
mod observability;
mod operations;
mod rebuild;
mod replica;
mod report;
mod restore;
mod rules;
mod series;
mod write_path;
