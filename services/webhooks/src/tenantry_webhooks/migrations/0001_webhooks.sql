-- Endpoints, messages, deliveries and attempts.
--
-- A message is one event as the customer sees it (its body is stored exactly as signed,
-- so a retry sends the same bytes under the same webhook-id); a delivery is one message to
-- one endpoint, with its retry state; an attempt is one HTTP request of a delivery.
CREATE TABLE endpoints (
    endpoint_id            text        PRIMARY KEY,
    tenant_id              uuid        NOT NULL,
    url                    text        NOT NULL,
    description            text        NOT NULL DEFAULT '',
    event_types            text[]      NOT NULL,
    channels               text[]      NOT NULL DEFAULT '{}',
    headers                jsonb       NOT NULL DEFAULT '{}',
    enabled                boolean     NOT NULL DEFAULT true,
    disabled_reason        text,
    rate_limit_per_second  double precision,
    fifo                   boolean     NOT NULL DEFAULT false,
    -- Signing secrets, encrypted (servicekit SecretBox). During a rotation the previous
    -- secret signs too, until previous_secret_expires_at.
    secret                 bytea       NOT NULL,
    previous_secret        bytea,
    previous_secret_expires_at timestamptz,
    -- Since when every attempt has failed (NULL after a success): auto-disable after a window.
    failing_since          timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX endpoints_by_tenant ON endpoints (tenant_id, created_at);

CREATE TABLE messages (
    message_id   text        PRIMARY KEY,
    tenant_id    uuid        NOT NULL,
    event_id     uuid        UNIQUE,          -- NULL for test messages
    event_type   text        NOT NULL,
    channels     text[]      NOT NULL DEFAULT '{}',
    body         bytea,                        -- NULL once expunged
    sequence     bigserial   NOT NULL,         -- FIFO order per endpoint
    created_at   timestamptz NOT NULL DEFAULT now(),
    expunged_at  timestamptz
);
CREATE INDEX messages_by_tenant ON messages (tenant_id, created_at DESC);
CREATE INDEX messages_by_age ON messages (created_at) WHERE body IS NOT NULL;

CREATE TABLE deliveries (
    delivery_id      bigserial   PRIMARY KEY,
    message_id       text        NOT NULL REFERENCES messages ON DELETE CASCADE,
    endpoint_id      text        NOT NULL REFERENCES endpoints ON DELETE CASCADE,
    tenant_id        uuid        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',  -- pending | succeeded | failed
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    leased_until     timestamptz,  -- a dispatcher is sending it; past this, it was lost
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, endpoint_id)
);
CREATE INDEX deliveries_due ON deliveries (tenant_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, created_at);

CREATE TABLE attempts (
    attempt_id          bigserial   PRIMARY KEY,
    delivery_id         bigint      NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    tenant_id           uuid        NOT NULL,
    message_id          text        NOT NULL,
    endpoint_id         text        NOT NULL,
    attempt             integer     NOT NULL,
    started_at          timestamptz NOT NULL,
    latency_ms          double precision NOT NULL,
    status_code         integer,
    error               text,
    response_body       text,
    response_truncated  boolean     NOT NULL DEFAULT false,
    next_attempt_at     timestamptz,
    trigger             text        NOT NULL DEFAULT 'scheduled'  -- scheduled | resend | recover | test
);
CREATE INDEX attempts_by_message ON attempts (message_id, attempt_id);
CREATE INDEX attempts_by_endpoint ON attempts (endpoint_id, attempt_id DESC);

GRANT SELECT, INSERT, UPDATE, DELETE ON endpoints, messages, deliveries, attempts TO {app_role};
GRANT USAGE ON SEQUENCE messages_sequence_seq, deliveries_delivery_id_seq, attempts_attempt_id_seq TO {app_role};

-- Row-level security, the second wall: a transaction sees one tenant's rows, unless it is
-- platform work (the fan-out runs scoped to the event's tenant; the dispatcher and the
-- retention job run as platform).
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['endpoints', 'messages', 'deliveries', 'attempts'] LOOP
        EXECUTE format($p$CREATE POLICY tenant_scope ON %I
            USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
                   OR current_setting('app.platform', true) = 'on')$p$, t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    END LOOP;
END $$;
