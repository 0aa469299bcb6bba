"""The ``via = "peer"`` backend against the real watch PVs (``ca/watch_pvs.py``) served
in the test's loop, with a scripted remote watch behind them, and the watches' own
asyncio CA client: every way the remote can answer, each in seconds."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from bgrscrpt_ioc.ca.client import Context
from bgrscrpt_ioc.ca.watch_pvs import WatchView, build_watch_pvs
from bgrscrpt_ioc.core.watch import WatchState
from bgrscrpt_ioc.recovery.backend import RestartError
from bgrscrpt_ioc.recovery.peer import PeerBackend
from tests.unit.ca_server import ca_server

P = "PEERTEST:"
REMOTE = f"{P}BGRSCRPT:WATCH:T1:"
OK = WatchView(state=int(WatchState.OK), restart_cnt=4, msg="watching")

Step = tuple[float, WatchView]


class RemoteWatch:
    """What a put to the remote RESTART does: ``refuse`` (ValueError text), then
    ``steps``: views published one after another, each after its delay."""

    def __init__(self) -> None:
        self.refuse: str | None = None
        self.steps: list[Step] = []
        self.group: object = None
        self.puts = 0
        self._tasks: list[asyncio.Task[None]] = []

    def set_enabled(self, enabled: bool) -> None:
        pass

    def set_dry_run(self, dry_run: bool) -> None:
        pass

    def restart_now(self) -> None:
        self.puts += 1
        self._tasks.append(asyncio.get_running_loop().create_task(self._play()))
        if self.refuse is not None:
            raise ValueError(self.refuse)

    async def _play(self) -> None:
        for delay, view in self.steps:
            await asyncio.sleep(delay)
            await self.group.publish(view)  # type: ignore[attr-defined]


@pytest.fixture
async def remote(monkeypatch):
    watch = RemoteWatch()
    pvs = build_watch_pvs(P, [("T1", watch, OK)], watch)
    watch.group = pvs.watches["T1"]
    async with ca_server(pvs.pvdb, monkeypatch):
        context = Context(timeout=None)
        watch.context = context  # type: ignore[attr-defined]
        try:
            yield watch
        finally:
            await context.disconnect()


def backend(remote: RemoteWatch, **kw) -> PeerBackend:
    return PeerBackend(remote.context, {"T1": REMOTE}, **kw)  # type: ignore[attr-defined]


def view(state: WatchState, count: int, msg: str) -> WatchView:
    return replace(OK, state=int(state), restart_cnt=count, msg=msg)


async def fails(remote: RemoteWatch, **kw) -> str:
    with pytest.raises(RestartError) as caught:
        await backend(remote, **kw).restart("T1")
    return str(caught.value)


async def test_a_restart_the_peer_reports_sent_is_done(remote):
    remote.steps = [
        (0.05, view(WatchState.RESTARTING, 4, "restarting: restart by hand")),
        (0.05, view(WatchState.VERIFYING, 5, "restarted T1; verifying")),
    ]
    shown = await backend(remote).restart("T1")
    assert shown == f"T1 restarted by peer {REMOTE} (restarted T1; verifying)"
    assert remote.puts == 1
    assert backend(remote).label("T1") == f"T1 on {P}"


async def test_a_restart_the_peer_could_not_send_fails_with_its_words(remote):
    why = "procServ at 127.0.0.1:1 refused the connection"
    remote.steps = [(0.05, view(WatchState.FAILED, 5, f"{why}; next attempt in 30 s"))]
    assert await fails(remote) == f"peer {REMOTE} FAILED: {why}"


async def test_a_refused_put_fails_at_once_with_the_peers_words(remote):
    remote.refuse = "the watch is disabled; put ENABLE 1 first"
    text = await fails(remote, follow_timeout=30.0)  # not waited out: refused at once
    assert text == f"peer {REMOTE} refused the restart: the watch is disabled; put ENABLE 1 first"


async def test_a_restart_already_under_way_at_the_peer_is_followed_as_ours(remote):
    remote.refuse = "a restart is already under way"
    remote.steps = [(0.1, view(WatchState.VERIFYING, 5, "restarted T1; verifying"))]
    assert "restarted by peer" in await backend(remote).restart("T1")


async def test_a_failure_the_peer_shows_only_as_ok_again_is_not_taken_as_done(remote):
    # Its PVs are healthy: FAILED and back to OK before it published the failure.
    remote.steps = [(0.05, view(WatchState.OK, 5, "recovered without a further restart"))]
    text = await fails(remote)
    assert text == (
        f"peer {REMOTE} restart failed; it shows OK: recovered without a further restart"
    )


async def test_a_peer_that_never_reports_is_given_up_on(remote):
    remote.steps = [(0.05, view(WatchState.RESTARTING, 4, "restarting: restart by hand"))]
    text = await fails(remote, follow_timeout=0.5)
    assert text.startswith(f"peer {REMOTE} did not report the restart of T1 within 0.5 s")
    assert "STATE RESTARTING" in text


async def test_a_peer_in_lockout_is_not_asked(remote):
    lockout = "LOCKOUT: 3 restarts in 3600 s; put ENABLE 1 to clear"
    await remote.group.publish(view(WatchState.LOCKOUT, 4, lockout))
    assert await fails(remote) == f"peer {REMOTE} is in LOCKOUT, not asked: {lockout}"
    assert remote.puts == 0


async def test_a_watch_never_asks_itself():
    itself = PeerBackend(None, {"T1": REMOTE}, own=REMOTE)  # fails before any CA
    with pytest.raises(RestartError, match="is this watch itself"):
        await itself.restart("T1")


async def test_a_peer_that_is_not_there_says_so(remote):
    gone = PeerBackend(remote.context, {"T1": f"{P}NONE:BGRSCRPT:WATCH:T1:"}, connect_timeout=0.5)
    with pytest.raises(RestartError, match="does not connect: .*: no server answers its search"):
        await gone.restart("T1")


async def caught(remote: RemoteWatch, peer: PeerBackend | None = None) -> RestartError:
    with pytest.raises(RestartError) as error:
        await (peer or backend(remote)).restart("T1")
    return error.value


async def test_only_a_request_that_reached_the_peer_counts_as_reached(remote):
    """``reached`` False: nothing the peer could restart with was asked (a watch
    so told does not count the attempt towards its LOCKOUT)."""
    gone = PeerBackend(remote.context, {"T1": f"{P}NONE:BGRSCRPT:WATCH:T1:"}, connect_timeout=0.5)
    assert not (await caught(remote, gone)).reached
    remote.refuse = "the watch is disabled; put ENABLE 1 first"
    assert not (await caught(remote)).reached
    remote.refuse = None
    remote.steps = [(0.05, view(WatchState.FAILED, 5, "procServ at 127.0.0.1:1 refused; x"))]
    assert (await caught(remote)).reached  # it tried: it may have killed the IOC
    await remote.group.publish(view(WatchState.LOCKOUT, 5, "LOCKOUT: 3 restarts in 3600 s"))
    assert not (await caught(remote)).reached
