"""``python -m bench [--only NAME ...] [--output FILE]``: run the figures, write BENCHMARKS.md."""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime
from pathlib import Path

from .common import REPO, fresh_prefix, kill_leftovers, setup_ca_environment

CORE_FIGURES = ("start_latency", "ca_roundtrip", "load", "footprint")
CORE_PORTS = 6  # one per server: 1 + 2 + 1 + 2
# Figures of later parts of the IOC, each a module ``bench.<name>`` with NAME,
# PORTS, run(workdir, pool) -> dict, summary_rows(result) and section(result).
PLUGINS: tuple[str, ...] = ("plot", "recovery", "accounting", "stopped_client", "multihost")
# Ports are reserved before any module imports epics, so each plugin gets a budget.
PLUGIN_PORTS = 48
FIGURES = CORE_FIGURES + PLUGINS


NO_REALTIME_VAR = "BGRSCRPT_BENCH_NO_REALTIME"


def _rerun_without_realtime(argv: list[str]) -> None:
    """As root, run the bench again with CAP_SYS_NICE out of the bounding set.

    Run by root, libca and EPICS base give their threads SCHED_FIFO priority; the
    bench's client threads then preempt the IOC's (SCHED_OTHER) event loop on a
    shared core, and the EPICS base peer is immune. That measures root's privilege
    rather than the servers: an IOC under procServ or systemd runs as a service
    account, without real-time scheduling. Every process the bench starts
    inherits the reduced bounding set.
    """
    if os.geteuid() != 0 or os.environ.get(NO_REALTIME_VAR):
        return
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return
    os.environ[NO_REALTIME_VAR] = "1"
    command = [sys.executable, "-m", "bench", *argv]
    os.execv(setpriv, [setpriv, "--bounding-set", "-sys_nice", "--", *command])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _rerun_without_realtime(argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=FIGURES, help="run only these figures")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    figures = args.only or list(FIGURES)

    # Before anything imports epics: libca reads the address list once.
    pool = setup_ca_environment(CORE_PORTS + PLUGIN_PORTS * len(PLUGINS))
    # pyepics warns on every caget that times out while a server is starting up.
    warnings.filterwarnings("ignore", message=r"ca\.get.*timed out")

    import epics

    from . import ca_roundtrip, footprint, load, report, start_latency
    from .common import machine_info

    started = datetime.now().astimezone()
    t_start = time.monotonic()
    info = machine_info()
    results: dict[str, dict] = {}
    runners = {
        "start_latency": lambda d: start_latency.run(d, pool.take(), fresh_prefix("S")),
        "ca_roundtrip": lambda d: ca_roundtrip.run(
            d, pool.take(), pool.take(), fresh_prefix("R"), fresh_prefix("RB")
        ),
        "load": lambda d: load.run(d, pool.take(), fresh_prefix("L")),
        "footprint": lambda d: footprint.run(
            d, pool.take(), pool.take(), fresh_prefix("F"), fresh_prefix("FB")
        ),
    }
    plugins = {name: importlib.import_module(f"bench.{name}") for name in PLUGINS}
    for name, module in plugins.items():
        if module.PORTS > PLUGIN_PORTS:
            raise SystemExit(f"bench.{name} needs {module.PORTS} ports; raise PLUGIN_PORTS")
        runners[name] = functools.partial(module.run, pool=pool)
    with tempfile.TemporaryDirectory(prefix="bgrscrpt-bench-") as tmp:
        for name in figures:
            t0 = time.monotonic()
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            workdir = Path(tmp) / name
            workdir.mkdir()
            try:
                results[name] = runners[name](workdir)
            except Exception:
                results[name] = {"error": traceback.format_exc()}
            # The channels this figure opened lost their IOC when it stopped, and
            # libca would go on searching for them on every port of the address
            # list: the next figures' servers would be answering those searches.
            epics.ca.clear_cache()
            results[name]["elapsed_s"] = time.monotonic() - t0
            verdict = (
                "error"
                if "error" in results[name]
                else "not measured"
                if "not_measured" in results[name]
                else ("goal met" if results[name].get("met") else "goal NOT met")
            )
            print(
                f"bench: {name}: {verdict} ({results[name]['elapsed_s']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        leftovers = kill_leftovers()
    table = report.write(
        args.output,
        info=info,
        results=results,
        leftovers=leftovers,
        plugins=plugins,
        started=started.isoformat(timespec="seconds"),
        duration_s=time.monotonic() - t_start,
    )
    print(table)
    print(f"wrote {args.output}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
