"""What every figure needs: loopback CA ports, the IOC and the EPICS base IOC as
subprocesses, waiting on conditions, percentiles, the machine, and the leftover check.
The launchers, ports and process checks are :mod:`devsupport`'s (the tests use
them too); the names the figures import stay here.

Nothing here imports ``epics`` at module level: libca reads its address list once,
when its context is created, so :func:`setup_ca_environment` must run first.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

from devsupport import processes
from devsupport.ca_env import point_ca_at
from devsupport.ioc import Ioc
from devsupport.ports import PortPool, free_ca_port, reserve_ports

REPO = Path(__file__).resolve().parent.parent
TAG_VAR = "BGRSCRPT_BENCH_TAG"
"""Every process the bench starts (and every script the IOCs start) carries this tag."""


def shown_path(path: str | Path) -> str:
    """``path`` as the report shows it: relative to the repository or to the
    installation (``site-packages/...``), never this machine's absolute layout."""
    resolved = Path(path).resolve()
    if resolved.is_relative_to(REPO) and ".venv" not in resolved.relative_to(REPO).parts:
        return str(resolved.relative_to(REPO))
    parts = resolved.parts
    if "site-packages" in parts:
        return str(Path(*parts[parts.index("site-packages") :]))
    return resolved.name


# ---- ports and the CA environment ------------------------------------------


def free_port(avoid: Iterable[int] = ()) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (CA uses both), outside the
    kernel's ephemeral range (see ``free_ca_port``)."""
    return free_ca_port(avoid)


def setup_ca_environment(count: int) -> PortPool:
    """Reserve ``count`` loopback ports and point Channel Access at exactly those.

    Must run before ``import epics`` anywhere in this process.
    """
    if "epics" in sys.modules:
        raise RuntimeError("setup_ca_environment() must run before epics is imported")
    ports = reserve_ports(count)
    point_ca_at(ports)
    # Measure what an installation runs: pip writes every module's .pyc at install
    # time, so a script's start does not compile the IOC's sitecustomize each time.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ[TAG_VAR] = uuid.uuid4().hex
    return PortPool(ports, hint="raise PORTS in bench/__main__.py")


def fresh_prefix(what: str) -> str:
    return f"BENCH{uuid.uuid4().hex[:6].upper()}{what}:"


def json_lines_of(
    argv: list[str], what: str, *, cwd: Path, env: dict[str, str] | None = None
) -> list[Any]:
    """Run ``argv`` to the end (10 min at most); the JSON objects it printed, one a line.

    Raises RuntimeError, with the end of its stderr, if it fails.
    """
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


# ---- waiting and statistics -------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Iterable[float]) -> float:
    return percentile(values, 50.0)


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


# ---- the IOC under test -----------------------------------------------------


def ca_get(pvname: str, timeout: float = 1.0, **kw: Any) -> Any:
    import epics

    return epics.caget(pvname, timeout=timeout, **kw)


def pv_names(prefix: str, slots: int = 2) -> list[str]:
    """Every record the IOC serves, from the IOC itself (``--list-pvs``)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bgrscrpt_ioc",
            "--prefix",
            prefix,
            "--slots",
            str(slots),
            "--list-pvs",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


class BgrIoc(Ioc):
    """One bgrscrpt_ioc subprocess on its own port, with its own config and var dirs
    in ``workdir``: ``scripts`` (name: text) and ``settings`` are written there."""

    poll_every = 0.01
    startup_timeout = 30.0

    def __init__(
        self,
        workdir: Path,
        *,
        port: int,
        prefix: str,
        scripts: dict[str, str],
        settings: str = "",
        slots: int = 2,
        env: dict[str, str] | None = None,
    ):
        super().__init__(
            prefix=prefix,
            port=port,
            config_dir=workdir / "config",
            var_dir=workdir / "var",
            slots=slots,
            args=["--log-level", "WARNING"],
            env=env,
            log_path=workdir / "ioc.out",
            cwd=REPO,
        )
        self.workdir = workdir
        self.scripts = scripts
        self.settings = settings

    def start(self, wait: bool = True) -> Self:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        if self.settings:
            (self.config_dir / "bgrscrpt.toml").write_text(textwrap.dedent(self.settings))
        for name, body in self.scripts.items():
            (self.config_dir / name).write_text(textwrap.dedent(body))
        try:
            super().start(wait)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0, *, must_exit: bool = False) -> int:
        """As :meth:`Ioc.stop`, but a SIGKILL is noted in ``stopped_cleanly`` (and in
        the report), not raised."""
        return super().stop(timeout, must_exit=must_exit)


# ---- the machine ------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


_CAP_SYS_NICE = 23


def _realtime_note() -> str:
    """Whether the processes of this run could use real-time scheduling."""
    bounding = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                bounding = int(line.split()[1], 16)
    if not bounding >> _CAP_SYS_NICE & 1:
        return (
            "off: CAP_SYS_NICE not in the bounding set, so every process ran SCHED_OTHER, "
            "as under a service account"
            + (" (the bench runs as root and dropped it on purpose)" if os.geteuid() == 0 else "")
        )
    return "available: libca and EPICS base threads ran SCHED_FIFO"


def machine_info() -> dict[str, str]:
    import caproto
    import epics
    import epicscorelibs.version
    import psutil

    import bgrscrpt_ioc

    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    load1, load5, _ = os.getloadavg()
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": _cpu_model(),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "caproto": caproto.__version__,
        "epics_base": f"{epicscorelibs.version.base_version} (epicscorelibs "
        f"{epicscorelibs.version.version})",
        "pyepics": f"{epics.__version__} (libca {epics.ca.version()})",
        "psutil": psutil.__version__,
        "bgrscrpt_ioc": f"{bgrscrpt_ioc.__version__}, commit {commit or '?'}"
        + (" with uncommitted changes in tracked files" if dirty else ""),
        "loadavg_at_start": f"{load1:.2f} (1 min), {load5:.2f} (5 min)",
        "realtime_scheduling": _realtime_note(),
    }


# ---- leaving nothing behind -------------------------------------------------


def tagged_processes(tag: str | None = None) -> list[tuple[int, str]]:
    """(pid, command line) of every live process carrying this run's tag, except us."""
    return processes.tagged_processes(TAG_VAR, tag or os.environ[TAG_VAR])


def kill_leftovers(grace: float = 3.0) -> list[tuple[int, str]]:
    """SIGKILL what this run started and is still running (after ``grace``); report it."""
    return processes.kill_tagged(TAG_VAR, os.environ[TAG_VAR], grace)


# ---- diagnostics --------------------------------------------------------------

_SYS_PIDFD_GETFD = 438


def tcp_nodelay_of(pid: int, port: int) -> list[bool] | None:
    """TCP_NODELAY of each established connection of ``pid`` on local ``port``.

    Reads the server's own sockets (pidfd_getfd, Linux 5.6+; allowed for our own
    children). None when that is not possible here.
    """
    import ctypes

    import psutil

    try:
        conns = [
            c
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        ]
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
    except (OSError, psutil.Error, AttributeError):
        return None
    out = []
    try:
        for conn in conns:
            fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, conn.fd, 0)
            if fd < 0:
                return None
            with socket.socket(fileno=fd) as sock:
                out.append(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
    finally:
        os.close(pidfd)
    return out
