-- SCIM filters and list counts an index can serve under row-level security (issue 20).
--
-- Why the plans were scans. A policy's condition is a security barrier: a condition of the
-- query may be checked before it (as an index condition) only if it is LEAKPROOF, and
-- lower() is not. So `lower(user_name) = lower($2)` could never use the index on
-- (tenant_id, lower(user_name)); with the tenant holding most of the table, Postgres
-- scanned every tenant's users. The policy's `... OR app.platform` could not be an index
-- condition either. And every list page counted the tenant's rows.
--
-- The fix, each step proven by EXPLAIN (docs/runbooks/provisioning.md):
-- * the case-folded names are stored columns (`user_name_lower`, `display_name_lower`):
--   `user_name_lower = lower($2)` compares a column with texteq, which is leakproof;
-- * an email is found through scim_derived.user_emails (a btree on the folded value),
--   which filter_sql adds beside the exact jsonb test;
-- * the policies name one tenant range instead of an OR: the tenant's own id at both ends,
--   or every id for platform work; both ends are stable expressions, so the policy itself
--   is an index condition, also for a query without `tenant_id = $1`;
-- * scim_derived.counts keeps each tenant's number of users and groups, by trigger.
--
-- scim_derived holds data derived from the directory's tables only, written by their
-- triggers alone (the app role may read it, not write it). It is outside `public` on
-- purpose: a purge or a region move copies and deletes the tables of `public`, and these
-- rows follow their source rows instead (foreign key cascade, triggers on insert and
-- delete), so a moved tenant's rows are derived again in the new region, never copied.
--
-- ALTER TABLE ... ADD COLUMN ... STORED rewrites scim_users, scim_groups and
-- scim_user_accounts under an exclusive lock: see the runbook before applying it to a large
-- directory.

-- The backfills below read every tenant's rows (the policies hold the owner as well).
SELECT set_config('app.platform', 'on', true);

-- ---------------------------------------------------------------- folded names

ALTER TABLE scim_users
    ADD COLUMN user_name_lower text GENERATED ALWAYS AS (lower(user_name)) STORED;
DROP INDEX scim_users_user_name;
CREATE UNIQUE INDEX scim_users_user_name_lower ON scim_users (tenant_id, user_name_lower);

ALTER TABLE scim_groups
    ADD COLUMN display_name_lower text GENERATED ALWAYS AS (lower(display_name)) STORED;
DROP INDEX scim_groups_display_name;
CREATE INDEX scim_groups_display_name_lower ON scim_groups (tenant_id, display_name_lower);
-- Okta and Entra may match groups on externalId as well (case-exact: no folding needed).
CREATE INDEX scim_groups_external_id ON scim_groups (tenant_id, external_id);

-- Every create looks the name up here (scim/intents.py): the same leak rule applies.
ALTER TABLE scim_user_accounts
    ADD COLUMN user_name_lower text GENERATED ALWAYS AS (lower(user_name)) STORED;
DROP INDEX scim_user_accounts_name;
CREATE UNIQUE INDEX scim_user_accounts_name_lower
    ON scim_user_accounts (tenant_id, user_name_lower);

-- ---------------------------------------------------------------- derived tables

CREATE SCHEMA scim_derived;

-- An email of a user, folded and cut to a length any btree takes; the jsonb test of the
-- filter still decides, this only finds the candidates.
CREATE TABLE scim_derived.user_emails (
    user_id    uuid NOT NULL REFERENCES public.scim_users (id) ON DELETE CASCADE,
    tenant_id  uuid NOT NULL,
    value_key  text NOT NULL
);
CREATE INDEX user_emails_value ON scim_derived.user_emails (tenant_id, value_key);
CREATE INDEX user_emails_user ON scim_derived.user_emails (user_id);

-- The number of rows each tenant has in scim_users and scim_groups. One row per tenant and
-- table, changed in the transaction that inserts or deletes: its row lock orders
-- concurrent writers, so every snapshot sees the count of exactly the rows it sees. A
-- tenant without rows has no row here.
CREATE TABLE scim_derived.counts (
    tenant_id   uuid   NOT NULL,
    table_name  text   NOT NULL,
    total       bigint NOT NULL,
    PRIMARY KEY (tenant_id, table_name)
);

-- ---------------------------------------------------------------- policies without OR

DO $$
DECLARE
    t text;
    bound text := $b$(CASE WHEN current_setting('app.platform', true) = 'on' THEN '%s'::uuid
                          ELSE nullif(current_setting('app.tenant_id', true), '')::uuid END)$b$;
    scope text;
BEGIN
    -- The same rows as before: the tenant's when app.tenant_id is set, all with
    -- app.platform, none otherwise (NULL bounds).
    scope := format('tenant_id BETWEEN %s AND %s',
                    format(bound, '00000000-0000-0000-0000-000000000000'),
                    format(bound, 'ffffffff-ffff-ffff-ffff-ffffffffffff'));
    FOREACH t IN ARRAY ARRAY['scim_users', 'scim_groups', 'scim_group_members',
                             'scim_user_intents', 'scim_user_accounts'] LOOP
        EXECUTE format('ALTER POLICY tenant_scope ON public.%I USING (%s)', t, scope);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['user_emails', 'counts'] LOOP
        EXECUTE format('CREATE POLICY tenant_scope ON scim_derived.%I USING (%s)', t, scope);
        -- Not FORCEd: the owner's triggers write rows of whichever tenant the statement
        -- touched (the source table's forced policy decided which); readers are held.
        EXECUTE format('ALTER TABLE scim_derived.%I ENABLE ROW LEVEL SECURITY', t);
    END LOOP;
END $$;

GRANT USAGE ON SCHEMA scim_derived TO {app_role};
GRANT SELECT ON scim_derived.user_emails, scim_derived.counts TO {app_role};

-- ---------------------------------------------------------------- emails

-- The one definition of the key, for the trigger and for filter_sql's lookup.
CREATE FUNCTION scim_derived.email_key(value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT left(lower(value), 200) $$;

CREATE FUNCTION scim_derived.index_emails() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM scim_derived.user_emails WHERE user_id = NEW.id;
    END IF;
    -- As filter_sql reads emails: elements of an array, their "value" when there is one.
    INSERT INTO scim_derived.user_emails (user_id, tenant_id, value_key)
    SELECT DISTINCT NEW.id, NEW.tenant_id, scim_derived.email_key(e.v ->> 'value')
    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(NEW.emails) = 'array'
                                   THEN NEW.emails ELSE '[]'::jsonb END) AS e(v)
    WHERE e.v ->> 'value' IS NOT NULL;
    RETURN NULL;
END $$;

CREATE TRIGGER scim_users_index_emails AFTER INSERT ON scim_users
    FOR EACH ROW EXECUTE FUNCTION scim_derived.index_emails();
CREATE TRIGGER scim_users_reindex_emails AFTER UPDATE OF emails ON scim_users
    FOR EACH ROW WHEN (OLD.emails IS DISTINCT FROM NEW.emails)
    EXECUTE FUNCTION scim_derived.index_emails();

INSERT INTO scim_derived.user_emails (user_id, tenant_id, value_key)
SELECT DISTINCT u.id, u.tenant_id, scim_derived.email_key(e.v ->> 'value')
FROM scim_users u,
     jsonb_array_elements(CASE WHEN jsonb_typeof(u.emails) = 'array'
                               THEN u.emails ELSE '[]'::jsonb END) AS e(v)
WHERE e.v ->> 'value' IS NOT NULL;

-- ---------------------------------------------------------------- counts

CREATE FUNCTION scim_derived.count_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO scim_derived.counts AS c (tenant_id, table_name, total)
    SELECT tenant_id, TG_TABLE_NAME, count(*) FROM inserted GROUP BY tenant_id
    ON CONFLICT (tenant_id, table_name) DO UPDATE SET total = c.total + EXCLUDED.total;
    RETURN NULL;
END $$;

CREATE FUNCTION scim_derived.count_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE scim_derived.counts c SET total = c.total - d.n
    FROM (SELECT tenant_id, count(*) AS n FROM deleted GROUP BY tenant_id) d
    WHERE c.tenant_id = d.tenant_id AND c.table_name = TG_TABLE_NAME;
    -- None left: no row (a purged tenant leaves nothing here). A concurrent insert waits
    -- on this row's lock and then inserts a new one.
    DELETE FROM scim_derived.counts
    WHERE table_name = TG_TABLE_NAME AND total = 0
      AND tenant_id IN (SELECT tenant_id FROM deleted);
    RETURN NULL;
END $$;

CREATE FUNCTION scim_derived.count_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM scim_derived.counts WHERE table_name = TG_TABLE_NAME;
    RETURN NULL;
END $$;

-- A row never changes tenant: its count (and its emails' tenant) would not follow.
CREATE FUNCTION scim_derived.refuse_tenant_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: a row cannot change tenant', TG_TABLE_NAME
        USING ERRCODE = 'check_violation';
END $$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['scim_users', 'scim_groups'] LOOP
        EXECUTE format($f$CREATE TRIGGER %1$s_count_inserted AFTER INSERT ON %1$I
            REFERENCING NEW TABLE AS inserted
            FOR EACH STATEMENT EXECUTE FUNCTION scim_derived.count_inserted()$f$, t);
        EXECUTE format($f$CREATE TRIGGER %1$s_count_deleted AFTER DELETE ON %1$I
            REFERENCING OLD TABLE AS deleted
            FOR EACH STATEMENT EXECUTE FUNCTION scim_derived.count_deleted()$f$, t);
        EXECUTE format($f$CREATE TRIGGER %1$s_count_truncated AFTER TRUNCATE ON %1$I
            FOR EACH STATEMENT EXECUTE FUNCTION scim_derived.count_truncated()$f$, t);
        EXECUTE format($f$CREATE TRIGGER %1$s_same_tenant BEFORE UPDATE OF tenant_id ON %1$I
            FOR EACH ROW WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
            EXECUTE FUNCTION scim_derived.refuse_tenant_change()$f$, t);
        -- Creating the triggers locked out writers (SHARE ROW EXCLUSIVE) until this
        -- transaction ends, so the count below is exact when they resume.
        EXECUTE format($f$INSERT INTO scim_derived.counts (tenant_id, table_name, total)
            SELECT tenant_id, %1$L, count(*) FROM %1$I GROUP BY tenant_id$f$, t);
    END LOOP;
END $$;
