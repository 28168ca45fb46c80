-- The case-facts projection: one row per case, a pure function of the case's events up to the
-- checkpoint, written in the same transaction as the checkpoint (exactly-once by construction).
CREATE TABLE case_facts (
    case_id        text   PRIMARY KEY,
    facts          jsonb  NOT NULL,
    -- The checkpoint at which this row was last written.
    as_of_position bigint NOT NULL
);

-- Readers keep the facts in memory and fetch only the rows written since they last looked.
CREATE INDEX case_facts_by_position ON case_facts (as_of_position);

CREATE TABLE projection_checkpoints (
    projection text        PRIMARY KEY,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO projection_checkpoints (projection, position) VALUES ('case_facts', 0);
