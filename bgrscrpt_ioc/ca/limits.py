"""What the Channel Access server takes from its environment, checked before it starts.

* The caproto it runs on: the server extends caproto's asyncio server at its
  extension points, tested with the versions ``pyproject.toml`` pins. Any other
  version stops the IOC with one line (:func:`check_caproto_version`).
* ``EPICS_CA_MAX_ARRAY_BYTES``: the largest message a client may send, as in EPICS
  base (default 16384).
* ``EPICS_CAS_SLOW_CLIENT_TMO`` and ``EPICS_CAS_SLOW_CLIENT_MAX_BYTES``: this
  IOC's bound on a client that falls behind (EPICS base has none: its rsrv keeps
  a stopped client for ever). See :class:`bgrscrpt_ioc.core.flow.SlowClientBound`.
* ``EPICS_CAS_MAX_CHANNELS`` and ``EPICS_CAS_MAX_MONITORS``: the channels and the
  monitors one client may hold at once (EPICS base has no bound: one client could
  grow the IOC until it runs out of memory, and with it every script's
  supervision). A channel past the bound is refused as a PV that does not exist,
  a monitor with ECA_ALLOCMEM.
* The open-file limit (``ulimit -n``): each client's connection holds a file
  descriptor, and the IOC needs some of its own to start scripts and keep its
  state database; :func:`max_clients` is how many clients it serves at once.

Nothing here imports caproto, so the version is checked before caproto's server
code is loaded.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

from bgrscrpt_ioc.core.ca_frames import max_message_bytes
from bgrscrpt_ioc.core.flow import SlowClientBound

CAPROTO_SUPPORTED = ((1, 3), (1, 4))
"""caproto versions this IOC runs on: from the first (included) to the second (excluded)."""

DEFAULT_MAX_ARRAY_BYTES = 16384
DEFAULT_SLOW_CLIENT_TMO = 30.0
DEFAULT_SLOW_CLIENT_MAX_BYTES = 4 * 1024 * 1024

DEFAULT_MAX_CHANNELS = 4096
DEFAULT_MAX_MONITORS = 8192

MAX_ARRAY_BYTES_VAR = "EPICS_CA_MAX_ARRAY_BYTES"
MAX_CHANNELS_VAR = "EPICS_CAS_MAX_CHANNELS"
MAX_MONITORS_VAR = "EPICS_CAS_MAX_MONITORS"
SLOW_CLIENT_TMO_VAR = "EPICS_CAS_SLOW_CLIENT_TMO"
SLOW_CLIENT_MAX_BYTES_VAR = "EPICS_CAS_SLOW_CLIENT_MAX_BYTES"


class ServerSetupError(Exception):
    """The server cannot start as set up; the message is one line for the operator."""


@dataclass(frozen=True)
class ServerLimits:
    """The Channel Access server's bounds on what one client may cost."""

    max_message_bytes: int
    """A client's message larger than this (header included) closes its circuit."""
    slow_client: SlowClientBound
    max_clients: int = 768
    """Connections served at once; one more is closed as soon as it is accepted."""
    max_channels: int = DEFAULT_MAX_CHANNELS
    """Channels one client may hold at once; one more is refused (CREATE_CH_FAIL)."""
    max_monitors: int = DEFAULT_MAX_MONITORS
    """Monitors one client may hold at once; one more is refused (ECA_ALLOCMEM)."""


FILES_KEPT = 64
"""File descriptors never given to clients, at the least: the IOC's own (scripts, logs,
state database, watches, plots) need fewer than this."""
MAX_CLIENTS_CEILING = 100_000


def max_clients(open_files: int) -> int:
    """How many clients the IOC serves at once with an open-file limit of ``open_files``.

    A quarter of the limit (at least :data:`FILES_KEPT`) stays the IOC's own, so
    that clients holding connections open can never leave it unable to start a
    script: 768 clients with the usual limit of 1024. ``open_files`` < 0 (no limit)
    gives :data:`MAX_CLIENTS_CEILING`.
    """
    if open_files < 0:
        return MAX_CLIENTS_CEILING
    kept = max(FILES_KEPT, open_files // 4)
    return max(1, min(open_files - kept, MAX_CLIENTS_CEILING))


def open_file_limit() -> int:
    """This process's open-file limit (``ulimit -n``); -1 for none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return -1 if soft == resource.RLIM_INFINITY else int(soft)


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ServerSetupError(f"{name}={text!r} is not a positive whole number")
    return value


def _positive_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ServerSetupError(f"{name}={text!r} is not a positive number of seconds")
    return value


def server_limits(environ: Mapping[str, str] | None = None) -> ServerLimits:
    """The bounds from the environment (``os.environ`` by default); raises ServerSetupError."""
    env = os.environ if environ is None else environ
    array_bytes = _positive_int(env, MAX_ARRAY_BYTES_VAR, DEFAULT_MAX_ARRAY_BYTES)
    return ServerLimits(
        max_message_bytes=max_message_bytes(array_bytes),
        slow_client=SlowClientBound(
            seconds=_positive_seconds(env, SLOW_CLIENT_TMO_VAR, DEFAULT_SLOW_CLIENT_TMO),
            max_bytes=_positive_int(env, SLOW_CLIENT_MAX_BYTES_VAR, DEFAULT_SLOW_CLIENT_MAX_BYTES),
        ),
        max_clients=max_clients(open_file_limit()),
        max_channels=_positive_int(env, MAX_CHANNELS_VAR, DEFAULT_MAX_CHANNELS),
        max_monitors=_positive_int(env, MAX_MONITORS_VAR, DEFAULT_MAX_MONITORS),
    )


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break  # "0rc1": the release ends here
    return tuple(parts)


def caproto_version_problem(version: str | None) -> str | None:
    """Why caproto ``version`` will not do (None when it will)."""
    low, high = CAPROTO_SUPPORTED
    wanted = f"caproto>={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    if version is None:
        return f"caproto is not installed; this IOC needs {wanted}"
    release = _release(version)
    if not release or not low <= release < high:
        return (
            f"caproto {version} is installed; this IOC runs on {wanted} only "
            f"(pip install '{wanted}')"
        )
    return None


def check_caproto_version() -> None:
    """Raise ServerSetupError unless the installed caproto is one this IOC runs on."""
    try:
        version: str | None = metadata.version("caproto")
    except metadata.PackageNotFoundError:
        version = None
    problem = caproto_version_problem(version)
    if problem is not None:
        raise ServerSetupError(problem)


def check_server_setup(environ: Mapping[str, str] | None = None) -> ServerLimits:
    """Everything the CA server needs checked before start-up; raises ServerSetupError."""
    check_caproto_version()
    return server_limits(environ)
