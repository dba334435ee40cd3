# One set of fixtures for every test in the repo (libs, services, tests/).
pytest_plugins = ["tenantry_servicekit.testing.fixtures"]
