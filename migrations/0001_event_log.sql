-- The append-only event log. One row per event; nothing is ever updated or deleted.
--
-- position: global order, allocated by caselog_allocate_positions() (below) so that a tailing
--           reader can follow it with a plain integer cursor and never skip (see
--           caselog_safe_position()). Gaps are normal: a rolled-back append leaves one.
-- version:  per-case order, 1 for case_issued; unique per case whatever the isolation level.
-- event_id: chosen by the sender and unique forever, which makes resending harmless.

CREATE SEQUENCE caselog_event_position AS bigint START WITH 1 CACHE 1;

CREATE TABLE events (
    position     bigint      NOT NULL,
    event_id     uuid        NOT NULL,
    case_id      text        NOT NULL,
    version      integer     NOT NULL CHECK (version >= 1),
    event_type   text        NOT NULL,
    occurred_on  date        NOT NULL,
    data         jsonb       NOT NULL,
    metadata     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    source       text        NOT NULL,
    -- The commit time of the append: an append is a single statement in its own transaction.
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_case_version_key UNIQUE (case_id, version)
);

CREATE FUNCTION caselog_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the % table is append-only: % is refused; correct a mistake with a later event', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'CL001';
END
$$;

CREATE TRIGGER events_append_only_rows
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION caselog_refuse_change();

CREATE TRIGGER events_append_only_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION caselog_refuse_change();

-- The highest position handed out so far (0 when none). Sequences are not transactional, so
-- this sees allocations of transactions that have not committed yet.
CREATE FUNCTION caselog_last_allocated_position() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM caselog_event_position
$$;

-- Allocates n positions for one append. Before taking them, the transaction takes a shared
-- transaction-level advisory lock whose key is the last position allocated so far: a promise,
-- visible in pg_locks to every session until commit or rollback, that all positions it takes are
-- greater than the key. Writers never wait for each other (shared locks do not conflict).
CREATE FUNCTION caselog_allocate_positions(n integer) RETURNS bigint[]
LANGUAGE plpgsql AS $$
BEGIN
    -- Reads the sequence row directly (not via caselog_last_allocated_position()): this runs on
    -- every append, and each function call costs.
    PERFORM pg_advisory_xact_lock_shared(last_value - (NOT is_called)::integer) FROM caselog_event_position;
    IF n = 1 THEN
        RETURN ARRAY[nextval('caselog_event_position')];
    END IF;
    RETURN ARRAY(SELECT nextval('caselog_event_position') FROM generate_series(1, n) ORDER BY 1);
END
$$;

-- The feed's horizon: `allocated`, the highest position handed out, and `safe`, the highest
-- position at or below which every append has finished (committed or rolled back). A reader
-- that has seen every committed row up to `safe` can move its cursor there and never miss a
-- later commit. It reads the last allocated position first, then the oldest promise of an open
-- append; an append that promises after that read allocates above it. `allocated > safe` means
-- an append is in flight.
--
-- The caller must read rows in a LATER statement than this one: a statement's snapshot is taken
-- when it starts, so rows committed while this function runs would be missed by the same
-- statement although their promises are already gone.
CREATE FUNCTION caselog_feed_horizon(OUT allocated bigint, OUT safe bigint)
LANGUAGE plpgsql AS $$
DECLARE
    oldest_open bigint;
BEGIN
    allocated := caselog_last_allocated_position();
    SELECT min((l.classid::bigint << 32) | l.objid::bigint)
      INTO oldest_open
      FROM pg_locks l
     WHERE l.locktype = 'advisory'
       AND l.objsubid = 1
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
    safe := CASE WHEN oldest_open IS NULL THEN allocated ELSE least(allocated, oldest_open) END;
END
$$;
