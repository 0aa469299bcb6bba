"""Figure 3: responsiveness under load, vs the same IOC with no load.

Both slots run a script that writes ~100,000 lines/s (chunks of 1000 fixed-length,
numbered lines through ``os.write`` on stdout, paced every 10 ms) while a flag file exists,
and sleeps otherwise. The achieved line rate is the growth of the slots' log
files over the load window divided by the line length (rotation is set out of
reach for the run).

Load = both floods + ``CLIENTS`` CA clients: separate pyepics (libca) processes
(``bench.monitor_client``), each monitoring every PV the IOC serves (its own
``--list-pvs``), so each is its own CA circuit.

Measured in this process, with pyepics: ``epics.caput(BGRSCRPT_01:START, 1,
wait=True)`` to the running slot (the no-op path) every ``PUT_PERIOD`` s, timed
with ``time.perf_counter()``; and a monitor on ``BGRSCRPT:HEARTBEAT``, where a
jump of more than 1 between consecutive updates counts the beats in between as
missed. First ``NOLOAD_S`` s with no load (the peer), then ``LOAD_S`` s under load.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import epics
import psutil

from .common import REPO, BgrIoc, median, percentile, pv_names, ratio

CLIENTS = 50
NOLOAD_S = 20.0
LOAD_S = 60.0
WARMUP_S = 3.0
PUT_PERIOD = 0.05
WINDOW_S = 10.0
LINE_FORMAT = "bench line %010d\n"
LINE_LEN = len(LINE_FORMAT % 0)  # every line has this length: lines = bytes / LINE_LEN
LINES_PER_CHUNK = 1000
TARGET_RATE = 100_000
GOAL_P99_MS = 50.0
FLAG_VAR = "BENCH_FLOOD_FLAG"

FLOOD_SCRIPT = f'''\
import os, time
flag = os.environ["{FLAG_VAR}"]
fmt = {LINE_FORMAT!r} * {LINES_PER_CHUNK}
period = {LINES_PER_CHUNK} / {TARGET_RATE}
n = 0
next_t = time.monotonic()
while True:
    if not os.path.exists(flag):
        time.sleep(0.05)
        next_t = time.monotonic()
        continue
    # Every line differs (a counter), so the LOG tail changes with every chunk.
    chunk = (fmt % tuple(range(n, n + {LINES_PER_CHUNK}))).encode()
    n = (n + {LINES_PER_CHUNK}) % 10**10
    view = memoryview(chunk)
    while view:
        view = view[os.write(1, view):]
    next_t += period
    delay = next_t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    elif delay < -0.1:  # fell behind (the pipe was full): do not burst
        next_t = time.monotonic()
'''

SETTINGS = """
[supervisor]
log_max_bytes = 1099511627776
"""

SLOTS = ("BGRSCRPT_01", "BGRSCRPT_02")


class _HeartbeatWatch:
    def __init__(self, pvname: str):
        self.events: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self.pv = epics.PV(pvname, auto_monitor=True, callback=self._on)
        if not self.pv.wait_for_connection(10.0):
            raise RuntimeError(f"{pvname} did not connect")

    def _on(self, value=None, **_kw) -> None:
        with self._lock:
            self.events.append((time.monotonic(), int(value)))

    def window(self, t0: float, t1: float) -> dict:
        with self._lock:
            events = list(self.events)
        before = [e for e in events if e[0] < t0][-1:]
        inside = [e for e in events if t0 <= e[0] <= t1]
        seq = before + inside
        missed = sum(max(0, b[1] - a[1] - 1) for a, b in zip(seq, seq[1:], strict=False))
        gaps = [b[0] - a[0] for a, b in zip(seq, seq[1:], strict=False)]
        return {
            "updates": len(inside),
            "first": inside[0][1] if inside else None,
            "last": inside[-1][1] if inside else None,
            "missed": missed,
            "max_gap_s": max(gaps) if gaps else float("nan"),
        }

    def close(self) -> None:
        self.pv.clear_callbacks()
        self.pv.disconnect()


def _put_loop(pvname: str, seconds: float) -> tuple[list[float], int]:
    """caput(wait=True) every PUT_PERIOD for ``seconds``: round trips in ms, failures."""
    samples: list[float] = []
    failures = 0
    start = time.monotonic()
    next_t = start
    while time.monotonic() - start < seconds:
        t0 = time.perf_counter()
        ok = epics.caput(pvname, 1, wait=True, timeout=5.0)
        dt = (time.perf_counter() - t0) * 1e3
        if ok == 1:
            samples.append(dt)
        else:
            failures += 1
        next_t += PUT_PERIOD
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_t = time.monotonic()
    return samples, failures


def _window_p99(samples: list[float], n_windows: int) -> list[float]:
    size = max(1, len(samples) // n_windows)
    return [
        percentile(samples[i : i + size], 99)
        for i in range(0, len(samples), size)
        if len(samples[i : i + size]) >= size // 2
    ]


class _Clients:
    def __init__(self, count: int, pvlist: Path):
        self.procs: list[subprocess.Popen[str]] = []
        # libca's complaints (no caRepeater binary) go to a file, not the terminal.
        self._err = open(pvlist.parent / "clients.err", "w")  # noqa: SIM115 - closed in stop()
        for _ in range(count):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.monitor_client", str(pvlist)],
                    cwd=REPO,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=self._err,
                    text=True,
                )
            )
        self.ready: list[str] = []

    def wait_ready(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        pending = {p.stdout.fileno(): p for p in self.procs if p.stdout}
        while pending and time.monotonic() < deadline:
            readable, _, _ = select.select(list(pending), [], [], 0.5)
            for fd in readable:
                line = pending.pop(fd).stdout.readline().strip()  # type: ignore[union-attr]
                self.ready.append(line)
        if pending:
            raise TimeoutError(f"{len(pending)} of {len(self.procs)} CA clients not ready")
        return self.ready

    def stop(self) -> dict:
        for p in self.procs:
            if p.stdin is not None and not p.stdin.closed:
                with contextlib.suppress(OSError):
                    p.stdin.close()
        updates = nbytes = 0
        per_pv: dict[str, int] = {}
        for p in self.procs:
            try:
                p.wait(15.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            out = p.stdout.read() if p.stdout is not None else ""
            if p.stdout is not None:
                p.stdout.close()
            for line in out.splitlines():
                if line.startswith("result "):
                    got = json.loads(line[len("result ") :])
                    updates += got["updates"]
                    nbytes += got["bytes"]
                    for name, n in got["per_pv"].items():
                        per_pv[name] = per_pv.get(name, 0) + n
        self.procs = []
        self._err.close()
        return {"updates": updates, "bytes": nbytes, "per_pv": per_pv}


def _log_bytes(ioc: BgrIoc) -> dict[str, int]:
    out = {}
    for slot in SLOTS:
        path = ioc.var_dir / "logs" / f"{slot}.log"
        out[slot] = path.stat().st_size if path.exists() else 0
    return out


def run(workdir: Path, port: int, prefix: str) -> dict:
    flag = workdir / "flood.on"
    scripts = {"background_script.py": FLOOD_SCRIPT, "background_script2.py": FLOOD_SCRIPT}
    ioc = BgrIoc(
        workdir,
        port=port,
        prefix=prefix,
        scripts=scripts,
        settings=SETTINGS,
        env={FLAG_VAR: str(flag)},
    )
    pvlist = workdir / "pvs.txt"
    names = pv_names(prefix)
    pvlist.write_text("\n".join(names) + "\n")
    start_pv = ioc.pv("BGRSCRPT_01:START")
    clients: _Clients | None = None
    result: dict = {
        "clients": CLIENTS,
        "pvs_per_client": len(names),
        "noload_s": NOLOAD_S,
        "load_s": LOAD_S,
        "put_period_s": PUT_PERIOD,
        "goal_p99_ms": GOAL_P99_MS,
        "target_lines_per_s_per_script": TARGET_RATE,
    }
    try:
        with ioc:
            assert ioc.proc is not None
            for slot in SLOTS:
                ioc.wait_status("RUNNING", slot, timeout=20.0)
            proc = psutil.Process(ioc.proc.pid)
            heartbeat = _HeartbeatWatch(ioc.pv("BGRSCRPT:HEARTBEAT"))
            slot_beat = _HeartbeatWatch(ioc.pv("BGRSCRPT_01:HEARTBEAT"))
            epics.caput(start_pv, 1, wait=True, timeout=5.0)  # connect, warm up

            # ---- the peer: no load -------------------------------------------
            t0, c0 = time.monotonic(), proc.cpu_times()
            idle_ms, idle_fail = _put_loop(start_pv, NOLOAD_S)
            t1, c1 = time.monotonic(), proc.cpu_times()
            result["noload"] = {
                "puts": len(idle_ms),
                "failures": idle_fail,
                "p50_ms": percentile(idle_ms, 50),
                "p99_ms": percentile(idle_ms, 99),
                "max_ms": max(idle_ms),
                "ioc_cpu_pct": 100 * (c1.user + c1.system - c0.user - c0.system) / (t1 - t0),
                "heartbeat": heartbeat.window(t0, t1),
            }

            # ---- load ----------------------------------------------------------
            launch = time.monotonic()
            clients = _Clients(CLIENTS, pvlist)
            ready = clients.wait_ready(120.0)
            result["clients_ready_s"] = time.monotonic() - launch
            result["clients_connected"] = [
                int(r.split()[1]) for r in ready if r.startswith("ready")
            ]
            flag.touch()
            t_flag = time.monotonic()
            time.sleep(WARMUP_S)
            sys_cpu0 = psutil.cpu_times()
            t0, c0, logs0 = time.monotonic(), proc.cpu_times(), _log_bytes(ioc)
            load_ms, load_fail = _put_loop(start_pv, LOAD_S)
            t1, c1, logs1 = time.monotonic(), proc.cpu_times(), _log_bytes(ioc)
            sys_cpu1 = psutil.cpu_times()
            flag.unlink()
            busy = sum(
                getattr(sys_cpu1, f) - getattr(sys_cpu0, f)
                for f in ("user", "nice", "system", "irq", "softirq")
            )
            lines = {s: (logs1[s] - logs0[s]) / LINE_LEN / (t1 - t0) for s in SLOTS}
            result["load"] = {
                "puts": len(load_ms),
                "failures": load_fail,
                "p50_ms": percentile(load_ms, 50),
                "p99_ms": percentile(load_ms, 99),
                "max_ms": max(load_ms) if load_ms else float("nan"),
                "window_p99_ms": _window_p99(load_ms, int(LOAD_S / WINDOW_S)),
                "ioc_cpu_pct": 100 * (c1.user + c1.system - c0.user - c0.system) / (t1 - t0),
                "machine_busy_pct": 100 * busy / (t1 - t0) / len(os.sched_getaffinity(0)),
                "cores": len(os.sched_getaffinity(0)),
                "lines_per_s": lines,
                "heartbeat": heartbeat.window(t0, t1),
                "slot_heartbeat": slot_beat.window(t0, t1),
            }
            result["fanout"] = clients.stop()
            flood_s = time.monotonic() - t_flag
            result["fanout"]["per_s"] = result["fanout"]["updates"] / flood_s
            result["fanout"]["bytes_per_s"] = result["fanout"]["bytes"] / flood_s
            per_pv = result["fanout"].pop("per_pv")
            top = sorted(per_pv.items(), key=lambda kv: -kv[1])[:5]
            # Updates per second per client, for the PVs that carry most of the fan-out.
            result["fanout"]["top_pvs_per_client_per_s"] = {
                name[len(prefix) :]: n / flood_s / CLIENTS for name, n in top
            }
            clients = None
            result["final_status"] = {
                s: epics.caget(ioc.pv(f"{s}:STATUS"), as_string=True) for s in SLOTS
            }
            heartbeat.close()
            slot_beat.close()
    finally:
        if clients is not None:
            clients.stop()
    result["ioc_stopped_cleanly"] = ioc.stopped_cleanly
    noload, load = result["noload"], result["load"]
    result["p99_ratio"] = ratio(load["p99_ms"], noload["p99_ms"])
    result["median_window_p99_ms"] = median(load["window_p99_ms"])
    result["met"] = (
        load["p99_ms"] <= GOAL_P99_MS and load["heartbeat"]["missed"] == 0 and load["failures"] == 0
    )
    return result
