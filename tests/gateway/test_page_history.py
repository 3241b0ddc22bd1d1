"""The web page's history in a real headless Chromium against the bridge and a real mesh: a
page left open past midnight dates yesterday's jobs."""

from __future__ import annotations

from tests.gateway.conftest import Bridge, submit
from tests.gateway.page import PAGE_TESTS, wait_for_page
from tests.gateway.webdriver import chromium
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
