"""Payload types of every event, one module per owning service. Importing registers them."""

from tenantry_events.payloads import identity, provisioning, ratelimit, tenancy, webhooks

__all__ = ["identity", "provisioning", "ratelimit", "tenancy", "webhooks"]
