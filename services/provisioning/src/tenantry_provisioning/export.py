"""provisioning's share of a tenant's export (tenantry_service.export): the SCIM directory,
each line a SCIM resource exactly as GET /scim/v2/Users/{id} (or Groups) renders it, so a
customer can load the files into another SCIM service as they are.

Per person: their SCIM user (the one whose userName was given their account), and the
groups they belong to, each listing that person alone among its members (the other
members are other people's data)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenantry_provisioning import store
from tenantry_provisioning.scim.resources import group_resource, user_resource
from tenantry_provisioning.scim.schema import GROUP_URN, USER_URN
from tenantry_service.export import ExportScope, ExportSource, Row

# The SCIM users of the account $2 (none when $2 is NULL).
_SUBJECT_USERS = """
    SELECT su.id FROM scim_users su
    JOIN scim_user_accounts a
      ON a.tenant_id = su.tenant_id AND a.user_name_lower = su.user_name_lower
    WHERE su.tenant_id = $1 AND a.account_id = $2"""


def scim_base_url(scope: ExportScope) -> str:
    """What the resources' meta.location start with: the service's URL, as its routes
    answer (empty, so relative locations, when the deployment names none)."""
    try:
        return scope.settings.service_url("provisioning").rstrip("/")
    except KeyError:
        return ""


def user_line(row: Row, scope: ExportScope) -> Mapping[str, Any]:
    return user_resource(row, scim_base_url(scope))


def group_line(row: Row, scope: ExportScope) -> Mapping[str, Any]:
    resource = group_resource(row, scim_base_url(scope))
    if scope.subject_account_id is not None:
        mine = {str(user_id) for user_id in row["subject_user_ids"]}
        resource["members"] = [m for m in resource["members"] if m["value"] in mine]
    return resource


USERS = ExportSource(
    file="users.ndjson",
    schema=USER_URN,
    query=f"""{store.USER_SELECT}
              WHERE u.tenant_id = $1
                AND ($2::uuid IS NULL OR u.id IN ({_SUBJECT_USERS}))
              ORDER BY u.id""",
    render=user_line,
    per_person=True,
)

GROUPS = ExportSource(
    file="groups.ndjson",
    schema=GROUP_URN,
    query=f"""WITH subject AS ({_SUBJECT_USERS})
              SELECT grp.*, ARRAY(SELECT id FROM subject) AS subject_user_ids
              FROM ({store.GROUP_SELECT}
                    WHERE g.tenant_id = $1
                      AND ($2::uuid IS NULL OR EXISTS (
                          SELECT 1 FROM scim_group_members m
                          WHERE m.group_id = g.id AND m.member_id IN (SELECT id FROM subject)))
                   ) grp
              ORDER BY grp.id""",
    render=group_line,
    per_person=True,
)

PROVISIONING_EXPORTS = (USERS, GROUPS)
