-- The SCIM directory: users and groups as the identity provider sees them.
--
-- A SCIM user has the same id as its identity account (identity allocates it, with the
-- seat); this table keeps what SCIM owns. Attributes SCIM filters and sorts on are
-- columns (indexed, compared case-insensitively where the schema says caseExact=false);
-- multi-valued complex attributes are jsonb arrays of objects; `extra` keeps any other
-- attribute the client sent, returned as sent.
CREATE TABLE scim_users (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    user_name       text        NOT NULL,
    external_id     text,
    display_name    text,
    nick_name       text,
    profile_url     text,
    title           text,
    user_type       text,
    preferred_language text,
    locale          text,
    timezone        text,
    active          boolean,                              -- NULL: unassigned (counts as active)
    name_formatted  text,
    name_family     text,
    name_given      text,
    name_middle     text,
    name_prefix     text,
    name_suffix     text,
    emails          jsonb       NOT NULL DEFAULT '[]',   -- [{value, type, primary, display}]
    phone_numbers   jsonb       NOT NULL DEFAULT '[]',
    addresses       jsonb       NOT NULL DEFAULT '[]',
    roles           jsonb       NOT NULL DEFAULT '[]',
    enterprise      jsonb       NOT NULL DEFAULT '{}',   -- urn:...:enterprise:2.0:User
    extra           jsonb       NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         integer     NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX scim_users_user_name ON scim_users (tenant_id, lower(user_name));
CREATE INDEX scim_users_external_id ON scim_users (tenant_id, external_id);
CREATE INDEX scim_users_page ON scim_users (tenant_id, created_at, id);

CREATE TABLE scim_groups (
    id            uuid        PRIMARY KEY,
    tenant_id     uuid        NOT NULL,
    display_name  text        NOT NULL,
    external_id   text,
    extra         jsonb       NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    version       integer     NOT NULL DEFAULT 1
);
CREATE INDEX scim_groups_display_name ON scim_groups (tenant_id, lower(display_name));
CREATE INDEX scim_groups_page ON scim_groups (tenant_id, created_at, id);

CREATE TABLE scim_group_members (
    group_id   uuid  NOT NULL REFERENCES scim_groups ON DELETE CASCADE,
    member_id  uuid  NOT NULL,           -- a scim_users id (groups of groups: not supported)
    tenant_id  uuid  NOT NULL,
    display    text,                     -- as the client sent it (else the user's name)
    type       text,                     -- as the client sent it (else "User")
    PRIMARY KEY (group_id, member_id)
);
CREATE INDEX scim_group_members_member ON scim_group_members (member_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON scim_users, scim_groups, scim_group_members TO {app_role};

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['scim_users', 'scim_groups', 'scim_group_members'] LOOP
        EXECUTE format($p$CREATE POLICY tenant_scope ON %I
            USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
                   OR current_setting('app.platform', true) = 'on')$p$, t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    END LOOP;
END $$;
