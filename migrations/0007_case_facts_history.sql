-- The history of the case-facts projection, for as_of answers. For each case and each instant
-- at which events of the case were recorded (one append), the facts after them (NULL: the case
-- had no facts then). The facts of a case at an instant T are then one row's: the last one
-- recorded at or before T. Derived data like case_facts: written by the projector in the
-- transaction that moves its checkpoint, and rebuilt with it.
CREATE TABLE case_facts_history (
    case_id     text        NOT NULL,
    recorded_at timestamptz NOT NULL,
    -- The facts in the read model's compact encoding, led by the encoding's format number.
    facts       bytea,
    PRIMARY KEY (case_id, recorded_at)
);

-- Whether the history covers the whole log. Only a rebuild fills it for events projected before
-- this migration, so a database that already has events starts without it (as_of then folds
-- from the log, as before) until `caselog rebuild` switches.
ALTER TABLE projection_checkpoints ADD COLUMN history_complete boolean NOT NULL DEFAULT false;
UPDATE projection_checkpoints SET history_complete = NOT EXISTS (SELECT 1 FROM events);

DO $$
DECLARE
    grantee text;
BEGIN
    FOR grantee IN SELECT role_name FROM caselog_service_roles WHERE role_name IN (SELECT rolname FROM pg_roles) LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON case_facts_history TO %I', grantee);
    END LOOP;
END
$$;

-- The rebuild functions of migration 0005, now building the history beside the facts.
CREATE OR REPLACE FUNCTION caselog_rebuild_create() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    grantee text;
BEGIN
    DROP TABLE IF EXISTS case_facts_rebuild;
    DROP TABLE IF EXISTS case_facts_history_rebuild;
    CREATE TABLE case_facts_rebuild (case_id text NOT NULL, facts jsonb NOT NULL, as_of_position bigint NOT NULL);
    CREATE TABLE case_facts_history_rebuild (case_id text NOT NULL, recorded_at timestamptz NOT NULL, facts bytea);
    FOR grantee IN SELECT role_name FROM caselog_service_roles WHERE role_name IN (SELECT rolname FROM pg_roles) LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON case_facts_rebuild TO %I', grantee);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON case_facts_history_rebuild TO %I', grantee);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION caselog_rebuild_index() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    ALTER TABLE case_facts_rebuild ADD CONSTRAINT case_facts_rebuild_pkey PRIMARY KEY (case_id);
    CREATE INDEX case_facts_rebuild_by_position ON case_facts_rebuild (as_of_position);
    ALTER TABLE case_facts_history_rebuild ADD CONSTRAINT case_facts_history_rebuild_pkey PRIMARY KEY (case_id, recorded_at);
    ANALYZE case_facts_rebuild;
    ANALYZE case_facts_history_rebuild;
END
$$;

CREATE OR REPLACE FUNCTION caselog_rebuild_drop() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    DROP TABLE IF EXISTS case_facts_rebuild;
    DROP TABLE IF EXISTS case_facts_history_rebuild;
END
$$;

CREATE OR REPLACE FUNCTION caselog_rebuild_switch() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    DROP TABLE case_facts;
    ALTER TABLE case_facts_rebuild RENAME TO case_facts;
    ALTER INDEX case_facts_rebuild_pkey RENAME TO case_facts_pkey;
    ALTER INDEX case_facts_rebuild_by_position RENAME TO case_facts_by_position;
    DROP TABLE case_facts_history;
    ALTER TABLE case_facts_history_rebuild RENAME TO case_facts_history;
    ALTER INDEX case_facts_history_rebuild_pkey RENAME TO case_facts_history_pkey;
END
$$;
