"""Channel Access for the ``genie_python`` subset, on caproto's threading client.

Scripts are plain synchronous Python, so calls block until the value arrives or
the timeout passes. One caproto context and one channel per PV name are shared
by the whole script (as a real genie_python keeps its channels open).
"""

from __future__ import annotations

import threading
from typing import Any

from genie_python.channel_access_exceptions import (
    ReadAccessException,
    UnableToConnectToPVException,
    WriteAccessException,
)

DEFAULT_TIMEOUT = 5.0

_lock = threading.Lock()
_context: Any = None
_channels: dict[str, Any] = {}


def _ctx() -> Any:
    global _context
    with _lock:
        if _context is None:
            from bgrscrpt_ioc.ca.threading_client import Context

            _context = Context()
        return _context


def channel(name: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """The connected caproto PV for ``name``; raises UnableToConnectToPVException."""
    with _lock:
        pv = _channels.get(name)
    if pv is None:
        (pv,) = _ctx().get_pvs(name, timeout=timeout)
        with _lock:
            pv = _channels.setdefault(name, pv)
    try:
        pv.wait_for_connection(timeout=timeout)
    except TimeoutError:
        raise UnableToConnectToPVException(name, "connection timed out") from None
    return pv


def _is_char_array(response: Any) -> bool:
    from caproto import ChannelType

    native = getattr(response.data_type, "name", "")
    return ChannelType.CHAR.name in native and len(response.data) > 1


def _to_python(response: Any, enum_strings: list[str] | None, to_string: bool) -> Any:
    data = response.data
    if _is_char_array(response):
        return bytes(data).split(b"\0", 1)[0].decode("utf-8", "replace")
    if len(data) == 1:
        value = data[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif hasattr(value, "item"):
            value = value.item()
        if enum_strings is not None and isinstance(value, int):
            if to_string and 0 <= value < len(enum_strings):
                return enum_strings[value]
            return value
        return str(value) if to_string else value
    values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in data]
    return str(values) if to_string else values


def read(name: str, timeout: float = DEFAULT_TIMEOUT, to_string: bool = False) -> dict:
    """Value and metadata of ``name``: ``value``, ``severity`` (0..3), ``units``, ``timestamp``."""
    from caproto import ChannelType

    pv = channel(name, timeout)
    try:
        control = pv.read(data_type="control", timeout=timeout)
    except TimeoutError:
        raise UnableToConnectToPVException(name, "read timed out") from None
    except Exception as exc:  # caproto raises its own errors for denied reads
        raise ReadAccessException(name) from exc
    enum_strings = None
    if pv.channel.native_data_type == ChannelType.ENUM:
        enum_strings = [
            s.decode("utf-8", "replace") if isinstance(s, bytes) else s
            for s in getattr(control.metadata, "enum_strings", [])
        ]
    units = getattr(control.metadata, "units", b"")
    if isinstance(units, bytes):
        units = units.decode("utf-8", "replace")
    return {
        "value": _to_python(control, enum_strings, to_string),
        "severity": int(getattr(control.metadata, "severity", 0)),
        "units": units or "",
    }


def write(name: str, value: Any, wait: bool = False, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Write ``value`` to ``name`` (waiting for completion when ``wait``)."""
    from caproto import ChannelType

    pv = channel(name, timeout)
    data_type = None
    if isinstance(value, str):
        if pv.channel.native_data_type == ChannelType.CHAR:
            data: Any = list(value.encode("utf-8")) + [0]
        else:
            # As caput does: the server converts the string (an enum state, a number).
            data, data_type = [value.encode("utf-8")], ChannelType.STRING
    elif isinstance(value, list | tuple):
        data = list(value)
    else:
        data = [value]
    try:
        pv.write(data, wait=wait, timeout=timeout, data_type=data_type)
    except TimeoutError:
        raise UnableToConnectToPVException(name, "write timed out") from None
    except Exception as exc:
        raise WriteAccessException(name) from exc


class CaChannelWrapper:
    """The class-method interface of genie_python's wrapper that scripts sometimes use."""

    @staticmethod
    def get_pv_value(name: str, to_string: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Any:
        return read(name, timeout, to_string)["value"]

    @staticmethod
    def set_pv_value(
        name: str, value: Any, wait: bool = False, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        write(name, value, wait=wait, timeout=timeout)

    @staticmethod
    def pv_exists(name: str, timeout: float = 2.0) -> bool:
        try:
            channel(name, timeout)
        except UnableToConnectToPVException:
            return False
        return True


CaChannelException = UnableToConnectToPVException
