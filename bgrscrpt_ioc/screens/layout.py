"""One layout of the status screen, in widgets that every output format can draw.

Every PV a widget names comes from :func:`pv_names`, the list the IOC itself
serves (``--list-pvs``): :class:`Screen` refuses a name that is not on it, so
the screens cannot drift from the IOC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bgrscrpt_ioc.ca.pvdb import IOC_GROUP, pv_names
from bgrscrpt_ioc.ca.slot_pvs import STATUS_LABELS
from bgrscrpt_ioc.ca.watch_pvs import STATE_LABELS, WATCH_GROUP
from bgrscrpt_ioc.core.watch import ALARM_LABELS

Colour = tuple[int, int, int]

GREY: Colour = (200, 200, 200)
DARK_GREY: Colour = (160, 160, 160)
GREEN: Colour = (110, 210, 110)
PALE_YELLOW: Colour = (255, 240, 160)
YELLOW: Colour = (255, 210, 0)
ORANGE: Colour = (255, 160, 60)
RED: Colour = (255, 70, 70)
MAGENTA: Colour = (230, 80, 230)
HEADER: Colour = (60, 90, 140)
PANEL: Colour = (232, 236, 242)

# What each state looks like, by label; the rules use the IOC's own label order.
SLOT_COLOURS: dict[str, Colour] = {
    "STOPPED": GREY,
    "STARTING": PALE_YELLOW,
    "RUNNING": GREEN,
    "BACKOFF": YELLOW,
    "STOPPING": PALE_YELLOW,
    "EXITED": DARK_GREY,
    "FATAL": RED,
}
WATCH_COLOURS: dict[str, Colour] = {
    "DISABLED": GREY,
    "OK": GREEN,
    "PENDING": YELLOW,
    "RESTARTING": ORANGE,
    "VERIFYING": PALE_YELLOW,
    "FAILED": RED,
    "LOCKOUT": RED,
}
ALARM_COLOURS: dict[str, Colour] = {
    "NO_ALARM": GREEN,
    "MINOR": YELLOW,
    "MAJOR": RED,
    "INVALID": MAGENTA,
    "DISCONNECTED": MAGENTA,
}

WIDTH = 960
ROW = 26
SLOT_HEIGHT = 300
WATCH_HEIGHT = 62


@dataclass
class Widget:
    """One widget. ``kind``: label, text, log, button, combo, entry, led, link, box."""

    kind: str
    x: int
    y: int
    w: int
    h: int
    text: str = ""
    pv: str | None = None
    value: str = ""  # what a button writes
    url: str = ""  # what a link opens
    colours: dict[int, Colour] = field(default_factory=dict)  # enum index -> background
    background: Colour | None = None
    foreground: Colour | None = None
    bold: bool = False
    units: bool = False


@dataclass
class Screen:
    title: str
    width: int
    height: int
    widgets: list[Widget]
    macros: dict[str, str]


class _Builder:
    def __init__(self, known: list[str]):
        self.known = set(known)
        self.widgets: list[Widget] = []

    def pv(self, name: str) -> str:
        if name not in self.known:
            raise ValueError(f"{name} is not a PV of the IOC (see --list-pvs)")
        return name

    def add(self, kind: str, x: int, y: int, w: int, h: int = ROW - 4, **kw) -> Widget:
        if kw.get("pv") is not None:
            kw["pv"] = self.pv(kw["pv"])
        widget = Widget(kind, x, y, w, h, **kw)
        self.widgets.append(widget)
        return widget

    def field(self, label: str, x: int, y: int, pv: str, w: int = 80, label_w: int = 70) -> None:
        self.add("label", x, y, label_w, text=label)
        self.add("text", x + label_w, y, w, pv=pv, units=True)


def _rule(labels: tuple[str, ...], colours: dict[str, Colour]) -> dict[int, Colour]:
    return {labels.index(name): colour for name, colour in colours.items()}


def build_screen(
    slots: list[str],
    watches: list[str],
    *,
    prefix: str = "$(P)",
    plot_url_macro: str = "PLOT_URL",
    title: str = "Background scripts",
) -> Screen:
    """The status screen: the IOC's own PVs, one section per slot, the watches' header
    (NAMES, DRYRUN: served even with no watch), one section per watch."""
    b = _Builder(pv_names(prefix, slots, watches))
    ioc = f"{prefix}{IOC_GROUP}:"
    y = 8
    b.add("box", 0, 0, WIDTH, 44, background=HEADER)
    b.add("label", 12, y, 420, 28, text=f"{title}  {prefix}", foreground=(255, 255, 255), bold=True)
    x = 450
    for label, name in (
        ("IOC heartbeat", "HEARTBEAT"),
        ("Uptime", "UPTIME"),
        ("Version", "VERSION"),
    ):
        b.add("label", x, y + 3, 90, text=label, foreground=(255, 255, 255))
        b.add("text", x + 90, y + 3, 70 if name != "VERSION" else 60, pv=f"{ioc}{name}", units=True)
        x += 170
    y = 52
    _ioc_health(b, ioc, y)
    y += ROW + 4
    for slot in slots:
        _slot_section(b, prefix, slot, y, plot_url_macro)
        y += SLOT_HEIGHT
    _watch_header(b, prefix, y)
    y += ROW + 6
    for watch in watches:
        _watch_section(b, prefix, watch, y)
        y += WATCH_HEIGHT
    # Only defaults for the plot links: P always comes from whoever opens the
    # screen (BOY lets a display's own macros win over its parent's).
    macros = {}
    for slot in slots:
        macros[f"{plot_url_macro}_{slot[-2:]}"] = "http://localhost:8989/"
    return Screen(title, WIDTH, y + 8, b.widgets, macros)


def _ioc_health(b: _Builder, ioc: str, y: int) -> None:
    """The IOC's own trouble (MSG: the state database) and its event loop's lag."""
    b.add("label", 12, y, 90, text="IOC message")
    b.add("text", 102, y, WIDTH - 330, pv=f"{ioc}MSG")
    b.field("Loop lag", WIDTH - 220, y, f"{ioc}LOOP_LAG", w=120, label_w=80)


def _slot_section(b: _Builder, prefix: str, slot: str, y: int, plot_macro: str) -> None:
    p = f"{prefix}{slot}:"
    b.add("box", 4, y, WIDTH - 8, SLOT_HEIGHT - 8, background=PANEL)
    b.add("label", 12, y + 4, 120, text=slot, bold=True)
    b.add("label", 140, y + 4, 50, text="Script")
    b.add("text", 190, y + 4, WIDTH - 210, pv=p + "SCRIPT")
    y += ROW + 2
    b.add("label", 12, y, 50, text="Status")
    b.add(
        "text", 62, y, 110, pv=p + "STATUS", colours=_rule(STATUS_LABELS, SLOT_COLOURS), bold=True
    )
    for i, (command, text) in enumerate(
        (("START", "Start"), ("STOP", "Stop"), ("RESTART", "Restart"))
    ):
        b.add("button", 182 + i * 76, y, 70, text=text, pv=p + command, value="1")
    b.field("Heartbeat", 420, y, p + "HEARTBEAT", w=70)
    b.field("PID", 580, y, p + "PID", w=70, label_w=40)
    b.field("Uptime", 710, y, p + "UPTIME", w=80, label_w=60)
    y += ROW
    b.field("Starts", 12, y, p + "START_CNT", w=60, label_w=50)
    b.field("Exit code", 140, y, p + "EXIT_CODE", w=60)
    b.add("label", 290, y, 80, text="Registered")
    b.add("led", 372, y + 2, 18, 18, pv=p + "REGISTERED")
    b.add("label", 420, y, 90, text="Auto restart")
    b.add("combo", 510, y, 120, pv=p + "AUTORESTART")
    b.add("label", 650, y, 80, text="Watchdog (s)")
    b.add("entry", 732, y, 70, pv=p + "WATCHDOG")
    y += ROW
    b.add("label", 12, y, 60, text="Message")
    b.add("text", 72, y, WIDTH - 92, pv=p + "MSG")
    y += ROW
    b.add("label", 12, y, 60, text="Plot")
    b.add("text", 72, y, 500, pv=p + "PLOT_URL")
    b.add(
        "link",
        582,
        y,
        110,
        text="Open plot",
        url=f"$({plot_macro}_{slot[-2:]})",
    )
    y += ROW
    b.add("label", 12, y, 60, text="Log")
    b.add("log", 72, y, WIDTH - 92, SLOT_HEIGHT - 8 - (5 * ROW + 6) - 8, pv=p + "LOG")


def _watch_header(b: _Builder, prefix: str, y: int) -> None:
    b.add("box", 0, y, WIDTH, ROW + 2, background=HEADER)
    b.add(
        "label",
        12,
        y + 3,
        190,
        text="Alarm-recovery watches",
        foreground=(255, 255, 255),
        bold=True,
    )
    # Every watch of the IOC by name: the W macro of the watch screen takes one of them.
    b.add("text", 206, y + 3, 430, pv=f"{prefix}{WATCH_GROUP}:NAMES")
    b.add("label", 650, y + 3, 170, text="Dry run (send nothing)", foreground=(255, 255, 255))
    b.add("combo", 822, y + 3, 80, pv=f"{prefix}{WATCH_GROUP}:DRYRUN")


def _watch_section(b: _Builder, prefix: str, watch: str, y: int) -> None:
    p = f"{prefix}{WATCH_GROUP}:{watch}:"
    b.add("box", 4, y, WIDTH - 8, WATCH_HEIGHT - 6, background=PANEL)
    b.add("label", 12, y + 4, 120, text=watch, bold=True)
    b.add(
        "text",
        134,
        y + 4,
        100,
        pv=p + "STATE",
        colours=_rule(STATE_LABELS, WATCH_COLOURS),
        bold=True,
    )
    b.add("text", 240, y + 4, 110, pv=p + "ALARM", colours=_rule(ALARM_LABELS, ALARM_COLOURS))
    b.add("label", 360, y + 4, 50, text="Enable")
    b.add("combo", 410, y + 4, 70, pv=p + "ENABLE")
    b.add("button", 490, y + 4, 80, text="Restart", pv=p + "RESTART", value="1")
    b.field("Restarts", 580, y + 4, p + "RESTART_CNT", w=50, label_w=65)
    b.add("label", 700, y + 4, 40, text="Last")
    b.add("text", 740, y + 4, WIDTH - 760, pv=p + "LAST_RESTART")
    b.add("label", 12, y + 4 + ROW, 60, text="Message")
    b.add("text", 72, y + 4 + ROW, WIDTH - 92, pv=p + "MSG")
