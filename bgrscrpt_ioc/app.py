"""The IOC: one asyncio loop serving the PVs, supervising the scripts, publishing state.

Start-up order matters: lock the var dir (a second IOC must not touch the
database), kill what a previous IOC left behind, start the guardian (so that no
script can outlive us), then serve PVs and start the scripts.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from bgrscrpt_ioc.ca.access import apply_access
from bgrscrpt_ioc.ca.pvdb import build_pvdb
from bgrscrpt_ioc.ca.server import serve
from bgrscrpt_ioc.recovery.service import WatchService
from bgrscrpt_ioc.settings import Settings
from bgrscrpt_ioc.state_db import StateDB, VarDirLock
from bgrscrpt_ioc.supervisor.guardian import Guardian
from bgrscrpt_ioc.supervisor.leftovers import kill_leftover_group
from bgrscrpt_ioc.supervisor.process import setpriv_prefix
from bgrscrpt_ioc.supervisor.runner import SlotRunner

log = logging.getLogger("bgrscrpt_ioc")

# PV updates go out at most this often: bounds CPU under an output flood.
PUBLISH_INTERVAL = 0.05
# LOG is the one PV that can change on every publication (a script printing
# non-stop); at 4 Hz it stays live for people and cheap for 50 subscribers.
LOG_INTERVAL = 0.25


class _OneLineBeaconFailures(logging.Filter):
    """caproto logs every beacon it fails to send with a traceback.

    A beacon to an address where no CA repeater listens is refused (ICMP port
    unreachable), every few seconds for the life of the IOC. Say so once per
    address and reason, in one line, and keep the log readable.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Failed to send beacon"):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        args = record.args if isinstance(record.args, tuple) else ()
        address = args[0] if args else "?"
        if isinstance(address, tuple) and len(address) == 2:
            address = f"{address[0]}:{address[1]}"
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
        key = (str(address), type(exc).__name__)
        if key in self._seen:
            return False
        self._seen.add(key)
        record.msg = "cannot send beacons to %s (%s); no CA repeater there? Not repeated"
        record.args = (address, reason)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = None
        record.exc_text = None
        return True


def quiet_beacon_failures() -> None:
    """Install the one-line beacon filter on caproto's server logger (idempotent)."""
    logger = logging.getLogger("caproto.ctx")
    if not any(isinstance(f, _OneLineBeaconFailures) for f in logger.filters):
        logger.addFilter(_OneLineBeaconFailures())


@dataclass(frozen=True)
class IocOptions:
    prefix: str
    config_dir: Path
    var_dir: Path
    settings: Settings
    interfaces: list[str]


class Publisher:
    """Coalesces change notices into at most one PV publication per interval."""

    def __init__(self, runners: list[SlotRunner], slot_groups: dict, ioc_group, started: float):
        self.runners = runners
        self.slot_groups = slot_groups
        self.ioc_group = ioc_group
        self.started = started
        self.heartbeat = 0
        self._dirty = asyncio.Event()
        self._log_shown: dict[str, tuple[str, float]] = {}
        self._events: dict[str, tuple] = {}

    def changed(self) -> None:
        self._dirty.set()

    def _log_due(self, slot: str, text: str, now: float, event: tuple) -> bool:
        """LOG changes with every line a script prints: show it at most every LOG_INTERVAL,
        except with an event (a new state, PID or MSG), which must come with the output
        that led to it: a traceback's last line and the MSG that quotes it, together."""
        shown, when = self._log_shown.get(slot, ("", -LOG_INTERVAL))
        if text == shown:
            return True
        if now - when < LOG_INTERVAL and self._events.get(slot) == event:
            return False
        self._log_shown[slot] = (text, now)
        return True

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            now = time.monotonic()
            for runner in self.runners:
                view = runner.view(now)
                event = (view.status, view.pid, view.msg)
                if not self._log_due(runner.name, view.log, now, event):
                    view.log = self._log_shown[runner.name][0]
                    self._dirty.set()  # publish it on a later round
                self._events[runner.name] = event
                try:
                    await self.slot_groups[runner.name].publish(view)
                except Exception:  # a publication problem must never stop the IOC
                    log.exception("publishing %s failed", runner.name)
            try:
                await self.ioc_group.publish(self.heartbeat, int(now - self.started))
            except Exception:  # nor here: the task would end and every PV freeze
                log.exception("publishing the IOC's PVs failed")
            await asyncio.sleep(PUBLISH_INTERVAL)

    async def tick(self) -> None:
        """1 Hz: the IOC's HEARTBEAT, each healthy slot's HEARTBEAT, UPTIMEs.

        Scheduled against absolute monotonic seconds so beats do not drift.
        """
        next_beat = self.started + 1.0
        while True:
            await asyncio.sleep(max(next_beat - time.monotonic(), 0.0))
            now = time.monotonic()
            self.heartbeat += 1
            for runner in self.runners:
                runner.beat(now)
            next_beat += 1.0
            if next_beat < now:  # the loop was blocked: resynchronise, do not burst
                next_beat = now + 1.0
            self.changed()


async def end_tasks(tasks: list[asyncio.Task], timeout: float = 5.0) -> None:
    """Cancel ``tasks`` and wait until they have ended, cancelling again as needed.

    A cancellation can be lost: Python 3.11's ``asyncio.wait_for`` swallows one
    that arrives just as its inner wait completes. A caproto circuit's
    subscription task then waits for updates that never come, and the IOC would
    never exit on SIGTERM.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = [task for task in tasks if not task.done()]
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)
        pending = [task for task in pending if not task.done()]
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: how a task ended is no news at shutdown
    if pending:
        log.warning("%d task(s) did not end when cancelled: %s", len(pending), pending)


def _clean_leftovers(db: StateDB) -> None:
    for run in db.open_runs():
        killed = kill_leftover_group(run.pid, run.slot)
        if killed:
            log.warning(
                "%s: killed %d process(es) left by a previous IOC: %s",
                run.slot,
                len(killed),
                killed,
            )
        db.run_ended(run.id, -9 if killed else 0, "ioc-exit")


async def run_ioc(options: IocOptions) -> int:
    """Serve until SIGINT or SIGTERM; stop every script first; return the exit status."""
    loop = asyncio.get_running_loop()
    options.var_dir.mkdir(parents=True, exist_ok=True)
    lock = VarDirLock(options.var_dir)
    lock.acquire()  # raises VarDirInUse, reported by the CLI
    db = StateDB(options.var_dir / "state.sqlite")
    guardian = Guardian()
    stop_requested = asyncio.Event()
    tasks: list[asyncio.Task] = []
    runners: list[SlotRunner] = []
    watches: WatchService | None = None
    try:
        _clean_leftovers(db)
        guardian.start()
        # Probe setpriv now, not on the event loop when the first START arrives.
        if not setpriv_prefix():
            log.warning("no setpriv with --pdeathsig: scripts start the slower way (full fork)")
        started = time.monotonic()
        publisher_ref: list[Publisher] = []

        def changed() -> None:
            if publisher_ref:
                publisher_ref[0].changed()

        for slot in options.settings.slots:
            runners.append(
                SlotRunner(
                    slot,
                    config_dir=options.config_dir,
                    var_dir=options.var_dir,
                    prefix=options.prefix,
                    db=db,
                    guardian=guardian,
                    on_change=changed,
                )
            )
        # Always: DRYRUN and NAMES are served even when no [[watch]] is configured.
        watches = WatchService(options.settings.watches, prefix=options.prefix, db=db)
        now = time.monotonic()
        pvdb, ioc_group, slot_groups = build_pvdb(
            options.prefix, [(r.name, r, r.view(now)) for r in runners], watches.pvs
        )
        settings = options.settings
        if settings.write_hosts is not None or settings.write_users is not None:
            apply_access(pvdb, write_hosts=settings.write_hosts, write_users=settings.write_users)
        publisher = Publisher(runners, slot_groups, ioc_group, started)
        publisher_ref.append(publisher)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop_requested.set)

        quiet_beacon_failures()
        server = asyncio.create_task(serve(pvdb, options.interfaces))
        tasks += [
            server,
            asyncio.create_task(publisher.run()),
            asyncio.create_task(publisher.tick()),
        ]
        for runner in runners:
            runner.open(loop)
        log.info(
            "serving %d PVs with prefix %r on %s; config dir %s; var dir %s",
            len(pvdb),
            options.prefix,
            ", ".join(options.interfaces),
            options.config_dir,
            options.var_dir,
        )
        for runner in runners:
            runner.start_if_present()
        publisher.changed()
        await watches.start()
        # What start-up built lives as long as the IOC: keep it out of the cyclic
        # GC's full collections, which otherwise scan it all (tens of ms, measured),
        # pausing every client's requests and monitors while they run.
        gc.freeze()

        stopper = asyncio.create_task(stop_requested.wait())
        done, _ = await asyncio.wait({server, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if server in done and not stop_requested.is_set():
            exc = server.exception()
            log.error("the Channel Access server stopped: %s", exc)
            return 1
        log.info("shutting down: stopping every script")
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        # Scripts first: nothing may outlive the IOC.
        await asyncio.gather(*(r.shutdown() for r in runners), return_exceptions=True)
        if watches is not None:
            try:
                await watches.close()
            except Exception:  # shutting down regardless
                log.exception("closing the watches failed")
        await end_tasks(tasks)
        # Then whatever the server left (its circuits' tasks): asyncio.run would
        # cancel those only once and wait for ever.
        await end_tasks([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])
        guardian.close()
        db.close()
        lock.release()


def main_loop(options: IocOptions) -> int:
    """Run the IOC on a fresh event loop (the CLI's entry point)."""
    os.environ.setdefault("EPICS_CA_SERVER_PORT", "5064")
    return asyncio.run(run_ioc(options))
