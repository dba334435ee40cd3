"""What every Tenantry process has: settings from the environment, the clock, telemetry."""
