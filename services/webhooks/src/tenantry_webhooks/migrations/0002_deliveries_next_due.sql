-- The dispatcher sleeps until the earliest pending delivery comes due (not a fixed poll):
-- after each round it reads the first next_attempt_at after now, across tenants, in order.
CREATE INDEX deliveries_next_due ON deliveries (next_attempt_at) WHERE status = 'pending';
