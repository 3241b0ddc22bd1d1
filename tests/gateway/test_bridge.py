"""The bridge over real HTTP against a real mesh: jobs, live events, assets, errors."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from genmesh.v1 import job_service_pb2
from tests.gateway.conftest import Bridge, SseEvent, iter_sse, read_sse, submit

# The bridge adds no storage logic of its own; SQLite keeps the run short.
pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

TENANT = {"x-genmesh-tenant": "acme"}


async def events(http: httpx.AsyncClient, job_id: str, **headers: str) -> list[SseEvent]:
    async with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return await read_sse(response)


async def test_job_streams_to_completion_and_resumes(bridge: Bridge) -> None:
    http = bridge.http
    job = await submit(http, task="TASK_TEXT_TO_IMAGE", parameters={"latency_ms": 200})
    assert job["state"] == "JOB_STATE_QUEUED"
    assert job["spec"]["parameters"]["latency_ms"] == 200  # type: ignore[index]
    job_id = str(job["id"])

    stream = await events(http, job_id)
    assert stream[0].event == "job" and stream[0].id is None
    assert stream[0].data["id"] == job_id
    updates = stream[1:]
    ids = [int(e.id or 0) for e in updates]
    assert ids == sorted(set(ids)) and ids[0] == 1, ids
    assert [e.data["sequence"] for e in updates] == [str(i) for i in ids]  # int64 is a JSON string
    assert updates[-1].data["state"] == "JOB_STATE_COMPLETED"
    assert {e.data["state"] for e in updates} >= {"JOB_STATE_QUEUED", "JOB_STATE_PROCESSING"}

    # A reconnecting EventSource sends Last-Event-ID; only later events come back.
    resumed = await events(http, job_id, **{"Last-Event-ID": str(ids[1])})
    assert [int(e.id or 0) for e in resumed[1:]] == ids[2:]
    plain = await http.get(f"/v1/jobs/{job_id}/events?after_sequence={ids[-2]}")
    assert plain.text.count("\nid: ") + plain.text.startswith("id: ") == 1

    done = (await http.get(f"/v1/jobs/{job_id}")).json()
    assert done["state"] == "JOB_STATE_COMPLETED"
    asset = done["assets"][0]

    listed = (await http.get("/v1/jobs", params={"state": "completed", "page_size": 10})).json()
    assert [j["id"] for j in listed["jobs"]] == [job_id]
    assert (await http.get("/v1/jobs", params={"state": "failed"})).json().get("jobs", []) == []

    # Whole content: the asset's type and length, the bytes it describes.
    content = await http.get(f"/v1/assets/{asset['id']}/content")
    assert content.status_code == 200
    assert content.headers["content-type"] == asset["media_type"]
    assert (
        int(content.headers["content-length"]) == int(asset["size_bytes"]) == len(content.content)
    )
    assert hashlib.sha256(content.content).hexdigest() == asset["sha256"]

    # One range: 206 with exactly those bytes, served from DownloadAsset offset/length.
    size = len(content.content)
    part = await http.get(f"/v1/assets/{asset['id']}/content", headers={"Range": "bytes=10-29"})
    assert part.status_code == 206
    assert part.content == content.content[10:30]
    assert part.headers["content-range"] == f"bytes 10-29/{size}"
    assert part.headers["content-length"] == "20"
    tail = await http.get(f"/v1/assets/{asset['id']}/content", headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == content.content[-5:]
    beyond = await http.get(
        f"/v1/assets/{asset['id']}/content", headers={"Range": f"bytes={size}-"}
    )
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    assert beyond.json()["error"]["code"] == "OUT_OF_RANGE"

    # Cancelling a finished job is a precondition failure.
    cancel = await http.post(f"/v1/jobs/{job_id}:cancel", json={"reason": "too late"})
    assert cancel.status_code == 409
    assert cancel.json()["error"]["code"] == "FAILED_PRECONDITION"


async def test_cancel_running_job(bridge: Bridge) -> None:
    job = await submit(bridge.http, parameters={"latency_ms": 5000})
    cancel = await bridge.http.post(f"/v1/jobs/{job['id']}:cancel")
    assert cancel.status_code == 200, cancel.text
    stream = await events(bridge.http, str(job["id"]))
    assert stream[-1].data["state"] == "JOB_STATE_CANCELLED"


async def test_time_budgets_and_priority_round_trip(bridge: Bridge) -> None:
    job = await submit(
        bridge.http, timeout="120s", attempt_timeout="30.5s", priority="PRIORITY_HIGH"
    )
    fetched = (await bridge.http.get(f"/v1/jobs/{job['id']}")).json()
    spec = fetched["spec"]
    assert (spec["timeout"], spec["attempt_timeout"]) == ("120s", "30.500s")
    assert spec["priority"] == "PRIORITY_HIGH"
    assert fetched["deadline"] > fetched["create_time"]
    pipeline: Any = await submit(bridge.http, task="", pipeline={"name": "text-to-video"})
    steps = [step["name"] for step in pipeline["pipeline"]["steps"]]
    assert steps == ["image", "video"]
    for wrong in ({"timeout": "soon"}, {"priority": "PRIORITY_URGENT"}, {"colour": "red"}):
        bad = await bridge.http.post(
            "/v1/jobs", json={"task": "text-to-image", "prompt": "x", **wrong}
        )
        assert bad.status_code == 400, bad.text


async def test_upload_then_metadata_and_content(bridge: Bridge) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buf, format="PNG")
    data = buf.getvalue()
    response = await bridge.http.post(
        "/v1/assets", files={"file": ("fox.png", data, "image/png")}, headers=TENANT
    )
    assert response.status_code == 201, response.text
    asset = response.json()
    assert asset["media_type"] == "image/png"
    assert asset["filename"] == "fox.png"
    assert asset["tenant_id"] == "acme"
    assert int(asset["size_bytes"]) == len(data)

    meta = await bridge.http.get(f"/v1/assets/{asset['id']}", headers=TENANT)
    assert meta.status_code == 200 and meta.json() == asset
    content = await bridge.http.get(f"/v1/assets/{asset['id']}/content", headers=TENANT)
    assert content.content == data
    # The tenant header is forwarded: another tenant cannot see it.
    assert (await bridge.http.get(f"/v1/assets/{asset['id']}")).status_code == 404


async def test_an_empty_tenant_header_is_the_default_tenant_as_over_grpc(bridge: Bridge) -> None:
    http, empty = bridge.http, {"x-genmesh-tenant": ""}
    job = await submit(http, headers=empty, parameters={"latency_ms": 0})
    assert job["tenant_id"] == "default"
    for headers in (empty, {}):
        got = await http.get(f"/v1/jobs/{job['id']}", headers=headers)
        assert got.status_code == 200, got.text
        listed = await http.get("/v1/jobs", headers=headers)
        assert [j["id"] for j in listed.json()["jobs"]] == [job["id"]]
    # gRPC metadata with an empty tenant finds the same job.
    reply = await bridge.mesh.jobs.GetJob(
        job_service_pb2.GetJobRequest(job_id=str(job["id"])), metadata=(("x-genmesh-tenant", ""),)
    )
    assert reply.job.tenant_id == "default"
    stream = await events(http, str(job["id"]), **empty)
    assert stream[0].event == "job" and stream[0].data["id"] == job["id"]

    put = await http.post(
        "/v1/assets", files={"file": ("a.txt", b"hi", "text/plain")}, headers=empty
    )
    assert put.status_code == 201, put.text
    assert put.json()["tenant_id"] == "default"
    assert (await http.get(f"/v1/assets/{put.json()['id']}")).status_code == 200
    # Anything else outside the pattern is still refused.
    refused = await http.get("/v1/jobs", headers={"x-genmesh-tenant": "-x"})
    assert refused.status_code == 400, refused.text


async def test_errors_map_to_http(bridge: Bridge) -> None:
    http = bridge.http

    async def expect(response: httpx.Response, status: int, code: str) -> None:
        assert response.status_code == status, response.text
        body = response.json()
        assert body["error"]["code"] == code
        assert body["error"]["message"]
        assert "Traceback" not in response.text

    await expect(
        await http.post("/v1/jobs", json={"task": "text-to-image"}), 400, "INVALID_ARGUMENT"
    )
    await expect(
        await http.post("/v1/jobs", json={"task": "paint", "prompt": "x"}), 400, "INVALID_ARGUMENT"
    )
    await expect(await http.post("/v1/jobs", json={"prompt": "x"}), 400, "INVALID_ARGUMENT")
    await expect(await http.get("/v1/jobs/no-such-job"), 404, "NOT_FOUND")
    await expect(await http.get("/v1/jobs/no-such-job/events"), 404, "NOT_FOUND")
    await expect(await http.post("/v1/jobs/no-such-job:cancel"), 404, "NOT_FOUND")
    await expect(await http.get("/v1/assets/no-such-asset/content"), 404, "NOT_FOUND")
    await expect(await http.get("/v1/jobs", params={"state": "sleeping"}), 400, "INVALID_ARGUMENT")

    # A job belongs to its tenant.
    job = await submit(http, parameters={"latency_ms": 0})
    await expect(await http.get(f"/v1/jobs/{job['id']}", headers=TENANT), 404, "NOT_FOUND")


async def test_health_index_and_providers(bridge: Bridge) -> None:
    health = await bridge.http.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    index = await bridge.http.get("/")
    assert index.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in index.text and "/docs" in index.text
    script = await bridge.http.get("/static/app.js")
    assert script.status_code == 200 and "/v1/jobs:watch" in script.text
    # /docs works offline: Swagger UI is served by the bridge, not fetched from a CDN.
    docs = await bridge.http.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    bundle = await bridge.http.get("/docs-assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    providers = (await bridge.http.get("/v1/providers")).json()["providers"]
    sandbox = next(p for p in providers if p["name"] == "sandbox")
    assert sandbox["health"]["status"] == "PROVIDER_STATUS_AVAILABLE"
    assert {"name", "type", "allowed_values", "tasks"} <= set(sandbox["parameters"][0])
    speech = (await bridge.http.get("/v1/providers", params={"task": "speech-to-text"})).json()
    assert all("TASK_SPEECH_TO_TEXT" in p["tasks"] for p in speech["providers"])


async def test_list_pages_and_filters(bridge: Bridge) -> None:
    http = bridge.http
    ids = [str((await submit(http, parameters={"latency_ms": 0}))["id"]) for _ in range(3)]
    speech = await submit(http, task="text-to-speech", prompt="hello", parameters={"latency_ms": 0})
    first = (await http.get("/v1/jobs", params={"page_size": 2})).json()
    assert [j["id"] for j in first["jobs"]] == [speech["id"], ids[2]]
    rest = (await http.get("/v1/jobs", params={"page_token": first["next_page_token"]})).json()
    assert [j["id"] for j in rest["jobs"]] == [ids[1], ids[0]] and rest["next_page_token"] == ""
    images = (await http.get("/v1/jobs", params={"task": "text-to-image"})).json()
    assert [j["id"] for j in images["jobs"]] == ids[::-1]
    both = await http.get("/v1/jobs", params=[("state", "queued"), ("state", "JOB_STATE_QUEUED")])
    assert both.status_code == 200
    for bad in ({"page_token": "garbage"}, {"page_size": 501}, {"task": "juggling"}):
        response = await http.get("/v1/jobs", params=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "INVALID_ARGUMENT"


async def test_list_top_level_jobs_leaves_the_steps_out(bridge: Bridge) -> None:
    http = bridge.http
    created = await http.post(
        "/v1/jobs", json={"pipeline": {"name": "text-to-video"}, "prompt": "a paper boat"}
    )
    assert created.status_code == 201, created.text
    pipeline = created.json()["id"]
    steps = [step.job_id for step in (await bridge.mesh.finished(pipeline))[0].pipeline.steps]
    alone = await submit(http, parameters={"latency_ms": 0})

    def ids(listed: httpx.Response) -> list[str]:
        assert listed.status_code == 200, listed.text
        return [job["id"] for job in listed.json()["jobs"]]

    # One job a page, and each page a top-level one: the steps take no place.
    first = await http.get("/v1/jobs", params={"top_level_only": "true", "page_size": 1})
    assert ids(first) == [alone["id"]]
    token = first.json()["next_page_token"]
    rest = await http.get("/v1/jobs", params={"top_level_only": "true", "page_token": token})
    assert ids(rest) == [pipeline] and rest.json()["next_page_token"] == ""
    # Each step's job is still read by its id, and listed without the flag.
    step = (await http.get(f"/v1/jobs/{steps[0]}")).json()
    assert step["parent_job_id"] == pipeline and step["state"] == "JOB_STATE_COMPLETED"
    every = [alone["id"], *reversed(steps), pipeline]
    assert ids(await http.get("/v1/jobs")) == every
    assert ids(await http.get("/v1/jobs", params={"top_level_only": "false"})) == every
    refused = await http.get("/v1/jobs", params={"top_level_only": "maybe"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "INVALID_ARGUMENT"


async def test_generate_streams_the_new_job(bridge: Bridge) -> None:
    body = {"task": "text-to-image", "prompt": "a fox", "parameters": {"latency_ms": 100}}
    async with bridge.http.stream("POST", "/v1/jobs:generate", json=body) as response:
        assert response.status_code == 200
        stream = await read_sse(response)
    assert stream[0].event == "job" and stream[0].data["state"] == "JOB_STATE_QUEUED"
    assert [int(e.id or 0) for e in stream[1:]] == list(range(1, len(stream)))
    assert stream[-1].data["state"] == "JOB_STATE_COMPLETED"
    refused = await bridge.http.post("/v1/jobs:generate", json={"task": "text-to-image"})
    assert refused.status_code == 400


async def feed_until(
    http: httpx.AsyncClient, job_id: str, **headers: str
) -> tuple[list[SseEvent], list[SseEvent]]:
    """The all-jobs SSE feed until `job_id` ends: (everything, the events of that job)."""
    seen: list[SseEvent] = []
    async with http.stream("GET", "/v1/jobs:watch", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in iter_sse(response):
            seen.append(event)
            mine = event.event == "message" and event.data["job_id"] == job_id
            if mine and event.data["state"] in {"JOB_STATE_COMPLETED", "JOB_STATE_FAILED"}:
                break
    return seen, [e for e in seen if e.event == "message" and e.data["job_id"] == job_id]


async def test_feed_events_resume_with_last_event_id(bridge: Bridge) -> None:
    http = bridge.http
    opened = await http.get("/v1/jobs:watch", params={"cursor": "x"})
    assert opened.status_code == 400 and opened.json()["error"]["code"] == "INVALID_ARGUMENT"

    async with http.stream("GET", "/v1/jobs:watch") as response:
        start = await anext(iter_sse(response))
    assert start.event == "cursor" and start.id == start.data["cursor"]
    job = await submit(http, parameters={"latency_ms": 200})
    # An EventSource reconnecting with the cursor as Last-Event-ID misses nothing.
    seen, events = await feed_until(http, str(job["id"]), **{"Last-Event-ID": str(start.id)})
    assert [int(e.data["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert all(e.id is None for e in events)  # the id, hence Last-Event-ID, stays the cursor
    assert seen[0].event == "cursor" and seen[-1].event == "message"
