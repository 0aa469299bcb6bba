"""Where the IOC listens for searches and sends beacons, from its interfaces and settings."""

from __future__ import annotations

import socket

import pytest

from bgrscrpt_ioc.ca import netif
from bgrscrpt_ioc.ca.discovery import (
    LOOPBACK_BROADCAST,
    CannotServe,
    PortInUse,
    beacon_destinations,
    broadcast_addresses,
)

LO = netif.Interface("lo", "127.0.0.1", "255.0.0.0", "127.255.255.255", loopback=True)
ETH = netif.Interface("eth0", "10.1.2.3", "255.255.255.0", "10.1.2.255", loopback=False)
ETH1 = netif.Interface("eth1", "192.168.7.9", "255.255.0.0", "192.168.255.255", loopback=False)
PTP = netif.Interface("tun0", "10.9.0.1", "255.255.255.255", "10.9.0.1", loopback=False)
TABLE = [LO, ETH, ETH1, PTP]
LIST, AUTO = "EPICS_CAS_BEACON_ADDR_LIST", "EPICS_CAS_AUTO_BEACON_ADDR_LIST"


@pytest.mark.parametrize(
    ("served", "env", "expected"),
    [
        # Each served interface's broadcast address: loopback's for loopback.
        (["127.0.0.1"], {}, [LOOPBACK_BROADCAST]),
        (["10.1.2.3"], {}, ["10.1.2.255"]),
        (["10.1.2.3", "192.168.7.9"], {}, ["10.1.2.255", "192.168.255.255"]),
        # The wildcard: every non-loopback interface.
        (["0.0.0.0"], {}, ["10.1.2.255", "192.168.255.255", "10.9.0.1"]),
        # The list comes first; "automatic" adds the interfaces' unless NO.
        (["10.1.2.3"], {LIST: "10.1.2.7 h:5999"}, ["10.1.2.7", "h:5999", "10.1.2.255"]),
        (["10.1.2.3"], {LIST: "10.1.2.7", AUTO: "NO"}, ["10.1.2.7"]),
        (["10.1.2.3"], {AUTO: "no"}, [LOOPBACK_BROADCAST]),
        (["10.1.2.3"], {AUTO: "YES"}, ["10.1.2.255"]),
        # An address no interface has: nothing to derive from (the IOC cannot bind it).
        (["10.5.5.5"], {}, [LOOPBACK_BROADCAST]),
    ],
)  # fmt: skip
def test_beacon_destinations(served, env, expected):
    assert beacon_destinations(served, env, TABLE) == expected


def test_wildcard_with_no_network_beacons_on_loopback():
    assert beacon_destinations(["0.0.0.0"], {}, [LO]) == [LOOPBACK_BROADCAST]


def test_searches_are_heard_on_each_served_subnets_broadcast_address():
    heard = broadcast_addresses(["127.0.0.1", "10.1.2.3", "0.0.0.0", "10.9.0.1", "10.5.5.5"], TABLE)
    assert heard == {
        "127.0.0.1": [LOOPBACK_BROADCAST],
        "10.1.2.3": ["10.1.2.255"],
        "0.0.0.0": [],  # hears every broadcast already
        "10.9.0.1": [],  # a point-to-point link has no broadcast of its own
        "10.5.5.5": [],
    }


def test_this_hosts_interfaces_include_loopback_with_its_broadcast():
    found = netif.interfaces()
    lo = [i for i in found if i.address == "127.0.0.1"]
    assert lo and lo[0].loopback and lo[0].broadcast == LOOPBACK_BROADCAST


def test_proc_addresses_are_read_in_host_order_and_ipv6_maps_to_ipv4():
    assert netif._address("0100007F") == "127.0.0.1"
    assert netif._address("00000000000000000000000000000000") == "0.0.0.0"
    assert netif._address("0000000000000000FFFF00000100007F") == "127.0.0.1"


def test_holders_of_a_listening_port_are_found_by_inode():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        bound = netif.bound_sockets("tcp", port)
        assert [address for address, _ in bound] == ["127.0.0.1"]
        holders = netif.holders({inode for _, inode in bound})
    assert [h.pid for h in holders] == [__import__("os").getpid()]


def test_port_in_use_is_not_an_os_error():
    # The CLI reports OSError as exit status 1; a taken port is a setting to fix: 2.
    assert issubclass(PortInUse, CannotServe) and not issubclass(CannotServe, OSError)
