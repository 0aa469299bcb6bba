"""Test harness shared by every test.

Channel Access for the tests: libca (through pyepics) reads its address list once,
when its context is created. So at session start we reserve a pool of free
loopback ports, list them all in ``EPICS_CA_ADDR_LIST`` with
``EPICS_CA_AUTO_ADDR_LIST=NO``, and give each IOC a port from the pool. Every
test uses a fresh PV prefix, so servers never answer for each other.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from bgrscrpt_ioc.epics_base import PORT_SHARD_VAR, free_ca_port

POOL_SIZE = 48
TEST_TAG_VAR = "BGRSCRPT_TEST_TAG"


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (CA uses both), outside the
    kernel's ephemeral range (see ``free_ca_port``)."""
    return free_ca_port()


def pytest_configure(config):
    # Parallel workers (pytest-xdist) each pick ports of their own shard.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        os.environ[PORT_SHARD_VAR] = f"{int(worker[2:])}/{count}"
    ports = []
    while len(ports) < POOL_SIZE:
        port = _free_port()
        if port not in ports:
            ports.append(port)
    config._ca_ports = ports
    os.environ["EPICS_CA_AUTO_ADDR_LIST"] = "NO"
    os.environ["EPICS_CA_ADDR_LIST"] = " ".join(f"127.0.0.1:{p}" for p in ports)
    os.environ["EPICS_CA_REPEATER_PORT"] = str(_free_port())
    os.environ["EPICS_CAS_BEACON_ADDR_LIST"] = "127.255.255.255"
    os.environ["EPICS_CAS_AUTO_BEACON_ADDR_LIST"] = "NO"
    os.environ["EPICS_CA_MAX_ARRAY_BYTES"] = "1000000"
    # An inherited server port would put every IOC on one port.
    os.environ.pop("EPICS_CA_SERVER_PORT", None)
    os.environ.pop("EPICS_CAS_SERVER_PORT", None)
    os.environ.pop("EPICS_CAS_INTF_ADDR_LIST", None)
    os.environ.pop("MYPVPREFIX", None)
    # IBEX's genie_python is installed for the tests (the oracle): scripts run by the
    # IOCs under test use the IOC's own, unless a test says otherwise.
    os.environ["BGRSCRPT_GENIE_PYTHON"] = "kit"


class PortPool:
    """Hands out the reserved ports round-robin."""

    def __init__(self, ports: list[int]):
        self.ports = ports
        self.next = 0

    def take(self) -> int:
        port = self.ports[self.next % len(self.ports)]
        self.next += 1
        return port


@pytest.fixture(scope="session")
def port_pool(request) -> PortPool:
    return PortPool(request.config._ca_ports)


@pytest.fixture
def prefix() -> str:
    """A fresh PV prefix, so no two tests ever see each other's PVs."""
    return f"T{uuid.uuid4().hex[:10].upper()}:"


def _tagged_pids(tag: str) -> list[int]:
    needle = f"{TEST_TAG_VAR}={tag}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def test_tag(monkeypatch) -> str:
    """Tags every process the test starts; the test fails if any is left running."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TEST_TAG_VAR, tag)
    yield tag
    # A process already sent SIGKILL may take a moment to be gone.
    deadline = time.monotonic() + 3.0
    while True:
        left = [pid for pid in _tagged_pids(tag) if not _is_zombie(pid)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
