"""A worker's start-up order, against a real JetStream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError

from services.common.bus import Bus
from services.providers.app import running_worker
from services.providers.registration import Registration
from services.providers.settings import Settings
from tests.infra import start_failure


async def test_the_job_consumer_exists_before_the_worker_says_it_is_live(
    nats_url: str, nats_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A router that sees a live worker reads its consumer for the queue depth; finding
    # none, it cannot hold jobs back, so the consumer must come first.
    bus = Bus(nats_prefix)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    seen: list[bool] = []
    announce: Callable[..., Awaitable[None]] = Registration.announce

    async def checked(self: Registration, *, stopping: bool = False) -> None:
        if not seen:
            try:
                await js.consumer_info(bus.jobs_stream, bus.worker_consumer("sandbox"))
                seen.append(True)
            except NotFoundError:
                seen.append(False)
        await announce(self, stopping=stopping)

    monkeypatch.setattr(Registration, "announce", checked)
    env = {
        "GENMESH_NATS_URL": nats_url,
        "GENMESH_NATS_PREFIX": nats_prefix,
        "GENMESH_WORKER_PROVIDERS": "sandbox",
        "GENMESH_STORAGE_ADDR": "127.0.0.1:1",
    }
    try:
        async with running_worker(Settings.from_env(env), env):
            pass
    finally:
        await nc.close()
    assert seen == [True]


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        (
            {"GENMESH_PROVIDERS_FILE": "{tmp}/bad.toml"},
            "cannot start: cannot read provider catalog {tmp}/bad.toml: Expected '=' after a key",
        ),
        (
            {"GENMESH_WORKER_PROVIDERS": "sandbox,nope"},
            "cannot start: provider 'nope' is not in the catalog; known: ",
        ),
    ],
)
def test_a_worker_that_cannot_start_as_configured_says_why_in_one_line(
    tmp_path: Path, settings: dict[str, str], said: str
) -> None:
    (tmp_path / "bad.toml").write_text("garbage [[\n")
    settings = {k: v.format(tmp=tmp_path) for k, v in settings.items()}
    stderr = start_failure("services.providers", settings)
    assert said.format(tmp=tmp_path) in stderr, stderr
    assert "Traceback" not in stderr
