-- A tenant's purge deletes its attempts, deliveries and messages by tenant, and each
-- deleted delivery or message is checked against the rows referencing it (ON DELETE
-- CASCADE). Without these indexes each check scanned the whole referencing table, so a
-- purge grew with deliveries x attempts (minutes for 100k attempts; bench/lifecycle.py).
CREATE INDEX attempts_by_delivery ON attempts (delivery_id);
CREATE INDEX attempts_by_tenant ON attempts (tenant_id);
CREATE INDEX deliveries_by_message ON deliveries (message_id);
CREATE INDEX deliveries_by_tenant ON deliveries (tenant_id);
