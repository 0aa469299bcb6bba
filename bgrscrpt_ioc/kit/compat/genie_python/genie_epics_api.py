"""The instrument behind ``genie``: its prefix, its blocks, and PV access with genie's rules.

Blocks are read as IBEX's genie_python reads them: ``$(P)CS:SB:<BLOCK>`` in
capitals (IBEX's gateway serves every block under that name too), their run
control under ``...:RC:ENABLE|LOW|HIGH``, their alarm from ``.SEVR``; the
names of the configuration's blocks come from the block server's
``$(P)CS:BLOCKSERVER:BLOCKNAMES``, monitored once an instrument is set.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
import threading
from collections import OrderedDict
from keyword import iskeyword
from typing import Any

from genie_python.channel_access_exceptions import UnableToConnectToPVException
from genie_python.genie_cachannel_wrapper import CaChannelWrapper as Wrapper
from genie_python.utilities import crc8, dehex_decompress_and_dejson, remove_field_from_pv

RC_ENABLE = ":RC:ENABLE"
RC_LOW = ":RC:LOW"
RC_HIGH = ":RC:HIGH"
BLOCK_SERVER_PREFIX = "CS:BLOCKSERVER:"
PV_BLOCK_NAMES = "BLOCKNAMES"
BLOCK_NAMES_RETRY = 30.0  # seconds between attempts to monitor a missing BLOCKNAMES


class BlockNames:
    """The configuration's block names, kept up to date from the block server."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self._lock = threading.RLock()
        self._pv = ""
        self._cancel: Any = None
        self._timer: threading.Timer | None = None

    def names(self) -> list[str]:
        with self._lock:
            return list(self._names)

    def follow(self, pv_name: str) -> None:
        """Monitor ``pv_name`` (in the background; retried while it does not connect)."""
        with self._lock:
            if pv_name == self._pv:
                return
            self._pv = pv_name
            if self._timer is None:
                self._schedule(0.0)

    def _schedule(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._monitor)
        self._timer.daemon = True
        self._timer.start()

    def _monitor(self) -> None:
        with self._lock:
            self._timer = None
            if self._cancel is not None:
                self._cancel()
                self._cancel = None
            try:
                self._cancel = Wrapper.add_monitor(self._pv, self._update, to_string=True)
                self._update(Wrapper.get_pv_value(self._pv, to_string=True), None, None)
            except UnableToConnectToPVException:
                self._schedule(BLOCK_NAMES_RETRY)

    def _update(self, value: Any, _severity: Any, _status: Any) -> None:
        try:
            names = dehex_decompress_and_dejson(value)
        except Exception:  # as genie_python: an undecodable list leaves none
            names = []
        # genie_python keeps the names as attributes: a keyword gets "__" appended.
        cleaned = [f"{n}__" if iskeyword(n) else n for n in names if isinstance(n, str)]
        with self._lock:
            self._names = cleaned


class API:
    """What genie_python's ``genie_epics_api.API`` does for background scripts."""

    def __init__(self) -> None:
        from genie_python.genie_dae import Dae
        from genie_python.genie_waitfor import WaitForController, WaitForMoveController

        self.inst_prefix = ""
        self.instrument_name = ""
        self.machine_name = ""
        self.block_prefix = "CS:SB:"
        self.motion_suffix = "CS:MOT:MOVING"
        self.dae: Any = None
        self.waitfor: Any = None
        self.wait_for_move: Any = None
        self._dae_class = Dae
        self._waitfor_class = WaitForController
        self._move_class = WaitForMoveController
        self.block_names = BlockNames()
        self.localmod: Any = None

    # ---- the instrument --------------------------------------------------------

    def set_instrument(self, machine_identifier: str | None, import_instrument_init: bool) -> None:
        """Take the prefix as IBEX derives it from ``machine_identifier`` (or, for None,
        ``$MYPVPREFIX`` as given, which is what the IOC hands its scripts)."""
        if machine_identifier is None and "MYPVPREFIX" in os.environ:
            pv_prefix = os.environ["MYPVPREFIX"]
            parts = [p for p in pv_prefix.split(":") if p]
            instrument = parts[-1].upper() if parts else ""
            machine = f"NDX{instrument}" if pv_prefix.startswith("IN:") else instrument
            self.instrument_name = instrument
        else:
            identifier = machine_identifier or socket.gethostname()
            instrument, machine, pv_prefix = self._details(identifier)
        print("PV prefix is " + pv_prefix)
        self.inst_prefix = pv_prefix
        self.machine_name = machine
        self.dae = self._dae_class(self, pv_prefix)
        self.wait_for_move = self._move_class(self, pv_prefix + self.motion_suffix)
        self.waitfor = self._waitfor_class(self)
        self.block_names.follow(f"{pv_prefix}{BLOCK_SERVER_PREFIX}{PV_BLOCK_NAMES}")
        if import_instrument_init:
            self._init_instrument(self.instrument_name, machine)

    def _details(self, identifier: str) -> tuple[str, str, str]:
        """(instrument, machine, prefix) as IBEX names them: ``IN:X:``/``NDXX`` are
        instrument X (``IN:X:``), anything else a test machine (``TE:X:``); a name
        longer than 8 characters is cut to 6 plus a CRC."""
        identifier = identifier.upper()
        instrument = identifier
        for start in ("IN:", "TE:", "NDX", "NDE", "NDH"):
            if identifier.startswith(start):
                instrument = identifier[len(start) :].rstrip(":")
                break
        if identifier.startswith("IN:"):
            machine = f"NDX{instrument}"
        elif identifier.startswith("TE:"):
            machine = instrument
        else:
            machine = identifier
        is_instrument = identifier.startswith(("NDX", "NDE", "IN:"))
        clean = instrument[:-1] if instrument.endswith(":") else instrument
        if len(clean) > 8:
            clean = clean[:6] + crc8(clean)
        self.instrument_name = clean
        if is_instrument:
            print(f"THIS IS {clean.upper()}!")
        else:
            print(f"THIS IS {clean.upper()}! (test machine)")
        return instrument, machine, f"{'IN' if is_instrument else 'TE'}:{clean}:"

    def _init_instrument(self, instrument: str, machine: str) -> None:
        """Run the instrument's ``init_<instrument>`` module where one is on the path
        (genie_python loads it from IBEX's configuration area)."""
        name = f"init_{instrument.lower().replace('-', '_')}"
        if not instrument or importlib.util.find_spec(name) is None:
            return
        self.localmod = importlib.import_module(name)
        init = getattr(self.localmod, "init", None)
        if callable(init):
            init(machine)

    def get_instrument(self) -> str:
        return self.instrument_name

    def get_instrument_full_name(self) -> str:
        return self.machine_name

    def prefix_pv_name(self, name: str) -> str:
        return self.inst_prefix + name

    # ---- PVs ---------------------------------------------------------------------

    def _local(self, name: str, is_local: bool) -> str:
        return (
            self.prefix_pv_name(name)
            if is_local and not name.startswith(self.inst_prefix)
            else name
        )

    def get_pv_value(
        self,
        name: str,
        to_string: bool = False,
        attempts: int = 3,
        is_local: bool = False,
        use_numpy: bool | None = None,
    ) -> Any:
        name = self._local(name, is_local)
        if not self.pv_exists(name):
            raise UnableToConnectToPVException(name, "does not exist")
        while True:
            try:
                return Wrapper.get_pv_value(name, to_string, use_numpy=use_numpy)
            except Exception:
                attempts -= 1
                if attempts < 1:
                    raise

    def set_pv_value(
        self, name: str, value: Any, wait: bool = False, attempts: int = 3, is_local: bool = False
    ) -> None:
        if value is None:  # as genie_python: nothing to write
            return
        name = self._local(name, is_local)
        while True:
            try:
                Wrapper.set_pv_value(name, value, wait=wait)
                return
            except Exception:
                attempts -= 1
                if attempts < 1:
                    raise

    def pv_exists(self, name: str, fail_fast: bool = False, is_local: bool = False) -> bool:
        name = self._local(name, is_local)
        return Wrapper.pv_exists(name, 0) if fail_fast else Wrapper.pv_exists(name)

    def connected_pvs_in_list(self, pv_list: list[str], is_local: bool = False) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(16, max(1, len(pv_list)))) as pool:
            found = list(pool.map(lambda pv: self.pv_exists(pv, is_local=is_local), pv_list))
        return [pv for pv, ok in zip(pv_list, found, strict=True) if ok]

    # ---- blocks --------------------------------------------------------------------

    def get_block_names(self) -> list[str]:
        return self.block_names.names()

    def get_pv_from_block(self, block_name: str) -> str:
        return self.inst_prefix + self.block_prefix + block_name.upper()

    def block_exists(self, name: str, fail_fast: bool = False) -> bool:
        return self.pv_exists(self.get_pv_from_block(name), fail_fast)

    def correct_blockname(self, name: str, add_prefix: bool = True) -> str:
        for true_name in self.get_block_names():
            if name.lower() == true_name.lower():
                return self.inst_prefix + self.block_prefix + true_name if add_prefix else true_name
        return name

    def _in_configuration(self, block: str) -> bool:
        return block.upper() in (b.upper() for b in self.get_block_names())

    def _no_such_block(self, block: str) -> Exception:
        return Exception(
            f"No block with the name '{block}' exists\nCurrent blocks are {self.get_block_names()}"
        )

    def get_block_value(self, name: str, to_string: bool = False, attempts: int = 3) -> Any:
        return self.get_pv_value(self.get_pv_from_block(name), to_string, attempts)

    def get_block_units(self, block_name: str) -> str | None:
        pv_name = remove_field_from_pv(self.get_pv_from_block(block_name))
        if not self.block_exists(block_name) and not self._in_configuration(block_name):
            raise self._no_such_block(block_name)
        if not Wrapper.pv_exists(pv_name):
            raise UnableToConnectToPVException(pv_name, "Connection timeout (event)")
        from genie_python.genie_cachannel_wrapper import _connected, _native, _types

        ct = _types()
        if _native(_connected(pv_name)) in (ct.STRING, ct.CHAR, ct.ENUM):
            return None
        return Wrapper.get_pv_value(pv_name + ".EGU")

    def set_block_value(
        self,
        name: str,
        value: Any = None,
        runcontrol: bool | None = None,
        lowlimit: float | None = None,
        highlimit: float | None = None,
        wait: bool | None = False,
    ) -> None:
        if wait is not None and runcontrol is not None:
            raise Exception(
                "Cannot enable or disable runcontrol at the same time as setting a wait"
            )
        full_name = self.get_pv_from_block(name)
        if lowlimit is not None and highlimit is not None:
            if lowlimit > highlimit:
                print(
                    f"Low limit ({lowlimit}) higher than high limit ({highlimit}), "
                    "swapping them around for you"
                )
                lowlimit, highlimit = highlimit, lowlimit
            if isinstance(value, int | float) and wait and not lowlimit < value < highlimit:
                print(
                    f"Warning the range {lowlimit} to {highlimit} does not cover setpoint of "
                    f"{value}, may wait forever"
                )
        if value is not None:
            if self.pv_exists(full_name + ":SP"):
                self.set_pv_value(full_name + ":SP", value)
            else:
                self.set_pv_value(full_name, value)
        if wait:
            self.waitfor.start_waiting(name, value, lowlimit, highlimit)
            return
        if runcontrol is not None:
            self.set_pv_value(full_name + RC_ENABLE, 1 if runcontrol else 0)
        if lowlimit is not None:
            self.set_pv_value(full_name + RC_LOW, lowlimit)
        if highlimit is not None:
            self.set_pv_value(full_name + RC_HIGH, highlimit)

    def get_runcontrol_settings(self, block_name: str) -> tuple[Any, Any, Any]:
        try:
            block_pv = self.get_pv_from_block(block_name)
            enabled = self.get_pv_value(block_pv + RC_ENABLE) == "YES"
            low = self.get_pv_value(block_pv + RC_LOW)
            high = self.get_pv_value(block_pv + RC_HIGH)
            return enabled, low, high
        except UnableToConnectToPVException:
            return "UNKNOWN", "UNKNOWN", "UNKNOWN"

    def check_alarms(self, blocks: tuple[str, ...] | list[str]) -> tuple[list, list, list]:
        states = self._get_fields_from_blocks(list(blocks), "SEVR", "alarm state")
        return (
            [b for b, s in states if s == "MINOR"],
            [b for b, s in states if s == "MAJOR"],
            [b for b, s in states if s == "INVALID"],
        )

    def check_limit_violations(self, blocks: list[str]) -> list[str]:
        return [
            b for b, v in self._get_fields_from_blocks(list(blocks), "LVIO", "limit violation") if v
        ]

    def _get_fields_from_blocks(
        self, blocks: list[str], field: str, description: str
    ) -> list[tuple[str, Any]]:
        values = []
        for block in blocks:
            if self.block_exists(block):
                name = self.correct_blockname(block, False)
                try:
                    value = self.get_pv_value(
                        f"{self.get_pv_from_block(block)}.{field}", attempts=1
                    )
                    values.append((name, value))
                except OSError:
                    print(f"Could not get {description} for block: {block}")
            else:
                print(f"Block {block} does not exist, so ignoring it")
        return values

    def get_pv_alarm(self, pv_name: str) -> str:
        try:
            return self.get_pv_value(f"{remove_field_from_pv(pv_name)}.SEVR", to_string=True)
        except Exception:
            return "UNKNOWN"

    def get_alarm_from_block(self, block: str) -> str:
        return self.get_pv_alarm(self.get_pv_from_block(block))

    def get_block_data(self, block: str, fail_fast: bool = False) -> OrderedDict:
        """genie's ``cget``: connected, name, value, unit, runcontrol, lowlimit,
        highlimit, alarm, in that order. Raises when the block is neither served
        nor in the configuration."""
        ans: OrderedDict = OrderedDict()
        ans["connected"] = True
        if not self.block_exists(block, fail_fast):
            if self._in_configuration(block):
                ans["connected"] = False
            else:
                raise self._no_such_block(block)
        ans["name"] = block
        ans["value"] = self.get_block_value(block) if ans["connected"] else None
        try:
            ans["unit"] = self.get_block_units(block) if ans["connected"] else None
        except UnableToConnectToPVException:
            ans["unit"] = "Unable to connect to .EGU PV"
        ans["runcontrol"], ans["lowlimit"], ans["highlimit"] = self.get_runcontrol_settings(block)
        if fail_fast and not ans["connected"]:
            ans["alarm"] = "UNKNOWN"
        else:
            ans["alarm"] = self.get_alarm_from_block(block)
        return ans
