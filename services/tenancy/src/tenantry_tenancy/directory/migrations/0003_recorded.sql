-- When the tenant's home region first recorded its facts (after the tenant's create
-- committed there). A tenant known only by a claim never got that far: its create failed
-- after the claim and the release was lost with its process; the directory's sweep gives
-- such claims back after a grace period (store.py, `sweep_unrecorded`).
ALTER TABLE directory_tenants ADD COLUMN recorded_at_first timestamptz;
ALTER TABLE directory_tenants ADD COLUMN claimed_at timestamptz NOT NULL DEFAULT now();
UPDATE directory_tenants SET recorded_at_first = recorded_at;
CREATE INDEX directory_tenants_unrecorded_idx ON directory_tenants (claimed_at)
    WHERE recorded_at_first IS NULL;
