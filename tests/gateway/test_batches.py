"""Batches over real HTTP against a real mesh: POST /v1/batches, GET /v1/jobs?batch_id=, and
WatchBatch as Server-Sent Events and as a WebSocket."""

from __future__ import annotations

from typing import Any

import pytest

from tests.gateway.conftest import Bridge, read_sse
from tests.gateway.test_websocket import receive_all, socket

pytestmark = pytest.mark.parametrize("database", ["sqlite"], indirect=True)

TERMINAL = {"JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


def spec(prompt: str, **parameters: object) -> dict[str, Any]:
    return {
        "task": "text-to-image",
        "prompt": prompt,
        "parameters": {"latency_ms": 200, "width": 32, "height": 32, **parameters},
    }


async def submit_batch(bridge: Bridge, count: int) -> dict[str, Any]:
    body = {"specs": [spec(f"fox {i}") for i in range(count)]}
    response = await bridge.http.post("/v1/batches", json=body)
    assert response.status_code == 201, response.text
    reply: dict[str, Any] = response.json()
    return reply


def check_batch_stream(messages: list[dict[str, Any]], batch: dict[str, Any]) -> None:
    """Summary, each job, then each job's later events once and in order, a summary after
    every job's end, and nothing after the last one."""
    count = len(batch["jobs"])
    assert messages[0]["summary"]["batch_id"] == batch["batch_id"]
    assert messages[0]["summary"]["total"] == count
    snapshot = {m["job"]["id"]: m["job"] for m in messages[1 : count + 1]}
    assert sorted(snapshot) == sorted(job["id"] for job in batch["jobs"])
    last = {job_id: int(job["last_sequence"]) for job_id, job in snapshot.items()}
    ended = {job_id for job_id, job in snapshot.items() if job["state"] in TERMINAL}
    just_ended = False
    for message in messages[count + 1 :]:
        if "summary" in message:
            assert just_ended
            just_ended = False
            continue
        event = message["event"]
        assert int(event["sequence"]) == last[event["job_id"]] + 1
        last[event["job_id"]] = int(event["sequence"])
        just_ended = event["state"] in TERMINAL
        if just_ended:
            ended.add(event["job_id"])
    assert ended == set(snapshot)
    final = messages[-1]["summary"]
    assert final["completed"] == count and final["queued"] == final["running"] == 0


async def test_submit_list_and_watch_a_batch_as_events(bridge: Bridge) -> None:
    http = bridge.http
    batch = await submit_batch(bridge, 5)
    assert batch["batch_id"].startswith("b_")
    assert [job["spec"]["prompt"] for job in batch["jobs"]] == [f"fox {i}" for i in range(5)]
    assert {job["batch_id"] for job in batch["jobs"]} == {batch["batch_id"]}

    listed = (await http.get("/v1/jobs", params={"batch_id": batch["batch_id"]})).json()
    assert sorted(j["id"] for j in listed["jobs"]) == sorted(j["id"] for j in batch["jobs"])

    async with http.stream("GET", f"/v1/batches/{batch['batch_id']}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = await read_sse(response)
    kinds = {"summary": "summary", "job": "job", "message": "event"}
    assert stream[0].event == "summary"
    assert all(e.id is None for e in stream)  # sequences are per job: no resume id
    check_batch_stream([{kinds[e.event]: e.data} for e in stream], batch)


async def test_watch_a_batch_over_a_websocket(bridge: Bridge) -> None:
    batch = await submit_batch(bridge, 3)
    async with socket(bridge, f"/v1/batches/{batch['batch_id']}/ws") as ws:
        messages, code = await receive_all(ws)
    assert code == 1000
    check_batch_stream(messages, batch)

    async with socket(bridge, "/v1/batches/b_unknown/ws") as ws:
        missing, code = await receive_all(ws)
    assert code == 4404
    assert missing[0]["error"]["code"] == "NOT_FOUND"


async def test_batch_errors_map_to_http(bridge: Bridge) -> None:
    http = bridge.http
    bad = {"specs": [spec("fox"), spec("owl"), spec("")]}
    response = await http.post("/v1/batches", json=bad)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("specs[2]: ")
    unknown_task = {"specs": [spec("fox"), {**spec("owl"), "task": "knitting"}]}
    response = await http.post("/v1/batches", json=unknown_task)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("specs[1]: ")
    for count in (0, 1001):
        response = await http.post("/v1/batches", json={"specs": [spec("fox")] * count})
        assert response.status_code == 400, count
        assert response.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert (await http.get("/v1/jobs")).json()["jobs"] == []

    response = await http.get("/v1/batches/b_unknown/events")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
