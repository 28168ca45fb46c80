-- The case-facts projection stores each case's facts in the compact encoding its history rows
-- already use (a format byte, then the encoding: `caselog_app::stored_facts`), not as jsonb.
--
-- A national rebuild wrote about 900 bytes of JSON per case, which PostgreSQL parsed into jsonb
-- key by key: on a 2-core machine that was the largest single cost of a rebuild's loading
-- phase, and a share of every projection step. The encoding takes about a fifth of the bytes.
--
-- Rows written before this migration keep their JSON, as its UTF-8 bytes (a '{' where the
-- format byte would be): readers decode both forms, and the next rebuild rewrites every row.
-- The change rewrites the table under an exclusive lock: about a second per 100,000 cases.
ALTER TABLE case_facts ALTER COLUMN facts TYPE bytea USING convert_to(facts::text, 'UTF8');

CREATE OR REPLACE FUNCTION caselog_rebuild_create() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    grantee text;
BEGIN
    DROP TABLE IF EXISTS case_facts_rebuild;
    DROP TABLE IF EXISTS case_facts_history_rebuild;
    CREATE TABLE case_facts_rebuild (case_id text NOT NULL, facts bytea NOT NULL, as_of_position bigint NOT NULL);
    CREATE TABLE case_facts_history_rebuild (case_id text NOT NULL, recorded_at timestamptz NOT NULL, facts bytea);
    FOR grantee IN SELECT role_name FROM caselog_service_roles WHERE role_name IN (SELECT rolname FROM pg_roles) LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON case_facts_rebuild TO %I', grantee);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON case_facts_history_rebuild TO %I', grantee);
    END LOOP;
END
$$;
