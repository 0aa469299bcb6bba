"""Test harness shared by every test.

Channel Access for the tests: libca (through pyepics) reads its address list once,
when its context is created. So at session start we reserve a pool of free
loopback ports, list them all in ``EPICS_CA_ADDR_LIST`` with
``EPICS_CA_AUTO_ADDR_LIST=NO``, and give each IOC a port from the pool. Every
test uses a fresh PV prefix, so servers never answer for each other.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from devsupport.ca_env import point_ca_at
from devsupport.ports import PORT_SHARD_VAR, PortPool, free_ca_port, reserve_ports
from devsupport.processes import kill_tagged

POOL_SIZE = 48
TEST_TAG_VAR = "BGRSCRPT_TEST_TAG"

# Tests written before devsupport import the port finder by this name.
_free_port = free_ca_port


def pytest_configure(config):
    # Parallel workers (pytest-xdist) each pick ports of their own shard.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        os.environ[PORT_SHARD_VAR] = f"{int(worker[2:])}/{count}"
    config._ca_ports = reserve_ports(POOL_SIZE)
    point_ca_at(config._ca_ports)
    # IBEX's genie_python is installed for the tests (the oracle): scripts run by the
    # IOCs under test use the IOC's own, unless a test says otherwise.
    os.environ["BGRSCRPT_GENIE_PYTHON"] = "kit"


@pytest.fixture(scope="session")
def port_pool(request) -> PortPool:
    """The reserved ports, handed out round-robin."""
    return PortPool(request.config._ca_ports, cycle=True)


@pytest.fixture
def prefix() -> str:
    """A fresh PV prefix, so no two tests ever see each other's PVs."""
    return f"T{uuid.uuid4().hex[:10].upper()}:"


@pytest.fixture
def test_tag(monkeypatch) -> Iterator[str]:
    """Tags every process the test starts; the test fails if any is left running."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TEST_TAG_VAR, tag)
    yield tag
    left = kill_tagged(TEST_TAG_VAR, tag)
    assert not left, f"processes left behind: {left}"
