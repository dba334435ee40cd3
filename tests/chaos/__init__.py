"""The chaos suite: SCIM creates across the running services with a real fault mid-burst,
every effect along the chain counted against the accepted commands (0 lost, 0 duplicated)
and the time to converge reported.

- burst.py: the SCIM creates, retried as an identity provider retries them.
- faults.py: the fault catalog (SIGKILLs, Kafka and Postgres stopped, a second relay).
- effects.py: the counters (databases, Kafka, the receiver) and the verdict.
- rounds.py: one round, from a fresh tenant to the verdict.
- report.py, __main__.py: `make chaos` (`python -m tests.chaos`), the long form, and its
  report under .local/chaos/; tests/test_chaos.py is the short form `make test` runs.
"""
