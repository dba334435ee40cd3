"""provisioning's share of erasing one person (tenantry_service.erasure; docs/lifecycle.md
"Erasing one person"): their SCIM user is deleted, with its group memberships and the
intents and name reservations kept for it. The person's id is their account id, which is
also the SCIM user's id.

The groups they were in change (a member less): their version goes up first, so a SCIM
client's ETag of such a group no longer matches and it reads the group again. If the IdP
pushes the person again later, that is a new user (and a new person to erase on request).
"""

from __future__ import annotations

from tenantry_service.erasure import ErasureRules, ErasureStatement

PROVISIONING_ERASURE = ErasureRules(
    statements=(
        ErasureStatement(
            "scim_groups",
            """UPDATE scim_groups SET version = version + 1, updated_at = now()
               WHERE tenant_id = $1 AND id IN (SELECT group_id FROM scim_group_members
                                               WHERE tenant_id = $1 AND member_id = $2)""",
        ),
        ErasureStatement(
            "scim_group_members",
            "DELETE FROM scim_group_members WHERE tenant_id = $1 AND member_id = $2",
        ),
        ErasureStatement(
            "scim_user_intents",
            "DELETE FROM scim_user_intents WHERE tenant_id = $1 AND user_id = $2",
        ),
        ErasureStatement(
            "scim_user_accounts",
            "DELETE FROM scim_user_accounts WHERE tenant_id = $1 AND account_id = $2",
        ),
        ErasureStatement("scim_users", "DELETE FROM scim_users WHERE tenant_id = $1 AND id = $2"),
    )
)
