//! The peer measurement: the same one-event appends through cqrs-es with postgres-es 0.5, the
//! most used Rust event-sourcing framework, on its documented schema in the same database.
//!
//! Built only with the `peer` feature (it brings in a second sqlx, the 0.8 that postgres-es
//! uses), so the service's build and CI do not pay for it:
//! `cargo build --release -p caselog-bench --features peer`.
//!
//! The aggregate is the smallest that still does what cqrs-es is for: it loads the case's events
//! (postgres-es has no cache: every command reads the aggregate's whole stream), checks that a
//! hearing is listed only on an issued case, and appends one event in its own transaction. Its
//! events carry the same JSON data as caselog's.

use anyhow::Context;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use postgres_es::{PostgresCqrs, PostgresEventRepository};
use serde::{Deserialize, Serialize};
use sqlx08::postgres::PgPoolOptions;
use std::sync::Arc;
use std::time::Instant;

const EVENTS_TABLE: &str = "peer_es_events";
const SNAPSHOTS_TABLE: &str = "peer_es_snapshots";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Case {
    issued: bool,
    hearings: u32,
}

pub enum CaseCommand {
    Issue,
    ListHearing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CaseEvent {
    CaseIssued(serde_json::Value),
    HearingListed(serde_json::Value),
}

impl DomainEvent for CaseEvent {
    fn event_type(&self) -> String {
        match self {
            CaseEvent::CaseIssued(_) => "case_issued",
            CaseEvent::HearingListed(_) => "hearing_listed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("the case is already issued")]
    AlreadyIssued,
    #[error("the case is not issued")]
    NotIssued,
}

impl Aggregate for Case {
    const TYPE: &'static str = "case";
    type Command = CaseCommand;
    type Event = CaseEvent;
    type Error = CaseError;
    type Services = ();

    async fn handle(&mut self, command: CaseCommand, _: &(), sink: &EventSink<Self>) -> Result<(), CaseError> {
        match command {
            CaseCommand::Issue if self.issued => return Err(CaseError::AlreadyIssued),
            CaseCommand::Issue => sink.write(CaseEvent::CaseIssued(issue_data()), self).await,
            CaseCommand::ListHearing if !self.issued => return Err(CaseError::NotIssued),
            CaseCommand::ListHearing => sink.write(CaseEvent::HearingListed(hearing_data()), self).await,
        }
        Ok(())
    }

    fn apply(&mut self, event: CaseEvent) {
        match event {
            CaseEvent::CaseIssued(_) => self.issued = true,
            CaseEvent::HearingListed(_) => self.hearings += 1,
        }
    }
}

/// The data caselog records for the suite's case_issued (the same fields and values).
fn issue_data() -> serde_json::Value {
    serde_json::json!({
        "law_type": "private", "application_types": ["s8_child_arrangements"], "court_code": "LS",
        "service_area": "A5", "local_authority_code": null,
        "children": [{"child_id": "c-1", "birth_month": "2018-05"}], "received_on": null
    })
}

fn hearing_data() -> serde_json::Value {
    serde_json::json!({"hearing_type": "cmh", "listed_for": "2025-07-01"})
}

/// The framework over its own pool (sqlx 0.8), one connection per client as the other sides.
#[derive(Clone)]
pub struct Peer {
    cqrs: Arc<PostgresCqrs<Case>>,
    pool: sqlx08::PgPool,
}

impl Peer {
    /// Connects, and creates the documented tables once per database, filled with a copy of the
    /// events log (as the raw side's table is), so all three sides append to a table of the
    /// same size.
    pub async fn connect(database_url: &str, clients: u32) -> anyhow::Result<Peer> {
        let pool = PgPoolOptions::new()
            .max_connections(clients.max(1))
            .connect(database_url)
            .await
            .context("connecting the peer's pool")?;
        let exists: bool = sqlx08::query_scalar(&format!("SELECT to_regclass('{EVENTS_TABLE}') IS NOT NULL"))
            .fetch_one(&pool)
            .await?;
        if !exists {
            let started = Instant::now();
            let mut connection = pool.acquire().await?;
            for statement in [
                "SET statement_timeout = 0".to_owned(),
                // postgres-es's db/init.sql, with the table names this suite gives them.
                format!(
                    "CREATE TABLE {EVENTS_TABLE} (
                        aggregate_type text NOT NULL,
                        aggregate_id text NOT NULL,
                        sequence bigint CHECK (sequence >= 0) NOT NULL,
                        event_type text NOT NULL,
                        event_version text NOT NULL,
                        payload json NOT NULL,
                        metadata json NOT NULL,
                        PRIMARY KEY (aggregate_type, aggregate_id, sequence))"
                ),
                format!(
                    "CREATE TABLE {SNAPSHOTS_TABLE} (
                        aggregate_type text NOT NULL,
                        aggregate_id text NOT NULL,
                        last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
                        current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
                        payload json NOT NULL,
                        PRIMARY KEY (aggregate_type, aggregate_id, last_sequence))"
                ),
                format!(
                    "INSERT INTO {EVENTS_TABLE}
                     SELECT 'case', case_id, version, event_type, '1', data::json, metadata::json FROM events"
                ),
                format!("ANALYZE {EVENTS_TABLE}"),
                "SET statement_timeout = DEFAULT".to_owned(),
            ] {
                sqlx08::query(&statement).execute(&mut *connection).await?;
            }
            println!(
                "\n(peer side: {EVENTS_TABLE} created as postgres-es documents it, a copy of the events log, in {:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
        let repository = PostgresEventRepository::new(pool.clone()).with_tables(EVENTS_TABLE, SNAPSHOTS_TABLE);
        let store = cqrs_es::persist::PersistedEventStore::new_event_store(repository);
        Ok(Peer {
            cqrs: Arc::new(cqrs_es::CqrsFramework::new(store, Vec::new(), ())),
            pool,
        })
    }

    /// Closes the peer's connections, so that the next measurement's sides have the server's
    /// connection slots (PostgreSQL's default is 100; at 32 clients the service, the raw side
    /// and the peer hold about 96).
    pub async fn close(self) {
        self.pool.close().await;
    }

    /// One command: the first to a case issues it, later ones list a hearing.
    pub async fn append(&self, case_id: &str, first: bool) -> anyhow::Result<()> {
        let command = if first {
            CaseCommand::Issue
        } else {
            CaseCommand::ListHearing
        };
        self.cqrs
            .execute(case_id, command)
            .await
            .map_err(|e| anyhow::anyhow!("postgres-es append to {case_id}: {e}"))
    }
}
