-- Dead-letter replays and inbox housekeeping (tenantry_events.dead_letters, servicekit's
-- housekeeping task).

-- The inbox is pruned by age (TENANTRY_INBOX_RETENTION_HOURS): without this index each
-- batch of the purge would scan the whole table. Built inside the migration's transaction
-- (no CONCURRENTLY): it blocks inbox writes while it builds, which an inbox of a few
-- million rows keeps to seconds; a larger one should get the index by hand first.
CREATE INDEX inbox_processed_at_idx ON inbox (processed_at);

-- Every dead-letter record a replay has dealt with, written in the replay's transaction
-- (with the inbox mark and the handler's effects), so a record is replayed at most once,
-- even after housekeeping has removed its inbox row. A record is named by its place on
-- the dead-letter topic; event_id is part of the key, so a recreated topic whose offsets
-- start again is not mistaken for the old one.
CREATE TABLE dead_letter_replays (
    dlt_topic     text        NOT NULL,
    dlt_partition integer     NOT NULL,
    dlt_offset    bigint      NOT NULL,
    event_id      uuid        NOT NULL,
    event_type    text        NOT NULL,
    consumer      text        NOT NULL,
    -- applied: the handler ran now; duplicate: the inbox says the group had applied it
    outcome       text        NOT NULL CHECK (outcome IN ('applied', 'duplicate')),
    replayed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlt_topic, dlt_partition, dlt_offset, event_id)
);

GRANT SELECT, INSERT ON dead_letter_replays TO {app_role};
