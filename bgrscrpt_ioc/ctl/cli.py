"""``bgrscrpt``: look at and control a bgrscrpt_ioc over Channel Access.

Exit status: 0 done; 1 the action did not take effect, or no IOC answered (one
line on stderr says why); 2 a bad command line; 3 ``status`` found a slot down
on its own (BACKOFF, EXITED, FATAL) or a watch FAILED or in LOCKOUT.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tomllib
from pathlib import Path

from . import commands
from .ca import CaError, Client
from .commands import Failed, SlotRow, WatchRow
from .style import Style, use_colour

PROG = "bgrscrpt"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Status and control of the background scripts of a bgrscrpt_ioc, "
        "over Channel Access (EPICS_CA_ADDR_LIST etc. say where the IOC is).",
    )
    p.add_argument("--prefix", default=None, help="PV prefix (default: $MYPVPREFIX, else empty)")
    p.add_argument(
        "--timeout",
        type=float,
        default=20.0,
        help="seconds an action may take to show its effect (default 20)",
    )
    p.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="colour the output (default: on a terminal, unless NO_COLOR is set)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="settings file naming [[watch]] entries for status to show besides those the "
        "IOC lists in BGRSCRPT:WATCH:NAMES (for an IOC without NAMES, these and --watch "
        "are the only watches shown)",
    )
    p.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="NAME",
        help="a watch for status to show (repeatable; added to the IOC's own and --config's)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("status", help="a table of the slots and watches")
    s.add_argument("names", nargs="*", metavar="NAME", help="only these slots (NN) or watches")
    for verb, what in (
        ("start", "start a slot's script and wait until it runs"),
        ("stop", "stop a slot's script and wait until it has stopped"),
        ("restart", "stop then start a slot's script; wait for the new run"),
    ):
        sub.add_parser(verb, help=what).add_argument("slot", metavar="NN")
    lg = sub.add_parser("log", help="the last lines of a slot's output (LOG)")
    lg.add_argument("slot", metavar="NN")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    w = sub.add_parser("watch", help="enable, disable or restart an alarm-recovery watch")
    w.add_argument("action", choices=["enable", "disable", "restart"])
    w.add_argument("name", metavar="NAME")
    return p


def _watch_names(args: argparse.Namespace) -> list[str]:
    """Watches named on the command line, then those of the settings file."""
    names = list(args.watch)
    # Only an explicit --config: the IOC lists its own watches (NAMES), and a local
    # settings file found by default may well describe some other IOC.
    path = args.config
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"--config {path}: {exc}") from None
        for entry in data.get("watch", []):
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                names.append(entry["name"])
    return list(dict.fromkeys(names))


def _usage(usage: commands.Usage | None) -> list[str]:
    """CPU, MEMORY (with the limit when there is one) and PROCS cells."""
    if usage is None:
        return ["-", "-", "-"]
    limit = f"/{usage.memory_max:.1f}" if usage.memory_max > 0 else ""
    return [f"{usage.cpu:.1f}%", f"{usage.rss:.1f}{limit}MB", str(usage.nproc)]


def _uptime(seconds: int) -> str:
    hours, rest = divmod(max(0, int(seconds)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _table(rows: list[list[str]], style: Style, state_col: set[int]) -> list[str]:
    """Left-aligned columns; state columns coloured after padding, so they still line up."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            last = i == len(row) - 1
            width = 0 if last else widths[i]
            if n == 0:
                cells.append(style.bold(cell.ljust(width)))
            elif i in state_col:
                cells.append(style.state(cell, width))
            else:
                cells.append(cell.ljust(width))
        out.append("  ".join(cells).rstrip())
    return out


def _status(client: Client, args: argparse.Namespace, style: Style) -> int:
    commands.check_ioc(client)
    ioc = commands.read_ioc(client)
    wanted = set(args.names)
    slot_filter = set()
    watch_filter = set()
    for name in wanted:
        try:
            slot_filter.add(commands.slot_name(name))
        except ValueError:
            watch_filter.add(name)
    slots_available = commands.find_slots(client)
    slot_names = [s for s in slots_available if not wanted or s in slot_filter]
    missing = sorted(slot_filter - set(slots_available))
    if missing:
        raise Failed(
            f"{missing[0]}: no such slot on this IOC (slots: {', '.join(slots_available)})"
        )
    # The IOC lists its watches in NAMES; an older one does not, and then only the
    # watches named by --watch or the settings file are shown.
    served = commands.served_watches(client)
    watch_names = commands.watches_to_show(
        served, _watch_names(args), sorted(watch_filter) if wanted else None
    )
    for name in watch_names:
        commands.check_watch_in(client, name, served)
    slots: list[SlotRow] = [commands.read_slot(client, s) for s in slot_names]
    watches: list[WatchRow] = [commands.read_watch(client, name) for name in watch_names]

    lag = ""
    if ioc.loop_lag is not None:
        lag = f", loop lag {float(ioc.loop_lag.value):.1f} ms"
        if ioc.loop_lag.severity:
            lag += f" ({ioc.loop_lag.severity_name})"
    print(
        style.bold(f"IOC {client.prefix or '(no prefix)'}")
        + f"  version {ioc.version}, up {_uptime(ioc.uptime)}{lag}"
    )
    if ioc.msg:
        print(f"  {ioc.msg}")
    if slots:
        rows = [["SLOT", "STATUS", "PID", "UPTIME", "STARTS", "CPU", "MEMORY", "PROCS", "MESSAGE"]]
        for s in slots:
            running = s.status in commands.RUNNING_STATES
            rows.append([
                s.name,
                s.status,
                str(s.pid) if s.pid else "-",
                _uptime(s.uptime) if running else "-",
                str(s.starts),
                *_usage(s.usage),
                s.msg,
            ])  # fmt: skip
        print("\n".join(_table(rows, style, {1})))
    if watches:
        rows = [["WATCH", "STATE", "ALARM", "ENABLE", "RESTARTS", "LAST RESTART", "MESSAGE"]]
        for w in watches:
            rows.append(
                [w.name, w.state, w.alarm, w.enable, str(w.restarts), w.last_restart or "-", w.msg]
            )
        print("\n".join(_table(rows, style, {1, 2})))
    return 3 if commands.needs_attention(slots, watches, ioc) else 0


GAP_NOTE = (
    "LOG moved on by more than it shows: lines may be missing here"
    " (the slot's log file in the IOC's var dir has them all)"
)


def _log(client: Client, args: argparse.Namespace, style: Style) -> int:
    slot = commands.slot_name(args.slot)
    text = commands.log_text(client, slot)
    if text:
        print(text.rstrip("\n"), flush=True)
    if not args.follow:
        return 0
    try:
        for line in commands.follow_log(client, slot, text):
            if line is commands.Link.LOST:
                warning = f"{PROG}: {slot}: connection to the IOC lost; waiting"
                print(style.error(warning), file=sys.stderr, flush=True)
            elif line is commands.Link.BACK:
                print(f"{PROG}: {slot}: connected again", file=sys.stderr, flush=True)
            elif line is commands.Link.GAP:
                # On stdout, in the stream where the lines are missing.
                print(style.error(f"--- {GAP_NOTE} ---"), flush=True)
            else:
                print(line, flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follow ends
    return 0


def _run(args: argparse.Namespace, style: Style) -> int:
    prefix = args.prefix if args.prefix is not None else os.environ.get("MYPVPREFIX", "")
    # Never closed: the process ends with the command, and caproto's disconnect
    # would wait out its search threads (about 2 s) for nothing.
    client = Client(prefix)
    if args.command == "status":
        return _status(client, args, style)
    if args.command == "log":
        return _log(client, args, style)
    if args.command == "watch":
        if args.action == "restart":
            text = commands.watch_restart(client, args.name, args.timeout)
        else:
            text = commands.watch_enable(client, args.name, args.action == "enable", args.timeout)
    else:
        action = {"start": commands.start, "stop": commands.stop, "restart": commands.restart}
        text = action[args.command](client, commands.slot_name(args.slot), args.timeout)
    print(style.ok(text))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        if args.command in ("start", "stop", "restart", "log"):
            commands.slot_name(args.slot)  # a bad slot is a usage error, before any CA
    except (UsageError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    # caproto logs each circuit it loses or gives up on; with no logging set up,
    # Python would print those on stderr. The CLI says what matters in its own words.
    caproto_log = logging.getLogger("caproto")
    if not any(isinstance(h, logging.NullHandler) for h in caproto_log.handlers):
        caproto_log.addHandler(logging.NullHandler())
    style = Style(use_colour(sys.stdout, args.color))
    err_style = Style(use_colour(sys.stderr, args.color))
    try:
        return _run(args, style)
    except (Failed, CaError) as exc:
        print(err_style.error(f"{PROG}: {exc}"), file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `bgrscrpt log -f | head`: the reader went away; nothing left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # e.g. no network to search on
        print(err_style.error(f"{PROG}: {exc.strerror or exc}"), file=sys.stderr)
        return 1
