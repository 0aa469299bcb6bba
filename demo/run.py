"""``python -m demo``: the simulated instrument, the flaky device IOC under procServ,
and bgrscrpt_ioc supervising the demo's scripts and watching the flaky IOC.

Everything runs on 127.0.0.1, each server on its own Channel Access port. Every
child runs in a session of its own, so Ctrl-C reaches only this launcher, which
then stops them in order: the IOC (and with it every script), procServ (and
with it the flaky IOC), the simulation. Without a usable procServ the flaky IOC
and its watch are left out, and the launcher says so.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from bgrscrpt_ioc.ctl.ca import Client, wait_until
from devsupport.epics_base import base_ioc_environment

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().parent / "config"
SIM_DB = ROOT / "db_templates" / "sim_device.db"
DEMO_PREFIX = "IN:DEMO:"
DEMO_PROCSERV = "127.0.0.1:20001"
FLAKY = "FLAKY_01"
DEFAULT_PORTS = (5070, 5071, 5072)  # the IOC, the simulation, the flaky IOC
READY = "Ctrl-C stops everything."
FAULT_RATE = 1 / 600  # a random hardware fault every ten minutes, on average

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies, however it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def port_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def any_free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port_free(port):
            return port


def procserv_problem() -> str | None:
    """Why procServ cannot be used here, or None."""
    path = shutil.which("procServ")
    if path is None:
        return "procServ is not installed (Debian: apt-get install procserv)"
    try:
        subprocess.run([path, "--version"], capture_output=True, timeout=10, check=False)
    except OSError as exc:
        return f"procServ at {path} cannot run: {exc.strerror or exc}"
    return None


class Child:
    """One process of the demo, its output in ``VAR/logs/<name>.log``."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Child:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def stop(self, signum: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> None:
        """``signum`` to the process, SIGKILL to its whole session if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} did not stop on {signum.name}: killing it", flush=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


def write_config(target: Path, prefix: str, procserv: str | None) -> Path:
    """The demo's config dir in ``target``: its scripts, and its settings with this
    run's prefix and procServ endpoint (no watch without procServ)."""
    target.mkdir(parents=True, exist_ok=True)
    for script in CONFIG.glob("*.py"):
        shutil.copyfile(script, target / script.name)
    settings = (CONFIG / "bgrscrpt.toml").read_text()
    if procserv is None:
        settings = settings[: settings.index("# The flaky device IOC")]
    else:
        settings = settings.replace(DEMO_PROCSERV, procserv)
    (target / "bgrscrpt.toml").write_text(settings.replace(DEMO_PREFIX, prefix))
    return target


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix", default=DEMO_PREFIX, help=f"PV prefix (default {DEMO_PREFIX})")
    p.add_argument(
        "--ports",
        default=None,
        help="CA ports of the IOC, the simulation and the flaky IOC, "
        f"e.g. {','.join(map(str, DEFAULT_PORTS))} (the default; free ones if those are taken)",
    )
    p.add_argument("--procserv-port", type=int, default=None, help="flaky IOC's procServ port")
    p.add_argument("--var-dir", type=Path, default=ROOT / "var" / "demo", help="logs and state")
    p.add_argument("--run-period", type=float, default=180.0, help="seconds per DAE run")
    p.add_argument("--no-procserv", action="store_true", help="run as if procServ were missing")
    return p


def _ports(text: str | None) -> list[int]:
    if text is None:
        return [port if port_free(port) else any_free_port() for port in DEFAULT_PORTS]
    try:
        ports = [int(part) for part in text.split(",")]
    except ValueError:
        ports = []
    if len(ports) != 3 or len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports):
        raise ValueError(f"--ports {text!r}: give three different port numbers, IOC,SIM,FLAKY")
    return ports


class Demo:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.prefix = args.prefix
        self.ioc_port, self.sim_port, self.flaky_port = _ports(args.ports)
        self.var = args.var_dir.absolute()
        self.logs = self.var / "logs"
        self.children: list[Child] = []
        problem = "--no-procserv was given" if args.no_procserv else procserv_problem()
        self.procserv_problem = problem
        self.procserv: str | None = None
        if problem is None:
            port = args.procserv_port or (20001 if port_free(20001) else any_free_port())
            self.procserv = f"127.0.0.1:{port}"
        ports = [self.ioc_port, self.sim_port] + ([self.flaky_port] if self.procserv else [])
        self.addr_list = " ".join(f"127.0.0.1:{port}" for port in ports)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EPICS_CA", "EPICS_CAS"))}
        env.update(
            EPICS_CA_AUTO_ADDR_LIST="NO",
            EPICS_CA_ADDR_LIST=self.addr_list,
            EPICS_CAS_BEACON_ADDR_LIST="127.255.255.255",
            EPICS_CAS_AUTO_BEACON_ADDR_LIST="NO",
            MYPVPREFIX=self.prefix,
            PYTHONPATH=str(ROOT),
            # The demo's scripts use the IOC's genie_python, even where IBEX's is
            # installed (the test extra installs it): this instrument has no IBEX server.
            BGRSCRPT_GENIE_PYTHON="kit",
        )
        if "EPICS_CA_REPEATER_PORT" in os.environ:
            env["EPICS_CA_REPEATER_PORT"] = os.environ["EPICS_CA_REPEATER_PORT"]
        self.env = env
        # This process reads PVs too, as a client of the same servers.
        os.environ.update({k: v for k, v in env.items() if k.startswith("EPICS_CA")})

    def spawn(self, name: str, command: list[str], env: dict[str, str]) -> Child:
        child = Child(name, command, env, self.logs).start()
        self.children.append(child)
        return child

    def wait_pv(self, client: Client, suffix: str, child: Child, timeout: float = 30.0) -> None:
        def up() -> bool:
            if not child.running():
                raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
            return client.connected(suffix, timeout=0.5)

        if not wait_until(up, timeout):
            raise RuntimeError(
                f"{child.name} does not serve {client.name(suffix)}:\n{child.tail()}"
            )

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        config_dir = write_config(self.var / "config", self.prefix, self.procserv)
        py = sys.executable
        sim = self.spawn(
            "sim",
            [
                py,
                "-m",
                "demo.sim",
                "--prefix",
                self.prefix,
                "--run-period",
                str(self.args.run_period),
            ],
            {**self.env, "EPICS_CA_SERVER_PORT": str(self.sim_port)},
        )
        if self.procserv is not None:
            flaky = [
                shutil.which("procServ") or "procServ",
                "--foreground", "--quiet", "--holdoff", "2", "--name", FLAKY,
                "--logfile", str(self.logs / f"{FLAKY}.procserv.log"),
                "--ignore", "^D^C",
                "--port", self.procserv,
                # procServ 2.7 needs an absolute command path.
                os.path.abspath(py), "-m", "epicscorelibs.ioc",
                "-m", f"P={self.prefix},DEV={FLAKY},RATE={FAULT_RATE:.5f}", "-d", str(SIM_DB),
            ]  # fmt: skip
            self.flaky = self.spawn(FLAKY, flaky, base_ioc_environment(self.env, self.flaky_port))
        ioc = self.spawn(
            "bgrscrpt_ioc",
            [py, "-m", "bgrscrpt_ioc", "--prefix", self.prefix, "--config-dir", str(config_dir),
             "--var-dir", str(self.var / "ioc")],
            {**self.env, "EPICS_CA_SERVER_PORT": str(self.ioc_port), "ICPVARDIR": str(self.var)},
        )  # fmt: skip
        with Client(self.prefix, timeout=1.0) as client:
            self.wait_pv(client, "CS:SB:Temp_Sample", sim)
            if self.procserv is not None:
                self.wait_pv(client, f"{FLAKY}:VALUE", self.flaky)
            self.wait_pv(client, "BGRSCRPT:VERSION", ioc)
            # The plot takes a few seconds to come up (matplotlib); its URL says it has.
            self.plot_url = wait_until(lambda: client.value("BGRSCRPT_01:PLOT_URL"), 45.0)
            self.slots = {s: client.value(f"{s}:STATUS") for s in ("BGRSCRPT_01", "BGRSCRPT_02")}
        self.screens(config_dir)

    def screens(self, config_dir: Path) -> None:
        from bgrscrpt_ioc.screens.bob import write_bob
        from bgrscrpt_ioc.screens.layout import build_screen
        from bgrscrpt_ioc.screens.opi import write_opi

        screen = build_screen(["BGRSCRPT_01", "BGRSCRPT_02"], [FLAKY] if self.procserv else [])
        self.screen_dir = self.var / "screens"
        self.screen_dir.mkdir(exist_ok=True)
        (self.screen_dir / "demo.bob").write_text(write_bob(screen))
        (self.screen_dir / "demo.opi").write_text(write_opi(screen))

    def report(self) -> None:
        p = self.prefix
        watch = self.procserv is not None
        lines = [
            "",
            f"Demo instrument {p} is up (logs in {self.logs}).",
            f"  live plot (BGRSCRPT_01): {self.plot_url or 'not up: see BGRSCRPT_01:MSG and LOG'}",
            "  slots: " + ", ".join(f"{s} {state}" for s, state in self.slots.items()),
            f"  PVs: {p}BGRSCRPT_01:STATUS  {p}BGRSCRPT_02:LOG  {p}BGRSCRPT:HEARTBEAT",
            f"       {p}CS:SB:Temp_Sample  {p}CS:SB:Temp_SP  {p}DAE:RUNSTATE  {p}DAE:RUNNUMBER",
        ]
        if watch:
            lines.append(f"       {p}BGRSCRPT:WATCH:{FLAKY}:STATE  {p}{FLAKY}:VALUE")
        lines += [
            f"  screens (macro P={p}): {self.screen_dir}/demo.bob (Phoebus), demo.opi (CS-Studio)",
            "",
            "Try, in another terminal:",
            f'  export EPICS_CA_AUTO_ADDR_LIST=NO EPICS_CA_ADDR_LIST="{self.addr_list}"',
            f"  export MYPVPREFIX={p} ICPINSTSCRIPTROOT={self.var / 'config'}",
            "  bgrscrpt status                  # or: .venv/bin/python -m bgrscrpt_ioc.ctl status",
            "  bgrscrpt log 02 -f",
            "  bgrscrpt restart 01",
            f"  caput {p}CS:SB:Temp_SP 150       # the sample follows, the plot shows it",
        ]
        if self.procserv is not None:
            lines += [
                f"  caput {p}{FLAKY}:FAULT 1         # the device goes INVALID; watch"
                f" {FLAKY} restarts it via procServ",
                f"  bgrscrpt watch restart {FLAKY}",
                f"  telnet {self.procserv.replace(':', ' ')}           # the flaky IOC's procServ",
            ]
        else:
            lines += [
                "",
                f"Not running: the flaky device IOC and its watch {FLAKY}, because "
                f"{self.procserv_problem}.",
            ]
        lines += ["", READY]
        print("\n".join(lines), flush=True)

    def watch_children(self, stop: threading.Event) -> None:
        """Until Ctrl-C: say once if a child dies on its own (procServ restarts the flaky IOC)."""
        reported: set[str] = set()
        while not stop.wait(1.0):
            for child in self.children:
                if not child.running() and child.name not in reported:
                    reported.add(child.name)
                    print(
                        f"{child.name} exited ({child.returncode()}):\n{child.tail()}",
                        flush=True,
                    )

    def shutdown(self) -> None:
        # The IOC first: it stops every script's process group on SIGTERM. procServ
        # stops its child on SIGTERM (the EPICS IOC itself shrugs SIGTERM off).
        for child in reversed(self.children):
            child.stop(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _ports(args.ports)
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    demo = Demo(args)
    if demo.procserv_problem:
        print(
            f"note: {demo.procserv_problem}: the flaky IOC and its watch are left out", flush=True
        )
    status = 0
    try:
        demo.start()
        demo.report()
        demo.watch_children(stop)
    except RuntimeError as exc:
        print(f"python -m demo: error: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        print("stopping the demo ...", flush=True)
        demo.shutdown()
        print("stopped; nothing left running.", flush=True)
    return status
