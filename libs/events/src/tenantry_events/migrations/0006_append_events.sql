-- The event store's append in one round trip (issue 20): `append_events` checks the
-- stream's version, inserts the events and their outbox rows on the server, where the
-- client used to send a version read, a savepoint, two INSERTs and a release.
--
-- Outbox rows of appended events carry no headers: the relay builds the CloudEvents
-- headers from the event's row (tenantry_events.storage, PostgresOutbox.fetch), which
-- holds the same envelope. Parsing a second JSON document per event was a third of the
-- outbox row's cost. Rows of `Outbox.put` (events of no stream) keep their headers.
ALTER TABLE outbox ALTER COLUMN headers DROP NOT NULL;

-- appended false: the stream is at `version`, not at `expected`, and nothing was written.
-- Optimistic concurrency stays the unique (stream_id, version) key: the version read only
-- answers the common stale write early; two writers racing past it meet the key, and the
-- loser's insert is undone by the block's subtransaction (the savepoint the client used
-- to set), so the caller's transaction stays usable after a conflict.
CREATE FUNCTION append_events(
    stream text,
    expected integer,
    ids uuid[],
    types text[],
    tenants uuid[],
    times timestamptz[],
    envelopes text[],   -- jsonb travels as text, as in every other INSERT of the store
    keys bytea[],
    payloads bytea[],
    OUT appended boolean,
    OUT version integer
) LANGUAGE plpgsql AS $$
DECLARE
    violated text;
BEGIN
    SELECT coalesce(max(e.version), 0) INTO version FROM events e WHERE e.stream_id = stream;
    IF version <> expected THEN
        appended := false;
        RETURN;
    END IF;
    BEGIN
        INSERT INTO events (stream_id, version, event_id, event_type, tenant_id, occurred_at,
                            envelope)
        SELECT stream, expected + u.n::integer, u.i, u.t, u.tn, u.o, u.e::jsonb
        FROM unnest(ids, types, tenants, times, envelopes) WITH ORDINALITY
             AS u(i, t, tn, o, e, n);
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS violated = CONSTRAINT_NAME;
        IF violated <> 'events_stream_id_version_key' THEN
            RAISE;
        END IF;
        SELECT coalesce(max(e.version), 0) INTO version FROM events e
        WHERE e.stream_id = stream;
        appended := false;
        RETURN;
    END;
    -- In event order (the relay publishes by id); the statement trigger NOTIFYs the relay.
    INSERT INTO outbox (topic, key, value, event_id)
    SELECT u.t, u.k, u.v, u.i FROM unnest(types, keys, payloads, ids) AS u(t, k, v, i);
    appended := true;
    version := expected + cardinality(ids);
END $$;

GRANT EXECUTE ON FUNCTION append_events(text, integer, uuid[], text[], uuid[], timestamptz[],
    text[], bytea[], bytea[]) TO {app_role};
