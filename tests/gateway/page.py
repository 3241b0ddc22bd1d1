"""What the web page's browser tests share: their marks, and waiting for the page to be live."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.webdriver import Browser, browser_binaries
from tests.infra import eventually

# Screenshots the tests keep, to look at.
OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "web"

PAGE_TESTS = [
    pytest.mark.parametrize("database", ["sqlite"], indirect=True),
    pytest.mark.skipif(
        browser_binaries() is None,
        reason="needs Debian's chromium and chromium-driver: run scripts/install --dev",
    ),
]


async def wait_for_page(browser: Browser) -> None:
    """Until the live feed is connected and the providers are listed."""

    async def ready() -> bool:
        return bool(
            await browser.run(
                "return document.getElementById('feed-status').classList.contains('live') &&"
                " [...document.getElementById('provider').options].some(o => o.value == 'sandbox')"
            )
        )

    await eventually(ready, within=20)
