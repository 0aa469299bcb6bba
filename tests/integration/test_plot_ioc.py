"""The background block plot end to end: the IOC runs a script written as the ISIS example,
against a simulated instrument, and headless Chromium watches the live page."""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.browser import browser, canvas_image, colour_pixels  # noqa: F401 - a fixture
from tests.integration.conftest import write_script
from tests.integration.harness import wait_for
from tests.sim_instrument import Simulation

# The ISIS example, as an instrument scientist writes it; the slot name and blocks vary.
PLOT_SCRIPT = """
import os
import sys
from time import sleep

sys.path.insert(0, os.path.join(os.environ["KIT_ROOT"], "ISIS", "inst_servers", "master"))
from server_common.helpers import register_ioc_start

register_ioc_start("{slot}")

from genie_python import genie as g
from technique.muon.background_plot import BackgroundBlockPlot

g.set_instrument(None)
BackgroundBlockPlot(
    [("{a}", "Sample"), ("{b}", "Setpoint")], "Temperature", interval={interval}
).start()
g.adv.open_plot_window(is_primary=False)

while True:
    sleep(10)
"""

BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two line colours
_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def plot_script(slot="BGRSCRPT_01", a="TEMP", b="TEMP_SP", interval=0.2) -> str:
    return PLOT_SCRIPT.format(slot=slot, a=a, b=b, interval=interval)


def fetch(url: str) -> bytes:
    with _no_proxy.open(url, timeout=10) as response:
        return response.read()


def status(url: str) -> dict:
    return json.loads(fetch(url.rstrip("/") + "/status.json"))


def plot_url(ioc, slot="BGRSCRPT_01", timeout=30.0) -> str:
    return wait_for(
        lambda: ioc.get(f"{slot}:PLOT_URL", as_string=True) or "",
        timeout,
        f"{slot}:PLOT_URL (LOG: {ioc.get(f'{slot}:LOG', as_string=True)!r})",
    )


def data_rows(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split(",") for line in path.read_text().splitlines() if not line.startswith("#")]


def header(path: Path) -> str:
    return path.read_text().split("\n", 1)[0] if path.exists() else ""


@pytest.fixture
def instrument(port_pool, prefix, test_tag):
    sims: list[Simulation] = []

    def start(blocks, **kw) -> Simulation:
        sim = Simulation(prefix, port_pool.take(), blocks, **kw).start()
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.stop()


def test_live_plot_in_chromium(make_ioc, config_dir, instrument, browser):  # noqa: F811
    instrument(["TEMP", "TEMP_SP"])
    write_script(config_dir, "background_script.py", plot_script())
    ioc = make_ioc().start()
    ioc.wait_status("RUNNING")
    wait_for(lambda: ioc.get("BGRSCRPT_01:REGISTERED", as_string=True) == "Yes", 10, "REGISTERED")
    url = plot_url(ioc)
    wait_for(
        lambda: f"plot window: {url}" in (ioc.get("BGRSCRPT_01:LOG", as_string=True) or ""),
        10,
        "open_plot_window to name the page",
    )
    assert url.startswith("http://127.0.0.1:") and int(url.rsplit(":", 1)[1].strip("/")) >= 8989

    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.goto(url)
    assert page.title() == "Temperature Plot"
    page.locator("canvas.mpl-canvas").wait_for(timeout=20_000)
    wait_for(
        lambda: page.locator(".ui-dialog-title").inner_text() == "Temperature Plot",
        20,
        "the figure's name on the page",
    )

    def drawn():
        image = canvas_image(page)
        return (
            image
            if colour_pixels(image, BLUE) > 200 and colour_pixels(image, ORANGE) > 200
            else None
        )

    first = wait_for(drawn, 30, "both lines drawn in Chromium")
    # The page is not reloaded: frames keep arriving over the websocket and the lines move.
    moved = wait_for(
        lambda: (
            (img := drawn()) is not None
            and (np.asarray(img) != np.asarray(first)).any(axis=2).sum() > 500
            and img
        ),
        30,
        "the lines to move",
    )
    assert page.url == url
    assert status(url)["clients"] == 1
    if os.environ.get("BGRSCRPT_PLOT_SCREENSHOT"):  # docs/plot.png for docs/scripts.md
        page.screenshot(path=os.environ["BGRSCRPT_PLOT_SCREENSHOT"])
    assert moved is not None

    png = fetch(url.rstrip("/") + "/plot.png")
    assert png.startswith(b"\x89PNG")
    from io import BytesIO

    from PIL import Image

    snapshot = Image.open(BytesIO(png)).convert("RGB")
    assert colour_pixels(snapshot, BLUE) > 200 and colour_pixels(snapshot, ORANGE) > 200

    # STOP: the plot goes with the script, and so does PLOT_URL.
    ioc.put("BGRSCRPT_01:STOP", 1)
    ioc.wait_status("STOPPED")
    with pytest.raises(OSError):
        fetch(url)


def test_autosave_reload_corrupt_rows_and_run_change(make_ioc, config_dir, instrument, tmp_path):
    sim = instrument(["TEMP", "TEMP_SP"])
    data = tmp_path / "var" / "tmp" / "background_plot_data_01.csv"
    data.parent.mkdir(parents=True)
    an_hour_ago = datetime.now() - timedelta(hours=1)
    good = [f"{an_hour_ago + timedelta(seconds=i)},{100.0 + i},200.0" for i in range(3)]
    corrupt = an_hour_ago + timedelta(seconds=0.5)  # kept, with a gap for its corrupt point
    original = (
        "# run_number:00001000\n# Axes: time, Sample, Setpoint\n"
        + "\n".join([good[0], f"{corrupt},18.9,1774sad21312asczx864.0", good[1]])
        + "\nnonsense\n"
        + good[2]
        + "\n"
    )
    data.write_text(original)
    write_script(config_dir, "background_script.py", plot_script())
    ioc = make_ioc().start()
    ioc.wait_status("RUNNING")
    url = plot_url(ioc)

    log = lambda: ioc.get("BGRSCRPT_01:LOG", as_string=True) or ""  # noqa: E731
    # As IBEX's loader: the row without a time goes; the corrupt point is a gap.
    warning = "WARNING - Save file may be corrupted: "
    bad_point = "1 data points could not be appended to the dataset: ['1774sad21312asczx864.0']"
    wait_for(lambda: f"{warning}Invalid isoformat string: 'nonsense'" in log(), 20, "row")
    wait_for(lambda: warning + bad_point in log(), 20, "the corrupt-point warning")
    wait_for(lambda: "reloaded 4 rows of run 00001000" in log(), 20, "the reload message")
    assert "Error" not in log() and "Traceback" not in log()
    first = status(url)
    assert first["first_time"] == pytest.approx(an_hour_ago.timestamp(), abs=1e-3)
    assert first["run_number"] == "00001000"
    # New samples go after the reloaded ones, in the same file.
    wait_for(lambda: len(data_rows(data)) >= 12, 20, "new rows in the data file")
    assert data.read_text().startswith(original)

    # A restart within the same run reloads everything written so far.
    rows_before = len(data_rows(data))
    ioc.put("BGRSCRPT_01:RESTART", 1)
    wait_for(lambda: ioc.get("BGRSCRPT_01:START_CNT") == 2, 20, "the restart")
    url = plot_url(ioc)
    wait_for(lambda: status(url)["samples"] > rows_before - 2, 20, "the reload after restart")
    assert status(url)["first_time"] == pytest.approx(an_hour_ago.timestamp(), abs=1e-3)

    # A new run number while not RUNNING changes nothing (IBEX waits for the run to start).
    epics_put(sim.pv("DAE:RUNNUMBER"), "00001001")
    grown = len(data_rows(data)) + 5
    wait_for(lambda: len(data_rows(data)) >= grown, 20, "more rows")
    assert header(data) == "# run_number:00001000"
    # RUNNING with the new number: the plot and its file start afresh.
    epics_put(sim.pv("DAE:RUNSTATE"), "RUNNING")
    wait_for(lambda: header(data) == "# run_number:00001001", 20, "a fresh file for run 1001")
    assert data.read_text().splitlines()[1] == "# Axes: time, Sample, Setpoint"
    fresh = status(url)
    assert fresh["run_number"] == "00001001"
    assert fresh["first_time"] > an_hour_ago.timestamp() + 3000
    assert all(float(r[1]) < 100 for r in data_rows(data))


def epics_put(pvname: str, value) -> None:
    import epics

    assert epics.caput(pvname, value, wait=True, timeout=10) == 1


def test_a_block_that_disappears_and_comes_back(make_ioc, config_dir, instrument, tmp_path):
    instrument(["TEMP"])  # TEMP and the DAE
    flaky = instrument(["TEMP_SP"], dae=False)  # TEMP_SP on a server of its own
    write_script(config_dir, "background_script.py", plot_script())
    ioc = make_ioc().start()
    ioc.wait_status("RUNNING")
    url = plot_url(ioc)
    data = tmp_path / "var" / "tmp" / "background_plot_data_01.csv"

    def last_row_has(setpoint: bool):
        rows = data_rows(data)
        return len(rows) > 2 and rows[-1][1] != "" and (rows[-1][2] != "") == setpoint

    wait_for(lambda: last_row_has(True), 30, "both blocks sampled")
    flaky.stop()  # the block's IOC dies: a gap, and the script carries on
    wait_for(lambda: last_row_has(False), 30, "a gap where the block was")
    assert status(url)["latest"][1] is None
    assert ioc.status() == "RUNNING"
    flaky.start()  # and comes back on the same port
    wait_for(lambda: last_row_has(True), 60, "the block back in the plot")

    # INVALID is a gap too, as in IBEX.
    epics_put(flaky.pv("CS:SB:TEMP_SP:SIM:SEVR"), 3)
    wait_for(lambda: last_row_has(False), 20, "a gap while INVALID")
    epics_put(flaky.pv("CS:SB:TEMP_SP:SIM:SEVR"), 0)
    wait_for(lambda: last_row_has(True), 20, "values again once valid")
    assert ioc.get("BGRSCRPT_01:START_CNT") == 1


def test_no_blocks_served_is_all_gaps_not_a_crash(make_ioc, config_dir, tmp_path):
    write_script(config_dir, "background_script.py", plot_script(a="NOPE", b="NADA"))
    ioc = make_ioc().start()
    ioc.wait_status("RUNNING")
    url = plot_url(ioc)
    data = tmp_path / "var" / "tmp" / "background_plot_data_01.csv"
    wait_for(lambda: len(data_rows(data)) >= 5, 30, "rows of gaps")
    assert all(r[1:] == ["", ""] for r in data_rows(data))
    assert header(data) == "# run_number:None"
    assert fetch(url.rstrip("/") + "/plot.png").startswith(b"\x89PNG")
    assert ioc.status() == "RUNNING"


def test_two_slots_plot_on_their_own_ports_and_files(
    make_ioc,
    config_dir,
    instrument,
    tmp_path,
    browser,  # noqa: F811
):
    instrument(["TEMP", "TEMP_SP", "FIELD", "FIELD_SP"])
    write_script(config_dir, "background_script.py", plot_script())
    write_script(
        config_dir,
        "background_script2.py",
        plot_script(slot="BGRSCRPT_02", a="FIELD", b="FIELD_SP"),
    )
    ioc = make_ioc().start()
    ioc.wait_status("RUNNING", "BGRSCRPT_01")
    ioc.wait_status("RUNNING", "BGRSCRPT_02")
    urls = plot_url(ioc, "BGRSCRPT_01"), plot_url(ioc, "BGRSCRPT_02")
    assert urls[0] != urls[1]
    files = [status(u)["data_file"] for u in urls]
    assert [Path(f).name for f in files] == [
        "background_plot_data_01.csv",
        "background_plot_data_02.csv",
    ]
    assert [status(u)["pvs"][0].rsplit(":", 1)[1] for u in urls] == ["TEMP", "FIELD"]
    for f in files:
        wait_for(lambda f=f: len(data_rows(Path(f))) >= 5, 20, f"rows in {f}")
    for u in urls:
        page = browser.new_page()
        page.goto(u)
        wait_for(
            lambda page=page: colour_pixels(canvas_image(page), BLUE) > 200, 30, f"lines at {u}"
        )


def test_a_block_much_faster_than_the_samples_is_polled(make_ioc, config_dir, instrument, tmp_path):
    instrument(["TEMP", "TEMP_SP"])  # both change at 10 Hz: 20 updates per 2 s sample
    write_script(config_dir, "background_script.py", plot_script(interval=2.0))
    ioc = make_ioc().start()
    ioc.wait_status("RUNNING")
    url = plot_url(ioc)
    wait_for(lambda: len(status(url)["polled"]) == 2, 40, "both blocks polled")
    log = ioc.get("BGRSCRPT_01:LOG", as_string=True) or ""
    assert "TEMP updates faster than it is sampled: polled" in log
    data = tmp_path / "var" / "tmp" / "background_plot_data_01.csv"
    rows_then = len(data_rows(data))
    wait_for(lambda: len(data_rows(data)) >= rows_then + 3, 20, "samples after the switch")
    fresh = data_rows(data)[rows_then:]
    assert all(r[1] and r[2] for r in fresh)  # values, not gaps
    assert len({r[1] for r in fresh}) == len(fresh)  # and new ones every sample
