"""The web page's history in a real headless Chromium against the bridge and a real mesh: a
page left open past midnight dates yesterday's jobs, and a pipeline's step jobs show in their
pipeline's row, never as rows of their own, however they arrive."""

from __future__ import annotations

from typing import Any

from tests.gateway.conftest import Bridge, submit
from tests.gateway.page import OUTPUT, PAGE_TESTS, wait_for_page
from tests.gateway.webdriver import Browser, chromium
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


async def test_a_pipelines_steps_show_in_its_row_when_it_is_on_a_later_page(
    bridge: Bridge,
) -> None:
    pipeline, steps = await finished_pipeline(bridge, "a paper boat")
    # The page lists 20 jobs at a time: these and the two steps fill the first, so the
    # pipeline itself (older than its steps) is on the second.
    later = [
        str((await submit(bridge.http, provider="sandbox", prompt=f"job {n}"))["id"])
        for n in range(18)
    ]
    listed = (await bridge.http.get("/v1/jobs", params={"page_size": 20})).json()["jobs"]
    assert {j["id"] for j in listed} == {*later, *steps}
    async with chromium() as browser:
        await browser.open(str(bridge.http.base_url) + "/")
        await wait_for_page(browser)

        async def first_page() -> list[list[Any]]:
            shown = await rows(browser)
            return shown if len(shown) == 19 and shown[-1][0] == pipeline else []

        # The steps bring their pipeline in, last (it is the oldest), with each step's state.
        shown = await eventually(first_page, within=10)
        assert [row[0] for row in shown[:-1]] == list(reversed(later))
        assert shown[-1] == [pipeline, "JOB_STATE_COMPLETED", DONE]
        # The next page holds the pipeline again: still one row.
        await browser.click("#history-more")

        async def second_page() -> bool:
            return bool(await browser.run("return document.getElementById('history-more').hidden"))

        await eventually(second_page, within=10)
        assert await rows(browser) == shown
        # Only image-to-video jobs: the pipeline is listed for its video step, which is.
        await browser.choose("#filter-task", "TASK_IMAGE_TO_VIDEO")

        async def filtered() -> list[list[Any]]:
            shown = await rows(browser)
            return shown if len(shown) < 19 else []

        assert await eventually(filtered, within=10) == [[pipeline, "JOB_STATE_COMPLETED", DONE]]
        await browser.screenshot(OUTPUT / "history-pipeline.png")


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
