"""The global directory, hosted by tenancy in one region (docs/residency.md)."""
