"""The PVs of one slot, ``$(P)BGRSCRPT_NN:`` (docs/pvs.md).

A translation layer only: puts become calls on a :class:`SlotController`, and
:meth:`SlotPVs.publish` shows a :class:`SlotView`. Every decision belongs to the
controller; this module only refuses what cannot be a valid put at all (an
unknown enum label, a watchdog period that is not a number of seconds).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, NoReturn, Protocol

from caproto import AlarmSeverity, SkipWrite, SubscriptionType
from caproto.server import pvproperty

from ..core.slot import AUTORESTART_LABELS, SlotState
from . import properties as props
from .channels import (
    CheckedDouble,
    CheckedEnum,
    PutRejected,
    describe_record,
    preset_alarm,
    preset_value,
)
from .epics_reads import BasePVGroup

NO_YES = ("No", "Yes")
STATUS_LABELS = tuple(state.name for state in SlotState)
STATUS_SEVERITY: dict[int, AlarmSeverity] = {
    SlotState.BACKOFF: AlarmSeverity.MINOR_ALARM,
    SlotState.FATAL: AlarmSeverity.MAJOR_ALARM,
}
"""STATUS alarm severities; every other state is NO_ALARM."""

WATCHDOG_MAX = 86400.0
"""Longest watchdog period a put may set, in seconds (one day)."""

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


def char_waveform_text(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` as a char waveform value: UTF-8 bytes, at most ``limit`` of them.

    caproto sends a ``str`` one latin-1 byte per character, so the UTF-8 bytes
    are carried as latin-1 characters: clients decoding UTF-8 (EPICS 7, CS-Studio,
    pyepics) see the text, and no character can make a read fail. A cut never
    splits a character. ``keep_end`` keeps the last bytes (for LOG).
    """
    raw = text.encode("utf-8", "replace")
    if len(raw) > limit:
        raw = raw[-limit:] if keep_end else raw[:limit]
        raw = raw.decode("utf-8", "ignore").encode("utf-8")
    return raw.decode("latin-1")


class SlotPVs(BasePVGroup):
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
        upper_ctrl_limit=WATCHDOG_MAX,
        lower_disp_limit=0.0,
        upper_disp_limit=WATCHDOG_MAX,
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

    def __init__(self, prefix: str, controller: SlotController, view: SlotView):
        self.controller = controller
        super().__init__(prefix)
        # SlotView's field names are the PV names in lower case.
        self._channels = {
            f.name: self.pvdb[f"{self.prefix}{f.name.upper()}"] for f in fields(SlotView)
        }
        for channel in self.pvdb.values():
            describe_record(
                channel, STATUS_SEVERITY if channel is self._channels["status"] else None
            )
        for name, value in self._encode(view).items():
            preset_value(self._channels[name], value)
        preset_alarm(
            self._channels["status"], *props.state_alarm(STATUS_SEVERITY, SlotState(view.status))
        )
        self._shown = replace(view)

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
        self._shown.autorestart = mode
        return value

    @watchdog.putter  # type: ignore[no-redef]
    async def watchdog(self, instance: Any, value: Any) -> float:
        seconds = _watchdog_seconds(value)
        self.controller.set_watchdog(seconds)
        self._shown.watchdog = seconds
        return seconds

    # ---- state out ---------------------------------------------------------

    async def publish(self, view: SlotView) -> None:
        """Show ``view``: write only the fields that differ from what is shown.

        A PV's value is what was last published, or put and accepted since.
        Raises ValueError for a ``status`` or ``autorestart`` outside its enum.
        """
        changed = {
            f.name
            for f in fields(SlotView)
            if getattr(view, f.name) != getattr(self._shown, f.name)
        }
        if not changed:
            return
        # STATUS goes last: a client that reacts to a new state finds MSG, PID and
        # EXIT_CODE already telling the same story; MSG just before it, after the LOG
        # whose last lines it quotes.
        last = {"msg": 1, "status": 2}
        encoded = sorted(
            self._encode(view, only=changed).items(), key=lambda kv: last.get(kv[0], 0)
        )
        for name, value in encoded:
            channel = self._channels[name]
            if name == "status":
                status, severity = props.state_alarm(STATUS_SEVERITY, SlotState(view.status))
                if (status, severity) != (channel.alarm.status, channel.alarm.severity):
                    # One event carrying value and alarm; DBE_ALARM so alarm-only
                    # subscribers (alarm servers) hear it too.
                    await channel.write(
                        value,
                        verify_value=False,
                        flags=SubscriptionType.DBE_ALARM,
                        status=status,
                        severity=severity,
                    )
                    continue
            # verify_value=False: publishing must not run the putters.
            await channel.write(value, verify_value=False)
        self._shown = replace(view)

    @staticmethod
    def _encode(view: SlotView, only: set[str] | None = None) -> dict[str, Any]:
        """PV values for the SlotView fields ``only`` (all when None), by field name."""
        want = (lambda name: True) if only is None else only.__contains__
        out: dict[str, Any] = {}
        if want("status"):
            out["status"] = _label(STATUS_LABELS, view.status, "status")
        for name in ("heartbeat", "pid", "start_cnt", "exit_code", "uptime", "nproc"):
            if want(name):
                out[name] = int(getattr(view, name))
        if want("registered"):
            out["registered"] = NO_YES[bool(view.registered)]
        if want("autorestart"):
            out["autorestart"] = _label(AUTORESTART_LABELS, view.autorestart, "autorestart")
        for name in ("watchdog", "cpu", "rss", "memory_max"):
            if want(name):
                out[name] = float(getattr(view, name))
        for name, limit in TEXT_LIMITS.items():
            if want(name):
                out[name] = char_waveform_text(getattr(view, name), limit, keep_end=name == "log")
        return out


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
    if not math.isfinite(seconds) or not 0.0 <= seconds <= WATCHDOG_MAX:
        raise PutRejected(f"watchdog must be 0 (off) to {WATCHDOG_MAX:g} s, not {seconds!r}")
    return seconds
