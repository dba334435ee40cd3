"""provisioning's settings: the common ones and the SCIM saga's (scim/intents.py)."""

from __future__ import annotations

from tenantry_platform.settings import ServiceSettings


class ProvisioningSettings(ServiceSettings, frozen=True, kw_only=True):
    # How often the worker looks for SCIM intents whose request is gone (0 = never).
    scim_intent_sweep_seconds: float = 2.0
    # An intent this old is finished by the worker once identity's account is in the
    # state it asks for. Finishing one whose request still runs is harmless (both finish
    # the same intent once), so this only needs to exceed a normal request.
    scim_intent_stale_seconds: float = 10.0
    # An intent whose account never reached its state in this long is dropped: identity
    # never got the call (the directory's retry would have re-driven it meanwhile).
    scim_intent_abandon_seconds: float = 3600.0
