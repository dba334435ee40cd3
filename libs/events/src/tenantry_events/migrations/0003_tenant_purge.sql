-- A tenant's purge (issue 17): each service deletes every row of the tenant and records
-- that it did (tenantry_service.purge).

-- The inbox learns whose event each row was, so the purge finds them. The consumer's
-- transaction is scoped to the event's tenant (app.tenant_id, tenantry_events.pg), so the
-- column fills itself and the inbox's writer need not know. Rows from before this
-- migration stay NULL: event ids only, no tenant data, gone with the inbox's retention.
ALTER TABLE inbox ADD COLUMN tenant_id uuid;
ALTER TABLE inbox ALTER COLUMN tenant_id
    SET DEFAULT nullif(current_setting('app.tenant_id', true), '')::uuid;
CREATE INDEX inbox_tenant_idx ON inbox (tenant_id) WHERE tenant_id IS NOT NULL;

-- The service's tombstone of a tenant it purged: counts only, no personal data. Written
-- in the purge's transaction, never deleted: a redelivered request is answered from it,
-- and the worker drops the tenant's late events while it exists. The app role cannot
-- delete it.
CREATE TABLE tenant_purges (
    tenant_id     uuid        PRIMARY KEY,
    purge_id      uuid        NOT NULL,
    -- [{"table": ..., "rows": n}], NULL only inside the purge's own transaction
    tables        jsonb,
    redis_keys    integer,
    key_destroyed boolean,
    started_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);
GRANT SELECT, INSERT, UPDATE ON tenant_purges TO {app_role};

-- The purge deletes as the owner: the app role has no DELETE on most tables (the event
-- store is append-only), and a purge is the one deletion they allow. Only rows of a
-- tenant whose purge is recorded (tenant_purges, same transaction or before), only from a
-- table of this schema with a tenant_id column, never the purge record itself.
CREATE FUNCTION purge_tenant_rows(target regclass, tenant uuid) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    deleted bigint;
BEGIN
    PERFORM purge_tenant_check(target, tenant);
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = target AND attname = 'tenant_id' AND NOT attisdropped) THEN
        RAISE EXCEPTION '% has no tenant_id column', target;
    END IF;
    EXECUTE format('DELETE FROM %s WHERE tenant_id = $1', target) USING tenant;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END $$;

-- A table without tenant_id whose rows belong to a tenant's rows of `parent` (an account's
-- refresh tokens): deleted through their foreign key to it, before the parent rows go.
CREATE FUNCTION purge_tenant_rows_through(target regclass, parent regclass, tenant uuid)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    child_columns text;
    parent_columns text;
    deleted bigint;
BEGIN
    PERFORM purge_tenant_check(target, tenant);
    SELECT string_agg(format('%I', c.attname), ', ' ORDER BY k.i),
           string_agg(format('%I', p.attname), ', ' ORDER BY k.i)
      INTO child_columns, parent_columns
      FROM pg_constraint f
      CROSS JOIN LATERAL unnest(f.conkey, f.confkey) WITH ORDINALITY AS k(ck, pk, i)
      JOIN pg_attribute c ON c.attrelid = f.conrelid AND c.attnum = k.ck
      JOIN pg_attribute p ON p.attrelid = f.confrelid AND p.attnum = k.pk
     WHERE f.contype = 'f' AND f.conrelid = target AND f.confrelid = parent
     GROUP BY f.oid
     ORDER BY f.oid
     LIMIT 1;
    IF child_columns IS NULL THEN
        RAISE EXCEPTION '% has no foreign key to %', target, parent;
    END IF;
    EXECUTE format('DELETE FROM %s WHERE (%s) IN (SELECT %s FROM %s WHERE tenant_id = $1)',
                   target, child_columns, parent_columns, parent) USING tenant;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END $$;

CREATE FUNCTION purge_tenant_check(target regclass, tenant uuid) RETURNS void
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tenant_purges WHERE tenant_id = tenant) THEN
        RAISE EXCEPTION 'no purge is recorded for tenant %', tenant;
    END IF;
    IF target = 'tenant_purges'::regclass
       OR (SELECT relnamespace FROM pg_class WHERE oid = target) <> 'public'::regnamespace THEN
        RAISE EXCEPTION 'the purge does not delete from %', target;
    END IF;
    -- Tables with forced row-level security hold the owner to it as well.
    PERFORM set_config('app.tenant_id', tenant::text, true);
END $$;

REVOKE EXECUTE ON FUNCTION purge_tenant_rows(regclass, uuid),
    purge_tenant_rows_through(regclass, regclass, uuid),
    purge_tenant_check(regclass, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION purge_tenant_rows(regclass, uuid),
    purge_tenant_rows_through(regclass, regclass, uuid) TO {app_role};
