"""``via = "peer"``: ask another bgrscrpt_ioc's watch to restart an IOC, over Channel Access.

One bgrscrpt_ioc runs on each host and restarts its own IOCs through the local
procServ (whose control port, in Debian's procServ, listens on 127.0.0.1 only).
A watch on another host restarts one of them by asking that host's watch: it
puts 1 to the remote watch's ``RESTART`` and follows the remote watch's
``RESTART_CNT``, ``STATE`` and ``MSG`` until it reports the restart done
(RESTART_CNT went up, STATE VERIFYING or OK, MSG "restarted …") or failed (FAILED, LOCKOUT,
DISABLED, with its MSG), within :data:`FOLLOW_TIMEOUT`.

What the remote watch refuses, it refuses as a CA put error, which comes back
here at once with the remote's words (a disabled watch, the remote's
``[access]``). A remote watch in LOCKOUT or with DRYRUN On is not asked at all:
its operator must look first; a restart already under way there is followed
as if it were ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

from caproto import AccessRights, CaprotoError, ChannelType

from ..ca.client import refusal, why_not_connected
from ..ca.watch_pvs import WATCH_GROUP
from .protocol import RestartError

CONNECT_TIMEOUT = 5.0  # the remote watch's PVs connect and send their first values
PUT_TIMEOUT = 5.0  # the remote IOC answers the RESTART put
FOLLOW_TIMEOUT = 90.0  # the remote restart is reported done or failed
SETTLE = 0.2  # after RESTART_CNT went up: no news for this long, and its STATE and MSG are final
DONE = ("VERIFYING", "OK")
_NEXT_ATTEMPT = re.compile(r"; next attempt in [0-9.e+]+ s$")


def ioc_prefix(watch_prefix: str) -> str:
    """``IN:NDXEMU:BGRSCRPT:WATCH:T1:`` -> ``IN:NDXEMU:`` (the remote IOC's prefix)."""
    head, sep, _ = watch_prefix.rpartition(f"{WATCH_GROUP}:")
    return head if sep else watch_prefix


class _Remote:
    """What the remote watch's PVs show now, and news of any change."""

    def __init__(self) -> None:
        self.state: str | None = None
        self.count: int | None = None
        self.msg: str | None = None
        self.lost = ""  # why the connection went, once it has
        self.news = asyncio.Event()

    @property
    def complete(self) -> bool:
        return self.state is not None and self.count is not None and self.msg is not None

    async def on_state(self, sub: Any, response: Any) -> None:
        self.state = _text(response.data[0]) if len(response.data) else ""
        self.news.set()

    async def on_count(self, sub: Any, response: Any) -> None:
        try:
            self.count = int(float(response.data[0]))
        except (TypeError, ValueError, IndexError, OverflowError):
            self.count = -1  # not a watch's RESTART_CNT: never goes up, so never done
        self.news.set()

    async def on_msg(self, sub: Any, response: Any) -> None:
        self.msg = bytes(response.data).split(b"\0", 1)[0].decode("utf-8", "replace")
        self.news.set()

    async def on_connection(self, pv: Any, state: str) -> None:
        if state != "connected" and not self.lost:
            self.lost = why_not_connected(pv) or "disconnected"
            self.news.set()

    async def wait(self, until: float) -> bool:
        """Wait for news until ``until`` (monotonic); False when time ran out."""
        self.news.clear()
        left = until - time.monotonic()
        if left <= 0:
            return False
        try:
            async with asyncio.timeout(left):  # not wait_for: it can lose a cancellation
                await self.news.wait()
        except TimeoutError:
            return False
        return True


class PeerBackend:
    """Restarts each IOC through the remote watch named for it in ``peers``."""

    via = "peer watch"

    def __init__(
        self,
        context: Any,
        peers: dict[str, str],
        *,
        own: str = "",
        connect_timeout: float = CONNECT_TIMEOUT,
        follow_timeout: float = FOLLOW_TIMEOUT,
    ):
        """``context``: the watches' asyncio CA client; ``peers``: IOC name -> the
        remote watch's PV prefix (``<P>BGRSCRPT:WATCH:<name>:``); ``own``: this
        watch's own PV prefix (asking itself would wait on itself)."""
        self.context = context
        self.peers = dict(peers)
        self.own = own
        self.connect_timeout = connect_timeout
        self.follow_timeout = follow_timeout

    def label(self, ioc: str) -> str:
        return f"{ioc} on {ioc_prefix(self.peers[ioc])}"

    async def restart(self, ioc: str) -> str:
        prefix = self.peers[ioc]
        if prefix == self.own:
            raise RestartError(
                f"peer {prefix} is this watch itself: name another IOC's watch", reached=False
            )
        remote = _Remote()
        try:
            restart_pv, *watched, dryrun_pv = await self.context.get_pvs(
                f"{prefix}RESTART",
                f"{prefix}STATE",
                f"{prefix}RESTART_CNT",
                f"{prefix}MSG",
                f"{ioc_prefix(prefix)}{WATCH_GROUP}:DRYRUN",
                timeout=None,
            )
        except ValueError as exc:  # a name no search can carry (settings check this)
            raise RestartError(f"peer {prefix} cannot be searched for: {exc}") from None
        deadline = time.monotonic() + self.connect_timeout
        for pv in (restart_pv, *watched, dryrun_pv):
            await self._connect(prefix, pv, deadline)
        subs = []
        tokens = []
        try:
            for pv, callback in zip(
                watched, (remote.on_state, remote.on_count, remote.on_msg), strict=True
            ):
                tokens.append((pv, pv.connection_state_callback.add_callback(remote.on_connection)))
                data_type = ChannelType.TIME_STRING if callback == remote.on_state else None
                sub = pv.subscribe(data_type=data_type)
                subs.append((sub, sub.add_callback(callback)))
            while not remote.complete:
                if not await remote.wait(deadline):
                    raise RestartError(f"peer {prefix} sent no values of STATE, RESTART_CNT, MSG")
            return await self._restart(ioc, prefix, remote, restart_pv, dryrun_pv)
        finally:
            for sub, token in subs:
                with contextlib.suppress(Exception):  # a dead circuit has no subscription left
                    await sub.remove_callback(token)
            for pv, token in tokens:
                pv.connection_state_callback.remove_callback(token)

    async def _connect(self, prefix: str, pv: Any, deadline: float) -> None:
        try:
            await pv.wait_for_connection(timeout=max(0.1, deadline - time.monotonic()))
        except (TimeoutError, CaprotoError):
            why = why_not_connected(pv)
            raise RestartError(
                f"peer {prefix} does not connect: {pv.name}: {why} (is the peer IOC "
                "running, and its host in EPICS_CA_ADDR_LIST?)",
                reached=False,
            ) from None

    async def _restart(
        self, ioc: str, prefix: str, remote: _Remote, restart_pv: Any, dryrun_pv: Any
    ) -> str:
        if remote.state == "LOCKOUT":
            raise RestartError(
                f"peer {prefix} is in LOCKOUT, not asked: {remote.msg}", reached=False
            )
        if await _read_text(dryrun_pv) == "On":
            raise RestartError(
                f"peer {prefix} has DRYRUN On: {ioc} was not restarted", reached=False
            )
        if restart_pv.access_rights is not None and not (
            restart_pv.access_rights & AccessRights.WRITE
        ):
            raise RestartError(
                f"peer {prefix} gives no write access to RESTART (its [access] write_hosts and "
                "write_users must admit this host and user)",
                reached=False,
            )
        before = remote.count or 0
        try:
            reply = await restart_pv.write([1], wait=True, timeout=PUT_TIMEOUT)
        except (TimeoutError, CaprotoError, OSError) as exc:
            why = why_not_connected(restart_pv) or f"no answer within {PUT_TIMEOUT:g} s"
            raise RestartError(f"peer {prefix} did not take the RESTART put ({why})") from exc
        refused = refusal(reply)
        if refused is not None:
            refused = refused.removeprefix("PutRejected: ")
            if "already under way" not in refused:
                raise RestartError(f"peer {prefix} refused the restart: {refused}", reached=False)
            # Its own restart is under way: its outcome is ours as well.
        until = time.monotonic() + self.follow_timeout
        while True:
            if remote.lost:
                raise RestartError(
                    f"peer {prefix} lost while it restarted {ioc} "
                    f"({remote.lost}); whether it did is not known"
                )
            if (remote.count or 0) > before and remote.state != "RESTARTING":
                # Judged once the news has settled: STATE and MSG may follow the count.
                if await remote.wait(min(until, time.monotonic() + SETTLE)):
                    continue
                msg = _NEXT_ATTEMPT.sub("", remote.msg or "")
                if remote.state in DONE and _says_restarted(msg):
                    return f"{ioc} restarted by peer {prefix} ({msg})"
                if remote.state in DONE:
                    # Its restart failed, and its own PVs, healthy, took it back to OK
                    # before it showed FAILED: the failure's words are in its log only.
                    raise RestartError(
                        f"peer {prefix} restart failed; it shows {remote.state}: {msg}"
                    )
                raise RestartError(f"peer {prefix} {remote.state}: {msg}")
            if not await remote.wait(until):
                raise RestartError(
                    f"peer {prefix} did not report the restart of {ioc} within "
                    f"{self.follow_timeout:g} s (STATE {remote.state}, MSG {remote.msg!r})"
                )


def _says_restarted(msg: str) -> bool:
    """A remote MSG of a restart sent: "restarted T1; verifying", "restarted T1, recovered in …"
    (not "restarted T1, then: <why the next one failed>")."""
    return msg.startswith("restarted ") and ", then: " not in msg


async def _read_text(pv: Any) -> str | None:
    try:
        response = await pv.read(data_type=ChannelType.STRING, timeout=PUT_TIMEOUT)
    except (TimeoutError, CaprotoError):
        return None
    if refusal(response) is not None:
        return None
    return _text(response.data[0])


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
