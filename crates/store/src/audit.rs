//! The audit trail (`audit_records`): who read child-level data or acted as an administrator,
//! what, when, and with what outcome. Append-only, like the log.

use crate::{Error, EventLog};
use chrono::{DateTime, Utc};
use tracing::instrument;

/// A record to write.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditEntry {
    pub actor: String,
    pub grants: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: serde_json::Value,
}

/// A written record.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: i64,
    pub recorded_at: DateTime<Utc>,
    #[sqlx(flatten)]
    pub entry: AuditEntry,
}

/// Which records to read, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Records with a greater id (0: from the start).
    pub after_id: i64,
    pub limit: i64,
    pub actor: Option<String>,
    pub target: Option<String>,
    /// Records with an id at most this (the snapshot a paging client pinned).
    pub up_to_id: i64,
}

impl EventLog {
    #[instrument(skip(self, entry), fields(action = %entry.action, outcome = %entry.outcome), err)]
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<i64, Error> {
        let id = sqlx::query_scalar(
            "INSERT INTO audit_records (actor, grants, action, target, outcome, detail)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&entry.actor)
        .bind(&entry.grants)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.outcome)
        .bind(&entry.detail)
        .fetch_one(&self.audit_pool)
        .await?;
        Ok(id)
    }

    /// The id of the last record written (0 when there is none).
    #[instrument(skip(self), err)]
    pub async fn last_audit_id(&self) -> Result<i64, Error> {
        Ok(sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM audit_records")
            .fetch_one(&self.pool)
            .await?)
    }

    #[instrument(skip(self), err)]
    pub async fn read_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, Error> {
        Ok(sqlx::query_as(
            "SELECT id, recorded_at, actor, grants, action, target, outcome, detail FROM audit_records
             WHERE id > $1 AND id <= $5 AND ($2::text IS NULL OR actor = $2) AND ($3::text IS NULL OR target = $3)
             ORDER BY id LIMIT $4",
        )
        .bind(query.after_id)
        .bind(&query.actor)
        .bind(&query.target)
        .bind(query.limit)
        .bind(query.up_to_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Grants the service's database role what it needs and no more: it reads and appends to the
/// log and the audit trail but cannot change or remove a row of either, nor choose an event's
/// position or `recorded_at` (the database's defaults); it reads and writes the
/// projection tables' rows, and rebuilds them only through the owner's functions (it creates no
/// table). Run by the owner of the schema after the migrations (`caselog migrate
/// --service-role`); idempotent.
#[instrument(skip(pool), err)]
pub async fn grant_service_role(pool: &sqlx::PgPool, role: &str) -> Result<(), Error> {
    let valid = !role.is_empty()
        && role.len() <= 63
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(Error::InvalidRoleName(role.to_owned()));
    }
    let statements = [
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("REVOKE CREATE ON SCHEMA public FROM {role}"),
        format!("REVOKE ALL ON events, audit_records FROM {role}"),
        format!("GRANT SELECT ON events, audit_records TO {role}"),
        format!("GRANT INSERT ON audit_records TO {role}"),
        // Not position nor recorded_at: their defaults hand them out (migration 0009).
        format!(
            "GRANT INSERT (event_id, case_id, version, event_type, occurred_on, data, metadata, source) ON events TO {role}"
        ),
        format!("GRANT USAGE, SELECT ON SEQUENCE caselog_event_position TO {role}"),
        // So that a release's pods can wait for its migrations (`caselog migrate --check`).
        format!("GRANT SELECT ON _sqlx_migrations TO {role}"),
        // Earlier releases handed the projection tables to the service role; the owner's
        // rebuild functions need them back.
        "ALTER TABLE case_facts OWNER TO CURRENT_USER".to_owned(),
        "ALTER TABLE projection_checkpoints OWNER TO CURRENT_USER".to_owned(),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON case_facts, case_facts_history, projection_checkpoints, \
             read_model_snapshots, read_model_snapshot_parts TO {role}"
        ),
        format!("INSERT INTO caselog_service_roles (role_name) VALUES ('{role}') ON CONFLICT DO NOTHING"),
        format!(
            "GRANT EXECUTE ON FUNCTION caselog_rebuild_create(), caselog_rebuild_index(), \
             caselog_rebuild_drop(), caselog_rebuild_switch() TO {role}"
        ),
    ];
    let mut tx = pool.begin().await?;
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}
