"""The web page's history in a real headless Chromium against the bridge and a real mesh: a
page left open past midnight dates yesterday's jobs; a pipeline's step jobs show in their
pipeline's row, never as rows of their own, however they arrive, and take no place in a page
of the history, filtered by task or not; a step opens its own job from its pipeline's row or
job card."""

from __future__ import annotations

from typing import Any

from genmesh.v1 import job_pb2
from tests.gateway.conftest import Bridge, submit
from tests.gateway.page import OUTPUT, PAGE_TESTS, wait_for_page
from tests.gateway.webdriver import Browser, Keys, chromium
from tests.infra import eventually

pytestmark = PAGE_TESTS

# The page's clock, moved by the test: Date as the page's script calls it, set to any moment
# (window.setClock(ms since the epoch)) and running on from there at the real pace.
FAKE_CLOCK = """
const Real = Date;
let offset = 0;
window.Date = class extends Real {
  constructor(...args) {
    if (args.length) super(...args);
    else super(Real.now() + offset);
  }
  static now() { return Real.now() + offset; }
};
window.setClock = (ms) => { offset = ms - Real.now(); };
"""

# Local midnight after the job was made, in the browser's time zone (ms since the epoch).
MIDNIGHT_AFTER = """
const made = new Date(arguments[0]);
return new Date(made.getFullYear(), made.getMonth(), made.getDate() + 1).getTime();
"""

# A row's date as the page writes it: hours and minutes, or the month and day (and the year
# when it is not now's).
ROW_DATE = """
const time = document.querySelector(`#history-list li[data-job-id="${arguments[0]}"] time.when`);
if (!time) return null;
const at = new Date(time.dateTime);
const year = at.getFullYear() === new Date().getFullYear() ? {} : {year: 'numeric'};
return {text: time.textContent,
  time: at.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'}),
  date: at.toLocaleDateString([], {month: 'short', day: 'numeric', ...year})};
"""


async def test_a_page_left_open_past_midnight_dates_the_days_jobs(bridge: Bridge) -> None:
    job = await submit(bridge.http, provider="sandbox", prompt="late in the evening")
    async with chromium() as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)
        await browser.run(FAKE_CLOCK)
        midnight = await browser.run(MIDNIGHT_AFTER, job["create_time"])

        async def shown(what: str) -> bool:
            row = await browser.run(ROW_DATE, job["id"])
            return bool(row and row["text"] == row[what])

        # A minute before midnight the job is today's: its time alone.
        await browser.run("window.setClock(arguments[0])", midnight - 60_000)
        await eventually(lambda: shown("time"), within=10)
        # Past midnight it is yesterday's, without a reload: its date.
        await browser.run("window.setClock(arguments[0])", midnight + 30_000)
        await eventually(lambda: shown("date"), within=10)


# Every top-level row of the history: its job, its state, and its steps' [name, state].
ROWS = """return [...document.querySelectorAll('#history-list > li')].map((li) => [
  li.dataset.jobId, li.dataset.state,
  [...li.querySelectorAll('.row-step')].map((s) => [s.dataset.step, s.dataset.state])]);"""


async def rows(browser: Browser) -> list[list[Any]]:
    return list(await browser.run(ROWS))


async def finished_pipeline(bridge: Bridge, prompt: str) -> tuple[str, list[str]]:
    """A text-to-video pipeline submitted elsewhere and run to its end; its id and its steps'."""
    response = await bridge.http.post(
        "/v1/jobs", json={"pipeline": {"name": "text-to-video"}, "prompt": prompt}
    )
    assert response.status_code == 201, response.text
    pipeline = response.json()["id"]
    job, _ = await bridge.mesh.finished(pipeline)
    return pipeline, [step.job_id for step in job.pipeline.steps]


DONE = [
    ["image", "JOB_STATE_COMPLETED"],
    ["video", "JOB_STATE_COMPLETED"],
]


async def test_a_history_page_is_a_full_page_of_pipelines_and_jobs(bridge: Bridge) -> None:
    older, _ = await finished_pipeline(bridge, "a paper boat")
    newer, newer_steps = await finished_pipeline(bridge, "a paper plane")
    # The page lists 20 jobs at a time: these and the two pipelines make 20. Listed with
    # their steps, the first 20 would end at the newer pipeline's steps.
    later = [
        str((await submit(bridge.http, provider="sandbox", prompt=f"job {n}"))["id"])
        for n in range(18)
    ]
    listed = (await bridge.http.get("/v1/jobs", params={"page_size": 20})).json()["jobs"]
    assert {j["id"] for j in listed} == {*later, *newer_steps}
    async with chromium() as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)

        async def first_page() -> list[list[Any]]:
            shown = await rows(browser)
            more = await browser.run("return document.getElementById('history-more').hidden")
            return shown if len(shown) == 20 and more else []

        # Every row a job of its own or a pipeline with its steps' states; nothing left over
        # for a next page.
        shown = await eventually(first_page, within=10)
        assert [row[0] for row in shown] == [*reversed(later), newer, older]
        assert shown[-2:] == [[p, "JOB_STATE_COMPLETED", DONE] for p in (newer, older)]
        await browser.screenshot(OUTPUT / "history-pipeline.png")

        # Only text-to-image jobs: still top-level rows, and a pipeline, which has no task of
        # its own, is not one of them (its image step's job is, and it stays in the pipeline).
        await browser.choose("#filter-task", "TASK_TEXT_TO_IMAGE")

        async def filtered() -> list[list[Any]]:
            shown = await rows(browser)
            more = await browser.run("return document.getElementById('history-more').hidden")
            return shown if more and {row[0] for row in shown} == set(later) else []

        await eventually(filtered, within=10)
        # Live as after a reload: a pipeline run meanwhile stays out; a job of the task comes in.
        kite, _ = await finished_pipeline(bridge, "a kite")
        marker = str((await submit(bridge.http, provider="sandbox", prompt="marker"))["id"])

        async def seen() -> list[list[Any]]:
            known = await browser.run("return page.jobs.has(arguments[0])", kite)
            shown = await rows(browser)
            return shown if known and shown and shown[0][0] == marker else []

        shown = await eventually(seen, within=10)
        assert kite not in [row[0] for row in shown] and len(shown) == len(later) + 1


# The page's fetch of a pipeline job (GET /v1/jobs/<id>) answers only after `arguments[0]` ms:
# its steps' jobs, fetched meanwhile, come first, and so do the pipeline's own events.
SLOW_PIPELINE_FETCH = """
const real = window.fetch;
window.fetch = async (url, options) => {
  const response = await real(url, options);
  if (/^\\/v1\\/jobs\\/[^/?:]+$/.test(url) && (await response.clone().json()).pipeline) {
    await new Promise((done) => setTimeout(done, arguments[0]));
  }
  return response;
};
"""


async def test_a_pipeline_run_elsewhere_shows_in_one_row_whatever_arrives_first(
    bridge: Bridge,
) -> None:
    async with chromium() as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)
        await browser.run(SLOW_PIPELINE_FETCH, 3000)
        # Run to its end before the page has its copy (read when it began): what it has
        # become since comes from the feed's events, which are kept for it.
        pipeline, _ = await finished_pipeline(bridge, "a kite over a hill")

        async def ended() -> list[list[Any]]:
            shown = await rows(browser)
            return shown if shown and shown[0][1] == "JOB_STATE_COMPLETED" else []

        assert await eventually(ended, within=15) == [[pipeline, "JOB_STATE_COMPLETED", DONE]]


# The job card, read in one go: the job on show, its state, result, error and pipeline, and
# what the history marks as on show.
CARD = """
const result = document.querySelector('#result:not([hidden]) #result-media');
const parent = document.getElementById('job-parent');
return {
  id: document.getElementById('job-id').textContent,
  state: document.getElementById('job-state').dataset.state || '',
  result: result ? result.getAttribute('src') : '',
  error: document.getElementById('job-error').textContent,
  parent: parent && !parent.hidden ? parent.textContent : '',
  selected: [...document.querySelectorAll('#history-list .selected')].map((e) => e.dataset.jobId),
};"""


async def card(browser: Browser, job_id: str) -> dict[str, Any]:
    """The job card once it shows `job_id` as loaded, else {}."""
    shown = await browser.run(CARD)
    return dict(shown) if shown["id"] == job_id and shown["state"] else {}


async def test_a_step_opens_its_own_job_from_its_pipelines_row_and_card(bridge: Bridge) -> None:
    # A picture that is made, then an animation of it that fails.
    steps: list[dict[str, Any]] = [
        {"name": "picture", "task": "TASK_TEXT_TO_IMAGE", "prompt": "{prompt}"},
        {
            "name": "animate",
            "task": "TASK_IMAGE_TO_VIDEO",
            "prompt": "{prompt}, drifting",
            "inputs": ["picture"],
            "parameters": {"fail_rate": 1, "fail_kind": "invalid_input"},
        },
    ]
    body = {
        "prompt": "a kite",
        "pipeline": {"steps": [{**step, "provider": "sandbox"} for step in steps]},
    }
    created = await bridge.http.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    pipeline = created.json()["id"]
    picture, animate = (await bridge.mesh.finished(pipeline))[0].pipeline.steps
    failed = await bridge.mesh.get_job(animate.job_id)
    assert failed.state == job_pb2.JOB_STATE_FAILED and failed.error.message
    row = f'#history-list li[data-job-id="{pipeline}"]'
    async with chromium() as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)
        await eventually(lambda: rows(browser), within=10)
        # The picture step, from the pipeline's row: the step's own job, with its image.
        await browser.click(f'{row} .row-step[data-step="picture"]')
        shown = await eventually(lambda: card(browser, picture.job_id), within=10)
        assert shown == {
            "id": picture.job_id,
            "state": "JOB_STATE_COMPLETED",
            "result": f"/v1/assets/{picture.assets[0].id}/content",
            "error": "",
            "parent": f"step picture of pipeline {pipeline}",
            "selected": [picture.job_id],
        }
        # Still one row, the pipeline's.
        assert await rows(browser) == [
            [
                pipeline,
                "JOB_STATE_FAILED",
                [["picture", "JOB_STATE_COMPLETED"], ["animate", "JOB_STATE_FAILED"]],
            ]
        ]
        # Back to the pipeline by the card's link, then the failed step from its step list.
        await browser.click("#job-parent-link")
        await eventually(lambda: card(browser, pipeline), within=10)
        await browser.click('#job-steps li[data-step="animate"] a.step-name')
        shown = await eventually(lambda: card(browser, animate.job_id), within=10)
        assert (shown["state"], shown["error"], shown["result"]) == (
            "JOB_STATE_FAILED",
            failed.error.message,
            "",
        )
        await browser.screenshot(OUTPUT / "history-step.png")
        # From the keyboard: Enter on a step's link in the row opens the step, not the row's
        # pipeline; the address names it, so a reload comes back to it.
        link = f'{row} .row-step[data-step="picture"]'
        await browser.run("document.querySelector(arguments[0]).focus()", link)
        await browser.press(Keys.ENTER)
        await eventually(lambda: card(browser, picture.job_id), within=10)
        assert await browser.run("return location.hash") == f"#job={picture.job_id}"
