-- Reads of the position sequence's last value, made consistent.
--
-- Reading a sequence as a table (`SELECT last_value FROM caselog_event_position`) looks at its
-- one row without the lock that nextval() holds while it changes the row in place. When nextval()
-- writes its periodic WAL record it sets last_value ahead by up to 32 for a moment, and a
-- concurrent plain read can see that value. caselog_allocate_positions() took its promise from
-- such a read, so an append could promise above the positions it was then given; the insert
-- check refused that append (an import of one year in recording order met it once in about
-- 860,000 events: an INTERNAL answer for one request). pg_sequence_last_value() reads the row
-- under the buffer lock, so it never sees the transient value.

CREATE OR REPLACE FUNCTION caselog_last_allocated_position() RETURNS bigint
LANGUAGE sql STABLE AS $$
    -- NULL until the first nextval(): nothing allocated yet (the sequence starts at 1).
    SELECT coalesce(pg_sequence_last_value('caselog_event_position'), 0)
$$;

CREATE OR REPLACE FUNCTION caselog_allocate_positions(n integer) RETURNS bigint[]
LANGUAGE plpgsql AS $$
BEGIN
    -- The promise: every position taken below is greater than the last one allocated before.
    PERFORM pg_advisory_xact_lock_shared(coalesce(pg_sequence_last_value('caselog_event_position'), 0));
    IF n = 1 THEN
        RETURN ARRAY[nextval('caselog_event_position')];
    END IF;
    RETURN ARRAY(SELECT nextval('caselog_event_position') FROM generate_series(1, n) ORDER BY 1);
END
$$;
