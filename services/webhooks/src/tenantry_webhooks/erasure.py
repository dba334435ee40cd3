"""webhooks' share of erasing one person (tenantry_service.erasure; docs/lifecycle.md
"Erasing one person").

A stored message's body is the event as delivered to the tenant's endpoints: opened, so it
holds the person's email or name in plaintext. Every message of the tenant whose body
names the person's id (the events about them: account.*, user.*, apikey.* of their keys)
is expunged as retention expunges (body dropped, pending deliveries failed with "payload
expunged"); the message row stays, with its id, type and delivery log. Delivery attempts
keep no request body (only the endpoint's response, which is the customer's, not ours).
"""

from __future__ import annotations

from tenantry_service.erasure import ErasureRules, ErasureStatement

# The id as it appears in a JSON body (a quoted string).
_NAMES_THE_PERSON = """m.tenant_id = $1 AND m.body IS NOT NULL
    AND position(convert_to('"' || $2::uuid::text || '"', 'UTF8') IN m.body) > 0"""

WEBHOOKS_ERASURE = ErasureRules(
    statements=(
        ErasureStatement(
            "deliveries",
            f"""UPDATE deliveries d SET status = 'failed', last_error = 'payload expunged',
                    next_attempt_at = NULL, updated_at = now()
                FROM messages m
                WHERE d.message_id = m.message_id AND d.tenant_id = $1
                  AND d.status = 'pending' AND {_NAMES_THE_PERSON}""",
        ),
        ErasureStatement(
            "messages",
            f"""UPDATE messages m SET body = NULL, expunged_at = now()
                WHERE {_NAMES_THE_PERSON}""",
        ),
    )
)
