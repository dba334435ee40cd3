-- A group's members are users of the group's own tenant (groups of groups are not
-- supported). The routes check it first, answering alike for another tenant's user and
-- an id nobody holds; the key makes it a rule of the table and lets a deleted user leave
-- its groups with it, also when a delete races a membership change.
--
-- NOT VALID: memberships written before this rule are not checked (they may name no
-- user of the tenant; the runbook says how to find and remove them); every row inserted
-- or changed from now on is.
CREATE UNIQUE INDEX scim_users_tenant_id ON scim_users (tenant_id, id);
ALTER TABLE scim_group_members
    ADD CONSTRAINT scim_group_members_member_is_user FOREIGN KEY (tenant_id, member_id)
    REFERENCES scim_users (tenant_id, id) ON DELETE CASCADE NOT VALID;
