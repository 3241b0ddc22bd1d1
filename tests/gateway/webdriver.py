"""Just enough of the W3C WebDriver protocol to drive Debian's headless Chromium through its
chromedriver, over loopback HTTP with httpx (the selenium package would add nothing here)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.infra import eventually

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class Keys:
    """WebDriver's codes for keys that are not characters."""

    TAB = "\ue004"
    ENTER = "\ue007"


# The network is closed: no updates, sync, QUIC or first-run probes; a fresh profile per run.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
)


def browser_binaries() -> tuple[str, str] | None:
    """(chromium, chromedriver) when both are installed (scripts/install --dev does it)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


class Browser:
    """One WebDriver session."""

    def __init__(self, http: httpx.AsyncClient, session: str) -> None:
        self._http = http
        self._session = session

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self._http.request(
            method, f"/session/{self._session}{path}", json=body if method != "GET" else None
        )
        payload = response.json()
        if response.status_code != 200:
            raise RuntimeError(f"webdriver {method} {path}: {payload.get('value')}")
        return payload["value"]

    async def open(self, url: str) -> None:
        await self._call("POST", "/url", {"url": url})

    async def resize(self, width: int, height: int) -> None:
        await self._call("POST", "/window/rect", {"width": width, "height": height})

    async def find(self, css: str) -> str:
        found = await self._call("POST", "/element", {"using": "css selector", "value": css})
        return str(found[ELEMENT])

    async def click(self, css: str) -> None:
        await self._call("POST", f"/element/{await self.find(css)}/click", {})

    async def type(self, css: str, text: str) -> None:
        element = await self.find(css)
        await self._call("POST", f"/element/{element}/clear", {})
        await self._call("POST", f"/element/{element}/value", {"text": text})

    async def press(self, keys: str) -> None:
        """Type `keys` into whichever element has the focus, as a person's keystrokes would."""
        active = await self._call("GET", "/element/active")
        await self._call("POST", f"/element/{active[ELEMENT]}/value", {"text": keys})

    async def choose(self, css: str, value: str) -> None:
        """Pick a <select> option by value, as a person's choice would (a change event)."""
        await self.run(
            "const s = document.querySelector(arguments[0]); s.value = arguments[1];"
            "s.dispatchEvent(new Event('change', {bubbles: true}));",
            css,
            value,
        )

    async def run(self, script: str, *args: Any) -> Any:
        return await self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    async def log(self) -> list[dict[str, Any]]:
        """The browser's console entries since the last call: errors, failed loads (level
        SEVERE) and warnings, each with its level, source and message."""
        return list(await self._call("POST", "/se/log", {"type": "browser"}))

    async def screenshot(self, path: Path) -> Path:
        png = base64.b64decode(await self._call("GET", "/screenshot"))
        await asyncio.to_thread(_write, path, png)
        return path


@asynccontextmanager
async def chromium(width: int = 1280, height: int = 1000) -> AsyncIterator[Browser]:
    """A headless Chromium with a throwaway profile, driven through chromedriver."""
    binaries = browser_binaries()
    assert binaries is not None, "chromium and chromedriver are not installed"
    binary, driver = binaries
    profile = tempfile.mkdtemp(prefix="genmesh-chromium-")
    # Port 0: chromedriver takes a port the kernel picks and says which, so no other process
    # can take it between a pick here and its bind.
    proc = await asyncio.create_subprocess_exec(
        driver,
        "--port=0",
        "--allowed-ips=127.0.0.1",
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    drain: asyncio.Task[None] | None = None
    try:
        port = await asyncio.wait_for(_reported_port(proc.stdout), 20)
        # Whatever it says later is read and dropped, so a full pipe never blocks it.
        drain = asyncio.create_task(_drain(proc.stdout))
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=60
        ) as http:

            async def ready() -> bool:
                try:
                    return bool((await http.get("/status")).json()["value"]["ready"])
                except httpx.TransportError:
                    return False

            await eventually(ready, within=20)
            options = {
                "binary": binary,
                "args": [*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"],
            }
            capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
            created = await http.post("/session", json={"capabilities": capabilities})
            assert created.status_code == 200, created.text
            session = created.json()["value"]["sessionId"]
            try:
                yield Browser(http, session)
            finally:
                await http.delete(f"/session/{session}")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        if drain is not None:
            # Not awaited to the end: a browser process left behind may hold the pipe open.
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
        shutil.rmtree(profile, ignore_errors=True)


async def _reported_port(stdout: asyncio.StreamReader) -> int:
    """The port chromedriver says it listens on ("... started successfully on port N.")."""
    while line := (await stdout.readline()).decode():
        if found := re.search(r"started successfully on port (\d+)", line):
            return int(found[1])
    raise RuntimeError("chromedriver exited before it listened")


async def _drain(stdout: asyncio.StreamReader) -> None:
    while await stdout.read(65536):
        pass


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
