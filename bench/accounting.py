"""What measuring each slot's CPU, RSS and processes costs the IOC.

Two IOCs run side by side, identical but for ``BGRSCRPT_ACCOUNTING`` (on: every
slot measured every 2 s; off: never), each with two RUNNING scripts that sleep
(one of them with a child, so that there is a tree to walk). Both are sampled
over the same windows, so that whatever else runs on a shared machine falls on
both alike: the figure is the difference of their CPU (IOC process + its
keeper), in % of one core, median over the windows, and the ratio. Done once
with a cgroup per slot (when this machine allows it) and once with the keeper
as subreaper, whose measurement walks /proc.

Cross-check without noise: one ``SlotMeter.sample`` timed in this process,
against the same kind of running script, many times; its cost every 2 s, in %
of a core.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bgrscrpt_ioc.supervisor import accounting
from bgrscrpt_ioc.supervisor.containment import detect
from bgrscrpt_ioc.supervisor.guardian import Guardian
from bgrscrpt_ioc.supervisor.process import ScriptProcess

from .common import BgrIoc, fresh_prefix, median

NAME = "accounting"
PORTS = 4
GOAL_PCT = 0.2  # of one core
SETTLE_S = 4.0
WINDOW_S = 10.0
WINDOWS = 6
MICRO_SAMPLES = 2000

SLEEPER = """\
import time
while True:
    time.sleep(3600)
"""
WITH_CHILD = """\
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
while True:
    time.sleep(3600)
"""
SCRIPTS = {"background_script.py": SLEEPER, "background_script2.py": WITH_CHILD}


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    """CPU time of ``procs``, all their threads, in ns resolution (/proc/PID/task/*/schedstat:
    psutil's user + system count in clock ticks, 10 ms: 0.1 % of a core over 10 s, half
    the goal)."""
    total = 0
    for proc in procs:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                total += _task_ns(f"/proc/{proc.pid}/task/{tid}/schedstat")
    return total / 1e9


def _task_ns(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):  # the thread ended meanwhile
        return 0


def _ioc_and_keeper(ioc: BgrIoc) -> list[psutil.Process]:
    assert ioc.proc is not None
    proc = psutil.Process(ioc.proc.pid)
    keepers = [c for c in proc.children() if any("keeper.py" in a for a in c.cmdline())]
    return [proc, *keepers]


def _pair(workdir: Path, pool: Any, mechanism: str) -> dict:
    """Accounting on and off, side by side, under ``mechanism``."""
    iocs = {
        switch: BgrIoc(
            workdir / f"{mechanism}-{switch}",
            port=pool.take(),
            prefix=fresh_prefix("A"),
            scripts=SCRIPTS,
            env={"BGRSCRPT_ACCOUNTING": switch, "BGRSCRPT_CONTAINMENT": mechanism},
        )
        for switch in ("on", "off")
    }
    with iocs["on"], iocs["off"]:
        for ioc in iocs.values():
            for slot in ("BGRSCRPT_01", "BGRSCRPT_02"):
                ioc.wait_status("RUNNING", slot, timeout=20.0)
        time.sleep(SETTLE_S)
        procs = {switch: _ioc_and_keeper(ioc) for switch, ioc in iocs.items()}
        windows: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(WINDOWS):
            t0 = time.monotonic()
            c0 = {switch: _cpu_seconds(p) for switch, p in procs.items()}
            time.sleep(WINDOW_S)
            elapsed = time.monotonic() - t0
            for switch, p in procs.items():
                windows[switch].append(100 * (_cpu_seconds(p) - c0[switch]) / elapsed)
    diffs = [a - b for a, b in zip(windows["on"], windows["off"], strict=True)]
    on, off = median(windows["on"]), median(windows["off"])
    return {
        "mechanism": mechanism,
        "on_pct": on,
        "off_pct": off,
        "window_on_pct": windows["on"],
        "window_off_pct": windows["off"],
        "diff_pct": median(diffs),
        "window_diff_pct": diffs,
        "ratio": on / off if off > 0 else None,
        "stopped_cleanly": all(ioc.stopped_cleanly for ioc in iocs.values()),
    }


def _micro(workdir: Path, mechanism: str) -> dict:
    """The cost of one sample of one slot with a running script, timed in this process."""
    import asyncio

    async def measure() -> dict:
        loop = asyncio.get_running_loop()
        var = workdir / f"micro-{mechanism}"
        var.mkdir()
        containment = detect(var, ["BGRSCRPT_02"], mode=mechanism)
        guardian = Guardian(containment.keeper_config())
        guardian.start()
        guardian.attach(loop)
        script = workdir / "micro_script.py"
        script.write_text(WITH_CHILD)
        proc = await ScriptProcess.spawn(
            [sys.executable, str(script)],
            slot="BGRSCRPT_02",
            guardian=guardian,
            cwd=str(workdir),
            env=dict(os.environ),
            on_output=lambda data: None,
            on_exit=lambda code: None,
            loop=loop,
        )
        try:
            meter = accounting.SlotMeter(
                "BGRSCRPT_02",
                containment.instance,
                containment.slots.get("BGRSCRPT_02"),
                lambda: proc.pid,
                lambda: (guardian.pid, list(guardian.leaders().values())),
            )
            deadline = time.monotonic() + 10
            while meter.sample(time.monotonic()).nproc < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            usage = meter.sample(time.monotonic())
            t0 = time.perf_counter()
            c0 = time.process_time()
            for _ in range(MICRO_SAMPLES):
                meter.sample(time.monotonic())
            wall = (time.perf_counter() - t0) / MICRO_SAMPLES
            cpu = (time.process_time() - c0) / MICRO_SAMPLES
        finally:
            proc.signal_all(signal.SIGKILL)
            proc.close()
            guardian.close()
        return {
            "mechanism": containment.mechanism,
            "nproc": usage.nproc,
            "sample_us": wall * 1e6,
            "sample_cpu_us": cpu * 1e6,
            # Two slots, one sample each every INTERVAL seconds.
            "pct_of_core": 2 * cpu / accounting.INTERVAL * 100,
        }

    return asyncio.run(measure())


def run(workdir: Path, pool: Any) -> dict:
    mechanisms = ["cgroup", "subreaper"] if os.geteuid() == 0 else ["subreaper"]
    pairs = [_pair(workdir, pool, m) for m in mechanisms]
    micro = [_micro(workdir, m) for m in mechanisms]
    worst = max(p["diff_pct"] for p in pairs)
    return {
        "pairs": pairs,
        "micro": micro,
        "window_s": WINDOW_S,
        "windows": WINDOWS,
        "goal_pct": GOAL_PCT,
        "worst_diff_pct": worst,
        "met": worst <= GOAL_PCT,
        "ioc_stopped_cleanly": all(p["stopped_cleanly"] for p in pairs),
        "load_avg": os.getloadavg(),
    }


def summary_rows(r: dict) -> list[list[str]]:
    rows = []
    for p in r["pairs"]:
        rows.append(
            [
                f"Accounting cost, 2 scripts ({p['mechanism']})",
                f"{p['on_pct']:.2f} % of a core (accounting on)",
                f"accounting off: {p['off_pct']:.2f} %",
                f"{p['diff_pct']:+.2f} % of a core"
                + (f" ({p['ratio']:.2f}×)" if p["ratio"] else ""),
                f"≤ +{GOAL_PCT} % of a core",
                "yes" if p["diff_pct"] <= GOAL_PCT else "**no**",
            ]
        )
    return rows


def section(r: dict) -> list[str]:
    out = [
        "## Accounting cost (CPU, RSS, NPROC per slot)",
        "",
        "**How:** two IOCs side by side, identical but for `BGRSCRPT_ACCOUNTING` (on: each "
        "slot's CPU, RSS and process count measured every 2 s; off: never), each with two "
        "RUNNING scripts that sleep (one with a child in its own session). After "
        f"{SETTLE_S:.0f} s both are sampled over the same {r['windows']} windows of "
        f"{r['window_s']:.0f} s: CPU time of the IOC process and its keeper, every thread "
        "(`/proc/PID/task/*/schedstat`, in ns), ÷ wall time. The figure is the median over "
        "the windows of on − off, in % of one core: what else runs on the machine falls on "
        "both alike. Once per mechanism.",
        "",
    ]
    rows = []
    for p in r["pairs"]:
        rows.append(
            [
                p["mechanism"],
                f"{p['on_pct']:.3f} %",
                f"{p['off_pct']:.3f} %",
                f"**{p['diff_pct']:+.3f} %**",
                ", ".join(f"{d:+.2f}" for d in p["window_diff_pct"]),
            ]
        )
    out += [
        "| mechanism | accounting on | off | on − off (median) | per window |",
        "|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "**Cross-check without the noise:** one measurement of one slot (a script with a "
        f"child), timed {MICRO_SAMPLES} times in the bench's own process:",
        "",
        "| mechanism | processes | one sample (wall) | one sample (CPU) | two slots every 2 s |",
        "|---|---|---|---|---|",
    ]
    for m in r["micro"]:
        out.append(
            f"| {m['mechanism']} | {m['nproc']} | {m['sample_us']:.0f} µs | "
            f"{m['sample_cpu_us']:.0f} µs | {m['pct_of_core']:.4f} % of a core |"
        )
    load = ", ".join(f"{x:.2f}" for x in r["load_avg"])
    out += [
        "",
        f"Goal: ≤ +{GOAL_PCT} % of a core: **{'yes' if r['met'] else 'no'}** (worst "
        f"mechanism {r['worst_diff_pct']:+.3f} %). Load average at the end: {load}; on a "
        "shared machine the per-window differences show the noise around the median.",
    ]
    return out
