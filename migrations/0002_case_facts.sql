-- The case-facts projection: one row per case, a pure function of the case's events up to the
-- checkpoint, written in the same transaction as the checkpoint (exactly-once by construction).
CREATE TABLE case_facts (
    case_id        text   PRIMARY KEY,
    facts          jsonb  NOT NULL,
    -- The checkpoint at which this row was last written.
    as_of_position bigint NOT NULL
);

CREATE TABLE projection_checkpoints (
    projection text        PRIMARY KEY,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO projection_checkpoints (projection, position) VALUES ('case_facts', 0);
