"""The CLI's Channel Access adapter: read, write and follow PVs of one IOC.

A thin layer over caproto's threading client. Addressing comes from the usual
``EPICS_CA_*`` variables, read by caproto when the context is made, so the CLI
reaches a remote IOC exactly as caget would.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Any

from caproto import AccessRights, AlarmSeverity, CaprotoError, ChannelType, ErrorResponse

from ..ca.threading_client import PV, Context

SEVERITY_NAMES = {
    int(AlarmSeverity.NO_ALARM): "NO_ALARM",
    int(AlarmSeverity.MINOR_ALARM): "MINOR",
    int(AlarmSeverity.MAJOR_ALARM): "MAJOR",
    int(AlarmSeverity.INVALID_ALARM): "INVALID",
}


class CaError(Exception):
    """A one-line Channel Access problem (no reply, refused put, …)."""


@dataclass(frozen=True)
class Reading:
    """One PV's value as text or number, with its alarm severity."""

    value: Any
    severity: int = 0

    @property
    def severity_name(self) -> str:
        return SEVERITY_NAMES.get(self.severity, str(self.severity))


def _decode(pv: PV, data: Any) -> Any:
    """Turn a response's data into a Python value: text for strings, enums and char
    waveforms, a number for a scalar."""
    native = pv.channel.native_data_type
    if native == ChannelType.CHAR:
        raw = bytes(int(b) & 0xFF for b in data)
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    value = data[0] if len(data) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is not None and hasattr(value, "item"):
        return value.item()
    return value


class Client:
    """PVs named by suffix under one prefix; every call has a deadline."""

    def __init__(self, prefix: str, timeout: float = 2.0):
        self.prefix = prefix
        self.timeout = timeout
        self._context = Context(timeout=timeout)
        self._pvs: dict[str, PV] = {}
        self._callbacks: list[Any] = []

    def close(self) -> None:
        self._context.disconnect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def name(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def search(self, suffixes: list[str]) -> None:
        """Start searching for all of ``suffixes`` at once (one round of datagrams)."""
        new = [s for s in suffixes if s not in self._pvs]
        if new:
            pvs = self._context.get_pvs(*(self.name(s) for s in new), timeout=self.timeout)
            self._pvs.update(zip(new, pvs, strict=True))

    def connected(self, suffix: str, timeout: float | None = None) -> bool:
        """True when the PV connects within ``timeout`` (default: the client's)."""
        self.search([suffix])
        try:
            self._pvs[suffix].wait_for_connection(
                timeout=self.timeout if timeout is None else timeout
            )
        except (TimeoutError, CaprotoError):
            return False
        return True

    def _pv(self, suffix: str) -> PV:
        if not self.connected(suffix):
            raise CaError(f"no reply for {self.name(suffix)}")
        return self._pvs[suffix]

    def read(self, suffix: str) -> Reading:
        """The value (enums as their label) and alarm severity of one PV."""
        pv = self._pv(suffix)
        native = pv.channel.native_data_type
        data_type = ChannelType.TIME_STRING if native == ChannelType.ENUM else "time"
        try:
            response = pv.read(data_type=data_type, timeout=self.timeout)
        except (TimeoutError, CaprotoError) as exc:
            raise CaError(
                f"read of {self.name(suffix)} failed: {self._why(exc, self.timeout)}"
            ) from None
        if isinstance(response, ErrorResponse):
            raise CaError(f"read of {self.name(suffix)} refused: {_reason(response)}")
        return Reading(_decode(pv, response.data), int(response.metadata.severity))

    def index(self, suffix: str) -> int | None:
        """An enum's state number (None for any other PV): what state colours go by."""
        pv = self._pv(suffix)
        if pv.channel.native_data_type != ChannelType.ENUM:
            return None
        try:
            response = pv.read(data_type="native", timeout=self.timeout)
        except (TimeoutError, CaprotoError) as exc:
            raise CaError(
                f"read of {self.name(suffix)} failed: {self._why(exc, self.timeout)}"
            ) from None
        if isinstance(response, ErrorResponse):
            raise CaError(f"read of {self.name(suffix)} refused: {_reason(response)}")
        return int(response.data[0])

    def value(self, suffix: str) -> Any:
        return self.read(suffix).value

    def write(self, suffix: str, value: Any) -> None:
        """Put and wait for completion; a refused put is a CaError with the reason."""
        pv = self._pv(suffix)
        rights = getattr(pv, "access_rights", None)
        if rights is not None and not rights & AccessRights.WRITE:
            raise CaError(f"no write access to {self.name(suffix)} from this host and user")
        data = [value.encode()] if isinstance(value, str) else [value]
        try:
            response = pv.write(data, wait=True, timeout=max(self.timeout, 5.0))
        except (TimeoutError, CaprotoError) as exc:
            raise CaError(
                f"put to {self.name(suffix)} failed: {self._why(exc, max(self.timeout, 5.0))}"
            ) from None
        if isinstance(response, ErrorResponse):
            raise CaError(f"put to {self.name(suffix)} refused: {_reason(response)}")

    @staticmethod
    def _why(exc: BaseException, timeout: float) -> str:
        """Why a request failed, in the operator's words: caproto's text for a
        timeout names its internals (ioids, channel names)."""
        if isinstance(exc, TimeoutError):
            return f"no reply from the IOC within {timeout:g} s"
        return _first_line(exc)

    def follow(self, suffix: str) -> queue.Queue[Any]:
        """Every update of ``suffix`` (None when the connection drops) onto a queue."""
        pv = self._pv(suffix)
        updates: queue.Queue[Any] = queue.Queue()

        def on_update(sub: Any, response: Any) -> None:
            updates.put(_decode(pv, response.data))

        def on_state(pv_: PV, state: str) -> None:
            if state != "connected":
                updates.put(None)

        # caproto keeps only weak references to callbacks: hold them here.
        self._callbacks = [on_update, on_state]
        pv.connection_state_callback.add_callback(on_state)
        sub = pv.subscribe(data_type="time")
        sub.add_callback(on_update)
        return updates


def _reason(error: ErrorResponse) -> str:
    """The server's words for a refusal (its message, else its status)."""
    text = bytes(error.error_message).split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    return text or error.status.description


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def wait_until(condition: Any, timeout: float, interval: float = 0.1) -> Any:
    """Poll ``condition()`` until truthy or ``timeout`` seconds pass; its last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
