"""``[access]`` against the real IOC: address entries match the client's real peer
address, never the host name it reports about itself.

A client on this machine can connect from any loopback address (127.0.0.0/8), so a
client "at 127.0.0.2" is a second host here. The client is a minimal raw CA client
(caproto's protocol objects over a socket bound to the source address, which libca
cannot choose); what is checked is the access right the IOC grants it, the answer
that EPICS clients (CS-Studio, caput) act on.
"""

from __future__ import annotations

import socket
import time

import caproto as ca

from tests.integration.harness import Ioc

FAST = "[supervisor]\nstartsecs = 0.5\n"


def granted(ioc: Ioc, suffix: str, *, source: str, host: str, user: str = "ops") -> bool:
    """Whether the IOC grants write access to ``suffix`` to a client connecting from
    ``source`` that calls itself ``host``."""
    address = ("127.0.0.1", ioc.port)
    circuit = ca.VirtualCircuit(ca.CLIENT, address, 0)
    channel = ca.ClientChannel(ioc.pv(suffix), circuit)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(5.0)
        sock.connect(address)
        hello = (ca.VersionRequest(0, 13), ca.HostNameRequest(host), ca.ClientNameRequest(user))
        sock.sendall(b"".join(circuit.send(*hello)))
        sock.sendall(b"".join(circuit.send(channel.create())))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            assert data, "the IOC closed the circuit"
            commands, _ = circuit.recv(data)
            for command in commands:
                circuit.process_command(command)
                if isinstance(command, ca.AccessRightsResponse):
                    return bool(command.access_rights & ca.AccessRights.WRITE)
    raise AssertionError(f"no access rights for {ioc.pv(suffix)} within 5 s")


def test_an_address_entry_admits_the_address_and_not_a_client_that_claims_it(make_ioc):
    ioc = make_ioc(FAST + '\n[access]\nwrite_hosts = ["127.0.0.1"]\n', slots=1).start()
    assert granted(ioc, "BGRSCRPT_01:START", source="127.0.0.1", host="any-name")
    # Another host that reports the allowed address as its name: read only.
    assert not granted(ioc, "BGRSCRPT_01:START", source="127.0.0.2", host="127.0.0.1")
    assert not granted(ioc, "BGRSCRPT_01:PID", source="127.0.0.1", host="x")  # read-only PV
    assert ioc.stop() == 0


def test_a_network_entry_admits_its_addresses(make_ioc):
    ioc = make_ioc(FAST + '\n[access]\nwrite_hosts = ["127.0.0.0/31"]\n', slots=1).start()
    assert granted(ioc, "BGRSCRPT_01:STOP", source="127.0.0.1", host="a")
    assert not granted(ioc, "BGRSCRPT_01:STOP", source="127.0.0.2", host="a")
    assert ioc.stop() == 0


def test_require_address_ignores_the_name_a_client_reports(make_ioc):
    settings = FAST + '\n[access]\nwrite_hosts = ["127.0.0.2", "ops"]\nrequire_address = true\n'
    ioc = make_ioc(settings, slots=1).start()
    # "ops" has no address here: it admits nobody, and the IOC says so at start.
    assert "write_hosts: ops has no address now: it admits no client" in ioc.output()
    assert not granted(ioc, "BGRSCRPT_01:START", source="127.0.0.1", host="ops")
    assert granted(ioc, "BGRSCRPT_01:START", source="127.0.0.2", host="anything")
    assert ioc.stop() == 0
