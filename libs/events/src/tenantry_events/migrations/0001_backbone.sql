-- The event backbone's tables, in every service's database.

-- Event store: append-only (the app role gets no UPDATE or DELETE on it).
-- Optimistic concurrency: the unique (stream_id, version) key makes a second writer of
-- the same version fail; that unique violation is the conflict.
CREATE TABLE events (
    position        bigserial PRIMARY KEY,
    stream_id       text        NOT NULL,
    version         integer     NOT NULL CHECK (version > 0),
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    tenant_id       uuid        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    envelope        jsonb       NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE INDEX events_tenant_idx ON events (tenant_id, position);

-- Outbox: rows wait here until the relay has published them, then are deleted. The relay
-- never tracks a "last published position" (a sequence's commit order is not its value
-- order, so a high-water mark would skip a row whose transaction commits late); it reads
-- whatever rows exist, oldest first, and deletes exactly what Kafka acknowledged.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       text        NOT NULL,
    key         bytea       NOT NULL,
    headers     jsonb       NOT NULL,
    value       bytea       NOT NULL,
    event_id    uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Inbox: event ids a consumer group has already applied, written in the same transaction
-- as the handler's effects, so a redelivered event has no second effect.
CREATE TABLE inbox (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- The relay is woken by NOTIFY at commit; polling stays the truth.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tenantry_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

GRANT SELECT, INSERT ON events TO {app_role};
GRANT SELECT, INSERT, DELETE ON outbox TO {app_role};
GRANT SELECT, INSERT, DELETE ON inbox TO {app_role};
GRANT USAGE ON SEQUENCE events_position_seq, outbox_id_seq TO {app_role};
