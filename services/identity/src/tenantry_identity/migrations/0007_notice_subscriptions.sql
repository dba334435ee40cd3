-- Notice subscriptions (issue 19 §2): the kinds of notice an owner or admin opted in to
-- ("legal-notices": announced changes of the tenant's data processing terms, mailed from
-- legal.subprocessor_changed). Operational rows, no stream: each change appends
-- account.subscription_changed to the outbox in the same transaction (the audit log).
-- A person's erasure deletes theirs; a tenant's purge deletes them all (tenant_id).
CREATE TABLE notice_subscriptions (
    tenant_id      uuid        NOT NULL,
    account_id     uuid        NOT NULL REFERENCES accounts (account_id),
    topic          text        NOT NULL,
    subscribed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, topic)   -- also the foreign key's index
);
-- Who is subscribed to a topic in a tenant (the mail of a notice).
CREATE INDEX notice_subscriptions_by_topic ON notice_subscriptions (tenant_id, topic);

CREATE POLICY tenant_scope ON notice_subscriptions
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
ALTER TABLE notice_subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE notice_subscriptions FORCE ROW LEVEL SECURITY;

GRANT SELECT, INSERT, DELETE ON notice_subscriptions TO {app_role};
