"""The IOC: one asyncio loop serving the PVs, supervising the scripts, publishing state.

Start-up order matters: lock the var dir (a second IOC must not touch the
database), kill what a previous IOC left behind, start the guardian (so that no
script can outlive us), then serve PVs and start the scripts.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from bgrscrpt_ioc.aio import cancel_and_wait
from bgrscrpt_ioc.ca.access import apply_access
from bgrscrpt_ioc.ca.publisher import Publisher
from bgrscrpt_ioc.ca.pvdb import IOC_GROUP, build_pvdb
from bgrscrpt_ioc.ca.server import IocContext
from bgrscrpt_ioc.ioc_health import IocStatus, health_message
from bgrscrpt_ioc.recovery.service import WatchService
from bgrscrpt_ioc.settings import Settings
from bgrscrpt_ioc.state_db import StateDB
from bgrscrpt_ioc.supervisor import accounting
from bgrscrpt_ioc.supervisor.containment import detect
from bgrscrpt_ioc.supervisor.env import own_ca_address
from bgrscrpt_ioc.supervisor.guardian import Guardian
from bgrscrpt_ioc.supervisor.leftovers import clean_leftovers
from bgrscrpt_ioc.supervisor.service import SlotService
from bgrscrpt_ioc.var_dir import VarDirLock, check_var_dir

log = logging.getLogger("bgrscrpt_ioc")

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
    ca_port: int  # the CA server port (the CLI settles it, and caproto reads it from the env)
    procserv_control: bool = False  # also serve $(P)CS:PS:<slot>: as procServControl does


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
    tasks: list[asyncio.Task[None]] = []
    slots: SlotService | None = None
    watches: WatchService | None = None
    try:
        containment = detect(options.var_dir, [slot.name for slot in options.settings.slots])
        clean_leftovers(db, containment)
        guardian = Guardian(containment.keeper_config())
        guardian.start()
        guardian.attach(loop)
        # Every PV is shown through the publisher; sources may notify it before
        # they are added to it (the runners exist before their PV groups).
        publisher = Publisher()
        slots = SlotService(
            options.settings.slots,
            config_dir=options.config_dir,
            var_dir=options.var_dir,
            prefix=options.prefix,
            db=db,
            guardian=guardian,
            publisher=publisher,
            own_ca_address=own_ca_address(options.interfaces, options.ca_port),
        )
        runners = slots.runners
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
        status = IocStatus(time.monotonic(), publisher.changed, on_beat=slots.beat)
        slots.publish_through(publisher, slot_groups)
        publisher.add(IOC_GROUP, status.view, ioc_group.show)
        watches.publish_through(publisher)
        status.set_msg(*health_message(db.status, db.start_warning))
        db.attach(loop, lambda disk: status.set_msg(*health_message(disk, db.start_warning)))

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
            asyncio.create_task(status.tick()),
            asyncio.create_task(status.lag.run()),
        ]
        slots.open(loop)
        if accounting.enabled():
            tasks.append(asyncio.create_task(slots.accountant(containment).run()))
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
        slots.start()
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
        if slots is not None:
            await slots.shutdown()
        if watches is not None:
            try:
                await watches.close()
            except Exception:  # shutting down regardless
                log.exception("closing the watches failed")
        await cancel_and_wait(tasks)
        # Then whatever the server left (its circuits' tasks): asyncio.run would
        # cancel those only once and wait for ever.
        await cancel_and_wait([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])
        if guardian is not None:
            guardian.close()
        await db.aclose()  # what could not be saved is logged there, change by change
        lock.release()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def main_loop(options: IocOptions) -> int:
    """Run the IOC on a fresh event loop (the CLI's entry point)."""
    return asyncio.run(run_ioc(options))
