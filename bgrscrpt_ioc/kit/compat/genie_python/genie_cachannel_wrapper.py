"""``CaChannelWrapper``: genie_python's Channel Access layer, on caproto's threading client.

It answers as genie_python's own wrapper (which sits on libca through
CaChannel) does, so that code written against it reads the same values:

- an enum, string or char PV always reads as text (``'RUNNING'``, ``'INVALID'``);
- ``to_string=True`` reads any other PV as DBR_CHAR, converted by the server,
  as genie_python does (``42.5`` reads ``'42'``): a faithful copy of its
  behaviour, not a recommendation;
- arrays come back as lists, or numpy arrays with ``use_numpy=True``;
- a PV that does not connect within ``EXIST_TIMEOUT`` raises
  ``UnableToConnectToPVException``; a string written to an enum must name one
  of its states (``InvalidEnumStringException``); a write checks write access
  and the record's ``DISP`` first (``WriteAccessException``).

One caproto context and one channel per name serve the whole script, from any
thread; a channel that drops reconnects by itself.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import sys
import threading
from collections.abc import Callable
from typing import Any

from bgrscrpt_ioc.ca.names import MAX_NAME_BYTES, name_problem
from genie_python.channel_access_exceptions import (
    InvalidEnumStringException,
    ReadAccessException,
    UnableToConnectToPVException,
    WriteAccessException,
)
from genie_python.utilities import waveform_to_string

TIMEOUT = 15  # seconds for a read or write, as genie_python
EXIST_TIMEOUT = 3  # seconds for a PV to connect, as genie_python
MIN_CONNECT_WAIT = 0.1  # genie_python waits at least one 0.1 s poll, even with timeout 0

_lock = threading.Lock()
_context: Any = None
_pvs: dict[str, Any] = {}
# caproto holds callbacks weakly: the monitors' subscriptions and callbacks live here.
_monitors: dict[int, tuple[Any, ...]] = {}


_STRING_SIZE = 40
"""Bytes of a DBR_STRING, its NUL included."""


class CaChannelException(Exception):  # noqa: N818 - CaChannel's name
    """A Channel Access failure below genie_python (CaChannel's exception class)."""


# Named as CaChannel's own in a traceback (what a script's LOG shows), as on IBEX.
CaChannelException.__module__ = "CaChannel.CaChannel"


def _ctx() -> Any:
    global _context
    with _lock:
        if _context is None:
            from bgrscrpt_ioc.ca.threading_client import Context

            # genie_python's Channel Access is silent on the console (libca's messages
            # go to its log file): caproto's tracebacks for a server that went away
            # would fill the slot's LOG. A script that set caproto's level keeps it.
            logger = logging.getLogger("caproto")
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.CRITICAL)
            _context = Context()
        return _context


def _check_name(name: Any) -> None:
    """Refuse a name as genie_python's CaChannel does, with its exceptions.

    CaChannel takes a ``str`` or None (TypeError otherwise; ValueError for a NUL);
    for None, an empty name or one over libca's 1007 bytes, libca creates no
    channel and CaChannel fails with the odd ValueError below. A name libca would
    search for but caproto cannot (a record name over 59 characters) is one that
    does not connect, as it would be wherever no gateway serves it.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"argument 1 must be str or None, not {type(name).__name__}")
    if name is not None and "\0" in name:
        raise ValueError("embedded null character")
    if name is None or not 0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES:
        raise ValueError("PyCapsule_GetPointer called with invalid PyCapsule object")
    if name_problem(name) is not None:
        raise UnableToConnectToPVException(name, "Connection timeout (event)")


def _pv(name: str) -> Any:
    _check_name(name)
    with _lock:
        pv = _pvs.get(name)
    if pv is None:
        (pv,) = _ctx().get_pvs(name, timeout=TIMEOUT)
        with _lock:
            pv = _pvs.setdefault(name, pv)
    return pv


def _connected(name: str, timeout: float = EXIST_TIMEOUT) -> Any:
    """The connected channel for ``name``; UnableToConnectToPVException after ``timeout``."""
    pv = _pv(name)
    if pv.connected:
        return pv
    try:
        pv.wait_for_connection(timeout=max(float(timeout), MIN_CONNECT_WAIT))
    except Exception:  # caproto's timeout (or a circuit that died meanwhile)
        raise UnableToConnectToPVException(name, "Connection timeout (event)") from None
    return pv


def _types() -> Any:
    from caproto import ChannelType

    return ChannelType


def _native(pv: Any) -> Any:
    return pv.channel.native_data_type


def _count(pv: Any) -> int:
    return int(pv.channel.native_data_count)


def _can(pv: Any, what: str) -> bool:
    from caproto import AccessRights

    right = AccessRights.READ if what == "read" else AccessRights.WRITE
    return right in pv.channel.access_rights


def _read(pv: Any, name: str, data_type: Any = None, timeout: float = TIMEOUT) -> Any:
    try:
        response = pv.read(data_type=data_type, timeout=timeout)
    except Exception as exc:
        if not pv.connected:
            raise UnableToConnectToPVException(name, "Connection timeout (event)") from None
        raise CaChannelException(f"{name}: {exc}") from exc
    if _refused(response):  # the server's error reply: CaChannel raises its status
        raise CaChannelException(response.status.description)
    return response


def _refused(response: Any) -> bool:
    from caproto import ErrorResponse

    return isinstance(response, ErrorResponse)


def _text(item: Any) -> str:
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def _scalar(item: Any) -> Any:
    if isinstance(item, bytes):
        return _text(item)
    return item.item() if hasattr(item, "item") else item


_INT_BITS = {"LONG": (32, True), "INT": (16, True), "ENUM": (16, False), "CHAR": (8, False)}


def _c_integer(item: Any, bits: int, signed: bool) -> int:
    """``item`` as CaChannel writes it to a C integer of this width: an int (or anything
    with ``__index__``) in the type's range as it is; anything else (a float, a
    string, a number out of range) as 0."""
    if isinstance(item, float | str | bytes):
        return 0
    try:
        number = operator.index(item)
    except TypeError:
        return 0
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return number if low <= number <= high else 0


def _c_double(item: Any) -> float:
    if isinstance(item, str | bytes):
        return 0.0
    try:
        return float(item)
    except (TypeError, ValueError):
        return 0.0


def _as_libca_sends(value: Any, pv: Any) -> tuple[list[Any], Any]:
    """What CaChannel puts for ``value`` on this channel, and the CA type to send it as.

    CaChannel converts in C to the channel's native type before the server sees
    anything: a string becomes a number only as a lone value written to a
    floating-point PV (``float("12.5")``; an unparsable one raises ValueError); any
    other value of the wrong kind, or an integer outside the type's range, is
    written as 0 (or an empty string). At most the channel's element count is sent.
    The same happens here, so a script writes on this IOC what it writes on IBEX.
    """
    ct = _types()
    native, count = _native(pv), max(1, _count(pv))
    if isinstance(value, str) and native == ct.CHAR:
        # Its NUL only where there is room: text that fills the waveform fills it all.
        raw = list(value.encode("utf-8"))[:count]
        return (raw + [0] if len(raw) < count else raw), None
    lone = not isinstance(value, list | tuple) and not hasattr(value, "tolist")
    items = [value] if lone else list(value.tolist() if hasattr(value, "tolist") else value)
    if native == ct.STRING:
        texts = [i if isinstance(i, bytes) else i.encode("utf-8") if isinstance(i, str) else b""
                 for i in items[:count]]  # fmt: skip
        if any(len(t) >= _STRING_SIZE for t in texts):
            raise CaChannelException("Invalid string")  # CaChannel's words; nothing is written
        return texts, None
    if native in (ct.DOUBLE, ct.FLOAT):
        if lone:
            return [float(value)], None  # raises as CaChannel does for "abc"
        return [_c_double(i) for i in items[:count]], None
    bits, signed = _INT_BITS.get(native.name, (32, True))
    return [_c_integer(i, bits, signed) for i in items[:count]], None


class CaChannelWrapper:
    """genie_python's Channel Access wrapper: class methods only, as the original."""

    error_log_func: Callable[[str], None] | None = None

    @staticmethod
    def get_pv_value(
        name: str, to_string: bool = False, timeout: float = TIMEOUT, use_numpy: bool | None = None
    ) -> Any:
        """The value of ``name`` (see the module's notes for the types)."""
        pv = _connected(name)
        if not _can(pv, "read"):
            raise ReadAccessException(name)
        ct = _types()
        native = _native(pv)
        textual = native in (ct.ENUM, ct.CHAR, ct.STRING)
        if textual or to_string:
            as_string = native in (ct.ENUM, ct.STRING)
            data = _read(pv, name, ct.STRING if as_string else ct.CHAR, timeout).data
            items = [_text(d) for d in data] if as_string else [int(d) for d in data]
            if _count(pv) > 1:
                return waveform_to_string(items)
            return str(items[0]) if items else ""
        response = _read(pv, name, None, timeout)
        data = response.data
        if _count(pv) == 1 and len(data) >= 1:
            return _scalar(data[0])
        if use_numpy:
            import numpy as np

            array = np.asarray(data)
            return array.astype(array.dtype.newbyteorder("="))
        return [_scalar(d) for d in data]

    @staticmethod
    def get_pv_timestamp(name: str, timeout: float = TIMEOUT) -> tuple[int, int]:
        """When ``name`` was last processed: (seconds, nanoseconds) since the EPICS epoch."""
        pv = _connected(name)
        if not _can(pv, "read"):
            raise ReadAccessException(name)
        stamp = _read(pv, name, "time", timeout).metadata.stamp
        return int(stamp.secondsSinceEpoch), int(stamp.nanoSeconds)

    @staticmethod
    def set_pv_value(
        name: str,
        value: Any,
        wait: bool = False,
        timeout: float = TIMEOUT,
        safe_not_quick: bool = True,
    ) -> None:
        """Write ``value``; with ``wait``, until the server says the put has completed."""
        pv = _connected(name)
        value = CaChannelWrapper.check_for_enum_value(value, pv, name)
        if not _can(pv, "write"):
            raise WriteAccessException(name)
        if safe_not_quick:
            CaChannelWrapper._check_for_disp(name)
        data, data_type = _as_libca_sends(value, pv)
        try:
            if wait:
                # A put the server refuses ends the wait with its error reply, which
                # genie_python's put callback ignores as this does.
                pv.write(data, wait=True, timeout=None, data_type=data_type)
            else:
                pv.write(data, wait=False, notify=False, data_type=data_type)
        except Exception as exc:  # genie_python logs a refused put and carries on
            if not pv.connected:
                raise UnableToConnectToPVException(name, "Connection timeout (event)") from None
            CaChannelWrapper.logError(f"put to {name} failed: {exc}")

    @staticmethod
    def _check_for_disp(name: str) -> None:
        """A record whose DISP is set refuses puts from CA clients: say so before writing."""
        if ".DISP" in name:
            return
        base = name.split(".")[0] if "." in name else name
        disp = f"{base}.DISP"
        if CaChannelWrapper.pv_exists(disp, 0) and CaChannelWrapper.get_pv_value(disp) != "0":
            raise WriteAccessException(f"{base} (DISP is set)")

    @staticmethod
    def check_for_enum_value(value: Any, chan: Any, name: str) -> Any:
        """A string written to an enum PV becomes its state's index (any case), or raises."""
        ct = _types()
        if _native(chan) != ct.ENUM or not isinstance(value, str):
            return value
        control = _read(chan, name, ct.CTRL_ENUM)
        states = tuple(_text(s) for s in getattr(control.metadata, "enum_strings", ()))
        for index, state in enumerate(states):
            if state.lower() == value.lower():
                return index
        raise InvalidEnumStringException(name, states)

    @staticmethod
    def pv_exists(name: str, timeout: float = EXIST_TIMEOUT) -> bool:
        """True when ``name`` connects within ``timeout`` seconds."""
        try:
            _connected(name, timeout)
        except UnableToConnectToPVException:
            return False
        return True

    @staticmethod
    def add_monitor(
        name: str,
        call_back_function: Callable[[Any, Any, Any], None],
        link_alarm_on_disconnect: bool = True,
        to_string: bool = False,
        use_numpy: bool | None = None,
    ) -> Callable[[], None]:
        """Call ``call_back_function(value, severity, status)`` on every update of ``name``.

        An enum updates with its state's name. With ``link_alarm_on_disconnect`` a
        disconnection calls back with the last value and INVALID severity.
        Returns the function that ends the monitor.
        """
        pv = _connected(name)
        if not _can(pv, "read"):
            raise ReadAccessException(name)
        ct = _types()
        as_string = _native(pv) in (ct.ENUM, ct.STRING)
        last: list[Any] = [None]

        def on_update(sub: Any, response: Any) -> None:
            data = response.data
            if as_string:
                value: Any = _text(data[0]) if len(data) else ""
            elif len(data) == 1:
                value = _scalar(data[0])
            else:
                value = [_scalar(d) for d in data]
            if to_string:
                value = waveform_to_string(value) if isinstance(value, list) else str(value)
            last[0] = value
            call_back_function(value, int(response.metadata.severity), response.metadata.status)

        def on_connection(_pv: Any, state: str) -> None:
            if state == "disconnected" and link_alarm_on_disconnect:
                call_back_function(last[0], 3, 14)  # INVALID, LINK

        sub = pv.subscribe(data_type=ct.TIME_STRING if as_string else "time")
        token = sub.add_callback(on_update)
        link_token = pv.connection_state_callback.add_callback(on_connection)
        key = id(sub)
        with _lock:
            _monitors[key] = (sub, on_update, on_connection)

        def clear() -> None:
            sub.remove_callback(token)
            pv.connection_state_callback.remove_callback(link_token)
            with _lock:
                _monitors.pop(key, None)

        return clear

    @staticmethod
    def poll() -> None:
        """Nothing to flush: caproto sends at once (kept for scripts that call it)."""

    @staticmethod
    def logError(message: str) -> None:  # noqa: N802 - genie_python's name
        """Where genie_python logs a Channel Access error; here, one line on stderr."""
        if CaChannelWrapper.error_log_func is not None:
            with contextlib.suppress(Exception):  # a logger must never break the script
                CaChannelWrapper.error_log_func(message)
        else:
            print(f"CAERROR: {message}", file=sys.stderr, flush=True)
