"""Ports for CA servers in tests, benchmarks and the demo."""

from __future__ import annotations

import socket

from devsupport.ports import _ephemeral_ports, free_ca_port


def test_a_ca_port_is_free_and_never_one_a_client_socket_could_get():
    ephemeral = _ephemeral_ports()
    taken: list[int] = []
    for _ in range(50):
        port = free_ca_port(avoid=taken)
        assert port not in ephemeral and port not in taken
        taken.append(port)
        # Free for both protocols right now.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", port))
    # A client's UDP socket bound to port 0 lands in the ephemeral range.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        assert client.getsockname()[1] in ephemeral


def test_a_port_in_use_is_not_handed_out(monkeypatch):
    first, second = free_ca_port(), free_ca_port()
    offered = iter([first, first, second])
    monkeypatch.setattr("devsupport.ports.random.choice", lambda ports: next(offered))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", first))  # taken for UDP only: still not free for CA
        assert free_ca_port() == second
