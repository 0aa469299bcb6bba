"""``via = "peer"``: a watch on one IOC restarts an IOC through another IOC's watch.

Two (or three) real bgrscrpt_ioc processes, each on its own port with its own
var dir, as on two hosts (here on loopback): IOC B restarts the target, an EPICS
base IOC under Debian's procServ, through its local procServ port; IOC A watches
the target and asks B's watch to restart it, over Channel Access. Then every
way the peer can refuse or fail, each of which must reach A's MSG in words.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from tests.integration.harness import Ioc, wait_for
from tests.integration.test_watch_procserv import sims  # noqa: F401 - a fixture
from tests.integration.watch_targets import free_tcp_port

T = 60.0


def watch(name: str, pvs: list[str], restart: str, **keys: object) -> str:
    """One [[watch]] entry; a value that is a str starting with "{" is an inline table."""
    lines = ["[[watch]]", f'name = "{name}"', f"pvs = {pvs!r}".replace("'", '"'),
             f'restart = ["{restart}"]']  # fmt: skip
    for key, value in keys.items():
        if isinstance(value, str) and not value.startswith("{"):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, list):
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


class Iocs:
    """Builds IOCs, each with its own prefix, config dir and var dir."""

    def __init__(self, tmp_path: Path, port_pool, prefix: str):
        self.tmp_path, self.port_pool, self.prefix = tmp_path, port_pool, prefix
        self.made: list[Ioc] = []

    def start(self, name: str, settings: str, **env: str) -> Ioc:
        config = self.tmp_path / f"config-{name}"
        config.mkdir()
        (config / "bgrscrpt.toml").write_text(settings)
        ioc = Ioc(
            prefix=f"{self.prefix}{name}:",
            port=self.port_pool.take(),
            config_dir=config,
            var_dir=self.tmp_path / f"var-{name}",
            slots=1,
            env=env,
        )
        self.made.append(ioc)
        return ioc.start()


@pytest.fixture
def iocs(tmp_path, port_pool, prefix, test_tag):
    made = Iocs(tmp_path, port_pool, prefix)
    yield made
    for ioc in made.made:
        if ioc.proc is not None and ioc.proc.poll() is None:
            ioc.stop()


def state(ioc: Ioc, name: str) -> str:
    return ioc.get(f"BGRSCRPT:WATCH:{name}:STATE", as_string=True)


def msg(ioc: Ioc, name: str) -> str:
    return ioc.get(f"BGRSCRPT:WATCH:{name}:MSG", as_string=True, count=1024) or ""


def count(ioc: Ioc, name: str) -> int:
    return ioc.get(f"BGRSCRPT:WATCH:{name}:RESTART_CNT")


def wait_state(ioc: Ioc, name: str, wanted: str, timeout: float = T) -> str:
    wait_for(
        lambda: state(ioc, name) == wanted,
        timeout,
        f"{ioc.prefix} watch {name} STATE {wanted} (MSG {msg(ioc, name)!r})",
    )
    return msg(ioc, name)


def peer_table(ioc_name: str, peer: Ioc, watch_name: str) -> str:
    return f'{{ {ioc_name} = "{peer.prefix}BGRSCRPT:WATCH:{watch_name}:" }}'


def test_a_watch_restarts_an_ioc_through_its_peers_watch(iocs, sims):  # noqa: F811
    sim = sims()
    pid = sim.child_pid()
    # B restarts SIM_01 through its own procServ; its own trigger waits an hour.
    b = iocs.start("B", watch("T1", [sim.pv()], sim.name, delay=3600.0,
                               procserv=f'{{ {sim.name} = "{sim.control}" }}'))  # fmt: skip
    a = iocs.start("A", watch("W", [sim.pv()], sim.name, delay=0.2, via="peer",
                               peer=peer_table(sim.name, b, "T1")))  # fmt: skip
    wait_state(a, "W", "OK")
    wait_state(b, "T1", "OK")

    sim.fault()
    wait_for(lambda: count(a, "W") == 1, T, "A's restart")
    text = wait_state(a, "W", "OK")
    assert text.startswith(f"restarted {sim.name} on {b.prefix}, recovered in"), text
    assert count(b, "T1") == 1
    assert sim.child_pid() != pid
    wait_for(lambda: sim.severity() == 0, T, "the new IOC's VALUE NO_ALARM")
    wait_state(b, "T1", "OK")
    assert f"restarted {sim.name}" in msg(b, "T1")
    assert f"restarted by peer {b.prefix}BGRSCRPT:WATCH:T1:" in a.output()


def test_what_the_peer_refuses_or_fails_reaches_the_msg_in_words(iocs, prefix):
    refused = f"127.0.0.1:{free_tcp_port()}"  # nobody listens: procServ "refused the connection"
    silent = socket.socket()  # accepts (in its backlog) and never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    hang = f"127.0.0.1:{silent.getsockname()[1]}"
    try:
        _refusals(iocs, prefix, refused, hang)
    finally:
        silent.close()


def _refusals(iocs: Iocs, prefix: str, refused: str, hang: str) -> None:
    version = f"{prefix}B:BGRSCRPT:VERSION"
    dryrun = f"{prefix}B:BGRSCRPT:WATCH:DRYRUN"
    lax = {"delay": 3600.0, "backoff": 600.0, "backoff_max": 600.0}
    b = iocs.start("B", "".join([
        watch("DIS", [version], "X", procserv=f'{{ X = "{refused}" }}', **lax),
        # Held in its trigger (DRYRUN Off) an hour before it would act: FAILED stays.
        watch("FAIL", [dryrun], "Y", procserv=f'{{ Y = "{refused}" }}', values=["Off"], **lax),
        # Its trigger holds at once (DRYRUN reads Off): one failed restart, then LOCKOUT.
        watch("LOCK", [dryrun], "Z", procserv=f'{{ Z = "{refused}" }}', values=["Off"],
              delay=0.0, backoff=0.1, max_restarts=1),
        watch("HANG", [version], "H", procserv=f'{{ H = "{hang}" }}', **lax),
    ]))  # fmt: skip
    acc = watch("ACC", [version], "R", procserv=f'{{ R = "{refused}" }}', **lax)
    b2 = iocs.start("B2", '[access]\nwrite_hosts = ["192.0.2.1"]\n' + acc)
    nobody = f"{prefix}NOBODY:BGRSCRPT:WATCH:W:"
    # A's watches are held in their trigger (B2's DRYRUN reads Off), so a failed
    # restart leaves them FAILED, its MSG in view, rather than OK again at once.
    held = {**lax, "values": ["Off"]}
    trigger = [f"{prefix}B2:BGRSCRPT:WATCH:DRYRUN"]
    a = iocs.start("A", "".join([
        watch("to_dis", trigger, "X", via="peer", peer=peer_table("X", b, "DIS"), **held),
        watch("to_fail", trigger, "Y", via="peer", peer=peer_table("Y", b, "FAIL"), **held),
        watch("to_lock", trigger, "Z", via="peer", peer=peer_table("Z", b, "LOCK"), **held),
        watch("to_acc", trigger, "R", via="peer", peer=peer_table("R", b2, "ACC"), **held),
        watch("to_none", trigger, "N", via="peer", peer=f'{{ N = "{nobody}" }}', **held),
        watch("to_hang", trigger, "H", via="peer", peer=peer_table("H", b, "HANG"), **held),
    ]), EPICS_CA_CONN_TMO="1")  # fmt: skip
    b.put("BGRSCRPT:WATCH:DIS:ENABLE", 0)
    wait_state(b, "LOCK", "LOCKOUT")
    for name in ("to_dis", "to_fail", "to_lock", "to_acc", "to_none"):
        wait_state(a, name, "PENDING")
        a.put(f"BGRSCRPT:WATCH:{name}:RESTART", 1)

    peer = f"peer {b.prefix}BGRSCRPT:WATCH:"
    # Disabled: the put is refused, and the refusal comes back at once with B's words.
    text = wait_state(a, "to_dis", "FAILED", timeout=10)
    assert text.startswith(
        f"{peer}DIS: refused the restart: the watch is disabled; put ENABLE 1 first;"
    ), text
    # B tried and failed: its own MSG, without its "next attempt" (ours says ours).
    text = wait_state(a, "to_fail", "FAILED")
    assert text.startswith(f"{peer}FAIL: FAILED: procServ at {refused} refused the connection;"), (
        text
    )
    assert text.count("next attempt") == 1, text
    assert count(b, "FAIL") == 1
    # LOCKOUT: not asked; a person must look there first.
    text = wait_state(a, "to_lock", "FAILED")
    assert text.startswith(f"{peer}LOCK: is in LOCKOUT, not asked: LOCKOUT: 1 restarts"), text
    assert count(b, "LOCK") == 1
    # B2's [access] admits only 192.0.2.1.
    text = wait_state(a, "to_acc", "FAILED")
    assert f"peer {b2.prefix}BGRSCRPT:WATCH:ACC: gives no write access to RESTART" in text, text
    assert count(b2, "ACC") == 0
    # A peer nobody serves.
    text = wait_state(a, "to_none", "FAILED")
    assert f"peer {nobody} does not connect: {nobody}RESTART: no server answers its search" in text

    # A partition while B restarts: B is asked, starts (its procServ never answers),
    # and drops off the network; A says so once CA gives the circuit up.
    wait_state(a, "to_hang", "PENDING")
    a.put("BGRSCRPT:WATCH:to_hang:RESTART", 1)
    wait_state(b, "HANG", "RESTARTING", timeout=10)
    b.signal(signal.SIGSTOP)
    try:
        text = wait_state(a, "to_hang", "FAILED", timeout=30)
    finally:
        b.signal(signal.SIGCONT)
    lost = f"{peer}HANG: lost while it restarted H (unresponsive server at "
    assert text.startswith(f"{lost}127.0.0.1:{b.port}"), text
    assert "whether it did is not known" in text

    # DRYRUN On at B: not restarted, and A says why.
    b.put("BGRSCRPT:WATCH:DRYRUN", 1)
    wait_state(a, "to_dis", "FAILED")
    b.put("BGRSCRPT:WATCH:DIS:ENABLE", 1)
    a.put("BGRSCRPT:WATCH:to_dis:RESTART", 1)
    wait_for(lambda: "DRYRUN On" in msg(a, "to_dis"), T, "the DRYRUN refusal")
    assert msg(a, "to_dis").startswith(f"{peer}DIS: has DRYRUN On: X was not restarted"), msg(
        a, "to_dis"
    )
    assert count(b, "DIS") == 0
    assert a.proc is not None and a.proc.poll() is None
    assert "Traceback" not in a.output(), a.output()
