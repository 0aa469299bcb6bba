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

from caproto import AlarmSeverity

from bgrscrpt_ioc.ca.access import apply_access
from bgrscrpt_ioc.ca.pvdb import build_pvdb
from bgrscrpt_ioc.ca.server import IocContext
from bgrscrpt_ioc.ioc_health import LoopLag, health_message
from bgrscrpt_ioc.recovery.service import WatchService
from bgrscrpt_ioc.settings import Settings
from bgrscrpt_ioc.state_db import StateDB
from bgrscrpt_ioc.supervisor import accounting
from bgrscrpt_ioc.supervisor.containment import Containment, detect
from bgrscrpt_ioc.supervisor.env import own_ca_address
from bgrscrpt_ioc.supervisor.guardian import Guardian
from bgrscrpt_ioc.supervisor.leftovers import kill_leftover_group, sweep
from bgrscrpt_ioc.supervisor.runner import SlotRunner
from bgrscrpt_ioc.var_dir import VarDirLock, VarDirUnusable, check_var_dir

log = logging.getLogger("bgrscrpt_ioc")

# PV updates go out at most this often: bounds CPU under an output flood.
PUBLISH_INTERVAL = 0.05
# LOG is the one PV that can change on every publication (a script printing
# non-stop); at 4 Hz it stays live for people and cheap for 50 subscribers.
LOG_INTERVAL = 0.25
# Each stops the IOC the same way: every script stopped (SIGTERM, then SIGKILL after
# its stop timeout), the state database written, then exit. SIGHUP too: a closed
# terminal or a procServ/SSH session gone must not kill the scripts unrecorded.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class IocOptions:
    prefix: str
    config_dir: Path
    var_dir: Path
    settings: Settings
    interfaces: list[str]
    procserv_control: bool = False  # also serve $(P)CS:PS:<slot>: as procServControl does


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
        self.lag = LoopLag()
        self._lag_ms = 0.0
        self._msg: tuple[str, AlarmSeverity] = ("", AlarmSeverity.NO_ALARM)

    def set_msg(self, text: str, severity: AlarmSeverity) -> None:
        """The IOC-wide MSG and its severity (shown at the next publication)."""
        self._msg = (text, severity)
        self.changed()

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
                await self.ioc_group.publish_lag(self._lag_ms)
                await self.ioc_group.publish_msg(*self._msg)
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
            self.lag.note(now - next_beat)
            self._lag_ms = self.lag.take()
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


def _clean_leftovers(db: StateDB, containment: Containment) -> None:
    """Runs a dead IOC left open: kill what survives of them, and record how they ended.

    When the IOC dies without stopping its scripts (SIGKILL, a crash), the keeper
    SIGKILLs every process of every slot (and the kernel each script leader, through
    PR_SET_PDEATHSIG): such a run ended by SIGKILL, whoever sent it. What survived
    anyway is found by cgroup and marker (``sweep``) or by its process group.
    """
    swept = sweep(containment)  # by cgroup and marker
    for run in db.open_runs():
        swept.setdefault(run.slot, []).extend(kill_leftover_group(run.pid, run.slot))
    for slot, killed in swept.items():
        if killed:
            log.warning(
                "%s: killed %d process(es) left by a previous IOC: %s", slot, len(killed), killed
            )
    for run in db.open_runs():
        if not swept.get(run.slot):
            log.warning(
                # %r: a pid edited into the file by hand may be anything
                "%s: the run of pid %r ended when the previous IOC died (killed by SIGKILL)",
                run.slot,
                run.pid,
            )
        db.run_ended(run.id, -int(signal.SIGKILL), "ioc-exit")


def _accountant(
    runners: list[SlotRunner], containment: Containment, guardian: Guardian
) -> accounting.Accountant:
    """Each slot's CPU, RSS and process count every 2 s, and its memory limit."""

    def keeper() -> tuple[int | None, list[int]]:
        return guardian.pid, list(guardian.leaders().values())

    meters = [
        accounting.SlotMeter(
            r.name, containment.instance, containment.slots.get(r.name), r.leader, keeper
        )
        for r in runners
    ]
    return accounting.Accountant(list(zip(meters, runners, strict=True)))


async def run_ioc(options: IocOptions) -> int:
    """Serve until SIGINT, SIGTERM or SIGHUP; stop every script first; return the exit status."""
    loop = asyncio.get_running_loop()
    check_var_dir(options.var_dir)  # raises VarDirUnusable, reported by the CLI
    lock = VarDirLock(options.var_dir)
    lock.acquire()  # raises VarDirInUse, reported by the CLI
    try:
        db = StateDB(options.var_dir / "state.sqlite")
    except BaseException:
        lock.release()
        raise
    guardian: Guardian | None = None
    stop_requested = asyncio.Event()
    tasks: list[asyncio.Task] = []
    runners: list[SlotRunner] = []
    watches: WatchService | None = None
    try:
        containment = detect(options.var_dir, [slot.name for slot in options.settings.slots])
        _clean_leftovers(db, containment)
        guardian = Guardian(containment.keeper_config())
        guardian.start()
        guardian.attach(loop)
        started = time.monotonic()
        publisher_ref: list[Publisher] = []
        port = int(os.environ.get("EPICS_CA_SERVER_PORT", "5064"))
        own_address = own_ca_address(options.interfaces, port)

        def changed() -> None:
            if publisher_ref:
                publisher_ref[0].changed()

        for slot in options.settings.slots:
            try:
                runner = SlotRunner(
                    slot,
                    config_dir=options.config_dir,
                    var_dir=options.var_dir,
                    prefix=options.prefix,
                    db=db,
                    guardian=guardian,
                    on_change=changed,
                    own_ca_address=own_address,
                )
            except OSError as exc:  # its log file: a directory, not writable, …
                why = f"{exc.strerror or exc}: {exc.filename}"
                raise VarDirUnusable(f"{slot.name}: {why}") from None
            runners.append(runner)
        # Always: DRYRUN and NAMES are served even when no [[watch]] is configured.
        watches = WatchService(options.settings.watches, prefix=options.prefix, db=db)
        now = time.monotonic()
        pvdb, ioc_group, slot_groups = build_pvdb(
            options.prefix,
            [(r.name, r, r.view(now)) for r in runners],
            watches.pvs,
            lag_limits=(options.settings.loop_lag_high, options.settings.loop_lag_hihi),
            procserv_control=options.procserv_control,
        )
        settings = options.settings
        if settings.write_hosts is not None or settings.write_users is not None:
            apply_access(
                pvdb,
                write_hosts=settings.write_hosts,
                write_users=settings.write_users,
                require_address=settings.require_address,
            )
        publisher = Publisher(runners, slot_groups, ioc_group, started)
        publisher_ref.append(publisher)
        publisher.set_msg(*health_message(db.status, db.start_warning))
        db.attach(loop, lambda status: publisher.set_msg(*health_message(status, db.start_warning)))

        def stop_on(signum: int) -> None:
            name = signal.Signals(signum).name
            if stop_requested.is_set():
                log.warning("%s: already stopping", name)
                return
            log.warning("%s: stopping every script, then the IOC", name)
            stop_requested.set()

        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, stop_on, signum)

        context = IocContext(pvdb, options.interfaces)
        # Raises CannotServe (a taken port: reported by the CLI) before any script starts.
        await context.claim_ports()
        # Said once the IOC is sure to serve: a start that fails is its one line alone.
        log.info("%s", containment.describe())
        if not guardian.uses_setpriv:
            log.warning("no setpriv with --pdeathsig: scripts start the slower way (full fork)")
        server = asyncio.create_task(context.run())
        tasks += [
            server,
            asyncio.create_task(publisher.run()),
            asyncio.create_task(publisher.tick()),
            asyncio.create_task(publisher.lag.run()),
        ]
        for runner in runners:
            runner.open(loop)
        if accounting.enabled():
            tasks.append(asyncio.create_task(_accountant(runners, containment, guardian).run()))
        elif any(slot.policy.memory_max > 0 for slot in options.settings.slots):
            log.warning("%s=off: CPU and memory are not measured, memory_max is not enforced",
                        accounting.SWITCH_VAR)  # fmt: skip
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
            error = server.exception()
            log.error("the Channel Access server stopped: %s", error)
            return 1
        log.info("shutting down: stopping every script")
        return 0
    finally:
        # The stop signals' handlers stay until the very end: a second Ctrl-C or
        # SIGTERM while a script takes its stop timeout is "already stopping", not
        # the default action that would cut the stop short, its runs unrecorded.
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
        if guardian is not None:
            guardian.close()
        await db.aclose()  # what could not be saved is logged there, change by change
        lock.release()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def main_loop(options: IocOptions) -> int:
    """Run the IOC on a fresh event loop (the CLI's entry point)."""
    os.environ.setdefault("EPICS_CA_SERVER_PORT", "5064")
    return asyncio.run(run_ioc(options))
