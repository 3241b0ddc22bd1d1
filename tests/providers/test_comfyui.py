"""The ComfyUI adapter against a fake ComfyUI on loopback: real HTTP, a real WebSocket with
JSON messages and binary preview frames, real PNG outputs."""

from __future__ import annotations

import asyncio
import io
import json
import struct
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from genmesh.v1 import job_pb2
from services.providers.adapter import Fatal, InvalidInput, Retryable
from services.providers.comfyui import ComfyUIAdapter
from services.providers.comfyui.adapter import job_client_id
from services.providers.comfyui.live import Message, Preview, parse_frame, socket_url
from services.providers.comfyui.workflow import SHIPPED
from tests.fakes.comfyui import CHECKPOINTS, FakeComfyUI, render
from tests.fakes.server import Injected
from tests.providers.harness import FakeContext, cancel_when, provider_config, wait_until

T2I = job_pb2.TASK_TEXT_TO_IMAGE
SECRET = "comfy-proxy-secret-42"


@pytest.fixture
async def comfy() -> AsyncIterator[tuple[FakeComfyUI, str]]:
    fake = FakeComfyUI()
    async with fake.serve() as url:
        yield fake, url


def adapter(url: str, **overrides: Any) -> aclosing[ComfyUIAdapter]:
    models, options = {"text-to-image": CHECKPOINTS[0]}, {"preview_interval": 0.0}
    config = provider_config("comfyui", url, "", models, options=options, poll_interval=0.05)
    return aclosing(ComfyUIAdapter(replace(config, **overrides)))


def context(prompt: str = "a red fox in snow", **params: Any) -> FakeContext:
    values = {"width": 64, "height": 48, "steps": 4, "seed": 7, **params}
    return FakeContext(T2I, prompt, values, provider="comfyui")


def queued_workflows(fake: FakeComfyUI) -> list[dict[str, Any]]:
    posts = [r for r in fake.faults.requests if r.method == "POST" and r.path == "/prompt"]
    return [json.loads(r.body) for r in posts]


def sampler_progress(ctx: FakeContext) -> list[tuple[float | None, str]]:
    return [(p, m) for p, m in ctx.progress_reports if m.startswith("KSampler")]


async def test_text_to_image_returns_the_saved_png_with_progress_and_previews(
    comfy: tuple[FakeComfyUI, str],
) -> None:
    fake, url = comfy
    ctx = context()
    async with adapter(url) as comfyui:
        result = await comfyui.run(ctx)

    [output] = result.outputs
    assert output.media_type == "image/png" and output.filename.startswith("genmesh_")
    image = Image.open(io.BytesIO(output.data))
    assert image.size == (64, 48)
    assert image.tobytes() == render("a red fox in snow", 7, 64, 48).tobytes()

    [body] = queued_workflows(fake)
    inputs = {node: spec["inputs"] for node, spec in body["prompt"].items()}
    assert inputs["3"]["seed"] == 7 and inputs["3"]["steps"] == 4 and inputs["3"]["cfg"] == 7.0
    assert inputs["4"]["ckpt_name"] == CHECKPOINTS[0]
    assert inputs["5"] == {"width": 64, "height": 48, "batch_size": 1}
    assert inputs["6"]["text"] == "a red fox in snow" and inputs["7"]["text"] == ""
    assert body["client_id"] == job_client_id("comfyui", "job-1")
    assert fake.socket_clients == [body["client_id"]]

    assert ctx.request_ids == fake.queued_ids
    assert sampler_progress(ctx) == [(100.0 * i / 4, f"KSampler #3 {i}/4") for i in range(1, 5)]
    assert len(ctx.previews) == 4
    assert all(p.media_type == "image/jpeg" for p in ctx.previews)
    assert Image.open(io.BytesIO(ctx.previews[0].data)).format == "JPEG"
    # Previews arrive while the sampler runs, before the final image exists.
    order = [what for what, _ in ctx.timeline]
    assert order.index("preview") < order.index("progress KSampler #3 4/4")


async def test_previews_are_throttled_and_can_be_turned_off(
    comfy: tuple[FakeComfyUI, str],
) -> None:
    _, url = comfy
    async with adapter(url, options={"preview_interval": 60.0}) as comfyui:
        throttled = context(steps=6)
        await comfyui.run(throttled)
        off = context(steps=6, preview=False)
        await comfyui.run(off)
    assert len(throttled.previews) == 1
    assert off.previews == [] and len(sampler_progress(off)) == 6


async def test_previews_with_metadata_frames_are_used(comfy: tuple[FakeComfyUI, str]) -> None:
    fake, url = comfy
    fake.preview_metadata = True
    ctx = context(steps=3)
    async with adapter(url) as comfyui:
        await comfyui.run(ctx)
    assert len(ctx.previews) == 3 and ctx.previews[0].filename == "preview-1.jpg"


async def test_a_users_workflow_file_with_placeholders(
    comfy: tuple[FakeComfyUI, str], tmp_path: Path
) -> None:
    fake, url = comfy
    graph = json.loads(SHIPPED[T2I].read_text())
    graph["6"]["inputs"]["text"] = "cinematic photo of {{prompt}}, seed {{seed}}"
    graph["5"]["inputs"]["batch_size"] = 2
    graph["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(graph))
    options = {"workflows": {"text-to-image": str(path)}, "preview_interval": 0.0}
    async with adapter(url, options=options) as comfyui:
        assert await comfyui.check() == ""
        result = await comfyui.run(context("a cat", seed=3))

    [body] = queued_workflows(fake)
    assert body["prompt"]["6"]["inputs"]["text"] == "cinematic photo of a cat, seed 3"
    # A PreviewImage-only workflow saves temporary files; those are the outputs then.
    assert [o.filename for o in result.outputs] == ["tmp_00001_.png", "tmp_00002_.png"]
    sizes = {Image.open(io.BytesIO(o.data)).size for o in result.outputs}
    assert sizes == {(64, 48)}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"1": {"class_type": "SaveImage", "inputs": {"x": "{{colour}}"}}}, "unknown placeholders"),
        ({"nodes": [], "links": []}, "UI format"),
        ("not json", "not valid JSON"),
    ],
)
async def test_unusable_workflow_files_are_reported_by_check(
    tmp_path: Path, content: Any, reason: str
) -> None:
    path = tmp_path / "flow.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    options = {"workflows": {"text-to-image": str(path)}}
    async with adapter("http://127.0.0.1:9", options=options) as comfyui:
        assert reason in await comfyui.check()
        with pytest.raises(Fatal, match=reason):
            await comfyui.run(context())


async def test_a_workflow_loading_a_model_needs_one_in_the_catalog() -> None:
    async with adapter("http://127.0.0.1:9", models={}) as comfyui:
        reason = await comfyui.check()
        assert "loads {{model}} but the catalog names no models.text-to-image" in reason
        with pytest.raises(Fatal, match=r"names no models\.text-to-image"):
            await comfyui.run(context())


async def test_check_probes_system_stats(comfy: tuple[FakeComfyUI, str]) -> None:
    fake, url = comfy
    async with adapter(url) as comfyui:
        assert await comfyui.check() == ""
    assert fake.faults.requests[-1].path == "/system_stats"
    async with adapter("http://127.0.0.1:9") as gone:
        assert "cannot reach comfyui" in await gone.check()


async def test_a_rejected_workflow_is_invalid_input_naming_the_node(
    comfy: tuple[FakeComfyUI, str],
) -> None:
    fake, url = comfy
    async with adapter(url, models={"text-to-image": "missing.safetensors"}) as comfyui:
        with pytest.raises(InvalidInput) as rejected:
            await comfyui.run(context())
    message = rejected.value.message
    assert "Prompt outputs failed validation" in message
    assert "CheckpointLoaderSimple #4: Value not in list" in message
    assert "missing.safetensors" in message
    assert fake.queued_ids == []


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"sampler": "magic"}, "sampler must be a string .one of euler, "),
        ({"steps": 0}, "steps must be an? integer .>= 1, <= 150., got 0"),
        ({"width": 100}, "width must be a multiple of 8, got 100"),
        ({"seed": -1}, "seed must be an? integer"),
    ],
)
async def test_bad_parameters_are_rejected_before_any_request(
    comfy: tuple[FakeComfyUI, str], params: dict[str, Any], reason: str
) -> None:
    fake, url = comfy
    async with adapter(url) as comfyui:
        with pytest.raises(InvalidInput, match=reason):
            await comfyui.run(context(**params))
    assert fake.faults.requests == []


async def test_http_failures_are_classified_and_never_show_the_key(
    comfy: tuple[FakeComfyUI, str],
) -> None:
    fake, url = comfy
    async with adapter(url, api_key_env="COMFY_TOKEN", _api_key=SECRET) as comfyui:
        fake.faults.inject(Injected(429, {"error": "busy"}, {"Retry-After": "4"}))
        with pytest.raises(Retryable) as limited:
            await comfyui.run(context())
        assert limited.value.retry_after == 4

        fake.faults.inject(Injected(503, "ComfyUI is restarting"))
        with pytest.raises(Retryable, match="restarting"):
            await comfyui.run(context())

        fake.faults.inject(Injected(400, {"error": f"bad token {SECRET}", "node_errors": {}}))
        with pytest.raises(InvalidInput) as echoed:
            await comfyui.run(context())
        assert SECRET not in str(echoed.value) and "***" in echoed.value.message

        fake.token = "the-right-token"
        with pytest.raises(Fatal) as denied:
            await comfyui.run(context())
        assert denied.value.code == "unauthorized" and SECRET not in str(denied.value)
        assert "COMFY_TOKEN" in denied.value.message
    assert fake.queued_ids == []


async def test_the_token_reaches_http_and_the_socket(comfy: tuple[FakeComfyUI, str]) -> None:
    fake, url = comfy
    fake.token = SECRET
    ctx = context()
    async with adapter(url, api_key_env="COMFY_TOKEN", _api_key=SECRET) as comfyui:
        result = await comfyui.run(ctx)
    assert len(result.outputs) == 1 and len(ctx.previews) == 4


@pytest.mark.parametrize(
    ("exception", "message", "kind", "code"),
    [
        ("RuntimeError", "mat1 and mat2 shapes cannot be multiplied", Fatal, "execution_error"),
        ("torch.OutOfMemoryError", "CUDA out of memory", Retryable, "out_of_memory"),
    ],
)
async def test_node_exceptions_are_classified(
    comfy: tuple[FakeComfyUI, str],
    exception: str,
    message: str,
    kind: type[Exception],
    code: str,
) -> None:
    fake, url = comfy
    fake.fail_next(exception, message)
    async with adapter(url) as comfyui:
        with pytest.raises(kind) as failed:
            await comfyui.run(context())
    assert failed.value.code == code  # type: ignore[attr-defined]
    assert f"KSampler #3: {exception}: {message}" in str(failed.value)


async def test_cancelling_a_running_prompt_interrupts_it(comfy: tuple[FakeComfyUI, str]) -> None:
    fake, url = comfy
    fake.step_delay = 0.05
    ctx = context(steps=150)
    async with adapter(url) as comfyui:
        await cancel_when(comfyui.run(ctx), lambda: len(sampler_progress(ctx)) >= 2, 10.0)
    [prompt_id] = fake.queued_ids
    assert fake.interrupts == [prompt_id] and fake.deleted == [prompt_id]
    await wait_until(lambda: prompt_id in fake.history, 10.0)
    status = fake.history[prompt_id]["status"]
    assert status["status_str"] == "error"
    assert status["messages"][-1][0] == "execution_interrupted"


async def test_cancelling_a_queued_prompt_deletes_it_and_spares_the_running_one(
    comfy: tuple[FakeComfyUI, str],
) -> None:
    fake, url = comfy
    fake.step_delay = 0.05
    async with adapter(url) as comfyui:
        first, second = context(steps=150), FakeContext(T2I, "second", {"steps": 2})
        first.job.id = "job-first"
        running = asyncio.create_task(comfyui.run(first))
        await wait_until(lambda: len(sampler_progress(first)) >= 1, 10.0)
        await cancel_when(
            comfyui.run(second),
            lambda: any("ahead" in m or "queue" in m for _, m in second.progress_reports),
            10.0,
        )
        [waiting_id] = second.request_ids
        assert fake.deleted == [waiting_id] and waiting_id not in [
            p.prompt_id for p in fake.pending
        ]
        assert fake.running is not None and fake.running.prompt_id == first.request_ids[0]
        assert waiting_id not in fake.history
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running


async def test_a_redelivered_job_resumes_its_prompt_without_queueing_again(
    comfy: tuple[FakeComfyUI, str],
) -> None:
    fake, url = comfy
    fake.step_delay = 0.02
    async with adapter(url) as comfyui:
        # The earlier delivery queued this prompt (as the job's client), then its worker died.
        ctx = context("a lighthouse", steps=10)
        earlier = await queue_directly(url, fake, ctx)
        resumed = FakeContext(
            T2I, "a lighthouse", ctx.parameters, provider="comfyui", previous_request_id=earlier
        )
        result = await comfyui.run(resumed)
    assert fake.queued_ids == [earlier] and queued_workflows(fake) == []
    assert resumed.request_ids == []
    assert any("resuming ComfyUI prompt" in m for _, m in resumed.progress_reports)
    # Same client id: the resumed job still gets the sampler's progress and previews.
    assert sampler_progress(resumed) and resumed.previews
    image = Image.open(io.BytesIO(result.outputs[0].data))
    assert image.tobytes() == render("a lighthouse", 7, 64, 48).tobytes()


async def test_resuming_a_prompt_that_already_finished_only_fetches_it(
    comfy: tuple[FakeComfyUI, str],
) -> None:
    fake, url = comfy
    ctx = context("done already")
    earlier = await queue_directly(url, fake, ctx)
    await wait_until(lambda: earlier in fake.history, 10.0)
    resumed = FakeContext(
        T2I, "done already", ctx.parameters, provider="comfyui", previous_request_id=earlier
    )
    async with adapter(url) as comfyui:
        result = await comfyui.run(resumed)
    assert fake.queued_ids == [earlier] and len(result.outputs) == 1


async def test_a_prompt_comfyui_forgot_is_queued_anew(comfy: tuple[FakeComfyUI, str]) -> None:
    fake, url = comfy
    ctx = FakeContext(
        T2I, "again", {"width": 64, "height": 64}, provider="comfyui", previous_request_id="gone"
    )
    async with adapter(url) as comfyui:
        result = await comfyui.run(ctx)
    assert len(fake.queued_ids) == 1 and ctx.request_ids == fake.queued_ids
    assert any("no longer knows prompt gone" in m for _, m in ctx.progress_reports)
    assert Image.open(io.BytesIO(result.outputs[0].data)).size == (64, 64)


async def test_without_a_socket_the_adapter_polls(comfy: tuple[FakeComfyUI, str]) -> None:
    fake, url = comfy
    fake.websocket = False
    fake.step_delay = 0.02
    async with adapter(url) as comfyui:
        blocker = asyncio.create_task(comfyui.run(context("first", steps=20)))
        await wait_until(lambda: fake.running is not None, 10.0)
        ctx = context("second")
        result = await comfyui.run(ctx)
        await blocker
    assert Image.open(io.BytesIO(result.outputs[0].data)).size == (64, 48)
    assert any("1 ahead in ComfyUI's queue" in m for _, m in ctx.progress_reports)
    assert ctx.previews == []


async def test_a_restarted_server_losing_the_prompt_is_retryable(
    comfy: tuple[FakeComfyUI, str],
) -> None:
    fake, url = comfy
    fake.websocket = False
    fake.step_delay = 0.05
    ctx = context(steps=100)
    async with adapter(url) as comfyui:
        job = asyncio.create_task(comfyui.run(ctx))
        await wait_until(lambda: fake.running is not None, 10.0)
        fake.restart()
        with pytest.raises(Retryable, match="lost prompt"):
            await job


def test_frames_parse_into_messages_and_previews() -> None:
    message = parse_frame('{"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": "p"}}')
    assert message == Message("progress", {"value": 1, "max": 2, "prompt_id": "p"})
    assert isinstance(message, Message) and message.prompt_id == "p"
    png = struct.pack(">II", 1, 2) + b"\x89PNG..."
    assert parse_frame(png) == Preview(b"\x89PNG...", "image/png")
    meta = json.dumps({"prompt_id": "p", "image_type": "image/webp"}).encode()
    framed = struct.pack(">II", 4, len(meta)) + meta + b"RIFF"
    assert parse_frame(framed) == Preview(b"RIFF", "image/webp", "p")
    assert parse_frame(struct.pack(">II", 3, 5) + b"hello") is None  # a text event
    assert parse_frame(struct.pack(">II", 1, 9) + b"x") is None  # an unknown image format
    assert parse_frame(b"\x00\x00") is None and parse_frame("not json") is None
    assert (
        socket_url("https://comfy.example/api", "c 1")
        == "wss://comfy.example/api/ws?clientId=c%201"
    )


async def queue_directly(url: str, fake: FakeComfyUI, ctx: FakeContext) -> str:
    """Queue the job's workflow as an earlier delivery would have; its prompt id."""
    graph = json.loads(SHIPPED[T2I].read_text())
    p = ctx.parameters
    graph["3"]["inputs"].update(
        seed=p["seed"], steps=p["steps"], cfg=7.0, sampler_name="euler", scheduler="normal"
    )
    graph["4"]["inputs"]["ckpt_name"] = CHECKPOINTS[0]
    graph["5"]["inputs"].update(width=p["width"], height=p["height"])
    graph["6"]["inputs"]["text"] = ctx.job.spec.prompt
    graph["7"]["inputs"]["text"] = ""
    body = {"prompt": graph, "client_id": job_client_id("comfyui", ctx.job.id)}
    async with httpx.AsyncClient(base_url=url) as client:
        answer = (await client.post("/prompt", json=body)).json()
    fake.faults.requests.clear()
    return str(answer["prompt_id"])
