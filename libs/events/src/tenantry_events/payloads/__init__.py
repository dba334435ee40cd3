"""Payload types of every event, one module per owning service. Importing registers them."""

from tenantry_events.payloads import tenancy

__all__ = ["tenancy"]
