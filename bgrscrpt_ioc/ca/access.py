"""Who may write: host and user rules in the spirit of an EPICS access security file.

What Channel Access can tell about a client: the address its circuit comes from
(the TCP peer, which the network vouches for) and the host and user names it
reports about itself (CA's host name and client name messages, which it may
choose freely). So, as EPICS base with ``asCheckClientIP=1``:

* a ``write_hosts`` entry that is an IP address or a network (``10.1.2.0/24``)
  matches the client's real peer address, never a name it reports;
* ``localhost`` (and this machine's own name) matches only a client on this
  machine: a circuit over loopback or from one of this machine's addresses;
* any other name matches the host name the client reports: a guard against
  mistakes, not an authentication; with ``require_address`` the name is looked
  up once at start-up and matches only the addresses it had then.

User names are always self-reported.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable

from caproto import AccessRights, ChannelData

from .channels import records_of
from .netif import interfaces

log = logging.getLogger(__name__)

CLIENT_ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "CLIENT_ADDRESS", default=None
)
"""The peer address of the circuit whose request is being served (set by the server
for each circuit's task; None outside one)."""

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _this_machine() -> set[str]:
    """Names a client on this machine may report; with the IOC on loopback, that is every client."""
    names = set(_LOOPBACK_NAMES)
    try:
        hostname = socket.gethostname().lower()
    except OSError:  # pragma: no cover - no hostname at all
        return names
    names.add(hostname)
    names.add(_short(hostname))
    return names


def _own_addresses() -> set[ipaddress.IPv4Address]:
    """This machine's own IPv4 addresses: a client here may connect to any of them."""
    try:
        return {ipaddress.IPv4Address(i.address) for i in interfaces()}
    except OSError:  # pragma: no cover - no interfaces to list
        return set()


def _is_loopback(host: str, local_names: set[str]) -> bool:
    if host in local_names:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _short(host: str) -> str:
    """The first label of a host name; an IP address as it is."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.split(".")[0]
    return host


def _network(entry: str) -> Network | None:
    """An IP address (as a one-address network) or a network; None for a name."""
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def resolve(name: str) -> list[Network]:
    """The addresses ``name`` has now, as one-address networks ([] when it has none)."""
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return sorted(
        {ipaddress.ip_network(str(info[4][0]).split("%", 1)[0]) for info in infos},
        key=str,
    )


class WriteRule:
    """Matches a client against ``write_hosts`` and ``write_users``.

    A list that is None imposes no condition; when both are given, both must
    match. Address and network entries match the client's peer address; a loopback
    name ("localhost", this machine's own name) matches a peer on this machine;
    other names compare case-insensitively with the host name the client
    reports, a short name matching its fully qualified form. With
    ``require_address`` a name matches only the addresses it resolved to when the
    rule was made. User names compare case-insensitively (IBEX runs on Windows).

    When the peer address is not known (None), the reported host name stands in
    for it, as it did before addresses were checked.
    """

    def __init__(
        self,
        write_hosts: Iterable[str] | None,
        write_users: Iterable[str] | None,
        *,
        require_address: bool = False,
        resolver: Callable[[str], list[Network]] = resolve,
    ):
        self._local = _this_machine()
        self._own_addresses = _own_addresses()
        self.require_address = require_address
        self.hosts = None if write_hosts is None else {h.strip().lower() for h in write_hosts}
        self.users = None if write_users is None else {u.strip().lower() for u in write_users}
        self.networks: list[Network] = []
        self.names: set[str] = set()
        self._hosts_include_local = False  # a loopback name or address is listed
        self._names_include_local = False  # a loopback name ("localhost", this machine's)
        for host in self.hosts or ():
            network = _network(host)
            if _is_loopback(host, self._local):
                self._hosts_include_local = True
            if network is not None:
                self.networks.append(network)
            elif _is_loopback(host, self._local):
                self._names_include_local = True
            elif require_address:
                found = resolver(host)
                if not found:
                    log.warning("write_hosts: %s has no address now: it admits no client", host)
                self.networks.extend(found)
            else:
                self.names.add(host)

    def host_matches(self, host: str | None, address: str | None = None) -> bool:
        if self.hosts is None:
            return True
        peer = _address(address)
        if peer is not None:
            if self._names_include_local and (peer.is_loopback or peer in self._own_addresses):
                return True
            if any(peer in network for network in self.networks):
                return True
            if self.require_address:
                return False
            return self._name_matches(host, loopback=False)
        # No peer address known: what the client says is all there is.
        if not host or self.require_address:
            return False
        host = host.strip().lower()
        reported = _address(host)
        if reported is not None and any(reported in network for network in self.networks):
            return True
        return self._name_matches(host, loopback=self._hosts_include_local)

    def _name_matches(self, host: str | None, *, loopback: bool) -> bool:
        if not host:
            return False
        host = host.strip().lower()
        if host in self.names or _short(host) in self.names:
            return True
        if any(_short(h) == host for h in self.names):
            return True
        return loopback and _is_loopback(host, self._local)

    def user_matches(self, user: str | None) -> bool:
        if self.users is None:
            return True
        return bool(user) and user.strip().lower() in self.users  # type: ignore[union-attr]

    def allows(self, host: str | None, user: str | None, address: str | None = None) -> bool:
        """May this client write? ``address``: its peer address, when known."""
        return self.host_matches(host, address) and self.user_matches(user)


def _restricted(
    check: Callable[[str, str], AccessRights], rule: WriteRule
) -> Callable[[str, str], AccessRights]:
    def check_access(hostname: str, username: str) -> AccessRights:
        access = AccessRights(check(hostname, username))
        if rule.allows(hostname, username, CLIENT_ADDRESS.get()):
            return access
        return access & ~AccessRights.WRITE

    return check_access


def apply_access(
    pvdb: dict[str, ChannelData],
    *,
    write_hosts: list[str] | None,
    write_users: list[str] | None,
    require_address: bool = False,
) -> None:
    """Limit writes in ``pvdb`` (and its record fields) to matching hosts and users.

    With both lists None nothing changes. Otherwise a matching client keeps the
    access a channel had (read-only stays read-only) and any other client may
    only read. Call before the server starts: CA tells a client its rights when
    it connects. Calling twice applies both rules.
    """
    if write_hosts is None and write_users is None:
        return
    rule = WriteRule(write_hosts, write_users, require_address=require_address)
    for channel in records_of(pvdb.values()):
        # caproto asks channel.check_access at connect and at every write
        # (server/common.py, ChannelData.auth_write): a per-instance override
        # covers both.
        channel.check_access = _restricted(channel.check_access, rule)
