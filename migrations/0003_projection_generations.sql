-- A rebuild writes a complete new case_facts table beside the live one and swaps it in, in one
-- transaction with the checkpoint. The generation tells a reader that keeps a copy of the rows
-- that all of them may have changed, not just those written after the position it last saw.
ALTER TABLE projection_checkpoints ADD COLUMN generation bigint NOT NULL DEFAULT 1;
