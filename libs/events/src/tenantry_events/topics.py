"""Create the Kafka topics the catalog declares, plus each consumer group's dead-letter topic.

Every topic gets the same fixed partition count (documented in docs/architecture.md):
KEDA cannot scale a consumer group past it. Idempotent: existing topics are left alone.

    python -m tenantry_events.topics --bootstrap 127.0.0.1:9092 --partitions 3
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tenantry_events.catalog import dead_letter_topic, load_all

# The consumer groups of the suite: one per service worker.
CONSUMER_GROUPS = (
    "tenantry-tenancy",
    "tenantry-identity",
    "tenantry-provisioning",
    "tenantry-webhooks",
    "tenantry-ratelimit",
    # tenantry_service's worker lanes: critical events and bulk usage reports apart (worker.py)
    *(
        f"tenantry-{s}.critical"
        for s in ("tenancy", "identity", "provisioning", "webhooks", "ratelimit")
    ),
    "tenantry-identity.background",
)


def suite_topics() -> list[str]:
    return [*load_all().topics(), *(dead_letter_topic(g) for g in CONSUMER_GROUPS)]


async def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            await admin.create_topics(
                [NewTopic(name=t, num_partitions=partitions, replication_factor=1) for t in missing]
            )
        return missing
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args()
    created = asyncio.run(ensure_topics(args.bootstrap, suite_topics(), args.partitions))
    print(f"topics: {len(suite_topics())} declared, {len(created)} created")


if __name__ == "__main__":
    main()
