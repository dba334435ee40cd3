"""Credentials: the API key format, Ed25519 access tokens, envelope encryption of secrets,
and API key last-used reports."""
