-- What an inserting statement may choose, decided by the schema instead of checked afterwards.
--
-- Migration 0005 checked every inserting statement with an AFTER STATEMENT trigger over its
-- transition table: positions above the promise this transaction held (read back from
-- pg_locks) and at most the last allocated, recorded_at = now(), source an organisation name.
-- PostgreSQL's statement statistics, during a one-year import, put that trigger at a quarter
-- of every append statement's time (copying each inserted row into the transition table,
-- reading pg_locks), on top of allocating positions in a function called beforehand.
--
-- Now the database hands out what the service role must not choose:
-- 1. position: the column's default, nextval(), taken row by row in the order the statement
--    produces its rows. Before the first row, a BEFORE STATEMENT trigger takes the promise:
--    the shared advisory lock keyed by the last position allocated so far, so every position
--    the statement takes lies above a promise feed readers see in pg_locks (as before).
-- 2. recorded_at: the column's default, now().
-- 3. The service role may insert every column but these two (`caselog migrate --service-role`
--    grants INSERT column by column), so it cannot name a position below what feed readers have
--    passed, or backdate an event.
-- 4. source: a CHECK constraint, for every role.
-- The owner can still write both columns (a dump's restore does), as it always could drop the
-- trigger.

CREATE FUNCTION caselog_promise_positions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- pg_sequence_last_value(), not a read of the sequence as a table (migration 0008). The
    -- sequence is named with its schema: a restore runs with an empty search_path.
    PERFORM pg_advisory_xact_lock_shared(coalesce(pg_sequence_last_value('public.caselog_event_position'), 0));
    RETURN NULL;
END
$$;

CREATE TRIGGER events_promise_positions
    BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION caselog_promise_positions();

ALTER TABLE events ALTER COLUMN position SET DEFAULT nextval('caselog_event_position');

-- The same test as 0005's '^[A-Za-z0-9:._-]{1,64}$', written so: PostgreSQL's regular
-- expressions expand a counted repetition, and that one took 5 µs a row against 0.25 µs.
-- Adding it reads the whole log once, with appends held back (this migration changes the table
-- in one transaction anyway): 1.7 s for 5 million events on a 2-core machine.
ALTER TABLE events ADD CONSTRAINT events_source_is_an_organisation
    CHECK (length(source) BETWEEN 1 AND 64 AND source !~ '[^A-Za-z0-9:._-]');

DROP TRIGGER events_checked_insert ON events;
DROP FUNCTION caselog_check_inserted_events();
-- Nothing calls it now: positions come from the column's default.
DROP FUNCTION caselog_allocate_positions(integer);

-- Service roles granted by earlier releases had INSERT on the whole table.
DO $$
DECLARE
    grantee text;
BEGIN
    FOR grantee IN SELECT role_name FROM caselog_service_roles WHERE role_name IN (SELECT rolname FROM pg_roles) LOOP
        EXECUTE format('REVOKE INSERT ON events FROM %I', grantee);
        EXECUTE format(
            'GRANT INSERT (event_id, case_id, version, event_type, occurred_on, data, metadata, source) ON events TO %I',
            grantee);
    END LOOP;
END
$$;
