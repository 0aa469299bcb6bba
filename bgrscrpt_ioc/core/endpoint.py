"""Endpoints and host names as the settings allow them: checked once, then trusted.

An endpoint is ``host:port`` (host an IPv4 dotted quad, a host name per
RFC 1123, or ``[IPv6]``), or ``unix:/absolute/path`` for a unix socket.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DIGITS_AND_DOTS = re.compile(r"[0-9.]+")
UNIX_PATH_MAX = 107
"""Bytes of a unix socket path (sun_path holds 108, with the terminating NUL)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a procServ control port listens: ``host``/``port``, or ``path`` for a unix socket."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)


def host_problem(host: str) -> str:
    """Why ``host`` is no IPv4 address or RFC 1123 host name ("" when it is one)."""
    if not host:
        return "no host"
    if _DIGITS_AND_DOTS.fullmatch(host):
        parts = host.split(".")
        if len(parts) != 4:
            return f"{host} is not an IPv4 address (four numbers 0-255, dot-separated)"
        for part in parts:
            if not part or len(part) > 3 or int(part) > 255 or (len(part) > 1 and part[0] == "0"):
                return f"{host} is not an IPv4 address (each of the four numbers is 0-255)"
        return ""
    if len(host) > 253:
        return "a host name is at most 253 characters"
    for label in host.split("."):
        if not _LABEL.fullmatch(label):
            return (
                f"{host!r} is not a host name (labels of letters, digits and '-', "
                "1-63 characters each, not starting or ending with '-')"
            )
    return ""


def ip_problem(host: str) -> str:
    """Why ``host`` is no IP address (v4 or v6) ("" when it is one)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"{host} is not an IP address"
    return ""


def network_problem(text: str) -> str:
    """Why ``text`` is no IP network such as ``10.1.2.0/24`` ("" when it is one)."""
    if "/" not in text:
        return f"{text} is not a network (address/prefix length)"
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        return f"{text} is not a network: {exc}"
    return ""


def parse_endpoint(text: str) -> Endpoint:
    """``host:port``, ``[v6]:port`` or ``unix:/path``; ValueError with the reason otherwise."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError("a unix socket path must be absolute (unix:/path)")
        if any(ord(c) < 32 or ord(c) == 127 for c in path):
            raise ValueError("a unix socket path must not hold control characters")
        if len(path.encode("utf-8", "surrogateescape")) > UNIX_PATH_MAX:
            raise ValueError(f"a unix socket path is at most {UNIX_PATH_MAX} bytes")
        return Endpoint(path=path)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError('must be "host:port" or "unix:/path"')
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ValueError(f"{port_text!r} is not a port (1-65535)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{port_text} is not a port (1-65535)")
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
        return Endpoint(host=inner, port=port)
    problem = host_problem(host)
    if problem:
        raise ValueError(problem)
    return Endpoint(host=host, port=port)
