"""The chaos suite's short form (the long one is `make chaos`, tests/chaos/__main__.py): a few
rounds of SCIM creates across the running services with a real fault mid-burst (a SIGKILLed
api and workers, Kafka stopped, Postgres restarted, a second relay), each then counted
along the whole chain: nothing lost, nothing duplicated, and the stack converges in time.
A report of the rounds is written to .local/chaos/short-<time>.{json,md}."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from tenantry_testkit.stack import Stack

from .chaos.faults import by_name, catalog
from .chaos.report import REPORTS, round_markdown, write_report
from .chaos.rounds import Chaos, RoundResult, RoundSize, chaos_run, run_round

pytestmark = [pytest.mark.kafka, pytest.mark.chaos, pytest.mark.timeout(240)]

# Small rounds with short outages, so that the six fit in about two and a half minutes on
# two cores; `make chaos` runs every fault at full size.
SIZE = RoundSize(commands=60, fault_at=15, command_timeout=120.0, converge_timeout=90.0)
SHORT = (
    "kill-identity-api",
    "kill-provisioning-worker",
    "kill-webhooks-worker",
    "second-relay",
    "kafka-stop",
    "postgres-restart",
)
FAULTS = by_name(list(SHORT), catalog(kafka_down=8.0, postgres_down=3.0))
RESULTS: list[RoundResult] = []


@pytest_asyncio.fixture(scope="module")
async def chaos(stack: Stack) -> AsyncIterator[Chaos]:
    started = datetime.now(UTC)
    async with chaos_run(stack, REPORTS) as running:
        yield running
    if RESULTS:
        write_report(RESULTS, SIZE, started, label="short")


@pytest.mark.parametrize("fault_name", SHORT)
async def test_a_fault_mid_burst_loses_and_duplicates_nothing(
    chaos: Chaos, fault_name: str
) -> None:
    fault = next(f for f in FAULTS if f.name == fault_name)
    result = await run_round(chaos, fault, SIZE)
    RESULTS.append(result)
    print(round_markdown(result))
    assert result.accepted == SIZE.commands, round_markdown(result)
    assert result.failures == [], round_markdown(result)
