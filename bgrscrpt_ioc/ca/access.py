"""Who may write: host and user rules in the spirit of an EPICS access security file.

As in EPICS, the host and user are what the client reports about itself (CA's
host name and client name messages): a guard against mistakes, not an
authentication.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable

from caproto import AccessRights, ChannelData

from .channels import records_of

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


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


class WriteRule:
    """Matches a client against ``write_hosts`` and ``write_users``.

    A list that is None imposes no condition; when both are given, both must
    match. Host names compare case-insensitively and a short name matches its
    fully qualified form; "localhost", 127.0.0.1, ::1 and this machine's own name
    are one host. User names compare case-insensitively (IBEX runs on Windows).
    """

    def __init__(self, write_hosts: Iterable[str] | None, write_users: Iterable[str] | None):
        self._local = _this_machine()
        self.hosts = None if write_hosts is None else {h.strip().lower() for h in write_hosts}
        self.users = None if write_users is None else {u.strip().lower() for u in write_users}
        self._hosts_include_local = self.hosts is not None and any(
            _is_loopback(h, self._local) for h in self.hosts
        )

    def host_matches(self, host: str | None) -> bool:
        if self.hosts is None:
            return True
        if not host:
            return False
        host = host.strip().lower()
        if host in self.hosts or _short(host) in self.hosts:
            return True
        if any(_short(h) == host for h in self.hosts):
            return True
        return self._hosts_include_local and _is_loopback(host, self._local)

    def user_matches(self, user: str | None) -> bool:
        if self.users is None:
            return True
        return bool(user) and user.strip().lower() in self.users  # type: ignore[union-attr]

    def allows(self, host: str | None, user: str | None) -> bool:
        """May this client write?"""
        return self.host_matches(host) and self.user_matches(user)


def _restricted(
    check: Callable[[str, str], AccessRights], rule: WriteRule
) -> Callable[[str, str], AccessRights]:
    def check_access(hostname: str, username: str) -> AccessRights:
        access = AccessRights(check(hostname, username))
        if rule.allows(hostname, username):
            return access
        return access & ~AccessRights.WRITE

    return check_access


def apply_access(
    pvdb: dict[str, ChannelData],
    *,
    write_hosts: list[str] | None,
    write_users: list[str] | None,
) -> None:
    """Limit writes in ``pvdb`` (and its record fields) to matching hosts and users.

    With both lists None nothing changes. Otherwise a matching client keeps the
    access a channel had (read-only stays read-only) and any other client may
    only read. Call before the server starts: CA tells a client its rights when
    it connects. Calling twice applies both rules.
    """
    if write_hosts is None and write_users is None:
        return
    rule = WriteRule(write_hosts, write_users)
    for channel in records_of(pvdb.values()):
        # caproto asks channel.check_access at connect and at every write
        # (server/common.py, ChannelData.auth_write): a per-instance override
        # covers both.
        channel.check_access = _restricted(channel.check_access, rule)
