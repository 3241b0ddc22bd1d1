"""gRPC status -> HTTP status and body, the one table, over real HTTP where the mesh can be
made to refuse: an over-limit upload or put (413), a router or storage that is down (503), a bad
tenant (400)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.app import create_app
from gateway.bodies import MAX_JSON_BODY
from gateway.errors import MESH_UNREACHABLE, rpc_error_response
from gateway.settings import Settings
from genmesh.v1 import (
    generate_service_pb2,
    generate_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from services.common.errors import REASON_KEY, TOO_LARGE, ResourceExhausted
from services.common.grpc_server import MAX_MESSAGE_BYTES, grpc_server
from tests.fakes.server import serving
from tests.gateway.conftest import BRIDGE_SERVER, bridge_http, post_partly, storage_bridge
from tests.infra import free_port

# Generous: only reached when the bridge waits for a body that is never sent.
PATIENCE = 30.0

EXPECTED = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 416,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.DATA_LOSS: 500,
}


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_every_status_code_has_one_http_answer(code: grpc.StatusCode) -> None:
    if code == grpc.StatusCode.OK:
        return
    error = grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="at /srv/router.py line 7"
    )
    response = rpc_error_response(error)
    body = json.loads(bytes(response.body))
    if code in EXPECTED:
        assert response.status_code == EXPECTED[code]
        assert body == {"error": {"code": code.name, "message": "at /srv/router.py line 7"}}
    else:
        # UNKNOWN, INTERNAL: the server's details may hold internals; keep them out.
        assert response.status_code == 500
        assert body == {"error": {"code": "INTERNAL", "message": "internal error"}}


@pytest.mark.parametrize(
    ("reason", "status"), [(TOO_LARGE, 413), ("", 429), ("QUEUE_FULL", 429)], ids=repr
)
def test_only_a_size_limit_makes_resource_exhausted_413(reason: str, status: int) -> None:
    trailers = grpc.aio.Metadata((REASON_KEY, reason)) if reason else grpc.aio.Metadata()
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details="refused")
    response = rpc_error_response(error)
    assert response.status_code == status
    assert json.loads(bytes(response.body)) == {
        "error": {"code": "RESOURCE_EXHAUSTED", "message": "refused"}
    }


@pytest.mark.parametrize(
    "details",
    [
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.7:50051: refused",
        "connections to all backends failing; last error: UNKNOWN: Failed to connect",
        "errors resolving router.internal:50051: [... address lookup failed for router ...]",
        "DNS resolution failed for router:50051: C-ares status is not ARES_SUCCESS",
        # A server that stopped with the call still running (a router's graceful restart).
        "Cancelling all calls",
    ],
    ids=["connect", "round-robin", "resolve", "c-ares", "server-stopping"],
)
def test_the_transports_words_for_a_service_out_of_reach_stay_in_the_log(details: str) -> None:
    code = grpc.StatusCode.UNAVAILABLE
    error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
    response = rpc_error_response(error)
    assert response.status_code == 503
    body = json.loads(bytes(response.body))
    assert body == {"error": {"code": "UNAVAILABLE", "message": MESH_UNREACHABLE}}


def test_a_services_own_unavailable_words_reach_the_client() -> None:
    details = "no provider serves text-to-video (providers: sandbox)"
    code = grpc.StatusCode.UNAVAILABLE
    error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
    assert json.loads(bytes(rpc_error_response(error).body))["error"]["message"] == details


@dataclass
class Lonely:
    """A bridge whose storage refuses uploads over 1,000 bytes and whose router is down."""

    http: httpx.AsyncClient
    url: str


@pytest.fixture
async def lonely(tmp_path: Path) -> AsyncIterator[Lonely]:
    async with storage_bridge(tmp_path, GENMESH_STORAGE_MAX_UPLOAD_BYTES="1000") as http:
        yield Lonely(http, str(http.base_url).rstrip("/"))


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b'{"task": "text-to-text"', "application/json", "not valid JSON: Expecting"),
        (b'["a prompt"]', "application/json", "the body must be a JSON object"),
        (b"", "application/json", "a JSON body is required"),
        (b'{"prompt": "hi"}', "text/plain", "content-type: application/json"),
    ],
    ids=["unclosed", "array", "empty", "not-json-content-type"],
)
async def test_a_body_that_is_no_json_object_is_told_so(
    lonely: Lonely, body: bytes, content_type: str, says: str
) -> None:
    # Refused by the bridge itself, before the (absent) router is called.
    response = await lonely.http.post(
        "/v1/jobs", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/jobs", {"task": "text-to-text", "prompt": "hi", "promt": "x"}, "promt"),
        ("/v1/batches", {"specs": [{"task": "text-to-text", "prompt": "hi"}], "key": 1}, "key"),
        ("/v1/jobs/j_1:cancel", {"reasn": "not needed"}, "reasn"),
    ],
    ids=["submit", "batch", "cancel"],
)
async def test_an_unknown_body_field_is_refused_on_every_route(
    lonely: Lonely, path: str, body: dict[str, object], field: str
) -> None:
    # SubmitBatch and CancelJob dropped one unheard: a misspelt reason cancelled the job
    # without it. Refused by the bridge itself, before the (absent) router is called.
    response = await lonely.http.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == f"{field}: Extra inputs are not permitted"


def nested(levels: int) -> object:
    value: object = 1
    for n in range(levels):
        value = {"k": value} if n % 2 else [value]
    return value


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs:generate", "/v1/batches"])
async def test_parameters_nested_too_deep_are_a_400(lonely: Lonely, path: str) -> None:
    # Protobuf builds no message nested past 100 levels: the request could not be made, and
    # the bridge answered 500 INTERNAL.
    def body(spec: dict[str, object]) -> dict[str, object]:
        return {"specs": [spec]} if path == "/v1/batches" else spec

    image: dict[str, object] = {"task": "text-to-image", "prompt": "a fox"}
    deep: tuple[dict[str, object], ...] = (
        {**image, "parameters": {"a": nested(60)}},
        {"prompt": "a fox", "pipeline": {"steps": [{"parameters": {"a": nested(60)}}]}},
    )
    for spec in deep:
        response = await lonely.http.post(path, json=body(spec))
        assert response.status_code == 400, response.text
        assert "levels deep" in response.json()["error"]["message"]
    # Within the bound it goes on to the router (absent here).
    fine = await lonely.http.post(path, json=body({**image, "parameters": {"a": nested(19)}}))
    assert fine.status_code == 503, fine.text


async def test_an_unknown_state_filter_lists_the_known_ones(lonely: Lonely) -> None:
    response = await lonely.http.get("/v1/jobs", params={"state": "bogus"})
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "unknown job state 'bogus'; one of queued, processing, preview-ready" in message


async def test_refusals_map_to_http_statuses(lonely: Lonely) -> None:
    http = lonely.http

    async def expect(response: httpx.Response, status: int, code: str) -> None:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"]

    # Storage's refusal (the bridge's own limit is its default, far higher) says why.
    big = await http.post("/v1/assets", files={"file": ("big.bin", b"\x00" * 5000, "image/png")})
    await expect(big, 413, "RESOURCE_EXHAUSTED")
    empty = await http.post("/v1/assets", files={"file": ("empty.png", b"", "image/png")})
    await expect(empty, 400, "INVALID_ARGUMENT")
    await expect(await http.get("/v1/jobs"), 503, "UNAVAILABLE")
    await expect(
        await http.post("/v1/jobs", json={"task": "text-to-text", "prompt": "hi"}),
        503,
        "UNAVAILABLE",
    )
    await expect(await http.get("/v1/jobs/j_1/events"), 503, "UNAVAILABLE")
    await expect(
        await http.get("/v1/jobs", headers={"x-genmesh-tenant": "no spaces"}),
        400,
        "INVALID_ARGUMENT",
    )
    await expect(
        await http.get("/v1/jobs", params={"after": "x", "page_size": "many"}),
        400,
        "INVALID_ARGUMENT",
    )
    await expect(
        await http.post(
            "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
        ),
        400,
        "INVALID_ARGUMENT",
    )
    await expect(await http.get("/v1/nowhere"), 404, "NOT_FOUND")
    await expect(await http.delete("/v1/jobs"), 405, "UNIMPLEMENTED")

    url = lonely.url.replace("http://", "ws://") + "/v1/jobs:watch"
    async with connect(url, proxy=None) as ws:
        message = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert message["error"]["code"] == "UNAVAILABLE"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        # Two routes (ListJobs, Submit): Allow named only the first, POST.
        ("DELETE", "/v1/jobs", "GET, POST"),
        ("PUT", "/v1/jobs", "GET, POST"),
        ("PATCH", "/v1/assets/a_1/content", "GET, HEAD"),
        ("GET", "/v1/assets", "POST"),
        ("GET", "/v1/jobs/j_1:cancel", "POST"),
    ],
)
async def test_a_wrong_method_is_told_every_allowed_one(
    lonely: Lonely, method: str, path: str, allowed: str
) -> None:
    response = await lonely.http.request(method, path)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allowed
    assert response.json()["error"]["code"] == "UNIMPLEMENTED"


async def test_puts_refuse_as_uploads_do(lonely: Lonely) -> None:
    http = lonely.http
    big = {"data": base64.b64encode(b"\x00" * 5000).decode()}
    upload = await http.post("/v1/assets", files={"file": ("big.bin", b"\x00" * 5000)})
    put = await http.post("/v1/assets:put", json=big)
    assert upload.status_code == put.status_code == 413, put.text
    assert put.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert "limit of 1000 bytes" in put.json()["error"]["message"]

    # In a batch the refusal is the item's own, and the others are stored.
    small = {"data": base64.b64encode(b"small").decode()}
    batch = await http.post("/v1/assets:batchPut", json={"requests": [big, small]})
    assert batch.status_code == 200, batch.text
    refused, stored = batch.json()["results"]
    assert refused["error"]["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert stored["asset"]["size_bytes"] == "5"


async def test_calls_to_services_out_of_reach_are_unavailable_and_name_no_address() -> None:
    nowhere = Settings(
        router_addr=f"127.0.0.1:{free_port()}",
        storage_addr=f"127.0.0.1:{free_port()}",
        shutdown_grace=1,
    )
    async with (
        serving(create_app(nowhere), **BRIDGE_SERVER) as url,
        httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as http,
    ):
        body = {"data": base64.b64encode(b"bytes").decode()}
        put = await http.post("/v1/assets:put", json=body)
        batch = await http.post("/v1/assets:batchPut", json={"requests": [body]})
        providers = await http.get("/v1/providers")
        job = await http.post("/v1/jobs", json={"task": "TASK_TEXT_TO_TEXT", "prompt": "hi"})
    for response in (put, batch, providers, job):
        assert response.status_code == 503, response.text
        assert response.json()["error"] == {"code": "UNAVAILABLE", "message": MESH_UNREACHABLE}
        # gRPC's own words would name the services' internal addresses.
        assert "127.0.0.1" not in response.text


class _Crowded(generate_service_pb2_grpc.GenerateServiceServicer):
    """A router whose provider's queue is always at its bound: Submit is refused as the
    router's admission refuses it."""

    def __init__(self) -> None:
        self.calls = 0

    def _refuse(self) -> ResourceExhausted:
        self.calls += 1
        return ResourceExhausted("provider p has 3 job(s) waiting (max_queue = 3); retry later")

    async def Submit(self, request: Any, context: Any) -> Any:
        raise self._refuse()

    async def SubmitBatch(self, request: Any, context: Any) -> Any:
        raise self._refuse()

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        raise self._refuse()
        yield  # a server stream, refused before its first message


@pytest.fixture
async def crowded() -> AsyncIterator[tuple[httpx.AsyncClient, _Crowded]]:
    """A bridge in front of that router, served as the mesh serves (its error interceptor)."""
    router = _Crowded()
    name = generate_service_pb2.DESCRIPTOR.services_by_name["GenerateService"].full_name
    add = generate_service_pb2_grpc.add_GenerateServiceServicer_to_server
    async with grpc_server("127.0.0.1:0", [(add, router, name)], grace=1) as server:
        settings = Settings(
            router_addr=server.address,
            storage_addr=f"127.0.0.1:{free_port()}",
            shutdown_grace=1,
        )
        async with bridge_http(settings) as http:
            yield http, router


async def test_a_queue_bound_is_429_and_a_size_limit_413(
    crowded: tuple[httpx.AsyncClient, _Crowded],
) -> None:
    http, router = crowded
    spec = {"task": "text-to-image", "prompt": "a red fox in snow"}
    for path, body in [
        ("/v1/jobs", spec),
        ("/v1/batches", {"specs": [spec]}),
        ("/v1/jobs:generate", spec),
    ]:
        queued = await http.post(path, json=body)
        assert queued.status_code == 429, (path, queued.text)
        assert queued.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert "retry later" in queued.json()["error"]["message"]
    assert router.calls == 3

    # Well under the JSON limit, but a Struct spends 11 bytes on each 2-byte JSON number: the
    # message would be over gRPC's limit, and gRPC's own refusal says nothing but
    # RESOURCE_EXHAUSTED. The bridge refuses it itself, and the router never sees it.
    numbers = [0] * (MAX_MESSAGE_BYTES // 10)
    large = await http.post("/v1/jobs", json={**spec, "parameters": {"n": numbers}})
    assert len(large.request.content) < MAX_JSON_BODY
    assert large.status_code == 413, large.text
    assert large.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert f"limit of {MAX_MESSAGE_BYTES} bytes" in large.json()["error"]["message"]
    batch = await http.post("/v1/batches", json={"specs": [{**spec, "parameters": {"n": numbers}}]})
    assert batch.status_code == 413, batch.text
    assert router.calls == 3


async def test_a_job_body_over_the_limit_is_refused_unread(
    crowded: tuple[httpx.AsyncClient, _Crowded],
) -> None:
    http, router = crowded
    # Only the body's first bytes are ever sent: an answer at all shows the bridge went by
    # Content-Length instead of reading (into memory) what it declares.
    headers = {"Content-Type": "application/json", "Content-Length": str(MAX_JSON_BODY + 1)}
    answer = await post_partly(http, "/v1/jobs", headers, b'{"task": "text-to-image", ', PATIENCE)
    assert answer.status == 413, answer
    assert answer.body["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert f"limit of {MAX_JSON_BODY} bytes" in answer.body["error"]["message"]
    assert router.calls == 0


class _Newer(job_service_pb2_grpc.JobServiceServicer):
    """A router from a later version of the contract: its jobs may hold enum values this
    bridge's contract does not name."""

    async def GetJob(self, request: Any, context: Any) -> Any:
        job = job_pb2.Job(id=request.job_id, state=job_pb2.JOB_STATE_COMPLETED)
        job.spec.task = 77  # type: ignore[assignment]  # a task added later
        return job_service_pb2.GetJobResponse(job=job)


async def test_a_value_a_newer_router_sends_reaches_the_client_as_its_number() -> None:
    name = job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
    add = job_service_pb2_grpc.add_JobServiceServicer_to_server
    router = _Newer()  # type: ignore[abstract]  # the other calls answer UNIMPLEMENTED
    async with grpc_server("127.0.0.1:0", [(add, router, name)], grace=1) as server:
        settings = Settings(
            router_addr=server.address, storage_addr=f"127.0.0.1:{free_port()}", shutdown_grace=1
        )
        async with bridge_http(settings) as http:
            got = await http.get("/v1/jobs/j_1")
    assert got.status_code == 200, got.text
    job = got.json()
    assert (job["spec"]["task"], job["state"]) == (77, "JOB_STATE_COMPLETED")


async def test_an_unknown_query_parameter_is_refused(lonely: Lonely) -> None:
    # `states` is the proto field's name; the REST parameter is `state`. It listed every job.
    response = await lonely.http.get("/v1/jobs", params={"states": "failed"})
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert message.startswith("query.states: this route takes no such parameter")
    assert "batch_id, page_size, page_token, state, task" in message
    # The page takes what a link adds to its address.
    assert (await lonely.http.get("/", params={"utm_source": "mail"})).status_code == 200
    # A live stream refuses it the same way, as a message and a close.
    url = lonely.url.replace("http", "ws", 1) + "/v1/jobs/j_1/ws?after=3"
    async with connect(url) as socket:
        assert "query.after" in json.loads(await socket.recv())["error"]["message"]
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


async def test_a_pipeline_steps_task_is_read_by_name_as_the_jobs_own(lonely: Lonely) -> None:
    def pipeline(task: str) -> dict[str, object]:
        step = {"name": "answer", "task": task, "prompt": "{prompt}"}
        return {"prompt": "a fox", "pipeline": {"steps": [step]}}

    # Taken by the bridge and passed on to the router (absent here: 503).
    for task in ("text-to-text", "TEXT_TO_TEXT", "TASK_TEXT_TO_TEXT"):
        response = await lonely.http.post("/v1/jobs", json=pipeline(task))
        assert response.status_code == 503, response.text
    response = await lonely.http.post("/v1/jobs", json=pipeline("text-to-txt"))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("pipeline.steps[0].task: unknown task")
