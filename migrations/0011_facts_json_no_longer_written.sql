-- The second of migration 0010's two steps: from this release on, the projector stops writing
-- each case's facts as JSON into `case_facts.facts` and writes `NULL` there, beside the compact
-- encoding in `stored`.
--
-- Why: parsing that JSON into jsonb, and comparing it with the row's previous JSON in the
-- trigger below, was over half of PostgreSQL's time for each facts row the projector wrote
-- (22-25 µs a row against 9-12 µs without, docs/benchmarks.md), and the projector's writes cost
-- PostgreSQL more than the appends they follow.
--
-- Compatible for one release (docs/operations.md, "Upgrades"): the previous release (the one
-- that brought 0010) reads `stored` first and the JSON only where `stored` is empty, so it reads
-- these rows; its projector, if it leads during the rollout, writes both columns, as before.
--
-- The trigger of 0010 emptied `stored` when a writer changed `facts` without `stored`: the
-- releases before 0010 wrote the JSON alone. Writing `NULL` over a row's JSON with an unchanged
-- encoding (a step that leaves a case's facts as they were) now looks like that too, and would
-- leave a row with neither, which the table's constraint refuses. So the trigger now acts only
-- on a writer that wrote JSON, and does not compare JSON values otherwise.
CREATE OR REPLACE FUNCTION caselog_case_facts_stored_follows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.facts IS NOT NULL THEN
        IF NEW.stored IS NOT DISTINCT FROM OLD.stored AND NEW.facts IS DISTINCT FROM OLD.facts THEN
            NEW.stored := NULL;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
