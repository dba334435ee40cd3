-- Moving a tenant to another region (issue 18 §7, moves.py, docs/residency.md "Moving a
-- tenant"). Each region keeps its own row of a move: the old region's (direction 'out':
-- suspend, export, hand over, purge) and the new region's ('in': fetch the archive, each
-- service imports its share, switch the directory, restore the tenant's state). Region
-- ids, states and counts; the operator's reason is the only free text.
CREATE TABLE tenant_moves (
    move_id          uuid        PRIMARY KEY,
    tenant_id        uuid        NOT NULL,
    direction        text        NOT NULL CHECK (direction IN ('out', 'in')),
    from_region      text        NOT NULL,
    to_region        text        NOT NULL,
    state            text        NOT NULL,
    previous_status  text        NOT NULL,  -- restored in the new region: active or suspended
    reason           text        NOT NULL,
    requested_by     text        NOT NULL,
    export_id        uuid,                  -- out: the export that carries the shares
    imported         jsonb       NOT NULL DEFAULT '{}',  -- in: each service's counts
    failure          text,
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- One move of a tenant at a time in each region.
CREATE UNIQUE INDEX tenant_moves_running ON tenant_moves (tenant_id, direction)
    WHERE state NOT IN ('completed', 'failed');
CREATE INDEX tenant_moves_due ON tenant_moves (next_attempt_at)
    WHERE state NOT IN ('completed', 'failed');

CREATE POLICY tenant_scope ON tenant_moves
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
ALTER TABLE tenant_moves ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_moves FORCE ROW LEVEL SECURITY;
GRANT SELECT, INSERT, UPDATE ON tenant_moves TO {app_role};

-- A move's export: the same saga as a customer's, each service writing every row of the
-- tenant instead of the customer's files (tenantry_service.move).
ALTER TABLE exports ADD COLUMN move_id uuid;
