"""Figure 4: the idle IOC's memory and CPU, vs an EPICS base IOC serving the same records.

bgrscrpt_ioc runs two slots whose scripts sleep (both RUNNING); the only CA
client is the bench, holding the STATUS and PID channels it read. After
``SETTLE_S`` s, psutil samples the IOC process every second for ``MEASURE_S``
s: RSS (and PSS/USS) per sample, CPU% = (user+system CPU time used) / wall
time over the whole window, and per ``WINDOW_S`` s window.
The IOC's keeper process (its child, the scripts' parent) is reported
separately; the scripts are not counted. Then the same for the peer:
``python -m epicscorelibs.ioc`` with db_templates/bgrscrpt.db for BGRSCRPT_01
and _02 and db_templates/bgrscrpt_ioc.db (an embedded Python interpreter
running the IOC shell, with its CA server and QSRV pvAccess server).
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from devsupport.epics_base import BaseIoc

from .common import BgrIoc, ca_get, median, ratio, shown_path

SETTLE_S = 3.0
MEASURE_S = 30.0
WINDOW_S = 5.0
GOAL_RSS_MB = 80.0
GOAL_CPU_PCT = 1.0

IDLE_SCRIPT = """\
import time
while True:
    time.sleep(3600)
"""


def _sample(proc: psutil.Process, extra: list[psutil.Process] | None = None) -> dict:
    """Sample ``proc`` for MEASURE_S seconds."""
    rss, pss, uss = [], [], []
    extra_rss: list[float] = []
    windows: list[float] = []
    t_start = time.monotonic()
    c_start = proc.cpu_times()
    t_win, c_win = t_start, c_start
    while True:
        mem = proc.memory_full_info()
        rss.append(mem.rss / 2**20)
        pss.append(getattr(mem, "pss", 0) / 2**20)
        uss.append(mem.uss / 2**20)
        if extra:
            extra_rss.append(sum(p.memory_info().rss for p in extra) / 2**20)
        now = time.monotonic()
        if now - t_win >= WINDOW_S - 1e-3:
            c = proc.cpu_times()
            windows.append(100 * (c.user + c.system - c_win.user - c_win.system) / (now - t_win))
            t_win, c_win = now, c
        if now - t_start >= MEASURE_S:
            break
        time.sleep(1.0 - (time.monotonic() - now) % 1.0)
    c_end, t_end = proc.cpu_times(), time.monotonic()
    return {
        "seconds": t_end - t_start,
        "rss_max_mb": max(rss),
        "rss_median_mb": median(rss),
        "pss_median_mb": median(pss),
        "uss_median_mb": median(uss),
        "cpu_pct": 100
        * (c_end.user + c_end.system - c_start.user - c_start.system)
        / (t_end - t_start),
        "window_cpu_pct": windows,
        "median_window_cpu_pct": median(windows),
        "threads": proc.num_threads(),
        "helpers_rss_mb": max(extra_rss) if extra_rss else 0.0,
    }


def run(workdir: Path, ioc_port: int, base_port: int, ioc_prefix: str, base_prefix: str) -> dict:
    ioc = BgrIoc(
        workdir / "ioc",
        port=ioc_port,
        prefix=ioc_prefix,
        scripts={"background_script.py": IDLE_SCRIPT, "background_script2.py": IDLE_SCRIPT},
    )
    with ioc:
        assert ioc.proc is not None
        for slot in ("BGRSCRPT_01", "BGRSCRPT_02"):
            ioc.wait_status("RUNNING", slot, timeout=20.0)
        proc = psutil.Process(ioc.proc.pid)
        time.sleep(SETTLE_S)
        script_pids = set()
        for slot in ("BGRSCRPT_01", "BGRSCRPT_02"):
            script_pids.add(int(ca_get(ioc.pv(f"{slot}:PID"))))
        helpers = [c for c in proc.children() if c.pid not in script_pids]
        ioc_result = _sample(proc, helpers)
        ioc_result["helpers"] = [_program(h.cmdline()) for h in helpers]
    ioc_result["stopped_cleanly"] = ioc.stopped_cleanly

    base = BaseIoc(workdir / "base", port=base_port, prefix=base_prefix)
    with base:
        assert base.proc is not None
        time.sleep(SETTLE_S)
        base_result = _sample(psutil.Process(base.proc.pid))

    result = {
        "measure_s": MEASURE_S,
        "ioc": ioc_result,
        "base": base_result,
        "rss_ratio": ratio(ioc_result["rss_max_mb"], base_result["rss_max_mb"]),
        "cpu_ratio": ratio(ioc_result["cpu_pct"], base_result["cpu_pct"]),
        "goal_rss_mb": GOAL_RSS_MB,
        "goal_cpu_pct": GOAL_CPU_PCT,
    }
    result["rss_met"] = ioc_result["rss_max_mb"] <= GOAL_RSS_MB
    result["cpu_met"] = ioc_result["cpu_pct"] <= GOAL_CPU_PCT
    result["met"] = result["rss_met"] and result["cpu_met"]
    return result


def _program(cmdline: list[str]) -> str:
    """What a helper process runs: its Python file (or ``-m`` module), else its command."""
    for i, arg in enumerate(cmdline):
        if arg.endswith(".py"):
            return shown_path(arg)
        if arg == "-m" and i + 1 < len(cmdline):
            return cmdline[i + 1]
    return Path(cmdline[0]).name if cmdline else "?"
