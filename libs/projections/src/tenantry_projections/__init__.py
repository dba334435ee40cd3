"""The projections every service keeps of other services' facts (tenants, keys, accounts,
limits, rate policies), their migrations, usage reports."""

from tenantry_events.pg import Migration, package_migrations


def projection_migrations() -> list[Migration]:
    """The tables every service holds (projections, idempotency keys, usage reports). They
    are recorded under "tenantry_servicekit", the package they shipped in before the split."""
    return package_migrations("tenantry_projections", source="tenantry_servicekit")
