-- The case-facts projection stores each case's facts in the compact encoding its history rows
-- already use (a format byte, then the encoding: `caselog_app::stored_facts`), in a new column,
-- `stored`.
--
-- Why: a national rebuild wrote about 900 bytes of JSON per case into `facts`, which PostgreSQL
-- parsed into jsonb key by key. On a 2-core machine that was the largest single cost of a
-- rebuild's loading phase. The encoding takes about a fifth of the bytes and is not parsed.
--
-- This is the first of two steps, so that the previous release keeps working beside this one
-- (docs/operations.md, "Upgrades"):
-- * The projector of this release writes both columns; the previous release reads and writes
--   `facts` only.
-- * A row whose `facts` a writer changes without writing `stored` (the previous release's
--   projector) loses its `stored` (the trigger below), so `stored` is never stale. Readers of
--   this release read `stored`, or `facts` as JSON text where `stored` is empty.
-- * A rebuild by this release writes `stored` only: run it once no pod of the previous release
--   is left (those would fail to read the rows).
-- A later release drops `facts` once every row has `stored`.
ALTER TABLE case_facts ALTER COLUMN facts DROP NOT NULL, ADD COLUMN stored bytea;

CREATE FUNCTION caselog_case_facts_stored_follows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.stored IS NOT DISTINCT FROM OLD.stored AND NEW.facts IS DISTINCT FROM OLD.facts THEN
        NEW.stored := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER case_facts_stored_follows
    BEFORE UPDATE ON case_facts
    FOR EACH ROW EXECUTE FUNCTION caselog_case_facts_stored_follows();

ALTER TABLE case_facts ADD CONSTRAINT case_facts_has_facts CHECK (facts IS NOT NULL OR stored IS NOT NULL);

-- The rebuilt table has the same columns, constraint and trigger (which travel with it when the
-- switch renames it).
CREATE OR REPLACE FUNCTION caselog_rebuild_create() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    grantee text;
BEGIN
    DROP TABLE IF EXISTS case_facts_rebuild;
    DROP TABLE IF EXISTS case_facts_history_rebuild;
    CREATE TABLE case_facts_rebuild (
        case_id text NOT NULL,
        facts jsonb,
        as_of_position bigint NOT NULL,
        stored bytea,
        CONSTRAINT case_facts_has_facts CHECK (facts IS NOT NULL OR stored IS NOT NULL)
    );
    CREATE TRIGGER case_facts_stored_follows
        BEFORE UPDATE ON case_facts_rebuild
        FOR EACH ROW EXECUTE FUNCTION caselog_case_facts_stored_follows();
    CREATE TABLE case_facts_history_rebuild (case_id text NOT NULL, recorded_at timestamptz NOT NULL, facts bytea);
    FOR grantee IN SELECT role_name FROM caselog_service_roles WHERE role_name IN (SELECT rolname FROM pg_roles) LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON case_facts_rebuild TO %I', grantee);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON case_facts_history_rebuild TO %I', grantee);
    END LOOP;
END
$$;
