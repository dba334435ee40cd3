"""A real Chromium for browser tests (SSO logins end to end), driven by Playwright.

The browser is Debian's `chromium` package (/usr/bin/chromium, or $TENANTRY_CHROMIUM),
never one Playwright downloads: do not run `playwright install`. A missing browser is a
failure with instructions, never a skip.

    async with chromium_browser() as browser:
        page = await browser.new_page()
        await page.goto(url)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from playwright.async_api import Browser, async_playwright

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ENV = "TENANTRY_CHROMIUM"
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class ChromiumMissing(RuntimeError):
    """The Chromium binary is not there: the test environment is incomplete."""


def chromium_executable() -> str:
    """The Chromium to launch: $TENANTRY_CHROMIUM, else /usr/bin/chromium. Raises
    ChromiumMissing, naming the fix, when it is not an executable file."""
    configured = os.environ.get(CHROMIUM_ENV, DEFAULT_CHROMIUM)
    path = Path(configured) if os.sep in configured else Path(shutil.which(configured) or "")
    if not configured or not path.is_file() or not os.access(path, os.X_OK):
        raise ChromiumMissing(
            f"Chromium not found at {configured!r} (set by ${CHROMIUM_ENV} or the default "
            f"{DEFAULT_CHROMIUM}). Install Debian's browser with `apt-get install chromium`, "
            f"or point ${CHROMIUM_ENV} at a Chromium binary. Do not run `playwright install`: "
            "the tests never use a browser Playwright downloads."
        )
    return str(path)


@contextlib.asynccontextmanager
async def chromium_browser(
    *, extra_args: Sequence[str] = (), timeout_ms: float = 30_000
) -> AsyncIterator[Browser]:
    """A headless Chromium, closed (with Playwright's driver) on exit."""
    executable = chromium_executable()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=[*CHROMIUM_FLAGS, *extra_args],
            timeout=timeout_ms,
        )
        try:
            yield browser
        finally:
            await browser.close()
