"""Figure: the background block plot (``BackgroundBlockPlot``), three measurements.

1. Frame cost: the CPU time to render one update (one new sample, the render
   and the PNG a browser is sent) with 3 series sampled at 10 Hz, after 1 hour
   (36 000 samples) and after 7 days (6 048 000) of data, in this process
   (thread CPU time: a busy machine does not inflate it).
   Peer: the original IBEX approach on the same data and the same figure: every
   point on the lines, ``set_data`` + ``relim`` + ``autoscale_view``, a full
   render and matplotlib's own WebAgg PNG (given numpy arrays rather than the
   original's lists of datetimes: kinder to it).
2. Footprint: RSS of a script process running a 5-block plot at interval 0.5 s
   (its web server, figure and data file included), fed 7 days of samples as
   fast as it takes them through the same path as live samples, with a frame
   every simulated hour; RSS after each simulated day. Peer: the original's
   storage (Python lists of datetimes and values) for the same samples, in a
   process that has imported matplotlib too.
3. Steady state: CPU of the script process plotting 5 changing blocks of a
   simulated instrument at interval 0.5 s, with headless Chromium showing the
   live page; peer: the same plot with no browser connected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from devsupport.waiting import wait_for

from .common import REPO, fresh_prefix, json_lines_of, median, percentile, ratio

NAME = "plot"
PORTS = 1  # the simulated instrument

RATE_HZ = 10.0
HOUR_SAMPLES = int(3600 * RATE_HZ)
WEEK_SAMPLES = int(7 * 86400 * RATE_HZ)
OURS_FRAMES = 60
PEER_FRAMES = {"1 h": 6, "7 d": 3}
GOAL_CONSTANT = 0.20  # 1 h -> 7 d within 20 %
GOAL_SPEEDUP = 20.0  # at 7 days
GOAL_RSS_MB = 150.0
GOAL_RSS_FLAT_MB = 5.0  # growth from day 1 to day 7
GOAL_CPU_PCT = 3.0
STEADY_BLOCKS = 5
STEADY_S = 30.0
FOOTPRINT_INTERVAL = 0.5


# ---- 1. frame cost ---------------------------------------------------------


def _synthetic(n: int, start: float):
    """``n`` samples at 10 Hz of three blocks whose picture is the same at any length:
    a sample temperature swinging three times with a little noise, a constant
    setpoint and a ramping stage. So 1 h and 7 d differ only in how many samples
    stand behind each pixel, which is what decimation is about."""
    import numpy as np

    t = start + np.arange(n) / RATE_HZ
    u = np.arange(n) / n  # 0..1 across the plot, whatever its length
    rng = np.random.default_rng(1)
    values = np.stack(
        [
            290 + 5 * np.sin(2 * np.pi * 3 * u) + rng.normal(scale=0.05, size=n),
            300 + 0 * u,
            295 + 5 * ((3 * u) % 1.0),
        ],
        axis=1,
    )
    return t, values


def _figure_plot():
    from bgrscrpt_ioc.plot.block_plot import BlockPlot

    plot = BlockPlot(
        ["BENCH:A", "BENCH:B", "BENCH:C"],
        ["Sample", "Setpoint", "Stage"],
        "Temperature",
        title="Temperature Plot",
        data_file=None,
        interval=1 / RATE_HZ,
    )
    plot._build_figure()
    return plot


def _ours(sizes: dict[str, int]) -> dict[str, list[float]]:
    """Frames of one plot per size, taken in turn so that each size sees the same
    machine (other work on it slows all of them alike)."""
    plots = {}
    for label, n in sizes.items():
        plot = _figure_plot()
        t, v = _synthetic(n + OURS_FRAMES, time.time() - n / RATE_HZ)
        plot.samples.extend(t[:n], v[:n])
        plot.manager.canvas.draw()  # the first frame renders the axes in any case
        plot.manager.canvas.get_diff_image()
        plots[label] = (plot, t[n:], v[n:])
    times: dict[str, list[float]] = {label: [] for label in sizes}
    for i in range(OURS_FRAMES):
        for label, (plot, t, v) in plots.items():
            t0 = time.thread_time()
            plot.record(t[i], v[i])
            plot.manager.canvas.draw()
            plot.manager.canvas.get_diff_image()  # the PNG a browser would be sent
            times[label].append((time.thread_time() - t0) * 1e3)
    return times


def _peer(n: int, frames: int) -> list[float]:
    """The original: every point on the lines, set_data + relim, a full render each update."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.backends.backend_webagg_core import FigureCanvasWebAggCore

    plot = _figure_plot()
    t, v = _synthetic(n + frames, time.time() - n / RATE_HZ)
    days = t / 86400.0
    ax = plot.axes
    times = []
    for i in range(n, n + frames):
        t0 = time.thread_time()
        for k, line in enumerate(plot.lines):
            line.set_data(days[: i + 1], v[: i + 1, k])
        ax.relim()
        ax.set_xlim(days[0], days[i] + 0.5 / 86400.0)
        ax.autoscale_view()
        FigureCanvasAgg.draw(plot.manager.canvas)
        plot.manager.canvas._png_is_old = True
        FigureCanvasWebAggCore.get_diff_image(plot.manager.canvas)  # matplotlib's own
        times.append((time.thread_time() - t0) * 1e3)
    return times


def frame_cost() -> dict:
    ours = _ours({"1 h": HOUR_SAMPLES, "7 d": WEEK_SAMPLES})
    peer = {label: _peer(n, PEER_FRAMES[label]) for label, n in (("1 h", HOUR_SAMPLES),)}
    peer["7 d"] = _peer(WEEK_SAMPLES, PEER_FRAMES["7 d"])
    result: dict[str, Any] = {
        "ours_ms": {k: median(x) for k, x in ours.items()},
        "ours_p95_ms": {k: percentile(x, 95) for k, x in ours.items()},
        "ours_max_ms": {k: max(x) for k, x in ours.items()},
        "peer_ms": {k: median(x) for k, x in peer.items()},
        "frames": {"ours": OURS_FRAMES, "peer": PEER_FRAMES},
    }
    result["growth"] = ratio(result["ours_ms"]["7 d"], result["ours_ms"]["1 h"]) - 1.0
    result["speedup_7d"] = ratio(result["peer_ms"]["7 d"], result["ours_ms"]["7 d"])
    result["constant_met"] = abs(result["growth"]) <= GOAL_CONSTANT
    result["speedup_met"] = result["speedup_7d"] >= GOAL_SPEEDUP
    return result


# ---- 2. footprint ----------------------------------------------------------

FEED_SCRIPT = """
import json, os, sys, time
import numpy as np
from bgrscrpt_ioc.plot.block_plot import BlockPlot
from bgrscrpt_ioc.plot import autosave

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

interval = {interval}
per_day = int(86400 / interval)
plot = BlockPlot([f"BENCHNONE:CS:SB:B{{i}}" for i in range(5)], [f"block {{i}}" for i in range(5)],
                 "Value", title="Value Plot", data_file=autosave.data_file(1), interval=interval)
plot.start()
print(json.dumps({{"day": 0, "rss_mb": rss_mb(), "url": plot.url}}), flush=True)
start = time.time() - 7 * 86400
rng = np.random.default_rng(2)

per_hour = int(3600 / interval)
level = np.full(5, 100.0)

def feed(day):
    global level
    for hour in range(24):
        t0 = start + day * 86400 + hour * 3600
        values = level + np.cumsum(rng.normal(size=(per_hour, 5)), axis=0)
        level = values[-1]
        values[rng.random(per_hour) < 0.001] = np.nan  # the odd gap
        for i in range(per_hour):
            plot.record(t0 + i * interval, values[i])
        plot.manager.canvas.draw()  # a frame each simulated hour

for day in range(7):
    plot.server.call(feed, day, timeout=None)
    print(json.dumps({{"day": day + 1, "rss_mb": rss_mb(), "samples": plot.samples.total}}),
          flush=True)
plot.stop()
"""

PEER_FEED_SCRIPT = """
import json, random
from datetime import datetime, timedelta
import matplotlib
matplotlib.use("agg")
from matplotlib import pyplot

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

interval = {interval}
per_day = int(86400 / interval)
figure = pyplot.figure("Value Plot")
data_x, data = [], [[] for _ in range(5)]
start = datetime.now() - timedelta(days=7)
print(json.dumps({{"day": 0, "rss_mb": rss_mb()}}), flush=True)
for day in range(7):
    for i in range(per_day):
        data_x.append(start + timedelta(seconds=(day * per_day + i) * interval))
        for series in data:
            series.append(100.0 + random.random())
    print(json.dumps({{"day": day + 1, "rss_mb": rss_mb()}}), flush=True)
"""


def _run_feed(code: str, workdir: Path) -> list[dict]:
    from bgrscrpt_ioc.supervisor.env import kit_root, script_environment

    workdir.mkdir(parents=True, exist_ok=True)
    env = script_environment(
        os.environ,
        slot="BGRSCRPT_01",
        config_dir=workdir,
        var_dir=workdir,
        kit_root=kit_root(),
        notify_socket="",
        prefix="BENCHNONE:",
    )
    env["ICPVARDIR"] = str(workdir)
    env["BGRSCRPT_PLOT_PORT"] = "18989"  # out of the way of a plot the machine may serve
    return json_lines_of(
        [sys.executable, "-c", textwrap.dedent(code)], "feed script", cwd=workdir, env=env
    )


def footprint(workdir: Path) -> dict:
    ours = _run_feed(FEED_SCRIPT.format(interval=FOOTPRINT_INTERVAL), workdir / "ours")
    peer = _run_feed(PEER_FEED_SCRIPT.format(interval=FOOTPRINT_INTERVAL), workdir / "peer")
    by_day = {d["day"]: d["rss_mb"] for d in ours}
    result = {
        "samples": ours[-1]["samples"],
        "ours_rss_mb": by_day,
        "peer_rss_mb": {d["day"]: d["rss_mb"] for d in peer},
        "data_file_mb": (workdir / "ours" / "tmp" / "background_plot_data_01.csv").stat().st_size
        / 2**20,
    }
    result["rss_7d_mb"] = by_day[7]
    result["growth_mb"] = by_day[7] - by_day[1]
    result["rss_met"] = by_day[7] <= GOAL_RSS_MB
    result["flat_met"] = result["growth_mb"] <= GOAL_RSS_FLAT_MB
    return result


# ---- 3. steady state -------------------------------------------------------

STEADY_SCRIPT = """
from time import sleep
from genie_python import genie as g
from technique.muon.background_plot import BackgroundBlockPlot

g.set_instrument(None)
BackgroundBlockPlot([(f"B{{i}}", f"block {{i}}") for i in range({blocks})], "Value").start()
while True:
    sleep(10)
"""


def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` from the scheduler's own accounting
    (``/proc/PID/task/*/schedstat``, in ns): exact, where user+system times are
    sampled at the timer tick and misjudge short bursts such as a plot's frames."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stream:
                total += int(stream.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total / 1e9


def _measure_cpu(pid: int, seconds: float) -> float:
    c0, t0 = _cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)  # a measuring window, not a wait for a condition
    return 100.0 * (_cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def steady_state(workdir: Path, port: int) -> dict:
    from bgrscrpt_ioc.supervisor.env import kit_root, script_environment

    prefix = fresh_prefix("P")
    blocks = ",".join(f"B{i}" for i in range(STEADY_BLOCKS))
    sim_env = dict(os.environ, EPICS_CA_SERVER_PORT=str(port), EPICS_CAS_SERVER_PORT=str(port))
    sim = subprocess.Popen(
        [sys.executable, "-m", "tests.sim_instrument", "--prefix", prefix, "--blocks", blocks],
        env=sim_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    script = None
    try:
        assert sim.stdout is not None
        if sim.stdout.readline().strip() != b"ready":
            raise RuntimeError("the simulated instrument did not start")
        workdir.mkdir(parents=True, exist_ok=True)
        env = script_environment(
            os.environ,
            slot="BGRSCRPT_01",
            config_dir=workdir,
            var_dir=workdir,
            kit_root=kit_root(),
            notify_socket="",
            prefix=prefix,
        )
        env["ICPVARDIR"] = str(workdir)
        env["BGRSCRPT_PLOT_PORT"] = "18989"
        log = open(workdir / "script.out", "wb")  # noqa: SIM115 - closed below
        path = workdir / "plot_script.py"
        path.write_text(STEADY_SCRIPT.format(blocks=STEADY_BLOCKS))
        script = subprocess.Popen(
            [sys.executable, str(path)], env=env, cwd=workdir, stdout=log, stderr=log
        )
        url = wait_for(lambda: _url_from(workdir / "script.out"), 30, "the plot URL")
        wait_for(lambda: _status(url)["samples"] >= 10, 30, "samples")
        without = _measure_cpu(script.pid, STEADY_S / 2)
        with_browser, frames = _with_browser(url, script.pid)
        log.close()
        result = {
            "blocks": STEADY_BLOCKS,
            "interval_s": 0.5,
            "seconds": STEADY_S,
            "cpu_with_browser_pct": with_browser,
            "cpu_without_browser_pct": without,
            "frames_per_s": frames,
            "cpu_met": with_browser <= GOAL_CPU_PCT,
        }
    finally:
        clean = True
        for proc in (script, sim):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    clean = False
                    proc.kill()
                    proc.wait()
    result["stopped_cleanly"] = clean  # the script and the instrument, on SIGTERM
    return result


def _url_from(path: Path) -> str | None:
    for line in path.read_text(errors="replace").splitlines():
        if "Background plot: started, " in line:
            return line.split("started, ", 1)[1].split(" ", 1)[0]
    return None


def _status(url: str) -> dict:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url.rstrip("/") + "/status.json", timeout=5) as response:
        return json.loads(response.read())


def _with_browser(url: str, pid: int) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server"],
        )
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(url)
            page.locator("canvas.mpl-canvas").wait_for(timeout=20_000)
            wait_for(lambda: _status(url)["clients"] == 1, 20, "the browser connected")
            f0 = _status(url)["frames"]
            t0 = time.monotonic()
            cpu = _measure_cpu(pid, STEADY_S)
            frames = (_status(url)["frames"] - f0) / (time.monotonic() - t0)
        finally:
            browser.close()
    return cpu, frames


# ---- the figure ------------------------------------------------------------


def run(workdir: Path, pool) -> dict:
    port = pool.take()
    result: dict = {"frame": frame_cost()}
    result["footprint"] = footprint(workdir / "footprint")
    result["steady"] = steady_state(workdir / "steady", port)
    result["ioc_stopped_cleanly"] = result["steady"]["stopped_cleanly"]
    f, m, s = result["frame"], result["footprint"], result["steady"]
    result["met"] = bool(
        f["constant_met"] and f["speedup_met"] and m["rss_met"] and m["flat_met"] and s["cpu_met"]
    )
    return result


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def summary_rows(r: dict) -> list[list[str]]:
    if "error" in r:
        return [["Background plot", "error", "", "", "", "**no**"]]
    f, m, s = r["frame"], r["footprint"], r["steady"]
    return [
        [
            "Plot frame cost, 3 series at 10 Hz (1 h → 7 d)",
            f"{f['ours_ms']['1 h']:.1f} → {f['ours_ms']['7 d']:.1f} ms ({f['growth']:+.0%})",
            f"all points + relim: {f['peer_ms']['1 h']:.0f} → {f['peer_ms']['7 d']:.0f} ms",
            f"{f['speedup_7d']:.0f}× faster at 7 d",
            f"within ±{GOAL_CONSTANT:.0%}; ≥ {GOAL_SPEEDUP:.0f}×",
            _yes(f["constant_met"] and f["speedup_met"]),
        ],
        [
            "Plot script RSS after 7 days of samples",
            f"{m['rss_7d_mb']:.0f} MB ({m['growth_mb']:+.1f} MB day 1 → 7)",
            f"Python lists: {m['peer_rss_mb'][7]:.0f} MB",
            f"{ratio(m['rss_7d_mb'], m['peer_rss_mb'][7]):.2f}×",
            f"≤ {GOAL_RSS_MB:.0f} MB, flat (≤ {GOAL_RSS_FLAT_MB:.0f} MB growth)",
            _yes(m["rss_met"] and m["flat_met"]),
        ],
        [
            "Plot CPU, 5 blocks at 0.5 s, one browser",
            f"{s['cpu_with_browser_pct']:.2f} % of a core",
            f"no browser: {s['cpu_without_browser_pct']:.2f} %",
            f"{ratio(s['cpu_with_browser_pct'], s['cpu_without_browser_pct']):.1f}×",
            f"≤ {GOAL_CPU_PCT:.0f} %",
            _yes(s["cpu_met"]),
        ],
    ]


def section(r: dict) -> list[str]:
    f, m, s = r["frame"], r["footprint"], r["steady"]
    days = sorted(m["ours_rss_mb"], key=int)
    lines = [
        "## Background plot",
        "",
        textwrap.dedent(__doc__ or "").split("\n\n", 1)[1].strip(),
        "",
        "### Frame cost (CPU ms per update; median, p95, max)",
        "",
        "| data | bgrscrpt_ioc median | p95 | max | original approach (median) |",
        "|---|---|---|---|---|",
    ]
    for label in ("1 h", "7 d"):
        lines.append(
            f"| {label} | {f['ours_ms'][label]:.2f} | {f['ours_p95_ms'][label]:.2f} | "
            f"{f['ours_max_ms'][label]:.2f} | {f['peer_ms'][label]:.1f} |"
        )
    lines += [
        "",
        f"{f['frames']['ours']} frames of ours per size (each one new sample; the occasional "
        "frame whose axis limits move renders the axes again, hence the max); "
        f"{f['frames']['peer']['1 h']} and {f['frames']['peer']['7 d']} of the original. "
        f"Growth 1 h → 7 d: {f['growth']:+.1%}; at 7 days {f['speedup_7d']:.0f}× faster.",
        "",
        f"### Footprint ({m['samples']} samples of 5 blocks = 7 days at 0.5 s)",
        "",
        "| simulated day | " + " | ".join(str(d) for d in days) + " |",
        "|---|" + "---|" * len(days),
        "| bgrscrpt_ioc RSS (MB) | "
        + " | ".join(f"{m['ours_rss_mb'][d]:.0f}" for d in days)
        + " |",
        "| Python lists RSS (MB) | "
        + " | ".join(f"{m['peer_rss_mb'].get(d, float('nan')):.0f}" for d in days)
        + " |",
        "",
        f"The autosave file holds every sample ({m['data_file_mb']:.0f} MB on disk), "
        "as IBEX's does; memory holds a fixed-size min/max pyramid.",
        "",
        "### Steady state",
        "",
        f"{s['blocks']} blocks of a simulated instrument changing at 10 Hz, sampled every "
        f"{s['interval_s']} s; CPU of the script process over {s['seconds']:.0f} s with "
        f"headless Chromium on the live page ({s['frames_per_s']:.1f} frames/s): "
        f"**{s['cpu_with_browser_pct']:.2f} %** of a core; without a browser "
        f"{s['cpu_without_browser_pct']:.2f} %. CPU time is the scheduler's exact "
        "account of every thread (`/proc/PID/task/*/schedstat`), not tick-sampled "
        "user+system time, which misjudges a plot's short bursts of work.",
    ]
    return lines
