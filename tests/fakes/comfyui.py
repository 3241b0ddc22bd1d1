"""A fake ComfyUI server speaking ComfyUI's wire format on loopback.

It validates API-format workflows the way ComfyUI does (400 with `error` and `node_errors`),
keeps a real queue (pending and running, numbered), runs one prompt at a time through the
standard text-to-image graph (checkpoint, CLIP text encodes, empty latent, KSampler, VAE
decode, SaveImage/PreviewImage), and tells the client that queued it over the WebSocket:
status, execution_start, executing, progress, executed, execution_success /
execution_error / execution_interrupted, and binary preview frames during sampling. Results
land in /history/{id} (a little after success is announced, as in ComfyUI) and the PNGs it
saved are served by /view. /interrupt and /queue {"delete"} cancel.

Knobs (attributes, changeable while it runs): `step_delay` seconds per sampler step,
`history_lag`, `preview_every` steps, `preview_metadata` (type-4 frames), `token` (a bearer
token a proxy in front of ComfyUI would demand), `websocket` (False: refuse sockets, as a proxy
without WebSocket support does), `faults` for scripted HTTP failures, `fail_next()` for a node
exception during the next prompt, and `restart()` to forget the queue and history.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.fakes.server import Faults, serving

CHECKPOINTS = ("v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors")
SAMPLERS = (
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)
SCHEDULERS = (
    "normal",
    "karras",
    "exponential",
    "sgm_uniform",
    "simple",
    "ddim_uniform",
    "beta",
    "linear_quadratic",
    "kl_optimal",
)
MAX_RESOLUTION = 16384
LINK = "LINK"


@dataclass(frozen=True)
class Number:
    kind: str  # "INT" or "FLOAT"
    minimum: float
    maximum: float


# class_type -> input name -> LINK, "STRING", a Number, or a tuple of allowed values.
NODES: dict[str, dict[str, Any]] = {
    "CheckpointLoaderSimple": {"ckpt_name": CHECKPOINTS},
    "CLIPTextEncode": {"text": "STRING", "clip": LINK},
    "EmptyLatentImage": {
        "width": Number("INT", 16, MAX_RESOLUTION),
        "height": Number("INT", 16, MAX_RESOLUTION),
        "batch_size": Number("INT", 1, 4096),
    },
    "KSampler": {
        "model": LINK,
        "seed": Number("INT", 0, 0xFFFFFFFFFFFFFFFF),
        "steps": Number("INT", 1, 10000),
        "cfg": Number("FLOAT", 0.0, 100.0),
        "sampler_name": SAMPLERS,
        "scheduler": SCHEDULERS,
        "positive": LINK,
        "negative": LINK,
        "latent_image": LINK,
        "denoise": Number("FLOAT", 0.0, 1.0),
    },
    "VAEDecode": {"samples": LINK, "vae": LINK},
    "SaveImage": {"images": LINK, "filename_prefix": "STRING"},
    "PreviewImage": {"images": LINK},
}
OUTPUT_NODES = {"SaveImage": "output", "PreviewImage": "temp"}


class Interrupted(Exception):
    """The running prompt was interrupted (POST /interrupt)."""


class NodeFailure(Exception):
    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.message = message


@dataclass
class QueuedPrompt:
    number: int
    prompt_id: str
    prompt: dict[str, Any]
    client_id: str
    outputs: list[str]

    def item(self) -> list[Any]:
        """The queue/history item as ComfyUI lists it."""
        return [
            self.number,
            self.prompt_id,
            self.prompt,
            {"client_id": self.client_id},
            self.outputs,
        ]


@dataclass
class _Latent:
    width: int
    height: int
    batch: int
    seed: int = 0
    text: str = ""


@dataclass
class _Run:
    """What one prompt has done so far: node outputs, saved files, history messages."""

    queued: QueuedPrompt
    values: dict[str, Any] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)


class FakeComfyUI:
    """The fake server's state and its Starlette app (`app`); serve it with `serve()`."""

    def __init__(
        self,
        *,
        step_delay: float = 0.01,
        history_lag: float = 0.02,
        preview_every: int = 1,
        preview_metadata: bool = False,
        token: str = "",
        honour_prompt_id: bool = True,
        websocket: bool = True,
    ) -> None:
        self.step_delay = step_delay
        self.history_lag = history_lag
        self.preview_every = preview_every
        self.preview_metadata = preview_metadata
        self.token = token
        self.honour_prompt_id = honour_prompt_id
        self.websocket = websocket
        self.faults = Faults()
        self.pending: list[QueuedPrompt] = []
        self.running: QueuedPrompt | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.sockets: dict[str, WebSocket] = {}
        # What clients asked for, for tests and benchmarks to inspect.
        self.queued_ids: list[str] = []
        self.interrupts: list[str | None] = []
        self.deleted: list[str] = []
        self.socket_clients: list[str] = []
        self._failures: list[NodeFailure] = []
        self._forgotten: set[str] = set()
        self._interrupt = False
        self._number = 0
        self._counter = 0
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._last_node: str | None = None
        self.app = Starlette(
            routes=[
                WebSocketRoute("/ws", self._socket),
                Route("/system_stats", self._system_stats),
                Route("/prompt", self._post_prompt, methods=["POST"]),
                Route("/prompt", self._get_prompt, methods=["GET"]),
                Route("/queue", self._get_queue, methods=["GET"]),
                Route("/queue", self._post_queue, methods=["POST"]),
                Route("/interrupt", self._post_interrupt, methods=["POST"]),
                Route("/history", self._get_history_all, methods=["GET"]),
                Route("/history/{prompt_id}", self._get_history, methods=["GET"]),
                Route("/view", self._view),
            ]
        )

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve on a free loopback port; yields the base URL."""
        async with serving(self.app) as url:
            try:
                yield url
            finally:
                await self.aclose()

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    def fail_next(self, exception_type: str, message: str) -> None:
        """Make the next prompt's sampler raise `exception_type: message`."""
        self._failures.append(NodeFailure(exception_type, message))

    def restart(self) -> None:
        """Forget the queue and the history, as a restarted ComfyUI does."""
        self.pending.clear()
        self.history.clear()
        if self.running is not None:
            self._forgotten.add(self.running.prompt_id)
            self._interrupt = True

    # --- HTTP ---------------------------------------------------------------------------

    async def _guard(self, request: Request) -> Response | None:
        if (injected := await self.faults.check(request)) is not None:
            return injected
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"error": "Unauthorized"}, 401)
        return None

    async def _system_stats(self, request: Request) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        system = {
            "os": "posix",
            "ram_total": 32 * 2**30,
            "ram_free": 16 * 2**30,
            "comfyui_version": "0.3.0-fake",
            "python_version": "3.11",
            "pytorch_version": "fake",
            "embedded_python": False,
            "argv": ["main.py"],
        }
        device = {"name": "cpu", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0}
        return JSONResponse({"system": system, "devices": [device]})

    async def _post_prompt(self, request: Request) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "invalid JSON"}, 400)
        if not isinstance(body, dict) or "prompt" not in body:
            error = _error("no_prompt", "No prompt provided", "No prompt provided")
            return JSONResponse({"error": error, "node_errors": {}}, 400)
        prompt = body["prompt"]
        rejected = validate(prompt)
        if rejected is not None:
            return JSONResponse(rejected, 400)
        outputs = [n for n, node in prompt.items() if node["class_type"] in OUTPUT_NODES]
        number = self._number
        self._number += 1
        prompt_id = str(body.get("prompt_id") or "") if self.honour_prompt_id else ""
        prompt_id = prompt_id or str(uuid.uuid4())
        client_id = str(body.get("client_id") or "")
        self.pending.append(QueuedPrompt(number, prompt_id, prompt, client_id, outputs))
        self.queued_ids.append(prompt_id)
        self._start_worker()
        await self._broadcast_status()
        return JSONResponse({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    async def _get_prompt(self, request: Request) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        return JSONResponse(self._queue_info())

    async def _get_queue(self, request: Request) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        running = [self.running.item()] if self.running is not None else []
        pending = [p.item() for p in self.pending]
        return JSONResponse({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: Request) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        body = json.loads(await request.body() or b"{}")
        if body.get("clear"):
            self.pending.clear()
        for prompt_id in body.get("delete", []):
            self.deleted.append(prompt_id)
            self.pending = [p for p in self.pending if p.prompt_id != prompt_id]
        await self._broadcast_status()
        return Response(status_code=200)

    async def _post_interrupt(self, request: Request) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        self.interrupts.append(prompt_id)
        running = self.running
        # A targeted interrupt only stops the prompt it names (ComfyUI >= 0.3.4x).
        if running is not None and (prompt_id is None or running.prompt_id == prompt_id):
            self._interrupt = True
        return Response(status_code=200)

    async def _get_history_all(self, request: Request) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        return JSONResponse(self.history)

    async def _get_history(self, request: Request) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        prompt_id = request.path_params["prompt_id"]
        entry = self.history.get(prompt_id)
        return JSONResponse({prompt_id: entry} if entry is not None else {})

    async def _view(self, request: Request) -> Response:
        if (denied := await self._guard(request)) is not None:
            return denied
        query = request.query_params
        filename = query.get("filename", "")
        if not filename or filename.startswith("/") or ".." in filename:
            return Response(status_code=400)
        key = (query.get("type", "output"), query.get("subfolder", ""), filename)
        data = self.files.get(key)
        if data is None:
            return Response(status_code=404)
        headers = {"Content-Disposition": f'filename="{filename}"'}
        return Response(data, media_type="image/png", headers=headers)

    # --- WebSocket ----------------------------------------------------------------------

    async def _socket(self, ws: WebSocket) -> None:
        allowed = not self.token or ws.headers.get("authorization") == f"Bearer {self.token}"
        if not self.websocket or not allowed:
            await ws.close(code=1008)
            return
        await ws.accept()
        sid = ws.query_params.get("clientId") or uuid.uuid4().hex
        # A reconnecting client replaces its old socket, as in ComfyUI.
        self.sockets[sid] = ws
        self.socket_clients.append(sid)
        try:
            await self._send(sid, "status", {"status": self._queue_info(), "sid": sid})
            running = self.running
            if running is not None and running.client_id == sid and self._last_node:
                await self._send(sid, "executing", {"node": self._last_node})
            while True:
                await ws.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]

    async def _send(self, sid: str | None, event: str, data: Mapping[str, Any]) -> None:
        text = json.dumps({"type": event, "data": data})
        for ws in self._targets(sid):
            with contextlib.suppress(Exception):
                await ws.send_text(text)

    async def _send_bytes(self, sid: str | None, frame: bytes) -> None:
        for ws in self._targets(sid):
            with contextlib.suppress(Exception):
                await ws.send_bytes(frame)

    def _targets(self, sid: str | None) -> list[WebSocket]:
        # No client id: ComfyUI broadcasts to every socket.
        if not sid:
            return list(self.sockets.values())
        return [self.sockets[sid]] if sid in self.sockets else []

    async def _broadcast_status(self) -> None:
        await self._send(None, "status", {"status": self._queue_info()})

    def _queue_info(self) -> dict[str, Any]:
        remaining = len(self.pending) + (1 if self.running is not None else 0)
        return {"exec_info": {"queue_remaining": remaining}}

    # --- execution ----------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        self._wake.set()

    async def _work(self) -> None:
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            self.pending.sort(key=lambda p: p.number)
            self.running = self.pending.pop(0)
            self._interrupt = False
            try:
                await self._execute(self.running)
            finally:
                self.running = None
                self._last_node = None
                await self._broadcast_status()

    async def _execute(self, queued: QueuedPrompt) -> None:
        run = _Run(queued)
        sid = queued.client_id
        await self._message(run, "execution_start", {"prompt_id": queued.prompt_id})
        await self._message(run, "execution_cached", {"nodes": [], "prompt_id": queued.prompt_id})
        status: dict[str, Any]
        try:
            for node_id in _order(queued.prompt, queued.outputs):
                await self._run_node(run, node_id)
            await self._message(run, "execution_success", {"prompt_id": queued.prompt_id})
            await self._send(sid, "executing", {"node": None, "prompt_id": queued.prompt_id})
            status = {"status_str": "success", "completed": True}
        except Interrupted:
            node_id = self._last_node or ""
            data = {
                "prompt_id": queued.prompt_id,
                "node_id": node_id,
                "node_type": queued.prompt.get(node_id, {}).get("class_type", ""),
                "executed": run.executed,
            }
            await self._message(run, "execution_interrupted", data)
            status = {"status_str": "error", "completed": False}
        except NodeFailure as failure:
            node_id = self._last_node or ""
            data = {
                "prompt_id": queued.prompt_id,
                "node_id": node_id,
                "node_type": queued.prompt[node_id]["class_type"],
                "executed": run.executed,
                "exception_message": failure.message,
                "exception_type": failure.exception_type,
                "traceback": [f"{failure.exception_type}: {failure.message}\n"],
                "current_inputs": {},
                "current_outputs": {},
            }
            await self._message(run, "execution_error", data)
            status = {"status_str": "error", "completed": False}
        # ComfyUI announces the end before it writes the history entry.
        await asyncio.sleep(self.history_lag)
        if queued.prompt_id in self._forgotten:
            return
        self.history[queued.prompt_id] = {
            "prompt": queued.item(),
            "outputs": run.outputs,
            "status": {**status, "messages": run.messages},
            "meta": {n: {"node_id": n, "display_node": n} for n in run.outputs},
        }

    async def _message(self, run: _Run, event: str, data: dict[str, Any]) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        run.messages.append([event, data])
        await self._send(run.queued.client_id, event, data)

    async def _run_node(self, run: _Run, node_id: str) -> None:
        queued = run.queued
        node = queued.prompt[node_id]
        self._last_node = node_id
        await self._send(
            queued.client_id,
            "executing",
            {"node": node_id, "display_node": node_id, "prompt_id": queued.prompt_id},
        )
        inputs = {k: _resolve(v, run.values) for k, v in node["inputs"].items()}
        kind = node["class_type"]
        if kind == "CheckpointLoaderSimple":
            value: Any = ("MODEL", "CLIP", "VAE")
        elif kind == "CLIPTextEncode":
            value = (str(inputs["text"]),)
        elif kind == "EmptyLatentImage":
            value = (_Latent(inputs["width"], inputs["height"], inputs["batch_size"]),)
        elif kind == "KSampler":
            value = (await self._sample(run, node_id, inputs),)
        elif kind == "VAEDecode":
            value = (inputs["samples"],)
        else:
            await self._save(run, node_id, inputs["images"], kind, node["inputs"])
            value = ()
        run.values[node_id] = value
        run.executed.append(node_id)

    async def _sample(self, run: _Run, node_id: str, inputs: Mapping[str, Any]) -> _Latent:
        latent = inputs["latent_image"]
        result = _Latent(
            latent.width, latent.height, latent.batch, inputs["seed"], inputs["positive"]
        )
        steps = int(inputs["steps"])
        final = render(result.text, result.seed, 64, 64)
        for step in range(1, steps + 1):
            await asyncio.sleep(self.step_delay)
            if self._interrupt:
                raise Interrupted()
            if self._failures:
                raise self._failures.pop(0)
            progress = {
                "value": step,
                "max": steps,
                "prompt_id": run.queued.prompt_id,
                "node": node_id,
            }
            await self._send(run.queued.client_id, "progress", progress)
            if self.preview_every and step % self.preview_every == 0:
                await self._send_preview(run, node_id, final, step / steps)
        return result

    async def _send_preview(self, run: _Run, node_id: str, final: Image.Image, done: float) -> None:
        noise = Image.new("RGB", final.size, (128, 128, 128))
        buffer = io.BytesIO()
        Image.blend(noise, final, done).save(buffer, format="JPEG", quality=80)
        image = buffer.getvalue()
        if self.preview_metadata:
            meta = json.dumps(
                {
                    "node_id": node_id,
                    "display_node_id": node_id,
                    "real_node_id": node_id,
                    "prompt_id": run.queued.prompt_id,
                    "image_type": "image/jpeg",
                }
            ).encode()
            frame = struct.pack(">II", 4, len(meta)) + meta + image
        else:
            frame = struct.pack(">II", 1, 1) + image
        await self._send_bytes(run.queued.client_id, frame)

    async def _save(
        self,
        run: _Run,
        node_id: str,
        latent: _Latent,
        kind: str,
        raw_inputs: Mapping[str, Any],
    ) -> None:
        folder = OUTPUT_NODES[kind]
        prefix = str(raw_inputs.get("filename_prefix", "ComfyUI")) if folder == "output" else "tmp"
        images = []
        for index in range(latent.batch):
            self._counter += 1
            filename = f"{prefix}_{self._counter:05}_.png"
            picture = render(latent.text, latent.seed + index, latent.width, latent.height)
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            self.files[(folder, "", filename)] = buffer.getvalue()
            images.append({"filename": filename, "subfolder": "", "type": folder})
        run.outputs[node_id] = {"images": images}
        await self._message(
            run,
            "executed",
            {
                "node": node_id,
                "display_node": node_id,
                "output": {"images": images},
                "prompt_id": run.queued.prompt_id,
            },
        )


def validate(prompt: Any) -> dict[str, Any] | None:
    """ComfyUI's 400 body for a workflow it would refuse, or None when it would queue it."""
    if not isinstance(prompt, dict):
        error = _error("invalid_prompt", "Invalid prompt: not a JSON object", "")
        return {"error": error, "node_errors": {}}
    for node_id, node in prompt.items():
        kind = node.get("class_type") if isinstance(node, dict) else None
        if kind is None:
            message = "Cannot execute because a node is missing the class_type property."
            details = f"Node ID '#{node_id}'"
            return {"error": _error("invalid_prompt", message, details), "node_errors": {}}
        if kind not in NODES:
            message = f"Cannot execute because node {kind} does not exist."
            return {
                "error": _error("invalid_prompt", message, f"Node ID '#{node_id}'"),
                "node_errors": {},
            }
    outputs = [n for n, node in prompt.items() if node["class_type"] in OUTPUT_NODES]
    if not outputs:
        return {
            "error": _error("prompt_no_outputs", "Prompt has no outputs", ""),
            "node_errors": [],
        }
    node_errors: dict[str, Any] = {}
    for node_id, node in prompt.items():
        errors = _node_errors(prompt, node)
        if errors:
            dependents = [o for o in outputs if node_id in _ancestors(prompt, o)]
            node_errors[node_id] = {
                "errors": errors,
                "dependent_outputs": dependents,
                "class_type": node["class_type"],
            }
    if not node_errors:
        return None
    details = "\n".join(
        f"{e['message']}: {e['details']}" for n in node_errors.values() for e in n["errors"]
    )
    failed = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
    return {"error": failed, "node_errors": node_errors}


def render(text: str, seed: int, width: int, height: int) -> Image.Image:
    """A picture that depends on the prompt and the seed only: a two-colour gradient."""
    digest = hashlib.sha256(f"{text}\x00{seed}".encode()).digest()
    mask = Image.linear_gradient("L").rotate(digest[6] % 4 * 90).resize((width, height))
    first = Image.new("RGB", (width, height), tuple(digest[0:3]))
    second = Image.new("RGB", (width, height), tuple(digest[3:6]))
    return Image.composite(first, second, mask)


def _node_errors(prompt: Mapping[str, Any], node: Mapping[str, Any]) -> list[dict[str, Any]]:
    errors = []
    inputs = node.get("inputs") or {}
    for name, spec in NODES[node["class_type"]].items():
        if name not in inputs:
            errors.append(_input_error("required_input_missing", "Required input is missing", name))
            continue
        value = inputs[name]
        if spec == LINK or isinstance(value, list):
            if not (isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt):
                errors.append(_input_error("bad_linked_input", "Bad linked input", name))
        elif spec == "STRING":
            if not isinstance(value, str):
                errors.append(
                    _input_error("invalid_input_type", "Failed to convert to STRING", name)
                )
        elif isinstance(spec, tuple):
            if value not in spec:
                listed = str(list(spec))
                message = "Value not in list"
                details = f"{name}: '{value}' not in {listed}"
                errors.append(_error("value_not_in_list", message, details, input_name=name))
        elif isinstance(spec, Number):
            errors.extend(_number_errors(name, value, spec))
    return errors


def _number_errors(name: str, value: Any, spec: Number) -> list[dict[str, Any]]:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or (spec.kind == "INT" and not float(value).is_integer()):
        message = f"Failed to convert an input value to a {spec.kind} value"
        return [_error("invalid_input_type", message, f"{name}, {value}", input_name=name)]
    if value < spec.minimum:
        message = f"Value {value} smaller than min of {spec.minimum:g}"
        return [_error("value_smaller_than_min", message, name, input_name=name)]
    if value > spec.maximum:
        message = f"Value {value} bigger than max of {spec.maximum:g}"
        return [_error("value_bigger_than_max", message, name, input_name=name)]
    return []


def _error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _input_error(kind: str, message: str, name: str) -> dict[str, Any]:
    return _error(kind, message, name, input_name=name)


def _ancestors(prompt: Mapping[str, Any], node_id: str) -> set[str]:
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        current = stack.pop()
        if current in seen or current not in prompt:
            continue
        seen.add(current)
        for value in prompt[current].get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2:
                stack.append(str(value[0]))
    return seen


def _order(prompt: Mapping[str, Any], outputs: list[str]) -> list[str]:
    """Nodes the outputs need, each after the nodes it reads from."""
    order: list[str] = []

    def visit(node_id: str) -> None:
        if node_id in order:
            return
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list) and len(value) == 2:
                visit(str(value[0]))
        order.append(node_id)

    for output in outputs:
        visit(output)
    return order


def _resolve(value: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(value, list) and len(value) == 2:
        return values[str(value[0])][int(value[1])]
    return value
