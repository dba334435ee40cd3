# One set of fixtures for every test in the repo (libs, services, tests/), and the
# throwaway PostgreSQL cluster that fault tests stop and restart.
pytest_plugins = [
    "tenantry_testkit.fixtures",
    "tenantry_testkit.pg_cluster",
    "tenantry_testkit.regions",  # two_regions: regions us and eu (docs/residency.md)
]
