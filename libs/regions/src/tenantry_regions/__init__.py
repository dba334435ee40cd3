"""Data residency: regions, the global directory, home-region routing (docs/residency.md)."""
