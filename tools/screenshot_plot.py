"""Save a screenshot of a live background plot, for the README: ``docs/plot.png``.

    .venv/bin/python tools/screenshot_plot.py [OUTPUT.png]

Runs what an instrument runs, on loopback: a simulated instrument (two blocks
on slow sine waves), an hour of autosaved data for the current run in
``$ICPVARDIR/tmp/background_plot_data_01.csv`` (so the plot reloads it), a
script written as the ISIS example (``BackgroundBlockPlot``), and headless
Chromium on the live page once new samples have joined the reloaded ones.
Every process started is stopped before the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devsupport.ca_env import point_ca_at  # noqa: E402 - found through the path above
from devsupport.ports import free_ca_port  # noqa: E402

PERIOD = 1200.0  # seconds per wave: an hour shows three
PREFIX = "SHOT:"
SCRIPT = """
from time import sleep
from genie_python import genie as g
from technique.muon.background_plot import BackgroundBlockPlot

g.set_instrument(None)
BackgroundBlockPlot([("TEMP", "Sample"), ("TEMP_SP", "Setpoint")], "Temperature").start()
while True:
    sleep(10)
"""


def main() -> int:
    output = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "plot.png")
    output.parent.mkdir(parents=True, exist_ok=True)
    port = free_ca_port()
    point_ca_at([port])
    from playwright.sync_api import sync_playwright

    from bgrscrpt_ioc.plot import autosave
    from bgrscrpt_ioc.supervisor.env import kit_root, script_environment
    from devsupport.waiting import wait_for
    from tests.browser import chromium_path
    from tests.sim_instrument import Simulation, block_value

    with tempfile.TemporaryDirectory(prefix="bgrscrpt-shot-") as tmp:
        var = Path(tmp)
        now = time.time()
        # An hour of this run, as the plot would have saved it before a restart.
        path = autosave.data_file(1, var)
        path.parent.mkdir(parents=True)
        with open(path, "w") as data:
            data.write(autosave.header("00001000", ["Sample", "Setpoint"]))
            for i in range(7200):
                t = now - 3600 + i * 0.5
                values = [block_value(0, t, PERIOD), block_value(1, t, PERIOD)]
                data.write(autosave.format_row(t, values))
        sim = Simulation(PREFIX, port, ["TEMP", "TEMP_SP"], period=PERIOD).start()
        script = None
        try:
            env = script_environment(
                os.environ,
                slot="BGRSCRPT_01",
                config_dir=var,
                var_dir=var,
                kit_root=kit_root(),
                notify_socket="",
                prefix=PREFIX,
            )
            env["ICPVARDIR"] = str(var)
            (var / "background_script.py").write_text(SCRIPT)
            log = var / "script.out"
            with open(log, "wb") as out:
                script = subprocess.Popen(
                    [sys.executable, "background_script.py"], cwd=var, env=env, stdout=out
                )
                url = wait_for(lambda: _url(log), 30, "the plot")
                time.sleep(20)  # twenty seconds of live samples after the reloaded hour
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(
                        executable_path=chromium_path(),
                        headless=True,
                        args=["--no-sandbox", "--disable-gpu", "--no-proxy-server"],
                    )
                    try:
                        page = browser.new_page(viewport={"width": 860, "height": 620})
                        page.goto(url)
                        page.locator("canvas.mpl-canvas").wait_for()
                        seen = _status(url)["frames"]
                        wait_for(lambda: _status(url)["frames"] >= seen + 3, 20, "live frames")
                        page.screenshot(path=str(output))
                    finally:
                        browser.close()
        finally:
            if script is not None:
                script.terminate()
                script.wait(10)
            sim.stop()
    print(f"wrote {output} ({datetime.now():%H:%M:%S}, {url})")
    return 0


def _status(url: str) -> dict:
    import json
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url.rstrip("/") + "/status.json", timeout=5) as response:
        return json.loads(response.read())


def _url(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines():
        if "Background plot: started, " in line:
            return line.split("started, ", 1)[1].split(" ", 1)[0]
    return None


if __name__ == "__main__":
    sys.exit(main())
