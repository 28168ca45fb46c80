-- The audit trail: one row for every read of child-level data (case timelines, worklists, the
-- global feed) and every administrative action, with its outcome, denials included.
-- Append-only like the events table: the same trigger refuses UPDATE, DELETE and TRUNCATE.
CREATE TABLE audit_records (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- clock_timestamp(), not now(): a record is written when the action ends.
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The authenticated organisation and its grants at the time.
    actor        text        NOT NULL,
    grants       text        NOT NULL,
    -- The RPC, e.g. caselog.v1.CaseEventService/GetCase.
    action       text        NOT NULL,
    -- What was read or acted on: a case id, a service area, a feed range.
    target       text        NOT NULL,
    -- OK, or the status code and ErrorInfo reason sent to the caller.
    outcome      text        NOT NULL,
    -- Counts and parameters (never child-level content).
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_records_by_actor ON audit_records (actor, id);

CREATE TRIGGER audit_records_append_only_rows
    BEFORE UPDATE OR DELETE ON audit_records
    FOR EACH ROW EXECUTE FUNCTION caselog_refuse_change();

CREATE TRIGGER audit_records_append_only_truncate
    BEFORE TRUNCATE ON audit_records
    FOR EACH STATEMENT EXECUTE FUNCTION caselog_refuse_change();
