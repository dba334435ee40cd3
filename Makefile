# Tenantry: the two commands that work on a fresh machine are `make up` and `make test`.
SHELL := /bin/bash
LOCAL := deploy/local
# Expanded when a recipe runs (after install.sh may have installed uv): uv from PATH,
# else the module `pip install uv` put into python3.
UV = $(shell command -v uv >/dev/null 2>&1 && echo uv || echo python3 -m uv) run --no-sync
PYTEST_ARGS ?=

.PHONY: up down test lint typecheck docs bench bench-peers chaos clean install status

install:
	@bash $(LOCAL)/install.sh

# PostgreSQL, Redis, Kafka (and the SMTP sink), then the five services; prints the URLs.
# REGIONS="us eu": that many complete regions side by side instead, on ports of their own
# (deploy/local/regions.sh; the first hosts the global directory); the default stack is
# left as it is.
REGIONS ?=
up: install
ifneq ($(strip $(REGIONS)),)
	@bash $(LOCAL)/regions.sh start $(REGIONS)
else
	@bash $(LOCAL)/stack.sh start-all
	@bash $(LOCAL)/services.sh start
endif

down:
ifneq ($(strip $(REGIONS)),)
	@bash $(LOCAL)/regions.sh stop $(REGIONS)
else
	@bash $(LOCAL)/services.sh stop
	@bash $(LOCAL)/stack.sh stop-all
endif

status:
ifneq ($(strip $(REGIONS)),)
	-@bash $(LOCAL)/regions.sh status $(REGIONS)
else
	-@bash $(LOCAL)/stack.sh status
	-@bash $(LOCAL)/services.sh status
endif

# Every test, against the real servers (brought up if they are not). The object-storage
# tests start a fresh SeaweedFS S3 server of their own (docs/object-storage.md).
test: up
	$(UV) pytest $(PYTEST_ARGS)

lint:
	$(UV) ruff check .
	$(UV) ruff format --check .

typecheck:
	$(UV) mypy libs services tests bench tools

docs:
	$(UV) python -m tenantry_events.docs docs/events
	$(UV) python -m tools.openapi docs/openapi.json
	$(UV) python -m tools.legal

bench: up
	$(UV) python -m bench

# The peers side by side with Tenantry in one run (bench/peers.py): envoyproxy/ratelimit
# (go install from the Go module proxy, cached in .local/peers/), driven by wrk; the Svix
# server when SVIX_SERVER_BIN (default .local/peers/svix-server) names a binary you built
# (it is in no registry this project installs from; docs/benchmarks.md).
bench-peers: up
	@command -v wrk >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(UV) python -m bench --peers

# The chaos suite's long form: a baseline and every fault of tests/chaos/faults.py (SIGKILLs,
# Kafka and PostgreSQL really stopped) under 800 SCIM creates each; the report goes to
# .local/chaos/. `make test` runs a short form (tests/test_chaos.py). CHAOS_ARGS="--only
# kafka-stop --commands 200" picks rounds and sizes (python -m tests.chaos --help).
CHAOS_ARGS ?=
chaos: up
	$(UV) python -m tests.chaos $(CHAOS_ARGS)

clean: down
	rm -rf .local
