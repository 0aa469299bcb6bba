"""Why a watched PV is disconnected reaches MSG (core/watch.py, a fake clock, no I/O).

The monitor hands the reason in as data ("unresponsive server at …", "cannot
connect to …: connection refused"); the core shows it with the PV's name, in
PENDING, in the restart's reason and in a verification that timed out.
"""

from __future__ import annotations

from bgrscrpt_ioc.core.watch import Restart, WatchCore, WatchPolicy, WatchState

PV = "DEV:VALUE"
POLICY = WatchPolicy(delay=10.0, verify_timeout=30.0, connect_grace=2.0)
UNRESPONSIVE = "unresponsive server at 10.1.2.3:5064 (no answer to an echo)"


def test_a_disconnection_shows_its_reason_until_the_pv_connects_again():
    core = WatchCore(POLICY, [PV], 0.0)
    core.update(1.0, PV, connected=True)
    core.update(3.0, PV, connected=False, reason=UNRESPONSIVE)
    assert core.state is WatchState.PENDING
    assert core.msg == f"{PV} disconnected ({UNRESPONSIVE}); restart in 10.0 s unless it clears"
    later = f"{UNRESPONSIVE}; no server answers its search since"
    core.note_reason(5.0, PV, later)
    assert core.msg == f"{PV} disconnected ({later}); restart in 8.0 s unless it clears"
    actions = core.tick(13.0)
    assert actions == [Restart(manual=False, reason=f"{PV} disconnected ({later})")]
    core.restart_sent(14.0, "restarted X")
    core.update(15.0, PV, connected=True)
    assert core.state is WatchState.OK
    core.update(20.0, PV, connected=False)  # a reason is never left over from before
    assert core.msg == f"{PV} disconnected; restart in 10.0 s unless it clears"


def test_a_pv_never_connected_shows_why_once_its_grace_is_over():
    core = WatchCore(POLICY, [PV], 0.0)
    refused = "cannot connect to 10.1.2.3:5064: connection refused"
    assert core.note_reason(0.5, PV, refused) == []
    assert core.state is WatchState.OK  # in its connect grace
    core.tick(2.0)
    assert core.msg == f"{PV} disconnected ({refused}); restart in 10.0 s unless it clears"


def test_a_reason_for_a_connected_pv_is_ignored():
    core = WatchCore(POLICY, [PV], 0.0)
    core.update(1.0, PV, connected=True, severity=3)
    core.note_reason(2.0, PV, "stale news")
    assert "stale news" not in core.msg


def test_a_verification_that_times_out_says_why_the_pv_is_still_away():
    core = WatchCore(POLICY, [PV], 0.0)
    core.update(1.0, PV, connected=True, severity=3)
    core.tick(11.0)
    core.restart_sent(12.0, "restarted X")
    core.update(12.5, PV, connected=False, reason=UNRESPONSIVE)
    core.tick(42.0)
    assert core.state is WatchState.FAILED
    assert f"not recovered within 30 s ({PV}: {UNRESPONSIVE})" in core.msg, core.msg
