-- What the service's database role cannot do, even with its own credentials in other hands.
--
-- 1. It creates no tables. The rebuild's table is created, indexed, switched in and dropped by
--    functions that run as the owner of the schema (SECURITY DEFINER); the service role only
--    calls them, and is granted rows, not ownership, on the projection tables.
-- 2. It cannot choose an event's position, recorded_at or source freely: a statement that
--    inserts events is checked by the database. Every position must lie above a position
--    promise this transaction holds (caselog_allocate_positions) and at or below the last one
--    handed out, so no event can be slipped in below what feed readers have already passed;
--    recorded_at must be the transaction's now(); source must be an organisation name.

-- The roles the rebuild functions grant the rebuilt table to (written by
-- `caselog migrate --service-role`, as the owner).
CREATE TABLE caselog_service_roles (
    role_name text PRIMARY KEY
);

CREATE FUNCTION caselog_rebuild_create() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    grantee text;
BEGIN
    DROP TABLE IF EXISTS case_facts_rebuild;
    CREATE TABLE case_facts_rebuild (case_id text NOT NULL, facts jsonb NOT NULL, as_of_position bigint NOT NULL);
    FOR grantee IN SELECT role_name FROM caselog_service_roles WHERE role_name IN (SELECT rolname FROM pg_roles) LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON case_facts_rebuild TO %I', grantee);
    END LOOP;
END
$$;

-- After the bulk load: cheaper than maintaining the indexes while loading. Without statistics
-- the planner would scan the whole table for the few rows a reader asks for.
CREATE FUNCTION caselog_rebuild_index() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    ALTER TABLE case_facts_rebuild ADD CONSTRAINT case_facts_rebuild_pkey PRIMARY KEY (case_id);
    CREATE INDEX case_facts_rebuild_by_position ON case_facts_rebuild (as_of_position);
    ANALYZE case_facts_rebuild;
END
$$;

CREATE FUNCTION caselog_rebuild_drop() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    DROP TABLE IF EXISTS case_facts_rebuild;
END
$$;

-- Called in the transaction that holds the live checkpoint row; the grants travel with the
-- renamed table.
CREATE FUNCTION caselog_rebuild_switch() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    DROP TABLE case_facts;
    ALTER TABLE case_facts_rebuild RENAME TO case_facts;
    ALTER INDEX case_facts_rebuild_pkey RENAME TO case_facts_pkey;
    ALTER INDEX case_facts_rebuild_by_position RENAME TO case_facts_by_position;
END
$$;

REVOKE EXECUTE ON FUNCTION caselog_rebuild_create(), caselog_rebuild_index(), caselog_rebuild_drop(),
    caselog_rebuild_switch() FROM PUBLIC;

-- One check per inserting statement (COPY included), over the rows it inserted: a row trigger
-- would read pg_locks once per row, which costs as much as the insert itself.
CREATE FUNCTION caselog_check_inserted_events() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    lowest bigint;
    highest bigint;
    restamped boolean;
    bad_source text;
    promise bigint;
BEGIN
    SELECT min(position), max(position), bool_or(recorded_at IS DISTINCT FROM now()),
           min(source) FILTER (WHERE source !~ '^[A-Za-z0-9:._-]{1,64}$')
      INTO lowest, highest, restamped, bad_source
      FROM inserted;
    IF lowest IS NULL THEN
        RETURN NULL;
    END IF;
    IF restamped THEN
        RAISE EXCEPTION 'events: recorded_at is stamped by the database (now() of the appending transaction)'
            USING ERRCODE = 'CL002';
    END IF;
    IF bad_source IS NOT NULL THEN
        RAISE EXCEPTION 'events: source % is not an organisation name', quote_literal(left(bad_source, 80))
            USING ERRCODE = 'CL002';
    END IF;
    SELECT min((l.classid::bigint << 32) | l.objid::bigint)
      INTO promise
      FROM pg_locks l
     WHERE l.locktype = 'advisory'
       AND l.objsubid = 1
       AND l.pid = pg_backend_pid()
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
    IF promise IS NULL OR lowest <= promise OR highest > caselog_last_allocated_position() THEN
        RAISE EXCEPTION 'events: positions come from caselog_allocate_positions() in the appending transaction (got %..%)', lowest, highest
            USING ERRCODE = 'CL002';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_checked_insert
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION caselog_check_inserted_events();
