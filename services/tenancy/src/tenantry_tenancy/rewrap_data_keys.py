"""Rotating the region's key-encryption key: wrap every tenant's and person's data key
again with the new master key (docs/runbooks/tenancy.md, "Data keys and the KEK").

    TENANTRY_MASTER_KEY=<new> TENANTRY_PREVIOUS_MASTER_KEY=<old> \\
        python -m tenantry_tenancy.rewrap_data_keys

with the rest of tenancy's environment (TENANTRY_DATABASE_URL). Prints how many keys it
re-wrapped; safe to run again (keys under the new KEK already are skipped). Exit 1 when a
key opens with neither key (the previous key is not the one they were wrapped with).
"""

from __future__ import annotations

import asyncio
import os
import sys

from tenantry_credentials.crypto import DecryptionFailed, SecretBox
from tenantry_events.pg import Database
from tenantry_platform.settings import PREFIX, ServiceSettings, SettingsError, load_settings
from tenantry_tenancy.data_keys import DataKeyStore

PREVIOUS_KEY = PREFIX + "PREVIOUS_MASTER_KEY"


async def rewrap(settings: ServiceSettings, previous: SecretBox) -> int:
    db = Database(settings.database_url, max_size=2)
    await db.connect()
    try:
        store = DataKeyStore(db, SecretBox.from_base64(settings.master_key))
        return await store.rewrap(previous)
    finally:
        await db.close()


def main() -> None:
    try:
        settings = load_settings(ServiceSettings)
        previous = SecretBox.from_base64(os.environ.get(PREVIOUS_KEY, ""))
        SecretBox.from_base64(settings.master_key)  # the new one: refuse a malformed key now
    except (SettingsError, ValueError) as exc:
        print(f"rewrap_data_keys: {exc} (the new key in {PREFIX}MASTER_KEY, the old one in "
              f"{PREVIOUS_KEY})", file=sys.stderr)  # fmt: skip
        raise SystemExit(2) from None
    try:
        count = asyncio.run(rewrap(settings, previous))
    except DecryptionFailed:
        print(f"rewrap_data_keys: a key opens with neither key; is {PREVIOUS_KEY} the key "
              "they were wrapped with?", file=sys.stderr)  # fmt: skip
        raise SystemExit(1) from None
    print(f"rewrap_data_keys: {count} key(s) re-wrapped under the new master key")


if __name__ == "__main__":
    main()
