"""Read PVs as any DBR type through libca itself, and say exactly what came back.

``python -m tests.dbr_reader`` reads a JSON list of ``[pv, dbr_type]`` on stdin
and prints one JSON object: ``{"pv|type": result}``. A result is
``{"status": <ECA code>}`` when the read failed (the server's own status, as
libca reports it), else ``{"native", "count", "meta", "value"}``. ``meta``
holds every field of the DBR structure but the padding and the time stamp,
decoded here from the C layouts of db_access.h (pyepics cannot unpack the STS
types, so this does not use its decoder). Every read of a run is in flight at
once: a few thousand take a second.

It is the client half of the comparison with EPICS base: the same requests to
a real softIoc and to our IOC must come back the same.
"""

from __future__ import annotations

import ctypes
import json
import math
import struct
import sys
import threading
import time
from typing import Any

# C type letters (struct module, little-endian host order as libca delivers it).
_VALUE = {0: "40s", 1: "h", 2: "f", 3: "H", 4: "B", 5: "i", 6: "d"}
_LIMITS = (
    "upper_disp_limit",
    "lower_disp_limit",
    "upper_alarm_limit",
    "upper_warning_limit",
    "lower_warning_limit",
    "lower_alarm_limit",
)
_CTRL = ("upper_ctrl_limit", "lower_ctrl_limit")
_STS = [("status", "h"), ("severity", "h")]


def _layout(dbr_type: int) -> tuple[list[tuple[str, str]], int]:
    """(header fields in order, native value index) for a DBR type, as db_access.h."""
    family, native = divmod(dbr_type, 7)
    if dbr_type in (21, 28):  # GR_STRING and CTRL_STRING are STS_STRING on the wire
        family = 1
    letter = _VALUE[native]
    if family == 0:
        return [], native
    if family == 1:
        return _STS + {4: [("_pad", "B")], 6: [("_pad", "i")]}.get(native, []), native
    if family == 2:
        stamp = [("_stamp", "II")]
        extra = {1: [("_pad", "h")], 3: [("_pad", "h")], 4: [("_pad", "hB")], 6: [("_pad", "i")]}
        return _STS + stamp + extra.get(native, []), native
    if native == 3:  # GR_ENUM, CTRL_ENUM
        return _STS + [("no_str", "h"), ("strs", "416s")], native
    fields = list(_STS)
    if native in (2, 6):
        fields += [("precision", "h"), ("_pad", "h")]
    fields.append(("units", "8s"))
    fields += [(name, letter) for name in _LIMITS]
    if family == 4:
        fields += [(name, letter) for name in _CTRL]
    if native == 4:
        fields.append(("_pad", "B"))
    return fields, native


def _items(letters: str) -> int:
    """How many values ``struct`` unpacks for these format letters ("II": 2, "8s": 1)."""
    return len(struct.unpack("<" + letters, bytes(struct.calcsize("<" + letters))))


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1")


def _number(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def decode(dbr_type: int, count: int, raw: bytes) -> dict[str, Any]:
    """The DBR structure ``raw`` (host byte order) as {"meta": {...}, "value": [...]}."""
    fields, native = _layout(dbr_type)
    fmt = "<" + "".join(letter for _, letter in fields)
    header = struct.calcsize(fmt)
    values = struct.unpack_from(fmt, raw, 0)
    meta: dict[str, Any] = {}
    i = 0
    for name, letters in fields:
        value = values[i]
        i += _items(letters)
        if name.startswith("_"):
            continue
        if name == "strs":
            strs = [_text(value[k * 26 : (k + 1) * 26]) for k in range(16)]
            value = strs[: max(0, min(16, meta.get("no_str", 0)))]
        elif isinstance(value, bytes):
            value = _text(value)
        meta[name] = _number(value)
    size = struct.calcsize("<" + _VALUE[native])
    out = []
    for k in range(count):
        (item,) = struct.unpack_from("<" + _VALUE[native], raw, header + k * size)
        out.append(_text(item) if isinstance(item, bytes) else _number(item))
    return {"meta": meta, "value": out}


class _Args(ctypes.Structure):
    _fields_ = [
        ("usr", ctypes.c_void_p),
        ("chid", ctypes.c_void_p),
        ("type", ctypes.c_long),
        ("count", ctypes.c_long),
        ("dbr", ctypes.c_void_p),
        ("status", ctypes.c_int),
    ]


def read_all(
    requests: list[tuple[str, int]], timeout: float = 10.0, *, monitor: bool = False
) -> dict[str, Any]:
    """Issue every read at once; wait for every answer (or ``timeout``).

    ``monitor``: subscribe instead (DBE_VALUE | DBE_ALARM) and report the first update.
    """
    import epics  # noqa: F401 - loads libca and creates the context
    from epics import ca

    libca = ca.initialize_libca()
    dbr_size = (ctypes.c_ushort * 39).in_dll(libca, "dbr_size")
    dbr_value_size = (ctypes.c_ushort * 39).in_dll(libca, "dbr_value_size")
    for dbr_type in range(35):
        fields, _ = _layout(dbr_type)
        header = struct.calcsize("<" + "".join(letter for _, letter in fields))
        assert header == dbr_size[dbr_type] - dbr_value_size[dbr_type], dbr_type

    results: dict[str, Any] = {}
    lock = threading.Lock()
    done = threading.Event()
    keys: list[str] = []

    @ctypes.CFUNCTYPE(None, _Args)
    def on_get(args: _Args) -> None:
        key = keys[args.usr or 0]
        with lock:
            if "status" in results[key] or "value" in results[key]:
                return  # a monitor's later updates
        if args.status != 1:  # ECA_NORMAL
            result: dict[str, Any] = {"status": args.status}
        else:
            size = dbr_size[args.type] + max(args.count - 1, 0) * dbr_value_size[args.type]
            raw = ctypes.string_at(args.dbr, size)
            result = {"count": args.count, **decode(args.type, args.count, raw)}
        with lock:
            results[key].update(result)
            if all("status" in r or "value" in r for r in results.values()):
                done.set()

    channels: dict[str, Any] = {}
    for pv, _ in requests:
        if pv not in channels:
            channels[pv] = ca.create_channel(pv, connect=False, auto_cb=False)
    for pv, chid in channels.items():
        if not ca.connect_channel(chid, timeout=5.0):
            raise SystemExit(f"cannot connect to {pv}")
    for pv, dbr_type in requests:
        key = f"{pv}|{dbr_type}"
        keys.append(key)
        chid = channels[pv]
        results[key] = {"native": ca.field_type(chid), "elements": ca.element_count(chid)}
    subscriptions = []
    for index, (pv, dbr_type) in enumerate(requests):
        if monitor:
            event_id = ctypes.c_void_p()
            status = libca.ca_create_subscription(
                dbr_type, 0, channels[pv], 5, on_get, ctypes.c_void_p(index), ctypes.byref(event_id)
            )
            subscriptions.append(event_id)
        else:
            status = libca.ca_array_get_callback(
                dbr_type, 0, channels[pv], on_get, ctypes.c_void_p(index)
            )
        if status != 1:
            results[keys[index]]["status"] = f"request refused: {status}"
    libca.ca_flush_io()
    deadline = time.monotonic() + timeout
    while not done.is_set() and time.monotonic() < deadline:
        ca.poll()
        done.wait(0.01)
    for event_id in subscriptions:
        libca.ca_clear_subscription(event_id)
    libca.ca_flush_io()
    with lock:
        for result in results.values():
            if "status" not in result and "value" not in result:
                result["status"] = "no answer"
        return dict(results)


def main() -> None:
    """stdin: a JSON list of [pv, dbr_type]; ``--monitor`` subscribes instead of reading."""
    requests = [(pv, int(dbr_type)) for pv, dbr_type in json.load(sys.stdin)]
    print(json.dumps(read_all(requests, monitor="--monitor" in sys.argv[1:])))


if __name__ == "__main__":
    main()
