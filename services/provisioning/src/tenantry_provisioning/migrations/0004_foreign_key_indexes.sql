-- Deleting a SCIM user (or a tenant's purge, which deletes them all) checks its group
-- memberships through this foreign key: an index, not a scan of every membership.
CREATE INDEX scim_group_members_by_member ON scim_group_members (tenant_id, member_id);
