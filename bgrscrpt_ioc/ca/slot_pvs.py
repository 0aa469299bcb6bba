"""The PVs of one slot, ``$(P)BGRSCRPT_NN:`` (docs/pvs.md).

A translation layer only: puts become calls on a :class:`SlotController`, and
``publish`` (:class:`.view_group.ViewGroup`) shows a :class:`SlotView`. Every
decision belongs to the controller; this module only refuses what cannot be a
valid put at all (an unknown enum label, a watchdog period that is not a number
of seconds).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from caproto import AlarmSeverity, SkipWrite
from caproto.server import pvproperty

from ..core.slot import AUTORESTART_LABELS, WATCHDOG, SlotState
from . import properties as props
from .channels import CheckedDouble, CheckedEnum, PutRejected
from .view_group import RateLimit, ViewGroup, char_waveform_text

__all__ = ["SlotController", "SlotPVs", "SlotView", "char_waveform_text"]

NO_YES = ("No", "Yes")
STATUS_LABELS = tuple(state.name for state in SlotState)
STATUS_SEVERITY: dict[int, AlarmSeverity] = {
    SlotState.BACKOFF: AlarmSeverity.MINOR_ALARM,
    SlotState.FATAL: AlarmSeverity.MAJOR_ALARM,
}
"""STATUS alarm severities; every other state is NO_ALARM."""

LOG_INTERVAL = 0.25
"""LOG is the one PV that can change on every publication (a script printing non-stop);
at 4 Hz it stays live for people and cheap for 50 subscribers."""

TEXT_LIMITS = {"script": 1024, "msg": 1024, "log": 5120, "plot_url": 256}
"""Bytes each char waveform holds (its NELM)."""


@dataclass
class SlotView:
    """What one slot's PVs show; the runner builds it from the core."""

    status: int = 0  # SlotState value
    heartbeat: int = 0
    pid: int = 0
    start_cnt: int = 0
    exit_code: int = 0
    uptime: int = 0
    registered: bool = False
    autorestart: int = 1  # index into AUTORESTART_LABELS
    watchdog: float = 0.0
    script: str = ""
    msg: str = ""
    log: str = ""
    plot_url: str = ""
    cpu: float = 0.0  # % of one core, every process of the run
    rss: float = 0.0  # MB, every process of the run
    nproc: int = 0
    memory_max: float = 0.0  # MB, 0 = no limit


class SlotController(Protocol):
    """What a slot's puts call; implemented by the runner.

    Each method may raise ``ValueError(msg)`` to reject the put: the client then
    gets an error and the PV keeps its value.
    """

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def restart(self) -> None: ...
    def set_autorestart(self, mode: int) -> None: ...
    def set_watchdog(self, seconds: float) -> None: ...


class SlotPVs(ViewGroup):
    """PVs of one slot: commands and settings in, the slot's state out."""

    start = props.switch("START", "Start the script")
    stop = props.switch("STOP", "Stop the script")
    restart = props.switch("RESTART", "Stop, then start the script")
    status = props.state("STATUS", STATUS_LABELS, "Supervision state of the script")
    heartbeat = props.counter("HEARTBEAT", "+1 per second while running and healthy")
    pid = props.counter("PID", "PID of the script, 0 when none")
    start_cnt = props.counter("START_CNT", "Starts since the IOC started")
    exit_code = props.counter("EXIT_CODE", "Last exit status, -N for signal N")
    uptime = props.counter("UPTIME", "Seconds since the current run started", units="s")
    registered = props.state("REGISTERED", NO_YES, "Script called register_ioc_start", record="bi")
    autorestart = pvproperty(
        name="AUTORESTART",
        alarm_group="AUTORESTART",
        dtype=CheckedEnum,
        enum_strings=AUTORESTART_LABELS,
        value=AUTORESTART_LABELS[1],
        record="mbbo",
        doc="When to restart the script by itself",
    )
    watchdog = pvproperty(
        name="WATCHDOG",
        alarm_group="WATCHDOG",
        dtype=CheckedDouble,
        value=0.0,
        record="ao",
        doc="Kill if no beat for this long, 0=off",
        units="s",
        precision=1,
        lower_ctrl_limit=0.0,
        upper_ctrl_limit=WATCHDOG.high,
        lower_disp_limit=0.0,
        upper_disp_limit=WATCHDOG.high,
    )
    script = props.text("SCRIPT", "Absolute path of the script", TEXT_LIMITS["script"])
    msg = props.text("MSG", "Last event in words", TEXT_LIMITS["msg"])
    # Not "log": PVGroup.log is the group's logger.
    script_log = props.text("LOG", "Last 20 lines of the script output", TEXT_LIMITS["log"])
    plot_url = props.text(
        "PLOT_URL", "URL of the live plot, empty if none", TEXT_LIMITS["plot_url"]
    )
    cpu = props.measure("CPU", "CPU of the script and all it started", "%")
    rss = props.measure("RSS", "RSS of the script and all it started", "MB")
    nproc = props.counter("NPROC", "Processes of the script, itself too")
    memory_max = props.measure("MEMORY_MAX", "Memory limit, 0=none", "MB", precision=0)

    state_severities = {"status": STATUS_SEVERITY}
    last = ("msg", "status")  # MSG after the LOG it quotes, STATUS after everything
    # LOG at most every LOG_INTERVAL, but always with a new state, PID or MSG: a
    # traceback's last line and the MSG that quotes it come together.
    rate_limits = (RateLimit("log", LOG_INTERVAL, unless=("status", "pid", "msg")),)

    def __init__(self, prefix: str, controller: SlotController, view: SlotView):
        self.controller = controller
        super().__init__(prefix, view)

    # ---- puts --------------------------------------------------------------

    # caproto's pattern: a putter or startup hook takes its pvproperty's name (the
    # decorator returns the property), which mypy reads as a redefinition.
    @start.putter  # type: ignore[no-redef]
    async def start(self, instance: Any, value: str) -> str:
        return _run_command(value, self.controller.start)

    @stop.putter  # type: ignore[no-redef]
    async def stop(self, instance: Any, value: str) -> str:
        return _run_command(value, self.controller.stop)

    @restart.putter  # type: ignore[no-redef]
    async def restart(self, instance: Any, value: str) -> str:
        return _run_command(value, self.controller.restart)

    @autorestart.putter  # type: ignore[no-redef]
    async def autorestart(self, instance: Any, value: str) -> str:
        mode = AUTORESTART_LABELS.index(value)  # CheckedEnum passes only known labels
        self.controller.set_autorestart(mode)
        self.shown_put("autorestart", mode)
        return value

    @watchdog.putter  # type: ignore[no-redef]
    async def watchdog(self, instance: Any, value: Any) -> float:
        seconds = _watchdog_seconds(value)
        self.controller.set_watchdog(seconds)
        self.shown_put("watchdog", seconds)
        return seconds

    # ---- state out ---------------------------------------------------------

    def _encode_field(self, name: str, value: Any) -> Any:
        """The PV value of the SlotView field ``name``."""
        if name == "status":
            return _label(STATUS_LABELS, value, "status")
        if name == "registered":
            return NO_YES[bool(value)]
        if name == "autorestart":
            return _label(AUTORESTART_LABELS, value, "autorestart")
        if name in ("watchdog", "cpu", "rss", "memory_max"):
            return float(value)
        if name in TEXT_LIMITS:
            return char_waveform_text(value, TEXT_LIMITS[name], keep_end=name == "log")
        return int(value)


def _label(labels: tuple[str, ...], index: int, what: str) -> str:
    if not 0 <= int(index) < len(labels):
        raise ValueError(f"{what} {index} is outside 0..{len(labels) - 1}")
    return labels[int(index)]


def _run_command(value: str, action: Callable[[], None]) -> NoReturn:
    """A bo command: "On" runs it, "Off" does nothing; either way it reads back Off.

    The value never leaves Off, so the write is skipped: like an EPICS bo, which
    posts only on change, it sends no monitor update to every subscriber.
    """
    if value == "On":
        action()  # a ValueError rejects the put
    raise SkipWrite()


def _watchdog_seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise PutRejected(f"watchdog must be a number of seconds, not {value!r}") from None
    # Only what no controller could take; the controller checks the rest (WATCHDOG's range).
    if not math.isfinite(seconds) or not 0.0 <= seconds <= WATCHDOG.high:
        raise PutRejected(f"watchdog must be 0 (off) to {WATCHDOG.high:g} s, not {seconds!r}")
    return seconds
