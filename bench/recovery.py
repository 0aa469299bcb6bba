"""Alarm recovery figures: detection → restart, recovery overhead, and scale.

* Detection → restart: from the watched PV's INVALID timestamp (set by the EPICS
  base IOC that raised it) to the moment procServ's control port receives the
  kill (^X), seen by a byte-level relay in front of procServ; ``delay = 0``.
  Peer: the existing script's 10 s poll. Its latency is the wait for the next
  poll plus one block read: computed over a uniform fault phase from measured
  reads (a real run would need minutes per sample), and checked with a short
  real run of a faithful poller.
* Recovery overhead: fault → watch STATE OK (server timestamps), minus the bare
  time procServ needs to restart the same IOC (^X, ^X, until a fresh CA client
  reads the PV).
* Scale: one IOC, 200 watches of 10 PVs = 2,000 PVs on 20 EPICS base IOCs of 100
  devices each. Idle CPU of the watching IOC; then 10 % of the PVs (one per
  watch) go INVALID at once and every watch must act within 1 s (DRYRUN on,
  so nothing is restarted).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from caproto.sync.client import write

from devsupport.epics_base import SimDevice, base_ioc_env, sim_command
from devsupport.waiting import wait_for

from .common import BgrIoc, fresh_prefix, median, percentile

NAME = "recovery"
PORTS = 28  # detection: 2; poller: 3; scale: 21; spare: 2

OK = 1  # the index of OK in a watch's STATE (a time-type monitor gives no labels)
FAULTS = 15  # detection → restart samples
BARE = 5  # bare procServ restarts
POLL_PERIOD = 10.0  # the existing script's poll
POLLER_REAL = 2  # real samples of the faithful poller
SCALE_IOCS = 20
SCALE_DEVICES = 100
SCALE_PVS_PER_WATCH = 10
IDLE_SECONDS = 10.0
GOAL_P99_MS = 100.0
GOAL_SPEEDUP = 50.0
GOAL_OVERHEAD = 0.10
GOAL_IDLE_CPU = 2.0
GOAL_ACT_S = 1.0


class KillRelay:
    """A TCP relay in front of procServ's control port that notes when ^X passes."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.kills: list[float] = []  # time.time() of each first ^X of a connection
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state = {"seen": False}
            threading.Thread(target=self._pipe, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, state: dict | None) -> None:
        try:
            while True:
                # As a CA client here would: acknowledge at once, or procServ's
                # Nagle holds its next piece of text for a delayed ACK (~40 ms).
                src.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                data = src.recv(4096)
                if not data:
                    break
                if state is not None and not state["seen"] and b"\x18" in data:
                    state["seen"] = True
                    self.kills.append(time.time())
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop = True
        self.server.close()


def _procserv_keys(port: int, keys: list[tuple[bytes, bytes | None]]) -> float:
    """Send each key, waiting for the text after it; the time.time() the first key went."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while b"connected (plus you)" not in buf:
        buf += sock.recv(4096)
    first = 0.0
    for key, until in keys:
        buf = b""
        sock.sendall(key)
        first = first or time.time()
        while until is not None and until not in buf:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            buf += sock.recv(4096)
    sock.close()
    return first


class ValueWatcher:
    """A fresh caproto client monitoring ``name``; INVALID updates' timestamps go to ``out``."""

    def __init__(self, name: str, out: list[float]):
        self.name, self.out = name, out

    def __enter__(self) -> ValueWatcher:
        from caproto.threading.client import Context

        self.context = Context()
        (pv,) = self.context.get_pvs(self.name, timeout=5.0)
        self.first = threading.Event()
        self.sub = pv.subscribe(data_type="time")
        self.sub.add_callback(self._on_value)  # a bound method: kept alive by self
        if not self.first.wait(10.0):
            raise TimeoutError(f"no value from {self.name}")
        return self

    def _on_value(self, sub: Any, response: Any) -> None:
        self.first.set()
        if response.metadata.severity == 3:
            self.out.append(response.metadata.timestamp)

    def __exit__(self, *exc: object) -> None:
        self.sub.clear()
        self.context.disconnect()


def _fresh_read(name: str) -> bool:
    from caproto.sync.client import read

    try:
        read(name, timeout=0.05, repeater=False)
        return True
    except Exception:
        return False


def _detection_and_overhead(workdir: Path, pool: Any) -> dict:
    import epics

    prefix = fresh_prefix("RECT")
    # Auto restart ON, holdoff 15 s, as IBEX has it.
    target = SimDevice(workdir, prefix=prefix, port=pool.take(), name="SIM", holdoff=15).start()
    relay = KillRelay(target.control_port)
    value_pv = f"{prefix}DEV:VALUE"
    settings = f"""
        [[watch]]
        name = "REC"
        pvs = ["{value_pv}"]
        delay = 0.0
        restart = ["SIM"]
        procserv = {{ SIM = "127.0.0.1:{relay.port}" }}
        verify_timeout = 30.0
        max_restarts = 1000
        window = 60.0
        backoff = 1.0
    """
    ioc = BgrIoc(workdir / "ioc", port=pool.take(), prefix=fresh_prefix("REC"), scripts={},
                 settings=settings, slots=1)  # fmt: skip
    invalid: list[float] = []
    oks: list[float] = []
    try:
        wait_for(lambda: epics.caget(value_pv, timeout=0.5) is not None, 30, "the target IOC")
        ioc.start()

        def on_state(value=None, timestamp=None, **kw):
            if value == OK:
                oks.append(timestamp)

        state = epics.PV(ioc.pv("BGRSCRPT:WATCH:REC:STATE"), form="time", callback=on_state)
        alarm = ioc.pv("BGRSCRPT:WATCH:REC:ALARM")
        detect, recover = [], []
        for _ in range(FAULTS):
            wait_for(lambda: epics.caget(alarm, as_string=True, use_monitor=False) == "NO_ALARM",
                     30, "the watch to see the PV healthy", every=0.01)  # fmt: skip
            n_inv, n_kill, n_ok = len(invalid), len(relay.kills), len(oks)
            # A fresh client each time: libca, with no CA repeater here, would take
            # its time to find the restarted IOC again.
            with ValueWatcher(value_pv, invalid):
                write(f"{prefix}DEV:FAULT", 1, notify=True, timeout=5.0, repeater=False)

                def killed(i: int = n_inv, k: int = n_kill) -> bool:
                    return len(invalid) > i and len(relay.kills) > k

                wait_for(killed, 10, "the kill", every=0.005)
                # Only an OK stamped after the fault counts: libca's flow control
                # (EVENTS_OFF/ON) makes the server resend the current OK, old stamp.
                fault = invalid[n_inv]

                def ok_again(n: int = n_ok, fault: float = fault) -> float | None:
                    return next((t for t in oks[n:] if t > fault), None)

                ok_at = wait_for(ok_again, 30, "watch OK again", every=0.01)
                detect.append(relay.kills[n_kill] - fault)
                recover.append(ok_at - fault)
        state.clear_callbacks()

        # Bare: the same IOC restarted through procServ by hand, no watch involved.
        epics.caput(ioc.pv("BGRSCRPT:WATCH:REC:ENABLE"), 0, wait=True)
        _procserv_keys(target.control_port, [(b"\x14", b"Toggled auto restart")])  # to OFF
        bare = []
        for _ in range(BARE):
            wait_for(lambda: _fresh_read(value_pv), 30, "the target serving")
            t0 = _procserv_keys(
                target.control_port,
                [(b"\x18", b"shutting down"), (b"\x18", b"The PID of new child")],
            )
            wait_for(lambda: _fresh_read(value_pv), 30, "the target serving again", every=0.0)
            bare.append(time.time() - t0)
        _procserv_keys(target.control_port, [(b"\x14", b"Toggled auto restart")])  # back ON
    finally:
        ioc.stop()
        relay.close()
        target.stop()
    return {
        "detect_s": detect,
        "recover_s": recover,
        "bare_s": bare,
        "stopped_cleanly": ioc.stopped_cleanly,
    }


def _poller(workdir: Path, pool: Any) -> dict:
    """The existing script's loop: read the block, restart if INVALID, sleep 10 s."""
    import epics

    prefix = fresh_prefix("POLL")
    port = pool.take()
    proc = subprocess.Popen(
        sim_command(prefix, ["DEV"], SCAN="Passive"), env=base_ioc_env(port), stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    value_pv = f"{prefix}DEV:VALUE"
    try:
        wait_for(lambda: epics.caget(value_pv, timeout=0.5) is not None, 30, "the poller's target")
        reads = []
        for _ in range(50):  # one poll: a fresh read of value and severity, as cget does
            t0 = time.perf_counter()
            epics.caget(value_pv, use_monitor=False)
            epics.caget(f"{value_pv}.SEVR", use_monitor=False)
            reads.append(time.perf_counter() - t0)
        # Uniform fault phase over the poll period: latency = wait for the next poll + a read.
        rng = random.Random(1)
        model = [rng.uniform(0, POLL_PERIOD) + rng.choice(reads) for _ in range(10_000)]
        # A short real run: fault at a random phase, poll as the script does.
        real = []
        for i in range(POLLER_REAL):
            # a fresh device: the fault latches until restart, so use another one
            dev = f"DEV{i}"
            proc_i = subprocess.Popen(
                sim_command(prefix, [dev], SCAN="Passive"), env=base_ioc_env(pool.take()),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            try:
                pv = f"{prefix}{dev}:VALUE"

                def serving(pv: str = pv) -> bool:
                    return epics.caget(pv, timeout=0.5) is not None

                wait_for(serving, 30, "a device")
                phase = rng.uniform(0, POLL_PERIOD)
                start = time.monotonic()
                faulted = None
                next_poll = start
                while True:
                    now = time.monotonic()
                    if faulted is None and now - start >= phase:
                        epics.caput(f"{prefix}{dev}:FAULT", 1, wait=True)
                        faulted = time.time()
                    if now >= next_poll:
                        if epics.caget(f"{pv}.SEVR", use_monitor=False) == 3 and faulted:
                            real.append(time.time() - faulted)
                            break
                        next_poll += POLL_PERIOD
                    time.sleep(0.01)
            finally:
                proc_i.kill()
                proc_i.wait()
                if proc_i.stdin is not None:
                    proc_i.stdin.close()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
    return {
        "read_ms_p50": median(reads) * 1e3,
        "model_p50_s": median(model),
        "model_p99_s": percentile(model, 99),
        "real_s": real,
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scale(workdir: Path, pool: Any) -> dict:
    import epics

    prefix = fresh_prefix("SC")
    devices = [f"D{d:03d}" for d in range(SCALE_DEVICES)]
    procs = []
    watches = []
    try:
        for k in range(SCALE_IOCS):
            procs.append(subprocess.Popen(
                sim_command(f"{prefix}I{k:02d}:", devices, SCAN="Passive"),
                env=base_ioc_env(pool.take()),
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            ))  # fmt: skip
        per_ioc = SCALE_DEVICES // SCALE_PVS_PER_WATCH
        lines = []
        for k in range(SCALE_IOCS):
            for j in range(per_ioc):
                name = f"W{k:02d}_{j}"
                pvs = [
                    f"{prefix}I{k:02d}:{devices[j * SCALE_PVS_PER_WATCH + i]}:VALUE"
                    for i in range(SCALE_PVS_PER_WATCH)
                ]
                watches.append((name, pvs))
                lines += [
                    "[[watch]]",
                    f'name = "{name}"',
                    "pvs = [" + ", ".join(f'"{p}"' for p in pvs) + "]",
                    "delay = 0.0",
                    f'restart = ["I{k:02d}"]',
                    'via = "pv"',
                    "verify_timeout = 600.0",
                    "",
                ]
        ioc = BgrIoc(workdir / "scale", port=pool.take(), prefix=fresh_prefix("SCI"),
                     scripts={}, settings="\n".join(lines), slots=1)  # fmt: skip
        ioc.start()
        try:
            epics.caput(ioc.pv("BGRSCRPT:WATCH:DRYRUN"), 1, wait=True)
            alarms = [ioc.pv(f"BGRSCRPT:WATCH:{n}:ALARM") for n, _ in watches]

            def all_connected() -> bool:
                got = epics.caget_many(alarms, as_string=True, timeout=5.0)
                return all(v == "NO_ALARM" for v in got)

            wait_for(all_connected, 90, "every watched PV connected", every=0.5)
            assert ioc.proc is not None
            time.sleep(1.0)  # let the start-up settle before measuring idle
            c0, t0 = _cpu_seconds(ioc.proc.pid), time.monotonic()
            time.sleep(IDLE_SECONDS)
            idle_pct = 100.0 * (_cpu_seconds(ioc.proc.pid) - c0) / (time.monotonic() - t0)

            acted: dict[str, float] = {}
            lock = threading.Lock()

            def on_state(pvname=None, value=None, timestamp=None, **kw):
                if value is not None and value != OK:
                    with lock:
                        acted.setdefault(pvname, timestamp)

            states = [
                epics.PV(ioc.pv(f"BGRSCRPT:WATCH:{n}:STATE"), form="time", callback=on_state)
                for n, _ in watches
            ]
            wait_for(lambda: all(s.connected for s in states), 30, "STATE monitors")
            faulted = [pvs[0].replace(":VALUE", ":FAULT") for _, pvs in watches]
            for name in faulted:
                epics.caput(name, 1, wait=False)
            epics.ca.flush_io()
            wait_for(lambda: len(acted) == len(watches), 30, "every watch to act", every=0.05)
            # VALUE keeps the timestamp of the fault: nothing processes it again.
            act = []
            for name, pvs in watches:
                faulted_at = epics.PV(pvs[0], form="time", auto_monitor=False)
                faulted_at.get(timeout=5.0, use_monitor=False)
                act.append(acted[ioc.pv(f"BGRSCRPT:WATCH:{name}:STATE")] - faulted_at.timestamp)
            for s in states:
                s.clear_callbacks()
        finally:
            ioc.stop()
    finally:
        for p in procs:
            p.kill()
            p.wait()
            if p.stdin:
                p.stdin.close()
    return {
        "watches": len(watches),
        "pvs": len(watches) * SCALE_PVS_PER_WATCH,
        "iocs": SCALE_IOCS,
        "idle_cpu_pct": idle_pct,
        "act_max_s": max(act),
        "act_p50_s": median(act),
        "faulted": len(act),
        "stopped_cleanly": ioc.stopped_cleanly,
    }


def run(workdir: Path, pool: Any) -> dict:
    a = _detection_and_overhead(workdir, pool)
    b = _poller(workdir, pool)
    c = _scale(workdir, pool)
    detect_p99 = percentile(a["detect_s"], 99)
    bare = median(a["bare_s"])
    recover = median(a["recover_s"])
    overhead = recover - bare
    speedup = b["model_p99_s"] / detect_p99 if detect_p99 > 0 else float("inf")
    met_detect = detect_p99 * 1e3 <= GOAL_P99_MS and speedup >= GOAL_SPEEDUP
    met_overhead = overhead <= GOAL_OVERHEAD * bare
    met_idle = c["idle_cpu_pct"] <= GOAL_IDLE_CPU
    met_act = c["act_max_s"] <= GOAL_ACT_S
    return {
        "met": met_detect and met_overhead and met_idle and met_act,
        "ioc_stopped_cleanly": bool(a["stopped_cleanly"] and c["stopped_cleanly"]),
        "detect": {
            "samples": len(a["detect_s"]),
            "p50_ms": median(a["detect_s"]) * 1e3,
            "p99_ms": detect_p99 * 1e3,
            "max_ms": max(a["detect_s"]) * 1e3,
            "met": met_detect,
        },
        "poller": b,
        "speedup": speedup,
        "overhead": {
            "recover_median_s": recover,
            "recover_s": a["recover_s"],
            "bare_median_s": bare,
            "bare_s": a["bare_s"],
            "overhead_s": overhead,
            "fraction": overhead / bare if bare > 0 else float("inf"),
            "met": met_overhead,
        },
        "scale": {**c, "met_idle": met_idle, "met_act": met_act},
    }


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def summary_rows(r: dict) -> list[list[str]]:
    d, p, o, s = r["detect"], r["poller"], r["overhead"], r["scale"]
    return [
        [
            "Alarm recovery: detection → restart (delay 0)",
            f"p50 {d['p50_ms']:.0f} ms, p99 {d['p99_ms']:.0f} ms",
            f"10 s poll: p50 {p['model_p50_s']:.1f} s, p99 {p['model_p99_s']:.1f} s",
            f"{r['speedup']:.0f}× faster (p99)",
            f"p99 ≤ {GOAL_P99_MS:.0f} ms, ≥ {GOAL_SPEEDUP:.0f}× faster",
            _yes(d["met"]),
        ],
        [
            "Alarm recovery: overhead (fault → watch OK − bare restart)",
            f"{o['overhead_s'] * 1e3:.0f} ms (fault → OK median {o['recover_median_s']:.2f} s)",
            f"bare procServ restart: median {o['bare_median_s']:.2f} s",
            f"{100 * o['fraction']:.1f} % of bare",
            f"≤ {100 * GOAL_OVERHEAD:.0f} % of bare",
            _yes(o["met"]),
        ],
        [
            f"Alarm recovery: idle CPU, {s['pvs']:,} PVs on {s['iocs']} IOCs",
            f"{s['idle_cpu_pct']:.2f} % of a core",
            "—",
            "—",
            f"≤ {GOAL_IDLE_CPU:.0f} %",
            _yes(s["met_idle"]),
        ],
        [
            f"Alarm recovery: {s['faulted']} PVs INVALID at once → every watch acts",
            f"max {s['act_max_s'] * 1e3:.0f} ms (median {s['act_p50_s'] * 1e3:.0f} ms)",
            "—",
            "—",
            f"≤ {GOAL_ACT_S:.0f} s",
            _yes(s["met_act"]),
        ],
    ]


def section(r: dict) -> list[str]:
    d, p, o, s = r["detect"], r["poller"], r["overhead"], r["scale"]
    real = ", ".join(f"{x:.1f} s" for x in p["real_s"]) or "none"
    return [
        "## Alarm recovery",
        "",
        "A `[[watch]]` on the VALUE of `db_templates/sim_device.db` in an EPICS base IOC "
        "(epicscorelibs) run by Debian's procServ 2.7.0 (auto restart ON, holdoff 15 s); "
        "a fault (`caput …:FAULT 1`) makes VALUE INVALID until the IOC restarts.",
        "",
        f"**Detection → restart** ({d['samples']} faults, `delay = 0`): from VALUE's INVALID "
        "timestamp to procServ's control port receiving ^X (a byte relay in front of it): "
        f"p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms, max {d['max_ms']:.1f} ms. "
        "The existing script polls every 10 s: its latency is the wait for the next poll "
        "plus one block read (measured: median "
        f"{p['read_ms_p50']:.1f} ms), computed over a uniform fault phase: "
        f"p50 {p['model_p50_s']:.1f} s, p99 {p['model_p99_s']:.1f} s. A short real run of "
        f"that poller detected its faults after {real}. Ratio at p99: "
        f"{r['speedup']:.0f}×.",
        "",
        f"**Recovery overhead**: fault → the watch's STATE back to OK (server timestamps), "
        f"median {o['recover_median_s']:.3f} s; the same IOC restarted through procServ by hand "
        f"(^X, ^X, until a fresh CA read succeeds), median {o['bare_median_s']:.3f} s. "
        f"Overhead {o['overhead_s'] * 1e3:.0f} ms = {100 * o['fraction']:.1f} % of the bare "
        "restart (detection, the auto-restart toggles, reconnection and verification).",
        "",
        f"**Scale**: one IOC with {s['watches']} watches of 10 PVs = {s['pvs']:,} PVs on "
        f"{s['iocs']} EPICS base IOCs. Idle: {s['idle_cpu_pct']:.2f} % of a core over "
        f"{IDLE_SECONDS:.0f} s. Then {s['faulted']} PVs (one per watch, 10 %) turned INVALID "
        "at once (DRYRUN on: decided, logged, not sent): every watch left OK within "
        f"{s['act_max_s'] * 1e3:.0f} ms of its PV's INVALID timestamp "
        f"(median {s['act_p50_s'] * 1e3:.0f} ms).",
    ]
