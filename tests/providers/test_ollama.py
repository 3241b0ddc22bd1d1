"""The ollama adapter against a fake Ollama server on loopback: real HTTP, streamed NDJSON."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, ProviderError, Retryable
from services.providers.config import DEFAULT_CATALOG, ProviderConfig, load_catalog
from services.providers.ollama import OllamaAdapter, OllamaOptions
from services.providers.registry import build_adapter
from tests.fakes.ollama import RUNNER_ERROR, FakeOllama
from tests.fakes.server import Injected, serving
from tests.providers.harness import FakeContext, cancel_when, provider_config, run_once

MODELS = {"text-to-text": "llama3.2", "image-to-text": "llava"}
KEY = "ollama-remote-key-0123456789"
T = job_pb2


@dataclass
class Setup:
    fake: FakeOllama
    url: str

    def adapter(
        self,
        *,
        models: Mapping[str, str] | None = None,
        options: Mapping[str, Any] | None = None,
        key: str = "",
        base_url: str | None = None,
    ) -> OllamaAdapter:
        config = provider_config(
            "ollama",
            base_url or self.url,
            key,
            MODELS if models is None else models,
            name="ollama-test",
            key_env="OLLAMA_TEST_KEY" if key else "",
            options={"progress_interval": 0, **(options or {})},
        )
        return OllamaAdapter(config)

    def chat_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.fake.faults.requests if r.path == "/api/chat"]


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    fake = FakeOllama()
    async with serving(fake.app()) as url:
        yield Setup(fake, url)


@pytest.fixture
async def adapter(setup: Setup) -> AsyncIterator[OllamaAdapter]:
    async with aclosing(setup.adapter()) as built:
        yield built


def png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


async def test_chat_streams_ndjson_tokens_as_progress(setup: Setup) -> None:
    setup.fake.token_delay = 0.01
    prompt = "why is the sky blue over the sea"
    params = {"system": "Be brief.", "temperature": 0.3, "seed": 7}
    ctx = FakeContext(T.TASK_TEXT_TO_TEXT, prompt, params)
    result = await run_once(setup.adapter(options={"keep_alive": "10m"}), ctx)

    assert result.text == f"You said: {prompt}"
    messages = [m for _, m in ctx.progress_reports]
    assert len(messages) >= 3 and all(result.text.startswith(m) for m in messages)
    assert ctx.request_ids == []
    body = setup.chat_bodies()[0]
    assert body == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": prompt},
        ],
        "stream": True,
        "options": {"temperature": 0.3, "seed": 7},
        "keep_alive": "10m",
    }


async def test_keep_alive_may_be_seconds(setup: Setup) -> None:
    """Ollama takes a number of seconds as well as a duration (a negative one: for ever)."""
    ctx = FakeContext(T.TASK_TEXT_TO_TEXT, "hello", {})
    await run_once(setup.adapter(options={"keep_alive": -1}), ctx)
    assert setup.chat_bodies()[0]["keep_alive"] == -1


async def test_max_tokens_becomes_num_predict(setup: Setup, adapter: OllamaAdapter) -> None:
    ctx = FakeContext(T.TASK_TEXT_TO_TEXT, "one two three", {"max_tokens": 3, "format": "json"})
    result = await adapter.run(ctx)
    assert result.text == "You said: one "
    body = setup.chat_bodies()[0]
    assert body["options"] == {"num_predict": 3} and body["format"] == "json"


async def test_thinking_that_uses_up_max_tokens_is_the_callers_to_raise(
    setup: Setup, adapter: OllamaAdapter
) -> None:
    setup.fake.thinking_tokens = 8
    ctx = FakeContext(T.TASK_TEXT_TO_TEXT, "one two three", {"max_tokens": 5})
    with pytest.raises(InvalidInput) as raised:
        await adapter.run(ctx)
    assert raised.value.code == "no_text"
    assert raised.value.message == (
        "ollama-test used up max_tokens (5) before writing any text (reasoning models spend "
        "tokens thinking first): raise max_tokens"
    )
    # The thinking streamed is never shown as the answer.
    assert all("think" not in m for _, m in ctx.progress_reports)
    # With room left after thinking, the answer comes, thinking left out.
    result = await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "one two", {"max_tokens": 50}))
    assert result.text == "You said: one two"


async def test_vision_sends_the_image_as_base64(setup: Setup, adapter: OllamaAdapter) -> None:
    image = png(40, 30, (0, 0, 255))
    result = await adapter.run(FakeContext(T.TASK_IMAGE_TO_TEXT, "", {}, [image]))
    assert result.text == "You said: Describe this image. a 40x30 image averaging rgb(0, 0, 255)"
    message = setup.chat_bodies()[0]["messages"][-1]
    assert message["images"] == [base64.b64encode(image).decode()]
    assert setup.chat_bodies()[0]["model"] == "llava"


async def test_a_model_that_is_not_pulled_is_fatal(setup: Setup) -> None:
    adapter = setup.adapter(models={"text-to-text": "mistral"})
    with pytest.raises(Fatal, match='model "mistral" not found, try pulling it first') as e:
        await run_once(adapter, FakeContext(T.TASK_TEXT_TO_TEXT, "hi"))
    assert e.value.code == "model_not_pulled"


async def test_an_error_line_mid_stream_is_retryable(setup: Setup, adapter: OllamaAdapter) -> None:
    setup.fake.fail_stream_after = 2
    with pytest.raises(Retryable, match=RUNNER_ERROR):
        await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "a b c d e"))


async def test_a_stream_cut_short_is_retryable(setup: Setup, adapter: OllamaAdapter) -> None:
    line = {"model": "llama3.2", "message": {"role": "assistant", "content": "Hi"}, "done": False}
    setup.fake.faults.inject(Injected(200, json.dumps(line) + "\n"))
    with pytest.raises(Retryable, match="ended the stream before finishing"):
        await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "hi"))


async def test_cancelling_closes_the_stream(setup: Setup) -> None:
    setup.fake.token_delay = 0.1
    async with aclosing(setup.adapter()) as adapter:
        ctx = FakeContext(T.TASK_TEXT_TO_TEXT, "word " * 200)
        # Ollama stops generating when its client goes away; the fake sees it leave.
        await cancel_when(
            adapter.run(ctx),
            lambda: bool(ctx.progress_reports),
            5.0,
            afterwards=lambda: setup.fake.abandoned == ["/api/chat"],
        )


async def test_a_redelivered_job_asks_again(setup: Setup, adapter: OllamaAdapter) -> None:
    ctx = FakeContext(T.TASK_TEXT_TO_TEXT, "again", previous_request_id="anything")
    assert (await adapter.run(ctx)).text == "You said: again"
    assert len(setup.chat_bodies()) == 1


@pytest.mark.parametrize(
    ("injected", "kind", "text"),
    [
        (Injected(400, {"error": "invalid options: num_ctx"}), InvalidInput, "invalid options"),
        (Injected(429, {"error": "slow down"}, {"Retry-After": "4"}), Retryable, "slow down"),
        (Injected(500, {"error": "llama runner process has terminated"}), Retryable, "terminated"),
        (Injected(502, {"error": "cloud model unreachable"}), Retryable, "unreachable"),
    ],
)
async def test_error_bodies_are_classified(
    setup: Setup,
    adapter: OllamaAdapter,
    injected: Injected,
    kind: type[ProviderError],
    text: str,
) -> None:
    setup.fake.faults.inject(injected)
    with pytest.raises(kind, match=text) as caught:
        await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "hi"))
    assert type(caught.value) is kind
    if injected.status == 429:
        assert caught.value.retry_after == 4


async def test_a_remote_ollama_with_a_wrong_key_is_fatal(setup: Setup) -> None:
    setup.fake.api_key = KEY
    wrong = "ollama-wrong-key-must-not-leak"
    async with aclosing(setup.adapter(key=KEY)) as good, aclosing(setup.adapter(key=wrong)) as bad:
        assert (await good.run(FakeContext(T.TASK_TEXT_TO_TEXT, "hi"))).text == "You said: hi"
        with pytest.raises(Fatal, match="unauthorized") as caught:
            await bad.run(FakeContext(T.TASK_TEXT_TO_TEXT, "hi"))
        assert wrong not in str(caught.value)
        assert "401" in await bad.check()


async def test_a_key_echoed_back_is_scrubbed(setup: Setup) -> None:
    setup.fake.api_key = KEY
    adapter = setup.adapter(key=KEY)
    setup.fake.faults.inject(Injected(400, {"error": f"bad token {KEY}"}))
    with pytest.raises(InvalidInput) as caught:
        await run_once(adapter, FakeContext(T.TASK_TEXT_TO_TEXT, "hi"))
    assert KEY not in str(caught.value) and "***" in str(caught.value)


async def test_bad_parameters_name_the_allowed_values(adapter: OllamaAdapter) -> None:
    with pytest.raises(InvalidInput, match=re.escape("(one of text, json), got 'xml'")):
        await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "hi", {"format": "xml"}))
    with pytest.raises(InvalidInput, match=re.escape("integer (>= 1, <= 1000), got 1.5")):
        await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "hi", {"top_k": 1.5}))


# --- health -----------------------------------------------------------------------------------


async def test_check_reports_models_that_are_not_pulled(setup: Setup) -> None:
    setup.fake.models = ["llama3.2:latest"]
    async with aclosing(setup.adapter(options={"check_ttl": 0})) as adapter:
        assert await adapter.check() == "model llava not pulled (run: ollama pull llava)"
        setup.fake.models = ["llama3.2:latest", "llava:latest"]
        assert await adapter.check() == ""


async def test_check_is_cached_briefly(setup: Setup) -> None:
    async with aclosing(setup.adapter(options={"check_ttl": 60})) as adapter:
        assert await adapter.check() == ""
        assert await adapter.check() == ""
    assert [r.path for r in setup.fake.faults.requests] == ["/api/tags"]


async def test_an_unreachable_server_is_a_reason_not_a_crash(setup: Setup) -> None:
    async with aclosing(setup.adapter(base_url="http://127.0.0.1:9")) as adapter:
        reason = await adapter.check()
        with pytest.raises(Retryable, match="is `ollama serve` running"):
            await adapter.run(FakeContext(T.TASK_TEXT_TO_TEXT, "hi"))
    assert reason == (
        "cannot reach ollama-test at http://127.0.0.1:9 (ConnectError; is `ollama serve` running?)"
    )


def test_unknown_options_fail_at_start_up() -> None:
    said = "unknown ollama option 'keepalive' (did you mean 'keep_alive'?)"
    with pytest.raises(ValueError, match=re.escape(said)):
        OllamaAdapter(ProviderConfig("x", "ollama", options={"keepalive": "5m"}))
    with pytest.raises(ValueError, match="check_ttl must be a number"):
        OllamaOptions.parse(ProviderConfig("x", "ollama", options={"check_ttl": "soon"}))


async def test_the_shipped_instance_needs_no_key() -> None:
    catalog = load_catalog(DEFAULT_CATALOG, {})
    async with aclosing(build_adapter("ollama", catalog)) as adapter:
        described = adapter.describe()
    assert set(described.tasks) == {T.TASK_TEXT_TO_TEXT, T.TASK_IMAGE_TO_TEXT}
    assert catalog["ollama"].missing_key() == ""
    assert {p.name for p in described.parameters} >= {"max_tokens", "temperature", "num_ctx"}
