"""Payload types of every event, one module per owning service (usage: several report it).
Importing registers them."""

from tenantry_events.payloads import identity, provisioning, ratelimit, tenancy, usage, webhooks

__all__ = ["identity", "provisioning", "ratelimit", "tenancy", "usage", "webhooks"]
