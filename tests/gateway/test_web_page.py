"""The web page in a real headless Chromium against the bridge and a real mesh: submit a
text-to-image job through the form, see the preview before the final image, see the job in
the history, and keep a screenshot of the finished page (desktop and phone sized); a reload
mid-job comes back to the job on show, and the job card says when its live link is lost; a
pipeline runs from the form, step by step, and one the router refuses says why; the history
dates its jobs and says when it is empty; the page has an icon and loads without a console
error."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from PIL import Image

from genmesh.v1 import job_pb2
from services.common.tenancy import DEFAULT_TENANT
from services.providers.sandbox import media
from services.router.records import new_job_id, queued_event, spec_hash
from tests.conftest import Database
from tests.gateway.conftest import Bridge, mesh_bridge, submit
from tests.gateway.page import OUTPUT, PAGE_TESTS, wait_for_page
from tests.gateway.webdriver import Browser, Keys, chromium
from tests.infra import eventually, reserved_port
from tests.mesh import Mesh, running_mesh

pytestmark = PAGE_TESTS

# What the test watches, read from the page in one go.
SNAPSHOT = """
const state = document.getElementById('job-state');
const preview = document.querySelector('#preview:not([hidden]) img.media');
const result = document.querySelector('#result:not([hidden]) img#result-media');
const meta = document.querySelector('#result .meta');
return {
  state: state ? state.dataset.state || '' : '',
  jobId: document.getElementById('job-id').textContent,
  preview: Boolean(preview && preview.complete && preview.naturalWidth > 0),
  result: Boolean(result && result.complete && result.naturalWidth > 0),
  resultWidth: result ? result.naturalWidth : 0,
  meta: meta ? meta.textContent : '',
  history: [...document.querySelectorAll('#history-list li')].map(
    (li) => [li.dataset.jobId, li.dataset.state]),
  error: document.getElementById('submit-error').textContent,
};
"""


async def test_submit_watch_preview_then_result_and_history(bridge: Bridge) -> None:
    async with chromium(1280, 1500) as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)
        await browser.choose("#task", "TASK_TEXT_TO_IMAGE")
        await browser.choose("#provider", "sandbox")
        await browser.type("#prompt", "a lighthouse at dusk")
        # Parameters come from the provider's declarations; latency keeps the preview on
        # screen for a while before the final image replaces it.
        await browser.type("#param-latency_ms", "3000")
        await browser.type("#param-width", "320")
        await browser.type("#param-height", "200")
        assert await browser.run("return document.getElementById('param-preview').tagName") == (
            "SELECT"
        )
        await browser.click("#submit")

        preview_at = result_at = None
        snapshot: dict[str, object] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            snapshot = await browser.run(SNAPSHOT)
            assert not snapshot["error"], snapshot["error"]
            now = time.monotonic()
            if snapshot["preview"] and preview_at is None:
                preview_at = now
                assert snapshot["state"] != "JOB_STATE_COMPLETED"
            if snapshot["result"] and result_at is None:
                result_at = now
            if result_at is not None and snapshot["state"] == "JOB_STATE_COMPLETED":
                break
            await asyncio.sleep(0.1)
        assert preview_at is not None, f"no preview appeared: {snapshot}"
        assert result_at is not None, f"no final image appeared: {snapshot}"
        assert preview_at < result_at
        assert snapshot["resultWidth"] == 320
        assert "image/png" in str(snapshot["meta"]) and "download" in str(snapshot["meta"])

        job_id = str(snapshot["jobId"])
        job = (await bridge.http.get(f"/v1/jobs/{job_id}")).json()
        assert job["state"] == "JOB_STATE_COMPLETED" and job["provider"] == "sandbox"

        # The history row was updated live by the all-jobs feed.
        async def listed_done() -> bool:
            history = (await browser.run(SNAPSHOT))["history"]
            return [job_id, "JOB_STATE_COMPLETED"] in history

        await eventually(listed_done, within=10)

        # A job submitted elsewhere (another tab, the CLI) appears through the feed.
        other = await bridge.http.post(
            "/v1/jobs", json={"task": "text-to-speech", "prompt": "hello", "provider": "sandbox"}
        )
        other_id = other.json()["id"]

        async def appeared() -> bool:
            return any(row[0] == other_id for row in (await browser.run(SNAPSHOT))["history"])

        await eventually(appeared, within=10)

        shot = await browser.screenshot(OUTPUT / "finished-desktop.png")
        await browser.resize(390, 844)

        # The phone layout is one column: once it has reflowed, nothing overflows sideways.
        async def fits() -> bool:
            overflow = await browser.run(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            return bool(overflow <= 0)

        await eventually(fits, within=5)
        await browser.run("document.getElementById('job').scrollIntoView()")
        phone = await browser.screenshot(OUTPUT / "finished-phone.png")
    assert shot.stat().st_size > 10_000 and phone.stat().st_size > 10_000
    print(f"\nscreenshots: {shot} {phone}")


async def job_on_show(browser: Browser) -> dict[str, str]:
    return dict(
        await browser.run(
            "const card = document.getElementById('job');"
            "return {id: card.hidden ? '' : document.getElementById('job-id').textContent,"
            " state: document.getElementById('job-state').dataset.state || ''};"
        )
    )


async def test_a_reload_mid_job_comes_back_to_the_job(bridge: Bridge) -> None:
    async with chromium() as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)
        await browser.choose("#task", "TASK_TEXT_TO_IMAGE")
        await browser.choose("#provider", "sandbox")
        await browser.type("#prompt", "a reload in the middle")
        await browser.type("#param-latency_ms", "3000")
        await browser.click("#submit")

        async def submitted() -> str:
            return (await job_on_show(browser))["id"]

        job_id = await eventually(submitted, within=10)
        await browser.run("location.reload()")
        await wait_for_page(browser)

        # The reloaded page shows the same job again and follows it to its end.
        async def followed() -> bool:
            return await job_on_show(browser) == {"id": job_id, "state": "JOB_STATE_COMPLETED"}

        await eventually(followed, within=20)


async def test_a_history_row_opens_from_the_keyboard(bridge: Bridge) -> None:
    done = await submit(bridge.http, provider="sandbox", prompt="opened by keyboard")
    async with chromium() as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)

        async def listed() -> bool:
            rows = (await browser.run(SNAPSHOT))["history"]
            return any(row[0] == done["id"] for row in rows)

        await eventually(listed, within=10)
        # Tab from the last control before the history reaches its first row; Enter opens it.
        await browser.run("document.getElementById('filter-task').focus()")
        await browser.press(Keys.TAB)
        assert await browser.run("return document.activeElement.dataset.jobId") == done["id"]
        await browser.press(Keys.ENTER)

        async def shown() -> bool:
            return (await job_on_show(browser))["id"] == done["id"]

        await eventually(shown, within=10)


async def test_on_a_phone_a_history_row_brings_its_job_into_view(bridge: Bridge) -> None:
    # The first of a dozen jobs: its row is at the bottom of the history, a screen or more
    # below the job card on a phone.
    jobs = [await submit(bridge.http, provider="sandbox", prompt=f"job {n}") for n in range(12)]
    first = jobs[0]["id"]
    async with chromium() as browser:
        await browser.resize(390, 844)
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)
        row = f'#history-list li[data-job-id="{first}"]'

        async def listed() -> bool:
            return bool(
                await browser.run("return Boolean(document.querySelector(arguments[0]))", row)
            )

        await eventually(listed, within=10)
        await browser.run("document.querySelector(arguments[0]).scrollIntoView()", row)
        await browser.click(row)

        async def in_view() -> bool:
            top = await browser.run(
                "return document.getElementById('job').getBoundingClientRect().top"
            )
            height = await browser.run("return window.innerHeight")
            return (await job_on_show(browser))["id"] == first and 0 <= top < height

        await eventually(in_view, within=10)


async def test_the_job_card_says_when_its_live_link_is_lost_and_recovers(mesh: Mesh) -> None:
    link = "return document.getElementById('job-link').textContent"
    # The bridge comes back three times where the page knows it, and a router address where
    # nothing answers: held by this test throughout, so no other process can take them.
    with reserved_port() as port, reserved_port() as nobody:
        async with chromium() as browser:
            async with mesh_bridge(mesh, port) as bridge:
                job = await submit(
                    bridge.http, provider="sandbox", parameters={"latency_ms": 8000}, prompt="a gap"
                )
                await browser.open(f"{bridge.http.base_url}/#job={job['id']}")

                async def running() -> bool:
                    return (await job_on_show(browser))["state"] == "JOB_STATE_PROCESSING"

                await eventually(running, within=10)
                assert await browser.run(link) == ""

            # The bridge is gone: the card shows the job as it last was, and says that it may be
            # stale, rather than looking live.
            async def says_lost() -> bool:
                return "reconnecting" in await browser.run(link)

            await eventually(says_lost, within=10)
            assert (await job_on_show(browser))["state"] != "JOB_STATE_COMPLETED"

            # A bridge whose router is down: the watch fails, not the job, so the card says why
            # it is reconnecting and shows no error for the job itself.
            async with mesh_bridge(mesh, port, GENMESH_ROUTER_ADDR=f"127.0.0.1:{nobody}"):

                async def router_down() -> bool:
                    return "the router is unavailable" in await browser.run(link)

                await eventually(router_down, within=10)
                assert (
                    await browser.run("return document.getElementById('job-error').textContent")
                    == ""
                )
                assert (await job_on_show(browser))["state"] != "JOB_STATE_COMPLETED"

            async with mesh_bridge(mesh, port):

                async def recovered() -> bool:
                    shown = await job_on_show(browser)
                    return shown["state"] == "JOB_STATE_COMPLETED" and await browser.run(link) == ""

                await eventually(recovered, within=30)


async def test_a_submit_with_the_gateway_gone_says_so(mesh: Mesh) -> None:
    async with chromium() as browser:
        async with mesh_bridge(mesh) as bridge:
            await browser.open(str(bridge.http.base_url) + "/")
            await wait_for_page(browser)
        await browser.type("#prompt", "nobody is there")
        await browser.click("#submit")

        async def refused() -> str:
            return str(
                await browser.run("return document.getElementById('submit-error').textContent")
            )

        assert "cannot reach the genmesh gateway" in await eventually(refused, within=10)


async def test_a_pipeline_in_the_history_is_named_by_its_pipeline(bridge: Bridge) -> None:
    # Submitted elsewhere (the CLI, the API), and listed all the same.
    response = await bridge.http.post(
        "/v1/jobs", json={"pipeline": {"name": "text-to-video"}, "prompt": "a paper boat"}
    )
    assert response.status_code == 201, response.text
    pipeline = response.json()["id"]
    await bridge.mesh.finished(pipeline)
    async with chromium() as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)
        row = f'#history-list li[data-job-id="{pipeline}"] .sub'

        async def described() -> str:
            return str(
                await browser.run(
                    "const s = document.querySelector(arguments[0]);return s ? s.textContent : ''",
                    row,
                )
            )

        sub = await eventually(described, within=10)
        assert sub == f"pipeline text-to-video · {pipeline}"


async def test_opening_another_job_keeps_nothing_of_the_one_before(bridge: Bridge) -> None:
    running = await submit(
        bridge.http, provider="sandbox", prompt="still running", parameters={"latency_ms": 20000}
    )
    card = """return {state: document.getElementById('job-state').textContent,
      prompt: document.getElementById('job-prompt').textContent,
      provider: document.getElementById('job-provider').textContent,
      cancel: !document.getElementById('cancel').hidden,
      error: document.getElementById('job-error').textContent};"""
    async with chromium() as browser:
        await browser.open(f"{bridge.http.base_url}/#job={running['id']}")

        async def shown() -> bool:
            return (await job_on_show(browser))["state"] == "JOB_STATE_PROCESSING"

        await eventually(shown, within=10)
        # A job that is not there (a stale link): the card must not show the running job's
        # state, prompt and Cancel button under the missing job's id.
        await browser.run("location.hash = 'job=j_00000000000000000000000000000000'")

        async def refused() -> bool:
            return "not found" in (await browser.run(card))["error"]

        await eventually(refused, within=10)
        assert await browser.run(card) == {
            "state": "",
            "prompt": "",
            "provider": "",
            "cancel": False,
            "error": "job 'j_00000000000000000000000000000000' not found",
        }
    await bridge.http.post(f"/v1/jobs/{running['id']}:cancel", json={})


def still(tmp_path: Path) -> Path:
    """A small PNG picture to pick as an input file."""
    picture = tmp_path / "still.png"
    Image.new("RGB", (32, 24), (200, 80, 40)).save(picture)
    return picture


async def pick_input(browser: Browser, bridge: Bridge, task: str, file: Path) -> None:
    """The page opened and live, with `task` chosen in its menu and `file` picked for it."""
    await browser.open(str(bridge.http.base_url) + "/")
    await wait_for_page(browser)
    await browser.choose("#task", task)
    await browser.type("#input-file", str(file))


async def test_image_to_video_asks_for_its_prompt_before_uploading(
    bridge: Bridge, tmp_path: Path
) -> None:
    async with chromium() as browser:
        await pick_input(browser, bridge, "TASK_IMAGE_TO_VIDEO", still(tmp_path))
        await browser.click("#submit")
        # The form holds it, as for text-to-image: nothing uploaded, nothing submitted.
        assert await browser.run("return document.getElementById('prompt').validity.valueMissing")
        await asyncio.sleep(1)
        assert await browser.run("return document.getElementById('submit-error').textContent") == ""
    assert (await bridge.http.get("/v1/jobs")).json()["jobs"] == []


async def test_a_file_picked_for_another_task_is_not_kept(bridge: Bridge, tmp_path: Path) -> None:
    files = "return document.getElementById('input-file').files.length"
    async with chromium() as browser:
        await pick_input(browser, bridge, "TASK_IMAGE_TO_IMAGE", still(tmp_path))
        assert await browser.run(files) == 1
        # Still a picture's task: kept.
        await browser.choose("#task", "TASK_IMAGE_TO_TEXT")
        assert await browser.run(files) == 1
        # Speech-to-text takes audio: the picture would be uploaded and then refused.
        await browser.choose("#task", "TASK_SPEECH_TO_TEXT")
        assert await browser.run(files) == 0


async def test_the_page_has_an_icon_and_loads_without_a_console_error(bridge: Bridge) -> None:
    async with chromium() as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)
        # The icon the page names loads as a picture (WebDriver awaits the promise).
        problem = await browser.run(
            "return (async () => {"
            " const link = document.querySelector('link[rel~=icon]');"
            " if (!link) return 'no icon link';"
            " const img = new Image(); img.src = link.href;"
            " try { await img.decode(); } catch { return `${link.href} does not load`; }"
            " return img.naturalWidth > 0 ? '' : 'an empty icon';"
            "})()"
        )
        assert problem == ""
        assert [e for e in await browser.log() if e["level"] == "SEVERE"] == []
    # Where a browser looks for one by itself (say, on a JSON page of the API).
    icon = await bridge.http.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"


async def test_an_empty_history_says_so(bridge: Bridge) -> None:
    note = """const note = document.getElementById('history-empty');
      return note.hidden ? '' : note.textContent;"""
    async with chromium() as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)

        async def said(text: str) -> bool:
            return bool(await browser.run(note) == text)

        await eventually(lambda: said("No jobs yet."), within=10)
        # The first job comes in through the live feed: the note goes.
        done = await submit(bridge.http, provider="sandbox", prompt="the first")

        async def listed() -> bool:
            rows = (await browser.run(SNAPSHOT))["history"]
            return any(row[0] == done["id"] for row in rows) and await said("")

        await eventually(listed, within=10)
        # A filter that leaves nothing says that it is the filter.
        await browser.choose("#filter-state", "failed")
        await eventually(lambda: said("No jobs match these filters."), within=10)


async def stored_days_ago(mesh: Mesh, days: int, prompt: str) -> str:
    """A job stored as created `days` ago, through the router's own store as Submit stores
    one (no RPC backdates a job); its id. Marked dispatched: no worker is to run it."""
    assert mesh.router is not None, "the router runs in-process"
    job = job_pb2.Job(id=new_job_id(), tenant_id=DEFAULT_TENANT, state=job_pb2.JOB_STATE_QUEUED)
    job.spec.task = job_pb2.TASK_TEXT_TO_IMAGE
    job.spec.prompt = prompt
    job.last_sequence = 1
    job.create_time.FromSeconds(int(time.time()) - days * 24 * 3600)
    job.update_time.CopyFrom(job.create_time)
    await mesh.router.store.create(job, spec_hash(job.spec), queued_event(job), dispatched=True)
    return job.id


async def test_the_history_shows_when_each_job_was_made(bridge: Bridge) -> None:
    ancient = await stored_days_ago(bridge.mesh, 400, "last year or before")
    old = await stored_days_ago(bridge.mesh, 3, "three days ago")
    new = await submit(bridge.http, provider="sandbox", prompt="just now")
    # Each row's <time>: its moment as the API gives it, and the text shown, next to what
    # the browser's own locale and time zone make of that moment.
    rows = """return [...document.querySelectorAll('#history-list li')].map((li) => {
      const time = li.querySelector('time.when');
      if (!time) return [li.dataset.jobId, '', '', '', '', ''];
      const at = new Date(time.dateTime);
      return [li.dataset.jobId, time.dateTime, time.textContent, time.title,
        at.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'}),
        at.getFullYear() === new Date().getFullYear()
          ? at.toLocaleDateString([], {month: 'short', day: 'numeric'})
          : at.toLocaleDateString([], {year: 'numeric', month: 'short', day: 'numeric'})];
    });"""
    async with chromium() as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)

        async def both() -> list[list[str]]:
            shown = await browser.run(rows)
            return shown if {r[0] for r in shown} == {ancient, old, new["id"]} else []

        shown = {row[0]: row[1:] for row in await eventually(both, within=10)}
    listed = {j["id"]: j for j in (await bridge.http.get("/v1/jobs")).json()["jobs"]}
    for job_id, (moment, _, title, _, _) in shown.items():
        assert moment == listed[job_id]["create_time"] and title
    # Today's job by its time alone (hours and minutes); older ones by their date, with the
    # year when it is not this one.
    _, text, _, hours_minutes, _ = shown[new["id"]]
    assert text == hours_minutes
    for job_id in (old, ancient):
        _, text, _, _, day = shown[job_id]
        assert text == day
    assert listed[ancient]["create_time"][:4] in text


# Every sandbox job takes a while, so each step of a pipeline is seen running.
SLOW_SANDBOX = """
[[providers]]
name = "sandbox"
family = "sandbox"
options = { latency_ms = 1500 }
"""

STEPS = """return {
  state: document.getElementById('job-state').dataset.state || '',
  steps: [...document.querySelectorAll('#job-steps li')].map((li) => [li.dataset.step,
    li.dataset.state, li.textContent]),
  thumb: (() => { const i = document.querySelector('#job-steps li[data-step=image] img');
    return Boolean(i && i.complete && i.naturalWidth > 0); })(),
  result: (() => { const r = document.querySelector('#result:not([hidden]) #result-media');
    return r ? r.getAttribute('src') : ''; })(),
  resultLoaded: (() => { const r = document.querySelector('#result:not([hidden]) #result-media');
    return Boolean(r && r.complete && r.naturalWidth > 0); })(),
  resultText: (() => { const t = document.querySelector('#result:not([hidden]) #result-text');
    return t ? t.textContent : ''; })(),
  error: document.getElementById('submit-error').textContent
    + document.getElementById('job-error').textContent,
};"""


async def test_a_pipeline_from_the_form_shows_each_step_then_its_result(
    nats_url: str, nats_prefix: str, database: Database, tmp_path: Path
) -> None:
    async with (
        running_mesh(
            nats_url=nats_url,
            prefix=nats_prefix,
            database=database,
            data_dir=tmp_path,
            catalog=SLOW_SANDBOX,
        ) as mesh,
        mesh_bridge(mesh) as bridge,
        chromium(1280, 1300) as browser,
    ):
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)
        await browser.choose("#task", "pipeline:text-to-video")
        form = await browser.run(
            "return {provider: document.getElementById('provider').disabled,"
            " steps: document.getElementById('pipeline-steps').textContent,"
            " file: !document.getElementById('input-label').hidden,"
            " prompt: document.getElementById('prompt').required,"
            " params: document.querySelectorAll('[data-param]').length};"
        )
        # Each step picks its own provider and parameters; the menu says what will run.
        assert form == {
            "provider": True,
            "steps": "Steps: image (text-to-image) → video (image-to-video)",
            "file": False,
            "prompt": True,
            "params": 0,
        }
        await browser.type("#prompt", "a paper boat on a pond")
        await browser.click("#submit")

        seen: list[list[tuple[str, str]]] = []
        said = False
        snapshot: dict[str, Any] = {}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            snapshot = await browser.run(STEPS)
            assert not snapshot["error"], snapshot["error"]
            states = [(name, state) for name, state, _ in snapshot["steps"]]
            if states and (not seen or seen[-1] != states):
                seen.append(states)
            # A running step shows its own progress ("step 2/4") beside it.
            said = said or any(
                "step " in text
                for _, state, text in snapshot["steps"]
                if state == "JOB_STATE_PROCESSING"
            )
            if snapshot["state"] == "JOB_STATE_COMPLETED" and snapshot["resultLoaded"]:
                break
            await asyncio.sleep(0.1)
        assert snapshot["state"] == "JOB_STATE_COMPLETED", snapshot
        running = ("JOB_STATE_PROCESSING", "JOB_STATE_PREVIEW_READY")
        # Live, one step after the other: the image runs while the video waits, then the
        # video runs with the image done, then both are done.
        assert any(s[0][1] in running and s[1] == ("video", "JOB_STATE_QUEUED") for s in seen), seen
        assert any(s[0] == ("image", "JOB_STATE_COMPLETED") and s[1][1] in running for s in seen), (
            seen
        )
        assert seen[-1] == [("image", "JOB_STATE_COMPLETED"), ("video", "JOB_STATE_COMPLETED")]
        assert said, seen
        # The image step's picture is shown with its step; the pipeline's result is the video.
        assert snapshot["thumb"] and snapshot["resultLoaded"]
        job_id = await browser.run("return document.getElementById('job-id').textContent")
        job = (await bridge.http.get(f"/v1/jobs/{job_id}")).json()
        assert job["spec"]["pipeline"]["name"] == "text-to-video"
        assert snapshot["result"] == f"/v1/assets/{job['assets'][0]['id']}/content"
        assert job["assets"] == job["pipeline"]["steps"][1]["assets"]
        await browser.screenshot(OUTPUT / "pipeline-desktop.png")


async def test_a_pipeline_from_the_form_takes_its_input_file(
    bridge: Bridge, tmp_path: Path
) -> None:
    said = "a lighthouse on a cliff at dawn"
    recording = tmp_path / "said.wav"
    recording.write_bytes(media.text_to_speech(said, 60))
    async with chromium(1280, 1300) as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)
        await browser.choose("#task", "pipeline:speech-to-image")
        # Speech first: an audio file, and a prompt only to guide the transcript.
        assert await browser.run(
            "return [document.getElementById('input-file').accept,"
            " document.getElementById('prompt').required]"
        ) == ["audio/*", False]
        await browser.type("#input-file", str(recording))
        await browser.click("#submit")

        async def finished() -> dict[str, Any]:
            snapshot: dict[str, Any] = await browser.run(STEPS)
            assert not snapshot["error"], snapshot["error"]
            done = snapshot["state"] == "JOB_STATE_COMPLETED" and snapshot["resultLoaded"]
            return snapshot if done else {}

        snapshot = await eventually(finished, within=30)
        job_id = await browser.run("return document.getElementById('job-id').textContent")
    assert [(name, state) for name, state, _ in snapshot["steps"]] == [
        ("transcribe", "JOB_STATE_COMPLETED"),
        ("enhance", "JOB_STATE_COMPLETED"),
        ("image", "JOB_STATE_COMPLETED"),
    ]
    # Each text step shows what it answered; the transcript is what was spoken.
    steps = (await bridge.http.get(f"/v1/jobs/{job_id}")).json()["pipeline"]["steps"]
    assert said in steps[0]["output_text"]
    for step, (_, _, text) in zip(steps[:2], snapshot["steps"], strict=False):
        assert step["output_text"] and step["output_text"] in text
    assert snapshot["result"] == f"/v1/assets/{steps[2]['assets'][0]['id']}/content"
    # The pipeline's output is its last step's, a picture: no earlier step's text with it.
    assert snapshot["resultText"] == ""


async def test_a_refused_pipeline_says_why_naming_the_file_picked(
    bridge: Bridge, tmp_path: Path
) -> None:
    # A file the browser cannot type (so the page leaves it to the router) that is no picture.
    odd = tmp_path / "photo.qqq"
    odd.write_bytes(b"\x00\x01 not a picture")
    refusal = "return document.getElementById('submit-error').textContent"
    async with chromium() as browser:
        await pick_input(browser, bridge, "pipeline:image-to-product-copy", odd)
        await browser.click("#submit")

        async def refused() -> str:
            return str(await browser.run(refusal))

        # The router's words, with the file as it was picked rather than the asset's id.
        assert await eventually(refused, within=10) == (
            "INVALID_ARGUMENT: pipeline step 1 ('describe'): input asset 'photo.qqq' is "
            "application/octet-stream; image-to-text takes image/*"
        )
        assert await browser.run("return document.getElementById('job').hidden")
        # Another file: the refusal of the last one goes.
        await browser.type("#input-file", str(still(tmp_path)))
        assert await browser.run(refusal) == ""
    assert (await bridge.http.get("/v1/jobs")).json()["jobs"] == []
