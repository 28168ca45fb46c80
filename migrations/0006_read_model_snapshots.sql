-- Copies of a server's in-memory read model in a compact binary form, so that a restarting server
-- reads a few hundred parts instead of parsing every case's JSON. Derived data, like case_facts:
-- any of it may be deleted at any time, and a server that finds none (or one of another format
-- or generation) loads case_facts instead. A copy is written whole in one transaction.
CREATE TABLE read_model_snapshots (
    generation bigint      NOT NULL,
    -- The checkpoint the copy reflects at least: case_facts rows written after it are applied
    -- on top when it is loaded.
    position   bigint      NOT NULL,
    -- The encoding of the parts; a server reads only its own.
    format     integer     NOT NULL,
    parts      integer     NOT NULL,
    cases      bigint      NOT NULL,
    bytes      bigint      NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (generation, position)
);

CREATE TABLE read_model_snapshot_parts (
    generation bigint  NOT NULL,
    position   bigint  NOT NULL,
    part       integer NOT NULL,
    data       bytea   NOT NULL,
    PRIMARY KEY (generation, position, part)
);

-- Already compact: compressing it would cost the reader time for little space.
ALTER TABLE read_model_snapshot_parts ALTER COLUMN data SET STORAGE EXTERNAL;
