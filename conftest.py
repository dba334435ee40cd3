# One set of fixtures for every test in the repo (libs, services, tests/), and the
# throwaway PostgreSQL cluster that fault tests stop and restart.
pytest_plugins = ["tenantry_servicekit.testing.fixtures", "tenantry_servicekit.testing.pg_cluster"]
