"""Guardrails: admission control, per-tenant rate limits (Redis + Lua) and plan limits."""
