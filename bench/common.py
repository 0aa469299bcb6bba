"""What every figure needs: loopback CA ports, the IOC and the EPICS base IOC as
subprocesses, waiting on conditions, percentiles, the machine, and the leftover check.

Nothing here imports ``epics`` at module level: libca reads its address list once,
when its context is created, so :func:`setup_ca_environment` must run first.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bgrscrpt_ioc.epics_base import base_ioc_environment, free_ca_port

REPO = Path(__file__).resolve().parent.parent
DB_TEMPLATES = REPO / "db_templates"
TAG_VAR = "BGRSCRPT_BENCH_TAG"
"""Every process the bench starts (and every script the IOCs start) carries this tag."""

STARTUP_TIMEOUT = 30.0


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


class PortPool:
    """Ports reserved before libca starts, handed out one by one."""

    def __init__(self, ports: list[int]):
        self.ports = list(ports)
        self._next = 0

    def take(self) -> int:
        if self._next >= len(self.ports):
            raise RuntimeError("bench port pool exhausted: raise PORTS in bench/__main__.py")
        port = self.ports[self._next]
        self._next += 1
        return port


def setup_ca_environment(count: int) -> PortPool:
    """Reserve ``count`` loopback ports and point Channel Access at exactly those.

    Must run before ``import epics`` anywhere in this process.
    """
    if "epics" in sys.modules:
        raise RuntimeError("setup_ca_environment() must run before epics is imported")
    ports: list[int] = []
    while len(ports) < count:
        ports.append(free_port(ports))
    env = os.environ
    env["EPICS_CA_AUTO_ADDR_LIST"] = "NO"
    env["EPICS_CA_ADDR_LIST"] = " ".join(f"127.0.0.1:{p}" for p in ports)
    env["EPICS_CA_REPEATER_PORT"] = str(free_port(ports))
    env["EPICS_CAS_BEACON_ADDR_LIST"] = "127.255.255.255"
    env["EPICS_CAS_AUTO_BEACON_ADDR_LIST"] = "NO"
    env["EPICS_CA_MAX_ARRAY_BYTES"] = "1000000"
    # An inherited server port would put every IOC on one port.
    for name in ("EPICS_CA_SERVER_PORT", "EPICS_CAS_SERVER_PORT", "EPICS_CAS_INTF_ADDR_LIST"):
        env.pop(name, None)
    env.pop("MYPVPREFIX", None)
    # Measure what an installation runs: pip writes every module's .pyc at install
    # time, so a script's start does not compile the IOC's sitecustomize each time.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env[TAG_VAR] = uuid.uuid4().hex
    return PortPool(ports)


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


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


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


class BgrIoc:
    """One bgrscrpt_ioc subprocess on its own port, with its own config and var dirs."""

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
        self.workdir = workdir
        self.port = port
        self.prefix = prefix
        self.scripts = scripts
        self.settings = settings
        self.slots = slots
        self.extra_env = env or {}
        self.config_dir = workdir / "config"
        self.var_dir = workdir / "var"
        self.out_path = workdir / "ioc.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped_cleanly: bool | None = None

    def pv(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bgrscrpt_ioc",
            "--prefix",
            self.prefix,
            "--config-dir",
            str(self.config_dir),
            "--var-dir",
            str(self.var_dir),
            "--slots",
            str(self.slots),
            "--log-level",
            "WARNING",
        ]

    def start(self) -> BgrIoc:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.var_dir.mkdir(parents=True, exist_ok=True)
        if self.settings:
            (self.config_dir / "bgrscrpt.toml").write_text(textwrap.dedent(self.settings))
        for name, body in self.scripts.items():
            (self.config_dir / name).write_text(textwrap.dedent(body))
        env = dict(os.environ)
        env.update(EPICS_CA_SERVER_PORT=str(self.port), EPICS_CAS_SERVER_PORT=str(self.port))
        env.update(self.extra_env)
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"IOC exited with {self.proc.returncode}:\n{self.output()}")
            return ca_get(self.pv("BGRSCRPT:VERSION"), timeout=0.5) is not None

        wait_for(up, STARTUP_TIMEOUT, f"bgrscrpt_ioc on port {self.port}")

    def wait_status(self, slot: str, states: str | tuple[str, ...], timeout: float = 20.0) -> str:
        wanted = (states,) if isinstance(states, str) else states

        def reached() -> str | None:
            status = ca_get(self.pv(f"{slot}:STATUS"), as_string=True)
            return status if status in wanted else None

        return wait_for(reached, timeout, f"{slot}:STATUS in {wanted}", every=0.01)

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the IOC stops every script first), SIGKILL only if that fails."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
                self.stopped_cleanly = True
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.stopped_cleanly = False
        self._out.close()

    def __enter__(self) -> BgrIoc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- the peer: an EPICS base IOC from db_templates --------------------------


class BaseIoc:
    """``python -m epicscorelibs.ioc`` serving the same records from db_templates.

    It reads an interactive shell from stdin (so stdin stays an open pipe) and
    ignores SIGTERM: it is asked to exit on stdin, then SIGKILLed.
    """

    def __init__(self, workdir: Path, *, port: int, prefix: str, slots: int = 2):
        self.workdir = workdir
        self.port = port
        self.prefix = prefix
        self.slots = slots
        self.out_path = workdir / "base-ioc.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def pv(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "epicscorelibs.ioc"]
        for i in range(1, self.slots + 1):
            args += [
                "-m",
                f"P={self.prefix},SLOT=BGRSCRPT_{i:02d}",
                "-d",
                str(DB_TEMPLATES / "bgrscrpt.db"),
            ]
        args += ["-m", f"P={self.prefix}", "-d", str(DB_TEMPLATES / "bgrscrpt_ioc.db")]
        return args

    def start(self) -> BaseIoc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = base_ioc_environment(os.environ, self.port, free_port())
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            env=env,
            cwd=self.workdir,
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                text = self.out_path.read_text(errors="replace")
                raise RuntimeError(f"base IOC exited with {self.proc.returncode}:\n{text}")
            return ca_get(self.pv("BGRSCRPT:VERSION"), timeout=0.5) is not None

        wait_for(up, STARTUP_TIMEOUT, f"the EPICS base IOC on port {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"exit()\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.proc.stdin is not None:
            self.proc.stdin.close()
        self._out.close()

    def __enter__(self) -> BaseIoc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
    tag = tag or os.environ[TAG_VAR]
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0"):
                continue
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        found.append((int(entry.name), cmd.decode(errors="replace").strip()))
    return found


def kill_leftovers(grace: float = 3.0) -> list[tuple[int, str]]:
    """SIGKILL what this run started and is still running (after ``grace``); report it."""
    deadline = time.monotonic() + grace
    left = tagged_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = tagged_processes()
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


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
