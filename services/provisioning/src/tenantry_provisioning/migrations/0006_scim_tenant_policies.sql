-- The directory's policies: one tenant, by equality (issue 20; replaces 0005's ranges).
--
-- 0005 gave the policies a range (`tenant_id BETWEEN lo AND hi`: the tenant at both ends,
-- or every id for app.platform). An index takes it, but EXPLAIN at 100k users showed what
-- the planner makes of it: bounds it cannot see, so a guessed 0.5 % of the table, where
-- the range is in fact the whole tenant. It chose a parallel scan of
-- scim_derived.user_emails rather than its index, and a walk of the tenant's part of an
-- index (tenant_id, x) rather than an equality on x. An equality has neither problem:
-- estimated as one tenant, and a btree positions on it.
--
-- An equality has no room for app.platform, and nothing needs platform access to these
-- tables (every transaction that reads or writes them names its tenant: the routes, the
-- intents' completion, the consumers, the purge, exports and moves). So platform work no
-- longer sees the directory: a stronger wall. scim_user_intents keeps its OR: the worker's
-- sweep finds stale intents of every tenant (scim/intents.py), and that table holds only
-- writes in flight.
DO $$
DECLARE
    t text;
    tenant text := $p$tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid$p$;
BEGIN
    FOREACH t IN ARRAY ARRAY['public.scim_users', 'public.scim_groups',
                             'public.scim_group_members', 'public.scim_user_accounts',
                             'scim_derived.user_emails', 'scim_derived.counts'] LOOP
        EXECUTE format('ALTER POLICY tenant_scope ON %s USING (%s)', t, tenant);
    END LOOP;
    EXECUTE format($f$ALTER POLICY tenant_scope ON public.scim_user_intents
        USING (%s OR current_setting('app.platform', true) = 'on')$f$, tenant);
END $$;
