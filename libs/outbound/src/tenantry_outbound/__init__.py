"""Outbound I/O to customer-controlled places: the SSRF-guarded HTTP client, mail over SMTP."""
