-- append_events takes the outbox rows' headers too (NULL for each row, or every row's own
-- headers while a rolling upgrade from before 0006 still runs relays that read them from
-- the column: TENANTRY_OUTBOX_STORED_HEADERS, docs/deploy.md "Upgrade"). One statement
-- either way; the nine-argument version of 0006 goes.
DROP FUNCTION append_events(text, integer, uuid[], text[], uuid[], timestamptz[], text[],
    bytea[], bytea[]);

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
    headers text[],     -- NULLs, or each row's headers while older relays still run
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
    INSERT INTO outbox (topic, key, value, event_id, headers)
    SELECT u.t, u.k, u.v, u.i, u.h::jsonb
    FROM unnest(types, keys, payloads, ids, headers) AS u(t, k, v, i, h);
    appended := true;
    version := expected + cardinality(ids);
END $$;

GRANT EXECUTE ON FUNCTION append_events(text, integer, uuid[], text[], uuid[], timestamptz[],
    text[], bytea[], bytea[], text[]) TO {app_role};
